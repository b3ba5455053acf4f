"""The do-not-recommend list: items never to recommend, to everyone or to given users.

An optional CSV object in S3 (legal takedowns, a user's "never show me this"). Format: UTF-8
(a leading BOM is allowed), a header row, then one rule per row. Columns, in any order:
``item_id`` (required) and ``user_id`` (optional), no other. A row whose ``user_id`` is empty
or absent removes the item for everyone; with a user_id, for that user only. Blank lines are
skipped; a header-only file is a valid empty list. Ids follow the ingest rule (``ID_PATTERN``).

A list that breaks any of this is rejected whole (``MalformedRulesList``, one line naming the
line and the problem): recommending something the list forbids is worse than not publishing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from typing import NoReturn

from music_recs import schema as S
from music_recs.failures import MalformedRulesList

ITEM_ID = S.ITEM_ID
USER_ID = S.USER_ID
COLUMNS = (ITEM_ID, USER_ID)
ID_PATTERN = S.ID_PATTERN  # the rule ingest applies: an id the plays can carry
MAX_ROWS = 5_000_000
SHOWN_CHARS = 60  # at most this much of an offending value goes into a message

_ID = re.compile(ID_PATTERN)
_BOM = "\ufeff"


@dataclass(frozen=True)
class DoNotRecommend:
    """A parsed list: ``items`` removed for everyone, ``pairs`` (user_id, item_id) removed for one
    user (both sorted, distinct); ``rows`` data rows read, duplicates included; ``sha256`` of the
    raw bytes, so a manifest names exactly the list a run applied."""

    items: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    rows: int
    sha256: str

    def as_record(self, uri: str) -> dict:
        """What a run's manifest records about the list it applied."""
        return {"uri": uri, "sha256": self.sha256, "rows": self.rows,
                "items_for_everyone": len(self.items), "user_item_pairs": len(self.pairs)}


def parse_do_not_recommend(data: bytes, where: str) -> DoNotRecommend:
    """Parse the raw bytes of a list; ``where`` (its URI) names it in errors.

    Raises ``MalformedRulesList`` for anything but a well-formed list, never another exception."""

    def fail(problem: str, line: int | None = None) -> NoReturn:
        at = "" if line is None else f"line {line}: "
        raise MalformedRulesList(f"do-not-recommend list {where}: {at}{problem}")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
             _line_of(data[:exc.start].decode("utf-8")))
    text = text.removeprefix(_BOM)
    if "\x00" in text:
        fail("NUL byte", _line_of(text[:text.index("\x00")]))

    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    item_col = user_col = -1
    items: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    rows = 0
    while True:
        line = reader.line_num + 1  # where the next record starts (a quoted field may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            fail(f"not CSV ({_one_line(str(exc))})", reader.line_num)
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line
        if header is None:
            header = row
            for name in row:
                if name not in COLUMNS:
                    fail(f"unknown column {_show(name)} (allowed: {', '.join(COLUMNS)})", line)
            for name in COLUMNS:
                if row.count(name) > 1:
                    fail(f"duplicate column {_show(name)}", line)
            if ITEM_ID not in row:
                fail(f"no {ITEM_ID} column in the header", line)
            item_col = row.index(ITEM_ID)
            user_col = row.index(USER_ID) if USER_ID in row else -1
            continue
        if len(row) != len(header):
            fail(f"{len(row)} fields, the header has {len(header)}", line)
        rows += 1
        if rows > MAX_ROWS:
            fail(f"more than {MAX_ROWS} rows", line)
        item = row[item_col]
        if not item:
            fail(f"empty {ITEM_ID}", line)
        if not _ID.fullmatch(item):
            fail(f"{ITEM_ID} {_show(item)} does not match {ID_PATTERN}", line)
        user = row[user_col] if user_col >= 0 else ""
        if not user:
            items.add(item)
        elif not _ID.fullmatch(user):
            fail(f"{USER_ID} {_show(user)} does not match {ID_PATTERN}", line)
        else:
            pairs.add((user, item))
    if header is None:
        fail("no header row (the file is empty)")
    return DoNotRecommend(items=tuple(sorted(items)), pairs=tuple(sorted(pairs)), rows=rows,
                          sha256=hashlib.sha256(data).hexdigest())


def _line_of(before: str) -> int:
    """The line number of the character after ``before``; lines end at LF, CR or CRLF, as the
    CSV reader splits them."""
    return before.count("\n") + before.count("\r") - before.count("\r\n") + 1


def _show(value: str) -> str:
    """``value`` quoted and escaped onto one line, cut to ``SHOWN_CHARS``."""
    shown = repr(value)
    return shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def rules_line(rules: dict | None, top_n=None) -> str:
    """One line for a person: the rules a model's top-N lists obeyed (``EvaluateResult.rules``)."""
    if not rules:
        return "rules: not recorded (a model from before the rules)"
    cap = rules.get("max_per_artist") or 0
    parts = [f"at most {cap} tracks per artist" if cap else "no artist cap"]
    listed = rules.get("do_not_recommend")
    if listed:
        here = (f"; {listed['items_in_matrix']} of its items and {listed['pairs_in_matrix']} of its pairs in this "
                f"model's catalogue" if "items_in_matrix" in listed else "")
        parts.append(f"do-not-recommend list {listed.get('uri')} (sha256 {str(listed.get('sha256'))[:12]}, "
                     f"{listed.get('rows')} rows: {listed.get('items_for_everyone')} items for everyone, "
                     f"{listed.get('user_item_pairs')} user/item pairs{here})")
    else:
        parts.append("no do-not-recommend list")
    if rules.get("users_short"):
        parts.append(f"{rules['users_short']} users got fewer than {top_n or 'top_n'} items (the rules left too few)")
    return "rules: " + "; ".join(parts)
