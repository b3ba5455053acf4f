"""Landing input written to exhaust a worker is refused or bounded: too many or too large landing
files stop ingest before Spark starts, a gzip bomb stops the job naming the file, and a day of long
garbage lines that decompresses to 200 MB keeps the Airflow worker's memory flat, its quarantine
capped and its counts exact."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import tracemalloc

import pytest
from airflow.sdk.exceptions import AirflowFailException

from music_recs.failures import LandingTooLarge, PermanentSparkJobError
from music_recs.settings import DeploymentSettings
from music_recs_airflow import tasks
from spark_jobs import ingest
from spark_jobs.lib.landing import QUARANTINE_CHARS, survey

DAY = "2026-11-20"
START = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
MIB = 1024 * 1024


def plan_for(tmp_path, bucket, **settings):
    cfg = DeploymentSettings(raw_bucket=bucket, models_bucket=bucket, lake_uri=str(tmp_path / "lake"),
                             work_dir=str(tmp_path / "work"), **settings)
    return tasks.plan_run({"rank": 4}, START, "manual__hostile", cfg)


def one_line_failure(call) -> str:
    with pytest.raises(AirflowFailException) as err:
        call()
    message = str(err.value)
    assert isinstance(err.value.__cause__, LandingTooLarge) and "\n" not in message and "Traceback" not in message
    return message


def good_rows(n: int) -> list[str]:
    return [json.dumps({"event_id": f"e{i}", "ts": f"{DAY}T10:{i % 60:02d}:00Z", "user_id": f"u{i % 7}",
                        "track_id": f"t{i % 11}", "artist_id": f"a{i % 3}", "ms_played": 60000}) for i in range(n)]


def test_too_many_or_too_large_landing_files_stop_ingest_before_spark(tmp_path, store, bucket):
    for i in range(3):
        store.put_bytes(bucket, f"stream_logs/dt={DAY}/part-{i}.jsonl", "\n".join(good_rows(40)).encode())
    plan = plan_for(tmp_path, bucket, max_landing_files=2)
    message = one_line_failure(lambda: tasks.ingest(store, plan))
    assert message.startswith(f"dt={DAY}: 3 landing files under {plan.landing_uri}, more than max_landing_files=2")
    plan = plan_for(tmp_path, bucket, max_landing_gib=4096 / 1024 ** 3)  # 4 KiB
    message = one_line_failure(lambda: tasks.ingest(store, plan))
    assert "more than max_landing_gib=" in message and f"stream_logs/dt={DAY}/part-" in message
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").rglob("ingest.spec.json"))  # no job ran


def test_survey_counts_what_a_file_decompresses_to_and_stops_past_the_limit():
    bomb = gzip.compress(b"\0" * (32 * MIB), 9)
    fmt, readable, expanded = survey("bomb.jsonl.gz", bomb, max_expanded=MIB)
    assert not readable and MIB < expanded <= 2 * MIB  # stopped one piece past the limit, not at 32 MiB
    lines = "\n".join(good_rows(50)).encode()
    assert survey("day.jsonl.gz", gzip.compress(lines), max_expanded=10 * MIB) == ("native", True, len(lines))
    assert survey("day.jsonl", lines, max_expanded=10 * MIB) == ("native", True, len(lines))


@pytest.mark.spark
def test_a_gzip_bomb_stops_the_ingest_job_in_one_line_naming_the_file(tmp_path, store, bucket):
    store.put_bytes(bucket, f"stream_logs/dt={DAY}/good.jsonl", "\n".join(good_rows(40)).encode())
    bomb = gzip.compress(b"x" * (100 * MIB), 9)  # about 100 KiB that expand 1000 times
    store.put_bytes(bucket, f"stream_logs/dt={DAY}/bomb.jsonl.gz", bomb)
    plan = plan_for(tmp_path, bucket)
    with pytest.raises(PermanentSparkJobError) as err:
        tasks.ingest.__wrapped__(store, plan)
    cause = str(err.value).split(" (full log:")[0]
    assert "LandingTooLarge: landing file " in cause and "bomb.jsonl.gz" in cause
    assert "past max_landing_expansion=100 times its size" in cause and "\n" not in cause
    assert ingest.expansion_limit(len(bomb), 100) == ingest.EXPANSION_FLOOR


@pytest.mark.spark
def test_a_day_of_long_garbage_lines_keeps_the_worker_flat_and_the_counts_exact(tmp_path, store, bucket):
    """20,000 lines of 10,000 characters (200 MB) in about 4 MB of gzip, under the expansion bound:
    the day is ingested, every garbage line counted, a capped share of them kept, each cut; the
    Airflow worker (this process: listing, staging, submitting, uploading the quarantine) holds a
    few MiB whatever the expansion."""
    garbage = [(os.urandom(150).hex()[:200] * 50) for _ in range(20_000)]
    body = gzip.compress("\n".join(good_rows(100) + garbage).encode(), 1)
    assert len(body) < 8 * MIB and len(garbage) * 10_000 >= 200 * 10 ** 6
    store.put_bytes(bucket, f"stream_logs/dt={DAY}/part-0.jsonl.gz", body)
    del garbage, body
    plan = plan_for(tmp_path, bucket, max_quarantine_fraction=1.0, quarantine_rows_per_reason=500)
    tracemalloc.start()
    try:
        result = tasks.ingest(store, plan)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * MIB, f"the worker peaked at {peak / MIB:.0f} MiB"
    assert (result.rows_read, result.rows_accepted) == (20_100, 100)
    assert result.rows_quarantined == 20_000 and result.quarantine_reasons == {"not_json_object": 20_000}
    kept = store.get_bytes(bucket, f"quarantine/stream_logs/dt={DAY}/quarantine.jsonl")[0].decode().splitlines()
    assert len(kept) == 500 and all(len(json.loads(line)["raw_line"]) == QUARANTINE_CHARS for line in kept)
