"""The DAG folder imports cleanly and music_recs_daily is wired as documented."""

import datetime as dt
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["music_recs_daily"]


def test_dag_folder_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"music_recs_daily", "music_recs_model_consumer"} <= set(dagbag.dag_ids)


def test_the_published_model_is_an_asset_the_consumer_is_scheduled_on(dag, dagbag):
    from music_recs_airflow.assets import PUBLISHED_MODEL

    assert dag.get_task("announce_model").outlets == [PUBLISHED_MODEL]
    assert dag.get_task("announce_model").retries == 0
    consumer = dagbag.dags["music_recs_model_consumer"]
    assert PUBLISHED_MODEL in consumer.timetable.asset_condition.objects


def test_stages_run_in_order(dag):
    order = ["plan_run", "wait_for_logs", "ingest", "validate", "build_confidence", "train_als", "evaluate", "quality_gate",
             "publish", "announce_model"]
    assert set(dag.task_ids) == set(order) | {"recommendation_rules"}
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    # The rules are read before training (a malformed list stops the run there), and evaluation uses them.
    assert dag.get_task("recommendation_rules").upstream_task_ids == {"plan_run"}
    assert dag.get_task("recommendation_rules").downstream_task_ids == {"train_als", "evaluate"}


def test_run_settings(dag):
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.doc_md and "music_recs_daily" in dag.doc_md
    assert {"music-recs", "spark", "als"} <= set(dag.tags)
    for task in dag.tasks:
        assert task.execution_timeout is not None, task.task_id
    assert dag.get_task("ingest").retries == 0  # tests set MUSIC_RECS_TASK_RETRIES=0
    assert dag.get_task("ingest").retry_exponential_backoff
    assert dag.get_task("wait_for_logs").mode == "reschedule"
    spark_tasks = {"ingest", "validate", "build_confidence", "train_als", "evaluate"}
    assert {t.task_id for t in dag.tasks if t.pool == "music_recs_spark"} == spark_tasks


def test_the_spark_pool_is_defined_with_one_slot():
    import json

    pools = json.loads((Path(__file__).resolve().parent.parent / "infra/airflow/pools.json").read_text())
    assert pools["music_recs_spark"]["slots"] == 1


def test_params_are_typed_and_bounded(dag):
    params = dag.params
    for name in ("rank", "max_iter", "reg", "alpha", "window_days"):
        assert params.get_param(name).description, name
        assert "minimum" in params.get_param(name).schema or "exclusiveMinimum" in params.get_param(name).schema
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="-3 is less than the minimum of 2"):
        params.get_param("rank").resolve(-3)


def test_each_run_covers_one_day_from_its_data_interval(dag):
    from airflow.sdk import CronDataIntervalTimetable
    from music_recs_airflow.tasks import logical_day

    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    start = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    # The interval a scheduled run covers is one whole day, never empty.
    assert logical_day(start) == dt.date(2026, 11, 20)
    with pytest.raises(ValueError, match="no data interval"):
        logical_day(None)
