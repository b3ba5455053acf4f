import pytest

from music_recs.sizing import ClusterResources, DataTooLargeError, MatrixShape, estimate, size_als, size_evaluate
from music_recs.sizing import stage_memory_mb

CLUSTER = ClusterResources(nodes=10, cores_per_node=16, memory_per_node_mb=64_000, local=False)


def need(sizing):
    return sizing.executor_memory_mb + sizing.executor_memory_overhead_mb


def test_memory_grows_with_data_and_rank():
    small = size_als(MatrixShape(100_000, 20_000, 5_000_000, 32), CLUSTER)
    more_data = size_als(MatrixShape(1_000_000, 200_000, 200_000_000, 32), CLUSTER)
    more_rank = size_als(MatrixShape(1_000_000, 200_000, 200_000_000, 128), CLUSTER)
    assert need(small) <= need(more_data) <= need(more_rank)
    for shape in [(1_000_000, 200_000, 200_000_000, r) for r in (16, 32, 64, 128)]:
        e1 = estimate(MatrixShape(*shape), 64, 20, 5)
        e2 = estimate(MatrixShape(*shape[:2], shape[2] * 2, shape[3]), 64, 20, 5)
        assert e2["heap_bytes"] > e1["heap_bytes"]
    assert estimate(MatrixShape(10**6, 10**5, 10**8, 64), 64, 20, 5)["heap_bytes"] > \
        estimate(MatrixShape(10**6, 10**5, 10**8, 32), 64, 20, 5)["heap_bytes"]


def test_settings_respect_the_cluster():
    s = size_als(MatrixShape(4_000_000, 500_000, 600_000_000, 40), CLUSTER)
    assert s.executor_cores <= 5 and s.num_executors <= 10 * (16 // s.executor_cores)
    per_node = 16 // s.executor_cores
    assert need(s) * per_node <= 64_000 - 1024
    assert s.user_blocks >= s.num_executors * s.executor_cores
    assert s.shuffle_partitions >= 2 * s.num_executors * s.executor_cores
    capped = size_als(MatrixShape(4_000_000, 500_000, 600_000_000, 40),
                      ClusterResources(nodes=10, cores_per_node=16, memory_per_node_mb=64_000, max_executors=7, local=False))
    assert capped.num_executors == 7


def test_blocks_grow_when_the_vectors_a_block_receives_would_not_fit():
    # 5M items at rank 128: with one block per core, each block would receive every item vector.
    cluster = ClusterResources(nodes=8, cores_per_node=4, memory_per_node_mb=16_000, local=False)
    s = size_als(MatrixShape(1_000_000, 5_000_000, 200_000_000, 128), cluster)
    assert s.user_blocks > 32  # more than one block per core was needed
    assert need(s) <= 16_000 - 1024


def test_local_mode_sizes_the_driver():
    s = size_als(MatrixShape(960, 1111, 5897, 32), ClusterResources(nodes=1, cores_per_node=2, memory_per_node_mb=24_000))
    assert s.num_executors == 1 and s.executor_cores == 2 and s.user_blocks == 2
    assert 1024 <= s.driver_memory_mb <= 0.75 * 24_000


def test_data_that_cannot_fit_is_refused_with_a_clear_message():
    with pytest.raises(DataTooLargeError) as err:
        size_als(MatrixShape(4_000_000, 500_000, 600_000_000, 40),
                 ClusterResources(nodes=1, cores_per_node=2, memory_per_node_mb=4_000, local=False))
    assert "600000000 ratings at rank 40" in str(err.value) and "add nodes or memory" in str(err.value)
    with pytest.raises(ValueError):
        size_als(MatrixShape(0, 1, 1, 8), CLUSTER)


def test_the_cg_strategy_gets_a_python_memory_limit_on_a_cluster_only():
    cluster = ClusterResources(nodes=2, cores_per_node=4, memory_per_node_mb=16384, local=False)
    small, wide = MatrixShape(10_000, 20_000, 500_000, 64), MatrixShape(10_000, 2_000_000, 5_000_000, 64)
    assert size_als(small, cluster).python_memory_mb == 0  # MLlib: the JVM does the work
    assert size_als(small, ClusterResources(local=True), strategy="cg").python_memory_mb == 0
    s_small, s_wide = size_als(small, cluster, strategy="cg"), size_als(wide, cluster, strategy="cg")
    assert s_small.python_memory_mb >= 768 * s_small.executor_cores
    assert s_wide.python_memory_mb > s_small.python_memory_mb  # a broadcast catalogue of 2M items
    assert s_small.spark_conf()["spark.executor.pyspark.memory"] == f"{s_small.python_memory_mb}m"
    assert "spark.executor.pyspark.memory" not in size_als(small, cluster).spark_conf()


def test_evaluate_is_sized_by_what_it_holds_not_by_trainings_blocks():
    shape = MatrixShape(users=4_000_000, items=500_000, nnz=400_000_000, rank=40)
    local = ClusterResources(nodes=1, cores_per_node=8, memory_per_node_mb=262144, local=True)
    # caches: 400M pairs x 10 B + 4M users x 50 recommendations x 32 B twice, held up to 1536 MiB
    # (the rest spills); 8 running tasks x 3 partitions of 128 MiB; over the 0.6 fraction, x1.5,
    # + 300 MiB reserved = 11820 MiB -> 12032
    sized = size_evaluate(shape, local)
    assert sized.estimate["cached_in_memory_bytes"] == 1536 * 2**20
    assert sized.executor_memory_mb == 12032 and sized.shuffle_partitions > 16  # partitions from the caches' size
    assert sized.driver_memory_mb == sized.executor_memory_mb + sized.executor_memory_overhead_mb
    assert sized.python_memory_mb == 0  # local mode does not limit Python workers
    # far less than training's MLlib sizing of the same matrix, which evaluation used to get
    assert sized.executor_memory_mb < size_als(shape, local).executor_memory_mb / 2
    # the 90-day window of issue #30 on this machine: 6 GiB, not 10.7
    window = MatrixShape(users=967_460, items=192_795, nnz=39_905_318, rank=64)
    machine = ClusterResources(nodes=1, cores_per_node=2, memory_per_node_mb=24576, local=True)
    assert size_evaluate(window, machine).executor_memory_mb == 6144
    # below the bound the caches count in full: a small matrix gets the 1 GiB floor
    small = MatrixShape(users=1000, items=500, nnz=20_000, rank=8)
    assert size_evaluate(small, ClusterResources(cores_per_node=1)).executor_memory_mb == 1024
    cluster = ClusterResources(nodes=10, cores_per_node=16, memory_per_node_mb=65536, local=False)
    sizing = size_evaluate(shape, cluster)
    assert (sizing.num_executors, sizing.executor_cores) == (30, 5)
    # 5 tasks x 384 MiB + the executor's 1/30 of the caches (534 MiB), / 0.6 x 1.5 + 300 -> 6656
    assert sizing.executor_memory_mb == 6656
    # the driver collects 4M users' paired scores (72 B) and the item factors twice (448 MB):
    # / 0.4 x 1.5 + 300 = 1980 MiB -> its 2048 MiB floor (a client-mode driver's heap, as training's)
    assert sizing.driver_memory_mb == 2048 == size_als(shape, cluster).driver_memory_mb
    # 5 cores x (768 MiB base + 2 copies of 500k x 40 floats (153 MiB) + a 64 MiB chunk) = 4.9 GiB
    assert sizing.python_memory_mb == 5120
    # item factors over the budget: MLlib's blocked top-k, no Python memory
    assert size_evaluate(shape, cluster, broadcast_budget_mb=50).python_memory_mb == 0
    # the standalone cluster of the suite (2 nodes of 1 core, 3 GiB): the driver's floor fits a node
    tiny = size_evaluate(MatrixShape(users=311, items=399, nnz=3000, rank=32),
                         ClusterResources(nodes=2, cores_per_node=1, memory_per_node_mb=3072, local=False))
    assert (tiny.executor_memory_mb, tiny.driver_memory_mb) == (1024, 2048)
    # 100M evaluated users: their paired scores (6.7 GiB) need a 26 GiB driver, more than a node gives
    many = MatrixShape(users=100_000_000, items=500_000, nnz=400_000_000, rank=40)
    with pytest.raises(DataTooLargeError, match=r"^evaluate: .* and 26624 MiB for the driver .* over the 21504 MiB"):
        size_evaluate(many, cluster)


def test_other_stages_get_heap_for_their_running_partitions_not_the_day():
    assert stage_memory_mb(0, 18_000, cores=2) == 1024  # spark-submit's default is the floor
    # 40 MiB in memory: 300 + 2 cores x 3 x 40 / 0.6 x 1.5 = 900 -> the 1 GiB floor
    assert stage_memory_mb(40 * 2**20, 18_000, cores=2) == 1024
    # 416 MiB in memory (a 1.2M-play day): partitions of 128 MiB: 300 + 2 x 3 x 128 / 0.6 x 1.5 = 2220 -> 2304
    assert stage_memory_mb(416 * 2**20, 18_000, cores=2) == 2304
    # ... and the same for a day 250 times bigger: it spills, the heap does not grow with it
    assert stage_memory_mb(100 * 2**30, 18_000, cores=2) == 2304
    assert stage_memory_mb(100 * 2**30, 18_000, cores=16) == 15_872
    assert stage_memory_mb(100 * 2**30, 2048, cores=16) == 2048  # never over one executor's limit
    # ingest holds a landing file whole per task: a 1 GiB .gz adds 2 cores x 2 GiB / 0.6 x 1.5 = 10 GiB
    assert stage_memory_mb(100 * 2**30, 18_000, cores=2, whole_file_bytes=2**30) == 2304 + 10_240


def test_a_stage_too_large_for_the_machine_is_refused_before_it_starts_naming_the_stage():
    huge = MatrixShape(users=10**9, items=10**8, nnz=10**11, rank=64)
    machine = ClusterResources(nodes=1, cores_per_node=2, memory_per_node_mb=24576, local=True)
    for size, stage in ((size_als, "train_als"), (size_evaluate, "evaluate")):
        with pytest.raises(DataTooLargeError) as refused:
            size(huge, machine)
        line = str(refused.value)
        assert line.startswith(f"{stage}: ") and "\n" not in line
        assert "MiB per executor" in line and "over the 18432 MiB an executor may use" in line
