"""The contract between a task and its Spark job: one spec and one result type per job.

The task builds the spec, writes it as JSON and submits the job with ``--spec FILE``; the job
reads it back with the same class (``from_json``), runs, and writes its result as JSON
(``--result FILE``), which the task reads back with the result class. Both sides import this
module, so a field renamed on one side is renamed on the other, and ``from_dict`` refuses
unknown or missing fields instead of passing a silent default.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from typing import ClassVar

from music_recs.checks import parse_day
from music_recs.confidence import ConfidenceParams
from music_recs.convergence import DEFAULT_TOL
from music_recs.metrics import METRICS
from music_recs.params import DEFAULTS as PARAM_DEFAULTS
from music_recs.recipe import Recipe
from music_recs.tuning import SEARCH_SPACE
from music_recs.sizing import DEFAULT_BROADCAST_BUDGET_MB
from music_recs.failures import InvalidInput
from music_recs.lake_commit import DEFAULT_LEASE_SECONDS, DEFAULT_RETENTION_HOURS

GRANULARITIES = ("track", "artist")
STRATEGIES = ("cg", "mllib")
EXCHANGES = ("broadcast", "join")


def _plain(value):
    """A field's JSON value: a recipe as its dict, other dataclasses as theirs."""
    if isinstance(value, Recipe):
        return value.as_dict()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


class _Contract:
    """JSON round trip for the frozen dataclasses below."""

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, values: Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise InvalidInput(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = required - set(values)
        if missing:
            raise InvalidInput(f"{cls.__name__} is missing field(s) {sorted(missing)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in values.items():
            if hints[name] is ConfidenceParams and isinstance(value, Mapping):
                value = ConfidenceParams(**value)
            elif isinstance(value, list) and typing.get_origin(hints[name]) is tuple:
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


class JobSpec(_Contract):
    """A job's input; ``JOB`` names the entry point ``spark_jobs/<JOB>.py``."""

    JOB: ClassVar[str]


# --- specs --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IngestSpec(JobSpec):
    """Ingest one day of landing files into the lake (``spark_jobs/ingest.py``).

    day: the partition ``dt=D`` (ISO date). input_uri: folder of the day's landing files.
    lake_uri: the lake root. source_format: ``auto`` (detect per file) or one landing format.
    output_files: Parquet files of the day's plays; 0 (default) = one per 48 MiB of landing files
    (about a million plays of gzip'd JSON lines).
    reader: ``auto`` (default: Spark's text reader for the files it reads exactly, the Python
    reader for the rest) or ``python`` (the Python reader for every file: the reference the
    benchmark compares with, and a switch should a source ever read differently).
    writer: who the day's lease names while the job writes it (``music_recs.lake_commit``): one
    line a person can act on, the same for every try of one task (a DAG run's task: a retry
    then takes over the lease its killed try left); "" (default): ``user@host pid N`` of the job.
    retention_hours: an older copy of the day is deleted this long after it stopped being the
    day (24; ``lake_retention_hours``). lease_seconds: the lease lasts this long unless renewed
    (120; renewed every quarter of it while the job runs).
    max_expansion: a landing file may decompress to at most this many times its size, or 64 MiB
    (100; ``max_landing_expansion``); more fails the job with ``LandingTooLarge`` naming the file.
    quarantine_rows_per_reason: quarantined rows kept per reason (10000; the first in file and line
    order); the result's counts are of every quarantined row.
    """

    JOB: ClassVar[str] = "ingest"
    day: str
    input_uri: str
    lake_uri: str
    source_format: str = "auto"
    output_files: int = 0
    reader: str = "auto"
    writer: str = ""
    retention_hours: float = DEFAULT_RETENTION_HOURS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_expansion: float = 100.0
    quarantine_rows_per_reason: int = 10_000

    def __post_init__(self):
        parse_day(self.day, "day")
        if self.reader not in ("auto", "python"):
            raise InvalidInput(f"reader must be 'auto' or 'python', got {self.reader!r}")
        if not isinstance(self.writer, str) or len(self.writer.splitlines()) > 1:
            raise InvalidInput(f"writer must be one line of text, got {self.writer!r}")
        if isinstance(self.retention_hours, bool) or not isinstance(self.retention_hours, (int, float)) \
                or not 0 <= self.retention_hours <= 24 * 365:
            raise InvalidInput(f"retention_hours must be within [0, 8760], got {self.retention_hours!r}")
        if isinstance(self.lease_seconds, bool) or not isinstance(self.lease_seconds, (int, float)) \
                or not 1 <= self.lease_seconds <= 24 * 3600:
            raise InvalidInput(f"lease_seconds must be within [1, 86400], got {self.lease_seconds!r}")
        if isinstance(self.max_expansion, bool) or not isinstance(self.max_expansion, (int, float)) \
                or not self.max_expansion >= 1:
            raise InvalidInput(f"max_expansion must be a number >= 1, got {self.max_expansion!r}")
        if isinstance(self.quarantine_rows_per_reason, bool) or not isinstance(self.quarantine_rows_per_reason, int) \
                or self.quarantine_rows_per_reason < 1:
            raise InvalidInput(f"quarantine_rows_per_reason must be a whole number >= 1, "
                               f"got {self.quarantine_rows_per_reason!r}")


@dataclasses.dataclass(frozen=True)
class ValidateSpec(JobSpec):
    """Validate one day of accepted plays with the GX suites (``spark_jobs/validate.py``).

    day, lake_uri: as for ingest. suite_path: the row-level suite (JSON); summary_suite_path: the
    day-summary suite. ingest_counts: ingest's ``rows_read``, ``duplicates_removed`` and
    ``rows_quarantined`` (None: read from the lake, no duplicates or quarantine known).
    max_quarantine_fraction: the summary suite's bound (0.05). docs_dir: where Data Docs are
    built (None: no Data Docs).
    """

    JOB: ClassVar[str] = "validate"
    day: str
    lake_uri: str
    suite_path: str
    summary_suite_path: str
    ingest_counts: dict | None = None
    max_quarantine_fraction: float = 0.05
    docs_dir: str | None = None

    def __post_init__(self):
        parse_day(self.day, "day")


@dataclasses.dataclass(frozen=True)
class ConfidenceSpec(JobSpec):
    """Build the confidence matrices for day D (``spark_jobs/confidence.py``).

    confidence: how plays become confidence (``music_recs.confidence.ConfidenceParams``).
    window_days: days ``[D - window_days + 1, D]`` are read (90); the last ``holdout_days`` (1)
    are held out for evaluation. min_user_items, min_item_users: support filters (2, 2).
    granularities: matrices to build (``track``, ``artist``). out_uri: where they go (None:
    ``{lake}/matrix/dt=D``). validation_days: 0 (default) = no tuning split; N = also write the
    nested split tuning trains and scores on (``tuning/train``: the training days but the last
    N; ``tuning/validation``: what users played in those N days), see ``music_recs.tuning``.
    tuning_users: the tuning split holds at most this many users (0, default: every user), a
    sample fixed by a hash of the user id.
    """

    JOB: ClassVar[str] = "confidence"
    day: str
    lake_uri: str
    confidence: ConfidenceParams = ConfidenceParams()
    window_days: int = 90
    holdout_days: int = 1
    min_user_items: int = 2
    min_item_users: int = 2
    granularities: tuple[str, ...] = GRANULARITIES
    out_uri: str | None = None
    validation_days: int = 0
    tuning_users: int = 0

    def __post_init__(self):
        parse_day(self.day, "day")
        if self.tuning_users < 0:
            raise InvalidInput(f"tuning_users must be >= 0 (0: every user), got {self.tuning_users}")
        if self.holdout_days + self.validation_days >= self.window_days:
            raise InvalidInput(f"holdout_days ({self.holdout_days}) + validation_days ({self.validation_days}) must be "
                             f"smaller than the window ({self.window_days} days)")
        bad = set(self.granularities) - set(GRANULARITIES)
        if bad or not self.granularities:
            raise InvalidInput(f"granularities must be some of {GRANULARITIES}, got {self.granularities}")


@dataclasses.dataclass(frozen=True)
class TuneSpec(_Contract):
    """A parameter search inside the training job (``music_recs.tuning``).

    trials: candidates of the first rung; minutes: no trial starts after this (the run params'
    ``tune_trials`` and ``tune_minutes`` defaults, 24 and 20).
    fixed: names of searched parameters not to vary (given in the trigger form). metric: scored
    on the validation days at k (``map``, 10). seed: of the candidate sample (0). space: values
    to try per name, replacing ``music_recs.tuning.SEARCH_SPACE``'s (None: those).
    local_max_nnz: CG trials of a tuning matrix with at most this many ratings run on the
    driver with the same kernels (20M; 0 = always on the cached blocks), see ``spark_jobs.lib.als_local``.
    max_per_artist (0: no cap) and do_not_recommend_path (None: no list): the rules every trial's
    lists obey, as ``EvaluateSpec``'s, so the search scores the lists the gate scores (the cap
    needs the matrix's ``items/``).
    """

    trials: int = PARAM_DEFAULTS["tune_trials"]
    minutes: float = PARAM_DEFAULTS["tune_minutes"]
    fixed: tuple[str, ...] = ()
    metric: str = "map"
    k: int = 10
    seed: int = 0
    space: dict | None = None
    local_max_nnz: int = 20_000_000
    max_per_artist: int = 0
    do_not_recommend_path: str | None = None

    def __post_init__(self):
        if self.trials < 1 or not self.minutes > 0:
            raise InvalidInput(f"a search needs trials >= 1 and minutes > 0, got {self.trials} and {self.minutes}")
        if self.metric not in METRICS:
            raise InvalidInput(f"unknown tuning metric {self.metric!r}: use one of {', '.join(METRICS)}")
        unknown = (set(self.fixed) | set(self.space or {})) - set(SEARCH_SPACE)
        if unknown:
            raise InvalidInput(f"not searched: {', '.join(sorted(unknown))}; searched: {', '.join(SEARCH_SPACE)}")
        if isinstance(self.max_per_artist, bool) or not isinstance(self.max_per_artist, int) or self.max_per_artist < 0:
            raise InvalidInput(f"max_per_artist must be an int >= 0 (0: no cap), got {self.max_per_artist!r}")
        if self.do_not_recommend_path is not None and not (isinstance(self.do_not_recommend_path, str)
                                                           and self.do_not_recommend_path.strip()):
            raise InvalidInput(f"do_not_recommend_path must be None or a path, got {self.do_not_recommend_path!r}")


@dataclasses.dataclass(frozen=True)
class TrainSpec(JobSpec):
    """Train implicit ALS on one matrix (``spark_jobs/train_als.py``).

    matrix_uri: a granularity's matrix folder (holding ``train/``); out_uri: where factors go.
    recipe: the model's values (``music_recs.recipe.Recipe``: rank, reg and reg_scaling, alpha,
    confidence_function, epsilon), as the run's params and the search name them; default the
    recipe's defaults. ``strength = f(r)`` is recomputed from the matrix's play counts ``r`` with
    them; strength_as_built: True = train on the matrix's ``strength`` column as built (a matrix
    without play counts; default False). max_iter: 10.
    strategy: ``cg`` (default; conjugate-gradient solves on cached blocks) or ``mllib`` (the reference).
    user_blocks, item_blocks: 0 = one per core. checkpoint_dir: None = a temp folder;
    checkpoint_interval: 5. seed: 42. cg_steps: CG steps per row and half-iteration (3).
    exchange: per side (``user``, ``item``) ``broadcast`` or ``join`` (cg); None = by
    ``broadcast_budget_mb`` (256). track_loss: compute the objective every iteration (cg).
    tune: None (default) = train with the values above; a ``TuneSpec`` dict = first search
    the parameters on the matrix's nested split (``tuning/``), then train the winner.
    warm_start_uri: None (default: start from random factors) or a folder holding an earlier
    model's ``user_factors/`` and ``item_factors/`` (with string ids) to start from (cg, same
    rank; see ``train_als.warm_start``); warm_start_from: what that model is (for the result);
    warm_start_note: why there is none (for the result). early_stop_tol: a warm-started fit
    stops once an iteration lowers the objective by less than this share (0.005; 0 = never;
    ``music_recs.convergence``).
    """

    JOB: ClassVar[str] = "train_als"
    matrix_uri: str
    out_uri: str
    recipe: Recipe = Recipe()
    strength_as_built: bool = False
    max_iter: int = 10
    strategy: str = "cg"
    user_blocks: int = 0
    item_blocks: int = 0
    checkpoint_dir: str | None = None
    checkpoint_interval: int = 5
    seed: int = 42
    cg_steps: int = 3
    exchange: dict | None = None
    broadcast_budget_mb: int = DEFAULT_BROADCAST_BUDGET_MB
    track_loss: bool = False
    tune: dict | None = None
    warm_start_uri: str | None = None
    warm_start_from: str | None = None
    warm_start_note: str | None = None
    early_stop_tol: float = DEFAULT_TOL

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise InvalidInput(f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if isinstance(self.recipe, Mapping):  # from JSON
            object.__setattr__(self, "recipe", Recipe.from_dict(self.recipe))
        if not self.recipe.scale_reg and self.strategy == "mllib":
            raise InvalidInput("MLlib scales reg by each row's ratings; scale_reg=False needs strategy 'cg'")
        if self.tune is not None:
            TuneSpec.from_dict(self.tune)
        if self.exchange is not None and (set(self.exchange) - {"user", "item"}
                                          or set(self.exchange.values()) - set(EXCHANGES)):
            raise InvalidInput(f"exchange maps user/item to one of {EXCHANGES}, got {self.exchange}")


@dataclasses.dataclass(frozen=True)
class EvaluateSpec(JobSpec):
    """Evaluate a model on held-out listening and write its recommendations (``spark_jobs/evaluate.py``).

    model_uri: training's output (holding ``model/``); matrix_uri: the matrix it was trained on;
    out_uri: where ``recommendations/`` and ``similar_items/`` go. k: metric cut-off (10);
    top_n: recommendations per user (50); similar_n: similar items per item (20);
    broadcast_budget_mb: item factors up to this size are broadcast for scoring (256).
    bootstrap_resamples: resamples of the per-user scores for the lift's interval (1000);
    seed: of the resampling (42). published_uri: None (default), or a folder holding the
    published model's ``user_factors/`` and ``item_factors/`` (with their string ids): it is
    then scored on the same held-out pairs and compared user by user.
    output_suite_dir: the output suites' folder (None: not run); docs_dir: their Data Docs;
    compare_churn: check churn against the published model (see the task's ``churn_reference``).
    max_per_artist: at most this many items of one artist in a user's top-N, filled from further
    down (0, default: no cap); do_not_recommend_path: None, or a Parquet file (``user_id`` null =
    everyone, ``item_id``) of items never recommended. Every top-N obeys both, the model's, the
    popularity baseline's and the published model's, so the metrics score what is published.
    """

    JOB: ClassVar[str] = "evaluate"
    model_uri: str
    matrix_uri: str
    out_uri: str
    k: int = 10
    top_n: int = 50
    similar_n: int = 20
    broadcast_budget_mb: int = DEFAULT_BROADCAST_BUDGET_MB
    bootstrap_resamples: int = 1000
    seed: int = 42
    published_uri: str | None = None
    output_suite_dir: str | None = None
    docs_dir: str | None = None
    compare_churn: bool = False
    max_per_artist: int = 0
    do_not_recommend_path: str | None = None


# --- results ------------------------------------------------------------------------------
# ``submission``: how the job was submitted (settings, attempts), added by the Airflow side.
@dataclasses.dataclass(frozen=True)
class IngestResult(_Contract):
    """What ingest did: rows read = accepted + quarantined + duplicates, by reason and format."""

    day: str
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    duplicates_removed: int
    duplicates_of_other_days: int
    quarantine_reasons: dict
    formats: dict
    seconds: dict
    files_by_reader: dict | None = None  # {"spark": files its text reader read, "python": files split in Python}
    quarantine_uri: str | None = None
    submission: dict | None = None

    @property
    def counts(self) -> dict:
        return {"rows_read": self.rows_read, "rows_accepted": self.rows_accepted,
                "rows_quarantined": self.rows_quarantined, "duplicates_removed": self.duplicates_removed}


@dataclasses.dataclass(frozen=True)
class ValidateResult(_Contract):
    """The GX verdict: every check, the failed ones, statistics per suite and the Data Docs page."""

    day: str
    suite: str
    success: bool
    checks: list
    statistics: dict
    data_docs: str | None
    summary: dict
    failed: list
    seconds: dict
    profile: dict = dataclasses.field(default_factory=dict)  # what the day's one Spark pass counted
    submission: dict | None = None


@dataclasses.dataclass(frozen=True)
class MatrixResult(_Contract):
    """The matrices built: the window's days, the confidence params, per granularity their statistics."""

    day: str
    window: dict
    params: dict
    min_user_items: int
    min_item_users: int
    stats: dict  # per granularity: users, items, nnz, ...
    ids_added: dict
    seconds: dict
    submission: dict | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult(_Contract):
    """The same fields for both strategies; ``cg_steps``, ``factor_exchange``, ``loss`` and
    ``iteration_seconds`` are the CG strategy's (None for MLlib)."""

    strategy: str
    params: dict
    data: dict
    iterations: int
    seconds: dict
    seconds_per_iteration: float
    spark_conf: dict
    spark_version: str
    cg_steps: int | None = None
    factor_exchange: dict | None = None
    loss: list | None = None
    iteration_seconds: list | None = None
    profile: dict | None = None
    tuning: dict | None = None  # the search: trials (params, rung, metric, seconds), winner, budget
    # used, from (which model), reason, users/items {from_model, new}, iterations, stopped_early
    warm_start: dict | None = None
    submission: dict | None = None


@dataclasses.dataclass(frozen=True)
class EvaluateResult(_Contract):
    """Metrics at k of the model and of the popularity baseline on the held-out pairs."""

    k: int
    top_n: int
    model: dict
    baseline_popularity: dict
    recommendation_rows: int
    similar_items_per_item: int
    seconds: dict
    lift: dict | None = None  # per metric: paired bootstrap of model vs popularity (quality_gate.paired_bootstrap)
    published: dict | None = None  # the published model's metrics on these held-out pairs
    lift_over_published: dict | None = None  # per metric: paired bootstrap of model vs the published model
    # The output suites: success, checks (one dict per expectation), failed (one line each),
    # summary (coverage, popular share, churn), data_docs; None when not run.
    output_checks: dict | None = None
    # The rules the top-N obeyed: max_per_artist, do_not_recommend (what matched this matrix),
    # users_short (users with fewer than top_n items because the rules left too few candidates).
    rules: dict | None = None
    submission: dict | None = None
    # Set by the Airflow side: which published model was compared with, or why none (one line).
    comparison: str | None = None


SPECS = {cls.JOB: cls for cls in (IngestSpec, ValidateSpec, ConfidenceSpec, TrainSpec, EvaluateSpec)}
RESULTS = {"ingest": IngestResult, "validate": ValidateResult, "confidence": MatrixResult, "train_als": TrainResult,
           "evaluate": EvaluateResult}
