"""Shared fixtures: a real local Spark, a real S3-compatible server on 127.0.0.1, an isolated Airflow home."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="music_recs_tests_"))

# Airflow reads its configuration at import: isolate it before anything imports airflow.
os.environ["AIRFLOW_HOME"] = str(_SESSION_TMP / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["MUSIC_RECS_LAKE_URI"] = str(_SESSION_TMP / "lake")
os.environ["MUSIC_RECS_WORK_DIR"] = str(_SESSION_TMP / "work")
os.environ["MUSIC_RECS_TASK_RETRIES"] = "0"
# Every spark-submit a test causes (the DAG's tasks, the cluster tests) starts a driver JVM that
# lives for seconds on a few thousand rows: the C1 JIT alone and the serial GC leave the 2 cores
# to the job (about 5 s less per submission), and no web UI is started. Only the driver JVM of
# those submissions reads SPARK_SUBMIT_OPTS; the session-wide `spark` fixture is started without.
SUBMIT_TEST_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dspark.ui.enabled=false"
_OWN_SUBMIT_OPTS = os.environ.get("SPARK_SUBMIT_OPTS", "")
os.environ["SPARK_SUBMIT_OPTS"] = f"{_OWN_SUBMIT_OPTS} {SUBMIT_TEST_OPTS}".strip()

# Property-based tests: in CI (CI set, as .ci/run does) every run draws the same examples
# (derandomize: the seed is derived from each test), so a red CI can be rerun and bisected; on a
# developer's machine they draw new ones each run. Each test bounds its own max_examples.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
_hypothesis_settings.register_profile("dev", deadline=None)
_hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")

# py4j logs "closing down" from finalizers after pytest closed its streams.
import logging  # noqa: E402

logging.getLogger("py4j").setLevel(logging.WARNING)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def spark(s3_endpoint):
    """A local Spark with the S3A connector, its s3a:// on the tests' S3 server (``s3a_lake``)."""
    from music_recs_airflow.spark_submit import connector_jars
    from spark_jobs.lib.s3a import s3a_conf
    from spark_jobs.lib.session import BASE_CONF
    from pyspark.sql import SparkSession

    builder = (SparkSession.builder.master("local[2]").appName("music_recs_tests")
               .config("spark.jars", ",".join(connector_jars()))
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.default.parallelism", "2")
               .config("spark.driver.memory", "2g"))
    for key, value in {**BASE_CONF, **s3a_conf(os.environ)}.items():
        builder = builder.config(key, value)
    submit_opts = os.environ["SPARK_SUBMIT_OPTS"]
    os.environ["SPARK_SUBMIT_OPTS"] = _OWN_SUBMIT_OPTS  # a long-lived JVM: keep the default JIT and GC
    try:
        session = builder.getOrCreate()
    finally:
        os.environ["SPARK_SUBMIT_OPTS"] = submit_opts
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_endpoint(session_tmp):
    """A moto S3 server in its own process on a free loopback port."""
    from music_recs_dev import local_s3

    port = free_port()
    proc = local_s3.start(port, str(session_tmp / "s3.log"))
    endpoint = local_s3.endpoint(port)
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = os.environ["AIRFLOW_CONN_AWS_MODELS_READER"] = (
        '{"conn_type": "aws", "login": "testing", "password": "testing", '
        f'"extra": {{"endpoint_url": "{endpoint}", "region_name": "us-east-1"}}}}'
    )
    # What a submitted job's driver gets from the connection (spark_submit.s3_environment), for the
    # session-wide `spark` and boto3 in this process (moto's dummy keys, not secrets).
    os.environ.update(AWS_ENDPOINT_URL_S3=endpoint, AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    yield endpoint
    if proc is not None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def store(s3_endpoint):
    from music_recs_airflow.s3 import S3Store

    return S3Store.from_endpoint(s3_endpoint, "testing", "testing")


@pytest.fixture
def bucket(store, request):
    """A fresh bucket per test, so tests do not see each other's objects."""
    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{os.getpid()}"
    store.ensure_bucket(name)
    return name


@pytest.fixture
def s3a_lake(store, bucket) -> str:
    """A fresh lake root on the tests' S3 server, as Spark names it: ``s3a://<bucket>/lake``."""
    return f"s3a://{bucket}/lake"


def airflow_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env
