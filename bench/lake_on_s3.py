"""Each stage of a daily run with the lake on the local S3 server (``s3a://``) against the lake in a
local folder, on the same generated days, in one run.

Two days of ``--plays`` plays each (gzip'd JSON lines) go to the raw bucket of a moto server on
127.0.0.1; then, for each lake, the DAG's own task functions (``music_recs_airflow.tasks``, a real
``spark-submit`` on ``local[*]`` each, sized as the DAG sizes them) ingest the first day (untimed
history), then run the second day's stages, timed: ingest, validate, build_confidence (a window of
the two days, the second held out), train_als (``tune=off``), evaluate, publish. With the local
lake, ingest first stages the landing files into the lake (timed within ingest, as in the DAG);
with the S3 lake, Spark reads them straight from the raw bucket.

Per stage it prints wall seconds for both lakes, their ratio, peak RSS of the stage's process tree
(the S3 server excluded), and the job's own phases, so the difference can be told apart: Spark
start-up and work are the same code on both; what differs is reading and writing through S3A
(a PUT per file, a copy per file at Spark's commit, listings) and the lake's commit protocol.

    python bench/lake_on_s3.py --plays 1000000 --json bench/lake_on_s3.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

from big_day import generate  # noqa: E402
from pipeline_scaling import PeakMemory  # noqa: E402

STAGES = ("ingest", "validate", "build_confidence", "train_als", "evaluate", "publish")
RAW, MODELS, LAKE_BUCKET = "bench-raw", "bench-models", "bench-lake"
DAY = dt.date(2026, 11, 20)
MIB = 1024 * 1024


def start_s3(work: str) -> tuple[str, object]:
    from music_recs_dev import local_s3
    from music_recs_dev.local_s3 import endpoint

    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = local_s3.start(port, os.path.join(work, "s3.log"))
    url = endpoint(port)
    os.environ.update(AWS_ENDPOINT_URL_S3=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": url, "region_name": "us-east-1"}})
    os.environ.setdefault("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[*]"}))
    return url, proc


def upload_landing(store, folder: str, day: dt.date) -> int:
    n = 0
    for name in sorted(os.listdir(folder)):
        store.client.upload_file(os.path.join(folder, name), RAW, f"stream_logs/dt={day.isoformat()}/{name}")
        n += os.path.getsize(os.path.join(folder, name))
    return n


def run_lake(kind: str, lake_uri: str, work: str, store) -> dict:
    from music_recs.settings import DeploymentSettings
    from music_recs_airflow import tasks

    cfg = DeploymentSettings(raw_bucket=RAW, models_bucket=MODELS, models_prefix=f"bench_{kind}", lake_uri=lake_uri,
                             work_dir=os.path.join(work, f"work_{kind}"))
    params = {"window_days": 2, "holdout_days": 1, "tune": "off", "warm_start": "off", "override_quality_gate": True}
    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.timezone.utc)
    history = tasks.plan_run(params, start - dt.timedelta(days=1), f"lake_{kind}__history", cfg)
    tasks.ingest(store, history)
    plan = tasks.plan_run(params, start, f"lake_{kind}", cfg)
    seconds, peak, phases, out = {}, {}, {}, {}

    def stage(name, fn):
        with PeakMemory() as mem:
            t = time.time()
            out[name] = fn()
            seconds[name] = time.time() - t
        peak[name] = mem.peak
        phases[name] = getattr(out[name], "seconds", None)
        print(f"  {kind:>5} {name:<17} {seconds[name]:7.1f}s  peak RSS {mem.peak / MIB:6.0f} MiB  phases {phases[name]}",
              flush=True)

    stage("ingest", lambda: tasks.ingest(store, plan))
    stage("validate", lambda: tasks.validate(plan, out["ingest"]))
    stage("build_confidence", lambda: tasks.build_confidence(plan))
    rules = tasks.recommendation_rules(store, plan)
    stage("train_als", lambda: tasks.train(plan, out["build_confidence"], store, rules))
    stage("evaluate", lambda: tasks.evaluate(plan, out["build_confidence"], store, out["train_als"], rules))
    gate = tasks.quality_gate(store, plan, out["evaluate"])
    stage("publish", lambda: tasks.publish_run(store, plan, out["ingest"], out["validate"], out["build_confidence"],
                                               out["train_als"], out["evaluate"], gate))
    ingested = out["ingest"]
    return {"lake": lake_uri, "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "peak_rss_mb": {k: round(v / MIB) for k, v in peak.items()}, "job_phases": phases,
            "rows": {"read": ingested.rows_read, "accepted": ingested.rows_accepted},
            "nnz": out["build_confidence"].stats[plan.params.granularity]["nnz"],
            "map": out["evaluate"].model["map"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plays", type=int, default=1_000_000, help="plays per day (two days are generated)")
    p.add_argument("--files-per-million", type=int, default=2)
    p.add_argument("--work", help="work folder (default: a temporary one)")
    p.add_argument("--json", help="write every number here")
    args = p.parse_args(argv)
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    work = args.work or tempfile.mkdtemp(prefix="lake_on_s3_")
    from music_recs_airflow.s3 import S3Store
    from music_recs_dev.sample_data import Catalogue, CatalogueSpec

    url, proc = start_s3(work)
    if proc is not None:
        PeakMemory.exclude = {proc.pid}
    try:
        store = S3Store.from_endpoint(url, "testing", "testing")
        for b in (RAW, MODELS, LAKE_BUCKET):
            store.ensure_bucket(b)
        catalogue = Catalogue(CatalogueSpec.for_plays_per_day(args.plays))
        files = max(1, args.files_per_million * args.plays // 1_000_000)
        landing = 0
        for day in (DAY - dt.timedelta(days=1), DAY):
            folder = os.path.join(work, "landing", f"dt={day.isoformat()}")
            generate(folder, day, args.plays, files, catalogue)
            landing += upload_landing(store, folder, day)
        print(f"landing: 2 days x {args.plays} plays, {landing / MIB:.0f} MiB gzip in s3://{RAW}", flush=True)
        runs = {"local": run_lake("local", os.path.join(work, "lake"), work, store),
                "s3": run_lake("s3", f"s3a://{LAKE_BUCKET}/lake", work, store)}
    finally:
        if proc is not None:
            proc.terminate()
    print(f"\n{'stage':<17} {'local s':>8} {'s3 s':>8} {'s3/local':>9}")
    for name in STAGES:
        a, b = runs["local"]["seconds"][name], runs["s3"]["seconds"][name]
        print(f"{name:<17} {a:8.1f} {b:8.1f} {b / a:9.2f}")
    total = {k: sum(r["seconds"].values()) for k, r in runs.items()}
    print(f"{'all stages':<17} {total['local']:8.1f} {total['s3']:8.1f} {total['s3'] / total['local']:9.2f}")
    for k, r in runs.items():
        print(f"{k}: {r['rows']}, {r['nnz']} non-zeros, MAP@10 {r['map']:.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"plays_per_day": args.plays, "runs": runs, "date": dt.date.today().isoformat()}, fh, indent=2,
                      default=str)


if __name__ == "__main__":
    main()
