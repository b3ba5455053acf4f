"""Ranking on Spark: top-n unplayed items per user from factors, the popularity baseline, and
the ranking metrics at k (``music_recs.metrics`` is the pure-Python reference they are tested
against). Shared by evaluation (the held-out days) and tuning (the validation days).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.metrics import METRICS
from spark_jobs.lib.top_n import top_n_excluding

# Look this many places further down a ranking for a user's unplayed items (popularity, and
# MLlib's candidates when the item factors are too large to broadcast).
MAX_EXCLUDED = 1000


@dataclass
class Rules:
    """What every top-N obeys, on the matrix's ids (``EvaluateSpec.max_per_artist`` and the
    do-not-recommend list).

    cap: at most this many items of one group (artist) per list, filled from further down; 0 = no cap.
    groups: (item_idx, group) rows: the item's artist as a number (0..); an item without one has
    a group of its own (a distinct negative number), so it is never capped.
    blocked: (item_idx) rows never recommended to anyone; user_blocked: (user_idx, item_idx) pairs.
    """

    cap: int = 0
    groups: DataFrame | None = None
    blocked: DataFrame | None = None
    user_blocked: DataFrame | None = None

    @property
    def active(self) -> bool:
        return bool(self.cap) or self.blocked is not None or self.user_blocked is not None

    def excluded_pairs(self, train: DataFrame) -> DataFrame:
        """(user_idx, item_idx) a user must not get: what they played, and their blocked pairs."""
        played = train.select(S.USER_IDX, S.ITEM_IDX)
        return played if self.user_blocked is None else played.unionByName(
            self.user_blocked.select(S.USER_IDX, S.ITEM_IDX)).distinct()

    def target_arrays(self, ids: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(blocked mask, group per target; -1 = no group) for targets ``ids`` (sorted), for ``top_n``."""
        blocked = groups = None
        if self.blocked is not None:
            listed = self.blocked.select(S.ITEM_IDX).toArrow().column(S.ITEM_IDX).to_numpy()
            blocked = np.isin(ids, listed)
        if self.cap and self.groups is not None:
            table = self.groups.select(S.ITEM_IDX, "group").toArrow()
            item, group = (table.column(c).to_numpy(zero_copy_only=False) for c in (S.ITEM_IDX, "group"))
            groups = np.full(len(ids), -1, np.int64)
            if len(item):
                order = np.argsort(item)
                item, group = item[order], group[order]
                pos = np.minimum(np.searchsorted(item, ids), len(item) - 1)
                known = (item[pos] == ids) & (group[pos] >= 0)
                groups[known] = group[pos][known]
        return blocked, groups


    def unpersist(self) -> None:
        for frame in (self.groups, self.blocked, self.user_blocked):
            if frame is not None:
                frame.unpersist()


NO_RULES = Rules()


def load_rules(spark: SparkSession, spec, train: DataFrame, items: DataFrame) -> tuple[Rules, dict]:
    """The spec's rules on this matrix's ids, and what of them applies here: the artist of each
    item as a number (``Rules.groups``), the listed items and pairs this matrix has.

    ``spec``: any spec with ``max_per_artist`` and ``do_not_recommend_path`` (``EvaluateSpec``,
    ``TuneSpec``); ``train``: (user_idx, user_id) of the matrix's users; ``items``: the matrix's
    ``items/`` (item_idx, item_id, artist_id)."""
    record: dict = {"max_per_artist": spec.max_per_artist, "do_not_recommend": None}
    groups = blocked = user_blocked = None
    if spec.max_per_artist:
        S.require_columns(items.columns, (S.ITEM_IDX, S.ARTIST_ID), "the matrix's items")
        # An item without an artist is a group of its own (a negative number): never capped.
        number = F.dense_rank().over(Window.orderBy(S.ARTIST_ID)) - 1
        alone = F.lit(-2) - F.col(S.ITEM_IDX)
        groups = (items.select(S.ITEM_IDX, S.ARTIST_ID)
                  .select(S.ITEM_IDX, F.when(F.col(S.ARTIST_ID).isNull(), alone).otherwise(number).alias("group"))
                  .cache())
    if spec.do_not_recommend_path:
        listed = spark.read.parquet(spec.do_not_recommend_path)
        S.require_columns(listed.columns, (S.USER_ID, S.ITEM_ID), f"the do-not-recommend list {spec.do_not_recommend_path}")
        ids = items.select(S.ITEM_IDX, S.ITEM_ID)
        blocked = listed.filter(F.col(S.USER_ID).isNull()).join(ids, S.ITEM_ID).select(S.ITEM_IDX).distinct().cache()
        users = train.select(S.USER_IDX, S.USER_ID).distinct()
        user_blocked = (listed.filter(F.col(S.USER_ID).isNotNull()).join(ids, S.ITEM_ID).join(users, S.USER_ID)
                        .select(S.USER_IDX, S.ITEM_IDX).distinct().cache())
        record["do_not_recommend"] = {"items_in_matrix": blocked.count(), "pairs_in_matrix": user_blocked.count()}
    return Rules(spec.max_per_artist, groups, blocked, user_blocked), record


def per_user_metrics(recs: DataFrame, holdout: DataFrame, k: int) -> DataFrame:
    """(user_idx, precision, recall, map, ndcg) at k of every user with held-out items (0 without recs).

    ``recs``: (user_idx, item_idx, rank 1..), ``holdout``: (user_idx, item_idx)."""
    truth = holdout.select(S.USER_IDX, S.ITEM_IDX).distinct()
    n_rel = truth.groupBy(S.USER_IDX).agg(F.count("*").alias("n_rel"))
    top = recs.filter(F.col(S.RANK) <= k).select(S.USER_IDX, S.ITEM_IDX, S.RANK)
    marked = top.join(truth.withColumn("rel", F.lit(1)), [S.USER_IDX, S.ITEM_IDX], "left").fillna(0, ["rel"])
    w = Window.partitionBy(S.USER_IDX).orderBy(S.RANK).rowsBetween(Window.unboundedPreceding, 0)
    marked = marked.withColumn("cum_hits", F.sum("rel").over(w))
    per_user = marked.groupBy(S.USER_IDX).agg(
        F.sum("rel").alias("hits"),
        F.sum(F.col("rel") * F.col("cum_hits") / F.col(S.RANK)).alias("ap_sum"),
        F.sum(F.col("rel") / F.log2(F.col(S.RANK) + 1)).alias("dcg"),
    )
    idcg_table = F.array(*[F.lit(sum(1 / math.log2(i + 1) for i in range(1, n + 1))) for n in range(1, k + 1)])
    return (
        n_rel.join(per_user, S.USER_IDX, "left").fillna(0, ["hits", "ap_sum", "dcg"])
        .withColumn("ideal", F.least(F.col("n_rel"), F.lit(k)))
        .select(
            S.USER_IDX,
            (F.col("hits") / k).alias("precision"),
            (F.col("hits") / F.col("n_rel")).alias("recall"),
            (F.col("ap_sum") / F.col("ideal")).alias("map"),
            (F.col("dcg") / F.element_at(idcg_table, F.col("ideal").cast("int"))).alias("ndcg"),
        )
    )


def mean_metrics(per_user: DataFrame) -> dict:
    """Averages of ``per_user_metrics`` and the number of users they average over."""
    row = per_user.agg(*[F.avg(m).alias(m) for m in METRICS], F.count("*").alias("users")).first()
    return {**{m: float(row[m] or 0.0) for m in METRICS}, "users_evaluated": int(row["users"])}


def ranking_metrics(recs: DataFrame, holdout: DataFrame, k: int) -> dict:
    """Mean metrics@k. ``recs``: (user_idx, item_idx, rank 1..), ``holdout``: (user_idx, item_idx)."""
    return mean_metrics(per_user_metrics(recs, holdout, k))


def rank_excluding(candidates: DataFrame, train: DataFrame, n: int, rules: Rules = NO_RULES) -> DataFrame:
    """Top-n per user of (user_idx, item_idx, score), played training items removed and ``rules`` obeyed."""
    kept = candidates.join(rules.excluded_pairs(train), [S.USER_IDX, S.ITEM_IDX], "left_anti")
    if rules.blocked is not None:
        kept = kept.join(F.broadcast(rules.blocked.select(S.ITEM_IDX)), S.ITEM_IDX, "left_anti")
    order = (F.col(S.SCORE).desc(), F.col(S.ITEM_IDX))
    if rules.cap and rules.groups is not None:
        kept = kept.join(rules.groups.select(S.ITEM_IDX, "group"), S.ITEM_IDX)
        in_group = Window.partitionBy(S.USER_IDX, "group").orderBy(*order)
        kept = kept.withColumn("in_group", F.row_number().over(in_group)).filter(F.col("in_group") <= rules.cap)
        kept = kept.drop("in_group", "group")
    w = Window.partitionBy(S.USER_IDX).orderBy(*order)
    return kept.withColumn(S.RANK, F.row_number().over(w)).filter(F.col(S.RANK) <= n)


def model_candidates(model: ALSModel, n: int) -> DataFrame:
    recs = model.recommendForAllUsers(n)
    return recs.select(S.USER_IDX, F.posexplode("recommendations").alias("pos", "rec")).select(
        S.USER_IDX, F.col(f"rec.{S.ITEM_IDX}").alias(S.ITEM_IDX), F.col("rec.rating").alias(S.SCORE)
    )


def _factor_matrix(factors: DataFrame, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted ascending, float32 rows in that order) of a factor DataFrame, through Arrow."""
    table = factors.select("id", S.FEATURES).orderBy("id").toArrow()
    ids = table.column("id").to_numpy().astype(np.int32)
    values = table.column(S.FEATURES).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return ids, values.astype(np.float32).reshape(len(ids), rank)


def top_n_dot(spark: SparkSession, queries: DataFrame, targets: DataFrame, rank: int, n: int,
              query_col: str, target_col: str, score_col: str, rules: Rules = NO_RULES) -> DataFrame:
    """Each query's n best targets by dot product, its ``excluded`` target ids left out.

    ``queries``: (query_col, features, excluded array<int>); ``targets``: (id, features), small
    enough to broadcast (the caller checks the budget). Scoring runs in the Python workers,
    one batch of queries at a time (``spark_jobs.lib.top_n``), so only n rows per query are made.
    ``rules``: blocked targets and the cap per group (its per-user pairs are the caller's to
    put into ``excluded``).
    """
    ids, matrix = _factor_matrix(targets, rank)
    blocked, groups = rules.target_arrays(ids)
    shared = spark.sparkContext.broadcast((ids, matrix, blocked, groups))
    cap = rules.cap if groups is not None else 0
    out = pa.schema([(query_col, pa.int32()), (target_col, pa.int32()), (score_col, pa.float32()),
                     (S.RANK, pa.int32())])

    def score(batches):
        target_ids, target_matrix, blocked, groups = shared.value
        for batch in batches:
            features = batch.column(S.FEATURES).flatten().to_numpy(zero_copy_only=False)
            vectors = features.astype(np.float32).reshape(batch.num_rows, rank)
            excluded_col = batch.column("excluded")
            offsets = excluded_col.offsets.to_numpy()
            wanted = excluded_col.flatten().to_numpy(zero_copy_only=False)
            positions = np.minimum(np.searchsorted(target_ids, wanted), len(target_ids) - 1)
            # An id without factors excludes nothing (rather than its neighbour in the sorted ids).
            positions = np.where(target_ids[positions] == wanted, positions, -1)
            excluded = [e[e >= 0] for e in np.split(positions, offsets[1:-1] - offsets[0])] if batch.num_rows else []
            query_ids = batch.column(query_col).to_numpy(zero_copy_only=False)
            for rows, cols, scores, ranks in top_n_excluding(vectors, excluded, target_matrix, n, blocked=blocked,
                                                             groups=groups, cap=cap):
                yield pa.RecordBatch.from_arrays(
                    [pa.array(query_ids[rows].astype(np.int32)), pa.array(target_ids[cols]),
                     pa.array(scores), pa.array(ranks.astype(np.int32))], schema=out)

    ddl = f"{query_col} int, {target_col} int, {score_col} float, {S.RANK} int"
    return queries.select(query_col, S.FEATURES, "excluded").mapInArrow(score, ddl)


def recommend(spark: SparkSession, model: ALSModel, train: DataFrame, n: int, rules: Rules = NO_RULES) -> DataFrame:
    """Top-n unplayed items per user: (user_idx, item_idx, score, rank), item factors broadcast."""
    played = rules.excluded_pairs(train).groupBy(S.USER_IDX).agg(F.collect_list(S.ITEM_IDX).alias("excluded"))
    users = model.userFactors.withColumnRenamed("id", S.USER_IDX).join(played, S.USER_IDX)
    return top_n_dot(spark, users, model.itemFactors, model.rank, n, S.USER_IDX, S.ITEM_IDX, S.SCORE, rules)


def model_recommendations(spark: SparkSession, model: ALSModel, train: DataFrame, n: int,
                          broadcast_items: bool, rules: Rules = NO_RULES) -> DataFrame:
    """Top-n unplayed items per user: (user_idx, item_idx, score, rank).

    ``broadcast_items``: the item factors fit the broadcast budget, so each Python worker scores
    its users against all of them and keeps n rows per user (``recommend``). Otherwise MLlib's
    blocked ``recommendForAllUsers`` makes candidates with room for played items to drop out
    (up to ``MAX_EXCLUDED`` more per user). ``rules`` are obeyed either way; on the MLlib path
    they are applied to those candidates (with room for every blocked item and 4n places for
    the cap), so a user whose candidates are crowded by a few artists may get fewer than n where
    the exact path would have gone deeper (the output suite's ``missing`` check then says so)."""
    if broadcast_items:
        return recommend(spark, model, train, n, rules)
    max_played = rules.excluded_pairs(train).groupBy(S.USER_IDX).count().agg(F.max("count")).first()[0] or 0
    n_items = model.itemFactors.count()
    # Room for the rules on top of the played items: every blocked item, and 4n places for the cap.
    extra = (rules.blocked.count() if rules.blocked is not None else 0) + (4 * n if rules.cap else 0)
    depth = min(n_items, n + min(max_played, MAX_EXCLUDED) + extra)
    return rank_excluding(model_candidates(model, depth), train, n, rules)


def popularity_top_k(train: DataFrame, users: DataFrame, k: int, depth: int, rules: Rules = NO_RULES) -> DataFrame:
    """Every user's k most popular unplayed items (by distinct listeners; ties: smaller item_idx).

    Looks at most ``depth`` items down the popularity list. Each user gets only the k + (number of
    those items it played) first places of the list, never a cross join of users with the whole
    list: the baseline's cost grows with users x k, not users x depth.

    ``rules``: blocked items leave the list and a user's blocked pairs count as played. The cap
    is applied per user, as the model's lists get it: the list holds each artist's ``cap`` most
    popular items, and a user who played (or may not get) some of an artist's items is given the
    artist's next ones instead ("promoted": only artists the user touched, so at most as many
    rows as the user's exclusions).
    """
    w = Window.orderBy(F.col(S.SCORE).desc(), F.col(S.ITEM_IDX))
    order = (F.col(S.SCORE).desc(), F.col(S.ITEM_IDX))
    counts = train.groupBy(S.ITEM_IDX).agg(F.countDistinct(S.USER_IDX).cast("double").alias(S.SCORE))
    if rules.blocked is not None:
        counts = counts.join(F.broadcast(rules.blocked.select(S.ITEM_IDX)), S.ITEM_IDX, "left_anti")
    excluded = rules.excluded_pairs(train)
    capped = bool(rules.cap and rules.groups is not None)
    if capped:  # in_group: the item's place among its artist's items, by popularity
        in_group = Window.partitionBy("group").orderBy(*order)
        ranked = (counts.join(rules.groups.select(S.ITEM_IDX, "group"), S.ITEM_IDX)
                  .withColumn("in_group", F.row_number().over(in_group))).cache()
        counts = ranked.filter(F.col("in_group") <= rules.cap).select(S.ITEM_IDX, S.SCORE)
    popular = (
        counts.orderBy(*order).limit(depth)
        .withColumn("pop_rank", F.row_number().over(w))
    )
    played = (excluded.join(F.broadcast(popular), S.ITEM_IDX)
              .groupBy(S.USER_IDX).agg(F.collect_set("pop_rank").alias("played_ranks")))
    ranks = F.coalesce(F.col("played_ranks"), F.array().cast("array<int>"))
    places = F.sequence(F.lit(1), F.least(F.lit(depth), F.lit(k) + F.size(ranks)))
    unplayed = F.slice(F.filter(places, lambda r: ~F.array_contains(ranks, r)), 1, k)
    from_list = (
        users.join(played, S.USER_IDX, "left")
        .select(S.USER_IDX, F.posexplode(unplayed).alias("pos", "pop_rank"))
        .join(F.broadcast(popular), "pop_rank")
        .select(S.USER_IDX, S.ITEM_IDX, S.SCORE, (F.col("pos") + 1).alias(S.RANK))
    )
    if not capped:
        return from_list
    # An item past its artist's cap is the user's when its place among the artist's items the user
    # may still get is within the cap: in_group - (excluded items of that artist ranked above it).
    gone = (excluded.join(users, S.USER_IDX, "left_semi").join(ranked, S.ITEM_IDX)
            .select(S.USER_IDX, "group", F.col("in_group").alias("gone_at")))
    touched = gone.groupBy(S.USER_IDX, "group").agg(F.count("*").alias("gone"))
    promoted = (
        touched.join(ranked.filter(F.col("in_group") > rules.cap), "group")
        .filter(F.col("in_group") <= rules.cap + F.col("gone"))
        .join(excluded, [S.USER_IDX, S.ITEM_IDX], "left_anti")
        .join(gone, [S.USER_IDX, "group"], "left")
        .groupBy(S.USER_IDX, S.ITEM_IDX, S.SCORE, "in_group")
        .agg(F.count(F.when(F.col("gone_at") < F.col("in_group"), 1)).alias("above"))
        .filter(F.col("in_group") - F.col("above") <= rules.cap)
        .select(S.USER_IDX, S.ITEM_IDX, S.SCORE)
    )
    both = from_list.drop(S.RANK).unionByName(promoted)
    return (both.withColumn(S.RANK, F.row_number().over(Window.partitionBy(S.USER_IDX).orderBy(*order)))
            .filter(F.col(S.RANK) <= k))


