"""The name-cleaning rule (``music_recs.names``), as Python; the JVM's copy is checked against it in
``test_names_spark.py``."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from music_recs.names import NAME_MAX_CHARS, WHITE_SPACE, clean_name
from music_recs_airflow.cli import printable_name

ESC_TITLE = "\x1b]0;owned\x07\x1b[2J\x1b[31mDancing Queen\x1b[0m"
BIDI = "\u202eeuQ gnicnaD\u202c"

# Names as attackers and old exports write them: any code point (surrogates excluded: not in UTF-8),
# with the characters that matter drawn often.
NASTY = st.sampled_from(["\x1b", "\x07", "\x00", "\x7f", "\x85", "\x9b", "\u200b", "\u200d", "\u202e", "\u2066",
                         "\ufeff", "\u00ad", "\U000e0041", *WHITE_SPACE])
NAMES = st.lists(st.one_of(st.characters(blacklist_categories=("Cs",)), NASTY), max_size=300).map("".join)


def test_escape_sequences_bidi_overrides_and_zero_width_characters_are_removed():
    assert clean_name(ESC_TITLE) == "]0;owned[2J[31mDancing Queen[0m"
    assert clean_name(BIDI) == "euQ gnicnaD"
    assert clean_name("Bey\u200bonc\u00e9\u200d") == "Beyonc\u00e9"
    assert clean_name("  Roads\t\n by\u00a0\u3000Portishead \r\n") == "Roads by Portishead"
    assert clean_name("坂本龍一") == "坂本龍一"  # letters of any script stay


def test_long_names_are_cut_and_empty_names_are_null():
    assert clean_name("x" * 10_000) == "x" * NAME_MAX_CHARS
    assert clean_name("y" * (NAME_MAX_CHARS - 1) + " z") == "y" * (NAME_MAX_CHARS - 1)  # no trailing space
    assert clean_name("\u200b\x1b \t\u202e") is None
    assert clean_name("") is None and clean_name(None) is None


@settings(max_examples=400)
@given(NAMES)
def test_a_cleaned_name_is_short_printable_single_spaced_and_stable(raw):
    name = clean_name(raw)
    if name is None:
        return
    assert 0 < len(name) <= NAME_MAX_CHARS
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in name)
    assert not any(c in WHITE_SPACE and c != " " for c in name)
    assert name == name.strip(" ") and "  " not in name
    assert clean_name(name) == name  # idempotent: cleaning the lake's names again changes nothing


@settings(max_examples=200)
@given(NAMES, NAMES, st.lists(NASTY.filter(lambda c: c not in WHITE_SPACE), min_size=1, max_size=20))
def test_control_characters_inserted_anywhere_change_nothing(before, after, controls):
    assert clean_name(before + "".join(controls) + after) == clean_name(before + after)


@settings(max_examples=200)
@given(st.lists(st.text(st.characters(whitelist_categories=("L", "N", "P", "S")), min_size=1, max_size=12),
                min_size=1, max_size=12))
def test_ordinary_names_are_kept_as_they_are(words):
    name = " ".join(words)[:NAME_MAX_CHARS].rstrip(" ")
    assert clean_name(name) == name


def test_the_cli_prints_names_through_the_same_rule():
    """Publications written before names were cleaned at ingest still hold raw names."""
    assert printable_name(ESC_TITLE) == clean_name(ESC_TITLE) and "\x1b" not in printable_name(ESC_TITLE)
    assert printable_name(BIDI) == "euQ gnicnaD"
    assert printable_name("\x1b\u200b") is None and printable_name(None) is None
