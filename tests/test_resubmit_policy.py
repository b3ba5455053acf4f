"""The failure classifier on log excerpts as Spark prints them, and the resubmission policy."""

import pytest

from music_recs.sizing import ExecutorSizing
from music_recs.resubmission import (Failure, classify_failure, first_exception, mask_secrets, next_settings,
                                     python_memory_mb)

EXCERPTS = {
    Failure.EXECUTOR_OOM: """26/11/24 10:00:44 WARN TaskSetManager: Lost task 3.0 in stage 12.0 (TID 40) (10.0.0.5 executor 1): java.lang.OutOfMemoryError: Java heap space
	at org.apache.spark.ml.recommendation.ALS$UncompressedInBlockBuilder.add(ALS.scala:1490)""",
    Failure.DRIVER_OOM: """Exception in thread "main" java.lang.OutOfMemoryError: Java heap space
	at java.base/java.util.Arrays.copyOf(Arrays.java:3537)""",
    Failure.CONTAINER_MEMORY: """26/11/24 10:00:44 ERROR YarnScheduler: Lost executor 4 on ip-10-0-0-7: Container killed by YARN for exceeding physical memory limits. 12.4 GB of 12 GB physical memory used. Consider boosting spark.executor.memoryOverhead.""",
    Failure.STACK_OVERFLOW: """26/11/24 10:00:44 ERROR Executor: Exception in task 0.0 in stage 310.0 (TID 900)
java.lang.StackOverflowError
	at java.base/java.io.ObjectInputStream.readObject0(ObjectInputStream.java:1700)""",
    Failure.EXECUTORS_LOST: """26/11/24 10:00:44 WARN HeartbeatReceiver: Removing executor 2 with no recent heartbeats: 161234 ms exceeds timeout 120000 ms
26/11/24 10:00:44 ERROR TaskSchedulerImpl: Lost executor 2 on 127.0.0.1: Executor heartbeat timed out after 161234 ms""",
    Failure.FETCH_FAILED: """26/11/24 10:00:44 WARN TaskSetManager: Lost task 7.0 in stage 21.0 (TID 77): FetchFailed(BlockManagerId(3, 127.0.0.1, 40123, None), shuffleId=4, mapIndex=2, mapId=31, reduceId=7, message=
org.apache.spark.shuffle.FetchFailedException: Failed to connect to /127.0.0.1:40123""",
    Failure.NON_RETRYABLE: """pyspark.errors.exceptions.captured.AnalysisException: [PATH_NOT_FOUND] Path does not exist: file:/lake/matrix/dt=2026-11-20/granularity=track/train. SQLSTATE: 42K03""",
}


@pytest.mark.parametrize("expected", list(EXCERPTS))
def test_each_failure_class_is_recognised(expected):
    failure, lines = classify_failure(EXCERPTS[expected], 1)
    assert failure is expected
    assert lines and len(lines[0]) <= 500


def test_an_executor_that_exited_with_spark_oom_code_is_an_executor_oom():
    line = ("26/11/24 11:00:00 ERROR TaskSchedulerImpl: Lost executor 1 on 127.0.0.1: Unable to create executor due to "
            "ExecutorLostFailure (executor 1 exited caused by one of the running tasks) Reason: Command exited with code 52")
    assert classify_failure(line, 1)[0] is Failure.EXECUTOR_OOM
    assert classify_failure("Lost executor 1 on 127.0.0.1: Command exited with code 1", 1)[0] is Failure.EXECUTORS_LOST


SPARK_START = """WARNING: Using incubator modules: jdk.incubator.vector
26/12/04 16:40:02 WARN Utils: Your hostname, worker, resolves to a loopback address: 127.0.1.1; using 10.0.0.5 instead (on interface eth0)
26/12/04 16:40:02 WARN Utils: Set SPARK_LOCAL_IP if you need to bind to another address"""


@pytest.mark.parametrize("returncode, how", [(-9, "(signal 9)"), (137, "(exit code 137 = 128 + signal 9)")])
def test_a_killed_driver_is_named_by_its_signal(returncode, how):
    """spark-submit's exit code: negative when the driver JVM died of a signal, 128 + N when the
    process under it did. In client mode that is the local driver, never an executor container."""
    failure, lines = classify_failure(SPARK_START, returncode)
    assert failure is Failure.KILLED
    assert lines[0] == (f"the driver was killed by SIGKILL {how}; the kernel's out-of-memory killer is a common cause "
                        "(see dmesg or the kernel log)")
    assert lines[-1].endswith("Set SPARK_LOCAL_IP if you need to bind to another address")
    assert classify_failure("", -15)[1] == ["the driver was killed by SIGTERM (signal 15)"]
    assert classify_failure("", 143)[1] == ["the driver was killed by SIGTERM (exit code 143 = 128 + signal 15)"]
    assert classify_failure("something odd\n", 1)[0] is Failure.UNKNOWN
    assert next_settings(Failure.KILLED, SIZING, False, 16_000) == SIZING


def test_a_kill_is_explained_by_memory_or_a_full_disk_not_by_what_spark_recovers_from():
    """With -XX:OnOutOfMemoryError="kill -9 %p" the JVM logs the error, then dies of SIGKILL."""
    assert classify_failure(EXCERPTS[Failure.DRIVER_OOM], -9)[0] is Failure.DRIVER_OOM
    assert classify_failure("java.io.IOException: No space left on device", -9)[0] is Failure.NO_SPACE
    for recovered in (Failure.EXECUTORS_LOST, Failure.FETCH_FAILED, Failure.NON_RETRYABLE):
        assert classify_failure(EXCERPTS[recovered], -9)[0] is Failure.KILLED


def test_the_projects_own_permanent_failures_inside_a_job_are_not_retried():
    """A job that raised e.g. ``InvalidInput`` (a spec's bad column list) prints it under its own
    name, not as ValueError; before, such a job was classified unknown and resubmitted."""
    output = """Traceback (most recent call last):
  File "/work/main/spark_jobs/train_als.py", line 157, in load_matrix
    S.require_columns(matrix.columns, (S.USER_IDX, S.ITEM_IDX, S.STRENGTH), what)
music_recs.failures.InvalidInput: the matrix /lake/matrix/dt=2026-11-20 is missing required column(s): strength"""
    failure, lines = classify_failure(output, 1)
    assert failure is Failure.NON_RETRYABLE and lines == [output.splitlines()[-1]]
    assert first_exception(output) == ("InvalidInput: the matrix /lake/matrix/dt=2026-11-20 is missing required "
                                       "column(s): strength")


def test_secrets_in_log_lines_are_masked():
    line = "spark-submit --conf spark.hadoop.fs.s3a.secret.key=AbCdEf123 --conf password=hunter2 Path does not exist"
    assert "AbCdEf123" not in mask_secrets(line) and "hunter2" not in mask_secrets(line)
    failure, lines = classify_failure(line, 1)
    assert failure is Failure.NON_RETRYABLE and "AbCdEf123" not in lines[0]


SIZING = ExecutorSizing(executor_memory_mb=2048, executor_memory_overhead_mb=384, executor_cores=4, num_executors=4,
                        user_blocks=16, item_blocks=16, shuffle_partitions=32, driver_memory_mb=2048,
                        checkpoint_interval=8)


def test_each_class_gets_the_adjustment_that_suits_it():
    oom = next_settings(Failure.EXECUTOR_OOM, SIZING, local=False, memory_cap_mb=16_000)
    assert oom.executor_memory_mb > 2048 and oom.user_blocks == 32
    assert next_settings(Failure.CONTAINER_MEMORY, SIZING, False, 16_000).executor_memory_overhead_mb == 768
    assert next_settings(Failure.STACK_OVERFLOW, SIZING, False, 16_000).checkpoint_interval == 4
    lost = next_settings(Failure.EXECUTORS_LOST, SIZING, False, 16_000)
    assert lost.executor_cores == 3
    assert next_settings(Failure.FETCH_FAILED, SIZING, False, 16_000).shuffle_partitions == 64
    assert next_settings(Failure.DRIVER_OOM, SIZING, False, 16_000).driver_memory_mb == 4096
    assert next_settings(Failure.NON_RETRYABLE, SIZING, False, 16_000) is None
    assert next_settings(Failure.NO_SPACE, SIZING, False, 16_000) is None
    assert next_settings(Failure.UNKNOWN, SIZING, False, 16_000) == SIZING


def test_memory_increases_stop_at_the_cap_and_local_mode_grows_the_driver():
    local = next_settings(Failure.EXECUTOR_OOM, SIZING, local=True, memory_cap_mb=3000)
    assert local.driver_memory_mb == 3000 and local.user_blocks == 32
    assert next_settings(Failure.EXECUTOR_OOM, local, local=True, memory_cap_mb=3000) is None
    assert next_settings(Failure.EXECUTOR_OOM, SIZING, local=False, memory_cap_mb=2500).executor_memory_mb == 2500


PYTHON_MEMORY_ERROR = """26/11/24 14:02:11 ERROR Executor: Exception in task 0.0 in stage 12.0 (TID 31)
org.apache.spark.api.python.PythonException: Traceback (most recent call last):
  File "/work/main/spark_jobs/als_cg.py", line 180, in _gather_all
    full = np.zeros((size, rank), np.float32)
numpy._core._exceptions._ArrayMemoryError: Unable to allocate 146. MiB for an array with shape (600000, 64) and data type float32
MemoryError"""


def test_a_python_worker_out_of_memory_is_an_executor_oom_and_doubles_the_python_limit():
    failure, lines = classify_failure(PYTHON_MEMORY_ERROR, 1)
    assert failure is Failure.EXECUTOR_OOM and lines[-1] == "MemoryError" and "Unable to allocate" in lines[0]
    nxt = next_settings(failure, SIZING.scaled(python_memory_mb=1024), local=False, memory_cap_mb=16_000)
    assert nxt.python_memory_mb == 2048 and nxt.executor_memory_mb == 4096


PYTHON_WORKER_CRASH = """26/11/30 20:49:08 WARN TaskSetManager: Lost task 1.0 in stage 14.0 (TID 19) (127.0.0.1 executor 0): org.apache.spark.SparkException: Python worker exited unexpectedly (crashed). Consider setting 'spark.sql.execution.pyspark.udf.faulthandler.enabled' or'spark.python.worker.faulthandler.enabled' configuration to 'true' for the better Python traceback.
\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator$$anonfun$1.applyOrElse(PythonRunner.scala:621)
Caused by: java.io.EOFException
\tat java.base/java.io.DataInputStream.readInt(DataInputStream.java:386)"""


def test_a_python_worker_that_crashed_is_out_of_memory_only_under_a_python_memory_limit():
    """Under spark.executor.pyspark.memory (an address-space limit) an allocation in compiled code
    kills the worker without a MemoryError (seen on the standalone cluster test); without a
    limit a crash says nothing about memory and stays unknown."""
    assert classify_failure(PYTHON_WORKER_CRASH, 1)[0] is Failure.UNKNOWN
    failure, lines = classify_failure(PYTHON_WORKER_CRASH, 1, python_memory_mb=640)
    assert failure is Failure.EXECUTOR_OOM
    assert lines[0] == "a Python worker crashed under its 640 MiB memory limit (spark.executor.pyspark.memory)"
    assert "Python worker exited unexpectedly (crashed)" in lines[1]
    assert [python_memory_mb(c) for c in ({}, {"spark.executor.pyspark.memory": "640m"},
                                          {"spark.executor.pyspark.memory": "2g"}, {"spark.executor.pyspark.memory": "x"})] \
        == [0, 640, 2048, 0]


def test_a_busy_lake_is_the_cause_named_and_is_not_permanent():
    from music_recs.resubmission import PERMANENT, classify_failure, first_exception

    output = ("Traceback (most recent call last):\n  File \"spark_jobs/ingest.py\", line 9\n"
              "music_recs.failures.LakeBusy: dt=2026-11-20 is being written by dag run r1 task ingest since "
              "2026-11-20T01:00:00Z (lease until 2026-11-20T01:02:00Z); try again after it ends")
    assert first_exception(output).startswith("LakeBusy: dt=2026-11-20 is being written by dag run r1")
    failure, _ = classify_failure(output, 1, None)
    assert failure not in PERMANENT
