"""The run plan and the lake's layout: what every task of a run agrees on.

``plan_run`` (the DAG's first task) makes one ``RunPlan``: the day, the run key, the
checked params, the deployment settings and the cluster's resources, all resolved once. It
crosses task boundaries as JSON (``to_dict``/``from_dict``) and is frozen, so a later task
cannot drift from what the first one decided. Paths are derived from it, never stored twice.

``LakeLayout`` is the one place that spells the lake's folders; the Airflow side and the
Spark jobs both use it.

What stays on the Airflow worker's own disk: Spark jobs run in client mode, so the driver runs
where the task runs, and the job's spec, result and log, and the ``--py-files`` zip, are read
and written there only (``RunPlan.work_dir``, ``RunPlan.submit_dir``). With a local lake they
stay where they always were, in the lake; with an ``s3a://`` lake, under the setting
``work_dir``. Spark checkpoints go where every process that writes them can: the worker's disk
when Spark runs in local mode, the lake on a cluster (``RunPlan.checkpoints``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from urllib.parse import urlparse

from music_recs.checks import parse_day
from music_recs.params import RunParams
from music_recs.settings import DeploymentSettings
from music_recs.sizing import ClusterResources


COMMITTED_POINTER = "_COMMITTED.json"
VERSION_FOLDER = "v="  # a copy of a day: plays/dt=D/v=V/, quarantine/dt=D/v=V/
LEGACY_MARKER = "_SUCCESS"  # what Spark's committer left in a day folder of the old layout
LEASES = "_leases"


@dataclasses.dataclass(frozen=True)
class LakeLayout:
    """Folders of the Parquet lake rooted at ``root`` (a local folder, ``file://``, ``s3a://`` or ``hdfs://``).

    ::

        plays/dt=D/                     accepted plays of day D (ingest): the copy ``v=V/`` that
                                        ``_COMMITTED.json`` names (a day of the old layout: the files
                                        and ``_SUCCESS`` directly inside)
        quarantine/dt=D/                rejected rows of day D with their reason (ingest), ``v=V/`` likewise
        ids/{entity}/chunk=N/           the append-only id index (user, track, artist)
        _landing/dt=D/                  the day's landing files, staged for Spark
        matrix/dt=D/                    matrices built outside a DAG run (confidence's default)
        runs/dt=D/run=R/                one DAG run: matrix/, model/, results/, data_docs/
        _checkpoints/dt=D/run=R/        Spark checkpoints of that run's training
        _submit/                        the --py-files zip of the jobs
    """

    root: str

    def __post_init__(self):
        object.__setattr__(self, "root", self.root.rstrip("/"))

    def plays(self, day: str | None = None) -> str:
        return f"{self.root}/plays" if day is None else f"{self.root}/plays/dt={day}"

    def committed_pointer(self, day: str) -> str:
        """The readers' pointer of day D (``plays/dt=D/_COMMITTED.json``): which copy is committed."""
        return f"{self.plays(day)}/{COMMITTED_POINTER}"

    def plays_copy(self, day: str, version: str) -> str:
        """The accepted plays of one copy ``v=V`` of day D."""
        return f"{self.plays(day)}/{VERSION_FOLDER}{version}"

    def quarantine_copy(self, day: str, version: str) -> str:
        """The quarantined rows of one copy ``v=V`` of day D (the same V as its plays)."""
        return f"{self.quarantine(day)}/{VERSION_FOLDER}{version}"

    def legacy_marker(self, day: str) -> str:
        """``plays/dt=D/_SUCCESS``: a committed day of the old layout (files directly in the day folder)."""
        return f"{self.plays(day)}/{LEGACY_MARKER}"

    def day_lease(self, day: str) -> str:
        """The lease of day D's writer: ``_leases/dt=D.json``."""
        return f"{self.root}/{LEASES}/dt={day}.json"

    @property
    def ids_lease(self) -> str:
        """The lease of the id index's writer, ``_leases/ids.json`` (``ids/`` is one index for every day)."""
        return f"{self.root}/{LEASES}/ids.json"

    def quarantine(self, day: str) -> str:
        return f"{self.root}/quarantine/dt={day}"

    def ids(self, entity: str) -> str:
        return f"{self.root}/ids/{entity}"

    def landing_staging(self, day: str) -> str:
        return f"{self.root}/_landing/dt={day}"

    def default_matrix(self, day: str) -> str:
        return f"{self.root}/matrix/dt={day}"

    def run_dir(self, day: str, run_key: str) -> str:
        return f"{self.root}/runs/dt={day}/run={run_key}"

    def checkpoints(self, day: str, run_key: str) -> str:
        return f"{self.root}/_checkpoints/dt={day}/run={run_key}"

    @property
    def submit_dir(self) -> str:
        return f"{self.root}/_submit"


def local_path(uri: str) -> str | None:
    """The local path of ``uri`` (an absolute path or ``file://``), None for a remote one (``s3a://``, ``hdfs://``)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return parsed.path if parsed.scheme else uri
    return None


def matrix_of(matrices_uri: str, granularity: str) -> str:
    """The folder of one granularity's matrix (``train/``, ``holdout/``, ``items/``, ``stats.json``)."""
    return f"{matrices_uri.rstrip('/')}/granularity={granularity}"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything later tasks need to know about a run, fixed by ``plan_run``.

    day: the partition ``dt=D`` the run processes (its data interval's start), ISO format.
    run_id: Airflow's run id; run_key: the same, safe as one S3 key or folder segment.
    params: the run's checked params; settings: deployment settings; cluster: what Spark may use.
    spark_master: the master of the Spark connection (``local[*]``, ``spark://host:7077``, ``yarn`` ...).
    """

    day: str
    run_id: str
    run_key: str
    params: RunParams
    settings: DeploymentSettings
    cluster: ClusterResources
    spark_master: str

    def __post_init__(self):
        parse_day(self.day, "the run's day")

    # --- where things are -------------------------------------------------------------
    @property
    def lake(self) -> LakeLayout:
        return LakeLayout(self.settings.lake_uri)

    @property
    def run_dir(self) -> str:
        return self.lake.run_dir(self.day, self.run_key)

    @property
    def matrices(self) -> str:
        return f"{self.run_dir}/matrix"

    @property
    def matrix(self) -> str:
        return matrix_of(self.matrices, self.params.granularity)

    @property
    def model(self) -> str:
        return f"{self.run_dir}/model"

    @property
    def results(self) -> str:
        return f"{self.run_dir}/results"

    @property
    def lake_is_local(self) -> bool:
        return local_path(self.settings.lake_uri) is not None

    @property
    def local_run_dir(self) -> str:
        """The run's folder on the Airflow worker's disk: the run folder of a local lake, else
        ``{work_dir}/runs/dt=D/run=R`` (the setting ``work_dir``)."""
        if self.lake_is_local:
            return local_path(self.run_dir)
        return f"{self.settings.work_dir.rstrip('/')}/runs/dt={self.day}/run={self.run_key}"

    @property
    def work_dir(self) -> str:
        """Where the jobs' specs, results and logs go (a local folder: the driver runs here)."""
        return f"{self.local_run_dir}/results"

    @property
    def submit_dir(self) -> str:
        """Where the ``--py-files`` zip is kept (a local folder): the lake's ``_submit`` of a local
        lake, else ``{work_dir}/_submit``."""
        if self.lake_is_local:
            return local_path(self.lake.submit_dir)
        return f"{self.settings.work_dir.rstrip('/')}/_submit"

    @property
    def data_docs(self) -> str:
        return f"{self.run_dir}/data_docs"

    @property
    def checkpoints(self) -> str:
        """Spark checkpoints of the run's training: the lake's ``_checkpoints/dt=D/run=R`` (a local
        lake, or a cluster, whose executors all write them), except a local-mode run on an
        ``s3a://`` lake: one JVM writes and reads them, so they stay on the worker's disk
        (``{local_run_dir}/_checkpoints``) instead of going through S3."""
        if self.lake_is_local or not self.local:
            return self.lake.checkpoints(self.day, self.run_key)
        return f"{self.local_run_dir}/_checkpoints"

    @property
    def landing_staging(self) -> str:
        return self.lake.landing_staging(self.day)

    @property
    def landing_uri(self) -> str:
        return f"s3://{self.settings.raw_bucket}/{self.settings.landing_key_prefix(self.day)}"

    @property
    def local(self) -> bool:
        return self.spark_master.startswith("local")

    # --- crossing task boundaries -------------------------------------------------------
    def to_dict(self) -> dict:
        return {"day": self.day, "run_id": self.run_id, "run_key": self.run_key, "params": self.params.as_dict(),
                "settings": self.settings.as_dict(), "cluster": self.cluster.as_dict(),
                "spark_master": self.spark_master}

    @classmethod
    def from_dict(cls, values: Mapping) -> RunPlan:
        return cls(day=values["day"], run_id=values["run_id"], run_key=values["run_key"],
                   params=RunParams(**values["params"]), settings=DeploymentSettings(**values["settings"]),
                   cluster=ClusterResources(**values["cluster"]), spark_master=values["spark_master"])
