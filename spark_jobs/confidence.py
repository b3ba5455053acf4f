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
(user x artist); ``--granularity`` picks one (the DAG builds the one its run trains on). Users and items with too little support are dropped (``min_user_items``
distinct items per user, ``min_item_users`` distinct users per item), then string ids
get stable int32 ids from the persisted index (``spark_jobs.id_index``).

Output, per granularity G: ``{out}/granularity=G/{train,holdout,items}/`` Parquet (``items``
holds display names) and ``stats.json``; ``out`` defaults to ``{lake}/matrix/dt=D``. The DAG
gives each run its own ``out`` (``runs/dt=D/run=R/matrix``): the matrix depends on the run's
parameters (window, holdout, confidence function, support), and a task of one run cleared and
rerun later must not read the matrix of another run of the same day. Output is deterministic:
same input, same rows in the same files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.confidence import ConfidenceParams
from spark_jobs.common import PhaseTimer, get_spark, setup_logging, write_result, write_text
from spark_jobs.id_index import ID, IDX, extend_index
from spark_jobs.lake import present_days, read_plays

GRANULARITIES = {"track": S.TRACK_ID, "artist": S.ARTIST_ID}
# Rows per Parquet file of the training matrix (the held-out pairs: a quarter as many files).
PAIRS_PER_FILE = 2_000_000


def window_days(day: dt.date, n_days: int) -> list[dt.date]:
    """The window's days, oldest first: ``[day - n_days + 1, day]``."""
    return [day - dt.timedelta(days=i) for i in range(n_days - 1, -1, -1)]


def aggregate(plays: DataFrame, item_col: str, day: dt.date, params: ConfidenceParams) -> DataFrame:
    """(user_id, item_id, plays, skips, r, strength, confidence) over the given plays."""
    is_play = F.col(S.MS_PLAYED) >= F.lit(params.skip_ms)
    age_days = F.datediff(F.lit(day.isoformat()).cast("date"), F.col(S.DT).cast("date"))
    weight = F.pow(F.lit(0.5), age_days / F.lit(params.half_life_days)) if params.half_life_days > 0 else F.lit(1.0)
    agg = (
        plays.groupBy(F.col(S.USER_ID), F.col(item_col).alias(S.ITEM_ID))
        .agg(
            F.sum(is_play.cast("long")).alias(S.PLAYS),
            F.sum((~is_play).cast("long")).alias(S.SKIPS),
            F.sum(F.when(is_play, weight).otherwise(0.0)).alias("r"),
        )
    )
    if params.function == "linear":
        f = F.col("r")
    else:
        f = F.log1p(F.col("r") / F.lit(params.epsilon))
    return agg.withColumn("strength", f).withColumn(S.CONFIDENCE, 1.0 + F.lit(params.alpha) * F.col("strength"))


def filter_support(pairs: DataFrame, min_user_items: int, min_item_users: int) -> DataFrame:
    """Drop items with fewer than ``min_item_users`` users, then users with fewer than
    ``min_user_items`` items (one pass each, in that order: documented, not iterated to a fixed point)."""
    items = pairs.groupBy(S.ITEM_ID).count().filter(F.col("count") >= min_item_users).select(S.ITEM_ID)
    kept = pairs.join(items, S.ITEM_ID, "left_semi")
    users = kept.groupBy(S.USER_ID).count().filter(F.col("count") >= min_user_items).select(S.USER_ID)
    return kept.join(users, S.USER_ID, "left_semi")


def percentiles(df: DataFrame, col: str) -> dict:
    qs = [0.5, 0.9, 0.99]
    values = df.approxQuantile(col, qs, 0.001) if df.head(1) else [0, 0, 0]
    out = {f"p{int(q * 100)}": float(v) for q, v in zip(qs, values)}
    out["max"] = float(df.agg(F.max(col)).first()[0] or 0)
    return out


def build_granularity(spark, plays_train, plays_holdout, granularity, day, lake_uri, params,
                      min_user_items, min_item_users, out_root):
    item_col = GRANULARITIES[granularity]
    pairs = aggregate(plays_train, item_col, day, params)
    positive = filter_support(pairs.filter(F.col(S.PLAYS) > 0), min_user_items, min_item_users).cache()

    users_index, new_users = extend_index(spark, lake_uri, "user", positive.select(F.col(S.USER_ID).alias(ID)))
    items_index, new_items = extend_index(spark, lake_uri, granularity, positive.select(F.col(S.ITEM_ID).alias(ID)))
    u = users_index.select(F.col(ID).alias(S.USER_ID), F.col(IDX).alias(S.USER_IDX))
    i = items_index.select(F.col(ID).alias(S.ITEM_ID), F.col(IDX).alias(S.ITEM_IDX))

    # Display names for people (the CLI, reports): the smallest name seen in the window, so
    # reruns agree; ids without a name keep a null.
    if granularity == "track":
        names = plays_train.unionByName(plays_holdout).groupBy(F.col(S.TRACK_ID).alias(S.ITEM_ID)).agg(
            F.min(S.TRACK_NAME).alias(S.ITEM_NAME), F.min(S.ARTIST_ID).alias(S.ARTIST_ID),
            F.min(S.ARTIST_NAME).alias(S.ARTIST_NAME))
    else:
        names = (plays_train.unionByName(plays_holdout).groupBy(F.col(S.ARTIST_ID).alias(S.ITEM_ID))
                 .agg(F.min(S.ARTIST_NAME).alias(S.ARTIST_NAME))
                 .withColumn(S.ITEM_NAME, F.col(S.ARTIST_NAME)).withColumn(S.ARTIST_ID, F.col(S.ITEM_ID)))

    # Files sized to the matrix (~2M pairs each), not to the session's shuffle partitions: those
    # depend on the lake's size and the machine, and a rerun must write the same files.
    n_parts = max(1, positive.count() // PAIRS_PER_FILE + 1)
    train = (
        positive.join(u, S.USER_ID).join(i, S.ITEM_ID)
        .select(S.USER_IDX, S.ITEM_IDX, S.USER_ID, S.ITEM_ID, S.PLAYS, S.SKIPS, "strength", S.CONFIDENCE)
        .repartition(n_parts, S.USER_IDX).sortWithinPartitions(S.USER_IDX, S.ITEM_IDX)
    )
    train.write.mode("overwrite").parquet(f"{out_root}/train")
    train = spark.read.parquet(f"{out_root}/train")

    # Held out: what users of the training matrix played next among its items (the only ones
    # the model has factors for) and had not played in training. Users and items are taken
    # from the matrix, not from the id index: the index also holds ids of other days and
    # granularities, and grows on a first run, so a rerun would evaluate on other pairs.
    held = (
        plays_holdout.filter(F.col(S.MS_PLAYED) >= params.skip_ms)
        .select(S.USER_ID, F.col(item_col).alias(S.ITEM_ID)).distinct()
        .join(train.select(S.USER_ID, S.USER_IDX).distinct(), S.USER_ID)
        .join(train.select(S.ITEM_ID, S.ITEM_IDX).distinct(), S.ITEM_ID)
        .join(train.select(S.USER_IDX, S.ITEM_IDX), [S.USER_IDX, S.ITEM_IDX], "left_anti")
        .select(S.USER_IDX, S.ITEM_IDX, S.USER_ID, S.ITEM_ID)
        .repartition(max(1, n_parts // 4), S.USER_IDX).sortWithinPartitions(S.USER_IDX, S.ITEM_IDX)
    )
    held.write.mode("overwrite").parquet(f"{out_root}/holdout")
    (i.join(names, S.ITEM_ID).join(train.select(S.ITEM_IDX).distinct(), S.ITEM_IDX, "left_semi")
     .select(S.ITEM_IDX, S.ITEM_ID, S.ITEM_NAME, S.ARTIST_ID, S.ARTIST_NAME)
     .repartition(1).sortWithinPartitions(S.ITEM_IDX)
     .write.mode("overwrite").parquet(f"{out_root}/items"))
    held = spark.read.parquet(f"{out_root}/holdout")

    per_user = train.groupBy(S.USER_IDX).agg(F.count("*").alias("items"), F.sum(S.PLAYS).alias(S.PLAYS))
    n_users = per_user.count()
    n_items = train.select(S.ITEM_IDX).distinct().count()
    nnz = train.count()
    stats = {
        "day": day.isoformat(),
        "granularity": granularity,
        "users": n_users,
        "items": n_items,
        "nnz": nnz,
        "density": (nnz / (n_users * n_items)) if n_users and n_items else 0.0,
        "plays": int(train.agg(F.sum(S.PLAYS)).first()[0] or 0),
        "skips": int(pairs.agg(F.sum(S.SKIPS)).first()[0] or 0),
        "plays_per_user": percentiles(per_user, S.PLAYS),
        "items_per_user": percentiles(per_user, "items"),
        "max_user_idx": int(train.agg(F.max(S.USER_IDX)).first()[0] or 0),
        "max_item_idx": int(train.agg(F.max(S.ITEM_IDX)).first()[0] or 0),
        "holdout_users": held.select(S.USER_IDX).distinct().count(),
        "holdout_pairs": held.count(),
    }
    positive.unpersist()
    # Only properties of the matrix: a rerun writes the same file.
    write_text(spark, f"{out_root}/stats.json", json.dumps(stats, indent=2, sort_keys=True))
    return stats, {"new_users": new_users, "new_items": new_items}


def run(spark: SparkSession, day: dt.date, lake_uri: str, params: ConfidenceParams, window: int = 90,
        holdout_days: int = 1, min_user_items: int = 2, min_item_users: int = 2,
        granularities=("track", "artist"), out_uri: str | None = None) -> dict:
    if holdout_days >= window:
        raise ValueError(f"holdout_days ({holdout_days}) must be smaller than the window ({window} days)")
    timer = PhaseTimer()
    days = window_days(day, window)
    train_days, held_days = days[: window - holdout_days], days[window - holdout_days:]
    present = present_days(spark, lake_uri, days)
    if not any(d in present for d in train_days):
        raise FileNotFoundError(
            f"no accepted plays in the lake for the training days {train_days[0]}..{train_days[-1]} "
            f"(present: {', '.join(map(str, present)) or 'none'}); ingest earlier days first "
            "(music-recs ingest --from-day ... --to-day ...)"
        )
    plays = read_plays(spark, lake_uri, present).cache()
    cutoff = train_days[-1].isoformat()
    plays_train = plays.filter(F.col(S.DT) <= cutoff)
    plays_holdout = plays.filter(F.col(S.DT) > cutoff)
    out_uri = (out_uri or f"{lake_uri.rstrip('/')}/matrix/dt={day.isoformat()}").rstrip("/")
    out, indexed = {}, {}
    for g in granularities:
        with timer.phase(f"matrix_{g}"):
            out[g], indexed[g] = build_granularity(
                spark, plays_train, plays_holdout, g, day, lake_uri, params, min_user_items, min_item_users,
                f"{out_uri}/granularity={g}",
            )
    plays.unpersist()
    return {
        "day": day.isoformat(),
        "window": {"first_day": days[0].isoformat(), "last_train_day": cutoff,
                   "holdout_days": [d.isoformat() for d in held_days],
                   "days_present": [d.isoformat() for d in present]},
        "params": params.__dict__,
        "min_user_items": min_user_items,
        "min_item_users": min_item_users,
        "stats": out,
        "ids_added": indexed,
        "seconds": timer.seconds,
    }


def main(argv=None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--day", required=True, type=dt.date.fromisoformat)
    p.add_argument("--lake", required=True)
    p.add_argument("--window-days", type=int, default=90)
    p.add_argument("--holdout-days", type=int, default=1)
    p.add_argument("--function", default="log")
    p.add_argument("--alpha", type=float, default=40.0)
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--half-life-days", type=float, default=0.0)
    p.add_argument("--skip-ms", type=int, default=30_000)
    p.add_argument("--min-user-items", type=int, default=2)
    p.add_argument("--min-item-users", type=int, default=2)
    p.add_argument("--granularity", choices=[*GRANULARITIES, "all"], default="all",
                   help="matrix to build (default: all); a daily run builds only the one it trains on: "
                        "each is a pass over the window's plays")
    p.add_argument("--out", help="where the matrices go (default: {lake}/matrix/dt=D)")
    p.add_argument("--result")
    a = p.parse_args(argv)
    params = ConfidenceParams(a.function, a.alpha, a.epsilon, a.half_life_days, a.skip_ms)
    spark = get_spark(f"music_recs.confidence.{a.day}")
    write_result(spark, a.result, run(spark, a.day, a.lake, params, a.window_days, a.holdout_days,
                                      a.min_user_items, a.min_item_users,
                                      tuple(GRANULARITIES) if a.granularity == "all" else (a.granularity,),
                                      a.out))


if __name__ == "__main__":
    main()
