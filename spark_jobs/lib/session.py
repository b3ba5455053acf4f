"""What every Spark job shares: the command line (spec in, result out), the session, logging."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

from pyspark.sql import SparkSession

from music_recs.jobs import JobSpec
from music_recs.plan import local_path
from music_recs.settings import s3_client_environment
from spark_jobs.lib.s3a import s3a_conf

log = logging.getLogger("music_recs.job")

# Defaults every job runs with, whatever launched it. Kryo: the JVM-side objects ALS
# shuffles (rating blocks, factor blocks) serialize several times smaller and faster
# than with Java serialization; registering them avoids writing class names per object.
BASE_CONF = {
    "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
    "spark.kryo.registrationRequired": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    # Parquet output that does not depend on the wall clock (deterministic reruns).
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.ui.showConsoleProgress": "false",
}
SUCCESS = "_SUCCESS"  # written by Spark's committer when a write job commits


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def get_spark(app_name: str, extra_conf: dict | None = None) -> SparkSession:
    """The active session if one exists (tests), else a new one configured by spark-submit."""
    builder = SparkSession.builder.appName(app_name)
    for key, value in {**BASE_CONF, **s3a_conf(s3_client_environment()), **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    """Write a small text file to a local path or any Hadoop filesystem URI (s3a://, hdfs://)."""
    path = local_path(uri)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
        return
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(uri)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def write_result(spark: SparkSession, uri: str | None, result) -> None:
    """The job's result (a ``music_recs.jobs`` result), as JSON for the task that launched it."""
    values = result.to_dict()
    log.info("result: %s", json.dumps(values, sort_keys=True, default=str)[:2000])
    if uri:
        write_text(spark, uri, json.dumps(values, indent=2, sort_keys=True, default=str))


def parse_args(spec_class: type[JobSpec], argv=None) -> tuple[JobSpec, str | None]:
    """``--spec FILE`` (the task's spec, JSON) and ``--result FILE``: what every job's command line takes."""
    p = argparse.ArgumentParser(prog=f"spark_jobs/{spec_class.JOB}.py", description=spec_class.__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help=f"the job's {spec_class.__name__} as JSON (music_recs.jobs)")
    p.add_argument("--result", help="where to write the JSON result")
    args = p.parse_args(argv)
    with open(args.spec) as fh:
        return spec_class.from_json(fh.read()), args.result


def job_main(spec_class: type[JobSpec], run: Callable, argv=None) -> None:
    """A job's entry point: read the spec, run on the session spark-submit made, write the result."""
    setup_logging()
    spec, result_path = parse_args(spec_class, argv)
    spark = get_spark(f"music_recs.{spec_class.JOB}")
    write_result(spark, result_path, run(spark, spec))


class PhaseTimer:
    """Wall-clock seconds per named phase, recorded in the job result."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._lap = time.perf_counter()

    def lap(self, name: str) -> None:
        """Record the seconds since the previous lap (or since the timer was made) as phase ``name``:
        for a job whose steps share state and are not blocks of their own."""
        now = time.perf_counter()
        self.seconds[name] = round(now - self._lap, 3)
        self._lap = now
        log.info("phase %s done in %.1fs", name, self.seconds[name])

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        log.info("phase %s ...", name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
            log.info("phase %s done in %.1fs", name, self.seconds[name])
