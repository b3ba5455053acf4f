"""Ingest one day of landing stream logs into the lake as typed Parquet.

Every non-blank input line ends up in exactly one of three places:

* ``{lake}/plays/dt=D/``: accepted, typed, deduplicated plays;
* ``{lake}/quarantine/dt=D/``: the raw line, the first rule it broke and its file;
* counted as a duplicate replay of an accepted event (same ``event_id``).

The invariant ``read = accepted + quarantined + duplicates`` is checked here and
recorded in the result. Reruns overwrite the day's partitions: idempotent.

Run: ``spark-submit spark_jobs/ingest.py --day 2026-11-20 --input DIR --lake URI --result FILE``
"""

from __future__ import annotations

import argparse
import datetime as dt

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from music_recs import schema as S
from spark_jobs.common import PhaseTimer, get_spark, setup_logging, write_result

# Events may arrive late (offline listening syncs later): a play up to this many hours
# before the day still belongs in the day's partition. A small skew forward covers
# client clocks that run ahead.
LATE_TOLERANCE_HOURS = 48
CLOCK_SKEW_MINUTES = 15
# A play longer than a day is a broken client counter, not a listen.
MAX_MS_PLAYED = 24 * 3600 * 1000
ID_PATTERN = r"^[A-Za-z0-9:._@+-]{1,128}$"

# Quarantine reasons, in the order the rules are applied (first failure wins).
R_NOT_JSON = "not_json_object"
R_MISSING = "missing_{}"
R_BAD_ID = "malformed_{}"
R_BAD_TS = "unparseable_ts"
R_TS_OUTSIDE_DAY = "ts_outside_day"
R_BAD_MS = "ms_played_not_integer"
R_MS_RANGE = "ms_played_out_of_range"

_RAW_FIELDS = (*S.REQUIRED_LOG_COLUMNS, *S.OPTIONAL_LOG_COLUMNS)
# Everything is read as text first, so a wrong type becomes a quarantine reason
# instead of a null that passes unnoticed.
RAW_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in _RAW_FIELDS])


def read_lines(spark: SparkSession, input_uri: str) -> DataFrame:
    """Non-blank lines with their source file; gzip is decompressed by extension."""
    lines = (
        spark.read.option("recursiveFileLookup", "true").text(input_uri)
        .select(F.col("value").alias(S.RAW_LINE), F.col("_metadata.file_path").alias(S.SOURCE_FILE))
    )
    # A UTF-8 byte order mark and Windows line ends are normal input.
    clean = F.regexp_replace(F.regexp_replace(F.col(S.RAW_LINE), "^\uFEFF", ""), "\r$", "")
    return lines.withColumn(S.RAW_LINE, clean).filter(F.trim(F.col(S.RAW_LINE)) != "")


def classify(lines: DataFrame, day: dt.date) -> DataFrame:
    """Parse and type each line; ``reason`` is null for a good row, else the first rule it broke."""
    day_start = dt.datetime.combine(day, dt.time())
    lo = day_start - dt.timedelta(hours=LATE_TOLERANCE_HOURS)
    hi = day_start + dt.timedelta(days=1, minutes=CLOCK_SKEW_MINUTES)

    is_object = F.expr(f"try_parse_json({S.RAW_LINE}) IS NOT NULL") & F.trim(F.col(S.RAW_LINE)).startswith("{")
    parsed = lines.withColumn("_j", F.from_json(S.RAW_LINE, RAW_SCHEMA))
    ms_double = F.expr("try_cast(_j.ms_played AS DOUBLE)")
    ts = F.expr("try_to_timestamp(_j.ts)")
    typed = parsed.select(
        S.RAW_LINE, S.SOURCE_FILE,
        is_object.alias("_is_object"),
        *[F.col(f"_j.{c}").alias(c) for c in (S.EVENT_ID, S.USER_ID, S.TRACK_ID, S.ARTIST_ID, *S.OPTIONAL_LOG_COLUMNS)],
        F.col(f"_j.{S.TS}").alias("_ts_raw"),
        F.col(f"_j.{S.MS_PLAYED}").alias("_ms_raw"),
        ts.alias(S.TS),
        ms_double.alias("_ms_double"),
    )
    reason = F.when(~F.col("_is_object"), F.lit(R_NOT_JSON))
    for col in (S.EVENT_ID, S.USER_ID, S.TRACK_ID, S.ARTIST_ID):
        reason = reason.when(F.col(col).isNull(), F.lit(R_MISSING.format(col)))
    reason = reason.when(F.col("_ts_raw").isNull(), F.lit(R_MISSING.format(S.TS)))
    reason = reason.when(F.col("_ms_raw").isNull(), F.lit(R_MISSING.format(S.MS_PLAYED)))
    for col in (S.EVENT_ID, S.USER_ID, S.TRACK_ID, S.ARTIST_ID):
        reason = reason.when(~F.col(col).rlike(ID_PATTERN), F.lit(R_BAD_ID.format(col)))
    reason = (
        reason.when(F.col(S.TS).isNull(), F.lit(R_BAD_TS))
        .when((F.col(S.TS) < F.lit(lo)) | (F.col(S.TS) >= F.lit(hi)), F.lit(R_TS_OUTSIDE_DAY))
        .when(F.col("_ms_double").isNull() | (F.col("_ms_double") != F.floor("_ms_double")), F.lit(R_BAD_MS))
        .when((F.col("_ms_double") < 0) | (F.col("_ms_double") > MAX_MS_PLAYED), F.lit(R_MS_RANGE))
    )
    return typed.withColumn(S.REASON, reason).withColumn(S.MS_PLAYED, F.col("_ms_double").cast("long"))


def dedupe(good: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Keep one row per ``event_id`` (the earliest; ties broken by the raw line, so reruns agree)."""
    w = Window.partitionBy(S.EVENT_ID).orderBy(S.TS, S.RAW_LINE)
    ranked = good.withColumn("_rn", F.row_number().over(w))
    return ranked.filter("_rn = 1").drop("_rn"), ranked.filter("_rn > 1").drop("_rn")


def run(spark: SparkSession, day: dt.date, input_uri: str, lake_uri: str, output_files: int = 0) -> dict:
    timer = PhaseTimer()
    day_s = day.isoformat()
    with timer.phase("parse"):
        rows = classify(read_lines(spark, input_uri), day).cache()
        read = rows.count()
        by_reason = {r[S.REASON]: r["count"] for r in rows.filter(F.col(S.REASON).isNotNull())
                     .groupBy(S.REASON).count().collect()}
    good, dupes = dedupe(rows.filter(F.col(S.REASON).isNull()))
    # Size the output to the data: ~1M rows per file, at least one.
    n_files = output_files or max(1, read // 1_000_000 + 1)
    with timer.phase("write_plays"):
        plays = (
            good.select(S.EVENT_ID, S.TS, S.USER_ID, S.TRACK_ID, S.ARTIST_ID, S.MS_PLAYED, *S.OPTIONAL_LOG_COLUMNS)
            .repartition(n_files, S.USER_ID)
            .sortWithinPartitions(S.USER_ID, S.TS, S.EVENT_ID)
        )
        plays.write.mode("overwrite").parquet(f"{lake_uri.rstrip('/')}/plays/dt={day_s}")
    with timer.phase("write_quarantine"):
        quarantined = (
            rows.filter(F.col(S.REASON).isNotNull())
            .select(S.REASON, S.RAW_LINE, S.SOURCE_FILE)
            .repartition(1).sortWithinPartitions(S.SOURCE_FILE, S.RAW_LINE)
        )
        quarantined.write.mode("overwrite").json(f"{lake_uri.rstrip('/')}/quarantine/dt={day_s}")
    accepted = spark.read.parquet(f"{lake_uri.rstrip('/')}/plays/dt={day_s}").count()
    duplicates = dupes.count()
    n_quarantined = sum(by_reason.values())
    rows.unpersist()
    result = {
        "day": day_s,
        "rows_read": read,
        "rows_accepted": accepted,
        "rows_quarantined": n_quarantined,
        "duplicates_removed": duplicates,
        "quarantine_reasons": dict(sorted(by_reason.items())),
        "seconds": timer.seconds,
    }
    # Nothing may vanish between reading and writing.
    if read != accepted + n_quarantined + duplicates:
        raise RuntimeError(
            f"row accounting broken for {day_s}: read {read} != accepted {accepted} + "
            f"quarantined {n_quarantined} + duplicates {duplicates}"
        )
    return result


def main(argv=None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--day", required=True, type=dt.date.fromisoformat)
    p.add_argument("--input", required=True, help="folder or URI with the day's landing files")
    p.add_argument("--lake", required=True)
    p.add_argument("--result", help="where to write the JSON result")
    args = p.parse_args(argv)
    spark = get_spark(f"music_recs.ingest.{args.day}")
    write_result(spark, args.result, run(spark, args.day, args.input, args.lake))


if __name__ == "__main__":
    main()
