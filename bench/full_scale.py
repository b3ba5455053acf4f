"""The whole daily DAG on a window at scale: every stage's cost at several fractions of the window.

For each fraction of the window (default 10%, 30% and 100% of 90 days, 100M plays, 1M users,
200k tracks: ``music_recs_dev.scale_data``), it writes the history days straight into a fresh
local lake's plays layout and the last day as landing files into a local S3 server (moto, over
HTTP, as in the tests), then runs the DAG's own task functions (``music_recs_airflow.tasks``, the
code each Airflow task calls) for the last day in the DAG's order: ingest, validate,
build_confidence, train_als (with the DAG's default ``tune`` policy: a search first), evaluate,
quality_gate + publish. Each Spark stage is its own ``spark-submit`` on ``local[*]`` with the
sizing the DAG computes; Airflow's scheduling is left out.

Measured per stage: wall time; time inside the job (its own phases); peak resident memory of the
stage's process tree (``pipeline_scaling.PeakMemory``, the S3 server left out); what its Spark
tasks spilled (event logs). Per stage, the exponent of its cost in plays from the sizes run
(log-log least squares: 1 = linear). For training, the same train matrix fitted by ``implicit``
(its CG solver, 2 threads, same rank and iterations) as the reference per iteration.

Run: ``.venv/bin/python bench/full_scale.py`` (the three sizes; ``--fractions 0.01 0.03 0.1`` for
a first look), ``--json`` and ``--chart`` to keep the numbers. A stage that fails is recorded
with its one-line cause, and the later stages of that size are skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "plugins"))
sys.path.insert(0, os.path.join(REPO, "bench"))

import numpy as np  # noqa: E402

from pipeline_scaling import MIB, STAGES, PeakMemory, _free_port, chart  # noqa: E402

SPARK_APP = {"ingest": "ingest", "validate": "validate", "build_confidence": "confidence", "train_als": "train_als",
             "evaluate": "evaluate"}
GIB = 1024 * MIB


def generate(spec, lake: str, landing: str, store, raw_bucket: str, landing_prefix: str) -> dict:
    """The window: history days into the lake, the last day's landing files into the raw bucket."""
    from music_recs_dev import scale_data as SD

    started = time.perf_counter()
    cat = SD.Catalogue(spec)
    history = SD.write_lake_days(cat, lake, range(spec.days - 1), workers=min(2, os.cpu_count() or 1))
    lake_s = time.perf_counter() - started
    plays = SD.generate_day(cat, spec.days - 1)
    paths = SD.write_landing_day(cat, plays, landing)
    for path in paths:
        store.client.upload_file(path, raw_bucket, f"{landing_prefix}/dt={plays.day.isoformat()}/{os.path.basename(path)}")
    shutil.rmtree(landing, ignore_errors=True)
    total = time.perf_counter() - started
    return {"history_plays": history, "day_plays": len(plays), "day": plays.day.isoformat(),
            "seconds": round(total, 1), "lake_plays_per_s": round(history / lake_s)}


def implicit_reference(matrix_dir: str, rank: int, iterations: int, reg: float, alpha: float) -> dict:
    """``implicit``'s CG ALS on the run's train matrix (2 threads): median seconds per iteration."""
    import pyarrow.parquet as pq
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    table = pq.read_table(os.path.join(matrix_dir, "train"), columns=["user_idx", "item_idx", "strength"])
    users, items = table.column("user_idx").to_numpy(), table.column("item_idx").to_numpy()
    csr = sp.csr_matrix((table.column("strength").to_numpy().astype(np.float32), (users, items)),
                        shape=(int(users.max()) + 1, int(items.max()) + 1))
    stamps = []
    model = AlternatingLeastSquares(factors=rank, regularization=reg, alpha=alpha, use_cg=True,
                                    iterations=max(2, iterations), num_threads=2, random_state=42)
    model.fit(csr, show_progress=False, callback=lambda it, elapsed, loss: stamps.append(elapsed))
    return {"seconds_per_iteration": float(np.median(stamps[1:])), "nnz": int(csr.nnz), "iterations": len(stamps)}


def run_size(fraction: float, base, work: str, params: dict, reference: bool) -> dict:
    from music_recs.settings import resolve
    from music_recs_airflow import tasks
    from music_recs_airflow.s3 import S3Store
    from music_recs_dev.spark_events import executor_peaks, spill

    spec = base.scaled(fraction)
    root = os.path.join(work, f"f{fraction:g}")
    lake, events = os.path.join(root, "lake"), os.path.join(root, "events")
    os.environ["MUSIC_RECS_LAKE_URI"] = lake
    os.environ["MUSIC_RECS_WORK_DIR"] = os.path.join(root, "work")
    os.environ["MUSIC_RECS_SPARK_EVENT_LOG_DIR"] = events
    # Each size publishes apart: a size's run must not find another size's model to compare with.
    os.environ["MUSIC_RECS_MODELS_PREFIX"] = f"music_recs_f{fraction:g}"
    cfg = resolve()
    store = S3Store.from_airflow(cfg.aws_conn_id)
    for bucket in (cfg.raw_bucket, cfg.models_bucket):
        store.ensure_bucket(bucket)
    generated = generate(spec, lake, os.path.join(root, "landing"), store, cfg.raw_bucket, cfg.landing_prefix)
    print(f"  generated {spec.days} days, {generated['history_plays'] + generated['day_plays']:,} plays "
          f"({spec.users:,} users, {spec.tracks:,} tracks) in {generated['seconds']:.0f}s", flush=True)
    start = dt.datetime.combine(dt.date.fromisoformat(generated["day"]), dt.time(), tzinfo=dt.timezone.utc)
    plan = tasks.plan_run({"window_days": spec.days, **params}, start, f"bench_full__{fraction:g}", cfg)
    seconds, peak, peak_raw, at_peak, results, failed = {}, {}, {}, {}, {}, {}

    def stage(name, fn, *args):
        if failed:  # a later stage needs the earlier ones' outputs
            return
        with PeakMemory() as mem:
            t = time.perf_counter()
            try:
                results[name] = fn(*args)
            except Exception as exc:  # the failure is a result too
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                print(f"  {name:<17} FAILED after {time.perf_counter() - t:.0f}s: {failed[name]}", flush=True)
                return
            seconds[name] = time.perf_counter() - t
        peak[name], peak_raw[name], at_peak[name] = mem.peak, mem.peak_raw, mem.at_peak
        print(f"  {name:<17} {seconds[name]:7.1f}s  peak RSS {mem.peak / MIB:7.0f} MiB ("
              + ", ".join(f"{r} {v['mb']}" + (f" in {v['processes']}" if v["processes"] > 1 else "")
                          for r, v in mem.at_peak.items())
              + (f"; {mem.peak_raw / MIB:.0f} with clones counted twice" if mem.peak_raw > mem.peak else "") + ")",
              flush=True)

    stage("ingest", tasks.ingest, store, plan)
    stage("validate", tasks.validate, plan, results.get("ingest"))
    stage("build_confidence", tasks.build_confidence, plan)
    rules = tasks.recommendation_rules(store, plan) if not failed else None
    stage("train_als", tasks.train, plan, results.get("build_confidence"), store, rules)
    stage("evaluate", tasks.evaluate, plan, results.get("build_confidence"), store, results.get("train_als"), rules)

    def gate_and_publish():
        gate = tasks.quality_gate(store, plan, results["evaluate"])
        return tasks.publish_run(store, plan, results["ingest"], results["validate"], results["build_confidence"],
                                 results["train_als"], results["evaluate"], gate)

    stage("publish", gate_and_publish)
    row = {"fraction": fraction, "window_plays": generated["history_plays"] + generated["day_plays"],
           "users": spec.users, "tracks": spec.tracks, "generated": generated,
           "seconds": {k: round(v, 1) for k, v in seconds.items()},
           "peak_rss_mb": {k: round(v / MIB) for k, v in peak.items()}, "peak_by_process": at_peak,
           "peak_rss_raw_mb": {k: round(v / MIB) for k, v in peak_raw.items()}, "failed": failed,
           "job_seconds": {k: round(sum(results[k].seconds.values()), 1) for k in SPARK_APP
                           if k in results and isinstance(getattr(results[k], "seconds", None), dict)},
           "spill_mb": {k: {m: round(v / MIB) for m, v in s.items()} for k, s in spill(events).items()},
           "spark_peaks_mb": {k: {m: round(v / MIB) for m, v in p.items()} for k, p in executor_peaks(events).items()}}
    if "build_confidence" in results:
        row["matrix"] = results["build_confidence"].stats[plan.params.granularity]
    trained = results.get("train_als")
    if trained is not None:
        row["train"] = {"rank": trained.params["rank"], "iterations": trained.iterations,
                        "seconds_per_iteration": trained.seconds_per_iteration, "strategy": trained.strategy,
                        # implicit's figure is the median of its iterations, set-up excluded: the same here
                        "median_iteration_seconds": (float(np.median(trained.iteration_seconds))
                                                     if trained.iteration_seconds else None),
                        "searched": bool((trained.tuning or {}).get("trials"))}
        if reference:
            try:
                row["implicit"] = implicit_reference(plan.matrix, trained.params["rank"], trained.iterations,
                                                     trained.params["reg"], trained.params["alpha"])
            except Exception as exc:  # the reference failing is recorded, not fatal
                row["implicit"] = {"failed": f"{type(exc).__name__}: {str(exc)[:200]}"}
    if "evaluate" in results:
        row["metrics"] = {k: results["evaluate"].model[k] for k in ("map", "precision")}
    lake_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(os.path.join(lake, "plays"))
                     for f in files)
    row["lake_bytes_per_play"] = round(lake_bytes / row["window_plays"], 1)  # for bench/seed_scale.py
    shutil.rmtree(root, ignore_errors=True)  # gigabytes at full size
    return row


def exponent(xs, ys) -> float:
    """Least-squares slope of log(seconds) on log(plays): 1 = linear."""
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--plays", type=int, default=100_000_000, help="plays in the whole window at fraction 1")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--tracks", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--params", default="{}", help="run params as JSON on top of the DAG's defaults")
    p.add_argument("--no-implicit", action="store_true", help="skip the implicit reference")
    p.add_argument("--verbose", action="store_true", help="show the stages' logs (every spark-submit line)")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--chart", help="write the PNG chart here")
    a = p.parse_args(argv)
    if not a.verbose:  # Airflow configures logging when imported, from this setting
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    from music_recs_airflow import tasks  # noqa: F401  (imports Airflow, which reads the level now)
    from music_recs_dev import local_s3
    from music_recs_dev.scale_data import ScaleSpec

    base = ScaleSpec(days=a.days, plays=a.plays, users=a.users, tracks=a.tracks, seed=a.seed)
    # Synthetic data: publish whatever the gate says, so every size is measured to the end.
    params = {"override_quality_gate": True, **json.loads(a.params)}
    work = tempfile.mkdtemp(prefix="full_scale_bench_")
    port = _free_port()
    server = local_s3.start(port, os.path.join(work, "s3.log"))
    PeakMemory.exclude = {server.pid}
    conn = json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                       "extra": {"endpoint_url": local_s3.endpoint(port), "region_name": "us-east-1"}})
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = os.environ["AIRFLOW_CONN_AWS_MODELS_READER"] = conn
    os.environ.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[*]"}))
    rows, started = [], time.time()
    try:
        for fraction in sorted(a.fractions):
            print(f"fraction {fraction:g} of {base.plays:,} plays", flush=True)
            rows.append(run_size(fraction, base, work, params, not a.no_implicit))
            if a.json:  # every size is kept even if a later one dies
                with open(a.json, "w") as fh:
                    json.dump({"rows": rows, "command": " ".join(sys.argv)}, fh, indent=1)
    finally:
        if server is not None:
            server.terminate()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'window plays':>13} {'nnz':>10} " + " ".join(f"{s[:12]:>12}" for s in STAGES) + f" {'total':>8}")
    for r in rows:
        total = sum(r["seconds"].values())
        print(f"{r['window_plays']:>13,} {r.get('matrix', {}).get('nnz', 0):>10,} "
              + " ".join(f"{r['seconds'].get(s, float('nan')):>11.1f}s" for s in STAGES) + f" {total / 60:>7.1f}m"
              + (f"  FAILED {r['failed']}" if r["failed"] else ""))
    print(f"\n{'stage':<17} {'exponent':>8}  peak RSS MiB per size; spill (memory/disk MiB) per size")
    exponents = {}
    for s in STAGES:
        pts = [(r["window_plays"], r["seconds"][s]) for r in rows if s in r["seconds"]]
        exponents[s] = round(exponent(*zip(*pts)), 2) if len(pts) > 1 else None
        spilled = [r["spill_mb"].get(SPARK_APP.get(s, ""), {}) for r in rows]
        print(f"{s:<17} {exponents[s] if exponents[s] is not None else '-':>8}  "
              + ", ".join(str(r["peak_rss_mb"].get(s, "-")) for r in rows) + "; "
              + ", ".join(f"{x.get('memory', 0)}/{x.get('disk', 0)}" for x in spilled))
    print("\ntraining against implicit (CG, 2 threads, same matrix, rank and iterations), seconds per iteration"
          " (median of the iterations; the project's fit / iterations, its set-up of blocks and first factors included):")
    for r in rows:
        t, ref = r.get("train"), r.get("implicit") or {}
        if t and "seconds_per_iteration" in ref:
            median, base = t.get("median_iteration_seconds") or t["seconds_per_iteration"], ref["seconds_per_iteration"]
            print(f"  {r['window_plays']:>13,} plays, rank {t['rank']}: project {median:.2f} ({median / base:.2f}x), "
                  f"fit / iterations {t['seconds_per_iteration']:.2f} ({t['seconds_per_iteration'] / base:.2f}x); "
                  f"implicit {base:.2f}")
    minutes = (time.time() - started) / 60
    print(f"\n{os.cpu_count()} cores, {platform.platform()}; {minutes:.1f} min; command: {' '.join(sys.argv)}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "exponents": exponents, "minutes": round(minutes, 1),
                       "command": " ".join(sys.argv)}, fh, indent=1)
    if a.chart:
        chart(rows, a.chart, x="window_plays", xlabel="plays in the window",
              title="music_recs_daily on a window at scale")
    return 0


if __name__ == "__main__":
    sys.exit(main())
