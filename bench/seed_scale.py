"""A paper extrapolation to the seed's scale on a cluster: 4M users, 500k artists, 1e9 plays,
rank 40 (the Spotify talk this project starts from), from a measured ``full_scale.py`` run.

Not a measurement. It takes each stage's cost at the largest size measured (``--json`` of
``bench/full_scale.py``), scales it by how that stage's work grows, and divides by the cluster's
cores, assuming the measured per-core rate holds (Spark's row stages scale out close to linearly;
ALS pays a shuffle of factors per iteration that a single machine does not, so its line is a
lower bound). Beside it, the settings ``music_recs.sizing`` chooses for that cluster: what the
DAG would submit with.

How each stage's work is scaled from the measured size to the seed's:

* ingest, validate: one day's plays (the window's plays / its days);
* build_confidence: the window's plays;
* train_als: per iteration, CG's cost, ``nnz * rank + (users + items) * rank^2 * cg_steps``;
  the search, on its bounded user sample (``tune_users``) and on the driver, is not spread over
  the cluster: its measured cost scaled by the items and the square of the rank;
* evaluate: exact scoring, ``users * items * rank``, plus a term in the plays;
* publish: copies of the outputs, ``users``.

Run: ``.venv/bin/python bench/seed_scale.py /tmp/full_scale.json`` (a JSON with the 100% size).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "plugins"))

from music_recs.sizing import ClusterResources, MatrixShape, shuffle_partitions, size_als, size_evaluate  # noqa: E402

CG_STEPS = 3  # the CG strategy's default inner steps per solve
MIB = 1024 * 1024


def cg_work(nnz: float, users: float, items: float, rank: int) -> float:
    return nnz * rank + (users + items) * rank * rank * CG_STEPS


def extrapolate(row: dict, seed: dict, cores_measured: int, cores_cluster: int) -> dict:
    """Seconds per stage at the seed's scale on ``cores_cluster`` cores (see the module docstring)."""
    m, jobs = row["matrix"], row.get("job_seconds", {})
    rank_m = row["train"]["rank"]
    plays_ratio = seed["plays"] / row["window_plays"]
    per_iteration = row["train"]["seconds_per_iteration"] * cg_work(seed["nnz"], seed["users"], seed["items"],
                                                                      seed["rank"]) / cg_work(m["nnz"], m["users"],
                                                                                              m["items"], rank_m)
    final_fit = per_iteration * row["train"]["iterations"]
    search = max(jobs.get("train_als", row["seconds"]["train_als"]) - row["train"]["seconds_per_iteration"]
                 * row["train"]["iterations"], 0.0) * (seed["items"] / m["items"]) * (seed["rank"] / rank_m) ** 2
    scoring = seed["users"] * seed["items"] * seed["rank"] / (m["users"] * m["items"] * rank_m)
    speedup = cores_cluster / cores_measured  # the measured rate per core, spread over the cluster's
    out = {
        "ingest": row["seconds"]["ingest"] * plays_ratio / speedup,
        "validate": row["seconds"]["validate"] * plays_ratio / speedup,
        "build_confidence": row["seconds"]["build_confidence"] * plays_ratio / speedup,
        # the search runs on the driver, on a bounded sample: the cluster does not speed it up
        "train_als": final_fit / speedup + search,
        "evaluate": row["seconds"]["evaluate"] * max(scoring, plays_ratio) / speedup,
        "publish": row["seconds"]["publish"] * seed["users"] / m["users"],
    }
    return {"seconds": out, "train_per_iteration": per_iteration / speedup}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("measured", help="JSON written by bench/full_scale.py --json")
    p.add_argument("--users", type=int, default=4_000_000)
    p.add_argument("--items", type=int, default=500_000)
    p.add_argument("--plays", type=float, default=1e9)
    p.add_argument("--rank", type=int, default=40)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--cores-per-node", type=int, default=16)
    p.add_argument("--memory-per-node-gib", type=int, default=64)
    p.add_argument("--cores-measured", type=int, default=2)
    a = p.parse_args(argv)
    rows = json.load(open(a.measured))["rows"]
    row = max((r for r in rows if "train" in r and "matrix" in r), key=lambda r: r["window_plays"])
    m = row["matrix"]
    # Non-zeros per play as measured (repeat plays of a pair fold into one non-zero).
    nnz = int(a.plays * m["nnz"] / row["window_plays"])
    seed = {"users": a.users, "items": a.items, "plays": a.plays, "rank": a.rank, "nnz": nnz}
    cluster = ClusterResources(nodes=a.nodes, cores_per_node=a.cores_per_node,
                               memory_per_node_mb=a.memory_per_node_gib * 1024, local=False)
    est = extrapolate(row, seed, a.cores_measured, cluster.total_cores)
    shape = MatrixShape(users=a.users, items=a.items, nnz=nnz, rank=a.rank)
    train, evaluate = size_als(shape, cluster, strategy="cg"), size_evaluate(shape, cluster)
    lake_bytes = row.get("lake_bytes_per_play", 60) * a.plays  # the lake's Parquet, as measured
    window_rows = 4 * lake_bytes  # tasks.PARQUET_EXPANSION: Parquet decoded into rows
    print(f"from the measured run at {row['window_plays']:,} plays ({m['users']:,} users x {m['items']:,} items, "
          f"{m['nnz']:,} nnz, rank {row['train']['rank']}) to {a.plays:,.0f} plays ({a.users:,} x {a.items:,}, "
          f"about {nnz:,} nnz, rank {a.rank}) on {a.nodes} nodes x {a.cores_per_node} cores, "
          f"{a.memory_per_node_gib} GiB each ({cluster.total_cores} cores)\n")
    print(f"{'stage':<17} {'seconds':>9}")
    for stage, seconds in est["seconds"].items():
        print(f"{stage:<17} {seconds:>9.0f}")
    print(f"{'total':<17} {sum(est['seconds'].values()):>9.0f}  ({sum(est['seconds'].values()) / 60:.0f} min; "
          f"training {est['train_per_iteration']:.1f} s per iteration, a lower bound)\n")
    print("settings the sizing model chooses on that cluster:")
    for name, s in (("train_als (cg)", train), ("evaluate", evaluate)):
        print(f"  {name:<15} {s.num_executors} executors x {s.executor_cores} cores, {s.executor_memory_mb} MiB heap + "
              f"{s.executor_memory_overhead_mb} MiB overhead, {s.user_blocks} blocks, "
              f"{s.shuffle_partitions} shuffle partitions, Python {s.python_memory_mb or 'unlimited'} MiB")
    day_rows = window_rows / a.days
    for name, rows_bytes in (("ingest/validate", day_rows), ("build_confidence", window_rows)):
        # Row stages set only their shuffle partitions on a cluster (memory: the executors' defaults).
        print(f"  {name:<15} {shuffle_partitions(int(rows_bytes), cluster)} shuffle partitions "
              f"({rows_bytes / 2**30:.1f} GiB of rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
