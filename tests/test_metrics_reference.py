import math

import pytest

from music_recs.metrics import mean_metrics, user_metrics


def test_hand_computed_user_metrics():
    # relevant: a, c; recs: a b c d; k=3 -> hits at 1 and 3
    m = user_metrics(["a", "b", "c", "d"], {"a", "c"}, k=3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg"] == pytest.approx(dcg / idcg)


def test_perfect_and_empty_lists():
    assert user_metrics(["a", "b"], {"a", "b"}, k=2) == {"precision": 1.0, "recall": 1.0, "map": 1.0, "ndcg": 1.0}
    assert user_metrics([], {"a"}, k=5) == {"precision": 0.0, "recall": 0.0, "map": 0.0, "ndcg": 0.0}


def test_mean_skips_users_without_holdout_and_scores_missing_recs_zero():
    recs = {1: ["x"], 2: ["y"]}
    relevant = {1: ["x"], 2: [], 3: ["z"]}
    m = mean_metrics(recs, relevant, k=1)
    assert m["precision"] == pytest.approx(0.5)  # user 1 hit, user 3 had no recs, user 2 not evaluated
