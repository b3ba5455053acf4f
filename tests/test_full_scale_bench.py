"""bench/full_scale.py on a few seconds of data, so the benchmark cannot rot. The measurements
themselves are made by hand (bench/RESULTS.md); here every stage must run and be measured."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import full_scale  # noqa: E402
import seed_scale  # noqa: E402
from pipeline_scaling import STAGES, PeakMemory  # noqa: E402


def test_the_exponent_is_the_log_log_slope():
    assert full_scale.exponent([1e6, 1e7], [10.0, 100.0]) == pytest.approx(1.0)
    assert full_scale.exponent([1e6, 1e7, 1e8], [5.0, 50 * 10 ** 0.5, 500.0]) == pytest.approx(1.0, abs=0.1)
    assert full_scale.exponent([1e6, 4e6], [10.0, 160.0]) == pytest.approx(2.0)
    assert math.isnan(full_scale.exponent([1e6], [10.0]))


@pytest.mark.spark
@pytest.mark.e2e
def test_the_benchmark_runs_every_stage_of_a_tiny_window_and_measures_it(tmp_path):
    out, chart = tmp_path / "full_scale.json", tmp_path / "full_scale.png"
    # The benchmark sets its lake, S3 server and connections itself; nothing of the tests' may leak in.
    keep = {"MUSIC_RECS_SPARK_CLASS_ARCHIVE_DIR", "MUSIC_RECS_VENV", "MUSIC_RECS_LOCAL_STATE"}
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("MUSIC_RECS_", "AIRFLOW_CONN_"))}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "full_scale.py"), "--days", "6", "--plays", "30000",
         "--users", "500", "--tracks", "300", "--fractions", "1", "--json", str(out), "--chart", str(chart)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["failed"] == {} and set(row["seconds"]) == set(STAGES)
    assert all(row["peak_rss_mb"][s] > 0 for s in STAGES)
    # each peak told apart by process: a Spark stage's JVM is in it (training's and evaluate's Python driver too,
    # alive the whole job), and the roles add up to it
    for s in ("ingest", "validate", "build_confidence", "train_als", "evaluate"):
        roles = row["peak_by_process"][s]
        assert {"jvm", "benchmark"} <= set(roles) and (s not in ("train_als", "evaluate") or "job_driver" in roles), roles
        assert abs(sum(v["mb"] for v in roles.values()) - row["peak_rss_mb"][s]) <= len(roles)
    assert row["window_plays"] == 30000 and row["generated"]["history_plays"] + row["generated"]["day_plays"] == 30000
    assert 0 < row["matrix"]["nnz"] <= 30000 and row["matrix"]["users"] <= 500
    assert row["train"]["searched"] and row["train"]["seconds_per_iteration"] > 0
    # per iteration as implicit's is measured (median, set-up excluded): below fit / iterations, which adds the set-up
    assert 0 < row["train"]["median_iteration_seconds"] <= row["train"]["seconds_per_iteration"]
    assert row["implicit"]["seconds_per_iteration"] > 0 and row["implicit"]["nnz"] == row["matrix"]["nnz"]
    assert 0 < row["metrics"]["map"] <= 1
    assert set(row["job_seconds"]) == {"ingest", "validate", "build_confidence", "train_als", "evaluate"}
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = proc.stdout.split("window plays", 1)[1]
    assert "30,000" in table and "FAILED" not in table
    assert seed_scale.main([str(out)]) == 0  # the extrapolation reads what the benchmark wrote


def test_the_seed_extrapolation_scales_each_stage_by_its_work_and_the_cores():
    row = {"window_plays": 1_000_000, "seconds": dict.fromkeys(STAGES, 100.0), "job_seconds": {"train_als": 100.0},
           "matrix": {"users": 1000, "items": 100, "nnz": 50_000},
           "train": {"rank": 10, "iterations": 10, "seconds_per_iteration": 2.0}}
    same = {"users": 1000, "items": 100, "plays": 1_000_000, "rank": 10, "nnz": 50_000}
    est = seed_scale.extrapolate(row, same, 2, 2)["seconds"]
    assert est["ingest"] == est["build_confidence"] == 100.0 and est["train_als"] == pytest.approx(100.0)
    bigger = seed_scale.extrapolate(row, {**same, "plays": 4_000_000}, 2, 8)["seconds"]
    assert bigger["build_confidence"] == pytest.approx(100.0)  # 4x the plays on 4x the cores
    # training: the final fit (20 s) spreads over the cores, the search on the driver (80 s) does not
    assert bigger["train_als"] == pytest.approx(20.0 / 4 + 80.0)
    wider = seed_scale.extrapolate(row, {**same, "users": 2000, "items": 200}, 2, 2)["seconds"]
    assert wider["evaluate"] == pytest.approx(400.0)  # exact scoring: users x items


def _forked(allocate_mb: int) -> int:
    """A child of this process that keeps its parent's image; it first touches ``allocate_mb`` MiB of its own."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        own = bytearray(allocate_mb * 1024 * 1024)
        for page in range(0, len(own), 4096):  # resident only once written
            own[page] = 1
        time.sleep(5)
        os._exit(0)
    time.sleep(0.5 + allocate_mb / 200)
    return pid


@pytest.mark.parametrize("allocate_mb, counted", [(0, False), (400, True)])
def test_peak_memory_counts_a_clone_of_its_parent_once_and_a_child_with_memory_of_its_own(allocate_mb, counted):
    mem = PeakMemory()
    mem.exclude = {c.pid for c in psutil.Process().children(recursive=True)}  # the suite's own servers and JVMs
    alone, _, _ = mem._sample()
    pid = _forked(allocate_mb)
    try:
        total, raw, roles = mem._sample()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert raw > alone * 1.3  # the plain sum has the child's copy of this process's pages
    if counted:  # memory of its own, more than its parent's: the child counts in full
        assert total == raw and roles["other"][1] == 1
    else:  # its parent's program and no more than its parent's pages: counted once
        assert abs(total - alone) < 0.05 * alone and "other" not in roles
