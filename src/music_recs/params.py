"""The DAG's run parameters, declared once: default, JSON schema and description per field.

The recipe's fields (``music_recs.recipe``) appear here nullable and empty by default: empty
means "chosen by the search" (or the recipe's default with ``tune=off``), a value means "fixed
for this run". The trigger form sends every field; only the filled ones fix anything, so a run
started from the form with nothing changed decides like a scheduled run.

``RunParams`` is the declaration. The Airflow side turns each field into a trigger-form
``Param`` (``music_recs_airflow.tasks.airflow_params``), so Airflow refuses a wrong type or
an out-of-range number before a run is created; ``RunParams.from_params`` checks the same
schema again with ``jsonschema`` (a run conf can bypass the form) and then the rules that
span several values, in the DAG's first task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jsonschema

from music_recs import recipe
from music_recs.confidence import ConfidenceParams
from music_recs.failures import InvalidInput
from music_recs.recipe import Recipe


def _param(default, description: str, **schema):
    return dataclasses.field(default=default, metadata={"schema": schema, "description": description})


SEARCHED_LABEL = "empty: the search's choice"


def _recipe(name: str):
    """A recipe field in the form: its schema made nullable, default empty (null)."""
    schema = dict(recipe.SCHEMAS[name])
    schema["type"] = ["null", schema["type"]]
    if "enum" in schema:
        # The form's drop-down shows "null" for None unless every value is named.
        schema["values_display"] = {"None": SEARCHED_LABEL, **{v: v for v in schema["enum"]}}
        schema["enum"] = [None, *schema["enum"]]
    return _param(None, f"{recipe.DESCRIPTIONS[name]} Empty: chosen by the search (tune), or "
                  f"{recipe.DEFAULTS[name]} with tune=off. A value set here is fixed for this run.", **schema)


@dataclasses.dataclass(frozen=True)
class RunParams:
    """A run's parameters; each field's metadata holds its JSON schema and its description."""

    # The recipe (music_recs.recipe): empty in the form = chosen by the search (tune), or the
    # recipe's default with tune=off; a value set here is fixed for this run and never searched.
    rank: int | None = _recipe("rank")
    strategy: str = _param("cg", "ALS solver: 'cg' = the project's conjugate-gradient ALS on cached blocks (same "
                           "objective as MLlib, faster at ranks of 32 and more); 'mllib' = Spark MLlib (exact "
                           "Cholesky per row, the reference).", type="string", enum=["cg", "mllib"])
    max_iter: int = _param(10, "ALS iterations (each solves users, then items).",
                           type="integer", minimum=1, maximum=50)
    reg: float | None = _recipe("reg")
    reg_scaling: str | None = _recipe("reg_scaling")
    alpha: float | None = _recipe("alpha")
    confidence_function: str | None = _recipe("confidence_function")
    epsilon: float | None = _recipe("epsilon")
    half_life_days: float = _param(0.0, "Exponential time decay of plays by age; 0 disables.",
                                   type="number", minimum=0, maximum=3650)
    skip_seconds: int = _param(30, "Plays shorter than this are skips: counted, never a preference.",
                               type="integer", minimum=0, maximum=600)
    window_days: int = _param(90, "Training window: days of plays ending at the logical day.",
                              type="integer", minimum=2, maximum=730)
    holdout_days: int = _param(1, "Last days of the window held out to evaluate on (must be < window_days).",
                               type="integer", minimum=1, maximum=30)
    granularity: str = _param("track", "What to recommend: tracks (user x track) or artists (user x artist).",
                              type="string", enum=["track", "artist"])
    min_user_items: int = _param(2, "Drop users with fewer distinct items than this.",
                                 type="integer", minimum=1, maximum=1000)
    min_item_users: int = _param(2, "Drop items with fewer distinct listeners than this.",
                                 type="integer", minimum=1, maximum=100000)
    k: int = _param(10, "Cut-off of the ranking metrics (precision@k, MAP@k, ...).",
                    type="integer", minimum=1, maximum=100)
    top_n: int = _param(50, "Recommendations published per user.", type="integer", minimum=1, maximum=500)
    primary_metric: str = _param("map", "Metric the quality gate compares (at k).",
                                 type="string", enum=["map", "ndcg", "precision", "recall"])
    gate_min_lift: float = _param(0.0, "Publish only if the lower end of the 95% bootstrap interval of the model's "
                                  "relative lift over popularity (per evaluated user) is above this margin.",
                                  type="number", minimum=0, maximum=10)
    gate_min_users: int = _param(30, "Fewest evaluated users the quality gate judges a model on; with fewer it "
                                 "does not publish ('too few users to judge') unless override_quality_gate is set.",
                                 type="integer", minimum=1, maximum=1000000)
    gate_max_drop: float = _param(0.2, "Publish only if the model is at most this much (relative) below the published one.",
                                  type="number", minimum=0, maximum=1)
    tune: str = _param("if_stale", "Search the recipe fields left empty (rank, alpha, reg, reg_scaling, "
                       "confidence_function, epsilon) before training: 'always'; 'if_stale' = reuse an earlier "
                       "search of the same context at most tune_max_age_days old, else search; 'off' = the "
                       "recipe's defaults.",
                       type="string", enum=["off", "if_stale", "always"])
    tune_trials: int = _param(24, "Candidates the search tries (the best third then trains all iterations).",
                              type="integer", minimum=1, maximum=200)
    tune_minutes: float = _param(20.0, "No new trial starts after this many minutes of search.",
                                 type="number", exclusiveMinimum=0, maximum=1440)
    tune_max_age_days: int = _param(7, "With tune=if_stale: reuse a search at most this many days old.",
                                    type="integer", minimum=0, maximum=365)
    tune_users: int = _param(100_000, "The search trains and scores its candidates on at most this many users (a "
                             "sample fixed by a hash of the user id; 0 = every user). The model itself always "
                             "trains on every user.", type="integer", minimum=0, maximum=1_000_000_000)
    validation_days: int = _param(1, "Last training days the search scores candidates on (never the holdout).",
                                  type="integer", minimum=1, maximum=30)
    warm_start: str = _param("auto", "Start training from the factors of the newest model published for a day before "
                             "this run's, when it has the same rank and granularity (strategy 'cg'; new users and "
                             "items start random), and stop once the objective stops falling; 'off' = always start "
                             "from random factors and run max_iter iterations.", type="string", enum=["auto", "off"])
    max_per_artist: int = _param(2, "At most this many tracks of one artist in a user's top-N (track recommendations; "
                                 "the list is filled from further down the ranking); 0 = no cap.",
                                 type="integer", minimum=0, maximum=100)
    override_quality_gate: bool = _param(False, "Publish even if the quality gate fails (recorded in the manifest).",
                                         type="boolean")
    allow_pointer_rewind: bool = _param(False, "Let this run move the 'latest' pointer back to an older day (backfills).",
                                        type="boolean")

    @classmethod
    def from_params(cls, params: Mapping) -> RunParams:
        """Check every value against its schema, then the cross-field rules; one readable line on failure."""
        params = dict(params)
        unknown = set(params) - set(FIELDS)
        if unknown:
            raise InvalidInput(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        for name, value in params.items():
            try:
                jsonschema.validate(value, SCHEMAS[name])
            except jsonschema.ValidationError as exc:
                raise InvalidInput(f"parameter {name}: {exc.message}") from None
        run = cls(**{name: float(v) if v is not None and "number" in _types(name) else v for name, v in params.items()})
        if run.holdout_days >= run.window_days:
            raise InvalidInput(f"holdout_days ({run.holdout_days}) must be smaller than window_days ({run.window_days})")
        if run.tune != "off" and run.holdout_days + run.validation_days >= run.window_days:
            raise InvalidInput(f"tuning needs training days before its validation days: holdout_days "
                               f"({run.holdout_days}) + validation_days ({run.validation_days}) must be smaller than "
                               f"window_days ({run.window_days}), or set tune=off")
        if run.reg_scaling == "constant" and run.strategy == "mllib":
            raise InvalidInput("reg_scaling 'constant' needs strategy 'cg' (MLlib scales reg per rating)")
        run.confidence  # noqa: B018  (validates the confidence parameters)
        return run

    @property
    def fixed_recipe(self) -> dict:
        """The recipe fields this run fixes (set in the form or conf); the rest are the search's to choose."""
        return {name: getattr(self, name) for name in recipe.FIELDS if getattr(self, name) is not None}

    @property
    def recipe(self) -> Recipe:
        """The recipe without a search: the fixed fields, the recipe's defaults for the rest."""
        return Recipe(**self.fixed_recipe)

    @property
    def confidence(self) -> ConfidenceParams:
        """How build_confidence turns plays into the matrix (the recipe's alpha, f and epsilon)."""
        r = self.recipe
        return ConfidenceParams(r.confidence_function, r.alpha, r.epsilon, float(self.half_life_days),
                                int(self.skip_seconds) * 1000)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def artist_cap(self) -> int:
        """The cap the top-N obeys: ``max_per_artist`` for tracks; artists have one item each, no cap."""
        return self.max_per_artist if self.granularity == "track" else 0

    def changed(self) -> dict:
        """The params that differ from their defaults."""
        return {name: value for name, value in self.as_dict().items() if value != DEFAULTS[name]}


def _types(name: str) -> list:
    kind = SCHEMAS[name]["type"]
    return kind if isinstance(kind, list) else [kind]


FIELDS = tuple(f.name for f in dataclasses.fields(RunParams))
DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunParams)}
SCHEMAS = {f.name: f.metadata["schema"] for f in dataclasses.fields(RunParams)}
DESCRIPTIONS = {f.name: f.metadata["description"] for f in dataclasses.fields(RunParams)}


def params_markdown() -> str:
    """The run params as a Markdown table: name, default, type and bounds, description, from the
    declaration above. ``docs/configuration.md`` holds it verbatim (``tests/test_docs.py`` checks);
    ``python -m music_recs.params`` prints it."""
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    def value(v) -> str:
        return "true" if v is True else "false" if v is False else str(v)

    def kind(schema: dict) -> str:
        types = [t for t in (schema["type"] if isinstance(schema["type"], list) else [schema["type"]]) if t != "null"]
        if "enum" in schema:
            return "one of " + ", ".join(f"`{v}`" for v in schema["enum"] if v is not None)
        bounds = [f"{op} {value(schema[key])}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                                ("maximum", "<="), ("exclusiveMaximum", "<"))
                  if key in schema]
        return " ".join(types) + (f", {' and '.join(bounds)}" if bounds else "")

    rows = ["| param | default | type | meaning |", "|---|---|---|---|"]
    for name in FIELDS:
        default = "empty" if DEFAULTS[name] is None else f"`{value(DEFAULTS[name])}`"
        rows.append(f"| `{name}` | {default} | {cell(kind(SCHEMAS[name]))} | {cell(DESCRIPTIONS[name])} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(params_markdown(), end="")
