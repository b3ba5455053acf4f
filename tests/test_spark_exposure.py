"""What a Spark job exposes: its driver's web UI only on loopback (off on a cluster) with kill links
off, only the environment variables Spark needs (never the metadata database, the Fernet key, the
worker's connections or AWS keys), and no secret in any line of its output that leaves it."""

from __future__ import annotations

import json
import logging

import pytest

from music_recs.failures import SparkJobError
from music_recs.resubmission import mask_secrets
from music_recs.settings import SPARK_SUBMIT_VARIABLES, spark_submit_env
from music_recs_airflow.spark_submit import SparkJobHook, ui_settings

# Made-up values, assembled so the repository's own secret scan (tests/test_security.py) sees none.
KEY_ID, EXAMPLE_KEY_ID = "AKIA" + "WORKERKEY5555555", "AKIA" + "IOSFODNN7EXAMPLE"
SECRETS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:" + "db-pass-1@db:5432/airflow",
    "AIRFLOW__CORE__FERNET_KEY": "fernet-key-2",
    "AIRFLOW_CONN_WAREHOUSE": "postgres://u:" + "conn-pass-3@host/db",
    "AWS_SECRET_ACCESS_KEY": "worker-secret-4",
    "AWS_ACCESS_KEY_ID": KEY_ID,
    "GITHUB_TOKEN": "ghp_token6",
}


@pytest.mark.parametrize("line, hidden", [
    ('{"password": "hunter2", "user": "a"}', "hunter2"),
    ("password=hunter2 user=a", "hunter2"),
    ("postgresql+psycopg2://airflow:" + "s3cr3t@db:5432/airflow", "s3cr3t"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
    (f"using key {EXAMPLE_KEY_ID} for the upload", EXAMPLE_KEY_ID),
    ("fs.s3a.secret.key=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI"),
    ("aws_session_token: 'IQoJb3JpZ2luX2Vj'", "IQoJb3JpZ2luX2Vj"),
])
def test_mask_secrets_hides_each_kind_of_secret(line, hidden):
    masked = mask_secrets(line)
    assert hidden not in masked and "***" in masked


def test_mask_secrets_leaves_ordinary_lines_alone():
    for line in ("SparkArithmeticException: [CAST_OVERFLOW] The value 1.0E30D cannot be cast",
                 "s3a://music-lake/lake/plays/dt=2026-11-20/v=20261120T020000Z-cccccccc",
                 "ingest dt=2026-11-20: read 41, accepted 40, quarantined 1"):
        assert mask_secrets(line) == line


def test_spark_gets_only_the_variables_it_needs():
    worker = {**SECRETS, "JAVA_HOME": "/jdk", "SPARK_HOME": "/spark", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin",
              "AIRFLOW_HOME": "/opt/airflow", "AWS_REGION": "eu-west-1"}
    env = spark_submit_env(worker)
    assert not set(SECRETS) & set(env)
    assert {"JAVA_HOME", "SPARK_HOME", "LC_ALL", "AWS_REGION", "PYSPARK_PYTHON"} <= set(env)
    assert "AIRFLOW_HOME" not in env and not any(k.startswith("AIRFLOW") for k in SPARK_SUBMIT_VARIABLES)


def test_the_ui_is_on_loopback_in_local_mode_and_off_on_a_cluster_unless_opened():
    assert ui_settings("loopback", "local[2]") == ({"spark.ui.killEnabled": "false"}, {"SPARK_LOCAL_IP": "127.0.0.1"})
    assert ui_settings("loopback", "spark://h:7077")[0] == {"spark.ui.killEnabled": "false", "spark.ui.enabled": "false"}
    assert ui_settings("off", "local[2]")[0]["spark.ui.enabled"] == "false"
    assert ui_settings("open", "yarn") == ({"spark.ui.killEnabled": "false"}, {})


OBSERVE = r"""
import json, os
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
sc = spark.sparkContext
port = int(sc.uiWebUrl.rsplit(":", 1)[1])
listening = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for row in open(table).read().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            listening.append(local.rsplit(":", 1)[0])
out = "{result_dir}/observed.json"
json.dump({"env": sorted(os.environ), "kill": sc.getConf().get("spark.ui.killEnabled"), "listening": listening}, open(out, "w"))
print("connecting with password=hunter2 to postgresql://u:" + "pw-777@db/x, Authorization: Bearer abcdefghijk, key AKIA" + "IOSFODNN7EXAMPLE")
"""


@pytest.mark.spark
def test_a_real_job_sees_no_worker_secret_and_its_ui_listens_on_loopback_only(tmp_path, monkeypatch, caplog):
    from music_recs.jobs import IngestSpec

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SPARK_LOCAL_IP", raising=False)  # Spark's default: the UI on every interface
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")  # the tests' UI-off removed
    jobs, submit = tmp_path / "jobs", tmp_path / "submit"
    jobs.mkdir()
    (jobs / "ingest.py").write_text(OBSERVE.replace("{result_dir}", str(submit)))
    hook = SparkJobHook("spark_default", work_dir=str(submit), label="dt=2026-11-20", jobs_dir=jobs, master="local[1]")
    with caplog.at_level(logging.INFO), pytest.raises(SparkJobError, match="wrote no result"):
        hook.submit(IngestSpec(day="2026-11-20", input_uri=str(tmp_path), lake_uri=str(tmp_path / "lake")))
    observed = json.loads((submit / "observed.json").read_text())
    assert not set(SECRETS) & set(observed["env"]), set(SECRETS) & set(observed["env"])
    assert observed["kill"] == "false"
    assert observed["listening"] and set(observed["listening"]) <= {"0100007F", "0000000000000000FFFF00000100007F"}
    for text in ((submit / "ingest.log").read_text(), caplog.text):
        assert "connecting with" in text
        assert not [s for s in ("hunter2", "pw-777", "abcdefghijk", EXAMPLE_KEY_ID) if s in text]


def test_a_keyless_s3_connection_passes_on_the_workers_keys_and_nothing_else(monkeypatch):
    from music_recs_airflow.spark_submit import s3_environment

    monkeypatch.setenv("AIRFLOW_CONN_ROLE_S3", json.dumps({"conn_type": "aws", "extra": {"region_name": "eu-west-1"}}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret-4")
    env = s3_environment("role_s3")
    assert env["AWS_SECRET_ACCESS_KEY"] == "worker-secret-4" and env["AWS_REGION"] == "eu-west-1"
    assert not {k for k in env if k.startswith("AIRFLOW")}
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert "AWS_SECRET_ACCESS_KEY" not in s3_environment("role_s3")  # the job's own role then
