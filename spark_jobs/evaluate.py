"""Evaluate a trained model on held-out listening and write its recommendations.

Ground truth: for each user, the items played in the held-out days that were not in the
user's training data (see ``spark_jobs.confidence``): the model is judged on what users
did next. Candidates exclude items the user already played in training.

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

import argparse
import math

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.metrics import METRICS
from spark_jobs.common import PhaseTimer, get_spark, setup_logging, write_result

# Recommend this many extra candidates per user to survive the exclusion of played items.
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


def popularity_candidates(train: DataFrame, users: DataFrame, n: int) -> DataFrame:
    """Every user gets the n most popular items (by distinct listeners), score = listeners."""
    popular = (
        train.groupBy(S.ITEM_IDX).agg(F.countDistinct(S.USER_IDX).alias(S.SCORE))
        .orderBy(F.col(S.SCORE).desc(), F.col(S.ITEM_IDX)).limit(n)
    )
    return users.crossJoin(F.broadcast(popular)).select(S.USER_IDX, S.ITEM_IDX, F.col(S.SCORE).cast("double"))


def normalized(factors: DataFrame) -> DataFrame:
    """Unit-length factor vectors (a zero vector stays zero): dot products become cosines."""
    norm = F.sqrt(F.aggregate(S.FEATURES, F.lit(0.0), lambda acc, x: acc + x * x))
    safe = F.when(norm > 0, norm).otherwise(F.lit(1.0))
    return factors.select("id", F.transform(S.FEATURES, lambda x: x / safe).cast("array<float>").alias(S.FEATURES))


def similar_items(spark: SparkSession, item_factors: DataFrame, rank: int, n: int) -> DataFrame:
    """Top-n most similar items per item by cosine similarity, computed on the executors.

    An ALSModel whose user and item factors are both the normalized item factors scores every
    item against every other with the same blocked matrix products (and per-block top-k) that
    MLlib's ``recommendForAllUsers`` uses, so no factor matrix is collected to the driver and
    no item x item table of rows is ever materialized.
    """
    unit = normalized(item_factors).cache()
    jmodel = spark._jvm.org.apache.spark.ml.recommendation.ALSModel("similar_items", rank, unit._jdf, unit._jdf)
    jmodel.setUserCol(S.ITEM_IDX)
    jmodel.setItemCol("other_idx")
    recs = DataFrame(jmodel.recommendForAllUsers(n + 1), spark)  # +1: every item is most similar to itself
    pairs = recs.select(S.ITEM_IDX, F.explode("recommendations").alias("r")).select(
        S.ITEM_IDX, F.col("r.other_idx").alias("other_idx"), F.col("r.rating").alias(S.SIMILARITY)
    ).filter(F.col("other_idx") != F.col(S.ITEM_IDX))
    w = Window.partitionBy(S.ITEM_IDX).orderBy(F.col(S.SIMILARITY).desc(), F.col("other_idx"))
    return pairs.withColumn(S.RANK, F.row_number().over(w)).filter(F.col(S.RANK) <= n)


def run(spark: SparkSession, model_uri: str, matrix_uri: str, out_uri: str, k: int = 10, top_n: int = 50,
        similar_n: int = 20) -> dict:
    timer = PhaseTimer()
    matrix = matrix_uri.rstrip("/")
    train = spark.read.parquet(f"{matrix}/train").cache()
    holdout = spark.read.parquet(f"{matrix}/holdout")
    n_items = train.select(S.ITEM_IDX).distinct().count()
    n_users = train.select(S.USER_IDX).distinct().count()
    max_played = train.groupBy(S.USER_IDX).count().agg(F.max("count")).first()[0] or 0
    want = max(k, top_n)
    extra = min(max_played, MAX_EXCLUDED)
    n_cand = min(n_items, want + extra)
    model = ALSModel.load(f"{model_uri.rstrip('/')}/model")

    with timer.phase("recommend"):
        recs = rank_excluding(model_candidates(model, n_cand), train, want).cache()
        n_recs = recs.count()
    with timer.phase("metrics"):
        model_metrics = ranking_metrics(recs, holdout, k)
        coverage = recs.filter(F.col(S.RANK) <= k).select(S.ITEM_IDX).distinct().count() / max(n_items, 1)
        eval_users = holdout.select(S.USER_IDX).distinct()
        pop = rank_excluding(popularity_candidates(train, eval_users, min(n_items, k + extra)), train, k)
        baseline = ranking_metrics(pop, holdout, k)
    with timer.phase("write"):
        users = train.select(S.USER_IDX, S.USER_ID).distinct()
        items = spark.read.parquet(f"{matrix}/items")
        out = (
            recs.filter(F.col(S.RANK) <= top_n).join(users, S.USER_IDX).join(items, S.ITEM_IDX)
            .select(S.USER_ID, S.RANK, S.ITEM_ID, S.SCORE, S.ITEM_NAME, S.ARTIST_NAME, S.USER_IDX, S.ITEM_IDX)
            .repartition(max(1, n_recs // 2_000_000 + 1), S.USER_ID).sortWithinPartitions(S.USER_ID, S.RANK)
        )
        out.write.mode("overwrite").parquet(f"{out_uri.rstrip('/')}/recommendations")
    with timer.phase("similar_items"):
        names = items.select(S.ITEM_IDX, S.ITEM_ID)
        other = items.select(F.col(S.ITEM_IDX).alias("other_idx"), F.col(S.ITEM_ID).alias(S.SIMILAR_ITEM_ID))
        similar = (
            similar_items(spark, model.itemFactors, model.rank, min(similar_n, max(n_items - 1, 1)))
            .join(names, S.ITEM_IDX).join(other, "other_idx")
            .select(S.ITEM_ID, S.RANK, S.SIMILAR_ITEM_ID, S.SIMILARITY)
            .repartition(max(1, n_items * similar_n // 2_000_000 + 1), S.ITEM_ID)
            .sortWithinPartitions(S.ITEM_ID, S.RANK)
        )
        similar.write.mode("overwrite").parquet(f"{out_uri.rstrip('/')}/similar_items")
    recs.unpersist()
    train.unpersist()
    return {
        "k": k,
        "top_n": top_n,
        "model": {**model_metrics, "coverage": coverage,
                  "share_users_evaluated": model_metrics["users_evaluated"] / max(n_users, 1)},
        "baseline_popularity": baseline,
        "recommendation_rows": n_recs,
        "similar_items_per_item": similar_n,
        "seconds": timer.seconds,
    }


def main(argv=None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="training output folder holding model/")
    p.add_argument("--matrix", required=True, help="matrix folder holding train/ and holdout/")
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--top-n", type=int, default=50)
    p.add_argument("--similar-n", type=int, default=20)
    p.add_argument("--result")
    a = p.parse_args(argv)
    spark = get_spark("music_recs.evaluate")
    write_result(spark, a.result, run(spark, a.model, a.matrix, a.out, a.k, a.top_n, a.similar_n))


if __name__ == "__main__":
    main()
