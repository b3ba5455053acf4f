"""Generator of realistic music stream logs with planted taste structure.

What makes it realistic enough to test a recommender on:

* a catalogue of artists with power-law (Zipf) popularity, each with tracks whose
  popularity is again Zipf-distributed;
* taste clusters (think genres): every artist belongs to one, every user has a home
  cluster and a stable set of favourite tracks, so what a user plays tomorrow is
  predictable from today (that is what ALS must find);
* heavy-tailed user activity, plays grouped into listening sessions within the day;
* skips: about a quarter of plays stop within 30 seconds.

Everything is a pure function of ``(seed, day)``, so a day regenerates identically.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from music_recs import schema as S

SKIP_SHARE = 0.25
FAVOURITE_SHARE = 0.6  # plays drawn from the user's own favourites
CLUSTER_SHARE = 0.3  # plays drawn from the user's home cluster by popularity; the rest: global charts


@dataclass(frozen=True)
class CatalogueSpec:
    users: int = 500
    artists: int = 200
    tracks_per_artist: int = 10
    clusters: int = 8
    favourites: int = 15
    seed: int = 7
    # A day's draws are seeded by its date plus this many days. A test whose days follow the
    # calendar sets it so each of its days draws what a fixed date would: the same data every day.
    day_offset: int = 0

    @classmethod
    def for_plays_per_day(cls, plays_per_day: int, seed: int = 7) -> CatalogueSpec:
        """Grow users and catalogue sub-linearly with traffic, as real services do."""
        users = max(50, int(plays_per_day / 4))
        artists = max(40, int(3 * plays_per_day**0.6))
        return cls(users=users, artists=artists, tracks_per_artist=10, clusters=min(32, max(4, artists // 25)),
                   seed=seed)


class Catalogue:
    """Artists, tracks, clusters and each user's taste, derived from ``spec.seed``."""

    def __init__(self, spec: CatalogueSpec):
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        n_tracks = spec.artists * spec.tracks_per_artist
        self.artist_cluster = rng.integers(0, spec.clusters, spec.artists)
        self.track_artist = np.repeat(np.arange(spec.artists), spec.tracks_per_artist)
        artist_pop = 1.0 / np.arange(1, spec.artists + 1) ** 1.1
        rng.shuffle(artist_pop)
        track_pop_in_artist = np.tile(1.0 / np.arange(1, spec.tracks_per_artist + 1), spec.artists)
        self.track_pop = artist_pop[self.track_artist] * track_pop_in_artist
        self.track_pop /= self.track_pop.sum()
        self.track_cluster = self.artist_cluster[self.track_artist]
        self.user_cluster = rng.integers(0, spec.clusters, spec.users)
        self.user_activity = rng.lognormal(0.0, 1.0, spec.users)
        self.user_activity /= self.user_activity.sum()
        # Favourites: drawn by popularity within the user's home cluster.
        self.cluster_tracks = [np.flatnonzero(self.track_cluster == c) for c in range(spec.clusters)]
        self.cluster_p = []
        for tracks in self.cluster_tracks:
            p = self.track_pop[tracks] if len(tracks) else np.array([])
            self.cluster_p.append(p / p.sum() if len(tracks) else p)
        self.favourites = np.empty((spec.users, spec.favourites), dtype=np.int64)
        for u in range(spec.users):
            c = self.user_cluster[u]
            tracks = self.cluster_tracks[c] if len(self.cluster_tracks[c]) else np.arange(n_tracks)
            p = self.cluster_p[c] if len(self.cluster_tracks[c]) else self.track_pop
            k = min(spec.favourites, len(tracks))
            fav = rng.choice(tracks, size=k, replace=False, p=p)
            self.favourites[u] = np.resize(fav, spec.favourites)

    def user_id(self, u):
        return np.char.add("u", np.char.zfill(np.asarray(u).astype(str), 6))

    def track_id(self, t):
        return np.char.add("t", np.char.zfill(np.asarray(t).astype(str), 8))

    def artist_id(self, a):
        return np.char.add("a", np.char.zfill(np.asarray(a).astype(str), 6))


def generate_day(day: dt.date, plays: int, catalogue: Catalogue) -> pd.DataFrame:
    """One day of plays as a DataFrame with the landing columns (``ts`` as ISO-8601 UTC)."""
    spec = catalogue.spec
    rng = np.random.default_rng([spec.seed, day.toordinal() + spec.day_offset])
    users = rng.choice(spec.users, size=plays, p=catalogue.user_activity)
    source = rng.random(plays)
    tracks = np.empty(plays, dtype=np.int64)

    fav = source < FAVOURITE_SHARE
    # Favourites are Zipf-weighted too: a user's top track is played most.
    fav_rank = np.minimum(rng.zipf(1.6, fav.sum()) - 1, spec.favourites - 1)
    tracks[fav] = catalogue.favourites[users[fav], fav_rank]

    in_cluster = (~fav) & (source < FAVOURITE_SHARE + CLUSTER_SHARE)
    for c in range(spec.clusters):
        sel = in_cluster & (catalogue.user_cluster[users] == c)
        n = int(sel.sum())
        if n and len(catalogue.cluster_tracks[c]):
            tracks[sel] = rng.choice(catalogue.cluster_tracks[c], size=n, p=catalogue.cluster_p[c])
        elif n:
            tracks[sel] = rng.choice(len(catalogue.track_pop), size=n, p=catalogue.track_pop)
    rest = ~(fav | in_cluster)
    tracks[rest] = rng.choice(len(catalogue.track_pop), size=int(rest.sum()), p=catalogue.track_pop)

    skipped = rng.random(plays) < SKIP_SHARE
    ms_played = np.where(skipped, rng.integers(1_000, 30_000, plays), rng.integers(90_000, 330_000, plays))

    # Sessions: each user's plays of the day follow each other from a session start,
    # mostly in the evening; the order within the user is the draw order.
    order = np.argsort(users, kind="stable")
    users, tracks, ms_played = users[order], tracks[order], ms_played[order]
    first = np.r_[True, users[1:] != users[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(plays), 0))
    pos_in_user = np.arange(plays) - group_start
    start_hour = np.clip(rng.normal(19.0, 3.5, spec.users), 0, 23.5)
    offset_s = (start_hour[users] * 3600 + np.cumsum(np.r_[0, ms_played[:-1]]) / 1000.0
                - (np.cumsum(np.r_[0, ms_played[:-1]]) / 1000.0)[group_start]
                + pos_in_user * 5.0) % 86_400
    midnight = np.datetime64(day.isoformat() + "T00:00:00")
    ts = midnight + (offset_s * 1000).astype("timedelta64[ms]")

    raw = rng.bytes(16 * plays)
    event_ids = [raw[i:i + 16].hex() for i in range(0, 16 * plays, 16)]
    artists = catalogue.track_artist[tracks]
    return pd.DataFrame({
        S.EVENT_ID: event_ids,
        S.TS: np.datetime_as_string(ts, unit="ms", timezone="UTC"),
        S.USER_ID: catalogue.user_id(users),
        S.TRACK_ID: catalogue.track_id(tracks),
        S.ARTIST_ID: catalogue.artist_id(artists),
        S.MS_PLAYED: ms_played.astype(np.int64),
        S.TRACK_NAME: np.char.add("Track ", tracks.astype(str)),
        S.ARTIST_NAME: np.char.add("Artist ", artists.astype(str)),
    })


def to_jsonl_gz(frame: pd.DataFrame) -> bytes:
    """Serialize rows as gzip'd JSON lines (one object per line), deterministically."""
    text = frame.to_json(orient="records", lines=True, force_ascii=False)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return buf.getvalue()


def day_files(day: dt.date, plays: int, catalogue: Catalogue, files: int = 2) -> dict[str, bytes]:
    """The landing files of one day: ``{file name: gzip'd JSON lines}``."""
    frame = generate_day(day, plays, catalogue)
    bounds = np.linspace(0, len(frame), files + 1).astype(int)
    return {
        f"part-{i:04d}.jsonl.gz": to_jsonl_gz(frame.iloc[bounds[i]:bounds[i + 1]])
        for i in range(files)
    }


def write_days_local(out_dir: str, days: list[dt.date], plays: int, catalogue: Catalogue, files: int = 2) -> int:
    total = 0
    for day in days:
        folder = os.path.join(out_dir, f"dt={day.isoformat()}")
        os.makedirs(folder, exist_ok=True)
        for name, data in day_files(day, plays, catalogue, files).items():
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(data)
        total += plays
    return total


def upload_days(store, bucket: str, landing_prefix: str, days: list[dt.date], plays: int,
                catalogue: Catalogue, files: int = 2) -> int:
    """Write generated days into the landing prefix of ``bucket`` (overwrites: idempotent)."""
    for day in days:
        for name, data in day_files(day, plays, catalogue, files).items():
            key = f"{landing_prefix}/dt={day.isoformat()}/{name}"
            store.client.put_object(Bucket=bucket, Key=key, Body=data)
    return plays * len(days)
