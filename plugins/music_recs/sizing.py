"""Spark settings sized to the data, for the stages other than ALS (``executor_sizing``).

Shuffle partitions: Spark's default of 200 is tuned for nobody. Too many partitions on
a small day cost more in task scheduling than the work itself (GX validation of 3k rows
took 50 s with 200, 20 s with 4); too few on a large day spill. Aim at ~128 MiB of
shuffle input per partition, never fewer than two tasks per core.

Memory (local mode, where the driver JVM is the executor): spark-submit's default 1 GiB
ran ingest out of heap on a day of 1.2M plays. Each stage caches its rows and shuffles them
about once, so the heap is Spark's reserved 300 MiB plus twice the in-memory input over the
memory fraction, with the same 1.5x headroom as the ALS model; at least 1 GiB, at most what one
executor may use.
"""

from __future__ import annotations

import os

TARGET_PARTITION_BYTES = 128 * 1024 * 1024
MIB = 1024 * 1024


def total_cores() -> int:
    """Cores Spark may use: ``MUSIC_RECS_CLUSTER_CORES`` on a cluster, else this machine's."""
    return int(os.environ.get("MUSIC_RECS_CLUSTER_CORES", 0)) or os.cpu_count() or 1


def shuffle_partitions(input_bytes: int, cores: int | None = None) -> int:
    cores = cores or total_cores()
    by_size = -(-max(input_bytes, 0) // TARGET_PARTITION_BYTES)
    return int(min(max(by_size, 2 * cores), 20_000))


def stage_memory_mb(input_bytes: int, limit_mb: int) -> int:
    """Heap for a stage whose rows take ``input_bytes`` in memory (see the module docstring)."""
    from music_recs.executor_sizing import JVM_RESERVED, MEMORY_FRACTION, SAFETY

    need = JVM_RESERVED + 2 * max(input_bytes, 0) / MEMORY_FRACTION * SAFETY
    step = 256 * MIB
    return int(min(max(-(-need // step) * step, 1024 * MIB), limit_mb * MIB) // MIB)
