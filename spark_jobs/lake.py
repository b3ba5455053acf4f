"""The lake's accepted plays, ``{lake}/plays/dt=D/``: which days are there, and reading them."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from music_recs import schema as S
from spark_jobs.common import SUCCESS


def present_days(spark: SparkSession, lake_uri: str, days: list[dt.date]) -> list[dt.date]:
    """The days of ``days`` that have an accepted-plays partition in the lake."""
    root = f"{lake_uri.rstrip('/')}/plays"
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    out = []
    for d in days:
        path = jvm.org.apache.hadoop.fs.Path(f"{root}/dt={d.isoformat()}/{SUCCESS}")
        if path.getFileSystem(conf).exists(path):
            out.append(d)
    return out


def read_plays(spark: SparkSession, lake_uri: str, days: list[dt.date]) -> DataFrame:
    """Only the listed days' partitions are read, so older days cost nothing."""
    root = f"{lake_uri.rstrip('/')}/plays"
    return (spark.read.option("basePath", root).parquet(*[f"{root}/dt={d.isoformat()}" for d in days])
            .withColumn(S.DT, F.col(S.DT).cast("string")))
