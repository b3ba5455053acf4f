"""The AWS policy files: least privilege for the pipeline, write-once publications, a read-only
consumer, TLS-only buckets. The JSON is read and its statements asserted (infra/aws/README.md)."""

import json
from pathlib import Path

import pytest

from music_recs.settings import DeploymentSettings

AWS = Path(__file__).resolve().parent.parent / "infra" / "aws"
CFG = DeploymentSettings()
LAKE_BUCKET = "music-lake"  # the example lake_uri s3a://music-lake/lake (infra/DEPLOYMENT.md)
LAKE = f"arn:aws:s3:::{LAKE_BUCKET}/lake/*"
MODELS = f"arn:aws:s3:::{CFG.models_bucket}/{CFG.models_prefix}/*"
POINTER = f"arn:aws:s3:::{CFG.models_bucket}/{CFG.pointer_key}"
BUCKETS = {"raw": CFG.raw_bucket, "models": CFG.models_bucket, "lake": LAKE_BUCKET}


def statements(name):
    return json.loads((AWS / name).read_text())["Statement"]


def as_list(value):
    return [value] if isinstance(value, str) else list(value)


def grants(stmts, action):
    """(resource, condition) of every Allow of ``action`` (a wildcard action counts)."""
    return [(r, s.get("Condition")) for s in stmts if s["Effect"] == "Allow"
            and any(a == action or a in ("*", "s3:*") or (a.endswith("*") and action.startswith(a[:-1]))
                    for a in as_list(s["Action"]))
            for r in as_list(s["Resource"])]


def allowed(stmts, action):
    return [r for r, _ in grants(stmts, action)]


def denied(stmts, action, resource):
    return any(s["Effect"] == "Deny" and "Condition" not in s and resource in as_list(s["Resource"])
               and any(a == action or (a.endswith("*") and action.startswith(a[:-1])) for a in as_list(s["Action"]))
               for s in stmts)


def test_pipeline_reads_landing_writes_quarantine_and_models_and_owns_only_the_lake():
    stmts = statements("pipeline-iam-policy.json")
    assert sorted(allowed(stmts, "s3:GetObject")) == sorted([
        f"arn:aws:s3:::{CFG.raw_bucket}/{CFG.landing_prefix}/*", MODELS, LAKE])
    assert sorted(set(allowed(stmts, "s3:PutObject"))) == sorted([
        f"arn:aws:s3:::{CFG.raw_bucket}/{CFG.quarantine_prefix}/*", MODELS, POINTER, LAKE])
    assert not any(a in ("*", "s3:*") for s in stmts if s["Effect"] == "Allow" for a in as_list(s["Action"]))
    # The lake's commit protocol deletes old copies of a day and Spark's commit deletes what it
    # copied: deletes are allowed there and nowhere else.
    assert allowed(stmts, "s3:DeleteObject") == [LAKE]


def test_publications_are_written_once_and_only_the_pointer_is_replaced():
    """Every PutObject the pipeline may make under the models prefix carries If-None-Match: *
    (creates only), or is a part of a multipart upload (no object yet: its completion needs the
    header), or replaces the pointer with If-Match on the ETag it read."""
    stmts = statements("pipeline-iam-policy.json")
    models = [(r, c) for r, c in grants(stmts, "s3:PutObject") if r.startswith(f"arn:aws:s3:::{CFG.models_bucket}/")]
    assert models, "the pipeline must be able to publish"
    for resource, condition in models:
        if condition == {"StringEquals": {"s3:if-none-match": "*"}}:
            assert resource == MODELS
        elif condition == {"Bool": {"s3:ObjectCreationOperation": "false"}}:
            assert resource == MODELS
        else:
            assert (resource, condition) == (POINTER, {"Null": {"s3:if-match": "false"}}), (resource, condition)
    assert {c and next(iter(c)) for _, c in models} == {"StringEquals", "Bool", "Null"}


def test_nothing_under_the_models_prefix_can_be_deleted_or_unlocked():
    stmts = statements("pipeline-iam-policy.json")
    for action in ("s3:DeleteObject", "s3:DeleteObjectVersion"):
        assert denied(stmts, action, f"arn:aws:s3:::{CFG.models_bucket}/*")
        assert denied(stmts, action, f"arn:aws:s3:::{CFG.raw_bucket}/*")
        assert not [r for r in allowed(stmts, action) if CFG.models_bucket in r or CFG.raw_bucket in r]
    # With Object Lock (infra/aws/README.md), the pipeline cannot shorten a retention or lift it.
    for action in ("s3:BypassGovernanceRetention", "s3:PutObjectRetention", "s3:PutBucketObjectLockConfiguration",
                   "s3:PutBucketVersioning", "s3:PutBucketPolicy"):
        assert denied(stmts, action, f"arn:aws:s3:::{CFG.models_bucket}/*") or \
            denied(stmts, action, f"arn:aws:s3:::{CFG.models_bucket}"), action


def test_the_lake_prefix_rules_stay():
    stmts = statements("pipeline-iam-policy.json")
    (listing,) = [s for s in stmts if s["Effect"] == "Allow" and s["Resource"] == f"arn:aws:s3:::{LAKE_BUCKET}"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["lake", "lake/*"]}}
    lake_actions = {a for s in stmts if s["Effect"] == "Allow" and LAKE in as_list(s["Resource"])
                    for a in as_list(s["Action"])}
    assert lake_actions == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                            "s3:ListMultipartUploadParts"}


def test_consumers_only_list_and_read_publications():
    """The connection ``consumer_aws_conn_id`` (the consumer DAG, ``music-recs latest``/``recommend``)."""
    assert CFG.consumer_aws_conn_id == "aws_models_reader"
    stmts = statements("consumer-iam-policy.json")
    actions = {a for s in stmts if s["Effect"] == "Allow" for a in as_list(s["Action"])}
    assert actions == {"s3:ListBucket", "s3:GetObject"}
    assert allowed(stmts, "s3:GetObject") == [MODELS]
    (listing,) = [s for s in stmts if s["Effect"] == "Allow" and s["Action"] == "s3:ListBucket"]
    assert listing["Resource"] == f"arn:aws:s3:::{CFG.models_bucket}"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{CFG.models_prefix}/*"]}}
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:AbortMultipartUpload"):
        assert not allowed(stmts, action)
        assert denied(stmts, action, f"arn:aws:s3:::{CFG.models_bucket}/*"), action


@pytest.mark.parametrize("which", sorted(BUCKETS))
def test_every_bucket_refuses_plain_http(which):
    """Raw holds personal data (user ids, listening times), the lake its typed copy, models the
    publications: each has its own policy file (a bucket policy may only name its own bucket)."""
    bucket = BUCKETS[which]
    (stmt,) = statements(f"bucket-policy-tls-only-{which}.json")
    assert stmt["Effect"] == "Deny" and stmt["Principal"] == "*" and stmt["Action"] == "s3:*"
    assert stmt["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(stmt["Resource"]) == sorted([f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"])


def test_the_readme_names_every_policy_file():
    readme = (AWS / "README.md").read_text()
    for path in AWS.glob("*.json"):
        assert f"`{path.name}`" in readme, path.name
    assert "aws_models_reader" in readme and "consumer_aws_conn_id" in readme
    assert "overwrite deterministic" not in readme


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
