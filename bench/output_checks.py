"""What the output suites measure on normal daily models, and on a hit list: where their bounds come from.

For the last ``--days`` days of a data set (MovieLens-100K cut into 8 days, or 8 generated days,
as in ``bench/real_data_quality.py``), a daily run as the DAG makes it: the matrix of the
window ending that day (``spark_jobs.confidence``), ALS with the DAG's default values
(``spark_jobs.train_als``, CG; the same values every day, as ``tune=if_stale`` reuses a search
for a week), and the evaluation with the output suites (``spark_jobs.evaluate``), the previous
day's model standing for the published one. Printed per day: catalogue coverage and popular
share of the top-N, the mean top-k overlap with the previous day's model (churn), and the
99th percentile of factor norms over their median, per side; then the same coverage and popular
share for the popularity baseline's top-N (what a hit list looks like) and for a model whose
users all share one factor vector (the same items for everyone).

Run: ``.venv/bin/python bench/output_checks.py [--dataset generated] [--days 3]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pyspark.sql import functions as F  # noqa: E402

from music_recs import schema as S  # noqa: E402
from music_recs.jobs import ConfidenceSpec, EvaluateSpec, IngestSpec  # noqa: E402
from music_recs.params import RunParams  # noqa: E402
from real_data_quality import DAYS, FIRST_DAY, K, landing, spark_session, train_spec  # noqa: E402

TOP_N = RunParams().top_n


def norm_ratio(spark, folder: str) -> float:
    """99th percentile of the factor norms over their median."""
    norms = spark.read.parquet(folder).select(F.sqrt(F.aggregate(
        S.FEATURES, F.lit(0.0).cast("double"), lambda a, x: a + x.cast("double") * x.cast("double"))).alias("n"))
    p50, p99 = norms.approxQuantile("n", [0.5, 0.99], 0.001)
    return p99 / p50


def main(argv=None) -> int:
    from spark_jobs import confidence as confidence_job
    from spark_jobs import evaluate, ingest, train_als
    from spark_jobs.lib import output_checks, ranking
    from spark_jobs.lib.als_cg import als_model
    from spark_jobs.lib.gx_suites import EXPECTATIONS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["movielens", "generated"], default="movielens")
    ap.add_argument("--days", type=int, default=3)
    args = ap.parse_args(argv)
    run = RunParams()
    window = DAYS - args.days + 1
    root = Path(tempfile.mkdtemp(prefix="output_checks_"))
    plays = landing(args.dataset, root)
    spark = spark_session()
    spark.sparkContext.setLogLevel("ERROR")
    lake = str(root / "lake")
    for d in range(DAYS):
        day = (FIRST_DAY + dt.timedelta(days=d)).isoformat()
        ingest.run(spark, IngestSpec(day=day, input_uri=str(root / "landing" / f"dt={day}"), lake_uri=lake))
    print(f"{args.dataset}: {plays} plays over {DAYS} days; daily runs on a {window}-day window, top-{TOP_N}, "
          f"churn on top-{K}, DAG default values {run.recipe.as_dict()}")
    print("| day | users | items | coverage | popular share | churn overlap (users) | norm p99/median user, item "
          "| suites |\n|---|---|---|---|---|---|---|---|")
    previous = None
    for d in range(DAYS - args.days, DAYS):
        day = (FIRST_DAY + dt.timedelta(days=d)).isoformat()
        matrices = str(root / f"matrix_{day}")
        confidence_job.run(spark, ConfidenceSpec(
            day=day, lake_uri=lake, confidence=run.confidence, window_days=window, holdout_days=run.holdout_days,
            validation_days=run.validation_days, min_user_items=run.min_user_items,
            min_item_users=run.min_item_users, granularities=("track",), out_uri=matrices))
        matrix, model = f"{matrices}/granularity=track", str(root / f"model_{day}")
        trained = train_als.run(spark, train_spec(matrix, model, run.recipe.as_dict(), run, None))
        result = evaluate.run(spark, EvaluateSpec(
            model_uri=model, matrix_uri=matrix, out_uri=model, k=K, top_n=TOP_N, output_suite_dir=EXPECTATIONS,
            published_uri=previous, compare_churn=previous is not None))
        s = result.output_checks["summary"]
        churn = (f"{s['churn_overlap']:.3f} ({s['churn_users']})" if "churn_overlap" in s else "-")
        ratios = ", ".join(f"{norm_ratio(spark, f'{model}/{side}'):.2f}" for side in ("user_factors", "item_factors"))
        print(f"| {day} | {trained.data['users']} | {trained.data['items']} | {s['catalogue_coverage']:.3f} | "
              f"{s['popular_share']:.3f} | {churn} | {ratios} | "
              f"{'pass' if result.output_checks['success'] else 'FAIL: ' + '; '.join(result.output_checks['failed'])} |")
        previous = model

    # What failing looks like, on the last day's matrix.
    train = spark.read.parquet(f"{matrix}/train")
    n_items = train.select(S.ITEM_IDX).distinct().count()
    users = train.select(S.USER_IDX).distinct()
    hits = ranking.popularity_top_k(train, users, TOP_N, n_items)
    _, pop = output_checks.summary_frame(spark, hits, train, n_items, TOP_N)
    fitted = evaluate.ALSModel.load(f"{model}/model")
    one = fitted.userFactors.first()[S.FEATURES]
    same = als_model(spark, fitted.rank, fitted.userFactors.select(
        "id", F.array(*[F.lit(float(v)) for v in one]).cast("array<float>").alias(S.FEATURES)), fitted.itemFactors)
    _, alike = output_checks.summary_frame(
        spark, ranking.model_recommendations(spark, same, train, TOP_N, True), train, n_items, TOP_N)
    print(f"\npopularity baseline top-{TOP_N}: coverage {pop['catalogue_coverage']:.3f}, popular share "
          f"{pop['popular_share']:.3f} ({pop['popular_items']} items are the top 1%)")
    print(f"one user vector for everyone: coverage {alike['catalogue_coverage']:.3f}, popular share "
          f"{alike['popular_share']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
