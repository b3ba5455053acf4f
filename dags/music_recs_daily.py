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
| `recommendation_rules` | reads and checks the do-not-recommend list (if configured) and fixes the artist cap for the run; a malformed list fails the run here, before training |
| `train_als` | Spark: implicit ALS (CG solver by default, MLlib on request), sized to the matrix, resubmitted on failure; first searches its params on the last training day when `tune` asks; starts from the newest model published for an earlier day when `warm_start` allows |
| `evaluate` | Spark: precision/recall/MAP/NDCG@k vs a popularity baseline; top-N recommendations under the rules, similar items |
| `quality_gate` | publishes only if the lower end of the model's bootstrap lift over popularity clears the margin and it did not collapse vs the published model |
| `publish` | S3: factors + recommendations + `manifest.json`, verified, then the `latest.json` pointer |
| `announce_model` | an event on the Asset `music_recs_published_model` (day, run, manifest key) when the pointer moved; skipped otherwise |

Trigger with params to change rank, iterations, alpha, regularization or the window.
Code: `plugins/music_recs_airflow/tasks.py` (task logic), `spark_jobs/` (Spark entry points).
A failure that cannot succeed on a retry (bad data, failed validation, a non-retryable Spark
error, training whose resubmissions are used up) fails its task at once.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

from music_recs.jobs import EvaluateResult, IngestResult, MatrixResult, TrainResult, ValidateResult
from music_recs.plan import RunPlan
from music_recs.settings import dag_settings
from music_recs_airflow import tasks
from music_recs_airflow.assets import PUBLISHED_MODEL
from music_recs_airflow.notifier import FailureNotifier
from music_recs_airflow.s3 import S3Store
from music_recs_airflow.sensors import LandingPartitionSensor

SETTINGS = dag_settings()


def _plan(plan: dict) -> RunPlan:
    return RunPlan.from_dict(plan)


def _store(plan: RunPlan) -> S3Store:
    return S3Store.from_airflow(plan.settings.aws_conn_id)


@dag(
    dag_id="music_recs_daily",
    # A data-interval timetable: each run covers [D, D+1) and runs after it ends.
    # (schedule="@daily" in Airflow 3 gives runs with an empty interval.)
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    params=tasks.airflow_params(),
    default_args={
        "owner": "music-recs",
        "retries": SETTINGS.task_retries,
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
    # Every Spark stage takes a slot of this pool (infra/airflow/pools.json, one slot), so a
    # backfill and the daily run never train at the same time or extend the id index together.
    pool = SETTINGS.spark_pool

    @task(execution_timeout=dt.timedelta(minutes=5), retries=0)
    def plan_run() -> dict:
        ctx = get_current_context()
        # .get: a manual run without a logical date has no interval; plan_run says so.
        return tasks.plan_run(ctx["params"], ctx.get("data_interval_start"), ctx["run_id"],
                              tasks.load_settings()).to_dict()

    @task(pool=pool)
    def ingest(plan: dict) -> dict:
        plan = _plan(plan)
        return tasks.ingest(_store(plan), plan).to_dict()

    @task(pool=pool)
    def validate(plan: dict, ingested: dict) -> dict:
        return tasks.validate(_plan(plan), IngestResult.from_dict(ingested)).to_dict()

    @task(pool=pool)
    def build_confidence(plan: dict) -> dict:
        return tasks.build_confidence(_plan(plan)).to_dict()

    @task(execution_timeout=dt.timedelta(minutes=10))  # a malformed list fails at once (fail_fast)
    def recommendation_rules(plan: dict) -> dict:
        plan = _plan(plan)
        return tasks.recommendation_rules(_store(plan), plan)

    @task(pool=pool, execution_timeout=dt.timedelta(hours=4))
    def train_als(plan: dict, matrix: dict, rules: dict) -> dict:
        plan = _plan(plan)
        return tasks.train(plan, MatrixResult.from_dict(matrix), _store(plan), rules).to_dict()

    @task(pool=pool)
    def evaluate(plan: dict, matrix: dict, trained: dict, rules: dict) -> dict:
        plan = _plan(plan)
        return tasks.evaluate(plan, MatrixResult.from_dict(matrix), _store(plan), TrainResult.from_dict(trained),
                              rules).to_dict()

    @task(retries=0)
    def quality_gate(plan: dict, evaluated: dict) -> dict:
        plan = _plan(plan)
        return tasks.quality_gate(_store(plan), plan, EvaluateResult.from_dict(evaluated))

    @task
    def publish(plan: dict, ingested: dict, validated: dict, matrix: dict, trained: dict, evaluated: dict,
                gate: dict) -> dict:
        plan = _plan(plan)
        return tasks.publish_run(_store(plan), plan, IngestResult.from_dict(ingested),
                                 ValidateResult.from_dict(validated), MatrixResult.from_dict(matrix),
                                 TrainResult.from_dict(trained), EvaluateResult.from_dict(evaluated), gate)

    @task(outlets=[PUBLISHED_MODEL], retries=0)
    def announce_model(plan: dict, published: dict, *, outlet_events=None) -> dict:
        extra = tasks.model_event(_plan(plan), published)
        outlet_events[PUBLISHED_MODEL].extra = extra
        return extra

    plan = plan_run()
    ingested = ingest(plan)
    validated = validate(plan, ingested)
    matrix = build_confidence(plan)
    rules = recommendation_rules(plan)
    trained = train_als(plan, matrix, rules)  # a malformed list stops the run before training
    evaluated = evaluate(plan, matrix, trained, rules)
    gate = quality_gate(plan, evaluated)
    wait_for_logs = LandingPartitionSensor(
        task_id="wait_for_logs", poke_interval=SETTINGS.sensor_poke_s, timeout=SETTINGS.sensor_timeout_s,
        mode="reschedule", execution_timeout=dt.timedelta(minutes=5),
    )
    plan >> wait_for_logs >> ingested >> validated >> matrix >> trained >> evaluated >> gate
    announce_model(plan, publish(plan, ingested, validated, matrix, trained, evaluated, gate))


music_recs_daily()
