"""The conjugate-gradient kernels against a dense numpy solve of the same normal equations."""

import numpy as np
import pytest

from spark_jobs.lib.cg_kernels import gram, initial_factors, rows_loss, solve_rows


def random_csr(rng, rows: int, cols: int, per_row: int):
    indptr = [0]
    indices, conf = [], []
    for _ in range(rows):
        cols_u = np.sort(rng.choice(cols, size=rng.integers(1, per_row + 1), replace=False))
        indices.extend(cols_u)
        conf.extend(1.0 + 40.0 * rng.uniform(0.1, 2.0, len(cols_u)))
        indptr.append(len(indices))
    return np.array(indptr, np.int64), np.array(indices, np.int32), np.array(conf, np.float32)


def exact(indptr, indices, conf, Y, reg, scale_reg):
    """Dense solve of (YtY + Y^T (C_u - I) Y + lambda_u I) x = Y^T C_u p_u per row."""
    Y64 = Y.astype(np.float64)
    YtY = Y64.T @ Y64
    out = []
    for u in range(len(indptr) - 1):
        idx, c = indices[indptr[u]:indptr[u + 1]], conf[indptr[u]:indptr[u + 1]].astype(np.float64)
        Yu = Y64[idx]
        lam = reg * len(idx) if scale_reg else reg
        A = YtY + Yu.T @ ((c - 1.0)[:, None] * Yu) + lam * np.eye(Y.shape[1])
        out.append(np.linalg.solve(A, Yu.T @ c))
    return np.array(out)


@pytest.mark.parametrize("scale_reg", [True, False])
def test_enough_cg_steps_reach_the_exact_solution(scale_reg):
    rng = np.random.default_rng(1)
    indptr, indices, conf = random_csr(rng, rows=40, cols=60, per_row=12)
    Y = rng.normal(0, 0.3, (60, 8)).astype(np.float32)
    X0 = np.zeros((40, 8), np.float32)
    want = exact(indptr, indices, conf, Y, 0.1, scale_reg)
    got = solve_rows(indptr, indices, conf, Y, gram(Y), X0, 0.1, cg_steps=16, scale_reg=scale_reg)
    # float32 arithmetic on systems with confidences up to 81: agreement to ~1% of the row's norm.
    err = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    assert err.max() < 0.02, err.max()
    assert not X0.any(), "the input factors must not be modified"


def test_each_cg_step_lowers_the_loss_and_warm_starts_converge():
    rng = np.random.default_rng(2)
    indptr, indices, conf = random_csr(rng, rows=50, cols=80, per_row=15)
    Y = rng.normal(0, 0.3, (80, 16)).astype(np.float32)
    YtY = gram(Y)
    X = np.zeros((50, 16), np.float32)
    losses = [rows_loss(indptr, indices, conf, Y, YtY, X, 0.05)]
    for _ in range(8):
        X = solve_rows(indptr, indices, conf, Y, YtY, X, 0.05, cg_steps=3)
        losses.append(rows_loss(indptr, indices, conf, Y, YtY, X, 0.05))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0]
    # Warm-started three-step solves (the default) reach the exact solution's loss.
    exact_loss = rows_loss(indptr, indices, conf, Y, YtY,
                           exact(indptr, indices, conf, Y, 0.05, True).astype(np.float32), 0.05)
    assert losses[-1] <= exact_loss * 1.01


def test_the_loss_matches_its_definition_on_a_dense_computation():
    rng = np.random.default_rng(3)
    indptr, indices, conf = random_csr(rng, rows=10, cols=12, per_row=5)
    Y = rng.normal(0, 0.5, (12, 4)).astype(np.float32)
    X = rng.normal(0, 0.5, (10, 4)).astype(np.float32)
    C, P = np.ones((10, 12)), np.zeros((10, 12))
    for u in range(10):
        C[u, indices[indptr[u]:indptr[u + 1]]] = conf[indptr[u]:indptr[u + 1]]
        P[u, indices[indptr[u]:indptr[u + 1]]] = 1.0
    n_u = np.diff(indptr)
    want = (C * (P - X.astype(np.float64) @ Y.T) ** 2).sum() + 0.1 * (n_u * (X.astype(np.float64) ** 2).sum(1)).sum()
    assert rows_loss(indptr, indices, conf, Y, gram(Y), X, 0.1) == pytest.approx(want, rel=1e-4)


def test_initial_factors_are_a_pure_function_of_seed_and_id():
    a = initial_factors(np.array([5, 7, 9]), 4, seed=42)
    b = initial_factors(np.array([9, 5]), 4, seed=42)
    np.testing.assert_array_equal(a[[2, 0]], b)
    assert a.dtype == np.float32 and (a >= 0).all() and (a < 0.01).all()
    assert not np.array_equal(a, initial_factors(np.array([5, 7, 9]), 4, seed=43))
    assert len({tuple(r) for r in a}) == 3
