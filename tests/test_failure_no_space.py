"""A full disk under a Spark job: recognised from the driver's output, named in one line with the
folder and its free space, and not resubmitted into the same folders (a full disk does not empty
itself). The outputs are what real jobs printed on a full filesystem; the hook runs stand-ins
that print them (or hit a real ENOSPC on /dev/full), so no test needs a small filesystem."""

from __future__ import annotations

import os
import re
import sys

import pytest

from music_recs.failures import PermanentSparkJobError
from music_recs.jobs import IngestSpec
from music_recs.resubmission import Failure, classify_failure, free_space, next_settings
from music_recs.sizing import ExecutorSizing
from music_recs_airflow.spark_submit import SparkJobHook, run_with_resubmission

# spark-submit of spark_jobs/ingest.py with the lake on a 2 MiB tmpfs (mount -t tmpfs -o size=2m).
PARQUET_FULL_DISK = """WARNING: Using incubator modules: jdk.incubator.vector
26/12/04 16:24:09 WARN Utils: Your hostname, vm, resolves to a loopback address: 127.0.0.1; using 192.0.2.2 instead (on interface eth0)
26/12/04 16:24:09 WARN Utils: Set SPARK_LOCAL_IP if you need to bind to another address
26/12/04 16:24:09 WARN NativeCodeLoader: Unable to load native-hadoop library for your platform... using builtin-java classes where applicable
2026-12-04 16:24:15,370 INFO music_recs.job: phase inspect ...
2026-12-04 16:24:19,898 INFO music_recs.job: phase inspect done in 4.5s
2026-12-04 16:24:19,925 INFO music_recs.job: phase write_plays ...
26/12/04 16:24:28 ERROR Utils: Aborting task
org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to file:/tmp/fulltest/lake/plays/dt=2026-11-20. SQLSTATE: 58030
\tat org.apache.spark.sql.errors.QueryExecutionErrors$.taskFailedWhileWritingRowsError(QueryExecutionErrors.scala:814)
\tat org.apache.spark.sql.execution.datasources.FileFormatDataWriter.enrichWriteError(FileFormatDataWriter.scala:92)
\tat org.apache.spark.sql.execution.datasources.FileFormatDataWriter.commit(FileFormatDataWriter.scala:123)
\t... (stack frames left out)
Caused by: org.apache.parquet.util.AutoCloseables$ParquetCloseResourceException: Unable to close resource
\tat org.apache.parquet.util.AutoCloseables.uncheckedClose(AutoCloseables.java:85)
\tat org.apache.parquet.util.AutoCloseables.uncheckedClose(AutoCloseables.java:94)
\t... 21 more
Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device
\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:549)
\tat java.base/java.io.BufferedOutputStream.flushBuffer(BufferedOutputStream.java:81)
\t... 29 more
Caused by: java.io.IOException: No space left on device
\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\tat java.base/java.io.FileOutputStream.write(FileOutputStream.java:349)
\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:545)
\t... 41 more
26/12/04 16:24:28 ERROR FileFormatWriter: Job: job_202612041624261639827775375530661_0003, Task: task_202612041624261639827775375530661_0003_m_000000, Task attempt attempt_202612041624261639827775375530661_0003_m_000000_4 aborted.
26/12/04 16:24:28 ERROR Executor: Exception in task 0.0 in stage 3.0 (TID 4)
\t... (the same error, from the executor and the scheduler)
26/12/04 16:24:28 ERROR TaskSetManager: Task 0 in stage 3.0 failed 1 times; aborting job
26/12/04 16:24:28 ERROR FileFormatWriter: Aborting job 037fd61b-5991-4059-8c37-562b0c00f5aa.
\t... (stack frames left out)
\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:545)
\t... 41 more
2026-12-04 16:24:28,725 INFO music_recs.job: phase write_plays done in 8.8s
Traceback (most recent call last):
  File "/work/main/spark_jobs/ingest.py", line 463, in <module>
    main()
  File "/work/main/spark_jobs/ingest.py", line 459, in main
    job_main(IngestSpec, run, argv)
  File "/tmp/repro/submit/music_recs_pyfiles_1796401391563406970.zip/spark_jobs/lib/session.py", line 103, in job_main
  File "/work/main/spark_jobs/ingest.py", line 399, in run
    plays.write.mode("overwrite").parquet(lake.plays(day_s))
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/pyspark.zip/pyspark/sql/readwriter.py", line 2003, in parquet
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/py4j-0.10.9.9-src.zip/py4j/java_gateway.py", line 1362, in __call__
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/pyspark.zip/pyspark/errors/exceptions/captured.py", line 263, in deco
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/py4j-0.10.9.9-src.zip/py4j/protocol.py", line 327, in get_return_value
py4j.protocol.Py4JJavaError: An error occurred while calling o1098.parquet.
: org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to file:/tmp/fulltest/lake/plays/dt=2026-11-20. SQLSTATE: 58030
\tat org.apache.spark.sql.errors.QueryExecutionErrors$.taskFailedWhileWritingRowsError(QueryExecutionErrors.scala:814)
\tat org.apache.spark.sql.execution.datasources.FileFormatDataWriter.enrichWriteError(FileFormatDataWriter.scala:92)
\t... (stack frames left out)
Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device
\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:549)
\t... (stack frames left out)
Caused by: java.io.IOException: No space left on device
\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\tat java.base/java.io.FileOutputStream.write(FileOutputStream.java:349)
\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:545)
\t... 41 more

2026-12-04 16:24:28,770 INFO py4j.clientserver: Closing down clientserver connection"""

# The same job with spark.local.dir on a 2 MiB tmpfs: the shuffle files fill it.
LOCAL_DIR_FULL = """WARNING: Using incubator modules: jdk.incubator.vector
26/12/04 16:30:58 WARN Utils: Your hostname, vm, resolves to a loopback address: 127.0.0.1; using 192.0.2.2 instead (on interface eth0)
26/12/04 16:30:58 WARN Utils: Set SPARK_LOCAL_IP if you need to bind to another address
26/12/04 16:30:59 WARN NativeCodeLoader: Unable to load native-hadoop library for your platform... using builtin-java classes where applicable
26/12/04 16:31:01 WARN SparkConf: Note that spark.local.dir will be overridden by the value set by the cluster manager (via SPARK_LOCAL_DIRS in standalone/kubernetes and LOCAL_DIRS in YARN).
2026-12-04 16:31:07,815 INFO music_recs.job: phase inspect ...
2026-12-04 16:31:13,939 INFO music_recs.job: phase inspect done in 6.1s
2026-12-04 16:31:13,984 INFO music_recs.job: phase write_plays ...
26/12/04 16:31:17 WARN Utils: Suppressing exception in finally: No space left on device
java.io.IOException: No space left on device
\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\tat java.base/java.io.FileOutputStream.write(FileOutputStream.java:349)
\t... (stack frames left out)
26/12/04 16:31:17 ERROR DiskBlockObjectWriter: Exception occurred while manually close the output stream to file /tmp/fullA/local/blockmgr-6c2bbddb-d07b-4a72-b335-60ead6650527/12/temp_shuffle_30643d7f-0f17-46ec-9624-4e074b0487c7, No space left on device
26/12/04 16:31:17 WARN Utils: Suppressing exception in finally: No space left on device
java.io.IOException: No space left on device
\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\tat java.base/java.io.FileOutputStream.write(FileOutputStream.java:349)
\t... (stack frames left out)
26/12/04 16:31:17 WARN TaskSetManager: Lost task 0.0 in stage 1.0 (TID 2) (192.0.2.2 executor driver): java.io.IOException: No space left on device
\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\t... (stack frames left out)
26/12/04 16:31:17 ERROR TaskSetManager: Task 0 in stage 1.0 failed 1 times; aborting job
2026-12-04 16:31:17,999 INFO music_recs.job: phase write_plays done in 4.0s
Traceback (most recent call last):
  File "/work/main/spark_jobs/ingest.py", line 463, in <module>
    main()
  File "/work/main/spark_jobs/ingest.py", line 459, in main
    job_main(IngestSpec, run, argv)
  File "/tmp/repro/submit_localdir/music_recs_pyfiles_1796401733795652539.zip/spark_jobs/lib/session.py", line 103, in job_main
  File "/work/main/spark_jobs/ingest.py", line 399, in run
    plays.write.mode("overwrite").parquet(lake.plays(day_s))
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/pyspark.zip/pyspark/sql/readwriter.py", line 2003, in parquet
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/py4j-0.10.9.9-src.zip/py4j/java_gateway.py", line 1362, in __call__
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/pyspark.zip/pyspark/errors/exceptions/captured.py", line 263, in deco
  File "/work/main/.venv/lib/python3.11/site-packages/pyspark/python/lib/py4j-0.10.9.9-src.zip/py4j/protocol.py", line 327, in get_return_value
py4j.protocol.Py4JJavaError: An error occurred while calling o1099.parquet.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 1.0 failed 1 times, most recent failure: Lost task 0.0 in stage 1.0 (TID 2) (192.0.2.2 executor driver): java.io.IOException: No space left on device
\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
\tat java.base/java.io.FileOutputStream.write(FileOutputStream.java:349)
\tat org.apache.spark.storage.TimeTrackingOutputStream.write(TimeTrackingOutputStream.java:59)
\t... (stack frames left out)
2026-12-04 16:31:18,050 INFO py4j.clientserver: Closing down clientserver connection"""

QUOTA = """Traceback (most recent call last):
  File "/work/main/spark_jobs/evaluate.py", line 240, in main
    fh.write(report)
OSError: [Errno 122] Disk quota exceeded"""

DAY = "2026-11-20"
SIZING = ExecutorSizing(executor_memory_mb=1024, executor_memory_overhead_mb=384, executor_cores=2, num_executors=1,
                        user_blocks=2, item_blocks=2, shuffle_partitions=4, driver_memory_mb=1024)


@pytest.mark.parametrize("output, decisive", [
    (PARQUET_FULL_DISK, "Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device"),
    (LOCAL_DIR_FULL, "WARN Utils: Suppressing exception in finally: No space left on device"),
    (QUOTA, "OSError: [Errno 122] Disk quota exceeded"),
], ids=["lake", "spark_local_dir", "disk_quota"])
def test_a_full_disk_is_its_own_failure_class(output, decisive):
    """Before: the Parquet writer's "Unable to close resource" read as an unknown failure."""
    failure, lines = classify_failure(output, 1)
    assert failure is Failure.NO_SPACE and lines[0].endswith(decisive)
    assert next_settings(failure, SIZING, local=True, memory_cap_mb=4096) is None


# /proc reports no space at all: the fullest filesystem, which a folder the output names outranks.
FULLEST = "/proc/self"
SIZE = r"\d+\.\d (GiB|MiB)"  # the free space of the test's own filesystem changes as other processes write


def test_free_space_names_the_folder_the_output_names_else_the_fullest(tmp_path):
    lake = tmp_path / "lake"
    folders = [("lake_uri", str(lake)), ("spark.local.dir", FULLEST),
               ("work_dir", str(tmp_path / "submit"))]  # folders not made yet: their filesystem counts
    assert re.fullmatch(rf"spark\.local\.dir {FULLEST} has 0\.0 MiB free of 0\.0 MiB now "
                        rf"\(lake_uri {re.escape(str(lake))}: {SIZE} free\)", free_space(folders))
    error = f"org.apache.spark.SparkException: Task failed while writing rows to file:{lake}/plays/dt={DAY}"
    assert free_space(folders, output=f"INFO reading {FULLEST}\n{error}").startswith(f"lake_uri {lake} has ")
    assert free_space(folders, output=f"INFO writing {lake}/plays").startswith(f"spark.local.dir {FULLEST} has ")
    decisive = f"ERROR DiskBlockObjectWriter: ... to file {FULLEST}/blockmgr-1/temp_shuffle_2, No space left on device"
    assert free_space(folders, [decisive], error).startswith(f"spark.local.dir {FULLEST} has ")


def stand_in(hook: SparkJobHook, monkeypatch, script: str) -> None:
    """Run ``script`` instead of spark-submit: the hook reads its output and exit code as it would spark-submit's."""
    monkeypatch.setattr(hook, "command", lambda *args, **kwargs: [sys.executable, "-c", script,
                                                                  "--master", "local[*]"])


def replay(output: str) -> str:
    """A stand-in that prints ``output`` and exits as spark-submit did."""
    return f"import sys; print({output!r}); sys.exit(1)"


def test_a_full_lake_is_named_with_its_free_space_and_the_run_is_not_resubmitted(tmp_path, monkeypatch):
    lake = tmp_path / "lake"
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), label=f"dt={DAY}", master="local[*]",
                        class_archive_dir="")
    stand_in(hook, monkeypatch, replay(PARQUET_FULL_DISK.replace("/tmp/fulltest/lake", str(lake))))
    with pytest.raises(PermanentSparkJobError) as err:
        run_with_resubmission(hook, lambda s: IngestSpec(day=DAY, input_uri=str(tmp_path), lake_uri=str(lake)), SIZING,
                              local=True, memory_cap_mb=4096, conf={"spark.local.dir": FULLEST})
    message = str(err.value)
    assert "\n" not in message and err.value.failure == "no_space"
    assert re.fullmatch(
        rf"Spark job ingest dt={DAY} failed \(no_space\): lake_uri {re.escape(str(lake))} has {SIZE} free of {SIZE} now "
        rf"\(spark\.local\.dir {FULLEST}: 0\.0 MiB free\); FSError: java\.io\.IOException: No space left on device "
        rf"\(full log: {re.escape(str(tmp_path / 'submit' / 'ingest.log'))}\) "
        r"\[not retryable: attempt 1: no_space after [\d.]+s\]", message), message  # one attempt: no resubmission


def test_a_full_spark_local_dir_is_named_even_where_the_lake_has_less_space(tmp_path, monkeypatch):
    local = tmp_path / "local"
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), label=f"dt={DAY}", master="local[*]",
                        class_archive_dir="")
    stand_in(hook, monkeypatch, replay(LOCAL_DIR_FULL.replace("/tmp/fullA/local", str(local))))
    with pytest.raises(PermanentSparkJobError) as err:
        hook.submit(IngestSpec(day=DAY, input_uri=str(tmp_path), lake_uri=f"{FULLEST}/lake"),
                    conf={"spark.local.dir": str(local)})
    assert re.fullmatch(rf"Spark job ingest dt={DAY} failed \(no_space\): spark\.local\.dir {re.escape(str(local))} has "
                        rf"{SIZE} free of {SIZE} now \(lake_uri {FULLEST}/lake: 0\.0 MiB free\); "
                        r"IOException: No space left on device \(full log: .*/submit/ingest\.log\)", str(err.value))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (a device that is always full) here")
def test_a_real_enospc_from_the_job_is_a_full_disk(tmp_path, monkeypatch):
    """The kernel's own ENOSPC: /dev/full refuses every write with it."""
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), label=f"dt={DAY}", master="local[*]",
                        class_archive_dir="")
    stand_in(hook, monkeypatch, "with open('/dev/full', 'w') as fh:\n    fh.write('plays')")
    with pytest.raises(PermanentSparkJobError) as err:
        hook.submit(IngestSpec(day=DAY, input_uri=str(tmp_path), lake_uri=str(tmp_path / "lake")),
                    conf={"spark.local.dir": str(tmp_path / "local")})
    assert f"failed (no_space): lake_uri {tmp_path / 'lake'} has " in str(err.value)
    assert str(err.value).endswith(f"; OSError: [Errno 28] No space left on device (full log: {tmp_path}/submit/ingest.log)")
