"""Why a Spark submission failed, and what to change before submitting it again.

``classify_failure`` reads the driver/executor output and the exit code of spark-submit and
names the failure; ``next_settings`` returns the adjusted sizing for the next attempt, or
None when retrying cannot help (bad input path, bad parameter, a bug, a full disk), so such a
run fails at once. Patterns are checked in order: the first class that matches wins, because the
specific causes (a container killed for memory) also log the generic symptom (a lost executor);
a driver that died of a signal is ``KILLED`` unless its output names a cause of the kill.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import signal
from collections.abc import Sequence

from music_recs import failures
from music_recs.sizing import ExecutorSizing, memory_string_mb


class Failure(str, enum.Enum):
    """Why a Spark job failed, as far as its output and exit code tell; ``PERMANENT`` ones are never
    resubmitted."""

    CONTAINER_MEMORY = "container_killed_for_memory"
    EXECUTOR_OOM = "executor_out_of_memory"
    DRIVER_OOM = "driver_out_of_memory"
    STACK_OVERFLOW = "stack_overflow"
    FETCH_FAILED = "fetch_failed"
    EXECUTORS_LOST = "executors_lost"
    NON_RETRYABLE = "non_retryable"
    NO_SPACE = "no_space"
    KILLED = "killed"
    UNKNOWN = "unknown"


# A full disk does not empty itself: a resubmission writes the same data into the same folders
# and fails again after spending the job's time, and so would Airflow's retries. Freeing space or
# moving the folder is an operator's job, so the run stops at once and names the folder.
PERMANENT = frozenset({Failure.NON_RETRYABLE, Failure.NO_SPACE})

# The project's own deterministic failures (``music_recs.failures``) raised inside a job.
_PROJECT_PERMANENT = sorted(name for name, value in vars(failures).items()
                            if isinstance(value, type) and issubclass(value, failures.PermanentFailure))

_PATTERNS: list[tuple[Failure, re.Pattern]] = [
    # ENOSPC, EDQUOT and Hadoop's name for them. A full disk also breaks what was writing (the
    # Parquet writer reports "Unable to close resource", caused by the IOException), so first.
    (Failure.NO_SPACE, re.compile(r"No space left on device|Disk quota exceeded|DiskOutOfSpaceException"
                                  r"|\bENOSPC\b|\bEDQUOT\b", re.I)),
    (Failure.CONTAINER_MEMORY, re.compile(
        r"killed by YARN for exceeding (physical )?memory limits|exceeding (physical|virtual) memory limits"
        r"|OOMKilled|Consider boosting spark\.(yarn\.)?executor\.memoryOverhead|exit(ed)? (with )?code:? 137", re.I)),
    (Failure.STACK_OVERFLOW, re.compile(r"java\.lang\.StackOverflowError")),
    (Failure.DRIVER_OOM, re.compile(
        r"Exception in thread \"(main|dag-scheduler-event-loop|driver-heartbeater)\" java\.lang\.OutOfMemoryError"
        r"|OutOfMemoryError.*\bdriver\b|Total size of serialized results .* is bigger than spark\.driver\.maxResultSize",
        re.I)),
    # 52 is Spark's exit code for an executor that died of OutOfMemoryError (SparkExitCode.OOM):
    # on a cluster the driver often sees only that, the error itself is in the executor's log.
    # MemoryError: a Python worker hit spark.executor.pyspark.memory (the CG strategy's blocks);
    # a worker that crashed under that limit is classified below.
    (Failure.EXECUTOR_OOM, re.compile(r"java\.lang\.OutOfMemoryError|Java heap space|GC overhead limit exceeded"
                                      r"|exited with code 52\b|exit code:? 52\b|MemoryError\b", re.I)),
    (Failure.FETCH_FAILED, re.compile(r"FetchFailedException|MetadataFetchFailedException|"
                                      r"Missing an output location for shuffle")),
    (Failure.EXECUTORS_LOST, re.compile(
        r"ExecutorLostFailure|Executor heartbeat timed out|Lost executor \d+|Worker .* (lost|removed)|"
        r"Remote RPC client disassociated|Master removed our application|All masters are unresponsive", re.I)),
    (Failure.NON_RETRYABLE, re.compile(
        r"PATH_NOT_FOUND|Path does not exist|FileNotFoundError|No such file or directory|"
        r"AnalysisException|UNRESOLVED_COLUMN|ValueError|TypeError|NameError|ImportError|ModuleNotFoundError|"
        r"SyntaxError|error: (argument|unrecognized arguments)|usage: |NonFiniteFactorsError|"
        r"IllegalArgumentException|ArithmeticException|NumberFormatException|DateTimeException|"
        r"\[CAST_OVERFLOW\]|\[CAST_INVALID_INPUT\]|INVALID_ARRAY_INDEX|"
        + "|".join(rf"\b{name}\b" for name in _PROJECT_PERMANENT))),
]

# What makes a driver die of a signal (a JVM option such as -XX:OnOutOfMemoryError="kill -9 %p",
# a container or cgroup limit), so it names the failure rather than the kill.
_KILL_CAUSES = frozenset({Failure.NO_SPACE, Failure.CONTAINER_MEMORY, Failure.DRIVER_OOM, Failure.EXECUTOR_OOM})

# What a secret looks like in a line of output, each with what stays visible (group 1 and, for a
# URL, the "@" after the password):
_SECRETS = (
    # a secret-like name, quoted or not, then = or :, then a quoted or bare value
    (re.compile(r"""(?i)((?:secret|passw(?:or)?d|pwd|token|credential|api[_.-]?key|private[_.-]?key|access[_.-]?key)"""
                r"""[\w.-]*["']?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;}]+)"""), r"\1***"),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+(@)"), r"\1***\2"),  # scheme://user:password@
    (re.compile(r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1***"),  # an Authorization header's value
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), "***"),  # an AWS access key id
)


def mask_secrets(line: str) -> str:
    """``line`` with every secret it shows replaced by ``***``: the value after a secret-, password-,
    token- or key-like name (``password=x``, ``"password": "x"``), the password of a URL
    (``postgresql://user:x@host``), a Bearer or Basic credential, a bare AWS access key id. The one
    masking function for whatever leaves a job: task log, manifest, report, alerts."""
    for pattern, replacement in _SECRETS:
        line = pattern.sub(replacement, line)
    return line


# A stack trace's header line: ``[package.]SomeException: message`` (Java, Python or Py4J).
_EXCEPTION = re.compile(r"^(?:Caused by: |Exception in thread \"[^\"]*\" )?(?:[\w$]+\.)*"
                        rf"(?P<name>[\w$]*(?:Exception|Error)|{'|'.join([*_PROJECT_PERMANENT, 'LakeBusy'])})"
                        r"(?::\s*(?P<message>.*))?$")
# Wrappers that only say that something below failed.
_WRAPPERS = re.compile(r"^(Py4JJavaError|SparkException|RuntimeError)$")


def first_exception(output: str, limit: int = 400) -> str | None:
    """The first exception the output names (class without its package, and its message), skipping
    wrappers like ``Py4JJavaError: An error occurred while calling o57.parquet``; None if none."""
    for line in output.splitlines():
        match = _EXCEPTION.match(line.strip())
        if match and not _WRAPPERS.match(match["name"]):
            message = (match["message"] or "").strip()
            return mask_secrets(f"{match['name']}: {message}" if message else match["name"])[:limit]
    return None


_PYTHON_CRASH = re.compile(r"Python worker exited unexpectedly \(crashed\)")
PYTHON_CRASH_UNDER_LIMIT = "a Python worker crashed under its {} MiB memory limit (spark.executor.pyspark.memory)"


def killed_by(returncode: int | None) -> str | None:
    """What a spark-submit exit code says about a signal, or None: negative when spark-submit (the
    driver JVM) died of it, 128 + N when the driver process under it (or a wrapper's child) did."""
    if returncode is None or not (returncode < 0 or 128 < returncode <= 128 + 64):
        return None
    number = -returncode if returncode < 0 else returncode - 128
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    how = f"signal {number}" if returncode < 0 else f"exit code {returncode} = 128 + signal {number}"
    line = f"the driver was killed by {name} ({how})"
    if number == signal.SIGKILL:
        line += "; the kernel's out-of-memory killer is a common cause (see dmesg or the kernel log)"
    return line


def classify_failure(output: str, returncode: int | None = None,
                     python_memory_mb: int = 0) -> tuple[Failure, list[str]]:
    """The failure class and the decisive log lines (secrets masked).

    python_memory_mb: the job's ``spark.executor.pyspark.memory`` (0: none). Under that limit
    (an address-space limit) an allocation in compiled code (numba, numpy, OpenBLAS threads)
    often kills the worker outright instead of raising ``MemoryError``: the driver then sees
    only "Python worker exited unexpectedly (crashed)". With a limit set, that is a memory failure.

    A driver killed by a signal is ``KILLED`` (the deploy mode is client, so spark-submit's exit
    code is the local driver's, never an executor container's), unless its output names what
    leads to a kill (memory, a full disk); what Spark recovers from (a lost executor, a failed
    fetch, a warning) does not explain it.
    """
    lines = output.splitlines()
    kill = killed_by(returncode)
    for failure, pattern in _PATTERNS:
        if kill and failure not in _KILL_CAUSES:
            continue
        hits = [mask_secrets(line.strip())[:500] for line in lines if pattern.search(line)]
        if hits:
            return failure, hits[:5]
    if kill:
        return Failure.KILLED, [kill, *(mask_secrets(line.strip())[:500] for line in lines[-4:])]
    crashes = [mask_secrets(line.strip())[:500] for line in lines if _PYTHON_CRASH.search(line)]
    if crashes and python_memory_mb:
        return Failure.EXECUTOR_OOM, [PYTHON_CRASH_UNDER_LIMIT.format(python_memory_mb), *crashes[:4]]
    return Failure.UNKNOWN, [mask_secrets(line.strip())[:500] for line in lines[-5:]]


def python_memory_mb(conf: dict) -> int:
    """``spark.executor.pyspark.memory`` of a job's Spark properties in MiB (0: not set)."""
    return int(memory_string_mb(conf.get("spark.executor.pyspark.memory")) or 0)


def _mb(value: int, factor: float, cap_mb: int) -> int:
    return int(min(cap_mb, -(-value * factor // 256) * 256))


def next_settings(failure: Failure, current: ExecutorSizing, local: bool, memory_cap_mb: int) -> ExecutorSizing | None:
    """Adjusted settings for the next attempt, or None when retrying cannot help.

    In local mode the driver JVM is also the executor, so memory goes to the driver.
    """
    if failure in PERMANENT:
        return None
    s = current
    if failure in (Failure.EXECUTOR_OOM, Failure.DRIVER_OOM) and local:
        if s.driver_memory_mb >= memory_cap_mb:
            return None
        return s.scaled(driver_memory_mb=_mb(s.driver_memory_mb, 2, memory_cap_mb),
                        user_blocks=s.user_blocks * 2, item_blocks=s.item_blocks * 2)
    if failure is Failure.EXECUTOR_OOM:
        # Smaller blocks lower the per-task peak; more heap raises the ceiling. Doubling, not
        # +50%: a block's received factor vectors cannot spill, and a second too-small attempt
        # costs as much as the first.
        if s.executor_memory_mb >= memory_cap_mb:
            return None
        return s.scaled(executor_memory_mb=_mb(s.executor_memory_mb, 2, memory_cap_mb),
                        python_memory_mb=_mb(s.python_memory_mb, 2, memory_cap_mb) if s.python_memory_mb else 0,
                        user_blocks=s.user_blocks * 2, item_blocks=s.item_blocks * 2,
                        shuffle_partitions=s.shuffle_partitions * 2)
    if failure is Failure.DRIVER_OOM:
        return s.scaled(driver_memory_mb=_mb(s.driver_memory_mb, 2, memory_cap_mb))
    if failure is Failure.CONTAINER_MEMORY:
        return s.scaled(executor_memory_overhead_mb=_mb(s.executor_memory_overhead_mb, 2, memory_cap_mb))
    if failure is Failure.STACK_OVERFLOW:
        # A long lineage: checkpoint more often.
        return s.scaled(checkpoint_interval=max(1, s.checkpoint_interval // 2))
    if failure is Failure.EXECUTORS_LOST:
        # Fewer concurrent tasks per JVM means less memory and GC pressure per executor.
        return s.scaled(executor_cores=max(1, s.executor_cores - 1),
                        executor_memory_mb=_mb(s.executor_memory_mb, 1.25, memory_cap_mb))
    if failure is Failure.FETCH_FAILED:
        return s.scaled(shuffle_partitions=s.shuffle_partitions * 2)
    # Unknown, or killed (the log cannot tell by whom: the out-of-memory killer reacting to the
    # whole machine, an operator, a node shutting down): the same settings once more.
    return s


GIB = 1024 ** 3


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 1024 ** 2:.1f} MiB"


def _existing(path: str) -> str:
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def free_space(folders: Sequence[tuple[str, str]], lines: Sequence[str] = (), output: str = "",
               shown: int = 3) -> str:
    """One line on the free space of the filesystems holding ``folders`` ((what, local path)), one
    folder per filesystem, e.g. ``lake_uri /lake has 0.0 MiB free of 2.0 GiB now (spark.local.dir
    /tmp: 31.2 GiB free)``. First the folder the decisive ``lines`` name (Spark's block writer
    names its file), else one an error line of ``output`` names (the Parquet writer's "Task failed
    while writing rows to file:..."), else the fullest: the space the job filled may be free again."""
    errors = [line for line in output.splitlines() if "Exception" in line or "Error" in line]
    seen: dict[int, tuple[str, str, int, int]] = {}
    for what, path in folders:
        try:
            existing = _existing(path)
            device, usage = os.stat(existing).st_dev, shutil.disk_usage(existing)
        except OSError:
            continue
        seen.setdefault(device, (what, path, usage.free, usage.total))

    def order(entry):
        return not any(entry[1] in line for line in lines), not any(entry[1] in line for line in errors), entry[2]

    ranked = sorted(seen.values(), key=order)[:shown]
    if not ranked:
        return "no local folder of the job could be read"
    (what, path, free, total), rest = ranked[0], ranked[1:]
    line = f"{what} {path} has {_size(free)} free of {_size(total)} now"
    if rest:
        line += " (" + "; ".join(f"{w} {p}: {_size(f)} free" for w, p, f, _ in rest) + ")"
    return line
