"""No credentials in the repository; values from outside cannot point the pipeline elsewhere.

(That no secret reaches a run's logs is checked on a real scheduler's logs in
test_scheduler_runs.py; that spark-submit output is masked, in test_resubmit_policy.py.)
"""

import datetime as dt
import re
import subprocess

import pytest

from music_recs_airflow import cli, tasks
from music_recs.settings import DeploymentSettings, resolve
from music_recs.checks import check_lake_uri, check_prefix

from tests.conftest import REPO

# Values that look like credentials. Placeholders (moto's dummy "testing", masked "***",
# templated "{...}", "<...>", "$VAR") are not findings.
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----"),
    "AWS secret access key": re.compile(
        r"(?i)aws_?secret_?access_?key\W{0,3}\s*[=:]\s*[\"']?(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@\"'<>{}]+:(?P<value>[^@\s\"'/<>{}$*]{3,})@"),
    "Slack webhook": re.compile(r"hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{20,}"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
}
PLACEHOLDERS = {"testing", "password", "secret", "user", "pass"}


def find_secrets(text: str) -> list[tuple[str, str]]:
    found = []
    for name, pattern in SECRET_PATTERNS.items():
        for match in pattern.finditer(text):
            value = match.groupdict().get("value") or match.group(0)
            if value.lower() not in PLACEHOLDERS:
                found.append((name, match.group(0)[:80]))
    return found


def repository_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def test_the_scanner_finds_each_kind_of_credential():
    # Built at run time so this file itself holds none of them.
    planted = "\n".join([
        "key = AKIA" + "Q" * 16,
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY",
        "sql_alchemy_conn = postgresql://airflow:" + "s3cr3t-Pa55" + "@db:5432/airflow",
        "https://hooks.slack.com/services/" + "T0123ABC/B0456DEF/" + "a" * 24,
        "token: ghp_" + "b" * 36,
    ])
    assert sorted(name for name, _ in find_secrets(planted)) == sorted(SECRET_PATTERNS)
    assert find_secrets('{"login": "testing", "password": "testing"} aws://testing:testing@/ s3a://***:***@x') == []


def test_no_credentials_in_the_repository():
    files = repository_files()
    assert "infra/airflow/connections.json" in files and "dags/music_recs_daily.py" in files
    findings = []
    for name in files:
        data = (REPO / name).read_bytes()
        if b"\0" in data[:8192] or len(data) > 5_000_000:
            continue  # binary or data file
        findings += [(name, *hit) for hit in find_secrets(data.decode("utf-8", errors="replace"))]
    assert findings == []


def test_connection_and_variable_files_hold_no_secrets():
    import json

    conns = json.loads((REPO / "infra" / "airflow" / "connections.json").read_text())
    assert set(conns) >= {"aws_default", "spark_default"}
    for conn in conns.values():
        assert not conn.get("password") and not conn.get("login"), conn
    config = json.loads((REPO / "infra" / "airflow" / "variables.json").read_text())["music_recs_config"]["value"]
    assert DeploymentSettings(**config).aws_conn_id in conns  # the Variable is a valid configuration


START = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("conf, named", [
    ({"models_bucket": "someone-elses-bucket"}, "models_bucket"),
    ({"lake_uri": "../../etc"}, "lake_uri"),
    ({"models_prefix": "/absolute/prefix", "rank": 8}, "models_prefix"),
    ({"landing_prefix": "s3://other-bucket/stream_logs"}, "landing_prefix"),
])
def test_run_conf_cannot_name_buckets_prefixes_or_paths(conf, named, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as err:  # a run conf that breaks a rule fails without retries
        tasks.plan_run(conf, START, "manual__x", DeploymentSettings(lake_uri=str(tmp_path)))
    assert f"run conf may not set {named}" in str(err.value) and "configuration" in str(err.value)


@pytest.mark.parametrize("setting, value, message", [
    ("MUSIC_RECS_LANDING_PREFIX", "../stream_logs", "must not contain '..'"),
    ("MUSIC_RECS_MODELS_PREFIX", "/music_recs", "must be relative to its bucket"),
    ("MUSIC_RECS_QUARANTINE_PREFIX", "s3://other-bucket/q", "must be relative to its bucket"),
    ("MUSIC_RECS_MODELS_BUCKET", "other/bucket", "is not a valid S3 bucket name"),
    ("MUSIC_RECS_LAKE_URI", "relative/lake", "must be an absolute path"),
    ("MUSIC_RECS_LAKE_URI", "/data/lake/../../etc", "must not contain '..'"),
    ("MUSIC_RECS_LAKE_URI", "http://example.com/lake", "is not one of file, s3a, hdfs"),
])
def test_configuration_rejects_traversal_absolute_prefixes_and_other_locations(monkeypatch, setting, value, message):
    monkeypatch.setenv(setting, value)
    with pytest.raises(ValueError) as err:
        resolve()
    assert message in str(err.value) and value in str(err.value)


def test_valid_locations_are_kept():
    assert check_lake_uri("/srv/music_recs/lake") == "/srv/music_recs/lake"
    assert check_lake_uri("s3a://music-lake/music_recs") == "s3a://music-lake/music_recs"
    assert check_prefix("music_recs/v2") == "music_recs/v2"


@pytest.mark.parametrize("day", ["../2026-11-20", "/2026-11-20", "2026-11-20/../../x"])
def test_cli_days_are_dates_only(day, capsys, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", '{"conn_type": "aws", "extra": {"endpoint_url": "http://127.0.0.1:9"}}')
    assert cli.main(["ingest", "--from-day", day, "--to-day", "2026-11-21"]) == 1
    assert "--from-day must look like YYYY-MM-DD" in capsys.readouterr().err
