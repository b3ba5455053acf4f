"""Each supported landing format, written as its published layout, through ingest on real Spark."""

import datetime as dt
import gzip
import json

import pytest

from music_recs.jobs import IngestSpec
from music_recs.plan import LakeLayout
from spark_jobs import ingest
from spark_jobs.lib.lake import read_day

pytestmark = pytest.mark.spark

DAY = dt.date(2026, 11, 20)


def spotify_row(**kw):
    row = {"ts": "2026-11-20T21:03:11Z", "platform": "android", "ms_played": 215000, "conn_country": "SE",
           "master_metadata_track_name": "Dancing Queen", "master_metadata_album_artist_name": "ABBA",
           "master_metadata_album_album_name": "Arrival", "spotify_track_uri": "spotify:track:0GjEhVFGZW8afUYGChu3Rr",
           "episode_name": None, "episode_show_name": None, "spotify_episode_uri": None,
           "reason_start": "trackdone", "reason_end": "trackdone", "shuffle": False, "skipped": False,
           "offline": False, "offline_timestamp": None, "incognito_mode": False}
    row.update(kw)
    return row


@pytest.fixture
def landing(tmp_path):
    root = tmp_path / "landing"
    (root / "spotify" / "alice").mkdir(parents=True)
    (root / "spotify" / "alice" / "Streaming_History_Audio_2026.json").write_text(json.dumps([
        spotify_row(),
        spotify_row(ts="2026-11-20T21:07:00Z", master_metadata_track_name="SOS", spotify_track_uri=None),
        spotify_row(ts="2026-11-20T22:00:00Z", master_metadata_track_name=None, master_metadata_album_artist_name=None,
                    spotify_track_uri=None, episode_name="Episode 12", episode_show_name="A Podcast",
                    spotify_episode_uri="spotify:episode:5bY2GRG2JfCIb4cYJYvV3Y"),
        spotify_row(),  # exported twice: a replay
    ], indent=2))
    lastfm = "\n".join([
        "user_000001\t2026-11-20T23:08:57Z\tf1b1cf71-bd35-4e99-8624-24a6e15f133a\tDeep Dish\t\tFuck Me Im Famous (Pacha Ibiza)-09-28-2007",
        "user_000001\t2026-11-20T13:42:03Z\ta7f7df4a-77d8-4f12-8acd-5c60c93f4de8\t坂本龍一\tf7c1f8f8-b935-45ed-8fc8-7def69d92a10\tComposition 0919 (Live_2009_4_15)",
        "user_000001\t2026-11-20T13:42:03Z\ta7f7df4a-77d8-4f12-8acd-5c60c93f4de8\t坂本龍一\tf7c1f8f8-b935-45ed-8fc8-7def69d92a10\tComposition 0919 (Live_2009_4_15)",
        "user_000002\tnot-a-time\t\tSomeone\t\tSomething",
        "user_000003\t2026-11-20T10:00:00Z\tonly four fields",
    ])
    with gzip.open(root / "lastfm-1k.tsv.gz", "wt", encoding="utf-8") as fh:
        fh.write(lastfm + "\n")
    listens = [
        {"listened_at": 1795215600, "user_name": "rob", "recording_msid": "5a0e3e9f-...",
         "track_metadata": {"artist_name": "Portishead", "track_name": "Roads", "release_name": "Dummy",
                            "additional_info": {"recording_mbid": "0c1e7c8f-61a3-44e0-9a37-1e3ea8c7bd08",
                                                "artist_mbids": ["8f6bd1e4-fbe1-4f50-aa9b-94c450ec0f11"],
                                                "listening_from": "spotify"}}},
        {"listened_at": 1795219200, "user_name": "rob",
         # A nested value of another type (a string, not a list) nulls that field, not the listen.
         "track_metadata": {"artist_name": "Massive Attack", "track_name": "Teardrop",
                            "additional_info": {"artist_mbids": "not a list"}}},
        {"listened_at": 1795219200, "user_name": "rob", "track_metadata": {"additional_info": {}}},
    ]
    (root / "listens.jsonl").write_text("\n".join(json.dumps(x) for x in listens) + "\n")
    return root


def test_every_format_maps_to_the_same_schema(spark, landing, tmp_path):
    lake = str(tmp_path / "lake")
    result = ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(landing), lake_uri=str(lake)))
    assert result.formats == {"lastfm": 5, "listenbrainz": 3, "spotify": 4}
    assert result.rows_read == 12
    assert result.rows_read == result.rows_accepted + result.rows_quarantined + result.duplicates_removed
    assert result.duplicates_removed == 2  # the Spotify replay and the Last.fm double scrobble
    assert result.quarantine_reasons == {"missing_track_id": 1, "podcast_not_music": 1, "unparseable_ts": 1,
                                            "wrong_field_count": 1}
    plays = {(r.user_id, r.track_name): r for r in read_day(spark, LakeLayout(lake), str(DAY)).collect()}

    queen = plays["alice", "Dancing Queen"]  # user from the export's folder, id from the URI
    assert queen.track_id == "spotify:track:0GjEhVFGZW8afUYGChu3Rr" and queen.ms_played == 215000
    assert queen.artist_id.startswith("name:") and queen.artist_name == "ABBA"
    assert queen.ts == dt.datetime(2026, 11, 20, 21, 3, 11)
    sos = plays["alice", "SOS"]  # no URI: id derived from normalized artist and track names
    assert sos.track_id.startswith("name:") and sos.artist_id == queen.artist_id

    famous = plays["user_000001", "Fuck Me Im Famous (Pacha Ibiza)-09-28-2007"]
    assert famous.artist_id == "mbid:f1b1cf71-bd35-4e99-8624-24a6e15f133a" and famous.track_id.startswith("name:")
    assert famous.ms_played == ingest.SCROBBLE_MS
    sakamoto = plays["user_000001", "Composition 0919 (Live_2009_4_15)"]
    assert sakamoto.track_id == "mbid:f7c1f8f8-b935-45ed-8fc8-7def69d92a10" and sakamoto.artist_name == "坂本龍一"

    roads = plays["rob", "Roads"]
    assert roads.track_id == "mbid:0c1e7c8f-61a3-44e0-9a37-1e3ea8c7bd08"
    assert roads.artist_id == "mbid:8f6bd1e4-fbe1-4f50-aa9b-94c450ec0f11"
    assert roads.ts == dt.datetime(2026, 11, 20, 23, 0, 0)  # listened_at 1795215600 (epoch seconds, UTC)
    assert plays["rob", "Teardrop"].track_id.startswith("name:") and plays["rob", "Teardrop"].artist_id.startswith("name:")


def test_derived_ids_ignore_case_and_spacing(spark, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.tsv").write_text("u1\t2026-11-20T10:00:00Z\t\tThe  Cure\t\tLullaby\n"
                                  "u2\t2026-11-20T11:00:00Z\t\tthe cure \t\tLULLABY\n")
    lake = str(tmp_path / "lake")
    ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(folder), lake_uri=str(lake)))
    rows = read_day(spark, LakeLayout(lake), str(DAY)).collect()
    assert len({r.track_id for r in rows}) == 1 and len({r.artist_id for r in rows}) == 1


def test_a_gzip_stream_broken_midway_loses_nothing(spark, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [json.dumps({"event_id": f"e{i}", "ts": "2026-11-20T10:00:00Z", "user_id": "u1", "track_id": f"t{i}",
                         "artist_id": "a1", "ms_played": 100000, "pad": "p" * 40}) for i in range(3000)]
    data = gzip.compress("\n".join(lines).encode())
    (folder / "cut.jsonl.gz").write_bytes(data[: len(data) * 2 // 3])
    lake = str(tmp_path / "lake")
    result = ingest.run(spark, IngestSpec(day=str(DAY), input_uri=str(folder), lake_uri=str(lake)))
    assert result.quarantine_reasons == {"gzip_stream_broken": 1}
    assert 0 < result.rows_accepted < 3000
    assert result.rows_read == result.rows_accepted + 1
