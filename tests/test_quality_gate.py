import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from music_recs.quality_gate import decide, paired_bootstrap

BASE = {"map": 0.10, "precision": 0.05}


def test_passes_when_beating_popularity_and_close_to_published():
    d = decide("map", {"map": 0.20}, BASE, {"map": 0.22}, min_lift=0.05, max_drop=0.2)
    assert d.passed and d.publish and not d.overridden and d.reasons == ()
    assert "passed" in d.message()


def test_fails_when_not_beating_popularity_by_the_margin():
    d = decide("map", {"map": 0.104}, BASE, None, min_lift=0.05)
    assert not d.passed and not d.publish
    assert "beat popularity by 5%" in d.message() and "0.1040" in d.message()


def test_fails_when_collapsing_against_the_published_model():
    d = decide("map", {"map": 0.15}, BASE, {"map": 0.30}, max_drop=0.2)
    assert not d.publish and "below the published model" in d.message()
    assert "0.3000" in d.message()


def test_override_publishes_and_is_recorded():
    d = decide("map", {"map": 0.01}, BASE, None, override=True)
    assert not d.passed and d.overridden and d.publish
    assert d.as_dict()["overridden"] is True and d.as_dict()["reasons"]


def test_override_is_not_recorded_when_the_gate_passes():
    assert not decide("map", {"map": 0.5}, BASE, None, override=True).overridden


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(ValueError, match="no 'ndcg'"):
        decide("ndcg", {"map": 0.5}, BASE, None)


# --- sample size and a baseline that scores 0 ----------------------------------------------------
NAN_OR_INF = re.compile(r"(?i)\b(nan|inf)\b")


def _judge(model, popularity, **kw):
    """The gate on per-user scores, as the quality gate task calls it."""
    lift = paired_bootstrap(model, popularity)
    return decide("map", {"map": float(np.mean(model))}, {"map": float(np.mean(popularity))}, None, lift=lift, **kw)


def _readable(decision):
    """The message and the manifest's record carry no NaN or infinity (strict JSON)."""
    assert not NAN_OR_INF.search(decision.message()), decision.message()
    json.dumps(decision.as_dict(), allow_nan=False)


def test_one_user_is_too_few_to_judge_though_its_interval_is_a_point():
    d = _judge([0.3], [0.1])
    assert d.lift["relative_interval"] == pytest.approx([2.0, 2.0])  # a point: no sampling error to see
    assert not d.passed and not d.publish
    assert d.reasons == ("too few users to judge: 1 evaluated, at least 30 needed",)
    assert d.as_dict()["users"] == 1 and d.as_dict()["min_users"] == 30


def test_the_minimum_number_of_users_is_judged_and_one_fewer_is_not():
    popularity = np.linspace(0.05, 0.15, 30)
    at = _judge(popularity + 0.1, popularity)  # +0.1 for every user: the interval is exactly the difference
    assert at.passed and at.users == 30, at.reasons
    below = _judge(popularity[:29] + 0.1, popularity[:29])
    assert not below.passed and below.reasons == ("too few users to judge: 29 evaluated, at least 30 needed",)
    assert _judge(popularity[:29] + 0.1, popularity[:29], min_users=29).passed


def test_without_a_bootstrap_the_metrics_count_of_users_is_used():
    d = decide("map", {"map": 0.2, "users_evaluated": 12}, {"map": 0.1}, None, min_users=20)
    assert not d.passed and d.reasons == ("too few users to judge: 12 evaluated, at least 20 needed",)


def test_override_below_the_minimum_publishes_and_is_recorded():
    d = _judge([0.3, 0.2, 0.4, 0.1, 0.5], [0.1] * 5, override=True)
    assert not d.passed and d.overridden and d.publish
    assert d.as_dict()["reasons"] == ["too few users to judge: 5 evaluated, at least 30 needed"]
    assert "failed but overridden" in d.message()


def test_a_better_model_than_a_popularity_scoring_zero_passes_on_the_difference():
    model = np.tile([0.1, 0.3], 20)  # 40 users, mean 0.2; popularity finds nothing for anyone
    d = _judge(model, np.zeros(40))
    assert d.passed and d.publish, d.reasons
    assert d.lift["relative"] is None and d.lift["relative_interval"] is None
    assert d.lift["zero_baseline_resamples"] == 1000
    low, high = d.lift["difference_interval"]
    assert 0.1 <= low < 0.2 < high <= 0.3 and d.lift["difference"] == pytest.approx(0.2)
    assert "lift unbounded" in d.message() and "judged on the difference +0.2000" in d.message()
    _readable(d)


def test_a_model_scoring_zero_like_popularity_fails_with_a_clear_reason():
    d = _judge(np.zeros(40), np.zeros(40))
    assert not d.passed
    assert d.reasons == ("the lower end of the difference's 95% interval (+0.0000) must be above 0 (popularity "
                         "scores 0 for every user, so the difference is judged; 40 users evaluated)",)
    assert "(no lift: popularity scores 0 for every user; judged on the difference +0.0000" in d.message()
    _readable(d)


def test_a_popularity_scoring_zero_in_some_resamples_leaves_the_upper_end_unbounded():
    # Popularity finds the one held-out item of 1 user in 40: a resample misses that user with
    # probability (39/40)^40 = 0.36, and its lift is then unbounded. The lower end is the lift of
    # the resamples that draw that user 3 times (97.5 % draw it at most 3 times): 0.1 / (3/40) - 1.
    popularity = np.zeros(40)
    popularity[0] = 1.0
    d = _judge(np.full(40, 0.1), popularity)
    assert d.lift["relative"] == pytest.approx(3.0)
    assert d.lift["relative_interval"] == [pytest.approx(1 / 3), None]
    assert 300 < d.lift["zero_baseline_resamples"] < 430
    assert d.passed and "(lift +300.0%, 95% interval [+33.3%, unbounded] over 40 users; popularity scores 0 in" \
        in d.message()
    _readable(d)
    strict = _judge(np.full(40, 0.1), popularity, min_lift=2.0)  # the margin still counts
    assert strict.reasons == ("the lower end of the lift's 95% interval (+33.3%) must be above +200% "
                              "(40 users evaluated)",)
    _readable(strict)


def test_the_change_against_a_published_model_scoring_zero_is_defined():
    model = np.tile([0.1, 0.3], 20)
    lift = paired_bootstrap(model, model / 2)
    some = np.zeros(40)
    some[0] = 1.0  # the published model finds 1 user's item: unbounded where a resample misses it
    change = paired_bootstrap(model, some)
    assert change["relative"] == pytest.approx(7.0) and change["relative_interval"][1] is None
    none = paired_bootstrap(model, np.zeros(40))
    assert none["relative"] is None and none["relative_interval"] is None
    for published, scores in ((0.025, change), (0.0, none)):
        d = decide("map", {"map": 0.2}, {"map": 0.1}, {"map": published}, lift=lift, published_lift=scores)
        assert d.passed, d.reasons
        json.dumps(scores, allow_nan=False)  # the manifest's change_over_published
        _readable(d)
    # A collapse: the new model finds nothing where the published one found 6 users' items. The
    # resample that misses those 6 (0 against 0) is no change; the rest are -100 %.
    found = np.zeros(40)
    found[:6] = 1.0
    collapsed = paired_bootstrap(np.zeros(40), found)
    assert collapsed["zero_baseline_resamples"] == 1 and collapsed["relative_interval"] == [-1.0, -1.0]
    d = decide("map", {"map": 0.0}, {"map": 0.0}, {"map": 0.15}, published_lift=collapsed, min_users=1)
    assert d.reasons == ("needs > 0.0000 to beat popularity by 0%", "-100.0% against the published model on the "
                         "same held-out users (interval up to -100.0%), a collapse of more than 20%")


def test_non_finite_scores_are_refused_rather_than_judged():
    with pytest.raises(ValueError, match="NaN or infinite"):
        paired_bootstrap([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="the candidate map is nan"):
        decide("map", {"map": float("nan")}, BASE, None)


scores = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), max_size=60)


@settings(max_examples=300)
@given(scores, st.integers(1, 40), st.floats(0, 2), st.floats(0, 1), st.booleans())
def test_any_scores_give_finite_numbers_and_a_readable_message(rows, min_users, min_lift, max_drop, override):
    model, popularity, published = (np.array(v, dtype=float) for v in zip(*rows)) if rows else (np.zeros(0),) * 3
    lift, change = paired_bootstrap(model, popularity, resamples=200), paired_bootstrap(model, published, 200)
    mean = (lambda v: float(v.mean()) if len(v) else 0.0)
    d = decide("map", {"map": mean(model)}, {"map": mean(popularity)}, {"map": mean(published)}, min_lift, max_drop,
               override, lift, change, min_users=min_users)
    _readable(d)
    json.dumps(change, allow_nan=False)
    assert len(d.message()) < 1000
    assert not d.passed or len(rows) >= min_users
    assert d.publish == (d.passed or override)
