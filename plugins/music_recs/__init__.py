"""Music recommendations from implicit feedback: shared code for the DAGs and Spark jobs.

The package lives in ``plugins/`` so that Airflow finds it on ``sys.path``; it is also
installed (editable) from ``pyproject.toml`` so tests and ``spark-submit`` import it.
"""

__version__ = "0.1.0"
