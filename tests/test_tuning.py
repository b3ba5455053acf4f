"""The search's rules and the gate's interval, with answers known in advance (no Spark)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from music_recs import tuning
from music_recs.jobs import TuneSpec
from music_recs.params import RunParams
from music_recs.quality_gate import decide, paired_bootstrap

BASE = {"alpha": 40.0, "confidence_function": "log", "epsilon": 1.0, "reg": 0.1, "reg_scaling": "per_rating",
        "rank": 32}


def test_candidates_start_with_the_run_s_own_params_are_distinct_and_repeatable():
    pool = tuning.candidates(BASE, set(), 12, seed=7)
    assert pool[0] == BASE and len(pool) == 12
    assert len({tuple(sorted(map(str, c.items()))) for c in pool}) == 12
    assert pool == tuning.candidates(BASE, set(), 12, seed=7)
    assert pool != tuning.candidates(BASE, set(), 12, seed=8)
    for c in pool:
        assert c["alpha"] in (*tuning.SEARCH_SPACE["alpha"], BASE["alpha"])
        if c["confidence_function"] == "linear":  # epsilon means nothing there: kept as the base's
            assert c["epsilon"] == BASE["epsilon"]


def test_values_from_the_trigger_form_are_never_varied():
    pool = tuning.candidates(BASE, {"rank", "alpha"}, 20, seed=1)
    assert {c["rank"] for c in pool} == {32} and {c["alpha"] for c in pool} == {40.0}
    assert len({c["reg"] for c in pool}) > 1


def test_a_space_smaller_than_the_budget_gives_every_point_once():
    space = {"alpha": (1.0,), "confidence_function": ("log",), "epsilon": (1.0,), "reg": (0.1, 1.0),
             "reg_scaling": ("per_rating",), "rank": (32,)}
    pool = tuning.candidates(BASE, set(), 50, space=space)
    # the base (alpha 40) and the grid's 2 x 2 (alpha 1 or 40, reg 0.1 or 1)
    assert len(pool) == 4 and pool[0] == BASE


def test_successive_halving_keeps_the_best_third_and_the_top_rung_decides():
    def t(n, rung, metric):
        return tuning.Trial(n, rung, {"n": n}, 3, metric, 10, 1.0)

    rung0 = [t(i, 0, m) for i, m in enumerate([0.1, 0.5, 0.3, 0.5, 0.2, 0.0])]
    assert [s.trial for s in tuning.survivors(rung0)] == [1, 3]  # ties: the earlier trial first
    # the best of rung 0 (trial 1) lost at full iterations to trial 3: the top rung decides
    trials = rung0 + [t(1, 1, 0.40), t(3, 1, 0.45)]
    assert tuning.winner(trials).trial == 3
    assert tuning.rung_iterations(10) == (4, 10) and tuning.rung_iterations(1) == (1, 1)


def test_tune_spec_refuses_what_it_cannot_search():
    with pytest.raises(ValueError, match="not searched: iterations"):
        TuneSpec(fixed=("iterations",))
    with pytest.raises(ValueError, match="unknown tuning metric"):
        TuneSpec(metric="auc")
    assert TuneSpec.from_dict({"fixed": ["rank"], "space": {"reg": [1.0]}}).fixed == ("rank",)


def test_the_interval_of_a_constant_difference_is_that_difference():
    rng = np.random.default_rng(0)
    baseline = rng.random(80)
    lift = paired_bootstrap(baseline + 0.05, baseline, resamples=500)
    low, high = lift["difference_interval"]
    assert lift["users"] == 80 and lift["difference"] == pytest.approx(0.05)
    assert low == pytest.approx(0.05) and high == pytest.approx(0.05)
    assert lift["relative_interval"][0] < lift["relative"] < lift["relative_interval"][1]


def test_the_interval_covers_a_known_difference_at_its_level_and_narrows_with_users():
    # Paired scores whose true mean difference is 0.1: the 95 % interval holds it in about 95 %
    # of samples, and its width is about 2 * 1.96 * sd / sqrt(n).
    rng = np.random.default_rng(1)
    covered, widths = 0, []
    for _ in range(100):
        b = rng.random(400)
        c = b + rng.normal(0.1, 0.3, 400)
        lift = paired_bootstrap(c, b, resamples=400, seed=int(rng.integers(1 << 30)))
        low, high = lift["difference_interval"]
        covered += low <= 0.1 <= high
        widths.append(high - low)
    assert 88 <= covered <= 100
    assert np.median(widths) == pytest.approx(2 * 1.96 * 0.3 / 20, rel=0.15)
    small = paired_bootstrap(c[:25], b[:25], resamples=400)
    assert np.diff(small["difference_interval"])[0] > 3 * np.median(widths)


def test_the_gate_asks_the_lower_end_of_the_lift_to_clear_the_margin():
    rng = np.random.default_rng(7)
    b = rng.random(30) * 0.2
    noisy = paired_bootstrap(b * 1.2 + rng.normal(0, 0.15, 30), b)  # +19 % here, 30 users: noise
    assert noisy["relative_interval"][0] < 0 < noisy["relative"]
    refused = decide("map", {"map": noisy["candidate"]}, {"map": noisy["baseline"]}, None, lift=noisy)
    assert not refused.passed and "lower end of the lift's 95% interval" in refused.reasons[0]
    assert "interval [" in refused.message() and "over 30 users" in refused.message()
    b = rng.random(3000) * 0.2
    clear = paired_bootstrap(b * 1.2 + rng.normal(0, 0.02, 3000), b)
    assert clear["relative_interval"][0] > 0.1
    assert decide("map", {"map": clear["candidate"]}, {"map": clear["baseline"]}, None, lift=clear).passed
    assert not decide("map", {"map": clear["candidate"]}, {"map": clear["baseline"]}, None, min_lift=0.5,
                      lift=clear).passed


# --- where a run's training values come from (the Airflow side, no Spark) ----------------------
def _plan(tmp_path, conf: dict, day="2026-11-20"):
    from music_recs.settings import DeploymentSettings
    from music_recs_airflow import tasks

    cfg = DeploymentSettings(raw_bucket="raw", models_bucket="models", lake_uri=str(tmp_path / "lake"))
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
    return tasks.plan_run(conf, start, "manual__t", cfg)


def test_trigger_values_win_and_the_rest_is_searched(tmp_path):
    from music_recs_airflow.model_history import ModelHistory
    from music_recs_airflow.tasks import choose_recipe

    plan = _plan(tmp_path, {"rank": 8, "tune": "always"})
    chosen, search, context = choose_recipe(plan, ModelHistory(None, "m", "music_recs", "latest.json", plan.day))
    assert search.fixed == ("rank",) and chosen.recipe.rank == 8 and chosen.sources["rank"] == "trigger"
    assert search.metric == "map" and search.trials == RunParams().tune_trials and chosen.sources["alpha"] == "default"
    assert dict(context.fixed) == {"rank": 8}


def test_a_run_that_cannot_tune_says_so_in_plan_run(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=r"holdout_days \(1\) \+ validation_days \(1\) must be smaller"):
        _plan(tmp_path, {"window_days": 2})
    assert _plan(tmp_path, {"window_days": 2, "tune": "off"}).params.window_days == 2


def test_the_gate_refuses_only_a_confident_collapse_against_the_published_model():
    rng = np.random.default_rng(3)
    published = rng.random(2000) * 0.2
    lift = paired_bootstrap(published * 1.5, published * 0.5)  # far above popularity

    def gate(candidate):
        change = paired_bootstrap(candidate, published)
        return decide("map", {"map": candidate.mean()}, {"map": (published * 0.5).mean()},
                      {"map": published.mean()}, max_drop=0.2, lift=lift, published_lift=change), change

    collapsed, change = gate(published * 0.6)  # 40 % below, on the same users
    assert change["relative_interval"][1] < -0.2 and not collapsed.passed
    assert "against the published model on the same held-out users" in collapsed.reasons[0]
    few = np.r_[published[:20] * 0.75]  # 25 % below on 20 users: not confidently beyond 20 %
    noisy = decide("map", {"map": few.mean()}, {"map": 0.0}, {"map": published[:20].mean()}, max_drop=0.2,
                   published_lift=paired_bootstrap(few + rng.normal(0, 0.05, 20), published[:20]))
    assert noisy.passed, noisy.reasons
    same, _ = gate(published * 1.01)
    assert same.passed
