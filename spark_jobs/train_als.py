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
  ``checkpointInterval`` and the lineage of 10+ iterations ends in StackOverflowError. It is the
  spec's (``RunPlan.checkpoints``: a local folder in local mode, the lake on a cluster); a spec
  without one gets a temp folder in local mode only: on a cluster every executor writes
  checkpoints, so a folder on one machine's disk would silently not be shared.
* The ratings are cached once (MEMORY_AND_DISK) and unpersisted when the fit is done;
  MLlib caches its own in/out blocks between iterations.
* User and item block counts come from the caller (the sizing model); by default one
  block per core, Spark's own default (``spark.default.parallelism``).
* Factors with NaN or infinity fail the job: they would publish garbage recommendations.
* With ``spec.tune``, the parameters are first searched on the matrix's nested split
  (``tuning/train`` scored on ``tuning/validation``, ``music_recs.tuning``) in this same
  application: the CG strategy groups the ratings into blocks once and every trial reuses them
  (only the confidence of each rating changes between trials). The winner is then trained on
  ``train/``. A trial that diverges scores 0 and the search goes on. Every trial's lists obey
  the run's recommendation rules (``TuneSpec.max_per_artist``, ``do_not_recommend_path``) as
  the evaluation's do, so the search optimises the lists the quality gate scores.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pyspark import StorageLevel
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs import tuning
from music_recs.confidence import ConfidenceParams, confidence, strength
from music_recs.jobs import TrainResult, TrainSpec, TuneSpec
from music_recs.recipe import Recipe
from music_recs.sizing import factor_exchange
from spark_jobs.lib import als_cg, als_local
from spark_jobs.lib.ranking import NO_RULES, load_rules, mean_metrics, model_recommendations, per_user_metrics
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
        rank=spec.recipe.rank, maxIter=spec.max_iter, regParam=spec.recipe.reg, alpha=spec.recipe.alpha, implicitPrefs=True,
        userCol=S.USER_IDX, itemCol=S.ITEM_IDX, ratingCol="strength",
        numUserBlocks=blocks[0], numItemBlocks=blocks[1],
        checkpointInterval=spec.checkpoint_interval, seed=spec.seed,
        intermediateStorageLevel="MEMORY_AND_DISK", finalStorageLevel="MEMORY_AND_DISK",
        coldStartStrategy="drop",
    )
    model = als.fit(ratings)
    return Fitted(model.userFactors, model.itemFactors, model)


def fit_cg(spark: SparkSession, ratings: DataFrame, spec: TrainSpec, blocks: tuple[int, int],
           prepared: als_cg.PreparedBlocks | None = None, init: dict | None = None) -> Fitted:
    """CG ALS; with ``prepared`` blocks (values ``r``), confidence is ``1 + alpha * f(r)`` by the spec;
    with ``init`` (per side, an earlier model's ``(id, features)``), a warm start that stops by
    ``spec.early_stop_tol``."""
    exchange = dict(spec.exchange or {})
    if set(exchange) != {"user", "item"}:
        n_users = ratings.select(S.USER_IDX).distinct().count()
        n_items = ratings.select(S.ITEM_IDX).distinct().count()
        exchange = {**factor_exchange(n_users, n_items, spec.recipe.rank, spec.broadcast_budget_mb), **exchange}
    conf_of = confidence_of(spec) if prepared is not None else None
    fitted = als_cg.fit(spark, ratings, spec.recipe.rank, spec.max_iter, spec.recipe.reg, spec.recipe.alpha, blocks[0],
                        blocks[1], exchange,
                        spec.checkpoint_interval, spec.seed, spec.cg_steps, spec.track_loss, log=log.info,
                        scale_reg=spec.recipe.scale_reg, prepared=prepared, conf_of=conf_of, init=init,
                        tol=spec.early_stop_tol if init else 0.0)
    users = als_cg.factors_frame(spark, fitted.user_factors).persist(StorageLevel.MEMORY_AND_DISK)
    items = als_cg.factors_frame(spark, fitted.item_factors).persist(StorageLevel.MEMORY_AND_DISK)
    details = {"cg_steps": spec.cg_steps, "factor_exchange": fitted.exchange, "loss": fitted.loss,
               "iteration_seconds": fitted.seconds_per_iteration, "profile": fitted.profile,
               "iterations": fitted.iterations}
    # release only once written: the factors' lineage still names the broadcasts
    return Fitted(users, items, als_cg.als_model(spark, spec.recipe.rank, users, items), details, fitted.release)


STRATEGY_FIT = {"cg": fit_cg, "mllib": fit_mllib}


def fit(spark: SparkSession, ratings: DataFrame, spec: TrainSpec, blocks: tuple[int, int],
        init: dict | None = None) -> Fitted:
    """Fit ``ratings`` (``user_idx, item_idx, strength``) with ``spec.strategy``; factors materialized."""
    fitted = fit_cg(spark, ratings, spec, blocks, init=init) if init else STRATEGY_FIT[spec.strategy](
        spark, ratings, spec, blocks)
    fitted.user_factors.count(), fitted.item_factors.count()  # forces the fit
    return fitted


def confidence_of(spec: TrainSpec) -> Callable:
    """Play counts ``r`` (numpy) -> confidence ``1 + alpha * f(r)`` with the spec's recipe."""
    r = spec.recipe
    params = ConfidenceParams(r.confidence_function, r.alpha, r.epsilon)
    return functools.partial(confidence, params=params, log1p=np.log1p)


def training_ratings(matrix: DataFrame, spec: TrainSpec, what: str) -> DataFrame:
    """``(user_idx, item_idx, strength)``: ``f(r)`` recomputed from the matrix's play counts with the
    spec's recipe, or the matrix's own ``strength`` (``strength_as_built``)."""
    if spec.strength_as_built:
        S.require_columns(matrix.columns, (S.USER_IDX, S.ITEM_IDX, S.STRENGTH), what)
        value = F.col(S.STRENGTH)
    else:
        S.require_columns(matrix.columns, (S.USER_IDX, S.ITEM_IDX, S.R), what)
        r = spec.recipe
        value = strength(F.col(S.R), ConfidenceParams(r.confidence_function, r.alpha, r.epsilon), F.log1p)
    return matrix.select(S.USER_IDX, S.ITEM_IDX, value.cast("float").alias(S.STRENGTH))


def trial_spec(spec: TrainSpec, params: dict, max_iter: int, seed: int) -> TrainSpec:
    return dataclasses.replace(spec, recipe=Recipe.from_dict(params), strength_as_built=False, max_iter=max_iter,
                               seed=seed, tune=None, track_loss=False)


def search(spark: SparkSession, spec: TrainSpec, blocks: tuple[int, int]) -> dict:
    """Successive halving over ``tuning.candidates`` on the matrix's nested split; every trial
    is fitted on ``tuning/train`` and scored at k on ``tuning/validation``, its lists built under
    the tuning spec's rules (``ranking.load_rules``, the evaluation's)."""
    tune = TuneSpec.from_dict(spec.tune)
    started = time.monotonic()
    root = spec.matrix_uri.rstrip("/")
    train = spark.read.parquet(f"{root}/{S.TUNING_TRAIN}")
    S.require_columns(train.columns, (S.USER_IDX, S.ITEM_IDX, S.R), f"the tuning matrix {root}/{S.TUNING_TRAIN}")
    raw = train.select(S.USER_IDX, S.ITEM_IDX, F.col(S.R).cast("float").alias(S.STRENGTH)).persist(
        StorageLevel.MEMORY_AND_DISK)
    validation = spark.read.parquet(f"{root}/{S.TUNING_VALIDATION}").select(S.USER_IDX, S.ITEM_IDX).cache()
    n_users = raw.select(S.USER_IDX).distinct().count()
    n_items = raw.select(S.ITEM_IDX).distinct().count()
    n_validation = validation.select(S.USER_IDX).distinct().count()
    if not n_users or not n_validation:
        raise ValueError(f"the tuning split of {root} is empty ({n_users} users, {n_validation} validation users); "
                         "widen window_days or set tune=off")
    if tune.max_per_artist or tune.do_not_recommend_path:
        rules, applied = load_rules(spark, tune, train, spark.read.parquet(f"{root}/items"))
    else:
        rules, applied = NO_RULES, {"max_per_artist": 0, "do_not_recommend": None}
    base = spec.recipe.as_dict()
    fixed = set(tune.fixed) | ({"reg_scaling"} if spec.strategy == "mllib" else set())
    space = {**tuning.SEARCH_SPACE, **{k: tuple(v) for k, v in (tune.space or {}).items()}}
    pool = tuning.candidates(base, fixed, tune.trials, tune.seed, space)
    nnz = raw.count()
    local = spec.strategy == "cg" and nnz <= tune.local_max_nnz
    prepared = als_cg.prepare_blocks(raw, *blocks) if spec.strategy == "cg" and not local else None
    played = raw.select(S.USER_IDX, S.ITEM_IDX)
    if local:  # small enough: every trial on the driver, same kernels (spark_jobs.lib.als_local)
        pairs = raw.toArrow()
        matrix = als_local.LocalMatrix.from_pairs(*(pairs.column(c).to_numpy() for c in (S.USER_IDX, S.ITEM_IDX,
                                                                                      S.STRENGTH)))
        local_rules = als_local.LocalRules.from_rules(rules, matrix)
        held = validation.toArrow()
        truth: dict[int, set] = {}
        for user, item in zip(held.column(S.USER_IDX).to_pylist(), held.column(S.ITEM_IDX).to_pylist()):
            truth.setdefault(user, set()).add(item)
    trials: list[tuning.Trial] = []

    def score_on_driver(trial: TrainSpec) -> float:
        X, Y = als_local.fit(matrix, trial.recipe.rank, trial.max_iter, trial.recipe.reg, confidence_of(trial),
                             trial.recipe.scale_reg,
                             trial.cg_steps, trial.seed)
        if not (np.isfinite(X).all() and np.isfinite(Y).all()):
            raise NonFiniteFactorsError("non-finite factors")
        return als_local.score(matrix, X, Y, truth, tune.k, local_rules)[tune.metric]

    def score_on_spark(trial: TrainSpec) -> float:
        if prepared is not None:
            fitted = fit_cg(spark, raw, trial, blocks, prepared)
            fitted.user_factors.count(), fitted.item_factors.count()
        else:
            fitted = fit(spark, training_ratings(train, trial, "the tuning matrix"), trial, blocks)
        try:
            check_finite(fitted.user_factors, fitted.item_factors)
            broadcast_items = factor_exchange(1, n_items, trial.recipe.rank, spec.broadcast_budget_mb)["item"] == "broadcast"
            recs = model_recommendations(spark, fitted.model, played, tune.k, broadcast_items, rules)
            return mean_metrics(per_user_metrics(recs, validation, tune.k))[tune.metric]
        finally:
            fitted.user_factors.unpersist(), fitted.item_factors.unpersist()
            fitted.release()

    def score(number: int, params: dict, rung: int, iterations: int) -> tuning.Trial:
        t0 = time.monotonic()
        try:
            value = (score_on_driver if local else score_on_spark)(trial_spec(spec, params, iterations, spec.seed))
        except NonFiniteFactorsError as exc:  # a diverging candidate loses; the search goes on
            log.warning("trial %d diverged: %s", number, exc)
            value = 0.0
        done = tuning.Trial(number, rung, params, iterations, round(float(value), 6), n_validation,
                            round(time.monotonic() - t0, 3))
        log.info("trial %d rung %d (%d iterations, %s) %s: %s@%d %.4f in %.2fs", number, rung, iterations,
                 "driver" if local else "cached blocks", params, tune.metric, tune.k, value, done.seconds)
        return done

    def out_of_time() -> bool:
        return time.monotonic() - started > tune.minutes * 60

    first_iter, last_iter = tuning.rung_iterations(spec.max_iter)
    for number, params in enumerate(pool):
        if trials and out_of_time():
            break
        trials.append(score(number, params, 0, first_iter))
    if last_iter > first_iter:
        for best in tuning.survivors(trials):
            if out_of_time() and any(t.rung == 1 for t in trials):
                break
            trials.append(score(best.trial, best.params, 1, last_iter))
    if prepared is not None:
        prepared.release()
    raw.unpersist(), validation.unpersist()
    rules.unpersist()
    chosen = tuning.winner(trials)
    return {"metric": tune.metric, "k": tune.k, "budget": {"trials": tune.trials, "minutes": tune.minutes},
            "fixed": sorted(fixed), "candidates": len(pool), "rungs": [first_iter, last_iter],
            "trials_ran_on": "driver" if local else "cached blocks",
            "split": {"users": n_users, "items": n_items, "validation_users": n_validation}, "rules": applied,
            "trials": [t.as_dict() for t in trials], "winner": chosen.as_dict(), "chosen": chosen.params,
            "seconds": round(time.monotonic() - started, 3)}


def warm_start(spark: SparkSession, spec: TrainSpec, matrix: DataFrame) -> tuple[dict | None, dict]:
    """(per side the earlier model's factors on this matrix's ids, or None; what was decided and why).
    The record counts the rows taken from the model; ``run`` adds the new ones once the fit has
    counted the matrix's rows.

    The earlier model (``spec.warm_start_uri``: ``user_factors/`` and ``item_factors/`` with their
    string ids) is matched by string id, so a user or item it has starts where it ended and a new
    one starts random; rows it has that this matrix lost are dropped. It is used only when its rank
    is the rank trained now (a search may have chosen another) and it shares some row."""
    source = spec.warm_start_from or spec.warm_start_uri
    if not spec.warm_start_uri:
        return None, {"used": False, "reason": spec.warm_start_note or "no earlier model given"}
    if spec.strategy != "cg":
        return None, {"used": False, "from": source, "reason": "MLlib's ALS cannot start from given factors"}
    root = spec.warm_start_uri.rstrip("/")
    init, record = {}, {"used": True, "from": source}

    def cold(reason: str) -> tuple[None, dict]:
        for frame in init.values():
            frame.unpersist()
        return None, {"used": False, "from": source, "reason": reason}

    for side, idx, sid in (("user", S.USER_IDX, S.USER_ID), ("item", S.ITEM_IDX, S.ITEM_ID)):
        old = spark.read.parquet(f"{root}/{side}_factors")
        S.require_columns(old.columns, (sid, S.FEATURES), f"the warm-start model's {side} factors ({root})")
        first = old.select(F.size(S.FEATURES).alias("rank")).first()
        if first is None:
            return cold(f"the earlier model has no {side} factors")
        if first["rank"] != spec.recipe.rank:
            return cold(f"the earlier model has rank {first['rank']}, this run trains rank {spec.recipe.rank}")
        ids = matrix.select(F.col(idx).alias("id"), sid).distinct()
        init[side] = old.select(sid, S.FEATURES).join(ids, sid).select("id", S.FEATURES).cache()
        record[side + "s"] = {"from_model": init[side].count()}
    if not record["users"]["from_model"] and not record["items"]["from_model"]:
        return cold("the earlier model shares no user or item with this matrix")
    record["reason"] = (f"same rank ({spec.recipe.rank}); {record['users']['from_model']} users and "
                        f"{record['items']['from_model']} items start from it")
    return init, record


def checkpoint_dir_for(spec: TrainSpec, master: str) -> str:
    """Where the job checkpoints: the spec's folder; without one, a temp folder in local mode (one
    JVM), and a one-line error on a cluster (its executors need a folder they all reach)."""
    if spec.checkpoint_dir:
        return spec.checkpoint_dir
    if master.startswith("local"):
        return os.path.join(tempfile.gettempdir(), "music_recs_checkpoints")
    raise ValueError(f"the training spec has no checkpoint_dir and the master {master} is a cluster: give a folder "
                     "every executor reaches (the lake's _checkpoints, e.g. s3a://bucket/lake/_checkpoints/...)")


def run(spark: SparkSession, spec: TrainSpec) -> TrainResult:
    """Train on ``spec.matrix_uri`` and write factors and model to ``spec.out_uri``."""
    timer = PhaseTimer()
    sc = spark.sparkContext
    checkpoint_dir = checkpoint_dir_for(spec, sc.master)
    sc.setCheckpointDir(checkpoint_dir)
    blocks = (spec.user_blocks or sc.defaultParallelism, spec.item_blocks or sc.defaultParallelism)
    matrix_uri = spec.matrix_uri.rstrip("/")

    searched = None
    if spec.tune is not None:
        with timer.phase("tune"):
            searched = search(spark, spec, blocks)
        spec = trial_spec(spec, searched["chosen"], spec.max_iter, spec.seed)
        log.info("tuning chose %s (%s@%d %.4f on the validation days)", searched["chosen"], searched["metric"],
                 searched["k"], searched["winner"]["metric"])
    with timer.phase("load"):
        matrix = spark.read.parquet(f"{matrix_uri}/train")
        ratings = training_ratings(matrix, spec, f"the training matrix {matrix_uri}/train").persist(
            StorageLevel.MEMORY_AND_DISK)
        nnz = ratings.count()
        if nnz == 0:
            raise ValueError(f"the training matrix {matrix_uri}/train is empty: nothing to train on")
    with timer.phase("warm_start"):
        init, warm = warm_start(spark, spec, matrix)
        log.info("warm start: %s", warm["reason"] if warm["used"] else f"cold ({warm['reason']})")
    with timer.phase("fit"):
        fitted = fit(spark, ratings, spec, blocks, init)
        n_users, n_items = fitted.user_factors.count(), fitted.item_factors.count()
    ratings.unpersist()
    for frame in (init or {}).values():
        frame.unpersist()
    iterations = fitted.details.get("iterations") or spec.max_iter
    if init:
        warm["users"]["new"] = n_users - warm["users"]["from_model"]
        warm["items"]["new"] = n_items - warm["items"]["from_model"]
        warm.update(iterations=iterations, stopped_early=iterations < spec.max_iter, tol=spec.early_stop_tol)
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
        params={**spec.recipe.as_dict(), "max_iter": spec.max_iter, "seed": spec.seed,
                "strength_as_built": spec.strength_as_built,
                "strategy": spec.strategy, "user_blocks": blocks[0], "item_blocks": blocks[1],
                "checkpoint_interval": spec.checkpoint_interval, "checkpoint_dir": checkpoint_dir},
        data={"nnz": nnz, "users": n_users, "items": n_items},
        iterations=iterations,
        seconds=timer.seconds,
        seconds_per_iteration=round(timer.seconds["fit"] / iterations, 3),
        warm_start=warm,
        spark_conf=dict(sorted(conf.items())),
        spark_version=spark.version,
        tuning=searched,
        **{k: v for k, v in fitted.details.items() if k != "iterations"},
    )


def main(argv=None) -> None:
    job_main(TrainSpec, run, argv)


if __name__ == "__main__":
    main()
