"""The Airflow side of warm start and of the recommendation rules, against a real S3 server
(moto over HTTP): which earlier model a run starts from, and a do-not-recommend list checked
before training."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowFailException

from music_recs.failures import MalformedRulesList
from music_recs.history import TrainingRecipe
from music_recs.recipe import Recipe
from music_recs.settings import DeploymentSettings
from music_recs_airflow import publish as P
from music_recs_airflow import tasks
from tests.test_publish_s3 import artifacts  # noqa: F401  (fixture)

DAY = "2026-11-20"


def plan_for(tmp_path, bucket, day=DAY, **params):
    cfg = DeploymentSettings(raw_bucket=bucket, models_bucket=bucket, lake_uri=str(tmp_path / "lake"),
                             **params.pop("settings", {}))
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
    return tasks.plan_run({"rank": 8, **params}, start, f"manual__{day}", cfg)


def publish_model(store, bucket, artifacts, day, run, rank=8, granularity="track"):  # noqa: F811
    manifest = {"params": {"granularity": granularity}, "training": {"params": Recipe(rank=rank).as_dict()},
                "data_window": {"last_train_day": str(dt.date.fromisoformat(day) - dt.timedelta(days=1))}}
    prefix = P.publication_prefix(f"music_recs/dt={day}/run={run}/")
    P.publish(store, bucket, prefix, "music_recs/latest.json", day, run, artifacts, manifest, allow_rewind=True)
    return prefix


def warm(store, plan, rank=8):
    chosen = TrainingRecipe(Recipe(rank=rank), {}, search=False)
    return tasks.warm_start_source(tasks.model_history(store, plan), plan, chosen)


def test_a_run_starts_from_the_newest_model_published_for_an_earlier_day(store, bucket, artifacts, tmp_path):  # noqa: F811
    plan = plan_for(tmp_path, bucket)
    assert warm(store, plan)["warm_start_note"] == "no model published for a day before dt=2026-11-20"
    publish_model(store, bucket, artifacts, "2026-11-18", "a")
    first = publish_model(store, bucket, artifacts, "2026-11-19", "b")
    second = publish_model(store, bucket, artifacts, "2026-11-19", "c")  # republished later: the newest
    publish_model(store, bucket, artifacts, DAY, "d")  # the day itself: never (a rerun must not see itself)
    publish_model(store, bucket, artifacts, "2026-11-21", "e")  # a later day: never
    assert [m.day for m in tasks.model_history(store, plan).earlier()] == ["2026-11-19", "2026-11-19", "2026-11-18"]
    assert first < second
    got = warm(store, plan)
    assert got["warm_start_from"] == f"dt=2026-11-19 (s3://{bucket}/{second})" and got["warm_start_note"] is None
    staged = sorted(p.parent.name for p in (tmp_path / "lake").rglob("*.parquet") if "warm_start" in str(p))
    assert staged == ["item_factors"] * 2 + ["user_factors"] * 2

    # What makes the run start cold, and says so.
    assert warm(store, plan, rank=16)["warm_start_note"] == (
        "the model of dt=2026-11-19 has rank 8, this run trains rank 16")
    assert warm(store, plan_for(tmp_path, bucket, warm_start="off"))["warm_start_note"] == "warm_start=off"
    assert "MLlib" in warm(store, plan_for(tmp_path, bucket, strategy="mllib"))["warm_start_note"]
    assert warm(store, plan_for(tmp_path, bucket, granularity="artist"))["warm_start_note"] == (
        "the model of dt=2026-11-19 recommends tracks, this run artists")
    # A model trained on one of this run's held-out days (holdout 3: from the 18th) is passed over.
    held = warm(store, plan_for(tmp_path, bucket, holdout_days=3))
    assert held["warm_start_from"].startswith("dt=2026-11-18 ")
    # A newer model that cannot serve (another rank) is passed over for the newest one that can.
    publish_model(store, bucket, artifacts, "2026-11-19", "f", rank=16)
    assert warm(store, plan)["warm_start_from"] == f"dt=2026-11-19 (s3://{bucket}/{second})"


def test_a_well_formed_list_is_recorded_with_its_checksum_and_staged_for_spark(store, bucket, tmp_path):
    body = b"user_id,item_id\n,t1\nu1,t2\n,t1\n"
    store.client.put_object(Bucket=bucket, Key="rules/dnr.csv", Body=body)
    plan = plan_for(tmp_path, bucket, settings={"do_not_recommend_key": "rules/dnr.csv"})
    rules = tasks.recommendation_rules(store, plan)
    listed = rules["do_not_recommend"]
    assert rules["max_per_artist"] == 2
    assert listed["uri"] == f"s3://{bucket}/rules/dnr.csv" and listed["rows"] == 3
    assert (listed["items_for_everyone"], listed["user_item_pairs"]) == (1, 1) and len(listed["sha256"]) == 64
    assert pq.read_table(rules["path"]).to_pylist() == [{"user_id": None, "item_id": "t1"},
                                                       {"user_id": "u1", "item_id": "t2"}]
    assert tasks.evaluate_spec(plan, rules=rules).do_not_recommend_path == rules["path"]
    # Artist recommendations hold one item per artist: no cap.
    assert tasks.recommendation_rules(store, plan_for(tmp_path, bucket, granularity="artist"))["max_per_artist"] == 0


@pytest.mark.parametrize("body, problem", [
    (b"item_id,reason\nt1,x\n", "unknown column"),
    (b"user_id,item_id\nu1\n", "line 2"),
    (b"item_id\nt 1\n", "line 2"),
    (b"\xff\xfeitem_id\n", "UTF-8"),
])
def test_a_malformed_list_fails_the_run_at_once_in_one_line(store, bucket, tmp_path, body, problem):
    store.client.put_object(Bucket=bucket, Key="rules/dnr.csv", Body=body)
    plan = plan_for(tmp_path, bucket, settings={"do_not_recommend_key": "rules/dnr.csv"})
    with pytest.raises(AirflowFailException) as err:
        tasks.recommendation_rules(store, plan)
    assert isinstance(err.value.__cause__, MalformedRulesList)
    message = str(err.value)
    assert message.startswith(f"do-not-recommend list s3://{bucket}/rules/dnr.csv: ") and problem in message
    assert "\n" not in message


def test_a_configured_list_that_is_not_there_fails_the_run(store, bucket, tmp_path):
    plan = plan_for(tmp_path, bucket, settings={"do_not_recommend_key": "rules/missing.csv"})
    with pytest.raises(AirflowFailException, match="no such object"):
        tasks.recommendation_rules(store, plan)
