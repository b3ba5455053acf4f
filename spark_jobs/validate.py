"""Validate one day of accepted plays with the Great Expectations suite in ``expectations/``.

GX Core runs on the Spark DataFrame, so validation scales with the cluster. The job
records the verdict (and every failed expectation with its unexpected count) in its
result; the Airflow task decides to fail the run, so the message a person reads is the
pipeline's, not a stack trace.

Run: ``spark-submit spark_jobs/validate.py --day D --lake URI --suite FILE --result FILE``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os

from pyspark.sql import SparkSession

from spark_jobs.common import PhaseTimer, get_spark, setup_logging, write_result
from spark_jobs.lake import present_days
from spark_jobs.ingest import CLOCK_SKEW_MINUTES, LATE_TOLERANCE_HOURS

EXPECTATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "expectations")
DEFAULT_SUITE = os.path.join(EXPECTATIONS, "stream_logs_daily.json")
SUMMARY_SUITE = os.path.join(EXPECTATIONS, "stream_logs_day_summary.json")
TRAILING_DAYS = 7


def load_suite(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def suite_parameters(day: dt.date) -> dict:
    start = dt.datetime.combine(day, dt.time())
    return {
        "ts_min": (start - dt.timedelta(hours=LATE_TOLERANCE_HOURS)).isoformat(),
        "ts_max": (start + dt.timedelta(days=1, minutes=CLOCK_SKEW_MINUTES)).isoformat(),
    }


def _checks(outcome) -> list[dict]:
    checks = []
    for res in outcome.results:
        cfg = res.expectation_config
        checks.append({
            "suite": outcome.suite_name,
            "expectation": cfg.type,
            "column": cfg.kwargs.get("column"),
            "success": bool(res.success),
            "unexpected_count": res.result.get("unexpected_count"),
            "element_count": res.result.get("element_count"),
            "observed_value": res.result.get("observed_value"),
            "error": (res.exception_info or {}).get("exception_message") if not res.success else None,
        })
    return checks


def validate_frames(batches: list[tuple[dict, object]], parameters: dict, docs_dir: str | None = None) -> dict:
    """Run each (suite, DataFrame) pair. With ``docs_dir``, a file-backed GX project there keeps
    the results and builds Data Docs (HTML) from them."""
    import great_expectations as gx

    if docs_dir:
        context = gx.get_context(mode="file", project_root_dir=docs_dir)
    else:
        context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_or_update_spark(name="lake")
    checks, statistics, success = [], {}, True
    for suite_json, df in batches:
        name = suite_json["name"]
        context.suites.add_or_update(gx.ExpectationSuite(**suite_json))
        suite = context.suites.get(name)
        try:
            asset = source.get_asset(name)
        except LookupError:
            asset = source.add_dataframe_asset(name=name)
        try:
            batch = asset.get_batch_definition("whole")
        except KeyError:
            batch = asset.add_batch_definition_whole_dataframe("whole")
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if docs_dir else []
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(name=f"{name}_checkpoint", validation_definitions=[definition], actions=actions))
        result = checkpoint.run(batch_parameters={"dataframe": df}, expectation_parameters=parameters)
        for outcome in result.run_results.values():
            checks += _checks(outcome)
            statistics[name] = dict(outcome.statistics)
            success = success and bool(outcome.success)
    docs = None
    if docs_dir:
        docs = os.path.join(docs_dir, "gx", "uncommitted", "data_docs", "local_site", "index.html")
    return {"success": success, "checks": checks, "statistics": statistics, "data_docs": docs}


def day_summary(spark: SparkSession, lake_uri: str, day: dt.date, rows_read: int, duplicates: int,
                quarantined: int, accepted: int):
    """One row: duplicate and quarantine rates, and accepted rows against the trailing average."""
    root = f"{lake_uri.rstrip('/')}/plays"
    history = [day - dt.timedelta(days=i) for i in range(TRAILING_DAYS, 0, -1)]
    present = present_days(spark, lake_uri, history)
    counts = [spark.read.parquet(f"{root}/dt={d.isoformat()}").count() for d in present]
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


def run(spark: SparkSession, day: dt.date, lake_uri: str, suite_path: str = DEFAULT_SUITE,
        summary_suite_path: str = SUMMARY_SUITE, ingest_counts: dict | None = None,
        max_quarantine_fraction: float = 0.05, docs_dir: str | None = None) -> dict:
    timer = PhaseTimer()
    with timer.phase("validate"):
        df = spark.read.parquet(f"{lake_uri.rstrip('/')}/plays/dt={day.isoformat()}")
        accepted = df.count()
        counts = ingest_counts or {"rows_read": accepted, "duplicates_removed": 0, "rows_quarantined": 0}
        summary_df, summary = day_summary(spark, lake_uri, day, counts["rows_read"], counts["duplicates_removed"],
                                          counts["rows_quarantined"], accepted)
        parameters = {**suite_parameters(day), "max_quarantine_fraction": max_quarantine_fraction}
        verdict = validate_frames([(load_suite(suite_path), df), (load_suite(summary_suite_path), summary_df)],
                                  parameters, docs_dir)
    failed = [c for c in verdict["checks"] if not c["success"]]
    return {"day": day.isoformat(), "suite": os.path.basename(suite_path), **verdict, "summary": summary,
            "failed": failed, "seconds": timer.seconds}


def main(argv=None) -> None:
    setup_logging()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--day", required=True, type=dt.date.fromisoformat)
    p.add_argument("--lake", required=True)
    p.add_argument("--suite", default=DEFAULT_SUITE)
    p.add_argument("--summary-suite", default=SUMMARY_SUITE)
    p.add_argument("--ingest-result", help="ingest's JSON result (rows read, duplicates, quarantined)")
    p.add_argument("--max-quarantine-fraction", type=float, default=0.05)
    p.add_argument("--docs-dir", help="folder for the GX project whose Data Docs are built")
    p.add_argument("--result")
    args = p.parse_args(argv)
    counts = None
    if args.ingest_result:
        with open(args.ingest_result) as fh:
            counts = json.load(fh)
    spark = get_spark(f"music_recs.validate.{args.day}")
    write_result(spark, args.result, run(spark, args.day, args.lake, args.suite, args.summary_suite, counts,
                                         args.max_quarantine_fraction, args.docs_dir))


if __name__ == "__main__":
    main()
