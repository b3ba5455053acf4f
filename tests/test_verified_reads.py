"""Every reader of a publication takes the one verified path (``publish.read_latest``,
``read_object``, ``checked_manifest``, ``verify_publication``): a tampered object, a tampered
manifest, a key outside the models prefix, a pointer moved back, NaN or out-of-schema values are
each refused in one line; and what is published is written once."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowFailException

from music_recs.manifest import Manifest
from music_recs.params import RunParams
from music_recs.settings import DeploymentSettings
from music_recs_airflow import cli, tasks
from music_recs_airflow import publish as P
from music_recs_airflow.model_history import ModelHistory
from music_recs_airflow.s3 import AlreadyExists

POINTER = "music_recs/latest.json"


@pytest.fixture
def model(tmp_path):
    """A model's four outputs as Parquet folders, recommendations for u1 and u2."""
    out = {}
    for name in P.ARTIFACTS:
        folder = tmp_path / "model" / name
        folder.mkdir(parents=True)
        table = pa.table({"user_id": ["u1"], "item_id": ["t1"]})
        if name == "recommendations":
            table = pa.table({"user_id": ["u1", "u1", "u2"], "rank": [1, 2, 1], "item_id": ["t1", "t2", "t3"],
                              "score": [0.9, 0.5, 0.7], "item_name": ["Teardrop", "Roads", "Glory Box"],
                              "artist_name": ["Massive Attack", "Portishead", "Portishead"]})
        pq.write_table(table, folder / "part-00000-x.snappy.parquet")
        out[name] = str(folder)
    return out


def publish(store, bucket, model, day, allow_rewind=False, params=None):
    manifest = {"params": params or RunParams().as_dict(), "metrics": {"k": 10}}
    prefix = P.publication_prefix(f"music_recs/dt={day}/run=r/")
    return P.publish(store, bucket, prefix, POINTER, day, "r", model, manifest, allow_rewind=allow_rewind)


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def cli_refuses(capsys, monkeypatch, bucket, *args) -> str:
    monkeypatch.setenv("MUSIC_RECS_MODELS_BUCKET", bucket)
    capsys.readouterr()
    assert cli.main(list(args)) == 1
    err = capsys.readouterr().err
    assert err.startswith("music-recs: ") and err.count("\n") == 1
    return err


def test_a_tampered_object_is_refused_by_the_cli_in_one_line(store, bucket, model, capsys, monkeypatch):
    published = publish(store, bucket, model, "2026-11-20")
    monkeypatch.setenv("MUSIC_RECS_MODELS_BUCKET", bucket)
    assert cli.main(["recommend", "--user", "u1"]) == 0
    assert "  1. Teardrop by Massive Attack  (t1, score 0.900)" in capsys.readouterr().out
    key = next(o for o in P.read_latest(store, bucket, POINTER)[1]["objects"] if o["artifact"] == "recommendations")["key"]
    forged = io.BytesIO()
    pq.write_table(pa.table({"user_id": ["u1"], "rank": [1], "item_id": ["t666"], "score": [1.0],
                             "item_name": ["\x1b]0;pwned\x07Buy now"], "artist_name": ["x"]}), forged)
    store.put_bytes(bucket, key, forged.getvalue())
    err = cli_refuses(capsys, monkeypatch, bucket, "recommend", "--user", "u1")
    assert f"s3://{bucket}/{key} does not match its manifest (size or SHA-256); refused" in err
    assert published["moved"]


def test_a_tampered_manifest_is_refused(store, bucket, model, capsys, monkeypatch):
    key = publish(store, bucket, model, "2026-11-20")["manifest_key"]
    manifest = json.loads(store.get_bytes(bucket, key)[0])
    manifest["metrics"]["k"] = 5
    store.put_bytes(bucket, key, json.dumps(manifest).encode())
    with pytest.raises(P.PublishError) as err:
        P.read_latest(store, bucket, POINTER)
    assert "is missing or altered (its SHA-256 is not the pointer's); refused" in one_line(err.value)
    assert "missing or altered" in cli_refuses(capsys, monkeypatch, bucket, "latest")


def forge_pointer(store, bucket, manifest_key: str, body: bytes, day: str = "2026-11-20") -> None:
    """A pointer written by someone with write access, naming ``manifest_key`` with the right checksum."""
    store.put_bytes(bucket, manifest_key, body)
    store.put_json(bucket, POINTER, {"day": day, "run_id": "r", "prefix": "x", "manifest_key": manifest_key,
                                     "manifest_sha256": hashlib.sha256(body).hexdigest()})


@pytest.mark.parametrize("manifest_key", [
    "elsewhere/dt=2026-11-20/manifest.json",
    "music_recs/dt=2026-11-20/../../elsewhere/manifest.json",
    "music_recs/latest.json",
])
def test_a_pointer_naming_a_key_outside_the_models_prefix_is_refused(store, bucket, model, manifest_key):
    real = publish(store, bucket, model, "2026-11-20")["manifest_key"]
    forge_pointer(store, bucket, manifest_key, store.get_bytes(bucket, real)[0])
    with pytest.raises(P.PublishError) as err:
        P.read_latest(store, bucket, POINTER)
    assert f"names a manifest {manifest_key!r} is not a key under music_recs/dt=; refused" in one_line(err.value)


def test_objects_listed_outside_their_publication_are_refused(store, bucket, model):
    real = publish(store, bucket, model, "2026-11-20")["manifest_key"]
    manifest = json.loads(store.get_bytes(bucket, real)[0])
    manifest["objects"][0]["key"] = "music_recs/dt=2026-11-01/run=old/user_factors/part-00000.parquet"
    forge_pointer(store, bucket, "music_recs/dt=2026-11-20/run=x/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(P.PublishError, match="object 'music_recs/dt=2026-11-01/run=old/.*' is not a key under "
                                             "music_recs/dt=2026-11-20/run=x/; refused"):
        P.read_latest(store, bucket, POINTER)


def test_nan_and_values_outside_the_params_schema_are_refused(store, bucket, model):
    real = publish(store, bucket, model, "2026-11-20")["manifest_key"]
    text = store.get_bytes(bucket, real)[0].decode()
    forge_pointer(store, bucket, real, text.replace('"k": 10', '"k": NaN').encode())
    with pytest.raises(P.PublishError, match="is not valid JSON \\(NaN is not JSON\\)"):
        P.read_latest(store, bucket, POINTER)
    manifest = json.loads(text)
    manifest["params"]["rank"] = 100000
    forge_pointer(store, bucket, real, json.dumps(manifest).encode())
    with pytest.raises(P.PublishError, match="has params outside their schema \\(parameter rank: 100000 is greater "
                                             "than the maximum of 512\\); refused"):
        P.read_latest(store, bucket, POINTER)


def test_a_search_whose_choice_is_outside_the_recipe_schema_is_never_reused():
    def with_choice(**chosen):
        tuning = {"day": "2026-11-19", "chosen": {"rank": 32, "reg": 0.1, **chosen},
                  "source": {"rank": "tuning of dt=2026-11-19", "reg": "tuning of dt=2026-11-19"}}
        return Manifest.from_dict({"day": "2026-11-19", "training": {"tuning": tuning}})

    assert with_choice().search.chosen == {"rank": 32, "reg": 0.1}
    assert with_choice(rank=100000).search is None
    assert with_choice(reg=float("nan")).search is None
    assert with_choice(reg="0.1; DROP").search is None


def test_a_pointer_moved_back_behind_a_live_model_is_refused_unless_a_rollback(store, bucket, model, capsys,
                                                                             monkeypatch):
    first = publish(store, bucket, model, "2026-11-20")
    publish(store, bucket, model, "2026-11-21")
    # Someone with write access puts back the older, correctly hashed pointer.
    store.put_json(bucket, POINTER, first["pointer"])
    with pytest.raises(P.PublishError) as err:
        P.read_latest(store, bucket, POINTER)
    assert one_line(err.value) == (
        f"s3://{bucket}/{POINTER} was moved back to dt=2026-11-20 although the model of dt=2026-11-21 was live; "
        "refused (a rollback is published by a run with allow_pointer_rewind, or read with allow_pointer_rewind)")
    assert "was moved back" in cli_refuses(capsys, monkeypatch, bucket, "recommend", "--user", "u1")
    assert cli.main(["recommend", "--user", "u1", "--allow-pointer-rewind"]) == 0
    assert P.read_latest(store, bucket, POINTER, allow_rewind=True)[0]["day"] == "2026-11-20"
    # A run's own reads (warm start, comparison) are refused the same way: no published model then.
    assert ModelHistory(store, bucket, "music_recs", POINTER, "2026-11-22").published is None
    # A rollback published by a run allowed to rewind is read by everyone.
    publish(store, bucket, model, "2026-11-20", allow_rewind=True)
    assert P.read_latest(store, bucket, POINTER)[0]["day"] == "2026-11-20"


def test_warm_start_and_comparison_refuse_factors_that_do_not_match_their_manifest(store, bucket, model, tmp_path):
    publish(store, bucket, model, "2026-11-19")
    history = ModelHistory(store, bucket, "music_recs", POINTER, "2026-11-20")
    earlier = next(history.earlier())
    assert history.stage_factors(earlier, str(tmp_path / "warm")) is None
    factor = next(o for o in earlier.objects if o["artifact"] == "item_factors")
    store.put_bytes(bucket, factor["key"], b"not the published factors")
    refused = history.stage_factors(earlier, str(tmp_path / "warm"))
    assert refused == f"s3://{bucket}/{factor['key']} does not match its manifest (size or SHA-256); refused"
    assert not (tmp_path / "warm").exists()  # nothing half-staged for the job to read


def test_an_earlier_manifest_that_is_not_well_formed_is_skipped(store, bucket, model):
    publish(store, bucket, model, "2026-11-18")
    store.put_bytes(bucket, "music_recs/dt=2026-11-19/run=x/publish=20261119T000000.000000Z/manifest.json",
                    b'{"day": "2026-11-19", "objects": [], "params": {}}')
    days = [m.day for m in ModelHistory(store, bucket, "music_recs", POINTER, "2026-11-20").earlier()]
    assert days == ["2026-11-18"]


def test_the_consumer_checks_the_bucket_the_prefix_and_the_announced_checksum(store, bucket, model):
    published = publish(store, bucket, model, "2026-11-20")
    cfg = DeploymentSettings(models_bucket=bucket)
    event = {"day": "2026-11-20", "bucket": bucket, "manifest": published["manifest_key"],
             "manifest_sha256": published["pointer"]["manifest_sha256"]}
    assert tasks.check_published_model(event, cfg)["objects_verified"] == len(P.ARTIFACTS)
    for bad, message in [({"bucket": "someone-elses"}, "the event names bucket 'someone-elses'"),
                         ({"manifest": "../x/manifest.json"}, "is not a key under music_recs/dt=; refused"),
                         ({"manifest_sha256": "0" * 64}, "is not the manifest that was announced (SHA-256); refused")]:
        with pytest.raises(AirflowFailException) as err:
            tasks.check_published_model({**event, **bad}, cfg)
        assert message in one_line(err.value)


def test_publications_are_written_once(store, bucket, tmp_path, model):
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"one")
    large.write_bytes(os.urandom(9 * 1024 * 1024))  # a multipart upload, conditional at completion
    for path in (small, large):
        store.create_from_file(str(path), bucket, f"pub/{path.name}")
        with pytest.raises(AlreadyExists, match=f"s3://{bucket}/pub/{path.name} already exists"):
            store.create_from_file(str(path), bucket, f"pub/{path.name}")
    assert store.create_by_copy(bucket, "pub/large", store.client.head_object(Bucket=bucket, Key="pub/large")["ETag"]
                                .strip('"'), bucket, "pub/copy")
    assert store.get_bytes(bucket, "pub/copy")[0] == large.read_bytes()
    with pytest.raises(AlreadyExists):
        store.create_by_copy(bucket, "pub/small", store.client.head_object(Bucket=bucket, Key="pub/small")["ETag"]
                             .strip('"'), bucket, "pub/copy")
    assert store.get_bytes(bucket, "pub/copy")[0] == large.read_bytes()  # untouched
    assert not store.create_by_copy(bucket, "pub/gone", "x", bucket, "pub/other")
    # A manifest is written once too: a second publication into the same folder stops at its first object.
    prefix = "music_recs/dt=2026-11-20/run=r/publish=20261120T000000.000000Z/"
    P.publish(store, bucket, prefix, POINTER, "2026-11-20", "r", model, {"params": {}})
    with pytest.raises(AlreadyExists):
        P.publish(store, bucket, prefix, POINTER, "2026-11-20", "r", model, {"params": {}})
