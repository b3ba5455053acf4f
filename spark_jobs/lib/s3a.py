"""The S3A filesystem's settings, from the environment the launcher gave the driver.

The task that submits a job puts the S3 endpoint, region and credentials of its Airflow
connection in the job's environment (``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``): never on a command
line. The driver turns them into ``spark.hadoop.fs.s3a.*`` here, so executors on other machines
get them with the Hadoop configuration, and the Spark UI and event logs show them redacted
(``spark.redaction.regex`` matches ``access.key``, ``secret`` and ``token``). Without keys, S3A
uses its default chain (the instance's or pod's role on a cluster). boto3 in the driver (the
lake's leases) reads the same variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlparse

HADOOP = "spark.hadoop.fs.s3a."


def s3a_conf(environ: Mapping[str, str]) -> dict[str, str]:
    """Spark properties for S3A from ``environ`` (empty when it names no endpoint, region or keys)."""
    conf: dict[str, str] = {}
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        # A custom endpoint (MinIO, moto, a private gateway) serves buckets as paths, not host names.
        conf.update({f"{HADOOP}endpoint": endpoint, f"{HADOOP}path.style.access": "true",
                     f"{HADOOP}connection.ssl.enabled": str(urlparse(endpoint).scheme == "https").lower()})
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        conf[f"{HADOOP}endpoint.region"] = region
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        conf.update({f"{HADOOP}access.key": key, f"{HADOOP}secret.key": secret})
        if environ.get("AWS_SESSION_TOKEN"):
            conf.update({f"{HADOOP}session.token": environ["AWS_SESSION_TOKEN"],
                         f"{HADOOP}aws.credentials.provider":
                             "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"})
    if conf:
        # An unreachable endpoint or a missing bucket should end the job in seconds, not after
        # S3A's default minutes of retries (the task's own retries are the place for patience).
        conf.update({f"{HADOOP}retry.limit": "3", f"{HADOOP}attempts.maximum": "3",
                     f"{HADOOP}connection.establish.timeout": "10s"})
    return conf
