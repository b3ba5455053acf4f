"""Evaluate a trained model on held-out listening and write its recommendations.

Ground truth: for each user, the items played in the held-out days that were not in the
user's training data (see ``spark_jobs.confidence``): the model is judged on what users
did next. Candidates exclude items the user already played in training.

Scoring is exact (every user against every item) and made on the executors: when the item
factors fit the broadcast budget (the rule training's CG strategy uses), they are broadcast and
each Python worker scores a batch of users with one matrix product per chunk and keeps the top
n (``spark_jobs.lib.top_n``), so the job makes n rows per user. It first scores the items of
largest factor norm and stops for a user whose n-th score no item left out can reach (the
Cauchy-Schwarz bound): the lists are those of scoring every item, at a fraction of the work. Over the budget, MLlib's blocked
``recommendForAllUsers`` makes candidates, with room for the played items to drop out (up to
``MAX_EXCLUDED`` more per user: users x (n + max played) rows, which grows with the square of
traffic).

Rules (``EvaluateSpec.max_per_artist``, the do-not-recommend list) are applied while each top-N
is built, to the model's, the popularity baseline's and the published model's alike, so the
metrics score exactly the lists that are published (``spark_jobs.lib.ranking.Rules``).

Metrics at k (``music_recs.metrics`` defines them and is the reference these Spark
versions are tested against): precision, recall, MAP and NDCG, averaged over evaluated
users (those with held-out items), plus catalogue coverage of the top-k lists and the
share of users evaluated. A most-popular baseline (again excluding played items) is
scored the same way in the same run.

Before anything is written, the output suites (``expectations/model_output_*.json``, GX on
Spark) check what users would get: everyone has a full top-N of unplayed items, the lists are
not the same hits for everyone, they did not all change (or all stay) since the published
model, and no factor exploded (``spark_jobs.lib.output_checks``). The verdict goes into the
result; the quality gate task refuses to publish on a failure.

Output under ``--out``: ``recommendations/`` (``user_id, rank, item_id, score`` and display
names, top-N per user) and ``similar_items/`` (``item_id, rank, similar_item_id, similarity``:
the most similar items by cosine similarity of item factors, the "related artists" use case).
"""

from __future__ import annotations

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.jobs import EvaluateResult, EvaluateSpec
from music_recs.metrics import METRICS
from music_recs.quality_gate import failure_line, paired_bootstrap
from music_recs.sizing import factor_exchange
from spark_jobs.lib import output_checks as O
from spark_jobs.lib.als_cg import als_model
from spark_jobs.lib.gx_suites import load_suite, preload, validate_frames
from spark_jobs.lib.ranking import (MAX_EXCLUDED, NO_RULES, Rules, load_rules, mean_metrics, model_recommendations,
                                    per_user_metrics, popularity_top_k, top_n_dot)
from spark_jobs.lib.session import PhaseTimer, job_main

def paired_lift(model_users: DataFrame, baseline_users: DataFrame, resamples: int, seed: int) -> dict:
    """Per metric, the paired bootstrap of the model's per-user scores against the baseline's
    (``music_recs.quality_gate.paired_bootstrap``): the same evaluated users, resampled together.
    One float per user and metric reaches the driver (8 MB per million users and metric)."""
    pairs = model_users.join(
        baseline_users.select(S.USER_IDX, *[F.col(m).alias(f"base_{m}") for m in METRICS]), S.USER_IDX
    ).orderBy(S.USER_IDX).toArrow()
    return {m: paired_bootstrap(pairs.column(m).to_numpy(), pairs.column(f"base_{m}").to_numpy(), resamples,
                                seed=seed) for m in METRICS}


def published_recommendations(spark: SparkSession, published_uri: str, train: DataFrame, users: DataFrame,
                              items: DataFrame, k: int, budget_mb: int, rules: Rules = NO_RULES) -> DataFrame:
    """The published model's top-k unplayed items for this matrix's users, on this matrix's ids.

    ``train``: the matrix's (user_idx, item_idx) pairs; ``users``: its (user_idx, user_id).
    Its factors carry their string ids: users and items are matched by those (a user or item
    it does not know gets no recommendation from it, and scores 0)."""
    root = published_uri.rstrip("/")
    users = (spark.read.parquet(f"{root}/user_factors").select(S.USER_ID, S.FEATURES)
             .join(users, S.USER_ID)
             .select(F.col(S.USER_IDX).alias("id"), S.FEATURES))
    item_factors = (spark.read.parquet(f"{root}/item_factors").select(S.ITEM_ID, S.FEATURES)
                    .join(items.select(S.ITEM_IDX, S.ITEM_ID), S.ITEM_ID)
                    .select(F.col(S.ITEM_IDX).alias("id"), S.FEATURES)).cache()
    first = item_factors.select(F.size(S.FEATURES).alias("n")).first()
    n_items = item_factors.count()
    if not n_items:  # no item in common: it recommends nothing here
        return spark.createDataFrame([], f"{S.USER_IDX} int, {S.ITEM_IDX} int, {S.SCORE} float, {S.RANK} int")
    rank = int(first["n"])
    model = als_model(spark, rank, users, item_factors)
    broadcast_items = factor_exchange(1, max(n_items, 1), rank, budget_mb)["item"] == "broadcast"
    return model_recommendations(spark, model, train, k, broadcast_items, rules)


def normalized(factors: DataFrame) -> DataFrame:
    """Unit-length factor vectors (a zero vector stays zero): dot products become cosines."""
    norm = F.sqrt(F.aggregate(S.FEATURES, F.lit(0.0), lambda acc, x: acc + x * x))
    safe = F.when(norm > 0, norm).otherwise(F.lit(1.0))
    return factors.select("id", F.transform(S.FEATURES, lambda x: x / safe).cast("array<float>").alias(S.FEATURES))


def similar_items(spark: SparkSession, item_factors: DataFrame, rank: int, n: int, broadcast: bool = True,
                  blocked: DataFrame | None = None) -> DataFrame:
    """Top-n most similar items per item by cosine similarity, computed on the executors.

    ``broadcast``: the unit item factors go to every Python worker and each item is scored
    against all of them (``top_n_dot``, itself excluded). Otherwise (too many items to
    broadcast) an ALSModel whose user and item factors are both the unit item factors scores
    them with MLlib's blocked matrix products and per-block top-k (``recommendForAllUsers``).
    Either way no item x item table of rows is ever materialized. ``blocked`` (item_idx): items
    of the do-not-recommend list, never given as a similar item (on the MLlib path they are
    dropped from its n + 1 candidates, so such an item's neighbours may be fewer).
    """
    unit = normalized(item_factors).cache()
    if broadcast:
        queries = unit.select(F.col("id").alias(S.ITEM_IDX), S.FEATURES, F.array(F.col("id")).alias("excluded"))
        return top_n_dot(spark, queries, unit, rank, n, S.ITEM_IDX, "other_idx", S.SIMILARITY, Rules(blocked=blocked))
    jmodel = spark._jvm.org.apache.spark.ml.recommendation.ALSModel("similar_items", rank, unit._jdf, unit._jdf)
    jmodel.setUserCol(S.ITEM_IDX)
    jmodel.setItemCol("other_idx")
    recs = DataFrame(jmodel.recommendForAllUsers(n + 1), spark)  # +1: every item is most similar to itself
    pairs = recs.select(S.ITEM_IDX, F.explode("recommendations").alias("r")).select(
        S.ITEM_IDX, F.col("r.other_idx").alias("other_idx"), F.col("r.rating").alias(S.SIMILARITY)
    ).filter(F.col("other_idx") != F.col(S.ITEM_IDX))
    if blocked is not None:
        pairs = pairs.join(F.broadcast(blocked.select(F.col(S.ITEM_IDX).alias("other_idx"))), "other_idx", "left_anti")
    w = Window.partitionBy(S.ITEM_IDX).orderBy(F.col(S.SIMILARITY).desc(), F.col("other_idx"))
    return pairs.withColumn(S.RANK, F.row_number().over(w)).filter(F.col(S.RANK) <= n)


def check_output(spark: SparkSession, spec: EvaluateSpec, recs: DataFrame, train: DataFrame, n_items: int,
                 model: ALSModel, published: DataFrame | None, possible: DataFrame | None = None) -> dict:
    """Run the output suites (``spark_jobs.lib.output_checks``) on this model; the verdict goes
    into the result, the quality gate task decides. ``possible``: ``output_checks.possible_per_user``."""
    compare = published is not None and spec.compare_churn
    users = O.users_frame(recs, train, n_items, spec.top_n, spec.k, published if compare else None,
                          possible).cache()
    factors = O.factors_frame(model.userFactors, model.itemFactors).cache()
    summary_df, summary = O.summary_frame(spark, recs, train, n_items, spec.top_n)
    suites = {}
    for name, file in O.SUITES.items():
        suite = load_suite(f"{spec.output_suite_dir.rstrip('/')}/{file}")
        suite["expectations"] = [e for e in suite["expectations"]
                                 if compare or not (e.get("meta") or {}).get("needs_published")]
        suites[name] = suite
    verdict = validate_frames([(suites[O.USERS], users), (suites[O.FACTORS], factors), (suites[O.SUMMARY], summary_df)],
                              {}, spec.docs_dir)
    if compare:
        row = users.agg(F.avg("overlap").alias("mean"), F.count("overlap").alias("n")).first()
        summary.update(churn_overlap=row["mean"], churn_users=row["n"])
    users.unpersist()
    factors.unpersist()
    return {**verdict, "summary": summary, "failed": [failure_line(c) for c in verdict["checks"] if not c["success"]]}


def run(spark: SparkSession, spec: EvaluateSpec) -> EvaluateResult:
    """Score ``spec.model_uri`` on the held-out pairs of ``spec.matrix_uri``; write its recommendations."""
    timer = PhaseTimer()
    k, top_n, similar_n = spec.k, spec.top_n, spec.similar_n
    matrix, out_uri = spec.matrix_uri.rstrip("/"), spec.out_uri.rstrip("/")
    matrix_train = spark.read.parquet(f"{matrix}/train")
    # Only the pairs are cached: the matrix's other columns (string ids, counts, confidence) take
    # several times their memory, and only the write needs the user ids (``users``).
    train = matrix_train.select(S.USER_IDX, S.ITEM_IDX).cache()
    users = matrix_train.select(S.USER_IDX, S.USER_ID).distinct().cache()
    holdout = spark.read.parquet(f"{matrix}/holdout")
    n_items = train.select(S.ITEM_IDX).distinct().count()
    n_users = users.count()
    max_played = train.groupBy(S.USER_IDX).count().agg(F.max("count")).first()[0] or 0
    want = max(k, top_n)
    extra = min(max_played, MAX_EXCLUDED)
    model = ALSModel.load(f"{spec.model_uri.rstrip('/')}/model")
    # Same rule as training's CG strategy: item factors within the budget are broadcast.
    broadcast_items = factor_exchange(1, n_items, model.rank, spec.broadcast_budget_mb)["item"] == "broadcast"
    items = spark.read.parquet(f"{matrix}/items")

    with timer.phase("recommend"):
        rules, applied = load_rules(spark, spec, users, items)
        recs = model_recommendations(spark, model, train, want, broadcast_items, rules).cache()
        n_recs = recs.count()
        # Without rules a user can get min(top_n, unplayed): the users suite works that out itself.
        possible = O.possible_per_user(train, rules, top_n).cache() if rules.active else None
        applied["users_short"] = 0 if possible is None else (  # fewer than top_n only because of the rules
            possible.join(train.groupBy(S.USER_IDX).agg(F.count("*").alias("played")), S.USER_IDX)
            .filter(F.col("possible") < O.possible_without_rules(top_n, n_items)).count())
    with timer.phase("metrics"):
        model_users = per_user_metrics(recs, holdout, k).cache()
        model_metrics = mean_metrics(model_users)
        coverage = recs.filter(F.col(S.RANK) <= k).select(S.ITEM_IDX).distinct().count() / max(n_items, 1)
        eval_users = holdout.select(S.USER_IDX).distinct()
        popular_users = per_user_metrics(popularity_top_k(train, eval_users, k, min(n_items, k + extra), rules),
                                         holdout, k).cache()  # read twice: its mean and the paired lift
        baseline = mean_metrics(popular_users)
        lift = paired_lift(model_users, popular_users, spec.bootstrap_resamples, spec.seed)
        published = over_published = published_recs = None
        if spec.published_uri:
            published_recs = published_recommendations(spark, spec.published_uri, train, users, items, k,
                                                       spec.broadcast_budget_mb, rules).cache()
            published_users = per_user_metrics(published_recs, holdout, k)
            published = mean_metrics(published_users)
            over_published = paired_lift(model_users, published_users, spec.bootstrap_resamples, spec.seed)
        model_users.unpersist()
        popular_users.unpersist()
    checks = None
    if spec.output_suite_dir:
        with timer.phase("output_checks"):
            checks = check_output(spark, spec, recs, train, n_items, model, published_recs, possible)
    if published_recs is not None:
        published_recs.unpersist()
    with timer.phase("write"):
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
            similar_items(spark, model.itemFactors, model.rank, min(similar_n, max(n_items - 1, 1)), broadcast_items,
                          rules.blocked)
            .join(names, S.ITEM_IDX).join(other, "other_idx")
            .select(S.ITEM_ID, S.RANK, S.SIMILAR_ITEM_ID, S.SIMILARITY)
            .repartition(max(1, n_items * similar_n // 2_000_000 + 1), S.ITEM_ID)
            .sortWithinPartitions(S.ITEM_ID, S.RANK)
        )
        similar.write.mode("overwrite").parquet(f"{out_uri}/similar_items")
    recs.unpersist()
    if possible is not None:
        possible.unpersist()
    train.unpersist()
    users.unpersist()
    return EvaluateResult(
        k=k, top_n=top_n,
        model={**model_metrics, "coverage": coverage,
               "share_users_evaluated": model_metrics["users_evaluated"] / max(n_users, 1)},
        baseline_popularity=baseline, recommendation_rows=n_recs, similar_items_per_item=similar_n,
        seconds=timer.seconds, lift=lift, published=published, lift_over_published=over_published,
        output_checks=checks, rules=applied,
    )


def main(argv=None) -> None:
    preload()  # GX's import overlaps the session's start-up
    job_main(EvaluateSpec, run, argv)


if __name__ == "__main__":
    main()
