"""The driver-side fit (``als_local``): warm start, the stopping rule, the objective it reports."""

import numpy as np
import pytest

from music_recs.convergence import DEFAULT_TOL, MIN_ITER
from spark_jobs.lib import als_local
from spark_jobs.lib.cg_kernels import initial_factors, start_factors

RANK = 8


def conf_of(r):
    return 1.0 + 2.0 * r


@pytest.fixture(scope="module")
def matrix():
    """~60 users x 80 items, global ids not contiguous (as the id index gives them)."""
    rng = np.random.default_rng(3)
    users, items, values = [], [], []
    for u in range(60):
        picked = rng.choice(80, size=rng.integers(3, 15), replace=False)
        users += [1000 + 3 * u] * len(picked)
        items += list(5 * picked + 7)
        values += list(rng.integers(1, 6, len(picked)))
    return als_local.LocalMatrix.from_pairs(np.array(users), np.array(items), np.array(values, np.float32))


def dense_objective(matrix, X, Y, reg):
    """sum over every pair of C (P - x.y)^2 + reg (n_u |x_u|^2 + n_i |y_i|^2), in float64."""
    u = matrix.by_user
    C = np.ones((len(u.ids), len(matrix.by_item.ids)))
    P = np.zeros_like(C)
    for row in range(len(u.ids)):
        cols = u.indices[u.indptr[row]:u.indptr[row + 1]]
        C[row, cols] = conf_of(u.values[u.indptr[row]:u.indptr[row + 1]])
        P[row, cols] = 1.0
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    data = (C * (P - X64 @ Y64.T) ** 2).sum()
    n_u, n_i = np.diff(u.indptr), np.diff(matrix.by_item.indptr)
    return data + reg * ((n_u * (X64 ** 2).sum(1)).sum() + (n_i * (Y64 ** 2).sum(1)).sum())


def test_the_reported_objective_is_the_hkv_loss(matrix):
    seen = []
    trace = als_local.fit_trace(matrix, RANK, 3, 0.1, conf_of, on_iteration=lambda *a: seen.append(a))
    want = dense_objective(matrix, trace.X, trace.Y, 0.1)
    assert trace.losses[-1] == pytest.approx(want, rel=1e-4)
    assert [s[0] for s in seen] == [1, 2, 3] and [s[3] for s in seen] == trace.losses


def test_tol_zero_runs_every_iteration_and_fit_keeps_its_signature(matrix):
    trace = als_local.fit_trace(matrix, RANK, 7, 0.1, conf_of, True, 3, 42)
    assert trace.iterations == 7 and not trace.converged
    assert trace.losses == []  # no tol, no callback: the objective is not computed
    X, Y = als_local.fit(matrix, RANK, 7, 0.1, conf_of, True, 3, 42)  # tuning's positional call
    np.testing.assert_array_equal(X, trace.X)
    np.testing.assert_array_equal(Y, trace.Y)
    tracked = als_local.fit_trace(matrix, RANK, 7, 0.1, conf_of, on_iteration=lambda *a: None)
    assert tracked.iterations == 7 and len(tracked.losses) == 7
    np.testing.assert_array_equal(tracked.X, trace.X)  # computing the loss does not change the fit


def test_warm_start_from_a_converged_model_stops_at_min_iter(matrix):
    cold = als_local.fit_trace(matrix, RANK, 60, 0.1, conf_of, on_iteration=lambda *a: None)
    init = ((matrix.by_user.ids, cold.X), (matrix.by_item.ids, cold.Y))
    warm = als_local.fit_trace(matrix, RANK, 10, 0.1, conf_of, init=init, tol=DEFAULT_TOL)
    assert warm.converged and warm.iterations == MIN_ITER
    assert warm.losses[0] <= cold.losses[-1] * (1 + 1e-5)
    assert warm.losses[0] < cold.losses[0]
    first_cold = als_local.fit_trace(matrix, RANK, 1, 0.1, conf_of, tol=DEFAULT_TOL)
    assert first_cold.losses == cold.losses[:1]


def test_start_factors_maps_known_ids_and_leaves_new_rows_random():
    ids = np.array([3, 7, 10, 42])
    known_ids = np.array([42, 99, 7])
    known = np.arange(3 * RANK, dtype=np.float32).reshape(3, RANK) + 1.0
    out = start_factors(ids, RANK, 5, (known_ids, known))
    np.testing.assert_array_equal(out[1], known[2])
    np.testing.assert_array_equal(out[3], known[0])
    np.testing.assert_array_equal(out[[0, 2]], initial_factors(np.array([3, 10]), RANK, 5))
    np.testing.assert_array_equal(start_factors(ids, RANK, 5), initial_factors(ids, RANK, 5))


def test_fit_starts_from_known_rows_by_global_id(matrix):
    """Zero iterations return the start: the earlier model's rows where it has them."""
    u_ids, i_ids = matrix.by_user.ids, matrix.by_item.ids
    old_users = u_ids[::2]
    old_X = np.full((len(old_users), RANK), 0.5, np.float32)
    start = als_local.fit_trace(matrix, RANK, 0, 0.1, conf_of, init=((old_users, old_X), None))
    assert (start.X[::2] == 0.5).all()
    np.testing.assert_array_equal(start.X[1::2], initial_factors(u_ids[1::2], RANK, 42))
    np.testing.assert_array_equal(start.Y, initial_factors(i_ids, RANK, 43))
