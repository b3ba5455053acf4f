"""The Airflow side's view of the lake (``music_recs_airflow.lake_files``), on a local folder and on
the tests' S3 server (moto over HTTP) as ``s3a://``, and what the tasks do with it: the quarantine
streamed from the day's committed copy, sizes, the do-not-recommend list, factors staged from the
models bucket, publishing from an ``s3a://`` lake, and the bucket check's one-line errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import time
import tracemalloc

import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowFailException

from music_recs.failures import InvalidInput, is_permanent
from music_recs.lake_commit import CommittedPointer
from music_recs.params import RunParams
from music_recs.plan import RunPlan
from music_recs.settings import DeploymentSettings
from music_recs.sizing import ClusterResources
from music_recs_airflow import publish as P
from music_recs_airflow import tasks
from music_recs_airflow.lake_files import ChainedReader, LakeFiles
from music_recs_airflow.model_history import ModelHistory
from music_recs_airflow.s3 import PreconditionFailed, S3Store, S3Unreachable
from tests.test_publish_s3 import artifacts  # noqa: F401  (fixture)

DAY = "2026-11-20"
START = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
MIB = 1024 * 1024


@pytest.fixture(params=["local", "s3a"])
def lake_root(request, tmp_path) -> str:
    return str(tmp_path / "lake") if request.param == "local" else request.getfixturevalue("s3a_lake")


@pytest.fixture
def files(store) -> LakeFiles:
    return LakeFiles(store)


def plan_for(lake_uri: str, bucket: str, master: str = "local[2]", **settings) -> RunPlan:
    cfg = DeploymentSettings(raw_bucket=bucket, models_bucket=bucket, lake_uri=lake_uri, **settings)
    return RunPlan(day=DAY, run_id="manual__r", run_key="manual__r", params=RunParams(), settings=cfg,
                   cluster=ClusterResources(nodes=1, cores_per_node=2, memory_per_node_mb=4096, local=True),
                   spark_master=master)


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


# --- files on both schemes ----------------------------------------------------------------------
def test_files_sizes_and_small_files_on_both_schemes(lake_root, files, store):
    files.put_bytes(f"{lake_root}/a/b/x.parquet", b"abc")
    files.put_bytes(f"{lake_root}/a/y.parquet", b"hello")
    files.put_bytes(f"{lake_root}/other/z", b"z" * 100)
    if lake_root.startswith("s3a://"):  # a folder marker (an empty key ending in /) is not a file
        bucket = lake_root.split("/")[2]
        store.put_bytes(bucket, "lake/a/b/", b"")
    assert [(f.uri, f.size) for f in files.files(f"{lake_root}/a")] == [
        (f"{lake_root}/a/b/x.parquet", 3), (f"{lake_root}/a/y.parquet", 5)]
    assert [f.name for f in files.files(f"{lake_root}/a", recursive=False)] == ["y.parquet"]
    assert (files.total_bytes(f"{lake_root}/a"), files.largest_bytes(f"{lake_root}/a")) == (8, 5)
    assert tasks.folder_bytes(lake_root, files) == 108
    assert files.read_bytes(f"{lake_root}/a/y.parquet") == b"hello"
    assert files.read_bytes(f"{lake_root}/a/missing") is None and files.files(f"{lake_root}/none") == []
    files.remove(f"{lake_root}/a")
    assert files.files(f"{lake_root}/a") == [] and files.total_bytes(lake_root) == 100


def test_an_s3_object_is_copied_into_the_lake_or_reported_gone(lake_root, files, store, bucket):
    store.put_bytes(bucket, "models/part-0.parquet", b"factors")
    dest = f"{lake_root}/runs/warm_start/part-0.parquet"
    assert files.copy_in(bucket, "models/part-0.parquet", dest)
    assert files.read_bytes(dest) == b"factors"
    assert not files.copy_in(bucket, "models/gone.parquet", f"{lake_root}/runs/warm_start/gone.parquet")
    assert files.read_bytes(f"{lake_root}/runs/warm_start/gone.parquet") is None


def test_a_chained_stream_reads_whole_chunks_across_its_parts():
    parts = [b"abc", b"", b"defgh", b"ij"]
    reader = ChainedReader([lambda p=p: io.BytesIO(p) for p in parts])
    assert [reader.read(4), reader.read(4), reader.read(4), reader.read(4)] == [b"abcd", b"efgh", b"ij", b""]
    assert ChainedReader([lambda p=p: io.BytesIO(p) for p in parts]).read() == b"abcdefghij"


# --- the quarantine, streamed from the committed copy ----------------------------------------------
def write_day(files: LakeFiles, root: str, version: str | None, parts: dict[str, bytes]) -> None:
    """Day D as ingest leaves it: the plays' commit (pointer, or ``_SUCCESS`` of the old layout) and
    the quarantine's part files of that copy (with Spark's other files beside them)."""
    quarantine = f"{root}/quarantine/dt={DAY}" + (f"/v={version}" if version else "")
    for name, body in parts.items():
        files.put_bytes(f"{quarantine}/{name}", body)
    files.put_bytes(f"{quarantine}/_SUCCESS", b"")
    files.put_bytes(f"{quarantine}/.part-00000.json.crc", b"checksum")
    if version:
        pointer = CommittedPointer(version=version, day=DAY, writer="test", committed_at=START, accepted=1,
                                   quarantined=len(parts))
        files.put_bytes(f"{root}/plays/dt={DAY}/_COMMITTED.json", pointer.to_json().encode())
    else:
        files.put_bytes(f"{root}/plays/dt={DAY}/_SUCCESS", b"")


def uploaded_quarantine(store, bucket) -> bytes:
    return store.get_bytes(bucket, f"quarantine/stream_logs/dt={DAY}/quarantine.jsonl")[0]


def test_the_quarantine_uploaded_is_the_committed_copys_parts_in_order(lake_root, files, store, bucket):
    plan = plan_for(lake_root, bucket)
    with pytest.raises(RuntimeError, match=f"dt={DAY} has no committed copy"):
        tasks.upload_quarantine(store, plan, files)
    # An older copy stays (retention) beside the committed one; only the committed one is uploaded.
    write_day(files, lake_root, "20261120T010000Z-aaaaaaaa", {"part-00000.json": b'{"old": 1}\n'})
    big = [os.urandom(5 * MIB) + b"\n", os.urandom(4 * MIB) + b"\n"]  # above the multipart threshold together
    write_day(files, lake_root, "20261120T020000Z-bbbbbbbb", {"part-00001.json": big[1], "part-00000.json": big[0]})
    uri = tasks.upload_quarantine(store, plan, files)
    assert uri == f"s3://{bucket}/quarantine/stream_logs/dt={DAY}/quarantine.jsonl"
    body = uploaded_quarantine(store, bucket)
    assert hashlib.sha256(body).digest() == hashlib.sha256(big[0] + big[1]).digest()


def test_a_day_of_the_old_layout_uploads_its_own_parts(lake_root, files, store, bucket):
    write_day(files, lake_root, None, {"part-00000.json": b'{"a": 1}\n', "part-00001.json": b'{"b": 2}\n'})
    files.put_bytes(f"{lake_root}/quarantine/dt={DAY}/v=stray/part-00000.json", b'{"stray": 1}\n')
    committed = tasks.committed(plan_for(lake_root, bucket), files)
    assert committed.version is None and committed.quarantine == f"{lake_root}/quarantine/dt={DAY}"
    tasks.upload_quarantine(store, plan_for(lake_root, bucket), files)
    assert uploaded_quarantine(store, bucket) == b'{"a": 1}\n{"b": 2}\n'


def test_a_pointer_that_names_no_version_fails_in_one_line(lake_root, files, store, bucket):
    files.put_bytes(f"{lake_root}/plays/dt={DAY}/_COMMITTED.json", b'{"day": "2026-11-20"}')
    with pytest.raises(InvalidInput) as err:
        tasks.upload_quarantine(store, plan_for(lake_root, bucket), files)
    assert f"{lake_root}/plays/dt={DAY}/_COMMITTED.json: version must be" in one_line(err.value)


def test_the_quarantine_upload_holds_a_bounded_share_of_it_in_memory(tmp_path, store, bucket):
    """96 MiB of quarantine in four parts: the upload holds a few 8 MiB parts at once (about 45 MiB
    here), well under the total; joined in memory, as before, it held more than all of it."""
    lake = str(tmp_path / "lake")
    files = LakeFiles(store)
    parts = {f"part-{i:05d}.json": os.urandom(24 * MIB) for i in range(4)}
    write_day(files, lake, "20261120T020000Z-cccccccc", parts)
    digest = hashlib.sha256(b"".join(parts.values())).hexdigest()
    del parts
    tracemalloc.start()
    try:
        tasks.upload_quarantine(store, plan_for(lake, bucket), files)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * MIB, f"peak {peak / MIB:.0f} MiB"
    key = f"quarantine/stream_logs/dt={DAY}/quarantine.jsonl"
    size, got, etag = store.sha256_object(bucket, key)
    assert (size, got) == (96 * MIB, digest) and etag.endswith("-12")  # a multipart upload of 8 MiB parts
    store.client.delete_object(Bucket=bucket, Key=key)  # the session's S3 server keeps objects in memory


# --- where a run's files go --------------------------------------------------------------------------
def test_an_s3a_lake_keeps_specs_and_local_mode_checkpoints_on_the_worker(tmp_path, bucket):
    work = str(tmp_path / "work")
    on_s3 = plan_for(f"s3a://{bucket}/lake", bucket, work_dir=work)
    assert on_s3.work_dir == f"{work}/runs/dt={DAY}/run=manual__r/results"
    assert on_s3.submit_dir == f"{work}/_submit"
    assert on_s3.checkpoints == f"{work}/runs/dt={DAY}/run=manual__r/_checkpoints"
    # A cluster's executors all write checkpoints: they go to the lake.
    cluster = plan_for(f"s3a://{bucket}/lake", bucket, master="spark://10.0.0.1:7077", work_dir=work)
    assert cluster.checkpoints == f"s3a://{bucket}/lake/_checkpoints/dt={DAY}/run=manual__r"
    assert tasks.ingest_spec(on_s3).input_uri == f"s3a://{bucket}/stream_logs/dt={DAY}/"
    # A local lake: everything where it always was.
    local = plan_for(str(tmp_path / "lake"), bucket, work_dir=work)
    assert local.work_dir == local.results and local.checkpoints == local.lake.checkpoints(DAY, "manual__r")
    assert local.submit_dir == local.lake.submit_dir and tasks.ingest_spec(local).input_uri == local.landing_staging
    file_uri = plan_for(f"file://{tmp_path}/lake", bucket, work_dir=work)
    assert file_uri.work_dir == f"{tmp_path}/lake/runs/dt={DAY}/run=manual__r/results"


def test_plan_run_takes_an_s3a_lake_and_refuses_one_it_cannot_reach(bucket):
    cfg = DeploymentSettings(raw_bucket=bucket, models_bucket=bucket, lake_uri=f"s3a://{bucket}/lake")
    assert tasks.plan_run({}, START, "manual__s3a", cfg).lake.root == f"s3a://{bucket}/lake"
    hdfs = dataclasses.replace(cfg, lake_uri="hdfs://namenode/lake")
    with pytest.raises(AirflowFailException, match="reads and writes a local folder, file:// or s3a:// only"):
        tasks.plan_run({}, START, "manual__hdfs", hdfs)


# --- the do-not-recommend list and staged factors in an s3a lake ---------------------------------------
def test_the_do_not_recommend_list_is_written_into_an_s3a_run_folder(store, bucket, s3a_lake, tmp_path):
    store.put_bytes(bucket, "rules/dnr.csv", b"user_id,item_id\n,t1\nu1,t2\n")
    plan = plan_for(s3a_lake, bucket, do_not_recommend_key="rules/dnr.csv")
    rules = tasks.recommendation_rules(store, plan)
    assert rules["path"] == f"{plan.run_dir}/rules/do_not_recommend.parquet" and rules["path"].startswith("s3a://")
    table = pq.read_table(io.BytesIO(LakeFiles(store).read_bytes(rules["path"])))
    assert sorted(zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist()),
                  key=str) == sorted([(None, "t1"), ("u1", "t2")], key=str)
    assert not any(tmp_path.iterdir())  # nothing of the lake on local disk


def test_factors_are_staged_into_an_s3a_lake_by_server_side_copy(store, bucket, s3a_lake, artifacts):  # noqa: F811
    prefix = P.publication_prefix("music_recs/dt=2026-11-19/run=a/")
    P.publish(store, bucket, prefix, "music_recs/latest.json", "2026-11-19", "a", artifacts, {"params": {}})
    history = ModelHistory(store, bucket, "music_recs", "music_recs/latest.json", DAY)
    model = history.published
    dest = f"{s3a_lake}/runs/dt={DAY}/run=r/warm_start"
    files = LakeFiles(store)
    files.put_bytes(f"{dest}/user_factors/stale.parquet", b"from an earlier attempt")
    copies = []
    real_copy = store.copy
    store.copy = lambda *a, **k: copies.append(a) or real_copy(*a, **k)
    assert history.stage_factors(model, dest, files) is None
    staged = {f.uri[len(dest) + 1:]: files.read_bytes(f.uri) for f in files.files(dest)}
    assert sorted(staged) == [f"{side}_factors/part-{i:05d}.parquet" for side in ("item", "user") for i in range(2)]
    for obj in model.objects:
        if obj["artifact"] in ("user_factors", "item_factors"):
            assert hashlib.sha256(staged[f"{obj['artifact']}/{obj['key'].rsplit('/', 1)[-1]}"]).hexdigest() == obj["sha256"]
    assert len(copies) == 4  # server-side copies, not downloads
    # A published factor file that is gone: the run starts cold rather than from half a model.
    store.client.delete_object(Bucket=bucket, Key=next(o["key"] for o in model.objects if o["artifact"] == "item_factors"))
    assert history.stage_factors(model, dest, files).endswith("of the model of dt=2026-11-19 is gone")


# --- publishing from an s3a lake -------------------------------------------------------------------
def model_in_lake(files: LakeFiles, root: str) -> dict[str, str]:
    """A model's four outputs as Spark leaves them in an s3a lake: part files, _SUCCESS, a marker."""
    folders = {}
    for name in P.ARTIFACTS:
        folder = f"{root}/model/{name}"
        for part in range(2):
            files.put_bytes(f"{folder}/part-{part:05d}-abc.snappy.parquet", os.urandom(1000 + part))
        files.put_bytes(f"{folder}/_SUCCESS", b"")
        folders[name] = folder
    return folders


def test_a_model_in_an_s3a_lake_is_published_with_checksums_read_as_streams(store, bucket, s3a_lake):
    files = LakeFiles(store)
    folders = model_in_lake(files, s3a_lake)
    prefix = "music_recs/dt=2026-11-20/run=r1/"
    decision = P.publish(store, bucket, prefix, "music_recs/latest.json", DAY, "r1", folders, {}, files=files)
    assert decision["moved"]
    pointer, manifest = P.read_latest(store, bucket, "music_recs/latest.json")
    assert sorted(o["key"] for o in manifest["objects"]) == sorted(
        f"{prefix}{n}/part-{i:05d}.parquet" for n in P.ARTIFACTS for i in range(2))
    for obj in manifest["objects"]:
        source = files.read_bytes(f"{folders[obj['artifact']]}/part-{int(obj['key'][-13:-8]):05d}-abc.snappy.parquet")
        published, _ = store.get_bytes(bucket, obj["key"])
        assert published == source and obj["sha256"] == hashlib.sha256(source).hexdigest()
        head = store.client.head_object(Bucket=bucket, Key=obj["key"])
        assert head["Metadata"]["sha256"] == obj["sha256"]


def test_a_lake_object_that_changed_after_it_was_hashed_is_not_published(store, bucket, s3a_lake, monkeypatch):
    files = LakeFiles(store)
    folders = model_in_lake(files, s3a_lake)
    real = store.sha256_object

    def then_rewritten(b, key):
        hashed = real(b, key)
        if key.startswith("lake/"):  # the lake's object changes between its hash and its copy
            store.put_bytes(b, key, b"rewritten")
        return hashed

    monkeypatch.setattr(store, "sha256_object", then_rewritten)
    # S3 refuses the part copy (x-amz-copy-source-if-match); the test server copies the new bytes,
    # and the read-back of every object against its checksum stops the publication there.
    with pytest.raises((PreconditionFailed, P.PublishError)):
        P.publish(store, bucket, "music_recs/dt=2026-11-20/run=r1/", "music_recs/latest.json", DAY, "r1", folders, {},
                  files=files)
    assert store.get_json(bucket, "music_recs/latest.json") is None


# --- the bucket check: at once, one line, naming the bucket and the cause ----------------------------
def test_a_missing_bucket_fails_at_once_naming_it(store, s3_endpoint, bucket):
    started = time.monotonic()
    with pytest.raises(InvalidInput) as err:
        LakeFiles(store).check("s3a://no-such-lake-bucket/lake")
    message = one_line(err.value)
    assert "'no-such-lake-bucket'" in message and "does not exist" in message and "s3a://no-such-lake-bucket/lake" in message
    assert time.monotonic() - started < 5
    # Through a stage: the task ends without retries (a missing bucket stays missing).
    plan = plan_for("s3a://no-such-lake-bucket/lake", bucket)
    with pytest.raises(AirflowFailException) as err:
        tasks.build_confidence(plan)
    assert "'no-such-lake-bucket'" in one_line(err.value)
    with pytest.raises(AirflowFailException, match="'missing-raw-bucket' \\(raw_bucket\\).*does not exist"):
        tasks.ingest(store, dataclasses.replace(plan, settings=dataclasses.replace(
            plan.settings, lake_uri=f"s3a://{bucket}/lake", raw_bucket="missing-raw-bucket")))


def test_an_endpoint_that_refuses_connections_fails_in_seconds_and_keeps_the_retries(bucket, monkeypatch):
    refused = "http://127.0.0.1:1"
    started = time.monotonic()
    with pytest.raises(S3Unreachable) as err:
        S3Store.from_endpoint(refused, "testing", "testing").check_bucket("lake-bucket", "lake_uri s3a://lake-bucket/x")
    message = one_line(err.value)
    assert "'lake-bucket'" in message and "unreachable" in message and refused in message
    assert not is_permanent(err.value) and time.monotonic() - started < 10
    # Through a stage whose S3 connection points there.
    monkeypatch.setenv("AIRFLOW_CONN_REFUSED_S3", json.dumps(
        {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"endpoint_url": refused}}))
    plan = plan_for(f"s3a://{bucket}/lake", bucket, aws_conn_id="refused_s3")
    started = time.monotonic()
    with pytest.raises(S3Unreachable) as err:
        tasks.validate(plan)
    assert f"'{bucket}'" in one_line(err.value) and time.monotonic() - started < 10


def test_missing_credentials_fail_at_once_naming_the_bucket(s3_endpoint, bucket, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(InvalidInput) as err:
        S3Store.from_endpoint(s3_endpoint).check_bucket(bucket, "raw_bucket")
    message = one_line(err.value)
    assert f"'{bucket}' (raw_bucket)" in message and "no S3 credentials" in message
