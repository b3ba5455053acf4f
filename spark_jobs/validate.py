"""Validate one day of accepted plays with the Great Expectations suites in ``expectations/``.

One Spark pass over the day computes its profile (``day_profile``): how many rows break each
rule (nulls, malformed ids, ``ms_played`` out of range, ``ts`` outside the day's window,
repeated ``event_id``), the column types, and the day's row count. GX Core then validates that
one-row profile, with the day summary (duplicate and quarantine rates, volume against the
trailing week), against both suites on pandas. Before, GX ran on the plays themselves: one
Spark job per metric, ~30 s of fixed cost and 7 s per million rows (bench/RESULTS.md "Big days").

The job records the verdict (and every failed expectation with what it observed) in its
result; the Airflow task decides to fail the run, so the message a person reads is the
pipeline's, not a stack trace.

Run: ``spark-submit spark_jobs/validate.py --spec SPEC.json --result FILE`` (``music_recs.jobs.ValidateSpec``)
"""

from __future__ import annotations

import datetime as dt
import os

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from music_recs import schema as S
from music_recs.jobs import ValidateResult, ValidateSpec
from music_recs.plan import LakeLayout
from spark_jobs.ingest import MAX_MS_PLAYED, day_window
from spark_jobs.lib.gx_suites import EXPECTATIONS, load_suite, preload, validate_frames
from spark_jobs.lib.lake import day_rows, present_days, read_day
from spark_jobs.lib.session import PhaseTimer, job_main

DEFAULT_SUITE = os.path.join(EXPECTATIONS, "stream_logs_daily.json")
SUMMARY_SUITE = os.path.join(EXPECTATIONS, "stream_logs_day_summary.json")
TRAILING_DAYS = 7


EXAMPLES = 5  # rows shown per broken rule when the day fails


def row_rules(types: dict, day: dt.date) -> dict[str, tuple[str, object]]:
    """Per count column of the profile, (the column it is about, the condition a breaking row
    meets); the condition is None when every row breaks it (the column is missing, or of a type
    its rule cannot compare: its type check fails instead, so no value is ever cast or compared
    across types and nothing here can fail the job)."""
    out: dict[str, tuple[str, object]] = {}
    for c in S.REQUIRED_LOG_COLUMNS:
        out[f"{c}_null"] = (c, F.col(c).isNull() if c in types else None)
    for c in S.ID_COLUMNS:
        out[f"{c}_malformed"] = (c, ~F.col(c).rlike(S.ID_PATTERN) if isinstance(types.get(c), T.StringType) else None)
    ms = F.col(S.MS_PLAYED)
    out["ms_played_out_of_range"] = (S.MS_PLAYED, ((ms < 0) | (ms > MAX_MS_PLAYED))
                                     if isinstance(types.get(S.MS_PLAYED), T.IntegralType) else None)
    lo, hi = day_window(day)
    out["ts_outside_window"] = (S.TS, ((F.col(S.TS) < F.lit(lo)) | (F.col(S.TS) >= F.lit(hi)))
                                if isinstance(types.get(S.TS), T.TimestampType) else None)
    return out


def day_profile(df: DataFrame, day: dt.date) -> dict:
    """The day's profile, in one Spark job: ``rows``, ``missing_columns`` (the required columns
    absent, comma-separated), ``ts_type`` and ``ms_played_type``, per rule of ``row_rules`` the number
    of rows that break it (``<column>_null``, ``<id>_malformed``, ``ms_played_out_of_range``,
    ``ts_outside_window``), and ``event_id_duplicates``: rows beyond the first of each ``event_id``.
    """
    types = {f.name: f.dataType for f in df.schema.fields}
    rows = F.count(F.lit(1))
    counts = {"rows": rows}
    for name, (_, broken) in row_rules(types, day).items():
        counts[name] = F.count_if(broken) if broken is not None else rows
    # Exact, in the same pass: Spark plans the distinct count beside the other aggregates.
    counts["event_id_duplicates"] = (F.count(S.EVENT_ID) - F.count_distinct(S.EVENT_ID)) if S.EVENT_ID in types \
        else F.lit(0)
    row = df.agg(*[col.alias(name) for name, col in counts.items()]).first().asDict()
    missing = [c for c in S.REQUIRED_LOG_COLUMNS if c not in types]
    return {"rows": row.pop("rows"), "missing_columns": ",".join(missing),
            "ts_type": types[S.TS].simpleString() if S.TS in types else "missing",
            "ms_played_type": types[S.MS_PLAYED].simpleString() if S.MS_PLAYED in types else "missing",
            **{name: int(value) for name, value in row.items()}}


def examples(df: DataFrame, day: dt.date, profile: dict) -> dict[str, list[str]]:
    """For each rule the profile counted broken rows of, up to ``EXAMPLES`` of them as
    ``event_id: value`` (duplicates: the repeated ids and how often). One small job per broken
    rule, run only on a day that failed: the profile has counts, a person needs rows."""
    types = {f.name: f.dataType for f in df.schema.fields}
    event_id = F.col(S.EVENT_ID).cast("string") if S.EVENT_ID in types else F.lit("?")
    out = {}
    for name, (column, broken) in row_rules(types, day).items():
        if profile.get(name) and broken is not None:
            found = df.filter(broken).select(event_id.alias("e"), F.col(column).cast("string").alias("v")) \
                .limit(EXAMPLES).collect()
            out[name] = [f"{r['e']}: {r['v']}" for r in found]
    if profile.get("event_id_duplicates"):
        found = df.groupBy(S.EVENT_ID).count().filter("count > 1").limit(EXAMPLES).collect()
        out["event_id_duplicates"] = [f"{r[S.EVENT_ID]}: {r['count']} rows" for r in found]
    return out


def day_summary(spark: SparkSession, lake: LakeLayout, day: dt.date, rows_read: int, duplicates: int,
                quarantined: int, accepted: int) -> dict:
    """Duplicate and quarantine rates, and accepted rows against the trailing average."""
    history = [day - dt.timedelta(days=i) for i in range(TRAILING_DAYS, 0, -1)]
    present = present_days(spark, lake, history)
    # From each day's pointer (a day of the old layout: its Parquet footers): no scan.
    counts = [day_rows(spark, lake, d) for d in present]
    trailing = sum(counts) / len(counts) if counts else None
    return {
        "rows_read": rows_read,
        "duplicate_rate": duplicates / rows_read if rows_read else 0.0,
        "quarantine_rate": quarantined / rows_read if rows_read else 0.0,
        "trailing_average": trailing,
        "row_count_ratio": (accepted / trailing) if trailing else None,
    }


def run(spark: SparkSession, spec: ValidateSpec) -> ValidateResult:
    """Run both suites on ``spec.day``; the verdict is in the result, the task decides what it means."""
    import pandas as pd

    timer = PhaseTimer()
    day, lake = dt.date.fromisoformat(spec.day), LakeLayout(spec.lake_uri)
    with timer.phase("profile"):
        plays = read_day(spark, lake, spec.day)
        profile = day_profile(plays, day)
        counts = spec.ingest_counts or {"rows_read": profile["rows"], "duplicates_removed": 0, "rows_quarantined": 0}
        summary = day_summary(spark, lake, day, counts["rows_read"], counts["duplicates_removed"],
                              counts["rows_quarantined"], profile["rows"])
    with timer.phase("validate"):
        parameters = {"max_quarantine_fraction": spec.max_quarantine_fraction}
        verdict = validate_frames([(load_suite(spec.suite_path), pd.DataFrame([profile])),
                                   (load_suite(spec.summary_suite_path), pd.DataFrame([summary]))],
                                  parameters, spec.docs_dir)
    failed = [c for c in verdict["checks"] if not c["success"]]
    if failed:
        with timer.phase("examples"):
            shown = examples(plays, day, profile)
        failed = [{**c, "examples": shown[c["column"]]} if c["column"] in shown else c for c in failed]
    return ValidateResult(day=spec.day, suite=os.path.basename(spec.suite_path), **verdict, summary=summary,
                          profile=profile, failed=failed, seconds=timer.seconds)


def main(argv=None) -> None:
    preload()  # GX's import overlaps the session's start-up and the profile's Spark pass
    job_main(ValidateSpec, run, argv)


if __name__ == "__main__":
    main()
