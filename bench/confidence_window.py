"""build_confidence with a big training window, in one Spark session, repeated.

``bench/big_day.py`` holds its big day out (a 2-day window: a small history day trains, the big
day is the held-out day). A daily run trains on a window of days and holds out one, so the
training side carries the weight there. This bench builds that shape from the days
``big_day.py --work W`` kept: a lake of links in which the big day is the training day and the
1M-play day (``--holdout-plays``) is the next, held-out, day. It runs the confidence job's
``run`` (``spark_jobs/confidence.py``, track granularity, the DAG's defaults otherwise) ``--repeats``
times in one local session and prints seconds per run: the first in a fresh JVM, later ones warm.
Every big_day.py size draws from one catalogue, and the 10M-play day already holds every (user,
track) pair the 1M-play day plays: the held-out pairs come out empty, and what is timed is the
training side, the names and the writes.

Compare two commits by running it from a worktree of each (``PYTHONPATH=<worktree>/src:<worktree>``),
alternating the order.

    python bench/big_day.py --plays 1000000 10000000 --work /tmp/bigday
    python bench/confidence_window.py --work /tmp/bigday --train-plays 10000000 --repeats 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

from big_day import DAY  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="big_day.py's --work folder")
    p.add_argument("--train-plays", type=int, default=10_000_000, help="the big day that trains (a big_day.py size)")
    p.add_argument("--holdout-plays", type=int, default=1_000_000, help="the big_day.py size whose day is held out")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--driver-memory", default="2304m", help="the heap the DAG gives this stage on 2 cores")
    p.add_argument("--shuffle-partitions", type=int, default=16)
    args = p.parse_args(argv)

    def day_folder(plays: int) -> str:
        folder = os.path.join(args.work, f"lake_{plays}", "plays", f"dt={DAY.isoformat()}")
        if not os.path.isdir(folder):
            sys.exit(f"no {folder}: run bench/big_day.py --plays {plays} --work {args.work}")
        return folder

    train_day, held_day = DAY, DAY + dt.timedelta(days=1)
    lake = tempfile.mkdtemp(prefix="music_recs_confidence_window_")
    os.makedirs(os.path.join(lake, "plays"))
    os.symlink(day_folder(args.train_plays), os.path.join(lake, "plays", f"dt={train_day.isoformat()}"))
    os.symlink(day_folder(args.holdout_plays), os.path.join(lake, "plays", f"dt={held_day.isoformat()}"))

    from music_recs.jobs import ConfidenceSpec
    from spark_jobs import confidence
    from spark_jobs.lib.session import get_spark

    spark = get_spark("confidence_window", {
        "spark.master": "local[*]", "spark.driver.memory": args.driver_memory,
        "spark.sql.shuffle.partitions": str(args.shuffle_partitions), "spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    spec = ConfidenceSpec(day=held_day.isoformat(), lake_uri=lake, window_days=2, holdout_days=1,
                          granularities=("track",), out_uri=os.path.join(lake, "matrix"))
    try:
        for i in range(args.repeats):
            t = time.time()
            result = confidence.run(spark, spec)
            stats = result.stats["track"]
            print(f"run {i + 1} ({'fresh JVM' if i == 0 else 'warm'}): {time.time() - t:6.1f}s  "
                  f"matrix {stats['users']} users x {stats['items']} items, {stats['nnz']} pairs; "
                  f"{stats['holdout_pairs']} held-out pairs", flush=True)
    finally:
        spark.stop()
        shutil.rmtree(lake, ignore_errors=True)


if __name__ == "__main__":
    main()
