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
import os
import re

from music_recs.failures import InvalidInput
from music_recs.params import RunParams
from music_recs_airflow.lake_files import LakeFiles, is_local, local_path, s3_location
from music_recs_airflow.s3 import PreconditionFailed, S3Store, parquet_table, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ARTIFACTS = ("user_factors", "item_factors", "recommendations", "similar_items")
PUBLICATION = "publish="  # one folder per publication, under the run's prefix


class PublishError(RuntimeError):
    pass


class NothingPublished(PublishError):
    """The pointer does not exist yet: no model was ever published there."""


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
        path = local_path(uri)
        digest = sha256_file(path)
        store.create_from_file(path, bucket, key, metadata={"sha256": digest})
        return {"key": key, "size": os.path.getsize(path), "sha256": digest}
    src = s3_location(uri)
    size, digest, etag = store.sha256_object(src.bucket, src.key)
    if not store.create_by_copy(src.bucket, src.key, etag, bucket, key, metadata={"sha256": digest}):
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
            raise PublishError(f"s3://{bucket}/{obj['key']} is missing") from None
        if size != obj["size"] or digest != obj["sha256"]:
            raise PublishError(f"s3://{bucket}/{obj['key']} does not match its manifest "
                               f"(size {size} vs {obj['size']}, or its SHA-256)")


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
        # A rollback says so in its (write-once) manifest: readers then accept the pointer behind
        # the day that was live (``read_latest``).
        "allow_pointer_rewind": bool(allow_rewind),
    }
    store.put_json(bucket, prefix + MANIFEST, full_manifest, if_none_match=True)
    manifest_bytes, _ = store.get_bytes(bucket, prefix + MANIFEST)
    pointer = {
        "day": day,
        "run_id": run_id,
        "prefix": prefix,
        "manifest_key": prefix + MANIFEST,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
    }
    decision = move_pointer(store, bucket, pointer_key, pointer, allow_rewind)
    if decision["moved"]:
        # Written once, never deleted: readers refuse a pointer later moved back behind this day.
        store.put_json(bucket, prefix + WENT_LIVE, {"pointer": pointer_key, "at": dt.datetime.now(
            dt.timezone.utc).isoformat(timespec="seconds")}, if_none_match=True)
    log.info("pointer s3://%s/%s: %s", bucket, pointer_key, decision["reason"])
    return {"manifest_key": prefix + MANIFEST, "objects": len(objects), "pointer": pointer, **decision}


# --- reading a publication back: the one verified path ----------------------------------------
# Every reader (the CLI, warm start, evaluation's comparison, search reuse, the report's history,
# the consumer DAG) goes through here: the pointer names the manifest and its SHA-256, the manifest
# names every object's key, size and SHA-256, keys stay inside the models prefix, values pass the
# params schema. What fails a check is refused in one line naming the object and the check.
WENT_LIVE = "went_live.json"  # written once into a publication when the pointer first named it
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def strict_json(raw: bytes, what: str) -> dict:
    """A published JSON object: standard JSON only (``json.loads`` would take NaN and Infinity)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(raw, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:
        raise PublishError(f"{what} is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(value, dict):
        raise PublishError(f"{what} is not a JSON object")
    return value


def check_inside(key, prefix: str, what: str) -> str:
    """``key`` as a key under ``prefix`` (no ``..`` part, no empty part), else ``PublishError``."""
    parts = key.split("/") if isinstance(key, str) else []
    if not isinstance(key, str) or not key.startswith(prefix) or "" in parts or ".." in parts or key != key.strip():
        raise PublishError(f"{what} {key!r} is not a key under {prefix}; refused")
    return key


def checked_manifest(raw: bytes, bucket: str, key: str, models_prefix: str) -> dict:
    """The manifest at ``key``, checked for form: standard JSON, its key under the models prefix,
    every object it lists under its own folder with a size and a SHA-256, its params within the
    params schema (``RunParams.from_params``; names an earlier version had and this one lacks
    are left out). Objects themselves are checked when read (``read_object``, ``verify_objects``)."""
    where = f"s3://{bucket}/{key}"
    check_inside(key, f"{models_prefix}/dt=", "manifest")
    manifest = strict_json(raw, where)
    folder = key.rsplit("/", 1)[0] + "/"
    objects = manifest.get("objects")
    if not isinstance(objects, list) or not objects:
        raise PublishError(f"{where} lists no objects; refused")
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("size"), int) or isinstance(obj.get("size"), bool) \
                or obj["size"] < 0 or not _SHA256.match(str(obj.get("sha256"))) or not isinstance(obj.get("artifact"), str):
            raise PublishError(f"{where} has an object without a valid key, size, SHA-256 and artifact; refused")
        check_inside(obj.get("key"), folder, f"{where}: object")
    params = manifest.setdefault("params", {})
    if not isinstance(params, dict):
        raise PublishError(f"{where} has params that are not an object; refused")
    try:
        RunParams.from_params({k: v for k, v in params.items() if k in RunParams.__dataclass_fields__})
    except InvalidInput as exc:
        raise PublishError(f"{where} has params outside their schema ({exc}); refused") from None
    return manifest


def read_manifest(store: S3Store, bucket: str, key: str, models_prefix: str) -> dict:
    """A manifest found by listing (warm start, search reuse, the report's history), checked for
    form (``checked_manifest``: no pointer names it, so its own SHA-256 cannot be checked; its
    objects are, when read); ``PublishError`` when it is gone or refused."""
    got = store.get_bytes(bucket, key)
    if got is None:
        raise PublishError(f"s3://{bucket}/{key} is gone")
    return checked_manifest(got[0], bucket, key, models_prefix)


def went_live_later(store: S3Store, bucket: str, models_prefix: str, day: str) -> str | None:
    """The newest day after ``day`` with a publication the pointer once named (``WENT_LIVE``), or None."""
    root = f"{models_prefix}/dt="
    days = sorted((p[len(root):].rstrip("/") for p in store.list_folders(bucket, root)), reverse=True)
    for later in (d for d in days if d > day):
        if any(o.key.endswith("/" + WENT_LIVE) for o in store.list_objects(bucket, f"{root}{later}/")):
            return later
    return None


def read_latest(store: S3Store, bucket: str, pointer_key: str, allow_rewind: bool = False) -> tuple[dict, dict]:
    """The pointer and the manifest it names, verified: the manifest's SHA-256 is the pointer's, the
    manifest is well formed (``checked_manifest``), and the pointer has not moved back behind a
    publication it once named, unless the publication it names now was made by a run allowed to
    rewind it, or the reader allows it (``allow_rewind``)."""
    models_prefix = pointer_key.rsplit("/", 1)[0]
    got = store.get_bytes(bucket, pointer_key)
    if got is None:
        raise NothingPublished(f"no model published yet: s3://{bucket}/{pointer_key} does not exist")
    pointer = strict_json(got[0], f"s3://{bucket}/{pointer_key}")
    key = check_inside(pointer.get("manifest_key"), f"{models_prefix}/dt=", f"s3://{bucket}/{pointer_key} names a manifest")
    raw = store.get_bytes(bucket, key)
    if raw is None or hashlib.sha256(raw[0]).hexdigest() != pointer.get("manifest_sha256"):
        raise PublishError(f"the manifest named by s3://{bucket}/{pointer_key} is missing or altered "
                           "(its SHA-256 is not the pointer's); refused")
    manifest = checked_manifest(raw[0], bucket, key, models_prefix)
    if manifest.get("day") != pointer.get("day"):
        raise PublishError(f"s3://{bucket}/{pointer_key} says dt={pointer.get('day')} but its manifest is of "
                           f"dt={manifest.get('day')}; refused")
    later = went_live_later(store, bucket, models_prefix, str(pointer["day"]))
    if later and not allow_rewind and manifest.get("allow_pointer_rewind") is not True:
        raise PublishError(f"s3://{bucket}/{pointer_key} was moved back to dt={pointer['day']} although the model "
                           f"of dt={later} was live; refused (a rollback is published by a run with "
                           "allow_pointer_rewind, or read with allow_pointer_rewind)")
    return pointer, manifest


def read_object(store: S3Store, bucket: str, obj: dict) -> bytes:
    """A published object's bytes, if they are the size and SHA-256 its manifest says."""
    got = store.get_bytes(bucket, obj["key"])
    if got is None:
        raise PublishError(f"s3://{bucket}/{obj['key']} is missing; the publication is incomplete")
    if len(got[0]) != obj["size"] or hashlib.sha256(got[0]).hexdigest() != obj["sha256"]:
        raise PublishError(f"s3://{bucket}/{obj['key']} does not match its manifest (size or SHA-256); refused")
    return got[0]


def read_parquet(store: S3Store, bucket: str, obj: dict, **read_options):
    """A published Parquet object as a ``pyarrow.Table``, once ``read_object`` checked it."""
    return parquet_table(read_object(store, bucket, obj), **read_options)


def verify_publication(store: S3Store, bucket: str, manifest_key: str, models_prefix: str,
                       manifest_sha256: str | None = None) -> dict:
    """What a consumer checks before loading a publication: the manifest under ``models_prefix``,
    with the SHA-256 it was announced with (an asset event's ``manifest_sha256``), well formed, and
    every object it lists there with its size and SHA-256. Returns a summary."""
    raw = store.get_bytes(bucket, check_inside(manifest_key, f"{models_prefix}/dt=", "manifest"))
    if raw is None:
        raise PublishError(f"s3://{bucket}/{manifest_key} does not exist")
    if manifest_sha256 is not None and hashlib.sha256(raw[0]).hexdigest() != manifest_sha256:
        raise PublishError(f"s3://{bucket}/{manifest_key} is not the manifest that was announced (SHA-256); refused")
    manifest = checked_manifest(raw[0], bucket, manifest_key, models_prefix)
    verify_objects(store, bucket, manifest["objects"])
    return {"day": manifest["day"], "run_id": manifest["run_id"], "manifest": manifest_key,
            "objects_verified": len(manifest["objects"]),
            "bytes": sum(o["size"] for o in manifest["objects"])}
