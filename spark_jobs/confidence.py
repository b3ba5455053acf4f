"""Build the implicit-feedback matrices ALS trains on, from the lake's accepted plays.

For logical day D, a window of ``window_days`` days ending at D (both ends included:
``[D - window_days + 1, D]``) is read, partition by partition (only those days). The
last ``holdout_days`` days of the window are held out for evaluation: the training
matrix uses the days before them, and the held-out pairs are what users played next.

Per (user, item), over the training days:

* ``plays``: plays of at least ``skip_ms``; ``skips``: shorter plays (counted, never a preference);
* ``strength = f(r)`` with ``r`` the (optionally time-decayed) play count, and
  ``confidence = 1 + alpha * f(r)`` (see ``music_recs.confidence`` for the formulas and the paper).

Two granularities come from the same plays: ``track`` (user x track) and ``artist``
(user x artist); the spec's ``granularities`` picks them (the DAG builds the one its run trains on). Users and items with too little support are dropped (``min_user_items``
distinct items per user, ``min_item_users`` distinct users per item), then string ids
get stable int32 ids from the persisted index (``spark_jobs.lib.id_index``).

Output, per granularity G: ``{out}/granularity=G/{train,holdout,items}/`` Parquet (``items``
holds display names, see ``most_frequent``) and ``stats.json``; ``out`` defaults to
``{lake}/matrix/dt=D``. The DAG gives each run its own ``out`` (``runs/dt=D/run=R/matrix``): the
matrix depends on the run's parameters (window, holdout, confidence function, support), and a
task of one run cleared and rerun later must not read the matrix of another run of the same day.
Output is deterministic:
same input, same rows in the same files.
"""

from __future__ import annotations

import datetime as dt
import json

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.confidence import ConfidenceParams, confidence, decay_weight, strength
from music_recs.jobs import ConfidenceSpec, MatrixResult
from music_recs.plan import LakeLayout, matrix_of
from spark_jobs.lib.id_index import ID, IDX, extend_index
from spark_jobs.lib.lake import present_days, read_plays
from spark_jobs.lib.session import PhaseTimer, job_main, write_text

ITEM_COLUMN = {"track": S.TRACK_ID, "artist": S.ARTIST_ID}
# Rows per Parquet file of the training matrix (the held-out pairs: a quarter as many files).
PAIRS_PER_FILE = 2_000_000


def window_days(day: dt.date, n_days: int) -> list[dt.date]:
    """The window's days, oldest first: ``[day - n_days + 1, day]``."""
    return [day - dt.timedelta(days=i) for i in range(n_days - 1, -1, -1)]


# Per-pair sums of the window aggregate besides the training ones (S.PLAYS, S.SKIPS, S.R): plays
# in the held-out days, and for tuning's nested split, plays and r up to its cutoff and plays after.
HELD_PLAYS, EARLY_PLAYS, EARLY_R, LATE_PLAYS = "_held_plays", "_early_plays", "_early_r", "_late_plays"


def aggregate_window(plays: DataFrame, item_col: str, day: dt.date, params: ConfidenceParams, cutoff: str,
                     tuning_cutoff: str | None) -> DataFrame:
    """(user_id, item_id, plays, skips, r, strength, confidence, ...) over the window's plays, in
    one aggregation: the training sums (days up to ``cutoff``), the held-out plays (after it) and,
    with ``tuning_cutoff``, the nested split's sums (``EARLY_*`` up to it, ``LATE_PLAYS`` after it
    and up to ``cutoff``).

    One pass by design: the window's shuffle is the job's largest cost (a 90-day window is ~90x a
    day), and deriving the matrix, the held-out pairs and the tuning split each from the plays
    shuffled the window five times (column pruning makes every branch its own exchange)."""
    is_play = F.col(S.MS_PLAYED) >= F.lit(params.skip_ms)
    day_col = F.col(S.DT)
    age_days = F.datediff(F.lit(day.isoformat()).cast("date"), day_col.cast("date"))
    weight = decay_weight(age_days, params.half_life_days)  # 1.0, or a column
    train = day_col <= F.lit(cutoff)

    def count(cond):
        return F.sum(cond.cast("long"))

    sums = [count(train & is_play).alias(S.PLAYS), count(train & ~is_play).alias(S.SKIPS),
            F.sum(F.when(train & is_play, weight).otherwise(0.0)).cast("double").alias(S.R),
            count(~train & is_play).alias(HELD_PLAYS)]
    if tuning_cutoff is not None:
        early = day_col <= F.lit(tuning_cutoff)
        sums += [count(early & is_play).alias(EARLY_PLAYS),
                 F.sum(F.when(early & is_play, weight).otherwise(0.0)).cast("double").alias(EARLY_R),
                 count(~early & train & is_play).alias(LATE_PLAYS)]
    agg = plays.groupBy(F.col(S.USER_ID), F.col(item_col).alias(S.ITEM_ID)).agg(*sums)
    return with_confidence(agg, S.R, params)


def with_confidence(pairs: DataFrame, r_col: str, params: ConfidenceParams) -> DataFrame:
    """``pairs`` with ``strength`` and ``confidence`` from its column ``r_col`` (the formulas of
    ``music_recs.confidence``, on columns)."""
    return (pairs.withColumn(S.STRENGTH, strength(F.col(r_col), params, F.log1p))
            .withColumn(S.CONFIDENCE, confidence(F.col(r_col), params, F.log1p)))


def filter_support(pairs: DataFrame, min_user_items: int, min_item_users: int) -> DataFrame:
    """Drop items with fewer than ``min_item_users`` users, then users with fewer than
    ``min_user_items`` items (one pass each, in that order: documented, not iterated to a fixed point)."""
    items = pairs.groupBy(S.ITEM_ID).count().filter(F.col("count") >= min_item_users).select(S.ITEM_ID)
    kept = pairs.join(items, S.ITEM_ID, "left_semi")
    users = kept.groupBy(S.USER_ID).count().filter(F.col("count") >= min_user_items).select(S.USER_ID)
    return kept.join(users, S.USER_ID, "left_semi")


QUANTILES = (0.5, 0.9, 0.99)


def percentiles(df: DataFrame, cols: list[str]) -> dict[str, dict]:
    """Per column of ``df``: its p50, p90, p99 (approximate, relative error 0.001) and max, in one job."""
    aggs = [F.percentile_approx(c, list(QUANTILES), 1000).alias(f"q_{c}") for c in cols]
    row = df.agg(*aggs, *[F.max(c).alias(f"max_{c}") for c in cols]).first()
    return {c: {**{f"p{int(q * 100)}": float(v) for q, v in zip(QUANTILES, row[f"q_{c}"] or [0] * len(QUANTILES))},
                "max": float(row[f"max_{c}"] or 0)} for c in cols}


def next_pairs(window: DataFrame, played_next: str, played_before: str, train: DataFrame) -> DataFrame:
    """What users of ``train`` played next among its items and had not played before:
    (user_idx, item_idx, user_id, item_id), from the window aggregate's pairs with plays in column
    ``played_next`` and none in ``played_before``. Users and items come from the matrix, not from
    the id index: the index also holds ids of other days and granularities. (A pair of a kept user
    and a kept item with earlier plays is in ``train``: the support filter drops whole users and
    items, so "no plays before" is "not in ``train``".)"""
    return (
        window.filter((F.col(played_next) > 0) & (F.col(played_before) == 0))
        .select(S.USER_ID, S.ITEM_ID)
        .join(train.select(S.USER_ID, S.USER_IDX).distinct(), S.USER_ID)
        .join(train.select(S.ITEM_ID, S.ITEM_IDX).distinct(), S.ITEM_ID)
        .select(S.USER_IDX, S.ITEM_IDX, S.USER_ID, S.ITEM_ID)
    )


SAMPLE_BUCKETS = 1 << 20


def sample_users(pairs: DataFrame, max_users: int) -> tuple[DataFrame, dict]:
    """``pairs`` of at most about ``max_users`` users (0: all), and what was kept.

    The sample is fixed by a hash of the user id, not drawn: a rerun, and the next day's run,
    search on the same users (the ones still active), and a user is in or out whatever else the
    window holds. Sampling users, not pairs, keeps each sampled user's whole history, which is
    what a candidate is scored on."""
    n_users = pairs.select(S.USER_ID).distinct().count()
    if not max_users or n_users <= max_users:
        return pairs, {"users_before_sample": n_users, "sample_fraction": 1.0}
    fraction = max_users / n_users
    bucket = F.pmod(F.xxhash64(S.USER_ID), F.lit(SAMPLE_BUCKETS))
    return (pairs.filter(bucket < F.lit(int(fraction * SAMPLE_BUCKETS))),
            {"users_before_sample": n_users, "sample_fraction": round(fraction, 6)})


def build_tuning_split(spark, window: DataFrame, cutoff: str, params, min_user_items, min_item_users,
                       users: DataFrame, items: DataFrame, out_root: str, max_users: int = 0) -> dict:
    """The nested split tuning uses: ``tuning/train`` from the training days up to ``cutoff``,
    ``tuning/validation`` what those users played after it (still inside the training days).
    Ids are the matrix's own (``users``, ``items``): a pair whose user or item the full matrix
    dropped is left out. ``max_users`` > 0: a sample of about that many users (``sample_users``).

    Why a sample: the search fits dozens of candidates, so on the whole matrix it would cost
    dozens of trainings; on a bounded sample its cost stops growing with the window, and the
    model itself still trains on every user."""
    early, sampled = sample_users(window.filter(F.col(EARLY_PLAYS) > 0).select(
        S.USER_ID, S.ITEM_ID, F.col(EARLY_PLAYS).alias(S.PLAYS), F.col(EARLY_R).alias(S.R)), max_users)
    positive = filter_support(with_confidence(early, S.R, params), min_user_items, min_item_users)
    tune_train = (
        positive.join(users, S.USER_ID).join(items, S.ITEM_ID)
        .select(S.USER_IDX, S.ITEM_IDX, S.USER_ID, S.ITEM_ID, S.PLAYS, S.R, S.STRENGTH)
    )
    n_parts = max(1, early.count() // PAIRS_PER_FILE + 1)
    tune_train = tune_train.repartition(n_parts, S.USER_IDX).sortWithinPartitions(S.USER_IDX, S.ITEM_IDX)
    tune_train.write.mode("overwrite").parquet(f"{out_root}/{S.TUNING_TRAIN}")
    tune_train = spark.read.parquet(f"{out_root}/{S.TUNING_TRAIN}")
    validation = next_pairs(window, LATE_PLAYS, EARLY_PLAYS, tune_train)
    (validation.repartition(1, S.USER_IDX).sortWithinPartitions(S.USER_IDX, S.ITEM_IDX)
     .write.mode("overwrite").parquet(f"{out_root}/{S.TUNING_VALIDATION}"))
    validation = spark.read.parquet(f"{out_root}/{S.TUNING_VALIDATION}")
    return {"last_train_day": cutoff, "nnz": tune_train.count(), **sampled,
            "validation_users": validation.select(S.USER_IDX).distinct().count(), "validation_pairs": validation.count()}


# Display names: the columns a granularity's names come from, and the plays of each spelling.
NAME_COLUMNS = {"track": (S.TRACK_ID, S.TRACK_NAME, S.ARTIST_ID, S.ARTIST_NAME),
                "artist": (S.ARTIST_ID, S.ARTIST_NAME)}
PLAYS_OF = "_plays_of"


def most_frequent(spellings: DataFrame, key: str, value: str) -> DataFrame:
    """(key, value): per ``key``, the ``value`` of most plays (ties: the smallest); null only when
    every play of the key has a null ``value``. ``spellings`` holds plays counted per spelling
    (column ``PLAYS_OF``).

    Display names for people (the CLI, reports) are chosen this way: a track's name is what most
    of its plays call it, so a few lines (a typo, an escape sequence, a 256-character name) cannot
    rename a popular track for everyone, and reruns agree. A sum per (key, value) (a hash
    aggregation), then one row per key by the smallest (has no value, -plays, value): no sort of
    plays and nothing collected to the driver.
    """
    counted = spellings.groupBy(key, value).agg(F.sum(PLAYS_OF).alias("_n"))
    order = F.struct(F.col(value).isNull(), -F.col("_n"), F.col(value))
    return counted.groupBy(key).agg(F.min_by(F.col(value), order).alias(value))


def build_granularity(spark, plays, granularity, day, cutoff: str, lake: LakeLayout, params,
                      min_user_items, min_item_users, out_root, tuning_cutoff: str | None = None,
                      tuning_users: int = 0, timer: PhaseTimer | None = None):
    """One granularity's matrix, held-out pairs, names, statistics and tuning split (see the
    module docstring); ``timer``: its steps' seconds, as phases ``{granularity}_{step}``."""
    timer = timer or PhaseTimer()
    item_col = ITEM_COLUMN[granularity]
    # Kept on local disk, not in memory: every output below reads it, and at a 90-day window it is
    # tens of millions of pairs (the executors' memory goes to the joins and sorts that follow).
    window = aggregate_window(plays, item_col, day, params, cutoff, tuning_cutoff).persist(StorageLevel.DISK_ONLY)
    window.count()  # computed once here, not by the concurrent jobs below each
    timer.lap(f"{granularity}_window")
    positive = filter_support(window.filter(F.col(S.PLAYS) > 0), min_user_items, min_item_users).cache()

    users_index, new_users = extend_index(spark, lake, "user", positive.select(F.col(S.USER_ID).alias(ID)))
    items_index, new_items = extend_index(spark, lake, granularity, positive.select(F.col(S.ITEM_ID).alias(ID)))
    u = users_index.select(F.col(ID).alias(S.USER_ID), F.col(IDX).alias(S.USER_IDX))
    i = items_index.select(F.col(ID).alias(S.ITEM_ID), F.col(IDX).alias(S.ITEM_IDX))

    # Plays per spelling, counted in one scan of the window and kept (a row per spelling: small);
    # the three uses below would each scan the window again (column pruning tells them apart).
    spellings = plays.groupBy(*NAME_COLUMNS[granularity]).agg(F.count(F.lit(1)).alias(PLAYS_OF)).cache()
    spellings.count()
    timer.lap(f"{granularity}_index_and_spellings")
    artist_names = most_frequent(spellings, S.ARTIST_ID, S.ARTIST_NAME)
    if granularity == "track":
        names = (most_frequent(spellings, S.TRACK_ID, S.TRACK_NAME)
                 .join(most_frequent(spellings, S.TRACK_ID, S.ARTIST_ID), S.TRACK_ID)
                 .join(artist_names, S.ARTIST_ID, "left")
                 .select(F.col(S.TRACK_ID).alias(S.ITEM_ID), F.col(S.TRACK_NAME).alias(S.ITEM_NAME),
                         S.ARTIST_ID, S.ARTIST_NAME))
    else:
        names = artist_names.select(F.col(S.ARTIST_ID).alias(S.ITEM_ID), F.col(S.ARTIST_NAME).alias(S.ITEM_NAME),
                                    S.ARTIST_ID, S.ARTIST_NAME)

    # Files sized to the matrix (~2M pairs each), not to the session's shuffle partitions: those
    # depend on the lake's size and the machine, and a rerun must write the same files.
    n_parts = max(1, positive.count() // PAIRS_PER_FILE + 1)
    train = (
        positive.join(u, S.USER_ID).join(i, S.ITEM_ID)
        .select(S.USER_IDX, S.ITEM_IDX, S.USER_ID, S.ITEM_ID, S.PLAYS, S.SKIPS, S.R, S.STRENGTH, S.CONFIDENCE)
        .repartition(n_parts, S.USER_IDX).sortWithinPartitions(S.USER_IDX, S.ITEM_IDX)
    )
    train.write.mode("overwrite").parquet(f"{out_root}/train")
    train = spark.read.parquet(f"{out_root}/train")
    timer.lap(f"{granularity}_train")

    # Held out: what users of the training matrix played next among its items (the only ones
    # the model has factors for) and had not played in training. Users and items are taken
    # from the matrix, not from the id index: the index also holds ids of other days and
    # granularities, and grows on a first run, so a rerun would evaluate on other pairs.
    held = (next_pairs(window, HELD_PLAYS, S.PLAYS, train)
            .repartition(max(1, n_parts // 4), S.USER_IDX).sortWithinPartitions(S.USER_IDX, S.ITEM_IDX))
    held.write.mode("overwrite").parquet(f"{out_root}/holdout")
    (i.join(names, S.ITEM_ID).join(train.select(S.ITEM_IDX).distinct(), S.ITEM_IDX, "left_semi")
     .select(S.ITEM_IDX, S.ITEM_ID, S.ITEM_NAME, S.ARTIST_ID, S.ARTIST_NAME)
     .repartition(1).sortWithinPartitions(S.ITEM_IDX)
     .write.mode("overwrite").parquet(f"{out_root}/items"))
    held = spark.read.parquet(f"{out_root}/holdout")
    timer.lap(f"{granularity}_holdout_and_names")

    # The statistics in a few small jobs over the written matrix (a job costs ~0.3 s in a fresh JVM);
    # skips are the training window's short plays, from the window aggregate.
    whole = train.agg(F.count(F.lit(1)).alias("nnz"), F.count_distinct(S.USER_IDX).alias("users"),
                      F.count_distinct(S.ITEM_IDX).alias("items"), F.sum(S.PLAYS).alias(S.PLAYS),
                      F.max(S.USER_IDX).alias("max_user"), F.max(S.ITEM_IDX).alias("max_item")).first()
    n_users, n_items, nnz = whole["users"], whole["items"], whole["nnz"]
    per_user = train.groupBy(S.USER_IDX).agg(F.count("*").alias("items"), F.sum(S.PLAYS).alias(S.PLAYS))
    spread = percentiles(per_user, [S.PLAYS, "items"])
    held_counts = held.agg(F.count_distinct(S.USER_IDX).alias("users"), F.count(F.lit(1)).alias("pairs")).first()
    stats = {
        "day": day.isoformat(),
        "granularity": granularity,
        "users": n_users,
        "items": n_items,
        "nnz": nnz,
        "density": (nnz / (n_users * n_items)) if n_users and n_items else 0.0,
        "plays": int(whole[S.PLAYS] or 0),
        "skips": int(window.agg(F.sum(S.SKIPS)).first()[0] or 0),
        "plays_per_user": spread[S.PLAYS],
        "items_per_user": spread["items"],
        "max_user_idx": int(whole["max_user"] or 0),
        "max_item_idx": int(whole["max_item"] or 0),
        "holdout_users": held_counts["users"],
        "holdout_pairs": held_counts["pairs"],
    }
    timer.lap(f"{granularity}_stats")
    if tuning_cutoff is not None:
        stats["tuning"] = build_tuning_split(
            spark, window, tuning_cutoff, params, min_user_items, min_item_users,
            u.join(train.select(S.USER_IDX).distinct(), S.USER_IDX, "left_semi"),
            i.join(train.select(S.ITEM_IDX).distinct(), S.ITEM_IDX, "left_semi"), out_root, tuning_users)
        timer.lap(f"{granularity}_tuning_split")
    positive.unpersist()
    window.unpersist()
    spellings.unpersist()
    # Only properties of the matrix: a rerun writes the same file.
    write_text(spark, f"{out_root}/stats.json", json.dumps(stats, indent=2, sort_keys=True))
    return stats, {"new_users": new_users, "new_items": new_items}


def run(spark: SparkSession, spec: ConfidenceSpec) -> MatrixResult:
    """Build ``spec.granularities``' matrices for ``spec.day``; see the module docstring."""
    timer = PhaseTimer()
    day, lake, window = dt.date.fromisoformat(spec.day), LakeLayout(spec.lake_uri), spec.window_days
    days = window_days(day, window)
    train_days, held_days = days[: window - spec.holdout_days], days[window - spec.holdout_days:]
    # Tuning's nested split: the last validation_days of the training days are scored on.
    tuning_cutoff = train_days[-1 - spec.validation_days].isoformat() if spec.validation_days else None
    present = present_days(spark, lake, days)
    if not any(d in present for d in train_days):
        raise FileNotFoundError(
            f"no accepted plays in the lake for the training days {train_days[0]}..{train_days[-1]} "
            f"(present: {', '.join(map(str, present)) or 'none'}); ingest earlier days first "
            "(music-recs ingest --from-day ... --to-day ...)"
        )
    plays = read_plays(spark, lake, present)
    cutoff = train_days[-1].isoformat()
    out_uri = spec.out_uri or lake.default_matrix(spec.day)
    out, indexed = {}, {}
    for g in spec.granularities:
        out[g], indexed[g] = build_granularity(
            spark, plays, g, day, cutoff, lake, spec.confidence, spec.min_user_items,
            spec.min_item_users, matrix_of(out_uri, g), tuning_cutoff, spec.tuning_users, timer,
        )
    return MatrixResult(
        day=spec.day,
        window={"first_day": days[0].isoformat(), "last_train_day": cutoff,
                "holdout_days": [d.isoformat() for d in held_days],
                "days_present": [d.isoformat() for d in present]},
        params=spec.confidence.__dict__, min_user_items=spec.min_user_items, min_item_users=spec.min_item_users,
        stats=out, ids_added=indexed, seconds=timer.seconds,
    )


def main(argv=None) -> None:
    job_main(ConfidenceSpec, run, argv)


if __name__ == "__main__":
    main()
