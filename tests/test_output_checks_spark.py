"""The output suites (expectations/model_output_*.json) on planted models: a normal model passes;
the same hits for everyone, exploded factor norms (judged per side) and an unchanged (stale) model are refused,
each with one line naming the expectation and its observed value, and the quality gate refuses
to publish on them unless overridden."""

import json
import math

import pytest
from pyspark.sql import functions as F

from music_recs import schema as S
from music_recs.jobs import EvaluateSpec, TrainSpec
from music_recs.recipe import Recipe
from music_recs.quality_gate import decide, failure_line
from spark_jobs import evaluate, train_als
from spark_jobs.lib import output_checks as O
from spark_jobs.lib import ranking
from spark_jobs.lib.als_cg import als_model
from spark_jobs.lib.gx_suites import EXPECTATIONS, load_suite, validate_frames
from spark_jobs.lib.output_checks import SUITES
from tests.test_model_spark import planted

pytestmark = pytest.mark.spark

USERS, ITEMS, GROUPS, TOP_N = 200, 300, 10, 5


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    """A model that learned the planted blocks (MLlib, rank 8): the normal case."""
    root = tmp_path_factory.mktemp("output_checks")
    m, out = str(root / "matrix"), str(root / "model")
    planted(spark, m, users=USERS, items=ITEMS, groups=GROUPS)
    train_als.run(spark, TrainSpec(matrix_uri=m, out_uri=out, max_iter=6, strategy="mllib",
                                   checkpoint_dir=str(root / "ckpt"), recipe=Recipe(rank=8, reg=0.05, alpha=10.0),
                                   strength_as_built=True))
    return root, m, out


def _spec(m, model_dir, out, **kw):
    return EvaluateSpec(model_uri=model_dir, matrix_uri=m, out_uri=out, k=3, top_n=TOP_N, similar_n=2,
                        output_suite_dir=EXPECTATIONS, **kw)


def _check(spark, m, model_dir, published=False, **kw):
    """The output checks alone (as the evaluation runs them), on the model in ``model_dir``."""
    spec = _spec(m, model_dir, model_dir, **kw)
    train = spark.read.parquet(f"{m}/train")
    model = evaluate.ALSModel.load(f"{model_dir}/model")
    n_items = train.select(S.ITEM_IDX).distinct().count()
    recs = ranking.model_recommendations(spark, model, train, TOP_N, True).cache()
    return evaluate.check_output(spark, spec, recs, train, n_items, model, recs if published else None)


def _planted_model(spark, out, trained_dir, users=None, items=None):
    """A model folder holding factors derived from the trained ones (ids kept)."""
    model = evaluate.ALSModel.load(f"{trained_dir}/model")
    user_f, item_f = users(model.userFactors) if users else model.userFactors, \
        items(model.itemFactors) if items else model.itemFactors
    als_model(spark, model.rank, user_f, item_f).write().overwrite().save(f"{out}/model")
    for side, frame in (("user_factors", user_f), ("item_factors", item_f)):
        ids = spark.read.parquet(f"{trained_dir}/{side}").select("id", S.USER_ID if side == "user_factors" else S.ITEM_ID)
        frame.join(ids, "id").write.mode("overwrite").parquet(f"{out}/{side}")
    return out


def _gate(checks):
    metrics = {"map": 0.5}
    return decide("map", metrics, {"map": 0.1}, None, output_failures=tuple(checks["failed"]))


def test_a_normal_model_passes_and_reports_what_it_measured(spark, trained):
    root, m, out = trained
    checks = evaluate.run(spark, _spec(m, out, str(root / "eval_ok"), docs_dir=str(root / "docs"))).output_checks
    assert checks["success"], checks["failed"]
    names = {(c["suite"], c["column"]) for c in checks["checks"]}
    assert names == {("model_output_users", "missing"), ("model_output_users", "already_played"),
                     ("model_output_factors", "finite"), ("model_output_factors", "norm_over_median"),
                     ("model_output_summary", "catalogue_coverage"), ("model_output_summary", "popular_share")}
    summary = checks["summary"]
    assert summary["slots"] == USERS * TOP_N and summary["popular_items"] == math.ceil(ITEMS / 100)
    assert summary["catalogue_coverage"] > 0.5  # each block's users share its unplayed items
    assert checks["data_docs"].endswith("index.html")
    assert "model_output_users" in open(checks["data_docs"]).read()
    assert _gate(checks).passed


def test_the_same_hits_for_everyone_are_refused_in_one_line(spark, trained, tmp_path):
    root, m, out = trained
    one = spark.read.parquet(f"{out}/user_factors").first()[S.FEATURES]
    bad = _planted_model(spark, str(tmp_path / "bad"), out,
                         users=lambda f: f.select("id", F.array(*[F.lit(float(v)) for v in one])
                                                  .cast("array<float>").alias(S.FEATURES)))
    checks = _check(spark, m, bad)
    assert not checks["success"]
    [line] = [f for f in checks["failed"] if "catalogue_coverage" in f]
    assert line.startswith("model_output_summary.catalogue_coverage expect_column_values_to_be_between")
    assert checks["summary"]["catalogue_coverage"] < 0.3 and "(min 0.3)" in line and "\n" not in line
    decision = _gate(checks)
    assert not decision.publish and "output check model_output_summary.catalogue_coverage" in decision.message()
    assert "\n" not in decision.message()
    overridden = decide("map", {"map": 0.5}, {"map": 0.1}, None, override=True,
                        output_failures=tuple(checks["failed"]))
    assert overridden.publish and overridden.overridden


def test_exploded_factor_norms_are_refused(spark, trained, tmp_path):
    root, m, out = trained
    # 5% of items (no NaN, no inf) with norms 1000x: beyond the 99th percentile bound of 50x the median.
    bad = _planted_model(spark, str(tmp_path / "bad"), out, items=lambda f: f.select(
        "id", F.when(F.col("id") % 20 == 0, F.transform(S.FEATURES, lambda x: x * 1000))
        .otherwise(F.col(S.FEATURES)).cast("array<float>").alias(S.FEATURES)))
    checks = _check(spark, m, bad)
    [line] = checks["failed"]
    assert line == ("model_output_factors.norm_over_median expect_column_values_to_be_between: 15 of 300 rows "
                    "outside (max 50, for 99% of rows where side == item)")


def test_a_side_is_judged_on_its_own_rows(spark, trained, tmp_path):
    """4 of 200 users (2%) with norms 1000x: pooled with the 300 items they are 0.8% of the rows,
    within ``mostly`` 0.99; on the users' rows alone they fail, and the line names the side."""
    root, m, out = trained
    bad = _planted_model(spark, str(tmp_path / "bad"), out, users=lambda f: f.select(
        "id", F.when(F.col("id") % 50 == 0, F.transform(S.FEATURES, lambda x: x * 1000))
        .otherwise(F.col(S.FEATURES)).cast("array<float>").alias(S.FEATURES)))
    model = evaluate.ALSModel.load(f"{bad}/model")
    ratios = O.factors_frame(model.userFactors, model.itemFactors)
    assert ratios.filter("norm_over_median > 50").count() / ratios.count() == pytest.approx(4 / 500)  # pooled: passes
    checks = _check(spark, m, bad)
    assert checks["failed"] == ["model_output_factors.norm_over_median expect_column_values_to_be_between: 4 of 200 "
                                "rows outside (max 50, for 99% of rows where side == user)"]
    sides = {c["kwargs"]["row_condition"]: c["success"] for c in checks["checks"] if c["column"] == "norm_over_median"}
    assert sides == {"side == user": False, "side == item": True}


def test_a_small_side_of_outliers_among_many_users_is_refused(spark):
    """1000 users and 20 items: 3 exploded items and one NaN item are 0.4% of the rows, but the
    item side fails both checks, and the user side passes."""
    rank = 4
    users = spark.createDataFrame([(i, [1.0 + (i % 7) / 10] * rank) for i in range(1000)],
                                  f"id int, {S.FEATURES} array<float>")
    items = spark.createDataFrame([(i, [1000.0 if i < 3 else (float("nan") if i == 19 else 0.5 + i / 40)] * rank)
                                   for i in range(20)], f"id int, {S.FEATURES} array<float>")
    suite = load_suite(f"{EXPECTATIONS}/{SUITES['factors']}")
    checks = validate_frames([(suite, O.factors_frame(users, items))], {})
    assert [failure_line(c) for c in checks["checks"] if not c["success"]] == [
        "model_output_factors.finite expect_column_values_to_be_in_set: 1 of 20 rows outside "
        "(in [True] where side == item)",
        "model_output_factors.norm_over_median expect_column_values_to_be_between: 3 of 20 rows outside "
        "(max 50, for 99% of rows where side == item)"]


def test_churn_is_checked_against_a_model_of_an_earlier_day_only(spark, trained, tmp_path):
    root, m, out = trained
    # The published model is this very model (its recommendations stand for the published
    # model's, scored by evaluate.published_recommendations in a run): every list unchanged, a stale model.
    stale = _check(spark, m, out, published=True, compare_churn=True)
    assert stale["summary"]["churn_overlap"] == pytest.approx(1.0) and stale["summary"]["churn_users"] == USERS
    assert [f.split(":")[0] for f in stale["failed"]] == ["model_output_users.overlap expect_column_mean_to_be_between"]
    assert "observed 1 (min 0.1, max 0.95)" in stale["failed"][0]
    # A rerun of the published day (compare_churn False): no churn check at all.
    rerun = _check(spark, m, out, published=True)
    assert rerun["success"] and "churn_overlap" not in rerun["summary"]


def test_every_suite_file_is_valid_json_with_reasons():
    for file in SUITES.values():
        suite = json.load(open(f"{EXPECTATIONS}/{file}"))
        assert suite["name"] == file.removesuffix(".json")
        assert all((e.get("meta") or {}).get("why") for e in suite["expectations"]), file


def test_failure_lines_name_the_observed_value_and_the_bound():
    line = failure_line({"suite": "s", "column": "c", "expectation": "expect_column_mean_to_be_between",
                         "kwargs": {"min_value": 0.05, "max_value": 0.95}, "observed_value": 0.0123456})
    assert line == "s.c expect_column_mean_to_be_between: observed 0.01235 (min 0.05, max 0.95)"
    line = failure_line({"suite": "s", "column": "c", "expectation": "x", "kwargs": {"value_set": [True]},
                         "unexpected_count": 2, "element_count": 9})
    assert line == "s.c x: 2 of 9 rows outside (in [True])"
