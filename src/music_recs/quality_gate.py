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

   **A baseline that scores 0.** A resample in which popularity scores 0 has an unbounded lift
   (or none, 0, when the model scores 0 there too), so an end of the interval that falls on
   such resamples is unbounded (None in ``relative_interval``, "unbounded" in the message):
   with popularity scoring for a few users only, the upper end usually is, and the lower end
   still decides (a resample misses every user popularity scores for with probability at most
   1/e, so the lower end is bounded). When popularity scores 0 for every user (no relative lift
   at all: ``relative`` and ``relative_interval`` are None), or a lower end is unbounded
   anyway (a ratio that overflows), the gate judges the **difference**
   ``mean(model) - mean(popularity)``: its interval's lower end must be above 0 (an unbounded
   lift clears every margin ``min_lift``). The reason and the message say so. No NaN or
   infinity reaches the decision, its message or the manifest.
2. it has not collapsed against the model currently behind the ``latest`` pointer. When the
   evaluation scored that model on the same held-out pairs (``published_lift``: the paired
   bootstrap of the per-user change), the gate refuses only a confident collapse: the upper
   end of the interval of the relative change below ``-max_drop`` (an unbounded upper end is
   no collapse; against a published model that scores 0 for every user, only a difference
   whose upper end is below 0 is). Otherwise (nothing to
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


def percent_change(value: float | None) -> str:
    """A relative change in a few characters (``+12.3%``; ``+4.1e+05%`` when huge; None: unbounded)."""
    if value is None:
        return "unbounded"
    if abs(value) < 100:
        return f"{value:+.1%}"
    mantissa, exponent = f"{value:+.1e}".split("e")  # x 100 in the exponent: the value itself may be near overflow
    return f"{mantissa}e{int(exponent) + 2:+03d}%"


def relative_interval(lift: dict) -> list[float | None] | None:
    """The bootstrap's interval of the relative change: None when the baseline scores 0 for every
    user (no relative change at all); an end None where it is unbounded (the baseline scored 0 in
    the resamples at that tail). Earlier versions stored inf or NaN there: read as None."""
    interval = lift.get("relative_interval")
    if interval is None or lift.get("baseline", 1.0) <= 0:
        return None
    return [float(v) if v is not None and math.isfinite(v) else None for v in interval]


def _zero(lift: dict) -> str:
    """Where the baseline scored 0, in words."""
    if lift.get("baseline", 1.0) <= 0:
        return "for every user"
    zero = lift.get("zero_baseline_resamples")
    return "in some resamples" if zero is None else f"in {zero} of {lift['resamples']} resamples"


def _on_difference(lift: dict) -> bool:
    """Whether the gate judges the difference: the lift's lower end is unbounded or undefined."""
    interval = relative_interval(lift)
    return interval is None or interval[0] is None


def lift_summary(lift: dict) -> str:
    """A ``paired_bootstrap`` against popularity in words, as the gate judged it (no NaN or inf):
    ``lift +12.3%, 95% interval [+4.0%, +21.0%] over 250 users``; an unbounded end says where
    popularity scored 0; when the difference is judged, its interval."""
    level, users = f"{lift['level']:.0%}", lift["users"]
    interval = relative_interval(lift)
    point = (f"lift {percent_change(lift.get('relative'))}" if interval is not None
             else "lift unbounded" if lift["candidate"] > 0 else "no lift")
    if not _on_difference(lift):
        low, high = interval
        return (f"{point}, {level} interval [{percent_change(low)}, {percent_change(high)}] over {users} users"
                + (f"; popularity scores 0 {_zero(lift)}" if high is None else ""))
    low, high = lift["difference_interval"]
    return (f"{point}: popularity scores 0 {_zero(lift)}; judged on the difference {lift['difference']:+.4f}, "
            f"{level} interval [{low:+.4f}, {high:+.4f}] over {users} users")


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
            text += f" ({lift_summary(self.lift)})"
        text += f", published model {published}"
        return text + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def _tail(ordered: np.ndarray, q: float) -> float | None:
    """numpy's linear percentile ``q`` of sorted values that may hold infinities; None where it
    touches one (that end of the interval is unbounded)."""
    h = (len(ordered) - 1) * q / 100
    lo, hi = ordered[math.floor(h)], ordered[math.ceil(h)]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return float(lo + (hi - lo) * (h - math.floor(h)))


def paired_bootstrap(candidate, baseline, resamples: int = 1000, level: float = 0.95, seed: int = 42) -> dict:
    """Mean difference and relative lift of paired per-user scores, with percentile intervals.

    candidate, baseline: one finite score per evaluated user (ranking metrics: >= 0), in the same
    user order. Users are resampled with replacement ``resamples`` times (seeded: the same scores
    give the same interval). ``difference`` and its interval are always defined. ``relative`` is
    ``mean(candidate) / mean(baseline) - 1``: None when the baseline scores 0 for every user
    (``relative_interval`` is then None too) or the ratio overflows. A resample whose baseline
    scores 0 (``zero_baseline_resamples`` of them) has an unbounded lift, or none (0, when the
    candidate scores 0 there too); an end of ``relative_interval`` that falls on one is None.
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
    mean_c, mean_b = float(c.mean()), float(b.mean())
    relative = interval = None
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # a baseline of (about) 0: no bound
        if mean_b > 0:
            relative = mean_c / mean_b - 1
        lifts = np.where(sums_b > 0, sums_c / np.where(sums_b > 0, sums_b, 1) - 1,
                         np.sign(sums_c) * np.inf)  # 0/0: no lift
        lifts = np.nan_to_num(lifts, nan=0.0, posinf=np.inf, neginf=-np.inf)
    zero = int(np.count_nonzero(~np.isfinite(lifts) | (sums_b <= 0)))
    if mean_b > 0:
        interval = ([float(v) for v in np.percentile(lifts, tails)] if np.isfinite(lifts).all()
                    else [_tail(np.sort(lifts), q) for q in tails])
    return {**result, "candidate": mean_c, "baseline": mean_b, "difference": mean_c - mean_b,
            "difference_interval": [float(v) for v in np.percentile((sums_c - sums_b) / n, tails)],
            "relative": relative if relative is not None and math.isfinite(relative) else None,
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
    if not _on_difference(lift):
        low = relative_interval(lift)[0]
        if low > min_lift:
            return None
        return (f"the lower end of the lift's {level} interval ({percent_change(low)}) must be above "
                f"{min_lift:+.0%} ({lift['users']} users evaluated)")
    # An unbounded lift clears every margin: a positive difference is what is asked.
    low = lift["difference_interval"][0]
    if low > 0:
        return None
    return (f"the lower end of the difference's {level} interval ({low:+.4f}) must be above 0 (popularity "
            f"scores 0 {_zero(lift)}, so the difference is judged; {lift['users']} users evaluated)")


def _collapse(change: dict, max_drop: float) -> str | None:
    """Why the model collapsed against the published one on the same users (None: it did not)."""
    interval = relative_interval(change)
    if interval is not None:
        high = interval[1]  # None: unbounded above, no collapse
        if high is None or not high < -max_drop:
            return None
        return (f"{percent_change(change['relative'])} against the published model on the same held-out users "
                f"(interval up to {percent_change(high)}), a collapse of more than {max_drop:.0%}")
    high = change["difference_interval"][1]  # it scores 0 for every user: only a negative difference falls
    if not high < 0:
        return None
    return (f"{change['difference']:+.4f} against the published model on the same held-out users, which scores "
            f"0 for every user (difference interval up to {high:+.4f})")


def decide(metric: str, candidate: dict, baseline: dict, published: dict | None,
           min_lift: float = 0.0, max_drop: float = 0.2, override: bool = False,
           lift: dict | None = None, published_lift: dict | None = None,
           output_failures: tuple[str, ...] = (), *, min_users: int = 30) -> GateDecision:
    """``candidate``/``baseline``/``published``: metric dicts (published None when nothing is published).

    lift: ``paired_bootstrap`` of the per-user ``metric`` scores, model against popularity (the
    evaluation's ``lift[metric]``); the gate then asks its interval's lower end to clear
    ``min_lift`` (the difference's lower end to be above 0 when popularity scores 0 in nearly
    every resample or for every user: see the module doc). None: the
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
