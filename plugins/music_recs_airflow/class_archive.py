"""Class-data sharing for the driver JVM of a spark-submit: a shorter start for every job.

A Spark driver loads some 15 000 classes from Spark's jars before its first job, and each
spark-submit parses and verifies them again: a trivial job takes ~12 s here, ~3.5 s of it in
class loading that the JVM skips by mapping the classes from an archive (AppCDS: JDK 13+ writes
one at exit with ``-XX:ArchiveClassesAtExit`` and maps it with ``-XX:SharedArchiveFile``). The
first job submitted on a machine writes the archive (its JVM takes ~15 s longer to exit, once);
every later job maps it.

An archive fits one JDK, one class path and one set of JVM flags, so each is kept under a key:
a digest of the JDK (its location, ``release`` file and module image), Spark's jars (names,
sizes, modification times), the class path settings, the ``-XX`` and heap flags a driver gets
from the environment and the job's properties (``jvm_flags``), and whether the heap is near 32 GiB (compressed
pointers). An upgrade makes a new key; the least recently used archives beyond ``KEEP`` are
removed.

Nothing here may fail a job:

* no archive is written where the JVM could not write one: a folder on the driver's class path
  that holds files (the JVM refuses to dump then, and exits with an error), a path the
  launcher would split (white space, ``:``), less than ``MIN_FREE_BYTES`` free;
* a job that wrote its result but whose JVM then failed to write the archive succeeded: its
  result is taken, and the key is marked unusable (no second attempt);
* an archive the JVM refuses (``REJECTED`` in its first lines) is removed and its key marked;
  a file that is not an archive at all (damaged on disk) is written again;
* any error of this module's own (a read-only folder, ...) is logged and the job runs without
  an archive (``guarded``).

Only the driver: a cluster's executors start in JVMs of their workers, with their class path.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping

from music_recs.sizing import memory_string_mb

log = logging.getLogger(__name__)

KEEP = 3  # archives kept per folder (~150-180 MiB each), most recently used first
MIN_FREE_BYTES = 1024 * 1024 * 1024  # an archive is ~170 MiB; leave the disk room for the job
STALE_S = 3600  # a half-written archive older than this belongs to a job that was killed
ARCHIVE = re.compile(r"^[0-9a-f]{20}\.jsa$")
PARTIAL = re.compile(r"^[0-9a-f]{20}\.jsa\.[0-9a-f]{32}\.tmp$")
UNUSABLE = ".unusable"
# What the JVM prints (tags cds,dynamic) when it cannot map an archive.
REJECTED = "Unable to use shared archive"
DYNAMIC_MAGIC = (0xF00BABA8).to_bytes(4, "little")  # HotSpot's CDS_DYNAMIC_ARCHIVE_MAGIC (x86, arm: little-endian)
# Past ~30 GiB of heap the JVM may turn compressed pointers off, and an archive written with
# them on does not fit.
LARGE_HEAP_MB = 30 * 1024
# Environment the launcher reads for the driver's class path and JVM options.
CLASS_PATH_ENV = ("SPARK_CONF_DIR", "SPARK_DIST_CLASSPATH", "HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_CLASSPATH")
JVM_OPTIONS_ENV = ("SPARK_SUBMIT_OPTS", "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")
CLASS_PATH_CONF = ("spark.driver.extraClassPath", "spark.jars", "spark.remote", "spark.api.mode")
JVM_OPTIONS_CONF = ("spark.driver.extraJavaOptions", "spark.driver.defaultJavaOptions")


def guarded(default):
    """Run the function; on any error log one warning and return ``default`` (no archive)."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # the archive is an optimisation: never a reason to fail
                log.warning("driver class archive skipped: %s: %s", type(exc).__name__, exc)
                return default
        return run
    return wrap


def spark_home(environ: Mapping[str, str]) -> str | None:
    """``SPARK_HOME``, else the pyspark package (pip's pyspark is a whole Spark)."""
    if environ.get("SPARK_HOME"):
        return environ["SPARK_HOME"]
    spec = importlib.util.find_spec("pyspark")
    return os.path.dirname(os.path.abspath(spec.origin)) if spec and spec.origin else None


def java_home(environ: Mapping[str, str]) -> str | None:
    """The JDK spark-submit runs: ``JAVA_HOME``, else the ``java`` on ``PATH`` (links followed)."""
    if environ.get("JAVA_HOME"):
        return environ["JAVA_HOME"]
    java = shutil.which("java", path=environ.get("PATH"))
    return os.path.dirname(os.path.dirname(os.path.realpath(java))) if java else None


def jvm_flags(options: str) -> str:
    """The options in ``options`` that can change what an archive must fit: ``-XX:`` flags (the
    garbage collector, compressed pointers, verification) and the heap; not properties (``-D``)
    nor logging (``-Xlog``)."""
    return " ".join(t for t in options.split() if t.startswith(("-XX:", "-Xmx", "-Xshare", "-Xverify"))
                    and not t.startswith(("-XX:SharedArchiveFile", "-XX:ArchiveClassesAtExit")))


def _file_stamp(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}"


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _conf_dir(environ: Mapping[str, str], spark: str) -> str:
    return environ.get("SPARK_CONF_DIR") or os.path.join(spark, "conf")


@guarded(None)
def archive_key(environ: Mapping[str, str], conf: Mapping[str, str], driver_memory: str | None,
                properties_file: str | None = None) -> str | None:
    """The key of the archive a driver launched with ``environ``, ``conf`` (``--conf``),
    ``driver_memory`` and ``properties_file`` can map; None when the JDK (with its ``release``
    file) or Spark's jars cannot be found: then no archive is used."""
    jdk, spark = java_home(environ), spark_home(environ)
    if not jdk or not spark or not os.path.isfile(os.path.join(jdk, "release")):
        return None
    jars = os.path.join(spark, "jars")
    if not os.path.isdir(jars):
        return None
    conf_dir = _conf_dir(environ, spark)
    parts = [os.path.realpath(jdk), _read(os.path.join(jdk, "release")), os.path.realpath(spark), conf_dir,
             str(os.path.isdir(conf_dir))]
    modules = os.path.join(jdk, "lib", "modules")
    if os.path.isfile(modules):
        parts.append(_file_stamp(modules))
    parts += [_file_stamp(os.path.join(jars, name)) for name in sorted(os.listdir(jars))]
    parts += [f"{name}={environ.get(name, '')}" for name in CLASS_PATH_ENV]
    parts += [f"{name}={jvm_flags(environ.get(name, ''))}" for name in JVM_OPTIONS_ENV]
    parts += [f"{name}={conf.get(name, '')}" for name in CLASS_PATH_CONF]
    parts += [f"{name}={jvm_flags(conf.get(name, ''))}" for name in JVM_OPTIONS_CONF]
    if properties_file:
        parts.append(_read(properties_file))
    heap = memory_string_mb(driver_memory or conf.get("spark.driver.memory") or environ.get("SPARK_DRIVER_MEMORY"))
    parts.append("large heap" if heap is not None and heap >= LARGE_HEAP_MB else "heap")
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "replace") + b"\0")
    return digest.hexdigest()[:20]


@guarded(True)
def class_path_has_files(environ: Mapping[str, str], conf: Mapping[str, str]) -> bool:
    """Whether a folder the launcher may put on the driver's class path holds files (Spark's
    conf folder, Hadoop's, ``SPARK_DIST_CLASSPATH``, ``spark.driver.extraClassPath``): the JVM
    cannot write an archive then."""
    spark = spark_home(environ) or ""
    entries = [_conf_dir(environ, spark), environ.get("HADOOP_CONF_DIR", ""), environ.get("YARN_CONF_DIR", "")]
    for value in (environ.get("SPARK_DIST_CLASSPATH", ""), environ.get("SPARK_CLASSPATH", ""),
                  conf.get("spark.driver.extraClassPath", "")):
        entries += value.split(os.pathsep)
    return any(os.path.isdir(e) and os.listdir(e) for e in entries if e and not e.endswith("*"))


def is_archive(path: str) -> bool:
    """Whether ``path`` starts as a dynamic archive does. The JVM ignores a file that does not,
    silently, so one damaged on disk is written again rather than kept."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == DYNAMIC_MAGIC
    except OSError:
        return False


class DriverClassArchive:
    """The archive of one key in ``directory``: the JVM options a submission adds, and what is
    done with the archive once the submission ended.

    :param directory: where archives are kept (created when needed; made absolute).
    :param key: ``archive_key`` of the submission.
    :param may_write: False where the JVM could not write one (``class_path_has_files``).
    """

    def __init__(self, directory: str, key: str, may_write: bool = True):
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, key + ".jsa")
        self.may_write = may_write
        self.writing: str | None = None

    @guarded("")
    def java_options(self) -> str:
        """``-XX:SharedArchiveFile=...`` when the archive exists, else the options that write it
        when this JVM exits; empty when it cannot be used or written here."""
        # The launcher splits the options on white space; the JVM reads ':' as a second archive.
        if re.search(r"[\s:'\"\\]", self.path) or os.path.exists(self.path + UNUSABLE):
            return ""
        self._remove_stale()
        if is_archive(self.path):
            os.utime(self.path)  # last use, for pruning
            return f"-XX:SharedArchiveFile={self.path}"
        if not self.may_write:
            return ""
        os.makedirs(self.directory, exist_ok=True)
        if not os.access(self.directory, os.W_OK) or shutil.disk_usage(self.directory).free < MIN_FREE_BYTES:
            return ""
        # Each writer its own file, renamed once whole: two jobs may write at once.
        self.writing = f"{self.path}.{uuid.uuid4().hex}.tmp"
        # The dump warns once per class it skips (signed jars, generated classes): ~800 lines.
        return f"-XX:ArchiveClassesAtExit={self.writing} -Xlog:cds=off"

    @guarded(None)
    def settle(self, returncode: int | None, head: str) -> None:
        """After the submission (``head``: the first lines of its output): keep the archive it
        wrote if its JVM exited cleanly; remove one the JVM refused, and mark its key."""
        if self.writing:
            written, self.writing = self.writing, None
            if returncode == 0 and is_archive(written):
                os.replace(written, self.path)
                log.info("driver class archive written: %s (later jobs start faster)", self.path)
                self._prune()
            elif os.path.exists(written):
                os.remove(written)
        elif REJECTED in head:
            self.mark_unusable("the JVM could not map it")

    @guarded(None)
    def mark_unusable(self, why: str) -> None:
        """Use and write no archive for this key again (``why`` is logged and kept in the marker)."""
        with open(self.path + UNUSABLE, "w") as fh:
            fh.write(f"{why}; jobs of this key run without a class archive\n")
        if os.path.exists(self.path):
            os.remove(self.path)
        log.warning("driver class archive %s: %s; not used again", self.path, why)

    def _own(self, pattern: re.Pattern) -> list[str]:
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        return [os.path.join(self.directory, n) for n in names if pattern.match(n)]

    def _remove_stale(self) -> None:
        for path in self._own(PARTIAL):
            if time.time() - _mtime(path) > STALE_S:
                _remove(path)

    def _prune(self) -> None:
        for old in sorted(self._own(ARCHIVE), key=_mtime, reverse=True)[KEEP:]:
            _remove(old)
            _remove(old + UNUSABLE)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
