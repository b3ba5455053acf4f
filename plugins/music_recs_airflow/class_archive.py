"""Class-data sharing for the driver JVM of a spark-submit: a shorter start for every job.

A Spark driver loads some 15 000 classes from Spark's jars before its first job, and each
spark-submit parses and verifies them again: a trivial job takes ~12 s here, ~3.5 s of it in
class loading that the JVM can skip by mapping the classes from an archive (AppCDS: JDK 13+
writes one at exit with ``-XX:ArchiveClassesAtExit`` and maps it with ``-XX:SharedArchiveFile``).
The first job submitted on a machine writes the archive (its JVM takes ~15 s longer to exit,
once); every later job maps it.

An archive fits one JDK and one class path, so each is kept under a key: a digest of the JDK
(its location and ``release`` file), Spark's jars (names and sizes), the class path settings
and whether the heap is past 32 GiB (compressed pointers off). An upgrade makes a new key, and
the least recently used archives beyond ``KEEP`` are removed. The JVM checks an archive itself
and runs without it when it does not fit (one warning in the job's log, never a failure); such
an archive is marked unusable and never written again for its key. A file that is not an archive
at all (damaged on disk) is written again by the next job.

Only the driver: a cluster's executors start in JVMs of their workers, with their class path.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

SUFFIX = ".jsa"
UNUSABLE = ".unusable"
STALE_S = 24 * 3600
KEEP = 3  # archives kept per folder (~150-180 MiB each), most recently used first
# What the JVM prints (tags cds,dynamic) when it cannot map an archive.
REJECTED = "Unable to use shared archive"
DYNAMIC_MAGIC = (0xF00BABA8).to_bytes(4, "little")  # HotSpot's CDS_DYNAMIC_ARCHIVE_MAGIC (x86, arm: little-endian)
COMPRESSED_OOPS_LIMIT_MB = 32 * 1024
_MEMORY = re.compile(r"^\s*(\d+)\s*([kmgt]?)b?\s*$", re.IGNORECASE)
_MB = {"k": 1 / 1024, "": 1 / (1024 * 1024), "m": 1, "g": 1024, "t": 1024 * 1024}


def memory_mb(value: str | None) -> float | None:
    """A JVM/Spark memory string (``2304m``, ``4g``, ``512k``, bytes) in MiB; None if not one."""
    m = _MEMORY.match(value or "")
    if not m:
        return None
    unit = m.group(2).lower()
    return int(m.group(1)) * _MB[unit] if unit else int(m.group(1)) / (1024 * 1024)


def spark_home(environ: Mapping[str, str]) -> str | None:
    """``SPARK_HOME``, else the pyspark package (pip's pyspark is a whole Spark)."""
    if environ.get("SPARK_HOME"):
        return environ["SPARK_HOME"]
    try:
        import pyspark
    except ImportError:
        return None
    return os.path.dirname(os.path.abspath(pyspark.__file__))


def java_home(environ: Mapping[str, str]) -> str | None:
    """The JDK spark-submit runs: ``JAVA_HOME``, else the ``java`` on ``PATH``."""
    if environ.get("JAVA_HOME"):
        return environ["JAVA_HOME"]
    java = shutil.which("java", path=environ.get("PATH"))
    return os.path.dirname(os.path.dirname(os.path.realpath(java))) if java else None


def archive_key(environ: Mapping[str, str], conf: Mapping[str, str], driver_memory: str | None,
                driver_class_path: str | None = None) -> str | None:
    """The key of the archive a driver launched with ``environ`` and ``conf`` can map; None when
    the JDK or Spark cannot be found (then no archive is used)."""
    jdk, spark = java_home(environ), spark_home(environ)
    if not jdk or not spark or not os.path.isdir(os.path.join(spark, "jars")):
        return None
    digest = hashlib.sha256()
    release = os.path.join(jdk, "release")
    parts = [os.path.realpath(jdk), open(release, encoding="utf-8", errors="replace").read()
             if os.path.isfile(release) else "no release file", os.path.realpath(spark)]
    jars = os.path.join(spark, "jars")
    parts += [f"{name}:{os.path.getsize(os.path.join(jars, name))}" for name in sorted(os.listdir(jars))]
    heap = memory_mb(driver_memory or conf.get("spark.driver.memory"))
    parts += [environ.get("SPARK_CONF_DIR", ""), environ.get("SPARK_DIST_CLASSPATH", ""),
              conf.get("spark.driver.extraClassPath", ""), driver_class_path or "",
              "large heap" if heap is not None and heap >= COMPRESSED_OOPS_LIMIT_MB else "heap"]
    for part in parts:
        digest.update(part.encode("utf-8", "replace") + b"\0")
    return digest.hexdigest()[:20]


class DriverClassArchive:
    """The archive of one key in ``directory``: the JVM option a submission adds, and what is
    done with the archive once the submission ended.

    :param directory: where archives are kept (created when needed).
    :param key: ``archive_key`` of the submission.
    """

    def __init__(self, directory: str, key: str):
        self.directory = directory
        self.path = os.path.join(directory, key + SUFFIX)
        self._writing: str | None = None

    def java_options(self) -> str:
        """``-XX:SharedArchiveFile=...`` when the archive exists, else the options that write it
        when this JVM exits; empty when it is marked unusable or its folder is not writable."""
        if os.path.exists(self.path + UNUSABLE):
            return ""
        if is_archive(self.path):
            try:
                os.utime(self.path)  # last use, for pruning
            except OSError:
                pass
            return f"-XX:SharedArchiveFile={self.path}"
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError:
            return ""
        if not os.access(self.directory, os.W_OK):
            return ""
        # Each writer its own file, renamed once whole: two jobs may write at once.
        self._writing = f"{self.path}.{os.getpid()}.{id(self)}.tmp"
        # The dump warns once per class it skips (signed jars, generated classes): ~800 lines.
        return f"-XX:ArchiveClassesAtExit={self._writing} -Xlog:cds=off"

    def settle(self, returncode: int | None, output: str) -> None:
        """After the submission: keep the archive it wrote if it succeeded; mark an archive the
        JVM refused as unusable."""
        if self._writing:
            written, self._writing = self._writing, None
            if returncode == 0 and is_archive(written):
                os.replace(written, self.path)
                log.info("JVM class archive written: %s (later jobs start faster)", self.path)
                self._prune()
            elif os.path.exists(written):
                os.remove(written)
        elif REJECTED in output and os.path.exists(self.path):
            with open(self.path + UNUSABLE, "w") as fh:
                fh.write("the JVM could not map this archive; jobs of this key run without one\n")
            log.warning("JVM class archive %s does not fit this JVM; not used again", self.path)

    def _prune(self) -> None:
        archives = sorted(glob.glob(os.path.join(self.directory, "*" + SUFFIX)), key=_mtime, reverse=True)
        # Half-written archives of jobs that were killed, once no job can still be writing them.
        stale = [p for p in glob.glob(os.path.join(self.directory, "*.tmp")) if time.time() - _mtime(p) > STALE_S]
        for path in [*stale, *archives[KEEP:], *(a + UNUSABLE for a in archives[KEEP:])]:
            try:
                os.remove(path)
            except OSError:
                pass


def is_archive(path: str) -> bool:
    """Whether ``path`` starts as a dynamic archive does. The JVM ignores a file that does not,
    silently, so one damaged on disk is written again rather than kept."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == DYNAMIC_MAGIC
    except OSError:
        return False


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0
