"""The exact top-n kernel of evaluation, against a brute-force ranking."""

import numpy as np
import pytest

from spark_jobs.lib.top_n import chunk_rows, top_n_excluding


def brute_force(queries, excluded, targets, n):
    out = []
    for q, (vec, ex) in enumerate(zip(queries, excluded)):
        scores = targets @ vec
        ranked = sorted((i for i in range(len(targets)) if i not in set(ex)), key=lambda i: (-scores[i], i))
        out += [(q, i, r + 1) for r, i in enumerate(ranked[:n])]
    return out


@pytest.mark.parametrize("chunk_bytes", [4 * 7 * 3, 1 << 20])  # 3 queries per chunk, or all at once
@pytest.mark.parametrize("ties", [False, True])  # small integer factors: many equal scores
def test_matches_brute_force_with_exclusions_and_chunks(chunk_bytes, ties):
    rng = np.random.default_rng(4)
    queries, targets = rng.normal(size=(10, 3)), rng.normal(size=(7, 3))
    if ties:
        queries, targets = np.round(queries), np.round(targets)
    queries, targets = queries.astype(np.float32), targets.astype(np.float32)
    excluded = [rng.choice(7, size=rng.integers(0, 7), replace=False) for _ in range(10)]
    excluded[0] = np.arange(7)  # nothing left to recommend
    excluded[1] = np.array([], dtype=np.int64)
    got = []
    for rows, cols, scores, ranks in top_n_excluding(queries, excluded, targets, 3, chunk_bytes=chunk_bytes):
        np.testing.assert_allclose(scores, np.einsum("ij,ij->i", queries[rows], targets[cols]), rtol=1e-5)
        got += list(zip(rows.tolist(), cols.tolist(), ranks.tolist()))
    assert sorted(got) == sorted(brute_force(queries, excluded, targets, 3))
    assert not any(q == 0 for q, _, _ in got)
    assert sum(q == 1 for q, _, _ in got) == 3


def test_equal_scores_are_ordered_by_target_position():
    targets = np.array([[1.0], [2.0], [2.0], [2.0], [0.5]], dtype=np.float32)
    (rows, cols, scores, ranks), = top_n_excluding(np.ones((1, 1)), [np.array([2])], targets, 4)
    assert cols.tolist() == [1, 3, 0, 4] and ranks.tolist() == [1, 2, 3, 4]
    # a tie at the last place kept keeps the smaller position
    (_, cols, _, _), = top_n_excluding(np.ones((1, 1)), [np.array([], int)], targets, 2)
    assert cols.tolist() == [1, 2]


def test_n_larger_than_the_targets_and_bad_input():
    (rows, cols, _, ranks), = top_n_excluding(np.ones((2, 1)), [np.array([], int)] * 2, np.ones((2, 1)), 10)
    assert rows.tolist() == [0, 0, 1, 1] and ranks.tolist() == [1, 2, 1, 2]
    with pytest.raises(ValueError, match="2 queries but 1 exclusion lists"):
        list(top_n_excluding(np.ones((2, 1)), [np.array([])], np.ones((2, 1)), 1))
    assert chunk_rows(1_000_000, 64 << 20) == 16 and chunk_rows(0) >= 1
