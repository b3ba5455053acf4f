"""Names from the logs at ingest and in the matrix: cleaned in the JVM like ``music_recs.names``, and
a track's display name is its most frequent name, whatever one line calls it."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import sys
import unicodedata

import pytest

from music_recs.confidence import ConfidenceParams
from music_recs.jobs import ConfidenceSpec, IngestSpec
from music_recs.names import NAME_MAX_CHARS, WHITE_SPACE, clean_name
from music_recs.plan import LakeLayout
from spark_jobs import confidence, ingest
from spark_jobs.lib.lake import read_day

pytestmark = pytest.mark.spark

DAY = dt.date(2026, 11, 20)
ESC = "\x1b]0;owned\x07\x1b[2J\x1b[31mDancing Queen\x1b[0m"
HUGE = "Dancing Queen " + "A" * 10_000
BIDI = "\u202eeuQ gnicnaD\u202c"


def play(i: int, track: str, artist: str, track_name, artist_name) -> dict:
    return {"event_id": f"e{i}", "ts": f"2026-11-20T{i % 24:02d}:00:00Z", "user_id": f"u{i % 9}", "track_id": track,
            "artist_id": artist, "ms_played": 120_000, "track_name": track_name, "artist_name": artist_name}


def test_a_line_cannot_rename_a_popular_track_and_its_name_is_cleaned(spark, tmp_path):
    plays = [play(i, "t1", "a1", "Dancing Queen", "ABBA") for i in range(20)]
    plays += [play(100, "t1", "a1", ESC, "\x1b[2JABBA"), play(101, "t1", "a1", HUGE, "ABBA"),
              play(102, "t1", "a1", BIDI, "\u202eABBA"),
              # A track only the hostile lines name: its name is theirs, cleaned.
              play(103, "t2", "a2", ESC, "\u200b\u200b"), play(104, "t2", "a2", ESC, None)]
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "day.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(p) + "\n" for p in plays).encode()))
    lake = str(tmp_path / "lake")
    result = ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(landing), lake_uri=lake))
    assert (result.rows_accepted, result.rows_quarantined) == (25, 0)  # a name is never a reason to drop a play

    stored = {r.event_id: (r.track_name, r.artist_name) for r in read_day(spark, LakeLayout(lake), str(DAY)).collect()}
    assert stored["e100"] == ("]0;owned[2J[31mDancing Queen[0m", "[2JABBA")
    assert stored["e101"] == (("Dancing Queen " + "A" * 10_000)[:NAME_MAX_CHARS], "ABBA")
    assert stored["e102"] == ("euQ gnicnaD", "ABBA")
    assert stored["e103"][1] is None and stored["e104"][1] is None  # nothing left: null
    assert all(clean_name(p["track_name"]) == stored[p["event_id"]][0] for p in plays)

    day = DAY + dt.timedelta(days=1)  # DAY trains, the next day (absent) is held out
    params = ConfidenceParams(confidence_function="linear", alpha=1.0)
    confidence.run(spark, ConfidenceSpec(day=str(day), lake_uri=lake, confidence=params, window_days=2, holdout_days=1,
                                         min_user_items=1, min_item_users=1))
    for granularity, expected in {"track": {"t1": ("Dancing Queen", "a1", "ABBA"),
                                            "t2": ("]0;owned[2J[31mDancing Queen[0m", "a2", None)},
                                  "artist": {"a1": ("ABBA", "a1", "ABBA"), "a2": (None, "a2", None)}}.items():
        items = spark.read.parquet(f"{lake}/matrix/dt={day}/granularity={granularity}/items").collect()
        assert {r.item_id: (r.item_name, r.artist_id, r.artist_name) for r in items} == expected, granularity


def test_the_most_frequent_name_wins_ties_go_to_the_smallest_and_nulls_never_win(spark):
    rows = [("t1", "B", 3), ("t1", "A", 3), ("t1", "C", 2), ("t1", None, 50),  # a tie between A and B
            ("t2", None, 4), ("t2", "only", 1),
            ("t3", None, 2)]
    spellings = spark.createDataFrame(rows, f"track_id string, track_name string, {confidence.PLAYS_OF} long")
    got = {r.track_id: r.track_name for r in confidence.most_frequent(spellings, "track_id", "track_name").collect()}
    assert got == {"t1": "A", "t2": "only", "t3": None}


def test_the_jvm_cleans_names_exactly_as_the_python_rule(spark):
    """The Spark expression and ``clean_name`` are one rule: every control, format and white-space
    character (those both Unicode databases agree on), alone and inside names, and long names."""
    from pyspark.sql import functions as F

    jvm_type = spark.sparkContext._jvm.java.lang.Character.getType
    jvm_control = {15, 16}  # java.lang.Character.CONTROL, FORMAT
    python = [chr(c) for c in range(sys.maxunicode + 1)
              if unicodedata.category(chr(c)) in ("Cc", "Cf")]
    both = [c for c in python if jvm_type(ord(c)) in jvm_control]
    # Only characters a newer Unicode than the JVM's adds may differ (Python 3.11: Unicode 14, Java 17: 13).
    assert len(python) - len(both) <= 5 and {"\x1b", "\u202e", "\u200b", "\ufeff"} <= set(both)
    names = [*both, *WHITE_SPACE, *(f"a{c}b" for c in both + list(WHITE_SPACE)), " ".join(both),
             "x" * 300, "y" * 255 + "\u200b z", " \t lead and trail \u3000", "\u00e9\u0301 ok", "坂本 龍一",
             "", None]
    df = spark.createDataFrame([(i, n) for i, n in enumerate(names)], "i int, name string")
    got = {r.i: r.cleaned for r in df.select("i", ingest.clean_name(F.col("name")).alias("cleaned")).collect()}
    assert [got[i] for i in range(len(names))] == [clean_name(n) for n in names]
