"""Publishing against a real S3-compatible server (moto, over HTTP on 127.0.0.1)."""

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from music_recs_airflow import publish as P
from music_recs_airflow.s3 import AlreadyExists, S3Store, check_endpoint

POINTER = "music_recs/latest.json"


@pytest.fixture
def artifacts(tmp_path):
    out = {}
    for name in P.ARTIFACTS:
        folder = tmp_path / name
        folder.mkdir()
        for part in range(2):
            pq.write_table(pa.table({"user_id": [f"u{part}"], "rank": [1], "item_id": [f"t{part}"], "score": [0.5]}),
                           folder / f"part-{part:05d}-abc.snappy.parquet")
        out[name] = str(folder)
    return out


def prefix(day, run):
    return f"music_recs/dt={day}/run={run}/"


def test_layout_manifest_checksums_and_pointer(store, bucket, artifacts):
    decision = P.publish(store, bucket, prefix("2026-11-20", "r1"), POINTER, "2026-11-20", "r1", artifacts,
                         {"metrics": {"map": 0.1}})
    assert decision["moved"]
    keys = sorted(o.key for o in store.list_objects(bucket, "music_recs/"))
    assert keys == sorted(
        [f"music_recs/dt=2026-11-20/run=r1/{n}/part-{i:05d}.parquet" for n in P.ARTIFACTS for i in range(2)]
        + ["music_recs/dt=2026-11-20/run=r1/manifest.json", "music_recs/dt=2026-11-20/run=r1/went_live.json", POINTER]
    )
    pointer, manifest = P.read_latest(store, bucket, POINTER)
    assert pointer["day"] == "2026-11-20" and manifest["metrics"] == {"map": 0.1}
    for obj in manifest["objects"]:
        data, _ = store.get_bytes(bucket, obj["key"])
        assert hashlib.sha256(data).hexdigest() == obj["sha256"] and len(data) == obj["size"]


def test_pointer_only_moves_forward_unless_rewind_is_allowed(store, bucket, artifacts):
    P.publish(store, bucket, prefix("2026-11-21", "r"), POINTER, "2026-11-21", "r", artifacts, {})
    older = P.publish(store, bucket, prefix("2026-11-20", "b"), POINTER, "2026-11-20", "b", artifacts, {})
    assert not older["moved"] and "later day" in older["reason"]
    assert P.read_latest(store, bucket, POINTER)[0]["day"] == "2026-11-21"
    # the older model is still complete under its own prefix
    assert store.get_json(bucket, prefix("2026-11-20", "b") + "manifest.json") is not None
    with pytest.raises(AlreadyExists, match="a publication is never written over"):  # write-once
        P.publish(store, bucket, prefix("2026-11-20", "b"), POINTER, "2026-11-20", "b", artifacts, {}, allow_rewind=True)
    rewound = P.publish(store, bucket, P.publication_prefix(prefix("2026-11-20", "b")), POINTER, "2026-11-20", "b",
                        artifacts, {}, allow_rewind=True)
    assert rewound["moved"] and P.read_latest(store, bucket, POINTER)[0]["day"] == "2026-11-20"


def publish_again(store, bucket, artifacts, day, run):
    """What the publish task does: publish the run into a new publication folder."""
    return P.publish(store, bucket, P.publication_prefix(prefix(day, run)), POINTER, day, run, artifacts, {})


def assert_latest_is_complete(store, bucket):
    """The pointer's manifest is intact and every object it lists has the bytes it lists."""
    pointer, manifest = P.read_latest(store, bucket, POINTER)
    for obj in manifest["objects"]:
        data, _ = store.get_bytes(bucket, obj["key"])
        assert hashlib.sha256(data).hexdigest() == obj["sha256"], obj["key"]
    return pointer


def rewrite(artifacts, rows):
    for folder in artifacts.values():
        for part in range(2):
            pq.write_table(pa.table({"user_id": [f"u{part}"] * rows, "rank": list(range(rows))}),
                           f"{folder}/part-{part:05d}-abc.snappy.parquet")


def test_a_rerun_adds_a_publication_and_the_pointer_names_it(store, bucket, artifacts):
    first = publish_again(store, bucket, artifacts, "2026-11-20", "r1")["pointer"]["prefix"]
    second = publish_again(store, bucket, artifacts, "2026-11-20", "r1")["pointer"]["prefix"]
    assert first.startswith(prefix("2026-11-20", "r1") + "publish=") and first < second
    folders = {o.key[: len(first)] for o in store.list_objects(bucket, prefix("2026-11-20", "r1"))}
    assert folders == {first, second}  # each complete: objects and manifest
    assert all(store.get_json(bucket, f + "manifest.json") for f in folders)
    assert assert_latest_is_complete(store, bucket)["prefix"] == second


def test_a_rerun_of_the_run_behind_the_pointer_that_dies_leaves_its_model_whole(store, bucket, artifacts, monkeypatch):
    """Dying after some uploads, or between the manifest and the pointer, of a republish of the
    live run: readers keep the complete earlier publication (objects are never written over)."""
    live = publish_again(store, bucket, artifacts, "2026-11-20", "r1")["pointer"]["prefix"]
    rewrite(artifacts, rows=3)
    real_upload, calls = store.create_from_file, []

    def dies_on_third_upload(path, b, key, metadata=None):
        calls.append(key)
        if len(calls) == 3:
            raise ConnectionError("process killed during the uploads")
        return real_upload(path, b, key, metadata)

    monkeypatch.setattr(store, "create_from_file", dies_on_third_upload)
    with pytest.raises(ConnectionError):
        publish_again(store, bucket, artifacts, "2026-11-20", "r1")
    monkeypatch.undo()
    assert assert_latest_is_complete(store, bucket)["prefix"] == live

    monkeypatch.setattr(P, "move_pointer", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("killed")))
    with pytest.raises(ConnectionError):
        publish_again(store, bucket, artifacts, "2026-11-20", "r1")
    monkeypatch.undo()
    assert assert_latest_is_complete(store, bucket)["prefix"] == live
    # The next rerun that succeeds moves the pointer to its own complete publication.
    final = publish_again(store, bucket, artifacts, "2026-11-20", "r1")["pointer"]["prefix"]
    assert assert_latest_is_complete(store, bucket)["prefix"] == final != live


def test_crash_before_the_pointer_leaves_readers_on_the_previous_model(store, bucket, artifacts, monkeypatch):
    P.publish(store, bucket, prefix("2026-11-20", "r1"), POINTER, "2026-11-20", "r1", artifacts, {})

    def die(*args, **kwargs):
        raise ConnectionError("process killed between objects and pointer")

    monkeypatch.setattr(P, "move_pointer", die)
    with pytest.raises(ConnectionError):
        P.publish(store, bucket, prefix("2026-11-21", "r2"), POINTER, "2026-11-21", "r2", artifacts, {})
    pointer, manifest = P.read_latest(store, bucket, POINTER)
    assert pointer["run_id"] == "r1" and manifest["run_id"] == "r1"


def test_corrupted_upload_is_detected_before_the_pointer_moves(store, bucket, artifacts, monkeypatch):
    real_upload = store.create_from_file

    def flip_a_byte(path, b, key, metadata=None):
        real_upload(path, b, key, metadata)
        store.client.put_object(Bucket=b, Key=key, Body=b"garbage")

    monkeypatch.setattr(store, "create_from_file", flip_a_byte)
    with pytest.raises(P.PublishError, match="does not match"):
        P.publish(store, bucket, prefix("2026-11-20", "r1"), POINTER, "2026-11-20", "r1", artifacts, {})
    assert store.get_json(bucket, POINTER) is None


def test_pointer_compare_and_swap_retries_when_it_changed(store, bucket):
    store.put_json(bucket, POINTER, {"day": "2026-11-19"})
    calls = {"n": 0}
    real_get = store.get_json

    def racing_get(b, k):
        got = real_get(b, k)
        if calls["n"] == 0:  # another run moves the pointer between our read and our write
            calls["n"] += 1
            store.put_json(b, k, {"day": "2026-11-20", "run_id": "other"})
        return got

    store.get_json = racing_get
    decision = P.move_pointer(store, bucket, POINTER, {"day": "2026-11-21", "run_id": "me"}, allow_rewind=False)
    assert decision["moved"] and decision["previous"]["run_id"] == "other"
    assert real_get(bucket, POINTER)[0]["run_id"] == "me"


def test_plain_http_is_refused_for_non_loopback_endpoints():
    check_endpoint("http://127.0.0.1:5055")
    check_endpoint("http://localhost:9000")
    check_endpoint("https://s3.eu-west-1.amazonaws.com")
    with pytest.raises(ValueError, match="not TLS"):
        check_endpoint("http://s3.example.com")
    with pytest.raises(ValueError):
        S3Store.from_endpoint("http://10.1.2.3:9000")


def test_manifest_is_valid_json_with_objects(store, bucket, artifacts):
    P.publish(store, bucket, prefix("2026-11-20", "r1"), POINTER, "2026-11-20", "r1", artifacts, {"params": {"rank": 8}})
    raw, _ = store.get_bytes(bucket, prefix("2026-11-20", "r1") + "manifest.json")
    manifest = json.loads(raw)
    assert manifest["params"] == {"rank": 8} and len(manifest["objects"]) == 2 * len(P.ARTIFACTS)
    assert {o["artifact"] for o in manifest["objects"]} == set(P.ARTIFACTS)


def test_quality_gate_task_compares_with_the_published_model(store, bucket, artifacts, tmp_path):
    import datetime as dt

    from airflow.sdk.exceptions import AirflowFailException

    from music_recs.failures import QualityGateFailed
    from music_recs.jobs import EvaluateResult
    from music_recs.settings import DeploymentSettings
    from music_recs_airflow import tasks

    cfg = DeploymentSettings(models_bucket=bucket, lake_uri=str(tmp_path))
    P.publish(store, bucket, cfg.model_key_prefix("2026-11-19", "r0"), cfg.pointer_key, "2026-11-19", "r0", artifacts,
              {"params": {"granularity": "track", "k": 10}, "metrics": {"k": 10, "model": {"map": 0.30}}})

    def plan(**params):
        return tasks.plan_run(params, dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc), "r1", cfg)

    evaluated = EvaluateResult(k=10, top_n=50, model={"map": 0.15}, baseline_popularity={"map": 0.05},
                               recommendation_rows=0, similar_items_per_item=20, seconds={})
    with pytest.raises(AirflowFailException, match=r"model 0\.1500.*baseline 0\.0500.*published model 0\.3000") as err:
        tasks.quality_gate(store, plan(), evaluated)
    assert isinstance(err.value.__cause__, QualityGateFailed)  # fails at once: no retry can change the verdict
    decision = tasks.quality_gate(store, plan(override_quality_gate=True), evaluated)
    assert decision["overridden"] and decision["publish"] and decision["published"] == 0.30
    # another granularity is not comparable: only the baseline counts
    assert tasks.quality_gate(store, plan(granularity="artist"), evaluated)["passed"]


def test_objects_then_manifest_then_pointer(store, bucket, artifacts):
    writes = []
    real_upload, real_put_json = store.create_from_file, store.put_json

    def upload(path, b, key, metadata=None):
        writes.append(key)
        return real_upload(path, b, key, metadata)

    def put_json(b, key, value, **kwargs):
        writes.append(key)
        return real_put_json(b, key, value, **kwargs)

    store.create_from_file, store.put_json = upload, put_json
    P.publish(store, bucket, prefix("2026-11-20", "r1"), POINTER, "2026-11-20", "r1", artifacts, {})
    assert writes[-1].endswith("/went_live.json") and writes[-2] == POINTER
    assert writes[-3].endswith("/manifest.json")
    assert len(writes) == 2 * len(P.ARTIFACTS) + 3
