"""Column names and schemas shared by every stage.

Names are constants so a rename is one edit and a typo is an ImportError, not a
silently empty column.
"""

from __future__ import annotations

from music_recs.failures import InvalidInput

# --- stream log (landing and lake) ---------------------------------------------------
EVENT_ID = "event_id"
TS = "ts"  # ISO-8601 UTC timestamp of the play start
USER_ID = "user_id"
TRACK_ID = "track_id"
ARTIST_ID = "artist_id"
MS_PLAYED = "ms_played"
DT = "dt"  # lake partition column, YYYY-MM-DD

# Required in every landing record; more fields are allowed and ignored.
REQUIRED_LOG_COLUMNS = (EVENT_ID, TS, USER_ID, TRACK_ID, ARTIST_ID, MS_PLAYED)
ID_COLUMNS = (EVENT_ID, USER_ID, TRACK_ID, ARTIST_ID)  # each must match ID_PATTERN
# What an id may hold (user, track, artist): ingest quarantines others, the do-not-recommend list refuses them.
ID_PATTERN = r"^[A-Za-z0-9:._@+-]{1,128}$"
# Optional columns kept when present.
TRACK_NAME = "track_name"
ARTIST_NAME = "artist_name"
OPTIONAL_LOG_COLUMNS = (TRACK_NAME, ARTIST_NAME)

# Landing formats (``spark_jobs.lib.landing`` reads them; a setting may force one).
LANDING_FORMATS = ("native", "spotify", "lastfm", "listenbrainz")

# --- quarantine ------------------------------------------------------------------------
RAW_LINE = "raw_line"
REASON = "reason"
SOURCE_FILE = "source_file"

# --- confidence matrix -------------------------------------------------------------------
USER_IDX = "user_idx"  # int32 id used by ALS
ITEM_IDX = "item_idx"
ITEM_ID = "item_id"  # string id of the item (track or artist, by granularity)
ITEM_NAME = "item_name"
PLAYS = "plays"
SKIPS = "skips"
R = "r"  # the (time-decayed) play count confidence is computed from
STRENGTH = "strength"  # f(r), what ALS trains on
CONFIDENCE = "confidence"
# A matrix folder's nested split for tuning (``music_recs.tuning``).
TUNING_TRAIN, TUNING_VALIDATION = "tuning/train", "tuning/validation"

# --- model outputs ---------------------------------------------------------------------
FEATURES = "features"
SCORE = "score"
RANK = "rank"
SIMILAR_ITEM_ID = "similar_item_id"
SIMILARITY = "similarity"


def require_columns(columns, required, what: str) -> None:
    """Fail fast, naming every missing column, instead of failing later on a null."""
    missing = [c for c in required if c not in set(columns)]
    if missing:
        raise InvalidInput(f"{what} is missing required column(s): {', '.join(missing)}")
