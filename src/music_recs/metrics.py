"""Ranking metrics at k: the pure-Python reference the Spark implementation is tested against.

For one user, ``recs`` is the ranked list of recommended items (already played training
items excluded) and ``relevant`` the set of held-out items. With ``hits@i`` = relevant
items among the first i recommendations:

* precision@k = hits@k / k
* recall@k    = hits@k / |relevant|
* AP@k        = sum over relevant positions i <= k of (hits@i / i), divided by min(|relevant|, k)
* NDCG@k      = DCG@k / IDCG@k, DCG = sum of 1/log2(i + 1) over relevant positions,
  IDCG the DCG of a perfect list (min(|relevant|, k) hits on top)

Averages are over users with at least one held-out item (the "evaluated" users).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

METRICS = ("precision", "recall", "map", "ndcg")


def user_metrics(recs: Sequence, relevant: set, k: int) -> dict[str, float]:
    """Precision, recall, AP and NDCG at ``k`` of one user's ranked ``recs`` against the ``relevant`` set."""
    if not relevant:
        raise ValueError("a user without held-out items is not evaluated")
    top = list(recs)[:k]
    hits, ap, dcg = 0, 0.0, 0.0
    for i, item in enumerate(top, start=1):
        if item in relevant:
            hits += 1
            ap += hits / i
            dcg += 1.0 / math.log2(i + 1)
    ideal = min(len(relevant), k)
    idcg = sum(1.0 / math.log2(i + 1) for i in range(1, ideal + 1))
    return {
        "precision": hits / k,
        "recall": hits / len(relevant),
        "map": ap / ideal,
        "ndcg": dcg / idcg,
    }


def mean_metrics(recs_by_user: Mapping, relevant_by_user: Mapping[object, Iterable], k: int) -> dict[str, float]:
    """Average over users with held-out items; users without recommendations score 0."""
    totals = dict.fromkeys(METRICS, 0.0)
    users = [u for u, rel in relevant_by_user.items() if rel]
    for u in users:
        m = user_metrics(recs_by_user.get(u, []), set(relevant_by_user[u]), k)
        for name in METRICS:
            totals[name] += m[name]
    n = len(users)
    return {name: (totals[name] / n if n else 0.0) for name in METRICS}
