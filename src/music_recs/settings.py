"""Deployment settings: the one place that reads the process environment.

Three kinds of setting, each resolved once:

* ``DeploymentSettings``: where data lives, which connections to use, limits of a run. Each
  field is looked up, first match wins, in the environment variable ``MUSIC_RECS_<FIELD>``
  (e.g. ``MUSIC_RECS_RAW_BUCKET``), the Airflow Variable ``music_recs_config`` (a JSON
  object with the field names as keys; the Airflow side reads it and passes it to
  ``resolve``), then the default below. ``plan_run`` resolves them and carries them in the
  run plan, so every task of a run uses the same values.
* ``ClusterResources`` (``cluster_resources``): what Spark may use, for sizing executors,
  memory and partitions; resolved in ``plan_run`` too.
* ``DagSettings`` (``dag_settings``): what the DAG file needs at parse time (retries, pool,
  sensor timing); environment only, since a DAG is parsed without a task context.

Run params (rank, alpha, ...) are not settings: they come from the trigger form
(``music_recs.params``). The S3 endpoint and credentials come from the Airflow connection
``aws_conn_id``, the Spark master from ``spark_conn_id``; none of them is read here.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Mapping

from music_recs.failures import InvalidInput
from music_recs.schema import LANDING_FORMATS
from music_recs.checks import check_bucket, check_lake_uri, check_prefix
from music_recs.sizing import DEFAULT_BROADCAST_BUDGET_MB, ClusterResources

AIRFLOW_VARIABLE = "music_recs_config"
ENV_PREFIX = "MUSIC_RECS_"
# "auto" detects the landing format per file.
SOURCE_FORMATS = ("auto", *LANDING_FORMATS)
MIB = 1024 * 1024
SPARK_UI_MODES = ("loopback", "off", "open")


@dataclasses.dataclass(frozen=True)
class DeploymentSettings:
    """Where a run reads and writes, and its limits.

    raw_bucket: bucket of the landing stream logs and the quarantine (default ``music-raw``).
    landing_prefix: landing logs go under ``{landing_prefix}/dt=D/`` (default ``stream_logs``).
    quarantine_prefix: quarantined rows of day D go to ``{quarantine_prefix}/dt=D/``.
    models_bucket, models_prefix: where models are published (``music-models``, ``music_recs``).
    lake_uri: the Parquet lake: ``s3a://bucket/prefix`` (object storage, read and written by every
    stage with no shared disk), or an absolute local folder / ``file://`` (one machine, or a shared
    filesystem mounted at the same path everywhere); default: a temp folder.
    work_dir: the Airflow worker's own folder for what only it and the Spark driver (client mode)
    read: job specs, results and logs, the ``--py-files`` zip, Spark checkpoints of local-mode
    runs; used when the lake is not local (default ``{tempdir}/music_recs/work``).
    lake_retention_hours: an older copy of a rewritten day stays this long after the new copy is
    committed, so a reader that started on it can finish (24).
    source_format: ``auto`` (detected per file) or one landing format for a source that sends one.
    max_quarantine_fraction: share of a day's rows that may be quarantined before ingest fails (0.05).
    aws_conn_id, spark_conn_id: the Airflow connections for S3 and the Spark master.
    broadcast_budget_mb: factors up to this size are broadcast (CG training, scoring); 256.
    train_attempts: spark-submits of one training, resubmitted with adjusted settings (3).
    spark_event_log_dir: Spark event logs for the History Server; empty = off.
    do_not_recommend_key: key, in the models bucket, of the do-not-recommend list (CSV with
    ``item_id`` and optionally ``user_id``, see ``music_recs.rules``); empty (default) = no list.
    max_landing_files, max_landing_gib: a day's landing input may hold at most this many objects
    (10000) and bytes as stored (64 GiB); more stops ingest before Spark starts, in one line.
    max_landing_expansion: a compressed landing file may decompress to at most this many times its
    size (100; files that stay under 64 MiB decompressed always pass); more stops the ingest job in
    one line naming the file.
    quarantine_rows_per_reason: quarantined rows kept per reason and day (10000; the counts stay
    exact, only the rows kept are capped).
    spark_ui: the Spark driver's web UI: ``loopback`` (default: on 127.0.0.1 in local mode, off on
    a cluster, where the driver's address must stay reachable), ``off``, or ``open`` (every
    interface, Spark's default). Its kill links are always off.
    consumer_aws_conn_id: the read-only S3 connection of the consumer DAG and of the CLI's
    ``latest`` and ``recommend`` (``aws_models_reader``).
    """

    raw_bucket: str = "music-raw"
    landing_prefix: str = "stream_logs"
    quarantine_prefix: str = "quarantine/stream_logs"
    models_bucket: str = "music-models"
    models_prefix: str = "music_recs"
    lake_uri: str = os.path.join(tempfile.gettempdir(), "music_recs", "lake")
    work_dir: str = os.path.join(tempfile.gettempdir(), "music_recs", "work")
    lake_retention_hours: float = 24.0
    source_format: str = "auto"
    max_quarantine_fraction: float = 0.05
    aws_conn_id: str = "aws_default"
    spark_conn_id: str = "spark_default"
    broadcast_budget_mb: int = DEFAULT_BROADCAST_BUDGET_MB
    train_attempts: int = 3
    spark_event_log_dir: str = ""
    do_not_recommend_key: str = ""
    max_landing_files: int = 10_000
    max_landing_gib: float = 64.0
    max_landing_expansion: float = 100.0
    quarantine_rows_per_reason: int = 10_000
    spark_ui: str = "loopback"
    consumer_aws_conn_id: str = "aws_models_reader"

    def __post_init__(self):
        for f in dataclasses.fields(self):  # values from the environment arrive as text
            value = getattr(self, f.name)
            kind = type(f.default)
            if kind in (int, float) and not isinstance(value, kind):
                try:
                    object.__setattr__(self, f.name, kind(value))
                except (TypeError, ValueError):
                    raise InvalidInput(f"setting {f.name} must be a {kind.__name__}, got {value!r}") from None
        check_bucket(self.raw_bucket, "raw_bucket")
        check_bucket(self.models_bucket, "models_bucket")
        for name in ("landing_prefix", "quarantine_prefix", "models_prefix"):
            check_prefix(getattr(self, name), name)
        check_lake_uri(self.lake_uri)
        if self.source_format not in SOURCE_FORMATS:
            raise InvalidInput(f"source_format must be one of {SOURCE_FORMATS}, got {self.source_format!r}")
        if not 0 <= self.max_quarantine_fraction <= 1:
            raise InvalidInput(f"max_quarantine_fraction must be within [0, 1], got {self.max_quarantine_fraction}")
        if not os.path.isabs(self.work_dir):
            raise InvalidInput(f"work_dir must be an absolute local folder, got {self.work_dir!r}")
        if not 0 <= self.lake_retention_hours <= 24 * 365:
            raise InvalidInput(f"lake_retention_hours must be within [0, 8760], got {self.lake_retention_hours}")
        if self.broadcast_budget_mb < 0 or self.train_attempts < 1:
            raise InvalidInput("broadcast_budget_mb must be >= 0 and train_attempts >= 1")
        if min(self.max_landing_files, self.max_landing_gib, self.quarantine_rows_per_reason) <= 0 \
                or not self.max_landing_expansion >= 1:
            raise InvalidInput("max_landing_files, max_landing_gib and quarantine_rows_per_reason must be > 0, "
                               "max_landing_expansion >= 1")
        if self.spark_ui not in SPARK_UI_MODES:
            raise InvalidInput(f"spark_ui must be one of {SPARK_UI_MODES}, got {self.spark_ui!r}")

    # --- locations in S3 -----------------------------------------------------------------
    def landing_key_prefix(self, day: str) -> str:
        return f"{self.landing_prefix}/dt={day}/"

    def quarantine_key_prefix(self, day: str) -> str:
        return f"{self.quarantine_prefix}/dt={day}/"

    def model_key_prefix(self, day: str, run_key: str) -> str:
        return f"{self.models_prefix}/dt={day}/run={run_key}/"

    @property
    def pointer_key(self) -> str:
        return f"{self.models_prefix}/latest.json"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> DeploymentSettings:
        return cls(**values)


FIELDS = tuple(f.name for f in dataclasses.fields(DeploymentSettings))


def resolve(variable: Mapping | None = None, environ: Mapping[str, str] | None = None) -> DeploymentSettings:
    """The settings: ``MUSIC_RECS_<FIELD>`` > ``variable`` (the Airflow Variable's JSON) > default.

    variable: the Airflow Variable ``music_recs_config`` as a dict, or None outside Airflow.
    environ: the environment to read (default: this process's).
    """
    environ = os.environ if environ is None else environ
    variable = dict(variable or {})
    unknown = set(variable) - set(FIELDS)
    if unknown:
        raise InvalidInput(f"Airflow Variable {AIRFLOW_VARIABLE} has unknown key(s): {sorted(unknown)}")
    values = {}
    for name in FIELDS:
        env = environ.get(f"{ENV_PREFIX}{name.upper()}")
        if env:
            values[name] = env
        elif name in variable:
            values[name] = variable[name]
    return DeploymentSettings(**values)


def cluster_resources(local: bool, environ: Mapping[str, str] | None = None) -> ClusterResources:
    """What Spark may use: ``MUSIC_RECS_CLUSTER_{NODES,CORES_PER_NODE,MEMORY_PER_NODE_MB}`` and
    ``MUSIC_RECS_MAX_EXECUTORS``; by default this machine (one node, its cores and memory).

    local: True when the Spark master is ``local[...]`` (one JVM is driver and executor).
    """
    environ = os.environ if environ is None else environ

    def env(name: str, default: int) -> int:
        raw = environ.get(f"{ENV_PREFIX}{name}")
        try:
            return int(raw) if raw else default
        except ValueError:
            raise InvalidInput(f"{ENV_PREFIX}{name} must be a whole number, got {raw!r}") from None

    try:
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
    except (ValueError, OSError, AttributeError):
        total_mb = 8192
    return ClusterResources(nodes=env("CLUSTER_NODES", 1), cores_per_node=env("CLUSTER_CORES_PER_NODE", os.cpu_count() or 1),
                            memory_per_node_mb=env("CLUSTER_MEMORY_PER_NODE_MB", total_mb),
                            max_executors=env("MAX_EXECUTORS", 0), local=local)


@dataclasses.dataclass(frozen=True)
class DagSettings:
    """What the DAG file reads when it is parsed.

    task_retries: Airflow retries of a task that failed for a transient reason (2).
    spark_pool: the one-slot pool every Spark stage takes (``music_recs_spark``).
    sensor_timeout_s, sensor_poke_s: how long to wait for the day's logs (6 h), how often to look (300 s).
    """

    task_retries: int = 2
    spark_pool: str = "music_recs_spark"
    sensor_timeout_s: int = 6 * 3600
    sensor_poke_s: int = 300


def dag_settings(environ: Mapping[str, str] | None = None) -> DagSettings:
    """``MUSIC_RECS_TASK_RETRIES``, ``MUSIC_RECS_SPARK_POOL``, ``MUSIC_RECS_SENSOR_TIMEOUT_S``,
    ``MUSIC_RECS_SENSOR_POKE_S``, or the defaults."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in dataclasses.fields(DagSettings):
        raw = environ.get(f"{ENV_PREFIX}{f.name.upper()}")
        if raw:
            values[f.name] = raw if f.type == "str" else int(raw)
    return DagSettings(**values)


# What a spark-submit inherits from the worker: what finds and runs Java, Spark, Hadoop's
# configuration and this interpreter, locale and temp folders. Nothing else: the worker's
# environment holds the metadata database URL, the Fernet key and connections (AIRFLOW_*), and
# the job's S3 credentials are added from its connection alone (``spark_submit.s3_environment``).
SPARK_SUBMIT_VARIABLES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
    "JAVA_HOME", "SPARK_HOME", "SPARK_CONF_DIR", "SPARK_LOCAL_DIRS", "SPARK_LOCAL_IP", "SPARK_LOCAL_HOSTNAME",
    "SPARK_PUBLIC_DNS", "SPARK_SUBMIT_OPTS", "SPARK_DIST_CLASSPATH", "HADOOP_HOME", "HADOOP_CONF_DIR",
    "YARN_CONF_DIR", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV",
    "XDG_CACHE_HOME", "NUMBA_CACHE_DIR", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    # An instance or pod role, found by the job itself when the S3 connection holds no keys.
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_SESSION_NAME", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_REGION", "AWS_DEFAULT_REGION",
})


def spark_submit_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a spark-submit: the worker's variables Spark needs (``SPARK_SUBMIT_VARIABLES``,
    and the locale's ``LC_*``), executors running this interpreter (``PYSPARK_PYTHON``, else the
    running one), GX sending no analytics, and spark-submit (installed next to the interpreter by
    pyspark) found even where the environment is not activated."""
    environ = os.environ if environ is None else environ
    kept = {k: v for k, v in environ.items() if k in SPARK_SUBMIT_VARIABLES or k.startswith("LC_")}
    return {**kept, "PYSPARK_PYTHON": environ.get("PYSPARK_PYTHON", sys.executable),
            "GX_ANALYTICS_ENABLED": "false",
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), environ.get("PATH", "")])}


def spark_class_archive_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where the Spark driver's JVM class archives are kept (``music_recs_airflow.class_archive``):
    ``MUSIC_RECS_SPARK_CLASS_ARCHIVE_DIR``, else ``music_recs/spark-class-archives`` in the user's
    cache folder (``XDG_CACHE_HOME``, else ``~/.cache``); ``off``: none (every job starts cold)."""
    environ = os.environ if environ is None else environ
    value = environ.get(f"{ENV_PREFIX}SPARK_CLASS_ARCHIVE_DIR", "").strip()
    if value.lower() == "off":
        return ""
    if value:
        return value
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "music_recs", "spark-class-archives")


def connector_jars_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where the S3A connector's jars are cached (``infra/local/fetch_connector.sh`` puts them
    there): ``MUSIC_RECS_JARS_DIR``, else ``music_recs/jars`` in the user's cache folder."""
    environ = os.environ if environ is None else environ
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return environ.get(f"{ENV_PREFIX}JARS_DIR") or os.path.join(cache, "music_recs", "jars")


S3_CLIENT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                       "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def s3_client_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The S3 endpoint, region and credentials a Spark job's launcher put in its environment
    (``music_recs_airflow.spark_submit.s3_environment``), for ``spark_jobs.lib.s3a``."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in S3_CLIENT_VARIABLES if environ.get(name)}


def s3_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """``AWS_ENDPOINT_URL_S3``: the S3 endpoint when the Airflow connection names none."""
    environ = os.environ if environ is None else environ
    return environ.get("AWS_ENDPOINT_URL_S3") or None


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """The one-machine set-up of the CLI and the demo: state folder and local S3 port."""

    state_dir: str
    s3_port: int


def local_settings(environ: Mapping[str, str] | None = None) -> LocalSettings:
    """``MUSIC_RECS_LOCAL_STATE`` (default ``./.local``) and ``MUSIC_RECS_S3_PORT`` (5055)."""
    environ = os.environ if environ is None else environ
    return LocalSettings(environ.get("MUSIC_RECS_LOCAL_STATE") or os.path.join(os.getcwd(), ".local"),
                         int(environ.get("MUSIC_RECS_S3_PORT") or 5055))
