"""What ingest's look-up of events already accepted on neighbouring days costs.

Ingests the last of ``--days`` generated days twice per repeat, in one warm Spark session:
into a lake without the earlier days (nothing to look up) and into one holding them (the
event ids of the ``ingest.NEIGHBOUR_DAYS`` days before are read and anti-joined; in daily
operation the days after are not there yet). Prints the medians and their ratio.

Run: ``python bench/ingest_neighbour_days.py --plays-per-day 1200000 --repeats 3``
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pyspark.sql import SparkSession

from music_recs.jobs import IngestSpec
from music_recs_dev.sample_data import Catalogue, CatalogueSpec, write_days_local
from spark_jobs import ingest
from spark_jobs.lib.session import BASE_CONF


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plays-per-day", type=int, default=1_200_000)
    p.add_argument("--days", type=int, default=ingest.NEIGHBOUR_DAYS + 1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--driver-memory", default="6g")
    a = p.parse_args()

    builder = (SparkSession.builder.master("local[*]").appName("bench.ingest_neighbour_days")
               .config("spark.ui.enabled", "false").config("spark.driver.memory", a.driver_memory))
    for key, value in BASE_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    root = Path(tempfile.mkdtemp(prefix="ingest_neighbour_days_"))
    try:
        days = [dt.date(2026, 11, 17) + dt.timedelta(days=i) for i in range(a.days)]
        write_days_local(str(root / "landing"), days, a.plays_per_day,
                         Catalogue(CatalogueSpec.for_plays_per_day(a.plays_per_day)))
        landing = lambda d: str(root / "landing" / f"dt={d}")  # noqa: E731
        for d in days[:-1]:
            ingest.run(spark, IngestSpec(day=d.isoformat(), input_uri=landing(d), lake_uri=str(root / "with")))
        seconds = {"without": [], "with": []}
        for _ in range(a.repeats):
            for label in seconds:
                t0 = time.perf_counter()
                result = ingest.run(spark, IngestSpec(day=days[-1].isoformat(), input_uri=landing(days[-1]),
                                                      lake_uri=str(root / label)))
                seconds[label].append(time.perf_counter() - t0)
        without, with_ = (statistics.median(seconds[k]) for k in ("without", "with"))
        print(f"ingest of {result.rows_read} rows, median of {a.repeats}: {without:.1f} s without earlier days, "
              f"{with_:.1f} s with {len(days) - 1} earlier days in the lake; ratio {with_ / without:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
