"""Tuning trials on the driver: the CG strategy's kernels on one in-memory CSR matrix.

A trial on the cached blocks (``als_cg.fit``) pays a few Spark jobs per half-iteration, about
0.5 s each however small the data: 16 trials of 10 iterations cost minutes on a matrix that
fits in a few MB. When the tuning matrix is small enough (``LOCAL_MAX_NNZ`` ratings, the same
bound for every machine: its CSR, both ways, is ~12 bytes per rating), the search collects it
once to the driver and runs each trial here with the very same kernels (``cg_kernels``: same
objective, same CG steps, same random start per id), then scores it with the evaluation's
top-n kernel (``top_n``) and the reference metrics (``music_recs.metrics``), under the run's
recommendation rules (``LocalRules``: the evaluation's ``ranking.Rules`` on the matrix's
positions, applied by the same kernel). Larger matrices use the cached blocks: the result is
the same search, only the place it runs differs.

``fit_trace`` also starts from an earlier model's factors (a warm start across days), stops
by ``music_recs.convergence`` and reports each iteration's objective, so ``bench/warm_start.py``
measures the warm start with the kernels and the objective of the Spark strategy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from music_recs import schema as S
from music_recs.convergence import converged
from music_recs.metrics import mean_metrics
from spark_jobs.lib.cg_kernels import DEFAULT_CG_STEPS, gram, rows_loss, rows_reg, solve_rows, start_factors
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


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Dense positions of ``wanted`` in the sorted ``ids``; -1 for an id not there."""
    if not len(ids):
        return np.full(len(wanted), -1, np.int64)
    pos = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
    return np.where(ids[pos] == wanted, pos, -1)


@dataclass
class LocalRules:
    """The recommendation rules on a ``LocalMatrix``'s dense positions, for ``top_n_excluding``.

    cap: at most this many items of one group per list, filled from further down (0: no cap);
    groups: a group per item position (-1: none); blocked: a bool per item position, never
    recommended; user_blocked: user position -> item positions that user must not get.
    """

    cap: int = 0
    groups: np.ndarray | None = None
    blocked: np.ndarray | None = None
    user_blocked: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_rules(cls, rules, matrix: "LocalMatrix") -> "LocalRules":
        """``rules`` (a ``spark_jobs.lib.ranking.Rules``, on global ids) collected onto ``matrix``'s
        positions; listed ids the matrix does not have are dropped."""
        blocked, groups = rules.target_arrays(matrix.by_item.ids)
        pairs: dict[int, np.ndarray] = {}
        if rules.user_blocked is not None:
            table = rules.user_blocked.select(S.USER_IDX, S.ITEM_IDX).toArrow()
            u = _positions(matrix.by_user.ids, table.column(S.USER_IDX).to_numpy(zero_copy_only=False))
            i = _positions(matrix.by_item.ids, table.column(S.ITEM_IDX).to_numpy(zero_copy_only=False))
            keep = (u >= 0) & (i >= 0)
            u, i = u[keep], i[keep]
            order = np.argsort(u, kind="stable")
            users, starts = np.unique(u[order], return_index=True)
            pairs = dict(zip(users.tolist(), np.split(i[order], starts[1:])))
        return cls(rules.cap if groups is not None else 0, groups, blocked, pairs)


NO_LOCAL_RULES = LocalRules()

Known = tuple[np.ndarray, np.ndarray]  # (global ids, factors) of an earlier model


@dataclass
class FitTrace:
    """A fit's factors (dense-position order), the iterations it ran, the objective after each
    (empty when it was not computed) and each iteration's seconds (the callback's excluded)."""

    X: np.ndarray
    Y: np.ndarray
    iterations: int
    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    converged: bool = False  # the stopping rule fired (at or before ``max_iter``)


def objective(matrix: LocalMatrix, conf_i: np.ndarray, X: np.ndarray, Y: np.ndarray, reg: float, scale_reg: bool,
              XtX: np.ndarray | None = None) -> float:
    """The training objective as the Spark strategy sums it: the data term over every (user, item)
    pair plus the items' regularization (the item side's ``rows_loss``), plus the users'."""
    i = matrix.by_item
    XtX = gram(X) if XtX is None else XtX
    return (rows_loss(i.indptr, i.indices, conf_i, X, XtX.astype(np.float32), Y, reg, scale_reg)
            + rows_reg(matrix.by_user.indptr, X, reg, scale_reg))


def fit_trace(matrix: LocalMatrix, rank: int, max_iter: int, reg: float, conf_of, scale_reg: bool = True,
              cg_steps: int = DEFAULT_CG_STEPS, seed: int = 42, init: tuple[Known | None, Known | None] | None = None,
              tol: float = 0.0, on_iteration: Callable | None = None) -> FitTrace:
    """Fit on the driver; ``conf_of`` turns the values into confidence.

    init: ``(user_known, item_known)``, each an earlier model's ``(global ids, factors)`` or None;
    its rows start from those factors, the others random (``cg_kernels.start_factors``).
    tol: > 0 stops after an iteration that lowered the objective by less than this share
    (``music_recs.convergence.converged``); 0 runs ``max_iter`` iterations.
    on_iteration: ``(iteration, X, Y, loss)`` after each iteration (loss None when not computed).
    The objective is computed only when ``tol`` > 0 or a callback is given."""
    u, i = matrix.by_user, matrix.by_item
    conf_u, conf_i = (np.asarray(conf_of(m.values), np.float32) for m in (u, i))
    user_known, item_known = init if init is not None else (None, None)
    X = start_factors(u.ids, rank, seed, user_known)
    Y = start_factors(i.ids, rank, seed + 1, item_known)
    track = tol > 0 or on_iteration is not None
    trace = FitTrace(X, Y, 0)
    for iteration in range(1, max_iter + 1):
        started = time.perf_counter()
        X = solve_rows(u.indptr, u.indices, conf_u, Y, gram(Y).astype(np.float32), X, reg, cg_steps, scale_reg)
        XtX = gram(X)
        Y = solve_rows(i.indptr, i.indices, conf_i, X, XtX.astype(np.float32), Y, reg, cg_steps, scale_reg)
        loss = objective(matrix, conf_i, X, Y, reg, scale_reg, XtX) if track else None
        trace.seconds.append(time.perf_counter() - started)
        trace.X, trace.Y, trace.iterations = X, Y, iteration
        if loss is not None:
            trace.losses.append(loss)
        if on_iteration is not None:
            on_iteration(iteration, X, Y, loss)
        if converged(trace.losses, tol):
            trace.converged = True
            break
    return trace


def fit(matrix: LocalMatrix, rank: int, max_iter: int, reg: float, conf_of, scale_reg: bool = True,
        cg_steps: int = DEFAULT_CG_STEPS, seed: int = 42, init: tuple[Known | None, Known | None] | None = None,
        tol: float = 0.0, on_iteration: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(user factors, item factors) in dense-position order: ``fit_trace``'s factors."""
    trace = fit_trace(matrix, rank, max_iter, reg, conf_of, scale_reg, cg_steps, seed, init, tol, on_iteration)
    return trace.X, trace.Y


def recommend(matrix: LocalMatrix, X: np.ndarray, Y: np.ndarray, users, k: int,
              rules: LocalRules = NO_LOCAL_RULES) -> dict[int, list]:
    """Top ``k`` global item ids per global user id of ``users`` that has factors, best first,
    the user's rated items excluded and ``rules`` obeyed (the evaluation's top-n kernel)."""
    u = matrix.by_user
    users = np.asarray(sorted(users), dtype=np.int64)
    pos = np.searchsorted(u.ids, users)
    known = (pos < len(u.ids)) & (u.ids[np.minimum(pos, len(u.ids) - 1)] == users)
    rows = pos[known]
    excluded = [u.indices[u.indptr[r]:u.indptr[r + 1]] for r in rows]
    for n, r in enumerate(rows):  # a user's blocked pairs count as played
        if int(r) in rules.user_blocked:
            excluded[n] = np.concatenate([excluded[n], rules.user_blocked[int(r)]])
    ranked: dict[int, list] = {}
    query_users = users[known]
    for q, t, _, r in top_n_excluding(X[rows], excluded, Y, k, blocked=rules.blocked, groups=rules.groups,
                                      cap=rules.cap):
        for a, b, c in zip(q, t, r):
            ranked.setdefault(int(query_users[a]), []).append((int(c), int(matrix.by_item.ids[b])))
    return {user: [item for _, item in sorted(pairs)] for user, pairs in ranked.items()}


def score(matrix: LocalMatrix, X: np.ndarray, Y: np.ndarray, truth: dict[int, set], k: int,
          rules: LocalRules = NO_LOCAL_RULES) -> dict:
    """Mean metrics at k over the users of ``truth`` (global ids -> held-out global item ids);
    candidates exclude the user's rated items, lists obey ``rules`` (a held-out item they forbid
    is a miss); a user or item without factors scores as a miss."""
    recs = recommend(matrix, X, Y, truth, k, rules)
    return {**mean_metrics(recs, truth, k), "users_evaluated": len(truth)}
