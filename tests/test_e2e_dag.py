"""music_recs_daily end to end: `airflow dags test` on real Spark, publishing to a real local S3 server."""

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys

import pytest

from music_recs import cli
from music_recs.publish import read_latest
from music_recs.sample_data import Catalogue, CatalogueSpec, upload_days, write_days_local
from spark_jobs import ingest
from tests.conftest import airflow_env

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

DAY = dt.date(2026, 11, 20)
PLAYS = 2000
RAW, MODELS = "e2e-raw", "e2e-models"
CONF = {"window_days": 4, "rank": 8, "max_iter": 5, "top_n": 10}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, s3_endpoint, airflow_db, spark):
    from music_recs.s3 import S3Store

    root = tmp_path_factory.mktemp("e2e")
    env = {"MUSIC_RECS_RAW_BUCKET": RAW, "MUSIC_RECS_MODELS_BUCKET": MODELS, "MUSIC_RECS_LAKE_URI": str(root / "lake")}
    store = S3Store.from_endpoint(s3_endpoint, "testing", "testing")
    for b in (RAW, MODELS):
        store.ensure_bucket(b)
    catalogue = Catalogue(CatalogueSpec.for_plays_per_day(PLAYS))
    days = [DAY - dt.timedelta(days=i) for i in range(3, -1, -1)]
    upload_days(store, RAW, "stream_logs", days, PLAYS, catalogue)
    # History: the three days before DAY are already in the lake (as earlier daily runs leave them).
    write_days_local(str(root / "landing"), days[:-1], PLAYS, catalogue)
    for d in days[:-1]:
        ingest.run(spark, d, str(root / "landing" / f"dt={d}"), env["MUSIC_RECS_LAKE_URI"])
    return {"env": env, "store": store, "root": root}


def dags_test(e2e, conf):
    # A manual run at D+1 00:00 covers the interval [D, D+1): it processes dt=D.
    logical = (DAY + dt.timedelta(days=1)).isoformat()
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "-c", json.dumps(conf), "music_recs_daily", logical],
        env=airflow_env(e2e["env"]), capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout + proc.stderr
    (e2e["root"] / f"dags_test_{len(list(e2e['root'].glob('dags_test_*')))}.log").write_text(out)
    assert proc.returncode == 0, out[-5000:]
    assert "DagRun Finished" in out and "state=success" in out, out[-5000:]
    return out


def check_consistent(store, pointer_key="music_recs/latest.json"):
    pointer, manifest = read_latest(store, MODELS, pointer_key)
    for obj in manifest["objects"]:
        data, _ = store.get_bytes(MODELS, obj["key"])
        assert len(data) == obj["size"] and hashlib.sha256(data).hexdigest() == obj["sha256"], obj["key"]
    return pointer, manifest


def test_daily_run_with_cg_publishes_a_verified_model(e2e, capsys):
    """One day through the whole DAG with the CG training strategy (the scheduler test runs the
    default, MLlib, three times; reruns of a day are covered by tests/test_publish_s3.py)."""
    store = e2e["store"]
    dags_test(e2e, {**CONF, "strategy": "cg"})
    pointer, manifest = check_consistent(store)
    assert pointer["day"] == DAY.isoformat()
    assert manifest["rows"]["rows_read"] == PLAYS
    assert manifest["rows"]["rows_read"] == (manifest["rows"]["rows_accepted"] + manifest["rows"]["rows_quarantined"]
                                             + manifest["rows"]["duplicates_removed"])
    assert manifest["params"]["rank"] == 8 and manifest["training"]["params"]["rank"] == 8
    assert manifest["training"]["strategy"] == "cg" and manifest["params"]["strategy"] == "cg"
    assert manifest["training"]["factor_exchange"] == {"user": "broadcast", "item": "broadcast"}
    assert manifest["data_window"]["first_day"] == (DAY - dt.timedelta(days=3)).isoformat()
    m, b = manifest["metrics"]["model"], manifest["metrics"]["baseline_popularity"]
    assert m["users_evaluated"] > 0 and 0 <= m["precision"] <= 1
    assert m["map"] > b["map"]  # the planted taste structure is learnable
    assert {o["artifact"] for o in manifest["objects"]} >= {"user_factors", "item_factors", "recommendations",
                                                            "similar_items"}
    assert manifest["quality_gate"]["passed"] and manifest["quality_gate"]["metric"] == "map"
    submission = manifest["training"]["submission"]
    assert submission["attempts"][0]["outcome"] == "success"
    assert submission["sizing"]["user_blocks"] == manifest["training"]["params"]["user_blocks"]

    # A person can read the result: the CLI prints recommendations from the published model.
    from music_recs.cli import load_recommendations
    import pyarrow.parquet as pq, io  # noqa: E401

    first_rec = next(o for o in manifest["objects"] if o["artifact"] == "recommendations")
    user = pq.read_table(io.BytesIO(store.get_bytes(MODELS, first_rec["key"])[0])).column("user_id")[0].as_py()
    os.environ.update(e2e["env"])
    try:
        assert cli.main(["recommend", "--user", user, "-n", "3"]) == 0
    finally:
        for k in e2e["env"]:
            os.environ.pop(k)
    printed = capsys.readouterr().out
    assert f"for {user}" in printed and "  1. Track " in printed and " by Artist " in printed
    assert load_recommendations(store, MODELS, manifest, "no-such-user") is None
