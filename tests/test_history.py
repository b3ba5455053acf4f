"""The model's history rules (``music_recs.history``) and the recipe a run trains with: pure
functions of typed manifests and params, no Airflow, Spark or S3."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from music_recs import history, params, recipe
from music_recs.manifest import Manifest, search_label
from music_recs.params import RunParams
from music_recs.recipe import Recipe

REPO = Path(__file__).resolve().parent.parent
DAY = "2026-11-20"
CHOSEN = {"alpha": 2.0, "confidence_function": "linear", "epsilon": 1.0, "reg": 1.0, "reg_scaling": "constant",
          "rank": 64}


def run(**values) -> RunParams:
    return RunParams.from_params(values)


def published(day: str, holdout_days: int = 1, rank: int = 32, granularity="track", strategy="cg", k=10,
              search_day: str | None = None, chosen=None, context=None, searched=None, window=True) -> Manifest:
    """A manifest as a run of ``day`` with ``holdout_days`` publishes it (its training ends before them)."""
    import datetime as dt

    last_train = (dt.date.fromisoformat(day) - dt.timedelta(days=holdout_days)).isoformat()
    trained = {**Recipe().as_dict(), "rank": rank}
    tuning = None
    if search_day:
        names = searched if searched is not None else recipe.FIELDS
        tuning = {"day": search_day, "chosen": chosen or CHOSEN,
                  "source": {n: search_label(search_day) if n in names else "trigger" for n in recipe.FIELDS}}
        if context is not None:
            tuning["context"] = context.as_dict()
    return Manifest.from_dict({
        "day": day, "run_id": f"r{day}", "prefix": f"s3://m/dt={day}/", "params": {"granularity": granularity},
        "data_window": {"last_train_day": last_train} if window else {},
        "training": {"strategy": strategy, "params": trained, "tuning": tuning},
        "metrics": {"k": k, "model": {"map": 0.2}}}, key=f"dt={day}/manifest.json")


# --- 2: never compared with, warm-started from or churn-checked against a model that saw the held-out days
def test_a_backfill_is_not_compared_with_a_later_model_and_says_why():
    later = published("2026-11-25")
    choice = history.comparison(later, DAY, run())
    assert choice.chosen is None
    assert choice.why == ("the model of dt=2026-11-25 was trained through dt=2026-11-24, not before this run's "
                          "held-out days (from dt=2026-11-20)")
    assert history.comparison(published("2026-11-19"), DAY, run()).chosen is not None
    # A rerun of the published day: that model's training ended before the day (holdout 1).
    assert history.comparison(published(DAY), DAY, run()).chosen is not None


def test_a_larger_holdout_than_the_published_run_s_rules_out_its_model():
    model = published("2026-11-19")  # trained through the 18th
    assert history.comparison(model, DAY, run(holdout_days=2)).chosen is not None  # held out: 19th, 20th
    refused = history.comparison(model, DAY, run(holdout_days=3))  # held out from the 18th: it trained on it
    assert refused.chosen is None and "from dt=2026-11-18" in refused.why
    assert history.warm_start([model], DAY, run(holdout_days=3), 32).chosen is None
    assert history.churn_reference(model, DAY, run(holdout_days=3), "cg", Recipe()).chosen is None


def test_a_manifest_without_its_window_counts_as_trained_through_its_day():
    old = published("2026-11-19", window=False)
    assert history.comparison(old, DAY, run()).chosen is not None
    assert "training window unknown" in history.comparison(old, DAY, run(holdout_days=2)).why


def test_comparison_needs_the_same_granularity_and_k():
    assert "recommends artists" in history.comparison(published("2026-11-19", granularity="artist"), DAY, run()).why
    assert "k=5" in history.comparison(published("2026-11-19", k=5), DAY, run()).why
    assert history.comparison(None, DAY, run()).why == "no model published"


def test_churn_only_against_an_earlier_model_of_the_same_recipe_and_strategy():
    model = published("2026-11-19")
    assert history.churn_reference(model, DAY, run(), "cg", Recipe()).chosen is model
    assert "another strategy" in history.churn_reference(model, DAY, run(), "mllib", Recipe()).why
    assert "other values" in history.churn_reference(model, DAY, run(), "cg", Recipe(rank=16)).why
    assert "not an earlier day" in history.churn_reference(published(DAY), DAY, run(), "cg", Recipe()).why


def test_warm_start_takes_the_newest_usable_earlier_model_and_names_the_one_passed_over():
    models = [published("2026-11-21"), published(DAY), published("2026-11-19", rank=16), published("2026-11-18")]
    choice = history.warm_start(models, DAY, run(), 32)
    assert choice.chosen.day == "2026-11-18"
    assert "the model of dt=2026-11-19 has rank 16, this run trains rank 32" in choice.why
    assert history.warm_start(models, DAY, run(), None).chosen.day == "2026-11-19"  # the search may pick 16
    assert history.warm_start([], DAY, run(), 32).why == "no model published for a day before dt=2026-11-20"


# --- 3: a reused search carries only searched values, and only with the whole context equal
def test_a_search_is_reused_only_with_the_same_context_and_age():
    p = run()
    context = history.search_context(p, None)
    young = published("2026-11-18", search_day="2026-11-18", context=context)
    choice = history.reusable_search([young], DAY, p, context)
    assert choice.chosen.day == "2026-11-18" and choice.why == "reused the search of dt=2026-11-18 (2 day(s) old)"
    for changed in ({"k": 5}, {"validation_days": 2}, {"window_days": 30}, {"holdout_days": 2},
                    {"min_user_items": 3}, {"min_item_users": 3}, {"max_iter": 5}, {"max_per_artist": 0},
                    {"primary_metric": "ndcg"}, {"granularity": "artist"}, {"strategy": "mllib"},
                    {"half_life_days": 7.0}, {"rank": 16}, {"tune_users": 1000}):
        other = run(**changed)
        assert history.reusable_search([young], DAY, other, history.search_context(other, None)).chosen is None, changed
    listed = history.search_context(p, "abc")  # another do-not-recommend list
    assert history.reusable_search([young], DAY, p, listed).chosen is None
    for day in ("2026-11-12", DAY, "2026-11-21"):  # too old; the same day; a later day (a backfill)
        assert history.reusable_search([published(day, search_day=day, context=context)], DAY, p, context).chosen is None
    # A manifest of an earlier version (no context) is never reused.
    assert history.reusable_search([published("2026-11-18", search_day="2026-11-18")], DAY, p, context).chosen is None


def test_values_fixed_by_an_earlier_trigger_are_not_carried_by_a_reused_search():
    # Day D fixed rank 16 in the form and searched the rest; the next scheduled run fixes nothing.
    fixed_run = run(rank=16)
    record = published("2026-11-18", rank=16, search_day="2026-11-18", searched=set(recipe.FIELDS) - {"rank"},
                       chosen={**CHOSEN, "rank": 16}, context=history.search_context(fixed_run, None))
    scheduled = run()
    reusable = history.reusable_search([record], DAY, scheduled, history.search_context(scheduled, None))
    chosen = history.training_recipe(scheduled, reusable)
    assert reusable.chosen is None and chosen.search and chosen.recipe.rank == Recipe().rank
    # The same form values again: the search is reused, rank stays the trigger's, the rest labelled by its day.
    again = history.training_recipe(fixed_run, history.reusable_search(
        [record], DAY, fixed_run, history.search_context(fixed_run, None)))
    assert not again.search and again.recipe == Recipe(**{**CHOSEN, "rank": 16})
    assert again.sources["rank"] == "trigger" and again.sources["alpha"] == "tuning of dt=2026-11-18"


# --- 1: the form sends every field; only the filled ones are fixed
def test_a_run_from_the_form_with_nothing_changed_searches_like_a_scheduled_one():
    form = {name: params.DEFAULTS[name] for name in params.FIELDS}  # what the trigger form sends
    from_form, scheduled = RunParams.from_params(form), RunParams.from_params({})
    assert from_form == scheduled and from_form.fixed_recipe == {}
    chosen = history.training_recipe(from_form, None)
    assert chosen.search and set(chosen.sources.values()) == {"default"} and chosen.fixed == ()
    changed = RunParams.from_params({**form, "rank": 16, "reg_scaling": "constant"})
    chosen = history.training_recipe(changed, None)
    assert chosen.fixed == ("rank", "reg_scaling") and chosen.sources["rank"] == "trigger"
    assert chosen.recipe.rank == 16 and chosen.recipe.reg_scaling == recipe.RegScaling.CONSTANT
    off = history.training_recipe(RunParams.from_params({**form, "tune": "off"}), None)
    assert not off.search and off.recipe == Recipe() and set(off.sources.values()) == {"default"}


def test_every_recipe_field_is_declared_once_and_travels_under_its_own_name():
    """Each recipe default is written once (music_recs.recipe); every other declaration of a recipe
    field in the code agrees with it: the form (empty = search), the confidence params, the search
    space, the training spec and the manifest."""
    from music_recs.confidence import ConfidenceParams
    from music_recs.jobs import TrainSpec
    from music_recs.tuning import SEARCH_SPACE

    defaults = Recipe()
    assert set(SEARCH_SPACE) == set(recipe.FIELDS)
    assert all(params.DEFAULTS[n] is None for n in recipe.FIELDS)  # the form: empty, never a second default
    conf = ConfidenceParams()
    assert (conf.confidence_function, conf.alpha, conf.epsilon) == (
        defaults.confidence_function, defaults.alpha, defaults.epsilon)
    spec = {f.name: f.default for f in dataclasses.fields(TrainSpec)}
    assert spec["recipe"] == defaults and not set(spec) & set(recipe.FIELDS)  # one typed field, no copies
    sent = TrainSpec.from_json(TrainSpec(matrix_uri="m", out_uri="o", recipe=Recipe(rank=8)).to_json())
    assert sent.recipe == Recipe(rank=8) and sent.recipe.reg_scaling is recipe.RegScaling.PER_RATING
    # No other literal default of a recipe field anywhere in the code: every `name: T = <literal>`
    # or `name=<literal>` keyword default outside music_recs.recipe must equal the recipe's.
    found = []
    for path in [*REPO.glob("src/music_recs/*.py"), *REPO.glob("plugins/music_recs_airflow/*.py"),
                 *REPO.glob("spark_jobs/**/*.py"), *REPO.glob("dags/*.py")]:
        if path.name == "recipe.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and node.target.id in recipe.FIELDS and isinstance(node.value, ast.Constant)
                    and node.value.value is not None):
                found.append((path.name, node.target.id, node.value.value))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                values = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
                values += list(node.args.kw_defaults)
                for arg, value in zip(args, values):
                    if arg.arg in recipe.FIELDS and isinstance(value, ast.Constant) and value.value is not None:
                        found.append((path.name, arg.arg, value.value))
    disagree = [(f, n, v) for f, n, v in found if v != recipe.DEFAULTS[n]]
    assert not disagree, disagree


def test_a_recipe_refuses_what_no_search_could_choose():
    with pytest.raises(ValueError, match="rank must be an integer"):
        Recipe(rank=100000)
    with pytest.raises(ValueError, match="reg must be a number"):
        Recipe(reg=float("nan"))
    with pytest.raises(ValueError, match="reg_scaling must be one of"):
        Recipe(reg_scaling="sometimes")
    with pytest.raises(ValueError, match="missing"):
        Recipe.from_dict({"rank": 8})
    assert Recipe.from_dict(Recipe(rank=8).as_dict()) == Recipe(rank=8)
