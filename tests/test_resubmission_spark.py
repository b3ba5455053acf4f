"""A real spark-submit (local mode) that fails: what the error says. (A job that cannot succeed is
submitted once: ``tests/test_fail_fast.py``.)"""

import pytest

from music_recs.failures import PermanentSparkJobError
from music_recs_airflow.spark_submit import SparkJobHook

pytestmark = pytest.mark.spark


BOOM = """
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
spark.range(3).selectExpr("CAST(id + 1e30 AS BIGINT) AS x").collect()  # ANSI mode: an overflowing cast
"""


def test_a_failing_job_reads_as_one_line_naming_its_cause(tmp_path):
    """A job made to fail: the error names the exception and its message, the job, the day and the
    log; not the spark-submit command line, not a stack trace."""
    from music_recs.jobs import IngestSpec

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "ingest.py").write_text(BOOM)
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), label="dt=2026-11-20", jobs_dir=jobs)
    with pytest.raises(PermanentSparkJobError) as err:
        hook.submit(IngestSpec(day="2026-11-20", input_uri=str(tmp_path), lake_uri=str(tmp_path / "lake")))
    message = str(err.value)
    assert "\n" not in message and "spark-submit" not in message and "--conf" not in message
    assert message.startswith("Spark job ingest dt=2026-11-20 failed (non_retryable): SparkArithmeticException: "
                              '[CAST_OVERFLOW] The value 1.0E30D of the type "DOUBLE" cannot be cast to "BIGINT"'), message
    assert message.endswith(f"(full log: {tmp_path / 'submit' / 'ingest.log'})")
    assert "CAST_OVERFLOW" in (tmp_path / "submit" / "ingest.log").read_text()
