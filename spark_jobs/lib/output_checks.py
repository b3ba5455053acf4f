"""The frames the output suites (``expectations/model_output_*.json``) check before a model is published.

A model can beat popularity on the held-out days and still be wrong for users: the same hits
for everyone, every list changed overnight, exploding factors, users left without
recommendations. The evaluation job builds three small frames from the run's recommendations,
factors and training matrix, and runs one GX suite on each (``spark_jobs.lib.gx_suites``):

* ``users``: one row per user of the matrix: ``recommended`` (rows in the top-N), ``missing``
  (``min(top_n, unplayed items) - recommended``; under the artist cap and the do-not-recommend
  list, the items the rules leave, ``possible_per_user``), ``already_played`` (top-N items the user played
  in training), and ``overlap``: the Jaccard overlap of the user's top-k with the published
  model's top-k on the same candidates (null when there is nothing to compare with);
* ``factors``: one row per user and item factor: ``side`` (user or item), ``norm``, ``finite``
  (no NaN/inf) and ``norm_over_median`` (the norm over its side's median norm). Its suite checks
  each side on that side's rows (a ``row_condition`` on ``side``): pooled, a side that is a small
  share of the rows (a few hundred items among many users) could be mostly outliers and pass;
* ``summary``: one row: ``catalogue_coverage`` (share of the matrix's items in some top-N) and
  ``popular_share`` (share of top-N slots taken by the 1 % most popular items, by listeners).
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from music_recs import schema as S

USERS, FACTORS, SUMMARY = "users", "factors", "summary"
SUITES = {name: f"model_output_{name}.json" for name in (USERS, FACTORS, SUMMARY)}
POPULAR_FRACTION = 0.01  # "the 1 % most popular items"


def top(recs: DataFrame, n: int) -> DataFrame:
    return recs.filter(F.col(S.RANK) <= n).select(S.USER_IDX, S.ITEM_IDX)


def possible_without_rules(top_n: int, n_items: int):
    """What a user with ``played`` (a column) training items can get without rules: min(top_n, unplayed)."""
    return F.greatest(F.least(F.lit(top_n), F.lit(n_items) - F.col("played")), F.lit(0))


def possible_per_user(train: DataFrame, rules, top_n: int) -> DataFrame:
    """(user_idx, possible): how many items each user of ``train`` can get in a top-N under
    ``rules`` (``spark_jobs.lib.ranking.Rules``): its unplayed, unblocked items, at most
    ``rules.cap`` per artist, at most ``top_n``. Computed apart from the top-N kernel (a
    closed form over artists), so the users suite checks the kernel rather than echoing it:

    with N_a the allowed items of artist a and r_ua those the user played or may not get,
    possible = sum_a min(cap, N_a) - sum_{a the user touched} (min(cap, N_a) - min(cap, N_a - r_ua)).
    An item without an artist is an artist of its own; no cap is min(cap, x) = x."""
    def eff(x):
        return F.least(F.lit(rules.cap), x) if rules.cap else x

    universe = train.select(S.ITEM_IDX).distinct()
    if rules.blocked is not None:
        universe = universe.join(rules.blocked.select(S.ITEM_IDX), S.ITEM_IDX, "left_anti")
    if rules.cap and rules.groups is not None:
        universe = universe.join(rules.groups.select(S.ITEM_IDX, "group"), S.ITEM_IDX, "left")
        group = F.when(F.col("group") >= 0, F.col("group")).otherwise(-2 - F.col(S.ITEM_IDX).cast("long"))
    else:
        group = -2 - F.col(S.ITEM_IDX).cast("long")
    items = universe.select(S.ITEM_IDX, group.alias("g")).cache()
    sizes = items.groupBy("g").agg(F.count("*").alias("n"))
    total = sizes.agg(F.sum(eff(F.col("n")))).first()[0] or 0
    lost = (rules.excluded_pairs(train).join(items, S.ITEM_IDX).groupBy(S.USER_IDX, "g").agg(F.count("*").alias("r"))
            .join(sizes, "g").groupBy(S.USER_IDX).agg(F.sum(eff(F.col("n")) - eff(F.col("n") - F.col("r"))).alias("lost")))
    users = train.select(S.USER_IDX).distinct().join(lost, S.USER_IDX, "left").fillna(0, ["lost"])
    return users.select(S.USER_IDX, F.greatest(F.least(F.lit(top_n), F.lit(total) - F.col("lost")), F.lit(0))
                        .cast("long").alias("possible"))


def users_frame(recs: DataFrame, train: DataFrame, n_items: int, top_n: int, k: int,
                published: DataFrame | None = None, possible: DataFrame | None = None) -> DataFrame:
    """Per user of ``train``: recommended, missing, already_played, overlap (see the module doc).

    recs, published: ``user_idx, item_idx, rank`` rows (published: the published model's
    recommendations for these users on this matrix's items; None: nothing to compare with).
    possible: ``possible_per_user`` under the run's rules (None: no rules)."""
    pairs = train.select(S.USER_IDX, S.ITEM_IDX)
    played = pairs.groupBy(S.USER_IDX).agg(F.count("*").alias("played"))
    top_n_recs = top(recs, top_n)
    got = top_n_recs.groupBy(S.USER_IDX).agg(F.count("*").alias("recommended"))
    again = top_n_recs.join(pairs, [S.USER_IDX, S.ITEM_IDX]).groupBy(S.USER_IDX).agg(
        F.count("*").alias("already_played"))
    users = (played.join(got, S.USER_IDX, "left").join(again, S.USER_IDX, "left")
             .fillna(0, ["recommended", "already_played"]))
    if possible is None:
        users = users.withColumn("possible", possible_without_rules(top_n, n_items))
    else:
        users = users.join(possible, S.USER_IDX, "left")
    users = users.withColumn("missing", F.col("possible") - F.col("recommended"))
    if published is None:
        return users.withColumn("overlap", F.lit(None).cast("double"))
    mine = top(recs, k).groupBy(S.USER_IDX).agg(F.collect_set(S.ITEM_IDX).alias("mine"))
    theirs = top(published, k).groupBy(S.USER_IDX).agg(F.collect_set(S.ITEM_IDX).alias("theirs"))
    overlap = mine.join(theirs, S.USER_IDX).select(
        S.USER_IDX, (F.size(F.array_intersect("mine", "theirs")) / F.size(F.array_union("mine", "theirs")))
        .alias("overlap"))
    return users.join(overlap, S.USER_IDX, "left")


def factors_frame(user_factors: DataFrame, item_factors: DataFrame) -> DataFrame:
    """One row per factor vector (``id, features``): side, norm, finite, norm_over_median."""
    sides = user_factors.select(F.lit("user").alias("side"), "id", S.FEATURES).unionByName(
        item_factors.select(F.lit("item").alias("side"), "id", S.FEATURES))
    norms = sides.select("side", "id", F.sqrt(F.aggregate(
        S.FEATURES, F.lit(0.0).cast("double"), lambda acc, x: acc + x.cast("double") * x.cast("double"))).alias("norm"))
    finite = ~(F.isnan("norm") | F.isnull("norm") | (F.col("norm") == float("inf")))
    norms = norms.withColumn("finite", finite)
    medians = norms.filter("finite").groupBy("side").agg(F.percentile_approx("norm", 0.5).alias("median"))
    # A zero median (a side of zero vectors) would make every ratio infinite: the ranking gate
    # refuses such a model anyway; here its ratio is measured against a tiny positive number.
    return norms.join(medians, "side", "left").select(
        "side", "id", "norm", "finite",
        F.when(F.col("finite"), F.col("norm") / F.greatest(F.col("median"), F.lit(1e-30))).alias("norm_over_median"))


def summary_frame(spark, recs: DataFrame, train: DataFrame, n_items: int, top_n: int) -> tuple[DataFrame, dict]:
    """One row: catalogue_coverage and popular_share of the top-N lists (and the row as a dict)."""
    slots = top(recs, top_n).cache()
    n_popular = max(1, math.ceil(POPULAR_FRACTION * n_items))
    popular = (train.groupBy(S.ITEM_IDX).agg(F.countDistinct(S.USER_IDX).alias("listeners"))
               .orderBy(F.col("listeners").desc(), S.ITEM_IDX).limit(n_popular))
    n_slots = slots.count()
    popular_slots = slots.join(F.broadcast(popular), S.ITEM_IDX).count()
    row = {
        "catalogue_coverage": slots.select(S.ITEM_IDX).distinct().count() / max(n_items, 1),
        "popular_share": popular_slots / n_slots if n_slots else 0.0,
        "popular_items": n_popular,
        "slots": n_slots,
    }
    slots.unpersist()
    schema = "catalogue_coverage double, popular_share double, popular_items long, slots long"
    return spark.createDataFrame([tuple(row.values())], schema), row
