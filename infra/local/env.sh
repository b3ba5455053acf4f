# Environment for running the pipeline on one machine. Sourced by demo.sh and test.sh.
# Everything here is a local default; on a real deployment these come from Airflow
# connections/variables (see docs/configuration.md).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export REPO_ROOT
export VENV="${MUSIC_RECS_VENV:-$REPO_ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
export LOCAL_STATE="${MUSIC_RECS_LOCAL_STATE:-$REPO_ROOT/.local}"

export AIRFLOW_HOME="${AIRFLOW_HOME:-$REPO_ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
# SQLite (the default metadata DB here): wait up to 60 s for a lock (music_recs_dev.local_airflow).
if [[ "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite}" == sqlite* ]]; then
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS:-music_recs_dev.local_airflow.SQLITE_CONNECT_ARGS}"
fi

# Local S3-compatible server (moto in server mode) on loopback. The credentials are
# moto's dummy values, not secrets: moto accepts any key.
export MUSIC_RECS_S3_PORT="${MUSIC_RECS_S3_PORT:-5055}"
# (Not "${VAR:-{...}}": the first "}" of a JSON default ends the expansion, and a second
# `source` of this file then appended a "}" to the value already set, breaking the JSON.)
if [ -z "${AIRFLOW_CONN_AWS_DEFAULT:-}" ]; then
  export AIRFLOW_CONN_AWS_DEFAULT="{\"conn_type\": \"aws\", \"login\": \"testing\", \"password\": \"testing\", \"extra\": {\"endpoint_url\": \"http://127.0.0.1:${MUSIC_RECS_S3_PORT}\", \"region_name\": \"us-east-1\"}}"
fi
# The read-only connection of the CLI's latest/recommend and the consumer DAG (consumer_aws_conn_id):
# the same local server; on AWS, keys whose policy only reads (infra/aws/consumer-iam-policy.json).
if [ -z "${AIRFLOW_CONN_AWS_MODELS_READER:-}" ]; then
  export AIRFLOW_CONN_AWS_MODELS_READER="$AIRFLOW_CONN_AWS_DEFAULT"
fi
if [ -z "${AIRFLOW_CONN_SPARK_DEFAULT:-}" ]; then
  export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]"}'
fi

# The lake on the local S3 server, as on a cluster without a shared disk (infra/DEPLOYMENT.md,
# "Lake"); MUSIC_RECS_LAKE_URI=$LOCAL_STATE/lake keeps it in a local folder instead.
export MUSIC_RECS_LAKE_URI="${MUSIC_RECS_LAKE_URI:-s3a://music-lake/lake}"
# Job specs, results and logs of local runs (the driver runs here: client mode).
export MUSIC_RECS_WORK_DIR="${MUSIC_RECS_WORK_DIR:-$LOCAL_STATE/work}"
# Driver JVM class archives (music_recs_airflow.class_archive) of local runs and tests.
export MUSIC_RECS_SPARK_CLASS_ARCHIVE_DIR="${MUSIC_RECS_SPARK_CLASS_ARCHIVE_DIR:-$LOCAL_STATE/spark-class-archives}"
export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
export OPENBLAS_NUM_THREADS=1
