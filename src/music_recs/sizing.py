"""Spark settings for ALS sized to the matrix, from a model of the memory its blocks need.

Spark MLlib's ALS ("half gridify") keeps the ratings twice, grouped by user block and by
item block (``InBlock``: per rating an encoded destination index and a float rating, plus
per-source pointers), and in each half-iteration ships to every user block the item
vectors its ratings reference (at most every item vector), then solves one k x k normal
equation per row. Per executor, with ``B`` blocks per side, ``E`` executors and ``c``
cores, all sizes in bytes and ``V = 4k + 16`` the size of one float vector of rank k:

* cached (storage), spread over the executors::

      ratings   = nnz * RATING_BYTES * 2 layouts
      factors   = (users + items) * V * 2   (current and previous iteration, both cached)
      storage   = (ratings + factors) / E

* per running task (execution), ``c`` at a time::

      block     = nnz / B * RATING_BYTES                       (its share of one layout)
      received  = min(items, nnz / B) * V                       (vectors it needs; all items at worst)
      scratch   = 2 * k * k * 8                                  (normal equation + Cholesky, doubles)
      task      = block + received + scratch

* heap = JVM_RESERVED + (storage + c * task) / MEMORY_FRACTION * SAFETY, rounded up to 256 MiB;
  overhead = max(384 MiB, OVERHEAD_FRACTION * heap) (off-heap: netty buffers, JVM internals).

CG strategy (``spark_jobs/als_cg.py``): the blocks and factors live in the Python workers
while they are solved, so on a cluster each executor also gets a Python memory limit
(``spark.executor.pyspark.memory``, split between its cores)::

      python    = c * (PYTHON_BASE + block * 2 + vectors * 2)

(the block: CSR arrays of 16 bytes per rating; vectors, for each side: all of them when that
side is broadcast (a worker holds the other side's as ``Y`` and its own as the warm start),
the block's share when joined; each held twice, received and unpickled).

Stages other than ALS (``shuffle_partitions``, ``stage_memory_mb``): Spark's default of 200
shuffle partitions is tuned for nobody. Too many on a small day cost more in task scheduling
than the work itself (GX validation of 3k rows took 50 s with 200, 20 s with 4); too few on a
large day spill. Aim at ~128 MiB of shuffle input per partition, never fewer than two tasks per
core. Memory (local mode, where the driver JVM is the executor) follows the partitions, not
the day: each of the ``c`` running tasks buffers its partition (at most 128 MiB) about twice,
plus one partition per core of cached rows; caches and shuffles beyond that spill to local
disk. Heap = 300 MiB reserved + ``c * 3 * partition`` over the memory fraction with the same
1.5x headroom as the ALS model (2304 MiB on 2 cores); ingest adds twice its largest landing file
per core (a task holds a file whole); at least 1 GiB (spark-submit's default), at most what one
executor may use. Sized to hold the whole day (twice the input), a 10M-play day's ingest took
7 GiB and would have grown with every bigger day.

Blocks start at one per core (Spark's default) and double until a task fits; when even the
largest block count leaves a task or the cached share over what one executor may have,
``size_als`` refuses with a message that says what does not fit.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace

from music_recs.failures import DataTooLargeError, InvalidInput

MIB = 1024 * 1024
RATING_BYTES = 12  # int destination index + float rating + amortized per-source pointers
JVM_RESERVED = 300 * MIB  # Spark's reserved memory
MEMORY_FRACTION = 0.6  # spark.memory.fraction: execution + storage share of (heap - reserved)
SAFETY = 1.5  # JVM object headers, GC headroom, skew between blocks
OVERHEAD_FRACTION = 0.10
MIN_OVERHEAD = 384 * MIB
MAX_BLOCKS = 4096
MAX_CORES_PER_EXECUTOR = 5  # beyond ~5 concurrent tasks per JVM, GC and I/O contention dominate
# CG strategy: a side's factors are broadcast when they take at most this much (float32),
# else joined to the blocks that need them. The driver holds the collected copy and every
# executor one deserialized copy per concurrent task, so keep it well under both heaps.
DEFAULT_BROADCAST_BUDGET_MB = 256
PYTHON_BASE = 768 * MIB  # a Python worker's address space with numpy, numba, pyarrow loaded (~570 MiB)
CSR_BYTES_PER_RATING = 16  # int32 index + int32 local index + float32 confidence + float32 of slack
# Evaluation (``size_evaluate``): what of its caches an executor's heap is sized to hold (the rest
# spills), and what one row of each takes in Spark's columnar cache.
EVALUATE_CACHE_IN_MEMORY = 1536 * MIB
RECOMMENDATION_BYTES = 32  # one (user, item, score, rank) row, ~26 measured
PAIR_BYTES = 10  # one (user_idx, item_idx) training pair
PAIRED_SCORE_BYTES = 72  # one evaluated user's id and 4 metrics x (model, baseline) as float64, on the driver
# Scores one scoring worker holds at a time (``spark_jobs.lib.top_n``): chunk rows x targets float32.
CHUNK_BYTES = 64 * MIB
_MEMORY_UNITS_MB = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}


def memory_string_mb(value) -> float | None:
    """A Spark memory setting (``2304m``, ``4g``, ``512k``; no unit: MiB, as Spark reads
    ``spark.*.memory``) in MiB; None when ``value`` is not one."""
    match = re.fullmatch(r"(\d+)([kmgt]?)b?", str(value or "").strip().lower())
    return int(match[1]) * _MEMORY_UNITS_MB[match[2]] if match else None


@dataclass(frozen=True)
class MatrixShape:
    """A confidence matrix as sizing sees it: users, items, non-zeros and the factors' rank."""

    users: int
    items: int
    nnz: int
    rank: int


@dataclass(frozen=True)
class ClusterResources:
    """What the cluster offers (from configuration). ``local=True``: one JVM (``local[*]``)."""

    nodes: int = 1
    cores_per_node: int = 2
    memory_per_node_mb: int = 8192
    max_executors: int = 0  # 0 = as many as fit
    local: bool = True

    @property
    def total_cores(self) -> int:
        return self.nodes * self.cores_per_node

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExecutorSizing:
    """Spark settings for one job: executor memory, overhead and cores, executors, ALS blocks, shuffle
    partitions, driver memory, checkpoint interval, Python memory (0 = unlimited), and the estimate
    they came from."""

    executor_memory_mb: int
    executor_memory_overhead_mb: int
    executor_cores: int
    num_executors: int
    user_blocks: int
    item_blocks: int
    shuffle_partitions: int
    driver_memory_mb: int
    checkpoint_interval: int = 5
    python_memory_mb: int = 0  # spark.executor.pyspark.memory; 0 = not limited (local mode, MLlib)
    estimate: dict = field(default_factory=dict, compare=False)

    def spark_conf(self) -> dict[str, str]:
        conf = {
            "spark.executor.memoryOverhead": f"{self.executor_memory_overhead_mb}m",
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
        }
        if self.python_memory_mb:
            conf["spark.executor.pyspark.memory"] = f"{self.python_memory_mb}m"
        return conf

    def as_dict(self) -> dict:
        return asdict(self)

    def scaled(self, **changes) -> ExecutorSizing:
        return replace(self, **changes)


def factor_exchange(users: int, items: int, rank: int, budget_mb: int = DEFAULT_BROADCAST_BUDGET_MB) -> dict:
    """How each side's factors reach the other side's blocks in the CG strategy: ``broadcast``
    (the seeds' first strategy: every block gets the whole side) when the side fits
    ``budget_mb``, else ``join`` (each block receives only the vectors its ratings reference)."""
    def how(rows: int) -> str:
        return "broadcast" if rows * rank * 4 <= budget_mb * MIB else "join"

    return {"user": how(users), "item": how(items)}


def per_executor_limit_mb(cluster: ClusterResources) -> int:
    """What one executor may use: 3/4 of the machine in local mode (the rest: OS, Python workers);
    on a cluster, a node's memory less 1 GiB for the OS, split between its executors."""
    if cluster.local:
        return int(cluster.memory_per_node_mb * 0.75)
    per_node = max(1, cluster.cores_per_node // min(MAX_CORES_PER_EXECUTOR, cluster.cores_per_node))
    return int((cluster.memory_per_node_mb - 1024) / per_node)


def executor_layout(cluster: ClusterResources) -> tuple[int, int]:
    """(executors, cores each): one JVM with every core in local mode; on a cluster at most
    ``MAX_CORES_PER_EXECUTOR`` cores each, as many as the nodes hold (``max_executors`` at most)."""
    if cluster.local:
        return 1, cluster.cores_per_node
    cores = min(MAX_CORES_PER_EXECUTOR, cluster.cores_per_node)
    executors = cluster.nodes * max(1, cluster.cores_per_node // cores)
    return (min(executors, cluster.max_executors) if cluster.max_executors else executors), cores


def _round_up(nbytes: float, step: int = 256 * MIB) -> int:
    return int(math.ceil(nbytes / step) * step)


def estimate(shape: MatrixShape, blocks: int, executors: int, cores: int) -> dict:
    """The memory model of the module docstring, in bytes, for ``blocks`` blocks per side on
    ``executors`` executors of ``cores`` cores each."""
    vec = 4 * shape.rank + 16
    ratings = shape.nnz * RATING_BYTES * 2
    factors = (shape.users + shape.items) * vec * 2
    storage = (ratings + factors) / executors
    block = shape.nnz / blocks * RATING_BYTES
    received = min(shape.items, shape.nnz / blocks) * vec
    scratch = 2 * shape.rank * shape.rank * 8
    task = block + received + scratch
    heap = JVM_RESERVED + (storage + cores * task) / MEMORY_FRACTION * SAFETY
    return {"ratings_bytes": int(ratings), "factors_bytes": int(factors), "storage_per_executor_bytes": int(storage),
            "task_bytes": int(task), "received_vectors_bytes": int(received), "scratch_bytes": int(scratch),
            "heap_bytes": int(heap)}


def python_memory_mb(shape: MatrixShape, blocks: int, cores: int, exchange: dict) -> int:
    """The CG strategy's Python memory per executor (see the module docstring)."""
    vec = 4 * shape.rank
    block = shape.nnz / blocks * CSR_BYTES_PER_RATING
    vectors = sum(rows * vec if exchange[side] == "broadcast" else min(rows, shape.nnz / blocks) * vec
                  for side, rows in (("user", shape.users), ("item", shape.items)))
    return _round_up(cores * (PYTHON_BASE + 2 * block + 2 * vectors)) // MIB


# A cluster's driver (client mode, where spark-submit runs): its heap, at least this.
CLUSTER_DRIVER_HEAP = 2048 * MIB


def size_als(shape: MatrixShape, cluster: ClusterResources, checkpoint_interval: int = 5,
             strategy: str = "mllib", broadcast_budget_mb: int = DEFAULT_BROADCAST_BUDGET_MB,
             stage: str = "train_als") -> ExecutorSizing:
    """Choose executors, memory and block counts for training ``shape`` on ``cluster``.

    ``DataTooLargeError`` (before anything is submitted) when even the most blocks leave an
    executor more to hold than it may use; its one line names ``stage``, the estimate and the limit."""
    if min(shape.users, shape.items, shape.nnz, shape.rank) <= 0:
        raise InvalidInput(f"matrix shape must be positive, got {shape}")
    # Local mode: one JVM, 3/4 of the machine (the rest: OS, Python workers). A cluster: at most
    # MAX_CORES_PER_EXECUTOR cores each, 1 GiB of each node left to the OS.
    per_executor_limit = per_executor_limit_mb(cluster) * MIB
    executors, cores = executor_layout(cluster)
    blocks = max(1, executors * cores)
    while True:
        est = estimate(shape, blocks, executors, cores)
        heap = max(_round_up(est["heap_bytes"]), 1024 * MIB)
        overhead = max(MIN_OVERHEAD, _round_up(heap * OVERHEAD_FRACTION, 64 * MIB))
        if heap + overhead <= per_executor_limit:
            break
        if blocks >= MAX_BLOCKS or blocks >= min(shape.users, shape.items):
            raise DataTooLargeError(
                f"{stage}: {shape.users} users x {shape.items} items, {shape.nnz} ratings at rank {shape.rank} need about "
                f"{(heap + overhead) / MIB:.0f} MiB per executor even with {blocks} blocks "
                f"(cached share {est['storage_per_executor_bytes'] / MIB:.0f} MiB, per task "
                f"{est['task_bytes'] / MIB:.0f} MiB x {cores} cores), over the {per_executor_limit / MIB:.0f} MiB "
                f"an executor may use on this cluster; add nodes or memory, or lower the rank"
            )
        blocks *= 2
    est.update({"blocks_tried": blocks, "per_executor_limit_bytes": per_executor_limit})
    total_cores = executors * cores
    if cluster.local:
        driver = heap + overhead
    else:
        driver = CLUSTER_DRIVER_HEAP
    return ExecutorSizing(
        executor_memory_mb=heap // MIB,
        executor_memory_overhead_mb=overhead // MIB,
        executor_cores=cores,
        num_executors=executors,
        user_blocks=blocks,
        item_blocks=blocks,
        shuffle_partitions=max(2 * total_cores, blocks),
        driver_memory_mb=driver // MIB,
        checkpoint_interval=checkpoint_interval,
        python_memory_mb=0 if cluster.local or strategy != "cg" else python_memory_mb(
            shape, blocks, cores, factor_exchange(shape.users, shape.items, shape.rank, broadcast_budget_mb)),
        estimate=est,
    )


def size_evaluate(shape: MatrixShape, cluster: ClusterResources, top_n: int = 50,
                  broadcast_budget_mb: int = DEFAULT_BROADCAST_BUDGET_MB) -> ExecutorSizing:
    """Settings for the evaluation job on the same matrix and rank, from what it holds (it trains
    nothing: training's ALS blocks and shuffles are not there).

    JVM, per executor: its share of the caches, the training pairs (``PAIR_BYTES`` each) and the
    recommendations (``users x top_n`` rows held twice, cached and sorted per user for the metrics
    and the write, ``RECOMMENDATION_BYTES`` each), at most ``EVALUATE_CACHE_IN_MEMORY`` of them (the
    caches are memory-and-disk: the rest spills to local disk instead of growing the heap with the
    users), plus each running task's partitions (``TASK_BUFFERS + 1`` of at most ``TARGET_PARTITION_BYTES``),
    over the memory fraction with the same 1.5x headroom; shuffle partitions as a row stage's, from
    the caches' size. The driver holds what it collects, outside
    Spark's memory fraction: every evaluated user's paired scores for the bootstrap
    (``PAIRED_SCORE_BYTES``) and the item factors it broadcasts, which cannot spill; in local mode
    it is the executor, and its heap is the larger of the two needs.

    Python workers (on a cluster, limited per executor): each holds the broadcast item factors
    twice (received and unpickled) and one chunk of scores (``CHUNK_BYTES``).

    ``DataTooLargeError`` (before anything is submitted) when the executor or the driver would need
    more than one executor may use; its one line starts with ``evaluate: `` and gives both numbers.
    """
    if min(shape.users, shape.items, shape.nnz, shape.rank) <= 0:
        raise InvalidInput(f"matrix shape must be positive, got {shape}")
    executors, cores = executor_layout(cluster)
    limit = per_executor_limit_mb(cluster) * MIB
    cached = (shape.nnz * PAIR_BYTES + 2 * shape.users * top_n * RECOMMENDATION_BYTES) / executors
    held = min(cached, EVALUATE_CACHE_IN_MEMORY)
    task = (TASK_BUFFERS + 1) * min(cached * executors, TARGET_PARTITION_BYTES)
    spark_memory = (held + cores * task) / MEMORY_FRACTION
    collected = shape.users * PAIRED_SCORE_BYTES + 2 * shape.items * shape.rank * 4
    user_memory = collected / (1 - MEMORY_FRACTION)
    heap = max(_round_up(JVM_RESERVED + (max(spark_memory, user_memory) if cluster.local else spark_memory) * SAFETY),
               1024 * MIB)
    overhead = max(MIN_OVERHEAD, _round_up(heap * OVERHEAD_FRACTION, 64 * MIB))
    # Local mode: the driver is the executor, the whole JVM. A cluster: the driver runs in client
    # mode where spark-submit runs, so its setting is its heap (as training's) with no executor
    # overhead; it must still fit in what one node gives.
    driver = (heap + overhead if cluster.local
              else max(_round_up(JVM_RESERVED + user_memory * SAFETY), CLUSTER_DRIVER_HEAP))
    if max(heap + overhead, driver) > limit:
        raise DataTooLargeError(
            f"evaluate: {shape.users} users x {shape.items} items at rank {shape.rank} need about "
            f"{(heap + overhead) / MIB:.0f} MiB per executor (cached share held {held / MIB:.0f} MiB, per task "
            f"{task / MIB:.0f} MiB x {cores} cores) and {driver / MIB:.0f} MiB for the driver (every evaluated "
            f"user's paired scores and the item factors: {collected / MIB:.0f} MiB), over the {limit / MIB:.0f} MiB "
            f"an executor may use on this cluster; add memory, or evaluate on fewer users")
    python = 0
    if not cluster.local and factor_exchange(shape.users, shape.items, shape.rank, broadcast_budget_mb)["item"] == "broadcast":
        python = _round_up(cores * (PYTHON_BASE + 2 * shape.items * shape.rank * 4 + CHUNK_BYTES)) // MIB
    return ExecutorSizing(
        executor_memory_mb=heap // MIB, executor_memory_overhead_mb=overhead // MIB, executor_cores=cores,
        num_executors=executors, user_blocks=1, item_blocks=1,
        shuffle_partitions=shuffle_partitions(int(cached * executors), cluster),
        driver_memory_mb=driver // MIB, python_memory_mb=python,
        estimate={"cached_bytes": int(cached), "cached_in_memory_bytes": int(held), "task_bytes": int(task),
                  "driver_collected_bytes": int(collected), "heap_bytes": int(heap),
                  "per_executor_limit_bytes": int(limit)})


TARGET_PARTITION_BYTES = 128 * MIB
# A running task of a row stage holds its partition in sort or aggregation buffers about twice
# (rows and their serialized copy); with one more partition per core of cached rows, the rest of
# a cache or a shuffle spills to local disk.
TASK_BUFFERS = 2


def shuffle_partitions(input_bytes: int, cluster: ClusterResources) -> int:
    """Shuffle partitions for a stage whose rows take ``input_bytes`` in memory on ``cluster``."""
    by_size = -(-max(input_bytes, 0) // TARGET_PARTITION_BYTES)
    return int(min(max(by_size, 2 * cluster.total_cores), 20_000))


# What Spark's adaptive execution may merge shuffle partitions up to, in shuffle bytes (serialized
# and compressed: rows take 3-5x that in a task's aggregation or sort buffers). Its default
# (parallelism first) merges a large aggregation into as few tasks as there are cores, whatever
# ``shuffle_partitions`` chose: on a 90-day window that left 3 reducers of 4M pairs each, spilling
# gigabytes. Merging is kept for small stages, bounded by this size.
SHUFFLE_PARTITION_BYTES = 32 * MIB


def row_stage_conf(input_bytes: int, cluster: ClusterResources) -> dict[str, str]:
    """Spark settings of a row stage (not ALS) whose rows take ``input_bytes`` in memory: its shuffle
    partitions, and adaptive merging that keeps them about ``SHUFFLE_PARTITION_BYTES`` each."""
    return {"spark.sql.shuffle.partitions": str(shuffle_partitions(input_bytes, cluster)),
            "spark.sql.adaptive.coalescePartitions.parallelismFirst": "false",
            "spark.sql.adaptive.advisoryPartitionSizeInBytes": str(SHUFFLE_PARTITION_BYTES)}


def stage_memory_mb(input_bytes: int, limit_mb: int, cores: int, whole_file_bytes: int = 0) -> int:
    """Heap for a stage whose rows take ``input_bytes`` in memory, run ``cores`` tasks at a time
    (see the module docstring): what its running partitions need, never the whole day.

    whole_file_bytes: the largest file a task holds whole (ingest reads each landing file as one
    binary row and hands it to its Python worker: held twice), default none."""
    partition = min(max(input_bytes, 0), TARGET_PARTITION_BYTES)
    per_task = (TASK_BUFFERS + 1) * partition + 2 * max(whole_file_bytes, 0)
    need = JVM_RESERVED + cores * per_task / MEMORY_FRACTION * SAFETY
    step = 256 * MIB
    return int(min(max(-(-need // step) * step, 1024 * MIB), limit_mb * MIB) // MIB)
