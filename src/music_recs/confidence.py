"""Implicit-feedback confidence, after Hu, Koren & Volinsky (2008).

"Collaborative Filtering for Implicit Feedback Datasets", ICDM 2008, section 4:
a user's raw observations ``r_ui`` (here: how often user u played item i) are split into

* a binary preference ``p_ui = 1 if r_ui > 0 else 0`` (did the user show interest?), and
* a confidence in that preference ``c_ui = 1 + alpha * f(r_ui)``, which grows with r.

ALS then minimises ``sum_ui c_ui (p_ui - x_u . y_i)^2 + lambda (|x_u|^2 + |y_i|^2)``.

``f`` is selectable:

* ``linear``: ``f(r) = r`` (the paper's first choice, with alpha = 40);
* ``log``: ``f(r) = log(1 + r / epsilon)`` (the paper's alternative, which damps heavy
  repeaters so a user who looped one track all day does not dominate).

Optionally, each play is weighted by ``0.5 ** (age_days / half_life_days)`` before
summing, so last week counts more than last quarter (``half_life_days=0`` disables).

Spark MLlib's implicit ALS takes ``f(r)`` as its rating column and computes
``1 + alpha * |rating|`` itself, so the matrix stores ``strength = f(r)`` for training and
``confidence = 1 + alpha * f(r)`` for people and other trainers. The functions below are what
``spark_jobs.confidence`` computes the matrix with (on Spark columns), not a copy of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from music_recs.failures import InvalidInput
from music_recs.recipe import ConfidenceFunction, Recipe

CONFIDENCE_FUNCTIONS = tuple(ConfidenceFunction)
_RECIPE = Recipe()


@dataclass(frozen=True)
class ConfidenceParams:
    """How plays become confidence.

    confidence_function, alpha, epsilon: the recipe's (``music_recs.recipe.Recipe``, whose
    defaults these are); epsilon is the scale of the log function (``r / epsilon``), in plays.
    half_life_days: 0.0 = no time decay.
    skip_ms: 30000; a play shorter than 30 s is a skip: counted, never a preference.
    """

    confidence_function: ConfidenceFunction = _RECIPE.confidence_function
    alpha: float = _RECIPE.alpha
    epsilon: float = _RECIPE.epsilon
    half_life_days: float = 0.0
    skip_ms: int = 30_000

    def __post_init__(self):
        if self.confidence_function not in CONFIDENCE_FUNCTIONS:
            raise InvalidInput(f"confidence function must be one of {', '.join(CONFIDENCE_FUNCTIONS)}, "
                             f"got {self.confidence_function!r}")
        object.__setattr__(self, "confidence_function", ConfidenceFunction(self.confidence_function))
        if not self.alpha > 0:
            raise InvalidInput(f"alpha must be > 0, got {self.alpha}")
        if not self.epsilon > 0:
            raise InvalidInput(f"epsilon must be > 0, got {self.epsilon}")
        if self.half_life_days < 0:
            raise InvalidInput(f"half_life_days must be >= 0, got {self.half_life_days}")
        if self.skip_ms < 0:
            raise InvalidInput(f"skip_ms must be >= 0, got {self.skip_ms}")


def decay_weight(age_days, half_life_days: float):
    """Weight of one play ``age_days`` old (1.0 for today, 0.5 one half-life ago).

    ``age_days`` is a number or a Spark column (``spark_jobs.confidence`` passes one): the
    same formula serves the reference and the job.
    """
    if half_life_days <= 0:
        return 1.0
    return 0.5 ** (age_days / half_life_days)


def strength(r, params: ConfidenceParams, log1p: Callable = math.log1p):
    """``f(r)``: what MLlib's ALS receives as the rating.

    r: the (decayed) play count, a number or a Spark column.
    log1p: ``math.log1p`` for numbers (default), ``pyspark.sql.functions.log1p`` for columns.
    """
    if params.confidence_function == ConfidenceFunction.LINEAR:
        return r
    return log1p(r / params.epsilon)


def confidence(r, params: ConfidenceParams, log1p: Callable = math.log1p):
    """``c = 1 + alpha * f(r)``; ``r`` and ``log1p`` as for ``strength``."""
    return 1.0 + params.alpha * strength(r, params, log1p)
