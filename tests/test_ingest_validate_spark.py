"""Ingest and validation on a real local Spark, with deliberately broken input."""

import datetime as dt
import gzip
import json
from pathlib import Path

import pytest

from music_recs.jobs import IngestSpec, ValidateSpec
from music_recs.plan import LakeLayout
from music_recs.quality_gate import failure_line
from spark_jobs import ingest, validate
from spark_jobs.lib.lake import committed, present_days, read_day, read_plays

pytestmark = pytest.mark.spark

DAY = dt.date(2026, 11, 20)


def day_plays(spark, lake):
    """The day's committed accepted plays, as readers see them."""
    return read_day(spark, LakeLayout(str(lake)), str(DAY))


def day_quarantine(spark, lake):
    return spark.read.json(committed(spark, LakeLayout(str(lake)), str(DAY)).quarantine)


def good(i, **overrides):
    row = {"event_id": f"e{i}", "ts": f"2026-11-20T10:{i % 60:02d}:00Z", "user_id": f"u{i % 3}",
           "track_id": f"t{i % 5}", "artist_id": "a1", "ms_played": 120000, "extra_field": "ignored"}
    row.update(overrides)
    return json.dumps(row)


BROKEN = {
    "this is not json": "not_json_object",
    "[1, 2, 3]": "not_json_object",
    good(100, user_id=None): "missing_user_id",
    json.dumps({"event_id": "e101", "ts": "2026-11-20T10:00:00Z", "user_id": "u1", "artist_id": "a1",
                "ms_played": 1}): "missing_track_id",
    good(102, ts="yesterday-ish"): "unparseable_ts",
    good(103, ts="2026-10-01T00:00:00Z"): "ts_outside_day",
    good(104, ms_played="lots"): "ms_played_not_integer",
    good(105, ms_played=12.5): "ms_played_not_integer",
    good(106, ms_played=-1): "ms_played_out_of_range",
    good(107, user_id="bad user/../x"): "malformed_user_id",
    # Strict JSON: what Spark's reader would otherwise let through.
    good(108).replace("120000", "NaN"): "not_json_object",
    good(109).replace('"', "'"): "not_json_object",
    good(110)[:-1]: "not_json_object",
}


@pytest.fixture
def landing(tmp_path):
    folder = tmp_path / "landing"
    folder.mkdir()
    lines = [good(i) for i in range(20)]
    # gzip'd file with a BOM and CRLF line ends, a replay of e1, a float ms_played that is integral
    with gzip.open(folder / "a.jsonl.gz", "wt", encoding="utf-8", newline="") as fh:
        fh.write("\ufeff" + "\r\n".join(lines[:10]) + "\r\n")
    (folder / "b.jsonl").write_text("\n".join(lines[10:] + [good(1), good(50, ms_played=1000.0)] + list(BROKEN)) + "\n\n")
    (folder / "empty.jsonl").write_text("")
    return folder


def test_every_row_is_accepted_quarantined_or_a_counted_duplicate(spark, landing, tmp_path):
    lake = str(tmp_path / "lake")
    result = ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(landing), lake_uri=str(lake)))
    assert result.rows_read == 20 + 2 + len(BROKEN)
    assert result.rows_accepted == 21
    assert result.duplicates_removed == 1
    assert result.rows_quarantined == len(BROKEN)
    assert result.rows_read == result.rows_accepted + result.rows_quarantined + result.duplicates_removed

    quarantined = {r["raw_line"]: r["reason"] for r in day_quarantine(spark, lake).collect()}
    assert quarantined == BROKEN

    plays = day_plays(spark, lake)
    assert dict(plays.dtypes)["ms_played"] == "bigint" and dict(plays.dtypes)["ts"] == "timestamp"
    assert plays.select("event_id").distinct().count() == 21


def test_rerun_gives_the_same_partition_and_quarantine(spark, landing, tmp_path):
    lake = str(tmp_path / "lake")
    first = ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(landing), lake_uri=str(lake)))
    rows1 = sorted(map(tuple, day_plays(spark, lake).collect()))
    q1 = sorted(map(tuple, day_quarantine(spark, lake).collect()))
    second = ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(landing), lake_uri=str(lake)))
    assert {**first.to_dict(), "seconds": None} == {**second.to_dict(), "seconds": None}
    assert sorted(map(tuple, day_plays(spark, lake).collect())) == rows1
    assert sorted(map(tuple, day_quarantine(spark, lake).collect())) == q1


def test_gx_suite_passes_on_ingested_day_and_fails_on_bad_data(spark, landing, tmp_path):
    lake = str(tmp_path / "lake")
    ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(landing), lake_uri=str(lake)))
    docs = tmp_path / "docs"
    verdict = validate.run(spark, ValidateSpec(day=str(DAY), lake_uri=str(lake), suite_path=validate.DEFAULT_SUITE, summary_suite_path=validate.SUMMARY_SUITE, docs_dir=str(docs)))
    assert verdict.success, verdict.failed
    assert verdict.statistics["stream_logs_daily"]["evaluated_expectations"] == 17
    assert verdict.profile["rows"] == 21 and verdict.profile["event_id_duplicates"] == 0
    assert verdict.statistics["stream_logs_day_summary"]["evaluated_expectations"] == 3
    assert verdict.data_docs.endswith("index.html") and (docs / "gx/uncommitted/data_docs/local_site/index.html").exists()
    assert list(docs.glob("gx/uncommitted/data_docs/local_site/validations/**/*.html"))

    # A partition written around ingest (duplicate ids, negative ms_played) must fail the suite.
    bad = day_plays(spark, lake)
    from pyspark.sql import functions as F
    broken = bad.unionByName(bad.limit(2)).withColumn("ms_played", F.lit(-5).cast("long"))
    broken.write.mode("overwrite").parquet(str(tmp_path / "bad" / "plays" / f"dt={DAY}"))
    verdict = validate.run(spark, ValidateSpec(day=str(DAY), lake_uri=str(tmp_path / "bad"), suite_path=validate.DEFAULT_SUITE, summary_suite_path=validate.SUMMARY_SUITE))
    assert not verdict.success
    failed = {c["column"]: c["observed_value"] for c in verdict.failed}
    # One Spark pass counted what each rule found: 2 replayed ids, all 23 rows' ms_played negative.
    assert failed == {"event_id_duplicates": 2, "ms_played_out_of_range": 23}, verdict.failed
    assert failure_line(verdict.failed[-1]) == (
        "stream_logs_daily.event_id_duplicates expect_column_values_to_be_between: observed 2 (min 0, max 0)")
    # A failed day shows rows, not only counts: the ids repeated, the values out of range.
    examples = {c["column"]: c["examples"] for c in verdict.failed}
    assert len(examples["event_id_duplicates"]) == 2 and all(e.endswith(": 2 rows") for e in examples["event_id_duplicates"])
    assert len(examples["ms_played_out_of_range"]) == 5 and all(e.endswith(": -5") for e in examples["ms_played_out_of_range"])

    # Wrong types and a missing column are findings, never a failed job (no value is compared
    # across types): every row counts against the missing column's rules.
    odd = bad.withColumn("ms_played", F.col("ms_played").cast("string")).withColumn("ts", F.lit("yesterday")) \
        .drop("artist_id").withColumn("user_id", F.when(F.col("user_id") == F.col("user_id"), F.lit("bad id!")))
    odd.write.mode("overwrite").parquet(str(tmp_path / "odd" / "plays" / f"dt={DAY}"))
    verdict = validate.run(spark, ValidateSpec(day=str(DAY), lake_uri=str(tmp_path / "odd"), suite_path=validate.DEFAULT_SUITE, summary_suite_path=validate.SUMMARY_SUITE))
    failed = {c["column"]: c["observed_value"] for c in verdict.failed}
    assert failed == {"missing_columns": "artist_id", "ts_type": "string", "ms_played_type": "string", "artist_id_null": 21,
                      "artist_id_malformed": 21, "user_id_malformed": 21, "ms_played_out_of_range": 21,
                      "ts_outside_window": 21}, verdict.failed
    odd.drop("ts").write.mode("overwrite").parquet(str(tmp_path / "odd" / "plays" / f"dt={DAY}"))
    verdict = validate.run(spark, ValidateSpec(day=str(DAY), lake_uri=str(tmp_path / "odd"), suite_path=validate.DEFAULT_SUITE, summary_suite_path=validate.SUMMARY_SUITE))
    failed = {c["column"]: c["observed_value"] for c in verdict.failed}
    assert failed["missing_columns"] == "ts,artist_id" and failed["ts_type"] == "missing" and failed["ts_null"] == 21


def test_day_level_checks_catch_replays_and_collapsing_volume(spark, tmp_path):
    from pyspark.sql import functions as F

    lake = str(tmp_path / "lake")
    base = [(f"e{i}", dt.datetime(2026, 11, 20, 10), "u1", "t1", "a1", 100000, None, None) for i in range(100)]
    schema = ("event_id string, ts timestamp, user_id string, track_id string, artist_id string, ms_played long, "
              "track_name string, artist_name string")
    for back in range(1, 4):  # three previous days of 100 plays
        d = DAY - dt.timedelta(days=back)
        spark.createDataFrame(base, schema).withColumn("ts", F.lit(dt.datetime.combine(d, dt.time(10)))) \
            .write.parquet(f"{lake}/plays/dt={d}")
    spark.createDataFrame(base[:30], schema).write.parquet(f"{lake}/plays/dt={DAY}")  # today: 30
    counts = {"rows_read": 60, "duplicates_removed": 20, "rows_quarantined": 10}
    verdict = validate.run(spark, ValidateSpec(day=str(DAY), lake_uri=str(lake), suite_path=validate.DEFAULT_SUITE, summary_suite_path=validate.SUMMARY_SUITE, ingest_counts=counts, max_quarantine_fraction=0.1))
    assert verdict.summary["trailing_average"] == 100 and verdict.summary["row_count_ratio"] == 0.3
    failed = {c["column"] for c in verdict.failed}
    assert failed == {"row_count_ratio", "duplicate_rate", "quarantine_rate"}


@pytest.mark.parametrize("order", ["oldest first", "newest first"])
def test_an_event_accepted_on_a_neighbouring_day_is_kept_once(spark, tmp_path, order):
    """A late event delivered again the next day (its time fits both days' windows) is kept on
    exactly one day, whichever day is ingested first (a backfill may ingest the older day after
    the scheduled run took the newer one); reruns of both days keep it where it is."""
    lake = str(tmp_path / "lake")
    before = DAY - dt.timedelta(days=1)
    late = good(900, ts=f"{before}T22:00:00Z")
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "a.jsonl").write_text("\n".join([late, good(901, ts=f"{before}T21:00:00Z")]) + "\n")
    (tmp_path / "d2").mkdir()
    (tmp_path / "d2" / "a.jsonl").write_text("\n".join([late, good(1), good(2)]) + "\n")
    inputs = {before: str(tmp_path / "d1"), DAY: str(tmp_path / "d2")}
    first, second = (before, DAY) if order == "oldest first" else (DAY, before)
    # The day ingested second finds e900 in the first one's partition.
    keeps = {first: 1, second: 0}
    for _ in range(2):  # the second pass reruns both days in the same order
        for day in (first, second):
            result = ingest.run(spark, IngestSpec(day=str(day), input_uri=str(inputs[day]), lake_uri=str(lake)))
            other_day_copies = 1 - keeps[day]
            assert result.duplicates_of_other_days == other_day_copies
            assert result.rows_read == result.rows_accepted + result.duplicates_removed
            assert result.duplicates_removed == other_day_copies
    layout = LakeLayout(lake)
    rows = read_plays(spark, layout, present_days(spark, layout, [before, DAY])).collect()
    assert sorted(r.event_id for r in rows) == ["e1", "e2", "e900", "e901"]
    assert [str(r.dt) for r in rows if r.event_id == "e900"] == [str(first)]


def test_the_quarantine_pass_finds_the_files_by_the_names_records_give_them():
    verdicts = [ingest.Verdict("file:/l/a b%20c.jsonl", "native", True, 10), ingest.Verdict("file:/l/x.gz", "native", True, 5),
                ingest.Verdict("file:/l/y.gz", "native", False, 5)]
    # Spark's text reader names a file URL-encoded; the Python reader as listed.
    assert ingest.files_named(verdicts, ["file:/l/a%20b%2520c.jsonl", "file:/l/y.gz"]) == [verdicts[0], verdicts[2]]
    assert ingest.files_named(verdicts, ["file:/l/elsewhere.gz"]) == verdicts  # unknown: every file again
    # A name that reads both ways gives both files: an extra file only adds rows quarantined anyway.
    both = [ingest.Verdict("file:/l/a b", "native", True, 1), ingest.Verdict("file:/l/a%20b", "native", True, 1)]
    assert ingest.files_named(both, ["file:/l/a%20b"]) == both


@pytest.mark.parametrize("content", ["every line broken", "one empty file", "no file"])
def test_a_day_with_nothing_to_accept_still_counts_every_row(spark, tmp_path, content):
    """Adaptive execution drops the stages under an empty shuffle, and the counts observed there
    with them: such a day must still count every row (and not wait for counts that never come)."""
    folder = tmp_path / "landing"
    folder.mkdir()
    lines = list(BROKEN) if content == "every line broken" else []
    if content != "no file":
        (folder / "a.jsonl").write_text("".join(f"{line}\n" for line in lines))
    lake = tmp_path / "lake"
    result = ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(folder), lake_uri=str(lake)))
    n = len(lines)
    assert (result.rows_read, result.rows_accepted, result.rows_quarantined, result.duplicates_removed) == (n, 0, n, 0)
    assert day_plays(spark, lake).count() == 0
    assert day_quarantine(spark, lake).count() == n


def test_the_day_is_written_in_the_files_asked_for_whatever_join_spark_picks(spark, tmp_path):
    """With a neighbouring day in a sort-merge join (not broadcast), the day keeps its one shuffle by
    event_id: ``output_files`` files, not the session's shuffle partitions."""
    lake = str(tmp_path / "lake")
    before = DAY - dt.timedelta(days=1)
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "a.jsonl").write_text("".join(good(i, ts=f"{before}T12:{i:02d}:00Z") + "\n" for i in range(200, 240)))
    (tmp_path / "d2").mkdir()
    (tmp_path / "d2" / "a.jsonl").write_text("".join(good(i) + "\n" for i in range(60)))
    ingest.run(spark, IngestSpec(day=str(before), input_uri=str(tmp_path / "d1"), lake_uri=lake))
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        result = ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(tmp_path / "d2"), lake_uri=lake, output_files=3))
    finally:
        spark.conf.unset("spark.sql.autoBroadcastJoinThreshold")
    assert result.rows_accepted == 60
    copy = committed(spark, LakeLayout(lake), str(DAY)).plays
    assert len(list(Path(copy).glob("part-*.parquet"))) == 3
