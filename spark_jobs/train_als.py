"""Train implicit ALS (Hu-Koren-Volinsky) on one confidence matrix.

Reads ``{matrix}/train`` (``user_idx, item_idx, strength``), fits it with one of two
strategies behind one ``fit(spark, ratings, spec) -> Fitted`` and writes to ``spec.out_uri``:

* ``cg`` (default): ``spark_jobs.lib.als_cg``, a few conjugate-gradient steps per row on
  cached CSR blocks, same objective, several times faster at ranks of 32 and more;
* ``mllib`` (the reference): ``pyspark.ml.recommendation.ALS(implicitPrefs=True)``, an exact
  Cholesky solve per row.

Run: ``spark-submit spark_jobs/train_als.py --spec SPEC.json --result FILE`` (``music_recs.jobs.TrainSpec``).

Outputs:
``user_factors/`` and ``item_factors/`` (``id int, features array<float>``), the fitted
``model/`` (for batch scoring), and the JSON result (parameters, timings, data stats,
the Spark configuration it really ran with).

Design choices:

* A checkpoint directory is always set: without one Spark silently ignores
  ``checkpointInterval`` and the lineage of 10+ iterations ends in StackOverflowError.
* The ratings are cached once (MEMORY_AND_DISK) and unpersisted when the fit is done;
  MLlib caches its own in/out blocks between iterations.
* User and item block counts come from the caller (the sizing model); by default one
  block per core, Spark's own default (``spark.default.parallelism``).
* Factors with NaN or infinity fail the job: they would publish garbage recommendations.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.jobs import TrainResult, TrainSpec
from music_recs.sizing import factor_exchange
from spark_jobs.lib import als_cg
from spark_jobs.lib.session import PhaseTimer, job_main

log = logging.getLogger("music_recs.job")


class NonFiniteFactorsError(RuntimeError):
    """ALS diverged: some factor is NaN or infinite."""


def count_non_finite(factors: DataFrame) -> int:
    bad = F.exists(S.FEATURES, lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
    return factors.filter(bad).count()


def check_finite(user_factors: DataFrame, item_factors: DataFrame) -> None:
    bad_users, bad_items = count_non_finite(user_factors), count_non_finite(item_factors)
    if bad_users or bad_items:
        raise NonFiniteFactorsError(
            f"ALS produced non-finite factors for {bad_users} users and {bad_items} items; "
            "lower alpha or raise regularization (nothing was written)"
        )


@dataclass
class Fitted:
    """What every strategy's fit returns.

    user_factors, item_factors: ``(id int, features array<float>)``, materialized.
    model: an ``ALSModel`` over those factors (for batch scoring).
    details: the strategy's own figures (``TrainResult`` fields: cg_steps, factor_exchange, loss,
    iteration_seconds, profile); release: frees what the fit keeps cached, once it is written.
    """

    user_factors: DataFrame
    item_factors: DataFrame
    model: ALSModel
    details: dict = field(default_factory=dict)
    release: Callable[[], None] = lambda: None


def fit_mllib(spark: SparkSession, ratings: DataFrame, spec: TrainSpec, blocks: tuple[int, int]) -> Fitted:
    als = ALS(
        rank=spec.rank, maxIter=spec.max_iter, regParam=spec.reg, alpha=spec.alpha, implicitPrefs=True,
        userCol=S.USER_IDX, itemCol=S.ITEM_IDX, ratingCol="strength",
        numUserBlocks=blocks[0], numItemBlocks=blocks[1],
        checkpointInterval=spec.checkpoint_interval, seed=spec.seed,
        intermediateStorageLevel="MEMORY_AND_DISK", finalStorageLevel="MEMORY_AND_DISK",
        coldStartStrategy="drop",
    )
    model = als.fit(ratings)
    return Fitted(model.userFactors, model.itemFactors, model)


def fit_cg(spark: SparkSession, ratings: DataFrame, spec: TrainSpec, blocks: tuple[int, int]) -> Fitted:
    exchange = dict(spec.exchange or {})
    if set(exchange) != {"user", "item"}:
        n_users = ratings.select(S.USER_IDX).distinct().count()
        n_items = ratings.select(S.ITEM_IDX).distinct().count()
        exchange = {**factor_exchange(n_users, n_items, spec.rank, spec.broadcast_budget_mb), **exchange}
    fitted = als_cg.fit(spark, ratings, spec.rank, spec.max_iter, spec.reg, spec.alpha, blocks[0], blocks[1], exchange,
                        spec.checkpoint_interval, spec.seed, spec.cg_steps, spec.track_loss, log=log.info)
    users = als_cg.factors_frame(spark, fitted.user_factors).persist(StorageLevel.MEMORY_AND_DISK)
    items = als_cg.factors_frame(spark, fitted.item_factors).persist(StorageLevel.MEMORY_AND_DISK)
    details = {"cg_steps": spec.cg_steps, "factor_exchange": fitted.exchange, "loss": fitted.loss,
               "iteration_seconds": fitted.seconds_per_iteration, "profile": fitted.profile}
    # release only once written: the factors' lineage still names the broadcasts
    return Fitted(users, items, als_cg.als_model(spark, spec.rank, users, items), details, fitted.release)


STRATEGY_FIT = {"cg": fit_cg, "mllib": fit_mllib}


def fit(spark: SparkSession, ratings: DataFrame, spec: TrainSpec, blocks: tuple[int, int]) -> Fitted:
    """Fit ``ratings`` (``user_idx, item_idx, strength``) with ``spec.strategy``; factors materialized."""
    fitted = STRATEGY_FIT[spec.strategy](spark, ratings, spec, blocks)
    fitted.user_factors.count(), fitted.item_factors.count()  # forces the fit
    return fitted


def run(spark: SparkSession, spec: TrainSpec) -> TrainResult:
    """Train on ``spec.matrix_uri`` and write factors and model to ``spec.out_uri``."""
    timer = PhaseTimer()
    sc = spark.sparkContext
    checkpoint_dir = spec.checkpoint_dir or os.path.join(tempfile.gettempdir(), "music_recs_checkpoints")
    sc.setCheckpointDir(checkpoint_dir)
    blocks = (spec.user_blocks or sc.defaultParallelism, spec.item_blocks or sc.defaultParallelism)
    matrix_uri = spec.matrix_uri.rstrip("/")

    with timer.phase("load"):
        matrix = spark.read.parquet(f"{matrix_uri}/train")
        S.require_columns(matrix.columns, (S.USER_IDX, S.ITEM_IDX, "strength"), f"the training matrix {matrix_uri}/train")
        ratings = (
            matrix.select(S.USER_IDX, S.ITEM_IDX, F.col("strength").cast("float").alias("strength"))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        nnz = ratings.count()
        if nnz == 0:
            raise ValueError(f"the training matrix {matrix_uri}/train is empty: nothing to train on")
    with timer.phase("fit"):
        fitted = fit(spark, ratings, spec, blocks)
        n_users, n_items = fitted.user_factors.count(), fitted.item_factors.count()
    ratings.unpersist()
    with timer.phase("check"):
        check_finite(fitted.user_factors, fitted.item_factors)
    out = spec.out_uri.rstrip("/")
    with timer.phase("write"):
        # Published factors carry the original string ids next to the ALS ints.
        names = spark.read.parquet(f"{matrix_uri}/train")
        for side, idx, sid, factors in (("user", S.USER_IDX, S.USER_ID, fitted.user_factors),
                                        ("item", S.ITEM_IDX, S.ITEM_ID, fitted.item_factors)):
            ids = names.select(F.col(idx).alias("id"), F.col(sid)).distinct()
            (factors.join(ids, "id").select("id", sid, S.FEATURES).orderBy("id").coalesce(1)
             .write.mode("overwrite").parquet(f"{out}/{side}_factors"))
        fitted.model.write().overwrite().save(f"{out}/model")
    fitted.release()
    conf = {k: v for k, v in sc.getConf().getAll()
            if k.startswith("spark.") and not any(s in k.lower() for s in ("secret", "password", "token", "key"))}
    return TrainResult(
        strategy=spec.strategy,
        params={"rank": spec.rank, "max_iter": spec.max_iter, "reg": spec.reg, "alpha": spec.alpha, "seed": spec.seed,
                "strategy": spec.strategy, "user_blocks": blocks[0], "item_blocks": blocks[1],
                "checkpoint_interval": spec.checkpoint_interval, "checkpoint_dir": checkpoint_dir},
        data={"nnz": nnz, "users": n_users, "items": n_items},
        iterations=spec.max_iter,
        seconds=timer.seconds,
        seconds_per_iteration=round(timer.seconds["fit"] / spec.max_iter, 3),
        spark_conf=dict(sorted(conf.items())),
        spark_version=spark.version,
        **fitted.details,
    )


def main(argv=None) -> None:
    job_main(TrainSpec, run, argv)


if __name__ == "__main__":
    main()
