"""The driver JVM's class archive (``music_recs_airflow.class_archive``): keyed to the JDK and
Spark's jars, written by the first job, mapped by later ones, dropped when the JVM refuses it."""

import os
import shutil
import sys
from types import SimpleNamespace

import pytest

from music_recs.failures import SparkJobError
from music_recs.settings import spark_class_archive_dir
from music_recs.sizing import memory_string_mb
from music_recs_airflow.class_archive import (DYNAMIC_MAGIC, KEEP, UNUSABLE, DriverClassArchive, archive_key,
                                              class_path_has_files)
from music_recs_airflow.spark_submit import LOG4J2, SparkJobHook

ARCHIVE = DYNAMIC_MAGIC + b"rest of an archive"
KEY = "0123456789abcdef0123"


@pytest.mark.parametrize("value, mb", [("2304m", 2304), ("4g", 4096), ("4G", 4096), ("512k", 0.5),
                                       ("1t", 1024 * 1024), ("2048", 2048), ("32gb", 32768)])
def test_memory_strings(value, mb):
    assert memory_string_mb(value) == mb


@pytest.mark.parametrize("value", [None, "", "lots", "-1g", "2.5g"])
def test_what_is_not_a_memory_string(value):
    assert memory_string_mb(value) is None


@pytest.fixture
def installs(tmp_path):
    """A JDK (its release file) and a Spark (its jars), as the key sees them."""
    jdk, spark = tmp_path / "jdk", tmp_path / "spark"
    (jdk / "bin").mkdir(parents=True)
    (jdk / "release").write_text('JAVA_VERSION="17.0.15"\n')
    (spark / "jars").mkdir(parents=True)
    (spark / "jars" / "spark-core_2.13-4.1.1.jar").write_bytes(b"x" * 10)
    return {"JAVA_HOME": str(jdk), "SPARK_HOME": str(spark), "PATH": ""}


def test_the_key_follows_the_jdk_the_jars_the_class_path_the_jvm_options_and_the_heap(installs, tmp_path):
    key = archive_key(installs, {}, "2304m")
    assert key == archive_key(installs, {}, "2304m") == archive_key(installs, {}, "8g")  # same class layout
    assert archive_key(installs, {}, "31g") != key  # near 32 GiB the JVM may drop compressed pointers
    assert archive_key(installs, {"spark.driver.extraClassPath": "/x.jar"}, "2304m") != key
    assert archive_key(installs, {"spark.driver.extraJavaOptions": "-XX:+UseZGC"}, "2304m") != key
    assert archive_key(installs, {"spark.driver.extraJavaOptions": "-Dx=1 -Xlog:gc:file=/g.log"}, "2304m") == key
    assert archive_key({**installs, "SPARK_CONF_DIR": "/etc/spark"}, {}, "2304m") != key
    assert archive_key({**installs, "JAVA_TOOL_OPTIONS": "-XX:-UseCompressedOops"}, {}, "2304m") != key
    props = tmp_path / "spark-defaults.conf"
    props.write_text("spark.driver.extraClassPath /opt/x.jar\n")
    assert archive_key(installs, {}, "2304m", str(props)) not in (None, key)
    (tmp_path / "jdk" / "release").write_text('JAVA_VERSION="17.0.16"\n')
    upgraded_jdk = archive_key(installs, {}, "2304m")
    assert upgraded_jdk != key
    jar = tmp_path / "spark" / "jars" / "spark-core_2.13-4.1.1.jar"
    os.utime(jar, (1_000_000, 1_000_000))  # reinstalled: same size, new file (the JVM checks the time)
    assert archive_key(installs, {}, "2304m") != upgraded_jdk
    assert archive_key({**installs, "SPARK_HOME": str(tmp_path / "nowhere")}, {}, None) is None
    (tmp_path / "jdk" / "release").unlink()
    assert archive_key(installs, {}, None) is None  # a JDK that cannot be told: no archive


def test_a_class_path_folder_with_files_means_no_archive_is_written(installs, tmp_path):
    assert not class_path_has_files(installs, {})  # pip's pyspark: no conf folder
    conf = tmp_path / "conf"
    conf.mkdir()
    assert not class_path_has_files({**installs, "SPARK_CONF_DIR": str(conf)}, {})
    (conf / "spark-defaults.conf").write_text("")
    assert class_path_has_files({**installs, "SPARK_CONF_DIR": str(conf)}, {})
    assert class_path_has_files(installs, {"spark.driver.extraClassPath": f"/x.jar{os.pathsep}{conf}"})
    assert not class_path_has_files(installs, {"spark.driver.extraClassPath": f"{conf}/*"})  # jars, not the folder
    archive = DriverClassArchive(str(tmp_path / "a"), KEY, may_write=False)
    assert archive.java_options() == "" and archive.writing is None


def write_archive(archive, content=ARCHIVE):
    """What the JVM does at exit with ``-XX:ArchiveClassesAtExit``."""
    with open(archive.writing, "wb") as fh:
        fh.write(content)


def test_written_once_kept_when_whole_mapped_after(tmp_path):
    archive = DriverClassArchive(str(tmp_path / "a"), KEY)
    option = archive.java_options()
    assert option == f"-XX:ArchiveClassesAtExit={archive.writing} -Xlog:cds=off"
    write_archive(archive)
    archive.settle(0, "")
    assert os.listdir(tmp_path / "a") == [f"{KEY}.jsa"]
    again = DriverClassArchive(str(tmp_path / "a"), KEY)
    assert again.java_options() == f"-XX:SharedArchiveFile={tmp_path / 'a' / KEY}.jsa" and again.writing is None


def test_a_failed_job_leaves_no_archive(tmp_path):
    archive = DriverClassArchive(str(tmp_path), KEY)
    archive.java_options()
    write_archive(archive)
    archive.settle(1, "")
    assert os.listdir(tmp_path) == []


def test_a_file_that_is_not_an_archive_is_neither_kept_nor_mapped(tmp_path):
    archive = DriverClassArchive(str(tmp_path), KEY)
    archive.java_options()
    write_archive(archive, b"\0" * 64)  # a dump cut short
    archive.settle(0, "")
    assert os.listdir(tmp_path) == []
    open(tmp_path / f"{KEY}.jsa", "wb").write(b"\0" * 64)  # damaged on disk: written again
    assert DriverClassArchive(str(tmp_path), KEY).java_options().startswith("-XX:ArchiveClassesAtExit=")


def test_an_archive_the_jvm_refuses_is_removed_and_its_key_marked(tmp_path):
    open(tmp_path / f"{KEY}.jsa", "wb").write(ARCHIVE)
    archive = DriverClassArchive(str(tmp_path), KEY)
    assert archive.java_options().startswith("-XX:SharedArchiveFile=")
    # JDK 17's words (hotspot filemap.cpp), pinned here rather than taken from the module's constant.
    archive.settle(0, "[0.141s][warning][cds,dynamic] Unable to use shared archive. The top archive failed to load: x\n")
    assert os.listdir(tmp_path) == [f"{KEY}.jsa{UNUSABLE}"]
    assert DriverClassArchive(str(tmp_path), KEY).java_options() == ""


def test_only_the_most_recently_used_archives_and_nothing_else_is_removed(tmp_path):
    old = [f"{i:020x}.jsa" for i in range(KEEP + 2)]
    for i, name in enumerate(old):
        open(tmp_path / name, "wb").write(ARCHIVE)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    (tmp_path / "someone-elses.jsa").write_bytes(ARCHIVE)
    os.utime(tmp_path / "someone-elses.jsa", (1, 1))
    archive = DriverClassArchive(str(tmp_path), KEY)
    archive.java_options()
    write_archive(archive)
    archive.settle(0, "")
    assert sorted(os.listdir(tmp_path)) == sorted([f"{KEY}.jsa", "someone-elses.jsa", *old[-(KEEP - 1):]])


def test_a_half_written_archive_of_a_killed_job_is_removed_once_stale(tmp_path):
    stale, fresh = tmp_path / f"{KEY}.jsa.{'a' * 32}.tmp", tmp_path / f"{KEY}.jsa.{'b' * 32}.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half")
    os.utime(stale, (1, 1))
    DriverClassArchive(str(tmp_path), KEY).java_options()
    assert stale.exists() is False and fresh.exists()  # another job may still be writing that one


def test_no_archive_where_the_folder_cannot_be_written_or_the_path_would_be_split(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    assert DriverClassArchive(str(tmp_path / "file" / "under"), KEY).java_options() == ""  # logged, not raised
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if not os.access(read_only, os.W_OK):  # root writes anywhere
            assert DriverClassArchive(str(read_only), KEY).java_options() == ""
    finally:
        read_only.chmod(0o755)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10 ** 8))
    assert DriverClassArchive(str(tmp_path / "full"), KEY).java_options() == ""  # 100 MB free: no 170 MB dump
    monkeypatch.undo()
    assert DriverClassArchive(str(tmp_path / "with space"), KEY).java_options() == ""
    assert DriverClassArchive(str(tmp_path / "a:b"), KEY).java_options() == ""


def test_the_folder_setting(tmp_path):
    assert spark_class_archive_dir({"MUSIC_RECS_SPARK_CLASS_ARCHIVE_DIR": "off"}) == ""
    assert spark_class_archive_dir({"MUSIC_RECS_SPARK_CLASS_ARCHIVE_DIR": "/srv/cds"}) == "/srv/cds"
    assert spark_class_archive_dir({"XDG_CACHE_HOME": "/c"}) == "/c/music_recs/spark-class-archives"


def test_a_callers_jvm_options_add_to_the_base_ones(tmp_path):
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path))
    cmd = hook.command("s.json", "r.json", "ingest", {"spark.driver.extraJavaOptions": "-Dx=1"}, {},
                       driver_java_options="-XX:SharedArchiveFile=/a.jsa")
    conf = dict(cmd[i + 1].split("=", 1) for i, arg in enumerate(cmd) if arg == "--conf")
    assert conf["spark.driver.extraJavaOptions"].split() == ["-Dlog4j2.configurationFile=file:" + str(LOG4J2),
                                                            "-Dx=1", "-XX:SharedArchiveFile=/a.jsa"]
    assert conf["spark.executor.extraJavaOptions"] == "-Dlog4j2.configurationFile=file:" + str(LOG4J2)


FAKE_SUBMIT = """
import sys
result = sys.argv[sys.argv.index("--result") + 1]
open(result, "w").write(sys.argv[-1])
sys.exit(1)  # as a JVM that fails writing its class archive at exit
"""


@pytest.mark.parametrize("writing", [True, False])
def test_a_job_that_wrote_its_result_succeeded_even_if_writing_the_archive_failed(tmp_path, monkeypatch, writing):
    """Exit 1 after the result was written: when the JVM was writing the archive, the job's work
    is done (the result is taken, the key marked, no retry); otherwise it failed as always."""
    from music_recs.jobs import IngestResult, IngestSpec

    result = IngestResult(day="2026-11-20", rows_read=1, rows_accepted=1, rows_quarantined=0, duplicates_removed=0,
                          duplicates_of_other_days=0, quarantine_reasons={}, formats={}, seconds={})
    archives = tmp_path / "archives"
    if not writing:
        archives.mkdir()
        (archives / f"{KEY}.jsa").write_bytes(ARCHIVE)
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), class_archive_dir=str(archives))
    monkeypatch.setattr(hook, "class_archive", lambda *a: DriverClassArchive(str(archives), KEY))

    def command(spec_path, result_path, job, conf, options, driver_java_options=""):
        assert driver_java_options.startswith("-XX:ArchiveClassesAtExit=" if writing else "-XX:SharedArchiveFile=")
        return [sys.executable, "-c", FAKE_SUBMIT, "--master", "local[*]", "--result", result_path, result.to_json()]

    monkeypatch.setattr(hook, "command", command)
    spec = IngestSpec(day="2026-11-20", input_uri=str(tmp_path), lake_uri=str(tmp_path / "lake"))
    if writing:
        assert hook.submit(spec).rows_accepted == 1
        assert os.listdir(archives) == [f"{KEY}.jsa{UNUSABLE}"]
    else:
        with pytest.raises(SparkJobError, match="failed"):
            hook.submit(spec)
        assert os.listdir(archives) == [f"{KEY}.jsa"]


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
def test_real_jobs_write_then_map_the_archive_and_a_jvm_it_does_not_fit_refuses_it(tmp_path, monkeypatch):
    """Three real spark-submits: the first writes the archive; the second maps its classes from it
    (the JVM's class-load log says so); the third, given the same archive with another class
    path, runs without it, and the JVM's refusal removes it and marks its key."""
    from music_recs.jobs import IngestSpec

    jobs, archives = tmp_path / "jobs", tmp_path / "archives"
    jobs.mkdir()
    (jobs / "ingest.py").write_text(TINY_JOB)
    hook = SparkJobHook("spark_default", work_dir=str(tmp_path / "submit"), jobs_dir=jobs,
                        class_archive_dir=str(archives))
    spec = IngestSpec(day="2026-11-20", input_uri=str(tmp_path), lake_uri=str(tmp_path / "lake"))

    def submit(name, **conf):
        loads = tmp_path / f"{name}.classes"
        hook.submit(spec, conf={"spark.driver.extraJavaOptions": f"-Xlog:class+load=info:file={loads}", **conf},
                    driver_memory="1g")
        return loads.read_text()

    first = submit("first")
    written = sorted(archives.iterdir())
    assert [p.suffix for p in written] == [".jsa"] and written[0].stat().st_size > 10_000_000
    assert "shared objects file (top)" not in first
    second = submit("second")
    from_archive = second.count("source: shared objects file (top)")
    assert from_archive > 5000, from_archive  # Spark's classes, mapped instead of read from its jars

    # A class path the key does not know of (as a key that missed something would see it).
    key = written[0].name.removesuffix(".jsa")
    monkeypatch.setattr(hook, "class_archive", lambda *a: DriverClassArchive(str(archives), key))
    (tmp_path / "extra").mkdir()
    refused = submit("refused", **{"spark.driver.extraClassPath": str(tmp_path / "extra")})
    assert "shared objects file (top)" not in refused
    assert sorted(p.name for p in archives.iterdir()) == [f"{key}.jsa{UNUSABLE}"]
