"""No input value can stop a day: every record is accepted or quarantined with a reason."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from music_recs.jobs import IngestSpec
from music_recs.plan import LakeLayout
from spark_jobs import ingest
from spark_jobs.lib.lake import committed, read_day

pytestmark = pytest.mark.spark

DAY = dt.date(2026, 11, 20)
FIELDS = ("event_id", "ts", "user_id", "track_id", "artist_id", "ms_played", "track_name", "artist_name")


def play(i: int, **overrides) -> dict:
    return {"event_id": f"e{i}", "ts": "2026-11-20T10:00:00Z", "user_id": f"u{i % 7}", "track_id": f"t{i % 11}",
            "artist_id": "a1", "ms_played": 120_000, **overrides}


def run(spark, tmp_path, files: dict[str, bytes], fmt: str = "auto", reader: str = "auto"):
    landing = tmp_path / "landing"
    for name, data in files.items():
        (landing / name).parent.mkdir(parents=True, exist_ok=True)
        (landing / name).write_bytes(data)
    lake = tmp_path / "lake"
    result = ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(landing), lake_uri=str(lake), source_format=fmt,
                                          reader=reader))
    assert result.rows_read == result.rows_accepted + result.rows_quarantined + result.duplicates_removed
    return result, lake


def jsonl(records, gz: bool = True) -> bytes:
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"
    return gzip.compress(text.encode()) if gz else text.encode()


def quarantine(spark, lake) -> dict:
    return {json.loads(r.raw_line).get("event_id"): r.reason
            for r in spark.read.json(committed(spark, LakeLayout(str(lake)), str(DAY)).quarantine).collect()}


def test_an_overflowing_number_is_quarantined_and_the_day_goes_on(spark, tmp_path):
    """Spark 4's ANSI mode failed the whole job on this record's cast to BIGINT."""
    bad = '{"event_id": "x1", "ts": "2026-11-20T11:00:00Z", "user_id": "u1", "track_id": "t1", "artist_id": "a1", ' \
          '"ms_played": 1e30}'
    result, lake = run(spark, tmp_path, {"day.jsonl.gz": jsonl([play(i) for i in range(50)] + [bad])})
    assert (result.rows_read, result.rows_accepted, result.rows_quarantined) == (51, 50, 1)
    assert quarantine(spark, lake) == {"x1": "ms_played_out_of_range"}


def test_a_20000_character_record_is_accepted_on_either_reading_path(spark, tmp_path):
    long_play = play(1, track_name="n" * 20_000)
    # One file Spark reads itself, one that takes the Python path (a line that is not UTF-8).
    files = {"a.jsonl.gz": jsonl([long_play]),
             "b.jsonl": jsonl([play(2, track_name="m" * 20_000)], gz=False) + b"\xff\xfe\n"}
    result, lake = run(spark, tmp_path, files)
    assert result.files_by_reader == {"spark": 1, "python": 1}
    assert result.rows_accepted == 2 and result.quarantine_reasons == {"not_utf8": 1}
    names = {r.event_id: r.track_name for r in read_day(spark, LakeLayout(str(lake)), str(DAY)).collect()}
    assert names == {"e1": "n" * 256, "e2": "m" * 256}  # names are cut (music_recs.names.NAME_MAX_CHARS)


def test_both_reading_paths_accept_the_same_rows(spark, tmp_path):
    plays = [play(i, ts=f"2026-11-20T{i % 24:02d}:00:00Z", track_name=f"Track {i} \u00e9") for i in range(200)]
    plays += ["", "   ", "{broken", json.dumps(play(999, ms_played=-1))]
    # Two gzip members one after the other (concatenated .gz files) and an odd file name.
    file = {"odd name #1 (ü).jsonl.gz": jsonl(plays[:150]) + jsonl(plays[150:])}
    jvm, jvm_lake = run(spark, tmp_path / "jvm", file)
    forced, forced_lake = run(spark, tmp_path / "forced", file, reader="python")  # the reference reader
    # The same lines and one that is not UTF-8: that file takes the Python path.
    python, python_lake = run(spark, tmp_path / "py", {"day.jsonl": jsonl(plays, gz=False) + b"\xff\n"})
    assert jvm.files_by_reader == {"spark": 1, "python": 0} and python.files_by_reader == {"spark": 0, "python": 1}
    assert forced.files_by_reader == {"spark": 0, "python": 1}
    assert {**forced.to_dict(), "seconds": 0, "files_by_reader": 0} == {**jvm.to_dict(), "seconds": 0, "files_by_reader": 0}
    assert jvm.rows_accepted == python.rows_accepted == 200
    assert jvm.quarantine_reasons == {"ms_played_out_of_range": 1, "not_json_object": 1}
    assert python.quarantine_reasons == {"ms_played_out_of_range": 1, "not_json_object": 1, "not_utf8": 1}

    def accepted(lake):
        return sorted(map(tuple, read_day(spark, LakeLayout(str(lake)), str(DAY)).collect()))

    assert accepted(jvm_lake) == accepted(python_lake) == accepted(forced_lake)


# Every kind of JSON value, including the ones that broke casts and parsers: huge and tiny numbers,
# NaN and infinities, nested objects, long strings, control characters, lone surrogates.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e30, -1e30, 1e-300, 9.2e18, 86400000.5])
    | st.text(max_size=50) | st.sampled_from(["\ud800", "\x00\x1f\u2028", "2026-11-20T10:00:00Z", "+99999-01-01",
                                              "x" * 3000, "NaN", "1e400", "-0"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


def record_strategy(fields):
    return st.fixed_dictionaries({}, optional={f: json_values for f in fields})


def dumps(value) -> str:
    """JSON as a producer might write it: NaN and Infinity included, lone surrogates as escapes."""
    return json.dumps(value, allow_nan=True)


NATIVE = record_strategy(FIELDS)
LISTENBRAINZ = st.fixed_dictionaries({}, optional={
    "listened_at": json_values, "user_name": json_values,
    "track_metadata": st.fixed_dictionaries({}, optional={
        "artist_name": json_values, "track_name": json_values,
        "additional_info": st.fixed_dictionaries({}, optional={"recording_mbid": json_values,
                                                               "artist_mbids": json_values})})})
SPOTIFY = record_strategy(("ts", "username", "ms_played", "spotify_track_uri", "spotify_episode_uri", "episode_name",
                           "master_metadata_track_name", "master_metadata_album_artist_name", "reason_end", "skipped"))
LASTFM = st.lists(st.text(max_size=30).map(lambda t: t.replace("\n", " ")), min_size=0, max_size=8)


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(native=st.lists(NATIVE, max_size=25), listenbrainz=st.lists(LISTENBRAINZ, min_size=1, max_size=15),
       spotify=st.lists(SPOTIFY, max_size=15), lastfm=st.lists(LASTFM, max_size=15))
def test_any_json_value_in_any_field_of_any_format_is_accepted_or_quarantined(spark, tmp_path_factory, native,
                                                                              listenbrainz, spotify, lastfm):
    tmp_path = tmp_path_factory.mktemp("anything")
    good = [play(i) for i in range(5)]
    lb_lines = [dumps({"listened_at": 1763632800, "user_name": "lb"})] + [dumps(r) for r in listenbrainz]
    files = {
        "native.jsonl.gz": jsonl([dumps(r) for r in native] + good),
        "native_plain.jsonl": jsonl([dumps(r) for r in native], gz=False),
        "lb.jsonl": jsonl(lb_lines, gz=False),
        "spotify/alice/Streaming_History_Audio_2026.json": json.dumps(spotify, allow_nan=True).encode(),
        "scrobbles.tsv": "\n".join("\t".join(fields) for fields in lastfm).encode(),
    }
    result, _ = run(spark, tmp_path, files)
    non_blank = sum(1 for line in lb_lines if line.strip()) + 2 * len(native) + len(good) + len(spotify) \
        + sum(1 for fields in lastfm if "\t".join(fields).strip(" \t\r\n\x0b\x0c"))
    assert result.rows_read == non_blank
    assert result.rows_accepted >= len(good)
