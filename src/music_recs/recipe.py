"""The model's recipe: the values that decide what ALS learns, declared once.

A recipe is what the search (``music_recs.tuning``) varies and what a published model is
trained with: ``rank``, the regularization ``reg`` and how it scales (``reg_scaling``), and how
play counts become confidence (``alpha``, ``confidence_function``, ``epsilon``; ``c = 1 + alpha *
f(r)``, Hu, Koren & Volinsky 2008). The same names and types cross every boundary: the trigger
form (``music_recs.params``), the plan, the training spec and result (``music_recs.jobs``), the
search's choice and the manifest (``music_recs.manifest``). Defaults live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from music_recs.failures import InvalidInput


class RegScaling(enum.StrEnum):
    """How lambda scales: ``per_rating`` = times each row's number of ratings (MLlib's convention,
    the CG strategy's default); ``constant`` = a plain lambda (``implicit``'s; CG only)."""

    PER_RATING = "per_rating"
    CONSTANT = "constant"


class ConfidenceFunction(enum.StrEnum):
    """``f(r)``: ``log`` = ``log(1 + r / epsilon)``, ``linear`` = ``r``."""

    LOG = "log"
    LINEAR = "linear"


def _field(default, description: str, **schema):
    return dataclasses.field(default=default, metadata={"schema": schema, "description": description})


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The values a model is trained with; each field's metadata holds its JSON schema and description.

    The defaults are the run's when nothing chooses otherwise (``tune=off``, nothing set in the
    form): alpha 1 with the log function and epsilon 5 was the best worst case over MovieLens-100K
    and the generated data (``bench/RESULTS.md``, "Real listening data"); the paper's alpha 40 is
    for linear confidence on TV watching and drowns the preference signal of log play counts.
    """

    rank: int = _field(32, "Number of latent factors per user and item (ALS rank).",
                       type="integer", minimum=2, maximum=512)
    reg: float = _field(0.1, "L2 regularization lambda (see reg_scaling).",
                        type="number", exclusiveMinimum=0, maximum=100)
    reg_scaling: RegScaling = _field(RegScaling.PER_RATING, "How lambda scales: 'per_rating' = times each user's/"
                                     "item's number of ratings (Spark MLlib's convention); 'constant' = a plain "
                                     "lambda (the implicit library's; strategy 'cg' only).",
                                     type="string", enum=[s.value for s in RegScaling])
    alpha: float = _field(1.0, "Confidence scale: c = 1 + alpha * f(r) (Hu, Koren & Volinsky 2008).",
                          type="number", exclusiveMinimum=0, maximum=10000)
    confidence_function: ConfidenceFunction = _field(ConfidenceFunction.LOG, "f(r): 'log' = log(1 + r/epsilon), "
                                                     "'linear' = r.", type="string",
                                                     enum=[f.value for f in ConfidenceFunction])
    epsilon: float = _field(5.0, "Scale of the log confidence function, in plays.",
                            type="number", exclusiveMinimum=0, maximum=1000)

    def __post_init__(self):
        for name, kind in (("reg_scaling", RegScaling), ("confidence_function", ConfidenceFunction)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                raise InvalidInput(f"{name} must be one of {', '.join(kind)}, got {value!r}") from None
        for name in ("reg", "alpha", "epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= SCHEMAS[name]["maximum"]:
                raise InvalidInput(f"{name} must be a number in (0, {SCHEMAS[name]['maximum']}], got {value!r}")
            object.__setattr__(self, name, float(value))
        schema = SCHEMAS["rank"]
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not schema["minimum"] <= self.rank <= schema["maximum"]:
            raise InvalidInput(f"rank must be an integer in [{schema['minimum']}, {schema['maximum']}], got {self.rank!r}")

    @property
    def scale_reg(self) -> bool:
        """The kernels' flag: lambda times each row's number of ratings."""
        return self.reg_scaling is RegScaling.PER_RATING

    def as_dict(self) -> dict:
        """Plain JSON values (enums as their strings)."""
        return {name: getattr(self, name).value if isinstance(getattr(self, name), enum.Enum) else getattr(self, name)
                for name in FIELDS}

    @classmethod
    def from_dict(cls, values: Mapping) -> Recipe:
        """A recipe from a mapping holding every field (a manifest's, a search's choice); extra keys are
        refused, so a renamed field cannot pass silently."""
        unknown, missing = set(values) - set(FIELDS), set(FIELDS) - set(values)
        if unknown or missing:
            raise InvalidInput(f"a recipe has exactly the fields {', '.join(FIELDS)}; "
                               f"unknown {sorted(unknown)}, missing {sorted(missing)}")
        return cls(**{name: values[name] for name in FIELDS})

    @classmethod
    def within(cls, values: Mapping) -> Recipe | None:
        """The recipe among a mapping's other values (a training result's or a manifest's params);
        None when a field is missing or unreadable (a manifest of an earlier version)."""
        try:
            return cls.from_dict({name: values[name] for name in FIELDS})
        except (KeyError, TypeError, ValueError):
            return None

    def replace(self, **values) -> Recipe:
        return dataclasses.replace(self, **values)


FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Recipe)}
SCHEMAS = {f.name: f.metadata["schema"] for f in dataclasses.fields(Recipe)}
DESCRIPTIONS = {f.name: f.metadata["description"] for f in dataclasses.fields(Recipe)}
