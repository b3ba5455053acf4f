import datetime as dt

import pytest

from music_recs.settings import DeploymentSettings, resolve
from music_recs.params import DEFAULTS, DESCRIPTIONS, SCHEMAS, RunParams
from music_recs.checks import check_bucket, check_prefix, parse_day, safe_key_part


def test_defaults_are_valid():
    run = RunParams.from_params({})
    assert run.rank is None and run.recipe.rank == 32 and run.recipe.confidence_function == "log"
    assert run.window_days == 90
    assert run.confidence.skip_ms == 30_000


@pytest.mark.parametrize("params, message", [
    ({"rank": 0}, "parameter rank: 0 is less than the minimum of 2"),
    ({"rank": "32"}, "parameter rank: '32' is not of type 'null', 'integer'"),
    ({"rank": True}, "parameter rank: True is not of type 'null', 'integer'"),
    ({"alpha": 0}, "parameter alpha: 0 is less than or equal to the minimum of 0"),
    ({"max_iter": 51}, "parameter max_iter: 51 is greater than the maximum of 50"),
    ({"confidence_function": "sqrt"}, "parameter confidence_function: 'sqrt' is not one of [None, 'log', 'linear']"),
    ({"window_days": 5, "holdout_days": 5}, "holdout_days (5) must be smaller than window_days (5)"),
    ({"rnak": 3}, "unknown parameter(s): rnak"),
])
def test_invalid_params_are_rejected_with_a_readable_message(params, message):
    with pytest.raises(ValueError) as err:
        RunParams.from_params(params)
    assert message in str(err.value)


def test_every_param_has_a_description_type_and_default_in_schema():
    assert set(DEFAULTS) == set(SCHEMAS) == set(DESCRIPTIONS) == set(RunParams.__dataclass_fields__)
    for name, default in DEFAULTS.items():
        assert DESCRIPTIONS[name] and SCHEMAS[name]["type"], name
        RunParams.from_params({name: default})  # the default passes its own schema
    assert RunParams.from_params({}) == RunParams()


def test_airflow_params_carry_schema_and_reject_bad_values():
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError
    from music_recs_airflow.tasks import airflow_params

    params = airflow_params()
    assert isinstance(params["rank"], Param)
    assert params["rank"].schema["maximum"] == 512
    with pytest.raises(ParamValidationError):
        params["rank"].resolve(1000)
    assert params["rank"].resolve(64) == 64


@pytest.mark.parametrize("value", ["2026-13-01", "2026-02-30", "20261101", "../2026-11-01", "", None])
def test_parse_day_rejects_non_dates(value):
    with pytest.raises(ValueError):
        parse_day(value)


def test_parse_day_accepts_iso_date():
    assert parse_day("2026-11-20") == dt.date(2026, 11, 20)


@pytest.mark.parametrize("prefix", ["../models", "/abs/path", "a/../b", "s3://other-bucket/x", "a//b", "a b"])
def test_prefix_traversal_absolute_and_other_buckets_are_rejected(prefix):
    with pytest.raises(ValueError):
        check_prefix(prefix)


def test_prefix_and_bucket_accept_normal_values():
    assert check_prefix("stream_logs/v2/") == "stream_logs/v2"
    assert check_bucket("music-raw") == "music-raw"
    with pytest.raises(ValueError):
        check_bucket("Bad_Bucket")


def test_run_ids_become_safe_key_segments():
    assert safe_key_part("manual__2026-11-24T09:59:22.358820+00:00") == "manual__2026-11-24T09_59_22.358820_00_00"


def test_config_from_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("MUSIC_RECS_RAW_BUCKET", "other-raw")
    cfg = resolve()
    assert cfg.raw_bucket == "other-raw"
    assert cfg.landing_key_prefix("2026-11-20") == "stream_logs/dt=2026-11-20/"
    assert cfg.model_key_prefix("2026-11-20", "r1") == "music_recs/dt=2026-11-20/run=r1/"


def test_config_rejects_bad_prefix(monkeypatch):
    monkeypatch.setenv("MUSIC_RECS_MODELS_PREFIX", "../escape")
    with pytest.raises(ValueError, match="models_prefix"):
        resolve()
    with pytest.raises(ValueError):
        DeploymentSettings(models_bucket="UPPER")


def test_each_run_of_a_day_builds_and_reads_its_own_matrix(tmp_path):
    """Two runs of one day with other params (a scheduled run, a UI trigger with a wider window):
    a task of the first, cleared and rerun after the second, must read its own matrix."""
    from music_recs_airflow import tasks

    cfg = DeploymentSettings(lake_uri=str(tmp_path))
    start = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    scheduled = tasks.plan_run({}, start, "scheduled__2026-11-20T00:00:00+00:00", cfg)
    manual = tasks.plan_run({"window_days": 30}, start, "manual__2026-11-21T08:00:00+00:00", cfg)
    assert scheduled.matrix != manual.matrix
    for plan in (scheduled, manual):
        assert plan.matrix == f"{plan.run_dir}/matrix/granularity=track"
        assert plan.matrix.startswith(plan.matrices + "/")
