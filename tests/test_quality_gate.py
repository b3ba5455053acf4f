import pytest

from music_recs.quality_gate import decide

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
