"""Warm start across days: a day's ALS fit from the previous day's model against a fit from random.

For the last ``--days`` days D of a data set, a daily run as the DAG makes it, in pandas/numpy:
the training matrix from every day before D (the 90-day window covers them all), plays shorter
than ``skip_seconds`` are skips, support filters as ``spark_jobs.confidence.filter_support``
(items with >= 2 listeners, then users with >= 2 items), strength ``f(r)`` and the fit's values
from ``RunParams()`` (log confidence, epsilon 5, alpha 1, reg 0.1 per rating, rank 32, 10
iterations, 3 CG steps, seed 42; no tuning); held out: what training users played on D among
training items and had not played in training. Ids are stable across days (new ids of a run,
sorted, numbered after the largest in use, as ``spark_jobs.lib.id_index``), so a model's rows
map to the next day's matrix by id.

Per day, fits with the CG kernels on the driver (``spark_jobs.lib.als_local``: the kernels,
start per id and objective of the Spark strategy ``als_cg``):

* **cold**: 10 iterations from random, as every run trains today, from each seed of
  ``COLD_SEEDS`` (42, 1042, 2042, 3042, 4042: a fit with seed s starts users from stream s and
  items from s + 1, so consecutive seeds would share streams). The reference is the cold
  model's expected quality: each evaluated user's AP@10 averaged over the seeds, MAP@10 their
  mean; the single seeds' MAP@10 against that mean shows how far one random start moves it.
  Seed 42 is the cold run the chain, the churn, the seconds and "cold stopped by the rule" use;
* **warm**: from the previous day's warm model (the first day: from the cold model of the day
  before, itself a cold run), 10 iterations, MAP@10 and the objective recorded after each. The
  stopping rule (``music_recs.convergence``, ``DEFAULT_TOL``) picks the iteration the DAG would
  stop at; that iteration's model is what the DAG publishes and the next day starts from.

The held-out day only measures: the objective alone decides the stop, and nothing is chosen on
held-out scores. Reported per day and as medians: the cold mean's MAP@10 (users evaluated), the
lowest and highest single seed / mean, warm MAP@10 at the stop, its ratio to the cold mean with
a 95% paired per-user bootstrap interval (``quality_gate.paired_bootstrap``, warm AP against the
seed-averaged AP), the first warm iteration with MAP@10 >= 0.99 x the cold mean, the stop
iteration, fit seconds (cold seed 42, 10 iterations; warm up to the stop, its objective
included; scoring excluded), and churn: mean Jaccard overlap of each user's top 10 between
consecutive days' models, cold chain (seed 42) and warm chain, over users in both days'
matrices (the first day's previous model is the source run's, in both chains).

A second table puts other models against the same cold mean (median and lowest MAP@10 ratio,
days within 1%, a pooled paired interval over every evaluated user of every day): the warm fit
as tol 0.01 and 0.002 would have stopped it on the same curves (later days still start from the
``DEFAULT_TOL`` chain's models), run all 10 iterations, and at 0 iterations (the previous
model's factors as they are); cold (seed 42) stopped by the rule; and each cold seed alone, the
noise floor (each is one of the five averaged, so its distance to the mean is about
sqrt(4/5) of an independent fit's). The Spark job's cost per iteration is what the saved
iterations multiply; the seconds here are the driver's, on small matrices.

Data: ``generated`` (``music_recs_dev.sample_data``, 15 days x ``--plays-per-day`` plays, the
catalogue ``CatalogueSpec.for_plays_per_day``) and ``movielens`` (MovieLens-100K from
``music_recs_dev.public_data``, ratings in time order cut into ``--movielens-days`` days of
equal size, default 15, a rating r = r plays). ``--days`` is measured on each data set chosen;
the day before the first measured one is the source run, so ``--days`` <= total days - 2.

Run: ``.venv/bin/python bench/warm_start.py [--dataset generated|movielens|both] [--days 7]
[--movielens-days 15] [--json PATH]`` (prints the tables only; ``--verbose`` adds progress on
stderr). On 2 shared cores: generated about 1 min; ``--dataset movielens --movielens-days 30
--days 21`` about 20 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from music_recs import schema as S  # noqa: E402
from music_recs.confidence import strength  # noqa: E402
from music_recs.convergence import DEFAULT_TOL, converged  # noqa: E402
from music_recs.metrics import user_metrics  # noqa: E402
from music_recs.params import RunParams  # noqa: E402
from music_recs.quality_gate import paired_bootstrap  # noqa: E402
from spark_jobs.lib import als_local  # noqa: E402
from spark_jobs.lib.cg_kernels import start_factors  # noqa: E402

K = 10
GENERATED_DAYS = 15
MOVIELENS_DAYS = 15  # default cut of MovieLens-100K (--movielens-days)
COLD_SEEDS = (42, 1042, 2042, 3042, 4042)  # seed s starts users from stream s, items from s + 1
FIRST_DAY = dt.date(2026, 11, 1)
TARGET = 0.99  # warm MAP@10 within 1% of cold's
OTHER_TOLS = (0.01, 0.002)
USER, ITEM = "user", "item"


def log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------
def daily_plays(dataset: str, plays_per_day: int, total_days: int) -> list[pd.DataFrame]:
    """``total_days`` frames of (user, item, ms_played), oldest first."""
    days = [FIRST_DAY + dt.timedelta(days=d) for d in range(total_days)]
    if dataset == "movielens":
        from music_recs_dev.public_data import as_stream_days, movielens_100k

        ratings, titles = movielens_100k()
        frames = as_stream_days(ratings, titles, FIRST_DAY, total_days)
        frames = [frames[d] for d in days]
    else:
        from music_recs_dev.sample_data import Catalogue, CatalogueSpec, generate_day

        catalogue = Catalogue(CatalogueSpec.for_plays_per_day(plays_per_day))
        frames = [generate_day(d, plays_per_day, catalogue) for d in days]
    return [f[[S.USER_ID, S.TRACK_ID, S.MS_PLAYED]].set_axis([USER, ITEM, S.MS_PLAYED], axis=1) for f in frames]


class IdIndex:
    """Append-only string id -> int: a run's new ids, sorted, numbered after the largest in use."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def extend(self, values) -> None:
        for value in sorted(set(values) - self.ids.keys()):
            self.ids[value] = len(self.ids)

    def of(self, values: pd.Series) -> np.ndarray:
        return values.map(self.ids).to_numpy(np.int64)


@dataclass
class DayRun:
    """One day's matrix (global ids) and its held-out truth."""

    day: int
    matrix: als_local.LocalMatrix
    truth: dict[int, set]
    nnz: int


def day_run(day: int, frames: list[pd.DataFrame], run: RunParams, users: IdIndex, items: IdIndex) -> DayRun:
    """The matrix of the run for ``day`` (trained on every earlier day) and its held-out pairs."""
    skip_ms = run.skip_seconds * 1000
    plays = pd.concat(frames[:day], ignore_index=True)
    plays["is_play"] = plays[S.MS_PLAYED] >= skip_ms
    pairs = plays.groupby([USER, ITEM], sort=False)["is_play"].sum().rename("plays").reset_index()
    positive = pairs[pairs["plays"] > 0]
    # spark_jobs.confidence.filter_support: items first, then users, one pass each.
    listeners = positive.groupby(ITEM)[USER].transform("size")
    positive = positive[listeners >= run.min_item_users]
    per_user = positive.groupby(USER)[ITEM].transform("size")
    positive = positive[per_user >= run.min_user_items]
    users.extend(positive[USER])
    items.extend(positive[ITEM])
    u, i = users.of(positive[USER]), items.of(positive[ITEM])
    r = positive["plays"].to_numpy(np.float64)
    values = np.asarray(strength(r, run.confidence, np.log1p), np.float32)
    matrix = als_local.LocalMatrix.from_pairs(u, i, values)

    held = frames[day]
    held = held.loc[held[S.MS_PLAYED] >= skip_ms, [USER, ITEM]].drop_duplicates()
    held = held[held[USER].isin(set(positive[USER])) & held[ITEM].isin(set(positive[ITEM]))]
    hu, hi = users.of(held[USER]), items.of(held[ITEM])
    trained = set(zip(u.tolist(), i.tolist()))
    truth: dict[int, set] = {}
    for a, b in zip(hu.tolist(), hi.tolist()):
        if (a, b) not in trained:
            truth.setdefault(a, set()).add(b)
    return DayRun(day, matrix, truth, len(positive))


# --- fits and scores -------------------------------------------------------------------------
def fit_args(run: RunParams, seed: int = 42) -> tuple:
    r = run.recipe
    return (r.rank, run.max_iter, r.reg, lambda s: 1.0 + r.alpha * s, r.scale_reg, als_local.DEFAULT_CG_STEPS, seed)


def per_user_map(day: DayRun, X, Y) -> np.ndarray:
    """AP@K per evaluated user (sorted ids; the reference metrics); a user without a list scores 0."""
    recs = als_local.recommend(day.matrix, X, Y, day.truth, K)
    return np.array([user_metrics(recs.get(u, []), day.truth[u], K)["map"] for u in sorted(day.truth)])


def top_lists(day: DayRun, X, Y) -> dict[int, list]:
    return als_local.recommend(day.matrix, X, Y, day.matrix.by_user.ids, K)


def churn(previous: dict[int, list], current: dict[int, list]) -> tuple[float, int]:
    """Mean Jaccard overlap of top-K lists of users in both, and how many users."""
    common = previous.keys() & current.keys()
    if not common:
        return float("nan"), 0
    overlaps = [len(set(previous[u]) & set(current[u])) / len(set(previous[u]) | set(current[u])) for u in common]
    return float(np.mean(overlaps)), len(common)


def stop_iteration(losses: list[float], tol: float, max_iter: int) -> int:
    """Where ``convergence.converged`` stops a fit with these per-iteration losses."""
    for t in range(1, len(losses) + 1):
        if converged(losses[:t], tol):
            return t
    return max_iter


def known(day: DayRun, X, Y) -> tuple:
    return (day.matrix.by_user.ids, X), (day.matrix.by_item.ids, Y)


def first_reaching(curve: list[float], target: float) -> int | None:
    return next((t for t, v in enumerate(curve, start=1) if v >= target), None)


def traced(day: DayRun, args: tuple, init=None):
    """A fit with AP@K per user and the objective recorded after every iteration; the models kept."""
    states, scores = [], []

    def record(t, X, Y, loss):
        states.append((X, Y))
        scores.append(per_user_map(day, X, Y))

    trace = als_local.fit_trace(day.matrix, *args, init=init, on_iteration=record)
    return trace, states, scores


def bench_dataset(dataset: str, n_days: int, plays_per_day: int, total_days: int, verbose: bool) -> dict:
    run = RunParams()
    args = fit_args(run)
    first = total_days - n_days
    if first < 2:
        raise SystemExit(f"{dataset}: --days {n_days} of {total_days}: at most {total_days - 2} "
                         f"(the source run needs training days)")
    frames = daily_plays(dataset, plays_per_day, total_days)
    users, items = IdIndex(), IdIndex()

    source = day_run(first - 1, frames, run, users, items)
    cold_src = als_local.fit_trace(source.matrix, *args)
    prev_cold_lists = prev_warm_lists = top_lists(source, cold_src.X, cold_src.Y)
    carried = known(source, cold_src.X, cold_src.Y)
    log(verbose, f"{dataset}: source day {first - 1}: {len(source.matrix.by_user.ids)} users, "
                 f"{len(source.matrix.by_item.ids)} items, {source.nnz} pairs")
    days = []
    for d in range(first, total_days):
        day = day_run(d, frames, run, users, items)
        m = day.matrix
        cold = als_local.fit_trace(m, *args)  # as the DAG trains today: no objective computed
        seed42_scores = per_user_map(day, cold.X, cold.Y)
        assert abs(als_local.score(m, cold.X, cold.Y, day.truth, K)["map"] - float(seed42_scores.mean())) < 1e-9
        # Cold's own curve: the same fit again (deterministic), now with the objective and scores.
        cold_traced, _, cold_curve = traced(day, args)
        np.testing.assert_array_equal(cold_traced.X, cold.X)
        # The reference: each user's AP@K averaged over cold fits from every seed.
        seed_scores = {COLD_SEEDS[0]: seed42_scores}
        for seed in COLD_SEEDS[1:]:
            other = als_local.fit_trace(m, *fit_args(run, seed=seed))
            seed_scores[seed] = per_user_map(day, other.X, other.Y)
        cold_scores = np.mean(np.stack(list(seed_scores.values())), axis=0)
        cold_map = float(cold_scores.mean())
        seed_ratios = {seed: float(a.mean()) / cold_map if cold_map else float("nan")
                       for seed, a in seed_scores.items()}

        start = (start_factors(m.by_user.ids, run.recipe.rank, 42, carried[0]),
                 start_factors(m.by_item.ids, run.recipe.rank, 43, carried[1]))
        warm, states, warm_curve = traced(day, args, init=carried)
        stop = stop_iteration(warm.losses, DEFAULT_TOL, run.max_iter)
        X, Y = states[stop - 1]
        warm_scores = warm_curve[stop - 1]
        interval = paired_bootstrap(warm_scores, cold_scores)

        cold_lists, warm_lists = top_lists(day, cold.X, cold.Y), top_lists(day, X, Y)
        churn_cold, churn_users = churn(prev_cold_lists, cold_lists)
        churn_warm, _ = churn(prev_warm_lists, warm_lists)
        prev_cold_lists, prev_warm_lists = cold_lists, warm_lists
        new_rows = {"users": float(1 - np.isin(m.by_user.ids, carried[0][0]).mean()),
                    "items": float(1 - np.isin(m.by_item.ids, carried[1][0]).mean())}
        carried = known(day, X, Y)

        cold_stop = stop_iteration(cold_traced.losses, DEFAULT_TOL, run.max_iter)
        variants = {  # per-user AP@K and iterations of each model compared with cold
            f"warm, tol {DEFAULT_TOL} (DEFAULT_TOL)": (warm_scores, stop),
            **{f"warm, tol {tol}": (warm_curve[stop_iteration(warm.losses, tol, run.max_iter) - 1],
                                    stop_iteration(warm.losses, tol, run.max_iter)) for tol in OTHER_TOLS},
            "warm, all 10 iterations": (warm_curve[-1], run.max_iter),
            "warm, 0 iterations (the previous model's factors)": (per_user_map(day, *start), 0),
            f"cold seed 42, stopped by tol {DEFAULT_TOL}": (cold_curve[cold_stop - 1], cold_stop),
            **{f"cold seed {seed} alone (10 iterations)": (a, run.max_iter) for seed, a in seed_scores.items()},
        }
        warm_means = [float(a.mean()) for a in warm_curve]
        row = {
            "day": (FIRST_DAY + dt.timedelta(days=d)).isoformat(), "users": len(m.by_user.ids),
            "items": len(m.by_item.ids), "nnz": day.nnz, "users_evaluated": len(day.truth),
            "new_rows": new_rows, "cold_map": cold_map, "cold_seed_maps": {str(k): float(a.mean()) for k, a in
                                                                           seed_scores.items()},
            "seed_ratio_min": min(seed_ratios.values()), "seed_ratio_max": max(seed_ratios.values()),
            "warm_map_at_stop": warm_means[stop - 1], "stop": stop,
            "ratio": warm_means[stop - 1] / cold_map if cold_map else float("nan"),
            "ratio_interval": [1 + v for v in interval["relative_interval"]],
            "difference_interval": interval["difference_interval"],
            "first_within_1pct": first_reaching(warm_means, TARGET * cold_map),
            "cold_seconds": sum(cold.seconds), "warm_seconds_to_stop": sum(warm.seconds[:stop]),
            "warm_seconds_per_iteration": warm.seconds, "cold_seconds_per_iteration": cold.seconds,
            "churn_cold": churn_cold, "churn_warm": churn_warm, "churn_users": churn_users,
            "warm_curve": warm_means, "warm_losses": warm.losses,
            "cold_curve": [float(a.mean()) for a in cold_curve], "cold_losses": cold_traced.losses,
            "models": {name: {"iterations": it, "ratio": float(a.mean()) / cold_map if cold_map else float("nan")}
                       for name, (a, it) in variants.items()},
            "_cold_scores": cold_scores, "_variants": variants,
        }
        days.append(row)
        log(verbose, f"{dataset} {row['day']}: cold mean {cold_map:.4f} (seeds {min(seed_ratios.values()):.3f}-"
                     f"{max(seed_ratios.values()):.3f}), warm {row['warm_map_at_stop']:.4f} at {stop}, "
                     f"curve {[round(v, 4) for v in warm_means]}")
    return {"dataset": dataset, "source_day": (FIRST_DAY + dt.timedelta(days=first - 1)).isoformat(),
            "total_days": total_days, "cold_seeds": list(COLD_SEEDS),
            "plays_per_day": plays_per_day if dataset == "generated" else None, "days": days,
            "summary": summarize(days)}


def summarize(days: list[dict]) -> dict:
    med = statistics.median
    reached = [d["first_within_1pct"] for d in days]
    cold = np.concatenate([d["_cold_scores"] for d in days])
    models = {}
    for name in days[0]["_variants"]:
        ratios = [float(d["_variants"][name][0].mean()) / d["cold_map"] for d in days]
        iterations = [d["_variants"][name][1] for d in days]
        pooled = paired_bootstrap(np.concatenate([d["_variants"][name][0] for d in days]), cold)
        models[name] = {"iterations": med(iterations), "iterations_sum": sum(iterations), "ratio": med(ratios),
                        "min_ratio": min(ratios), "days_within_1pct": sum(r >= TARGET for r in ratios),
                        "pooled_ratio": 1 + pooled["relative"],
                        "pooled_interval": [1 + v for v in pooled["relative_interval"]]}
    default = models[f"warm, tol {DEFAULT_TOL} (DEFAULT_TOL)"]
    singles = [t for name, t in models.items() if name.startswith("cold seed") and "alone" in name]
    return {
        "cold_map": med(d["cold_map"] for d in days), "warm_map_at_stop": med(d["warm_map_at_stop"] for d in days),
        "ratio": med(d["ratio"] for d in days), "min_ratio": min(d["ratio"] for d in days),
        "days_within_1pct_at_stop": default["days_within_1pct"],
        "pooled_ratio": default["pooled_ratio"], "pooled_interval": default["pooled_interval"],
        "pooled_users_x_days": len(cold),
        "seed_ratio_min": min(d["seed_ratio_min"] for d in days),
        "seed_ratio_max": max(d["seed_ratio_max"] for d in days),
        "seed_ratio_median_min": med(d["seed_ratio_min"] for d in days),
        "seed_ratio_median_max": med(d["seed_ratio_max"] for d in days),
        "seed_pooled_min": min(t["pooled_ratio"] for t in singles),
        "seed_pooled_max": max(t["pooled_ratio"] for t in singles),
        "stop_sum": sum(d["stop"] for d in days),
        "first_within_1pct": med(r if r is not None else float("inf") for r in reached),
        "days_never_within_1pct": sum(r is None for r in reached),
        "stop": med(d["stop"] for d in days), "cold_seconds": med(d["cold_seconds"] for d in days),
        "warm_seconds_to_stop": med(d["warm_seconds_to_stop"] for d in days),
        "churn_cold": med(d["churn_cold"] for d in days), "churn_warm": med(d["churn_warm"] for d in days),
        "churn_users": med(d["churn_users"] for d in days), "users_evaluated": med(d["users_evaluated"] for d in days),
        "models": models,
    }


# --- report ----------------------------------------------------------------------------------
def fmt_iter(v) -> str:
    return "never" if v is None or v == float("inf") else f"{v:g}"


def table(result: dict) -> str:
    first = result["days"][0]
    last = result["days"][-1]
    n_seeds = len(result["cold_seeds"])
    lines = [f"**{result['dataset']}** ({result['total_days']} days, {len(result['days'])} measured; first day "
             f"{first['users']} users x {first['items']} items, {first['nnz']} pairs; last day {last['users']} x "
             f"{last['items']}, {last['nnz']}; source of the first warm start: the cold run (seed 42) of "
             f"{result['source_day']}; cold = mean of seeds {', '.join(map(str, result['cold_seeds']))})", "",
             f"| day | users evaluated | cold MAP@10, mean of {n_seeds} seeds | single seed / mean: min-max "
             "| warm MAP@10 at stop | ratio to cold mean [95% interval] "
             "| first iter >= 0.99 x cold mean | stop iter | cold s (seed 42, 10 it) | warm s (to stop) "
             "| churn cold | churn warm | churn users |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in result["days"]:
        lo, hi = d["ratio_interval"]
        lines.append(f"| {d['day']} | {d['users_evaluated']} | {d['cold_map']:.4f} | "
                     f"{d['seed_ratio_min']:.3f}-{d['seed_ratio_max']:.3f} | {d['warm_map_at_stop']:.4f} | "
                     f"{d['ratio']:.3f} [{lo:.3f}, {hi:.3f}] | {fmt_iter(d['first_within_1pct'])} | {d['stop']} | "
                     f"{d['cold_seconds']:.3f} | {d['warm_seconds_to_stop']:.3f} | {d['churn_cold']:.3f} | "
                     f"{d['churn_warm']:.3f} | {d['churn_users']} |")
    s = result["summary"]
    lo, hi = s["pooled_interval"]
    lines.append(f"| **median** | {s['users_evaluated']:g} (sum {s['pooled_users_x_days']}) | {s['cold_map']:.4f} | "
                 f"{s['seed_ratio_median_min']:.3f}-{s['seed_ratio_median_max']:.3f} (all days "
                 f"{s['seed_ratio_min']:.3f}-{s['seed_ratio_max']:.3f}) | {s['warm_map_at_stop']:.4f} | "
                 f"{s['ratio']:.3f} (pooled {s['pooled_ratio']:.3f} [{lo:.3f}, {hi:.3f}]) | "
                 f"{fmt_iter(s['first_within_1pct'])} | {s['stop']:g} | {s['cold_seconds']:.3f} | "
                 f"{s['warm_seconds_to_stop']:.3f} | {s['churn_cold']:.3f} | {s['churn_warm']:.3f} | "
                 f"{s['churn_users']:g} |")
    n = len(result["days"])
    lines += ["", f"| model, against the cold mean ({n_seeds} seeds, 10 iterations each) | iterations: median (sum "
              f"over {n} days; one cold fit {10 * n}) | median MAP@10 ratio | lowest | days >= 0.99 "
              f"| pooled ratio [95% interval] |",
              "|---|---|---|---|---|---|"]
    for name, t in s["models"].items():
        lo, hi = t["pooled_interval"]
        lines.append(f"| {name} | {t['iterations']:g} ({t['iterations_sum']}) | {t['ratio']:.3f} | "
                     f"{t['min_ratio']:.3f} | {t['days_within_1pct']}/{n} | "
                     f"{t['pooled_ratio']:.3f} [{lo:.3f}, {hi:.3f}] |")
    return "\n".join(lines)


def verdict(results: list[dict]) -> str:
    """Per data set: holds when the pooled ratio of warm at its stop to the cold mean is >= 0.99 and
    warm takes fewer iterations than a cold fit's 10 (median stop); says whether the interval
    excludes a loss of more than 1%."""
    met, missed, parts = [], [], []
    for r in results:
        s = r["summary"]
        lo, hi = s["pooled_interval"]
        n = len(r["days"])
        (met if s["pooled_ratio"] >= TARGET and s["stop"] < 10 else missed).append(r["dataset"])
        parts.append(f"{r['dataset']}: pooled {s['pooled_ratio']:.3f} x the cold mean [{lo:.3f}, {hi:.3f}] over "
                     f"{s['pooled_users_x_days']} user-days ({n} days); the interval "
                     f"{'excludes' if lo >= TARGET else 'does not exclude'} a loss of more than 1%; warm stops at "
                     f"{s['stop']:g} (median; {s['stop_sum']} iterations against {10 * n}); single cold seeds "
                     f"pooled {s['seed_pooled_min']:.3f}-{s['seed_pooled_max']:.3f} x the mean")
    head = ("holds on " + " and ".join(met)) if met else ""
    head += ("; " if met and missed else "") + (("does not hold on " + " and ".join(missed)) if missed else "")
    return head + " (" + "; ".join(parts) + ")"


def public(result: dict) -> dict:
    """The JSON: every number but the per-user arrays."""
    return {**result, "days": [{k: v for k, v in d.items() if not k.startswith("_")} for d in result["days"]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["generated", "movielens", "both"], default="both")
    ap.add_argument("--days", type=int, default=7, help="days measured on each data set (the run before them is "
                                                         "the first source)")
    ap.add_argument("--movielens-days", type=int, default=MOVIELENS_DAYS,
                    help="MovieLens-100K cut into this many days of equal size")
    ap.add_argument("--plays-per-day", type=int, default=20_000, help="generated data only")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)

    # Compile the kernels first, so no fit's seconds include numba's compilation.
    tiny = als_local.LocalMatrix.from_pairs(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.ones(4, np.float32))
    als_local.score(tiny, *als_local.fit(tiny, 4, 2, 0.1, lambda s: 1 + s, tol=DEFAULT_TOL), {0: {1}}, K)

    datasets = ["generated", "movielens"] if args.dataset == "both" else [args.dataset]
    results = []
    for name in datasets:
        t0 = time.monotonic()
        total = args.movielens_days if name == "movielens" else GENERATED_DAYS
        results.append(bench_dataset(name, args.days, args.plays_per_day, total, args.verbose))
        log(args.verbose, f"{name}: {time.monotonic() - t0:.0f}s")
    for r in results:
        print(table(r) + "\n")
    print(f"Warm reaches the cold model's expected MAP@10 within 1% in fewer iterations: {verdict(results)}.")
    if args.json:
        Path(args.json).write_text(json.dumps({"default_tol": DEFAULT_TOL, "argv": sys.argv[1:] if argv is None
                                               else list(argv), "results": [public(r) for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
