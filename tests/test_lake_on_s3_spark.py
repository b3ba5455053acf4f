"""Stages on an ``s3a://`` lake on the tests' S3 server, with Spark: ingest reads the landing files
straight from the raw bucket and the quarantine is streamed from the lake, validation's Data Docs
are rendered on the driver and copied into the lake, and nothing of the lake is on local disk."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import os
import tempfile

import pandas as pd
import pytest

from music_recs.jobs import TrainSpec
from music_recs.recipe import Recipe
from music_recs.settings import DeploymentSettings
from music_recs_airflow import tasks
from music_recs_airflow.lake_files import LakeFiles
from spark_jobs.lib.gx_suites import DOCS_INDEX, validate_frames
from spark_jobs.train_als import checkpoint_dir_for

DAY = "2026-11-20"
START = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)


def suite(name: str, column: str) -> dict:
    return {"name": name, "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": column}}]}


def gx_temp_folders() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("music_recs_gx_")}


@pytest.mark.spark
def test_data_docs_for_an_s3a_folder_are_built_on_the_driver_and_copied_there(spark, store, s3a_lake):
    docs = f"{s3a_lake}/runs/dt={DAY}/run=r/data_docs"
    files = LakeFiles(store)
    before = gx_temp_folders()
    first = validate_frames([(suite("input_suite", "a"), pd.DataFrame({"a": [1, 2]}))], {}, docs)
    assert first["success"] and first["data_docs"] == f"{docs}/{DOCS_INDEX}"
    # A second suite in the same folder (validate, then evaluate): the site shows both.
    second = validate_frames([(suite("output_suite", "b"), spark.createDataFrame([(None,)], "b int"))], {}, docs)
    assert not second["success"]
    index = files.read_bytes(second["data_docs"]).decode()
    assert "input_suite" in index and "output_suite" in index
    assert gx_temp_folders() == before  # the local copy is gone


def test_a_cluster_training_without_a_checkpoint_folder_is_refused():
    spec = TrainSpec(matrix_uri="s3a://b/lake/m", out_uri="s3a://b/lake/model", recipe=Recipe(rank=4))
    assert checkpoint_dir_for(spec, "local[2]").startswith(tempfile.gettempdir())
    with pytest.raises(ValueError, match="no checkpoint_dir and the master spark://h:7077 is a cluster"):
        checkpoint_dir_for(spec, "spark://h:7077")
    given = dataclasses.replace(spec, checkpoint_dir="s3a://b/lake/_checkpoints/dt=D/run=R")
    assert checkpoint_dir_for(given, "spark://h:7077") == "s3a://b/lake/_checkpoints/dt=D/run=R"


@pytest.mark.spark
def test_ingest_and_validate_on_an_s3a_lake_leave_nothing_of_the_lake_on_local_disk(store, bucket, s3a_lake, tmp_path):
    rows = [{"event_id": f"e{i}", "ts": f"{DAY}T10:{i % 60:02d}:00Z", "user_id": f"u{i % 7}", "track_id": f"t{i % 11}",
             "artist_id": f"a{i % 3}", "ms_played": 60000} for i in range(40)]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    store.put_bytes(bucket, f"stream_logs/dt={DAY}/part-0.jsonl.gz", gzip.compress("\n".join(lines).encode()))
    work = tmp_path / "work"
    cfg = DeploymentSettings(raw_bucket=bucket, models_bucket=bucket, lake_uri=s3a_lake, work_dir=str(work),
                             max_quarantine_fraction=0.5)
    plan = tasks.plan_run({"rank": 4}, START, "manual__s3a_lake", cfg)
    ingested = tasks.ingest(store, plan)
    assert (ingested.rows_read, ingested.rows_accepted, ingested.rows_quarantined) == (41, 40, 1)
    quarantine = store.get_bytes(bucket, f"quarantine/stream_logs/dt={DAY}/quarantine.jsonl")[0].decode()
    assert ingested.quarantine_uri.endswith("quarantine.jsonl") and "{not json" in quarantine
    validated = tasks.validate(plan, ingested)
    assert validated.success and validated.data_docs == f"{plan.data_docs}/{DOCS_INDEX}"
    assert LakeFiles(store).read_bytes(validated.data_docs) is not None
    assert LakeFiles(store).total_bytes(f"{s3a_lake}/plays/dt={DAY}") > 0
    # On local disk: the jobs' specs, results and logs and the --py-files zip, nothing else.
    local = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert local and all(p.startswith(("work/runs/dt=2026-11-20/run=manual__s3a_lake/results/", "work/_submit/"))
                         for p in local), local
