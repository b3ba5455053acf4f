import dataclasses
import datetime as dt
import gzip
import json

import numpy as np

from music_recs import schema as S
from music_recs_dev.sample_data import Catalogue, CatalogueSpec, day_files, generate_day

DAY = dt.date(2026, 11, 20)


def test_a_day_regenerates_identically_and_days_differ():
    cat = Catalogue(CatalogueSpec())
    a, b = generate_day(DAY, 2000, cat), generate_day(DAY, 2000, cat)
    assert a.equals(b)
    assert not a.equals(generate_day(DAY + dt.timedelta(days=1), 2000, cat))


def test_rows_look_like_stream_logs():
    df = generate_day(DAY, 5000, Catalogue(CatalogueSpec()))
    assert set(S.REQUIRED_LOG_COLUMNS) <= set(df.columns)
    assert df[S.EVENT_ID].is_unique
    assert df[S.TS].str.startswith("2026-11-20T").all()
    skip_share = (df[S.MS_PLAYED] < 30_000).mean()
    assert 0.18 < skip_share < 0.32
    # Power-law popularity: the top 1% of tracks get far more than 1% of plays.
    counts = df[S.TRACK_ID].value_counts().to_numpy()
    top = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top > 0.05


def test_users_keep_their_taste_across_days():
    cat = Catalogue(CatalogueSpec())
    d1, d2 = generate_day(DAY, 5000, cat), generate_day(DAY + dt.timedelta(days=1), 5000, cat)
    pairs1 = set(zip(d1[S.USER_ID], d1[S.TRACK_ID]))
    pairs2 = set(zip(d2[S.USER_ID], d2[S.TRACK_ID]))
    overlap = len(pairs1 & pairs2) / len(pairs2)
    assert overlap > 0.2  # random pairs would overlap far less than 1%


def test_landing_files_are_gzip_json_lines():
    files = day_files(DAY, 300, Catalogue(CatalogueSpec()), files=3)
    assert sorted(files) == ["part-0000.jsonl.gz", "part-0001.jsonl.gz", "part-0002.jsonl.gz"]
    lines = [json.loads(line) for data in files.values() for line in gzip.decompress(data).splitlines()]
    assert len(lines) == 300
    assert np.all([isinstance(r[S.MS_PLAYED], int) for r in lines])


def test_a_day_offset_draws_another_dates_plays_on_this_date():
    """What a test whose days follow the calendar relies on: day D with offset k draws the plays of
    day D + k, with D's timestamps."""
    base = CatalogueSpec.for_plays_per_day(500)
    shifted = generate_day(DAY, 500, Catalogue(dataclasses.replace(base, day_offset=3)))
    later = generate_day(DAY + dt.timedelta(days=3), 500, Catalogue(base))
    same = [c for c in later.columns if c != "ts"]
    assert shifted[same].equals(later[same])
    assert shifted["ts"].str.startswith(DAY.isoformat()).all()
