"""The per-file reader that runs on the executors: formats, encodings, broken files."""

import gzip
import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_jobs.lib.landing import (GZIP_BROKEN, MAX_RECORD_CHARS, NOT_JSON_ARRAY, NOT_UTF8, QUARANTINE_CHARS,
                                    RECORD_TOO_LONG, detect_format, inspect, iter_records)


def records(path, data, fmt="auto"):
    return list(iter_records(path, data, fmt))


def test_bom_crlf_blank_lines_and_empty_files_are_normal():
    data = "\ufeff{\"a\": 1}\r\n\r\n{\"a\": 2}\r\n".encode()
    assert records("x.jsonl", data) == [('{"a": 1}', "native", None), ('{"a": 2}', "native", None)]
    assert records("empty.jsonl", b"") == []
    assert records("empty.jsonl.gz", gzip.compress(b"")) == []


def test_gzip_broken_midway_keeps_the_good_lines_and_records_the_break():
    lines = [json.dumps({"n": i, "pad": "x" * 50}) for i in range(2000)]
    data = gzip.compress("\n".join(lines).encode())
    cut = data[: len(data) // 2]
    got = records("day.jsonl.gz", cut)
    good = [r for r in got if r[2] is None]
    broken = [r for r in got if r[2] == GZIP_BROKEN]
    assert len(broken) == 1 and "unreadable after this point" in broken[0][0]
    assert 0 < len(good) < 2000
    assert [r[0] for r in good] == lines[: len(good)]  # exactly the lines before the break, in order


def test_bytes_that_are_not_utf8_are_quarantined_not_dropped():
    got = records("x.jsonl", b'{"a": 1}\n\xff\xfe{"b": 2}\n')
    assert got[0][2] is None and got[1][2] == NOT_UTF8


def test_format_detection():
    assert detect_format("s/lastfm.tsv.gz", "u1\t2009-05-04T23:08:57Z") == "lastfm"
    assert detect_format("spotify/alice/Streaming_History_Audio_2024.json", ' [{"ts": 1}]') == "spotify"
    assert detect_format("lb.jsonl", '{"listened_at": 1, "user_name": "x"}') == "listenbrainz"
    assert detect_format("native.jsonl", '{"event_id": "e1"}') == "native"


def test_spotify_arrays_become_one_record_per_element():
    data = json.dumps([{"ts": "2026-11-20T10:00:00Z", "ms_played": 1}, 5]).encode()
    got = records("alice/h.json", data)
    assert [r[1] for r in got] == ["spotify", "spotify"]
    assert json.loads(got[0][0])["ms_played"] == 1 and got[0][2] is None
    assert got[1][2] == "not_json_object"
    assert records("alice/h.json", b"[{\"ts\": 1},")[0][2] == NOT_JSON_ARRAY


def test_forced_format_overrides_detection():
    assert records("x.jsonl", b'{"listened_at": 1}\n', "native")[0][1] == "native"


def test_concatenated_gzip_members_are_one_stream():
    big = ("\n".join(json.dumps({"n": i, "pad": "y" * 80}) for i in range(3000)) + "\n").encode()
    data = gzip.compress(big) + gzip.compress(b'{"n": "last"}\n')
    got = records("x.jsonl.gz", data)
    assert len(got) == 3001 and got[-1][0] == '{"n": "last"}' and all(r[2] is None for r in got)


def test_a_long_valid_record_is_kept_whole_and_an_endless_line_is_cut_for_quarantine():
    long_record = json.dumps({"event_id": "e1", "track_name": "x" * 20_000})
    got = records("x.jsonl", (long_record + "\n").encode())
    assert got == [(long_record, "native", None)]  # never cut before parsing
    endless = "y" * (MAX_RECORD_CHARS + 5)
    got = records("x.jsonl", f'{{"a": 1}}\n{endless}\n{{"b": 2}}\n'.encode())
    assert [r[2] for r in got] == [None, RECORD_TOO_LONG, None]
    assert len(got[1][0]) == QUARANTINE_CHARS


def test_a_gzip_bomb_streams_in_bounded_memory_and_becomes_one_record():
    bomb = gzip.compress(b"\0" * (300 * 1024 * 1024), compresslevel=9)  # 300 MiB of one line, ~300 KiB on disk
    tracemalloc.start()
    got = records("bomb.jsonl.gz", bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r[2] for r in got] == [RECORD_TOO_LONG]
    assert peak < 64 * 1024 * 1024, peak  # the decompressed file never sits in memory
    assert inspect("bomb.jsonl.gz", bomb) == ("native", False)


def test_spotify_arrays_that_python_cannot_parse_or_dump_are_quarantined():
    nested = ("[" * 100_000 + "]" * 100_000).encode()
    assert [r[2] for r in records("alice/h.json", nested)] == [NOT_JSON_ARRAY]
    huge_int = ("[" + "9" * 5000 + "]").encode()
    assert [r[2] for r in records("alice/h.json", huge_int)] == [NOT_JSON_ARRAY]
    surrogate = b'[{"ts": "2026-11-20T10:00:00Z", "master_metadata_track_name": "\\ud800"}]'
    (line, fmt, reason), = records("alice/h.json", surrogate)
    assert reason is None and "\\ud800" in line and line.isascii()  # stays an escape for the JVM parser


@pytest.mark.parametrize("name, data, verdict", [
    ("day.jsonl.gz", gzip.compress(b'{"a": 1}\r\n{"b": 2}\n'), ("native", True)),
    ("day.jsonl", b'\xef\xbb\xbf{"a": 1}\n', ("native", True)),
    ("day.tsv", b"u1\t2009-05-04T23:08:57Z\t\tA\t\tT\n", ("lastfm", True)),
    ("day.jsonl.gz", gzip.compress(b'{"a": 1}\n' * 1000)[:-30], ("native", False)),  # broken stream
    ("day.jsonl", b'{"a": 1}\n\xff\n', ("native", False)),  # not UTF-8
    ("day.jsonl", b'{"a": 1}\r{"b": 2}\n', ("native", False)),  # a lone CR
    ("day.jsonl", gzip.compress(b'{"a": 1}\n'), ("native", False)),  # gzip without .gz
    ("day.jsonl.gz", b'{"a": 1}\n', ("native", False)),  # .gz that is not gzip
    ("alice/h.json", b'[{"ts": 1}]', ("spotify", False)),
])
def test_which_files_spark_reads_itself(name, data, verdict):
    assert inspect(name, data) == verdict


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.binary(max_size=200) | st.text(max_size=200).map(str.encode), max_size=20),
       name=st.sampled_from(["x.jsonl", "x.tsv", "alice/h.json"]), packing=st.sampled_from(["plain", "gzip", "cut gzip"]))
def test_any_bytes_become_records_and_spark_reads_only_what_it_reads_the_same(lines, name, packing):
    data = b"\n".join(lines)
    if packing != "plain":
        data, name = gzip.compress(data), name + ".gz"
        if packing == "cut gzip":
            data = data[: max(10, len(data) // 2)]
    got = records(name, data)  # never raises
    assert all(isinstance(line, str) and reason in (None, *REASONS) for line, _, reason in got)
    assert all(len(line) <= MAX_RECORD_CHARS for line, _, _ in got)
    fmt, jvm_readable = inspect(name, data)
    if jvm_readable:
        # Spark's text reader gets the lines this module would split, and every one is a record to parse.
        text = (gzip.decompress(data) if packing == "gzip" else data).decode("utf-8")
        expected = [x.removesuffix("\r").removeprefix("\ufeff") for x in text.split("\n")]
        assert [r[0] for r in got] == [x for x in expected if x.strip(" \t\r\n\x0b\x0c")]
        assert all(r[2] is None for r in got) and fmt != "spotify" and packing != "cut gzip"


REASONS = (NOT_UTF8, GZIP_BROKEN, NOT_JSON_ARRAY, "not_json_object", RECORD_TOO_LONG)
