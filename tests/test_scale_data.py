"""The scale generator (``music_recs_dev.scale_data``): seeded, long-tailed, and what it writes is
what the pipeline reads: its landing lines pass ingest with nothing quarantined, and its history
days in the lake are read like ingested days, with the same schema and the same rows."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from music_recs import schema as S
from music_recs.jobs import IngestSpec
from music_recs.plan import LakeLayout
from music_recs_dev import scale_data as SD

SMALL = SD.ScaleSpec(days=3, plays=6_000, users=400, tracks=300, seed=11)


def test_a_seed_regenerates_the_same_window_and_another_seed_does_not():
    spec = SD.ScaleSpec(days=4, plays=40_000, users=2_000, tracks=800, seed=7)
    a, b = SD.Catalogue(spec), SD.Catalogue(spec)
    assert np.array_equal(a.favourites, b.favourites) and np.array_equal(a.track_p, b.track_p)
    for i in range(spec.days):
        x, y = SD.generate_day(a, i), SD.generate_day(b, i)
        assert all(np.array_equal(getattr(x, f), getattr(y, f))
                   for f in ("user", "track", "artist", "ms_of_day", "ms_played"))
    assert SD.landing_lines(a, SD.generate_day(a, 3)).tobytes() == SD.landing_lines(b, SD.generate_day(b, 3)).tobytes()
    first, second = SD.generate_day(a, 0), SD.generate_day(a, 1)
    assert not np.array_equal(first.track[:1000], second.track[:1000])  # days differ
    other = SD.Catalogue(SD.ScaleSpec(days=4, plays=40_000, users=2_000, tracks=800, seed=8))
    assert not np.array_equal(SD.generate_day(other, 0).track[:1000], SD.generate_day(a, 0).track[:1000])
    per_day = spec.plays_per_day()
    assert per_day.sum() == spec.plays and len(per_day) == spec.days and per_day.min() > 0.8 * spec.plays / spec.days
    scaled = SD.ScaleSpec().scaled(0.1)
    assert (scaled.plays, scaled.users, scaled.tracks, scaled.artists) == (10_000_000, 100_000, 20_000, 2_500)


def test_plays_have_long_tails_taste_and_skips():
    spec = SD.ScaleSpec(days=30, plays=600_000, users=6_000, tracks=4_000, seed=7)
    cat = SD.Catalogue(spec)
    days = [SD.generate_day(cat, i) for i in range(spec.days)]
    track = np.concatenate([d.track for d in days])
    user = np.concatenate([d.user for d in days])
    ms = np.concatenate([d.ms_played for d in days])
    assert len(track) == spec.plays
    per_track = np.sort(np.bincount(track, minlength=spec.tracks))[::-1]
    per_user = np.sort(np.bincount(user, minlength=spec.users))[::-1]
    # A few tracks take a large share; the median track is played a fraction of the mean.
    assert per_track[: spec.tracks // 100].sum() / spec.plays > 0.15
    assert per_track[: spec.tracks // 10].sum() / spec.plays > 0.5
    assert np.median(per_track) < 0.35 * per_track.mean()
    # A few heavy listeners, a long tail of light ones.
    assert per_user[: spec.users // 100].sum() / spec.plays > 0.1
    assert np.median(per_user) < 0.5 * per_user.mean() and per_user[0] > 20 * np.median(per_user)
    # Taste: users replay their tracks (far fewer user-track pairs than plays).
    pairs = np.unique(user.astype(np.int64) * spec.tracks + track)
    assert len(pairs) < 0.6 * spec.plays
    # Tracks are grouped under artists, and every play names its track's artist.
    assert all(np.array_equal(d.artist, cat.track_artist[d.track]) for d in days[:3])
    assert len(np.unique(cat.track_artist)) == spec.artists
    assert 0.19 < np.mean(ms < 30_000) < 0.25 and ms.min() >= 0 and ms.max() <= 12 * 60_000
    assert all(d.ms_of_day.min() >= 0 and d.ms_of_day.max() < 86_400_000 for d in days)


def test_landing_lines_are_native_json_lines_with_valid_ids(tmp_path):
    cat = SD.Catalogue(SMALL)
    plays = SD.generate_day(cat, SMALL.days - 1)
    paths = SD.write_landing_day(cat, plays, str(tmp_path), files=3)
    assert [p.split("/")[-3:] for p in paths] == [
        ["stream_logs", f"dt={SMALL.last_day}", f"part-{i:05d}.jsonl.gz"] for i in range(3)]
    rows = [json.loads(line) for p in paths for line in gzip.decompress(open(p, "rb").read()).decode().splitlines()]
    assert len(rows) == len(plays)
    ids = re.compile(S.ID_PATTERN)
    assert len({r[S.EVENT_ID] for r in rows}) == len(rows)
    for r, u, t, ms in zip(rows, plays.user, plays.track, plays.ms_played):
        assert set(r) == {*S.REQUIRED_LOG_COLUMNS, *S.OPTIONAL_LOG_COLUMNS}
        assert all(ids.match(r[c]) for c in S.ID_COLUMNS)
        assert (r[S.USER_ID], r[S.TRACK_ID], r[S.MS_PLAYED]) == (f"u{u:07d}", f"t{t:08d}", ms)
        ts = dt.datetime.fromisoformat(r[S.TS])
        assert ts.tzinfo is not None and ts.date() == SMALL.last_day


def test_the_command_line_writes_the_window_and_prints_its_rates(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "music_recs_dev.scale_data", "--out", str(tmp_path / "landing"),
         "--lake", str(tmp_path / "lake"), "--days", "4", "--plays", "40000", "--users", "2000",
         "--tracks", "1000", "--seed", "3", "--fraction", "0.5", "--workers", "2"],
        capture_output=True, text=True, check=True, timeout=120).stdout
    assert re.search(r"^lake: 3 days, \d+ plays in [\d.]+ s: [\d,]+ plays/s", out, re.M), out
    assert re.search(r"^landing: dt=2026-11-20, \d+ plays in 8 files", out, re.M), out
    lake = LakeLayout(str(tmp_path / "lake"))
    spec = SD.ScaleSpec(days=4, plays=40_000, users=2_000, tracks=1_000, seed=3).scaled(0.5)
    for day, n in zip(spec.day_list[:-1], spec.plays_per_day()):
        pointer = json.load(open(lake.committed_pointer(day.isoformat())))
        assert pointer["rows"] == {"accepted": int(n), "quarantined": 0}
    assert not (tmp_path / "lake" / "plays" / f"dt={spec.last_day}").exists()


@pytest.mark.spark
def test_ingest_accepts_every_landing_line_and_history_days_read_like_ingested_ones(spark, tmp_path):
    from spark_jobs import ingest
    from spark_jobs.lib.lake import present_days, read_day, read_plays

    cat = SD.Catalogue(SMALL)
    days = [SD.generate_day(cat, i) for i in range(SMALL.days)]
    lake_root, twin_root = str(tmp_path / "lake"), str(tmp_path / "twin")
    assert SD.write_lake_days(cat, lake_root, range(SMALL.days - 1)) == sum(len(d) for d in days[:-1])
    last = days[-1]
    SD.write_landing_day(cat, last, str(tmp_path / "landing"), files=2)
    landing = SD.landing_dir(str(tmp_path / "landing"), last.day)
    result = ingest.run(spark, IngestSpec(day=str(last.day), input_uri=landing, lake_uri=lake_root))
    assert (result.rows_read, result.rows_accepted, result.rows_quarantined, result.duplicates_removed) == (
        len(last), len(last), 0, 0)

    lake = LakeLayout(lake_root)
    window = SMALL.day_list
    assert present_days(spark, lake, window) == window
    plays = read_plays(spark, lake, window)
    assert plays.count() == SMALL.plays
    assert dict(plays.groupBy(S.DT).count().collect()) == {d.isoformat(): len(p) for d, p in zip(window, days)}
    ingested = read_day(spark, lake, str(last.day))
    history = read_day(spark, lake, str(window[0]))
    assert history.schema == ingested.schema  # names, types, nullability

    # The same day written by the generator and by ingest: the same Parquet schema and the same rows.
    SD.write_lake_day(cat, last, twin_root)
    twin = read_day(spark, LakeLayout(twin_root), str(last.day))
    assert twin.schema == ingested.schema
    cols = list(ingested.columns)
    assert twin.select(cols).exceptAll(ingested).count() == 0 and ingested.exceptAll(twin.select(cols)).count() == 0

    def footer(root):
        layout = LakeLayout(root)
        version = json.load(open(layout.committed_pointer(str(last.day))))["version"]
        copy = layout.plays_copy(str(last.day), version)
        return pq.ParquetFile(f"{copy}/{next(p for p in sorted(os.listdir(copy)) if p.endswith('.parquet'))}")

    theirs, ours = footer(lake_root), footer(twin_root)
    assert ours.schema.to_arrow_schema() == theirs.schema.to_arrow_schema()
    def columns(f):  # Parquet types: optional (definition level 1), STRING, TIMESTAMP(MICROS, UTC), INT64
        return [(c.name, c.physical_type, str(c.logical_type), c.converted_type, c.max_definition_level,
                 c.max_repetition_level) for c in f.schema]

    assert columns(ours) == columns(theirs)
    for key in (b"org.apache.spark.sql.parquet.row.metadata", b"org.apache.spark.version"):
        assert ours.metadata.metadata[key] == theirs.metadata.metadata[key]
