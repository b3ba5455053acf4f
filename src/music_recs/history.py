"""The model's history: which published model a run may use, and for what.

A run of day D holds out its last ``holdout_days`` days (``[D - holdout_days + 1, D]``) and is
judged on them. A published model trained on any of those days has seen the answers: compared
with it, a healthy model looks like a collapse; started from it, the run's own evaluation is
flattered. So every use of an earlier model obeys one rule (``seen_held_out``): its training
days all end before this run's first held-out day. That matters on the paths besides the
scheduled one: a backfill of D while a later day is published, or a run with a larger
``holdout_days`` than the run that published the model.

Each decision is a pure function of typed inputs (``music_recs.manifest.Manifest``, the run's
``RunParams`` and day) and returns a ``Choice``: what was chosen (or None) and, in one line, why.

- ``comparison``: the published model the gate compares with (``change_over_published``);
- ``churn_reference``: the same model, for the churn band, only when its recipe and strategy
  are this run's and it is of an earlier day;
- ``warm_start``: the newest earlier model training may start from;
- ``reusable_search``: the newest earlier search whose whole context (``SearchContext``) is
  this run's, young enough for ``tune_max_age_days``;
- ``training_recipe``: the values training uses and where each came from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Generic, TypeVar

from music_recs.manifest import DEFAULT, TRIGGER, Manifest, SearchContext, SearchRecord, search_label
from music_recs.params import RunParams
from music_recs.recipe import FIELDS as RECIPE_FIELDS
from music_recs.recipe import Recipe

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Choice(Generic[T]):
    """What a decision chose (None: nothing) and why, in one line."""

    chosen: T | None
    why: str


def first_held_out_day(day: str, holdout_days: int) -> str:
    """The first of the run's held-out days (the window's last ``holdout_days``, ending at ``day``)."""
    return (dt.date.fromisoformat(day) - dt.timedelta(days=holdout_days - 1)).isoformat()


def seen_held_out(model: Manifest, day: str, holdout_days: int) -> str | None:
    """Why ``model`` may have been trained on this run's held-out days, or None when it was not."""
    first = first_held_out_day(day, holdout_days)
    if model.trained_through >= first:
        known = "was trained through" if model.last_train_day else "is of (training window unknown)"
        return (f"the model of dt={model.day} {known} dt={model.trained_through}, not before this run's "
                f"held-out days (from dt={first})")
    return None


def comparison(published: Manifest | None, day: str, params: RunParams) -> Choice[Manifest]:
    """The published model the gate may compare this run with: same granularity and k, and trained
    only on days before this run's held-out days."""
    if published is None:
        return Choice(None, "no model published")
    if published.granularity != params.granularity:
        return Choice(None, f"the published model (dt={published.day}) recommends {published.granularity}s, "
                            f"this run {params.granularity}s")
    if published.k is not None and published.k != params.k:
        return Choice(None, f"the published model (dt={published.day}) is scored at k={published.k}, this run at "
                            f"k={params.k}")
    leak = seen_held_out(published, day, params.holdout_days)
    if leak:
        return Choice(None, leak)
    return Choice(published, f"against the model of dt={published.day} (trained through dt={published.trained_through})")


def churn_reference(published: Manifest | None, day: str, params: RunParams, strategy: str,
                    recipe: Recipe) -> Choice[Manifest]:
    """Churn tells an unstable model from a healthy one only between models of the same recipe and
    strategy (a new search or strategy is meant to change the lists), of an earlier day (a rerun of
    the published day would look stale by construction), and comparable at all (``comparison``)."""
    compared = comparison(published, day, params)
    if compared.chosen is None:
        return compared
    model = compared.chosen
    if not model.day < day:
        return Choice(None, f"the published model is for dt={model.day}, not an earlier day")
    if model.strategy != strategy:
        return Choice(None, "the published model was trained with another strategy")
    if model.recipe != recipe:
        return Choice(None, "the published model was trained with other values")
    return Choice(model, f"against the model of dt={model.day}")


def warm_start(earlier: Iterable[Manifest], day: str, params: RunParams, rank: int | None) -> Choice[Manifest]:
    """The newest model of a day before this run's that training may start from: same granularity,
    not trained on this run's held-out days, and of ``rank`` (None: any, the job checks the rank it
    trains). ``earlier``: publications newest first. The reason names the newest one passed over."""
    why = f"no model published for a day before dt={day}"
    for number, model in enumerate(earlier):
        if not model.day < day:
            continue
        reason = (seen_held_out(model, day, params.holdout_days)
                  or (model.granularity != params.granularity
                      and f"the model of dt={model.day} recommends {model.granularity}s, this run {params.granularity}s")
                  or (rank is not None and model.recipe is not None and model.recipe.rank != rank
                      and f"the model of dt={model.day} has rank {model.recipe.rank}, this run trains rank {rank}")
                  or (model.recipe is None and f"the model of dt={model.day} has no readable recipe"))
        if not reason:
            return Choice(model, f"from the model of dt={model.day}" + (f" (passed over a newer one: {why})" if number else ""))
        if number == 0 or why.startswith("no model"):
            why = reason
    return Choice(None, why)


def reusable_search(earlier: Iterable[Manifest], day: str, params: RunParams,
                    context: SearchContext) -> Choice[SearchRecord]:
    """The newest search, recorded by a publication, that this run may reuse instead of searching:
    of a day before this run's and at most ``tune_max_age_days`` old, with exactly this run's
    context (the same fixed values, data window, support, k, metric, iterations, rules). A search
    of an earlier day with this run's window and holdout used only days before this run's
    held-out days."""
    why = f"no search of the same context in the last {params.tune_max_age_days} days"
    today = dt.date.fromisoformat(day)
    for model in earlier:
        search = model.search
        if search is None or search.context is None:
            continue
        age = (today - dt.date.fromisoformat(search.day)).days
        if not 0 < age <= params.tune_max_age_days:
            continue
        if search.context == context:
            return Choice(search, f"reused the search of dt={search.day} ({age} day(s) old)")
        why = f"the newest search (dt={search.day}) had another context"
    return Choice(None, why)


def search_context(params: RunParams, do_not_recommend_sha256: str | None) -> SearchContext:
    """This run's search context (``SearchContext``)."""
    return SearchContext(
        granularity=params.granularity, strategy=params.strategy, metric=params.primary_metric, k=params.k,
        validation_days=params.validation_days, window_days=params.window_days, holdout_days=params.holdout_days,
        min_user_items=params.min_user_items, min_item_users=params.min_item_users, max_iter=params.max_iter,
        half_life_days=float(params.half_life_days), skip_seconds=params.skip_seconds,
        max_per_artist=params.artist_cap, do_not_recommend_sha256=do_not_recommend_sha256,
        fixed=tuple(sorted(params.fixed_recipe.items())), tune_users=params.tune_users)


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """The values training starts with, where each came from, and whether the job searches.

    recipe: the values (with a search: the fixed ones and the defaults the search starts from);
    sources: per recipe field ``trigger``, ``default`` or ``tuning of dt=D``; search: True when the
    job searches the fields not fixed; reused: the search reused, if any.
    """

    recipe: Recipe
    sources: dict
    search: bool
    reused: SearchRecord | None = None
    why: str = ""

    @property
    def fixed(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, s in self.sources.items() if s == TRIGGER))


def training_recipe(params: RunParams, reusable: Choice[SearchRecord] | None) -> TrainingRecipe:
    """Fixed values always win; with ``tune=off`` the rest are the recipe's defaults; with ``if_stale`` a
    reusable search's choice fills exactly the fields it searched; otherwise (and with ``always``) the
    job searches every field not fixed. ``reusable``: ``reusable_search``'s answer (None: not asked)."""
    fixed = params.fixed_recipe
    sources = {name: TRIGGER if name in fixed else DEFAULT for name in RECIPE_FIELDS}
    if params.tune == "off":
        return TrainingRecipe(params.recipe, sources, False, why="tune=off")
    if len(fixed) == len(RECIPE_FIELDS):
        return TrainingRecipe(params.recipe, sources, False, why="every recipe field is fixed")
    found = reusable.chosen if reusable is not None and params.tune == "if_stale" else None
    if found is None:
        why = "tune=always" if params.tune == "always" else (reusable.why if reusable else "no search to reuse")
        return TrainingRecipe(params.recipe, sources, True, why=why)
    values = dict(fixed)
    for name in found.searched:
        if name not in fixed:
            values[name] = found.chosen[name]
            sources[name] = search_label(found.day)
    return TrainingRecipe(Recipe(**values), sources, False, reused=found, why=reusable.why)
