"""Warm start across days on Spark: the training job starts from an earlier model's factors,
matched by string id, and stops once the objective stops falling (``music_recs.convergence``)."""

import numpy as np
import pytest
from pyspark.sql import functions as F

from music_recs.jobs import TrainSpec
from spark_jobs import train_als
from tests.test_als_cg_spark import factors
from tests.test_model_spark import planted

pytestmark = pytest.mark.spark

COMMON = dict(rank=8, reg=0.05, alpha=10.0, checkpoint_interval=3, user_blocks=3, item_blocks=2, strategy="cg")


def test_a_warm_start_reaches_the_cold_fit_in_fewer_iterations_and_new_rows_start_random(spark, tmp_path):
    m = str(tmp_path / "matrix")
    planted(spark, m)
    cold = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "cold"), max_iter=8, track_loss=True,
                                          checkpoint_dir=str(tmp_path / "ckpt"), **COMMON))
    assert cold.warm_start == {"used": False, "reason": "no earlier model given"}
    assert cold.iterations == 8

    # Yesterday's model lacks 6 users and 4 items: they start random, the rest where it ended.
    earlier = tmp_path / "earlier"
    for side, sid, drop in (("user", "user_id", [f"u{i}" for i in range(6)]), ("item", "item_id", ["i0", "i1", "i2", "i3"])):
        (spark.read.parquet(str(tmp_path / "cold" / f"{side}_factors")).filter(~F.col(sid).isin(drop))
         .write.parquet(str(earlier / f"{side}_factors")))
    warm = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "warm"), max_iter=8,
                                          checkpoint_dir=str(tmp_path / "ckpt"), warm_start_uri=str(earlier),
                                          warm_start_from="dt=2026-11-28", **COMMON))
    ws = warm.warm_start
    assert ws["used"] and ws["from"] == "dt=2026-11-28"
    assert ws["users"] == {"from_model": 54, "new": 6} and ws["items"] == {"from_model": 36, "new": 4}
    assert ws["stopped_early"] and ws["iterations"] == warm.iterations < 8
    assert len(warm.loss) == warm.iterations
    # It starts near the cold fit's optimum and ends at least as low (within float noise).
    assert warm.loss[-1] <= cold.loss[-1] * 1.01
    ids, X = factors(spark, str(tmp_path / "warm"), "user")
    assert np.isfinite(X).all() and len(ids) == 60


def test_warm_start_through_the_join_exchange_matches_the_broadcast_one(spark, tmp_path):
    m = str(tmp_path / "matrix")
    planted(spark, m, users=50, items=30, groups=3, seed=5)
    base = dict(COMMON, rank=3)
    train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "day1"), max_iter=3,
                                   checkpoint_dir=str(tmp_path / "ckpt"), **base))
    got = {}
    for how, chosen_by in (("broadcast", {"exchange": {"user": "broadcast", "item": "broadcast"}}),
                           ("join", {"broadcast_budget_mb": 0})):
        result = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / how), max_iter=1,
                                                checkpoint_dir=str(tmp_path / "ckpt"), early_stop_tol=0.0,
                                                warm_start_uri=str(tmp_path / "day1"), **chosen_by, **base))
        assert result.factor_exchange == {"user": how, "item": how} and result.warm_start["used"]
        got[how] = factors(spark, str(tmp_path / how), "item")
    np.testing.assert_array_equal(got["broadcast"][0], got["join"][0])
    np.testing.assert_allclose(got["broadcast"][1], got["join"][1], rtol=1e-3, atol=1e-4)


def test_a_model_of_another_rank_means_a_cold_start_that_says_why(spark, tmp_path):
    m = str(tmp_path / "matrix")
    planted(spark, m, users=20, items=12, groups=2)
    train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "r4"), max_iter=1,
                                   checkpoint_dir=str(tmp_path / "ckpt"), **dict(COMMON, rank=4)))
    result = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "r8"), max_iter=2,
                                            checkpoint_dir=str(tmp_path / "ckpt"), warm_start_uri=str(tmp_path / "r4"),
                                            warm_start_from="dt=2026-11-28", **COMMON))
    assert result.warm_start == {"used": False, "from": "dt=2026-11-28",
                                 "reason": "the earlier model has rank 4, this run trains rank 8"}
    assert result.iterations == 2
