"""S3 access for the pipeline, over HTTP with boto3.

``S3Store`` does the work (list, upload with checksums, JSON objects, conditional
writes); where its connection comes from is decided by the constructors:
``from_airflow`` reads an Airflow connection (``endpoint_url`` and ``region_name``
extras, login/password as access key and secret, or the default AWS credential chain
when they are empty), ``from_endpoint`` takes explicit values (tests, CLI).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
from dataclasses import dataclass
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from music_recs.settings import s3_endpoint
from music_recs.failures import InvalidInput

log = logging.getLogger(__name__)

_CHUNK = 8 * 1024 * 1024


def is_loopback(endpoint_url: str) -> bool:
    host = urlparse(endpoint_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint_url: str | None) -> None:
    """Plain HTTP is only acceptable to a server on this machine."""
    if endpoint_url and urlparse(endpoint_url).scheme != "https" and not is_loopback(endpoint_url):
        raise InvalidInput(
            f"S3 endpoint {endpoint_url!r} is not TLS; use https:// for any endpoint that is not loopback"
        )


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    etag: str


class PreconditionFailed(RuntimeError):
    """A conditional write lost a race (the object changed since it was read)."""


class S3Store:
    def __init__(self, client):
        self.client = client

    @classmethod
    def from_endpoint(
        cls,
        endpoint_url: str | None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
    ) -> S3Store:
        check_endpoint(endpoint_url)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            region_name=region or "us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
                # boto3 >= 1.36 adds CRC checksums to every request; keep them only where required
                # so S3-compatible servers that do not implement them still work.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        return cls(client)

    @classmethod
    def from_airflow(cls, conn_id: str = "aws_default") -> S3Store:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson
        return cls.from_endpoint(
            extra.get("endpoint_url") or s3_endpoint(),
            conn.login,
            conn.password,
            extra.get("region_name"),
        )

    # --- reading ------------------------------------------------------------------------
    def list_objects(self, bucket: str, prefix: str) -> list[StoredObject]:
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                out.append(StoredObject(item["Key"], item["Size"], item["ETag"].strip('"')))
        return out

    def get_bytes(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return resp["Body"].read(), resp["ETag"].strip('"')

    def get_parquet(self, bucket: str, key: str, **read_options):
        """A Parquet object as a ``pyarrow.Table`` (``read_options`` go to ``pyarrow.parquet.read_table``).

        The bytes are copied into Arrow-owned memory first. Read from a Python object, Arrow's
        I/O threads free Python buffers after ``read_table`` returns; at interpreter exit such a
        thread cannot take the GIL and the process aborts ("terminate called without an active
        exception", exit 134; apache/arrow#33975).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        got = self.get_bytes(bucket, key)
        if got is None:
            raise FileNotFoundError(f"s3://{bucket}/{key} does not exist")
        owned = pa.BufferOutputStream()
        owned.write(got[0])
        return pq.read_table(pa.BufferReader(owned.getvalue()), **read_options)

    def get_json(self, bucket: str, key: str) -> tuple[dict, str] | None:
        got = self.get_bytes(bucket, key)
        if got is None:
            return None
        return json.loads(got[0]), got[1]

    def download_prefix(self, bucket: str, prefix: str, dest_dir: str) -> list[str]:
        """Download every object under ``prefix`` into ``dest_dir``, keeping sub-folders
        (a Spotify export's folder names its user). Keys that would leave ``dest_dir`` are refused."""
        os.makedirs(dest_dir, exist_ok=True)
        root = os.path.realpath(dest_dir)
        paths = []
        for obj in self.list_objects(bucket, prefix):
            rel = obj.key[len(prefix):].lstrip("/")
            if not rel or rel.endswith("/"):
                continue
            path = os.path.realpath(os.path.join(root, rel))
            if not path.startswith(root + os.sep) or any(p in ("..", ".") for p in rel.split("/")):
                raise InvalidInput(f"refusing to stage s3://{bucket}/{obj.key}: its name leaves the staging folder")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.client.download_file(bucket, obj.key, path)
            paths.append(path)
        return sorted(paths)

    # --- writing ------------------------------------------------------------------------
    def upload_file(self, path: str, bucket: str, key: str) -> dict:
        """Upload a file and return its size and SHA-256 (also stored as object metadata)."""
        digest = sha256_file(path)
        self.client.upload_file(path, bucket, key, ExtraArgs={"Metadata": {"sha256": digest}})
        return {"key": key, "size": os.path.getsize(path), "sha256": digest}

    def put_json(
        self,
        bucket: str,
        key: str,
        value: dict,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Write a JSON object, optionally only if its ETag is still ``if_match`` (or it is absent).

        Raises ``PreconditionFailed`` when the condition does not hold.
        """
        body = json.dumps(value, indent=2, sort_keys=True).encode()
        kwargs = {"Bucket": bucket, "Key": key, "Body": body, "ContentType": "application/json"}
        if if_match:
            kwargs["IfMatch"] = f'"{if_match}"'
        elif if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            resp = self.client.put_object(**kwargs)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(f"s3://{bucket}/{key} changed while we were writing it") from exc
            raise
        return resp["ETag"].strip('"')

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)
