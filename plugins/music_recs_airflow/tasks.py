"""What each task of ``music_recs_daily`` does. The DAG file only wires these together.

Every function takes plain values (the run plan, a store) so it can be called and tested
without a scheduler. ``plan_run`` makes the run's ``RunPlan`` (``music_recs.plan``) once;
it crosses task boundaries as a dict, and so do the jobs' typed results (``music_recs.jobs``).

The lake is a local folder or ``s3a://bucket/prefix`` (``music_recs_airflow.lake_files``): every
stage works on both, and on an ``s3a://`` lake nothing of the lake is on the worker's disk (the
jobs' specs, results and logs are, in ``RunPlan.work_dir``: the driver runs here). A stage that
uses S3 first checks, in seconds, that its buckets can be used (``check_storage``), so a wrong
bucket, missing credentials or an endpoint that does not answer fail it in one line.

Failures that can never succeed on a retry (``music_recs.failures.is_permanent``: bad data,
a failed validation, a matrix too large for the cluster, a Spark job that failed for a
non-retryable reason, training whose resubmissions are used up) end their task at once with
``AirflowFailException`` and their one-line message; the rest keep the task's retries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import logging
import shutil
import subprocess

from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from music_recs import __version__, settings, tuning
from music_recs import history as history_rules
from music_recs import manifest as manifests
from music_recs.checks import check_landing_size, check_run_conf_names_no_location, safe_key_part
from music_recs.failures import EmptyMatrix, InvalidInput, MalformedRulesList, NoLandingData, QualityGateFailed, TooManyBadRows, \
    ValidationFailed, is_permanent
from music_recs.jobs import (ConfidenceSpec, EvaluateResult, EvaluateSpec, IngestResult, IngestSpec, MatrixResult,
                             TrainResult, TrainSpec, TuneSpec, ValidateResult, ValidateSpec)
from music_recs.history import TrainingRecipe
from music_recs.lake_commit import CommittedCopy, committed_copy
from music_recs.manifest import SearchContext, search_label
from music_recs.params import DEFAULTS, DESCRIPTIONS, SCHEMAS, RunParams
from music_recs.plan import RunPlan, local_path
from music_recs.quality_gate import decide, failure_line
from music_recs.recipe import Recipe
from music_recs.rules import parse_do_not_recommend
from music_recs.settings import DeploymentSettings
from music_recs.sizing import (ExecutorSizing, MatrixShape, factor_exchange, per_executor_limit_mb, row_stage_conf, size_als,
                               size_evaluate, stage_memory_mb)
from music_recs_airflow.lake_files import LakeFiles, check_scheme
from music_recs_airflow.model_history import ModelHistory
from music_recs_airflow.publish import ARTIFACTS, PublishError, publication_prefix, publish, verify_publication
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
            raise InvalidInput(f"Airflow Variable {settings.AIRFLOW_VARIABLE} must be a JSON object")
    return settings.resolve(variable)


def logical_day(data_interval_start: dt.datetime | None) -> dt.date:
    """The partition a run processes: the day its data interval starts (UTC), never "now"."""
    if data_interval_start is None:
        raise InvalidInput("the run has no data interval, so no day to process: it was triggered without a logical "
                         "date; trigger it with one (the trigger form's default, `airflow dags trigger -l ...`)")
    return data_interval_start.astimezone(dt.timezone.utc).date()


@fail_fast
def plan_run(params: dict, data_interval_start, run_id: str, cfg: DeploymentSettings) -> RunPlan:
    """Check the run's params, fix its day, run key, settings and cluster resources.

    params: the run's (the DAG's defaults with the form's or conf's values over them); a recipe
    field left empty is the search's to choose, a filled one is fixed (``RunParams.fixed_recipe``)."""
    check_run_conf_names_no_location(params, set(settings.FIELDS))
    run = RunParams.from_params(dict(params))
    check_scheme(cfg.lake_uri)
    master = spark_master(cfg.spark_conn_id)
    plan = RunPlan(day=logical_day(data_interval_start).isoformat(), run_id=run_id, run_key=safe_key_part(run_id),
                   params=run, settings=cfg, cluster=settings.cluster_resources(master.startswith("local")),
                   spark_master=master)
    log.info("run %s processes dt=%s on %s (%s) with %s", run_id, plan.day, master, plan.cluster, run.as_dict())
    return plan


def spark_hook(plan: RunPlan) -> SparkJobHook:
    """The run's jobs' hook: specs, results and logs in ``plan.work_dir`` (the driver runs here); the S3
    connection handed to the jobs when they use ``s3a://`` (the lake, or the Spark event logs)."""
    cfg = plan.settings
    uses_s3a = not plan.lake_is_local or cfg.spark_event_log_dir.startswith("s3a://")
    return SparkJobHook(cfg.spark_conn_id, work_dir=plan.work_dir, pyfiles_dir=plan.submit_dir,
                        label=f"dt={plan.day}", event_log_dir=cfg.spark_event_log_dir,
                        master=plan.spark_master, s3_conn_id=cfg.aws_conn_id if uses_s3a else None,
                        spark_ui=cfg.spark_ui)


def lake_files(plan: RunPlan, store: S3Store | None = None) -> LakeFiles:
    """The run's lake files; ``store``: the task's S3 store (None: made from the run's S3
    connection the first time an ``s3a://`` location needs it)."""
    return LakeFiles(store, plan.settings.aws_conn_id)


def check_storage(plan: RunPlan, files: LakeFiles, *buckets: tuple[str, str], lake: bool = True) -> None:
    """Before a stage does anything: the lake's bucket (an ``s3a://`` lake; ``lake``: the stage uses
    the lake) and ``buckets`` ((bucket, the setting it comes from)) can be used, else one line naming
    the bucket and the cause (``S3Store.check_bucket``: missing, denied or no credentials end the
    task; an endpoint that does not answer keeps its retries)."""
    if lake:
        files.check(plan.settings.lake_uri)
    for bucket, setting in buckets:
        files.store.check_bucket(bucket, setting)


def folder_bytes(uri: str, files: LakeFiles | None = None) -> int:
    """Bytes of every file under the lake folder ``uri`` (local or ``s3a://``)."""
    return (files or LakeFiles()).total_bytes(uri)


def largest_file_bytes(uri: str, files: LakeFiles | None = None) -> int:
    return (files or LakeFiles()).largest_bytes(uri)


def committed(plan: RunPlan, files: LakeFiles) -> CommittedCopy | None:
    """The run day's copy readers see (``music_recs.lake_commit.committed_copy``), None when not committed."""
    return committed_copy(plan.lake.root, plan.day, files.read_bytes)


def docs_link(docs: str | None) -> str | None:
    """Data Docs as a link: ``file://`` for a local path, the URI itself otherwise."""
    return f"file://{docs}" if docs and "://" not in docs else docs


def submit_stage(plan: RunPlan, spec, input_bytes: int, whole_file_bytes: int = 0):
    """Submit a stage other than ALS: shuffle partitions and (local mode) memory sized to its input's
    partitions; ``whole_file_bytes``: the largest file a task reads whole (ingest's landing files)."""
    conf = row_stage_conf(input_bytes, plan.cluster)
    memory = (f"{stage_memory_mb(input_bytes, per_executor_limit_mb(plan.cluster), plan.cluster.total_cores, whole_file_bytes)}m"
              if plan.local else None)
    return spark_hook(plan).submit(spec, conf=conf, driver_memory=memory)


def landing_files(store: S3Store, cfg: DeploymentSettings, day: str) -> list:
    return [o for o in store.list_objects(cfg.raw_bucket, cfg.landing_key_prefix(day)) if not o.key.endswith("/")]


def stage_landing(store: S3Store, plan: RunPlan) -> list[str]:
    """Copy the day's landing files next to a local lake for Spark (it then needs no S3 connector)."""
    dest = local_path(plan.landing_staging)
    shutil.rmtree(dest, ignore_errors=True)  # a rerun must not see a previous copy
    files = store.download_prefix(plan.settings.raw_bucket, plan.settings.landing_key_prefix(plan.day), dest)
    if not files:
        raise NoLandingData(f"no stream logs under {plan.landing_uri}; nothing to ingest")
    log.info("staged %d landing file(s) from %s", len(files), plan.landing_uri)
    return files


def landing_input(plan: RunPlan) -> str:
    """Where ingest reads the day's landing files: straight from the raw bucket with an ``s3a://``
    lake (the jobs have the S3 connector); the staged copy next to a local lake."""
    if plan.lake_is_local:
        return plan.landing_staging
    return f"s3a://{plan.settings.raw_bucket}/{plan.settings.landing_key_prefix(plan.day)}"


def dag_writer(plan: RunPlan) -> str:
    """Who the day's lease names while the DAG run's ingest writes it: the same for every try of the
    task, so a retry takes over the lease a killed try left (``music_recs.lake_commit``)."""
    return f"DAG run {plan.run_id}, task ingest"


def ingest_spec(plan: RunPlan, writer: str | None = None) -> IngestSpec:
    """writer: who the day's lease names (None: the DAG run's task, ``dag_writer``; "": the job's
    ``user@host pid``, for a writer outside a DAG run such as the CLI)."""
    return IngestSpec(day=plan.day, input_uri=landing_input(plan), lake_uri=plan.lake.root,
                      source_format=plan.settings.source_format,
                      writer=dag_writer(plan) if writer is None else writer,
                      retention_hours=plan.settings.lake_retention_hours,
                      max_expansion=plan.settings.max_landing_expansion,
                      quarantine_rows_per_reason=plan.settings.quarantine_rows_per_reason)


@fail_fast
def ingest(store: S3Store, plan: RunPlan, writer: str | None = None) -> IngestResult:
    """Ingest the run's day into the lake (``ingest_spec``; ``writer``: see there), upload its
    quarantine, and check the quarantined share."""
    files = lake_files(plan, store)
    check_storage(plan, files, (plan.settings.raw_bucket, "raw_bucket"))
    sizes = {o.key: o.size for o in landing_files(store, plan.settings, plan.day)}
    if not sizes:
        raise NoLandingData(f"no stream logs under {plan.landing_uri}; nothing to ingest")
    check_landing_size(plan.day, plan.landing_uri, sizes, plan.settings.max_landing_files, plan.settings.max_landing_gib)
    if plan.lake_is_local:
        stage_landing(store, plan)
    result = submit_stage(plan, ingest_spec(plan, writer), GZIP_JSON_EXPANSION * sum(sizes.values()), max(sizes.values()))
    log.info("ingest dt=%s: read %d, accepted %d, quarantined %d, duplicates %d (formats %s)", plan.day,
             result.rows_read, result.rows_accepted, result.rows_quarantined, result.duplicates_removed, result.formats)
    # Quarantined rows are stored before any verdict, so they are kept even when the run stops.
    result = dataclasses.replace(result, quarantine_uri=upload_quarantine(store, plan, files))
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


def upload_quarantine(store: S3Store, plan: RunPlan, files: LakeFiles | None = None) -> str:
    """The committed copy's quarantined rows go to the raw bucket under a fixed name per day, so a
    rerun replaces them: its part files one after the other, streamed (``LakeFiles.upload``)."""
    cfg = plan.settings
    files = files or lake_files(plan, store)
    copy = committed(plan, files)
    if copy is None:
        raise RuntimeError(f"dt={plan.day} has no committed copy in {plan.lake.root} after ingest: "
                           "no quarantine to upload")
    parts = [f.uri for f in files.files(copy.quarantine, recursive=False) if f.name.startswith("part-")]
    key = f"{cfg.quarantine_key_prefix(plan.day)}quarantine.jsonl"
    files.upload(parts, cfg.raw_bucket, key)
    log.info("quarantine of dt=%s (%d part file(s) of %s) uploaded to s3://%s/%s", plan.day, len(parts),
             copy.quarantine, cfg.raw_bucket, key)
    return f"s3://{cfg.raw_bucket}/{key}"


def validate_spec(plan: RunPlan, ingested: IngestResult | None) -> ValidateSpec:
    return ValidateSpec(day=plan.day, lake_uri=plan.lake.root, suite_path=str(ROW_SUITE),
                        summary_suite_path=str(SUMMARY_SUITE), ingest_counts=ingested.counts if ingested else None,
                        max_quarantine_fraction=plan.settings.max_quarantine_fraction, docs_dir=plan.data_docs)


@fail_fast
def validate(plan: RunPlan, ingested: IngestResult | None = None) -> ValidateResult:
    files = lake_files(plan)
    check_storage(plan, files)
    copy = committed(plan, files)
    plays = copy.plays if copy else plan.lake.plays(plan.day)
    result = submit_stage(plan, validate_spec(plan, ingested), PARQUET_EXPANSION * folder_bytes(plays, files))
    log.info("GX Data Docs for dt=%s: %s", plan.day, docs_link(result.data_docs))
    if not result.success:
        failed = "; ".join(failure_line(c) for c in result.failed)
        for check in result.failed:
            if check.get("examples"):
                log.error("%s; e.g. %s", failure_line(check), "; ".join(check["examples"]))
        raise ValidationFailed(f"dt={plan.day} failed {len(result.failed)} expectation(s): {failed}; "
                               f"Data Docs: {docs_link(result.data_docs)}")
    log.info("validation dt=%s: %d expectations passed", plan.day, len(result.checks))
    return result


def confidence_spec(plan: RunPlan) -> ConfidenceSpec:
    p = plan.params
    return ConfidenceSpec(day=plan.day, lake_uri=plan.lake.root, confidence=p.confidence, window_days=p.window_days,
                          holdout_days=p.holdout_days, min_user_items=p.min_user_items,
                          min_item_users=p.min_item_users, granularities=(p.granularity,), out_uri=plan.matrices,
                          validation_days=p.validation_days if p.tune != "off" else 0, tuning_users=p.tune_users)


@fail_fast
def build_confidence(plan: RunPlan) -> MatrixResult:
    granularity = plan.params.granularity
    files = lake_files(plan)
    check_storage(plan, files)
    # Every copy of every day: a rewritten day's older copy (kept for the retention) counts too.
    result = submit_stage(plan, confidence_spec(plan), PARQUET_EXPANSION * folder_bytes(plan.lake.plays(), files))
    stats = result.stats[granularity]
    if stats["nnz"] == 0:
        raise EmptyMatrix(f"the {granularity} matrix for dt={plan.day} is empty after filtering; "
                          "lower min_user_items/min_item_users or widen window_days")
    log.info("matrix %s dt=%s: %d users x %d items, %d non-zeros", granularity, plan.day,
             stats["users"], stats["items"], stats["nnz"])
    return result


def _shape(plan: RunPlan, matrix: MatrixResult, rank: int) -> MatrixShape:
    stats = matrix.stats[plan.params.granularity]
    return MatrixShape(stats["users"], stats["items"], stats["nnz"], rank)


def largest_rank(recipe: Recipe, search: TuneSpec | None) -> int:
    """The largest rank training may use: the chosen one, or any the search may try.
    Sizing and the factor exchange follow it."""
    searched = list(tuning.SEARCH_SPACE["rank"]) if search is not None and "rank" not in search.fixed else []
    return max([recipe.rank, *searched])


def train_spec(plan: RunPlan, shape: MatrixShape, sizing: ExecutorSizing, recipe: Recipe | None = None,
               tune: TuneSpec | None = None) -> TrainSpec:
    """The training job's spec; ``recipe``: the values to train with (default: the run's without a search)."""
    p, budget = plan.params, plan.settings.broadcast_budget_mb
    r = recipe or p.recipe
    exchange = factor_exchange(shape.users, shape.items, largest_rank(r, tune), budget) if p.strategy == "cg" else None
    return TrainSpec(matrix_uri=plan.matrix, out_uri=plan.model, recipe=r, max_iter=p.max_iter,
                     strategy=p.strategy, user_blocks=sizing.user_blocks,
                     item_blocks=sizing.item_blocks, checkpoint_dir=plan.checkpoints,
                     checkpoint_interval=sizing.checkpoint_interval, exchange=exchange, broadcast_budget_mb=budget,
                     tune=None if tune is None else tune.to_dict())


def model_buckets(plan: RunPlan, store: S3Store | None) -> tuple[tuple[str, str], ...]:
    """The models bucket, for ``check_storage``, when the task reads published models (has a store)."""
    return () if store is None else ((plan.settings.models_bucket, "models_bucket"),)


def model_history(store: S3Store | None, plan: RunPlan) -> ModelHistory:
    cfg = plan.settings
    return ModelHistory(store, cfg.models_bucket, cfg.models_prefix, cfg.pointer_key, plan.day,
                        allow_rewind=plan.params.allow_pointer_rewind)


def rules_checksum(rules: dict | None) -> str | None:
    return ((rules or {}).get("do_not_recommend") or {}).get("sha256")


def choose_recipe(plan: RunPlan, history: ModelHistory, rules: dict | None = None
                  ) -> tuple[TrainingRecipe, TuneSpec | None, SearchContext]:
    """What training uses (``music_recs.history.training_recipe``), the search to run (or None) and
    the run's search context (recorded, so a later run can tell whether it may reuse the search)."""
    p = plan.params
    context = history_rules.search_context(p, rules_checksum(rules))
    reusable = history_rules.reusable_search(history.earlier(), plan.day, p, context) if p.tune == "if_stale" else None
    chosen = history_rules.training_recipe(p, reusable)
    log.info("recipe: %s (%s); sources %s", chosen.recipe.as_dict(), chosen.why, chosen.sources)
    search = None
    if chosen.search:
        # Trials are scored under the run's rules, as evaluation and the gate score the lists.
        search = TuneSpec(trials=p.tune_trials, minutes=p.tune_minutes, fixed=chosen.fixed, metric=p.primary_metric,
                          k=p.k, max_per_artist=(rules or {}).get("max_per_artist", p.artist_cap),
                          do_not_recommend_path=(rules or {}).get("path"))
    return chosen, search, context


def warm_start_source(history: ModelHistory, plan: RunPlan, chosen: TrainingRecipe) -> dict[str, str | None]:
    """The training spec's warm-start fields: the model ``music_recs.history.warm_start`` picks, staged
    next to the run; otherwise why not (``warm_start_note``), e.g. ``warm_start=off`` or strategy ``mllib``."""
    p = plan.params

    def cold(why: str) -> dict:
        log.info("warm start: none (%s)", why)
        return {"warm_start_uri": None, "warm_start_from": None, "warm_start_note": why}

    if p.warm_start == "off":
        return cold("warm_start=off")
    if p.strategy != "cg":
        return cold("MLlib's ALS cannot start from given factors (strategy mllib)")
    if history.store is None:
        return cold("no model store")
    # With a search that may change the rank, the job checks the rank it ends up training.
    rank = None if chosen.search and "rank" not in chosen.fixed else chosen.recipe.rank
    found = history_rules.warm_start(history.earlier(), plan.day, p, rank)
    if found.chosen is None:
        return cold(found.why)
    log.info("warm start: %s", found.why)
    dest = f"{plan.run_dir}/warm_start"
    refused = history.stage_factors(found.chosen, dest, lake_files(plan, history.store))
    if refused:
        return cold(refused)
    return {"warm_start_uri": dest, "warm_start_from": f"dt={found.chosen.day} ({found.chosen.prefix})",
            "warm_start_note": None}


@fail_fast
def train(plan: RunPlan, matrix: MatrixResult, store: S3Store | None = None, rules: dict | None = None) -> TrainResult:
    """Train ALS with settings sized to the matrix; failed attempts are classified and resubmitted here,
    so a failure that outlives them is final (no Airflow retry on top).

    Searches first, or reuses a search, when the run asks (``choose_recipe``) and starts from an earlier
    model when it can (``warm_start_source``); ``store``: where published models are read (None: no
    search to reuse, no warm start); ``rules``: ``recommendation_rules``'s (the search scores under them)."""
    p, budget = plan.params, plan.settings.broadcast_budget_mb
    check_storage(plan, lake_files(plan, store), *model_buckets(plan, store))
    history = model_history(store, plan)
    chosen, search, context = choose_recipe(plan, history, rules)
    warm = warm_start_source(history, plan, chosen)
    shape = _shape(plan, matrix, largest_rank(chosen.recipe, search))
    sizing = size_als(shape, plan.cluster, strategy=p.strategy, broadcast_budget_mb=budget)
    log.info("sizing for %s, %s on %s: %s", shape, p.strategy, plan.cluster, sizing.as_dict())
    result = run_with_resubmission(spark_hook(plan),
                                   lambda s: dataclasses.replace(train_spec(plan, shape, s, chosen.recipe, search),
                                                                 **warm), sizing,
                                   plan.local, per_executor_limit_mb(plan.cluster),
                                   max_attempts=plan.settings.train_attempts)
    source = dict(chosen.sources)
    if search is not None:  # searched now: the job's trials and choice, with this day
        for name in set(tuning.SEARCHED) - set(search.fixed):
            source[name] = search_label(plan.day)
        record = {**result.tuning, "day": plan.day, "source": source, "context": context.as_dict()}
    elif chosen.reused is not None:  # reused: keeps the search's day, so its age still counts
        record = {"day": chosen.reused.day, "chosen": chosen.recipe.as_dict(), "source": source,
                  "metric": p.primary_metric, "trials": [], "context": context.as_dict(), "why": chosen.why}
    else:
        record = {"day": None, "chosen": chosen.recipe.as_dict(), "source": source, "metric": p.primary_metric,
                  "trials": [], "why": chosen.why}
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
            raise InvalidInput(f"do_not_recommend_key is set ({uri}) but no S3 store was given to read it")
        files = lake_files(plan, store)
        check_storage(plan, files, *model_buckets(plan, store))
        got = store.get_bytes(cfg.models_bucket, cfg.do_not_recommend_key)
        if got is None:
            raise MalformedRulesList(f"do-not-recommend list {uri}: no such object (set do_not_recommend_key to an "
                                     "existing CSV, or empty for no list)")
        listed = parse_do_not_recommend(got[0], uri)
        path = f"{plan.run_dir}/rules/{DO_NOT_RECOMMEND_FILE}"
        write_do_not_recommend(listed, path, files)
        rules.update(do_not_recommend=listed.as_record(uri), path=path)
    log.info("rules: at most %s tracks per artist; do-not-recommend list: %s", rules["max_per_artist"] or "any",
             rules["do_not_recommend"] or "none")
    return rules


def write_do_not_recommend(listed, uri: str, files: LakeFiles) -> None:
    """The list as Parquet (``user_id`` null = everyone, ``item_id``) at the lake file ``uri``, for
    the evaluation job. The list is already in memory (``parse_do_not_recommend``), and so is its Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    users = [None] * len(listed.items) + [u for u, _ in listed.pairs]
    items = list(listed.items) + [i for _, i in listed.pairs]
    body = io.BytesIO()
    pq.write_table(pa.table({"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string())}), body)
    files.put_bytes(uri, body.getvalue())


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


@fail_fast
def evaluate(plan: RunPlan, matrix: MatrixResult, store: S3Store | None = None,
             trained: TrainResult | None = None, rules: dict | None = None) -> EvaluateResult:
    """Score the model on the held-out days, with Spark settings sized to the matrix (``size_evaluate``);
    with ``store``, the published model is scored on the same pairs too when it may be compared
    (``music_recs.history.comparison``: never a model trained on this run's held-out days), and with
    ``trained`` (this run's training result) churn is checked against it when it has the same recipe
    (``music_recs.history.churn_reference``). ``rules`` (``recommendation_rules``): every top-N, and so
    every metric, obeys them. The result's ``comparison`` says in one line what was compared, or why not."""
    p = plan.params
    files = lake_files(plan, store)
    check_storage(plan, files, *model_buckets(plan, store))
    history = model_history(store, plan)
    compared = history_rules.comparison(history.published, plan.day, p)
    published_uri = None
    if compared.chosen is not None:
        published_uri = f"{plan.run_dir}/published"
        refused = history.stage_factors(compared.chosen, published_uri, files)
        if refused:
            published_uri, compared = None, history_rules.Choice(None, refused)
    comparison_line = f"compared {compared.why}" if compared.chosen else f"not compared: {compared.why}"
    log.info("published model %s", comparison_line)
    recipe = Recipe.within(trained.params) if trained is not None else None
    churn_ref = (history_rules.churn_reference(compared.chosen, plan.day, p, trained.strategy, recipe)
                 if trained is not None and recipe is not None and compared.chosen is not None
                 else history_rules.Choice(None, compared.why if compared.chosen is None else "no training result"))
    churn = f"checked {churn_ref.why}" if churn_ref.chosen else f"not checked: {churn_ref.why}"
    log.info("churn %s", churn)
    rank = trained.params["rank"] if trained is not None else p.recipe.rank
    sizing = size_evaluate(_shape(plan, matrix, rank), plan.cluster, max(p.k, p.top_n), plan.settings.broadcast_budget_mb)
    result = spark_hook(plan).submit(evaluate_spec(plan, published_uri, churn_ref.chosen is not None, rules),
                                     conf=sizing.spark_conf(), driver_memory=f"{sizing.driver_memory_mb}m",
                                     **executor_args(sizing, plan.spark_master))
    result = dataclasses.replace(result, comparison=comparison_line)
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


@fail_fast
def quality_gate(store: S3Store, plan: RunPlan, evaluated: EvaluateResult) -> dict:
    """The gate (``music_recs.quality_gate.decide``) on the evaluation's numbers. The published model
    counts only when the evaluation compared with it (scored on this run's held-out pairs); otherwise
    the manifest's metrics of a model that may be compared (``music_recs.history.comparison``)."""
    p = plan.params
    check_storage(plan, lake_files(plan, store), *model_buckets(plan, store), lake=False)
    lift = (evaluated.lift or {}).get(p.primary_metric)
    comparison_line = evaluated.comparison
    if evaluated.published is not None:  # scored on this run's held-out pairs
        published, published_lift = evaluated.published, (evaluated.lift_over_published or {}).get(p.primary_metric)
    else:
        compared = history_rules.comparison(model_history(store, plan).published, plan.day, p)
        published, published_lift = (compared.chosen.metrics.get("model") if compared.chosen else None), None
        if compared.chosen is not None:  # not scored on these pairs: the gate uses its manifest's numbers
            comparison_line = f"compared {compared.why} (its manifest's metrics)"
        comparison_line = comparison_line or f"not compared: {compared.why}"
    output_failures = tuple((evaluated.output_checks or {}).get("failed") or ())
    decision = decide(p.primary_metric, evaluated.model, evaluated.baseline_popularity, published, p.gate_min_lift,
                      p.gate_max_drop, p.override_quality_gate, lift, published_lift, output_failures,
                      min_users=p.gate_min_users)
    log.info("dt=%s: published model %s", plan.day, comparison_line)
    if not decision.publish:
        raise QualityGateFailed(f"dt={plan.day}: {decision.message()}; not published")
    (log.warning if decision.overridden else log.info)("dt=%s: %s", plan.day, decision.message())
    return {**decision.as_dict(), "comparison": comparison_line}


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
            "data_docs": docs_link(docs)}


TRAINING_FIELDS = ("strategy", "params", "data", "iterations", "seconds", "seconds_per_iteration", "spark_conf",
                   "submission", "factor_exchange", "cg_steps", "tuning", "warm_start", "loss")


@fail_fast
def publish_run(store: S3Store, plan: RunPlan, ingested: IngestResult, validated: ValidateResult,
                matrix: MatrixResult, trained: TrainResult, evaluated: EvaluateResult, gate: dict) -> dict:
    cfg, p = plan.settings, plan.params
    files = lake_files(plan, store)
    check_storage(plan, files, (cfg.models_bucket, "models_bucket"))
    training = trained.to_dict()
    manifest = manifests.build(
        code_version=code_version(), params=p.as_dict(), data_window=matrix.window, rows=ingested.counts,
        quarantine={"uri": ingested.quarantine_uri, "reasons": ingested.quarantine_reasons},
        validation={"suite": validated.suite, "statistics": validated.statistics, "profile": validated.profile},
        matrix=matrix.stats[p.granularity],
        training={k: training[k] for k in TRAINING_FIELDS if training[k] is not None},
        metrics={"k": evaluated.k, "model": evaluated.model, "baseline_popularity": evaluated.baseline_popularity,
                 "lift_over_popularity": evaluated.lift, "published_model": evaluated.published,
                 "change_over_published": evaluated.lift_over_published},
        comparison=gate.get("comparison") or evaluated.comparison or "not compared",
        evaluation={"seconds": evaluated.seconds, "submission": evaluated.submission},
        output_checks=output_checks_record(evaluated.output_checks), rules=evaluated.rules, quality_gate=gate)
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
        manifest, allow_rewind=p.allow_pointer_rewind, files=files,
    )
    m = evaluated.model
    log.info("published %s (pointer %s); MAP@%d %.4f, precision@%d %.4f", uri,
             "moved" if decision["moved"] else "kept: " + decision["reason"], evaluated.k, m["map"],
             evaluated.k, m["precision"])
    return {"prefix": uri, "manifest": f"s3://{cfg.models_bucket}/{decision['manifest_key']}",
            "report": f"s3://{cfg.models_bucket}/{manifest['report']['key']}",
            "manifest_sha256": decision["pointer"]["manifest_sha256"],
            "pointer_moved": decision["moved"], "pointer_reason": decision["reason"], "metrics": m}


@fail_fast
def check_published_model(extra: dict, cfg: DeploymentSettings | None = None) -> dict:
    """What the example consumer checks of a published-model event (``model_event``) before it
    would load the model: the event names this deployment's models bucket and a manifest under its
    prefix, announced with its SHA-256 (``publish.verify_publication``), read through the read-only
    connection ``consumer_aws_conn_id``. A refused event fails at once, in one line."""
    cfg = cfg or load_settings()
    if extra.get("bucket") != cfg.models_bucket:
        raise InvalidInput(f"the event names bucket {extra.get('bucket')!r}, not the models bucket "
                           f"{cfg.models_bucket!r}; refused")
    if not isinstance(extra.get("manifest_sha256"), str):
        raise InvalidInput("the event carries no manifest_sha256; refused")
    store = S3Store.from_airflow(cfg.consumer_aws_conn_id)
    try:
        return verify_publication(store, cfg.models_bucket, extra.get("manifest"), cfg.models_prefix,
                                  extra["manifest_sha256"])
    except PublishError as exc:
        raise InvalidInput(str(exc)) from None


def model_event(plan: RunPlan, published: dict) -> dict:
    """The extra of the published-model asset event; skips (no event) when the pointer did not move."""
    if not published["pointer_moved"]:
        raise AirflowSkipException(f"latest.json was not moved ({published['pointer_reason']}): no asset event")
    cfg = plan.settings
    return {"day": plan.day, "run_id": plan.run_id, "bucket": cfg.models_bucket, "pointer": cfg.pointer_key,
            "manifest": published["manifest"].removeprefix(f"s3://{cfg.models_bucket}/"),
            "manifest_sha256": published["manifest_sha256"]}

