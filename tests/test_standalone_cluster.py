"""Training on a real Spark standalone cluster (a master and two workers on 127.0.0.1),
submitted through the pipeline's Spark hook like the DAG does."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pandas as pd
import pytest

from music_recs import schema as S
from music_recs.failures import PermanentSparkJobError
from music_recs.jobs import TrainSpec
from music_recs.recipe import Recipe
from music_recs.resubmission import Failure
from music_recs.sizing import ExecutorSizing
from music_recs_airflow.spark_submit import SparkJobHook, run_with_resubmission
from tests.spark_cluster import StandaloneCluster

pytestmark = pytest.mark.spark

CONN_ID = "spark_standalone_test"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = StandaloneCluster(tmp_path_factory.mktemp("standalone"), workers=2, cores=1, memory="3g").start()
    mp = pytest.MonkeyPatch()
    mp.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "spark", "host": "spark://127.0.0.1",
                                                              "port": c.port}))
    mp.setenv("SPARK_LOCAL_IP", "127.0.0.1")  # the driver listens on loopback too
    yield c
    mp.undo()
    c.stop()


def write_matrix(folder, users: int, items: int, per_user: int, seed: int = 0) -> str:
    """A random training matrix in the confidence job's layout (every item rated at least once)."""
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(users), per_user)
    i = rng.integers(0, items, size=u.size)
    i[:items] = np.arange(items)
    df = pd.DataFrame({S.USER_IDX: u.astype("int32"), S.ITEM_IDX: i.astype("int32")}).drop_duplicates()
    df["strength"] = rng.uniform(0.5, 3.0, len(df)).astype("float32")
    df[S.USER_ID] = "u" + df[S.USER_IDX].astype(str)
    df[S.ITEM_ID] = "t" + df[S.ITEM_IDX].astype(str)
    (folder / "train").mkdir(parents=True)
    df.to_parquet(folder / "train" / "part-00000.parquet", index=False)
    return str(folder)


def sizing(memory_mb: int = 1024, blocks: int = 2) -> ExecutorSizing:
    return ExecutorSizing(executor_memory_mb=memory_mb, executor_memory_overhead_mb=384, executor_cores=1,
                          num_executors=2, user_blocks=blocks, item_blocks=blocks, shuffle_partitions=4,
                          driver_memory_mb=1024)


def train(tmp_path, matrix: str, s: ExecutorSizing, max_iter: int = 2, rank: int = 8, attempts: int = 3,
          conf: dict | None = None, **spec):
    def build(z):
        return TrainSpec(matrix_uri=matrix, out_uri=str(tmp_path / "model"), max_iter=max_iter,
                         checkpoint_dir=str(tmp_path / "checkpoints"), user_blocks=z.user_blocks,
                         item_blocks=z.item_blocks, checkpoint_interval=z.checkpoint_interval,
                         **{"strategy": "mllib", **spec}, recipe=Recipe(rank=rank), strength_as_built=True)

    return run_with_resubmission(SparkJobHook(CONN_ID, work_dir=str(tmp_path / "submit")), build, s, local=False,
                                 memory_cap_mb=2048, max_attempts=attempts, conf=conf)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


def test_a_missing_input_fails_once_fast_on_the_cluster(cluster, tmp_path):
    started = time.time()
    with pytest.raises(PermanentSparkJobError) as err:
        train(tmp_path, str(tmp_path / "no-such-matrix"), sizing())
    message = str(err.value)
    assert "not retryable" in message and "attempt 1: non_retryable" in message and "attempt 2" not in message
    assert "PATH_NOT_FOUND" in message or "does not exist" in message
    assert time.time() - started < 90


def test_too_little_executor_memory_fails_out_of_memory_and_the_resubmission_with_more_succeeds(cluster, tmp_path):
    # The CG strategy broadcasts the whole catalogue to every Python worker: 300k items at rank
    # 64 are 77 MB, held twice while a broadcast is read, more than a 640 MB Python worker
    # (numpy, numba, pyarrow loaded: ~570 MB) has left; the doubled limit fits.
    matrix = write_matrix(tmp_path / "matrix", users=1000, items=300_000, per_user=300)
    first = sizing(memory_mb=1024, blocks=2).scaled(python_memory_mb=640)
    result = train(tmp_path, matrix, first, max_iter=2, rank=64, attempts=3,
                   strategy="cg", exchange={"user": "broadcast", "item": "broadcast"})
    attempts = result.submission["attempts"]
    assert [a["outcome"] for a in attempts] == [Failure.EXECUTOR_OOM.value, "success"], attempts
    # The worker either raised MemoryError or was killed outright by the limit (a crash, which
    # only a memory limit makes a memory failure).
    assert any("MemoryError" in line for line in attempts[0]["log"]) or \
        attempts[0]["log"][0] == "a Python worker crashed under its 640 MiB memory limit (spark.executor.pyspark.memory)"
    assert attempts[0]["settings"]["python_memory_mb"] == 640 and attempts[1]["settings"]["python_memory_mb"] == 1280
    assert result.submission["sizing"]["user_blocks"] == 4  # smaller blocks too
    assert result.data["items"] == 300_000 and result.spark_conf["spark.executor.pyspark.memory"] == "1280m"


def test_a_worker_killed_during_training_does_not_lose_the_run(cluster, tmp_path):
    matrix = write_matrix(tmp_path / "matrix", users=3000, items=20000, per_user=40)
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = train(tmp_path, matrix, sizing(), max_iter=12, rank=16)
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    # ALS checkpoints its factors every 5 iterations (of 12): the first checkpoint files mean
    # the fit is under way on both executors.
    wait_for(lambda: any((tmp_path / "checkpoints").rglob("rdd-*")) or not worker.is_alive(), 240,
             "the first ALS checkpoint")
    assert worker.is_alive(), f"training ended before the kill: {outcome}"
    assert cluster.running_executors() == 2, cluster.state()
    cluster.kill_worker(1)
    killed_at = time.time()
    worker.join(600)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.seconds["fit"] > 0 and result.data["users"] == 3000
    # The run finished after the kill, on the worker that was left.
    assert time.time() > killed_at
    alive = [w for w in (cluster.state() or {}).get("workers", []) if w["state"] == "ALIVE"]
    assert len(alive) == 1
    # Either Spark's task retries carried it (one attempt) or a resubmission did.
    outcomes = [a["outcome"] for a in result.submission["attempts"]]
    assert outcomes[-1] == "success" and set(outcomes[:-1]) <= {Failure.EXECUTORS_LOST.value}


def test_the_run_day_trains_and_evaluates_on_the_cluster_with_the_lake_on_s3_and_no_shared_disk(
        cluster, spark, store, bucket, tmp_path, monkeypatch):
    """build_confidence, train_als and evaluate as the DAG runs them, on the cluster, with the lake on
    the S3 server: the workers have their own home, temp and working folders and none of this
    process's AWS variables (``StandaloneCluster``), so the connector's jars, the S3 endpoint and
    keys, the code and every input and output reach them through the job, not through a disk."""
    from music_recs.settings import DeploymentSettings
    from music_recs_airflow import tasks
    from music_recs_dev.sample_data import Catalogue, CatalogueSpec, write_days_local
    from spark_jobs import ingest
    from music_recs.jobs import IngestSpec
    import datetime as dt

    lake = f"s3a://{bucket}/lake"
    day = dt.date(2026, 11, 20)
    days = [day - dt.timedelta(days=i) for i in (2, 1, 0)]
    write_days_local(str(tmp_path / "landing"), days, 2000, Catalogue(CatalogueSpec.for_plays_per_day(2000)))
    for d in days:  # the history, as earlier daily runs left it in the lake
        ingest.run(spark, IngestSpec(day=str(d), input_uri=str(tmp_path / "landing" / f"dt={d}"), lake_uri=lake))
    for name, value in (("NODES", "2"), ("CORES_PER_NODE", "1"), ("MEMORY_PER_NODE_MB", "3072")):
        monkeypatch.setenv(f"MUSIC_RECS_CLUSTER_{name}", value)
    cfg = DeploymentSettings(raw_bucket=bucket, models_bucket=bucket, lake_uri=lake, spark_conn_id=CONN_ID,
                             work_dir=str(tmp_path / "work"))
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    plan = tasks.plan_run({"window_days": 3, "holdout_days": 1, "tune": "off", "warm_start": "off", "max_iter": 5},
                          start, "manual__cluster_s3", cfg)
    assert plan.spark_master == cluster.master_url and plan.checkpoints.startswith(f"{lake}/_checkpoints/")

    matrix = tasks.build_confidence(plan)
    trained = tasks.train(plan, matrix, store)
    evaluated = tasks.evaluate(plan, matrix, store, trained)
    assert trained.data["users"] > 0 and evaluated.model["users_evaluated"] > 0
    assert evaluated.model["map"] > evaluated.baseline_popularity["map"]  # the planted taste is learnt
    keys = [o.key for o in store.list_objects(bucket, "lake/")]
    for part in (f"lake/runs/dt={day}/run=manual__cluster_s3/model/", f"lake/runs/dt={day}/run=manual__cluster_s3/matrix/",
                 f"lake/_checkpoints/dt={day}/run=manual__cluster_s3/"):
        assert any(k.startswith(part) for k in keys), part
    # Nothing of the lake on any local disk: the driver's side keeps specs, results, logs and the
    # code's zip; the workers' folders hold their logs, jars and the job's code, no lake file.
    local = [p for p in tmp_path.rglob("*") if p.is_file() and "landing" not in p.parts]
    assert local and all("work" in p.parts and ("results" in p.parts or "_submit" in p.parts) for p in local), local
    assert not [p for p in cluster.root.rglob("*") if p.suffix == ".parquet" or p.name.startswith("rdd-")]
