"""Publish a trained model to S3: a new folder per publication, manifest, verified, pointer last.

Layout under the models bucket::

    {models_prefix}/dt=YYYY-MM-DD/run={run key}/publish={UTC time}/user_factors/part-00000.parquet
                                                                /item_factors/part-00000.parquet
                                                                /recommendations/part-00000.parquet
                                                                /similar_items/part-00000.parquet
                                                                /report.html
                                                                /manifest.json
    {models_prefix}/latest.json        <- the pointer, written last

Order matters: objects, then their verification (size and SHA-256 read back from the
server), then the manifest, then the pointer. A run that dies anywhere before the pointer
leaves readers on the previous model. That holds for a rerun of the very run behind the
pointer too, because a publication never writes over another's objects: each goes to its own
``publish=`` folder, and the pointer names exactly one. Nothing is deleted: the pipeline's
credentials may not delete (``infra/aws/pipeline-iam-policy.json``), earlier publications stay
readable for comparison and rollback, and retention is a bucket lifecycle rule's job.

The pointer only moves forward in logical day (a rerun of the same day replaces it),
unless the run explicitly allows a rewind (backfills). It is replaced with a
compare-and-swap on its ETag (S3 conditional writes, ``If-Match``/``If-None-Match``), so
two runs racing cannot leave it pointing at a model that is not complete.

The model's files are read from the lake, a local folder or ``s3a://`` (``lake_files``): a local
file is uploaded (boto3's managed upload); an object of an ``s3a://`` lake is read as a stream for
its SHA-256 and then copied server-side, only if it is still the object that was read (``If-Match``
on its ETag). Every object is read back as a stream to check size and SHA-256: memory stays
bounded whatever the size of the model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging

from music_recs_airflow.lake_files import LakeFiles, is_local, local_path, s3_location
from music_recs_airflow.s3 import PreconditionFailed, S3Store

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ARTIFACTS = ("user_factors", "item_factors", "recommendations", "similar_items")
PUBLICATION = "publish="  # one folder per publication, under the run's prefix


class PublishError(RuntimeError):
    pass


def publication_prefix(run_prefix: str) -> str:
    """Where one publication of a run goes: ``{run_prefix}publish=YYYYMMDDTHHMMSS.ffffffZ/``.

    UTC time to the microsecond: folders of one run sort in the order they were published."""
    return f"{run_prefix}{PUBLICATION}{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S.%fZ}/"


def artifact_files(files: LakeFiles, folder: str) -> list[str]:
    """Parquet part files of one Spark output folder of the lake (its own files, not hidden ones),
    in a stable order."""
    found = [f.uri for f in files.files(folder, recursive=False)
             if f.name.endswith(".parquet") and not f.name.startswith((".", "_"))]
    if not found:
        raise PublishError(f"no Parquet files in {folder}: nothing to publish")
    return found


def upload_artifact(store: S3Store, files: LakeFiles, uri: str, bucket: str, key: str) -> dict:
    """One lake file to ``s3://bucket/key`` with its SHA-256 as object metadata; returns key, size and
    SHA-256. A local file is uploaded; an ``s3a://`` object is hashed as a stream, then copied
    server-side only if it is still the object that was hashed."""
    if is_local(uri):
        return store.upload_file(local_path(uri), bucket, key)
    src = s3_location(uri)
    size, digest, etag = store.sha256_object(src.bucket, src.key)
    if not store.copy(src.bucket, src.key, bucket, key, if_match=etag, metadata={"sha256": digest}):
        raise PublishError(f"{uri} disappeared while it was published; the pointer was not moved")
    return {"key": key, "size": size, "sha256": digest}


def upload_artifacts(store: S3Store, bucket: str, prefix: str, artifacts: dict[str, str],
                     files: LakeFiles | None = None) -> list[dict]:
    files = files or LakeFiles(store)
    uploaded = []
    for name, folder in artifacts.items():
        for i, uri in enumerate(artifact_files(files, folder)):
            info = upload_artifact(store, files, uri, bucket, f"{prefix}{name}/part-{i:05d}.parquet")
            uploaded.append({**info, "artifact": name})
            log.info("uploaded s3://%s/%s (%d bytes)", bucket, info["key"], info["size"])
    return uploaded


def verify_objects(store: S3Store, bucket: str, objects: list[dict]) -> None:
    """Read every object back, as a stream, and compare size and SHA-256 with what was uploaded."""
    for obj in objects:
        try:
            size, digest, _ = store.sha256_object(bucket, obj["key"])
        except FileNotFoundError:
            raise PublishError(f"s3://{bucket}/{obj['key']} is missing after upload") from None
        if size != obj["size"] or digest != obj["sha256"]:
            raise PublishError(
                f"s3://{bucket}/{obj['key']} does not match what was uploaded "
                f"(size {size} vs {obj['size']}); the pointer was not moved"
            )


def move_pointer(store: S3Store, bucket: str, key: str, pointer: dict, allow_rewind: bool,
                 attempts: int = 5) -> dict:
    """Compare-and-swap the pointer. Returns ``{"moved": bool, "reason": str, "previous": ...}``."""
    for _ in range(attempts):
        current = store.get_json(bucket, key)
        previous, etag = (current if current else (None, None))
        if previous and previous.get("day", "") > pointer["day"] and not allow_rewind:
            return {"moved": False, "previous": previous,
                    "reason": f"pointer is on a later day ({previous['day']} > {pointer['day']}); "
                              "set allow_pointer_rewind to replace it"}
        try:
            store.put_json(bucket, key, pointer, if_match=etag, if_none_match=etag is None)
        except PreconditionFailed:
            log.warning("pointer s3://%s/%s changed under us; retrying", bucket, key)
            continue
        return {"moved": True, "previous": previous, "reason": "moved"}
    raise PublishError(f"could not update s3://{bucket}/{key}: it kept changing ({attempts} attempts)")


def publish(store: S3Store, bucket: str, prefix: str, pointer_key: str, day: str, run_id: str,
            artifacts: dict[str, str], manifest: dict, allow_rewind: bool = False, files: LakeFiles | None = None) -> dict:
    """Upload, verify, write the manifest, then move the pointer. Returns the pointer decision.

    artifacts: name -> the lake folder of its Parquet files; files: the lake's (default: through ``store``)."""
    objects = upload_artifacts(store, bucket, prefix, artifacts, files)
    verify_objects(store, bucket, objects)
    full_manifest = {
        **manifest,
        "day": day,
        "run_id": run_id,
        "prefix": f"s3://{bucket}/{prefix}",
        "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "objects": objects,
    }
    store.put_json(bucket, prefix + MANIFEST, full_manifest)
    manifest_bytes, _ = store.get_bytes(bucket, prefix + MANIFEST)
    pointer = {
        "day": day,
        "run_id": run_id,
        "prefix": prefix,
        "manifest_key": prefix + MANIFEST,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
    }
    decision = move_pointer(store, bucket, pointer_key, pointer, allow_rewind)
    log.info("pointer s3://%s/%s: %s", bucket, pointer_key, decision["reason"])
    return {"manifest_key": prefix + MANIFEST, "objects": len(objects), "pointer": pointer, **decision}


def read_latest(store: S3Store, bucket: str, pointer_key: str) -> tuple[dict, dict]:
    """The pointer and the manifest it names; the manifest's checksum is checked."""
    got = store.get_json(bucket, pointer_key)
    if got is None:
        raise PublishError(f"no model published yet: s3://{bucket}/{pointer_key} does not exist")
    pointer = got[0]
    raw = store.get_bytes(bucket, pointer["manifest_key"])
    if raw is None or hashlib.sha256(raw[0]).hexdigest() != pointer["manifest_sha256"]:
        raise PublishError(f"the manifest named by s3://{bucket}/{pointer_key} is missing or altered")
    return pointer, json.loads(raw[0])


def verify_publication(store: S3Store, bucket: str, manifest_key: str) -> dict:
    """What a consumer of the published model checks before loading it: the manifest parses
    and every object it lists is there with its size and SHA-256. Returns a summary."""
    got = store.get_json(bucket, manifest_key)
    if got is None or not isinstance(got[0], dict):
        raise PublishError(f"s3://{bucket}/{manifest_key} is not a manifest")
    manifest = got[0]
    verify_objects(store, bucket, manifest["objects"])
    return {"day": manifest["day"], "run_id": manifest["run_id"], "manifest": manifest_key,
            "objects_verified": len(manifest["objects"]),
            "bytes": sum(o["size"] for o in manifest["objects"])}

