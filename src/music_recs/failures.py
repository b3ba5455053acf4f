"""Failure classes the pipeline raises, split by whether retrying can help.

A ``PermanentFailure`` can never succeed on a retry with the same input (bad data, a
validation verdict, a matrix too large for the cluster, a Spark job that failed for a
non-retryable reason): the Airflow side ends the task at once with the exception's one-line
message. Anything else (a lost S3 connection, a Spark executor that died, a ``ValueError`` from
library code, a connection look-up the metadata database did not answer) keeps the task's
retries: only the project's own deterministic failures are known not to change on a retry.
"""

from __future__ import annotations


class PermanentFailure(RuntimeError):
    """Retrying cannot help; the message is one line that names the cause."""


class InvalidInput(PermanentFailure, ValueError):
    """A value that breaks a rule of the project (a param, a setting, a list, a spec): the same
    input fails the same way on every retry."""


class NoLandingData(PermanentFailure):
    """The day's landing prefix holds no file to ingest."""


class LandingTooLarge(PermanentFailure):
    """A day's landing input is past a bound (``max_landing_files``, ``max_landing_gib``,
    ``max_landing_expansion``): it is refused before it can exhaust a worker."""


class TooManyBadRows(PermanentFailure):
    """More of the day's rows failed row-level checks than the configured share."""


class ValidationFailed(PermanentFailure):
    """The Great Expectations suites failed on the day's accepted plays."""


class DataTooLargeError(PermanentFailure, ValueError):
    """The matrix cannot be trained on the configured cluster, whatever the block count."""


class EmptyMatrix(PermanentFailure):
    """No (user, item) pair is left after the support filters: nothing to train on."""


class QualityGateFailed(PermanentFailure):
    """The model did not clear the quality gate; nothing is published."""


class MalformedRulesList(PermanentFailure, ValueError):
    """A rules list (the do-not-recommend list) that cannot be read; retrying cannot help."""


class LakeBusy(RuntimeError):
    """Another writer holds the lease of what this one would write (a day, the id index): a retry
    after its lease ends can succeed, so this is not a ``PermanentFailure``.

    what: ``dt=D`` or ``the id index``; holder: who holds it; since, until: its lease's times.
    """

    def __init__(self, what: str, holder: str, since: str, until: str):
        super().__init__(f"{what} is being written by {holder} since {since} (lease until {until}); "
                         "try again after it ends")
        self.what, self.holder, self.since, self.until = what, holder, since, until

    def __reduce__(self):  # raised in one process, pickled into another (a thread, a test's child)
        return type(self), (self.what, self.holder, self.since, self.until)


class SparkJobError(RuntimeError):
    """A Spark job failed.

    message: one line with the job, the cause (the first decisive line of the driver's output)
        and where the full log is.
    output: the job's recent output (for classification); returncode: spark-submit's exit code.
    failure: the failure class ``music_recs.resubmission.classify_failure`` gave it;
    lines: the decisive log lines it found (secrets masked).
    """

    def __init__(self, message: str, output: str = "", returncode: int | None = None, master: str = "",
                 failure: str = "unknown", lines: list[str] | None = None):
        super().__init__(message)
        self.output = output
        self.returncode = returncode
        self.master = master
        self.failure = failure
        self.lines = list(lines or [])


class PermanentSparkJobError(SparkJobError, PermanentFailure):
    """A Spark job failed for a reason a resubmission cannot fix (bad path, bad parameter, a bug)."""


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` can never succeed on a retry: a ``PermanentFailure`` (``InvalidInput`` for a
    value that breaks a rule). Any other exception, a ``ValueError`` included, may be transient."""
    return isinstance(exc, PermanentFailure)
