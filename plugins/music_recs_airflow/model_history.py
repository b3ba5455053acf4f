"""Where the model's history is read from: the publications in the models bucket.

The decisions over it are the core's (``music_recs.history``); this module only finds and reads
manifests, once per task: the one behind the ``latest`` pointer (checksum checked) and those
published for days before the run's, newest first (by day, then publication time), read lazily
so a decision that takes the newest reads one manifest.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

from music_recs.manifest import Manifest
from music_recs_airflow.lake_files import LakeFiles
from music_recs_airflow.publish import (MANIFEST, PUBLICATION, NothingPublished, PublishError, read_latest,
                                        read_manifest)
from music_recs_airflow.s3 import S3Store

log = logging.getLogger(__name__)


class ModelHistory:
    """The publications of ``bucket`` under ``models_prefix``, seen from a run of ``day``.

    store: the S3 store (None: nothing published, e.g. a run without a model store);
    pointer_key: the ``latest`` pointer's key; allow_rewind: accept a pointer moved back
    (``publish.read_latest``; the run's ``allow_pointer_rewind``)."""

    def __init__(self, store: S3Store | None, bucket: str, models_prefix: str, pointer_key: str, day: str,
                 allow_rewind: bool = False):
        self.store, self.bucket, self.prefix, self.pointer_key, self.day = store, bucket, models_prefix, pointer_key, day
        self.allow_rewind = allow_rewind
        self._read: dict[str, Manifest | None] = {}

    @functools.cached_property
    def published(self) -> Manifest | None:
        """The model behind the pointer, or None when nothing is published."""
        if self.store is None:
            return None
        try:
            pointer, manifest = read_latest(self.store, self.bucket, self.pointer_key, self.allow_rewind)
        except NothingPublished as exc:
            log.info("%s", exc)
            return None
        except PublishError as exc:  # refused by a check: say so, and go on without it
            log.warning("the published model is not used: %s", exc)
            return None
        return Manifest.from_dict(manifest, pointer["manifest_key"])

    @functools.cached_property
    def _earlier_keys(self) -> list[str]:
        if self.store is None:
            return []
        root = f"{self.prefix}/dt="
        found = []
        for obj in self.store.list_objects(self.bucket, root):
            parts = obj.key[len(root):].split("/")
            # {day}/run={key}/publish={UTC time}/manifest.json
            if len(parts) == 4 and parts[3] == MANIFEST and parts[2].startswith(PUBLICATION) and parts[0] < self.day:
                found.append((parts[0], parts[2], obj.key))
        return [key for *_, key in sorted(found, reverse=True)]

    def earlier(self) -> Iterator[Manifest]:
        """Manifests published for days before the run's, newest first; unreadable ones are skipped
        with a warning. Never the run's own day or a later one: a rerun of day D must not depend on
        what was published for D or after it."""
        for key in self._earlier_keys:
            if key not in self._read:
                self._read[key] = self._manifest(key)
            if self._read[key] is not None:
                yield self._read[key]

    def _manifest(self, key: str) -> Manifest | None:
        """An earlier publication's manifest (``publish.read_manifest``), None when refused."""
        try:
            return Manifest.from_dict(read_manifest(self.store, self.bucket, key, self.prefix), key)
        except PublishError as exc:
            log.warning("skipping an earlier publication: %s", exc)
            return None

    def stage_factors(self, model: Manifest, dest: str, files: LakeFiles | None = None) -> str | None:
        """Copy a publication's ``user_factors`` and ``item_factors`` into the lake folder ``dest``
        (local, or ``s3a://``: server-side copies), where the run's Spark job reads them, and check
        each copy's size and SHA-256 against the manifest. None when staged; else why not, in one
        line (an object gone, or not what the manifest says). ``files``: the lake's (default:
        through this history's store)."""
        files = files or LakeFiles(self.store)
        files.remove(dest)  # a rerun must not see a previous copy
        objects = [o for o in model.objects if o.get("artifact") in ("user_factors", "item_factors")]
        if {o["artifact"] for o in objects} != {"user_factors", "item_factors"}:
            return f"the model of dt={model.day} lists no user and item factors"
        for obj in objects:
            uri = f"{dest}/{obj['artifact']}/{obj['key'].rsplit('/', 1)[-1]}"
            if not files.copy_in(self.bucket, obj["key"], uri):
                return f"s3://{self.bucket}/{obj['key']} of the model of dt={model.day} is gone"
            if files.sha256(uri) != (obj["size"], obj["sha256"]):
                files.remove(dest)
                return f"s3://{self.bucket}/{obj['key']} does not match its manifest (size or SHA-256); refused"
        return None
