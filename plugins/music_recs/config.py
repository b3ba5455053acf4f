"""Pipeline configuration: where data lives and which connections to use.

Each setting is looked up, first match wins, in:

1. the environment variable ``MUSIC_RECS_<NAME>`` (e.g. ``MUSIC_RECS_RAW_BUCKET``);
2. the Airflow Variable ``music_recs_config`` (a JSON object, keys as below), when
   running inside Airflow;
3. the embedded default, which suits the local one-machine run.

The S3 endpoint and credentials are not here: they come from the Airflow connection
``aws_conn_id`` (``endpoint_url`` extra), the Spark master from ``spark_conn_id``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile

from music_recs.landing import FORMATS
from music_recs.validation import check_bucket, check_lake_uri, check_prefix

log = logging.getLogger(__name__)

AIRFLOW_VARIABLE = "music_recs_config"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    raw_bucket: str = "music-raw"
    landing_prefix: str = "stream_logs"
    quarantine_prefix: str = "quarantine/stream_logs"
    models_bucket: str = "music-models"
    models_prefix: str = "music_recs"
    # Parquet lake: a local folder for the one-machine run; s3a:// or hdfs:// on a cluster.
    lake_uri: str = os.path.join(tempfile.gettempdir(), "music_recs", "lake")
    # Landing format: "auto" detects per file (see music_recs.landing); or one of
    # native, spotify, lastfm, listenbrainz for a source that always sends one format.
    source_format: str = "auto"
    # Share of a day's rows that may be quarantined before the run stops (ingest fails).
    max_quarantine_fraction: float = 0.05
    aws_conn_id: str = "aws_default"
    spark_conn_id: str = "spark_default"

    def __post_init__(self):
        check_bucket(self.raw_bucket, "raw_bucket")
        check_bucket(self.models_bucket, "models_bucket")
        for name in ("landing_prefix", "quarantine_prefix", "models_prefix"):
            check_prefix(getattr(self, name), name)
        check_lake_uri(self.lake_uri)
        if self.source_format not in ("auto", *FORMATS):
            raise ValueError(f"source_format must be 'auto' or one of {FORMATS}, got {self.source_format!r}")
        object.__setattr__(self, "max_quarantine_fraction", float(self.max_quarantine_fraction))
        if not 0 <= self.max_quarantine_fraction <= 1:
            raise ValueError(f"max_quarantine_fraction must be within [0, 1], got {self.max_quarantine_fraction}")

    # --- derived locations ------------------------------------------------------------
    def landing_key_prefix(self, day: str) -> str:
        return f"{self.landing_prefix}/dt={day}/"

    def quarantine_key_prefix(self, day: str) -> str:
        return f"{self.quarantine_prefix}/dt={day}/"

    def model_key_prefix(self, day: str, run_key: str) -> str:
        return f"{self.models_prefix}/dt={day}/run={run_key}/"

    @property
    def pointer_key(self) -> str:
        return f"{self.models_prefix}/latest.json"

    def lake_path(self, *parts: str) -> str:
        return "/".join([self.lake_uri.rstrip("/"), *parts])


def _airflow_variable() -> dict:
    try:
        from airflow.sdk import Variable
    except ImportError:  # not running under Airflow
        return {}
    try:
        raw = Variable.get(AIRFLOW_VARIABLE, default=None)
    except Exception as exc:  # no task context / no API server: fall back to defaults
        log.debug("Variable %s not readable: %s", AIRFLOW_VARIABLE, exc)
        return {}
    if not raw:
        return {}
    value = raw if isinstance(raw, dict) else json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"Airflow Variable {AIRFLOW_VARIABLE} must be a JSON object")
    return value


def load_config(use_airflow: bool = True) -> PipelineConfig:
    """Resolve the configuration (environment > Airflow Variable > defaults)."""
    from_var = _airflow_variable() if use_airflow else {}
    unknown = set(from_var) - {f.name for f in dataclasses.fields(PipelineConfig)}
    if unknown:
        raise ValueError(f"Airflow Variable {AIRFLOW_VARIABLE} has unknown key(s): {sorted(unknown)}")
    values = {}
    for field in dataclasses.fields(PipelineConfig):
        env = os.environ.get(f"MUSIC_RECS_{field.name.upper()}")
        if env:
            values[field.name] = env
        elif field.name in from_var:
            values[field.name] = str(from_var[field.name])
    return PipelineConfig(**values)
