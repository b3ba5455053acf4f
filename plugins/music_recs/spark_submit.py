"""Launch the pipeline's Spark jobs with spark-submit, through Airflow's Spark provider.

``PipelineSparkSubmitHook`` is the provider's ``SparkSubmitHook`` with the defaults this
pipeline needs: the Spark master comes from the ``spark_default`` connection (``local[*]``
when it does not exist, instead of the provider's ``yarn``), every job gets
``infra/spark/spark-defaults.conf`` and the quiet log4j2 configuration, and the project's
packages are shipped as ``--py-files`` so executors on a cluster can import them.

``run_spark_job`` submits one job and returns the JSON result the job wrote.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

from music_recs.executor_sizing import ExecutorSizing
from music_recs.resubmit_policy import classify_failure, next_settings

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
JOBS_DIR = REPO_ROOT / "spark_jobs"
SPARK_DEFAULTS = REPO_ROOT / "infra" / "spark" / "spark-defaults.conf"
LOG4J2 = REPO_ROOT / "infra" / "spark" / "log4j2.properties"
DEFAULT_MASTER = "local[*]"


class SparkJobError(RuntimeError):
    """A Spark job failed; the message carries the last lines of its output."""

    def __init__(self, message: str, output: str = "", returncode: int | None = None, master: str = ""):
        super().__init__(message)
        self.output = output
        self.returncode = returncode
        self.master = master


class PipelineSparkSubmitHook(SparkSubmitHook):
    """The provider's hook, keeping the whole recent output so failures can be classified."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recent_output: deque[str] = deque(maxlen=5000)

    def _process_spark_submit_log(self, itr):
        def tee(lines):
            for line in lines:
                self.recent_output.append(line.rstrip("\n"))
                yield line

        return super()._process_spark_submit_log(tee(itr))

    def _resolve_connection(self):
        data = super()._resolve_connection()
        try:
            self.get_connection(self._conn_id)
        except Exception:
            # The provider falls back to YARN; on one machine local mode is what works.
            log.info("connection %s not found: using Spark master %s", self._conn_id, DEFAULT_MASTER)
            data["master"] = DEFAULT_MASTER
        return data

    @property
    def master(self) -> str:
        return self._connection["master"]

    @property
    def output_tail(self) -> list[str]:
        return list(self.recent_output)


def spark_master(conn_id: str = "spark_default") -> str:
    return PipelineSparkSubmitHook(conn_id=conn_id).master


def package_zip(dest_dir: str) -> str:
    """Zip ``music_recs`` and ``spark_jobs`` for ``--py-files`` (rebuilt when sources change)."""
    sources = sorted(p for d in (PACKAGE_DIR, JOBS_DIR) for p in d.rglob("*.py"))
    stamp = str(max((p.stat().st_mtime_ns for p in sources), default=0))
    path = os.path.join(dest_dir, f"music_recs_pyfiles_{stamp}.zip")
    if not os.path.exists(path):
        os.makedirs(dest_dir, exist_ok=True)
        tmp = path + ".tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sources:
                base = PACKAGE_DIR.parent if PACKAGE_DIR in p.parents else REPO_ROOT
                zf.write(p, p.relative_to(base).as_posix())
        os.replace(tmp, path)
    return path


def job_path(job: str) -> str:
    path = JOBS_DIR / f"{job}.py"
    if not path.exists():
        raise ValueError(f"unknown Spark job {job!r}: no {path}")
    return str(path)


def base_conf() -> dict[str, str]:
    log4j = f"-Dlog4j2.configurationFile=file:{LOG4J2}"
    conf = {
        "spark.driver.extraJavaOptions": log4j,
        "spark.executor.extraJavaOptions": log4j,
        # Executors use the same interpreter as the driver (the project's environment).
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
    }
    return {**conf, **event_log_conf(os.environ.get("MUSIC_RECS_SPARK_EVENT_LOG_DIR", ""))}


def event_log_conf(directory: str) -> dict[str, str]:
    """Spark event logs for the History Server (off unless ``directory`` is set), with each
    stage's peak executor memory: JVM heap, storage and execution memory, and the resident
    memory of the JVM and its Python workers (process-tree metrics, Linux only)."""
    if not directory:
        return {}
    if "://" not in directory:
        os.makedirs(directory, exist_ok=True)
        directory = f"file://{os.path.abspath(directory)}"
    return {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": directory,
        "spark.eventLog.logStageExecutorMetrics": "true",
        "spark.executor.processTreeMetrics.enabled": "true",
        # Poll peaks every second; by default they are sampled at heartbeats only (20 s here),
        # which misses every short stage.
        "spark.executor.metrics.pollingInterval": "1s",
    }


def run_spark_job(
    job: str,
    args: list[str],
    result_path: str,
    conn_id: str = "spark_default",
    conf: dict[str, str] | None = None,
    driver_memory: str | None = None,
    executor_memory: str | None = None,
    executor_cores: int | None = None,
    num_executors: int | None = None,
    total_executor_cores: int | None = None,
    work_dir: str | None = None,
) -> dict:
    """Submit ``spark_jobs/<job>.py`` and return the JSON result it wrote to ``result_path``."""
    work_dir = work_dir or os.path.join(tempfile.gettempdir(), "music_recs_submit")
    if os.path.exists(result_path):
        os.remove(result_path)  # never read a previous attempt's result
    os.makedirs(os.path.dirname(result_path), exist_ok=True)
    env = {"PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
           "GX_ANALYTICS_ENABLED": "false",
           # pyspark installs spark-submit next to this interpreter; find it even in a shell
           # where the environment is not activated.
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    hook = PipelineSparkSubmitHook(
        conn_id=conn_id,
        conf={**base_conf(), **(conf or {})},
        properties_file=str(SPARK_DEFAULTS),
        py_files=package_zip(work_dir),
        name=f"music_recs.{job}",
        application_args=[*args, "--result", result_path],
        driver_memory=driver_memory,
        executor_memory=executor_memory,
        executor_cores=executor_cores,
        num_executors=num_executors,
        total_executor_cores=total_executor_cores,
        env_vars=env,
        verbose=False,
    )
    log.info("spark-submit %s on %s", job, hook.master)
    started = time.time()
    try:
        hook.submit(application=job_path(job))
    except Exception as exc:
        # The exception's own text counts too: a missing binary or a bad argument has no Spark output.
        output = [*hook.output_tail, f"{type(exc).__name__}: {exc}"]
        code = getattr(getattr(hook, "_submit_sp", None), "returncode", None)
        raise SparkJobError(f"Spark job {job} failed: {str(exc).splitlines()[0]}\n" + "\n".join(output[-40:]),
                            "\n".join(output), code, hook.master) from exc
    if not os.path.exists(result_path):
        raise SparkJobError(f"Spark job {job} finished but wrote no result at {result_path}")
    with open(result_path) as fh:
        result = json.loads(fh.read())
    settings = {"master": hook.master, "driver_memory": driver_memory, "executor_memory": executor_memory,
                "executor_cores": executor_cores, "num_executors": num_executors,
                "total_executor_cores": total_executor_cores, "conf": conf or {}}
    result["submission"] = {"settings": settings, "attempts": [
        {"attempt": 1, "seconds": round(time.time() - started, 1), "outcome": "success"}]}
    return result


def executor_args(sizing: ExecutorSizing, master: str) -> dict:
    """spark-submit's executor options for ``master``: none in local mode (one JVM, sized by the
    driver memory); a standalone master counts cores (``--total-executor-cores``), YARN and
    Kubernetes count executors (``--num-executors``)."""
    if master.startswith("local"):
        return {}
    args = {"executor_memory": f"{sizing.executor_memory_mb}m", "executor_cores": sizing.executor_cores}
    if master.startswith("spark://"):
        args["total_executor_cores"] = sizing.num_executors * sizing.executor_cores
    else:
        args["num_executors"] = sizing.num_executors
    return args


def run_with_resubmission(
    job: str,
    build_args: Callable[[ExecutorSizing], list[str]],
    result_path: str,
    sizing: ExecutorSizing,
    local: bool,
    memory_cap_mb: int,
    max_attempts: int = 3,
    conf: dict[str, str] | None = None,
    **kwargs,
) -> dict:
    """Submit ``job``; on failure classify it and resubmit with adjusted settings.

    Non-retryable failures (bad input, bad parameter, a bug) stop at once. Every attempt
    (settings, seconds, failure class, decisive log lines with secrets masked) is logged and
    returned in ``result["submission"]["attempts"]``; when all attempts fail, the error
    summarises each one.
    """
    attempts: list[dict] = []
    current = sizing
    master = spark_master(kwargs.get("conn_id", "spark_default"))
    for attempt in range(1, max_attempts + 1):
        settings = current.as_dict()
        log.info("%s attempt %d/%d with %s", job, attempt, max_attempts,
                 {k: v for k, v in settings.items() if k != "estimate"})
        started = time.time()
        try:
            result = run_spark_job(
                job, build_args(current), result_path, conf={**(conf or {}), **current.spark_conf()},
                driver_memory=f"{current.driver_memory_mb}m", **executor_args(current, master), **kwargs)
        except SparkJobError as exc:
            failure, lines = classify_failure(exc.output, exc.returncode)
            record = {"attempt": attempt, "seconds": round(time.time() - started, 1), "outcome": failure.value,
                      "settings": settings, "log": lines}
            attempts.append(record)
            log.warning("%s attempt %d failed: %s\n  %s", job, attempt, failure.value, "\n  ".join(lines))
            nxt = next_settings(failure, current, local, memory_cap_mb)
            if nxt is None or attempt == max_attempts:
                summary = "; ".join(f"attempt {a['attempt']}: {a['outcome']} after {a['seconds']}s" for a in attempts)
                reason = "not retryable" if nxt is None else f"{max_attempts} attempts used"
                raise SparkJobError(f"Spark job {job} failed ({reason}): {summary}. Last error: "
                                    f"{lines[0] if lines else 'no output'}", exc.output, exc.returncode,
                                    exc.master) from exc
            current = nxt
            continue
        attempts.append({"attempt": attempt, "seconds": round(time.time() - started, 1), "outcome": "success",
                         "settings": settings})
        result["submission"]["attempts"] = attempts
        result["submission"]["sizing"] = current.as_dict()
        return result
    raise AssertionError("unreachable")
