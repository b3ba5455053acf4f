"""Failure alerts: which run, which task, what kind of failure, where the log is.

``FailureNotifier`` is the DAG's ``on_failure_callback`` (an Airflow notifier). It POSTs
one JSON object to the webhook of the Airflow connection ``music_recs_alerts``:

    {"text": one line for a chat channel, "dag_id", "run_id", "task_id", "try_number",
     "logical_date", "failure_class", "exception_type", "error", "log_url"}

The connection's ``host`` is the webhook URL (``https://hooks.example.com/services/...``),
or a host name with ``schema``/``port`` and an ``endpoint`` extra for the path; a
``password`` is sent as ``Authorization: Bearer``. Plain HTTP is refused unless the
webhook is on loopback, like the S3 client. Without the connection the alert is only
logged, so a deployment with no alert channel still has the line in the task log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.request
from urllib.parse import urlparse

from airflow.sdk import BaseNotifier

from music_recs.failures import SparkJobError
from music_recs.resubmission import classify_failure, mask_secrets
from music_recs_airflow.s3 import is_loopback

log = logging.getLogger(__name__)

ALERTS_CONN_ID = "music_recs_alerts"
TIMEOUT_S = 10


def failure_class(exc: BaseException | None) -> str:
    """A short name for what went wrong: the Spark failure class for Spark jobs, else the exception type."""
    if exc is None:
        return "unknown"
    cause = exc.__cause__ or exc  # a task that fails fast wraps the cause in AirflowFailException
    if isinstance(cause, SparkJobError):
        # The hook's class (it knew the job's settings, e.g. a Python memory limit); else from the output.
        known = cause.failure if cause.failure != "unknown" else None
        return f"spark:{known or classify_failure(cause.output, cause.returncode)[0].value}"
    return type(cause).__name__


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else value


def alert_payload(context) -> dict:
    """The alert for a task failure, from the callback's context; secrets in the error are masked."""
    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    error = mask_secrets(str(exc).strip().splitlines()[0][:500]) if exc and str(exc).strip() else ""
    payload = {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "try_number": ti.try_number,
        "logical_date": _iso(context.get("logical_date")),
        "failure_class": failure_class(exc),
        "exception_type": type(exc).__name__ if exc else None,
        "error": error,
        "log_url": ti.log_url,
    }
    payload["text"] = (f"{payload['dag_id']} failed at {payload['task_id']} (run {payload['run_id']}, "
                       f"try {payload['try_number']}): {payload['failure_class']}: {error} | log: {payload['log_url']}")
    return payload


def webhook_of(conn) -> tuple[str, dict]:
    """The URL and headers to POST to, from an HTTP connection."""
    host = (conn.host or "").rstrip("/")
    if not host:
        raise ValueError(f"connection {conn.conn_id} has no host; set it to the webhook URL")
    base = host if "://" in host else f"{conn.schema or 'https'}://{host}"
    if conn.port and not urlparse(base).port:
        base = f"{base}:{conn.port}"
    endpoint = (conn.extra_dejson or {}).get("endpoint", "")
    url = base + ("/" + endpoint.lstrip("/") if endpoint else "")
    if urlparse(url).scheme != "https" and not is_loopback(url):
        raise ValueError(f"alert webhook of connection {conn.conn_id} is not TLS; use https:// unless it is on loopback")
    headers = {"Content-Type": "application/json"}
    if conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    return url, headers


def _alerts_connection(conn_id: str):
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException, or no way to reach connections at all
        log.debug("connection %s not available: %s", conn_id, exc)
        return None


def post_json(url: str, headers: dict, payload: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
        return resp.status


class FailureNotifier(BaseNotifier):
    """Send a task failure to the ``music_recs_alerts`` webhook, or log it when there is none."""

    def __init__(self, conn_id: str = ALERTS_CONN_ID):
        super().__init__()
        self.conn_id = conn_id

    def notify(self, context) -> None:
        payload = alert_payload(context)
        conn = _alerts_connection(self.conn_id)
        if conn is None:
            log.warning("ALERT (no connection %s configured, logged only): %s", self.conn_id, payload["text"])
            return
        url, headers = webhook_of(conn)
        status = post_json(url, headers, payload)
        log.info("alert sent to connection %s (HTTP %d): %s", self.conn_id, status, payload["text"])
