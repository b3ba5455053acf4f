"""Spark settings sized to the data.

Shuffle partitions: Spark's default of 200 is tuned for nobody. Too many partitions on
a small day cost more in task scheduling than the work itself (GX validation of 3k rows
took 50 s with 200, 20 s with 4); too few on a large day spill. Aim at ~128 MiB of
shuffle input per partition, never fewer than two tasks per core.
"""

from __future__ import annotations

import os

TARGET_PARTITION_BYTES = 128 * 1024 * 1024


def total_cores() -> int:
    """Cores Spark may use: ``MUSIC_RECS_CLUSTER_CORES`` on a cluster, else this machine's."""
    return int(os.environ.get("MUSIC_RECS_CLUSTER_CORES", 0)) or os.cpu_count() or 1


def shuffle_partitions(input_bytes: int, cores: int | None = None) -> int:
    cores = cores or total_cores()
    by_size = -(-max(input_bytes, 0) // TARGET_PARTITION_BYTES)
    return int(min(max(by_size, 2 * cores), 20_000))
