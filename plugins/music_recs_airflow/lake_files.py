"""The Airflow side's view of the lake's files, on a local disk or on S3.

A lake location is a local path (``/data/lake/...``), a ``file://`` URI or ``s3a://bucket/key``;
``s3a://`` maps to the object ``key`` in ``bucket`` of the S3 connection (``aws_default``: the
one ``S3Store.from_airflow`` reads, the one the Spark jobs get their credentials from). The
tasks use ``LakeFiles`` for what they do to the lake outside Spark: size an input, stream a
file out, copy an S3 object in, put a small file, clear a folder, check the bucket is there.

A folder on S3 is every key under ``key/``; Spark's empty "directory marker" objects (keys ending
in ``/``) are not files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlparse

from music_recs.failures import InvalidInput
from music_recs.plan import local_path
from music_recs_airflow.s3 import S3Store


_CHUNK = 8 * 1024 * 1024
SCHEMES = ("", "file", "s3a")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def folder(self) -> str:
        """The key prefix of the folder at this location (``key/``; the whole bucket: "")."""
        return f"{self.key.rstrip('/')}/" if self.key.strip("/") else ""


def is_local(uri: str) -> bool:
    return local_path(uri) is not None


def s3_location(uri: str) -> S3Location:
    """``s3a://bucket/key`` as a bucket and a key (no leading ``/``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3a" or not parsed.netloc:
        raise InvalidInput(f"{uri!r} is not an s3a://bucket/key location")
    return S3Location(parsed.netloc, parsed.path.lstrip("/"))


def check_scheme(uri: str, what: str = "lake_uri") -> None:
    """The Airflow side reads and writes local folders and ``s3a://``; ``hdfs://`` (or another
    scheme) it cannot reach without a Hadoop client."""
    scheme = urlparse(uri).scheme
    if scheme not in SCHEMES:
        raise InvalidInput(f"{what} {uri!r}: the Airflow side reads and writes a local folder, file:// or s3a:// "
                           f"only, not {scheme}://")


@dataclass(frozen=True, order=True)
class LakeFile:
    uri: str
    size: int

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


class ChainedReader:
    """One binary stream made of several, opened one at a time when the previous one is used up (at
    most one is open; nothing is joined in memory beyond one ``read``). ``read(n)`` returns ``n``
    bytes until the last stream ends, across stream boundaries, as a multipart upload needs (every
    part but the last of the same size). ``openers``: callables that open each stream."""

    def __init__(self, openers: Iterable[Callable[[], object]]):
        self._openers = iter(openers)
        self._current = None

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        chunks, wanted = [], n
        while n < 0 or wanted > 0:
            if self._current is None:
                opener = next(self._openers, None)
                if opener is None:
                    break
                self._current = opener()
            data = self._current.read(wanted if n >= 0 else _CHUNK)
            if not data:
                self._current.close()
                self._current = None
                continue
            chunks.append(data)
            wanted -= len(data)
        return b"".join(chunks)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LakeFiles:
    """Files under lake locations (see the module doc).

    store: the S3 store for ``s3a://`` locations; None: made from the Airflow connection
    ``conn_id`` when an ``s3a://`` location is first used (a local lake never needs one)."""

    def __init__(self, store: S3Store | None = None, conn_id: str = "aws_default"):
        self._store, self.conn_id = store, conn_id

    @property
    def store(self) -> S3Store:
        if self._store is None:
            self._store = S3Store.from_airflow(self.conn_id)
        return self._store

    # --- reading --------------------------------------------------------------------------
    def files(self, uri: str, recursive: bool = True) -> list[LakeFile]:
        """Every file under the folder ``uri`` (``recursive``: sub-folders' too), by name; none when
        it is absent."""
        path = local_path(uri)
        if path is not None:
            if recursive:
                found = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
            else:
                found = [e.path for e in os.scandir(path) if e.is_file()] if os.path.isdir(path) else []
            return sorted(LakeFile(p, os.path.getsize(p)) for p in found)
        loc = s3_location(uri)
        root = uri.rstrip("/")
        found = [(o.key[len(loc.folder):], o.size) for o in self.store.list_objects(loc.bucket, loc.folder)
                 if not o.key.endswith("/")]
        return sorted(LakeFile(f"{root}/{rel}", size) for rel, size in found if recursive or "/" not in rel)

    def total_bytes(self, uri: str) -> int:
        return sum(f.size for f in self.files(uri))

    def largest_bytes(self, uri: str) -> int:
        return max((f.size for f in self.files(uri)), default=0)

    def open(self, uri: str):
        """A file's content as a binary stream, read in chunks (close it). ``FileNotFoundError`` when absent."""
        path = local_path(uri)
        if path is not None:
            return open(path, "rb")
        loc = s3_location(uri)
        return self.store.open(loc.bucket, loc.key)

    def read_bytes(self, uri: str) -> bytes | None:
        """A small file's bytes (a pointer, a record), None when it is absent."""
        try:
            with self.open(uri) as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    # --- writing --------------------------------------------------------------------------
    def sha256(self, uri: str) -> tuple[int, str]:
        """Size and SHA-256 of the lake file ``uri``, read as a stream."""
        digest, size = hashlib.sha256(), 0
        with self.open(uri) as fh:
            for piece in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(piece)
                size += len(piece)
        return size, digest.hexdigest()

    def put_bytes(self, uri: str, body: bytes) -> None:
        """Write a small file whole (local: through a temporary file and a rename)."""
        path = local_path(uri)
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(body)
            os.replace(tmp, path)
            return
        loc = s3_location(uri)
        self.store.put_bytes(loc.bucket, loc.key, body)

    def remove(self, uri: str) -> None:
        """Remove the folder ``uri`` and everything under it (nothing when it is absent)."""
        path = local_path(uri)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
            return
        loc = s3_location(uri)
        if not loc.folder:
            raise InvalidInput(f"refusing to remove a whole bucket ({uri})")
        self.store.delete_prefix(loc.bucket, loc.folder)

    def copy_in(self, bucket: str, key: str, uri: str) -> bool:
        """Copy the S3 object ``s3://bucket/key`` to the lake file ``uri``: a server-side copy to an
        ``s3a://`` lake, a streamed download to a local one. False when the object is gone."""
        path = local_path(uri)
        if path is None:
            loc = s3_location(uri)
            return self.store.copy(bucket, key, loc.bucket, loc.key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            body = self.store.open(bucket, key)
        except FileNotFoundError:
            return False
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with body, open(tmp, "wb") as fh:
                shutil.copyfileobj(body, fh, _CHUNK)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return True

    def upload(self, files: list[str], bucket: str, key: str) -> None:
        """Upload the lake files ``files``, one after the other, as the one object ``s3://bucket/key``:
        streamed with boto3's managed multipart upload, never joined in memory."""
        with ChainedReader([lambda uri=uri: self.open(uri) for uri in files]) as stream:
            self.store.upload_stream(stream, bucket, key)

    # --- is it there ----------------------------------------------------------------------
    def check(self, uri: str, what: str = "lake_uri") -> None:
        """For an ``s3a://`` location, fail in seconds and one line when its bucket cannot be used
        (``S3Store.check_bucket``); a local one needs nothing."""
        check_scheme(uri, what)
        if not is_local(uri):
            self.store.check_bucket(s3_location(uri).bucket, f"{what} {uri}")

