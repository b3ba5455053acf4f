"""Exact top-n by dot product, excluding given items, for a batch of query vectors.

This is the scoring step of evaluation ("recommend the n best items the user has not played")
and of related items ("the n items whose unit factors are closest, not the item itself").
It runs in the Python workers on one batch of users against all item factors (broadcast),
one chunk of users at a time: a chunk's score matrix is one float32 matrix product (BLAS),
played items are set to -inf, and ``argpartition`` keeps the n best, so the output is
n rows per user, never users x items rows.

Within the n kept, equal scores are ordered by target position (as the Spark window of the
fallback path orders its candidates: score descending, item ascending); which of several
targets tied at the n-th score is kept is up to ``argpartition`` (deterministic for the same
input, so reruns agree).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

CHUNK_BYTES = 64 * 1024 * 1024  # one chunk's score matrix: rows x items float32


def chunk_rows(n_targets: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many queries to score at once so their score matrix stays within ``chunk_bytes``."""
    return max(1, chunk_bytes // (4 * max(n_targets, 1)))


def top_n_excluding(queries: np.ndarray, excluded: Sequence[np.ndarray], targets: np.ndarray, n: int,
                    chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(query_row, target_row, score, rank)`` arrays, chunk by chunk.

    ``queries``: (q, k) float32; ``targets``: (t, k) float32; ``excluded[i]``: target rows query
    ``i`` must not get. Each query gets its ``min(n, t - excluded)`` best targets, ranks 1..n.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    targets = np.ascontiguousarray(targets, dtype=np.float32)
    if len(excluded) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(excluded)} exclusion lists")
    t = targets.shape[0]
    n = min(n, t)
    if n <= 0 or not len(queries):
        return
    step = chunk_rows(t, chunk_bytes)
    for start in range(0, len(queries), step):
        scores = queries[start:start + step] @ targets.T
        lists = excluded[start:start + step]
        lengths = np.fromiter((len(e) for e in lists), dtype=np.int64, count=len(lists))
        if lengths.sum():
            rows = np.repeat(np.arange(len(lists)), lengths)
            scores[rows, np.concatenate(lists).astype(np.int64)] = -np.inf
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n < t else np.broadcast_to(np.arange(t), scores.shape)
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=-1)
        top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
        keep = np.isfinite(top_scores)  # fewer than n targets left after the exclusions
        ranks = np.broadcast_to(np.arange(1, n + 1), top.shape)
        query_rows = np.broadcast_to(np.arange(start, start + len(lists))[:, None], top.shape)
        yield query_rows[keep], top[keep], top_scores[keep], ranks[keep]
