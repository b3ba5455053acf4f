"""A whole window of plays at scale, fast: the last day as landing files, the history in the lake.

``sample_data`` draws plays one user at a time and formats every line in Python (a 5M-play day
takes minutes); this generator draws a whole day with a handful of vectorised numpy calls and
formats the lines and the Parquet columns as fixed-width byte matrices, so a 90-day window of
100M plays is written in minutes on two cores. What it keeps of a real service:

* a catalogue of ``tracks`` under ``artists``: artist popularity is Zipf-like, prolific artists
  have more tracks, and within an artist a few hits take most plays; so most tracks are rarely
  played and the top 1% take a large share;
* ``users`` whose activity is lognormal (a few heavy listeners, a long tail of light ones);
* taste: every artist belongs to one of a few dozen clusters (genres), every user has a home
  cluster and a short list of favourite tracks in it (played again and again, a Zipf-like rank);
  the rest of their plays come from the home cluster by popularity, or from the global charts;
* plays spread over each day with an evening peak; about a fifth are skips (under 30 s), the
  rest play a track's length or stop partway;
* ids that follow the landing rules (``schema.ID_PATTERN``): ``u0000042``, ``t00001234``,
  ``a000017``; event ids ``e<yyyymmdd>-<sequence>``, unique over the window (ingest looks for
  replays in the neighbouring days).

Everything is a pure function of the spec (``seed`` included): the catalogue comes from
``default_rng([seed, 0])``, day ``i`` of the window from ``default_rng([seed, 1, i])``, so any
day regenerates identically, alone or with the others.

Two writers:

* ``write_landing_day``: a day as native gzip JSON lines (``docs/data-format.md``), several
  files, in a local folder laid out like the landing prefix:
  ``{out}/stream_logs/dt=D/part-NNNNN.jsonl.gz``;
* ``write_lake_days``: days straight into a local lake's plays layout, as ingest commits them
  (``spark_jobs/ingest.py``): ``plays/dt=D/v=V/part-*.snappy.parquet`` with ``_SUCCESS``, an
  empty quarantine copy ``quarantine/dt=D/v=V/``, and the readers' pointer
  ``plays/dt=D/_COMMITTED.json`` (``lake_commit.CommittedPointer``) written last, in one step.
  The Parquet files have ingest's schema exactly: the columns in ingest's order, all optional,
  ``ts`` a UTC ``TIMESTAMP(MICROS)``, ``ms_played`` int64, with Spark's row metadata; each file
  holds an ``event_id``-spread share of the day sorted by ``user_id, ts, event_id``, one file
  per 48 MiB of the day's landing lines (1.1M plays), as ingest writes them. The id index
  (``ids/``) is not written: build_confidence extends it itself from the window's plays.

Run: ``python -m music_recs_dev.scale_data --out DIR --lake DIR --days 90 --plays 100000000
--users 1000000 --tracks 200000 --seed 7 --fraction 0.1``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import json
import math
import os
import sys
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from music_recs import lake_commit as C
from music_recs import schema as S
from music_recs.plan import LakeLayout, local_path

DEFAULT_LAST_DAY = dt.date(2026, 11, 20)
SKIP_SHARE = 0.22  # plays stopped within 30 s
PARTIAL_SHARE = 0.2  # of the other plays: stopped partway (30 s to the whole track)
FAVOURITE_SHARE = 0.5  # plays of the user's own favourites
CLUSTER_SHARE = 0.35  # plays from the home cluster by popularity; the rest: the global charts
FAVOURITES = 24  # favourites per user
USER_ACTIVITY_SIGMA = 1.4  # lognormal sigma of plays per user
ARTIST_ZIPF = 0.75  # artist popularity ~ rank ** -ARTIST_ZIPF
HIT_ZIPF = 1.1  # within an artist, the k-th track ~ k ** -HIT_ZIPF
TRACK_NOISE_SIGMA = 1.4  # a track's own luck: its weight times lognormal(0, sigma)
TOP_TRACK_SHARE = 0.005  # no track takes more of the plays than a chart-topper
TRACKS_PER_ARTIST = 8  # when artists are not given
# Listening by hour of the day (UTC): quiet at night, a peak in the evening.
HOUR_WEIGHTS = np.array([3, 2, 1.2, 0.8, 0.6, 0.7, 1.2, 2.2, 3.2, 3.6, 3.8, 4, 4.3, 4.4, 4.4, 4.6, 5, 5.6,
                         6.2, 6.8, 7, 6.6, 5.4, 4.2])
# Ingest writes a day's plays as one Parquet file per 48 MiB of landing files
# (``ingest.LANDING_BYTES_PER_OUTPUT_FILE``); this generator's gzip'd lines take about 43 bytes a play.
LANDING_BYTES_PER_OUTPUT_FILE = 48 * 1024 * 1024
LANDING_BYTES_PER_PLAY = 43
LANDING_FILES = 8
GZIP_LEVEL = 1
WRITER = "music_recs_dev.scale_data"

# The Parquet schema ingest's plays have (Spark writes every column optional, and its own schema
# in the footer; ``ts`` as TIMESTAMP_MICROS, UTC-adjusted: ``session.BASE_CONF``).
PLAYS_SCHEMA = pa.schema([
    pa.field(S.EVENT_ID, pa.string()), pa.field(S.TS, pa.timestamp("us", tz="UTC")),
    pa.field(S.USER_ID, pa.string()), pa.field(S.TRACK_ID, pa.string()), pa.field(S.ARTIST_ID, pa.string()),
    pa.field(S.MS_PLAYED, pa.int64()), pa.field(S.TRACK_NAME, pa.string()), pa.field(S.ARTIST_NAME, pa.string()),
])
_SPARK_TYPES = {pa.string(): "string", pa.timestamp("us", tz="UTC"): "timestamp", pa.int64(): "long"}
SPARK_ROW_METADATA = json.dumps({"type": "struct", "fields": [
    {"name": f.name, "type": _SPARK_TYPES[f.type], "nullable": True, "metadata": {}} for f in PLAYS_SCHEMA]},
    separators=(",", ":"))


def _spark_version() -> str:
    """The installed PySpark's version (what Spark writes in its footers), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyspark")
    except PackageNotFoundError:
        return "4.1.1"


SPARK_VERSION = _spark_version()

_LUT3 = np.array([list(f"{i:03d}".encode()) for i in range(1000)], dtype=np.uint8)  # 3 digits of 0..999


# --- the spec -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ScaleSpec:
    """A window of ``days`` days ending ``last_day`` with about ``plays`` plays (exactly, summed
    over the days), ``users`` users, ``tracks`` tracks under ``artists`` artists (0: one per
    ``TRACKS_PER_ARTIST`` tracks)."""

    days: int = 90
    plays: int = 100_000_000
    users: int = 1_000_000
    tracks: int = 200_000
    artists: int = 0
    seed: int = 7
    last_day: dt.date = DEFAULT_LAST_DAY

    def __post_init__(self):
        if self.days < 1 or self.plays < self.days or self.users < 1 or self.tracks < 1:
            raise ValueError(f"a window needs days >= 1, plays >= days, users and tracks >= 1: {self}")
        artists = self.artists or max(1, self.tracks // TRACKS_PER_ARTIST)
        object.__setattr__(self, "artists", min(artists, self.tracks))

    def scaled(self, fraction: float) -> ScaleSpec:
        """The same window with plays, users, tracks and artists times ``fraction`` (the cost curve's points)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        return dataclasses.replace(self, plays=max(self.days, round(self.plays * fraction)),
                                   users=max(1, round(self.users * fraction)),
                                   tracks=max(1, round(self.tracks * fraction)),
                                   artists=max(1, round(self.artists * fraction)))

    @property
    def day_list(self) -> list[dt.date]:
        return [self.last_day - dt.timedelta(days=self.days - 1 - i) for i in range(self.days)]

    def plays_per_day(self) -> np.ndarray:
        """Plays of each day: a weekly rhythm (weekends +10%), summing to ``plays`` exactly."""
        weekday = np.array([d.weekday() for d in self.day_list])
        w = np.where(weekday >= 5, 1.1, 1.0) * (1 + 0.03 * np.sin(np.arange(self.days)))
        counts = np.floor(self.plays * w / w.sum()).astype(np.int64)
        counts[-1] += self.plays - counts.sum()
        return counts


# --- fixed-width text -------------------------------------------------------------------------
def digits(x, width: int) -> np.ndarray:
    """The zero-padded decimal digits of ``x`` (ints < 10**width) as an ``(n, width)`` uint8 matrix."""
    x = np.asarray(x, dtype=np.int64)
    out = np.empty((len(x), width), dtype=np.uint8)
    col = width
    while col > 0:
        take = min(3, col)
        out[:, col - take:col] = _LUT3[x % 1000][:, 3 - take:]
        x = x // 1000
        col -= take
    return out


def spaced_digits(x, width: int) -> np.ndarray:
    """``digits`` with the leading zeros as spaces (a JSON number, right-aligned: valid JSON)."""
    x = np.asarray(x, dtype=np.int64)
    out = digits(x, width)
    for col in range(width - 1):
        out[:, col][x < 10 ** (width - 1 - col)] = ord(" ")
    return out


def text_table(prefix: str, count: int, width: int) -> np.ndarray:
    """``prefix`` + the zero-padded number, for 0..count-1, as fixed-width bytes (one gather per column)."""
    pre = np.frombuffer(prefix.encode(), dtype=np.uint8)
    matrix = np.concatenate([np.broadcast_to(pre, (count, len(pre))), digits(np.arange(count), width)], axis=1)
    return np.ascontiguousarray(matrix).view(f"S{matrix.shape[1]}").ravel()


def as_matrix(values: np.ndarray) -> np.ndarray:
    """Fixed-width bytes (``S<w>``) as an ``(n, w)`` uint8 matrix (a view); a matrix as it is."""
    if values.dtype.kind == "S":
        values = np.ascontiguousarray(values)
        return values.view(np.uint8).reshape(len(values), values.dtype.itemsize)
    return values


def render(n: int, segments: list) -> np.ndarray:
    """Concatenate ``segments`` (bytes, the same on every row, or ``(n, w)`` uint8 matrices or
    ``S<w>`` arrays) row by row: an ``(n, width)`` uint8 matrix."""
    segments = [s if isinstance(s, bytes) else as_matrix(s) for s in segments]
    width = sum(len(s) if isinstance(s, bytes) else s.shape[1] for s in segments)
    out = np.empty((n, width), dtype=np.uint8)
    pos = 0
    for s in segments:
        if isinstance(s, bytes):
            out[:, pos:pos + len(s)] = np.frombuffer(s, dtype=np.uint8)
            pos += len(s)
        else:
            out[:, pos:pos + s.shape[1]] = s
            pos += s.shape[1]
    return out


def string_array(values: np.ndarray) -> pa.Array:
    """An Arrow string array of fixed-width text (an ``(n, w)`` uint8 matrix or ``S<w>`` array), its
    bytes the array's data buffer as they are."""
    matrix = as_matrix(values)
    n, w = matrix.shape
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int64 if (n + 1) * w >= 2**31 else np.int32)
    kind = pa.large_string() if offsets.dtype == np.int64 else pa.string()
    data = np.ascontiguousarray(matrix)
    arr = pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return arr.cast(pa.string()) if kind != pa.string() else arr


def _id_width(count: int, least: int) -> int:
    return max(least, len(str(max(count - 1, 0))))


# --- the catalogue ----------------------------------------------------------------------------
class Catalogue:
    """Artists, tracks, clusters and users' tastes, from ``default_rng([spec.seed, 0])``."""

    def __init__(self, spec: ScaleSpec):
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 0])
        A, T, U = spec.artists, spec.tracks, spec.users
        self.clusters = int(min(64, max(4, A // 400)))
        # Artists: Zipf-like popularity in a random order; prolific artists are the popular ones.
        artist_w = 1.0 / np.arange(1, A + 1) ** ARTIST_ZIPF
        rng.shuffle(artist_w)
        per_artist = 1 + rng.multinomial(T - A, np.sqrt(artist_w) / np.sqrt(artist_w).sum())
        self.track_artist = np.repeat(np.arange(A), per_artist)
        first = np.repeat(np.cumsum(per_artist) - per_artist, per_artist)
        hit_rank = np.arange(T) - first  # the artist's k-th track (0: its biggest hit)
        track_w = artist_w[self.track_artist] / (1 + hit_rank) ** HIT_ZIPF * rng.lognormal(0, TRACK_NOISE_SIGMA, T)
        track_w = np.minimum(track_w, TOP_TRACK_SHARE * track_w.sum()) if T >= 1 / TOP_TRACK_SHARE else track_w
        self.track_p = track_w / track_w.sum()
        self.artist_cluster = rng.integers(0, self.clusters, A)
        self.track_cluster = self.artist_cluster[self.track_artist]
        # Track lengths: about 3.5 minutes, 1 to 12.
        self.track_ms = np.clip(rng.lognormal(np.log(210_000), 0.3, T), 60_000, 720_000).astype(np.int64)
        # Sampling tables: by popularity over all tracks; within a cluster, over the tracks
        # ordered by cluster (cluster c: positions cluster_start[c]..cluster_end[c] of by_cluster).
        self.track_cdf = np.cumsum(self.track_p)
        self.by_cluster = np.argsort(self.track_cluster, kind="stable")
        self.cluster_cdf = np.cumsum(self.track_p[self.by_cluster])
        self.cluster_end = np.searchsorted(self.track_cluster[self.by_cluster], np.arange(self.clusters), side="right")
        self.cluster_start = np.r_[0, self.cluster_end[:-1]]
        # Users: lognormal activity, a home cluster (one with tracks), favourites drawn in it.
        activity = rng.lognormal(0.0, USER_ACTIVITY_SIGMA, U)
        self.user_cdf = np.cumsum(activity / activity.sum())
        populated = np.flatnonzero(self.cluster_end > self.cluster_start)
        self.user_cluster = populated[rng.integers(0, len(populated), U)]
        by_home = np.argsort(self.user_cluster, kind="stable")
        slots = (by_home[:, None] * FAVOURITES + np.arange(FAVOURITES)).ravel()  # grouped by cluster
        self.favourites = self.in_cluster(np.repeat(self.user_cluster, FAVOURITES), rng, slots) \
            .reshape(U, FAVOURITES).astype(np.int32)
        # The ids' and names' text, one fixed-width bytes value per entity.
        self.user_text = text_table("u", U, _id_width(U, 7))
        self.track_text = text_table("t", T, _id_width(T, 8))
        self.artist_text = text_table("a", A, _id_width(A, 6))
        self.track_name_text = text_table("Track ", T, _id_width(T, 8))
        self.artist_name_text = text_table("Artist ", A, _id_width(A, 6))

    def in_cluster(self, cluster: np.ndarray, rng: np.random.Generator, order: np.ndarray | None = None) -> np.ndarray:
        """A track of each ``cluster`` (each a cluster with tracks), by popularity in it: one
        draw per cluster present, over that cluster's share of the table only. ``order``: the
        positions of ``cluster`` grouped by cluster, when known (else a stable argsort)."""
        out = np.empty(len(cluster), dtype=np.int64)
        order = np.argsort(cluster, kind="stable") if order is None else order
        bounds = np.r_[0, np.cumsum(np.bincount(cluster, minlength=self.clusters))]
        for c in np.flatnonzero(np.diff(bounds)):
            a, b = self.cluster_start[c], self.cluster_end[c]
            cdf = self.cluster_cdf[a:b]
            lo = self.cluster_cdf[a - 1] if a else 0.0
            picks = _draw(cdf, bounds[c + 1] - bounds[c], rng, lo)
            out[order[bounds[c]:bounds[c + 1]]] = self.by_cluster[a + picks]
        return out

    def by_popularity(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _draw(self.track_cdf, n, rng)


def _draw(cdf: np.ndarray, n: int, rng: np.random.Generator, lo: float = 0.0) -> np.ndarray:
    """``n`` positions of the cumulative weights ``cdf`` (starting after ``lo``), drawn by weight,
    in random order. The uniforms are sorted first: a sorted search walks the table once (several
    times faster than ``n`` random searches on a large table); a shuffle then undoes the order."""
    r = np.sort(rng.random(n))
    picks = np.minimum(np.searchsorted(cdf, lo + r * (cdf[-1] - lo), side="right"), len(cdf) - 1)
    rng.shuffle(picks)
    return picks


# --- a day's plays ----------------------------------------------------------------------------
@dataclasses.dataclass
class DayPlays:
    """One day's plays as arrays, in event order (``seq``: the event's number in the day)."""

    day: dt.date
    user: np.ndarray
    track: np.ndarray
    artist: np.ndarray
    ms_of_day: np.ndarray  # when the play started, ms after midnight UTC
    ms_played: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    @property
    def ts_micros(self) -> np.ndarray:
        midnight = (self.day - dt.date(1970, 1, 1)).days * 86_400_000_000
        return midnight + self.ms_of_day * 1000

    def event_text(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """``e<yyyymmdd>-<9-digit sequence>``: unique over the window."""
        seq = np.arange(len(self))[rows]
        return render(len(seq), [f"e{self.day:%Y%m%d}-".encode(), digits(seq, max(9, len(str(len(self)))))])


def generate_day(cat: Catalogue, index: int, plays: int | None = None) -> DayPlays:
    """Day ``index`` of the window (0: the first), from ``default_rng([seed, 1, index])``."""
    spec = cat.spec
    n = int(spec.plays_per_day()[index] if plays is None else plays)
    rng = np.random.default_rng([spec.seed, 1, index])
    user = _draw(cat.user_cdf, n, rng)
    source = rng.random(n)
    track = np.empty(n, dtype=np.int64)
    fav = source < FAVOURITE_SHARE
    rank = (FAVOURITES * rng.random(int(fav.sum())) ** 3).astype(np.int64)  # the top favourites most
    track[fav] = cat.favourites[user[fav], rank]
    home = ~fav & (source < FAVOURITE_SHARE + CLUSTER_SHARE)
    track[home] = cat.in_cluster(cat.user_cluster[user[home]], rng)
    rest = ~(fav | home)
    track[rest] = cat.by_popularity(int(rest.sum()), rng)
    hour_cdf = np.cumsum(HOUR_WEIGHTS) / HOUR_WEIGHTS.sum()
    hour = np.minimum(np.searchsorted(hour_cdf, rng.random(n), side="right"), 23)
    ms_of_day = hour * 3_600_000 + rng.integers(0, 3_600_000, n)
    length = cat.track_ms[track]
    kind = rng.random(n)
    partial = (30_000 + (length - 30_000) * rng.random(n)).astype(np.int64)
    skipped = rng.integers(0, 30_000, n)
    ms_played = np.where(kind < SKIP_SHARE, skipped, np.where(kind < SKIP_SHARE + PARTIAL_SHARE, partial, length))
    return DayPlays(spec.day_list[index], user, track, cat.track_artist[track], ms_of_day, ms_played)


# --- writer 1: landing JSON lines -----------------------------------------------------------
def landing_lines(cat: Catalogue, plays: DayPlays, rows: slice = slice(None)) -> np.ndarray:
    """Native JSON lines of ``plays[rows]`` as an ``(n, width)`` uint8 matrix (each row ends in a newline)."""
    user, track, artist = plays.user[rows], plays.track[rows], plays.artist[rows]
    ms_of_day, ms_played = plays.ms_of_day[rows], plays.ms_played[rows]
    n = len(user)
    hms = ms_of_day // 1000
    return render(n, [
        b'{"event_id":"', plays.event_text(rows),
        f'","ts":"{plays.day:%Y-%m-%d}T'.encode(), digits(hms // 3600, 2), b":", digits(hms // 60 % 60, 2), b":",
        digits(hms % 60, 2), b".", digits(ms_of_day % 1000, 3),
        b'Z","user_id":"', cat.user_text[user], b'","track_id":"', cat.track_text[track],
        b'","artist_id":"', cat.artist_text[artist], b'","ms_played":', spaced_digits(ms_played, 8),
        b',"track_name":"', cat.track_name_text[track], b'","artist_name":"', cat.artist_name_text[artist],
        b'"}\n',
    ])


def _gzip(data: bytes | memoryview, level: int = GZIP_LEVEL) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    return c.compress(data) + c.flush()


def landing_dir(out: str, day: dt.date) -> str:
    """Where day D's landing files go under ``out``: ``stream_logs/dt=D`` (the default landing prefix)."""
    return os.path.join(out, "stream_logs", f"dt={day.isoformat()}")


def write_landing_day(cat: Catalogue, plays: DayPlays, out: str, files: int = LANDING_FILES,
                      threads: int = 2) -> list[str]:
    """``plays`` as ``files`` gzip JSON-lines files ``{out}/stream_logs/dt=D/part-NNNNN.jsonl.gz``
    (each written aside and renamed in); their paths. ``threads`` files are made at once."""
    folder = landing_dir(out, plays.day)
    os.makedirs(folder, exist_ok=True)
    n = len(plays)
    bounds = np.linspace(0, n, max(1, min(files, n)) + 1).astype(np.int64)

    def one(i: int) -> str:
        body = _gzip(memoryview(landing_lines(cat, plays, slice(bounds[i], bounds[i + 1]))).cast("B"))
        path = os.path.join(folder, f"part-{i:05d}.jsonl.gz")
        with open(path + ".tmp", "wb") as fh:
            fh.write(body)
        os.replace(path + ".tmp", path)
        return path

    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(one, range(len(bounds) - 1)))


# --- writer 2: the lake's plays ---------------------------------------------------------------
def plays_table(cat: Catalogue, plays: DayPlays, order: np.ndarray | None = None) -> pa.Table:
    """``plays`` (rows ``order``) as an Arrow table of ingest's plays schema (``PLAYS_SCHEMA``)."""
    order = np.arange(len(plays)) if order is None else order
    user, track, artist = plays.user[order], plays.track[order], plays.artist[order]
    ts = np.ascontiguousarray(plays.ts_micros[order])
    columns = [
        string_array(plays.event_text(order)),
        pa.Array.from_buffers(pa.timestamp("us", tz="UTC"), len(order), [None, pa.py_buffer(ts)]),
        string_array(cat.user_text[user]), string_array(cat.track_text[track]), string_array(cat.artist_text[artist]),
        pa.array(np.ascontiguousarray(plays.ms_played[order]), type=pa.int64()),
        string_array(cat.track_name_text[track]), string_array(cat.artist_name_text[artist]),
    ]
    meta = {b"org.apache.spark.version": SPARK_VERSION.encode(),
            b"org.apache.spark.sql.parquet.row.metadata": SPARK_ROW_METADATA.encode()}
    return pa.Table.from_arrays(columns, schema=PLAYS_SCHEMA.with_metadata(meta))


def lake_file_orders(plays: DayPlays) -> list[np.ndarray]:
    """The rows of each Parquet file of the day, as ingest lays them out: the day spread by event
    (ingest hashes ``event_id``) over as many files as ingest would write for the day's landing
    files (one per 48 MiB), each file sorted by ``user_id, ts, event_id`` (fixed-width ids sort as
    their numbers)."""
    n = len(plays)
    files = max(1, math.ceil(n * LANDING_BYTES_PER_PLAY / LANDING_BYTES_PER_OUTPUT_FILE))
    seq = np.arange(n)
    # user, then ms of the day (< 2**27); a stable sort keeps event order among ties.
    order = np.argsort((plays.user.astype(np.int64) << 27) | plays.ms_of_day, kind="stable")
    part = (seq % files)[order]
    order = order[np.argsort(part, kind="stable")]
    counts = np.bincount(part, minlength=files)
    return np.split(order, np.cumsum(counts)[:-1])


def write_lake_day(cat: Catalogue, plays: DayPlays, lake_root: str, now: dt.datetime | None = None,
                   writer: str = "") -> C.CommittedPointer:
    """Day ``plays.day`` into the local lake at ``lake_root``: a new copy ``v=V`` (Parquet plays,
    ``_SUCCESS``, an empty quarantine), then the pointer naming it, in one ``os.replace``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if local_path(lake_root) is None:
        raise ValueError(f"write_lake_day writes a local lake (a folder or file://), not {lake_root}")
    lake, day = LakeLayout(local_path(lake_root)), plays.day.isoformat()
    version = C.new_version(now)
    plays_dir, quarantine_dir = lake.plays_copy(day, version), lake.quarantine_copy(day, version)
    os.makedirs(plays_dir)
    for i, order in enumerate(lake_file_orders(plays)):
        path = os.path.join(plays_dir, f"part-{i:05d}-{version}-c000.snappy.parquet")
        # Snappy, as Spark writes; the Arrow schema pyarrow adds to the footer is ignored by Spark.
        pq.write_table(plays_table(cat, plays, order), path, compression="snappy", write_statistics=True)
    open(os.path.join(plays_dir, "_SUCCESS"), "wb").close()
    os.makedirs(quarantine_dir)
    open(os.path.join(quarantine_dir, f"part-00000-{version}-c000.json"), "wb").close()
    open(os.path.join(quarantine_dir, "_SUCCESS"), "wb").close()
    pointer = C.CommittedPointer(version=version, day=day, writer=writer or f"{WRITER} seed={cat.spec.seed}",
                                 committed_at=now, accepted=len(plays), quarantined=0)
    target = lake.committed_pointer(day)
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(pointer.to_json())
    os.replace(tmp, target)
    return pointer


_FORKED: Catalogue | None = None  # the catalogue a forked worker inherits from its parent


def _lake_day_job(index: int, lake_root: str) -> tuple[str, int, float]:
    start = time.perf_counter()
    plays = generate_day(_FORKED, index)
    write_lake_day(_FORKED, plays, lake_root)
    return plays.day.isoformat(), len(plays), time.perf_counter() - start


def write_lake_days(cat: Catalogue, lake_root: str, indices, on_day=None, workers: int = 1) -> int:
    """Days ``indices`` of the window into the lake; the plays written. ``on_day(day, plays,
    seconds)`` as each is done. ``workers`` > 1: that many forked processes, each a day at a time
    (they inherit the catalogue, nothing is rebuilt; do not fork a process that runs Spark)."""
    global _FORKED
    indices, total = list(indices), 0
    if workers <= 1 or len(indices) <= 1:
        for i in indices:
            start = time.perf_counter()
            plays = generate_day(cat, i)
            write_lake_day(cat, plays, lake_root)
            total += len(plays)
            if on_day:
                on_day(plays.day.isoformat(), len(plays), time.perf_counter() - start)
        return total
    import multiprocessing

    _FORKED = cat
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for day, n, seconds in pool.map(_lake_day_job, indices, [lake_root] * len(indices)):
                total += n
                if on_day:
                    on_day(day, n, seconds)
    finally:
        _FORKED = None
    return total


# --- the command line -------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m music_recs_dev.scale_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="landing folder: the last day goes to OUT/stream_logs/dt=D/part-NNNNN.jsonl.gz")
    p.add_argument("--lake", help="local lake root: the history days (all but the last) go to its plays")
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--plays", type=int, default=100_000_000, help="plays over the whole window")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--tracks", type=int, default=200_000)
    p.add_argument("--artists", type=int, default=0, help=f"0: tracks / {TRACKS_PER_ARTIST}")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--last-day", type=dt.date.fromisoformat, default=DEFAULT_LAST_DAY)
    p.add_argument("--fraction", type=float, default=1.0, help="scales plays, users, tracks and artists")
    p.add_argument("--landing-files", type=int, default=LANDING_FILES)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes writing the lake's days (and threads compressing landing files)")
    args = p.parse_args(argv)
    if not args.out and not args.lake:
        p.error("give --out, --lake or both")
    spec = ScaleSpec(days=args.days, plays=args.plays, users=args.users, tracks=args.tracks, artists=args.artists,
                     seed=args.seed, last_day=args.last_day).scaled(args.fraction)
    start = time.perf_counter()
    cat = Catalogue(spec)
    print(f"catalogue: {spec.users} users, {spec.tracks} tracks, {spec.artists} artists, {cat.clusters} clusters "
          f"in {time.perf_counter() - start:.1f} s; window {spec.day_list[0]}..{spec.day_list[-1]}, "
          f"{spec.plays} plays", flush=True)
    if args.lake and spec.days > 1:
        start = time.perf_counter()

        def progress(day, n, seconds):
            print(f"  lake dt={day}: {n} plays in {seconds:.2f} s", flush=True)

        n = write_lake_days(cat, args.lake, range(spec.days - 1), progress, args.workers)
        s = time.perf_counter() - start
        print(f"lake: {spec.days - 1} days, {n} plays in {s:.1f} s: {n / s:,.0f} plays/s -> {args.lake}", flush=True)
    if args.out:
        start = time.perf_counter()
        plays = generate_day(cat, spec.days - 1)
        gen = time.perf_counter() - start
        paths = write_landing_day(cat, plays, args.out, args.landing_files, args.workers)
        s = time.perf_counter() - start
        size = sum(os.path.getsize(f) for f in paths)
        print(f"landing: dt={plays.day}, {len(plays)} plays in {len(paths)} files ({size / 2**20:.0f} MiB) in "
              f"{s:.1f} s (generation {gen:.1f} s): {len(plays) / s:,.0f} plays/s -> "
              f"{landing_dir(args.out, plays.day)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
