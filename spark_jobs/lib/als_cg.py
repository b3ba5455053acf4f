"""Implicit ALS on Spark with conjugate-gradient solves on cached rating blocks.

The second training strategy of ``train_als`` (``--strategy cg``); MLlib's ALS stays the
reference. Same objective as MLlib's implicit ALS (confidence ``1 + alpha * r``, lambda scaled
by each row's number of ratings), solved per row with a few CG steps warm-started from the
previous factors (``spark_jobs.lib.cg_kernels``), vectorized over a whole block in numba.

Layout ("half gridify", the layout of MLlib's ALS): the ratings are grouped once into user
blocks and item blocks (row ``r`` belongs to block ``r % blocks``), each a CSR array cached
for the whole fit; they never move again. Only factor vectors travel, one of two ways per
half-iteration:

* **broadcast**: the other side's factors are collected and broadcast whole (cheap when
  they fit the budget, e.g. a catalogue of a few million items);
* **join**: each block receives only the vectors its ratings reference, sent from the
  other side's blocks through a shuffle (routing tables computed once), so the job still
  runs when neither side fits one executor.

Every RDD holds exactly one element per partition (block ``b`` in partition ``b``) under the
same partitioner, so the blocks, their factors and the received vectors are read together by a
partitioner-aware ``union``, without a shuffle.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark import AccumulatorParam, StorageLevel
from pyspark.sql import DataFrame, SparkSession

from music_recs import schema as S
from music_recs.convergence import converged
from spark_jobs.lib.cg_kernels import DEFAULT_CG_STEPS, gram, rows_loss, rows_reg, solve_rows, start_factors

BROADCAST, JOIN = "broadcast", "join"
PAYLOAD_SCHEMA = "blk int, payload binary"


@dataclass
class RatingBlock:
    """One block of rows in CSR form. ``indices`` are the other side's global ids; ``local``
    are the same entries as positions in ``needed`` (the sorted distinct ids the block uses)."""

    rows: np.ndarray  # int64 global ids of the rows, sorted
    indptr: np.ndarray  # int64, len(rows) + 1
    indices: np.ndarray  # int32 global ids of the other side
    conf: np.ndarray  # float32 confidence 1 + alpha * r
    needed: np.ndarray  # int64 sorted distinct ids of the other side
    local: np.ndarray  # int32 positions of indices in needed


def build_block(pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]], alpha: float | None) -> RatingBlock:
    """A block from its pieces; ``conf`` is ``1 + alpha * value`` (alpha None: the values as given,
    for blocks prepared once and given their confidence per fit, see ``prepare_blocks``)."""
    if pieces:
        keys, others, strength = (np.concatenate(col) for col in zip(*pieces))
    else:
        keys, others, strength = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    keys, others = keys.astype(np.int64, copy=False), others.astype(np.int64, copy=False)
    # One sort of a combined key (ids are below 2^31, the product fits int64) instead of a
    # two-key lexsort, and the rest by linear passes over the sorted or dense ids: a 20M-entry
    # block of a 90-day window took 16 s with lexsort and three more sorts (unique, unique,
    # searchsorted), most of training's set-up.
    span = int(others.max()) + 1 if len(others) else 1
    order = np.argsort(keys * span + others)
    keys, others, strength = keys[order], others[order], strength[order]
    indptr = (np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1, [len(keys)]]) if len(keys)
              else np.zeros(1)).astype(np.int64)
    present = np.zeros(span, bool)
    present[others] = True
    needed = np.flatnonzero(present)
    position = np.cumsum(present, dtype=np.int64) - 1
    return RatingBlock(keys[indptr[:-1]], indptr, others.astype(np.int32),
                       (strength if alpha is None else 1.0 + alpha * strength).astype(np.float32),
                       needed.astype(np.int64), position[others].astype(np.int32))


def _split_by_block(key_col: str, other_col: str, blocks: int):
    """mapInArrow function: one partition's ratings -> one pickled piece per block."""

    def split(batches):
        cols = {key_col: [], other_col: [], "strength": []}
        for batch in batches:
            for name in cols:
                cols[name].append(batch.column(name).to_numpy(zero_copy_only=False))
        if not cols[key_col]:
            return
        keys, others, strength = (np.concatenate(cols[n]) for n in (key_col, other_col, "strength"))
        blk = keys % blocks
        for b in np.unique(blk):
            m = blk == b
            # ids as read (int32: 12 bytes a rating through the shuffle, not 20)
            payload = pickle.dumps((keys[m], others[m], strength[m].astype(np.float32)), protocol=5)
            yield pa.RecordBatch.from_arrays([pa.array([int(b)], pa.int32()), pa.array([payload], pa.binary())],
                                             names=["blk", "payload"])

    return split


def block_partition(block: int) -> int:
    """Block b lives in partition b. One module-level function: Spark treats two Python
    partitioners as equal only if they are the same function, and equal partitioners let
    ``union`` line partitions up without a shuffle."""
    return block


def _one_per_partition(rdd, blocks: int, merge):
    """Route ``(block, value)`` pairs so block b lands in partition b, then ``merge`` each
    partition's values into its single element ``(b, merged)``."""
    return (rdd.partitionBy(blocks, block_partition)
            .mapPartitionsWithIndex(lambda b, it: [(b, merge([v for _, v in it]))], preservesPartitioning=True))


def _co_partitioned(sc, rdds, func):
    """``func(block, values)`` over RDDs that share the block partitioner: partition b of each
    is read where it lives (cached), no shuffle. (``RDD.zip`` would re-serialize both sides
    through extra Python workers.)"""
    def run(b, it):
        return [(b, func(b, [v for _, v in it]))]

    return sc.union(rdds).mapPartitionsWithIndex(run, preservesPartitioning=True)


def _parts(values):
    """Sort a partition's values by kind: the rating block, its factors, received vectors."""
    blk = next((v for v in values if isinstance(v, RatingBlock)), None)
    factors = next((v[1] for v in values if isinstance(v, tuple) and v[0] in ("factors", "known")), None)
    received = next((v[1] for v in values if isinstance(v, tuple) and v[0] == "vectors"), None)
    routes = next((v[1] for v in values if isinstance(v, tuple) and v[0] == "routes"), None)
    return blk, factors, received, routes


def rating_blocks(ratings: DataFrame, key_col: str, other_col: str, blocks: int, alpha: float | None):
    pieces = (ratings.mapInArrow(_split_by_block(key_col, other_col, blocks), PAYLOAD_SCHEMA)
              .rdd.map(lambda r: (r.blk, pickle.loads(r.payload))))
    return _one_per_partition(pieces, blocks, lambda ps: build_block(ps, alpha))


def _split_factors_by_block(blocks: int, rank: int):
    """mapInArrow function: one partition's ``(id, features)`` rows -> one pickled piece per block."""

    def split(batches):
        for batch in batches:
            ids = batch.column("id").to_numpy(zero_copy_only=False).astype(np.int64)
            X = batch.column(S.FEATURES).flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            X = X.reshape(len(ids), rank)
            blk = ids % blocks
            for b in np.unique(blk):
                m = blk == b
                yield pa.RecordBatch.from_arrays(
                    [pa.array([int(b)], pa.int32()), pa.array([pickle.dumps((ids[m], X[m]), protocol=5)], pa.binary())],
                    names=["blk", "payload"])

    return split


def known_factors(known: DataFrame, blocks: int, rank: int):
    """An earlier model's ``(id, features)`` rows, grouped like the rating blocks: block b's
    ``("known", (ids, X))`` in partition b, read beside it without a shuffle of the ratings."""

    def merge(parts):
        if not parts:
            return "known", (np.empty(0, np.int64), np.empty((0, rank), np.float32))
        return "known", (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    pieces = (known.select("id", S.FEATURES).mapInArrow(_split_factors_by_block(blocks, rank), PAYLOAD_SCHEMA)
              .rdd.map(lambda r: (r.blk, pickle.loads(r.payload))))
    return _one_per_partition(pieces, blocks, merge)


def routing_table(sc, solve_blocks, other_blocks, n_other: int):
    """For each block of the other side: which of its rows each solving block needs, as
    ``("routes", [(solving block, positions in the other block's rows)])``."""

    def requests(kv):
        b, blk = kv
        owner = blk.needed % n_other
        return [(int(o), (b, blk.needed[owner == o])) for o in np.unique(owner)]

    wanted = _one_per_partition(solve_blocks.flatMap(requests), n_other, lambda reqs: ("wanted", reqs))

    def positions(o, values):
        blk = next(v for v in values if isinstance(v, RatingBlock))
        reqs = next(v[1] for v in values if isinstance(v, tuple) and v[0] == "wanted")
        return "routes", [(b, np.searchsorted(blk.rows, ids).astype(np.int64)) for b, ids in reqs]

    return _co_partitioned(sc, [wanted, other_blocks], positions)


def received_vectors(sc, other_factors, table, n_solve: int):
    """Join path: each solving block gets the other side's vectors it needs, ordered as its
    ``needed`` ids (each piece is sorted; pieces from different blocks interleave)."""

    def send(o, values):
        _, (ids, Y), _, routes = _parts(values)
        return [(b, (ids[pos], Y[pos])) for b, pos in routes]

    def merge(parts):
        if not parts:
            return "vectors", np.empty((0, 0), np.float32)
        ids = np.concatenate([p[0] for p in parts])
        vecs = np.concatenate([p[1] for p in parts])
        return "vectors", vecs[np.argsort(ids, kind="stable")]

    pieces = _co_partitioned(sc, [other_factors, table], send).flatMap(lambda kv: kv[1])
    return _one_per_partition(pieces, n_solve, merge)


class _PerBlock(AccumulatorParam):
    """Each block's share (its k x k Gram matrix, its part of the loss), keyed by block: the
    driver sums them in block order, so Y^T Y and the loss do not depend on the order tasks
    finish in (a float sum in another order rounds differently, float32 CG makes that visible,
    and the loss decides when a warm start stops), and a recomputed task replaces its block's
    share instead of adding it twice."""

    def zero(self, value):
        return {}

    def addInPlace(self, a, b):
        a.update(b)
        return a


def _sum_in_block_order(shares: dict):
    return functools.reduce(np.add, [shares[b] for b in sorted(shares)], 0.0)


def _gather_all(factors, rank: int) -> np.ndarray:
    """Broadcast path: the other side's factors as one array indexed by global id."""
    return _assemble(factors.map(lambda kv: kv[1][1]).collect(), rank)


def _assemble(parts, rank: int) -> np.ndarray:
    size = max((int(ids.max()) + 1 for ids, _ in parts if len(ids)), default=0)
    full = np.zeros((size, rank), np.float32)
    for ids, Y in parts:
        full[ids] = Y
    return full


@dataclass
class PreparedBlocks:
    """Both sides' rating blocks holding the raw values, grouped once (the shuffle) and cached,
    so several fits (tuning's trials) share them and differ only in how values become confidence."""

    user: object  # RDD (block, RatingBlock)
    item: object
    user_blocks: int
    item_blocks: int

    def release(self) -> None:
        self.user.unpersist()
        self.item.unpersist()


def prepare_blocks(ratings: DataFrame, user_blocks: int, item_blocks: int) -> PreparedBlocks:
    """Group ``(user_idx, item_idx, strength)`` into cached blocks, ``strength`` kept as it is."""
    level = StorageLevel.MEMORY_AND_DISK
    user = rating_blocks(ratings, S.USER_IDX, S.ITEM_IDX, user_blocks, None).persist(level)
    item = rating_blocks(ratings, S.ITEM_IDX, S.USER_IDX, item_blocks, None).persist(level)
    user.count(), item.count()
    return PreparedBlocks(user, item, user_blocks, item_blocks)


@dataclass
class CGResult:
    user_factors: object  # RDD (block, (ids, X))
    item_factors: object
    exchange: dict
    loss: list
    seconds_per_iteration: list
    broadcasts: list
    profile: dict
    iterations: int = 0  # run: fewer than asked when a warm start converged (``music_recs.convergence``)

    def release(self) -> None:
        """Destroy the fit's broadcasts, once the factors have been materialized elsewhere."""
        for bc in self.broadcasts:
            bc.destroy()
        self.broadcasts = []


def fit(spark: SparkSession, ratings: DataFrame, rank: int, max_iter: int, reg: float, alpha: float,
        user_blocks: int, item_blocks: int, exchange: dict, checkpoint_interval: int = 5, seed: int = 42,
        cg_steps: int = DEFAULT_CG_STEPS, track_loss: bool = False, log=print, scale_reg: bool = True,
        prepared: PreparedBlocks | None = None, conf_of=None, init: dict | None = None, tol: float = 0.0
        ) -> CGResult:
    """Fit implicit ALS by CG. ``exchange`` says per side how its factors reach the other
    side's blocks: ``{"user": "broadcast"|"join", "item": ...}``.

    Where each side's current factors live: a broadcast side's on the driver (they fit the
    budget and are broadcast anyway; one broadcast serves as the other side's ``Y`` and then as
    this side's own warm start), so its solve is collected straight to the driver, with no
    cached copy and no lineage to checkpoint; a join side's in a cached RDD, checkpointed every
    ``checkpoint_interval`` iterations.

    scale_reg: lambda times the row's number of ratings (MLlib's convention) or plain (``implicit``'s).
    prepared, conf_of: blocks from ``prepare_blocks`` (``ratings``, ``alpha`` and the block
    counts are then not used) and the function that turns their values into confidence.
    init: per side (``user``, ``item``) an earlier model's factors ``(id, features)`` DataFrame to
    start from (a warm start); rows it lacks start random (``cg_kernels.start_factors``).
    tol: > 0 stops after an iteration that lowered the objective by less than this share, or
    raised it (``music_recs.convergence``; the objective is then computed every iteration)."""
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    sc = spark.sparkContext
    level = StorageLevel.MEMORY_AND_DISK
    if prepared is not None:
        def with_conf(b: RatingBlock) -> RatingBlock:
            return dataclasses.replace(b, conf=np.asarray(conf_of(b.conf), np.float32))

        user_blocks, item_blocks = prepared.user_blocks, prepared.item_blocks
        ublocks = prepared.user.mapValues(with_conf).persist(level)
        iblocks = prepared.item.mapValues(with_conf).persist(level)
    else:
        ublocks = rating_blocks(ratings, S.USER_IDX, S.ITEM_IDX, user_blocks, alpha).persist(level)
        iblocks = rating_blocks(ratings, S.ITEM_IDX, S.USER_IDX, item_blocks, alpha).persist(level)
    blocks = {"user": ublocks, "item": iblocks}
    counts = {"user": user_blocks, "item": item_blocks}
    seeds = {"user": seed, "item": seed + 1}
    factors, held = {}, {}  # join sides: cached RDD (block, ("factors", (ids, X))); broadcast sides: driver array
    track_loss = track_loss or tol > 0
    for side in ("user", "item"):
        known = (init or {}).get(side)
        if known is None:
            initial = blocks[side].mapValues(
                lambda b, s=seeds[side]: ("factors", (b.rows, start_factors(b.rows, rank, s))))
        else:
            def warm(b, values, s=seeds[side]):
                blk, old, _, _ = _parts(values)
                return "factors", (blk.rows, start_factors(blk.rows, rank, s, old))

            initial = _co_partitioned(sc, [blocks[side], known_factors(known, counts[side], rank)], warm)
        if exchange[side] == BROADCAST:
            held[side] = _gather_all(initial, rank)
        else:
            factors[side] = initial.persist(level)
    tables = {}
    for side, other in (("user", "item"), ("item", "user")):
        if exchange[other] == JOIN:  # the solving side receives the other's vectors by join
            tables[side] = routing_table(sc, blocks[side], blocks[other], counts[other]).persist(level)
    for rdd in (ublocks, iblocks, *tables.values(), *factors.values()):
        rdd.count()

    losses, per_iteration, broadcasts, shared, last_parts = [], [], [], {}, {}

    def share(side):
        """The broadcast of ``held[side]``'s current value, made once per value."""
        if side not in shared:
            t0 = time.time()
            shared[side] = sc.broadcast(held[side])
            broadcasts.append(shared[side])
            profile["driver_gather_broadcast_seconds"] += time.time() - t0
        return shared[side]

    # Where the time goes: CG kernels (summed over tasks), the Spark jobs that run them (wall,
    # includes reading cached blocks, pickling, scheduling), the driver's gather + broadcast.
    kernel_seconds = sc.accumulator(0.0)
    profile = {"solve_jobs_seconds": 0.0, "driver_gather_broadcast_seconds": 0.0}
    # Y^T Y of the side solved last comes back with its solve (an accumulator), saving a job.
    gram_of = {"item": gram(held["item"]) if "item" in held
               else _sum_in_block_order(dict(factors["item"].map(lambda kv: (kv[0], gram(kv[1][1][1]))).collect()))}
    for iteration in range(1, max_iter + 1):
        started = time.time()
        data_term = sc.accumulator({}, _PerBlock())
        user_reg = sc.accumulator({}, _PerBlock())
        for side, other in (("user", "item"), ("item", "user")):
            YtY = gram_of[other].astype(np.float32)
            side_gram = sc.accumulator({}, _PerBlock())
            loss_here = track_loss and side == "item"  # the item solve sees the final factors of both sides
            reg_here = track_loss and side == "user"
            bc_other = share(other) if other in held else None
            bc_own = share(side) if side in held else None

            def solve(b, values, bc_other=bc_other, bc_own=bc_own, YtY=YtY, side_gram=side_gram,
                      loss_here=loss_here, reg_here=reg_here):
                blk, own, received, _ = _parts(values)
                X = bc_own.value[blk.rows] if bc_own is not None else own[1]
                # Broadcast: every vector, indexed by global id. Join: the block's own, by position.
                Y, indices = (bc_other.value, blk.indices) if bc_other is not None else (received, blk.local)
                t0 = time.perf_counter()
                new = solve_rows(blk.indptr, indices, blk.conf, Y, YtY, X, reg, cg_steps, scale_reg)
                kernel_seconds.add(time.perf_counter() - t0)
                side_gram.add({b: gram(new)})
                if loss_here:  # every (user, item) pair's data term plus the items' regularization
                    data_term.add({b: rows_loss(blk.indptr, indices, blk.conf, Y, YtY, new, reg, scale_reg)})
                if reg_here:
                    user_reg.add({b: rows_reg(blk.indptr, new, reg, scale_reg)})
                return "factors", (blk.rows, new)

            sources = [blocks[side]] + ([] if side in held else [factors[side]])
            if other not in held:
                sources.append(received_vectors(sc, factors[other], tables[side], counts[side]))
            solved = _co_partitioned(sc, sources, solve)
            t0 = time.time()
            if side in held:
                # One job: solve and collect (the map runs in the same Python worker); the
                # driver-side assembly is timed apart.
                parts = solved.map(lambda kv: kv[1][1]).collect()
                t1 = time.time()
                held[side], last_parts[side] = _assemble(parts, rank), parts
                shared.pop(side, None)  # a new value: broadcast again when next needed
                profile["driver_gather_broadcast_seconds"] += time.time() - t1
                profile["solve_jobs_seconds"] += t1 - t0
            else:
                old, factors[side] = factors[side], solved.persist(level)
                if iteration % checkpoint_interval == 0:
                    factors[side].checkpoint()  # cuts the lineage (each iteration depends on the last)
                factors[side].count()
                profile["solve_jobs_seconds"] += time.time() - t0
                old.unpersist()
            gram_of[side] = _sum_in_block_order(side_gram.value)
        loss = float(_sum_in_block_order(data_term.value) + _sum_in_block_order(user_reg.value))
        # Broadcasts no longer shared. With both sides broadcast no cached RDD names an old one
        # (each solve reads the blocks and the two current broadcasts), so it is destroyed now:
        # the driver would otherwise keep two more copies of the factors per iteration (at rank
        # 128 the iterations slowed from 5.6 to 8.1 s). A join side's cached factors were
        # computed with the other side's broadcasts, and every later task's serialized lineage
        # names those even past a checkpoint (a task naming a destroyed broadcast fails): they
        # are only unpersisted (executors drop their copies) and destroyed at the end.
        for bc in [bc for bc in broadcasts if bc not in shared.values()]:
            if factors:
                bc.unpersist()
            else:
                bc.destroy()
                broadcasts.remove(bc)
        per_iteration.append(round(time.time() - started, 3))
        if track_loss:
            losses.append(float(loss))
        log(f"CG ALS iteration {iteration}/{max_iter} in {per_iteration[-1]:.2f}s"
            + (f", loss {loss:.6g}" if track_loss else ""))
        if converged(losses, tol):
            log(f"CG ALS converged after {iteration} iterations (the objective fell by less than {tol:.2%})")
            break
    for rdd in (ublocks, iblocks, *tables.values()):
        rdd.unpersist()
    for side in held:  # the last solve's blocks, as an RDD like the join side's
        factors[side] = sc.parallelize([(b, ("factors", part)) for b, part in enumerate(last_parts[side])],
                                       counts[side])
    plain = {side: factors[side].mapValues(lambda v: v[1]) for side in factors}
    profile = {k: round(v, 3) for k, v in profile.items()}
    profile["kernel_task_seconds"] = round(kernel_seconds.value, 3)
    profile["iterations_seconds"] = round(sum(per_iteration), 3)
    return CGResult(plain["user"], plain["item"], dict(exchange), losses, per_iteration, broadcasts, profile,
                    iterations=len(per_iteration))


def factors_frame(spark: SparkSession, factors) -> DataFrame:
    """``(id int, features array<float>)``, built from the blocks with Arrow (no per-row Python)."""

    def explode(batches):
        for batch in batches:
            for payload in batch.column("payload").to_pylist():
                ids, X = pickle.loads(payload)
                X = np.ascontiguousarray(X, np.float32)
                offsets = pa.array(np.arange(0, X.size + 1, X.shape[1] if X.size else 1, dtype=np.int32)[: len(ids) + 1])
                features = pa.ListArray.from_arrays(offsets, pa.array(X.reshape(-1)))
                yield pa.RecordBatch.from_arrays([pa.array(ids.astype(np.int32)), features], names=["id", S.FEATURES])

    rows = factors.map(lambda kv: (int(kv[0]), bytearray(pickle.dumps((kv[1][0], kv[1][1]), protocol=5))))
    return (spark.createDataFrame(rows, PAYLOAD_SCHEMA)
            .mapInArrow(explode, f"id int, {S.FEATURES} array<float>"))


def als_model(spark: SparkSession, rank: int, user_factors: DataFrame, item_factors: DataFrame):
    """An MLlib ``ALSModel`` over these factors, so evaluation and batch scoring use one code path."""
    from pyspark.ml.recommendation import ALSModel

    jmodel = spark._jvm.org.apache.spark.ml.recommendation.ALSModel("als_cg", rank, user_factors._jdf,
                                                                    item_factors._jdf)
    model = ALSModel(jmodel)
    model._transfer_params_from_java()
    return model.setUserCol(S.USER_IDX).setItemCol(S.ITEM_IDX).setColdStartStrategy("drop")
