"""Training and evaluation on a planted-structure matrix, with answers known in advance."""

import random

import pytest

from music_recs.jobs import EvaluateSpec, TrainSpec
from music_recs.recipe import Recipe
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.metrics import mean_metrics
from spark_jobs import evaluate, train_als
from spark_jobs.lib import ranking
from spark_jobs.train_als import NonFiniteFactorsError, check_finite

pytestmark = pytest.mark.spark


def planted(spark, path, users=60, items=40, groups=4, seed=3):
    """Users and items in `groups` blocks; each user played most items of its own block.

    Training holds 70% of each user's block items, held-out the rest: a good model must
    recommend the held-out items, which popularity cannot single out (all blocks are equal).
    """
    rng = random.Random(seed)
    train, held = [], []
    for u in range(users):
        block = [i for i in range(items) if i % groups == u % groups]
        rng.shuffle(block)
        cut = int(len(block) * 0.7)
        train += [(u, i, f"u{u}", f"i{i}", rng.randint(1, 5)) for i in block[:cut]]
        held += [(u, i, f"u{u}", f"i{i}") for i in block[cut:]]
    t = spark.createDataFrame(train, "user_idx int, item_idx int, user_id string, item_id string, plays long") \
        .withColumn("strength", F.log1p("plays").cast("double"))
    t.write.mode("overwrite").parquet(f"{path}/train")
    spark.createDataFrame(held, "user_idx int, item_idx int, user_id string, item_id string") \
        .write.mode("overwrite").parquet(f"{path}/holdout")
    spark.createDataFrame([(i, f"i{i}", f"Song {i}", f"a{i % groups}", f"Band {i % groups}") for i in range(items)],
                          "item_idx int, item_id string, item_name string, artist_id string, artist_name string") \
        .write.mode("overwrite").parquet(f"{path}/items")
    return train, held


def test_als_finds_planted_blocks_and_beats_popularity(spark, tmp_path):
    m, out = str(tmp_path / "matrix"), str(tmp_path / "model")
    train, held = planted(spark, m)
    result = train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=out, max_iter=8,
                                            checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_interval=2,
                                            strategy="mllib", recipe=Recipe(rank=8, reg=0.05, alpha=10.0),
                                            strength_as_built=True))
    assert result.data == {"nnz": len(train), "users": 60, "items": 40}
    assert result.params["checkpoint_dir"].endswith("ckpt")
    factors = spark.read.parquet(f"{out}/item_factors")
    assert set(factors.columns) == {"id", S.ITEM_ID, S.FEATURES}

    # The model itself as "the published model": scored on the same pairs, through its factor
    # files and their string ids, it must score exactly as the model does.
    ev = evaluate.run(spark, EvaluateSpec(model_uri=out, matrix_uri=m, out_uri=out, k=3, top_n=5, published_uri=out))
    assert ev.model["precision"] > 0.9  # the held-out items are exactly the rest of the block
    assert ev.model["precision"] > ev.baseline_popularity["precision"] + 0.3
    assert ev.model["users_evaluated"] == 60
    assert ev.lift["map"]["users"] == 60 and ev.lift["map"]["relative_interval"][0] > 0.5
    assert {k: ev.published[k] for k in ("precision", "map", "ndcg")} == pytest.approx(
        {k: ev.model[k] for k in ("precision", "map", "ndcg")})
    assert ev.lift_over_published["map"]["difference_interval"] == pytest.approx([0.0, 0.0], abs=1e-9)

    recs = spark.read.parquet(f"{out}/recommendations")
    played = {(u, i) for u, i, *_ in train}
    rows = recs.collect()
    assert rows and not any((r.user_idx, r.item_idx) in played for r in rows)  # played items excluded
    assert recs.groupBy(S.USER_ID).count().agg(F.max("count")).first()[0] == 5
    assert rows[0].item_name.startswith("Song ") and rows[0].artist_name.startswith("Band ")

    # Related items: an item's nearest neighbours by cosine of factors are from its own block.
    similar = spark.read.parquet(f"{out}/similar_items").collect()
    assert {r.item_id for r in similar} == {f"i{i}" for i in range(40)}
    assert not any(r.item_id == r.similar_item_id for r in similar)
    top3 = [r for r in similar if r.rank <= 3]
    same_block = sum(int(r.item_id[1:]) % 4 == int(r.similar_item_id[1:]) % 4 for r in top3)
    assert same_block / len(top3) > 0.95
    assert all(-1.0001 <= r.similarity <= 1.0001 for r in similar)


def test_similar_items_are_cosine_neighbours(spark):
    factors = spark.createDataFrame([(0, [1.0, 0.0]), (1, [10.0, 1.0]), (2, [0.0, 3.0]), (3, [0.2, 2.0])],
                                    "id int, features array<float>")
    for broadcast in (True, False):
        got = {(r.item_idx, r.rank): (r.other_idx, r.similarity)
               for r in evaluate.similar_items(spark, factors, 2, 1, broadcast).collect()}
        assert got[(0, 1)][0] == 1 and got[(2, 1)][0] == 3 and got[(3, 1)][0] == 2
        assert got[(0, 1)][1] == pytest.approx(10 / (101 ** 0.5), rel=1e-5)


def test_broadcast_scoring_agrees_with_mllib_blocked_top_k(spark, tmp_path):
    """Evaluate's two scoring paths (item factors broadcast to Python workers, or MLlib's
    recommendForAllUsers when they are over the budget) give the same lists and metrics."""
    m, out = str(tmp_path / "matrix"), str(tmp_path / "model")
    planted(spark, m, seed=5)
    train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=out, max_iter=5, strategy="mllib",
                                   recipe=Recipe(rank=6, reg=0.05, alpha=10.0), strength_as_built=True))
    runs = {}
    for budget in (256, 0):
        ev = evaluate.run(spark, EvaluateSpec(model_uri=out, matrix_uri=m, out_uri=f"{out}/{budget}", k=3, top_n=5, similar_n=3, broadcast_budget_mb=budget))
        recs = {(r.user_idx, r.rank): (r.item_idx, r.score)
                for r in spark.read.parquet(f"{out}/{budget}/recommendations").collect()}
        similar = {(r.item_id, r.rank): (r.similar_item_id, r.similarity)
                   for r in spark.read.parquet(f"{out}/{budget}/similar_items").collect()}
        runs[budget] = ev, recs, similar
    (fast, fast_recs, fast_similar), (slow, slow_recs, slow_similar) = runs[256], runs[0]
    assert fast.model == pytest.approx(slow.model) and fast.baseline_popularity == slow.baseline_popularity
    assert fast.recommendation_rows == slow.recommendation_rows == 60 * 5
    for got, want in ((fast_recs, slow_recs), (fast_similar, slow_similar)):
        assert got.keys() == want.keys()
        assert [g[0] for g in got.values()] == [want[key][0] for key in got]
        assert [g[1] for g in got.values()] == pytest.approx([want[key][1] for key in got], rel=1e-4)


def test_popularity_baseline_skips_played_items(spark):
    listeners = {0: [1, 2, 3], 1: [2, 3, 4], 2: [3, 4], 3: [4], 4: [2]}  # item -> users; item 3 and 4 tie
    train = spark.createDataFrame([(u, i) for i, us in listeners.items() for u in us], "user_idx int, item_idx int")
    users = spark.createDataFrame([(u,) for u in (1, 2, 3, 9)], "user_idx int")  # user 9 played nothing
    got = {}
    for r in ranking.popularity_top_k(train, users, 2, 5).collect():
        got.setdefault(r.user_idx, []).append((r[S.RANK], r.item_idx, r.score))
    assert {u: [i for _, i, _ in sorted(v)] for u, v in got.items()} == {1: [1, 2], 2: [2, 3], 3: [3, 4], 9: [0, 1]}
    assert sorted(got[9]) == [(1, 0, 3.0), (2, 1, 3.0)]


def test_spark_metrics_agree_with_the_python_reference(spark):
    rng = random.Random(11)
    recs, truth = {}, {}
    rows_r, rows_t = [], []
    for u in range(40):
        ranked = rng.sample(range(30), 8)
        recs[u] = ranked
        rows_r += [(u, i, pos + 1) for pos, i in enumerate(ranked)]
        truth[u] = set(rng.sample(range(30), rng.randint(1, 6))) if u % 7 else set()
        rows_t += [(u, i) for i in truth[u]]
    recs_df = spark.createDataFrame(rows_r, "user_idx int, item_idx int, rank int")
    truth_df = spark.createDataFrame(rows_t, "user_idx int, item_idx int")
    for k in (1, 5, 10):
        got = ranking.ranking_metrics(recs_df, truth_df, k)
        want = mean_metrics(recs, truth, k)
        for name, value in want.items():
            assert got[name] == pytest.approx(value, abs=1e-9), (k, name)


def test_perfect_model_scores_one_and_random_model_scores_near_chance(spark):
    truth_rows, perfect_rows, random_rows = [], [], []
    rng = random.Random(5)
    n_items, k = 200, 10
    for u in range(100):
        items = rng.sample(range(n_items), k)
        truth_rows += [(u, i) for i in items]
        perfect_rows += [(u, i, r + 1) for r, i in enumerate(items)]
        random_rows += [(u, i, r + 1) for r, i in enumerate(rng.sample(range(n_items), k))]
    truth = spark.createDataFrame(truth_rows, "user_idx int, item_idx int")
    perfect = ranking.ranking_metrics(spark.createDataFrame(perfect_rows, "user_idx int, item_idx int, rank int"), truth, k)
    assert perfect["precision"] == pytest.approx(1.0) and perfect["ndcg"] == pytest.approx(1.0)
    chance = ranking.ranking_metrics(spark.createDataFrame(random_rows, "user_idx int, item_idx int, rank int"), truth, k)
    assert chance["precision"] < 0.12  # chance is k / n_items = 0.05


def test_non_finite_factors_are_refused(spark):
    ok = spark.createDataFrame([(1, [0.1, 0.2])], "id int, features array<float>")
    nan = spark.createDataFrame([(1, [0.1, float("nan")]), (2, [float("inf"), 0.0])], "id int, features array<float>")
    check_finite(ok, ok)
    with pytest.raises(NonFiniteFactorsError, match="2 items"):
        check_finite(ok, nan)


def test_a_matrix_without_the_strength_column_is_refused_by_name(spark, tmp_path):
    m = str(tmp_path / "matrix")
    spark.createDataFrame([(0, 0)], "user_idx int, item_idx int").write.parquet(f"{m}/train")
    with pytest.raises(ValueError, match="missing required column\\(s\\): strength"):
        train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=str(tmp_path / "model"), max_iter=1, strategy="mllib",
                                       recipe=Recipe(rank=2), strength_as_built=True))
