"""What every Spark job shares: the session, the result file, logging."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from urllib.parse import urlparse

from pyspark.sql import SparkSession

log = logging.getLogger("music_recs.job")

# Defaults every job runs with, whatever launched it. Kryo: the JVM-side objects ALS
# shuffles (rating blocks, factor blocks) serialize several times smaller and faster
# than with Java serialization; registering them avoids writing class names per object.
SUCCESS = "_SUCCESS"  # written by Spark's committer when a write job commits

BASE_CONF = {
    "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
    "spark.kryo.registrationRequired": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    # Parquet output that does not depend on the wall clock (deterministic reruns).
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.ui.showConsoleProgress": "false",
}


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def get_spark(app_name: str, extra_conf: dict | None = None) -> SparkSession:
    """The active session if one exists (tests), else a new one configured by spark-submit."""
    builder = SparkSession.builder.appName(app_name)
    for key, value in {**BASE_CONF, **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def _local_path(uri: str) -> str:
    return urlparse(uri).path if uri.startswith("file:") else uri


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    """Write a small text file to a local path or any Hadoop filesystem URI (s3a://, hdfs://)."""
    if _is_local(uri):
        path = _local_path(uri)
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


def read_text(spark: SparkSession, uri: str) -> str:
    if _is_local(uri):
        with open(_local_path(uri)) as fh:
            return fh.read()
    return "\n".join(r.value for r in spark.read.text(uri).collect())


def write_result(spark: SparkSession, uri: str | None, result: dict) -> None:
    """The job's JSON result, read by the Airflow task that launched it."""
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    log.info("result: %s", json.dumps(result, sort_keys=True, default=str)[:2000])
    if uri:
        write_text(spark, uri, text)


class PhaseTimer:
    """Wall-clock seconds per named phase, recorded in the job result."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        log.info("phase %s ...", name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
            log.info("phase %s done in %.1fs", name, self.seconds[name])
