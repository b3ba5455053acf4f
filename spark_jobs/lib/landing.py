"""Reading landing files into records, whatever their format and state.

Runs on the Spark executors (``spark_jobs/ingest.py`` maps it over the day's files), so it
only uses the standard library. For each file it yields ``(raw_line, format, reason)``:
``reason`` is None for a record to parse, or why the line can never be one.

What is normal input here: gzip or plain, a UTF-8 byte order mark, CRLF line ends, blank
lines (skipped, not records), empty files (no records). What is not, and becomes a record
with a reason so nothing disappears: bytes that are not UTF-8 (``not_utf8``), a gzip stream
that breaks midway (the lines before the break are kept; the unreadable rest becomes one
``gzip_stream_broken`` record), a JSON-array file that does not parse (``not_json_array``).

Formats (``FORMATS``), detected per file unless forced:

* ``lastfm``: a ``.tsv`` file (Last.fm 1K-users layout: userid, timestamp, artist-mbid,
  artist-name, track-mbid, track-name; no header);
* ``spotify``: a file whose content is a JSON array (Spotify "Extended streaming history");
* ``listenbrainz``: JSON lines whose first record has ``listened_at``;
* ``native``: the project's JSON lines (``event_id, ts, user_id, track_id, artist_id, ms_played``).
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator

from music_recs.schema import LANDING_FORMATS as FORMATS

NOT_UTF8 = "not_utf8"
GZIP_BROKEN = "gzip_stream_broken"
NOT_JSON_ARRAY = "not_json_array"
NOT_JSON_OBJECT = "not_json_object"
_BOM = "\ufeff"
_MAX_RAW = 10_000  # a raw line kept in quarantine is cut to this many characters


def decompress(data: bytes) -> tuple[bytes, str | None]:
    """Plain bytes, or gunzipped bytes; on a broken stream, what was readable and the error."""
    if data[:2] != b"\x1f\x8b":
        return data, None
    out = io.BytesIO()
    rest = data
    # Fed in small pieces so that everything before a corrupt byte is kept; a file may hold
    # several gzip members one after the other (concatenated .gz files are valid gzip).
    while rest:
        inflater = zlib.decompressobj(wbits=31)
        step, pos = 64 * 1024, 0
        try:
            while pos < len(rest) and not inflater.eof:
                out.write(inflater.decompress(rest[pos:pos + step]))
                pos += step
        except zlib.error as exc:
            return out.getvalue(), f"corrupt gzip data: {exc}"
        if not inflater.eof:
            out.write(inflater.flush())
            return out.getvalue(), "the gzip stream ends before its end marker (truncated file)"
        rest = inflater.unused_data + rest[pos:]
        if rest and rest[:2] != b"\x1f\x8b":
            return out.getvalue(), "bytes after the last gzip member are not gzip"
    return out.getvalue(), None


def detect_format(path: str, text: str) -> str:
    name = path.lower().removesuffix(".gz")
    if name.endswith(".tsv"):
        return "lastfm"
    head = text.lstrip()
    if head.startswith("["):
        return "spotify"
    first = next((line for line in head.splitlines() if line.strip()), "")
    return "listenbrainz" if '"listened_at"' in first else "native"


def _lines(raw: bytes) -> Iterator[tuple[str, str | None]]:
    for chunk in raw.split(b"\n"):
        chunk = chunk.rstrip(b"\r")
        try:
            line = chunk.decode("utf-8")
            reason = None
        except UnicodeDecodeError:
            line, reason = chunk.decode("utf-8", errors="replace"), NOT_UTF8
        line = line.removeprefix(_BOM)
        if line.strip():
            yield line, reason


def iter_records(path: str, data: bytes, forced_format: str = "auto") -> Iterator[tuple[str, str, str | None]]:
    raw, broken = decompress(data)
    if broken is not None:
        # The last line before the break may be cut: it joins the quarantine with the break.
        complete, _, partial = raw.rpartition(b"\n")
        raw = complete
    text_head = raw[:65536].decode("utf-8", errors="replace").removeprefix(_BOM)
    fmt = forced_format if forced_format != "auto" else detect_format(path, text_head)
    if fmt not in FORMATS:
        raise ValueError(f"unknown landing format {fmt!r}; expected one of {FORMATS} or 'auto'")

    if fmt == "spotify":
        yield from _json_array_records(raw, broken)
    else:
        for line, reason in _lines(raw):
            yield line[:_MAX_RAW], fmt, reason
    if broken is not None:
        tail = partial.decode("utf-8", errors="replace") if partial else ""
        yield f"{tail[:_MAX_RAW]} <gzip stream of {path.rsplit('/', 1)[-1]} unreadable after this point: {broken}>", \
            fmt, GZIP_BROKEN


def _json_array_records(raw: bytes, broken: str | None) -> Iterator[tuple[str, str, str | None]]:
    text = raw.decode("utf-8", errors="replace").removeprefix(_BOM)
    if broken is not None:
        return  # a cut JSON array cannot be split into records: the break record stands for the file
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        yield f"{text[:_MAX_RAW]} <{exc}>", "spotify", NOT_JSON_ARRAY
        return
    if not isinstance(items, list):
        yield text[:_MAX_RAW], "spotify", NOT_JSON_ARRAY
        return
    for item in items:
        line = json.dumps(item, ensure_ascii=False, sort_keys=True)
        yield line[:_MAX_RAW], "spotify", None if isinstance(item, dict) else NOT_JSON_OBJECT
