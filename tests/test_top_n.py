"""The exact top-n kernel of evaluation, against a brute-force ranking."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_jobs.lib.top_n import chunk_rows, norm_prefixes, top_n_excluding


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


def capped_reference(queries, excluded, targets, n, blocked=None, groups=None, cap=0):
    """The rule itself: the full ranking (score descending, then position), minus excluded and
    blocked targets, walked greedily, a target skipped when its group already has ``cap``."""
    out = []
    scores = queries.astype(np.float64) @ targets.astype(np.float64).T
    for q in range(len(queries)):
        counts, kept = {}, []
        for i in np.lexsort((np.arange(len(targets)), -scores[q])).tolist():
            if i in set(excluded[q].tolist()) or (blocked is not None and blocked[i]):
                continue
            g = -1 if groups is None or cap == 0 else int(groups[i])
            if g >= 0 and counts.get(g, 0) >= cap:
                continue
            counts[g] = counts.get(g, 0) + 1
            kept.append(i)
            if len(kept) == n:
                break
        out += [(q, i, r + 1, float(scores[q, i])) for r, i in enumerate(kept)]
    return out


def run(queries, excluded, targets, n, **kwargs):
    got = []
    for rows, cols, scores, ranks in top_n_excluding(queries, excluded, targets, n, **kwargs):
        got += list(zip(rows.tolist(), cols.tolist(), ranks.tolist(), scores.astype(float).tolist()))
    return sorted(got)


@st.composite
def capped_cases(draw):
    """Small integer factors (exact float32 scores from a handful of values: many ties). Half the
    cases are crowded: one group holds most targets and there are more than 4n targets, so rows
    come up short in the kernel's first selection and the walk goes on past it."""
    n, crowded = draw(st.integers(1, 8)), draw(st.booleans())
    q, k = draw(st.integers(1, 7)), draw(st.integers(1, 2))
    t = draw(st.integers(4 * n + 1, 4 * n + 24) if crowded else st.integers(1, 24))
    values = st.integers(-2, 2)
    queries = np.array(draw(st.lists(st.lists(values, min_size=k, max_size=k), min_size=q, max_size=q)), np.float32)
    targets = np.array(draw(st.lists(st.lists(values, min_size=k, max_size=k), min_size=t, max_size=t)), np.float32)
    excluded = [np.array(draw(st.lists(st.integers(0, t - 1), max_size=t // 2)), dtype=np.int64) for _ in range(q)]
    if q > 2:
        excluded[draw(st.integers(0, q - 1))] = np.arange(t)  # a query with nothing left
    some_blocked = st.lists(st.sampled_from([False, False, False, True]), min_size=t, max_size=t).map(np.array)
    blocked = draw(st.none() | some_blocked)
    pool = [0] * 12 + [-1, 1] if crowded else [-1, 0, 1, 2, 3]
    groups = np.array(draw(st.lists(st.sampled_from(pool), min_size=t, max_size=t)), np.int64)
    cap = draw(st.sampled_from([1, 2, 3, 0]))
    chunk_bytes = 4 * t * draw(st.integers(1, 3))  # 1 to 3 queries per chunk: several chunks
    first_prefix = draw(st.integers(1, t))  # t: no pruning
    return queries, excluded, targets, n, dict(blocked=blocked, groups=groups, cap=cap, chunk_bytes=chunk_bytes,
                                               first_prefix=first_prefix)


@settings(max_examples=200, deadline=None)
@given(case=capped_cases())
def test_blocked_and_capped_lists_match_the_greedy_walk_over_the_full_ranking(case):
    queries, excluded, targets, n, kwargs = case
    got = run(queries, excluded, targets, n, **kwargs)
    chunk_bytes = kwargs.pop("chunk_bytes")
    kwargs.pop("first_prefix")
    assert got == sorted(capped_reference(queries, excluded, targets, n, **kwargs))
    if kwargs["blocked"] is None and kwargs["cap"] == 0:  # the new arguments' defaults change nothing
        assert got == run(queries, excluded, targets, n, chunk_bytes=chunk_bytes)


def one_query(scores_by_target):
    """Targets whose score against the single query [1] is the given list."""
    return np.ones((1, 1), np.float32), [np.array([], np.int64)], np.array(scores_by_target, np.float32)[:, None]


def test_a_cap_of_two_fills_the_list_from_further_down_when_one_artist_has_the_5_best():
    queries, excluded, targets = one_query([10, 9, 8, 7, 6, 5, 4, 3, 2])
    groups = np.array([0, 0, 0, 0, 0, 1, 2, -1, 1])
    (rows, cols, scores, ranks), = top_n_excluding(queries, excluded, targets, 5, groups=groups, cap=2)
    assert cols.tolist() == [0, 1, 5, 6, 7] and ranks.tolist() == [1, 2, 3, 4, 5]
    assert scores.tolist() == [10, 9, 5, 4, 3]


def test_the_walk_goes_past_the_first_selection_when_one_artist_has_the_100_best():
    queries, excluded, targets = one_query(list(range(200, 0, -1)))  # target j scores 200 - j
    groups = np.array([7, -1] + [7] * 98 + [8] * 50 + [9] * 50)  # the 2n = 8 best: group 7 but one
    (_, cols, _, ranks), = top_n_excluding(queries, excluded, targets, 4, groups=groups, cap=1)
    assert cols.tolist() == [0, 1, 100, 150] and ranks.tolist() == [1, 2, 3, 4]


def test_a_user_whose_candidates_run_out_gets_fewer_rows():
    queries, _, targets = one_query([9, 8, 7, 6, 5, 4])
    groups = np.array([3, 3, 3, 3, 3, 3])
    excluded = [np.array([0, 1], np.int64), np.array([], np.int64)]
    queries = np.ones((2, 1), np.float32)
    got = run(queries, excluded, targets, 5, groups=groups, cap=2)
    assert got == [(0, 2, 1, 7.0), (0, 3, 2, 6.0), (1, 0, 1, 9.0), (1, 1, 2, 8.0)]
    groups[5] = -1  # no group: never capped
    got = run(queries, excluded, targets, 5, groups=groups, cap=2)
    assert [(q, i, r) for q, i, r, _ in got] == [(0, 2, 1), (0, 3, 2), (0, 5, 3), (1, 0, 1), (1, 1, 2), (1, 5, 3)]


def test_blocked_targets_are_never_returned():
    rng = np.random.default_rng(7)
    queries, targets = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(40, 4)).astype(np.float32)
    blocked = rng.random(40) < 0.5
    excluded = [np.array([], np.int64)] * 30
    for kwargs in ({}, {"groups": rng.integers(-1, 5, 40), "cap": 1}):
        got = run(queries, excluded, targets, 10, blocked=blocked, chunk_bytes=4 * 40 * 7, **kwargs)
        assert got and not blocked[[i for _, i, _, _ in got]].any()
        assert all(sum(q == query for q, _, _, _ in got) == 10 for query in range(30))
    assert run(queries, excluded, targets, 10, blocked=np.ones(40, bool)) == []


def test_cap_zero_means_no_cap():
    queries, excluded, targets = one_query([5, 4, 3, 2, 1])
    groups = np.zeros(5, np.int64)
    assert run(queries, excluded, targets, 3, groups=groups, cap=0) == run(queries, excluded, targets, 3)
    assert [i for _, i, _, _ in run(queries, excluded, targets, 3, groups=groups, cap=0)] == [0, 1, 2]


def test_group_ids_need_not_be_dense():
    queries, excluded, targets = one_query([5, 4, 3, 2, 1])
    groups = np.array([10**12, 10**12, -1, 42, 10**12])
    assert [i for _, i, _, _ in run(queries, excluded, targets, 5, groups=groups, cap=1)] == [0, 2, 3]


def test_bad_rule_arguments():
    queries, excluded, targets = one_query([1, 2])
    for kwargs, message in [({"blocked": np.array([True])}, "blocked must be a bool array of one entry per target"),
                            ({"blocked": np.array([1, 0])}, "blocked must be a bool array"),
                            ({"cap": 1}, "cap 1 needs groups"),
                            ({"cap": -1}, "cap must be >= 0"),
                            ({"groups": np.array([0]), "cap": 1}, "groups must be an int array"),
                            ({"groups": np.array([0, -2]), "cap": 1}, "groups must be >= -1")]:
        with pytest.raises(ValueError, match=message):
            list(top_n_excluding(queries, excluded, targets, 1, **kwargs))


def test_norm_prefixes_grow_by_norm_and_end_with_every_target():
    targets = np.array([[1.0], [5.0], [0.5], [3.0], [2.0], [4.0]], np.float32)
    stages = norm_prefixes(targets, first=1, growth=2)
    assert [(cols.tolist(), left) for cols, left in stages] == [
        ([1], 4.0), ([1, 5], 3.0), ([1, 3, 4, 5], 1.0), ([0, 1, 2, 3, 4, 5], -1.0)]
    assert len(norm_prefixes(targets, first=6)) == 1  # no pruning


@pytest.mark.parametrize("cap", [0, 2])
def test_pruned_scoring_is_exact_on_factors_with_a_long_tail_of_small_norms(cap):
    """Factors shaped like ALS's: a few large item vectors, many small ones; a user near the items
    they played. Most users are done on the first prefix, and every list equals the unpruned one."""
    rng = np.random.default_rng(11)
    targets = (rng.normal(size=(3000, 8)) * (rng.pareto(1.0, size=3000)[:, None] + 0.05)).astype(np.float32)
    played = [rng.choice(3000, size=rng.integers(1, 40), replace=False) for _ in range(200)]
    queries = np.stack([targets[p[:5]].sum(0) for p in played]) + rng.normal(size=(200, 8)).astype(np.float32)
    groups = rng.integers(-1, 300, 3000)
    kwargs = dict(n=10, groups=groups, cap=cap, chunk_bytes=4 * 3000 * 50)
    pruned = run(queries, played, targets, first_prefix=100, **kwargs)
    assert pruned == run(queries, played, targets, first_prefix=3000, **kwargs)
    assert len(pruned) == 200 * 10
    first = next(top_n_excluding(queries, played, targets, first_prefix=100, **kwargs))
    assert len(set(first[0].tolist())) > 40  # of the first chunk's 50 users, most finished on 100 of 3000 items
