"""The driver JVM's class archive (``music_recs_airflow.class_archive``): keyed to the JDK and
Spark's jars, written by the first job, mapped by later ones, dropped when the JVM refuses it."""

import os

import pytest

from music_recs.settings import spark_class_archive_dir
from music_recs_airflow.class_archive import (DYNAMIC_MAGIC, KEEP, REJECTED, UNUSABLE, DriverClassArchive,
                                              archive_key, memory_mb)
from music_recs_airflow.spark_submit import SparkJobHook

ARCHIVE = DYNAMIC_MAGIC + b"rest of an archive"


@pytest.mark.parametrize("value, mb", [("2304m", 2304), ("4g", 4096), ("4G", 4096), ("512k", 0.5),
                                       ("1t", 1024 * 1024), ("1048576", 1), ("32gb", 32768)])
def test_memory_strings(value, mb):
    assert memory_mb(value) == mb


@pytest.mark.parametrize("value", [None, "", "lots", "-1g", "2.5g"])
def test_what_is_not_a_memory_string(value):
    assert memory_mb(value) is None


@pytest.fixture
def installs(tmp_path):
    """A JDK (its release file) and a Spark (its jars), as the key sees them."""
    jdk, spark = tmp_path / "jdk", tmp_path / "spark"
    (jdk / "bin").mkdir(parents=True)
    (jdk / "release").write_text('JAVA_VERSION="17.0.15"\n')
    (spark / "jars").mkdir(parents=True)
    (spark / "jars" / "spark-core_2.13-4.1.1.jar").write_bytes(b"x" * 10)
    return {"JAVA_HOME": str(jdk), "SPARK_HOME": str(spark), "PATH": ""}


def test_the_key_follows_the_jdk_the_jars_the_class_path_and_the_heap(installs, tmp_path):
    key = archive_key(installs, {}, "2304m")
    assert key == archive_key(installs, {}, "2304m") == archive_key(installs, {}, "8g")  # same class layout
    assert archive_key(installs, {}, "40g") != key  # past 32 GiB the JVM drops compressed pointers
    assert archive_key(installs, {"spark.driver.extraClassPath": "/x.jar"}, "2304m") != key
    assert archive_key({**installs, "SPARK_CONF_DIR": "/etc/spark"}, {}, "2304m") != key
    (tmp_path / "jdk" / "release").write_text('JAVA_VERSION="17.0.16"\n')
    upgraded_jdk = archive_key(installs, {}, "2304m")
    assert upgraded_jdk != key
    (tmp_path / "spark" / "jars" / "spark-core_2.13-4.1.1.jar").write_bytes(b"x" * 11)
    assert archive_key(installs, {}, "2304m") != upgraded_jdk
    assert archive_key({**installs, "SPARK_HOME": str(tmp_path / "nowhere")}, {}, None) is None


def test_written_once_kept_when_whole_mapped_after(tmp_path):
    archive = DriverClassArchive(str(tmp_path / "a"), "k1")
    option = archive.java_options()
    assert option.startswith("-XX:ArchiveClassesAtExit=") and option.endswith("-Xlog:cds=off")
    written = option.split("=", 1)[1].split()[0]
    open(written, "wb").write(ARCHIVE)
    archive.settle(0, "")
    assert os.listdir(tmp_path / "a") == ["k1.jsa"]
    assert DriverClassArchive(str(tmp_path / "a"), "k1").java_options() == f"-XX:SharedArchiveFile={tmp_path / 'a' / 'k1.jsa'}"


def test_a_failed_job_leaves_no_archive(tmp_path):
    archive = DriverClassArchive(str(tmp_path), "k1")
    written = archive.java_options().split("=", 1)[1].split()[0]
    open(written, "wb").write(ARCHIVE)
    archive.settle(1, "")
    assert os.listdir(tmp_path) == []


def test_a_file_that_is_not_an_archive_is_neither_kept_nor_mapped(tmp_path):
    archive = DriverClassArchive(str(tmp_path), "k1")
    open(archive.java_options().split("=", 1)[1].split()[0], "wb").write(b"\0" * 64)  # a dump cut short
    archive.settle(0, "")
    assert os.listdir(tmp_path) == []
    open(tmp_path / "k1.jsa", "wb").write(b"\0" * 64)  # damaged on disk: written again
    assert DriverClassArchive(str(tmp_path), "k1").java_options().startswith("-XX:ArchiveClassesAtExit=")


def test_an_archive_the_jvm_refuses_is_marked_and_never_written_again(tmp_path):
    open(tmp_path / "k1.jsa", "wb").write(ARCHIVE)
    archive = DriverClassArchive(str(tmp_path), "k1")
    assert archive.java_options().startswith("-XX:SharedArchiveFile=")
    archive.settle(0, f"[0.141s][warning][cds,dynamic] {REJECTED}. The top archive failed to load: ...\n")
    assert (tmp_path / f"k1.jsa{UNUSABLE}").exists()
    assert DriverClassArchive(str(tmp_path), "k1").java_options() == ""


def test_only_the_most_recently_used_archives_are_kept(tmp_path):
    for i in range(KEEP + 2):
        open(tmp_path / f"old{i}.jsa", "wb").write(ARCHIVE)
        os.utime(tmp_path / f"old{i}.jsa", (1000 + i, 1000 + i))
    archive = DriverClassArchive(str(tmp_path), "new")
    open(archive.java_options().split("=", 1)[1].split()[0], "wb").write(ARCHIVE)
    archive.settle(0, "")
    assert sorted(os.listdir(tmp_path)) == sorted(["new.jsa", *[f"old{i}.jsa" for i in range(5 - KEEP + 1, 5)]])


def test_an_unwritable_folder_means_no_archive(tmp_path):
    (tmp_path / "file").write_text("")
    assert DriverClassArchive(str(tmp_path / "file" / "under"), "k").java_options() == ""


def test_the_folder_setting(tmp_path):
    assert spark_class_archive_dir({"MUSIC_RECS_SPARK_CLASS_ARCHIVE_DIR": "off"}) == ""
    assert spark_class_archive_dir({"MUSIC_RECS_SPARK_CLASS_ARCHIVE_DIR": "/srv/cds"}) == "/srv/cds"
    assert spark_class_archive_dir({"XDG_CACHE_HOME": "/c"}) == "/c/music_recs/spark-class-archives"


TINY_JOB = """
import sys
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
assert spark.range(10).count() == 10
open(sys.argv[sys.argv.index("--result") + 1], "w").write('{"day": "2026-11-20", "rows_read": 0, "rows_accepted": 0, '
    '"rows_quarantined": 0, "duplicates_removed": 0, "duplicates_of_other_days": 0, "quarantine_reasons": {}, '
    '"formats": {}, "seconds": {}}')
"""


@pytest.mark.spark
def test_real_jobs_write_then_map_the_archive_and_run_without_a_broken_one(tmp_path):
    """Three real spark-submits: the first writes the archive, the second maps its classes from it
    (the JVM's class-load log says so); with the archive damaged, the third runs from the jars and
    writes it again."""
    from music_recs.jobs import IngestSpec

    jobs, archives = tmp_path / "jobs", tmp_path / "archives"
    jobs.mkdir()
    (jobs / "ingest.py").write_text(TINY_JOB)
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), jobs_dir=jobs,
                        class_archive_dir=str(archives))
    spec = IngestSpec(day="2026-11-20", input_uri=str(tmp_path), lake_uri=str(tmp_path / "lake"))

    def submit(name):
        loads = tmp_path / f"{name}.classes"
        hook.submit(spec, conf={"spark.driver.extraJavaOptions": f"-Xlog:class+load=info:file={loads}"},
                    driver_memory="1g")
        return loads.read_text()

    first = submit("first")
    written = sorted(archives.iterdir())
    assert [p.suffix for p in written] == [".jsa"] and written[0].stat().st_size > 10_000_000
    assert "shared objects file (top)" not in first
    second = submit("second")
    from_archive = second.count("source: shared objects file (top)")
    assert from_archive > 5000, from_archive  # Spark's classes, mapped instead of read from its jars

    written[0].chmod(0o644)
    written[0].write_bytes(b"\0" * 4096)
    damaged = submit("damaged")
    assert "shared objects file (top)" not in damaged
    assert sorted(archives.iterdir()) == written and written[0].stat().st_size > 10_000_000
