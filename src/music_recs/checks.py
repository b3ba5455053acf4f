"""Validation of values that come from outside: UI params, run conf, configuration.

Each check raises ``InvalidInput`` (a ``ValueError`` that fails its task at once) with one
readable line naming the offending value, before any work starts.
"""

from __future__ import annotations

import datetime as _dt
import re
from urllib.parse import urlparse

from music_recs.failures import InvalidInput, LandingTooLarge

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._=/-]+$")
_RUN_ID_SAFE_RE = re.compile(r"[^A-Za-z0-9._=-]")


def parse_day(value: str, what: str = "date") -> _dt.date:
    """Parse ``YYYY-MM-DD`` strictly (no times, no other formats)."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise InvalidInput(f"{what} must look like YYYY-MM-DD, got {value!r}")
    try:
        return _dt.date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"{what} {value!r} is not a calendar date: {exc}") from None


def check_bucket(name: str, what: str = "bucket") -> str:
    """``name`` if it is a valid S3 bucket name (lower case, 3-63 characters, no ``..``); ``what`` names it in the error."""
    if not isinstance(name, str) or not _BUCKET_RE.fullmatch(name) or ".." in name:
        raise InvalidInput(f"{what} {name!r} is not a valid S3 bucket name")
    return name


def check_prefix(prefix: str, what: str = "prefix") -> str:
    """A relative key prefix inside a bucket: no '..', no absolute path, no scheme."""
    if not isinstance(prefix, str) or not prefix:
        raise InvalidInput(f"{what} must be a non-empty string, got {prefix!r}")
    if prefix.startswith("/") or "://" in prefix:
        raise InvalidInput(f"{what} {prefix!r} must be relative to its bucket (no leading '/' or scheme)")
    parts = prefix.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"{what} {prefix!r} must not contain '..', '.' or empty path segments")
    if not _PREFIX_RE.fullmatch(prefix):
        raise InvalidInput(f"{what} {prefix!r} may only contain letters, digits and . _ = / -")
    return prefix.strip("/")


def safe_key_part(value: str) -> str:
    """Make a run id usable as one S3 key segment (run ids contain ':' and '+')."""
    return _RUN_ID_SAFE_RE.sub("_", value)


LAKE_SCHEMES = ("", "file", "s3a", "hdfs")


def check_lake_uri(uri: str, what: str = "lake_uri") -> str:
    """An absolute local path or a ``file://``/``s3a://``/``hdfs://`` URI, with no '..' segment."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidInput(f"{what} must be a non-empty path or URI, got {uri!r}")
    parsed = urlparse(uri)
    if parsed.scheme not in LAKE_SCHEMES:
        raise InvalidInput(f"{what} {uri!r}: scheme {parsed.scheme!r} is not one of file, s3a, hdfs")
    if not parsed.scheme and not uri.startswith("/"):
        raise InvalidInput(f"{what} {uri!r} must be an absolute path (a relative one depends on the worker's folder)")
    if any(part in ("..", ".") for part in parsed.path.split("/")):
        raise InvalidInput(f"{what} {uri!r} must not contain '..' or '.' segments")
    return uri


def check_run_conf_names_no_location(params: dict, settings: set[str]) -> None:
    """Run conf (UI trigger, CLI --conf) may set the DAG's params only, never where data is read or written."""
    named = sorted(set(params) & settings)
    if named:
        raise InvalidInput(
            f"run conf may not set {', '.join(named)}: buckets, prefixes and paths come from the configuration "
            "(MUSIC_RECS_* environment variables or the Airflow Variable music_recs_config), not from a run")


def check_landing_size(day: str, where: str, sizes: dict[str, int], max_files: int, max_gib: float) -> None:
    """A day's landing input (``sizes``: key -> bytes as stored, under ``where``) within
    ``max_files`` objects and ``max_gib`` GiB, else ``LandingTooLarge`` in one line naming the day,
    the total and its largest file: refused before a worker lists, stages or parses any of it."""
    total, limit = sum(sizes.values()), int(max_gib * 1024 ** 3)
    if len(sizes) > max_files:
        raise LandingTooLarge(f"dt={day}: {len(sizes)} landing files under {where}, more than max_landing_files="
                              f"{max_files}; merge them into fewer files or raise the setting")
    if total > limit:
        largest = max(sizes, key=sizes.get)
        raise LandingTooLarge(f"dt={day}: {total / 1024 ** 3:.1f} GiB of landing files under {where}, more than "
                              f"max_landing_gib={max_gib:g} (largest: {largest}, {sizes[largest] / 1024 ** 2:.0f} MiB); "
                              "check the upload or raise the setting")
