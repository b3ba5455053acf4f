"""Run Great Expectations (GX Core) suites from ``expectations/`` on Spark or pandas DataFrames.

Shared by the input validation (``spark_jobs/validate.py``) and the output checks of the
evaluation (``spark_jobs/evaluate.py``): each (suite, DataFrame) pair is one GX batch; the
outcome of every expectation is kept as a plain dict (``checks``) so the Airflow side decides
what a failure means (``music_recs.quality_gate.failure_line`` says each failed one in a line).

Data Docs go to ``docs_dir``: a local folder holds the file-backed GX project itself; for one on
another filesystem (``s3a://``), GX works in a local temp folder on the driver (GX writes local
files only), seeded with what is already in ``docs_dir`` (validate and evaluate add to one site),
and the project is then copied there with Hadoop's filesystem API.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager

from music_recs.plan import local_path

EXPECTATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "expectations")


def load_suite(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def preload() -> threading.Thread:
    """Import GX in a background thread. Its import takes ~9 s of CPU (scipy.stats, altair, every
    expectation class); started before the Spark session, it overlaps the JVM's start-up and the
    job's Spark work, during which the driver's Python mostly waits. ``validate_frames`` then
    finds it imported (or waits for the import on Python's module lock)."""
    thread = threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True,
                              name="gx-import")
    thread.start()
    return thread


BOUNDS = ("min_value", "max_value", "mostly", "value_set")


def _bound(value, parameters: dict):
    if isinstance(value, dict) and "$PARAMETER" in value:
        return parameters.get(value["$PARAMETER"])
    return value


def _plain(value):
    """A pandas/numpy scalar as a JSON value (NaN and NaT as None)."""
    if value is None:
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


def _condition(value) -> str:
    """An expectation's ``row_condition`` in words (``side == item``): the rows it was run on."""
    from great_expectations.expectations.row_conditions import deserialize_row_condition

    condition = deserialize_row_condition(value)
    return condition if isinstance(condition, str) else repr(condition)


def _checks(outcome, parameters: dict, row: dict | None = None) -> list[dict]:
    """One dict per expectation. ``row``: the only row of a one-row frame (a profile or summary);
    its value is then what was observed, not "1 of 1 rows outside"."""
    checks = []
    for res in outcome.results:
        cfg = res.expectation_config
        column = cfg.kwargs.get("column")
        one_value = row is not None and column in row
        kwargs = {n: _bound(cfg.kwargs[n], parameters) for n in BOUNDS if cfg.kwargs.get(n) is not None}
        if cfg.kwargs.get("row_condition"):  # run on some rows only (e.g. one side of the factors)
            kwargs["row_condition"] = _condition(cfg.kwargs["row_condition"])
        checks.append({
            "suite": outcome.suite_name,
            "expectation": cfg.type,
            "column": column,
            "kwargs": kwargs,
            "success": bool(res.success),
            "unexpected_count": None if one_value else res.result.get("unexpected_count"),
            "element_count": None if one_value else res.result.get("element_count"),
            "observed_value": _plain(row[column]) if one_value else res.result.get("observed_value"),
            "error": (res.exception_info or {}).get("exception_message") if not res.success else None,
        })
    return checks


GX_PROJECT = "gx"  # the folder a file-backed GX context keeps under its project root
DOCS_INDEX = f"{GX_PROJECT}/uncommitted/data_docs/local_site/index.html"


def _hadoop(spark, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


@contextmanager
def docs_project(docs_dir: str):
    """A local folder for the GX project of ``docs_dir``: the folder itself when it is local; else
    a temp folder holding a copy of what ``docs_dir`` has, copied back to it when the block ends."""
    local = local_path(docs_dir)
    if local is not None:
        yield local
        return
    from pyspark.sql import SparkSession

    spark = SparkSession.active()
    remote = docs_dir.rstrip("/")
    work = tempfile.mkdtemp(prefix="music_recs_gx_")
    try:
        fs, project = _hadoop(spark, f"{remote}/{GX_PROJECT}")
        if fs.exists(project):
            fs.copyToLocalFile(False, project, spark.sparkContext._jvm.org.apache.hadoop.fs.Path(
                f"file://{work}/{GX_PROJECT}"), True)
        yield work
        for folder, _, names in os.walk(work):
            for name in names:
                path = os.path.join(folder, name)
                fs, dest = _hadoop(spark, f"{remote}/{os.path.relpath(path, work)}")
                # One stream per file (Data Docs' files are small). Not copyFromLocalFile: its upload
                # of a file body is refused by some S3-compatible servers (HTTP 100 as a status).
                out = fs.create(dest, True)
                try:
                    with open(path, "rb") as fh:
                        out.write(bytearray(fh.read()))
                finally:
                    out.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def validate_frames(batches: list[tuple[dict, object]], parameters: dict, docs_dir: str | None = None) -> dict:
    """Run each (suite, DataFrame) pair; a DataFrame is Spark's or pandas'. With ``docs_dir`` (a
    local folder or a Hadoop filesystem URI), a file-backed GX project there keeps the results and
    builds Data Docs (HTML) from them (``docs_project``)."""
    if not docs_dir:
        return _validate(batches, parameters, None)
    with docs_project(docs_dir) as project:
        verdict = _validate(batches, parameters, project)
    return {**verdict, "data_docs": f"{docs_dir.rstrip('/')}/{DOCS_INDEX}"}


def _validate(batches: list[tuple[dict, object]], parameters: dict, project: str | None) -> dict:
    import great_expectations as gx
    import pandas as pd

    if project:
        context = gx.get_context(mode="file", project_root_dir=project)
    else:
        context = gx.get_context(mode="ephemeral")
    sources = {}
    checks, statistics, success = [], {}, True
    for suite_json, df in batches:
        name = suite_json["name"]
        on_pandas = isinstance(df, pd.DataFrame)
        if on_pandas not in sources:
            sources[on_pandas] = (context.data_sources.add_or_update_pandas(name="profiles") if on_pandas
                                  else context.data_sources.add_or_update_spark(name="lake"))
        source = sources[on_pandas]
        context.suites.add_or_update(gx.ExpectationSuite(**suite_json))
        suite = context.suites.get(name)
        try:
            asset = source.get_asset(name)
        except LookupError:
            asset = source.add_dataframe_asset(name=name)
        try:
            batch = asset.get_batch_definition("whole")
        except KeyError:
            batch = asset.add_batch_definition_whole_dataframe("whole")
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))
        # Run directly (the result is stored in the project) and build the Data Docs once at
        # the end: a checkpoint with a docs action rebuilt the whole site after every batch.
        outcome = definition.run(batch_parameters={"dataframe": df}, expectation_parameters=parameters)
        row = df.iloc[0].to_dict() if on_pandas and len(df) == 1 else None
        checks += _checks(outcome, parameters, row)
        statistics[name] = dict(outcome.statistics)
        success = success and bool(outcome.success)
    if project:
        context.build_data_docs()
    return {"success": success, "checks": checks, "statistics": statistics, "data_docs": None}

