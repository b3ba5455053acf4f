"""Train implicit ALS (Hu-Koren-Volinsky) on one confidence matrix.

Reads ``{matrix}/train`` (``user_idx, item_idx, strength``), fits it with one of two
strategies and writes to ``--out``:

* ``mllib`` (default, the reference): ``pyspark.ml.recommendation.ALS(implicitPrefs=True)``,
  an exact Cholesky solve per row;
* ``cg``: ``spark_jobs.als_cg``, a few conjugate-gradient steps per row on cached CSR
  blocks, same objective, several times faster at ranks of 32 and more.

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

import argparse
import logging
import os
import tempfile

from pyspark import StorageLevel
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.executor_sizing import DEFAULT_BROADCAST_BUDGET_MB, factor_exchange
from spark_jobs import als_cg
from spark_jobs.common import PhaseTimer, get_spark, setup_logging, write_result

STRATEGIES = ("mllib", "cg")
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


def run(spark: SparkSession, matrix_uri: str, out_uri: str, rank: int = 32, max_iter: int = 10,
        reg: float = 0.1, alpha: float = 40.0, user_blocks: int = 0, item_blocks: int = 0,
        checkpoint_dir: str | None = None, checkpoint_interval: int = 5, seed: int = 42,
        strategy: str = "mllib", cg_steps: int = 3, exchange: dict | None = None,
        broadcast_budget_mb: int = DEFAULT_BROADCAST_BUDGET_MB, track_loss: bool = False) -> dict:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    timer = PhaseTimer()
    sc = spark.sparkContext
    checkpoint_dir = checkpoint_dir or os.path.join(tempfile.gettempdir(), "music_recs_checkpoints")
    sc.setCheckpointDir(checkpoint_dir)
    blocks = sc.defaultParallelism
    user_blocks, item_blocks = user_blocks or blocks, item_blocks or blocks

    with timer.phase("load"):
        matrix = spark.read.parquet(f"{matrix_uri.rstrip('/')}/train")
        S.require_columns(matrix.columns, (S.USER_IDX, S.ITEM_IDX, "strength"), f"the training matrix {matrix_uri}/train")
        ratings = (
            matrix.select(S.USER_IDX, S.ITEM_IDX, F.col("strength").cast("float").alias("strength"))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        nnz = ratings.count()
        if nnz == 0:
            raise ValueError(f"the training matrix {matrix_uri}/train is empty: nothing to train on")
    extra: dict = {}
    if strategy == "mllib":
        als = ALS(
            rank=rank, maxIter=max_iter, regParam=reg, alpha=alpha, implicitPrefs=True,
            userCol=S.USER_IDX, itemCol=S.ITEM_IDX, ratingCol="strength",
            numUserBlocks=user_blocks, numItemBlocks=item_blocks,
            checkpointInterval=checkpoint_interval, seed=seed,
            intermediateStorageLevel="MEMORY_AND_DISK", finalStorageLevel="MEMORY_AND_DISK",
            coldStartStrategy="drop",
        )
        with timer.phase("fit"):
            model = als.fit(ratings)
            user_factors, item_factors = model.userFactors, model.itemFactors
            n_users, n_items = user_factors.count(), item_factors.count()  # forces the fit
    else:
        with timer.phase("fit"):
            if set(exchange or {}) != {"user", "item"}:
                n_users = ratings.select(S.USER_IDX).distinct().count()
                n_items = ratings.select(S.ITEM_IDX).distinct().count()
                exchange = {**factor_exchange(n_users, n_items, rank, broadcast_budget_mb), **(exchange or {})}
            fitted = als_cg.fit(spark, ratings, rank, max_iter, reg, alpha, user_blocks, item_blocks, exchange,
                                checkpoint_interval, seed, cg_steps, track_loss, log=log.info)
            user_factors = als_cg.factors_frame(spark, fitted.user_factors).persist(StorageLevel.MEMORY_AND_DISK)
            item_factors = als_cg.factors_frame(spark, fitted.item_factors).persist(StorageLevel.MEMORY_AND_DISK)
            n_users, n_items = user_factors.count(), item_factors.count()
            model = als_cg.als_model(spark, rank, user_factors, item_factors)
        extra = {"cg_steps": cg_steps, "factor_exchange": fitted.exchange, "loss": fitted.loss,
                 "iteration_seconds": fitted.seconds_per_iteration, "profile": fitted.profile}
    ratings.unpersist()
    with timer.phase("check"):
        check_finite(user_factors, item_factors)
    out = out_uri.rstrip("/")
    with timer.phase("write"):
        # Published factors carry the original string ids next to the ALS ints.
        names = spark.read.parquet(f"{matrix_uri.rstrip('/')}/train")
        for side, idx, sid in (("user", S.USER_IDX, S.USER_ID), ("item", S.ITEM_IDX, S.ITEM_ID)):
            factors = user_factors if side == "user" else item_factors
            ids = names.select(F.col(idx).alias("id"), F.col(sid)).distinct()
            (factors.join(ids, "id").select("id", sid, S.FEATURES).orderBy("id").coalesce(1)
             .write.mode("overwrite").parquet(f"{out}/{side}_factors"))
        model.write().overwrite().save(f"{out}/model")
    if strategy == "cg":
        fitted.release()  # only now: everything written above still named the broadcasts in its lineage
    conf = {k: v for k, v in sc.getConf().getAll()
            if k.startswith("spark.") and not any(s in k.lower() for s in ("secret", "password", "token", "key"))}
    return {
        "strategy": strategy,
        **extra,
        "params": {"rank": rank, "max_iter": max_iter, "reg": reg, "alpha": alpha, "seed": seed, "strategy": strategy,
                   "user_blocks": user_blocks, "item_blocks": item_blocks,
                   "checkpoint_interval": checkpoint_interval, "checkpoint_dir": checkpoint_dir},
        "data": {"nnz": nnz, "users": n_users, "items": n_items},
        "iterations": max_iter,
        "seconds": timer.seconds,
        "seconds_per_iteration": round(timer.seconds["fit"] / max_iter, 3),
        "spark_conf": dict(sorted(conf.items())),
        "spark_version": spark.version,
    }


def main(argv=None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--matrix", required=True, help="matrix folder holding train/")
    p.add_argument("--out", required=True)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=40.0)
    p.add_argument("--user-blocks", type=int, default=0)
    p.add_argument("--item-blocks", type=int, default=0)
    p.add_argument("--checkpoint-dir")
    p.add_argument("--checkpoint-interval", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--strategy", choices=STRATEGIES, default="mllib")
    p.add_argument("--cg-steps", type=int, default=3, help="CG steps per row and half-iteration (cg)")
    p.add_argument("--user-exchange", choices=(als_cg.BROADCAST, als_cg.JOIN),
                   help="how user factors reach item blocks (cg; default: by --broadcast-budget-mb)")
    p.add_argument("--item-exchange", choices=(als_cg.BROADCAST, als_cg.JOIN))
    p.add_argument("--broadcast-budget-mb", type=int, default=DEFAULT_BROADCAST_BUDGET_MB)
    p.add_argument("--track-loss", action="store_true", help="compute the objective every iteration (cg)")
    p.add_argument("--result")
    a = p.parse_args(argv)
    exchange = {side: how for side, how in (("user", a.user_exchange), ("item", a.item_exchange)) if how}
    spark = get_spark("music_recs.train_als")
    write_result(spark, a.result, run(spark, a.matrix, a.out, a.rank, a.max_iter, a.reg, a.alpha,
                                      a.user_blocks, a.item_blocks, a.checkpoint_dir, a.checkpoint_interval, a.seed,
                                      a.strategy, a.cg_steps, exchange, a.broadcast_budget_mb, a.track_loss))


if __name__ == "__main__":
    main()
