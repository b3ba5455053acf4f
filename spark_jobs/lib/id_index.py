"""Persisted, append-only maps from string ids to the int32 ids ALS needs.

Layout: ``{lake}/ids/{entity}/chunk=NNNNNN/`` Parquet with ``(id, idx)``. Each chunk holds
the ids first seen by one run; the index is the union of all chunks. An id, once given
an int, keeps it for ever (across days, reruns and backfills): a run only ever adds a
chunk for ids no chunk holds yet, numbered after the largest int in use, in sorted id
order (so the same input assigns the same ints). A rerun of the same input finds nothing
new and writes nothing.

Chunks are written by one writer at a time, whatever runs it (a DAG run, the CLI beside it):
``extend_index`` holds the index's lease (``_leases/ids.json``, ``spark_jobs.lib.lake.ids_lease``)
from reading the chunks to writing the next one, so two writers never number ids from the same
top nor write the same chunk.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from music_recs.plan import LakeLayout
from spark_jobs.lib.lake import ids_lease
from spark_jobs.lib.session import SUCCESS

INT32_MAX = 2**31 - 1
ID = "id"
IDX = "idx"


def _chunks(spark: SparkSession, root: str) -> dict[str, bool]:
    """Every ``chunk=`` folder under ``root``, and whether its write committed (``_SUCCESS``)."""
    if urlparse(root).scheme in ("", "file"):
        path = urlparse(root).path if root.startswith("file:") else root
        if not os.path.isdir(path):
            return {}
        return {d: os.path.exists(os.path.join(path, d, SUCCESS)) for d in sorted(os.listdir(path))
                if d.startswith("chunk=")}
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(root)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(hpath):
        return {}
    return {s.getPath().getName(): fs.exists(jvm.org.apache.hadoop.fs.Path(s.getPath(), SUCCESS))
            for s in fs.listStatus(hpath) if s.getPath().getName().startswith("chunk=")}


def load_index(spark: SparkSession, lake: LakeLayout, entity: str) -> DataFrame:
    """The committed chunks. A chunk whose write failed (no ``_SUCCESS``) is ignored: no matrix
    can have used its ints, and the ids in it are numbered again by the next run."""
    root = lake.ids(entity)
    chunks = [name for name, committed in sorted(_chunks(spark, root).items()) if committed]
    if not chunks:
        return spark.createDataFrame([], f"{ID} string, {IDX} int")
    return spark.read.parquet(*[f"{root}/{c}" for c in chunks]).select(ID, IDX)


def _next_chunk(spark: SparkSession, root: str) -> str:
    """After every chunk folder, failed ones included (``errorifexists`` must not meet one)."""
    numbers = [int(name.removeprefix("chunk=")) for name in _chunks(spark, root)]
    return f"chunk={max(numbers, default=-1) + 1:06d}"


def extend_index(spark: SparkSession, lake: LakeLayout, entity: str, ids: DataFrame,
                 holder: str = "") -> tuple[DataFrame, int]:
    """Give every id in ``ids`` (column ``id``) an int; return the full index and how many were new.

    holder: who the index's lease names meanwhile ("": this process, ``user@host pid N``);
    ``LakeBusy`` when another writer holds it."""
    with ids_lease(spark, lake, holder):
        return _extend_index(spark, lake, entity, ids)


def _extend_index(spark: SparkSession, lake: LakeLayout, entity: str, ids: DataFrame) -> tuple[DataFrame, int]:
    root = lake.ids(entity)
    existing = load_index(spark, lake, entity).cache()
    top = existing.agg(F.max(IDX)).first()[0]
    next_idx = 0 if top is None else top + 1
    new = ids.select(ID).distinct().join(existing, ID, "left_anti")
    # Sorting the new ids makes the assignment a function of the input alone.
    w = Window.orderBy(ID)
    new = new.withColumn(IDX, (F.row_number().over(w) - 1 + F.lit(next_idx)).cast("long")).cache()
    n_new = new.count()
    if n_new:
        last = next_idx + n_new - 1
        if last > INT32_MAX:
            raise OverflowError(
                f"id index '{entity}' would need int {last}, past int32 max {INT32_MAX}: ALS ids are 32-bit; "
                "compact the index (re-number from active ids) before training"
            )
        chunk = f"{root}/{_next_chunk(spark, root)}"
        new.select(ID, F.col(IDX).cast("int").alias(IDX)).coalesce(1).sortWithinPartitions(IDX) \
            .write.mode("errorifexists").parquet(chunk)
    new.unpersist()
    existing.unpersist()
    return load_index(spark, lake, entity), n_new
