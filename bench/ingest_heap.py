"""Ingest of one big day with different driver heaps, side by side in one run.

Does a heap sized to the running partitions (``sizing.stage_memory_mb``, 2304 MiB on 2 cores)
cost time against one that holds the day? Submits the DAG's ingest stage (``tasks.ingest_spec``
through ``SparkJobHook``, a real ``spark-submit`` on ``local[*]``) once per heap on the same
files: a day ``bench/big_day.py --work W`` generated and kept. Prints seconds, peak RSS of the
stage's process tree and the job's phases per heap, and each heap's time over the first's.

    python bench/big_day.py --plays 10000000 --work /tmp/bigday
    python bench/ingest_heap.py --plays 10000000 --work /tmp/bigday --heaps 2304m 7168m
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

from big_day import DAY, MIB  # noqa: E402
from pipeline_scaling import PeakMemory  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plays", type=int, default=3_000_000, help="the day's size, as given to big_day.py")
    p.add_argument("--work", required=True, help="big_day.py's --work folder, holding that day's files")
    p.add_argument("--heaps", nargs="+", default=["2304m", "3584m", "4608m"])
    p.add_argument("--shuffle-partitions", type=int, default=16)
    args = p.parse_args(argv)
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    import time

    from music_recs.settings import DeploymentSettings
    from music_recs_airflow import tasks

    cfg = DeploymentSettings(lake_uri=os.path.join(args.work, f"lake_{args.plays}"))
    start = dt.datetime.combine(DAY, dt.time(), tzinfo=dt.timezone.utc)
    plan = tasks.plan_run({"window_days": 2, "holdout_days": 1, "tune": "off"}, start, f"big__{args.plays}", cfg)
    if not tasks.folder_bytes(plan.landing_staging):
        sys.exit(f"no files in {plan.landing_staging}: run bench/big_day.py --plays {args.plays} --work {args.work}")
    conf = {"spark.sql.shuffle.partitions": str(args.shuffle_partitions)}
    first = None
    for heap in args.heaps:
        with PeakMemory() as mem:
            t = time.time()
            result = tasks.spark_hook(plan).submit(tasks.ingest_spec(plan), conf=conf, driver_memory=heap)
            seconds = time.time() - t
        first = first or seconds
        print(f"heap {heap:>6}: {seconds:6.1f}s ({seconds / first:.2f}x the first)  peak RSS {mem.peak / MIB:6.0f} MiB  "
              f"phases {result.seconds}", flush=True)


if __name__ == "__main__":
    main()
