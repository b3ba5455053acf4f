"""Recommendation quality on real listening data: the DAG's default run against `implicit` and popularity.

Data: MovieLens-100K (``music_recs_dev.public_data``: the RecBole 1.2.1 wheel fetched into a
cache, never committed), ratings in time order cut into 8 days, a rating r = r plays; or
``--dataset generated``: 8 days of the project's generated logs.

Every step is the project's own code, in one local Spark session: ``spark_jobs.ingest`` per
day, ``spark_jobs.confidence`` (window 8 days, the last held out, the one before it the
validation day of tuning), ``spark_jobs.train_als`` and ``spark_jobs.evaluate``. Models:

* **DAG default**: ``RunParams()`` as a scheduled run gets them, tuning included
  (``tune`` != off: searched on the validation day, retrained on all training days);
* **DAG default, tune=off**: the built-in defaults alone (a first run on real logs);
* **previous defaults**: alpha 40, log confidence, reg 0.1 per rating, rank 32, no tuning;
* **implicit**: ``implicit.cpu.als`` on the same matrix, tuned on the same validation day with
  the same search (same candidates, successive halving, trial budget), then retrained on all
  training days; implicit's lambda is constant, so ``reg_scaling`` is fixed to constant for it;
* **popularity**: the most-listened unplayed items.

Each is scored per held-out user (``music_recs.metrics``, the reference the Spark metrics are
tested against; users without recommendations score 0) on the same held-out day; means come
with a 95 % paired bootstrap interval, and the per-user differences (model - popularity,
DAG - implicit) with theirs (``music_recs.quality_gate.paired_bootstrap``).

Tuning cost: the search's wall time in one application against ``--submits`` separate
spark-submits of one trial (the training job through ``SparkJobHook``, as the DAG submits it),
scaled to the number of trials.

Run: ``.venv/bin/python bench/real_data_quality.py [--dataset generated] [--trials 12] [--submits 2]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if "--verbose" not in sys.argv:
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from music_recs import schema as S  # noqa: E402
from music_recs import tuning  # noqa: E402
from music_recs.confidence import ConfidenceParams, confidence  # noqa: E402
from music_recs.jobs import ConfidenceSpec, EvaluateSpec, IngestSpec, TrainSpec, TuneSpec  # noqa: E402
from music_recs.recipe import Recipe
from music_recs.metrics import METRICS, mean_metrics, user_metrics  # noqa: E402
from music_recs.params import RunParams  # noqa: E402
from music_recs.quality_gate import paired_bootstrap  # noqa: E402

K = 10
DAYS = 8
FIRST_DAY = dt.date(2026, 11, 1)
LAST_DAY = FIRST_DAY + dt.timedelta(days=DAYS - 1)


def spark_session():
    from pyspark.sql import SparkSession

    from spark_jobs.lib.session import BASE_CONF

    builder = (SparkSession.builder.master("local[2]").appName("real_data_quality")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4")
               .config("spark.default.parallelism", "2").config("spark.driver.memory", "4g"))
    for key, value in BASE_CONF.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def landing(dataset: str, root: Path) -> int:
    if dataset == "movielens":
        from music_recs_dev.public_data import as_stream_days, movielens_100k, write_stream_days

        ratings, titles = movielens_100k()
        return write_stream_days(as_stream_days(ratings, titles, FIRST_DAY, DAYS), str(root / "landing"))
    from music_recs_dev.sample_data import Catalogue, CatalogueSpec, write_days_local

    plays = 20_000
    days = [FIRST_DAY + dt.timedelta(days=d) for d in range(DAYS)]
    return write_days_local(str(root / "landing"), days, plays, Catalogue(CatalogueSpec.for_plays_per_day(plays)))


def build_matrix(spark, root: Path, run: RunParams) -> str:
    from spark_jobs import confidence as confidence_job
    from spark_jobs import ingest

    lake = str(root / "lake")
    for d in range(DAYS):
        day = (FIRST_DAY + dt.timedelta(days=d)).isoformat()
        ingest.run(spark, IngestSpec(day=day, input_uri=str(root / "landing" / f"dt={day}"), lake_uri=lake))
    out = str(root / "matrix")
    confidence_job.run(spark, ConfidenceSpec(
        day=LAST_DAY.isoformat(), lake_uri=lake, confidence=run.confidence, window_days=DAYS,
        holdout_days=run.holdout_days, validation_days=run.validation_days, min_user_items=run.min_user_items,
        min_item_users=run.min_item_users, granularities=("track",), out_uri=out))
    return f"{out}/granularity=track"


def train_spec(matrix: str, out: str, values: dict, run: RunParams, tune: TuneSpec | None) -> TrainSpec:
    return TrainSpec(matrix_uri=matrix, out_uri=out, max_iter=run.max_iter, checkpoint_dir=out + "_ckpt",
                     tune=None if tune is None else tune.to_dict(),
                     recipe=Recipe.from_dict(values))


def dag_model(spark, matrix: str, root: Path, name: str, values: dict, run: RunParams, tune: TuneSpec | None):
    from spark_jobs import evaluate, train_als

    out = str(root / name)
    started = time.monotonic()
    trained = train_als.run(spark, train_spec(matrix, out, values, run, tune))
    seconds = time.monotonic() - started
    evaluate.run(spark, EvaluateSpec(model_uri=out, matrix_uri=matrix, out_uri=out, k=K, top_n=K))
    recs = pd.read_parquet(f"{out}/recommendations", columns=[S.USER_IDX, S.ITEM_IDX, S.RANK])
    by_user = {u: list(g.sort_values(S.RANK)[S.ITEM_IDX]) for u, g in recs.groupby(S.USER_IDX)}
    return by_user, trained, seconds


# --- implicit, on the same matrix and split ----------------------------------------------------
def csr(pairs: pd.DataFrame, shape, params: dict) -> sp.csr_matrix:
    conf = confidence(pairs[S.R].to_numpy(np.float64), ConfidenceParams(params["confidence_function"],
                                                                        float(params["alpha"]),
                                                                        float(params["epsilon"])), np.log1p)
    return sp.csr_matrix((conf.astype(np.float32), (pairs[S.USER_IDX], pairs[S.ITEM_IDX])), shape=shape)


def implicit_recs(train: pd.DataFrame, shape, params: dict, iterations: int, users: list[int]) -> dict:
    from implicit.cpu.als import AlternatingLeastSquares

    matrix = csr(train, shape, params)
    model = AlternatingLeastSquares(factors=int(params["rank"]), regularization=float(params["reg"]),
                                    iterations=iterations, random_state=42, calculate_training_loss=False)
    model.fit(matrix, show_progress=False)
    ids, _ = model.recommend(np.asarray(users), matrix[users], N=K, filter_already_liked_items=True)
    return {u: [int(i) for i in row if i >= 0] for u, row in zip(users, ids)}


def implicit_search(tune_train, validation, shape, base: dict, run: RunParams, trials: int) -> dict:
    """The DAG's search (same candidates and rungs), with implicit fitting and the Python metrics scoring."""
    truth = validation.groupby(S.USER_IDX)[S.ITEM_IDX].apply(set).to_dict()
    users = sorted(truth)
    pool = tuning.candidates({**base, "reg_scaling": "constant"}, {"reg_scaling"}, trials, TuneSpec().seed)
    first, last = tuning.rung_iterations(run.max_iter)
    done = []

    def score(n, params, rung, iterations):
        t0 = time.monotonic()
        value = mean_metrics(implicit_recs(tune_train, shape, params, iterations, users), truth, K)[run.primary_metric]
        done.append(tuning.Trial(n, rung, params, iterations, value, len(users), time.monotonic() - t0))

    for n, params in enumerate(pool):
        score(n, params, 0, first)
    for best in tuning.survivors(list(done)):
        score(best.trial, best.params, 1, last)
    return tuning.winner(done).params


def popularity_recs(train: pd.DataFrame, users: list[int]) -> dict:
    listeners = train.groupby(S.ITEM_IDX)[S.USER_IDX].nunique()
    ranked = sorted(listeners.index, key=lambda i: (-listeners[i], i))
    played = train.groupby(S.USER_IDX)[S.ITEM_IDX].apply(set).to_dict()
    out = {}
    for u in users:
        seen = played.get(u, set())
        out[u] = [i for i in ranked[: K + len(seen)] if i not in seen][:K]
    return out


def per_user(recs: dict, truth: dict) -> dict[str, np.ndarray]:
    users = sorted(truth)
    rows = [user_metrics(recs.get(u, []), truth[u], K) for u in users]
    return {m: np.array([r[m] for r in rows]) for m in METRICS}


def timed_submits(matrix: str, root: Path, values: dict, run: RunParams, n: int) -> list[float]:
    """Wall seconds of ``n`` separate spark-submits, each training one first-rung trial on the tuning split."""
    from music_recs_airflow.spark_submit import SparkJobHook

    tune_matrix = root / "tune_only"
    tune_matrix.mkdir(exist_ok=True)
    if not (tune_matrix / "train").exists():
        (tune_matrix / "train").symlink_to(Path(matrix) / S.TUNING_TRAIN)
    first, _ = tuning.rung_iterations(run.max_iter)
    hook = SparkJobHook(work_dir=str(root / "submits"))
    seconds = []
    for i in range(n):
        spec = train_spec(str(tune_matrix), str(root / f"submit{i}"), values, run, None)
        spec = TrainSpec.from_dict({**spec.to_dict(), "max_iter": first})
        t0 = time.monotonic()
        hook.submit(spec, driver_memory="2g")
        seconds.append(time.monotonic() - t0)
    return seconds


def fmt_interval(values: np.ndarray, resamples=1000) -> str:
    lift = paired_bootstrap(values, np.zeros_like(values), resamples)
    low, high = lift["difference_interval"]
    return f"{values.mean():.4f} [{low:.4f}, {high:.4f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["movielens", "generated"], default="movielens")
    ap.add_argument("--trials", type=int, default=RunParams().tune_trials)
    ap.add_argument("--submits", type=int, default=2, help="separate spark-submits timed (0: skip)")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    run = RunParams()
    root = Path(tempfile.mkdtemp(prefix="real_data_quality_"))
    plays = landing(args.dataset, root)
    spark = spark_session()
    spark.sparkContext.setLogLevel("ERROR")
    t0 = time.monotonic()
    matrix = build_matrix(spark, root, run)
    print(f"{args.dataset}: {plays} plays over {DAYS} days; ingest + matrix in {time.monotonic() - t0:.0f}s")

    train = pd.read_parquet(f"{matrix}/train", columns=[S.USER_IDX, S.ITEM_IDX, S.R])
    holdout = pd.read_parquet(f"{matrix}/holdout", columns=[S.USER_IDX, S.ITEM_IDX])
    tune_train = pd.read_parquet(f"{matrix}/{S.TUNING_TRAIN}", columns=[S.USER_IDX, S.ITEM_IDX, S.R])
    validation = pd.read_parquet(f"{matrix}/{S.TUNING_VALIDATION}", columns=[S.USER_IDX, S.ITEM_IDX])
    shape = (int(train[S.USER_IDX].max()) + 1, int(train[S.ITEM_IDX].max()) + 1)
    truth = holdout.groupby(S.USER_IDX)[S.ITEM_IDX].apply(set).to_dict()
    users = sorted(truth)
    print(f"matrix {train[S.USER_IDX].nunique()} users x {train[S.ITEM_IDX].nunique()} items, {len(train)} pairs; "
          f"validation {validation[S.USER_IDX].nunique()} users, holdout {len(users)} users")

    search = TuneSpec(trials=args.trials, minutes=run.tune_minutes, metric=run.primary_metric, k=K)
    scores, notes = {}, {}
    recs, trained, secs = dag_model(spark, matrix, root, "dag_default", run.recipe.as_dict(), run, search)
    scores["DAG default (tuned)"] = per_user(recs, truth)
    notes["DAG default (tuned)"] = {"chosen": trained.tuning["chosen"], "search_seconds": trained.tuning["seconds"],
                                    "trials": len(trained.tuning["trials"]), "train_seconds": round(secs, 1)}
    recs, _, secs = dag_model(spark, matrix, root, "dag_off", run.recipe.as_dict(), run, None)
    scores["DAG default, tune=off"] = per_user(recs, truth)
    previous = {"alpha": 40.0, "confidence_function": "log", "epsilon": 1.0, "reg": 0.1, "reg_scaling": "per_rating",
                "rank": 32}
    recs, _, _ = dag_model(spark, matrix, root, "dag_previous", previous, run, None)
    scores["previous defaults (alpha 40)"] = per_user(recs, truth)

    t0 = time.monotonic()
    chosen = implicit_search(tune_train, validation, shape, run.recipe.as_dict(), run, args.trials)
    search_s = time.monotonic() - t0
    scores["implicit (tuned, same search)"] = per_user(implicit_recs(train, shape, chosen, run.max_iter, users), truth)
    notes["implicit (tuned, same search)"] = {"chosen": chosen, "search_seconds": round(search_s, 1)}
    scores["popularity"] = per_user(popularity_recs(train, users), truth)

    print(f"\n{len(users)} held-out users; mean@{K} with its 95% bootstrap interval")
    print(f"| model | precision@{K} | MAP@{K} | NDCG@{K} |\n|---|---|---|---|")
    for name, s in scores.items():
        print(f"| {name} | {fmt_interval(s['precision'])} | {fmt_interval(s['map'])} | {fmt_interval(s['ndcg'])} |")
    pop, dag, imp = scores["popularity"], scores["DAG default (tuned)"], scores["implicit (tuned, same search)"]
    comparisons = {}
    print(f"\n| comparison ({run.primary_metric}@{K}, per user) | difference [95% interval] | relative lift [95% interval] |"
          "\n|---|---|---|")
    for name, a, b in (("DAG default (tuned) - popularity", dag, pop),
                       ("DAG default, tune=off - popularity", scores["DAG default, tune=off"], pop),
                       ("implicit (tuned) - popularity", imp, pop),
                       ("DAG default (tuned) - implicit (tuned)", dag, imp)):
        lift = paired_bootstrap(a[run.primary_metric], b[run.primary_metric])
        comparisons[name] = lift
        d, r = lift["difference_interval"], lift["relative_interval"]
        print(f"| {name} | {lift['difference']:+.4f} [{d[0]:+.4f}, {d[1]:+.4f}] | "
              f"{lift['relative']:+.1%} [{r[0]:+.1%}, {r[1]:+.1%}] |")
    for name, note in notes.items():
        print(f"{name}: {json.dumps(note, default=str)}")

    submits = []
    if args.submits:
        submits = timed_submits(matrix, root, run.recipe.as_dict(), run, args.submits)
        n_trials = notes["DAG default (tuned)"]["trials"]
        one = statistics.median(submits)
        print(f"\ntuning cost: {n_trials} trials in one application {notes['DAG default (tuned)']['search_seconds']:.0f}s; "
              f"one trial as its own spark-submit {one:.1f}s (median of {len(submits)}), x {n_trials} = "
              f"{one * n_trials:.0f}s (ratio {one * n_trials / notes['DAG default (tuned)']['search_seconds']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "dataset": args.dataset, "users": len(users),
            "means": {n: {m: float(v.mean()) for m, v in s.items()} for n, s in scores.items()},
            "comparisons": comparisons, "notes": notes, "submit_seconds": submits}, indent=2, default=str))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
