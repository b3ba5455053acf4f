"""Exact top-n by dot product, excluding given items, for a batch of query vectors.

This is the scoring step of evaluation ("recommend the n best items the user has not played")
and of related items ("the n items whose unit factors are closest, not the item itself").
It runs in the Python workers on one batch of users against all item factors (broadcast),
one chunk of users at a time: a chunk's score matrix is one float32 matrix product (BLAS),
played items are set to -inf, and a bounded heap per row keeps the n best, so the output is
n rows per user, never users x items rows. (The heap, one pass over each row, compiled with
numba: ~1 ns per score against ~35 ns for ``np.argpartition``, which took 90% of the time.)

Order: score descending, then target position ascending, as the Spark window of the fallback
path orders its candidates; ties at the n-th place keep the smaller position, so the result
is exact and deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import os

import numpy as np
from numba import njit

from music_recs.sizing import CHUNK_BYTES  # one chunk's score matrix: rows x items float32

# numba caches compiled code next to this file; imported from spark-submit's --py-files zip
# there is no such folder, and each Python worker compiles once (well under a second).
_CACHE = os.path.isfile(__file__)


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
        top = np.empty((len(lists), n), dtype=np.int64)
        top_scores = np.full((len(lists), n), -np.inf, dtype=np.float32)
        _top_n_rows(scores, top, top_scores)
        keep = np.isfinite(top_scores)  # fewer than n targets left after the exclusions
        ranks = np.broadcast_to(np.arange(1, n + 1), top.shape)
        query_rows = np.broadcast_to(np.arange(start, start + len(lists))[:, None], top.shape)
        yield query_rows[keep], top[keep], top_scores[keep], ranks[keep]


@njit(cache=_CACHE, nogil=True)
def _worse(va, ia, vb, ib) -> bool:
    return va < vb or (va == vb and ia > ib)


@njit(cache=_CACHE, nogil=True)
def _sift_down(vals, idx, size, pos):
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        if child + 1 < size and _worse(vals[child + 1], idx[child + 1], vals[child], idx[child]):
            child += 1
        if not _worse(vals[child], idx[child], vals[pos], idx[pos]):
            return
        vals[pos], vals[child] = vals[child], vals[pos]
        idx[pos], idx[child] = idx[child], idx[pos]
        pos = child


@njit(cache=_CACHE, nogil=True)
def _top_n_rows(scores, top, top_scores):
    """Per row of ``scores``: its n = top.shape[1] best finite entries into ``top``/``top_scores``,
    best first (unfilled places keep -inf). A heap whose root is the worst kept entry: a new
    score enters only if it beats the root; scanning positions in ascending order, an equal
    score never does, so ties keep the smaller position."""
    n = top.shape[1]
    vals = np.empty(n, dtype=np.float32)
    idx = np.empty(n, dtype=np.int64)
    for r in range(scores.shape[0]):
        size = 0
        for j in range(scores.shape[1]):
            v = scores[r, j]
            if v == -np.inf:
                continue
            if size < n:  # fill, then heapify bottom-up when full
                vals[size] = v
                idx[size] = j
                size += 1
                if size == n:
                    for p in range(n // 2 - 1, -1, -1):
                        _sift_down(vals, idx, n, p)
            elif v > vals[0]:
                vals[0] = v
                idx[0] = j
                _sift_down(vals, idx, n, 0)
        if size < n:
            for p in range(size // 2 - 1, -1, -1):
                _sift_down(vals, idx, size, p)
        # Pop the worst into the last free place: best first.
        for place in range(size - 1, -1, -1):
            top[r, place] = idx[0]
            top_scores[r, place] = vals[0]
            size -= 1
            vals[0], idx[0] = vals[size], idx[size]
            _sift_down(vals, idx, size, 0)
