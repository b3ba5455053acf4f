"""Spark jobs of the pipeline.

Each module is an entry point for ``spark-submit`` (``python`` file with ``main()``) and
exposes a ``run(spark, ...)`` function that tests call with a local SparkSession.
"""
