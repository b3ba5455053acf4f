"""Music recommendations from implicit feedback: the pure core.

What both sides agree on, with no Airflow and no Spark import: column names (``schema``), run
params (``params``), deployment settings (``settings``, the only reader of the environment),
the run plan and lake layout (``plan``), the task/job contracts (``jobs``), confidence
formulas, metrics, sizing, failure classes, resubmission policy and the quality gate.
"""

__version__ = "0.1.0"
