"""Tuning trials on the driver: the CG strategy's kernels on one in-memory CSR matrix.

A trial on the cached blocks (``als_cg.fit``) pays a few Spark jobs per half-iteration, about
0.5 s each however small the data: 16 trials of 10 iterations cost minutes on a matrix that
fits in a few MB. When the tuning matrix is small enough (``LOCAL_MAX_NNZ`` ratings, the same
bound for every machine: its CSR, both ways, is ~12 bytes per rating), the search collects it
once to the driver and runs each trial here with the very same kernels (``cg_kernels``: same
objective, same CG steps, same random start per id), then scores it with the evaluation's
top-n kernel (``top_n``) and the reference metrics (``music_recs.metrics``). Larger matrices
use the cached blocks: the result is the same search, only the place it runs differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from music_recs.metrics import mean_metrics
from spark_jobs.lib.cg_kernels import DEFAULT_CG_STEPS, gram, initial_factors, solve_rows
from spark_jobs.lib.top_n import top_n_excluding

LOCAL_MAX_NNZ = 20_000_000


@dataclass
class Csr:
    """Rows (dense positions 0..n-1, global ids in ``ids``) and their entries (dense positions of the other side)."""

    ids: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray


def _csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, ids: np.ndarray) -> Csr:
    order = np.lexsort((cols, rows))
    counts = np.bincount(rows, minlength=n_rows)
    return Csr(ids, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), cols[order].astype(np.int32),
               values[order].astype(np.float32))


@dataclass
class LocalMatrix:
    """One ratings matrix both ways (by user, by item), on dense positions."""

    by_user: Csr
    by_item: Csr

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, values: np.ndarray) -> "LocalMatrix":
        user_ids, u = np.unique(users, return_inverse=True)
        item_ids, i = np.unique(items, return_inverse=True)
        return cls(_csr(u, i, values, len(user_ids), user_ids), _csr(i, u, values, len(item_ids), item_ids))


def fit(matrix: LocalMatrix, rank: int, max_iter: int, reg: float, conf_of, scale_reg: bool = True,
        cg_steps: int = DEFAULT_CG_STEPS, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(user factors, item factors) in dense-position order; ``conf_of`` turns the values into confidence."""
    u, i = matrix.by_user, matrix.by_item
    conf_u, conf_i = (np.asarray(conf_of(m.values), np.float32) for m in (u, i))
    X = initial_factors(u.ids, rank, seed)
    Y = initial_factors(i.ids, rank, seed + 1)
    for _ in range(max_iter):
        X = solve_rows(u.indptr, u.indices, conf_u, Y, gram(Y).astype(np.float32), X, reg, cg_steps, scale_reg)
        Y = solve_rows(i.indptr, i.indices, conf_i, X, gram(X).astype(np.float32), Y, reg, cg_steps, scale_reg)
    return X, Y


def score(matrix: LocalMatrix, X: np.ndarray, Y: np.ndarray, truth: dict[int, set], k: int) -> dict:
    """Mean metrics at k over the users of ``truth`` (global ids -> held-out global item ids);
    candidates exclude the user's rated items; a user or item without factors scores as a miss."""
    u = matrix.by_user
    users = sorted(truth)
    pos = np.searchsorted(u.ids, users)
    known = (pos < len(u.ids)) & (u.ids[np.minimum(pos, len(u.ids) - 1)] == users)
    rows = pos[known]
    excluded = [u.indices[u.indptr[r]:u.indptr[r + 1]] for r in rows]
    ranked: dict[int, list] = {}
    query_users = np.asarray(users)[known]
    for q, t, _, r in top_n_excluding(X[rows], excluded, Y, k):
        for a, b, c in zip(q, t, r):
            ranked.setdefault(int(query_users[a]), []).append((int(c), int(matrix.by_item.ids[b])))
    recs = {user: [item for _, item in sorted(pairs)] for user, pairs in ranked.items()}
    return {**mean_metrics(recs, truth, k), "users_evaluated": len(users)}
