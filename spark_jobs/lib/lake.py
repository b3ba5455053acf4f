"""The lake's days on disk: resolving them through their pointer, reading them, and writing one
under the commit protocol of ``music_recs.lake_commit`` (leases, the pointer, retention).

Readers (``present_days``, ``read_plays``, ``read_day``, ``committed``) see a day only through
its pointer ``plays/dt=D/_COMMITTED.json`` (or, for a day of the old layout, Spark's ``_SUCCESS``
directly in the day folder). Listing, reading and deleting go through the session's Hadoop
filesystem, so a local folder and ``s3a://`` are read alike. The two writes that must be atomic
and conditional, a lease and the pointer, go to the filesystem itself: on a local disk
``os.link`` (create only if absent) and ``os.replace``; on S3 one ``put_object`` with
``IfNoneMatch="*"`` (create only if absent) or ``IfMatch=<etag>`` (replace only what was read),
through boto3 on the same endpoint and keys as S3A.
"""

from __future__ import annotations

import datetime as dt
import functools
import getpass
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from music_recs import lake_commit as C
from music_recs import schema as S
from music_recs.failures import InvalidInput, LakeBusy
from music_recs.plan import COMMITTED_POINTER, LakeLayout, local_path

log = logging.getLogger("music_recs.lake")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def process_holder() -> str:
    """Who this process is, for a lease no task named: ``user@host pid N``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


# --- the Hadoop filesystem (both schemes) ---------------------------------------------------
def _hadoop(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def _not_found(exc: Exception) -> bool:
    java = getattr(exc, "java_exception", None)
    return java is not None and java.getClass().getName() == "java.io.FileNotFoundException"


def read_bytes(spark: SparkSession, uri: str) -> bytes | None:
    """The content of the small lake file ``uri``, None when there is none."""
    from py4j.protocol import Py4JJavaError

    fs, path = _hadoop(spark, uri)
    try:
        stream = fs.open(path)
    except Py4JJavaError as exc:
        if _not_found(exc):
            return None
        raise
    try:
        return bytes(stream.readAllBytes())
    finally:
        stream.close()


@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool
    modified_at: dt.datetime


def list_folder(spark: SparkSession, uri: str) -> list[Entry]:
    """What is directly in the folder ``uri`` (nothing when it does not exist)."""
    fs, path = _hadoop(spark, uri)
    if not fs.exists(path):
        return []
    return [Entry(s.getPath().getName(), bool(s.isDirectory()),
                  dt.datetime.fromtimestamp(s.getModificationTime() / 1000, dt.timezone.utc))
            for s in fs.listStatus(path)]


def delete(spark: SparkSession, uri: str) -> None:
    fs, path = _hadoop(spark, uri)
    fs.delete(path, True)


# --- readers ----------------------------------------------------------------------------
def committed(spark: SparkSession, lake: LakeLayout, day: str) -> C.CommittedCopy | None:
    """The committed copy of ``day`` (``lake_commit.committed_copy``), None when the day is not committed."""
    return C.committed_copy(lake.root, day, functools.partial(read_bytes, spark))


def present_days(spark: SparkSession, lake: LakeLayout, days: list[dt.date]) -> list[dt.date]:
    """The days of ``days`` that have a committed copy of accepted plays in the lake."""
    return [d for d in days if committed(spark, lake, d.isoformat()) is not None]


def day_rows(spark: SparkSession, lake: LakeLayout, day: dt.date) -> int:
    """The accepted plays of a committed day: from its pointer (a day of the old layout: its
    Parquet footers, no scan)."""
    copy = committed(spark, lake, day.isoformat())
    if copy is None:
        raise FileNotFoundError(f"dt={day} has no committed accepted plays in {lake.root}")
    return copy.pointer.accepted if copy.pointer else spark.read.parquet(copy.plays).count()


def read_day(spark: SparkSession, lake: LakeLayout, day: str) -> DataFrame:
    """The accepted plays of the committed copy of ``day`` (no ``dt`` column); one line when there is none."""
    copy = committed(spark, lake, day)
    if copy is None:
        raise FileNotFoundError(f"dt={day} has no committed accepted plays in {lake.root} "
                                "(no plays/dt=D/_COMMITTED.json, nor _SUCCESS of the old layout); ingest it first")
    return spark.read.parquet(copy.plays)


def read_plays(spark: SparkSession, lake: LakeLayout, days: list[dt.date]) -> DataFrame:
    """The committed plays of ``days`` (all of them committed: ``present_days``), with ``dt`` (a
    string). One read per day with its ``dt`` a literal: a filter on ``dt`` drops whole days
    before any file is opened, as partition pruning did."""
    if not days:
        raise ValueError("read_plays needs at least one day")
    frames = [read_day(spark, lake, d.isoformat()).withColumn(S.DT, F.lit(d.isoformat())) for d in days]
    return functools.reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), frames)


# --- the two atomic writes ----------------------------------------------------------------
@dataclass(frozen=True)
class Found:
    """A small file as read: its bytes and what a conditional write must name to replace exactly
    it (S3: its ETag; a local file: its bytes)."""

    raw: bytes
    tag: str | bytes
    modified_at: dt.datetime


class LocalFiles:
    """Atomic small files on a local (or shared) disk.

    A file is created with its whole content by writing it aside and ``os.link``-ing it in: the
    link fails if the name exists, so exactly one creator wins and nobody ever reads a half
    written lease (what ``O_CREAT|O_EXCL`` followed by a write would show for a moment, and leave
    behind after a kill); link is also the create that stays atomic on NFS. Where the filesystem
    has no hard links, ``O_CREAT|O_EXCL`` it is.
    """

    def read(self, uri: str) -> Found | None:
        path = local_path(uri)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
                modified = os.fstat(fh.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return Found(raw, raw, dt.datetime.fromtimestamp(modified, dt.timezone.utc))

    def _aside(self, path: str, text: str) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Hidden (Spark skips names starting with "_" or "."), and unique per writer and attempt.
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}."
                                                  f"{threading.get_ident()}.{os.urandom(4).hex()}.tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def create(self, uri: str, text: str) -> str | bytes | None:
        """Create ``uri`` holding ``text`` unless it exists; its tag, or None when it existed."""
        path = local_path(uri)
        tmp = self._aside(path, text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError:  # no hard links here
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        finally:
            os.remove(tmp)
        return text.encode()

    def take(self, uri: str, tag: bytes) -> bool:
        """Remove ``uri`` if it still holds ``tag`` (the bytes read); False (and left as found) if not.

        The file is renamed to a unique name first, which exactly one contender can do; the one
        that moved it checks it moved what it read, and puts anything else back."""
        path = local_path(uri)
        moved = f"{os.path.dirname(path)}/.{os.path.basename(path)}.taken.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            os.rename(path, moved)
        except FileNotFoundError:
            return False
        try:
            with open(moved, "rb") as fh:
                if fh.read() == tag:
                    return True
            try:
                os.link(moved, path)  # someone else's: back where it was, unless a newer one is there
            except FileExistsError:
                pass
            return False
        finally:
            os.remove(moved)

    def replace_if(self, uri: str, text: str, tag: bytes) -> str | bytes | None:
        """Replace ``uri`` (holding ``tag``) by ``text``: the new tag, or None when it changed.

        The check and the replace are two steps here: callers only replace what nobody else may
        touch meanwhile (a lease they hold with time to spare)."""
        path = local_path(uri)
        found = self.read(uri)
        if found is None or found.tag != tag:
            return None
        os.replace(self._aside(path, text), path)
        return text.encode()

    def replace(self, uri: str, text: str, tag: bytes | None) -> None:
        """Write ``uri`` in one step (``os.replace``); ``tag`` is not checked (the lease protects it)."""
        path = local_path(uri)
        os.replace(self._aside(path, text), path)


_CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404")


class S3Files:
    """Atomic small files on S3: every write one PUT, conditional on the ETag read (or on none)."""

    def __init__(self, client):
        self.client = client

    @staticmethod
    def _where(uri: str) -> tuple[str, str]:
        parsed = urlparse(uri)
        return parsed.netloc, parsed.path.lstrip("/")

    @staticmethod
    def _conflict(exc) -> bool:
        return exc.response.get("Error", {}).get("Code") in _CONFLICT

    def read(self, uri: str) -> Found | None:
        bucket, key = self._where(uri)
        try:
            got = self.client.get_object(Bucket=bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return Found(got["Body"].read(), got["ETag"], got["LastModified"].astimezone(dt.timezone.utc))

    def _put(self, uri: str, text: str, **condition) -> str | None:
        from botocore.exceptions import ClientError

        bucket, key = self._where(uri)
        try:
            return self.client.put_object(Bucket=bucket, Key=key, Body=text.encode(),
                                          ContentType="application/json", **condition)["ETag"]
        except ClientError as exc:
            if self._conflict(exc):
                return None
            raise

    def create(self, uri: str, text: str) -> str | None:
        return self._put(uri, text, IfNoneMatch="*")

    def replace_if(self, uri: str, text: str, tag: str) -> str | None:
        return self._put(uri, text, IfMatch=tag)

    def take(self, uri: str, tag: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = self._where(uri)
        try:
            self.client.delete_object(Bucket=bucket, Key=key, IfMatch=tag)
        except ClientError as exc:
            if self._conflict(exc):
                return False
            raise
        return True

    def replace(self, uri: str, text: str, tag: str | None) -> None:
        """Write ``uri`` in one PUT, only over the version ``tag`` (None: only if there is none)."""
        if (self._put(uri, text, IfMatch=tag) if tag else self.create(uri, text)) is None:
            raise _Changed(uri)


class _Changed(Exception):
    """A conditional write found the file changed since it was read."""


def s3_client(spark: SparkSession):
    """boto3's S3 client on the endpoint, region and keys S3A uses (the session's ``fs.s3a.*``);
    what S3A leaves unset, boto3 finds as it always does (the instance's or pod's role)."""
    import boto3
    from botocore.config import Config

    conf = spark.sparkContext._jsc.hadoopConfiguration()
    endpoint, options = conf.get("fs.s3a.endpoint"), {}
    if endpoint:
        if "://" not in endpoint:
            secure = (conf.get("fs.s3a.connection.ssl.enabled") or "true").lower() == "true"
            endpoint = f"{'https' if secure else 'http'}://{endpoint}"
        options["endpoint_url"] = endpoint
    if conf.get("fs.s3a.endpoint.region"):
        options["region_name"] = conf.get("fs.s3a.endpoint.region")
    if conf.get("fs.s3a.access.key") and conf.get("fs.s3a.secret.key"):
        options.update(aws_access_key_id=conf.get("fs.s3a.access.key"),
                       aws_secret_access_key=conf.get("fs.s3a.secret.key"),
                       aws_session_token=conf.get("fs.s3a.session.token") or None)
    path_style = (conf.get("fs.s3a.path.style.access") or "false").lower() == "true"
    config = Config(s3={"addressing_style": "path" if path_style else "auto"},
                    retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=30)
    return boto3.client("s3", config=config, **options)


def atomic_files(spark: SparkSession, lake: LakeLayout) -> LocalFiles | S3Files:
    """How the lake at ``lake.root`` writes a lease or a pointer atomically."""
    scheme = urlparse(lake.root).scheme
    if scheme in ("", "file"):
        return LocalFiles()
    if scheme in ("s3a", "s3"):
        return S3Files(s3_client(spark))
    raise InvalidInput(f"lake_uri {lake.root}: the day commit (a lease and a pointer written atomically) "
                       "works on a local or shared folder and on s3a://, not on a {scheme}:// lake")


# --- leases -------------------------------------------------------------------------------
class HeldLease:
    """A writer's lease on ``uri`` (``_leases/dt=D.json``, ``_leases/ids.json``): taken by
    ``acquire`` (``LakeBusy`` when someone else holds it), renewed every quarter of its
    ``seconds`` by a background thread, confirmed by ``confirm`` right before a commit, released
    by ``release``. Use as a context manager.

    A lease's times are its writer's clock: hosts are assumed to agree within seconds (NTP), small
    against a lease of minutes.
    """

    def __init__(self, files: LocalFiles | S3Files, uri: str, what: str, holder: str,
                 seconds: float = C.DEFAULT_LEASE_SECONDS):
        self.files, self.uri, self.what, self.holder, self.seconds = files, uri, what, holder, seconds
        self.lease: C.Lease | None = None
        self.tag = None
        self.lost: LakeBusy | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # What is there now, and who it names.
    def _current(self) -> tuple[C.Lease | None, Found | None]:
        found = self.files.read(self.uri)
        if found is None:
            return None, None
        try:
            return C.Lease.from_json(found.raw, self.uri), found
        except InvalidInput:
            return C.Lease.unreadable(self.uri, found.modified_at, self.seconds), found

    def _busy(self, lease: C.Lease | None) -> LakeBusy:
        if lease is None:
            return LakeBusy(self.what, "nobody now (this writer's lease was removed)", "-", "-")
        return LakeBusy(self.what, lease.holder, C.format_time(lease.acquired_at), C.format_time(lease.expires_at))

    def acquire(self) -> HeldLease:
        # A contender that loses a race (create or take-over) looks again: the winner's lease is
        # then there to name; a few rounds cover a lease released between two looks.
        for _ in range(5):
            now = utc_now()
            current, found = self._current()
            action = C.lease_action(current, self.holder, now)
            if action is C.LeaseAction.BUSY:
                raise self._busy(current)
            mine = C.Lease.new(self.holder, now, self.seconds)
            if action is C.LeaseAction.CREATE:
                tag = self.files.create(self.uri, mine.to_json())
            elif isinstance(self.files, S3Files):
                tag = self.files.replace_if(self.uri, mine.to_json(), found.tag)
            else:
                tag = self.files.create(self.uri, mine.to_json()) if self.files.take(self.uri, found.tag) else None
            if tag is not None:
                if current is not None:
                    log.warning("%s: took over the lease of %s (since %s, until %s)", self.what, current.holder,
                                C.format_time(current.acquired_at), C.format_time(current.expires_at))
                self.lease, self.tag = mine, tag
                self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.what}", daemon=True)
                self._thread.start()
                return self
        current, _ = self._current()
        raise self._busy(current)

    def _renew(self) -> None:
        """Extend the lease by ``seconds`` from now, if still held with time to spare, else note it lost."""
        with self._lock:
            if self.lost is not None:
                return
            now = utc_now()
            # The local check-then-replace must not meet a take-over: only a lease with an eighth of
            # its time left is renewed (a take-over needs it expired); S3's IfMatch needs no margin.
            margin = self.seconds / 8 if isinstance(self.files, LocalFiles) else 0.0
            tag = None
            if self.lease.held_by(self.lease.token, now, margin):
                renewed = self.lease.renewed(now, self.seconds)
                tag = self.files.replace_if(self.uri, renewed.to_json(), self.tag)
            if tag is None:
                self.lost = self._busy(self._current()[0])
                log.error("%s: lease lost: %s", self.what, self.lost)
            else:
                self.lease, self.tag = renewed, tag

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                self._renew()
            except Exception as exc:  # a network error: try again next round, until the lease ends
                log.warning("%s: could not renew the lease: %s", self.what, exc)
            if self.lost is not None:
                return

    def confirm(self) -> None:
        """Right before a commit: renew now; ``LakeBusy`` (naming who holds it) when the lease was lost."""
        self._renew()
        if self.lost is not None:
            raise self.lost

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self.lost is None and self.tag is not None:
                try:
                    self.files.take(self.uri, self.tag)
                except Exception as exc:  # it expires anyway
                    log.warning("%s: could not release the lease (it ends at %s): %s", self.what,
                                C.format_time(self.lease.expires_at), exc)
            self.tag = None

    def __enter__(self) -> HeldLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def day_lease(spark: SparkSession, lake: LakeLayout, day: str, holder: str = "",
              seconds: float = C.DEFAULT_LEASE_SECONDS) -> HeldLease:
    """Day D's writer lease (not yet acquired)."""
    return HeldLease(atomic_files(spark, lake), lake.day_lease(day), f"dt={day}",
                     holder or process_holder(), seconds)


def ids_lease(spark: SparkSession, lake: LakeLayout, holder: str = "",
              seconds: float = C.DEFAULT_LEASE_SECONDS) -> HeldLease:
    """The id index's writer lease (not yet acquired)."""
    return HeldLease(atomic_files(spark, lake), lake.ids_lease, "the id index",
                     holder or process_holder(), seconds)


# --- a writer's day ---------------------------------------------------------------------------
class DayWrite:
    """One writer's new copy of a day: its folders (``plays``, ``quarantine``), then ``commit``.

    Made by ``writing_day``, which holds the day's lease throughout. The pointer seen when the
    lease was taken is what the commit replaces: on S3 the PUT is conditional on it, so even a
    writer whose lease was somehow lost cannot replace a copy committed meanwhile.
    """

    def __init__(self, spark: SparkSession, lake: LakeLayout, day: str, lease: HeldLease, retention_hours: float):
        self.spark, self.lake, self.day, self.lease = spark, lake, day, lease
        self.retention_hours = retention_hours
        self.version = C.new_version(utc_now())
        self.plays = lake.plays_copy(day, self.version)
        self.quarantine = lake.quarantine_copy(day, self.version)
        self._pointer_uri = lake.committed_pointer(day)
        found = lease.files.read(self._pointer_uri)
        self._pointer_tag = None if found is None else found.tag
        self.committed: C.CommittedPointer | None = None

    def commit(self, accepted: int, quarantined: int) -> C.CommittedPointer:
        """Make this copy the day in one step, then delete the copies the retention lets go."""
        pointer = C.CommittedPointer(version=self.version, day=self.day, writer=self.lease.holder,
                                     committed_at=utc_now(), accepted=accepted, quarantined=quarantined)
        self.lease.confirm()
        try:
            self.lease.files.replace(self._pointer_uri, pointer.to_json(), self._pointer_tag)
        except _Changed:
            found = self.lease.files.read(self._pointer_uri)
            other = C.CommittedPointer.from_json(found.raw, self._pointer_uri, self.day) if found else None
            raise LakeBusy(f"dt={self.day}", other.writer if other else "another writer",
                           C.format_time(other.committed_at) if other else "-", "committed") from None
        self.committed = pointer
        log.info("dt=%s: committed copy %s (%d accepted, %d quarantined)", self.day, self.version, accepted,
                 quarantined)
        clean_up(self.spark, self.lake, pointer, self.retention_hours)
        return pointer


@contextmanager
def writing_day(spark: SparkSession, lake: LakeLayout, day: str, holder: str = "",
                lease_seconds: float = C.DEFAULT_LEASE_SECONDS,
                retention_hours: float = C.DEFAULT_RETENTION_HOURS) -> Iterator[DayWrite]:
    """Hold day D's lease (``LakeBusy`` when another writer does) while a new copy is written aside;
    the copy is the day only once ``DayWrite.commit`` ran. Nothing is deleted before that."""
    with day_lease(spark, lake, day, holder, lease_seconds) as lease:
        yield DayWrite(spark, lake, day, lease, retention_hours)


def _legacy_files(entries: list[Entry]) -> list[str]:
    """The files a day folder of the old layout holds directly (not the pointer, not a copy)."""
    return [e.name for e in entries if not e.is_dir and not e.name.startswith(COMMITTED_POINTER)
            and not e.name.startswith(f".{COMMITTED_POINTER}")]


def clean_up(spark: SparkSession, lake: LakeLayout, pointer: C.CommittedPointer, retention_hours: float,
             now: dt.datetime | None = None) -> list[str | None]:
    """Delete day D's copies ``lake_commit.copies_to_delete`` lets go (None: the old layout's files);
    they are returned. Run by the day's writer while it holds the lease."""
    day = pointer.day
    folders = (lake.plays(day), lake.quarantine(day))
    listed = {folder: list_folder(spark, folder) for folder in folders}
    versions: set[str | None] = {v for entries in listed.values() for e in entries if e.is_dir
                                 for v in [C.version_of_folder(e.name)] if v}
    if any(_legacy_files(entries) for entries in listed.values()):
        versions.add(None)
    gone = C.copies_to_delete(versions, pointer, now or utc_now(), retention_hours)
    for version in gone:
        for folder in folders:
            if version is None:
                for name in _legacy_files(listed[folder]):
                    delete(spark, f"{folder}/{name}")
            else:
                delete(spark, f"{folder}/{C.version_folder(version)}")
    if gone:
        log.info("dt=%s: deleted %d older copie(s) past the %sh retention: %s", day, len(gone), retention_hours,
                 ", ".join(v or "the old layout's files" for v in gone))
    return gone
