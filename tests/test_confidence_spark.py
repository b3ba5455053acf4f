"""The confidence job on small hand-built plays with known answers."""

import datetime as dt
import json
import math

import pytest

from music_recs.jobs import ConfidenceSpec
from music_recs.plan import LakeLayout
from music_recs.confidence import ConfidenceParams
from spark_jobs import confidence
from spark_jobs.lib.id_index import extend_index, load_index

pytestmark = pytest.mark.spark

D = dt.date(2026, 11, 20)


def write_plays(spark, lake, rows):
    """rows: (day, user, track, artist, ms_played)"""
    by_day = {}
    for i, (day, user, track, artist, ms) in enumerate(rows):
        by_day.setdefault(day, []).append((f"e{i}", dt.datetime.combine(day, dt.time(12)), user, track, artist, ms,
                                           None, None))
    for day, data in by_day.items():
        spark.createDataFrame(data, "event_id string, ts timestamp, user_id string, track_id string, "
                                    "artist_id string, ms_played long, track_name string, artist_name string") \
            .write.mode("overwrite").parquet(f"{lake}/plays/dt={day}")


def matrix(spark, lake, granularity="track", part="train"):
    df = spark.read.parquet(f"{lake}/matrix/dt={D}/granularity={granularity}/{part}")
    return {(r.user_id, r.item_id): r for r in df.collect()}


def test_skips_windows_and_confidence(spark, tmp_path):
    lake = str(tmp_path / "lake")
    d = lambda n: D - dt.timedelta(days=n)  # noqa: E731
    write_plays(spark, lake, [
        (d(1), "u1", "t1", "a1", 200_000), (d(1), "u1", "t1", "a1", 200_000), (d(2), "u1", "t1", "a1", 10_000),
        (d(1), "u1", "t2", "a1", 60_000),
        (d(1), "u2", "t1", "a1", 31_000), (d(1), "u2", "t2", "a1", 29_999),  # the second is a skip
        (d(2), "u2", "t2", "a1", 30_000),
        (d(3), "u1", "t2", "a1", 200_000),  # outside a 3-day window (first day = D-2)
        (D, "u1", "t3", "a1", 200_000), (D, "u2", "t1", "a1", 200_000),  # held out (last day)
    ])
    params = ConfidenceParams(confidence_function="linear", alpha=2.0, skip_ms=30_000)
    result = confidence.run(spark, ConfidenceSpec(day=str(D), lake_uri=str(lake), confidence=params, window_days=3, holdout_days=1, min_user_items=1, min_item_users=1))
    assert result.window == {"first_day": str(d(2)), "last_train_day": str(d(1)), "holdout_days": [str(D)],
                                "days_present": [str(d(2)), str(d(1)), str(D)]}
    m = matrix(spark, lake)
    assert (m["u1", "t1"].plays, m["u1", "t1"].skips) == (2, 1)
    assert m["u1", "t1"].confidence == pytest.approx(1 + 2 * 2)
    assert m["u1", "t2"].plays == 1  # the D-3 play is outside the window
    assert (m["u2", "t2"].plays, m["u2", "t2"].skips) == (1, 1)  # exactly 30 s counts as a play
    # Held out: u1's new track t3; u2's t1 was already in training so it is not "next".
    held = matrix(spark, lake, part="holdout")
    assert set(held) == set()  # t3 is unknown to the training matrix, so it cannot be judged
    stats = json.loads(open(f"{lake}/matrix/dt={D}/granularity=track/stats.json").read())
    assert (stats["users"], stats["items"], stats["nnz"]) == (2, 2, 4)
    assert stats["density"] == pytest.approx(1.0)
    artist = matrix(spark, lake, "artist")
    assert artist["u1", "a1"].plays == 3


def test_log_function_decay_and_min_support(spark, tmp_path):
    lake = str(tmp_path / "lake")
    rows = [(D - dt.timedelta(days=1), "u1", "t1", "a1", 100_000), (D - dt.timedelta(days=3), "u1", "t1", "a1", 100_000)]
    rows += [(D - dt.timedelta(days=1), "u2", "t1", "a1", 100_000), (D - dt.timedelta(days=1), "u2", "t2", "a2", 100_000),
             (D - dt.timedelta(days=1), "u3", "t3", "a3", 100_000), (D, "u2", "t9", "a9", 100_000)]
    write_plays(spark, lake, rows)
    params = ConfidenceParams(confidence_function="log", alpha=1.0, epsilon=1.0, half_life_days=2.0)
    confidence.run(spark, ConfidenceSpec(day=str(D), lake_uri=str(lake), confidence=params, window_days=5, holdout_days=1, min_user_items=1, min_item_users=2))
    m = matrix(spark, lake)
    # t1 has 2 listeners and survives; t2 and t3 have 1 and are dropped, and u3 with them.
    assert set(m) == {("u1", "t1"), ("u2", "t1")}
    r = 0.5 ** (1 / 2) + 0.5 ** (3 / 2)  # plays 1 and 3 days old, half-life 2 days
    assert m["u1", "t1"].confidence == pytest.approx(1 + math.log1p(r), rel=1e-9)


def test_missing_history_fails_with_a_readable_message(spark, tmp_path):
    lake = str(tmp_path / "lake")
    write_plays(spark, lake, [(D, "u1", "t1", "a1", 100_000)])
    with pytest.raises(FileNotFoundError, match="no accepted plays in the lake for the training days"):
        confidence.run(spark, ConfidenceSpec(day=str(D), lake_uri=str(lake), confidence=ConfidenceParams(), window_days=3))


def test_ids_stay_stable_across_days_and_reruns(spark, tmp_path):
    lake = LakeLayout(str(tmp_path / "lake"))
    day1 = spark.createDataFrame([("b",), ("a",), ("c",)], "id string")
    index1, new1 = extend_index(spark, lake, "user", day1)
    first = {r.id: r.idx for r in index1.collect()}
    assert first == {"a": 0, "b": 1, "c": 2} and new1 == 3
    # Next day: "a" disappears, "d" and "0" are new; the old ones keep their ints.
    day2 = spark.createDataFrame([("b",), ("d",), ("0",), ("c",)], "id string")
    index2, new2 = extend_index(spark, lake, "user", day2)
    second = {r.id: r.idx for r in index2.collect()}
    assert new2 == 2 and {k: second[k] for k in first} == first
    assert second["0"] == 3 and second["d"] == 4
    # Rerun of day 2: nothing new, nothing changes.
    index3, new3 = extend_index(spark, lake, "user", day2)
    assert new3 == 0 and {r.id: r.idx for r in index3.collect()} == second
    assert len(set(second.values())) == len(second)  # no collisions
    assert load_index(spark, lake, "track").count() == 0


def test_index_overflow_is_detected(spark, tmp_path, monkeypatch):
    from spark_jobs.lib import id_index

    monkeypatch.setattr(id_index, "INT32_MAX", 2)
    lake = LakeLayout(str(tmp_path / "lake"))
    with pytest.raises(OverflowError, match="past int32 max"):
        extend_index(spark, lake, "user", spark.createDataFrame([("a",), ("b",), ("c",), ("d",)], "id string"))


def test_a_chunk_whose_write_failed_is_ignored_and_not_reused(spark, tmp_path):
    """A write that died leaves a ``chunk=`` folder without ``_SUCCESS`` (empty after Spark's abort,
    or holding a partial file); the index must not read it, and the next chunk must not collide."""
    lake = tmp_path / "lake"
    root = lake / "ids" / "user"
    (root / "chunk=000000" / "_temporary" / "0").mkdir(parents=True)
    index, new = extend_index(spark, LakeLayout(str(lake)), "user", spark.createDataFrame([("b",), ("a",)], "id string"))
    assert new == 2 and {r.id: r.idx for r in index.collect()} == {"a": 0, "b": 1}
    # A second failed write, with a part file of ids that no matrix ever used.
    spark.createDataFrame([("zz", 2)], "id string, idx int").write.parquet(str(root / "chunk=000002"))
    (root / "chunk=000002" / "_SUCCESS").unlink()
    index, new = extend_index(spark, LakeLayout(str(lake)), "user", spark.createDataFrame([("c",), ("a",)], "id string"))
    assert new == 1 and {r.id: r.idx for r in index.collect()} == {"a": 0, "b": 1, "c": 2}
    assert sorted(p.name for p in root.iterdir()) == ["chunk=000000", "chunk=000001", "chunk=000002", "chunk=000003"]


def test_the_tuning_split_is_the_training_days_split_once_more(spark, tmp_path):
    """Window D-4..D: training D-4..D-1, held out D; the search's split inside the training days:
    candidates train on D-4..D-2 and are scored on what their users played next on D-1."""
    lake = str(tmp_path / "lake")
    d = lambda n: D - dt.timedelta(days=n)  # noqa: E731
    write_plays(spark, lake, [
        (d(3), "u1", "t1", "a1", 200_000), (d(1), "u1", "t1", "a1", 200_000),  # played again: not "next"
        (d(1), "u1", "t2", "a1", 200_000),  # next for u1
        (d(4), "u2", "t2", "a1", 200_000), (d(1), "u2", "t1", "a1", 200_000),  # next for u2
        (d(1), "u2", "t3", "a1", 29_000),  # a skip is never "next"
        (d(1), "u3", "t3", "a1", 200_000),  # u3 has nothing before D-1: in the matrix, not in the search
        (D, "u1", "t3", "a1", 200_000), (D, "u2", "t2", "a1", 200_000),  # held out: only u1's t3 is new
    ])
    spec = ConfidenceSpec(day=str(D), lake_uri=lake, window_days=5, holdout_days=1, min_user_items=1,
                          min_item_users=1, validation_days=1, granularities=("track",))
    stats = confidence.run(spark, spec).stats["track"]
    pairs = lambda part: {(r.user_id, r.item_id) for r in matrix(spark, lake, part=part).values()}  # noqa: E731
    assert pairs("train") == {("u1", "t1"), ("u1", "t2"), ("u2", "t2"), ("u2", "t1"), ("u3", "t3")}
    assert pairs("holdout") == {("u1", "t3")}
    assert pairs("tuning/train") == {("u1", "t1"), ("u2", "t2")}
    assert pairs("tuning/validation") == {("u1", "t2"), ("u2", "t1")}
    tuned = matrix(spark, lake, part="tuning/train")
    assert (tuned["u1", "t1"].plays, tuned["u1", "t1"].r) == (1, 1.0)  # only the play before the cutoff
    assert stats["skips"] == 1 and stats["tuning"]["sample_fraction"] == 1.0
    assert (stats["tuning"]["last_train_day"], stats["tuning"]["nnz"]) == (str(d(2)), 2)


def test_the_search_samples_users_by_a_hash_of_their_id_and_the_matrix_keeps_everyone(spark, tmp_path):
    from pyspark.sql import functions as F

    lake = str(tmp_path / "lake")
    d = lambda n: D - dt.timedelta(days=n)  # noqa: E731
    users = [f"user-{n}" for n in range(400)]
    # Even users played t1 and t2, then t3 next; odd users t1 and t3, then t2.
    write_plays(spark, lake, [row for n, u in enumerate(users) for row in (
        (d(3), u, "t1", "a1", 200_000), (d(2), u, f"t{2 + n % 2}", "a1", 200_000),
        (d(1), u, f"t{3 - n % 2}", "a1", 200_000))])
    spec = ConfidenceSpec(day=str(D), lake_uri=lake, window_days=4, holdout_days=1, min_user_items=1,
                          min_item_users=1, validation_days=1, granularities=("track",), tuning_users=100)
    tuning = confidence.run(spark, spec).stats["track"]["tuning"]
    assert (tuning["users_before_sample"], tuning["sample_fraction"]) == (400, 0.25)
    bucket = F.pmod(F.xxhash64("user_id"), F.lit(confidence.SAMPLE_BUCKETS))
    expected = {r.user_id for r in spark.createDataFrame([(u,) for u in users], "user_id string")
                .filter(bucket < int(0.25 * confidence.SAMPLE_BUCKETS)).collect()}
    assert 60 <= len(expected) <= 140
    sampled = {u for u, _ in (k for k in matrix(spark, lake, part="tuning/train"))}
    assert sampled == expected and tuning["nnz"] == 2 * len(expected)
    assert {u for u, _ in matrix(spark, lake, part="tuning/validation")} == expected  # every one played a track next
    assert len({u for u, _ in matrix(spark, lake)}) == 400  # the model trains on every user
