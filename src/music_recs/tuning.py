"""Hyper-parameter search for implicit ALS on a nested time split.

The evaluation holdout (the window's last ``holdout_days``) never chooses parameters. Inside
the training days, the last ``validation_days`` are held out once more: candidates train on the
days before them and are scored on them (what users played next, as the holdout does one level
up); the winner is then retrained on all training days and evaluated on the holdout.

What is searched (``SEARCH_SPACE``): ``alpha`` and the confidence function ``f`` with its
``epsilon`` (``c = 1 + alpha * f(r)``, Hu, Koren & Volinsky 2008), ``reg`` and how it is
scaled (``per_rating``: lambda times the row's number of ratings, as MLlib and the CG
strategy do by default; ``constant``: a plain lambda, as ``implicit`` does), and ``rank``.
Values given in the trigger form are fixed, never searched.

The search is successive halving (Jamieson & Talwalkar 2016, Li et al. 2017's Hyperband with one
bracket): every candidate trains a third of the iterations, the best third of them train all
iterations, the best of those wins. Candidates are the run's own parameters first, then a seeded
sample of the grid, so a run with the same inputs tries the same trials. A budget in trials and
minutes bounds the search: when time runs out no new trial starts, and the best trial of the
highest rung reached wins (at least one trial always runs).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Mapping

from music_recs import recipe
from music_recs.failures import InvalidInput

REG_SCALINGS = tuple(recipe.RegScaling)

# Values a search may try; the defaults of a run are added to each list.
SEARCH_SPACE: dict[str, tuple] = {
    "alpha": (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0),
    "confidence_function": tuple(recipe.ConfidenceFunction),
    "epsilon": (0.5, 1.0, 5.0),
    "reg": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    "reg_scaling": REG_SCALINGS,
    "rank": (16, 32, 64),
}
# The search varies exactly the recipe (the order here seeds the candidate sample).
SEARCHED = tuple(SEARCH_SPACE)
assert set(SEARCHED) == set(recipe.FIELDS), (SEARCHED, recipe.FIELDS)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One candidate's score on the validation days at one rung of the search."""

    trial: int
    rung: int
    params: dict
    iterations: int
    metric: float
    users: int
    seconds: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def candidates(base: Mapping, fixed: set[str], n: int, seed: int = 0,
               space: Mapping[str, tuple] = SEARCH_SPACE) -> list[dict]:
    """``n`` distinct parameter sets: ``base`` (the run's own) first, then a seeded sample.

    base: values of every searched name; fixed: names not to vary (set in the trigger form);
    the strategy ``mllib`` cannot scale reg other than per rating, so callers fix ``reg_scaling``.
    ``epsilon`` only matters with the log function: linear candidates keep ``base``'s epsilon.
    """
    if n < 1:
        raise InvalidInput(f"a search needs at least one trial, got {n}")
    free = [name for name in space if name not in fixed]
    grids = {name: sorted(set(space[name]) | {base[name]}, key=str) for name in free}
    out, seen = [dict(base)], {_key(base)}
    pool = list(itertools.product(*(grids[name] for name in free))) if free else []
    random.Random(seed).shuffle(pool)
    for values in pool:
        if len(out) >= n:
            break
        cand = {**base, **dict(zip(free, values))}
        if cand["confidence_function"] == "linear":
            cand["epsilon"] = base["epsilon"]
        if _key(cand) not in seen:
            seen.add(_key(cand))
            out.append(cand)
    return out


def _key(params: Mapping) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in params.items()))


def rung_iterations(max_iter: int) -> tuple[int, int]:
    """Iterations of the first rung (a third, at least 1) and of the last (all)."""
    return max(1, math.ceil(max_iter / 3)), max_iter


def survivors(scored: list[Trial], keep_fraction: float = 1 / 3) -> list[Trial]:
    """The best ``keep_fraction`` of a rung (at least one), best first; ties keep the earlier trial."""
    ranked = sorted(scored, key=lambda t: (-t.metric, t.trial))
    return ranked[: max(1, math.ceil(len(ranked) * keep_fraction))]


def winner(trials: list[Trial]) -> Trial:
    """The best trial of the highest rung reached; ties go to the earlier trial."""
    if not trials:
        raise InvalidInput("no trial was scored")
    top = max(t.rung for t in trials)
    return min((t for t in trials if t.rung == top), key=lambda t: (-t.metric, t.trial))
