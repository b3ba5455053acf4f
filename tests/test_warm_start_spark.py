"""Warm start across days on Spark: the training job starts from an earlier model's factors,
matched by string id, and stops once the objective stops falling (``music_recs.convergence``).
(Both factor exchanges from one warm start: ``test_als_cg_spark``.)"""

import numpy as np
import pytest
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.jobs import TrainSpec
from music_recs.recipe import Recipe
from spark_jobs import train_als
from spark_jobs.lib import ranking
from tests.test_als_cg_spark import factors
from tests.test_model_spark import planted

pytestmark = pytest.mark.spark

COMMON = dict(checkpoint_interval=3, user_blocks=3, item_blocks=2, strategy="cg", recipe=Recipe(rank=8, reg=0.05, alpha=10.0))


def test_a_warm_start_reaches_the_cold_fit_in_fewer_iterations_and_new_rows_start_random(spark, tmp_path):
    m = str(tmp_path / "matrix")
    planted(spark, m)
    cold = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "cold"), max_iter=8, track_loss=True,
                                          checkpoint_dir=str(tmp_path / "ckpt"), **COMMON, strength_as_built=True))
    assert cold.warm_start == {"used": False, "reason": "no earlier model given"}
    assert cold.iterations == 8

    # Yesterday's model lacks 6 users and 4 items: they start random, the rest where it ended.
    earlier = tmp_path / "earlier"
    for side, sid, drop in (("user", "user_id", [f"u{i}" for i in range(6)]), ("item", "item_id", ["i0", "i1", "i2", "i3"])):
        (spark.read.parquet(str(tmp_path / "cold" / f"{side}_factors")).filter(~F.col(sid).isin(drop))
         .write.parquet(str(earlier / f"{side}_factors")))
    warm = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "warm"), max_iter=8,
                                          checkpoint_dir=str(tmp_path / "ckpt"), warm_start_uri=str(earlier),
                                          warm_start_from="dt=2026-11-28", **COMMON, strength_as_built=True))
    ws = warm.warm_start
    assert ws["used"] and ws["from"] == "dt=2026-11-28"
    assert ws["users"] == {"from_model": 54, "new": 6} and ws["items"] == {"from_model": 36, "new": 4}
    assert ws["stopped_early"] and ws["iterations"] == warm.iterations < 8
    assert len(warm.loss) == warm.iterations
    # It starts near the cold fit's optimum and ends at least as low (within float noise).
    assert warm.loss[-1] <= cold.loss[-1] * 1.01
    ids, X = factors(spark, str(tmp_path / "warm"), "user")
    assert np.isfinite(X).all() and len(ids) == 60

    # A rerun of the day with the same inputs (the same earlier model) recommends the same lists.
    again = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "again"), max_iter=8,
                                           checkpoint_dir=str(tmp_path / "ckpt"), warm_start_uri=str(earlier),
                                           warm_start_from="dt=2026-11-28", **COMMON, strength_as_built=True))
    assert again.iterations == warm.iterations and again.warm_start == warm.warm_start
    played = spark.read.parquet(f"{m}/train")
    lists = {}
    for run in ("warm", "again"):
        model = ALSModel.load(str(tmp_path / run / "model"))
        recs = ranking.model_recommendations(spark, model, played, 5, True).collect()
        lists[run] = sorted((r.user_idx, r[S.RANK], r.item_idx) for r in recs)
    assert lists["warm"] == lists["again"] and len(lists["warm"]) == 60 * 5


def test_a_model_of_another_rank_means_a_cold_start_that_says_why(spark, tmp_path):
    m = str(tmp_path / "matrix")
    planted(spark, m, users=20, items=12, groups=2)
    for side, sid, prefix, n in (("user", "user_id", "u", 20), ("item", "item_id", "i", 12)):
        spark.createDataFrame([(i, f"{prefix}{i}", [0.1] * 4) for i in range(n)],
                              f"id int, {sid} string, features array<float>").write.parquet(str(tmp_path / "r4" / f"{side}_factors"))
    result = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "r8"), max_iter=2,
                                            checkpoint_dir=str(tmp_path / "ckpt"),
                                            warm_start_uri=str(tmp_path / "r4"), warm_start_from="dt=2026-11-28",
                                            **COMMON, strength_as_built=True))
    assert result.warm_start == {"used": False, "from": "dt=2026-11-28",
                                 "reason": "the earlier model has rank 4, this run trains rank 8"}
    assert result.iterations == 2
