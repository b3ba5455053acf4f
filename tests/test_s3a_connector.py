"""The S3A connector: pinned to PySpark's Hadoop, fetched once, handed to jobs without secrets on a command line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyspark
import pytest

from music_recs.failures import InvalidInput
from music_recs_airflow.spark_submit import CONNECTOR_LOCK, SparkJobHook, connector_jars, s3_environment
from spark_jobs.lib.s3a import s3a_conf
from tests.conftest import REPO


def lock_rows():
    return [line.split("\t") for line in CONNECTOR_LOCK.read_text().splitlines() if line and not line.startswith("#")]


def test_hadoop_aws_matches_the_hadoop_client_inside_pyspark():
    jars = os.listdir(Path(pyspark.__file__).parent / "jars")
    (client,) = [j for j in jars if j.startswith("hadoop-client-api-")]
    (aws,) = [r for r in lock_rows() if r[1] == "hadoop-aws"]
    assert client == f"hadoop-client-api-{aws[2]}.jar"
    assert all(len(r) == 4 and len(r[3]) == 64 for r in lock_rows())
    assert not [r for r in lock_rows() if r[1] == "bundle"]  # the 500 MB SDK bundle is not needed


def test_missing_jars_fail_in_one_line_naming_what_and_how(tmp_path):
    with pytest.raises(InvalidInput) as err:
        connector_jars(str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "S3A connector is not installed" in message
    assert "org.apache.hadoop:hadoop-aws:3.4.2" in message or "jars missing" in message
    assert "fetch_connector.sh" in message


def test_the_fetch_is_cached_and_an_unreachable_repository_stops_setup_in_one_line(tmp_path):
    script = REPO / "infra" / "local" / "fetch_connector.sh"
    cached = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MAVEN_REPO_URL": "http://127.0.0.1:1/nothing"})
    assert cached.returncode == 0 and "up to date" in cached.stdout  # the suite's set-up fetched them already
    empty = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "MAVEN_REPO_URL": "http://127.0.0.1:1/nothing",
                                "MUSIC_RECS_JARS_DIR": str(tmp_path)})
    assert empty.returncode == 1 and len(empty.stderr.strip().splitlines()) == 1
    assert "could not fetch org.apache.hadoop:hadoop-aws:3.4.2" in empty.stderr and "MAVEN_REPO_URL" in empty.stderr
    assert not list(tmp_path.glob("*.jar"))


def test_s3a_settings_come_from_the_environment_the_task_set():
    conf = s3a_conf({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:5055", "AWS_REGION": "eu-west-1",
                     "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:5055"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert conf["spark.hadoop.fs.s3a.secret.key"] == "s3cr3t"
    assert s3a_conf({}) == {}  # on a cluster: S3A's default chain (the instance's or pod's role)


def test_keys_reach_the_job_in_its_environment_never_on_its_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_KEYED_S3", json.dumps({
        "conn_type": "aws", "login": "AKIAKEYED", "password": "very-secret-value",
        "extra": {"endpoint_url": "http://127.0.0.1:5055", "region_name": "us-east-1"}}))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[*]"}))
    env = s3_environment("keyed_s3")
    assert env["AWS_SECRET_ACCESS_KEY"] == "very-secret-value" and env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:5055"
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path), s3_conn_id="keyed_s3")
    cmd = " ".join(hook.command("s.json", "r.json", "ingest", {"spark.jars": ",".join(connector_jars())}, {}))
    assert "very-secret-value" not in cmd and "AKIAKEYED" not in cmd and "hadoop-aws-3.4.2.jar" in cmd
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_S3", raising=False)
    with pytest.raises(InvalidInput, match="the AWS connection 'no_such_s3' is not defined"):
        s3_environment("no_such_s3")
