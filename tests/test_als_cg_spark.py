"""The CG training strategy on Spark against MLlib's ALS and against itself."""

import numpy as np
import pytest

from pyspark.ml.recommendation import ALSModel

from music_recs.jobs import TrainSpec
from music_recs.recipe import Recipe
from spark_jobs import train_als
from spark_jobs.lib import ranking
from tests.test_model_spark import planted

pytestmark = pytest.mark.spark

COMMON = dict(max_iter=6, checkpoint_interval=3, user_blocks=3, item_blocks=2, recipe=Recipe(rank=8, reg=0.05, alpha=10.0))


def factors(spark, out, side):
    rows = spark.read.parquet(f"{out}/{side}_factors").orderBy("id").collect()
    return np.array([r.id for r in rows]), np.array([r.features for r in rows], dtype=np.float32)


def test_cg_matches_mllib_on_planted_blocks_and_its_loss_never_increases(spark, tmp_path):
    m = str(tmp_path / "matrix")
    train, _ = planted(spark, m)
    train_df, holdout = spark.read.parquet(f"{m}/train"), spark.read.parquet(f"{m}/holdout")
    scores = {}
    for strategy in ("mllib", "cg"):
        out = str(tmp_path / strategy)
        result = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=out,
                                                checkpoint_dir=str(tmp_path / f"ckpt-{strategy}"), strategy=strategy,
                                                track_loss=True, **COMMON, strength_as_built=True))
        assert result.strategy == strategy and result.data == {"nnz": len(train), "users": 60, "items": 40}
        recs = ranking.model_recommendations(spark, ALSModel.load(f"{out}/model"), train_df, 3, True)
        scores[strategy] = ranking.ranking_metrics(recs, holdout, 3)
        if strategy == "cg":
            loss = result.loss
            assert len(loss) == 6 and all(b <= a * (1 + 1e-5) for a, b in zip(loss, loss[1:])), loss
            assert loss[-1] < loss[0]
            assert result.factor_exchange == {"user": "broadcast", "item": "broadcast"}
    # Both find the planted blocks (precision@3 is 1.0 for a perfect model).
    assert scores["cg"]["precision"] > 0.9
    assert scores["cg"]["precision"] >= scores["mllib"]["precision"] - 0.05


def test_broadcast_and_join_exchange_give_the_same_factors(spark, tmp_path):
    """The join path, chosen by a broadcast budget too small for any factors, gives the factors the
    broadcast path gives; both warm-started from the same earlier model (a warm start reaches each
    block through a join of its own, ``als_cg.known_factors``), which lacks some users and items and
    numbered them otherwise (an earlier id index): rows are matched by string id."""
    m = str(tmp_path / "matrix")
    planted(spark, m, users=50, items=30, groups=3, seed=5)
    rng = np.random.default_rng(0)
    earlier = tmp_path / "earlier"
    for side, sid, prefix, n in (("user", "user_id", "u", 45), ("item", "item_id", "i", 25)):
        spark.createDataFrame([(1000 + i, f"{prefix}{i}", rng.uniform(0, 0.5, 3).tolist()) for i in range(n)],
                              f"id int, {sid} string, features array<float>").write.parquet(str(earlier / f"{side}_factors"))
    got = {}
    # Rank = the planted groups: with a larger rank the extra factors are barely determined, and
    # the last-bit differences of float32 sums (the kernel's results can differ in the last bit
    # between two Python workers) grow from iteration to iteration instead of dying out.
    for how, chosen_by in (("broadcast", {"exchange": {"user": "broadcast", "item": "broadcast"}}),
                           ("join", {"broadcast_budget_mb": 0})):
        out = str(tmp_path / how)
        result = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=out,
                                                checkpoint_dir=str(tmp_path / f"ckpt-{how}"), strategy="cg",
                                                warm_start_uri=str(earlier), early_stop_tol=0.0, **chosen_by,
                                                **{**COMMON, "max_iter": 2, "recipe": Recipe(rank=3, reg=0.05, alpha=10.0)},
                                                strength_as_built=True))
        assert result.factor_exchange == {"user": how, "item": how}
        assert result.warm_start["users"] == {"from_model": 45, "new": 5} and result.iterations == 2
        got[how] = factors(spark, out, "user"), factors(spark, out, "item")
    for side in (0, 1):
        ids_b, f_b = got["broadcast"][side]
        ids_j, f_j = got["join"][side]
        np.testing.assert_array_equal(ids_b, ids_j)
        np.testing.assert_allclose(f_b, f_j, rtol=1e-4, atol=1e-6)
