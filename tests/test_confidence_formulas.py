import math

import pytest

from music_recs.confidence import ConfidenceParams, confidence, decay_weight, strength


def test_linear_confidence_is_one_plus_alpha_r():
    p = ConfidenceParams(confidence_function="linear", alpha=40.0)
    assert confidence(0, p) == 1.0
    assert confidence(3, p) == 121.0


def test_log_confidence_follows_hu_koren_volinsky():
    p = ConfidenceParams(confidence_function="log", alpha=2.0, epsilon=0.5)
    assert strength(1, p) == pytest.approx(math.log(3.0))
    assert confidence(1, p) == pytest.approx(1 + 2 * math.log(3.0))


def test_decay_halves_each_half_life():
    assert decay_weight(0, 7) == 1.0
    assert decay_weight(7, 7) == pytest.approx(0.5)
    assert decay_weight(14, 7) == pytest.approx(0.25)
    assert decay_weight(30, 0) == 1.0


@pytest.mark.parametrize("kwargs", [{"confidence_function": "sqrt"}, {"alpha": 0}, {"epsilon": -1}, {"half_life_days": -1},
                                    {"skip_ms": -5}])
def test_bad_confidence_params_raise(kwargs):
    with pytest.raises(ValueError):
        ConfidenceParams(**kwargs)
