"""Conjugate-gradient solves for implicit ALS, one block of rows at a time (numba).

Implicit-feedback ALS (Hu, Koren & Volinsky, "Collaborative Filtering for Implicit
Feedback Datasets", ICDM 2008): from a count-derived strength r_ui >= 0 form the
preference ``P[u, i] = 1 if r_ui > 0 else 0`` and the confidence
``C[u, i] = 1 + alpha * r_ui``, and minimise::

    sum_{u,i} C[u,i] (P[u,i] - x_u . y_i)^2  +  lambda * (sum_u n_u |x_u|^2 + sum_i n_i |y_i|^2)

over user factors x_u and item factors y_i (rank k). With the items fixed, each user's
factor solves the k x k system::

    (Y^T Y + Y^T (C_u - I) Y + lambda n_u I) x_u = Y^T C_u p_u

``Y^T Y`` is shared by every user and computed once per half-iteration; the correction
``Y^T (C_u - I) Y`` only involves the user's own items (C - 1 = 0 elsewhere). MLlib forms
and factors that matrix for every row (cost ~ nnz k^2 + (m + n) k^3). Here the system is
solved approximately with a few conjugate-gradient steps warm-started from the previous
factors, never forming it (cost ~ (m + n) k^2 + nnz k per step): Takacs, Pilaszy & Tikk,
"Applications of the conjugate gradient method for implicit feedback collaborative
filtering", RecSys 2011; the same solver as the ``implicit`` library's CPU ALS.

Regularization: ``lambda * n_u`` with n_u the row's number of ratings, Spark MLlib's
convention (ALS-WR), so both training strategies minimise the same objective; pass
``scale_reg=False`` for a plain ``lambda`` (the ``implicit`` library's convention).

A block is CSR: ``indptr`` (rows + 1, int64), ``indices`` (int32 rows of ``Y``), ``conf``
(float32 confidences C, all > 1 because every stored strength is > 0).
"""

from __future__ import annotations

import numpy as np

from spark_jobs.lib.jit import cached_njit  # compiled once per source, also from the --py-files zip

DEFAULT_CG_STEPS = 3  # implicit's default: with a warm start, 3 steps are as good as an exact solve


@cached_njit(fastmath=True, nogil=True)
def cg_solve_block(indptr, indices, conf, Y, YtY, X, reg, cg_steps, scale_reg):  # pragma: no cover (JIT)
    """Update the rows of ``X`` in place: ``cg_steps`` CG steps from the current values."""
    n, k = X.shape
    # float32 throughout, as implicit does: a float literal would promote every product to
    # float64 and halve the SIMD width (measured: 2x slower at rank 64).
    zero, one = np.float32(0.0), np.float32(1.0)
    r = np.empty(k, dtype=np.float32)
    p = np.empty(k, dtype=np.float32)
    ap = np.empty(k, dtype=np.float32)
    for u in range(n):
        start, end = indptr[u], indptr[u + 1]
        lam = np.float32(reg * (end - start)) if scale_reg else reg
        # r = b - A x = sum_i (c - (c - 1) y_i.x) y_i - (YtY + lam I) x
        for a in range(k):
            acc = zero
            for b in range(k):
                acc += YtY[a, b] * X[u, b]
            r[a] = -acc - lam * X[u, a]
        for j in range(start, end):
            i = indices[j]
            c = conf[j]
            d = zero
            for a in range(k):
                d += Y[i, a] * X[u, a]
            w = c - (c - one) * d
            for a in range(k):
                r[a] += w * Y[i, a]
        rs_old = zero
        for a in range(k):
            p[a] = r[a]
            rs_old += r[a] * r[a]
        if rs_old < 1e-20:
            continue
        for _ in range(cg_steps):
            # ap = A p
            for a in range(k):
                acc = zero
                for b in range(k):
                    acc += YtY[a, b] * p[b]
                ap[a] = acc + lam * p[a]
            for j in range(start, end):
                i = indices[j]
                d = zero
                for a in range(k):
                    d += Y[i, a] * p[a]
                w = (conf[j] - one) * d
                for a in range(k):
                    ap[a] += w * Y[i, a]
            pap = zero
            for a in range(k):
                pap += p[a] * ap[a]
            if pap <= 0.0:
                break
            step = rs_old / pap
            rs_new = zero
            for a in range(k):
                X[u, a] += step * p[a]
                r[a] -= step * ap[a]
                rs_new += r[a] * r[a]
            if rs_new < 1e-20:
                break
            beta = rs_new / rs_old
            for a in range(k):
                p[a] = r[a] + beta * p[a]
            rs_old = rs_new


@cached_njit(fastmath=True, nogil=True)
def block_loss(indptr, indices, conf, Y, YtY, X, reg, scale_reg):  # pragma: no cover (JIT)
    """This block's share of the objective (the rows' data term and their regularization).

    sum_i C (P - x.y)^2 over *all* items = x^T YtY x + sum over rated items of c (1 - d)^2 - d^2,
    because unrated items have C = 1, P = 0.
    """
    n, k = X.shape
    total = 0.0
    for u in range(n):
        start, end = indptr[u], indptr[u + 1]
        quad = 0.0
        norm = 0.0
        for a in range(k):
            acc = 0.0
            for b in range(k):
                acc += YtY[a, b] * X[u, b]
            quad += acc * X[u, a]
            norm += X[u, a] * X[u, a]
        total += quad
        for j in range(start, end):
            i = indices[j]
            d = 0.0
            for a in range(k):
                d += Y[i, a] * X[u, a]
            total += conf[j] * (1.0 - d) * (1.0 - d) - d * d
        total += (reg * (end - start) if scale_reg else reg) * norm
    return total


def gram(factors: np.ndarray) -> np.ndarray:
    """Y^T Y in float64 (then float32 for the kernel): summed over blocks, so keep precision."""
    f = factors.astype(np.float64, copy=False)
    return f.T @ f


def solve_rows(indptr, indices, conf, Y, YtY, X, reg: float, cg_steps: int = DEFAULT_CG_STEPS,
               scale_reg: bool = True) -> np.ndarray:
    """A new float32 array: ``X`` after ``cg_steps`` CG steps per row (``X`` itself is left unchanged)."""
    out = np.array(X, dtype=np.float32, copy=True, order="C")
    if out.shape[0]:
        cg_solve_block(np.asarray(indptr, np.int64), np.asarray(indices, np.int32), np.asarray(conf, np.float32),
                       np.ascontiguousarray(Y, np.float32), np.ascontiguousarray(YtY, np.float32), out,
                       np.float32(reg), int(cg_steps), bool(scale_reg))
    return out


def rows_loss(indptr, indices, conf, Y, YtY, X, reg: float, scale_reg: bool = True) -> float:
    if not len(X):
        return 0.0
    return float(block_loss(np.asarray(indptr, np.int64), np.asarray(indices, np.int32),
                            np.asarray(conf, np.float32), np.ascontiguousarray(Y, np.float32),
                            np.ascontiguousarray(YtY, np.float32), np.ascontiguousarray(X, np.float32),
                            np.float32(reg), bool(scale_reg)))


def rows_reg(indptr, X, reg: float, scale_reg: bool = True) -> float:
    """The rows' regularization term: ``reg * sum_u w_u |x_u|^2`` (w_u = the row's ratings, or 1)."""
    weights = np.diff(indptr) if scale_reg else 1.0
    return float(reg * (weights * (np.asarray(X, np.float64) ** 2).sum(1)).sum())


def initial_factors(ids: np.ndarray, rank: int, seed: int) -> np.ndarray:
    """Small positive random factors in [0, 0.01), a pure function of (seed, id, column): every
    block layout and both factor-exchange paths start from the same values for the same row."""
    ids = np.asarray(ids, dtype=np.uint64)
    out = np.empty((len(ids), rank), dtype=np.float32)
    cols = np.arange(rank, dtype=np.uint64)[None, :]
    for start in range(0, len(ids), 8192):  # bounded temporaries (uint64, several per chunk)
        x = ids[start:start + 8192, None] * np.uint64(rank) + cols + np.uint64(seed << 40)
        # splitmix64: a counter-based generator, vectorized (uint64 arithmetic wraps by design).
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        out[start:start + 8192] = (x >> np.uint64(40)).astype(np.float32) * np.float32(0.01 / (1 << 24))
    return out


def start_factors(ids: np.ndarray, rank: int, seed: int, known: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> np.ndarray:
    """Where a fit starts: ``known = (ids, factors)`` of an earlier model (a warm start) for the
    rows it has, ``initial_factors`` for the rest (rows new since that model)."""
    out = initial_factors(ids, rank, seed)
    if known is not None and len(ids) and len(known[0]):
        known_ids, known_X = known
        order = np.argsort(known_ids, kind="stable")
        sorted_ids = np.asarray(known_ids)[order]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        hit = sorted_ids[pos] == ids
        out[hit] = np.asarray(known_X, np.float32)[order[pos[hit]]]
    return out
