"""Reading peak executor memory back from Spark event logs (``music_recs_dev.spark_events``).

The event lines follow Spark 4's format (a rolling log folder of zstd-compressed parts, or one
plain file). tests/test_full_scale_bench.py reads the logs of real jobs (through bench/full_scale.py)."""

import json

import zstandard

from music_recs_dev.spark_events import executor_peaks, spill
from music_recs_airflow.spark_submit import event_log_conf


def _lines(app, heap, python_rss):
    return [
        {"Event": "SparkListenerApplicationStart", "App Name": app},
        {"Event": "SparkListenerStageExecutorMetrics", "Executor ID": "driver",
         "Executor Metrics": {"JVMHeapMemory": heap, "OnHeapStorageMemory": 10, "ProcessTreePythonRSSMemory": 5}},
        {"Event": "SparkListenerTaskEnd", "Task Executor Metrics": {"JVMHeapMemory": heap // 2,
                                                                   "ProcessTreePythonRSSMemory": python_rss},
         "Task Metrics": {"Memory Bytes Spilled": heap * 3, "Disk Bytes Spilled": heap}},
    ]


def _write_rolling(folder, lines):
    folder.mkdir()
    text = "".join(json.dumps(e) + "\n" for e in lines).encode()
    half = len(lines) // 2 + 1
    first = "".join(json.dumps(e) + "\n" for e in lines[:half]).encode()
    (folder / "events_1_app.zstd").write_bytes(zstandard.ZstdCompressor().compress(first))
    (folder / "events_2_app.zstd").write_bytes(zstandard.ZstdCompressor().compress(text[len(first):]))


def test_peaks_per_application_from_rolling_compressed_and_plain_logs(tmp_path):
    _write_rolling(tmp_path / "eventlog_v2_local-1", _lines("music_recs.train_als", 300, 40))
    _write_rolling(tmp_path / "eventlog_v2_local-2", _lines("music_recs.train_als", 500, 20))  # a resubmission
    (tmp_path / "local-3").write_text("".join(json.dumps(e) + "\n" for e in _lines("music_recs.ingest", 70, 0)))
    peaks = executor_peaks(str(tmp_path))
    assert set(peaks) == {"train_als", "ingest"}
    assert peaks["train_als"]["JVMHeapMemory"] == 500  # the largest over both applications
    assert peaks["train_als"]["ProcessTreePythonRSSMemory"] == 40  # from a task, not a stage
    assert peaks["train_als"]["OnHeapExecutionMemory"] == 0  # never reported
    assert peaks["ingest"]["JVMHeapMemory"] == 70
    # What the tasks spilled adds up over the applications of one name.
    assert spill(str(tmp_path)) == {"train_als": {"memory": 2400, "disk": 800}, "ingest": {"memory": 210, "disk": 70}}


def test_event_logs_are_off_unless_a_folder_is_given(tmp_path):
    assert event_log_conf("") == {}
    conf = event_log_conf(str(tmp_path / "events"))
    assert conf["spark.eventLog.dir"] == f"file://{tmp_path / 'events'}" and (tmp_path / "events").is_dir()
    assert conf["spark.eventLog.logStageExecutorMetrics"] == "true"
    assert event_log_conf("s3a://logs/spark")["spark.eventLog.dir"] == "s3a://logs/spark"
