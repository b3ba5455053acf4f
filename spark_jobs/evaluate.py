"""Evaluate a trained model on held-out listening and write its recommendations.

Ground truth: for each user, the items played in the held-out days that were not in the
user's training data (see ``spark_jobs.confidence``): the model is judged on what users
did next. Candidates exclude items the user already played in training.

Scoring is exact (every user against every item) and made on the executors: when the item
factors fit the broadcast budget (the rule training's CG strategy uses), they are broadcast and
each Python worker scores a batch of users with one matrix product per chunk and keeps the top
n (``spark_jobs.lib.top_n``), so the job makes n rows per user. Over the budget, MLlib's blocked
``recommendForAllUsers`` makes candidates, with room for the played items to drop out (up to
``MAX_EXCLUDED`` more per user: users x (n + max played) rows, which grows with the square of
traffic).

Metrics at k (``music_recs.metrics`` defines them and is the reference these Spark
versions are tested against): precision, recall, MAP and NDCG, averaged over evaluated
users (those with held-out items), plus catalogue coverage of the top-k lists and the
share of users evaluated. A most-popular baseline (again excluding played items) is
scored the same way in the same run.

Output under ``--out``: ``recommendations/`` (``user_id, rank, item_id, score`` and display
names, top-N per user) and ``similar_items/`` (``item_id, rank, similar_item_id, similarity``:
the most similar items by cosine similarity of item factors, the "related artists" use case).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.jobs import EvaluateResult, EvaluateSpec
from music_recs.metrics import METRICS
from music_recs.sizing import factor_exchange
from spark_jobs.lib.session import PhaseTimer, job_main
from spark_jobs.lib.top_n import top_n_excluding

# Look this many places further down a ranking for a user's unplayed items (popularity, and
# MLlib's candidates when the item factors are too large to broadcast).
MAX_EXCLUDED = 1000


def ranking_metrics(recs: DataFrame, holdout: DataFrame, k: int) -> dict:
    """Mean metrics@k. ``recs``: (user_idx, item_idx, rank 1..), ``holdout``: (user_idx, item_idx)."""
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
    scored = (
        n_rel.join(per_user, S.USER_IDX, "left").fillna(0, ["hits", "ap_sum", "dcg"])
        .withColumn("ideal", F.least(F.col("n_rel"), F.lit(k)))
        .select(
            (F.col("hits") / k).alias("precision"),
            (F.col("hits") / F.col("n_rel")).alias("recall"),
            (F.col("ap_sum") / F.col("ideal")).alias("map"),
            (F.col("dcg") / F.element_at(idcg_table, F.col("ideal").cast("int"))).alias("ndcg"),
        )
    )
    row = scored.agg(*[F.avg(m).alias(m) for m in METRICS], F.count("*").alias("users")).first()
    return {**{m: float(row[m] or 0.0) for m in METRICS}, "users_evaluated": int(row["users"])}


def rank_excluding(candidates: DataFrame, train: DataFrame, n: int) -> DataFrame:
    """Top-n per user of (user_idx, item_idx, score), played training items removed."""
    kept = candidates.join(train.select(S.USER_IDX, S.ITEM_IDX), [S.USER_IDX, S.ITEM_IDX], "left_anti")
    w = Window.partitionBy(S.USER_IDX).orderBy(F.col(S.SCORE).desc(), F.col(S.ITEM_IDX))
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
              query_col: str, target_col: str, score_col: str) -> DataFrame:
    """Each query's n best targets by dot product, its ``excluded`` target ids left out.

    ``queries``: (query_col, features, excluded array<int>); ``targets``: (id, features), small
    enough to broadcast (the caller checks the budget). Scoring runs in the Python workers,
    one batch of queries at a time (``spark_jobs.lib.top_n``), so only n rows per query are made.
    """
    ids, matrix = _factor_matrix(targets, rank)
    shared = spark.sparkContext.broadcast((ids, matrix))
    out = pa.schema([(query_col, pa.int32()), (target_col, pa.int32()), (score_col, pa.float32()),
                     (S.RANK, pa.int32())])

    def score(batches):
        target_ids, target_matrix = shared.value
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
            for rows, cols, scores, ranks in top_n_excluding(vectors, excluded, target_matrix, n):
                yield pa.RecordBatch.from_arrays(
                    [pa.array(query_ids[rows].astype(np.int32)), pa.array(target_ids[cols]),
                     pa.array(scores), pa.array(ranks.astype(np.int32))], schema=out)

    ddl = f"{query_col} int, {target_col} int, {score_col} float, {S.RANK} int"
    return queries.select(query_col, S.FEATURES, "excluded").mapInArrow(score, ddl)


def recommend(spark: SparkSession, model: ALSModel, train: DataFrame, n: int) -> DataFrame:
    """Top-n unplayed items per user: (user_idx, item_idx, score, rank), item factors broadcast."""
    played = train.groupBy(S.USER_IDX).agg(F.collect_list(S.ITEM_IDX).alias("excluded"))
    users = model.userFactors.withColumnRenamed("id", S.USER_IDX).join(played, S.USER_IDX)
    return top_n_dot(spark, users, model.itemFactors, model.rank, n, S.USER_IDX, S.ITEM_IDX, S.SCORE)


def popularity_top_k(train: DataFrame, users: DataFrame, k: int, depth: int) -> DataFrame:
    """Every user's k most popular unplayed items (by distinct listeners; ties: smaller item_idx).

    Looks at most ``depth`` items down the popularity list. Each user gets only the k + (number of
    those items it played) first places of the list, never a cross join of users with the whole
    list: the baseline's cost grows with users x k, not users x depth.
    """
    w = Window.orderBy(F.col(S.SCORE).desc(), F.col(S.ITEM_IDX))
    popular = (
        train.groupBy(S.ITEM_IDX).agg(F.countDistinct(S.USER_IDX).cast("double").alias(S.SCORE))
        .orderBy(F.col(S.SCORE).desc(), F.col(S.ITEM_IDX)).limit(depth)
        .withColumn("pop_rank", F.row_number().over(w))
    )
    played = (train.select(S.USER_IDX, S.ITEM_IDX).join(F.broadcast(popular), S.ITEM_IDX)
              .groupBy(S.USER_IDX).agg(F.collect_set("pop_rank").alias("played_ranks")))
    ranks = F.coalesce(F.col("played_ranks"), F.array().cast("array<int>"))
    places = F.sequence(F.lit(1), F.least(F.lit(depth), F.lit(k) + F.size(ranks)))
    unplayed = F.slice(F.filter(places, lambda r: ~F.array_contains(ranks, r)), 1, k)
    return (
        users.join(played, S.USER_IDX, "left")
        .select(S.USER_IDX, F.posexplode(unplayed).alias("pos", "pop_rank"))
        .join(F.broadcast(popular), "pop_rank")
        .select(S.USER_IDX, S.ITEM_IDX, S.SCORE, (F.col("pos") + 1).alias(S.RANK))
    )


def normalized(factors: DataFrame) -> DataFrame:
    """Unit-length factor vectors (a zero vector stays zero): dot products become cosines."""
    norm = F.sqrt(F.aggregate(S.FEATURES, F.lit(0.0), lambda acc, x: acc + x * x))
    safe = F.when(norm > 0, norm).otherwise(F.lit(1.0))
    return factors.select("id", F.transform(S.FEATURES, lambda x: x / safe).cast("array<float>").alias(S.FEATURES))


def similar_items(spark: SparkSession, item_factors: DataFrame, rank: int, n: int, broadcast: bool = True) -> DataFrame:
    """Top-n most similar items per item by cosine similarity, computed on the executors.

    ``broadcast``: the unit item factors go to every Python worker and each item is scored
    against all of them (``top_n_dot``, itself excluded). Otherwise (too many items to
    broadcast) an ALSModel whose user and item factors are both the unit item factors scores
    them with MLlib's blocked matrix products and per-block top-k (``recommendForAllUsers``).
    Either way no item x item table of rows is ever materialized.
    """
    unit = normalized(item_factors).cache()
    if broadcast:
        queries = unit.select(F.col("id").alias(S.ITEM_IDX), S.FEATURES, F.array(F.col("id")).alias("excluded"))
        return top_n_dot(spark, queries, unit, rank, n, S.ITEM_IDX, "other_idx", S.SIMILARITY)
    jmodel = spark._jvm.org.apache.spark.ml.recommendation.ALSModel("similar_items", rank, unit._jdf, unit._jdf)
    jmodel.setUserCol(S.ITEM_IDX)
    jmodel.setItemCol("other_idx")
    recs = DataFrame(jmodel.recommendForAllUsers(n + 1), spark)  # +1: every item is most similar to itself
    pairs = recs.select(S.ITEM_IDX, F.explode("recommendations").alias("r")).select(
        S.ITEM_IDX, F.col("r.other_idx").alias("other_idx"), F.col("r.rating").alias(S.SIMILARITY)
    ).filter(F.col("other_idx") != F.col(S.ITEM_IDX))
    w = Window.partitionBy(S.ITEM_IDX).orderBy(F.col(S.SIMILARITY).desc(), F.col("other_idx"))
    return pairs.withColumn(S.RANK, F.row_number().over(w)).filter(F.col(S.RANK) <= n)


def run(spark: SparkSession, spec: EvaluateSpec) -> EvaluateResult:
    """Score ``spec.model_uri`` on the held-out pairs of ``spec.matrix_uri``; write its recommendations."""
    timer = PhaseTimer()
    k, top_n, similar_n = spec.k, spec.top_n, spec.similar_n
    matrix, out_uri = spec.matrix_uri.rstrip("/"), spec.out_uri.rstrip("/")
    train = spark.read.parquet(f"{matrix}/train").cache()
    holdout = spark.read.parquet(f"{matrix}/holdout")
    n_items = train.select(S.ITEM_IDX).distinct().count()
    n_users = train.select(S.USER_IDX).distinct().count()
    max_played = train.groupBy(S.USER_IDX).count().agg(F.max("count")).first()[0] or 0
    want = max(k, top_n)
    extra = min(max_played, MAX_EXCLUDED)
    model = ALSModel.load(f"{spec.model_uri.rstrip('/')}/model")
    # Same rule as training's CG strategy: item factors within the budget are broadcast.
    broadcast_items = factor_exchange(1, n_items, model.rank, spec.broadcast_budget_mb)["item"] == "broadcast"

    with timer.phase("recommend"):
        if broadcast_items:
            recs = recommend(spark, model, train, want)
        else:  # MLlib's blocked top-k over all users, with room for the played items to drop out
            recs = rank_excluding(model_candidates(model, min(n_items, want + extra)), train, want)
        recs = recs.cache()
        n_recs = recs.count()
    with timer.phase("metrics"):
        model_metrics = ranking_metrics(recs, holdout, k)
        coverage = recs.filter(F.col(S.RANK) <= k).select(S.ITEM_IDX).distinct().count() / max(n_items, 1)
        eval_users = holdout.select(S.USER_IDX).distinct()
        baseline = ranking_metrics(popularity_top_k(train, eval_users, k, min(n_items, k + extra)), holdout, k)
    with timer.phase("write"):
        users = train.select(S.USER_IDX, S.USER_ID).distinct()
        items = spark.read.parquet(f"{matrix}/items")
        out = (
            recs.filter(F.col(S.RANK) <= top_n).join(users, S.USER_IDX).join(items, S.ITEM_IDX)
            .select(S.USER_ID, S.RANK, S.ITEM_ID, S.SCORE, S.ITEM_NAME, S.ARTIST_NAME, S.USER_IDX, S.ITEM_IDX)
            .repartition(max(1, n_recs // 2_000_000 + 1), S.USER_ID).sortWithinPartitions(S.USER_ID, S.RANK)
        )
        out.write.mode("overwrite").parquet(f"{out_uri}/recommendations")
    with timer.phase("similar_items"):
        names = items.select(S.ITEM_IDX, S.ITEM_ID)
        other = items.select(F.col(S.ITEM_IDX).alias("other_idx"), F.col(S.ITEM_ID).alias(S.SIMILAR_ITEM_ID))
        similar = (
            similar_items(spark, model.itemFactors, model.rank, min(similar_n, max(n_items - 1, 1)), broadcast_items)
            .join(names, S.ITEM_IDX).join(other, "other_idx")
            .select(S.ITEM_ID, S.RANK, S.SIMILAR_ITEM_ID, S.SIMILARITY)
            .repartition(max(1, n_items * similar_n // 2_000_000 + 1), S.ITEM_ID)
            .sortWithinPartitions(S.ITEM_ID, S.RANK)
        )
        similar.write.mode("overwrite").parquet(f"{out_uri}/similar_items")
    recs.unpersist()
    train.unpersist()
    return EvaluateResult(
        k=k, top_n=top_n,
        model={**model_metrics, "coverage": coverage,
               "share_users_evaluated": model_metrics["users_evaluated"] / max(n_users, 1)},
        baseline_popularity=baseline, recommendation_rows=n_recs, similar_items_per_item=similar_n,
        seconds=timer.seconds,
    )


def main(argv=None) -> None:
    job_main(EvaluateSpec, run, argv)


if __name__ == "__main__":
    main()
