"""Resubmission through a real spark-submit (local mode)."""

import time

import pytest

from music_recs.failures import PermanentSparkJobError
from music_recs.jobs import TrainSpec
from music_recs.sizing import ClusterResources, MatrixShape, size_als
from music_recs_airflow.spark_submit import SparkJobHook, run_with_resubmission

pytestmark = pytest.mark.spark


def test_a_missing_input_fails_once_fast_and_readably(tmp_path):
    sizing = size_als(MatrixShape(10, 10, 50, 4), ClusterResources(cores_per_node=1, memory_per_node_mb=4096))

    def spec(s):
        return TrainSpec(matrix_uri=str(tmp_path / "no-such-matrix"), out_uri=str(tmp_path / "model"), rank=4,
                         user_blocks=s.user_blocks, item_blocks=s.item_blocks)

    started = time.time()
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), label="dt=2026-11-20")
    with pytest.raises(PermanentSparkJobError) as err:
        run_with_resubmission(hook, spec, sizing, local=True, memory_cap_mb=2048, max_attempts=3)
    message = str(err.value)
    assert "not retryable" in message and "attempt 1: non_retryable" in message and "attempt 2" not in message
    assert "PATH_NOT_FOUND" in message or "does not exist" in message
    # One line that names the job, the day, the cause and the log; never the command line.
    assert "\n" not in message and message.startswith("Spark job train_als dt=2026-11-20 failed (non_retryable): ")
    assert "spark-submit" not in message and "--conf" not in message and "submit/train_als.log" in message
    assert time.time() - started < 120


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
