"""What each task of ``music_recs_daily`` does. The DAG file only wires these together.

Every function takes plain values (the run plan, a store) so it can be called and tested
without a scheduler. ``plan_run`` makes the run's ``RunPlan`` (``music_recs.plan``) once;
it crosses task boundaries as a dict, and so do the jobs' typed results (``music_recs.jobs``).

Failures that can never succeed on a retry (``music_recs.failures.is_permanent``: bad data,
a failed validation, a matrix too large for the cluster, a Spark job that failed for a
non-retryable reason, training whose resubmissions are used up) end their task at once with
``AirflowFailException`` and their one-line message; the rest keep the task's retries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import glob
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from music_recs import __version__, settings, tuning
from music_recs.checks import check_run_conf_names_no_location, safe_key_part
from music_recs.failures import EmptyMatrix, MalformedRulesList, NoLandingData, QualityGateFailed, TooManyBadRows, \
    ValidationFailed, is_permanent
from music_recs.jobs import (ConfidenceSpec, EvaluateResult, EvaluateSpec, IngestResult, IngestSpec, MatrixResult,
                             TrainResult, TrainSpec, TuneSpec, ValidateResult, ValidateSpec)
from music_recs.params import DEFAULTS, DESCRIPTIONS, FIELDS, SCHEMAS, RunParams
from music_recs.plan import RunPlan
from music_recs.quality_gate import decide, failure_line
from music_recs.rules import parse_do_not_recommend
from music_recs.settings import DeploymentSettings
from music_recs.sizing import (ExecutorSizing, MatrixShape, factor_exchange, per_executor_limit_mb, shuffle_partitions, size_als,
                               size_evaluate, stage_memory_mb)
from music_recs_airflow.publish import (ARTIFACTS, MANIFEST, PUBLICATION, PublishError, publication_prefix, publish,
                                        read_latest)
from music_recs_airflow.report import publish_report
from music_recs_airflow.s3 import S3Store
from music_recs_airflow.spark_submit import REPO_ROOT, SparkJobHook, executor_args, run_with_resubmission, spark_master

log = logging.getLogger(__name__)

EXPECTATIONS = REPO_ROOT / "expectations"
ROW_SUITE = EXPECTATIONS / "stream_logs_daily.json"
SUMMARY_SUITE = EXPECTATIONS / "stream_logs_day_summary.json"
SIMILAR_ITEMS = 20  # most similar items published per item
DO_NOT_RECOMMEND_FILE = "do_not_recommend.parquet"
# In-memory size of input files, for sizing: gzip'd JSON lines expand about 8x, the lake's
# plays Parquet (dictionary-encoded ids) about 4x once decoded into rows.
GZIP_JSON_EXPANSION = 8
PARQUET_EXPANSION = 4


def fail_fast(func):
    """End the task without retries when its failure can never succeed (``is_permanent``)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if is_permanent(exc):
                raise AirflowFailException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
            raise

    return wrapper


def airflow_params() -> dict[str, Param]:
    """The trigger form: one ``Param`` per ``RunParams`` field, with its default, schema and description."""
    return {name: Param(DEFAULTS[name], description=DESCRIPTIONS[name], **SCHEMAS[name]) for name in DEFAULTS}


def load_settings(use_airflow: bool = True) -> DeploymentSettings:
    """Deployment settings: environment > the Airflow Variable ``music_recs_config`` > defaults."""
    variable = None
    if use_airflow:
        from airflow.sdk import Variable

        try:
            variable = Variable.get(settings.AIRFLOW_VARIABLE, default=None, deserialize_json=True)
        except Exception as exc:  # no task context or API server (CLI, tests): the environment and defaults
            log.debug("Variable %s not readable: %s", settings.AIRFLOW_VARIABLE, exc)
        if variable is not None and not isinstance(variable, dict):
            raise ValueError(f"Airflow Variable {settings.AIRFLOW_VARIABLE} must be a JSON object")
    return settings.resolve(variable)


def logical_day(data_interval_start: dt.datetime | None) -> dt.date:
    """The partition a run processes: the day its data interval starts (UTC), never "now"."""
    if data_interval_start is None:
        raise ValueError("the run has no data interval, so no day to process: it was triggered without a logical "
                         "date; trigger it with one (the trigger form's default, `airflow dags trigger -l ...`)")
    return data_interval_start.astimezone(dt.timezone.utc).date()


@fail_fast
def plan_run(params: dict, data_interval_start, run_id: str, cfg: DeploymentSettings,
             given: Iterable[str] | None = None) -> RunPlan:
    """Check the run's params, fix its day, run key, settings and cluster resources.

    given: names set in the trigger form or run conf (None: every name in ``params``)."""
    check_run_conf_names_no_location(params, set(settings.FIELDS))
    run = RunParams.from_params(dict(params))
    given = tuple(sorted(set(params if given is None else given) & set(FIELDS)))
    if urlparse(cfg.lake_uri).scheme not in ("", "file"):
        raise ValueError(f"lake_uri {cfg.lake_uri!r}: this version stages landing files and publishes from a local "
                         "lake; set MUSIC_RECS_LAKE_URI to a local folder")
    master = spark_master(cfg.spark_conn_id)
    plan = RunPlan(day=logical_day(data_interval_start).isoformat(), run_id=run_id, run_key=safe_key_part(run_id),
                   params=run, settings=cfg, cluster=settings.cluster_resources(master.startswith("local")),
                   spark_master=master, given=given)
    log.info("run %s processes dt=%s on %s (%s) with %s", run_id, plan.day, master, plan.cluster, run.as_dict())
    return plan


def spark_hook(plan: RunPlan) -> SparkJobHook:
    return SparkJobHook(plan.settings.spark_conn_id, work_dir=plan.results, pyfiles_dir=plan.lake.submit_dir,
                        label=f"dt={plan.day}", event_log_dir=plan.settings.spark_event_log_dir)


def file_sizes(path: str) -> list[int]:
    """The size of every file under ``path``."""
    return [os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files]


def folder_bytes(path: str) -> int:
    return sum(file_sizes(path))


def largest_file_bytes(path: str) -> int:
    return max(file_sizes(path), default=0)


def submit_stage(plan: RunPlan, spec, input_bytes: int, whole_file_bytes: int = 0):
    """Submit a stage other than ALS: shuffle partitions and (local mode) memory sized to its input's
    partitions; ``whole_file_bytes``: the largest file a task reads whole (ingest's landing files)."""
    conf = {"spark.sql.shuffle.partitions": str(shuffle_partitions(input_bytes, plan.cluster))}
    memory = (f"{stage_memory_mb(input_bytes, per_executor_limit_mb(plan.cluster), plan.cluster.total_cores, whole_file_bytes)}m"
              if plan.local else None)
    return spark_hook(plan).submit(spec, conf=conf, driver_memory=memory)


def landing_files(store: S3Store, cfg: DeploymentSettings, day: str) -> list:
    return [o for o in store.list_objects(cfg.raw_bucket, cfg.landing_key_prefix(day)) if not o.key.endswith("/")]


def stage_landing(store: S3Store, plan: RunPlan) -> list[str]:
    """Copy the day's landing files next to the lake for Spark (no S3 connector in local mode)."""
    dest = plan.landing_staging
    shutil.rmtree(dest, ignore_errors=True)  # a rerun must not see a previous copy
    files = store.download_prefix(plan.settings.raw_bucket, plan.settings.landing_key_prefix(plan.day), dest)
    if not files:
        raise NoLandingData(f"no stream logs under {plan.landing_uri}; nothing to ingest")
    log.info("staged %d landing file(s) from %s", len(files), plan.landing_uri)
    return files


def ingest_spec(plan: RunPlan) -> IngestSpec:
    return IngestSpec(day=plan.day, input_uri=plan.landing_staging, lake_uri=plan.lake.root,
                      source_format=plan.settings.source_format)


@fail_fast
def ingest(store: S3Store, plan: RunPlan) -> IngestResult:
    stage_landing(store, plan)
    result = submit_stage(plan, ingest_spec(plan), GZIP_JSON_EXPANSION * folder_bytes(plan.landing_staging),
                          largest_file_bytes(plan.landing_staging))
    log.info("ingest dt=%s: read %d, accepted %d, quarantined %d, duplicates %d (formats %s)", plan.day,
             result.rows_read, result.rows_accepted, result.rows_quarantined, result.duplicates_removed, result.formats)
    # Quarantined rows are stored before any verdict, so they are kept even when the run stops.
    result = dataclasses.replace(result, quarantine_uri=upload_quarantine(store, plan))
    check_quarantine_share(result, plan.settings.max_quarantine_fraction, plan.day)
    return result


def check_quarantine_share(result: IngestResult, limit: float, day: str) -> None:
    """Fail when more than ``limit`` of the day's rows broke a row-level check, naming the checks."""
    read, bad = result.rows_read, result.rows_quarantined
    share = bad / read if read else 0.0
    if share > limit:
        worst = ", ".join(f"{reason}: {n} rows" for reason, n in
                          sorted(result.quarantine_reasons.items(), key=lambda kv: -kv[1]))
        raise TooManyBadRows(
            f"dt={day}: {bad} of {read} rows ({share:.1%}) failed row-level checks, above the "
            f"{limit:.0%} threshold ({worst}); quarantined rows are in {result.quarantine_uri}"
        )


def upload_quarantine(store: S3Store, plan: RunPlan) -> str:
    """Quarantined rows go to S3 under a fixed name per day, so a rerun replaces them."""
    cfg = plan.settings
    parts = sorted(glob.glob(os.path.join(plan.lake.quarantine(plan.day), "part-*")))
    body = b"".join(Path(p).read_bytes() for p in parts)
    key = f"{cfg.quarantine_key_prefix(plan.day)}quarantine.jsonl"
    store.client.put_object(Bucket=cfg.raw_bucket, Key=key, Body=body)
    return f"s3://{cfg.raw_bucket}/{key}"


def validate_spec(plan: RunPlan, ingested: IngestResult | None) -> ValidateSpec:
    return ValidateSpec(day=plan.day, lake_uri=plan.lake.root, suite_path=str(ROW_SUITE),
                        summary_suite_path=str(SUMMARY_SUITE), ingest_counts=ingested.counts if ingested else None,
                        max_quarantine_fraction=plan.settings.max_quarantine_fraction, docs_dir=plan.data_docs)


@fail_fast
def validate(plan: RunPlan, ingested: IngestResult | None = None) -> ValidateResult:
    result = submit_stage(plan, validate_spec(plan, ingested), PARQUET_EXPANSION * folder_bytes(plan.lake.plays(plan.day)))
    log.info("GX Data Docs for dt=%s: file://%s", plan.day, result.data_docs)
    if not result.success:
        failed = "; ".join(failure_line(c) for c in result.failed)
        for check in result.failed:
            if check.get("examples"):
                log.error("%s; e.g. %s", failure_line(check), "; ".join(check["examples"]))
        raise ValidationFailed(f"dt={plan.day} failed {len(result.failed)} expectation(s): {failed}; "
                               f"Data Docs: file://{result.data_docs}")
    log.info("validation dt=%s: %d expectations passed", plan.day, len(result.checks))
    return result


def confidence_spec(plan: RunPlan) -> ConfidenceSpec:
    p = plan.params
    return ConfidenceSpec(day=plan.day, lake_uri=plan.lake.root, confidence=p.confidence, window_days=p.window_days,
                          holdout_days=p.holdout_days, min_user_items=p.min_user_items,
                          min_item_users=p.min_item_users, granularities=(p.granularity,), out_uri=plan.matrices,
                          validation_days=p.validation_days if p.tune != "off" else 0)


@fail_fast
def build_confidence(plan: RunPlan) -> MatrixResult:
    granularity = plan.params.granularity
    result = submit_stage(plan, confidence_spec(plan), PARQUET_EXPANSION * folder_bytes(plan.lake.plays()))
    stats = result.stats[granularity]
    if stats["nnz"] == 0:
        raise EmptyMatrix(f"the {granularity} matrix for dt={plan.day} is empty after filtering; "
                          "lower min_user_items/min_item_users or widen window_days")
    log.info("matrix %s dt=%s: %d users x %d items, %d non-zeros", granularity, plan.day,
             stats["users"], stats["items"], stats["nnz"])
    return result


def _shape(plan: RunPlan, matrix: MatrixResult) -> MatrixShape:
    stats = matrix.stats[plan.params.granularity]
    return MatrixShape(stats["users"], stats["items"], stats["nnz"], plan.params.rank)


def largest_rank(values: dict, search: TuneSpec | None) -> int:
    """The largest rank training may use: the chosen one, or any the search may try.
    Sizing and the factor exchange follow it."""
    searched = [] if search is None or "rank" in search.fixed else list(tuning.SEARCH_SPACE["rank"])
    return max([values["rank"], *searched])


def train_spec(plan: RunPlan, shape: MatrixShape, sizing: ExecutorSizing, values: dict | None = None,
               tune: TuneSpec | None = None) -> TrainSpec:
    """The training job's spec; ``values``: the searched params to train with (default: the run's)."""
    p, budget = plan.params, plan.settings.broadcast_budget_mb
    v = {**p.searched, **(values or {})}
    exchange = factor_exchange(shape.users, shape.items, largest_rank(v, tune), budget) if p.strategy == "cg" else None
    return TrainSpec(matrix_uri=plan.matrix, out_uri=plan.model, rank=int(v["rank"]), max_iter=p.max_iter,
                     reg=float(v["reg"]), alpha=float(v["alpha"]), confidence_function=v["confidence_function"],
                     epsilon=float(v["epsilon"]), scale_reg=v["reg_scaling"] == "per_rating",
                     strategy=p.strategy, user_blocks=sizing.user_blocks, item_blocks=sizing.item_blocks,
                     checkpoint_dir=plan.checkpoints, checkpoint_interval=sizing.checkpoint_interval,
                     exchange=exchange, broadcast_budget_mb=budget, tune=None if tune is None else tune.to_dict())


def published_manifest(store: S3Store, plan: RunPlan) -> dict | None:
    """The manifest of the model behind the pointer, or None when nothing is published."""
    cfg = plan.settings
    try:
        return read_latest(store, cfg.models_bucket, cfg.pointer_key)[1]
    except PublishError as exc:
        log.info("no published model: %s", exc)
        return None


def reusable_search(manifest: dict | None, plan: RunPlan) -> dict | None:
    """The published model's search, if young enough (``tune_max_age_days``), of a day before this
    run's (a rerun must not depend on what was published after its day) and of the same
    granularity, strategy and metric."""
    if not manifest:
        return None
    searched = (manifest.get("training") or {}).get("tuning") or {}
    day, p = searched.get("day"), plan.params
    if not day or "chosen" not in searched:
        return None
    age = (dt.date.fromisoformat(plan.day) - dt.date.fromisoformat(day)).days
    same = (manifest["params"].get("granularity"), manifest["params"].get("strategy"), searched.get("metric")) == (
        p.granularity, p.strategy, p.primary_metric)
    return searched if same and 0 < age <= p.tune_max_age_days else None


def training_values(plan: RunPlan, manifest: dict | None) -> tuple[dict, dict, TuneSpec | None]:
    """(values to train with, where each came from, the search to run or None).

    Trigger-form values always win; with ``tune=off`` the rest are the built-in defaults; with
    ``if_stale`` a young enough published search is reused, otherwise (and with ``always``)
    the training job searches the names not given."""
    p = plan.params
    given = set(plan.given) & set(tuning.SEARCHED)
    source = {name: "trigger" if name in given else "default" for name in tuning.SEARCHED}
    values = p.searched
    if p.tune == "off" or given == set(tuning.SEARCHED):
        return values, source, None
    reused = reusable_search(manifest, plan) if p.tune == "if_stale" else None
    if reused is not None:
        for name in set(tuning.SEARCHED) - given:
            values[name] = reused["chosen"][name]
            source[name] = f"tuning of dt={reused['day']}"
        return values, source, None
    search = TuneSpec(trials=p.tune_trials, minutes=p.tune_minutes, fixed=tuple(sorted(given)),
                      metric=p.primary_metric, k=p.k)
    return values, source, search


def earlier_publications(store: S3Store, plan: RunPlan) -> list[str]:
    """Manifest keys of the models published for a day before this run's, newest first (by day,
    then by publication time). Never the run's own day or a later one: a rerun of day D must not
    start from what was published for D or after it."""
    cfg = plan.settings
    root = f"{cfg.models_prefix}/dt="
    found = []
    for obj in store.list_objects(cfg.models_bucket, root):
        parts = obj.key[len(root):].split("/")
        # {day}/run={key}/publish={UTC time}/manifest.json
        if len(parts) == 4 and parts[3] == MANIFEST and parts[2].startswith(PUBLICATION) and parts[0] < plan.day:
            found.append((parts[0], parts[2], obj.key))
    return [key for *_, key in sorted(found, reverse=True)]


def earlier_publication(store: S3Store, plan: RunPlan, unusable=lambda manifest: None) -> tuple[dict | None, str]:
    """The manifest of the newest model published for a day before this run's that ``unusable``
    (manifest -> a reason, or None) accepts, and why a newer one was passed over (or why none)."""
    why = f"no model published for a day before dt={plan.day}"
    for number, key in enumerate(earlier_publications(store, plan)):
        try:
            got = store.get_json(plan.settings.models_bucket, key)
        except ValueError as exc:  # not JSON: skip it, say so
            log.warning("skipping s3://%s/%s: not a readable manifest (%s)", plan.settings.models_bucket, key, exc)
            continue
        manifest = got[0] if got and isinstance(got[0], dict) else None
        reason = "not a readable manifest" if manifest is None else unusable(manifest)
        if reason is None:
            return manifest, why if number else ""
        if number == 0:
            why = reason
    return None, why


def stage_factors(store: S3Store, plan: RunPlan, manifest: dict, dest: str) -> bool:
    """Copy a publication's ``user_factors`` and ``item_factors`` to ``dest`` (for Spark, which has
    no S3 connector in local mode); False when one of them is gone."""
    shutil.rmtree(dest, ignore_errors=True)
    objects = [o for o in manifest.get("objects", []) if o.get("artifact") in ("user_factors", "item_factors")]
    for obj in objects:
        got = store.get_bytes(plan.settings.models_bucket, obj["key"])
        if got is None:
            log.warning("published object s3://%s/%s is gone", plan.settings.models_bucket, obj["key"])
            return False
        path = Path(dest) / obj["artifact"] / obj["key"].rsplit("/", 1)[-1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(got[0])
    return {o["artifact"] for o in objects} == {"user_factors", "item_factors"}


def warm_start_source(store: S3Store | None, plan: RunPlan, values: dict, search: TuneSpec | None
                      ) -> dict[str, str | None]:
    """The training spec's warm-start fields: the newest model published for a day before this
    run's that can serve (same granularity; same rank unless a search may change it, in which case
    the job checks the rank it ends up training), staged next to the run; otherwise why not
    (``warm_start_note``), e.g. ``warm_start=off`` or strategy ``mllib``."""
    p = plan.params

    def cold(why: str) -> dict:
        return {"warm_start_uri": None, "warm_start_from": None, "warm_start_note": why}

    def unusable(manifest: dict) -> str | None:
        day = manifest.get("day")
        granularity = (manifest.get("params") or {}).get("granularity")
        rank = ((manifest.get("training") or {}).get("params") or {}).get("rank")
        if granularity != p.granularity:
            return f"the model of dt={day} recommends {granularity}s, this run {p.granularity}s"
        if (search is None or "rank" in search.fixed) and rank != values["rank"]:
            return f"the model of dt={day} has rank {rank}, this run trains rank {values['rank']}"
        return None

    if p.warm_start == "off":
        return cold("warm_start=off")
    if p.strategy != "cg":
        return cold("MLlib's ALS cannot start from given factors (strategy mllib)")
    if store is None:
        return cold("no model store")
    manifest, passed_over = earlier_publication(store, plan, unusable)
    if manifest is None:
        return cold(passed_over)
    if passed_over:
        log.info("warm start: passed over a newer model (%s)", passed_over)
    dest = f"{plan.run_dir}/warm_start"
    if not stage_factors(store, plan, manifest, dest):
        return cold(f"the factors of the model of dt={manifest['day']} are gone from S3")
    return {"warm_start_uri": dest, "warm_start_from": f"dt={manifest['day']} ({manifest.get('prefix')})",
            "warm_start_note": None}


@fail_fast
def train(plan: RunPlan, matrix: MatrixResult, store: S3Store | None = None) -> TrainResult:
    """Train ALS with settings sized to the matrix; failed attempts are classified and resubmitted here,
    so a failure that outlives them is final (no Airflow retry on top).

    Tunes first when the run asks (``training_values``) and starts from an earlier model when it
    can (``warm_start_source``); ``store``: where published models are read (None: no published
    search to reuse, no warm start)."""
    p, budget = plan.params, plan.settings.broadcast_budget_mb
    values, source, search = training_values(plan, published_manifest(store, plan) if store and p.tune == "if_stale"
                                             else None)
    warm = warm_start_source(store, plan, values, search)
    log.info("warm start: %s", f"from the model of {warm['warm_start_from']}" if warm["warm_start_uri"]
             else f"none ({warm['warm_start_note']})")
    shape = dataclasses.replace(_shape(plan, matrix), rank=largest_rank(values, search))
    sizing = size_als(shape, plan.cluster, strategy=p.strategy, broadcast_budget_mb=budget)
    log.info("sizing for %s, %s on %s: %s", shape, p.strategy, plan.cluster, sizing.as_dict())
    result = run_with_resubmission(spark_hook(plan),
                                   lambda s: dataclasses.replace(train_spec(plan, shape, s, values, search), **warm), sizing,
                                   plan.local, per_executor_limit_mb(plan.cluster),
                                   max_attempts=plan.settings.train_attempts)
    if search is not None:  # searched now: the job's trials and choice, with this day
        for name in set(tuning.SEARCHED) - set(search.fixed):
            source[name] = f"tuning of dt={plan.day}"
        record = {**result.tuning, "day": plan.day, "source": source}
    else:  # reused (keeps the search's day, so its age still counts) or not tuned
        reused = sorted({v for v in source.values() if v.startswith("tuning of dt=")})
        record = {"day": reused[0].removeprefix("tuning of dt=") if reused else None, "chosen": values,
                  "source": source, "metric": p.primary_metric, "trials": []}
    result = dataclasses.replace(result, tuning=record)
    log.info("ALS (%s) rank %d: %d users, %d items, %d iterations in %.1fs (%.2fs/iteration); params from %s; "
             "warm start: %s", p.strategy, result.params["rank"], result.data["users"], result.data["items"],
             result.iterations, result.seconds["fit"], result.seconds_per_iteration, source,
             (result.warm_start or {}).get("reason"))
    return result


@fail_fast
def recommendation_rules(store: S3Store | None, plan: RunPlan) -> dict:
    """The rules every top-N of the run is built with, read and checked before training (beside
    ingest), so a malformed do-not-recommend list fails the run at once, in one line.

    ``max_per_artist``: the run's cap for track recommendations (artist recommendations have one
    item per artist: no cap). ``do_not_recommend``: the list at ``do_not_recommend_key`` in the
    models bucket (``music_recs.rules``): its checksum, rows and counts go into the manifest; it
    is written next to the run as Parquet (``path``) for the evaluation job."""
    p, cfg = plan.params, plan.settings
    rules = {"max_per_artist": p.artist_cap, "do_not_recommend": None, "path": None}
    if cfg.do_not_recommend_key:
        uri = f"s3://{cfg.models_bucket}/{cfg.do_not_recommend_key}"
        if store is None:
            raise ValueError(f"do_not_recommend_key is set ({uri}) but no S3 store was given to read it")
        got = store.get_bytes(cfg.models_bucket, cfg.do_not_recommend_key)
        if got is None:
            raise MalformedRulesList(f"do-not-recommend list {uri}: no such object (set do_not_recommend_key to an "
                                     "existing CSV, or empty for no list)")
        listed = parse_do_not_recommend(got[0], uri)
        path = f"{plan.run_dir}/rules/{DO_NOT_RECOMMEND_FILE}"
        write_do_not_recommend(listed, path)
        rules.update(do_not_recommend=listed.as_record(uri), path=path)
    log.info("rules: at most %s tracks per artist; do-not-recommend list: %s", rules["max_per_artist"] or "any",
             rules["do_not_recommend"] or "none")
    return rules


def write_do_not_recommend(listed, path: str) -> None:
    """The list as Parquet (``user_id`` null = everyone, ``item_id``), for the evaluation job."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    users = [None] * len(listed.items) + [u for u, _ in listed.pairs]
    items = list(listed.items) + [i for _, i in listed.pairs]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string())}), path)


def evaluate_spec(plan: RunPlan, published_uri: str | None = None, compare_churn: bool = False,
                  rules: dict | None = None) -> EvaluateSpec:
    """The evaluation of this run's model, with the output suites; ``published_uri``: the staged
    factors of the published model, scored on the same pairs; ``compare_churn``: see ``churn_reference``;
    ``rules``: ``recommendation_rules``'s (None: the run's cap, no list)."""
    p = plan.params
    rules = rules or {"max_per_artist": p.artist_cap, "path": None}
    return EvaluateSpec(model_uri=plan.model, matrix_uri=plan.matrix, out_uri=plan.model, k=p.k, top_n=p.top_n,
                        similar_n=SIMILAR_ITEMS, broadcast_budget_mb=plan.settings.broadcast_budget_mb,
                        published_uri=published_uri, output_suite_dir=str(EXPECTATIONS), docs_dir=plan.data_docs,
                        compare_churn=compare_churn, max_per_artist=rules["max_per_artist"],
                        do_not_recommend_path=rules["path"])


def churn_reference(plan: RunPlan, manifest: dict | None, trained: TrainResult | None) -> tuple[bool, str]:
    """Whether the churn band applies against the published model, and why (or why not).

    Churn tells an unstable (or stale) model from a healthy one only between models of the same
    recipe: published for an earlier day (a rerun of the published day would look stale by
    construction), with the same strategy and the same trained values (a new search or a changed
    strategy is meant to change the lists)."""
    if manifest is None:
        return False, "no model published"
    if not manifest.get("day", "") < plan.day:
        return False, f"the published model is for dt={manifest.get('day')}, not an earlier day"
    training = manifest.get("training") or {}
    if trained is None or training.get("strategy") != trained.strategy:
        return False, "the published model was trained with another strategy"
    ours = {n: trained.params.get(n) for n in tuning.SEARCHED}
    if {n: (training.get("params") or {}).get(n) for n in tuning.SEARCHED} != ours:
        return False, "the published model was trained with other values"
    return True, f"against the model of dt={manifest['day']}"


def stage_published_factors(store: S3Store, plan: RunPlan) -> tuple[str | None, dict | None]:
    """The published model's factors, copied next to the run (``{run}/published/``) so evaluation
    can score it on this run's held-out pairs, and its manifest; (None, None) when nothing
    comparable is published."""
    manifest = published_manifest(store, plan)
    if manifest is None or manifest["params"].get("granularity") != plan.params.granularity:
        return None, None
    dest = f"{plan.run_dir}/published"
    if not stage_factors(store, plan, manifest, dest):
        log.warning("not comparing with the published model: its factors are incomplete")
        return None, None
    return dest, manifest


@fail_fast
def evaluate(plan: RunPlan, matrix: MatrixResult, store: S3Store | None = None,
             trained: TrainResult | None = None, rules: dict | None = None) -> EvaluateResult:
    """Score the model on the held-out days, with Spark settings sized to the matrix (``size_evaluate``);
    with ``store``, the published model is scored on the same pairs too, and with ``trained`` (this
    run's training result) churn is checked against it when it has the same recipe (``churn_reference``).
    ``rules`` (``recommendation_rules``): every top-N, and so every metric, obeys them."""
    p = plan.params
    published_uri, manifest = stage_published_factors(store, plan) if store is not None else (None, None)
    compare, why = churn_reference(plan, manifest, trained)
    churn = f"checked {why}" if compare else f"not checked: {why}"
    log.info("churn %s", churn)
    sizing = size_evaluate(_shape(plan, matrix), plan.cluster, max(p.k, p.top_n), plan.settings.broadcast_budget_mb)
    result = spark_hook(plan).submit(evaluate_spec(plan, published_uri, compare, rules), conf=sizing.spark_conf(),
                                     driver_memory=f"{sizing.driver_memory_mb}m",
                                     **executor_args(sizing, plan.spark_master))
    if result.output_checks is not None:
        result = dataclasses.replace(result, output_checks={**result.output_checks, "churn": churn})
    if rules and rules.get("do_not_recommend"):  # the list's checksum and rows beside what matched
        applied = result.rules or {}
        result = dataclasses.replace(result, rules={
            **applied, "do_not_recommend": {**rules["do_not_recommend"], **(applied.get("do_not_recommend") or {})}})
    m, b = result.model, result.baseline_popularity
    log.info("evaluation @%d: MAP %.4f (popularity %.4f), precision %.4f (popularity %.4f), %d users",
             p.k, m["map"], b["map"], m["precision"], b["precision"], m["users_evaluated"])
    return result


def published_metrics(store: S3Store, plan: RunPlan) -> dict | None:
    """Metrics of the model behind the pointer, if it is comparable (same granularity and k)."""
    manifest = published_manifest(store, plan)
    if manifest is None:
        return None
    if manifest["params"].get("granularity") != plan.params.granularity or manifest["metrics"].get("k") != plan.params.k:
        log.info("the published model has another granularity or k; comparing with the baseline only")
        return None
    return manifest["metrics"]["model"]


@fail_fast
def quality_gate(store: S3Store, plan: RunPlan, evaluated: EvaluateResult) -> dict:
    p = plan.params
    lift = (evaluated.lift or {}).get(p.primary_metric)
    if evaluated.published is not None:  # scored on this run's held-out pairs
        published, published_lift = evaluated.published, (evaluated.lift_over_published or {}).get(p.primary_metric)
    else:
        published, published_lift = published_metrics(store, plan), None
    output_failures = tuple((evaluated.output_checks or {}).get("failed") or ())
    decision = decide(p.primary_metric, evaluated.model, evaluated.baseline_popularity, published, p.gate_min_lift,
                      p.gate_max_drop, p.override_quality_gate, lift, published_lift, output_failures)
    if not decision.publish:
        raise QualityGateFailed(f"dt={plan.day}: {decision.message()}; not published")
    (log.warning if decision.overridden else log.info)("dt=%s: %s", plan.day, decision.message())
    return decision.as_dict()


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def output_checks_record(checks: dict | None) -> dict | None:
    """What the manifest keeps of the output suites: verdict, summary, each expectation, Data Docs."""
    if checks is None:
        return None
    docs = checks.get("data_docs")
    return {"success": checks["success"], "summary": checks.get("summary"), "failed": checks.get("failed", []),
            "checks": [{n: c.get(n) for n in ("suite", "expectation", "column", "kwargs", "success", "observed_value",
                                              "unexpected_count", "element_count")} for c in checks["checks"]],
            "churn": checks.get("churn"),
            "data_docs": f"file://{docs}" if docs and "://" not in docs else docs}


TRAINING_FIELDS = ("strategy", "params", "data", "iterations", "seconds", "seconds_per_iteration", "spark_conf",
                   "submission", "factor_exchange", "cg_steps", "tuning", "warm_start", "loss")


@fail_fast
def publish_run(store: S3Store, plan: RunPlan, ingested: IngestResult, validated: ValidateResult,
                matrix: MatrixResult, trained: TrainResult, evaluated: EvaluateResult, gate: dict) -> dict:
    cfg, p = plan.settings, plan.params
    training = trained.to_dict()
    manifest = {
        "code_version": code_version(),
        "params": p.as_dict(),
        "data_window": matrix.window,
        "rows": ingested.counts,
        "quarantine": {"uri": ingested.quarantine_uri, "reasons": ingested.quarantine_reasons},
        "validation": {"suite": validated.suite, "statistics": validated.statistics, "profile": validated.profile},
        "matrix": matrix.stats[p.granularity],
        "training": {k: training[k] for k in TRAINING_FIELDS if training[k] is not None},
        "metrics": {"k": evaluated.k, "model": evaluated.model, "baseline_popularity": evaluated.baseline_popularity,
                    "lift_over_popularity": evaluated.lift, "published_model": evaluated.published,
                    "change_over_published": evaluated.lift_over_published},
        "evaluation": {"seconds": evaluated.seconds, "submission": evaluated.submission},
        "output_checks": output_checks_record(evaluated.output_checks),
        "rules": evaluated.rules,
        "quality_gate": gate,
    }
    # A folder of its own: a rerun of the run behind the pointer never writes over the live model.
    prefix = publication_prefix(cfg.model_key_prefix(plan.day, plan.run_key))
    uri = f"s3://{cfg.models_bucket}/{prefix}"
    # The report goes up before the manifest and the pointer: a model behind the pointer always has one.
    manifest["report"] = publish_report(
        store, cfg.models_bucket, cfg.models_prefix, prefix,
        {**manifest, "day": plan.day, "run_id": plan.run_id, "prefix": uri}, plan.run_key)
    decision = publish(
        store, cfg.models_bucket, prefix, cfg.pointer_key,
        plan.day, plan.run_id, {name: f"{plan.model}/{name}" for name in ARTIFACTS},
        manifest, allow_rewind=p.allow_pointer_rewind,
    )
    m = evaluated.model
    log.info("published %s (pointer %s); MAP@%d %.4f, precision@%d %.4f", uri,
             "moved" if decision["moved"] else "kept: " + decision["reason"], evaluated.k, m["map"],
             evaluated.k, m["precision"])
    return {"prefix": uri, "manifest": f"s3://{cfg.models_bucket}/{decision['manifest_key']}",
            "report": f"s3://{cfg.models_bucket}/{manifest['report']['key']}",
            "pointer_moved": decision["moved"], "pointer_reason": decision["reason"], "metrics": m}


def model_event(plan: RunPlan, published: dict) -> dict:
    """The extra of the published-model asset event; skips (no event) when the pointer did not move."""
    if not published["pointer_moved"]:
        raise AirflowSkipException(f"latest.json was not moved ({published['pointer_reason']}): no asset event")
    cfg = plan.settings
    return {"day": plan.day, "run_id": plan.run_id, "bucket": cfg.models_bucket, "pointer": cfg.pointer_key,
            "manifest": published["manifest"].removeprefix(f"s3://{cfg.models_bucket}/")}

