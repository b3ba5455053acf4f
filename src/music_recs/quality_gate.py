"""The quality gate between evaluation and publishing.

A model is published only if, on the primary metric (MAP@k by default):

1. it beats the most-popular baseline of the same run by a relative margin
   (``candidate > baseline * (1 + min_lift)``), and
2. it is not more than ``max_drop`` (relative) below the model currently behind the
   ``latest`` pointer (``candidate >= published * (1 - max_drop)``). Held-out days differ
   between runs, so this is a guard against collapse, not a fine comparison; the default
   tolerance is wide for that reason.

A manual run may set ``override_quality_gate``: the decision is then recorded as overridden
in the manifest, with the numbers, and the model is published anyway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    @property
    def publish(self) -> bool:
        return self.passed or self.overridden

    def as_dict(self) -> dict:
        return {**asdict(self), "reasons": list(self.reasons), "publish": self.publish}

    def message(self) -> str:
        verdict = "passed" if self.passed else ("failed but overridden" if self.overridden else "failed")
        published = "none" if self.published is None else f"{self.published:.4f}"
        text = (f"quality gate {verdict} on {self.metric}: model {self.candidate:.4f}, "
                f"popularity baseline {self.baseline:.4f}, published model {published}")
        return text + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def decide(metric: str, candidate: dict, baseline: dict, published: dict | None,
           min_lift: float = 0.05, max_drop: float = 0.2, override: bool = False) -> GateDecision:
    """``candidate``/``baseline``/``published``: metric dicts (published None when nothing is published)."""
    for name, metrics in (("candidate", candidate), ("baseline", baseline)):
        if metric not in metrics:
            raise ValueError(f"the {name} metrics have no {metric!r}; known: {sorted(metrics)}")
    c, b = float(candidate[metric]), float(baseline[metric])
    p = float(published[metric]) if published and metric in published else None
    reasons = []
    if not c > b * (1 + min_lift):
        reasons.append(f"needs > {b * (1 + min_lift):.4f} to beat popularity by {min_lift:.0%}")
    if p is not None and c < p * (1 - max_drop):
        reasons.append(f"needs >= {p * (1 - max_drop):.4f}, at most {max_drop:.0%} below the published model")
    return GateDecision(not reasons, bool(override) and bool(reasons), metric, c, b, p, min_lift, max_drop,
                        tuple(reasons))
