"""When a warm-started ALS fit stops: its objective has stopped falling.

A fit started from yesterday's factors begins near a minimum of today's objective (most of
the data is the same days of the window). It stops after iteration t >= ``MIN_ITER`` when that
iteration lowered the objective (the Hu-Koren-Volinsky loss, data term plus regularization)
by less than ``tol`` of its previous value, or raised it (CG's inexact solves can). The loss,
not a held-out metric, decides: the held-out days never choose how long a model trains.
``bench/warm_start.py`` measures what the rule costs in MAP@10 against cold fits of all iterations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_TOL = 0.005  # relative decrease of the objective in one iteration
MIN_ITER = 2  # the first iteration's decrease is measured against the second's start


def relative_decrease(previous: float, current: float) -> float:
    """(previous - current) / previous; negative when the objective rose."""
    return (previous - current) / previous if previous > 0 else 0.0


def converged(losses: Sequence[float], tol: float, min_iter: int = MIN_ITER) -> bool:
    """True when at least ``min_iter`` iterations ran and the last lowered the objective by less
    than ``tol`` (relative). ``tol`` <= 0 never stops; a non-finite loss never counts as converged."""
    if tol <= 0 or len(losses) < max(min_iter, 2):
        return False
    previous, current = losses[-2], losses[-1]
    if not (math.isfinite(previous) and math.isfinite(current)):
        return False
    return relative_decrease(previous, current) < tol


def warm_start_line(warm: dict, iterations: int | None = None) -> str:
    """One line for a person: how a model's training started (``TrainResult.warm_start``)."""
    if not warm.get("used"):
        return f"cold start: {warm.get('reason')}"
    ran = warm.get("iterations", iterations)
    tol = warm.get("tol", DEFAULT_TOL)
    stop = f", stopped early: the objective fell by less than {tol:.1%}" if warm.get("stopped_early") else ""
    users, items = warm.get("users") or {}, warm.get("items") or {}
    return (f"warm start from the model of {warm.get('from')}: {ran} iterations{stop}; "
            f"{users.get('from_model', 0)} users and {items.get('from_model', 0)} items from it, "
            f"{users.get('new', 0)} users and {items.get('new', 0)} items new")
