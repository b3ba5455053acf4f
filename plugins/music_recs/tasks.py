"""What each task of ``music_recs_daily`` does. The DAG file only wires these together.

Every function takes plain values (the run plan, a store) so it can be called and tested
without a scheduler. The run plan is a JSON-able dict made once by ``plan_run`` and handed
to every later task through XCom, so all tasks of a run agree on the day, paths and params.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import logging
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from music_recs import __version__
from music_recs.config import PipelineConfig
from music_recs.params import RunParams
from music_recs.publish import ARTIFACTS, PublishError, publication_prefix, publish, read_latest
from music_recs.quality_gate import QualityGateFailed, decide
from music_recs.report import publish_report
from music_recs.s3 import S3Store
from music_recs.sizing import shuffle_partitions, stage_memory_mb
from music_recs.executor_sizing import (DEFAULT_BROADCAST_BUDGET_MB, MatrixShape, cluster_from_env, factor_exchange,
                                       per_executor_limit_mb, size_als, size_evaluate)
from music_recs.spark_submit import REPO_ROOT, executor_args, run_spark_job, run_with_resubmission, spark_master
from music_recs.validation import check_run_conf_names_no_location, safe_key_part

log = logging.getLogger(__name__)


SIMILAR_ITEMS = 20  # most similar items published per item
# In-memory size of input files, for sizing: gzip'd JSON lines expand about 8x, the lake's
# plays Parquet (dictionary-encoded ids) about 4x once decoded into rows.
GZIP_JSON_EXPANSION = 8
PARQUET_EXPANSION = 4


class NoLandingData(RuntimeError):
    pass


class ValidationFailed(RuntimeError):
    pass


class TooManyBadRows(RuntimeError):
    pass


def logical_day(data_interval_start: dt.datetime) -> dt.date:
    """The partition a run processes: the day its data interval starts (UTC), never "now"."""
    if data_interval_start is None:
        raise ValueError("the run has no data interval, so no day to process: it was triggered without a logical "
                         "date; trigger it with one (the trigger form's default, `airflow dags trigger -l ...`)")
    return data_interval_start.astimezone(dt.timezone.utc).date()


def plan_run(params: dict, data_interval_start: dt.datetime, run_id: str, cfg: PipelineConfig) -> dict:
    check_run_conf_names_no_location(params, {f.name for f in dataclasses.fields(PipelineConfig)})
    run = RunParams.from_params(dict(params))
    day = logical_day(data_interval_start).isoformat()
    run_key = safe_key_part(run_id)
    lake = cfg.lake_uri.rstrip("/")
    if urlparse(lake).scheme not in ("", "file"):
        raise ValueError(f"lake_uri {lake!r}: this version stages landing files and publishes from a local lake; "
                         "set MUSIC_RECS_LAKE_URI to a local folder")
    run_dir = f"{lake}/runs/dt={day}/run={run_key}"
    plan = {
        "day": day,
        "run_id": run_id,
        "run_key": run_key,
        "params": run.as_dict(),
        "config": dataclasses.asdict(cfg),
        "paths": {
            "lake": lake,
            "landing_staging": f"{lake}/_landing/dt={day}",
            "quarantine": f"{lake}/quarantine/dt={day}",
            # The run's own: the matrix depends on its params (spark_jobs/confidence.py).
            "matrices": f"{run_dir}/matrix",
            "matrix": f"{run_dir}/matrix/granularity={run.granularity}",
            "run_dir": run_dir,
            "model": f"{run_dir}/model",
            "results": f"{run_dir}/results",
            "checkpoints": f"{lake}/_checkpoints/dt={day}/run={run_key}",
        },
        "landing": f"s3://{cfg.raw_bucket}/{cfg.landing_key_prefix(day)}",
    }
    log.info("run %s processes dt=%s with %s", run_id, day, run.as_dict())
    return plan


def config_of(plan: dict) -> PipelineConfig:
    return PipelineConfig(**plan["config"])


def landing_files(store: S3Store, cfg: PipelineConfig, day: str) -> list:
    return [o for o in store.list_objects(cfg.raw_bucket, cfg.landing_key_prefix(day)) if not o.key.endswith("/")]


def stage_landing(store: S3Store, plan: dict) -> list[str]:
    """Copy the day's landing files next to the lake for Spark (no S3 connector in local mode)."""
    cfg = config_of(plan)
    dest = plan["paths"]["landing_staging"]
    shutil.rmtree(dest, ignore_errors=True)  # a rerun must not see a previous copy
    files = store.download_prefix(cfg.raw_bucket, cfg.landing_key_prefix(plan["day"]), dest)
    if not files:
        raise NoLandingData(f"no stream logs under {plan['landing']}; nothing to ingest")
    log.info("staged %d landing file(s) from %s", len(files), plan["landing"])
    return files


def _result(plan: dict, stage: str) -> str:
    return os.path.join(plan["paths"]["results"], f"{stage}.json")


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _submit_dir(plan: dict) -> str:
    return os.path.join(plan["paths"]["lake"], "_submit")


def _spark(plan: dict, job: str, args: list[str], input_bytes: int = 0, conf: dict | None = None, **kwargs) -> dict:
    """Submit ``job``; shuffle partitions and (local mode) memory sized to its in-memory input."""
    cfg = config_of(plan)
    conf = {"spark.sql.shuffle.partitions": str(shuffle_partitions(input_bytes)), **(conf or {})}
    if "driver_memory" not in kwargs and spark_master(cfg.spark_conn_id).startswith("local"):
        limit = per_executor_limit_mb(cluster_from_env(local=True))
        kwargs["driver_memory"] = f"{stage_memory_mb(input_bytes, limit)}m"
    return run_spark_job(job, args, _result(plan, job), conn_id=cfg.spark_conn_id, conf=conf,
                         work_dir=_submit_dir(plan), **kwargs)


def ingest(store: S3Store, plan: dict) -> dict:
    stage_landing(store, plan)
    staged = plan["paths"]["landing_staging"]
    cfg = config_of(plan)
    result = _spark(plan, "ingest", ["--day", plan["day"], "--input", staged, "--lake", plan["paths"]["lake"],
                                     "--format", cfg.source_format],
                    input_bytes=GZIP_JSON_EXPANSION * _folder_bytes(staged))
    log.info("ingest dt=%s: read %d, accepted %d, quarantined %d, duplicates %d (formats %s)", plan["day"],
             result["rows_read"], result["rows_accepted"], result["rows_quarantined"], result["duplicates_removed"],
             result.get("formats"))
    # Quarantined rows are stored before any verdict, so they are kept even when the run stops.
    result["quarantine_uri"] = upload_quarantine(store, plan)
    check_quarantine_share(result, cfg.max_quarantine_fraction, plan["day"])
    return result


def check_quarantine_share(result: dict, limit: float, day: str) -> None:
    """Fail when more than ``limit`` of the day's rows broke a row-level check, naming the checks."""
    read, bad = result["rows_read"], result["rows_quarantined"]
    share = bad / read if read else 0.0
    if share > limit:
        worst = ", ".join(f"{reason}: {n} rows" for reason, n in
                          sorted(result["quarantine_reasons"].items(), key=lambda kv: -kv[1]))
        raise TooManyBadRows(
            f"dt={day}: {bad} of {read} rows ({share:.1%}) failed row-level checks, above the "
            f"{limit:.0%} threshold ({worst}); quarantined rows are in {result.get('quarantine_uri')}"
        )


def upload_quarantine(store: S3Store, plan: dict) -> str:
    """Quarantined rows go to S3 under a fixed name per day, so a rerun replaces them."""
    cfg = config_of(plan)
    parts = sorted(glob.glob(os.path.join(plan["paths"]["quarantine"], "part-*")))
    body = b"".join(Path(p).read_bytes() for p in parts)
    key = f"{cfg.quarantine_key_prefix(plan['day'])}quarantine.jsonl"
    store.client.put_object(Bucket=cfg.raw_bucket, Key=key, Body=body)
    return f"s3://{cfg.raw_bucket}/{key}"


def validate(plan: dict) -> dict:
    cfg = config_of(plan)
    docs_dir = f"{plan['paths']['run_dir']}/data_docs"
    result = _spark(plan, "validate", ["--day", plan["day"], "--lake", plan["paths"]["lake"],
                                       "--suite", str(REPO_ROOT / "expectations" / "stream_logs_daily.json"),
                                       "--summary-suite", str(REPO_ROOT / "expectations" / "stream_logs_day_summary.json"),
                                       "--ingest-result", _result(plan, "ingest"),
                                       "--max-quarantine-fraction", str(cfg.max_quarantine_fraction),
                                       "--docs-dir", docs_dir],
                    input_bytes=PARQUET_EXPANSION * _folder_bytes(f"{plan['paths']['lake']}/plays/dt={plan['day']}"))
    log.info("GX Data Docs for dt=%s: file://%s", plan["day"], result["data_docs"])
    if not result["success"]:
        failed = "; ".join(
            f"{c['expectation']}({c['column'] or ''}): {c['unexpected_count'] if c['unexpected_count'] is not None else c['observed_value']}"
            for c in result["failed"]
        )
        raise ValidationFailed(f"dt={plan['day']} failed {len(result['failed'])} expectation(s): {failed}; "
                               f"Data Docs: file://{result['data_docs']}")
    log.info("validation dt=%s: %d expectations passed", plan["day"], len(result["checks"]))
    return result


def build_confidence(plan: dict) -> dict:
    p = plan["params"]
    result = _spark(plan, "confidence", [
        "--day", plan["day"], "--lake", plan["paths"]["lake"],
        "--window-days", str(p["window_days"]), "--holdout-days", str(p["holdout_days"]),
        "--function", p["confidence_function"], "--alpha", str(p["alpha"]), "--epsilon", str(p["epsilon"]),
        "--half-life-days", str(p["half_life_days"]), "--skip-ms", str(p["skip_seconds"] * 1000),
        "--min-user-items", str(p["min_user_items"]), "--min-item-users", str(p["min_item_users"]),
        "--granularity", p["granularity"], "--out", plan["paths"]["matrices"],
    ], input_bytes=PARQUET_EXPANSION * _folder_bytes(f"{plan['paths']['lake']}/plays"))
    stats = result["stats"][p["granularity"]]
    if stats["nnz"] == 0:
        raise ValueError(f"the {p['granularity']} matrix for dt={plan['day']} is empty after filtering; "
                         "lower min_user_items/min_item_users or widen window_days")
    log.info("matrix %s dt=%s: %d users x %d items, %d non-zeros", p["granularity"], plan["day"],
             stats["users"], stats["items"], stats["nnz"])
    return result


def broadcast_budget_mb() -> int:
    """Factors up to this size are broadcast (training's CG strategy, evaluation's scoring)."""
    return int(os.environ.get("MUSIC_RECS_BROADCAST_BUDGET_MB", DEFAULT_BROADCAST_BUDGET_MB))


def train(plan: dict, matrix: dict) -> dict:
    """spark-submit ALS with settings sized to the matrix; failed attempts are classified and resubmitted."""
    p = plan["params"]
    cfg = config_of(plan)
    stats = matrix["stats"][p["granularity"]]
    local = spark_master(cfg.spark_conn_id).startswith("local")
    cluster = cluster_from_env(local)
    strategy = p["strategy"]
    strategy_args = ["--strategy", strategy]
    budget = broadcast_budget_mb()
    sizing = size_als(MatrixShape(stats["users"], stats["items"], stats["nnz"], p["rank"]), cluster,
                      strategy=strategy, broadcast_budget_mb=budget)
    log.info("sizing for %d users x %d items, %d ratings, rank %d, %s on %s: %s", stats["users"], stats["items"],
             stats["nnz"], p["rank"], strategy, cluster, sizing.as_dict())
    if strategy == "cg":
        exchange = factor_exchange(stats["users"], stats["items"], p["rank"], budget)
        log.info("CG ALS factor exchange (broadcast budget %d MiB): users by %s, items by %s", budget,
                 exchange["user"], exchange["item"])
        strategy_args += ["--user-exchange", exchange["user"], "--item-exchange", exchange["item"],
                          "--broadcast-budget-mb", str(budget)]

    def args(s):
        return ["--matrix", plan["paths"]["matrix"], "--out", plan["paths"]["model"],
                "--rank", str(p["rank"]), "--max-iter", str(p["max_iter"]), "--reg", str(p["reg"]),
                "--alpha", str(p["alpha"]), "--checkpoint-dir", plan["paths"]["checkpoints"],
                "--user-blocks", str(s.user_blocks), "--item-blocks", str(s.item_blocks),
                "--checkpoint-interval", str(s.checkpoint_interval), *strategy_args]

    result = run_with_resubmission(
        "train_als", args, _result(plan, "train_als"), sizing, local, per_executor_limit_mb(cluster),
        max_attempts=int(os.environ.get("MUSIC_RECS_TRAIN_ATTEMPTS", 3)), conn_id=cfg.spark_conn_id,
        work_dir=_submit_dir(plan))
    log.info("ALS (%s) rank %d: %d users, %d items in %.1fs (%.2fs/iteration)", strategy, p["rank"],
             result["data"]["users"],
             result["data"]["items"], result["seconds"]["fit"], result["seconds_per_iteration"])
    return result


def evaluate(plan: dict, matrix: dict) -> dict:
    """Score the model on the held-out days, with Spark settings sized to the matrix (``size_evaluate``)."""
    p = plan["params"]
    cfg = config_of(plan)
    stats = matrix["stats"][p["granularity"]]
    master = spark_master(cfg.spark_conn_id)
    budget = broadcast_budget_mb()
    sizing = size_evaluate(MatrixShape(stats["users"], stats["items"], stats["nnz"], p["rank"]),
                           cluster_from_env(master.startswith("local")), max(p["k"], p["top_n"]), budget)
    result = _spark(plan, "evaluate", [
        "--model", plan["paths"]["model"], "--matrix", plan["paths"]["matrix"], "--out", plan["paths"]["model"],
        "--k", str(p["k"]), "--top-n", str(p["top_n"]), "--similar-n", str(SIMILAR_ITEMS),
        "--broadcast-budget-mb", str(budget),
    ], conf=sizing.spark_conf(), driver_memory=f"{sizing.driver_memory_mb}m",
        **executor_args(sizing, master))
    m, b = result["model"], result["baseline_popularity"]
    log.info("evaluation @%d: MAP %.4f (popularity %.4f), precision %.4f (popularity %.4f), %d users",
             p["k"], m["map"], b["map"], m["precision"], b["precision"], m["users_evaluated"])
    return result


def published_metrics(store: S3Store, plan: dict) -> dict | None:
    """Metrics of the model behind the pointer, if it is comparable (same granularity and k)."""
    cfg = config_of(plan)
    try:
        _, manifest = read_latest(store, cfg.models_bucket, cfg.pointer_key)
    except PublishError as exc:
        log.info("no published model to compare with: %s", exc)
        return None
    p = plan["params"]
    if manifest["params"].get("granularity") != p["granularity"] or manifest["metrics"].get("k") != p["k"]:
        log.info("the published model has another granularity or k; comparing with the baseline only")
        return None
    return manifest["metrics"]["model"]


def quality_gate(store: S3Store, plan: dict, evaluated: dict) -> dict:
    p = plan["params"]
    decision = decide(p["primary_metric"], evaluated["model"], evaluated["baseline_popularity"],
                      published_metrics(store, plan), p["gate_min_lift"], p["gate_max_drop"],
                      p["override_quality_gate"])
    if not decision.publish:
        raise QualityGateFailed(f"dt={plan['day']}: {decision.message()}; not published")
    (log.warning if decision.overridden else log.info)("dt=%s: %s", plan["day"], decision.message())
    return decision.as_dict()


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def publish_run(store: S3Store, plan: dict, ingested: dict, validated: dict, matrix: dict,
                trained: dict, evaluated: dict, gate: dict) -> dict:
    cfg = config_of(plan)
    p = plan["params"]
    model_dir = plan["paths"]["model"]
    manifest = {
        "code_version": code_version(),
        "params": p,
        "data_window": matrix["window"],
        "rows": {k: ingested[k] for k in ("rows_read", "rows_accepted", "rows_quarantined", "duplicates_removed")},
        "quarantine": {"uri": ingested.get("quarantine_uri"), "reasons": ingested.get("quarantine_reasons", {})},
        "validation": {"suite": validated["suite"], "statistics": validated["statistics"]},
        "matrix": matrix["stats"][p["granularity"]],
        "training": {k: trained[k] for k in ("strategy", "params", "data", "seconds", "seconds_per_iteration",
                                              "spark_conf", "submission", "factor_exchange", "cg_steps")
                     if k in trained},
        "metrics": {"k": evaluated["k"], "model": evaluated["model"], "baseline_popularity": evaluated["baseline_popularity"]},
        "evaluation": {k: evaluated[k] for k in ("seconds", "submission") if k in evaluated},
        "quality_gate": gate,
    }
    # A folder of its own: a rerun of the run behind the pointer never writes over the live model.
    prefix = publication_prefix(cfg.model_key_prefix(plan["day"], plan["run_key"]))
    uri = f"s3://{cfg.models_bucket}/{prefix}"
    # The report goes up before the manifest and the pointer: a model behind the pointer always has one.
    manifest["report"] = publish_report(
        store, cfg.models_bucket, cfg.models_prefix, prefix,
        {**manifest, "day": plan["day"], "run_id": plan["run_id"], "prefix": uri}, plan["run_key"])
    decision = publish(
        store, cfg.models_bucket, prefix, cfg.pointer_key,
        plan["day"], plan["run_id"], {name: f"{model_dir}/{name}" for name in ARTIFACTS},
        manifest, allow_rewind=p["allow_pointer_rewind"],
    )
    m = evaluated["model"]
    log.info("published %s (pointer %s); MAP@%d %.4f, precision@%d %.4f", uri,
             "moved" if decision["moved"] else "kept: " + decision["reason"], evaluated["k"], m["map"],
             evaluated["k"], m["precision"])
    return {"prefix": uri, "manifest": f"s3://{cfg.models_bucket}/{decision['manifest_key']}",
            "report": f"s3://{cfg.models_bucket}/{manifest['report']['key']}",
            "pointer_moved": decision["moved"], "pointer_reason": decision["reason"], "metrics": m}
