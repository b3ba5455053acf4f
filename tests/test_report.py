"""The run report: published next to the manifest by publish_run, one HTML file with its charts embedded."""

import base64
import dataclasses
import datetime as dt
import hashlib
import html.parser
import json
import struct
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from music_recs.jobs import EvaluateResult, IngestResult, MatrixResult, TrainResult, ValidateResult
from music_recs_airflow import tasks
from music_recs.settings import DeploymentSettings
from music_recs_airflow.publish import ARTIFACTS, read_latest
from music_recs.quality_gate import decide, paired_bootstrap
from music_recs_airflow.report import build_report
from tests.conftest import airflow_env

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for name in ("href", "src"):
            if tag != "img" and attrs.get(name):
                self.links.append(attrs[name])

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def png_size(uri: str) -> tuple[int, int]:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    data = base64.b64decode(uri[len(prefix):], validate=True)
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def run_inputs(day: str, rows_read: int, model_map: float, attempts: list[dict]) -> tuple:
    ingested = IngestResult(day=day, rows_read=rows_read, rows_accepted=rows_read - 110, rows_quarantined=37,
                            duplicates_removed=73, duplicates_of_other_days=0,
                            quarantine_uri=f"s3://raw/quarantine/stream_logs/dt={day}/quarantine.jsonl",
                            quarantine_reasons={"unparseable_ts": 29, "malformed_user_id": 8}, formats={}, seconds={})
    validated = ValidateResult(day=day, suite="stream_logs_daily", success=True, checks=[], data_docs=None, summary={},
                               failed=[], seconds={},
                               statistics={"evaluated_expectations": 12, "successful_expectations": 12})
    matrix = MatrixResult(day=day, window={"first_day": "2026-11-17", "last_train_day": "2026-11-19",
                                           "holdout_days": [day], "days_present": []},
                          params={}, min_user_items=2, min_item_users=2, ids_added={}, seconds={},
                          stats={"track": {"users": 311, "items": 977, "nnz": 4242}})
    trained = TrainResult(strategy="cg", params={"rank": 8, "max_iter": 5, "reg": 0.1, "alpha": 40.0, "user_blocks": 2,
                                                 "item_blocks": 2, "checkpoint_interval": 5},
                          data={"users": 311, "items": 977, "nnz": 4242}, iterations=5, seconds={"fit": 12.75},
                          seconds_per_iteration=2.55, spark_conf={}, spark_version="4.1.1",
                          submission={"settings": {}, "attempts": attempts, "sizing": attempts[-1]["settings"]},
                          warm_start={"used": True, "from": "dt=2026-11-18 (s3://m/x/)", "reason": "same rank (8)",
                                      "users": {"from_model": 300, "new": 11}, "items": {"from_model": 970, "new": 7},
                                      "iterations": 2, "stopped_early": True, "tol": 0.005})
    model = {"precision": 0.0912, "recall": 0.1733, "map": model_map, "ndcg": 0.1411, "coverage": 0.31,
             "users_evaluated": 250}
    baseline = {"precision": 0.0311, "recall": 0.0622, "map": 0.0188, "ndcg": 0.0455, "coverage": 0.01,
                "users_evaluated": 250}
    rules = {"max_per_artist": 2, "users_short": 3, "do_not_recommend": {
        "uri": "s3://music-models/rules/dnr.csv", "sha256": "1f3a" + "0" * 60, "rows": 12, "items_for_everyone": 10,
        "user_item_pairs": 2, "items_in_matrix": 8, "pairs_in_matrix": 1}}
    evaluated = EvaluateResult(k=10, top_n=50, model=model, baseline_popularity=baseline, recommendation_rows=0,
                               similar_items_per_item=20, seconds={}, rules=rules)
    gate = decide("map", model, baseline, None).as_dict()
    return ingested, validated, matrix, trained, evaluated, gate


RULES_LINE = ("rules: at most 2 tracks per artist; do-not-recommend list s3://music-models/rules/dnr.csv (sha256 "
              "1f3a00000000, 12 rows: 10 items for everyone, 2 user/item pairs; 8 of its items and 1 of its pairs in "
              "this model's catalogue); 3 users got fewer than 50 items (the rules left too few)")
SETTINGS = {"executor_memory_mb": 1024, "executor_cores": 2, "num_executors": 1, "user_blocks": 2, "item_blocks": 2,
            "checkpoint_interval": 5}


@pytest.fixture
def publish_day(store, bucket, tmp_path):
    cfg = DeploymentSettings(models_bucket=bucket, lake_uri=str(tmp_path / "lake"))

    def run(day: str, rows_read: int, model_map: float, attempts: list[dict]) -> tuple[dict, dict]:
        start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
        plan = tasks.plan_run({"rank": 8, "max_iter": 5, "window_days": 4}, start, f"scheduled__{day}T00:00:00+00:00",
                              cfg)
        for name in ARTIFACTS:
            folder = tmp_path / "lake" / "runs" / f"dt={day}" / f"run={plan.run_key}" / "model" / name
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.table({"user_id": ["u1"], "item_id": ["t1"]})
            if name == "recommendations":
                table = pa.table({"user_id": ["u1", "u1", "u2"], "rank": [2, 1, 1], "item_id": ["t2", "t1", "t3"],
                                  "score": [0.5, 0.9, 0.7], "item_name": ["Roads", "Teardrop", None],
                                  "artist_name": ["Portishead", "Massive Attack", None]})
            pq.write_table(table, folder / "part-00000-x.snappy.parquet")
        published = tasks.publish_run(store, plan, *run_inputs(day, rows_read, model_map, attempts))
        return plan, published

    return run


def test_publish_stores_a_self_contained_report_with_every_chart_and_the_numbers(store, bucket, publish_day):
    ok = [{"attempt": 1, "outcome": "success", "seconds": 14.2, "settings": SETTINGS}]
    publish_day("2026-11-19", 1500, 0.0644, ok)
    retried = [{"attempt": 1, "outcome": "executor_out_of_memory", "seconds": 31.5, "settings": SETTINGS,
                "log": ["java.lang.OutOfMemoryError: Java heap space"]},
               {"attempt": 2, "outcome": "success", "seconds": 15.1, "settings": {**SETTINGS, "user_blocks": 4}}]
    plan, published = publish_day("2026-11-20", 2000, 0.0733, retried)

    pointer, manifest = read_latest(store, bucket, "music_recs/latest.json")
    assert pointer["day"] == "2026-11-20"
    key = manifest["report"]["key"]
    assert key == pointer["prefix"] + "report.html" and published["report"] == f"s3://{bucket}/{key}"
    assert key.startswith(f"music_recs/dt=2026-11-20/run={plan.run_key}/publish=")
    body, _ = store.get_bytes(bucket, key)
    assert hashlib.sha256(body).hexdigest() == manifest["report"]["sha256"] and len(body) == manifest["report"]["size"]

    page = parse(body.decode())
    alts = [img["alt"] for img in page.images]
    assert alts == ["rows per day", "metrics against the popularity baseline", "map over time",
                    "training time over time"]
    for img in page.images:
        width, height = png_size(img["src"])
        assert width > 200 and height > 100
    assert page.links == []  # nothing loaded from elsewhere: it opens anywhere
    text = " ".join(page.text)
    for number in ("2000", "1890", "37", "73", "0.0733", "0.0188", "0.0912", "4242", "12.75"):
        assert number in text, number
    assert "executor_out_of_memory" in text and "java.lang.OutOfMemoryError" in text and "unparseable_ts" in text
    # the previous day is in the history, with its own numbers
    assert "2026-11-19" in text and "1500" in text and "0.0644" in text
    assert "passed" in text


def test_a_rerun_replaces_its_day_in_the_history_and_foreign_objects_are_skipped(store, bucket, publish_day):
    ok = [{"attempt": 1, "outcome": "success", "seconds": 14.2, "settings": SETTINGS}]
    store.client.put_object(Bucket=bucket, Key="music_recs/dt=2026-11-18/run=broken/manifest.json", Body=b"[1, 2]")
    publish_day("2026-11-19", 1500, 0.0644, ok)
    plan, _ = publish_day("2026-11-19", 1600, 0.0655, ok)  # the same run again: its own prefix is overwritten
    _, manifest = read_latest(store, bucket, "music_recs/latest.json")
    text = " ".join(parse(store.get_bytes(bucket, manifest["report"]["key"])[0].decode()).text)
    assert "1600" in text and "1500" not in text and "broken" not in text
    # The earlier publication of the run stays whole beside the new one; the pointer names the new one.
    run_keys = {o.key for o in store.list_objects(bucket, f"music_recs/dt=2026-11-19/run={plan.run_key}/")}
    assert len([k for k in run_keys if k.endswith("/manifest.json")]) == 2
    assert manifest["report"]["key"].replace("report.html", "manifest.json") in run_keys


def test_report_escapes_values_from_the_run():
    ok = [{"attempt": 1, "outcome": "success", "seconds": 1.0, "settings": SETTINGS}]
    ingested, validated, matrix, trained, evaluated, gate = run_inputs("2026-11-20", 100, 0.05, ok)
    manifest = {"day": "2026-11-20", "run_id": "manual__<script>alert(1)</script>", "params": {"primary_metric": "map"},
                "rows": ingested.counts, "quarantine": {"uri": "", "reasons": {}}, "data_window": matrix.window,
                "training": trained.to_dict(), "metrics": evaluated.to_dict(), "quality_gate": gate}
    page = build_report(manifest, [])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert json.dumps(manifest)  # the manifest given is left JSON-able


def test_cli_commands_run_as_processes_exit_0_and_show_the_model(store, bucket, publish_day):
    """``music-recs latest`` and ``recommend`` as a user runs them: their own process, exit code 0."""
    ok = [{"attempt": 1, "outcome": "success", "seconds": 14.2, "settings": SETTINGS}]
    plan, plan_published = publish_day("2026-11-20", 2000, 0.0733, ok)
    env = airflow_env({"MUSIC_RECS_MODELS_BUCKET": bucket})
    command = [str(Path(sys.executable).parent / "music-recs")]
    # Reading Parquet from S3 used to abort the interpreter at exit, most of the time (exit 134,
    # Arrow threads freeing Python buffers; see music_recs_airflow.s3.parquet_table): each process checks it.
    latest = subprocess.run([*command, "latest"], env=env, capture_output=True, text=True, timeout=120)
    assert (latest.returncode, latest.stderr) == (0, "")
    out = latest.stdout
    assert out.startswith("latest model: day 2026-11-20, run scheduled__2026-11-20T00:00:00+00:00\n")
    assert "MAP@10 0.0733 (popularity 0.0188)" in out and "try: music-recs recommend --user u1" in out
    assert "params: rank=8, max_iter=5, window_days=4 (others default)" in out
    assert RULES_LINE in out
    assert ("warm start from the model of dt=2026-11-18 (s3://m/x/): 2 iterations, stopped early: the objective fell "
            "by less than 0.5%; 300 users and 970 items from it, 11 users and 7 items new") in out
    assert f"report: s3://{bucket}/music_recs/dt=2026-11-20/run={plan.run_key}/publish=" in out
    assert f"report: {plan_published['report']}" in out

    recommend = subprocess.run([*command, "recommend", "--user", "u1"], env=env, capture_output=True, text=True,
                               timeout=120)
    assert (recommend.returncode, recommend.stderr) == (0, "")
    assert recommend.stdout.splitlines() == [
        "top 2 tracks for u1 (model of 2026-11-20):",
        f"  {RULES_LINE}",
        "    1. Teardrop by Massive Attack  (t1, score 0.900)",
        "    2. Roads by Portishead  (t2, score 0.500)"]


def test_cli_recommend_for_an_unknown_user_says_so_and_exits_1(store, bucket, publish_day, monkeypatch, capsys):
    from music_recs_airflow import cli

    publish_day("2026-11-20", 2000, 0.0733, [{"attempt": 1, "outcome": "success", "seconds": 1.0, "settings": SETTINGS}])
    monkeypatch.setenv("MUSIC_RECS_MODELS_BUCKET", bucket)
    assert cli.main(["recommend", "--user", "nobody"]) == 1
    assert capsys.readouterr().err == "no recommendations for user 'nobody' in the model of 2026-11-20\n"


def _searched(day: str) -> dict:
    """A search as the training job records it: 6 first-rung trials, the best 2 on all iterations."""
    base = {"rank": 16, "alpha": 1.0, "reg": 0.1, "reg_scaling": "per_rating", "confidence_function": "log",
            "epsilon": 5.0}
    trials = [{"trial": i, "rung": 0, "iterations": 3, "params": {**base, "rank": 8 * (i + 1)},
               "metric": 0.05 + 0.01 * i, "seconds": 0.4} for i in range(6)]
    trials += [{"trial": i, "rung": 1, "iterations": 10, "params": {**base, "rank": 8 * (i + 1)},
                "metric": 0.07 + 0.01 * i, "seconds": 1.1} for i in (4, 5)]
    return {"day": day, "metric": "map", "k": 10, "seconds": 5.3, "trials": trials, "winner": trials[-1],
            "chosen": trials[-1]["params"], "split": {"validation_users": 187},
            "source": {n: f"tuning of dt={day}" for n in base}}


def _output_checks() -> dict:
    """The output suites' verdict as the evaluation returns it (one failure, overridden below)."""
    checks = [
        {"suite": "model_output_users", "expectation": "expect_column_values_to_be_between", "column": "missing",
         "kwargs": {"min_value": 0, "max_value": 0}, "success": True, "unexpected_count": 0, "element_count": 311},
        {"suite": "model_output_users", "expectation": "expect_column_mean_to_be_between", "column": "overlap",
         "kwargs": {"min_value": 0.05, "max_value": 0.95}, "success": False, "observed_value": 0.9731},
        {"suite": "model_output_summary", "expectation": "expect_column_values_to_be_between",
         "column": "catalogue_coverage", "kwargs": {"min_value": 0.1}, "success": True, "unexpected_count": 0,
         "element_count": 1},
    ]
    return {"success": False, "checks": checks, "data_docs": "/lake/runs/data_docs/gx/index.html",
            "failed": ["model_output_users.overlap expect_column_mean_to_be_between: observed 0.9731 (min 0.05, max 0.95)"],
            "summary": {"catalogue_coverage": 0.4123, "popular_share": 0.0871, "popular_items": 10, "slots": 15550,
                        "churn_overlap": 0.9731, "churn_users": 290}}


# Each image once decoded (an image that cannot be decoded is reported, not thrown).
_IMAGES_JS = """Promise.all([...document.images].map(img => img.decode().then(
    () => ({alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, decoded: true}),
    () => ({alt: img.alt, width: 0, height: 0, decoded: false}))))"""


def test_the_report_reads_in_a_real_browser(store, bucket, publish_day, monkeypatch, tmp_path):
    """Headless Chromium (Debian's, under Playwright): no console error or failed load, every chart
    decodes and is on screen at a readable size, and a person finds the day, the metrics with their
    interval, the search's trials and the output checks."""
    from music_recs_dev.airflow_ui import chromium, new_page

    real_inputs = run_inputs

    def rich_inputs(day, rows_read, model_map, attempts):
        ingested, validated, matrix, trained, evaluated, _ = real_inputs(day, rows_read, model_map, attempts)
        trained = dataclasses.replace(trained, tuning=_searched(day))
        lift = {"map": paired_bootstrap(np.full(250, model_map) + np.linspace(-0.02, 0.02, 250), np.full(250, 0.0188))}
        evaluated = dataclasses.replace(evaluated, lift=lift, output_checks=_output_checks())
        gate = decide("map", evaluated.model, evaluated.baseline_popularity, None, override=True, lift=lift["map"],
                      output_failures=tuple(_output_checks()["failed"])).as_dict()
        return ingested, validated, matrix, trained, evaluated, gate

    monkeypatch.setattr(sys.modules[__name__], "run_inputs", rich_inputs)
    ok = [{"attempt": 1, "outcome": "success", "seconds": 14.2, "settings": SETTINGS}]
    publish_day("2026-11-19", 1500, 0.0644, ok)
    publish_day("2026-11-20", 2000, 0.0733, ok)
    _, manifest = read_latest(store, bucket, "music_recs/latest.json")
    assert manifest["output_checks"]["summary"]["churn_overlap"] == 0.9731
    assert manifest["output_checks"]["data_docs"] == "file:///lake/runs/data_docs/gx/index.html"
    page = tmp_path / "report.html"
    page.write_bytes(store.get_bytes(bucket, manifest["report"]["key"])[0])

    with chromium() as browser:
        tab = new_page(browser, height=900)
        problems = []
        tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "assert")
               else None)
        tab.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
        tab.on("requestfailed", lambda r: problems.append(f"failed load: {r.url[:100]} {r.failure}"))
        tab.goto(page.as_uri(), wait_until="load")
        images = tab.evaluate(_IMAGES_JS)
        title = tab.title()
        text = tab.locator("body").inner_text()
        links = tab.locator("a[href]").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        on_screen = []  # each chart scrolled to, as a person reading down the page
        for img in tab.get_by_role("img").all():
            img.scroll_into_view_if_needed()
            box = img.bounding_box()
            on_screen.append((img.get_attribute("alt"), img.is_visible(), box and round(box["width"])))
        tab.wait_for_load_state("networkidle")  # late console messages and loads
    assert problems == []
    alts = ["rows per day", "parameter search trials", "metrics against the popularity baseline", "map over time",
            "training time over time"]
    assert [i["alt"] for i in images] == alts
    assert all(i["decoded"] and i["width"] > 200 and i["height"] > 100 for i in images), images
    assert [a for a, _, _ in on_screen] == alts
    assert all(visible and width > 200 for _, visible, width in on_screen), on_screen
    assert title.startswith("music_recs dt=2026-11-20")
    assert "music_recs_daily: dt=2026-11-20" in text
    assert re.search(r"Lift of map over popularity: \+\d+\.\d%, 95% bootstrap interval \[\+\d+\.\d%, \+\d+\.\d%\] "
                     r"over 250 evaluated users", text), text
    assert "Parameter search (8 trials" in text and "187 validation users" in text
    assert "failed, overridden" in text and "output check model_output_users.overlap" in text
    assert "Output suites failed: catalogue coverage 0.4123" in text and "0.9731 over 290 users" in text
    assert "FAIL" in text and links == ["file:///lake/runs/data_docs/gx/index.html"]
    assert "Recommendation rules" in text and RULES_LINE in text and "1f3a" + "0" * 60 in text
    assert "warm start from the model of dt=2026-11-18" in text
