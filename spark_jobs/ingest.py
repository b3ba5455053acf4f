"""Ingest one day of landing stream logs into the lake as typed Parquet.

Every non-blank input line ends up in exactly one of three places:

* ``{lake}/plays/dt=D/v=V/``: accepted, typed, deduplicated plays;
* ``{lake}/quarantine/dt=D/v=V/``: the raw line, the first rule it broke and its file;
* counted as a duplicate replay of an accepted event (same ``event_id``), within the day or
  already accepted into one of the ``NEIGHBOUR_DAYS`` days before or after it (a late event can
  be delivered again the next day, and both days' windows accept it; a backfill may ingest the
  later day first).

The invariant ``read = accepted + quarantined + duplicates`` is checked here and
recorded in the result. Each run writes a new copy ``v=V`` of the day aside while it holds the
day's lease, and makes it the day in one step (``plays/dt=D/_COMMITTED.json``, see
``music_recs.lake_commit``): a run killed midway leaves the committed copy as it was, a second
writer of the day stops with ``LakeBusy``, and a rerun of the same input commits the same rows.

Run: ``spark-submit spark_jobs/ingest.py --spec SPEC.json --result FILE`` (``music_recs.jobs.IngestSpec``)
"""

from __future__ import annotations

import datetime as dt
import math
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import unquote

from pyspark.sql import DataFrame, Observation, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from music_recs import names as N
from music_recs import schema as S
from music_recs.failures import LandingTooLarge
from music_recs.jobs import IngestResult, IngestSpec
from music_recs.plan import LakeLayout
from spark_jobs.lib.lake import present_days, read_plays, writing_day
from spark_jobs.lib.landing import BLANK, QUARANTINE_CHARS, iter_records, survey
from spark_jobs.lib.session import PhaseTimer, job_main

# Events may arrive late (offline listening syncs later): a play up to this many hours
# before the day still belongs in the day's partition. A small skew forward covers
# client clocks that run ahead.
LATE_TOLERANCE_HOURS = 48
CLOCK_SKEW_MINUTES = 15
# An event is accepted on any day D with D - 48 h <= ts < D + 1 d + 15 min, so the same event
# can also sit in the partitions of the 3 days before or after D: a replay is looked for there.
NEIGHBOUR_DAYS = math.ceil((LATE_TOLERANCE_HOURS * 60 + CLOCK_SKEW_MINUTES) / (24 * 60))
# Landing files decompressing to less than this pass whatever their ratio (``expansion_limit``).
EXPANSION_FLOOR = 64 * 1024 * 1024
# A play longer than a day is a broken client counter, not a listen.
MAX_MS_PLAYED = 24 * 3600 * 1000
ID_PATTERN = S.ID_PATTERN

# Quarantine reasons, in the order the rules are applied (first failure wins).
R_NOT_JSON = "not_json_object"
R_MISSING = "missing_{}"
R_BAD_ID = "malformed_{}"
R_BAD_TS = "unparseable_ts"
R_TS_OUTSIDE_DAY = "ts_outside_day"
R_BAD_MS = "ms_played_not_integer"
R_MS_RANGE = "ms_played_out_of_range"
R_PODCAST = "podcast_not_music"
R_FIELD_COUNT = "wrong_field_count"
# Last.fm and ListenBrainz record listens, not play time. A scrobble means at least 30 s
# (or half the track) was played, so a listen counts as a play of exactly that minimum.
SCROBBLE_MS = 30_000
FORMAT = "format"
PRE_REASON = "pre_reason"
LINE_DIGEST = "_line_digest"
# A line with a character outside ``landing.BLANK`` is a record; the same rule as the Python path.
BLANK_LINE_NOT = "[^" + "".join(f"\\x{ord(c):02x}" for c in BLANK) + "]"

_RAW_FIELDS = (*S.REQUIRED_LOG_COLUMNS, *S.OPTIONAL_LOG_COLUMNS)
# Everything is read as text first, so a wrong type becomes a quarantine reason
# instead of a null that passes unnoticed.
RAW_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in _RAW_FIELDS])
SPOTIFY_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in (
    "ts", "username", "ms_played", "spotify_track_uri", "spotify_episode_uri", "episode_name",
    "master_metadata_track_name", "master_metadata_album_artist_name", "reason_end", "skipped")])
# How a landing line is parsed: strict JSON (no NaN, no single quotes: what json.loads accepts
# but for duplicate keys, where the last wins), in PERMISSIVE mode with the unparsable line kept
# in UNPARSED (a name no landing format uses).
UNPARSED = "_music_recs_unparsed"
JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": UNPARSED,
                "allowNonNumericNumbers": "false", "allowSingleQuotes": "false"}
# Gzip'd JSON lines hold about a million plays in 48 MiB: the day's plays are written about one
# Parquet file per million plays (per 48 MiB of landing bytes), sized before the day is parsed.
LANDING_BYTES_PER_OUTPUT_FILE = 48 * 1024 * 1024


class Verdict(typing.NamedTuple):
    """What ``landing.inspect`` found in one landing file."""

    path: str
    format: str
    jvm_readable: bool
    bytes: int
    expanded: int = 0  # bytes it decompresses to, counted up to its limit (``expansion_limit``)


# A listen's top level as text (``track_metadata`` as its JSON), then ``track_metadata`` parsed on
# its own: a nested value of an unexpected type (``artist_mbids: "x"``) then nulls that field
# only, instead of making the whole line unparsed.
LISTENBRAINZ_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in ("listened_at", "user_name", "track_metadata")])
TRACK_METADATA_SCHEMA = T.StructType([
    T.StructField("artist_name", T.StringType()),
    T.StructField("track_name", T.StringType()),
    T.StructField("additional_info", T.StructType([
        T.StructField("recording_mbid", T.StringType()),
        T.StructField("artist_mbids", T.ArrayType(T.StringType())),
    ])),
])


def inspect_files(spark: SparkSession, input_uri: str, source_format: str = "auto",
                  reader: str = "auto", max_expansion: float = 100.0) -> list[Verdict]:
    """A verdict per landing file under ``input_uri``: its format, whether Spark's text reader takes
    it exactly, its size and what it decompresses to.

    Each file is inspected once on the executors (``landing.survey``: format, intact gzip, valid
    UTF-8, sane line lengths, decompressed size; only the verdict comes back). ``reader="python"``:
    every file goes to the Python reader. A file that decompresses past ``expansion_limit`` stops
    the job here, in one line naming it, before any of it is parsed.
    """
    files = _binary_files(spark, input_uri).select("path", "length", "content")
    python_only = reader == "python"

    def verdict(row):
        fmt, readable, expanded = survey(row.path, bytes(row.content), source_format,
                                         expansion_limit(row.length, max_expansion))
        return row.path, fmt, readable and not python_only, row.length, expanded

    verdicts = sorted(Verdict(*v) for v in files.rdd.map(verdict).collect())
    for v in verdicts:
        if v.expanded > expansion_limit(v.bytes, max_expansion):
            raise LandingTooLarge(
                f"landing file {unquote(v.path)} ({v.bytes} bytes) decompresses to more than "
                f"{expansion_limit(v.bytes, max_expansion)} bytes, past max_landing_expansion={max_expansion:g} "
                "times its size; remove it or split it into smaller files")
    return verdicts


def expansion_limit(size: int, max_expansion: float) -> int:
    """Bytes a landing file of ``size`` bytes may decompress to: ``max_expansion`` times its size,
    and never less than ``EXPANSION_FLOOR`` (a small file of repetitive lines compresses far better
    than a day's file, and is harmless)."""
    return max(EXPANSION_FLOOR, int(max_expansion * size))


def _binary_files(spark: SparkSession, input_uri: str) -> DataFrame:
    return spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(input_uri)


def read_records(spark: SparkSession, input_uri: str, verdicts: list[Verdict],
                 source_format: str = "auto") -> DataFrame:
    """One row per record of the files in ``verdicts``: ``raw_line, source_file, format, pre_reason``.

    Files Spark's text reader takes exactly are read by it (gzip through Hadoop's codec) and never
    cross into Python; the rest (a broken gzip stream, bytes that are not UTF-8, a Spotify JSON
    array, an endless line) are split by ``landing.iter_records``, so a file that breaks midway
    keeps its good lines.
    """
    schema = f"{S.RAW_LINE} string, {S.SOURCE_FILE} string, {FORMAT} string, {PRE_REASON} string"
    parts = []
    by_format: dict[str, list[str]] = {}
    for v in verdicts:
        if v.jvm_readable:
            by_format.setdefault(v.format, []).append(v.path)
    for fmt, paths in sorted(by_format.items()):
        lines = spark.read.text(sorted(paths)).select(
            F.regexp_replace("value", "^\ufeff", "").alias(S.RAW_LINE), F.col("_metadata.file_path").alias(S.SOURCE_FILE))
        parts.append(lines.filter(F.col(S.RAW_LINE).rlike(BLANK_LINE_NOT)).select(
            S.RAW_LINE, S.SOURCE_FILE, F.lit(fmt).alias(FORMAT), F.lit(None).cast("string").alias(PRE_REASON)))
    in_python = sorted(v.path for v in verdicts if not v.jvm_readable)
    if in_python:
        def split(row):
            for line, fmt, reason in iter_records(row.path, bytes(row.content), source_format):
                yield line, row.path, fmt, reason

        chosen = _binary_files(spark, input_uri).filter(F.col("path").isin(in_python)).select("path", "content")
        parts.append(spark.createDataFrame(chosen.rdd.flatMap(split), schema))
    if not parts:
        return spark.createDataFrame([], schema)
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def _norm(col):
    """Lower case, trimmed, inner white space folded: the form names are hashed in."""
    return F.lower(F.trim(F.regexp_replace(col, r"\s+", " ")))


def clean_name(col):
    """``music_recs.names.clean_name`` in the JVM: white space folded, control and format characters
    removed, cut to ``NAME_MAX_CHARS``; null when nothing is left.

    Not a quarantine reason: the play's facts are valid, a name is display metadata (ids derived
    from names hash the name as it came, so they do not change with this rule)."""
    name = F.regexp_replace(col, N.JAVA_WHITE_SPACE, " ")
    name = F.trim(F.regexp_replace(F.regexp_replace(name, N.JAVA_CONTROL, ""), " {2,}", " "))
    name = F.rtrim(F.substring(name, 1, N.NAME_MAX_CHARS))
    return F.when(name != "", name)


def derived_id(*cols):
    """``name:`` + the first 20 hex digits of SHA-1 over the normalized names, joined by U+001F.

    For sources without ids (Last.fm without MBIDs, Spotify artists). Null when a name is missing.
    """
    joined = F.concat_ws("\u001f", *[_norm(c) for c in cols])
    missing = F.lit(False)
    for c in cols:
        missing = missing | c.isNull() | (F.trim(c) == "")
    return F.when(~missing, F.concat(F.lit("name:"), F.substring(F.sha1(joined), 1, 20)))


def _from_json(schema: T.StructType):
    """``from_json`` of the raw line, strict JSON; ``UNPARSED`` holds the line when it is not JSON."""
    return F.from_json(S.RAW_LINE, T.StructType([*schema.fields, T.StructField(UNPARSED, T.StringType())]), JSON_OPTIONS)


def _json_object_reason():
    # The parse that types the fields also says whether the line is JSON: no second parse.
    ok = F.col(f"_j.{UNPARSED}").isNull() & F.trim(F.col(S.RAW_LINE)).startswith("{")
    return F.when(~ok, F.lit(R_NOT_JSON))


def _derived_event_id(fmt: str):
    # Sources without event ids: the same user, track and time is the same event (a replay).
    return F.concat(F.lit(f"{fmt}:"), F.substring(F.sha1(F.concat_ws("\u001f", S.USER_ID, S.TRACK_ID, "_ts_raw")), 1, 32))


NORMALIZED = (S.RAW_LINE, S.SOURCE_FILE, FORMAT, PRE_REASON, S.EVENT_ID, S.USER_ID, S.TRACK_ID, S.ARTIST_ID,
              "_ts_raw", "_ms_raw", S.TRACK_NAME, S.ARTIST_NAME)


def normalize(records: DataFrame, formats=S.LANDING_FORMATS) -> DataFrame:
    """Map every format to the same string columns; ``pre_reason`` holds format-level problems.

    Track and artist names come out cleaned (``clean_name``).

    formats: the formats present (default all): each is a pass over ``records``.
    """
    def of(fmt):
        return records.filter(F.col(FORMAT) == fmt)

    native = of("native").withColumn("_j", _from_json(RAW_SCHEMA)).select(
        S.RAW_LINE, S.SOURCE_FILE, FORMAT, F.coalesce(PRE_REASON, _json_object_reason()).alias(PRE_REASON),
        *[F.col(f"_j.{c}").alias(c) for c in S.ID_COLUMNS],
        F.col(f"_j.{S.TS}").alias("_ts_raw"), F.col(f"_j.{S.MS_PLAYED}").alias("_ms_raw"),
        F.col(f"_j.{S.TRACK_NAME}").alias(S.TRACK_NAME), F.col(f"_j.{S.ARTIST_NAME}").alias(S.ARTIST_NAME),
    )

    sp = of("spotify").withColumn("_j", _from_json(SPOTIFY_SCHEMA))
    artist, track = F.col("_j.master_metadata_album_artist_name"), F.col("_j.master_metadata_track_name")
    podcast = F.col("_j.spotify_track_uri").isNull() & (
        F.col("_j.spotify_episode_uri").isNotNull() | F.col("_j.episode_name").isNotNull())
    spotify = sp.select(
        S.RAW_LINE, S.SOURCE_FILE, FORMAT,
        F.coalesce(PRE_REASON, _json_object_reason(), F.when(podcast, F.lit(R_PODCAST))).alias(PRE_REASON),
        # Exports without a username belong to the user named by their folder: spotify/<user>/*.json
        F.coalesce(F.col("_j.username"), F.try_element_at(F.split(S.SOURCE_FILE, "/"), F.lit(-2))).alias(S.USER_ID),
        F.coalesce(F.col("_j.spotify_track_uri"), derived_id(artist, track)).alias(S.TRACK_ID),
        derived_id(artist).alias(S.ARTIST_ID),
        F.col("_j.ts").alias("_ts_raw"), F.col("_j.ms_played").alias("_ms_raw"),
        track.alias(S.TRACK_NAME), artist.alias(S.ARTIST_NAME),
    ).withColumn(S.EVENT_ID, _derived_event_id("spotify"))

    f = F.split(F.col(S.RAW_LINE), "\t")
    field = lambda i: F.when(F.trim(F.get(f, i)) != "", F.trim(F.get(f, i)))  # noqa: E731  (get: null past the end)
    lastfm = of("lastfm").select(
        S.RAW_LINE, S.SOURCE_FILE, FORMAT,
        F.coalesce(PRE_REASON, F.when(F.size(f) != 6, F.lit(R_FIELD_COUNT))).alias(PRE_REASON),
        field(0).alias(S.USER_ID),
        F.coalesce(F.concat(F.lit("mbid:"), field(4)), derived_id(field(3), field(5))).alias(S.TRACK_ID),
        F.coalesce(F.concat(F.lit("mbid:"), field(2)), derived_id(field(3))).alias(S.ARTIST_ID),
        field(1).alias("_ts_raw"), F.lit(str(SCROBBLE_MS)).alias("_ms_raw"),
        field(5).alias(S.TRACK_NAME), field(3).alias(S.ARTIST_NAME),
    ).withColumn(S.EVENT_ID, _derived_event_id("lastfm"))

    lb = of("listenbrainz").withColumn("_j", _from_json(LISTENBRAINZ_SCHEMA)) \
        .withColumn("_meta", F.from_json("_j.track_metadata", TRACK_METADATA_SCHEMA))
    meta = "_meta"
    lb_artist, lb_track = F.col(f"{meta}.artist_name"), F.col(f"{meta}.track_name")
    # Seconds since the epoch, within years 1..9999 (beyond, timestamp_seconds overflows in ANSI mode).
    listened = F.expr("try_cast(_j.listened_at AS BIGINT)")
    listened = F.when(listened.between(-62135596800, 253402300799), listened)
    listenbrainz = lb.select(
        S.RAW_LINE, S.SOURCE_FILE, FORMAT, F.coalesce(PRE_REASON, _json_object_reason()).alias(PRE_REASON),
        F.col("_j.user_name").alias(S.USER_ID),
        F.coalesce(F.concat(F.lit("mbid:"), F.col(f"{meta}.additional_info.recording_mbid")),
                   derived_id(lb_artist, lb_track)).alias(S.TRACK_ID),
        F.coalesce(F.concat(F.lit("mbid:"), F.try_element_at(F.col(f"{meta}.additional_info.artist_mbids"), F.lit(1))),
                   derived_id(lb_artist)).alias(S.ARTIST_ID),
        F.when(listened.isNotNull(), F.date_format(F.timestamp_seconds(listened), "yyyy-MM-dd'T'HH:mm:ss'Z'"))
        .otherwise(F.col("_j.listened_at")).alias("_ts_raw"),
        F.lit(str(SCROBBLE_MS)).alias("_ms_raw"), lb_track.alias(S.TRACK_NAME), lb_artist.alias(S.ARTIST_NAME),
    ).withColumn(S.EVENT_ID, _derived_event_id("listenbrainz"))

    out = None
    for fmt, part in (("native", native), ("spotify", spotify), ("lastfm", lastfm), ("listenbrainz", listenbrainz)):
        if fmt in formats:
            part = part.select(*NORMALIZED).withColumns(
                {c: clean_name(F.col(c)) for c in (S.TRACK_NAME, S.ARTIST_NAME)})
            out = part if out is None else out.unionByName(part)
    return out if out is not None else native.select(*NORMALIZED)


def day_window(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """``[lo, hi)``: the play times day ``day`` accepts, late events included. Aware (UTC): Spark
    reads a naive datetime literal in the driver's local time zone, not the session's."""
    day_start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    return (day_start - dt.timedelta(hours=LATE_TOLERANCE_HOURS),
            day_start + dt.timedelta(days=1, minutes=CLOCK_SKEW_MINUTES))


def classify(normalized: DataFrame, day: dt.date) -> DataFrame:
    """Type each record; ``reason`` is null for a good row, else the first rule it broke."""
    lo, hi = day_window(day)
    typed = normalized.withColumn(S.TS, F.expr("try_to_timestamp(_ts_raw)")) \
        .withColumn("_ms_double", F.expr("try_cast(_ms_raw AS DOUBLE)"))
    reason = F.when(F.col(PRE_REASON).isNotNull(), F.col(PRE_REASON))
    for col in S.ID_COLUMNS:
        reason = reason.when(F.col(col).isNull(), F.lit(R_MISSING.format(col)))
    reason = reason.when(F.col("_ts_raw").isNull(), F.lit(R_MISSING.format(S.TS)))
    reason = reason.when(F.col("_ms_raw").isNull(), F.lit(R_MISSING.format(S.MS_PLAYED)))
    for col in S.ID_COLUMNS:
        reason = reason.when(~F.col(col).rlike(ID_PATTERN), F.lit(R_BAD_ID.format(col)))
    reason = (
        reason.when(F.col(S.TS).isNull(), F.lit(R_BAD_TS))
        .when((F.col(S.TS) < F.lit(lo)) | (F.col(S.TS) >= F.lit(hi)), F.lit(R_TS_OUTSIDE_DAY))
        .when(F.col("_ms_double").isNull() | F.isnan("_ms_double"), F.lit(R_BAD_MS))
        # Range before integrality: 1e30 is out of range (and floor() of it would saturate).
        .when((F.col("_ms_double") < 0) | (F.col("_ms_double") > MAX_MS_PLAYED), F.lit(R_MS_RANGE))
        .when(F.col("_ms_double") != F.floor("_ms_double"), F.lit(R_BAD_MS))
    )
    # Every cast of an input value is total (Spark 4's ANSI mode fails the job on an overflowing
    # cast): only rows that passed every rule are cast, and with try_cast all the same.
    ms = F.when(F.col(S.REASON).isNull(), F.expr("try_cast(_ms_double AS BIGINT)"))
    return typed.withColumn(S.REASON, reason).withColumn(S.MS_PLAYED, ms)


@contextmanager
def landing_records(spark: SparkSession, spec: IngestSpec, verdicts: list[Verdict]) -> Iterator[DataFrame]:
    """``read_records`` of ``verdicts``, cached while in use when normalize() would read them more than
    once (a pass per format present) and some are split in Python (the costly part to repeat)."""
    records = read_records(spark, spec.input_uri, verdicts, spec.source_format)
    cached = len({v.format for v in verdicts}) > 1 and not all(v.jvm_readable for v in verdicts)
    if cached:
        records = records.cache()
    try:
        yield records
    finally:
        if cached:
            records.unpersist()


def classified(records: DataFrame, formats: set[str], day: dt.date) -> DataFrame:
    """Every record typed, with its ``reason`` (null: accepted) and the digest of its raw line; the
    raw line is kept only where it goes to quarantine."""
    rows = classify(normalize(records, formats), day)
    return rows.withColumn(LINE_DIGEST, F.xxhash64(S.RAW_LINE)).select(
        F.when(F.col(S.REASON).isNotNull(), F.col(S.RAW_LINE)).alias(S.RAW_LINE), S.SOURCE_FILE, FORMAT, S.REASON,
        LINE_DIGEST, S.EVENT_ID, S.TS, S.USER_ID, S.TRACK_ID, S.ARTIST_ID, S.MS_PLAYED, *S.OPTIONAL_LOG_COLUMNS)


def accepted_plays(good: DataFrame, seen: DataFrame | None, n_files: int) -> tuple[DataFrame, Callable[[bool], dict]]:
    """The day's plays to write: one row per ``event_id`` (the earliest; ties broken by the raw
    line's digest, then its source file, so reruns agree), none of the ids in ``seen`` (events a
    neighbouring day accepted), in ``n_files`` partitions by ``event_id``.

    With them, a function that gives, after they are written, ``duplicates`` (replays within the
    day) and ``of_other_days`` (events in ``seen``); the accepted count is read from what was written.
    """
    # One shuffle of the day by event_id serves the deduplication, the neighbour join and the
    # output files: the neighbours' ids are shuffled to the same partitions, so the join keeps them.
    w = Window.partitionBy(S.EVENT_ID).orderBy(S.TS, LINE_DIGEST, S.SOURCE_FILE)
    ranked = good.repartition(n_files, S.EVENT_ID).withColumn("_rn", F.row_number().over(w))
    first = F.col("_rn") == 1
    if seen is None:
        ranked = ranked.withColumn("_seen", F.lit(False))
    else:
        seen = seen.select(S.EVENT_ID).repartition(n_files, S.EVENT_ID).distinct().withColumn("_seen", F.lit(True))
        ranked = ranked.join(seen, S.EVENT_ID, "left").withColumn("_seen", F.coalesce("_seen", F.lit(False)))
    ranked, counts = _observed(ranked, "ingest_plays", {
        "duplicates": F.count_if(~first), "of_other_days": F.count_if(first & F.col("_seen"))})
    plays = (ranked.filter(first & ~F.col("_seen"))
             .select(S.EVENT_ID, S.TS, S.USER_ID, S.TRACK_ID, S.ARTIST_ID, S.MS_PLAYED, *S.OPTIONAL_LOG_COLUMNS)
             .sortWithinPartitions(S.USER_ID, S.TS, S.EVENT_ID))
    return plays, counts


def files_named(verdicts: list[Verdict], source_files: list[str]) -> list[Verdict]:
    """The verdicts of the files named in ``source_files`` (as the records name them: Spark's text
    reader gives a file's path URL-encoded); all of them if a name matches no file."""
    paths = {v.path for v in verdicts}
    # Both spellings where both name a file: an extra file only adds rows quarantined anyway.
    named = [{f, unquote(f)} & paths for f in source_files]
    if not all(named):
        return verdicts
    chosen = set().union(*named)
    return [v for v in verdicts if v.path in chosen]


def run(spark: SparkSession, spec: IngestSpec) -> IngestResult:
    """Ingest ``spec.day`` from ``spec.input_uri`` into the lake; see the module docstring.

    One pass parses the day, writes the accepted plays and counts everything else as it goes; a
    second pass over only the files that had quarantined rows writes the quarantine. The typed
    rows are not cached: parsing a file again costs less than caching every typed row of the day.
    """
    timer = PhaseTimer()
    day_s, day = spec.day, dt.date.fromisoformat(spec.day)
    lake = LakeLayout(spec.lake_uri)
    # The day's lease first: a second writer of the day stops here, in one line naming the first.
    with writing_day(spark, lake, day_s, spec.writer, spec.lease_seconds, spec.retention_hours) as copy:
        with timer.phase("inspect"):
            verdicts = inspect_files(spark, spec.input_uri, spec.source_format, spec.reader, spec.max_expansion)
        formats = {v.format for v in verdicts}
        # Events a neighbouring day already accepted are duplicates too, whichever day was ingested
        # first (a backfill can ingest the day before after this one). The other days are not
        # rewritten, so a rerun of this day finds the same ones and each event stays in one day.
        # Days whose ingests overlap could both keep an event: the DAG's single-slot Spark pool
        # runs one ingest at a time.
        neighbours = [day + dt.timedelta(days=i) for i in range(-NEIGHBOUR_DAYS, NEIGHBOUR_DAYS + 1) if i]
        others = present_days(spark, lake, neighbours)
        seen = read_plays(spark, lake, others) if others else None
        n_files = spec.output_files or max(1, math.ceil(sum(v.bytes for v in verdicts) / LANDING_BYTES_PER_OUTPUT_FILE))
        # The new copy goes into its own folders, beside the committed one: readers keep the old
        # day until the commit below.
        with timer.phase("write_plays"), landing_records(spark, spec, verdicts) as records:
            rows, read_counts = _counted(classified(records, formats, day))
            plays, play_counts = accepted_plays(rows.filter(F.col(S.REASON).isNull()), seen, n_files)
            plays.write.mode("errorifexists").parquet(copy.plays)
            accepted = spark.read.parquet(copy.plays).count()
            counts = {**read_counts(accepted > 0), **play_counts(accepted > 0)}
        with timer.phase("write_quarantine"):
            bad = files_named(verdicts, counts["bad_files"]) if counts["quarantined"] else []
            with landing_records(spark, spec, bad) as records:
                quarantined = classified(records, formats, day).filter(F.col(S.REASON).isNotNull()).select(
                    # The quarantine copy is cut; parsing saw the whole line.
                    S.REASON, F.substring(S.RAW_LINE, 1, QUARANTINE_CHARS).alias(S.RAW_LINE), S.SOURCE_FILE, FORMAT)
                kept, by_reason = capped(quarantined, spec.quarantine_rows_per_reason)
                kept.repartition(1).sortWithinPartitions(S.SOURCE_FILE, S.RAW_LINE).write \
                    .mode("errorifexists").json(copy.quarantine)
                # No quarantined row: nothing ran that observed them (and get would wait forever).
                by_reason = by_reason() if counts["quarantined"] else {}
        read = counts["read"]
        duplicates = counts["duplicates"] + counts["of_other_days"]
        n_quarantined = sum(by_reason.values())
        result = IngestResult(
            day=day_s, rows_read=read, rows_accepted=accepted, rows_quarantined=n_quarantined,
            duplicates_removed=duplicates, duplicates_of_other_days=counts["of_other_days"],
            quarantine_reasons=dict(sorted(by_reason.items())),
            formats={f: counts[f"format_{f}"] for f in S.LANDING_FORMATS if counts[f"format_{f}"]},
            files_by_reader={"spark": sum(v.jvm_readable for v in verdicts),
                             "python": sum(not v.jvm_readable for v in verdicts)},
            seconds=timer.seconds,
        )
        # Nothing may vanish between reading and writing, nor between the two passes; a copy that
        # lost rows is never committed.
        if read != accepted + n_quarantined + duplicates or n_quarantined != counts["quarantined"]:
            raise RuntimeError(
                f"row accounting broken for {day_s}: read {read} != accepted {accepted} + quarantined "
                f"{n_quarantined} (counted {counts['quarantined']} while reading) + duplicates {duplicates}"
            )
        with timer.phase("commit"):
            copy.commit(accepted, n_quarantined)
    return result


def capped(quarantined: DataFrame, per_reason: int) -> tuple[DataFrame, Callable[[], dict[str, int]]]:
    """The quarantined rows kept (the first ``per_reason`` of each reason, in file and line order,
    so a rerun keeps the same ones), and a function giving every reason's count of all its rows
    once the kept rows were written. The cap bounds what a day of garbage costs downstream (the
    copy, its upload, a person reading it); the counts stay exact."""
    ordered = Window.partitionBy(S.REASON).orderBy(S.SOURCE_FILE, S.RAW_LINE)
    ranked = quarantined.withColumn("_n", F.row_number().over(ordered)) \
        .withColumn("_of", F.count(F.lit(1)).over(Window.partitionBy(S.REASON)))
    observation = Observation("quarantine_reasons")
    # One (reason, count) per reason: as many entries as reasons, whatever the rows.
    totals = F.collect_list(F.when(F.col("_n") == 1, F.struct(S.REASON, "_of"))).alias("totals")
    kept = ranked.observe(observation, totals).filter(F.col("_n") <= per_reason).drop("_n", "_of")
    return kept, lambda: {t[S.REASON]: t["_of"] for t in observation.get["totals"]}


def _counted(rows: DataFrame) -> tuple[DataFrame, Callable[[bool], dict]]:
    """``rows`` observed: how many were read, per format, how many go to quarantine and from which
    files (counted while the plays are written, so the day is parsed once for both)."""
    bad = F.col(S.REASON).isNotNull()
    return _observed(rows, "ingest_read", {
        "read": F.count(F.lit(1)), "quarantined": F.count_if(bad),
        "bad_files": F.collect_set(F.when(bad, F.col(S.SOURCE_FILE))),
        **{f"format_{f}": F.count_if(F.col(FORMAT) == f) for f in S.LANDING_FORMATS}})


def _observed(df: DataFrame, name: str, metrics: dict) -> tuple[DataFrame, Callable[[bool], dict]]:
    """``df`` observed by ``metrics`` (name: aggregate column), and a function giving their values
    once an action ran on it: ``values(wrote_rows)``. When the action wrote no row, the metrics
    come from an aggregate over ``df`` instead: adaptive execution drops the stages under an empty
    shuffle, and the metrics observed there with them (a day with nothing to accept pays for a
    second pass; every other day reads them from the one pass)."""
    observation = Observation(name)
    columns = [col.alias(key) for key, col in metrics.items()]

    def values(wrote_rows: bool) -> dict:
        return observation.get if wrote_rows else df.agg(*columns).first().asDict()

    return df.observe(observation, *columns), values


def main(argv=None) -> None:
    job_main(IngestSpec, run, argv)


if __name__ == "__main__":
    main()
