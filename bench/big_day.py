"""Big days: ingest, validate and build_confidence on one generated day of 1M, 3M and 10M plays.

For each size it generates one day of stream logs (gzip'd JSON lines, ``--files-per-million``
files per million plays) straight into the run's landing staging folder (the S3 download the
ingest task does first is left out: it is not Spark), plus a history day a tenth of its size so
that the confidence matrix has a training day, and runs the DAG's own Spark stages for the big
day through ``music_recs_airflow.tasks`` (a real ``spark-submit`` on ``local[*]`` each, sized as
the DAG sizes it): ingest, validate, build_confidence (window of 2 days, the big day held out).

Per stage it prints wall seconds, peak RSS of the stage's process tree (the spark-submit JVM and
its Python workers), plays per second per core, and the job's own phases (the rest of a stage is
JVM and session start-up). The reference, in the same run at sizes up to ``--reference-up-to``:
ingest with the Python reader for every file (``IngestSpec.reader="python"``, how ingest read
every file before), on the same files; the ratio is printed. Across sizes it fits start-up +
seconds per million plays, and gives the marginal throughput ``1e6 / (seconds per million) /
cores`` of the three stages together.

    python bench/big_day.py --plays 1000000 3000000 10000000 --json bench/big_day.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

from pipeline_scaling import PeakMemory, fit_cost  # noqa: E402

STAGES = ("ingest", "validate", "build_confidence")
MIB = 1024 * 1024
DAY = dt.date(2026, 11, 20)


def generate(folder: str, day: dt.date, plays: int, files: int, catalogue) -> float:
    """Write ``plays`` plays of ``day`` as ``files`` gzip'd JSON-lines files; returns seconds.

    In slices of at most a million plays (the generator holds a slice in memory, not the day),
    each drawn with its own seed from the same catalogue.
    """
    from music_recs_dev.sample_data import write_days_local

    if os.path.isdir(folder) and os.listdir(folder):  # --work kept from an earlier run: same seeds, same files
        print(f"  reusing the {len(os.listdir(folder))} files already in {folder}", flush=True)
        return 0.0
    t = time.time()
    slices = max(1, -(-plays // 1_000_000))
    os.makedirs(folder, exist_ok=True)
    for i in range(slices):
        n = plays // slices + (1 if i < plays % slices else 0)
        drawn = copy.copy(catalogue)
        drawn.spec = dataclasses.replace(catalogue.spec, seed=catalogue.spec.seed * 1000 + i)
        tmp = os.path.join(folder + ".gen", str(i))
        write_days_local(tmp, [day], n, drawn, max(1, files // slices))
        src = os.path.join(tmp, f"dt={day.isoformat()}")
        for name in sorted(os.listdir(src)):
            os.replace(os.path.join(src, name), os.path.join(folder, f"s{i:03d}-{name}"))
    shutil.rmtree(folder + ".gen")
    return time.time() - t


def run_size(plays: int, work: str, files_per_million: int, catalogue, reference: bool) -> dict:
    from music_recs.settings import DeploymentSettings
    from music_recs_airflow import tasks

    lake = os.path.join(work, f"lake_{plays}")
    cfg = DeploymentSettings(lake_uri=lake)
    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.timezone.utc)
    params = {"window_days": 2, "holdout_days": 1, "tune": "off"}
    history = tasks.plan_run(params, start - dt.timedelta(days=1), f"big__{plays}__history", cfg)
    plan = tasks.plan_run(params, start, f"big__{plays}", cfg)
    files = max(1, files_per_million * plays // 1_000_000)
    generated = generate(history.landing_staging, DAY - dt.timedelta(days=1), plays // 10, max(1, files // 10), catalogue)
    generated += generate(plan.landing_staging, DAY, plays, files, catalogue)
    print(f"  generated {plays} plays (+{plays // 10} history) in {generated:.0f}s", flush=True)
    landing_bytes = tasks.folder_bytes(plan.landing_staging)
    tasks.submit_stage(history, tasks.ingest_spec(history), tasks.GZIP_JSON_EXPANSION * tasks.folder_bytes(
        history.landing_staging))

    seconds, peak, results = {}, {}, {}

    def stage(name, fn):
        with PeakMemory() as mem:
            t = time.time()
            results[name] = fn()
            seconds[name] = time.time() - t
        peak[name] = mem.peak
        cores = plan.cluster.total_cores
        rate = plays * (1.1 if name == "build_confidence" else 1) / seconds[name] / cores
        print(f"  {name:<17} {seconds[name]:7.1f}s  peak RSS {mem.peak / MIB:7.0f} MiB  {rate:9.0f} plays/s/core  "
              f"phases {results[name].seconds}", flush=True)

    if reference:  # the same stage with the Python reader for every file (before issue 17), same files
        stage("ingest_python_reader", lambda: tasks.submit_stage(plan, dataclasses.replace(
            tasks.ingest_spec(plan), reader="python"), tasks.GZIP_JSON_EXPANSION * landing_bytes))
    largest = tasks.largest_file_bytes(plan.landing_staging)
    stage("ingest", lambda: tasks.submit_stage(plan, tasks.ingest_spec(plan), tasks.GZIP_JSON_EXPANSION * landing_bytes,
                                               largest))
    if reference:
        print(f"  ingest: {seconds['ingest_python_reader'] / seconds['ingest']:.2f}x faster than with the Python "
              f"reader for every file", flush=True)
    stage("validate", lambda: tasks.validate(plan, results["ingest"]))
    stage("build_confidence", lambda: tasks.build_confidence(plan))
    ingested = results["ingest"]
    assert ingested.rows_read == plays and ingested.rows_accepted + ingested.duplicates_removed == plays, ingested
    return {
        "plays": plays, "landing_mb": round(landing_bytes / MIB, 1), "files": files,
        "seconds": {k: round(v, 2) for k, v in seconds.items() if k in STAGES},
        "reference_seconds": {k: round(v, 2) for k, v in seconds.items() if k not in STAGES},
        "peak_rss_mb": {k: round(v / MIB) for k, v in peak.items()},
        "driver_memory": {k: results[k].submission["settings"]["driver_memory"] for k in results},
        "job_phases": {k: results[k].seconds for k in results},
        "files_by_reader": results["ingest"].files_by_reader,
        "matrix": results["build_confidence"].stats["track"]["nnz"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plays", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    p.add_argument("--files-per-million", type=int, default=2)
    p.add_argument("--work", help="work folder (default: a temporary one, removed after); kept, a later run "
                                  "reuses the generated days in it")
    p.add_argument("--json", help="write every number here")
    p.add_argument("--reference-up-to", type=int, default=3_000_000,
                   help="at sizes up to this, also run ingest with the Python reader for every file (the reference)")
    p.add_argument("--verbose", action="store_true", help="show the stages' logs (every spark-submit line)")
    args = p.parse_args(argv)
    if not args.verbose:  # the stages log every spark-submit line; Airflow reads the level when imported
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    from music_recs_dev.sample_data import Catalogue, CatalogueSpec

    work = args.work or tempfile.mkdtemp(prefix="music_recs_big_day_")
    # One catalogue (users, tracks, tastes) for every size: a bigger day is more plays of the same
    # users, as a busy day is; building the catalogue of a 10M-play day alone would take minutes.
    catalogue = Catalogue(CatalogueSpec.for_plays_per_day(1_000_000, seed=7))
    cores = os.cpu_count() or 1
    runs = []
    try:
        for plays in args.plays:
            print(f"{plays} plays:", flush=True)
            runs.append(run_size(plays, work, args.files_per_million, catalogue, plays <= args.reference_up_to))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    xs = [r["plays"] for r in runs]
    fits = {s: fit_cost(xs, [r["seconds"][s] for r in runs]) for s in STAGES}
    total = fit_cost(xs, [sum(r["seconds"].values()) for r in runs])
    margin = 1e6 / total["seconds_per_million_plays"] / cores if total["seconds_per_million_plays"] > 0 else None
    print("\nfit (start-up + seconds per million plays):")
    for s in STAGES:
        print(f"  {s:<17} {fits[s]['t0_seconds']:6.1f} + {fits[s]['seconds_per_million_plays']:6.2f}")
    print(f"  three stages      {total['t0_seconds']:6.1f} + {total['seconds_per_million_plays']:6.2f}"
          f"  -> at the margin {margin:,.0f} plays/s/core ({cores} cores)" if margin else "")
    for r in runs:
        print(f"  {r['plays']:>10} plays: {sum(r['seconds'].values()):6.1f}s in all, peak RSS per stage (MiB) "
              f"{r['peak_rss_mb']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cores": cores, "runs": runs, "fits": fits, "total": total,
                       "margin_plays_per_second_per_core": margin}, fh, indent=2)


if __name__ == "__main__":
    main()
