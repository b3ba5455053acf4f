"""Exact top-n by dot product, excluding given items, for a batch of query vectors.

This is the scoring step of evaluation ("recommend the n best items the user has not played")
and of related items ("the n items whose unit factors are closest, not the item itself").
It runs in the Python workers on one batch of users against all item factors (broadcast),
one chunk of users at a time: a chunk's score matrix is one float32 matrix product (BLAS),
played items are set to -inf, and a bounded heap per row keeps the n best, so the output is
n rows per user, never users x items rows. (The heap, one pass over each row, compiled with
numba: ~1 ns per score against ~35 ns for ``np.argpartition``, which took 90% of the time.)

Pruning, exact: a target's score is at most |q| |y| (Cauchy-Schwarz), and ALS gives the rarely
played items small factors. So the targets are tried in prefixes of decreasing norm, the first
``first_prefix`` long, each next one ``PREFIX_GROWTH`` times longer, the last one every target
(each prefix keeps the targets' own order, so ties still break by position). A query whose n-th
kept score beats |q| times the largest norm left out is done: no target outside can enter or
tie. The others go on to the next prefix, the work done on the shorter one wasted (at most a
third with growth 4). With the cap the same holds: every target ranked above that n-th score is
in the prefix, so the greedy walk over it is the walk over the full ranking.

Order: score descending, then target position ascending, as the Spark window of the fallback
path orders its candidates; ties at the n-th place keep the smaller position, so the result
is exact and deterministic.

Two optional rules: ``blocked`` targets are never returned (the global do-not-recommend
list), and with ``groups`` (an artist index per track, -1 for none) and ``cap`` > 0 a query's
list holds at most ``cap`` targets of one group. The capped list is, exactly, the full ranking
minus excluded and blocked targets, walked in order, a target skipped when its group already
has ``cap`` places, until n are kept: fewer when the candidates run out (ranks stay 1..m).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from music_recs.sizing import CHUNK_BYTES  # one chunk's score matrix: rows x items float32
from spark_jobs.lib.jit import cached_njit  # compiled once per source, also from the --py-files zip


def chunk_rows(n_targets: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many queries to score at once so their score matrix stays within ``chunk_bytes``."""
    return max(1, chunk_bytes // (4 * max(n_targets, 1)))


# The first prefix of targets by norm (see the module docstring), and how much longer each next one is.
FIRST_PREFIX = 8192
PREFIX_GROWTH = 4
# float32 dot products of rank k round within ~k * 6e-8 of |q| |y|: the bound gets this much room.
BOUND_SLACK = 1e-4


def norm_prefixes(targets: np.ndarray, first: int = FIRST_PREFIX,
                  growth: int = PREFIX_GROWTH) -> list[tuple[np.ndarray, float]]:
    """``(columns, largest norm left out)`` per prefix of the targets by decreasing norm; columns in
    ascending order; the last prefix is every target (left-out norm ``-1``: nothing is left out)."""
    t = targets.shape[0]
    norms = np.sqrt(np.einsum("ij,ij->i", targets, targets, dtype=np.float64))
    order = np.argsort(-norms, kind="stable")
    stages, size = [], max(1, first)
    while size < t:
        stages.append((np.sort(order[:size]), float(norms[order[size]])))
        size *= max(2, growth)
    stages.append((np.arange(t), -1.0))
    return stages


def top_n_excluding(queries: np.ndarray, excluded: Sequence[np.ndarray], targets: np.ndarray, n: int,
                    chunk_bytes: int = CHUNK_BYTES, blocked: np.ndarray | None = None,
                    groups: np.ndarray | None = None, cap: int = 0,
                    first_prefix: int = FIRST_PREFIX) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(query_row, target_row, score, rank)`` arrays, chunk by chunk.

    ``queries``: (q, k) float32; ``targets``: (t, k) float32; ``excluded[i]``: target rows query
    ``i`` must not get. Each query gets its ``min(n, t - excluded)`` best targets, ranks 1..n.
    ``blocked``: (t,) bool, targets no query gets. ``groups``: (t,) int, a group per target
    (-1: none); with ``cap`` > 0 at most ``cap`` targets of one group per query (0: no cap).
    ``first_prefix``: targets in the first norm prefix (at least ``t``: no pruning).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    targets = np.ascontiguousarray(targets, dtype=np.float32)
    if len(excluded) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(excluded)} exclusion lists")
    t = targets.shape[0]
    blocked_cols = _blocked_columns(blocked, t)
    group_of, n_groups = _dense_groups(groups, cap, t)
    n = min(n, t - len(blocked_cols))
    if n <= 0 or not len(queries):
        return
    stages = []
    for cols, left_out in norm_prefixes(targets, first_prefix):
        position = np.full(t, -1, dtype=np.int64)  # a target's column in this prefix
        position[cols] = np.arange(len(cols))
        sub_blocked = position[blocked_cols]
        stages.append((cols, left_out, position, np.ascontiguousarray(targets[cols]), sub_blocked[sub_blocked >= 0],
                       None if group_of is None else group_of[cols]))
    query_norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64)) * (1 + BOUND_SLACK)
    step = chunk_rows(t, chunk_bytes)
    for start in range(0, len(queries), step):
        active = np.arange(start, min(start + step, len(queries)))
        for cols, left_out, position, sub_targets, sub_blocked, sub_groups in stages:
            top, top_scores = _rank_chunk(queries[active] @ sub_targets.T, [excluded[i] for i in active], position,
                                          sub_blocked, sub_groups, n_groups, cap, n)
            done = (np.isfinite(top_scores[:, -1]) & (top_scores[:, -1] > query_norms[active] * left_out)
                    if left_out >= 0 else np.ones(len(active), dtype=bool))
            if done.any():
                top, top_scores = top[done], top_scores[done]
                keep = np.isfinite(top_scores)  # fewer than n targets left after the exclusions (and the cap)
                ranks = np.broadcast_to(np.arange(1, n + 1), top.shape)
                query_rows = np.broadcast_to(active[done][:, None], top.shape)
                yield query_rows[keep], cols[top[keep]], top_scores[keep], ranks[keep]
            active = active[~done]
            if not len(active):
                break


def _rank_chunk(scores: np.ndarray, lists: Sequence[np.ndarray], position: np.ndarray, blocked_cols: np.ndarray,
                group_of: np.ndarray | None, n_groups: int, cap: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best columns of each row of ``scores`` (best first; unfilled places -inf), the row's
    ``lists`` entries (target rows, put in columns by ``position``; -1: not here) and ``blocked_cols``
    left out, at most ``cap`` per group of ``group_of`` (None: no cap)."""
    lengths = np.fromiter((len(e) for e in lists), dtype=np.int64, count=len(lists))
    if lengths.sum():
        rows = np.repeat(np.arange(len(lists)), lengths)
        cols = position[np.concatenate(lists).astype(np.int64)]
        scores[rows[cols >= 0], cols[cols >= 0]] = -np.inf
    if len(blocked_cols):
        scores[:, blocked_cols] = -np.inf
    top = np.zeros((len(lists), n), dtype=np.int64)
    top_scores = np.full((len(lists), n), -np.inf, dtype=np.float32)
    if group_of is None:
        _top_n_rows(scores, top, top_scores)
    else:
        _top_n_capped_rows(scores, group_of, n_groups, cap, top, top_scores)
    return top, top_scores


def _blocked_columns(blocked: np.ndarray | None, t: int) -> np.ndarray:
    """The target rows ``blocked`` marks (none when it is not given)."""
    if blocked is None:
        return np.empty(0, dtype=np.int64)
    blocked = np.asarray(blocked)
    if blocked.dtype != np.bool_ or blocked.shape != (t,):
        raise ValueError(f"blocked must be a bool array of one entry per target ({t}), "
                         f"got {blocked.dtype} {blocked.shape}")
    return np.flatnonzero(blocked)


def _dense_groups(groups: np.ndarray | None, cap: int, t: int) -> tuple[np.ndarray | None, int]:
    """Groups renumbered 0..g-1 (-1 kept), so the kernel's per-group counters are g long whatever
    the ids; (None, 0) when there is no cap."""
    if cap < 0:
        raise ValueError(f"cap must be >= 0 (0: no cap), got {cap}")
    if cap == 0:
        return None, 0
    if groups is None:
        raise ValueError(f"cap {cap} needs groups (a group per target)")
    groups = np.asarray(groups)
    if not np.issubdtype(groups.dtype, np.integer) or groups.shape != (t,):
        raise ValueError(f"groups must be an int array of one entry per target ({t}), "
                         f"got {groups.dtype} {groups.shape}")
    if t and groups.min() < -1:
        raise ValueError(f"groups must be >= -1 (-1: no group), got {groups.min()}")
    ids, dense = np.unique(groups, return_inverse=True)
    ungrouped = int(ids[0] == -1) if len(ids) else 0
    return np.where(groups == -1, -1, dense.reshape(-1) - ungrouped).astype(np.int64), len(ids) - ungrouped


@cached_njit(nogil=True)
def _worse(va, ia, vb, ib) -> bool:
    return va < vb or (va == vb and ia > ib)


@cached_njit(nogil=True)
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


@cached_njit(nogil=True)
def _select(row, m, vals, idx, out_idx, out_vals):
    """The m best finite entries of ``row`` into ``out_idx``/``out_vals``, best first; returns how
    many there were (< m when the row has fewer). ``vals``/``idx``: heap space of at least m.
    A heap whose root is the worst kept entry: a new score enters only if it beats the root;
    scanning positions in ascending order, an equal score never does, so ties keep the smaller
    position, and the m kept are exactly the first m of the full ranking."""
    size = 0
    for j in range(row.shape[0]):
        v = row[j]
        if v == -np.inf:
            continue
        if size < m:  # fill, then heapify bottom-up when full
            vals[size] = v
            idx[size] = j
            size += 1
            if size == m:
                _heapify(vals, idx, m)
        elif v > vals[0]:
            vals[0] = v
            idx[0] = j
            _sift_down(vals, idx, m, 0)
    return _drain(vals, idx, size, m, out_idx, out_vals)


@cached_njit(nogil=True)
def _select_after(row, m, after_v, after_j, groups, counts, cap, vals, idx, out_idx, out_vals):
    """As ``_select``, over the entries ranked after (``after_v``, ``after_j``) whose group is not
    full (an entry of a full group is skipped wherever it ranks)."""
    size = 0
    for j in range(row.shape[0]):
        v = row[j]
        if v == -np.inf or (size == m and not v > vals[0]):
            continue  # the common case: cannot enter
        if v > after_v or (v == after_v and j <= after_j):
            continue  # walked by an earlier pass
        g = groups[j]
        if g >= 0 and counts[g] >= cap:
            continue
        if size < m:
            vals[size] = v
            idx[size] = j
            size += 1
            if size == m:
                _heapify(vals, idx, m)
        else:
            vals[0] = v
            idx[0] = j
            _sift_down(vals, idx, m, 0)
    return _drain(vals, idx, size, m, out_idx, out_vals)


@cached_njit(nogil=True)
def _heapify(vals, idx, size):
    for p in range(size // 2 - 1, -1, -1):
        _sift_down(vals, idx, size, p)


@cached_njit(nogil=True)
def _drain(vals, idx, size, m, out_idx, out_vals):
    """Empty a heap of ``size`` entries, m when full, into ``out_*`` best first; returns ``size``."""
    if size < m:
        _heapify(vals, idx, size)  # a partly filled heap was never heapified (a full one was)
    found = size
    # Pop the worst into the last free place: best first.
    for place in range(size - 1, -1, -1):
        out_idx[place] = idx[0]
        out_vals[place] = vals[0]
        size -= 1
        vals[0], idx[0] = vals[size], idx[size]
        _sift_down(vals, idx, size, 0)
    return found


@cached_njit(nogil=True)
def _top_n_rows(scores, top, top_scores):
    """Per row of ``scores``: its n = top.shape[1] best finite entries into ``top``/``top_scores``,
    best first (unfilled places keep -inf)."""
    n = top.shape[1]
    vals = np.empty(n, dtype=np.float32)
    idx = np.empty(n, dtype=np.int64)
    for r in range(scores.shape[0]):
        _select(scores[r], n, vals, idx, top[r], top_scores[r])


@cached_njit(nogil=True)
def _top_n_capped_rows(scores, groups, n_groups, cap, top, top_scores):
    """As ``_top_n_rows``, at most ``cap`` entries of one group (``groups[j]`` >= 0) per row.

    Per row, passes over the row: each selects the next m candidates of the ranking (after the
    last one walked, skipping groups already full) and walks them in order, skipping an entry
    whose group has filled meanwhile. Exact: an entry of a full group is skipped by the greedy
    walk wherever it ranks, so the passes walk the full ranking's order, minus entries the walk
    would skip; it stops at n kept, or when a pass finds fewer than m (the row is used up).
    Cost: a pass is one scan of the row plus heap work growing with m. The first takes m = 2n,
    which fills the list unless a few groups crowd the row's top; a later one takes 4x, 8x, ...
    the places still missing. Each pass keeps at least its first candidate (its group was not
    full), so there are at most n passes, and at most ~log2(t) as m doubles per missing place.
    Group counters are reset for the groups the row touched only (at most n of them)."""
    n = top.shape[1]
    t = scores.shape[1]
    counts = np.zeros(max(n_groups, 1), dtype=np.int64)
    touched = np.empty(n, dtype=np.int64)
    first_m = min(t, 2 * n)
    room = first_m
    vals = np.empty(room, dtype=np.float32)
    idx = np.empty(room, dtype=np.int64)
    ranked = np.empty(room, dtype=np.int64)
    ranked_vals = np.empty(room, dtype=np.float32)
    for r in range(scores.shape[0]):
        row = scores[r]
        m = first_m
        after_v, after_j = np.float32(np.inf), -1  # nothing walked yet
        per_missing = 4
        kept = 0
        n_touched = 0
        while True:
            if m > room:
                room = m
                vals = np.empty(room, dtype=np.float32)
                idx = np.empty(room, dtype=np.int64)
                ranked = np.empty(room, dtype=np.int64)
                ranked_vals = np.empty(room, dtype=np.float32)
            found = _select_after(row, m, after_v, after_j, groups, counts, cap, vals, idx, ranked, ranked_vals)
            for k in range(found):
                j = ranked[k]
                g = groups[j]
                if g >= 0:
                    if counts[g] >= cap:
                        continue
                    if counts[g] == 0:
                        touched[n_touched] = g
                        n_touched += 1
                    counts[g] += 1
                top[r, kept] = j
                top_scores[r, kept] = ranked_vals[k]
                kept += 1
                if kept == n:
                    break
            if kept == n or found < m:
                break  # full, or every candidate of the row was walked
            after_v, after_j = ranked_vals[found - 1], ranked[found - 1]
            m = min(t, per_missing * (n - kept))
            per_missing *= 2
        for k in range(n_touched):
            counts[touched[k]] = 0
