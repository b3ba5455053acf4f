"""The per-file reader that runs on the executors: formats, encodings, broken files."""

import gzip
import json

from spark_jobs.lib.landing import GZIP_BROKEN, NOT_JSON_ARRAY, NOT_UTF8, detect_format, iter_records


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
