"""Public listening data as landing logs, for benchmarks on real behaviour.

MovieLens-100K (GroupLens; 100 000 ratings of 1 682 movies by 943 users) as the RecBole 1.2.1
wheel ships it (``recbole/dataset_example/ml-100k/``). The wheel is fetched from the package
index at run time into a cache folder (never committed) and checked against its SHA-256.

Turned into stream logs the way the quality issue measured it: ratings in time order, cut into
``days`` equal consecutive days; a rating r becomes r full plays (3 minutes each) of the movie
as a "track" on its day, so the play count carries the strength of the preference.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from music_recs import schema as S
from music_recs_dev.sample_data import to_jsonl_gz

WHEEL = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"  # PyPI's file
INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEMS = "recbole/dataset_example/ml-100k/ml-100k.item"
PLAY_MS = 180_000
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "music_recs" / "public_data"


def fetch_wheel(cache: Path = DEFAULT_CACHE) -> Path:
    """The RecBole wheel in ``cache``, downloaded with pip (no dependencies) the first time."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / WHEEL
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "recbole==1.2.1", "--no-deps", "--only-binary=:all:",
                        "-d", str(cache), "-q"], check=True)
    got = digest(path.read_bytes())
    if got != WHEEL_SHA256:
        raise RuntimeError(f"{path} has SHA-256 {got}, expected {WHEEL_SHA256}: delete it to fetch it again")
    return path


def movielens_100k(cache: Path = DEFAULT_CACHE) -> tuple[pd.DataFrame, dict[str, str]]:
    """(ratings with user_id, item_id, rating, timestamp; {item_id: title})."""
    with zipfile.ZipFile(fetch_wheel(cache)) as wheel:
        inter = wheel.read(INTER)
        items = wheel.read(ITEMS)
    ratings = pd.read_csv(io.BytesIO(inter), sep="\t")
    ratings.columns = [c.split(":")[0] for c in ratings.columns]
    titles = pd.read_csv(io.BytesIO(items), sep="\t")
    titles.columns = [c.split(":")[0] for c in titles.columns]
    return ratings, dict(zip(titles["item_id"].astype(str), titles["movie_title"].astype(str)))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_stream_days(ratings: pd.DataFrame, titles: dict[str, str], first_day: dt.date,
                   days: int = 8) -> dict[dt.date, pd.DataFrame]:
    """Ratings in time order, cut into ``days`` consecutive days of equal size; each rating r
    becomes r plays of ``PLAY_MS`` on its day, in the landing columns (one artist per movie)."""
    ordered = ratings.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    bounds = np.linspace(0, len(ordered), days + 1).astype(int)
    out = {}
    for d in range(days):
        day = first_day + dt.timedelta(days=d)
        chunk = ordered.iloc[bounds[d]:bounds[d + 1]]
        reps = chunk.loc[chunk.index.repeat(chunk["rating"].astype(int))].reset_index(drop=True)
        nth = reps.groupby(["user_id", "item_id"]).cumcount()
        # Spread over the day in rating order; the n-th play of a rating 3 minutes after the last.
        seconds = (np.arange(len(reps)) * (80_000 / max(len(reps), 1))).astype(int) + nth.to_numpy() * 180
        ts = np.datetime64(day.isoformat() + "T00:00:00") + (seconds % 86_400).astype("timedelta64[s]")
        item = reps["item_id"].astype(str)
        out[day] = pd.DataFrame({
            S.EVENT_ID: [f"ml-{u}-{i}-{n}" for u, i, n in zip(reps["user_id"], reps["item_id"], nth)],
            S.TS: np.datetime_as_string(ts, unit="s", timezone="UTC"),
            S.USER_ID: "ml-u" + reps["user_id"].astype(str),
            S.TRACK_ID: "ml-m" + item,
            S.ARTIST_ID: "ml-a" + item,
            S.MS_PLAYED: np.full(len(reps), PLAY_MS, np.int64),
            S.TRACK_NAME: item.map(titles).fillna(""),
            S.ARTIST_NAME: item.map(titles).fillna(""),
        })
    return out


def write_stream_days(frames: dict[dt.date, pd.DataFrame], out_dir: str) -> int:
    """``{out_dir}/dt=D/part-0000.jsonl.gz`` per day; returns the plays written."""
    for day, frame in frames.items():
        folder = Path(out_dir) / f"dt={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "part-0000.jsonl.gz").write_bytes(to_jsonl_gz(frame))
    return sum(len(f) for f in frames.values())
