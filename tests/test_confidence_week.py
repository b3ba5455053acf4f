"""The confidence job on a generated week of logs: statistics match an independent pandas count,
and a rerun is byte-identical (ALS stage retries rely on deterministic input)."""

import datetime as dt
import shutil
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from music_recs.jobs import IngestSpec, ConfidenceSpec
from music_recs import schema as S
from music_recs.confidence import ConfidenceParams
from music_recs_dev.sample_data import Catalogue, CatalogueSpec, generate_day, write_days_local
from spark_jobs import confidence, ingest

pytestmark = pytest.mark.spark

END = dt.date(2026, 11, 20)
DAYS = [END - dt.timedelta(days=i) for i in range(6, -1, -1)]
PLAYS = 1500


@pytest.fixture(scope="module")
def week(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("week")
    catalogue = Catalogue(CatalogueSpec.for_plays_per_day(PLAYS))
    write_days_local(str(root / "landing"), DAYS, PLAYS, catalogue)
    for d in DAYS:
        ingest.run(spark, IngestSpec(day=str(d), input_uri=str(root / "landing" / f"dt={d}"), lake_uri=str(root / "lake")))
    # The lake as ingest leaves it, before any confidence run has built an id index.
    shutil.copytree(root / "lake", root / "lake_ingested")
    frames = pd.concat([generate_day(d, PLAYS, catalogue).assign(dt=str(d)) for d in DAYS])
    return root, frames


def expected_track_matrix(frames: pd.DataFrame) -> pd.DataFrame:
    train = frames[(frames.dt < str(END)) & (frames[S.MS_PLAYED] >= 30_000)]
    pairs = train.groupby([S.USER_ID, S.TRACK_ID]).size().rename("plays").reset_index()
    listeners = pairs.groupby(S.TRACK_ID)[S.USER_ID].nunique()
    pairs = pairs[pairs[S.TRACK_ID].isin(listeners[listeners >= 2].index)]
    items = pairs.groupby(S.USER_ID)[S.TRACK_ID].nunique()
    return pairs[pairs[S.USER_ID].isin(items[items >= 2].index)]


def file_digests(folder: Path) -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.parquet"))


def test_statistics_file_matches_an_independent_count(week, spark):
    root, frames = week
    lake = str(root / "lake")
    result = confidence.run(spark, ConfidenceSpec(day=str(END), lake_uri=str(lake), confidence=ConfidenceParams(), window_days=7, holdout_days=1))
    stats = json.loads((root / "lake" / f"matrix/dt={END}/granularity=track/stats.json").read_text())
    assert stats == result.stats["track"]
    want = expected_track_matrix(frames)
    assert stats["nnz"] == len(want)
    assert stats["users"] == want[S.USER_ID].nunique()
    assert stats["items"] == want[S.TRACK_ID].nunique()
    assert stats["plays"] == int(want["plays"].sum())
    assert stats["density"] == pytest.approx(len(want) / (stats["users"] * stats["items"]))
    per_user = want.groupby(S.USER_ID)["plays"].sum()
    assert stats["plays_per_user"]["max"] == per_user.max()
    assert abs(stats["plays_per_user"]["p50"] - per_user.median()) <= 1
    assert stats["skips"] == int(((frames.dt < str(END)) & (frames[S.MS_PLAYED] < 30_000)).sum())
    assert stats["holdout_users"] > 0 and stats["max_user_idx"] < 2**31 - 1
    assert result.window["first_day"] == str(DAYS[0]) and result.window["holdout_days"] == [str(END)]
    artist = result.stats["artist"]
    assert 0 < artist["items"] < stats["items"]


def test_rerun_is_byte_identical(week, spark):
    """The first run (which numbers every id) and a rerun write the same files.

    The first run on a fresh lake also numbers users for the artist matrix that the track
    matrix drops: the held-out pairs must come from the matrix, not from the index."""
    root, _ = week
    lake = root / "lake_rerun"
    shutil.copytree(root / "lake_ingested", lake)
    out = lake / f"matrix/dt={END}/granularity=track"
    confidence.run(spark, ConfidenceSpec(day=str(END), lake_uri=str(lake), confidence=ConfidenceParams(), window_days=7, holdout_days=1))
    first = {part: file_digests(out / part) for part in ("train", "holdout")}
    stats = (out / "stats.json").read_text()
    again = confidence.run(spark, ConfidenceSpec(day=str(END), lake_uri=str(lake), confidence=ConfidenceParams(), window_days=7, holdout_days=1))
    assert again.ids_added["track"] == {"new_users": 0, "new_items": 0}
    assert {part: file_digests(out / part) for part in ("train", "holdout")} == first
    assert json.loads((out / "stats.json").read_text()) == json.loads(stats)


def test_held_out_pairs_are_new_pairs_of_the_matrix_users_and_items(week, spark):
    root, frames = week
    confidence.run(spark, ConfidenceSpec(day=str(END), lake_uri=str(root / "lake"), confidence=ConfidenceParams(), window_days=7, holdout_days=1))
    out = root / "lake" / f"matrix/dt={END}/granularity=track"
    train, held = (pd.read_parquet(out / part) for part in ("train", "holdout"))
    assert len(held) > 0
    assert set(held[S.USER_IDX]) <= set(train[S.USER_IDX]) and set(held[S.ITEM_IDX]) <= set(train[S.ITEM_IDX])
    pairs = lambda df: set(zip(df[S.USER_ID], df[S.ITEM_ID]))  # noqa: E731
    assert not pairs(held) & pairs(train)
    # Independent count: the last day's non-skip plays of matrix users on matrix items, new pairs.
    day = frames[(frames.dt == str(END)) & (frames[S.MS_PLAYED] >= 30_000)]
    day = day[day[S.USER_ID].isin(set(train[S.USER_ID])) & day[S.TRACK_ID].isin(set(train[S.ITEM_ID]))]
    assert pairs(held) == set(zip(day[S.USER_ID], day[S.TRACK_ID])) - pairs(train)
