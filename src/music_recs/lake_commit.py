"""The commit protocol of a day's partition: what a writer and a reader decide, without any IO.

A writer of day D holds the day's lease (``_leases/dt=D.json``), writes its copy aside into fresh
``plays/dt=D/v=V/`` and ``quarantine/dt=D/v=V/`` folders, and makes it the day in one step by
writing the readers' pointer ``plays/dt=D/_COMMITTED.json`` (one PUT on S3, ``os.replace`` on a
local disk). Readers resolve a day through the pointer only, so they see the old complete copy or
the new complete one, never nothing and never a mix; a day of the old layout (no pointer, Spark's
``_SUCCESS`` directly in ``plays/dt=D/``) is read as before. Old copies are deleted after a
retention, never before the new one is committed. The IO is ``spark_jobs.lib.lake``'s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping

from music_recs.checks import parse_day
from music_recs.failures import InvalidInput
from music_recs.plan import VERSION_FOLDER, LakeLayout

DEFAULT_LEASE_SECONDS = 120.0
DEFAULT_RETENTION_HOURS = 24.0
_VERSION = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{8})$")
_VERSION_TIME = "%Y%m%dT%H%M%SZ"


# --- copies' folder names (their paths: ``LakeLayout``) --------------------------------------
def version_folder(version: str) -> str:
    return f"{VERSION_FOLDER}{version}"


def version_of_folder(name: str) -> str | None:
    """The version of a ``v=V`` folder name, None for any other name (never a copy to delete)."""
    if not name.startswith(VERSION_FOLDER):
        return None
    version = name[len(VERSION_FOLDER):]
    return version if _VERSION.match(version) else None


# --- versions ---------------------------------------------------------------------------
def new_version(now: dt.datetime, suffix: str | None = None) -> str:
    """``<UTC yyyymmddTHHMMSSZ>-<8 hex>``: sorts by when its write started, unique per attempt."""
    suffix = secrets.token_hex(4) if suffix is None else suffix
    version = f"{_utc(now, 'now').strftime(_VERSION_TIME)}-{suffix}"
    if not _VERSION.match(version):
        raise InvalidInput(f"a copy's suffix must be 8 lower-case hex digits, got {suffix!r}")
    return version


def version_started(version: str) -> dt.datetime:
    """When the write of copy ``version`` started (to the second)."""
    match = _VERSION.match(version) if isinstance(version, str) else None
    if not match:
        raise InvalidInput(f"{version!r} is not a copy's version (<yyyymmddTHHMMSSZ>-<8 hex>)")
    return dt.datetime.strptime(match[1], _VERSION_TIME).replace(tzinfo=dt.timezone.utc)


# --- records ----------------------------------------------------------------------------
def _utc(value: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise InvalidInput(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(dt.timezone.utc)


def format_time(value: dt.datetime) -> str:
    """UTC to the millisecond, as the records spell it: ``2026-11-20T10:00:00.000Z``."""
    return _utc(value, "a time").isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value, field: str, where: str) -> dt.datetime:
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            try:
                return parsed.astimezone(dt.timezone.utc)
            except OverflowError:  # year 1 or 9999 shifted past the calendar's end
                pass
    raise InvalidInput(f"{where}: {field} must be an ISO time with a zone, got {value!r}")


def _load_object(text: str | bytes, where: str, what: str) -> dict:
    try:
        values = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        values = None
    if not isinstance(values, dict):
        raise InvalidInput(f"{where} is not {what} (not a JSON object); the file is damaged or not the pipeline's")
    return values


def _text(values: Mapping, field: str, where: str) -> str:
    value = values.get(field)
    if not isinstance(value, str) or not value.strip() or len(value.splitlines()) != 1:
        raise InvalidInput(f"{where}: {field} must be a non-empty one-line string, got {value!r}")
    return value


def _count(values: Mapping, field: str, where: str) -> int:
    value = values.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where}: rows.{field} must be an int >= 0, got {value!r}")
    return value


# Both records tolerate fields they do not know: they outlive the code that wrote them (a newer
# writer may add one), and a reader that refused them would lose the day. Fields they know are
# checked strictly.
@dataclasses.dataclass(frozen=True)
class CommittedPointer:
    """The readers' pointer of a day: which copy is the day, who committed it when, its row counts."""

    version: str
    day: str
    writer: str
    committed_at: dt.datetime
    accepted: int
    quarantined: int

    def __post_init__(self):
        version_started(self.version)
        parse_day(self.day, "the pointer's day")
        object.__setattr__(self, "committed_at", _utc(self.committed_at, "committed_at"))

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "day": self.day, "writer": self.writer,
                           "committed_at": format_time(self.committed_at),
                           "rows": {"accepted": self.accepted, "quarantined": self.quarantined}}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str, day: str | None = None) -> CommittedPointer:
        """The pointer in ``text`` (the file ``where``); ``day``: the day its folder is of (it must say so)."""
        values = _load_object(text, where, "a day's pointer")
        version = values.get("version")
        if not isinstance(version, str) or not _VERSION.match(version):
            raise InvalidInput(f"{where}: version must be a copy's version (<yyyymmddTHHMMSSZ>-<8 hex>), "
                               f"got {version!r}")
        pointed_day = values.get("day")
        parse_day(pointed_day, f"{where}: day")
        if day is not None and pointed_day != day:
            raise InvalidInput(f"{where} names day {pointed_day}, not its folder's {day}")
        rows = values.get("rows")
        if not isinstance(rows, Mapping):
            raise InvalidInput(f"{where}: rows must be an object with accepted and quarantined, got {rows!r}")
        return cls(version=version, day=pointed_day, writer=_text(values, "writer", where),
                   committed_at=_parse_time(values.get("committed_at"), "committed_at", where),
                   accepted=_count(rows, "accepted", where), quarantined=_count(rows, "quarantined", where))


@dataclasses.dataclass(frozen=True)
class Lease:
    """A writer's lease: who holds it (one line a person can act on), its token, since and until when."""

    holder: str
    token: str
    acquired_at: dt.datetime
    expires_at: dt.datetime

    def __post_init__(self):
        object.__setattr__(self, "acquired_at", _utc(self.acquired_at, "acquired_at"))
        object.__setattr__(self, "expires_at", _utc(self.expires_at, "expires_at"))

    @classmethod
    def new(cls, holder: str, now: dt.datetime, seconds: float, token: str | None = None) -> Lease:
        if not isinstance(holder, str) or not holder.strip() or len(holder.splitlines()) != 1:
            raise InvalidInput(f"a lease's holder must be a non-empty one-line string, got {holder!r}")
        if not seconds > 0:
            raise InvalidInput(f"a lease must last more than 0 seconds, got {seconds}")
        now = _utc(now, "now")
        return cls(holder, token or secrets.token_hex(16), now, now + dt.timedelta(seconds=seconds))

    def renewed(self, now: dt.datetime, seconds: float) -> Lease:
        """The same lease (holder, token, since), lasting ``seconds`` from ``now``."""
        return dataclasses.replace(self, expires_at=_utc(now, "now") + dt.timedelta(seconds=seconds))

    def expired(self, now: dt.datetime) -> bool:
        return _utc(now, "now") >= self.expires_at

    def held_by(self, token: str, now: dt.datetime, margin_seconds: float = 0.0) -> bool:
        """Whether the holder of ``token`` still holds it for at least ``margin_seconds`` more."""
        return self.token == token and _utc(now, "now") + dt.timedelta(seconds=margin_seconds) < self.expires_at

    def to_json(self) -> str:
        return json.dumps({"holder": self.holder, "token": self.token, "acquired_at": format_time(self.acquired_at),
                           "expires_at": format_time(self.expires_at)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Lease:
        values = _load_object(text, where, "a writer's lease")
        return cls(holder=_text(values, "holder", where), token=_text(values, "token", where),
                   acquired_at=_parse_time(values.get("acquired_at"), "acquired_at", where),
                   expires_at=_parse_time(values.get("expires_at"), "expires_at", where))

    @classmethod
    def unreadable(cls, where: str, modified_at: dt.datetime, seconds: float) -> Lease:
        """What to make of a lease file that does not parse: held by nobody known until ``seconds``
        after it was last written, then expired like any other (a writer killed while writing it
        on a filesystem without atomic create must not block the day for ever)."""
        return cls(f"an unreadable lease ({where})", "", modified_at, _utc(modified_at, "modified_at")
                   + dt.timedelta(seconds=seconds))


class LeaseAction(enum.Enum):
    CREATE = "create"        # no lease: create one (only if none appears meanwhile)
    TAKE_OVER = "take_over"  # replace the one found (only if it is still the one found)
    BUSY = "busy"            # someone else holds it


def lease_action(current: Lease | None, holder: str, now: dt.datetime) -> LeaseAction:
    """What a writer named ``holder`` does about the lease ``current`` it found.

    Its own lease it takes over at once: the holder names one task of one DAG run (or one CLI
    process), and Airflow runs one try of a task at a time, so a lease of the same holder is
    that of an earlier try killed before it released it. Anyone else's it takes over once expired.
    """
    if current is None:
        return LeaseAction.CREATE
    if current.holder == holder or current.expired(now):
        return LeaseAction.TAKE_OVER
    return LeaseAction.BUSY


# --- resolving a day --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CommittedCopy:
    """The copy of a day readers see: its plays and quarantine folders; ``pointer`` None for a day
    of the old layout (its files directly in ``plays/dt=D/`` and ``quarantine/dt=D/``)."""

    day: str
    plays: str
    quarantine: str
    pointer: CommittedPointer | None

    @property
    def version(self) -> str | None:
        return None if self.pointer is None else self.pointer.version


def committed_copy(root: str, day: str, read: Callable[[str], str | bytes | None]) -> CommittedCopy | None:
    """The committed copy of day D of the lake at ``root``, None when the day is not committed.

    read(uri): the content of the lake file ``uri``, None when there is none. A pointer that does
    not parse fails with ``InvalidInput`` naming it (a damaged pointer is not an absent day).
    """
    lake = LakeLayout(root)
    where = lake.committed_pointer(day)
    text = read(where)
    if text is not None:
        pointer = CommittedPointer.from_json(text, where, day)
        return CommittedCopy(day, lake.plays_copy(day, pointer.version), lake.quarantine_copy(day, pointer.version),
                             pointer)
    if read(lake.legacy_marker(day)) is not None:
        return CommittedCopy(day, lake.plays(day), lake.quarantine(day), None)
    return None


# --- retention --------------------------------------------------------------------------
def copies_to_delete(versions: Iterable[str | None], current: CommittedPointer, now: dt.datetime,
                     retention_hours: float) -> list[str | None]:
    """Which copies of a day to delete now: never the current one; another once no reader can be
    on it for ``retention_hours`` (None in ``versions``: the files of the old layout).

    A copy started before the current one was committed may have been the day until then, so
    readers may be on it until ``committed_at``; one started later was never committed, nobody
    reads it, it is kept ``retention_hours`` from its start. The pointer keeps no history, so
    ``committed_at`` bounds when any older copy stopped being the day: late, never early.
    """
    if retention_hours < 0:
        raise InvalidInput(f"retention_hours must be >= 0, got {retention_hours}")
    now, keep = _utc(now, "now"), dt.timedelta(hours=retention_hours)
    out = []
    for version in versions:
        if version == current.version:
            continue
        started = None if version is None else version_started(version)
        last_read = current.committed_at if started is None or started <= current.committed_at else started
        if now - last_read >= keep:
            out.append(version)
    return sorted(out, key=lambda v: (v is not None, v or ""))
