"""
### music_recs_daily

Daily music recommendations from implicit feedback (stream counts, not ratings).

Each run processes **one day**: the partition `dt=YYYY-MM-DD` where the day is the start
of the run's data interval (a scheduled run at 00:00 UTC on D+1 processes D).

| task | what it does |
|---|---|
| `plan_run` | validates the params, fixes the day, paths and run key for every later task |
| `wait_for_logs` | waits for files under `s3://<raw>/stream_logs/dt=D/` |
| `ingest` | Spark: landing JSON lines -> typed Parquet in the lake; bad rows quarantined with a reason |
| `validate` | Spark + Great Expectations suite `expectations/stream_logs_daily.json` |
| `build_confidence` | Spark: plays -> (user, item, confidence) over the window, last days held out |
| `train_als` | spark-submit of Spark MLlib implicit ALS |
| `evaluate` | Spark: precision/recall/MAP/NDCG@k vs a popularity baseline; top-N recommendations, similar items |
| `quality_gate` | publishes only if the model beats popularity and did not collapse vs the published model |
| `publish` | S3: factors + recommendations + `manifest.json`, verified, then the `latest.json` pointer |

Trigger with params to change rank, iterations, alpha, regularization or the window.
Code: `plugins/music_recs/tasks.py` (task logic), `spark_jobs/` (Spark entry points).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

from music_recs import tasks
from music_recs.config import load_config
from music_recs.notifier import FailureNotifier
from music_recs.params import airflow_params
from music_recs.s3 import S3Store
from music_recs.sensors import LandingPartitionSensor

SENSOR_TIMEOUT_S = int(os.environ.get("MUSIC_RECS_SENSOR_TIMEOUT_S", 6 * 3600))
SENSOR_POKE_S = int(os.environ.get("MUSIC_RECS_SENSOR_POKE_S", 300))
TASK_RETRIES = int(os.environ.get("MUSIC_RECS_TASK_RETRIES", 2))
# Every Spark stage takes a slot of this pool (infra/airflow/pools.json, one slot), so a
# backfill and the daily run never train at the same time or extend the id index together.
SPARK_POOL = os.environ.get("MUSIC_RECS_SPARK_POOL", "music_recs_spark")


def _store(plan: dict) -> S3Store:
    return S3Store.from_airflow(plan["config"]["aws_conn_id"])


@dag(
    dag_id="music_recs_daily",
    # A data-interval timetable: each run covers [D, D+1) and runs after it ends.
    # (schedule="@daily" in Airflow 3 gives runs with an empty interval.)
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    params=airflow_params(),
    default_args={
        "owner": "music-recs",
        "retries": TASK_RETRIES,
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": dt.timedelta(minutes=30),
        "execution_timeout": dt.timedelta(hours=2),
        # Posts to the connection music_recs_alerts; only logs when it does not exist.
        "on_failure_callback": FailureNotifier(),
    },
    tags=["music-recs", "spark", "als"],
    doc_md=__doc__,
)
def music_recs_daily():
    @task(execution_timeout=dt.timedelta(minutes=5), retries=0)
    def plan_run() -> dict:
        ctx = get_current_context()
        # .get: a manual run without a logical date has no interval; plan_run says so.
        return tasks.plan_run(ctx["params"], ctx.get("data_interval_start"), ctx["run_id"], load_config())

    @task(pool=SPARK_POOL)
    def ingest(plan: dict) -> dict:
        return tasks.ingest(_store(plan), plan)

    @task(pool=SPARK_POOL)
    def validate(plan: dict) -> dict:
        return tasks.validate(plan)

    @task(pool=SPARK_POOL)
    def build_confidence(plan: dict) -> dict:
        return tasks.build_confidence(plan)

    @task(pool=SPARK_POOL, execution_timeout=dt.timedelta(hours=4))
    def train_als(plan: dict, matrix: dict) -> dict:
        return tasks.train(plan, matrix)

    @task(pool=SPARK_POOL)
    def evaluate(plan: dict, matrix: dict) -> dict:
        return tasks.evaluate(plan, matrix)

    @task(retries=0)
    def quality_gate(plan: dict, evaluated: dict) -> dict:
        return tasks.quality_gate(_store(plan), plan, evaluated)

    @task
    def publish(plan: dict, ingested: dict, validated: dict, matrix: dict, trained: dict, evaluated: dict,
                gate: dict) -> dict:
        return tasks.publish_run(_store(plan), plan, ingested, validated, matrix, trained, evaluated, gate)

    plan = plan_run()
    ingested = ingest(plan)
    validated = validate(plan)
    matrix = build_confidence(plan)
    trained = train_als(plan, matrix)
    evaluated = evaluate(plan, matrix)
    gate = quality_gate(plan, evaluated)
    wait_for_logs = LandingPartitionSensor(
        task_id="wait_for_logs", poke_interval=SENSOR_POKE_S, timeout=SENSOR_TIMEOUT_S, mode="reschedule",
        execution_timeout=dt.timedelta(minutes=5),
    )
    plan >> wait_for_logs >> ingested >> validated >> matrix >> trained >> evaluated >> gate
    publish(plan, ingested, validated, matrix, trained, evaluated, gate)


music_recs_daily()
