"""ALS head-to-head: the project's Spark training job against the `implicit` library's CPU ALS.

Same confidence matrix (generated logs, log confidence), same rank, alpha, lambda and
iterations, same held-out split (the last generated day, items new to each user).

* Spark: ``spark_jobs/train_als.py`` with a ``music_recs.jobs.TrainSpec``, submitted through
  ``music_recs_airflow.spark_submit.SparkJobHook.submit`` -- the exact path the DAG's train task
  takes -- on ``local[*]``, with each strategy of ``--strategies``: ``mllib`` (MLlib's ALS,
  Cholesky per row) and ``cg`` (the project's conjugate-gradient ALS on cached blocks,
  ``spark_jobs/lib/als_cg.py``).
* implicit: ``AlternatingLeastSquares`` with its conjugate-gradient solver and with its
  Cholesky solver, ``num_threads`` = this machine's cores, ``OPENBLAS_NUM_THREADS=1``.

Regularization: MLlib scales lambda by each row's number of ratings (ALS-WR); implicit uses it
as is. Both get the same nominal lambda here and implicit additionally gets
``lambda * mean ratings per row`` (reported as "implicit (scaled reg)") so neither is handicapped.

Seconds per iteration: Spark MLlib = (fit time with N iterations - fit time with 1) / (N - 1),
which drops job start-up and data loading; Spark CG = the median of the wall time of each
iteration as the driver measures it (both half-iterations, every Spark job they need),
excluding the first; implicit = the median of its per-iteration callback times
excluding the first. Each setting runs ``--repeats`` times and the median is reported.

Run: ``.venv/bin/python bench/als_vs_implicit.py --plays-per-day 200000 --days 8 --ranks 32 64``
(add ``--strategies cg`` to time only the CG strategy).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pickle
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Airflow (imported with the Spark hook) logs every spark-submit line at INFO, from this setting
# read at import; the benchmark prints its own table.
if "--verbose" not in sys.argv:
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from music_recs import schema as S  # noqa: E402
from music_recs.jobs import TrainResult, TrainSpec  # noqa: E402
from music_recs.recipe import Recipe
from music_recs.metrics import mean_metrics  # noqa: E402
from music_recs_airflow.spark_submit import SparkJobHook  # noqa: E402
from music_recs_dev.sample_data import Catalogue, CatalogueSpec, generate_day  # noqa: E402

K = 10


def build_matrix(plays_per_day: int, days: int, seed: int = 7):
    spec = CatalogueSpec.for_plays_per_day(plays_per_day, seed=seed)
    cat = Catalogue(spec)
    end = dt.date(2026, 11, 20)
    frames = [generate_day(end - dt.timedelta(days=i), plays_per_day, cat).assign(day=i) for i in range(days - 1, -1, -1)]
    plays = pd.concat(frames)
    plays = plays[plays[S.MS_PLAYED] >= 30_000]
    train = plays[plays.day > 0].groupby([S.USER_ID, S.TRACK_ID]).size().rename("r").reset_index()
    users = {u: i for i, u in enumerate(sorted(train[S.USER_ID].unique()))}
    items = {t: i for i, t in enumerate(sorted(train[S.TRACK_ID].unique()))}
    train["user_idx"] = train[S.USER_ID].map(users).astype("int32")
    train["item_idx"] = train[S.TRACK_ID].map(items).astype("int32")
    train["strength"] = np.log1p(train["r"]).astype("float64")
    held = plays[plays.day == 0][[S.USER_ID, S.TRACK_ID]].drop_duplicates()
    held = held[held[S.USER_ID].isin(users) & held[S.TRACK_ID].isin(items)]
    held = held.assign(user_idx=held[S.USER_ID].map(users), item_idx=held[S.TRACK_ID].map(items))
    seen = set(zip(train.user_idx, train.item_idx))
    truth: dict[int, set] = {}
    for u, i in zip(held.user_idx, held.item_idx):
        if (u, i) not in seen:
            truth.setdefault(int(u), set()).add(int(i))
    csr = sp.csr_matrix((train.strength.to_numpy(np.float32), (train.user_idx, train.item_idx)),
                        shape=(len(users), len(items)))
    return train, csr, truth


def top_k(user_factors: np.ndarray, item_factors: np.ndarray, csr, users) -> dict:
    out = {}
    for start in range(0, len(users), 2048):
        batch = users[start:start + 2048]
        scores = user_factors[batch] @ item_factors.T
        for row, u in enumerate(batch):  # exclude items played in training
            scores[row, csr.indices[csr.indptr[u]:csr.indptr[u + 1]]] = -np.inf
        best = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.take_along_axis(scores, best, 1).argsort(axis=1)[:, ::-1]
        for row, u in enumerate(batch):
            out[int(u)] = best[row, order[row]].tolist()
    return out


def spark_fit(matrix_dir, out_dir, rank, iters, reg, alpha, strategy="mllib") -> TrainResult:
    spec = TrainSpec(matrix_uri=matrix_dir, out_uri=out_dir, max_iter=iters, checkpoint_interval=5,
                     strategy=strategy, recipe=Recipe(rank=rank, reg=reg, alpha=alpha), strength_as_built=True)
    hook = SparkJobHook("spark_default", work_dir=os.path.join(out_dir, "_submit"))
    return hook.submit(spec, conf={"spark.sql.shuffle.partitions": str(2 * (os.cpu_count() or 1))},
                       driver_memory="8g")


def load_factors(path: str, n: int) -> np.ndarray:
    df = pd.read_parquet(path)
    out = np.zeros((n, len(df.features.iloc[0])), dtype=np.float32)
    out[df["id"].to_numpy()] = np.stack(df.features.to_numpy())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plays-per-day", type=int, default=200_000)
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--ranks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=40.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-users", type=int, default=20000,
                   help="score a fixed random sample of this many held-out users (0 = all): scoring every user "
                        "against every item costs more than training at millions of ratings")
    p.add_argument("--strategies", nargs="+", choices=["mllib", "cg"], default=["mllib", "cg"])
    p.add_argument("--verbose", action="store_true", help="show every spark-submit line")
    p.add_argument("--matrix-cache", help="keep the generated matrix in this folder and reuse it in later runs "
                                          "with the same --plays-per-day and --days (generation is deterministic)")
    a = p.parse_args(argv)

    t0 = time.time()
    cached = a.matrix_cache and os.path.join(a.matrix_cache, f"matrix_{a.plays_per_day}x{a.days}.pkl")
    if cached and os.path.exists(cached):
        with open(cached, "rb") as fh:
            train, csr, truth = pickle.load(fh)
    else:
        train, csr, truth = build_matrix(a.plays_per_day, a.days)
        if cached:
            os.makedirs(a.matrix_cache, exist_ok=True)
            with open(cached, "wb") as fh:
                pickle.dump((train, csr, truth), fh, protocol=5)
    users = np.array(sorted(truth))
    if a.eval_users and len(users) > a.eval_users:
        users = np.sort(np.random.default_rng(0).choice(users, a.eval_users, replace=False))
        truth = {u: truth[u] for u in users.tolist()}
    nnz = csr.nnz
    reg_scaled = a.reg * nnz / csr.shape[0]
    print(f"matrix: {csr.shape[0]} users x {csr.shape[1]} items, {nnz} non-zeros, {len(users)} evaluated users "
          f"(built in {time.time() - t0:.0f}s); machine: {os.cpu_count()} cores, {platform.platform()}")
    work = tempfile.mkdtemp(prefix="als_bench_")
    matrix_dir = os.path.join(work, "matrix")
    os.makedirs(os.path.join(matrix_dir, "train"))
    train[["user_idx", "item_idx", S.USER_ID, S.TRACK_ID, "strength"]].rename(columns={S.TRACK_ID: S.ITEM_ID}) \
        .to_parquet(os.path.join(matrix_dir, "train", "part-00000.parquet"), index=False)

    import implicit
    from implicit.cpu.als import AlternatingLeastSquares

    rows = []
    for rank in a.ranks:
        for strategy in a.strategies:
            per_iter, spark_out = [], os.path.join(work, f"spark_{strategy}_{rank}")
            for _ in range(a.repeats):
                if strategy == "mllib":  # from the difference of two fits
                    one = spark_fit(matrix_dir, spark_out, rank, 1, a.reg, a.alpha).seconds["fit"]
                    full = spark_fit(matrix_dir, spark_out, rank, a.iterations, a.reg, a.alpha).seconds["fit"]
                    per_iter.append((full - one) / (a.iterations - 1))
                else:
                    seconds = spark_fit(matrix_dir, spark_out, rank, a.iterations, a.reg, a.alpha,
                                        strategy).iteration_seconds
                    per_iter.append(float(np.median(seconds[1:])))
            uf = load_factors(os.path.join(spark_out, "user_factors"), csr.shape[0])
            itf = load_factors(os.path.join(spark_out, "item_factors"), csr.shape[1])
            m = mean_metrics(top_k(uf, itf, csr, users), truth, K)
            label = "Spark MLlib ALS (project job)" if strategy == "mllib" else "Spark CG ALS (project job)"
            rows.append((label, rank, statistics.median(per_iter), m))

        for label, cg, reg in (("implicit CG", True, a.reg), ("implicit Cholesky", False, a.reg),
                               ("implicit CG (scaled reg)", True, reg_scaled)):
            times = []
            for _ in range(a.repeats):
                stamps = []
                model = AlternatingLeastSquares(factors=rank, regularization=reg, alpha=a.alpha, use_cg=cg,
                                                iterations=a.iterations, num_threads=os.cpu_count() or 1,
                                                random_state=42)
                model.fit(csr, show_progress=False, callback=lambda it, elapsed, loss: stamps.append(elapsed))
                # implicit reports each iteration's own duration; the first one warms up
                times.append(float(np.median(stamps[1:] if len(stamps) > 1 else stamps)))
            m = mean_metrics(top_k(model.user_factors, model.item_factors, csr, users), truth, K)
            rows.append((label, rank, statistics.median(times), m))
    shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'solver':<32} {'rank':>4} {'s/iter':>8} {'x implicit CG':>14} {'prec@10':>8} {'MAP@10':>8}")
    cg_time = {r: t for (label, r, t, _) in rows if label == "implicit CG"}
    for label, rank, sec, m in rows:
        print(f"{label:<32} {rank:>4} {sec:>8.3f} {sec / cg_time[rank]:>14.2f} {m['precision']:>8.4f} {m['map']:>8.4f}")
    print(f"\nimplicit {implicit.__version__}, {a.iterations} iterations, lambda {a.reg} (scaled {reg_scaled:.3f}), "
          f"alpha {a.alpha}, median of {a.repeats}; command: {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
