"""Failure alerts POSTed to a real HTTP server on loopback; logged only without a connection."""

import datetime as dt
import http.server
import json
import logging
import threading
import types

import pytest

from music_recs_airflow.notifier import FailureNotifier, alert_payload, failure_class, webhook_of
from music_recs.failures import QualityGateFailed
from music_recs.failures import SparkJobError


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _context(exc):
    ti = types.SimpleNamespace(
        dag_id="music_recs_daily", task_id="train_als", run_id="scheduled__2026-11-20T00:00:00+00:00", try_number=2,
        log_url="http://127.0.0.1:8080/dags/music_recs_daily/runs/scheduled__2026-11-20T00%3A00%3A00%2B00%3A00"
                "/tasks/train_als?try_number=2")
    return {"ti": ti, "task_instance": ti, "exception": exc,
            "logical_date": dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)}


def test_failure_is_posted_to_the_configured_webhook_with_run_task_class_and_log(webhook_server, monkeypatch):
    port = webhook_server.server_address[1]
    monkeypatch.setenv("AIRFLOW_CONN_MUSIC_RECS_ALERTS", json.dumps(
        {"conn_type": "http", "host": f"http://127.0.0.1:{port}", "password": "hook-token-123",
         "extra": {"endpoint": "/alerts/music"}}))
    oom = SparkJobError("Spark job train_als failed", "java.lang.OutOfMemoryError: Java heap space\n"
                        "spark.hadoop.fs.s3a.secret.key=abc123SECRET", 1)

    FailureNotifier()(_context(oom))

    (request,) = webhook_server.received
    assert request["path"] == "/alerts/music"
    assert request["headers"]["Authorization"] == "Bearer hook-token-123"
    body = request["body"]
    assert body["dag_id"] == "music_recs_daily" and body["task_id"] == "train_als"
    assert body["run_id"] == "scheduled__2026-11-20T00:00:00+00:00" and body["try_number"] == 2
    assert body["failure_class"] == "spark:executor_out_of_memory"
    assert body["exception_type"] == "SparkJobError"
    assert body["log_url"].endswith("/tasks/train_als?try_number=2")
    assert body["logical_date"] == "2026-11-20T00:00:00+00:00"
    assert "train_als" in body["text"] and body["log_url"] in body["text"]
    assert "abc123SECRET" not in json.dumps(body)


def test_without_the_connection_the_alert_is_logged_only(monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_MUSIC_RECS_ALERTS", raising=False)
    with caplog.at_level(logging.WARNING, logger="music_recs_airflow.notifier"):
        FailureNotifier()(_context(QualityGateFailed("dt=2026-11-20: map 0.01 < baseline 0.02; not published")))
    (record,) = [r for r in caplog.records if r.name == "music_recs_airflow.notifier"]
    assert "no connection music_recs_alerts" in record.getMessage()
    assert "QualityGateFailed: dt=2026-11-20: map 0.01" in record.getMessage()


def test_secret_in_the_error_message_is_masked():
    payload = alert_payload(_context(RuntimeError("submit failed: password=hunter2 token: abc")))
    assert "hunter2" not in payload["error"] and "abc" not in payload["error"]
    assert payload["failure_class"] == "RuntimeError"


def test_failure_class_of_a_non_retryable_spark_error_and_of_nothing():
    assert failure_class(SparkJobError("x", "Path does not exist: file:/lake/matrix", 1)) == "spark:non_retryable"
    assert failure_class(None) == "unknown"
    # The class the hook gave (it knew the job's Python memory limit) wins over the output alone.
    crash = "WARN TaskSetManager: ... SparkException: Python worker exited unexpectedly (crashed)."
    assert failure_class(SparkJobError("x", crash, 1)) == "spark:unknown"
    assert failure_class(SparkJobError("x", crash, 1, failure="executor_out_of_memory")) == "spark:executor_out_of_memory"


def _conn(**kw):
    base = {"conn_id": "music_recs_alerts", "host": None, "schema": None, "port": None, "password": None,
            "extra_dejson": {}}
    return types.SimpleNamespace(**{**base, **kw})


def test_webhook_url_from_host_and_plain_http_refused_off_loopback():
    assert webhook_of(_conn(host="hooks.example.com", extra_dejson={"endpoint": "services/T0/B0"}))[0] == \
        "https://hooks.example.com/services/T0/B0"
    assert webhook_of(_conn(host="127.0.0.1", schema="http", port=9000))[0] == "http://127.0.0.1:9000"
    with pytest.raises(ValueError, match="not TLS"):
        webhook_of(_conn(host="http://alerts.example.com/hook"))
    with pytest.raises(ValueError, match="no host"):
        webhook_of(_conn())


def test_every_task_of_the_dag_alerts_on_failure():
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags")).dags["music_recs_daily"]
    for task in dag.tasks:
        assert any(isinstance(cb, FailureNotifier) for cb in task.on_failure_callback), task.task_id
