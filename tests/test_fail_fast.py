"""A failure that can never succeed ends its task after one try (AirflowFailException: no retry),
with its one-line cause; a transient one keeps the task's retries. Only the project's own
deterministic failure classes count as the first kind: a ValueError from library code, or a
connection look-up the metadata database did not answer, keeps the retries."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowFailException

from music_recs import failures
from music_recs.failures import (DataTooLargeError, InvalidInput, NoLandingData, PermanentSparkJobError, TooManyBadRows,
                                 ValidationFailed, is_permanent)
from music_recs import settings
from music_recs.checks import parse_day
from music_recs.confidence import ConfidenceParams
from music_recs.jobs import MatrixResult
from music_recs.schema import require_columns
from music_recs.settings import DeploymentSettings
from music_recs.sizing import ClusterResources, MatrixShape, size_als
from music_recs_airflow import tasks
from music_recs_airflow.spark_submit import SparkJobHook, job_path

DAY = "2026-11-20"
START = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)


@pytest.fixture
def plan(tmp_path, bucket):
    cfg = DeploymentSettings(raw_bucket=bucket, models_bucket=bucket, lake_uri=str(tmp_path / "lake"))
    return tasks.plan_run({"rank": 4, "max_iter": 1}, START, "manual__fail_fast", cfg)


def matrix(users: int, items: int, nnz: int) -> MatrixResult:
    return MatrixResult(day=DAY, window={}, params={}, min_user_items=2, min_item_users=2, ids_added={}, seconds={},
                        stats={"track": {"users": users, "items": items, "nnz": nnz}})


def fails_at_once(call, cause: type) -> str:
    with pytest.raises(AirflowFailException) as err:
        call()
    assert isinstance(err.value.__cause__, cause), repr(err.value.__cause__)
    message = str(err.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def test_no_landing_files(store, plan):
    message = fails_at_once(lambda: tasks.ingest(store, plan), NoLandingData)
    assert message == f"no stream logs under {plan.landing_uri}; nothing to ingest"


def test_a_matrix_too_large_for_the_cluster(plan):
    message = fails_at_once(lambda: tasks.train(plan, matrix(10**9, 10**8, 10**11)), DataTooLargeError)
    assert message.startswith("train_als: 1000000000 users x 100000000 items, 100000000000 ratings at rank ")
    assert "need about" in message and "over the" in message and "add nodes or memory, or lower the rank" in message


def permanent_classes(cls=failures.PermanentFailure):
    for sub in cls.__subclasses__():
        yield sub
        yield from permanent_classes(sub)


@pytest.mark.parametrize("cls", sorted(set(permanent_classes()), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_class_that_cannot_succeed_fails_the_task_without_retry(cls):
    @tasks.fail_fast
    def stage():
        raise cls("dt=2026-11-20: the cause, in one line\nand detail that stays in the log")

    with pytest.raises(AirflowFailException, match=r"^dt=2026-11-20: the cause, in one line$") as err:
        stage()
    assert isinstance(err.value.__cause__, cls)


def test_a_transient_failure_keeps_its_retries():
    @tasks.fail_fast
    def lost_connection():
        raise ConnectionError("S3 endpoint reset the connection")

    with pytest.raises(ConnectionError):
        lost_connection()


def test_a_value_error_from_library_code_keeps_its_retries():
    """Before: every ValueError counted as permanent, whatever raised it."""
    @tasks.fail_fast
    def parse_a_reply():
        json.loads('{"truncated": ')  # JSONDecodeError, a ValueError: a reply cut short may be whole next time

    with pytest.raises(json.JSONDecodeError):
        parse_a_reply()
    assert not is_permanent(ValueError("x")) and is_permanent(InvalidInput("x"))


def test_a_spark_connection_that_is_not_defined_fails_at_once(plan):
    cfg = dataclasses.replace(plan.settings, spark_conn_id="no_such_spark")
    message = fails_at_once(lambda: tasks.plan_run({"rank": 4}, START, "manual__no_conn", cfg), InvalidInput)
    assert message == ("the Spark connection 'no_such_spark' is not defined (AirflowNotFoundException); create it, "
                       """e.g. AIRFLOW_CONN_NO_SUCH_SPARK='{"conn_type": "spark", "host": "local[*]"}'""")


def locked_database():
    import sqlite3

    from sqlalchemy.exc import OperationalError

    return OperationalError("SELECT connection.conn_id FROM connection WHERE conn_id = ?", ("spark_default",),
                            sqlite3.OperationalError("database is locked"))


@pytest.mark.parametrize("error, shown", [
    (locked_database, "OperationalError: (sqlite3.OperationalError) database is locked"),
    (lambda: ConnectionResetError(104, "Connection reset by peer"), "ConnectionResetError: [Errno 104] Connection reset by peer"),
    (lambda: RuntimeError("API_SERVER_ERROR: {'status_code': 503}"), "RuntimeError: API_SERVER_ERROR: {'status_code': 503}"),
], ids=["database_locked", "connection_reset", "api_server_error"])
def test_a_connection_look_up_that_failed_keeps_its_retries(plan, monkeypatch, error, shown):
    """Fault injection: the metadata database (or the API server) does not answer the look-up.
    Before: a ValueError saying the connection is not defined, and no retry."""
    from airflow.sdk import BaseHook

    def flaky(cls, conn_id):
        raise error()

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(flaky))
    with pytest.raises(RuntimeError) as err:
        tasks.plan_run({"rank": 4}, START, "manual__flaky", plan.settings)
    assert not isinstance(err.value, AirflowFailException) and not is_permanent(err.value)
    assert str(err.value) == f"could not read the Spark connection 'spark_default': {shown}"


@pytest.mark.parametrize("call, message", [
    (lambda: DeploymentSettings(raw_bucket="Raw_Bucket"), "raw_bucket 'Raw_Bucket' is not a valid S3 bucket name"),
    (lambda: DeploymentSettings(lake_uri="lake"), "lake_uri 'lake' must be an absolute path (a relative one depends "
                                                  "on the worker's folder)"),
    (lambda: DeploymentSettings(max_quarantine_fraction="a lot"), "setting max_quarantine_fraction must be a float, "
                                                                  "got 'a lot'"),
    (lambda: DeploymentSettings(train_attempts=0), "broadcast_budget_mb must be >= 0 and train_attempts >= 1"),
    (lambda: settings.resolve({"lake": "/x"}, {}), "Airflow Variable music_recs_config has unknown key(s): ['lake']"),
    (lambda: settings.cluster_resources(True, {"MUSIC_RECS_CLUSTER_NODES": "two"}),
     "MUSIC_RECS_CLUSTER_NODES must be a whole number, got 'two'"),
    (lambda: parse_day("2026-02-30", "day"), "day '2026-02-30' is not a calendar date: day is out of range for month"),
    (lambda: ConfidenceParams(alpha=0), "alpha must be > 0, got 0"),
    (lambda: require_columns(["user_id"], ["user_id", "track_id"], "the plays"),
     "the plays is missing required column(s): track_id"),
    (lambda: size_als(MatrixShape(users=0, items=5, nnz=5, rank=4), ClusterResources(1, 2, 4096, local=True)),
     "matrix shape must be positive, got MatrixShape(users=0, items=5, nnz=5, rank=4)"),
    (lambda: job_path("no_such_job"), "unknown Spark job 'no_such_job': no "),
], ids=["bucket", "lake_uri", "setting_type", "train_attempts", "variable_key", "cluster_env", "day", "alpha",
        "columns", "matrix_shape", "job"])
def test_bad_input_fails_at_once_with_its_message(call, message):
    @tasks.fail_fast
    def stage():
        call()

    assert fails_at_once(stage, InvalidInput).startswith(message)


def test_a_spark_binary_that_is_not_spark_submit_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ODD_SPARK", '{"conn_type": "spark", "host": "local[*]", '
                                                 '"extra": {"spark-binary": "bash"}}')
    hook = SparkJobHook("odd_spark", work_dir=str(tmp_path))
    message = fails_at_once(tasks.fail_fast(lambda: hook.command("s.json", "r.json", "ingest", {}, {})), InvalidInput)
    assert message == "the spark-binary extra of odd_spark must be spark-submit, spark2-submit or spark3-submit, got 'bash'"


@pytest.mark.spark
def test_too_many_bad_rows(store, bucket, plan):
    good = [{"event_id": f"e{i}", "ts": "2026-11-20T10:00:00Z", "user_id": "u1", "track_id": f"t{i}",
             "artist_id": "a1", "ms_played": 60000} for i in range(10)]
    lines = [json.dumps(r) for r in good] + ["{not json"] * 5
    store.client.put_object(Bucket=bucket, Key=f"stream_logs/dt={DAY}/part-0.jsonl.gz",
                            Body=gzip.compress("\n".join(lines).encode()))
    message = fails_at_once(lambda: tasks.ingest(store, plan), TooManyBadRows)
    assert message.startswith(f"dt={DAY}: 5 of 15 rows (33.3%) failed row-level checks") and "not_json_object" in message


@pytest.mark.spark
def test_a_failed_validation(plan):
    partition = plan.lake.plays(DAY)
    table = pa.table({"event_id": ["e1", "e1"], "ts": pa.array([dt.datetime(2026, 11, 20, 10)] * 2, pa.timestamp("us", tz="UTC")),
                      "user_id": ["u1", "u1"], "track_id": ["t1", "t1"], "artist_id": ["a1", "a1"],
                      "ms_played": pa.array([-5, 60000], pa.int64()), "track_name": ["x", "x"],
                      "artist_name": ["y", "y"]})
    import os

    os.makedirs(partition)
    pq.write_table(table, f"{partition}/part-00000.parquet")
    open(f"{partition}/_SUCCESS", "w").close()
    message = fails_at_once(lambda: tasks.validate(plan), ValidationFailed)
    assert message.startswith(f"dt={DAY} failed 2 expectation(s): stream_logs_daily.ms_played_out_of_range "
                              "expect_column_values_to_be_between: observed 1 (min 0, max 0); stream_logs_daily."
                              "event_id_duplicates expect_column_values_to_be_between: observed 1 (min 0, max 0); "
                              "Data Docs: file://"), message


@pytest.mark.spark
def test_a_spark_job_that_cannot_succeed_is_submitted_once(plan):
    """No matrix at the plan's path: the job fails non-retryably; training does not resubmit it and
    the task does not retry it (before: 3 Airflow tries of it)."""
    started = time.time()
    message = fails_at_once(lambda: tasks.train(plan, matrix(20, 10, 100)), PermanentSparkJobError)
    assert message.startswith(f"Spark job train_als dt={DAY} failed (non_retryable): ")
    assert "PATH_NOT_FOUND" in message or "does not exist" in message
    assert "not retryable" in message and "attempt 1: non_retryable" in message and "attempt 2" not in message
    assert "spark-submit" not in message and "--conf" not in message and "results/train_als.log" in message
    assert time.time() - started < 120


def test_a_failed_output_check_blocks_publishing_in_one_line(store, plan):
    """The output suites' failures reach the quality gate task: refused at once, each failed
    expectation named with its observed value; overridden, the run publishes and records why."""
    from music_recs.failures import QualityGateFailed
    from music_recs.jobs import EvaluateResult

    line = ("model_output_summary.catalogue_coverage expect_column_values_to_be_between: observed 0.04 (min 0.3)")
    evaluated = EvaluateResult(k=10, top_n=50, model={"map": 0.3}, baseline_popularity={"map": 0.1},
                               recommendation_rows=0, similar_items_per_item=20, seconds={},
                               output_checks={"success": False, "checks": [], "failed": [line], "summary": {}})
    message = fails_at_once(lambda: tasks.quality_gate(store, plan, evaluated), QualityGateFailed)
    assert message.startswith(f"dt={DAY}: quality gate failed on map") and f"output check {line}" in message
    overridden = tasks.plan_run({"rank": 4, "max_iter": 1, "override_quality_gate": True}, START, "manual__o",
                                plan.settings)
    decision = tasks.quality_gate(store, overridden, evaluated)
    assert decision["publish"] and decision["overridden"] and decision["reasons"] == [f"output check {line}"]
