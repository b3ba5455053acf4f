"""Resubmission through a real spark-submit (local mode)."""

import time

import pytest

from music_recs.sizing import ClusterResources, MatrixShape, size_als
from music_recs_airflow.spark_submit import SparkJobError, run_with_resubmission

pytestmark = pytest.mark.spark


def test_a_missing_input_fails_once_fast_and_readably(tmp_path):
    sizing = size_als(MatrixShape(10, 10, 50, 4), ClusterResources(cores_per_node=1, memory_per_node_mb=4096))

    def args(s):
        return ["--matrix", str(tmp_path / "no-such-matrix"), "--out", str(tmp_path / "model"), "--rank", "4",
                "--user-blocks", str(s.user_blocks), "--item-blocks", str(s.item_blocks)]

    started = time.time()
    with pytest.raises(SparkJobError) as err:
        run_with_resubmission("train_als", args, str(tmp_path / "result.json"), sizing, local=True,
                              memory_cap_mb=2048, max_attempts=3, conn_id="no_such_connection",
                              work_dir=str(tmp_path / "submit"))
    message = str(err.value)
    assert "not retryable" in message and "attempt 1: non_retryable" in message and "attempt 2" not in message
    assert "PATH_NOT_FOUND" in message or "does not exist" in message
    assert time.time() - started < 120
