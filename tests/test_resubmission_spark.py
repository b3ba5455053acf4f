"""A real spark-submit (local mode) that fails or whose driver is killed: what the error says. (A job that cannot succeed is
submitted once: ``tests/test_fail_fast.py``.)"""

import pytest

from music_recs.failures import PermanentSparkJobError, SparkJobError
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


KILL = """
import os
import signal
import time

from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
spark.range(3).count()
os.kill({target}, signal.SIGKILL)  # as the out-of-memory killer would, mid-run
time.sleep(2)
os._exit(0)
"""


@pytest.mark.parametrize("target, returncode, how", [
    ("os.getppid()", -9, "(signal 9)"),  # the driver JVM: spark-submit itself
    ("os.getpid()", 137, "(exit code 137 = 128 + signal 9)"),  # the Python driver under it
], ids=["driver_jvm", "python_driver"])
def test_a_killed_driver_says_it_was_killed_and_by_which_signal(tmp_path, target, returncode, how):
    """Before: "failed (unknown)" and a line the driver happened to log (a JVM warning), or for 137
    a container memory failure, resubmitted with more executor overhead."""
    from music_recs.jobs import IngestSpec

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "ingest.py").write_text(KILL.replace("{target}", target))
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), label="dt=2026-11-20", jobs_dir=jobs)
    with pytest.raises(SparkJobError) as err:
        hook.submit(IngestSpec(day="2026-11-20", input_uri=str(tmp_path), lake_uri=str(tmp_path / "lake")))
    assert not isinstance(err.value, PermanentSparkJobError) and err.value.returncode == returncode
    assert str(err.value) == (f"Spark job ingest dt=2026-11-20 failed (killed): the driver was killed by SIGKILL {how}; "
                              "the kernel's out-of-memory killer is a common cause (see dmesg or the kernel log) "
                              f"(full log: {tmp_path / 'submit' / 'ingest.log'})")
