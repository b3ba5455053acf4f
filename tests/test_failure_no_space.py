"""A full disk under a Spark job: recognised from the driver's output, named in one line with the
folder and its free space, and not resubmitted into the same folders (a full disk does not empty
itself). The outputs are what real jobs printed on a full filesystem; the hook runs stand-ins
that print them (or hit a real ENOSPC on /dev/full), so no test needs a small filesystem."""

from __future__ import annotations

import os
import re
import shutil
import sys

import pytest

from music_recs.failures import PermanentSparkJobError
from music_recs.jobs import IngestSpec
from music_recs.resubmission import Failure, classify_failure, free_space
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

QUOTA = """Traceback (most recent call last):
  File "/work/main/spark_jobs/evaluate.py", line 240, in main
    fh.write(report)
OSError: [Errno 122] Disk quota exceeded"""

DAY = "2026-11-20"


@pytest.mark.parametrize("output, decisive", [
    (PARQUET_FULL_DISK, "No space left on device"),
    (QUOTA, "OSError: [Errno 122] Disk quota exceeded"),
], ids=["parquet_close_resource", "disk_quota"])
def test_a_full_disk_is_its_own_failure_class(output, decisive):
    """Before: the Parquet writer's "Unable to close resource" read as an unknown failure."""
    failure, lines = classify_failure(output, 1)
    assert failure is Failure.NO_SPACE and decisive in lines[0]


def test_free_space_names_the_folder_the_output_names_else_the_fullest(tmp_path):
    """/proc reports no space at all: the fullest filesystem, unless the output names another folder."""
    lake = tmp_path / "lake"
    folders = [("lake_uri", str(lake)), ("spark.local.dir", "/proc/self"),
               ("work_dir", str(tmp_path / "submit"))]  # folders not made yet: their filesystem counts
    usage = shutil.disk_usage(tmp_path)
    assert free_space(folders) == ("spark.local.dir /proc/self has 0.0 MiB free of 0.0 MiB now "
                                   f"(lake_uri {lake}: {usage.free / 2**30:.1f} GiB free)")
    named = free_space(folders, [f"Failed to write file:{lake}/plays/dt=2026-11-20/part-00000.parquet"])
    assert named.startswith(f"lake_uri {lake} has ") and "(spark.local.dir /proc/self: 0.0 MiB free)" in named


def stand_in(hook: SparkJobHook, monkeypatch, script: str) -> None:
    """Run ``script`` instead of spark-submit: the hook reads its output and exit code as it would spark-submit's."""
    monkeypatch.setattr(hook, "command", lambda *args, **kwargs: [sys.executable, "-c", script,
                                                                           "--master", "local[*]"])


def test_the_error_names_the_folder_and_its_free_space_and_the_run_is_not_resubmitted(tmp_path, monkeypatch):
    lake = tmp_path / "lake"
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), label=f"dt={DAY}", master="local[*]",
                        class_archive_dir="")
    stand_in(hook, monkeypatch, f"import sys; print({PARQUET_FULL_DISK!r}.replace('/tmp/fulltest/lake', {str(lake)!r})); "
                                "sys.exit(1)")
    sizing = ExecutorSizing(executor_memory_mb=1024, executor_memory_overhead_mb=384, executor_cores=2, num_executors=1,
                            user_blocks=2, item_blocks=2, shuffle_partitions=4, driver_memory_mb=1024)
    with pytest.raises(PermanentSparkJobError) as err:
        run_with_resubmission(hook, lambda s: IngestSpec(day=DAY, input_uri=str(tmp_path), lake_uri=str(lake)), sizing,
                              local=True, memory_cap_mb=4096)
    message = str(err.value)
    assert "\n" not in message and err.value.failure == "no_space"
    assert re.fullmatch(
        rf"Spark job ingest dt={DAY} failed \(no_space\): lake_uri {re.escape(str(lake))} has \d+\.\d (GiB|MiB) free of "
        rf"\d+\.\d (GiB|MiB) now( \(.*\))?; FSError: java\.io\.IOException: No space left on device "
        rf"\(full log: {re.escape(str(tmp_path / 'submit' / 'ingest.log'))}\) \[not retryable: attempt 1: no_space after "
        r"[\d.]+s\]", message), message


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (a device that is always full) here")
def test_a_real_enospc_from_the_job_is_a_full_disk(tmp_path, monkeypatch):
    """The kernel's own ENOSPC: /dev/full refuses every write with it."""
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), label=f"dt={DAY}", master="local[*]",
                        class_archive_dir="")
    stand_in(hook, monkeypatch, "with open('/dev/full', 'w') as fh:\n    fh.write('plays')")
    with pytest.raises(PermanentSparkJobError) as err:
        hook.submit(IngestSpec(day=DAY, input_uri=str(tmp_path), lake_uri=str(tmp_path / "lake")))
    assert f"failed (no_space): lake_uri {tmp_path / 'lake'} has " in str(err.value)
    assert str(err.value).endswith(f"; OSError: [Errno 28] No space left on device (full log: {tmp_path}/submit/ingest.log)")
