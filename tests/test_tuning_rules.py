"""The search's driver-side lists obey the recommendation rules (``als_local.LocalRules``), with
answers worked out by hand (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from music_recs.jobs import TrainSpec, TuneSpec
from spark_jobs.lib import als_local

# Users 10, 20 and 30 (global ids), items 100..107. Rank 1: every user ranks the items the same
# way, item 100 first, 107 last. Items 100-105 are by one artist (group 0), 106 and 107 by two others.
ITEMS = np.arange(100, 108)
X = np.array([[1.0], [1.0], [1.0]], np.float32)
Y = np.array([[8.0], [7.0], [6.0], [5.0], [4.0], [3.0], [2.0], [1.0]], np.float32)
GROUPS = np.array([0, 0, 0, 0, 0, 0, 1, 2])


def matrix() -> als_local.LocalMatrix:
    # User 10 played item 101, user 20 item 100, user 30 every item (so that each has a position).
    users, items = np.array([10, 20, *[30] * 8]), np.array([101, 100, *ITEMS])
    return als_local.LocalMatrix.from_pairs(users, items, np.ones(len(users), np.float32))


def test_the_cap_fills_the_list_from_further_down_the_ranking():
    m = matrix()
    assert als_local.recommend(m, X, Y, [10, 20], 4) == {10: [100, 102, 103, 104], 20: [101, 102, 103, 104]}
    capped = als_local.recommend(m, X, Y, [10, 20], 4, als_local.LocalRules(cap=2, groups=GROUPS))
    # At most 2 of the artist's tracks, the best unplayed ones; then the next artists'.
    assert capped == {10: [100, 102, 106, 107], 20: [101, 102, 106, 107]}
    # With a cap of 1 the candidates run out: a shorter list, never a third track of the artist.
    assert als_local.recommend(m, X, Y, [10], 4, als_local.LocalRules(cap=1, groups=GROUPS)) == {10: [100, 106, 107]}


def test_listed_items_never_enter_a_list_and_never_count_as_hits():
    m = matrix()
    blocked = np.isin(ITEMS, [102])  # for everyone
    rules = als_local.LocalRules(blocked=blocked, user_blocked={0: np.array([0])})  # user 10 (row 0), item 100
    assert als_local.recommend(m, X, Y, [10, 20], 2, rules) == {10: [103, 104], 20: [101, 103]}
    # User 10 went on to play 100 and 102, both listed: no hit under the rules, two without them.
    truth = {10: {100, 102}}
    assert als_local.score(m, X, Y, truth, 2)["precision"] == 1.0
    assert als_local.score(m, X, Y, truth, 2, rules)["precision"] == 0.0


def test_the_cap_changes_the_metric_the_search_reads():
    # User 10 played 101 and will play 102, 103 (the artist's) and 107 (another artist).
    m, truth = matrix(), {10: {102, 103, 107}}
    free = als_local.score(m, X, Y, truth, 3)
    capped = als_local.score(m, X, Y, truth, 3, als_local.LocalRules(cap=1, groups=GROUPS))
    # Free: [100, 102, 103], hits at 2 and 3. Capped: [100, 106, 107], a hit at 3.
    assert free["precision"] == pytest.approx(2 / 3) and capped["precision"] == pytest.approx(1 / 3)
    assert free["map"] == pytest.approx((1 / 2 + 2 / 3) / 3) and capped["map"] == pytest.approx((1 / 3) / 3)


def test_the_tuning_spec_carries_the_rules_and_refuses_bad_ones():
    tune = TuneSpec(max_per_artist=2, do_not_recommend_path="/runs/r1/rules/do_not_recommend.parquet")
    assert TuneSpec.from_json(tune.to_json()) == tune
    assert (TuneSpec().max_per_artist, TuneSpec().do_not_recommend_path) == (0, None)
    for bad in ({"max_per_artist": -1}, {"max_per_artist": 1.5}, {"max_per_artist": True},
                {"do_not_recommend_path": ""}, {"do_not_recommend_path": 3}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TuneSpec(**bad)
        with pytest.raises(ValueError, match=next(iter(bad))):  # the training spec checks its search
            TrainSpec(matrix_uri="m", out_uri="o", tune={**TuneSpec().to_dict(), **bad}, strength_as_built=True)
