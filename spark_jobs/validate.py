"""Validate one day of accepted plays with the Great Expectations suite in ``expectations/``.

GX Core runs on the Spark DataFrame, so validation scales with the cluster. The job
records the verdict (and every failed expectation with its unexpected count) in its
result; the Airflow task decides to fail the run, so the message a person reads is the
pipeline's, not a stack trace.

Run: ``spark-submit spark_jobs/validate.py --spec SPEC.json --result FILE`` (``music_recs.jobs.ValidateSpec``)
"""

from __future__ import annotations

import datetime as dt
import os

from pyspark.sql import SparkSession

from music_recs.jobs import ValidateResult, ValidateSpec
from music_recs.plan import LakeLayout
from spark_jobs.ingest import CLOCK_SKEW_MINUTES, LATE_TOLERANCE_HOURS
from spark_jobs.lib.gx_suites import EXPECTATIONS, load_suite, preload, validate_frames
from spark_jobs.lib.lake import present_days
from spark_jobs.lib.session import PhaseTimer, job_main

DEFAULT_SUITE = os.path.join(EXPECTATIONS, "stream_logs_daily.json")
SUMMARY_SUITE = os.path.join(EXPECTATIONS, "stream_logs_day_summary.json")
TRAILING_DAYS = 7


def suite_parameters(day: dt.date) -> dict:
    start = dt.datetime.combine(day, dt.time())
    return {
        "ts_min": (start - dt.timedelta(hours=LATE_TOLERANCE_HOURS)).isoformat(),
        "ts_max": (start + dt.timedelta(days=1, minutes=CLOCK_SKEW_MINUTES)).isoformat(),
    }


def day_summary(spark: SparkSession, lake: LakeLayout, day: dt.date, rows_read: int, duplicates: int,
                quarantined: int, accepted: int):
    """One row: duplicate and quarantine rates, and accepted rows against the trailing average."""
    history = [day - dt.timedelta(days=i) for i in range(TRAILING_DAYS, 0, -1)]
    present = present_days(spark, lake, history)
    counts = [spark.read.parquet(lake.plays(d.isoformat())).count() for d in present]
    trailing = sum(counts) / len(counts) if counts else None
    row = {
        "rows_read": rows_read,
        "duplicate_rate": duplicates / rows_read if rows_read else 0.0,
        "quarantine_rate": quarantined / rows_read if rows_read else 0.0,
        "trailing_average": trailing,
        "row_count_ratio": (accepted / trailing) if trailing else None,
    }
    schema = "rows_read long, duplicate_rate double, quarantine_rate double, trailing_average double, " \
             "row_count_ratio double"
    return spark.createDataFrame([tuple(row.values())], schema), row


def run(spark: SparkSession, spec: ValidateSpec) -> ValidateResult:
    """Run both suites on ``spec.day``; the verdict is in the result, the task decides what it means."""
    timer = PhaseTimer()
    day, lake = dt.date.fromisoformat(spec.day), LakeLayout(spec.lake_uri)
    with timer.phase("validate"):
        df = spark.read.parquet(lake.plays(spec.day))
        accepted = df.count()
        counts = spec.ingest_counts or {"rows_read": accepted, "duplicates_removed": 0, "rows_quarantined": 0}
        summary_df, summary = day_summary(spark, lake, day, counts["rows_read"], counts["duplicates_removed"],
                                          counts["rows_quarantined"], accepted)
        parameters = {**suite_parameters(day), "max_quarantine_fraction": spec.max_quarantine_fraction}
        verdict = validate_frames([(load_suite(spec.suite_path), df), (load_suite(spec.summary_suite_path), summary_df)],
                                  parameters, spec.docs_dir)
    failed = [c for c in verdict["checks"] if not c["success"]]
    return ValidateResult(day=spec.day, suite=os.path.basename(spec.suite_path), **verdict, summary=summary,
                          failed=failed, seconds=timer.seconds)


def main(argv=None) -> None:
    preload()  # GX's import overlaps the session's start-up
    job_main(ValidateSpec, run, argv)


if __name__ == "__main__":
    main()
