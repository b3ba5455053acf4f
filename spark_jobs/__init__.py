"""Spark jobs of the pipeline.

Each module here is an entry point for ``spark-submit``: ``--spec FILE`` (its spec from
``music_recs.jobs``, written by the task) and ``--result FILE``; each exposes
``run(spark, spec) -> result`` that tests call with a local SparkSession. Libraries they use
are in ``spark_jobs.lib``.
"""
