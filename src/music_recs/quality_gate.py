"""The quality gate between evaluation and publishing.

A model is published only if, on the primary metric (MAP@k by default):

1. it beats the most-popular baseline of the same run by a relative margin, with its sample
   size taken into account: both are scored per evaluated user on the same held-out days, the
   relative lift ``mean(model) / mean(popularity) - 1`` gets a paired bootstrap interval
   (users resampled with replacement, ``resamples`` times, percentile interval at ``level``,
   default 95 %), and the gate asks for the interval's **lower end** to be above ``min_lift``
   (default 0: better than popularity at 97.5 % one-sided confidence). With a few dozen
   evaluated users a point lift of +20 % can have an interval reaching below 0, and the gate
   then refuses; with thousands the interval is narrow and the point lift decides. (Without
   per-user scores, as in manifests of earlier versions, the point lift is compared.)
2. it has not collapsed against the model currently behind the ``latest`` pointer. When the
   evaluation scored that model on the same held-out pairs (``published_lift``: the paired
   bootstrap of the per-user change), the gate refuses only a confident collapse: the upper
   end of the interval of the relative change below ``-max_drop``. Otherwise (nothing to
   score it with) it compares with the metrics in the published manifest: at most
   ``max_drop`` (relative) below the model currently behind the
   ``latest`` pointer (``candidate >= published * (1 - max_drop)``). Held-out days differ
   between runs, so this is a guard against collapse, not a fine comparison; the default
   tolerance is wide for that reason.

3. the output suites passed (``expectations/model_output_*.json``, run by the evaluation):
   each failed expectation is a reason, in one line with its observed value and bound.

A manual run may set ``override_quality_gate``: the decision is then recorded as overridden
in the manifest, with the numbers, and the model is published anyway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from music_recs.failures import QualityGateFailed  # noqa: F401  (raised by the task that applies the gate)


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with the numbers behind it (recorded in the manifest and the report)."""

    passed: bool
    overridden: bool
    metric: str
    candidate: float
    baseline: float
    published: float | None
    min_lift: float
    max_drop: float
    reasons: tuple[str, ...]
    lift: dict | None = None  # the paired bootstrap of the lift over popularity (``paired_bootstrap``)

    @property
    def publish(self) -> bool:
        return self.passed or self.overridden

    def as_dict(self) -> dict:
        return {**asdict(self), "reasons": list(self.reasons), "publish": self.publish}

    def message(self) -> str:
        verdict = "passed" if self.passed else ("failed but overridden" if self.overridden else "failed")
        published = "none" if self.published is None else f"{self.published:.4f}"
        text = (f"quality gate {verdict} on {self.metric}: model {self.candidate:.4f}, "
                f"popularity baseline {self.baseline:.4f}")
        if self.lift:
            low, high = self.lift["relative_interval"]
            text += (f" (lift {self.lift['relative']:+.1%}, {self.lift['level']:.0%} interval "
                     f"[{low:+.1%}, {high:+.1%}] over {self.lift['users']} users)")
        text += f", published model {published}"
        return text + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def paired_bootstrap(candidate, baseline, resamples: int = 1000, level: float = 0.95, seed: int = 42) -> dict:
    """Mean difference and relative lift of paired per-user scores, with percentile intervals.

    candidate, baseline: one score per evaluated user, in the same user order. Users are
    resampled with replacement ``resamples`` times (seeded: the same scores give the same
    interval). ``relative`` is ``mean(candidate) / mean(baseline) - 1`` (infinite when the
    baseline scores 0 and the candidate does not).
    """
    c, b = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
    if c.shape != b.shape or c.ndim != 1:
        raise ValueError(f"paired scores need two equal-length vectors, got {c.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(c)
    result = {"users": n, "level": level, "resamples": resamples}
    if n == 0:
        return {**result, "candidate": 0.0, "baseline": 0.0, "difference": 0.0, "difference_interval": [0.0, 0.0],
                "relative": 0.0, "relative_interval": [0.0, 0.0]}
    rng = np.random.default_rng(seed)
    sums_c, sums_b = np.empty(resamples), np.empty(resamples)
    batch = max(1, 20_000_000 // n)  # bounded memory: batch x n indices at a time
    for start in range(0, resamples, batch):
        idx = rng.integers(0, n, size=(min(batch, resamples - start), n))
        sums_c[start:start + len(idx)] = c[idx].sum(axis=1)
        sums_b[start:start + len(idx)] = b[idx].sum(axis=1)
    tails = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def relative(mc, mb):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(mb > 0, mc / np.where(mb > 0, mb, 1) - 1, np.where(mc > 0, np.inf, 0.0))

    diffs = (sums_c - sums_b) / n
    lifts = relative(sums_c / n, sums_b / n)
    with np.errstate(invalid="ignore"):  # a resample whose baseline scored 0 has an infinite lift
        lift_interval = [float(v) for v in np.percentile(lifts, tails)]
    return {**result, "candidate": float(c.mean()), "baseline": float(b.mean()),
            "difference": float(c.mean() - b.mean()),
            "difference_interval": [float(v) for v in np.percentile(diffs, tails)],
            "relative": float(relative(np.array(c.mean()), np.array(b.mean()))),
            "relative_interval": lift_interval}


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def expectation_bounds(kwargs: dict) -> str:
    """An expectation's bounds in words: ``min 0.1, max 0.95``, ``in [True]``, ``for 99% of rows``."""
    parts = [f"{n.removesuffix('_value')} {_short(kwargs[n])}" for n in ("min_value", "max_value")
             if kwargs.get(n) is not None]
    if "value_set" in kwargs:
        parts.append(f"in {kwargs['value_set']}")
    if kwargs.get("mostly") is not None:
        parts.append(f"for {kwargs['mostly']:.0%} of rows")
    return ", ".join(parts)


def failure_line(check: dict) -> str:
    """One failed expectation (a ``checks`` entry of a GX run) in a few words: suite, column, what
    was observed, and the bound; the reason the gate gives for it."""
    if check.get("error"):
        seen = f"error: {check['error']}"
    elif check.get("unexpected_count") is not None:
        seen = f"{check['unexpected_count']} of {check.get('element_count')} rows outside"
    else:
        seen = f"observed {_short(check.get('observed_value'))}"
    return (f"{check['suite']}.{check.get('column') or ''} {check['expectation']}: {seen} "
            f"({expectation_bounds(check.get('kwargs') or {})})")


def decide(metric: str, candidate: dict, baseline: dict, published: dict | None,
           min_lift: float = 0.0, max_drop: float = 0.2, override: bool = False,
           lift: dict | None = None, published_lift: dict | None = None,
           output_failures: tuple[str, ...] = ()) -> GateDecision:
    """``candidate``/``baseline``/``published``: metric dicts (published None when nothing is published).

    lift: ``paired_bootstrap`` of the per-user ``metric`` scores, model against popularity (the
    evaluation's ``lift[metric]``); the gate then asks its interval's lower end to clear
    ``min_lift``. None: the point values are compared (``candidate > baseline * (1 + min_lift)``).
    published_lift: the same against the published model scored on these held-out pairs
    (``published`` is then its metrics there).
    output_failures: one line per failed expectation of the output suites (default none).
    """
    for name, metrics in (("candidate", candidate), ("baseline", baseline)):
        if metric not in metrics:
            raise ValueError(f"the {name} metrics have no {metric!r}; known: {sorted(metrics)}")
    c, b = float(candidate[metric]), float(baseline[metric])
    p = float(published[metric]) if published and metric in published else None
    reasons = []
    if lift is not None:
        low = lift["relative_interval"][0]
        if not low > min_lift:
            reasons.append(f"the lower end of the lift's {lift['level']:.0%} interval ({low:+.1%}) must be above "
                           f"{min_lift:+.0%} ({lift['users']} users evaluated)")
    elif not c > b * (1 + min_lift):
        reasons.append(f"needs > {b * (1 + min_lift):.4f} to beat popularity by {min_lift:.0%}")
    if published_lift is not None and p is not None:
        high = published_lift["relative_interval"][1]
        if high < -max_drop:
            reasons.append(f"{published_lift['relative']:+.1%} against the published model on the same held-out "
                           f"users (interval up to {high:+.1%}), a collapse of more than {max_drop:.0%}")
    elif p is not None and c < p * (1 - max_drop):
        reasons.append(f"needs >= {p * (1 - max_drop):.4f}, at most {max_drop:.0%} below the published model")
    reasons += [f"output check {line}" for line in output_failures]
    return GateDecision(not reasons, bool(override) and bool(reasons), metric, c, b, p, min_lift, max_drop,
                        tuple(reasons), lift)
