"""A publication's manifest, read and written here only.

``build`` assembles the manifest a run publishes (``publish.publish`` adds where it went and the
objects' checksums); ``Manifest.from_dict`` reads one back, from this version or an earlier one,
into the typed view the decisions need (``music_recs.history``). Manifests of earlier versions
lack some fields (the search's context, the training window's last day); the view says so with
``None`` and the history rules treat a missing field as "cannot be shown safe".

The search record (``training.tuning``) names each recipe field's source: ``trigger`` (fixed
by the run), ``default`` (the recipe's default, ``tune=off``) or ``tuning of dt=D`` (the
search of day D, run now or reused), and, since this version, the search's ``context``
(``SearchContext``): what must match for another run to reuse its choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from music_recs.recipe import Recipe

TRIGGER, DEFAULT = "trigger", "default"
SEARCH_LABEL = "tuning of dt="


def search_label(day: str) -> str:
    """The source of a value chosen by the search of ``day``."""
    return f"{SEARCH_LABEL}{day}"


@dataclasses.dataclass(frozen=True)
class SearchContext:
    """Everything a search's choice depends on besides the data's days: another run may reuse the
    choice only when its context is equal (``music_recs.history.reusable_search``).

    fixed: the recipe fields the search did not vary, with their values (sorted pairs).
    rules: the artist cap and the do-not-recommend list's checksum (trials are scored under them).
    """

    granularity: str
    strategy: str
    metric: str
    k: int
    validation_days: int
    window_days: int
    holdout_days: int
    min_user_items: int
    min_item_users: int
    max_iter: int
    half_life_days: float
    skip_seconds: int
    max_per_artist: int
    do_not_recommend_sha256: str | None
    fixed: tuple[tuple[str, object], ...]
    tune_users: int = 0  # the search's user sample (0: every user, as in manifests before it existed)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "fixed": {name: value for name, value in self.fixed}}

    @classmethod
    def from_dict(cls, values: Mapping) -> SearchContext:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {"tune_users": 0, **values}
        if set(values) != names:
            raise ValueError(f"a search context has the fields {sorted(names)}, got {sorted(values)}")
        fixed = values["fixed"]
        return cls(**{**values, "half_life_days": float(values["half_life_days"]),
                      "fixed": tuple(sorted((n, fixed[n]) for n in fixed))})


@dataclasses.dataclass(frozen=True)
class SearchRecord:
    """A manifest's search: the day it ran for, its choice and its context (None in older manifests)."""

    day: str
    chosen: dict
    searched: tuple[str, ...]
    context: SearchContext | None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The typed view of one published manifest.

    day: the run's logical day; last_train_day: the last day the model was trained on (None in
    manifests that lack the window: then only ``day`` bounds it); recipe: what it was trained with
    (None when unreadable); search: the search whose choice it used (run or reused), if any.
    """

    key: str
    day: str
    run_id: str
    prefix: str
    granularity: str | None
    strategy: str | None
    k: int | None
    last_train_day: str | None
    recipe: Recipe | None
    search: SearchRecord | None
    metrics: dict
    objects: tuple[dict, ...]
    raw: dict = dataclasses.field(repr=False, compare=False, default_factory=dict)

    @property
    def trained_through(self) -> str:
        """The last day the model may have seen: its training window's end, or its day when unknown."""
        return self.last_train_day or self.day

    @classmethod
    def from_dict(cls, values: Mapping, key: str = "") -> Manifest:
        params = values.get("params") or {}
        training = values.get("training") or {}
        trained = training.get("params") or {}
        window = values.get("data_window") or {}
        return cls(key=key, day=str(values.get("day", "")), run_id=str(values.get("run_id", "")),
                   prefix=str(values.get("prefix", "")), granularity=params.get("granularity"),
                   strategy=training.get("strategy") or params.get("strategy"),
                   k=(values.get("metrics") or {}).get("k"), last_train_day=window.get("last_train_day"),
                   recipe=Recipe.within(trained), search=_search(training.get("tuning")), metrics=values.get("metrics") or {},
                   objects=tuple(values.get("objects") or ()), raw=dict(values))


def _search(record) -> SearchRecord | None:
    """The search a manifest's values came from: the one run for its day, or the one it reused.
    None when its chosen values are outside the recipe's schema (``Recipe``): a manifest can
    name rank 100000 or reg NaN, and a reused search's values go straight into training."""
    if not isinstance(record, Mapping) or not record.get("day") or not isinstance(record.get("chosen"), Mapping):
        return None
    source = record.get("source") or {}
    if not isinstance(source, Mapping):
        return None
    searched = tuple(sorted(n for n, s in source.items() if s == search_label(record["day"])))
    try:
        Recipe(**{n: record["chosen"][n] for n in searched})
    except (KeyError, TypeError, ValueError):  # InvalidInput is a ValueError
        return None
    try:
        context = SearchContext.from_dict(record["context"]) if "context" in record else None
    except (KeyError, TypeError, ValueError):
        context = None
    return SearchRecord(day=record["day"], chosen=dict(record["chosen"]), searched=searched, context=context)


def build(*, code_version: str, params: dict, data_window: dict, rows: dict, quarantine: dict, validation: dict,
          matrix: dict, training: dict, metrics: dict, comparison: str, evaluation: dict, output_checks: dict | None,
          rules: dict | None, quality_gate: dict) -> dict:
    """The manifest of a run, before ``publish`` adds its location and objects. ``comparison``: the one
    line that says which published model the run was compared with, or why none."""
    return {"code_version": code_version, "params": params, "data_window": data_window, "rows": rows,
            "quarantine": quarantine, "validation": validation, "matrix": matrix, "training": training,
            "metrics": {**metrics, "comparison": comparison}, "evaluation": evaluation,
            "output_checks": output_checks, "rules": rules, "quality_gate": quality_gate}
