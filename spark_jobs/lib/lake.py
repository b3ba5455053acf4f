"""The lake's accepted plays, ``plays/dt=D/``: which days are there, and reading them."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.plan import LakeLayout
from spark_jobs.lib.session import SUCCESS


def present_days(spark: SparkSession, lake: LakeLayout, days: list[dt.date]) -> list[dt.date]:
    """The days of ``days`` that have a committed accepted-plays partition in the lake."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    out = []
    for d in days:
        path = jvm.org.apache.hadoop.fs.Path(f"{lake.plays(d.isoformat())}/{SUCCESS}")
        if path.getFileSystem(conf).exists(path):
            out.append(d)
    return out


def read_plays(spark: SparkSession, lake: LakeLayout, days: list[dt.date]) -> DataFrame:
    """Only the listed days' partitions are read, so older days cost nothing."""
    return (spark.read.option("basePath", lake.plays()).parquet(*[lake.plays(d.isoformat()) for d in days])
            .withColumn(S.DT, F.col(S.DT).cast("string")))
