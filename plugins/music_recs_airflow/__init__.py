"""The Airflow side: what the DAG's tasks do (``tasks``), the hooks they use (``spark_submit``,
``s3``), the sensor, the failure notifier, publishing and the run report, and the CLI.

Airflow puts ``plugins/`` on ``sys.path``; ``plugins/.airflowignore`` keeps its plugin loader
from executing these modules a second time as top-level modules.
"""
