"""The landing sensor against the local S3 server."""

import datetime as dt

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout

from music_recs_airflow.sensors import LandingPartitionSensor


@pytest.fixture
def raw_bucket(store, bucket, monkeypatch):
    # Set after the plan is made: the sensor must read the plan's settings, not resolve them again.
    monkeypatch.setenv("MUSIC_RECS_RAW_BUCKET", "not-the-plan-s-bucket")
    return bucket


class _TaskInstance:
    def __init__(self, plan: dict):
        self.plan = plan

    def xcom_pull(self, task_ids):
        assert task_ids == "plan_run"
        return self.plan


def context(day, bucket):
    from music_recs.settings import DeploymentSettings
    from music_recs_airflow import tasks

    cfg = DeploymentSettings(raw_bucket=bucket, models_bucket=bucket)
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    return {"ti": _TaskInstance(tasks.plan_run({}, start, f"manual__{day}", cfg).to_dict())}


def test_a_day_without_files_times_out_naming_the_missing_prefix(raw_bucket):
    sensor = LandingPartitionSensor(task_id="wait", mode="poke", timeout=1, poke_interval=0.2)
    with pytest.raises(AirflowSensorTimeout) as err:
        sensor.execute(context(dt.date(2026, 11, 20), raw_bucket))
    assert f"s3://{raw_bucket}/stream_logs/dt=2026-11-20/" in str(err.value)
    assert "nothing was ingested or published for dt=2026-11-20" in str(err.value)


def test_files_in_the_day_partition_satisfy_it_and_other_days_do_not(store, raw_bucket):
    store.client.put_object(Bucket=raw_bucket, Key="stream_logs/dt=2026-11-21/part-0.jsonl.gz", Body=b"")
    sensor = LandingPartitionSensor(task_id="wait", mode="poke", timeout=5, poke_interval=0.2)
    assert sensor.poke(context(dt.date(2026, 11, 21), raw_bucket))
    assert not sensor.poke(context(dt.date(2026, 11, 20), raw_bucket))
