"""Recommendation rules on Spark, on a planted matrix: at most ``max_per_artist`` tracks of one
artist per list (filled from further down), and the do-not-recommend list, in every top-N the
evaluation builds (model, popularity baseline) and so in its metrics and output checks."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.jobs import EvaluateSpec, TrainSpec
from music_recs.recipe import Recipe
from spark_jobs import evaluate, train_als
from spark_jobs.lib import ranking
from tests.test_model_spark import planted

pytestmark = pytest.mark.spark

EXPECTATIONS = str(Path(__file__).resolve().parent.parent / "expectations")


def write_list(path, rows):
    pq.write_table(pa.table({"user_id": pa.array([u for u, _ in rows], pa.string()),
                             "item_id": pa.array([i for _, i in rows], pa.string())}), path)
    return str(path)


def recs_of(spark, out):
    got = {}
    for r in spark.read.parquet(f"{out}/recommendations").collect():
        got.setdefault(r.user_id, []).append((r[S.RANK], r.item_id))
    return {u: [i for _, i in sorted(v)] for u, v in got.items()}


def artist(item_id: str, groups: int) -> int:
    return int(item_id[1:]) % groups


def test_the_artist_cap_and_the_do_not_recommend_list_shape_every_list_and_the_metrics(spark, tmp_path):
    # 4 artists of 10 tracks; each user played most of one artist's tracks and will play the rest.
    m, out = str(tmp_path / "matrix"), str(tmp_path / "model")
    planted(spark, m)
    train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=out, max_iter=6, checkpoint_dir=str(tmp_path / "ckpt"),
                                   recipe=Recipe(rank=8, reg=0.05, alpha=10.0), strength_as_built=True))
    played, holdout = spark.read.parquet(f"{m}/train"), spark.read.parquet(f"{m}/holdout")
    recs = ranking.model_recommendations(spark, ALSModel.load(f"{out}/model"), played, 5, True)
    assert ranking.ranking_metrics(recs, holdout, 3)["precision"] > 0.9
    uncapped = {}
    for r in recs.orderBy(S.RANK).collect():
        uncapped.setdefault(f"u{r.user_idx}", []).append(f"i{r.item_idx}")
    # Without the cap, a user's top-3 is its own artist's held-out tracks.
    assert sum(len({artist(i, 4) for i in v[:3]}) == 1 for v in uncapped.values()) >= 55

    dnr = write_list(tmp_path / "dnr.parquet", [(None, "i1"), ("u0", "i4"), ("nobody", "i8"), (None, "gone")])
    spec = EvaluateSpec(model_uri=out, matrix_uri=m, out_uri=str(tmp_path / "ruled"), k=3, top_n=5, max_per_artist=2,
                        do_not_recommend_path=dnr)
    ruled = evaluate.run(spark, spec)
    got = recs_of(spark, str(tmp_path / "ruled"))
    assert ruled.rules == {"max_per_artist": 2, "do_not_recommend": {"items_in_matrix": 1, "pairs_in_matrix": 1},
                           "users_short": 0}
    for user, items in got.items():
        assert len(items) == 5  # filled from further down: other artists
        assert max(sum(artist(i, 4) == a for i in items) for a in range(4)) <= 2, (user, items)
        assert "i1" not in items
        # The cap only removes what is over it: the first two of the user's own artist stay first.
        own = [i for i in uncapped[user] if artist(i, 4) == int(user[1:]) % 4 and i != "i1"][:2]
        assert items[:2] == own, (user, items, uncapped[user])
    assert "i4" not in got["u0"]
    # The metrics score these lists: at most 2 of the top-3 can be the user's own artist.
    assert ruled.model["precision"] <= 2 / 3 + 1e-9


def test_a_user_whose_candidates_run_out_gets_fewer_and_the_checks_know_why(spark, tmp_path):
    # 2 artists of 3 tracks; with one track per artist, no list can hold more than 2.
    m, out = str(tmp_path / "matrix"), str(tmp_path / "model")
    planted(spark, m, users=8, items=6, groups=2)
    train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=out, max_iter=3, checkpoint_dir=str(tmp_path / "ckpt"),
                                   recipe=Recipe(rank=4, reg=0.05, alpha=10.0), strength_as_built=True))
    result = evaluate.run(spark, EvaluateSpec(model_uri=out, matrix_uri=m, out_uri=out, k=3, top_n=5, max_per_artist=1,
                                              output_suite_dir=EXPECTATIONS))
    got = recs_of(spark, out)
    assert len(got) == 8 and all(len(v) == 2 and len({artist(i, 2) for i in v}) == 2 for v in got.values())
    assert result.rules["users_short"] == 8
    missing = [c for c in result.output_checks["checks"] if c.get("column") == "missing"]
    assert missing and all(c["success"] for c in missing)


def test_the_popularity_baseline_and_the_blocked_candidates_path_obey_the_rules(spark):
    # Items 0-5 by artist 0 are the most popular; 6-9 by artists 1 and 2.
    listeners = {i: list(range(10 - i)) for i in range(10)}
    train = spark.createDataFrame([(u, i) for i, us in listeners.items() for u in us], "user_idx int, item_idx int")
    groups = spark.createDataFrame([(i, 0 if i < 6 else 1 + i % 2) for i in range(10)], "item_idx int, group int")
    blocked = spark.createDataFrame([(6,)], "item_idx int")
    rules = ranking.Rules(2, groups, blocked, spark.createDataFrame([(20, 7)], "user_idx int, item_idx int"))
    users = spark.createDataFrame([(u,) for u in (0, 9, 20)], "user_idx int")
    got = {}
    for r in ranking.popularity_top_k(train, users, 4, 10, rules).collect():
        got.setdefault(r.user_idx, []).append((r[S.RANK], r.item_idx))
    lists = {u: [i for _, i in sorted(v)] for u, v in got.items()}
    # Artist 0's 2 most popular (0, 1) are in the list; 6 is blocked; user 20 may not get 7; user 9
    # played item 0, so artist 0's next one (2) is its; user 0 played every item.
    assert lists == {9: [1, 2, 7, 8], 20: [0, 1, 8, 9]}

    # MLlib's candidates path (factors too large to broadcast) applies the same rules to its candidates.
    cands = spark.createDataFrame([(20, i, float(10 - i)) for i in range(10)], "user_idx int, item_idx int, score float")
    ranked = ranking.rank_excluding(cands, train.filter(F.col(S.USER_IDX) != 20), 4, rules).orderBy(S.RANK).collect()
    assert [r.item_idx for r in ranked] == [0, 1, 8, 9]
