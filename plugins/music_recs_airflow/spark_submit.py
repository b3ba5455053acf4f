"""Launch the pipeline's Spark jobs with spark-submit.

``SparkJobHook`` does the work: it writes the job's spec (``music_recs.jobs``) as JSON,
runs ``spark-submit ... spark_jobs/<job>.py --spec FILE --result FILE`` against the master
of an Airflow Spark connection (every job gets ``infra/spark/spark-defaults.conf``, the quiet
log4j2 configuration and the core and Spark-side packages as ``--py-files``), keeps the job's
whole output in its own log file, and reads the typed result back. The driver's JVM maps
Spark's classes from an archive the first job wrote (``class_archive``): a shorter start.

Why not the Spark provider's ``SparkSubmitHook``: its public API gives neither the job's
output nor its exit code (only an exception whose text is the command line), and reading
them means overriding its private methods, which breaks silently on a provider upgrade.
This hook reads the same connection (host or URL as master, ``deploy-mode``, ``queue`` and
``spark-binary`` extras) and runs spark-submit in client mode itself. A failed job raises
``SparkJobError`` whose message is one line: the job, the day, the cause (the first decisive
line of the driver's output, as ``music_recs.resubmission.classify_failure`` finds it; for a
killed driver, the signal; for a full disk, the folder and its free space) and where the full
log is; never the command line. A failure that no resubmission can fix raises
``PermanentSparkJobError``.

``run_with_resubmission`` resubmits a failed job with settings the failure class calls for.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from music_recs.failures import InvalidInput, PermanentSparkJobError, SparkJobError
from music_recs.jobs import RESULTS, JobSpec
from music_recs.resubmission import (PERMANENT, PYTHON_CRASH_UNDER_LIMIT, Failure, classify_failure, first_exception,
                                     free_space, mask_secrets, next_settings, python_memory_mb)
from music_recs.settings import (connector_jars_dir, s3_client_environment, s3_endpoint, spark_class_archive_dir,
                                 spark_submit_env)
from music_recs.sizing import ExecutorSizing
from music_recs_airflow.class_archive import DriverClassArchive, archive_key, class_path_has_files

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
JOBS_DIR = REPO_ROOT / "spark_jobs"
CORE_DIR = REPO_ROOT / "src" / "music_recs"
SPARK_DEFAULTS = REPO_ROOT / "infra" / "spark" / "spark-defaults.conf"
LOG4J2 = REPO_ROOT / "infra" / "spark" / "log4j2.properties"
CONNECTOR_LOCK = REPO_ROOT / "infra" / "spark" / "s3a-connector.lock"
JAVA_OPTIONS = ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions")
WORKER_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def spark_connection(conn_id: str):
    """The Airflow connection ``conn_id``.

    One that is not defined fails for good (``InvalidInput``): the provider would fall back to
    YARN silently. A look-up that failed otherwise (the metadata database or the API server did
    not answer) raises a ``RuntimeError`` naming the connection and the cause: the task's retries
    may get through.
    """
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException as exc:
        raise InvalidInput(f"the Spark connection {conn_id!r} is not defined ({type(exc).__name__}); create it, e.g. "
                           f"AIRFLOW_CONN_{conn_id.upper()}='{{\"conn_type\": \"spark\", \"host\": \"local[*]\"}}'") from None
    except Exception as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "no message")
        raise RuntimeError(f"could not read the Spark connection {conn_id!r}: {type(exc).__name__}: "
                           f"{mask_secrets(detail)[:300]}") from exc


def spark_master(conn_id: str) -> str:
    """The master of the Spark connection ``conn_id``; see ``spark_connection`` and ``master_of``."""
    return master_of(spark_connection(conn_id))


def master_of(conn) -> str:
    """A Spark connection's master, spelled as the provider's hook spells it (``host`` holding a URL
    or ``local[*]``, else ``conn_type://host:port``)."""
    if conn.conn_type == "spark" and conn.host and ("://" in conn.host or not conn.port):
        master = conn.host
    else:
        master = f"{conn.conn_type}://{conn.host or ''}"
    return f"{master}:{conn.port}" if conn.port else master


def connector_jars(jars_dir: str | None = None) -> list[str]:
    """The S3A connector's jars (``infra/spark/s3a-connector.lock``) in the jar cache
    (``music_recs.settings.connector_jars_dir``); fails in one line naming what is missing."""
    folder = jars_dir or connector_jars_dir()
    rows = [line.split("\t") for line in CONNECTOR_LOCK.read_text().splitlines() if line and not line.startswith("#")]
    jars = [os.path.join(folder, f"{artifact}-{version}.jar") for _, artifact, version, _ in rows]
    missing = [f"{group}:{artifact}:{version}" for (group, artifact, version, _), jar in zip(rows, jars)
               if not os.path.isfile(jar)]
    if missing:
        raise InvalidInput(f"the S3A connector is not installed: {len(missing)} of {len(jars)} jars missing from "
                           f"{folder} (first {missing[0]}); run infra/local/fetch_connector.sh (setup.sh does), "
                           "or set MUSIC_RECS_JARS_DIR to where they are")
    return jars


def s3_environment(conn_id: str) -> dict[str, str]:
    """The environment a job's S3A filesystem and boto3 read (``spark_jobs.lib.s3a``): endpoint,
    region and credentials of the Airflow AWS connection ``conn_id``. A connection without keys
    passes on the keys of the worker's own environment, if it has any (boto3's chain on the worker
    would use them too), and otherwise none: the job then uses the instance's or pod's role. Only
    a job that reads or writes ``s3a://`` gets any of them (``SparkJobHook.s3_conn_id``)."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise InvalidInput(f"the AWS connection {conn_id!r} is not defined; create it (docs/configuration.md)") from None
    extra = conn.extra_dejson or {}
    env = {}
    endpoint = extra.get("endpoint_url") or s3_endpoint()
    if endpoint:
        env["AWS_ENDPOINT_URL_S3"] = str(endpoint)
    if extra.get("region_name"):
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = str(extra["region_name"])
    if conn.login and conn.password:
        env.update(AWS_ACCESS_KEY_ID=conn.login, AWS_SECRET_ACCESS_KEY=conn.password)
        if extra.get("aws_session_token"):
            env["AWS_SESSION_TOKEN"] = str(extra["aws_session_token"])
    else:
        env.update({k: v for k, v in s3_client_environment().items() if k in WORKER_KEYS})
    return env


def package_zip(dest_dir: str) -> str:
    """Zip the core (``music_recs``) and ``spark_jobs`` for ``--py-files`` (rebuilt when sources change)."""
    sources = sorted(p for d in (CORE_DIR, JOBS_DIR) for p in d.rglob("*.py"))
    stamp = str(max((p.stat().st_mtime_ns for p in sources), default=0))
    path = os.path.join(dest_dir, f"music_recs_pyfiles_{stamp}.zip")
    if not os.path.exists(path):
        os.makedirs(dest_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"  # two submitters never share a half-written zip
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sources:
                base = CORE_DIR.parent if CORE_DIR in p.parents else REPO_ROOT
                zf.write(p, p.relative_to(base).as_posix())
        os.replace(tmp, path)
    return path


def job_path(job: str, jobs_dir: Path = JOBS_DIR) -> str:
    path = Path(jobs_dir) / f"{job}.py"
    if not path.exists():
        raise InvalidInput(f"unknown Spark job {job!r}: no {path}")
    return str(path)


def base_conf(event_log_dir: str = "") -> dict[str, str]:
    log4j = f"-Dlog4j2.configurationFile=file:{LOG4J2}"
    conf = {
        "spark.driver.extraJavaOptions": log4j,
        "spark.executor.extraJavaOptions": log4j,
        # Executors use the same interpreter as the driver (the project's environment).
        "spark.pyspark.python": spark_submit_env()["PYSPARK_PYTHON"],
    }
    return {**conf, **event_log_conf(event_log_dir)}


def ui_settings(mode: str, master: str) -> tuple[dict[str, str], dict[str, str]]:
    """Spark properties and environment variables for the driver's web UI in ``mode``
    (``music_recs.settings.DeploymentSettings.spark_ui``) on ``master``. Spark binds the UI to
    ``SPARK_LOCAL_IP``, else every interface, and the driver's RPC to the same address: on a
    cluster, executors must reach the driver, so ``loopback`` turns the UI off there instead."""
    conf = {"spark.ui.killEnabled": "false"}
    if mode == "open":
        return conf, {}
    if mode == "loopback" and master.startswith("local"):
        return conf, {"SPARK_LOCAL_IP": "127.0.0.1"}
    return {**conf, "spark.ui.enabled": "false"}, {}


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


def cause_line(output: str, returncode: int | None, conf: dict | None = None,
               folders: Sequence[tuple[str, str]] = ()) -> tuple[Failure, list[str], str]:
    """The failure class, its decisive lines, and the cause: the first exception in the output,
    else its first decisive line; for a Python worker that crashed under its memory limit, that;
    for a killed driver, the signal; for a full disk, the free space of the job's local
    ``folders`` ((what, path), ``music_recs.resubmission.free_space``) and the error."""
    limit = python_memory_mb(conf or {})
    failure, lines = classify_failure(output, returncode, limit)
    if failure is Failure.KILLED or (lines and lines[0] == PYTHON_CRASH_UNDER_LIMIT.format(limit)):
        return failure, lines, lines[0]
    if failure is Failure.NO_SPACE:
        error = first_exception("\n".join(lines)) or lines[0]
        return failure, lines, f"{free_space(folders, lines, output)}; {error}"
    return failure, lines, first_exception(output) or next((line for line in lines if line), "no output")


def local_path(uri: str) -> str | None:
    """The local path of ``uri`` (a path or ``file://``), None for a remote one (``s3a://``, ``hdfs://``)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and parsed.path.startswith("/"):
        return parsed.path
    return None


class SparkJobHook(BaseHook):
    """Submits one pipeline job to the master of an Airflow Spark connection.

    :param conn_id: the Spark connection (default ``spark_default``): ``host`` is the master
        (``local[*]``, ``spark://h:7077``, ``yarn``, ...), extras ``queue`` and ``spark-binary``.
    :param work_dir: where the spec, the result and the job's log go (default a temp folder).
    :param pyfiles_dir: where the ``--py-files`` zip is kept (default ``work_dir``).
    :param label: what the one-line error names besides the job, e.g. ``dt=2026-11-20`` (default none).
    :param event_log_dir: Spark event log folder for the History Server (default off).
    :param jobs_dir: where the jobs' entry points are (default ``spark_jobs/``).
    :param class_archive_dir: where the driver JVM's class archive is kept (``class_archive``);
        default ``music_recs.settings.spark_class_archive_dir()``; empty: none.
    :param master: the master as a run's plan resolved it (default None: read from the connection).
    :param s3_conn_id: the Airflow AWS connection whose endpoint and credentials the job's ``s3a://``
        filesystem uses, handed over in its environment (``s3_environment``), with the S3A connector's
        jars (``connector_jars``); default None: the job reads and writes no ``s3a://``.
    :param spark_ui: the driver's web UI, ``loopback`` (default), ``off`` or ``open`` (``ui_settings``).
    """

    conn_name_attr = "conn_id"
    default_conn_name = "spark_default"
    conn_type = "spark"
    hook_name = "music-recs Spark job"

    def __init__(self, conn_id: str = default_conn_name, work_dir: str = "/tmp/music_recs_submit",
                 pyfiles_dir: str | None = None, label: str = "", event_log_dir: str = "",
                 jobs_dir: Path = JOBS_DIR, class_archive_dir: str | None = None, master: str | None = None,
                 s3_conn_id: str | None = None, spark_ui: str = "loopback"):
        super().__init__()
        self.master = master
        self.spark_ui = spark_ui
        self.s3_conn_id = s3_conn_id
        self.class_archive_dir = spark_class_archive_dir() if class_archive_dir is None else class_archive_dir
        self.conn_id = conn_id
        self.work_dir = work_dir
        self.pyfiles_dir = pyfiles_dir or work_dir
        self.label = label
        self.event_log_dir = event_log_dir
        self.jobs_dir = jobs_dir
        self._process: subprocess.Popen | None = None

    def command(self, spec_path: str, result_path: str, job: str, conf: dict[str, str],
                options: dict[str, str | int | None], driver_java_options: str = "") -> list[str]:
        """The spark-submit command line for ``job`` (no secret in it: none is passed to a job).

        driver_java_options: JVM options added to the driver's (``spark.driver.extraJavaOptions``).
        """
        conn = spark_connection(self.conn_id)
        extra = conn.extra_dejson or {}
        binary = extra.get("spark-binary", "spark-submit")
        if binary not in ("spark-submit", "spark2-submit", "spark3-submit"):
            raise InvalidInput(f"the spark-binary extra of {self.conn_id} must be spark-submit, spark2-submit or "
                               f"spark3-submit, got {binary!r}")
        cmd = [binary, "--master", self.master or master_of(conn), "--deploy-mode", "client"]
        if extra.get("queue"):
            cmd += ["--queue", str(extra["queue"])]
        base = base_conf(self.event_log_dir)
        merged = {**base, **conf}
        # A caller's JVM options add to the base ones (the log4j configuration), not replace them.
        for name in JAVA_OPTIONS:
            added = driver_java_options if name == "spark.driver.extraJavaOptions" else ""
            merged[name] = " ".join(v for v in (base.get(name, ""), conf.get(name, ""), added) if v)
        for key, value in merged.items():
            cmd += ["--conf", f"{key}={value}"]
        cmd += ["--properties-file", str(SPARK_DEFAULTS), "--py-files", package_zip(self.pyfiles_dir),
                "--name", f"music_recs.{job}"]
        for option, value in options.items():
            if value is not None:
                cmd += [f"--{option.replace('_', '-')}", str(value)]
        return [*cmd, job_path(job, self.jobs_dir), *job_arguments(spec_path, result_path)]

    def submit(self, spec: JobSpec, conf: dict[str, str] | None = None, driver_memory: str | None = None,
               executor_memory: str | None = None, executor_cores: int | None = None,
               num_executors: int | None = None, total_executor_cores: int | None = None):
        """Run ``spec``'s job; return its typed result (``music_recs.jobs.RESULTS``), with ``submission``.

        :param spec: the job's spec; its class names the job.
        :param conf: Spark properties on top of the defaults (``--conf``); default none.
        :param driver_memory, executor_memory: e.g. ``"2048m"``; default Spark's.
        :param executor_cores, num_executors, total_executor_cores: executor shape; default Spark's.
        """
        job = spec.JOB
        os.makedirs(self.work_dir, exist_ok=True)
        spec_path = os.path.join(self.work_dir, f"{job}.spec.json")
        result_path = os.path.join(self.work_dir, f"{job}.json")
        log_path = os.path.join(self.work_dir, f"{job}.log")
        with open(spec_path, "w") as fh:
            fh.write(spec.to_json())
        if os.path.exists(result_path):
            os.remove(result_path)  # never read a previous attempt's result
        options = {"driver_memory": driver_memory, "executor_memory": executor_memory,
                   "executor_cores": executor_cores, "num_executors": num_executors,
                   "total_executor_cores": total_executor_cores}
        env = spark_submit_env()
        conf = conf or {}
        # What the command line gets: the caller's conf, the UI's and the connector's jars.
        ui_conf, ui_env = ui_settings(self.spark_ui, self.master or master_of(spark_connection(self.conn_id)))
        submitted = {**ui_conf, **conf}
        env.update(ui_env)
        if self.s3_conn_id:
            env.update(s3_environment(self.s3_conn_id))
            submitted["spark.jars"] = ",".join([*connector_jars(), *filter(None, conf.get("spark.jars", "").split(","))])
        archive = self.class_archive(env, submitted, driver_memory)
        cmd = self.command(spec_path, result_path, job, submitted, options, archive.java_options() if archive else "")
        writing_archive = bool(archive and archive.writing)
        master = cmd[cmd.index("--master") + 1]
        log.info("spark-submit %s on %s (log: %s)", job, master, log_path)
        started = time.time()
        recent: deque[str] = deque(maxlen=5000)
        head: list[str] = []  # the JVM's word on the class archive comes first
        returncode = None
        try:
            with open(log_path, "w") as log_file:
                self._process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                 errors="replace", env=env)
                for line in self._process.stdout:
                    line = mask_secrets(line)  # nothing the job prints leaves it unmasked, its log included
                    log_file.write(line)
                    recent.append(line.rstrip("\n"))
                    if len(head) < 20:
                        head.append(line)
                    log.info("%s", line.rstrip("\n"))
                returncode = self._process.wait()
        except OSError as exc:  # spark-submit not found, not executable
            recent.append(f"{type(exc).__name__}: {exc}")
        finally:
            if returncode is None:
                self.on_kill()  # interrupted (a timeout, a kill): no JVM outlives the task
            if archive:
                archive.settle(returncode, "".join(head))
        if returncode and writing_archive and os.path.exists(result_path):
            # The job wrote its result, so its work is done: the JVM failed writing the class
            # archive at exit. Take the result and never try that archive again.
            archive.mark_unusable(f"the JVM exited with {returncode} writing it, after job {job} succeeded")
            returncode = 0
        if returncode != 0:
            failure, lines, cause = cause_line("\n".join(recent), returncode, conf,
                                               self.local_folders(spec, conf, env))
            where = f" {self.label}" if self.label else ""
            error = PermanentSparkJobError if failure in PERMANENT else SparkJobError
            raise error(f"Spark job {job}{where} failed ({failure.value}): {cause} (full log: {log_path})",
                        "\n".join(recent), returncode, master, failure.value, lines)
        if not os.path.exists(result_path):
            raise SparkJobError(f"Spark job {job} finished but wrote no result at {result_path} (full log: {log_path})")
        with open(result_path) as fh:
            result = RESULTS[job].from_json(fh.read())
        return dataclasses.replace(result, submission={"settings": {"master": master, **options, "conf": conf},
                                                       "attempts": [{"attempt": 1, "outcome": "success",
                                                                     "seconds": round(time.time() - started, 1)}]})

    def local_folders(self, spec: JobSpec, conf: dict[str, str], env: dict[str, str]) -> list[tuple[str, str]]:
        """The local folders a job writes to, as (what, path): its spec's local ``*_uri`` and
        ``*_dir`` fields (the lake, outputs; not ``input_uri``, landing files staged before it
        ran), Spark's local dirs (``SPARK_LOCAL_DIRS``, else ``spark.local.dir``, else the JVM's
        temp folder), the Python temp folder, the event log folder and ``work_dir`` (its log)."""
        folders = [(f.name, path) for f in dataclasses.fields(spec)
                   if f.name.endswith(("_uri", "_dir")) and f.name != "input_uri"
                   and isinstance(getattr(spec, f.name), str) and (path := local_path(getattr(spec, f.name)))]
        java_tmp = re.search(r"-Djava\.io\.tmpdir=(\S+)", conf.get("spark.driver.extraJavaOptions", ""))
        local_dirs = env.get("SPARK_LOCAL_DIRS") or conf.get("spark.local.dir") or (java_tmp[1] if java_tmp else "/tmp")
        folders += [("spark.local.dir", d.strip()) for d in local_dirs.split(",") if local_path(d.strip())]
        folders.append(("TMPDIR", tempfile.gettempdir()))
        if self.event_log_dir and (path := local_path(self.event_log_dir)):
            folders.append(("spark.eventLog.dir", path))
        return [*folders, ("work_dir", os.path.abspath(self.work_dir))]

    def class_archive(self, env: dict[str, str], conf: dict[str, str],
                      driver_memory: str | None) -> DriverClassArchive | None:
        """The driver class archive a submission with ``env``, ``conf`` and ``driver_memory`` uses
        (``class_archive``); None when off or when its JDK or Spark cannot be told."""
        if not self.class_archive_dir:
            return None
        key = archive_key(env, conf, driver_memory, str(SPARK_DEFAULTS))
        return DriverClassArchive(self.class_archive_dir, key, not class_path_has_files(env, conf)) if key else None

    def on_kill(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.kill()


def job_arguments(spec_path: str, result_path: str) -> list[str]:
    """The job's command line: what ``spark_jobs.lib.session.parse_args`` reads."""
    return ["--spec", spec_path, "--result", result_path]


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
    hook: SparkJobHook,
    build_spec: Callable[[ExecutorSizing], JobSpec],
    sizing: ExecutorSizing,
    local: bool,
    memory_cap_mb: int,
    max_attempts: int = 3,
    conf: dict[str, str] | None = None,
):
    """Submit the job ``build_spec(sizing)`` describes; on failure classify it and resubmit with
    adjusted settings (``music_recs.resubmission.next_settings``).

    Non-retryable failures (bad input, bad parameter, a bug, a full disk) stop at once. Every attempt
    (settings, seconds, failure class, decisive log lines with secrets masked) is logged and
    returned in ``result.submission["attempts"]``. When no attempt succeeds the error says so in
    one line and is a ``PermanentSparkJobError``: the resubmissions were the retries, and
    Airflow must not multiply them.
    """
    attempts: list[dict] = []
    current = sizing
    master = hook.master or spark_master(hook.conn_id)
    for attempt in range(1, max_attempts + 1):
        settings = current.as_dict()
        log.info("attempt %d/%d with %s", attempt, max_attempts, {k: v for k, v in settings.items() if k != "estimate"})
        started = time.time()
        try:
            result = hook.submit(build_spec(current), conf={**(conf or {}), **current.spark_conf()},
                                 driver_memory=f"{current.driver_memory_mb}m", **executor_args(current, master))
        except SparkJobError as exc:
            failure, lines = Failure(exc.failure), exc.lines
            attempts.append({"attempt": attempt, "seconds": round(time.time() - started, 1), "outcome": failure.value,
                             "settings": settings, "log": lines})
            log.warning("attempt %d failed: %s\n  %s", attempt, failure.value, "\n  ".join(lines))
            nxt = next_settings(failure, current, local, memory_cap_mb)
            if nxt is None or attempt == max_attempts:
                summary = "; ".join(f"attempt {a['attempt']}: {a['outcome']} after {a['seconds']}s" for a in attempts)
                reason = "not retryable" if nxt is None else f"{max_attempts} attempts used"
                raise PermanentSparkJobError(f"{exc} [{reason}: {summary}]", exc.output, exc.returncode, exc.master,
                                             failure.value, lines) from None
            current = nxt
            continue
        attempts.append({"attempt": attempt, "seconds": round(time.time() - started, 1), "outcome": "success",
                         "settings": settings})
        return dataclasses.replace(result, submission={**result.submission, "attempts": attempts,
                                                       "sizing": current.as_dict()})
    raise AssertionError("unreachable")
