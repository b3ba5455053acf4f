"""Reading landing files into records, whatever their format and state.

Runs on the Spark executors (``spark_jobs/ingest.py`` maps it over the day's files), so it
only uses the standard library and the core. Two entry points:

* ``inspect(path, data)``: whether Spark's own text reader can take the file (``jvm_readable``),
  and its format. A file is JVM-readable when it is plain or one intact gzip stream named
  ``*.gz``, valid UTF-8, in a line format (native, ListenBrainz, Last.fm), with no lone carriage
  return and no line over ``MAX_RECORD_CHARS``: then every line reaches the job exactly as this
  module would have split it, and parsing stays in the JVM. Everything else takes the path below.
* ``iter_records(path, data)``: yields ``(raw_line, format, reason)`` for one file: ``reason`` is
  None for a record to parse, or why the line can never be one.

What is normal input here: gzip or plain, a UTF-8 byte order mark, CRLF line ends, blank
lines (skipped, not records), empty files (no records). What is not, and becomes a record
with a reason so nothing disappears: bytes that are not UTF-8 (``not_utf8``), a gzip stream
that breaks midway (the lines before the break are kept; the unreadable rest becomes one
``gzip_stream_broken`` record), a JSON-array file that does not parse (``not_json_array``), a
record longer than ``MAX_RECORD_CHARS`` (``record_too_long``, e.g. a gzip bomb of one endless
line). Decompression streams, so a file's size in memory is its compressed size plus one
record.

Formats (``FORMATS``), detected per file unless forced:

* ``lastfm``: a ``.tsv`` file (Last.fm 1K-users layout: userid, timestamp, artist-mbid,
  artist-name, track-mbid, track-name; no header);
* ``spotify``: a file whose content is a JSON array (Spotify "Extended streaming history");
* ``listenbrainz``: JSON lines whose first record has ``listened_at``;
* ``native``: the project's JSON lines (``event_id, ts, user_id, track_id, artist_id, ms_played``).
"""

from __future__ import annotations

import codecs
import json
import zlib
from collections.abc import Iterator

from music_recs.schema import LANDING_FORMATS as FORMATS

NOT_UTF8 = "not_utf8"
GZIP_BROKEN = "gzip_stream_broken"
NOT_JSON_ARRAY = "not_json_array"
NOT_JSON_OBJECT = "not_json_object"
RECORD_TOO_LONG = "record_too_long"
_BOM = "\ufeff"
# A stream record is a few hundred characters; a megabyte holds any real one with long optional
# fields, and keeps a broken line (a gzip bomb) from becoming one row of gigabytes.
MAX_RECORD_CHARS = 1_000_000
# A quarantined line keeps this many characters (the quarantine copy only; parsing sees it whole):
# enough to see what a line was, while a day of long garbage lines stays small.
QUARANTINE_CHARS = 4_096
# Characters a blank line consists of (the same set in the JVM path: ``ingest.BLANK_LINE``).
BLANK = " \t\r\n\x0b\x0c"
# A Spotify export is parsed whole; larger than this, the file is one ``not_json_array`` record.
MAX_JSON_ARRAY_BYTES = 256 * 1024 * 1024
# Hadoop's text reader decompresses by file extension: a file named so is never read as plain.
_CODEC_SUFFIXES = (".gz", ".bz2", ".deflate", ".lz4", ".snappy", ".zst", ".br")
_STEP = 512 * 1024  # decompression piece; smaller than MAX_RECORD_CHARS (see inspect)
_LINE_FORMATS = ("native", "listenbrainz", "lastfm")


def _inflate(data: bytes) -> Iterator[bytes | str]:
    """Decompressed pieces of ``data`` (plain data: one piece); a last ``str`` item says why a gzip
    stream broke. Several gzip members one after the other are one stream (valid gzip)."""
    if data[:2] != b"\x1f\x8b":
        yield data
        return
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits=31)
        pos = 0
        try:
            # Fed in pieces, output bounded per call: a bomb never sits in memory whole, and
            # everything before a corrupt byte is kept.
            while not inflater.eof and (pos < len(rest) or inflater.unconsumed_tail):
                if inflater.unconsumed_tail:
                    piece = inflater.decompress(inflater.unconsumed_tail, _STEP)
                else:
                    piece = inflater.decompress(rest[pos:pos + _STEP], _STEP)
                    pos += _STEP
                if piece:
                    yield piece
        except zlib.error as exc:
            yield f"corrupt gzip data: {exc}"
            return
        if not inflater.eof:
            tail = inflater.flush()
            if tail:
                yield tail
            yield "the gzip stream ends before its end marker (truncated file)"
            return
        rest = inflater.unused_data + rest[pos:]
        if rest and rest[:2] != b"\x1f\x8b":
            yield "bytes after the last gzip member are not gzip"
            return


class Broken(str):
    """Where a stream broke: the reason, with the partial line before the break as ``partial``."""

    partial: bytes = b""


def _raw_lines(pieces: Iterator[bytes | str]) -> Iterator[tuple[bytes, bool] | Broken]:
    """``(line bytes, cut)`` per line of the stream, the last one included (``cut``: the line was
    longer than the cap and the rest was dropped); a ``Broken`` last item if the stream broke."""
    cap = 4 * MAX_RECORD_CHARS + 4  # bytes: a character takes at most 4
    buffer, cut = bytearray(), False
    for piece in pieces:
        if isinstance(piece, str):
            broken = Broken(piece)
            broken.partial = bytes(buffer)
            yield broken
            return
        start = 0
        while True:
            newline = piece.find(b"\n", start)
            if not cut:
                buffer += piece[start:] if newline < 0 else piece[start:newline]
                if len(buffer) > cap:
                    del buffer[cap:]
                    cut = True
            if newline < 0:
                break
            yield bytes(buffer), cut
            buffer, cut, start = bytearray(), False, newline + 1
    if buffer or cut:
        yield bytes(buffer), cut


def _decode(raw: bytes) -> tuple[str, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), NOT_UTF8


def detect_format(path: str, text: str) -> str:
    name = path.lower().removesuffix(".gz")
    if name.endswith(".tsv"):
        return "lastfm"
    head = text.lstrip()
    if head.startswith("["):
        return "spotify"
    first = next((line for line in head.splitlines() if line.strip(BLANK)), "")
    return "listenbrainz" if '"listened_at"' in first else "native"


def _head(data: bytes) -> str:
    """The first 64 KiB of the file's text, for format detection."""
    out = b""
    for piece in _inflate(data):
        if isinstance(piece, str):
            break
        out += piece
        if len(out) >= 65536:
            break
    return out[:65536].decode("utf-8", errors="replace").removeprefix(_BOM)


def detect(path: str, data: bytes, forced_format: str = "auto") -> str:
    """The file's format: ``forced_format``, or detected from its name and first 64 KiB."""
    fmt = forced_format if forced_format != "auto" else detect_format(path, _head(data))
    if fmt not in FORMATS:
        raise ValueError(f"unknown landing format {fmt!r}; expected one of {FORMATS} or 'auto'")
    return fmt


def inspect(path: str, data: bytes, forced_format: str = "auto") -> tuple[str, bool]:
    """``(format, jvm_readable)`` of one landing file (see the module docstring)."""
    fmt, readable, _ = survey(path, data, forced_format)
    return fmt, readable


def survey(path: str, data: bytes, forced_format: str = "auto",
           max_expanded: int | None = None) -> tuple[str, bool, int]:
    """``(format, jvm_readable, expanded)`` of one landing file: ``inspect``'s verdict and the bytes
    it decompresses to. With ``max_expanded``, the whole file is decompressed to count them, and
    counting stops past that many (``expanded`` is then above it, a bomb never counted to its end);
    without, decompression stops once the verdict is known.

    Reads the file once, in C (zlib, the UTF-8 decoder, ``bytes.find``), never line by line in Python.
    """
    fmt = detect(path, data, forced_format)
    gzipped, name = data[:2] == b"\x1f\x8b", path.lower()
    readable = not (fmt not in _LINE_FORMATS or gzipped != name.endswith(".gz")
                    or (not gzipped and name.endswith(_CODEC_SUFFIXES)))
    if not readable and max_expanded is None:
        return fmt, False, 0
    decoder = codecs.getincrementaldecoder("utf-8")()
    since_newline, carry, expanded = 0, b"", 0
    for piece in _inflate(data):
        if isinstance(piece, str):
            return fmt, False, expanded  # broken stream
        expanded += len(piece)
        if max_expanded is not None and expanded > max_expanded:
            return fmt, False, expanded
        if readable:
            state = _readable_piece(decoder, piece, carry, since_newline)
            if state is None:
                if max_expanded is None:
                    return fmt, False, expanded
                readable = False
            else:
                carry, since_newline = state
    if readable:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            readable = False
    return fmt, readable, expanded


def _readable_piece(decoder, piece: bytes, carry: bytes, since_newline: int) -> tuple[bytes, int] | None:
    """The next ``(carry, since_newline)`` when ``piece`` keeps the file readable by Spark's text
    reader as this module splits it (valid UTF-8, no lone carriage return, no line over
    ``MAX_RECORD_CHARS``); None when it does not."""
    try:
        decoder.decode(piece)
    except UnicodeDecodeError:
        return None
    window = carry + piece
    carry = b"\r" if window.endswith(b"\r") else b""
    if window.count(b"\r") - window.count(b"\r\n") > len(carry):
        return None  # a lone carriage return: Hadoop's reader would end a line there
    # A line inside one piece is shorter than a piece (_STEP < MAX_RECORD_CHARS): only the line
    # that runs across pieces needs counting. In bytes, so wide characters err on the safe side.
    first = piece.find(b"\n")
    if first < 0:
        since_newline += len(piece)
    else:
        if since_newline + first > MAX_RECORD_CHARS:
            return None
        since_newline = len(piece) - piece.rfind(b"\n") - 1
    if since_newline > MAX_RECORD_CHARS:
        return None
    return carry, since_newline


def iter_records(path: str, data: bytes, forced_format: str = "auto") -> Iterator[tuple[str, str, str | None]]:
    """``(raw_line, format, reason)`` for every record of one file (see the module docstring)."""
    fmt = detect(path, data, forced_format)
    if fmt == "spotify":
        yield from _json_array_records(path, data)
        return
    for item in _raw_lines(_inflate(data)):
        if isinstance(item, Broken):
            yield _broken_record(path, item, _decode(item.partial)[0], fmt)
            return
        yield from _record(*item, fmt)


def _broken_record(path: str, broken: Broken, tail: str, fmt: str) -> tuple[str, str, str]:
    # The last line before the break may be cut: it joins the quarantine with the break.
    return (f"{tail[:QUARANTINE_CHARS]} <gzip stream of {path.rsplit('/', 1)[-1]} unreadable after this point: "
            f"{broken}>", fmt, GZIP_BROKEN)


def _record(raw: bytes, cut: bool, fmt: str) -> Iterator[tuple[str, str, str | None]]:
    line, reason = _decode(raw.rstrip(b"\r"))
    line = line.removeprefix(_BOM)
    if cut or len(line) > MAX_RECORD_CHARS:
        yield line[:QUARANTINE_CHARS], fmt, RECORD_TOO_LONG
    elif line.strip(BLANK):
        yield line, fmt, reason


def _json_array_records(path: str, data: bytes) -> Iterator[tuple[str, str, str | None]]:
    raw, broken, size = bytearray(), None, 0
    for piece in _inflate(data):
        if isinstance(piece, str):
            broken = Broken(piece)
            break
        size += len(piece)
        if size > MAX_JSON_ARRAY_BYTES:
            yield (f"{raw[:QUARANTINE_CHARS].decode('utf-8', errors='replace')} <larger than "
                   f"{MAX_JSON_ARRAY_BYTES} bytes>"), "spotify", NOT_JSON_ARRAY
            return
        raw += piece
    text = raw.decode("utf-8", errors="replace").removeprefix(_BOM)
    if broken is not None:
        # A cut JSON array cannot be split into records: the break record stands for the file.
        yield _broken_record(path, broken, text, "spotify")
        return
    try:
        items = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an int past Python's digit limit, deep nesting
        yield f"{text[:QUARANTINE_CHARS]} <{type(exc).__name__}: {str(exc)[:200]}>", "spotify", NOT_JSON_ARRAY
        return
    if not isinstance(items, list):
        yield text[:QUARANTINE_CHARS], "spotify", NOT_JSON_ARRAY
        return
    for item in items:
        try:
            # ASCII escapes: a lone surrogate stays an escape for the JVM's JSON parser to decode.
            line = json.dumps(item, ensure_ascii=True, sort_keys=True)
        except (ValueError, RecursionError) as exc:
            yield f"<element not serializable: {type(exc).__name__}>", "spotify", NOT_JSON_OBJECT
            continue
        if len(line) > MAX_RECORD_CHARS:
            yield line[:QUARANTINE_CHARS], "spotify", RECORD_TOO_LONG
        else:
            yield line, "spotify", None if isinstance(item, dict) else NOT_JSON_OBJECT
