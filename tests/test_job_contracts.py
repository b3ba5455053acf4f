"""For every Spark job: the spec the task builds is the spec the job parses, and results round-trip."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib

import pytest

from music_recs.jobs import RESULTS, SPECS, IngestResult, IngestSpec, MatrixResult, TrainSpec
from music_recs.settings import DeploymentSettings
from music_recs.sizing import MatrixShape, size_als
from music_recs_airflow import tasks
from music_recs_airflow.spark_submit import SparkJobHook, job_path
from spark_jobs.lib.session import parse_args

START = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
PARAMS = {"rank": 16, "alpha": 2.5, "confidence_function": "linear", "window_days": 30, "holdout_days": 2,
          "granularity": "artist", "min_user_items": 3, "k": 5, "top_n": 20, "strategy": "mllib"}


@pytest.fixture
def plan(tmp_path):
    cfg = DeploymentSettings(lake_uri=str(tmp_path / "lake"), source_format="lastfm", max_quarantine_fraction=0.2,
                             broadcast_budget_mb=64)
    return tasks.plan_run(PARAMS, START, "manual__2026-11-21T08:00:00+00:00", cfg)


def built_by_the_tasks(plan) -> dict:
    shape = MatrixShape(users=1000, items=500, nnz=20000, rank=plan.params.recipe.rank)
    ingested = IngestResult(day=plan.day, rows_read=10, rows_accepted=8, rows_quarantined=1, duplicates_removed=1,
                            duplicates_of_other_days=0, quarantine_reasons={"unparseable_ts": 1}, formats={}, seconds={})
    return {
        "ingest": tasks.ingest_spec(plan),
        "validate": tasks.validate_spec(plan, ingested),
        "confidence": tasks.confidence_spec(plan),
        "train_als": tasks.train_spec(plan, shape, size_als(shape, plan.cluster, strategy="cg")),
        "evaluate": tasks.evaluate_spec(plan),
    }


@pytest.mark.parametrize("job", sorted(SPECS))
def test_the_job_parses_the_spec_its_task_submits(job, plan, tmp_path):
    spec = built_by_the_tasks(plan)[job]
    assert isinstance(spec, SPECS[job])
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"))
    spec_path, result_path = str(tmp_path / "spec.json"), str(tmp_path / "result.json")
    with open(spec_path, "w") as fh:
        fh.write(spec.to_json())  # what SparkJobHook.submit writes
    command = hook.command(spec_path, result_path, job, {}, {})
    application = command.index(job_path(job))
    module = importlib.import_module(f"spark_jobs.{job}")
    assert getattr(module, SPECS[job].__name__) is SPECS[job]  # the job reads this very class
    parsed, result = parse_args(SPECS[job], command[application + 1:])  # what the job's main reads
    assert parsed == spec and result == result_path


def test_the_specs_carry_the_run_params_and_settings(plan):
    specs = built_by_the_tasks(plan)
    assert specs["ingest"].source_format == "lastfm" and specs["ingest"].day == "2026-11-20"
    assert specs["validate"].max_quarantine_fraction == 0.2 and specs["validate"].ingest_counts["rows_read"] == 10
    confidence = specs["confidence"]
    assert (confidence.window_days, confidence.holdout_days, confidence.granularities) == (30, 2, ("artist",))
    assert confidence.confidence.confidence_function == "linear" and confidence.confidence.alpha == 2.5
    train = specs["train_als"]
    assert (train.recipe.rank, train.recipe.alpha, train.strategy, train.broadcast_budget_mb) == (16, 2.5, "mllib", 64)
    assert train.recipe.confidence_function == "linear" and not train.strength_as_built
    assert train.matrix_uri == plan.matrix and train.matrix_uri.endswith("/granularity=artist")
    assert (specs["evaluate"].k, specs["evaluate"].top_n) == (5, 20)


def test_a_spec_or_result_with_an_unknown_or_missing_field_is_refused():
    spec = TrainSpec(matrix_uri="/m", out_uri="/o", strength_as_built=True)
    with pytest.raises(ValueError, match=r"TrainSpec has no field\(s\) \['rnak'\]"):
        TrainSpec.from_dict({**spec.to_dict(), "rnak": 4})
    with pytest.raises(ValueError, match=r"IngestSpec is missing field\(s\) \['lake_uri'\]"):
        IngestSpec.from_dict({"day": "2026-11-20", "input_uri": "/in"})
    with pytest.raises(ValueError, match="unknown strategy 'sgd'"):
        TrainSpec(matrix_uri="/m", out_uri="/o", strategy="sgd", strength_as_built=True)


@pytest.mark.parametrize("job", sorted(RESULTS))
def test_results_round_trip_through_json(job):
    cls = RESULTS[job]
    values = {f.name: (f"{f.name}-value" if f.type in ("str", "str | None") else {"x": 1} if "dict" in f.type else
                       [1, 2] if "list" in f.type else True if f.type == "bool" else 3)
              for f in dataclasses.fields(cls)}
    result = cls(**values)
    assert cls.from_json(result.to_json()) == result


def test_the_matrix_result_of_the_confidence_job_names_its_granularity():
    result = MatrixResult(day="2026-11-20", window={}, params={}, min_user_items=2, min_item_users=2,
                          stats={"track": {"nnz": 3}}, ids_added={}, seconds={})
    assert MatrixResult.from_dict(result.to_dict()).stats["track"]["nnz"] == 3
