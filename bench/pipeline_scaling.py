"""Pipeline scaling: every stage of the daily DAG at several data sizes, with its peak memory,
and the sizing model's predicted executor memory against what Spark's executors used.

For each size (plays per day) it generates two days of stream logs into a local S3 server
(moto, over HTTP, as in the tests), ingests and validates the first day as an earlier daily
run would have, and then runs the DAG's own task functions (``music_recs_airflow.tasks``: the code
each Airflow task calls) for the second day, in the DAG's order: ingest, validate,
build_confidence, train_als, evaluate, quality_gate + publish. Airflow's scheduling is left
out; every Spark stage is a real ``spark-submit`` on ``local[*]`` with the settings the DAG
computes.

Measured per stage: wall time; peak resident memory of the whole process tree of the stage
(the spark-submit JVM and its Python workers; for publish, this process), sampled every
0.2 s; and from Spark's event log (``MUSIC_RECS_SPARK_EVENT_LOG_DIR``), the executor's peak
JVM heap, storage and execution memory and Python RSS. The training stage's peaks are
compared with ``music_recs.sizing.size_als``'s prediction for the same matrix.

Each stage's cost is fitted as start-up plus a cost per play (``fit_cost``), with the
log-log slope between the two largest sizes to show what grows faster than linearly. Output: a table on stdout, ``--json`` with every number and
``--chart`` (PNG: seconds per stage against plays, log-log).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "plugins"))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from music_recs.params import DEFAULTS  # noqa: E402
from music_recs_dev.spark_events import executor_peaks  # noqa: E402

STAGES = ("ingest", "validate", "build_confidence", "train_als", "evaluate", "publish")
SPARK_JOB_OF = {"ingest": "ingest", "validate": "validate", "build_confidence": "confidence",
                "train_als": "train_als", "evaluate": "evaluate"}
MIB = 1024 * 1024


class PeakMemory:
    """Peak resident memory of this process and its descendants (but the S3 server, which holds
    every object in memory and is not part of the pipeline), sampled in a thread; ``at_peak``: the
    same sample by role (``role``: MiB and process count), to say which process made the peak.

    A child still running its parent's program (same executable and command line: forked or
    spawned, not yet replaced by its own program, e.g. the JVM starting a Python worker) and holding
    no more than its parent is taken to share its parent's pages and counted once; one that grew
    past its parent (a Python worker forked by ``pyspark.daemon``) counts in full. ``peak_raw`` is
    the plain sum of every process's RSS, as the runs before 2026-12-06 measured it (a clone of the
    JVM caught by the sampler then counted the whole JVM twice)."""

    exclude: set = set()

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.peak_raw, self._stop = interval, 0, 0, threading.Event()
        self.at_peak: dict[str, dict] = {}
        self._me = psutil.Process()

    def role(self, pid: int, exe: str, cmd: list[str]) -> str:
        """What a process of the tree is: the Spark JVM, the job's Python driver, a Python worker
        (forked by ``pyspark.daemon``), this benchmark, or other."""
        line = " ".join(cmd)
        if pid == self._me.pid:
            return "benchmark"
        if os.path.basename(exe) == "java":
            return "jvm"
        if "pyspark.daemon" in line:
            return "python_workers"
        if "spark_jobs/" in line:
            return "job_driver"
        return "other"

    def _sample(self) -> tuple[int, int, dict]:
        seen = {}
        for p in [self._me, *self._me.children(recursive=True)]:
            if p.pid in self.exclude:
                continue
            try:
                exe, cmd = p.exe(), p.cmdline()
                seen[p.pid] = (p.ppid(), exe, cmd, p.memory_info().rss, self.role(p.pid, exe, cmd))
            except psutil.Error:  # a process that ended between listing and reading
                continue
        total, raw, roles = 0, 0, {}
        for ppid, exe, cmd, rss, role in seen.values():
            raw += rss
            parent = seen.get(ppid)
            if parent is not None and parent[1:3] == (exe, cmd) and rss <= parent[3]:
                continue  # still its parent's program, holding no more than it: its parent's pages
            total += rss
            mib, count = roles.get(role, (0, 0))
            roles[role] = (mib + rss, count + 1)
        return total, raw, roles

    def _take(self, sample: tuple[int, int, dict]) -> None:
        total, raw, roles = sample
        self.peak_raw = max(self.peak_raw, raw)
        if total >= self.peak:
            self.peak = total
            self.at_peak = {r: {"mb": round(b / MIB), "processes": n} for r, (b, n) in sorted(roles.items())}

    def __enter__(self):
        self._take(self._sample())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self._take(self._sample())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _mb(spark_memory: str | None) -> int | None:
    """MiB of a spark-submit memory setting such as ``2560m`` or ``2g``."""
    if not spark_memory:
        return None
    value, unit = spark_memory[:-1], spark_memory[-1].lower()
    return int(value) * {"m": 1, "g": 1024}[unit]


def fit_cost(xs, ys) -> dict:
    """How a stage's seconds grow with plays: a straight line ``t0 + plays * per_million / 1e6``
    (t0: start-up, mostly the JVM and Spark session) and the log-log slope between the two
    largest sizes (1 = linear, 2 = quadratic; start-up pulls it below the true exponent)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    slope, t0 = np.polyfit(xs, ys, 1) if len(xs) > 1 else (0.0, float(ys[0]))
    b = float(np.log(ys[-1] / ys[-2]) / np.log(xs[-1] / xs[-2])) if len(xs) > 1 else float("nan")
    return {"t0_seconds": round(float(t0), 2), "seconds_per_million_plays": round(float(slope) * 1e6, 2),
            "loglog_slope_largest": round(b, 2)}


def run_size(plays: int, work: str, params: dict, files_per_day: int) -> dict:
    from music_recs.settings import cluster_resources, resolve
    from music_recs.sizing import MatrixShape, factor_exchange, python_memory_mb, size_als, size_evaluate
    from music_recs_airflow import tasks
    from music_recs_airflow.s3 import S3Store
    from music_recs_dev.sample_data import Catalogue, CatalogueSpec, upload_days

    lake, events = os.path.join(work, f"lake_{plays}"), os.path.join(work, f"events_{plays}")
    os.environ["MUSIC_RECS_LAKE_URI"] = lake
    os.environ["MUSIC_RECS_SPARK_EVENT_LOG_DIR"] = events
    cfg = resolve()  # environment > defaults (no Airflow Variable outside a task)
    store = S3Store.from_airflow(cfg.aws_conn_id)
    for bucket in (cfg.raw_bucket, cfg.models_bucket):
        store.ensure_bucket(bucket)
    day = dt.date(2026, 11, 20)
    history = day - dt.timedelta(days=1)
    t0 = time.time()
    spec = CatalogueSpec.for_plays_per_day(plays)
    upload_days(store, cfg.raw_bucket, cfg.landing_prefix, [history, day], plays, Catalogue(spec), files_per_day)
    generated = time.time() - t0
    print(f"  generated 2 days x {plays} plays in {generated:.0f}s", flush=True)

    def start(d):
        return dt.datetime.combine(d, dt.time(), tzinfo=dt.timezone.utc)

    # What the earlier daily run left in the lake. Its Spark applications are named like the
    # measured day's (music_recs.<job>, no day in the name), so it logs no Spark events: the
    # executor peaks read below are the measured day's only.
    earlier = tasks.plan_run({}, start(history), f"bench__{history}", dataclasses.replace(cfg, spark_event_log_dir=""))
    tasks.validate(earlier, tasks.ingest(store, earlier))

    plan = tasks.plan_run(params, start(day), f"bench__{day}__{plays}", cfg)
    seconds, peak, results = {}, {}, {}

    failed = {}

    def stage(name, fn, *args):
        if failed:  # a later stage needs the earlier ones' outputs
            return
        with PeakMemory() as mem:
            t = time.time()
            try:
                results[name] = fn(*args)
            except Exception as exc:  # keep what was measured: the failure is a result too
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                print(f"  {name:<17} FAILED after {time.time() - t:.0f}s: {failed[name]}", flush=True)
                return
            seconds[name] = time.time() - t
        peak[name] = mem.peak
        print(f"  {name:<17} {seconds[name]:7.1f}s  peak RSS {mem.peak / MIB:7.0f} MiB", flush=True)

    stage("ingest", tasks.ingest, store, plan)
    stage("validate", tasks.validate, plan, results.get("ingest"))
    stage("build_confidence", tasks.build_confidence, plan)
    stage("train_als", tasks.train, plan, results["build_confidence"])
    stage("evaluate", tasks.evaluate, plan, results["build_confidence"])

    def gate_and_publish():
        gate = tasks.quality_gate(store, plan, results["evaluate"])
        return tasks.publish_run(store, plan, results["ingest"], results["validate"], results["build_confidence"],
                                 results["train_als"], results["evaluate"], gate)

    stage("publish", gate_and_publish)
    if "train_als" not in results:
        return {"plays_per_day": plays, "rows_read": results["ingest"].rows_read if "ingest" in results else plays,
                "seconds": seconds, "peak_rss_mb": {k: round(v / MIB) for k, v in peak.items()}, "failed": failed,
                "matrix": {"nnz": 0}, "spark_peaks_mb": executor_peaks(events), "sizing": {}, "job_phases": {}}
    stats = results["build_confidence"].stats[plan.params.granularity]
    shape = MatrixShape(stats["users"], stats["items"], stats["nnz"], results["train_als"].params["rank"])
    strategy = plan.params.strategy
    train_sizing = size_als(shape, cluster_resources(local=True), strategy=strategy)
    top_n = max(plan.params.k, plan.params.top_n)
    eval_sizing = size_evaluate(shape, cluster_resources(local=True), top_n)
    # What the model gives the Python workers of one executor with this machine's cores (on a
    # cluster it becomes spark.executor.pyspark.memory; local mode does not limit it).
    python_mb = {"train_als": python_memory_mb(shape, train_sizing.user_blocks, train_sizing.executor_cores,
                                               factor_exchange(shape.users, shape.items, shape.rank))
                 if strategy == "cg" else None,
                 "evaluate": size_evaluate(shape, dataclasses.replace(cluster_resources(local=True), local=False,
                                                                      cores_per_node=os.cpu_count() or 1,
                                                                      memory_per_node_mb=1 << 20), top_n).python_memory_mb}
    return {
        "plays_per_day": plays, "window_plays": 2 * plays, "generate_seconds": round(generated, 1),
        "rows_read": results["ingest"].rows_read, "matrix": stats,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "peak_rss_mb": {k: round(v / MIB) for k, v in peak.items()},
        # Inside each Spark job: its own phases (the rest of the stage is spark-submit, JVM and
        # session start-up, and the task's work around the job).
        "job_phases": {k: results[k].seconds for k in SPARK_JOB_OF
                       if k in results and isinstance(results[k].seconds, dict)},
        "spark_peaks_mb": {k: {m: round(v / MIB) for m, v in p.items()} for k, p in executor_peaks(events).items()},
        "train": {k: getattr(results.get("train_als"), k, None) for k in ("strategy", "seconds", "seconds_per_iteration")},
        # The model's heap (given as the driver's memory: in local mode it is the executor) and,
        # for train and evaluate, its cached share, per-task share and Python workers' memory.
        "sizing": {stage: {"heap_mb": _mb(results[stage].submission["settings"]["driver_memory"]),
                           **({"storage_mb": round(sz.estimate["storage_per_executor_bytes"] / MIB),
                               "task_mb": round(sz.estimate["task_bytes"] / MIB), "python_mb": python_mb[stage]}
                              if sz else {})}
                   for stage, sz in (("ingest", None), ("validate", None), ("build_confidence", None),
                                     ("train_als", train_sizing), ("evaluate", eval_sizing))},
        # Spark application of each stage, without executor_peaks' "music_recs." prefix.
        "spark_app": dict(SPARK_JOB_OF),
        "metrics": {k: results["evaluate"].model[k] for k in ("precision", "map")} if "evaluate" in results else {},
        "failed": failed,
    }


def chart(rows: list[dict], path: str, x: str = "rows_read", xlabel: str = "plays in the day's landing files",
          title: str = "music_recs_daily: time per stage vs data size") -> None:
    """Seconds per stage (``rows[i]["seconds"]``) against ``rows[i][x]``, log-log, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    xs = [r[x] for r in rows]
    for name in STAGES:
        ax.plot(xs, [r["seconds"].get(name, float("nan")) for r in rows], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("seconds (wall, incl. spark-submit start-up)")
    ax.set_title(f"{title} ({os.cpu_count()} cores, local[*])")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plays-per-day", type=int, nargs="+", default=[50_000, 500_000, 2_000_000])
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--strategy", choices=["mllib", "cg"], default=DEFAULTS["strategy"],
                   help="training strategy (default: the DAG's, %(default)s)")
    p.add_argument("--files-per-day", type=int, default=4, help="landing files per day (gzip is not splittable)")
    p.add_argument("--verbose", action="store_true", help="show the stages' logs (every spark-submit line)")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--chart", help="write the PNG chart here")
    a = p.parse_args(argv)

    # The stages log every spark-submit line at INFO; the benchmark prints its own summary.
    # (Airflow configures logging when imported, from this setting.)
    if not a.verbose:
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    from music_recs_airflow import tasks  # noqa: F401  (imports Airflow, which reads the level now)
    from music_recs_dev import local_s3

    work = tempfile.mkdtemp(prefix="pipeline_bench_")
    port = _free_port()
    server = local_s3.start(port, os.path.join(work, "s3.log"))
    PeakMemory.exclude = {server.pid}
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": local_s3.endpoint(port), "region_name": "us-east-1"}})
    os.environ.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[*]"}))
    # A day of the benchmark is self-contained: a two-day window, the last day held out.
    params = {"window_days": 2, "holdout_days": 1, "rank": a.rank, "max_iter": a.max_iter, "strategy": a.strategy,
              # Synthetic data: publish whatever the gate says, so every size is measured to the end.
              "override_quality_gate": True}
    rows = []
    started = time.time()
    try:
        for plays in a.plays_per_day:
            print(f"size: {plays} plays/day", flush=True)
            rows.append(run_size(plays, work, params, a.files_per_day))
    finally:
        if server is not None:
            server.terminate()
        shutil.rmtree(work, ignore_errors=True)

    cores = os.cpu_count() or 1
    if a.json:  # every measurement is kept even if the summary below fails
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "cores": cores, "command": " ".join(sys.argv)}, fh, indent=1)
    print(f"\n{'plays/day':>10} {'matrix nnz':>11} " + " ".join(f"{s[:12]:>12}" for s in STAGES))
    for r in rows:
        print(f"{r['rows_read']:>10} {r['matrix']['nnz']:>11} " + " ".join(f"{r['seconds'].get(s, float('nan')):>11.1f}s" for s in STAGES))
    print(f"\n{'stage':<17} {'t0 s':>7} {'s/M plays':>9} {'slope':>6}  peak RSS MiB per size")
    fits = {}
    for s in STAGES:
        pts = [(r["rows_read"], r["seconds"][s]) for r in rows if s in r["seconds"]]
        if not pts:
            continue
        fits[s] = f = fit_cost(*zip(*pts))
        print(f"{s:<17} {f['t0_seconds']:>7.1f} {f['seconds_per_million_plays']:>9.1f} {f['loglog_slope_largest']:>6.2f}  "
              + ", ".join(str(r["peak_rss_mb"].get(s, "-")) for r in rows))
    print("\nwhere the time goes in the largest size (in-job phases, s; the rest is start-up):")
    for k, phases in rows[-1]["job_phases"].items():
        inside = sum(phases.values())
        print(f"  {k:<17} {rows[-1]['seconds'][k]:7.1f} = start-up etc. {rows[-1]['seconds'][k] - inside:5.1f} + "
              + ", ".join(f"{n} {v:.1f}" for n, v in phases.items()))
    print("\nthroughput, ingest + validate + confidence (plays per second per core):")
    for r in rows:
        if not {"ingest", "validate", "build_confidence"} <= set(r["seconds"]):
            continue
        t = sum(r["seconds"][s] for s in ("ingest", "validate", "build_confidence"))
        print(f"  {r['rows_read']:>10} plays/day: {r['rows_read'] / t / cores:>9.0f}"
              f"  (ingest alone {r['rows_read'] / r['seconds']['ingest'] / cores:.0f})")
    print("\nsizing model vs Spark's executor metrics (local mode: the driver is the executor), MiB:")
    print(f"  {'nnz':>10} {'stage':<17} {'heap given':>10} {'peak used':>9} {'(storage':>8} {'execution)':>10}"
          f" {'JVM RSS':>8} {'Python: predicted':>17} {'peak RSS':>8}")
    for r in rows:
        for stage, sz in r["sizing"].items():
            m = r["spark_peaks_mb"].get(r["spark_app"][stage], {})
            print(f"  {r['matrix']['nnz']:>10} {stage:<17} {sz['heap_mb']:>10} {m.get('JVMHeapMemory', '-'):>9} "
                  f"{m.get('OnHeapStorageMemory', '-'):>8} {m.get('OnHeapExecutionMemory', '-'):>10} "
                  f"{m.get('ProcessTreeJVMRSSMemory', '-'):>8} {sz.get('python_mb') or '-':>17} "
                  f"{m.get('ProcessTreePythonRSSMemory', '-'):>8}")
    total = time.time() - started
    print(f"\n{cores} cores, {platform.platform()}; {total / 60:.1f} min; command: {' '.join(sys.argv)}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "fits": fits, "cores": cores, "minutes": round(total / 60, 1),
                       "command": " ".join(sys.argv)}, fh, indent=1)
    if a.chart:
        chart(rows, a.chart)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
