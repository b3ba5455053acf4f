"""The conjugate-gradient kernels against a dense numpy solve of the same normal equations."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_jobs.lib.als_cg import build_block
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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 30), st.floats(0, 100, width=32)), max_size=120,
                unique_by=lambda t: (t[0], t[1])),
       st.integers(1, 4))
def test_a_rating_block_holds_every_rating_once_in_csr_order(ratings, n_pieces):
    """``build_block``: rows sorted and distinct, each row's entries sorted by the other side's id,
    ``needed`` the sorted distinct ids used and ``local`` their positions in it, whatever pieces
    the ratings arrive in."""
    arr = np.array(ratings, dtype=np.float64).reshape(-1, 3)
    pieces = [(arr[i::n_pieces, 0].astype(np.int32), arr[i::n_pieces, 1].astype(np.int32),
               arr[i::n_pieces, 2].astype(np.float32)) for i in range(n_pieces)]
    b = build_block(pieces, alpha=2.0)
    assert np.all(np.diff(b.rows) > 0) and b.indptr[0] == 0 and b.indptr[-1] == len(ratings)
    assert np.all(np.diff(b.indptr) > 0)  # no empty row
    got = {(int(b.rows[r]), int(b.indices[j])): float(b.conf[j])
           for r in range(len(b.rows)) for j in range(b.indptr[r], b.indptr[r + 1])}
    assert got == pytest.approx({(int(u), int(i)): 1.0 + 2.0 * float(np.float32(s)) for u, i, s in ratings})
    for r in range(len(b.rows)):
        assert np.all(np.diff(b.indices[b.indptr[r]:b.indptr[r + 1]]) > 0)
    assert b.needed.tolist() == sorted({i for _, i, _ in ratings})
    assert np.array_equal(b.needed[b.local], b.indices)
    assert b.rows.dtype == b.indptr.dtype == b.needed.dtype == np.int64
    assert b.indices.dtype == b.local.dtype == np.int32 and b.conf.dtype == np.float32
