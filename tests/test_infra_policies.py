"""The AWS policy files: least privilege for the pipeline, TLS-only buckets."""

import json
from pathlib import Path

from music_recs.settings import DeploymentSettings

AWS = Path(__file__).resolve().parent.parent / "infra" / "aws"
CFG = DeploymentSettings()


def statements(name):
    return json.loads((AWS / name).read_text())["Statement"]


def allowed(stmts, action):
    return [r for s in stmts if s["Effect"] == "Allow" and action in ([s["Action"]] if isinstance(s["Action"], str)
                                                                       else s["Action"])
            for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]


LAKE = "arn:aws:s3:::music-lake/lake/*"  # the example lake_uri s3a://music-lake/lake (infra/DEPLOYMENT.md)


def test_pipeline_reads_landing_writes_quarantine_and_models_and_owns_only_the_lake():
    stmts = statements("pipeline-iam-policy.json")
    assert sorted(allowed(stmts, "s3:GetObject")) == sorted([
        f"arn:aws:s3:::{CFG.raw_bucket}/{CFG.landing_prefix}/*",
        f"arn:aws:s3:::{CFG.models_bucket}/{CFG.models_prefix}/*", LAKE])
    assert sorted(allowed(stmts, "s3:PutObject")) == sorted([
        f"arn:aws:s3:::{CFG.raw_bucket}/{CFG.quarantine_prefix}/*",
        f"arn:aws:s3:::{CFG.models_bucket}/{CFG.models_prefix}/*", LAKE])
    assert not any("*" == s["Action"] or s["Action"] == "s3:*" for s in stmts if s["Effect"] == "Allow")
    # The lake's commit protocol deletes old copies of a day and Spark's commit deletes what it
    # copied: deletes are allowed there and nowhere else.
    assert allowed(stmts, "s3:DeleteObject") == [LAKE]


def test_deletes_are_denied_explicitly():
    deny = [s for s in statements("pipeline-iam-policy.json") if s["Effect"] == "Deny"]
    assert deny and "s3:DeleteObject" in deny[0]["Action"]
    assert f"arn:aws:s3:::{CFG.models_bucket}/*" in deny[0]["Resource"]
    assert f"arn:aws:s3:::{CFG.raw_bucket}/*" in deny[0]["Resource"]


def test_bucket_policy_denies_plain_http():
    (stmt,) = statements("bucket-policy-tls-only.json")
    assert stmt["Effect"] == "Deny" and stmt["Principal"] == "*" and stmt["Action"] == "s3:*"
    assert stmt["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert f"arn:aws:s3:::{CFG.models_bucket}/*" in stmt["Resource"]


def test_sourcing_the_local_environment_twice_keeps_the_connections_valid_json():
    """A shell that sourced infra/local/env.sh (the demo tells users to) and then runs test.sh
    sources it again: the connections must stay what they were."""
    import os
    import subprocess

    env_sh = AWS.parent / "local" / "env.sh"
    script = (f"source {env_sh}; first=\"$AIRFLOW_CONN_SPARK_DEFAULT|$AIRFLOW_CONN_AWS_DEFAULT\"; source {env_sh}; "
              "echo \"$first\"; echo \"$AIRFLOW_CONN_SPARK_DEFAULT|$AIRFLOW_CONN_AWS_DEFAULT\"")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    once, twice = subprocess.run(["bash", "-c", script], env=clean, capture_output=True, text=True,
                                 check=True).stdout.splitlines()
    assert once == twice
    spark, aws = twice.split("|")
    assert json.loads(spark) == {"conn_type": "spark", "host": "local[*]"}
    assert json.loads(aws)["extra"]["endpoint_url"].startswith("http://127.0.0.1:")
