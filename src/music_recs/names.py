"""Track and artist names from the logs: display metadata, cleaned once at ingest.

A name is text anyone who can write a landing line chooses, and it ends up in a terminal
(``music-recs recommend``), the report and whatever reads the publications. The rule, the same
in Python (:func:`clean_name`) and in the JVM (``spark_jobs.ingest.clean_name``, built from the
patterns below, no Python UDF):

1. every white-space character (Unicode ``White_Space``: tab, new line, NBSP, the ideographic
   space...) becomes a space;
2. control and format characters are removed (general categories ``Cc`` and ``Cf``: ESC and the
   rest of C0/C1, bidi overrides and isolates, zero-width spaces and joiners, the BOM, soft
   hyphen, tag characters);
3. runs of spaces become one space, and the name is trimmed;
4. the name is cut to ``NAME_MAX_CHARS`` code points (then trimmed again);
5. a name empty after this is null (no name: readers show the id).

A bad name is cleaned, not quarantined: the play's facts (user, track, time, duration) are
valid, and the name is only how the track is shown. The display name of a track or artist is
chosen over the window by ``spark_jobs.confidence`` as its most frequent name, so a few lines
cannot rename a popular track either.

The categories come from the Unicode database of each side (Python's ``unicodedata``, the JVM's
``java.lang.Character``); they differ only for the characters a newer Unicode version added.
"""

from __future__ import annotations

import unicodedata

# Longest names in the catalogues this reads are about 200 characters (classical works with
# their movements; MusicBrainz caps nothing, Spotify's longest titles are below 200): 256 keeps
# every real name whole and bounds what one line can put in every table, report and terminal.
NAME_MAX_CHARS = 256

# The general categories removed: Cc (control: C0, DEL, C1) and Cf (format: bidi controls,
# zero-width characters, BOM, soft hyphen, tag characters).
CONTROL_CATEGORIES = ("Cc", "Cf")

# Unicode's White_Space property (a closed list, stable since Unicode 4.1): the same code points
# on both sides, unlike Python's str.isspace() and Java's \s.
WHITE_SPACE = ("\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680"
               + "".join(chr(c) for c in range(0x2000, 0x200B)) + "\u2028\u2029\u202f\u205f\u3000")

# Java regular expressions (Spark's regexp_replace) of steps 1 and 2.
JAVA_WHITE_SPACE = "[" + "".join(f"\\x{{{ord(c):04x}}}" for c in WHITE_SPACE) + "]"
JAVA_CONTROL = "[" + "".join(f"\\p{{{cat}}}" for cat in CONTROL_CATEGORIES) + "]"

_WS = frozenset(WHITE_SPACE)


def clean_name(name: str | None) -> str | None:
    """The rule above: a name fit to display, or None."""
    if name is None:
        return None
    chars = (" " if c in _WS else c for c in name)
    kept = "".join(c for c in chars if unicodedata.category(c) not in CONTROL_CATEGORIES)
    folded = " ".join(part for part in kept.split(" ") if part)
    cut = folded[:NAME_MAX_CHARS].rstrip(" ")
    return cut or None
