"""The quality gate between evaluation and publishing.

A model is published only if, on the primary metric (MAP@k by default):

0. enough users were evaluated to judge it: with fewer than ``min_users`` (run param
   ``gate_min_users``, default 30) evaluated users a bootstrap interval says little (with one
   user it collapses to a point), so the gate does not judge the model at all: it fails with
   "too few users to judge: N evaluated, at least M needed" (and any output check failures),
   and ``override_quality_gate`` is the only way to publish (recorded as overridden). The
   count is the bootstrap's ``users`` (else the metrics' ``users_evaluated``; when neither is
   known, as in callers without per-user scores, this step is skipped).
1. it beats the most-popular baseline of the same run by a relative margin, with its sample
   size taken into account: both are scored per evaluated user on the same held-out days, the
   relative lift ``mean(model) / mean(popularity) - 1`` gets a paired bootstrap interval
   (users resampled with replacement, ``resamples`` times, percentile interval at ``level``,
   default 95 %), and the gate asks for the interval's **lower end** to be above ``min_lift``
   (default 0: better than popularity at 97.5 % one-sided confidence). With a few dozen
   evaluated users a point lift of +20 % can have an interval reaching below 0, and the gate
   then refuses; with thousands the interval is narrow and the point lift decides. (Without
   per-user scores, as in manifests of earlier versions, the point lift is compared.)

   **A baseline that scores 0.** Where popularity's mean is 0 the relative lift is unbounded
   (or 0/0), so it has no interval: when popularity scores 0 in any resample (for every user,
   or for all the users a resample drew), ``relative_interval`` is None and the gate judges the
   **difference** ``mean(model) - mean(popularity)`` instead: its interval's lower end must be
   above ``min_lift * mean(popularity)``, the same margin in absolute terms (0 when popularity
   scores 0 for everyone: any positive difference is then an unbounded lift, which clears every
   margin). The reason and the message say the difference was judged. No NaN or infinity
   reaches the decision, its message or the manifest.
2. it has not collapsed against the model currently behind the ``latest`` pointer. When the
   evaluation scored that model on the same held-out pairs (``published_lift``: the paired
   bootstrap of the per-user change), the gate refuses only a confident collapse: the upper
   end of the interval of the relative change below ``-max_drop`` (a published model that
   scores 0 in some resample: the upper end of the difference's interval below
   ``-max_drop * mean(published)``). Otherwise (nothing to
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

import math
from dataclasses import asdict, dataclass

import numpy as np

from music_recs.failures import QualityGateFailed  # noqa: F401  (raised by the task that applies the gate)


def _percent(value: float | None) -> str:
    """A relative change in a few characters (``+12.3%``; ``+4.1e+05%`` when huge; None: unbounded)."""
    if value is None:
        return "unbounded"
    return f"{value:+.1%}" if abs(value) < 100 else f"{value * 100:+.2g}%"


def relative_interval(lift: dict) -> list[float] | None:
    """The bootstrap's interval of the relative change, or None where it is unbounded (the
    baseline scored 0 in some resample; earlier versions stored inf or NaN there)."""
    interval = lift.get("relative_interval")
    if interval is None or not all(math.isfinite(v) for v in interval):
        return None
    return [float(v) for v in interval]


def _zero_resamples(lift: dict) -> str:
    zero = lift.get("zero_baseline_resamples")
    return "some" if zero is None else f"{zero} of {lift['resamples']}"


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
    users: int | None = None  # evaluated users the decision rests on (None: not known)
    min_users: int | None = None  # fewest users the gate judges on

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
            interval, level, users = relative_interval(self.lift), f"{self.lift['level']:.0%}", self.lift["users"]
            if interval is not None:
                text += (f" (lift {_percent(self.lift['relative'])}, {level} interval "
                         f"[{_percent(interval[0])}, {_percent(interval[1])}] over {users} users)")
            else:
                low, high = self.lift["difference_interval"]
                text += (f" (lift {_percent(self.lift.get('relative'))}, no interval: popularity scores 0 in {_zero_resamples(self.lift)} "
                         f"resamples; judged on the difference {self.lift['difference']:+.4f}, {level} interval "
                         f"[{low:+.4f}, {high:+.4f}] over {users} users)")
        text += f", published model {published}"
        return text + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def paired_bootstrap(candidate, baseline, resamples: int = 1000, level: float = 0.95, seed: int = 42) -> dict:
    """Mean difference and relative lift of paired per-user scores, with percentile intervals.

    candidate, baseline: one finite score per evaluated user, in the same user order. Users are
    resampled with replacement ``resamples`` times (seeded: the same scores give the same
    interval). ``relative`` is ``mean(candidate) / mean(baseline) - 1``, None when the
    baseline's mean is not above 0; ``relative_interval`` is None when the baseline's mean is
    not above 0 (or so small the ratio overflows) in some resample (``zero_baseline_resamples``
    of them): the relative lift is unbounded there. ``difference`` and its interval are always defined.
    """
    c, b = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
    if c.shape != b.shape or c.ndim != 1:
        raise ValueError(f"paired scores need two equal-length vectors, got {c.shape} and {b.shape}")
    if not (np.isfinite(c).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite: a per-user score is NaN or infinite")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(c)
    result = {"users": n, "level": level, "resamples": resamples}
    if n == 0:
        return {**result, "candidate": 0.0, "baseline": 0.0, "difference": 0.0, "difference_interval": [0.0, 0.0],
                "relative": None, "relative_interval": None, "zero_baseline_resamples": resamples}
    rng = np.random.default_rng(seed)
    sums_c, sums_b = np.empty(resamples), np.empty(resamples)
    batch = max(1, 20_000_000 // n)  # bounded memory: batch x n indices at a time
    for start in range(0, resamples, batch):
        idx = rng.integers(0, n, size=(min(batch, resamples - start), n))
        sums_c[start:start + len(idx)] = c[idx].sum(axis=1)
        sums_b[start:start + len(idx)] = b[idx].sum(axis=1)
    tails = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # a baseline of (about) 0: no ratio
        ratio = float(c.mean() / b.mean()) - 1 if b.mean() > 0 else math.nan
        lifts = np.where(sums_b > 0, sums_c / np.where(sums_b > 0, sums_b, 1) - 1, np.nan)
    zero = int(np.count_nonzero(~np.isfinite(lifts)))
    interval = [float(v) for v in np.percentile(lifts, tails)] if zero == 0 else None
    return {**result, "candidate": float(c.mean()), "baseline": float(b.mean()),
            "difference": float(c.mean() - b.mean()),
            "difference_interval": [float(v) for v in np.percentile((sums_c - sums_b) / n, tails)],
            "relative": ratio if math.isfinite(ratio) else None,
            "relative_interval": interval, "zero_baseline_resamples": zero}


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def expectation_bounds(kwargs: dict) -> str:
    """An expectation's bounds in words: ``min 0.1, max 0.95``, ``in [True]``, ``for 99% of rows``,
    and the rows it ran on (``where side == item``: its ``row_condition``)."""
    parts = [f"{n.removesuffix('_value')} {_short(kwargs[n])}" for n in ("min_value", "max_value")
             if kwargs.get(n) is not None]
    if "value_set" in kwargs:
        parts.append(f"in {kwargs['value_set']}")
    if kwargs.get("mostly") is not None:
        parts.append(f"for {kwargs['mostly']:.0%} of rows")
    where = f" where {kwargs['row_condition']}" if kwargs.get("row_condition") else ""
    return ", ".join(parts) + where


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


def _users(candidate: dict, lift: dict | None) -> int | None:
    """Evaluated users the decision rests on: the bootstrap's, else the metrics' count (None: unknown)."""
    users = lift["users"] if lift is not None else candidate.get("users_evaluated")
    return None if users is None else int(users)


def _score(name: str, metrics: dict, metric: str) -> float:
    value = float(metrics[metric])
    if not math.isfinite(value):
        raise ValueError(f"the {name} {metric} is {value}: not a score")
    return value


def _against_popularity(lift: dict, min_lift: float) -> str | None:
    """Why the model does not clear popularity by ``min_lift`` on the bootstrap (None: it does)."""
    level = f"{lift['level']:.0%}"
    interval = relative_interval(lift)
    if interval is not None:
        if interval[0] > min_lift:
            return None
        return (f"the lower end of the lift's {level} interval ({_percent(interval[0])}) must be above "
                f"{min_lift:+.0%} ({lift['users']} users evaluated)")
    low, threshold = lift["difference_interval"][0], min_lift * lift["baseline"]
    if low > threshold:
        return None
    bound = ("0" if threshold == 0 else
             f"{threshold:+.4f} (the {min_lift:.0%} margin times popularity's mean {lift['baseline']:.4f})")
    return (f"popularity scores 0 in {_zero_resamples(lift)} resamples, so the difference is judged: the lower "
            f"end of its {level} interval ({low:+.4f}) must be above {bound} ({lift['users']} users evaluated)")


def _collapse(change: dict, max_drop: float) -> str | None:
    """Why the model collapsed against the published one on the same users (None: it did not)."""
    interval = relative_interval(change)
    if interval is not None:
        if not interval[1] < -max_drop:
            return None
        return (f"{_percent(change['relative'])} against the published model on the same held-out users "
                f"(interval up to {_percent(interval[1])}), a collapse of more than {max_drop:.0%}")
    high, threshold = change["difference_interval"][1], -max_drop * change["baseline"]
    if not high < threshold:
        return None
    return (f"{change['difference']:+.4f} against the published model on the same held-out users (difference "
            f"judged: it scores 0 in {_zero_resamples(change)} resamples; interval up to {high:+.4f}, below "
            f"{threshold:+.4f}, a collapse of more than {max_drop:.0%})")


def decide(metric: str, candidate: dict, baseline: dict, published: dict | None,
           min_lift: float = 0.0, max_drop: float = 0.2, override: bool = False,
           lift: dict | None = None, published_lift: dict | None = None,
           output_failures: tuple[str, ...] = (), *, min_users: int = 30) -> GateDecision:
    """``candidate``/``baseline``/``published``: metric dicts (published None when nothing is published).

    lift: ``paired_bootstrap`` of the per-user ``metric`` scores, model against popularity (the
    evaluation's ``lift[metric]``); the gate then asks its interval's lower end to clear
    ``min_lift`` (the difference's, when popularity scores 0: see the module doc). None: the
    point values are compared (``candidate > baseline * (1 + min_lift)``).
    published_lift: the same against the published model scored on these held-out pairs
    (``published`` is then its metrics there).
    output_failures: one line per failed expectation of the output suites (default none).
    min_users: with fewer evaluated users (``lift["users"]``, else ``candidate["users_evaluated"]``)
    the gate fails with "too few users to judge" and compares nothing else.
    """
    for name, metrics in (("candidate", candidate), ("baseline", baseline)):
        if metric not in metrics:
            raise ValueError(f"the {name} metrics have no {metric!r}; known: {sorted(metrics)}")
    c, b = _score("candidate", candidate, metric), _score("baseline", baseline, metric)
    p = _score("published", published, metric) if published and metric in published else None
    users = _users(candidate, lift)
    reasons = []
    if users is not None and users < min_users:
        reasons.append(f"too few users to judge: {users} evaluated, at least {min_users} needed")
    else:
        if lift is not None:
            reasons.append(_against_popularity(lift, min_lift))
        elif not c > b * (1 + min_lift):
            reasons.append(f"needs > {b * (1 + min_lift):.4f} to beat popularity by {min_lift:.0%}")
        if published_lift is not None and p is not None:
            reasons.append(_collapse(published_lift, max_drop))
        elif p is not None and c < p * (1 - max_drop):
            reasons.append(f"needs >= {p * (1 - max_drop):.4f}, at most {max_drop:.0%} below the published model")
    reasons = [r for r in reasons if r] + [f"output check {line}" for line in output_failures]
    return GateDecision(not reasons, bool(override) and bool(reasons), metric, c, b, p, min_lift, max_drop,
                        tuple(reasons), lift, users, min_users)
