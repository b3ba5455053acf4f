"""Peak executor memory from Spark event logs (``MUSIC_RECS_SPARK_EVENT_LOG_DIR``).

With the event-log settings of ``spark_submit.event_log_conf``, Spark records each stage's and
each task's peak executor metrics; this reads them back per application, to compare what a job
used with what the sizing model gave it (``bench/pipeline_scaling.py``), or to find a job's
heaviest stage after the fact.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Iterator

# JVM heap in use; the unified memory manager's storage (cached blocks) and execution (shuffles,
# aggregations) on heap; resident memory of the executor JVM and of its Python workers.
PEAK_METRICS = ("JVMHeapMemory", "OnHeapStorageMemory", "OnHeapExecutionMemory", "ProcessTreeJVMRSSMemory",
                "ProcessTreePythonRSSMemory")


def event_lines(path: str) -> Iterator[str]:
    """Lines of one application's event log: a file, or a rolling log's folder of parts
    (Spark 4's default), each zstd-compressed (also Spark 4's default) or plain."""
    import zstandard

    parts = sorted(glob.glob(os.path.join(path, "events_*"))) if os.path.isdir(path) else [path]
    for part in parts:
        with open(part, "rb") as raw:
            stream = (zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
                      if ".zstd" in os.path.basename(part) else raw)
            yield from io.TextIOWrapper(stream, encoding="utf-8")


def executor_peaks(event_log_dir: str, prefix: str = "music_recs.") -> dict[str, dict[str, int]]:
    """``{application name without prefix: {metric: peak bytes}}`` over every application logged
    in ``event_log_dir``; several applications of one name (a resubmitted job) keep the largest."""
    out: dict[str, dict[str, int]] = {}
    for path in glob.glob(os.path.join(event_log_dir, "*")):
        app, peaks = None, dict.fromkeys(PEAK_METRICS, 0)
        for line in event_lines(path):
            event = json.loads(line)
            if event.get("Event") == "SparkListenerApplicationStart":
                app = event["App Name"].removeprefix(prefix)
            metrics = event.get("Executor Metrics") or event.get("Task Executor Metrics") or {}
            for k in PEAK_METRICS:
                peaks[k] = max(peaks[k], int(metrics.get(k) or 0))
        if app:
            out[app] = {k: max(v, out.get(app, {}).get(k, 0)) for k, v in peaks.items()}
    return out


def spill(event_log_dir: str, prefix: str = "music_recs.") -> dict[str, dict[str, int]]:
    """``{application name without prefix: {"memory": bytes, "disk": bytes}}``: what the tasks of
    each application spilled (``Memory Bytes Spilled``, ``Disk Bytes Spilled`` of every finished
    task, summed; several applications of one name add up)."""
    out: dict[str, dict[str, int]] = {}
    for path in glob.glob(os.path.join(event_log_dir, "*")):
        app, memory, disk = None, 0, 0
        for line in event_lines(path):
            event = json.loads(line)
            if event.get("Event") == "SparkListenerApplicationStart":
                app = event["App Name"].removeprefix(prefix)
            elif event.get("Event") == "SparkListenerTaskEnd":
                metrics = event.get("Task Metrics") or {}
                memory += int(metrics.get("Memory Bytes Spilled") or 0)
                disk += int(metrics.get("Disk Bytes Spilled") or 0)
        if app:
            seen = out.setdefault(app, {"memory": 0, "disk": 0})
            seen["memory"] += memory
            seen["disk"] += disk
    return out
