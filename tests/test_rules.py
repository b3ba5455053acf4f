"""The do-not-recommend list: what a well-formed list removes, and a one-line verdict on any other bytes."""

import hashlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from music_recs import rules
from music_recs.failures import MalformedRulesList, PermanentFailure, is_permanent
from music_recs.rules import ID_PATTERN, DoNotRecommend, parse_do_not_recommend

WHERE = "s3://rules/do-not-recommend.csv"
PREFIX = f"do-not-recommend list {WHERE}: "


def parse(text: str | bytes) -> DoNotRecommend:
    return parse_do_not_recommend(text.encode() if isinstance(text, str) else text, WHERE)


def rejection(data: str | bytes) -> str:
    with pytest.raises(MalformedRulesList) as caught:
        parse(data)
    message = str(caught.value)
    assert message.startswith(PREFIX) and "\n" not in message
    return message.removeprefix(PREFIX)


def test_global_and_per_user_rows_with_blank_lines_and_duplicates():
    got = parse("item_id,user_id\nb,\n\na,u2\r\n  \na,u1\nb\x2c\nc,u1\na,u1\n")
    assert got.items == ("b",)
    assert got.pairs == (("u1", "a"), ("u1", "c"), ("u2", "a"))
    assert got.rows == 6  # duplicates counted, blank lines not


def test_columns_in_any_order_and_user_id_optional():
    user_first, item_first = parse("user_id,item_id\nu1,a\n,b\n"), parse("item_id,user_id\na,u1\nb,\n")
    assert (user_first.items, user_first.pairs, user_first.rows) == (("b",), (("u1", "a"),), 2)
    assert (item_first.items, item_first.pairs, item_first.rows) == (("b",), (("u1", "a"),), 2)
    only_items = parse("item_id\nz\ny\n")
    assert only_items.items == ("y", "z") and only_items.pairs == () and only_items.rows == 2


def test_a_bom_crlf_and_quoted_fields_are_read():
    data = "\ufeffitem_id,user_id\r\n\"a:1\",\"u@x\"\r\n".encode()
    got = parse(data)
    assert got.pairs == (("u@x", "a:1"),) and got.sha256 == hashlib.sha256(data).hexdigest()


def test_a_header_only_file_is_an_empty_list():
    got = parse("item_id,user_id\n")
    assert (got.items, got.pairs, got.rows) == ((), (), 0)
    assert got.as_record("s3://r/l.csv") == {"uri": "s3://r/l.csv", "sha256": got.sha256, "rows": 0,
                                             "items_for_everyone": 0, "user_item_pairs": 0}


def test_the_manifest_record_counts_what_was_read():
    got = parse("item_id,user_id\na,\na,\nb,u1\n")
    record = got.as_record(WHERE)
    assert (record["rows"], record["items_for_everyone"], record["user_item_pairs"]) == (3, 1, 1)


def test_the_failure_is_permanent_and_a_value_error():
    with pytest.raises(MalformedRulesList) as caught:
        parse(b"")
    assert isinstance(caught.value, PermanentFailure) and isinstance(caught.value, ValueError)
    assert is_permanent(caught.value)


@pytest.mark.parametrize("data, problem", [
    (b"", "no header row (the file is empty)"),
    (b"\xef\xbb\xbf\n\n", "no header row (the file is empty)"),
    (b"item_id\na\n\xff\n", "line 3: not UTF-8 (byte 0xff at offset 10)"),
    (b"item_id\r\na\rb\xc3(\n", "line 3: not UTF-8 (byte 0xc3 at offset 12)"),
    (b"item_id\na\x00b\n", "line 2: NUL byte"),
    (b"user_id\nu1\n", "line 1: no item_id column in the header"),
    (b"\nitem_id,item_id\na,b\n", "line 2: duplicate column 'item_id'"),
    (b"item_id,user_id,user_id\n", "line 1: duplicate column 'user_id'"),
    (b"item_id,score\na,1\n", "line 1: unknown column 'score' (allowed: item_id, user_id)"),
    (b"item_id, user_id\n", "line 1: unknown column ' user_id' (allowed: item_id, user_id)"),
    (b"item_id,\n", "line 1: unknown column '' (allowed: item_id, user_id)"),
    (b"item_id,user_id\na,u1\nb\n", "line 3: 1 fields, the header has 2"),
    (b"item_id\na\nb,c\n", "line 3: 2 fields, the header has 1"),
    (b"item_id,user_id\na,u1\n,u2\n", "line 3: empty item_id"),
    (b"item_id\nbad id\n", f"line 2: item_id 'bad id' does not match {ID_PATTERN}"),
    (b"item_id,user_id\na,u/1\n", f"line 2: user_id 'u/1' does not match {ID_PATTERN}"),
    (b"item_id\n" + b"a" * 129 + b"\n", f"line 2: item_id '{'a' * 56}... does not match {ID_PATTERN}"),
    ("item_id\nx\u00e9\n".encode(), f"line 2: item_id 'x\u00e9' does not match {ID_PATTERN}"),
    # a quoted field over 2 lines
    (b"item_id\n\"a\nb\"\n", f"line 2: item_id 'a\\nb' does not match {ID_PATTERN}"),
    (b"item_id\na\n\"a\"b\n", "line 3: not CSV (',' expected after '\"')"),
    (b"item_id\n\"abc\n", "line 2: not CSV (unexpected end of data)"),
    # a BOM only at the start
    (b"item_id\na\n\xef\xbb\xbfb\n", f"line 3: item_id '\\ufeffb' does not match {ID_PATTERN}"),
])
def test_each_rejection_names_the_line_and_the_problem(data, problem):
    assert rejection(data) == problem


def test_an_offending_value_is_cut_short():
    problem = rejection("item_id\n" + "x" * 10_000 + "\u2028y\n")
    assert len(problem) < 150 and problem.startswith("line 2: item_id 'xxx") and problem.count("x") <= 60


def test_more_than_max_rows(monkeypatch):
    monkeypatch.setattr(rules, "MAX_ROWS", 3)
    assert parse("item_id\na\nb\n\nc\n").rows == 3
    assert rejection("item_id\na\nb\n\nc\nd\n") == "line 6: more than 3 rows"


_BYTES_OF_INTEREST = [b"item_id", b"user_id", b",", b"\n", b"\r", b"\r\n", b'"', b"a", b"u1", b" ", b"\t",
                      b"\xef\xbb\xbf", b"\x00", b"\xff", b"\xc3", "\u00e9".encode(), b"x" * 130]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300)
       | st.lists(st.sampled_from(_BYTES_OF_INTEREST), max_size=40).map(b"".join)
       | st.tuples(st.sampled_from([b"item_id\n", b"user_id,item_id\r\n", b"\xef\xbb\xbfitem_id,user_id\n"]),
                   st.binary(max_size=200)).map(b"".join))
def test_any_bytes_are_a_list_or_one_line_rejection(data):
    try:
        got = parse(data)
    except MalformedRulesList as exc:
        message = str(exc)
        assert message.startswith(PREFIX) and "\n" not in message and "\r" not in message
        assert len(message) < len(PREFIX) + 200
    else:
        assert got.rows >= len(got.items) and got.rows >= len(got.pairs)
        assert list(got.items) == sorted(set(got.items)) and list(got.pairs) == sorted(set(got.pairs))


ID_ALPHABET = string.ascii_letters + string.digits + ":._@+-"
ids = st.text(ID_ALPHABET, min_size=1, max_size=12) | st.text(ID_ALPHABET, min_size=120, max_size=128)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(ids, st.none() | ids), max_size=30), user_first=st.booleans(),
       with_users=st.booleans(), bom=st.booleans(), newline=st.sampled_from(["\n", "\r\n"]),
       blanks=st.lists(st.integers(0, 30), max_size=4))
def test_valid_rows_parse_to_the_expected_sets(rows, user_first, with_users, bom, newline, blanks):
    if not with_users:
        rows = [(item, None) for item, _ in rows]
    if with_users:
        lines = [f"{user or ''},{item}" if user_first else f"{item},{user or ''}" for item, user in rows]
        header = "user_id,item_id" if user_first else "item_id,user_id"
    else:
        lines, header = [item for item, _ in rows], "item_id"
    for at in sorted(blanks, reverse=True):
        lines.insert(min(at, len(lines)), "")
    text = ("\ufeff" if bom else "") + newline.join([header, *lines]) + newline
    got = parse(text)
    assert set(got.items) == {item for item, user in rows if user is None}
    assert set(got.pairs) == {(user, item) for item, user in rows if user is not None}
    assert got.rows == len(rows)
    assert list(got.items) == sorted(got.items) and list(got.pairs) == sorted(got.pairs)
    assert got.sha256 == hashlib.sha256(text.encode()).hexdigest()
