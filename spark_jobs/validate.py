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
from spark_jobs.ingest import CLOCK_SKEW_MINUTES, LATE_TOLERANCE_HOURS

DEFAULT_SUITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "expectations", "stream_logs_daily.json")


def load_suite(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def suite_parameters(day: dt.date) -> dict:
    start = dt.datetime.combine(day, dt.time())
    return {
        "ts_min": (start - dt.timedelta(hours=LATE_TOLERANCE_HOURS)).isoformat(),
        "ts_max": (start + dt.timedelta(days=1, minutes=CLOCK_SKEW_MINUTES)).isoformat(),
    }


def validate_frame(df, suite_json: dict, parameters: dict) -> dict:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    suite = context.suites.add(gx.ExpectationSuite(**suite_json))
    asset = context.data_sources.add_spark(name="lake").add_dataframe_asset(name="plays")
    batch = asset.add_batch_definition_whole_dataframe("day")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite.name}_run", data=batch, suite=suite)
    )
    outcome = definition.run(batch_parameters={"dataframe": df}, expectation_parameters=parameters)
    checks = []
    for res in outcome.results:
        cfg = res.expectation_config
        checks.append({
            "expectation": cfg.type,
            "column": cfg.kwargs.get("column"),
            "success": bool(res.success),
            "unexpected_count": res.result.get("unexpected_count"),
            "element_count": res.result.get("element_count"),
            "observed_value": res.result.get("observed_value"),
            "error": (res.exception_info or {}).get("exception_message") if not res.success else None,
        })
    return {"success": bool(outcome.success), "checks": checks,
            "statistics": dict(outcome.statistics)}


def run(spark: SparkSession, day: dt.date, lake_uri: str, suite_path: str = DEFAULT_SUITE) -> dict:
    timer = PhaseTimer()
    with timer.phase("validate"):
        df = spark.read.parquet(f"{lake_uri.rstrip('/')}/plays/dt={day.isoformat()}")
        verdict = validate_frame(df, load_suite(suite_path), suite_parameters(day))
    failed = [c for c in verdict["checks"] if not c["success"]]
    return {"day": day.isoformat(), "suite": os.path.basename(suite_path), **verdict,
            "failed": failed, "seconds": timer.seconds}


def main(argv=None) -> None:
    setup_logging()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--day", required=True, type=dt.date.fromisoformat)
    p.add_argument("--lake", required=True)
    p.add_argument("--suite", default=DEFAULT_SUITE)
    p.add_argument("--result")
    args = p.parse_args(argv)
    spark = get_spark(f"music_recs.validate.{args.day}")
    write_result(spark, args.result, run(spark, args.day, args.lake, args.suite))


if __name__ == "__main__":
    main()
