"""S3 access for the pipeline, over HTTP with boto3.

``S3Store`` does the work (list, upload with checksums, streamed uploads and server-side
copies through boto3's managed transfers, JSON objects, conditional writes, a quick check
that a bucket is reachable); where its connection comes from is decided by the constructors:
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
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from music_recs.settings import s3_endpoint
from music_recs.failures import InvalidInput

log = logging.getLogger(__name__)

_CHUNK = 8 * 1024 * 1024
# Managed transfers (upload of a stream, copy): parts of 8 MiB, at most 4 in flight and 4 read
# ahead, so an upload of a stream of any length holds at most 4 x 8 MiB of it in memory.
TRANSFER = TransferConfig(multipart_threshold=_CHUNK, multipart_chunksize=_CHUNK, max_concurrency=4)
TRANSFER.max_in_memory_upload_chunks = 4  # s3transfer's bound for a stream (default 10); boto3's __init__ does not take it
# The bucket check (``S3Store.check_bucket``) must answer in seconds: a short connect timeout and
# one retry instead of the working client's five attempts with a minute's timeout each.
PROBE_CONFIG = {"connect_timeout": 3, "read_timeout": 10, "retries": {"total_max_attempts": 2, "mode": "standard"}}


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


def parquet_table(data: bytes, **read_options):
    """Parquet bytes as a ``pyarrow.Table`` (``read_options`` go to ``pyarrow.parquet.read_table``).

    The bytes are copied into Arrow-owned memory first. Read from a Python object, Arrow's I/O
    threads free Python buffers after ``read_table`` returns; at interpreter exit such a thread
    cannot take the GIL and the process aborts ("terminate called without an active exception",
    exit 134; apache/arrow#33975).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    owned = pa.BufferOutputStream()
    owned.write(data)
    return pq.read_table(pa.BufferReader(owned.getvalue()), **read_options)


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


class AlreadyExists(RuntimeError):
    """A write-once key is taken: what is there is never written over."""


class S3Unreachable(ConnectionError):
    """The S3 endpoint did not answer (refused, timed out): a retry may get through. One line."""


MISSING = ("NoSuchBucket", "404")
DENIED = ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled")
GONE = ("NoSuchKey", "404")


def _client(endpoint_url, access_key, secret_key, region, **config) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        region_name=region or "us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            # boto3 >= 1.36 adds CRC checksums to every request; keep them only where required
            # so S3-compatible servers that do not implement them still work.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **{"retries": {"max_attempts": 5, "mode": "standard"}, **config},
        ),
    )


class HashingReader:
    """A binary stream that counts and hashes (SHA-256) what is read through it."""

    def __init__(self, stream):
        self.stream, self.size, self.digest = stream, 0, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.size += len(data)
        self.digest.update(data)
        return data

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


class S3Store:
    """S3 operations over one boto3 client.

    client: the client every operation uses; connection: the values it was made from
    (``endpoint_url``, ``access_key``, ``secret_key``, ``region``), so ``check_bucket`` can make a
    client with short timeouts (None: it uses ``client``)."""

    def __init__(self, client, connection: dict | None = None):
        self.client = client
        self.connection = connection
        self._probe = None

    @classmethod
    def from_endpoint(
        cls,
        endpoint_url: str | None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
    ) -> S3Store:
        check_endpoint(endpoint_url)
        connection = {"endpoint_url": endpoint_url, "access_key": access_key, "secret_key": secret_key,
                      "region": region}
        return cls(_client(**connection), connection)

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to, for messages (never a credential)."""
        return self.client.meta.endpoint_url

    # --- is it there ----------------------------------------------------------------------
    def check_bucket(self, bucket: str, what: str) -> None:
        """Fail in seconds, in one line naming ``bucket`` (``what`` says what it is for, e.g.
        ``"lake_uri s3a://lake/data"``) and the cause, when the bucket cannot be used: missing,
        access denied or no credentials raise ``InvalidInput`` (no retry can help); an endpoint that
        refuses or does not answer raises ``S3Unreachable`` (a retry may get through)."""
        where = f"S3 bucket {bucket!r} ({what}) at {self.endpoint}"
        try:
            self._probe_client().head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in MISSING:
                raise InvalidInput(f"{where} does not exist; create it or fix the setting") from None
            if code in DENIED:
                raise InvalidInput(f"{where}: access denied ({code}); the credentials of the S3 connection may not "
                                   "use it") from None
            if code in ("301", "PermanentRedirect", "400"):
                raise InvalidInput(f"{where}: refused with HTTP {status or code} (a bucket in another region, or "
                                   "not a bucket name this endpoint serves)") from None
            raise S3Unreachable(f"{where}: HTTP {status or code} ({code})") from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise InvalidInput(f"{where}: no S3 credentials ({exc}); set the login and password of the S3 "
                               "connection, or give the worker an instance role") from None
        except BotoCoreError as exc:  # refused, timed out, DNS: the endpoint did not answer
            raise S3Unreachable(f"{where} is unreachable: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from None

    def _probe_client(self):
        if self.connection is None:
            return self.client
        if self._probe is None:
            self._probe = _client(**self.connection, **PROBE_CONFIG)
        return self._probe

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

    def list_folders(self, bucket: str, prefix: str) -> list[str]:
        """The "folders" right under ``prefix``: common prefixes up to the next ``/``."""
        paginator = self.client.get_paginator("list_objects_v2")
        return [p["Prefix"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
                for p in page.get("CommonPrefixes", [])]

    def get_bytes(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return resp["Body"].read(), resp["ETag"].strip('"')

    def _get(self, bucket: str, key: str) -> dict:
        try:
            return self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in GONE:
                raise FileNotFoundError(f"s3://{bucket}/{key} does not exist") from None
            raise

    def open(self, bucket: str, key: str):
        """The object's body as a binary stream (read it in chunks; close it). ``FileNotFoundError``
        when it is not there."""
        return self._get(bucket, key)["Body"]

    def sha256_object(self, bucket: str, key: str) -> tuple[int, str, str]:
        """Size, SHA-256 and ETag of an object, read as a stream (bounded memory). ``FileNotFoundError``
        when it is not there."""
        resp = self._get(bucket, key)
        reader = HashingReader(resp["Body"])
        try:
            while reader.read(_CHUNK):
                pass
        finally:
            resp["Body"].close()
        return reader.size, reader.hexdigest(), resp["ETag"].strip('"')

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
    # --- write-once: a new key or nothing ----------------------------------------------------
    # A publication's objects are never written over (``infra/aws/pipeline-iam-policy.json`` lets the
    # pipeline create them only with ``If-None-Match: *``). Managed transfers cannot send that
    # header and a plain CopyObject may not carry it, so these are multipart uploads whose
    # completion is conditional: parts from the file, or copied server-side (UploadPartCopy).
    def create_from_file(self, path: str, bucket: str, key: str, metadata: dict[str, str] | None = None) -> None:
        """Upload a local file to a key that must not exist yet (``AlreadyExists`` otherwise):
        one conditional PUT up to 8 MiB, else a multipart upload of 8 MiB parts read one at a time."""
        meta = {"Metadata": metadata} if metadata else {}
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            if size <= _CHUNK:
                self._conditional(lambda: self.client.put_object(Bucket=bucket, Key=key, Body=fh.read(),
                                                                 IfNoneMatch="*", **meta), bucket, key)
                return

            def parts(upload_id: str):
                for number, piece in enumerate(iter(lambda: fh.read(_CHUNK), b""), start=1):
                    yield number, self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                                          PartNumber=number, Body=piece)["ETag"]

            self._multipart(bucket, key, meta, parts)

    def create_bytes(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        """Write a small object to a key that must not exist yet (``AlreadyExists`` otherwise)."""
        self._conditional(lambda: self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type,
                                                         IfNoneMatch="*"), bucket, key)

    def create_by_copy(self, src_bucket: str, src_key: str, if_match: str, bucket: str, key: str,
                       metadata: dict[str, str] | None = None) -> bool:
        """Copy an object server-side to a key that must not exist yet (``AlreadyExists``
        otherwise), only while the source's ETag is ``if_match``; False when the source is gone."""
        head = self._head(src_bucket, src_key)
        if head is None:
            return False
        size = head["ContentLength"]
        meta = {"Metadata": metadata} if metadata else {}

        def parts(upload_id: str):
            # UploadPartCopy: up to 5 GiB a part; a single part may be of any size.
            step = 5 * 1024 ** 3
            for number, start in enumerate(range(0, max(size, 1), step), start=1):
                ranged = {"CopySourceRange": f"bytes={start}-{min(start + step, size) - 1}"} if size else {}
                result = self.client.upload_part_copy(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    CopySource={"Bucket": src_bucket, "Key": src_key}, CopySourceIfMatch=f'"{if_match}"', **ranged)
                yield number, result["CopyPartResult"]["ETag"]

        try:
            self._multipart(bucket, key, meta, parts)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in GONE:
                return False
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                raise PreconditionFailed(f"s3://{src_bucket}/{src_key} changed while it was copied") from exc
            raise
        return True

    def _multipart(self, bucket: str, key: str, meta: dict, parts) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=bucket, Key=key, **meta)["UploadId"]
        try:
            done = [{"PartNumber": n, "ETag": etag} for n, etag in parts(upload_id)]
            self._conditional(lambda: self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}, IfNoneMatch="*"),
                bucket, key)
        except BaseException:
            self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    def _conditional(self, write, bucket: str, key: str):
        try:
            return write()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                raise AlreadyExists(f"s3://{bucket}/{key} already exists; a publication is never written over") \
                    from None
            raise

    def _head(self, bucket: str, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in (*GONE, "404"):
                return None
            raise

    def upload_stream(self, stream, bucket: str, key: str, metadata: dict[str, str] | None = None) -> None:
        """Upload what ``stream`` (anything with ``read(n)``) yields, with boto3's managed multipart
        upload: parts of ``TRANSFER``'s size, never the whole body in memory."""
        extra = {"Metadata": metadata} if metadata else None
        self.client.upload_fileobj(stream, bucket, key, ExtraArgs=extra, Config=TRANSFER)

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str, if_match: str | None = None,
             metadata: dict[str, str] | None = None) -> bool:
        """Server-side copy (managed: multipart for large objects); ``if_match``: only the source
        with that ETag; ``metadata`` replaces the source's. False when the source is gone."""
        extra = {}
        if if_match:
            extra["CopySourceIfMatch"] = f'"{if_match}"'
        if metadata is not None:
            extra.update(Metadata=metadata, MetadataDirective="REPLACE")
        try:
            self.client.copy({"Bucket": src_bucket, "Key": src_key}, bucket, key, ExtraArgs=extra or None,
                             Config=TRANSFER)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in GONE:
                return False
            if code in ("PreconditionFailed", "412"):
                raise PreconditionFailed(f"s3://{src_bucket}/{src_key} changed while it was copied") from exc
            raise
        return True

    def put_bytes(self, bucket: str, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=body)

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""
        keys = [o.key for o in self.list_objects(bucket, prefix)]
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                              "Quiet": True})
        return len(keys)

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
