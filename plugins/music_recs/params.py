"""The DAG's run parameters: typed, bounded, described (the UI trigger form shows them).

Airflow validates each value against its JSON schema when a run is created, so a wrong
type or an out-of-range number is refused before anything runs; ``RunParams.from_params``
then checks the rules that span several values, in the DAG's first task.
"""

from __future__ import annotations

import dataclasses

from music_recs.confidence import CONFIDENCE_FUNCTIONS, ConfidenceParams

# name: (default, JSON schema, description)
PARAM_SPECS: dict[str, tuple] = {
    "rank": (32, {"type": "integer", "minimum": 2, "maximum": 512},
             "Number of latent factors per user and item (ALS rank)."),
    "strategy": ("cg", {"type": "string", "enum": ["cg", "mllib"]},
                 "ALS solver: 'cg' = the project's conjugate-gradient ALS on cached blocks (same objective as "
                 "MLlib; 5.9x faster at rank 64 on 5M ratings, see bench/RESULTS.md); 'mllib' = Spark MLlib "
                 "(exact Cholesky per row, the reference)."),
    "max_iter": (10, {"type": "integer", "minimum": 1, "maximum": 50},
                 "ALS iterations (each solves users, then items)."),
    "reg": (0.1, {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
            "L2 regularization lambda. Spark MLlib scales it by each row's number of ratings."),
    "alpha": (40.0, {"type": "number", "exclusiveMinimum": 0, "maximum": 10000},
              "Confidence scale: c = 1 + alpha * f(r) (Hu, Koren & Volinsky 2008)."),
    "confidence_function": ("log", {"type": "string", "enum": list(CONFIDENCE_FUNCTIONS)},
                            "f(r): 'log' = log(1 + r/epsilon), 'linear' = r."),
    "epsilon": (1.0, {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
                "Scale of the log confidence function, in plays."),
    "half_life_days": (0.0, {"type": "number", "minimum": 0, "maximum": 3650},
                       "Exponential time decay of plays by age; 0 disables."),
    "skip_seconds": (30, {"type": "integer", "minimum": 0, "maximum": 600},
                     "Plays shorter than this are skips: counted, never a preference."),
    "window_days": (90, {"type": "integer", "minimum": 2, "maximum": 730},
                    "Training window: days of plays ending at the logical day."),
    "holdout_days": (1, {"type": "integer", "minimum": 1, "maximum": 30},
                     "Last days of the window held out to evaluate on (must be < window_days)."),
    "granularity": ("track", {"type": "string", "enum": ["track", "artist"]},
                    "What to recommend: tracks (user x track) or artists (user x artist)."),
    "min_user_items": (2, {"type": "integer", "minimum": 1, "maximum": 1000},
                       "Drop users with fewer distinct items than this."),
    "min_item_users": (2, {"type": "integer", "minimum": 1, "maximum": 100000},
                       "Drop items with fewer distinct listeners than this."),
    "k": (10, {"type": "integer", "minimum": 1, "maximum": 100},
          "Cut-off of the ranking metrics (precision@k, MAP@k, ...)."),
    "top_n": (50, {"type": "integer", "minimum": 1, "maximum": 500},
              "Recommendations published per user."),
    "primary_metric": ("map", {"type": "string", "enum": ["map", "ndcg", "precision", "recall"]},
                       "Metric the quality gate compares (at k)."),
    "gate_min_lift": (0.05, {"type": "number", "minimum": 0, "maximum": 10},
                      "Publish only if the model beats the popularity baseline by this relative margin."),
    "gate_max_drop": (0.2, {"type": "number", "minimum": 0, "maximum": 1},
                      "Publish only if the model is at most this much (relative) below the published one."),
    "override_quality_gate": (False, {"type": "boolean"},
                              "Publish even if the quality gate fails (recorded in the manifest)."),
    "allow_pointer_rewind": (False, {"type": "boolean"},
                             "Let this run move the 'latest' pointer back to an older day (backfills)."),
}


def airflow_params() -> dict:
    from airflow.sdk import Param

    return {
        name: Param(default, description=description, **schema)
        for name, (default, schema, description) in PARAM_SPECS.items()
    }


@dataclasses.dataclass(frozen=True)
class RunParams:
    rank: int
    strategy: str
    max_iter: int
    reg: float
    alpha: float
    confidence_function: str
    epsilon: float
    half_life_days: float
    skip_seconds: int
    window_days: int
    holdout_days: int
    granularity: str
    min_user_items: int
    min_item_users: int
    k: int
    top_n: int
    primary_metric: str
    gate_min_lift: float
    gate_max_drop: float
    override_quality_gate: bool
    allow_pointer_rewind: bool

    @classmethod
    def from_params(cls, params: dict) -> RunParams:
        """Validate every value again (a run conf can bypass the form) and the cross-field rules."""
        unknown = set(params) - set(PARAM_SPECS)
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        values = {}
        for name, (default, schema, _) in PARAM_SPECS.items():
            value = params.get(name, default)
            values[name] = _check(name, value, schema)
        run = cls(**values)
        if run.holdout_days >= run.window_days:
            raise ValueError(f"holdout_days ({run.holdout_days}) must be smaller than window_days ({run.window_days})")
        run.confidence  # validates the confidence parameters
        return run

    @property
    def confidence(self) -> ConfidenceParams:
        return ConfidenceParams(self.confidence_function, float(self.alpha), float(self.epsilon),
                                float(self.half_life_days), int(self.skip_seconds) * 1000)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(name: str, value, schema: dict):
    kind = schema["type"]
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"parameter {name} must be a {kind}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"parameter {name} must be one of {schema['enum']}, got {value!r}")
    if "minimum" in schema and value < schema["minimum"]:
        raise ValueError(f"parameter {name} must be >= {schema['minimum']}, got {value!r}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        raise ValueError(f"parameter {name} must be > {schema['exclusiveMinimum']}, got {value!r}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ValueError(f"parameter {name} must be <= {schema['maximum']}, got {value!r}")
    return float(value) if kind == "number" else value
