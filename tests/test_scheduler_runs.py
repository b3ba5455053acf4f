"""The three ways runs start, against a REAL scheduler: `infra/local/airflow.sh start` (airflow standalone)
on a temporary AIRFLOW_HOME with a PostgreSQL metadata database, real Spark in local mode, the moto S3
server over HTTP.

- scheduled: airflow.sh unpauses the DAG; the scheduler creates the run of the latest interval
  (catchup off) and it must publish;
- CLI backfill: `airflow backfill create` over two days; the day the scheduled run already
  processes is not run twice, the other runs with the backfill's conf, Spark stages of all runs
  never overlap (pool), each day is published and latest.json ends on the last day;
  rerunning the completed range does what --reprocess-behavior says (dry run);
- both training strategies end to end: the scheduled run trains with the default (CG), the
  backfill's conf picks MLlib; every published manifest is verified against its
  objects (size, sha256), its rows, window, metrics, quality gate and submission, and
  `music-recs recommend` prints recommendations from the published model;
- the published model as an Asset: the publication that moved the pointer triggers the example
  consumer DAG, which verifies the manifest's objects;
- UI trigger: the trigger form in headless Chromium, submitted as a person would (the recipe
  fields left empty): the form sends every param, and the run searches like a scheduled one;
  through the REST API the form calls, out-of-schema params are refused, a run whose params break
  a cross-field rule fails in plan_run and the failure alert reaches the alerts webhook;
- a backfill of a day before the published one: evaluated and published without moving the
  pointer, never compared with the later model (trained on its held-out day), and its manifest
  says why; no secret reaches any log;
- the lake on object storage (``lake_uri=s3a://...`` on the same S3 server): every stage reads and
  writes it through the S3A connector, and no stage leaves a lake file on a local disk.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import http.server
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from music_recs.jobs import IngestSpec
from music_recs.recipe import FIELDS as RECIPE_FIELDS
from music_recs_airflow import cli
from music_recs_airflow.cli import load_recommendations
from music_recs_airflow.publish import read_latest, read_parquet
from music_recs_dev.airflow_ui import trigger_dag
from music_recs_dev.sample_data import Catalogue, CatalogueSpec, upload_days, write_days_local
from spark_jobs import ingest
from tests.conftest import REPO, airflow_env, free_port

# The timeout covers the stack's start too: 12 min here beside the rest of the suite took 19 in
# a CI run (setup 4, the runs 15); the rest is for a slower machine, not for a hang.
pytestmark = [pytest.mark.e2e, pytest.mark.spark, pytest.mark.timeout(2400)]

DAG_ID = "music_recs_daily"
PLAYS = 2000
DRAWN_AS = dt.date(2026, 11, 29)  # the first history day's draws (see the `stack` fixture)
RAW, MODELS, LAKE_BUCKET = "sched-raw", "sched-models", "sched-lake"
LAKE = f"s3a://{LAKE_BUCKET}/lake"
# What only a lake leaves: Parquet, Spark's and the lake's commit markers, GX Data Docs pages.
LAKE_FILES = ("*.parquet", "_SUCCESS", "_COMMITTED.json", "index.html")
# From the stack's start to the last assertion takes 8-10 min here (12-14 beside the rest of the suite,
# as test.sh runs it); a UTC midnight inside that span
# changes the interval the scheduler runs (and adds a second scheduled run), so the test starts after it.
MIDNIGHT_MARGIN = dt.timedelta(minutes=20)
# The scheduled run trains with the default strategy (CG) and searches its params first (tune
# if_stale, nothing searched published yet); the backfill trains with MLlib, without a search.
BACKFILL_CONF = {"window_days": 4, "max_iter": 5, "top_n": 10, "strategy": "mllib", "tune": "off"}
# The run from the trigger form: a smaller window and search; the recipe fields left empty.
FORM_CHANGES = {"window_days": 4, "tune_trials": 3}
API_TIMEOUT_S = 120
# Two runs of five Spark stages, 20-55 s each on 2 cores: 7.5 min here, 15 in a CI run that was
# 1.6x slower; the deadline leaves that much again.
RUNS_DEADLINE_S = 1800


class _AlertReceiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def _cli(env, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"airflow {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


class Api:
    """The REST API the UI uses, logged in as the generated admin user."""

    def __init__(self, base: str, password: str):
        self.base = base
        self.token = self._call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]

    def _call(self, method, path, body=None, headers=None):
        req = urllib.request.Request(self.base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
        # Generous: with Spark on both cores the API server can be slow to answer.
        with urllib.request.urlopen(req, timeout=API_TIMEOUT_S) as resp:
            return json.loads(resp.read() or b"null")

    def __call__(self, method, path, body=None):
        return self._call(method, path, body, {"Authorization": f"Bearer {self.token}"})


def _stop_stack(env, pid_file: Path):
    """airflow.sh stop, then make sure nothing it started is left (by pid: the group and its descendants)."""
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    family = []
    if pid:
        try:
            family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    subprocess.run(["bash", str(REPO / "infra" / "local" / "airflow.sh"), "stop"], env=env, capture_output=True,
                   timeout=90)
    for proc in family:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=15)


@dataclasses.dataclass(frozen=True)
class Days:
    """The days the test works on, all relative to the interval the scheduler will run."""
    scheduled: dt.date  # catchup off: the scheduler runs the latest complete interval only
    backfill: list[dt.date]  # two days ending on the scheduled one (one full DAG run is ~3 min here)
    history: list[dt.date]  # the three before, already in the lake

    @classmethod
    def clear_of_midnight(cls, margin: dt.timedelta = MIDNIGHT_MARGIN, sleep=time.sleep,
                          clock=lambda: dt.datetime.now(dt.timezone.utc)) -> "Days":
        """Days for a test that starts now; if a UTC midnight is less than `margin` away, wait for it.

        Computed here, not at import: pytest imports this module when the suite starts, minutes
        before the stack runs (a CI run that began at 23:55 expected the day before the scheduler's).
        """
        now = clock()
        next_midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
        if next_midnight - now < margin:
            sleep((next_midnight - now).total_seconds() + 5)
            now = clock()
        scheduled = now.date() - dt.timedelta(days=1)
        backfill = [scheduled - dt.timedelta(days=i) for i in (1, 0)]
        return cls(scheduled, backfill, [backfill[0] - dt.timedelta(days=i) for i in (3, 2, 1)])


@pytest.mark.parametrize("clock, waited, scheduled", [
    ("2026-11-24T23:55:00", 305.0, "2026-11-24"),  # the CI run that failed: wait, then yesterday is the 24th
    ("2026-11-24T23:39:00", None, "2026-11-23"),
    ("2026-11-25T00:00:01", None, "2026-11-24"),
])
def test_days_never_straddle_a_utc_midnight(clock, waited, scheduled):
    slept = []
    start = dt.datetime.fromisoformat(clock).replace(tzinfo=dt.timezone.utc)
    days = Days.clear_of_midnight(sleep=slept.append,
                                  clock=lambda: start + dt.timedelta(seconds=sum(slept)))
    assert slept == ([waited] if waited else [])
    assert days.scheduled.isoformat() == scheduled and days.backfill[-1] == days.scheduled
    assert (days.backfill[0] - days.history[-1]).days == 1 and len(days.history) == 3 and len(days.backfill) == 2


@pytest.fixture(scope="module")
def metadata_db():
    """PostgreSQL, as in a deployment: on SQLite the scheduler, API server and CLI contend for one
    file lock, and REST calls and `backfill create` failed with "database is locked" now and then."""
    from music_recs_dev.local_postgres import LocalPostgres

    pg = LocalPostgres(free_port()).start()
    try:
        yield pg.url
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_endpoint, spark, metadata_db):
    from music_recs_airflow.s3 import S3Store

    days = Days.clear_of_midnight()
    root = tmp_path_factory.mktemp("sched")
    store = S3Store.from_endpoint(s3_endpoint, "testing", "testing")
    for b in (RAW, MODELS, LAKE_BUCKET):
        store.ensure_bucket(b)
    # The days follow the calendar; their plays do not: each day draws what it drew when the first
    # history day was DRAWN_AS (the model's lift over popularity, which the quality gate judges,
    # would otherwise change from one calendar day to the next).
    catalogue = Catalogue(dataclasses.replace(CatalogueSpec.for_plays_per_day(PLAYS),
                                              day_offset=(DRAWN_AS - days.history[0]).days))
    upload_days(store, RAW, "stream_logs", [*days.history, *days.backfill], PLAYS, catalogue)
    # History: the days before the scheduled one are in the lake, as earlier daily runs leave them
    # (the scheduled run searches on the day before it); the backfill ingests its day again.
    in_lake = [*days.history, days.backfill[0]]
    write_days_local(str(root / "landing"), in_lake, PLAYS, catalogue)
    for d in in_lake:
        ingest.run(spark, IngestSpec(day=str(d), input_uri=str(root / "landing" / f"dt={d}"), lake_uri=LAKE))

    alerts = http.server.HTTPServer(("127.0.0.1", 0), _AlertReceiver)
    alerts.received = []
    threading.Thread(target=alerts.serve_forever, daemon=True).start()
    alert_token = "alert-token-" + secrets.token_hex(12)

    port = free_port()
    env = airflow_env({
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
        "MUSIC_RECS_LOCAL_STATE": str(root / "state"),
        "MUSIC_RECS_AIRFLOW_PORT": str(port),
        "MUSIC_RECS_S3_PORT": s3_endpoint.rsplit(":", 1)[1],  # airflow.sh finds the running server
        "MUSIC_RECS_RAW_BUCKET": RAW,
        "MUSIC_RECS_MODELS_BUCKET": MODELS,
        "MUSIC_RECS_LAKE_URI": LAKE,
        "MUSIC_RECS_WORK_DIR": str(root / "work"),
        "MUSIC_RECS_TASK_RETRIES": "0",
        "MUSIC_RECS_SENSOR_POKE_S": "5",
        "MUSIC_RECS_SENSOR_TIMEOUT_S": "120",
        # The DAG file does not change during the test: parse it once, leave the 2 cores to Spark.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),  # not 8793: a local stack may run
        "AIRFLOW_CONN_MUSIC_RECS_ALERTS": json.dumps({
            "conn_type": "http", "host": f"http://127.0.0.1:{alerts.server_address[1]}", "password": alert_token,
            "extra": {"endpoint": "/alerts"}}),
    })
    for conn in ("AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_AWS_MODELS_READER"):
        env.pop(conn, None)  # the stack uses infra/airflow/connections.json
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", None)  # SQLite's (env.sh), not psycopg2's
    # CLI calls from the test talk to the same database and S3 as the stack.
    cli_env = {**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_ENDPOINT_URL_S3": s3_endpoint}
    pid_file = root / "state" / "airflow.pid"
    started = time.monotonic()
    start = subprocess.run(["bash", str(REPO / "infra" / "local" / "airflow.sh"), "start"], env=env,
                           capture_output=True, text=True, timeout=300)
    try:
        assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
        assert f"http://127.0.0.1:{port}" in start.stdout
        passwords = json.loads((root / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
        yield {"days": days, "env": cli_env, "store": store, "root": root, "password": passwords["admin"],
               "api": Api(f"http://127.0.0.1:{port}", passwords["admin"]),
               "alerts": alerts, "alert_token": alert_token, "started": started}
    finally:
        _stop_stack(env, pid_file)
        alerts.shutdown()
        alerts.server_close()


def _runs(api) -> list[dict]:
    return api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]


def _wait(predicate, deadline_s: float, what: str, interval=3.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what}")


def _task_spans(api, run_id: str, query: str = "") -> list[tuple]:
    """(start, end, run_id, task_id) of the run's task instances that ran (run_id "~": every run).

    Tasks never run (upstream_failed, skipped) have a start and end stamped at once; they are left out."""
    tis = api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='~')}/taskInstances?limit=100{query}")
    return [(dt.datetime.fromisoformat(t["start_date"]), dt.datetime.fromisoformat(t["end_date"]), t["dag_run_id"],
             t["task_id"]) for t in tis["task_instances"] if t["state"] in ("success", "failed") and t["try_number"] > 0]


def _failures(api, root: Path, run_id: str) -> str:
    """The failed tasks of a run with the last error lines of their logs (for an assertion's message)."""
    tis = api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100")
    failed = [t["task_id"] for t in tis["task_instances"] if t["state"] == "failed"]
    lines = []
    for task_id in failed:
        for log in (root / "airflow" / "logs").rglob(f"*task_id={task_id}*/**/*"):
            if log.is_file() and (quote(run_id, safe="") in str(log) or run_id in str(log)):
                for line in log.read_text(errors="replace").splitlines():
                    if '"error_detail"' in line:  # the exception with where it was raised
                        for err in json.loads(line)["error_detail"]:
                            where = [f"{f['filename'].rsplit('/', 1)[-1]}:{f['lineno']}" for f in err["frames"][-4:]]
                            lines.append(f"{err['exc_type']}: {err['exc_value']} at {' < '.join(reversed(where))}")
    return f"failed tasks {failed}: " + "\n".join(lines)


def _day(run: dict) -> str:
    return run["data_interval_start"][:10]


def _check_published(store, manifest: dict, day: dt.date, strategy: str):
    """A published run, end to end: objects as the manifest says, rows accounted for, the window,
    the strategy, a model that beats popularity and passed the gate, one successful submission,
    only the matrix it trains on built, evaluation sized to the matrix."""
    for obj in manifest["objects"]:
        data, _ = store.get_bytes(MODELS, obj["key"])
        assert len(data) == obj["size"] and hashlib.sha256(data).hexdigest() == obj["sha256"], obj["key"]
    assert {o["artifact"] for o in manifest["objects"]} >= {"user_factors", "item_factors", "recommendations",
                                                            "similar_items"}
    rows = manifest["rows"]
    assert rows["rows_read"] == PLAYS
    assert rows["rows_read"] == rows["rows_accepted"] + rows["rows_quarantined"] + rows["duplicates_removed"]
    # What validation's one pass counted over the accepted plays.
    profile = manifest["validation"]["profile"]
    assert profile["rows"] == rows["rows_accepted"] and profile["event_id_duplicates"] == 0, profile
    window = manifest["params"]["window_days"]
    first_day = day - dt.timedelta(days=window - 1)
    assert manifest["data_window"]["first_day"] == first_day.isoformat(), (day, manifest["data_window"])
    training = manifest["training"]
    assert manifest["params"]["strategy"] == strategy and training["strategy"] == strategy, day
    searched = training["tuning"]
    searched_names = {"rank", "alpha", "reg", "reg_scaling", "confidence_function", "epsilon"}
    assert set(searched["source"]) == searched_names
    assert {n: training["params"][n] for n in searched_names} == searched["chosen"]
    if manifest["params"]["tune"] == "off":
        assert set(searched["source"].values()) <= {"trigger", "default"} and not searched["trials"]
    else:  # searched on the day before the held-out one; every trial recorded
        assert set(searched["source"].values()) == {f"tuning of dt={day}"}, searched["source"]
        assert len(searched["trials"]) > manifest["params"]["tune_trials"] // 2 and searched["trials_ran_on"] == "driver"
        assert searched["winner"]["params"] == searched["chosen"]
    if strategy == "cg":
        assert training["factor_exchange"] == {"user": "broadcast", "item": "broadcast"}
    m, b = manifest["metrics"]["model"], manifest["metrics"]["baseline_popularity"]
    assert m["users_evaluated"] > 0 and 0 <= m["precision"] <= 1
    assert m["map"] > b["map"], day  # the planted taste structure is learnable
    lift = manifest["metrics"]["lift_over_popularity"]["map"]
    assert lift["users"] == m["users_evaluated"] and lift["relative_interval"][0] > 0
    assert manifest["quality_gate"]["passed"] and manifest["quality_gate"]["metric"] == "map"
    # The output suites ran before publishing and passed; no model of an earlier day was published
    # before either run (the backfilled day's is later), so churn was not checked.
    checks = manifest["output_checks"]
    assert checks["success"] and checks["failed"] == [] and "churn_overlap" not in checks["summary"]
    assert {(c["suite"], c["column"]) for c in checks["checks"]} >= {
        ("model_output_users", "missing"), ("model_output_factors", "norm_over_median"),
        ("model_output_summary", "catalogue_coverage")}
    assert checks["data_docs"].startswith(f"{LAKE}/runs/dt={day}/") and checks["data_docs"].endswith("index.html")
    # How training started is recorded: MLlib cannot start from factors; the CG run may or may not
    # find the backfilled day's model (it publishes about when the scheduled day trains), and says which.
    warm = training["warm_start"]
    if strategy == "mllib":
        assert not warm["used"] and "MLlib" in warm["reason"], warm
    else:
        assert warm["used"] == (warm.get("from") is not None and "iterations" in warm) and warm["reason"], warm
        assert training["iterations"] == (warm["iterations"] if warm["used"] else 10)
    # The rules every list obeyed: 2 tracks per artist by default, no list configured.
    assert manifest["rules"]["max_per_artist"] == 2 and manifest["rules"]["do_not_recommend"] is None
    submission = training["submission"]
    assert submission["attempts"][0]["outcome"] == "success"
    assert submission["sizing"]["user_blocks"] == training["params"]["user_blocks"]
    run_key = manifest["prefix"].split("/run=")[1].split("/")[0]
    matrices = f"lake/runs/dt={day}/run={run_key}/matrix/"
    assert {o.key[len(matrices):].split("/")[0] for o in store.list_objects(LAKE_BUCKET, matrices)} == {
        f"granularity={manifest['params']['granularity']}"}
    settings = manifest["evaluation"]["submission"]["settings"]
    assert settings["driver_memory"] == f"{submission['sizing']['driver_memory_mb']}m"
    assert settings["conf"]["spark.sql.shuffle.partitions"] == str(submission["sizing"]["shuffle_partitions"])


def test_scheduled_run_cli_backfill_and_ui_trigger_on_a_real_scheduler(stack, monkeypatch, capsys):
    api, env, store, days = stack["api"], stack["env"], stack["store"], stack["days"]

    # Scheduled path: unpaused by airflow.sh, the scheduler creates the latest interval's run by itself.
    scheduled = _wait(lambda: [r for r in _runs(api) if r["run_type"] == "scheduled"], 120, "the scheduled run")
    assert [_day(r) for r in scheduled] == [days.scheduled.isoformat()]

    # UI trigger: the form shows every param with its description and bounds...
    params = api("GET", f"/api/v2/dags/{DAG_ID}/details")["params"]
    assert params["rank"]["description"] and params["rank"]["schema"]["maximum"] == 512
    # ...Airflow refuses an out-of-schema value before a run exists...
    with pytest.raises(urllib.error.HTTPError) as refused:
        api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"rank": 1000}})
    assert refused.value.code == 400 and "rank" in refused.value.read().decode()
    # ...and plan_run refuses a cross-field violation: that run fails at once and alerts.
    bad = api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
              {"logical_date": dt.datetime.now(dt.timezone.utc).isoformat(),  # the form's default
               "conf": {"window_days": 3, "holdout_days": 3}})

    # The scheduled day is published before the backfill of the day before it starts.
    def scheduled_done():
        run = next(r for r in _runs(api) if r["dag_run_id"] == scheduled[0]["dag_run_id"])
        return run if run["state"] in ("success", "failed") else None

    assert _wait(scheduled_done, RUNS_DEADLINE_S, "the scheduled run")["state"] == "success", _failures(
        api, stack["root"], scheduled[0]["dag_run_id"])

    # CLI backfill over two days ending on the scheduled day, one run at a time.
    first, last = days.backfill[0].isoformat(), days.backfill[-1].isoformat()
    backfill = _cli(env, "backfill", "create", "--dag-id", DAG_ID, "--from-date", first, "--to-date", last,
                    "--max-active-runs", "1", "--dag-run-conf", json.dumps(BACKFILL_CONF))

    # The trigger form in a real browser, as a person fills it: the recipe fields left empty, two
    # others changed. It sends every param; the empty ones leave the recipe to the search.
    form = trigger_dag(api.base, DAG_ID, FORM_CHANGES, password=stack["password"],
                       screenshot=stack["root"] / "trigger_form.png")
    assert set(form.conf) == set(params) and {n: form.conf[n] for n in FORM_CHANGES} == FORM_CHANGES
    assert all(form.conf[n] is None for n in RECIPE_FIELDS), form.conf

    def settled():
        runs = _runs(api)
        done = all(r["state"] in ("success", "failed") for r in runs)
        return runs if done and len(runs) >= 4 else None

    runs = _wait(settled, RUNS_DEADLINE_S, "all runs to finish", interval=2)
    by_type = {}
    for r in runs:
        by_type.setdefault(r["run_type"], []).append(r)
    from_form = next(r for r in runs if r["dag_run_id"] == form.run_id)
    failed = [(r["dag_run_id"], r["state"]) for r in by_type["scheduled"] + by_type["backfill"] + [from_form]
              if r["state"] != "success"]
    assert not failed, (failed, backfill.stdout[-2000:])

    # Each day once: the day the scheduled run was processing was not run again by the backfill.
    backfilled = sorted(by_type["backfill"], key=_day)
    assert [_day(r) for r in backfilled] == [d.isoformat() for d in days.backfill[:-1]]
    assert all(r["conf"] == BACKFILL_CONF for r in backfilled)

    # Spark stages of all runs (scheduled, backfill) never overlapped: one pool slot.
    spans = sorted(_task_spans(api, "~", "&pool=music_recs_spark"))
    assert len(spans) >= 2 * 5
    for a, b in zip(spans, spans[1:]):
        assert a[1] <= b[0], f"{a[2]}.{a[3]} overlapped {b[2]}.{b[3]}"

    # Every day published, with its params in the manifest; the pointer ends on the last day. The
    # scheduled day twice: by the scheduled run and by the run from the form (a rerun of that day).
    published, published_keys = {}, {}
    for day in days.backfill:
        for key in [o.key for o in store.list_objects(MODELS, f"music_recs/dt={day}/") if o.key.endswith("manifest.json")]:
            manifest = json.loads(store.get_bytes(MODELS, key)[0])
            published[manifest["run_id"]], published_keys[manifest["run_id"]] = manifest, key
            expected = (BACKFILL_CONF if day != days.scheduled else FORM_CHANGES if manifest["run_id"] == form.run_id
                        else {"window_days": 90, "max_iter": 10, "top_n": 50})
            assert {k: manifest["params"][k] for k in expected} == expected, day
            assert store.get_bytes(MODELS, manifest["report"]["key"]) is not None
            _check_published(store, manifest, day, "cg" if day == days.scheduled else "mllib")
    assert sorted(published) == sorted([scheduled[0]["dag_run_id"], form.run_id, backfilled[0]["dag_run_id"]])
    # The run from the form searched, like the scheduled one, every recipe value labelled by its day.
    searched = published[form.run_id]["training"]["tuning"]
    assert set(searched["source"].values()) == {f"tuning of dt={days.scheduled}"} and searched["trials"]
    assert all(published[form.run_id]["params"][n] is None for n in RECIPE_FIELDS)
    # The backfilled day was not compared with the later day's model, which was trained on its held-out day.
    later = published[backfilled[0]["dag_run_id"]]
    assert later["metrics"]["published_model"] is None and later["quality_gate"]["published"] is None
    assert later["metrics"]["comparison"] == (
        f"not compared: the model of dt={days.scheduled} was trained through dt={days.backfill[0]}, not before "
        f"this run's held-out days (from dt={days.backfill[0]})"), later["metrics"]["comparison"]
    pointer, manifest = read_latest(store, MODELS, "music_recs/latest.json")
    assert pointer["day"] == days.scheduled.isoformat() and pointer["run_id"] in (scheduled[0]["dag_run_id"], form.run_id)

    # The publication that moved the pointer was announced on the Asset, and the example consumer
    # DAG ran on it: it found the manifest in the event and verified every object's checksum.
    consumer = "music_recs_model_consumer"

    def consumer_done():  # every consumer run finished, one of them on the event of the run behind the pointer
        runs = api("GET", f"/api/v2/dags/{consumer}/dagRuns?limit=20")["dag_runs"]
        if not runs or not all(r["state"] in ("success", "failed") for r in runs):
            return None
        events = [e for r in runs for e in api(
            "GET", f"/api/v2/dags/{consumer}/dagRuns/{quote(r['dag_run_id'], safe='')}/upstreamAssetEvents")["asset_events"]]
        return (runs, events) if any(e["source_run_id"] == pointer["run_id"] for e in events) else None

    consumer_runs, events = _wait(consumer_done, 180, "the consumer DAG run")
    assert {r["run_type"] for r in consumer_runs} == {"asset_triggered"}
    assert all(r["state"] == "success" for r in consumer_runs), consumer_runs
    # Each publication that moved the pointer (the scheduled run's, the form run's rerun of its day)
    # was announced once; the backfill of the earlier day moved nothing and announced nothing.
    for run_id in dict.fromkeys([scheduled[0]["dag_run_id"], pointer["run_id"]]):  # the pointer's last
        announced = [e for e in events if e["source_run_id"] == run_id]
        assert len(announced) == 1 and announced[0]["source_task_id"] == "announce_model", (run_id, events)
        extra = announced[0]["extra"]
        assert extra["day"] == days.scheduled.isoformat() and extra["bucket"] == MODELS
        assert extra["manifest"] == published_keys[run_id], (extra, run_id)
    assert extra["manifest"] == pointer["manifest_key"]
    assert not [e for e in events if e["source_run_id"] == backfilled[0]["dag_run_id"]]

    # A person can read the result: the CLI prints recommendations from the published model.
    first_rec = next(o for o in manifest["objects"] if o["artifact"] == "recommendations")
    user = read_parquet(store, MODELS, first_rec).column("user_id")[0].as_py()
    monkeypatch.setenv("MUSIC_RECS_RAW_BUCKET", RAW)
    monkeypatch.setenv("MUSIC_RECS_MODELS_BUCKET", MODELS)
    monkeypatch.setenv("MUSIC_RECS_LAKE_URI", LAKE)
    capsys.readouterr()
    assert cli.main(["recommend", "--user", user, "-n", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"for {user}" in printed and "  1. Track " in printed and " by Artist " in printed
    assert "rules: at most 2 tracks per artist; no do-not-recommend list" in printed
    assert load_recommendations(store, MODELS, manifest, "no-such-user") is None

    # The failing UI-triggered run: failed in plan_run, and the alert names run, task, class and log.
    assert next(r for r in runs if r["dag_run_id"] == bad["dag_run_id"])["state"] == "failed"
    alert = _wait(lambda: [a for a in stack["alerts"].received if a["run_id"] == bad["dag_run_id"]], 30, "the alert")[0]
    assert alert["task_id"] == "plan_run" and alert["failure_class"] == "InvalidInput"
    assert "holdout_days (3) must be smaller than window_days (3)" in alert["error"]
    assert alert["log_url"].startswith(api.base + f"/dags/{DAG_ID}/runs/")

    # Rerunning the completed range: none (default) skips every existing run, failed only failed
    # ones (none here), completed both. (The dry run the CLI's --dry-run prints, via the API.)
    for behavior, expected_days in (("none", []), ("failed", []), ("completed", days.backfill)):
        dry = api("POST", "/api/v2/backfills/dry_run", {
            "dag_id": DAG_ID, "from_date": f"{first}T00:00:00Z", "to_date": f"{last}T00:00:00Z",
            "reprocess_behavior": behavior})
        assert sorted(b["logical_date"][:10] for b in dry["backfills"]) == [d.isoformat() for d in expected_days], \
            (behavior, dry)

    # The lake lives on S3 only: its days, id index and runs are there, and no stage left a lake
    # file on a local disk (the stack's folders, its work folder, the system temp folder), only the
    # landing files the test itself wrote for the history.
    lake_keys = [o.key for o in store.list_objects(LAKE_BUCKET, "lake/")]
    for part in ("lake/plays/", "lake/quarantine/", "lake/ids/", f"lake/runs/dt={days.scheduled}/"):
        assert any(k.startswith(part) for k in lake_keys), part
    local = [p for folder in (stack["root"], Path(tempfile.gettempdir()) / "music_recs") for pattern in LAKE_FILES
             for p in folder.rglob(pattern) if stack["root"] / "landing" not in p.parents]
    assert not local, local[:10]

    # No secret in any log of the stack: task logs, scheduler/API output.
    token = stack["alert_token"]
    logs = [p for p in (stack["root"] / "airflow" / "logs").rglob("*") if p.is_file()]
    logs += [p for p in (stack["root"] / "state" / "logs").rglob("*") if p.is_file()]
    assert len(logs) > 20
    leaking = [str(p) for p in logs if token in p.read_text(errors="replace")]
    assert not leaking
    print(f"scheduler test: {time.monotonic() - stack['started']:.0f}s from airflow.sh start")
    every = sorted(_task_spans(api, "~"))
    for start, end, run_id, task_id in every:  # where the time went (shown with -s or on failure)
        print(f"  {(start - every[0][0]).total_seconds():6.1f}s +{(end - start).total_seconds():5.1f}s "
              f"{run_id[:24]:24} {task_id}")
