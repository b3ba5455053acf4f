"""The day commit protocol under faults, on a local lake and on an S3 lake (the tests' S3 server):
a job killed while rewriting a committed day, two writers of one day at once, a rerun, a dead
writer's lease, the retention. Jobs that are killed or raced run as their own processes
(``python spark_jobs/ingest.py --spec ...`` on a small local Spark), as the DAG's would."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from music_recs import lake_commit as C
from music_recs.failures import LakeBusy
from music_recs.jobs import IngestSpec
from music_recs.plan import LakeLayout
from spark_jobs import ingest
from spark_jobs.lib import lake as L
from spark_jobs.lib.session import write_text

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parent.parent
DAY = "2026-11-20"
GOOD = 400
BAD = ["not json", '{"event_id": "x1"}']
BUSY_LINE = re.compile(rf"^music_recs\.failures\.LakeBusy: dt={DAY} is being written by (?P<holder>.+) since \S+ "
                       r"\(lease until \S+\); try again after it ends$")


@pytest.fixture(params=["local", "s3a"])
def root(request, tmp_path) -> str:
    return str(tmp_path / "lake") if request.param == "local" else request.getfixturevalue("s3a_lake")


@pytest.fixture
def landing(tmp_path) -> str:
    folder = tmp_path / "landing"
    folder.mkdir()
    lines = [json.dumps({"event_id": f"e{i}", "ts": f"{DAY}T10:{i % 60:02d}:00Z", "user_id": f"u{i % 7}",
                         "track_id": f"t{i % 11}", "artist_id": "a1", "ms_played": 60_000}) for i in range(GOOD)]
    (folder / "part-0.jsonl").write_text("\n".join(lines + BAD) + "\n")
    return str(folder)


def spec(landing: str, root: str, **fields) -> IngestSpec:
    return IngestSpec(day=DAY, input_uri=landing, lake_uri=root, **fields)


def rows(spark, root: str) -> list[tuple]:
    """The committed accepted plays of the day, as a reader sees them."""
    return sorted(map(tuple, L.read_day(spark, LakeLayout(root), DAY).collect()))


def copy_of(spark, root: str) -> C.CommittedCopy | None:
    return L.committed(spark, LakeLayout(root), DAY)


def versions(spark, root: str, folder: str) -> set[str]:
    return {v for e in L.list_folder(spark, folder) for v in [C.version_of_folder(e.name)] if v}


def plays_versions(spark, root: str) -> set[str]:
    return versions(spark, root, LakeLayout(root).plays(DAY))


# --- jobs in their own processes ------------------------------------------------------------------
def job_env() -> dict:
    from music_recs_airflow.spark_submit import connector_jars

    env = dict(os.environ)
    # A small local Spark with the S3A connector; the driver maps AWS_* (the tests' S3 server) to fs.s3a.*.
    env["PYSPARK_SUBMIT_ARGS"] = (f"--master local[1] --driver-memory 768m --conf spark.ui.enabled=false "
                                  f"--conf spark.sql.shuffle.partitions=2 --jars {','.join(connector_jars())} pyspark-shell")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def start_job(job_spec: IngestSpec, folder: Path, name: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(job_spec.to_json())
    log = open(folder / f"{name}.log", "w")
    # Its own process group: the kill takes the Python driver and its JVM at once, as a lost node would.
    return subprocess.Popen([sys.executable, str(REPO / "spark_jobs" / "ingest.py"), "--spec",
                             str(folder / f"{name}.json"), "--result", str(folder / f"{name}.result.json")],
                            cwd=str(folder), env=job_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def output(folder: Path, name: str) -> str:
    return (folder / f"{name}.log").read_text()


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


# --- (a) a kill mid-write, (d) the dead writer's lease ------------------------------------------
def test_a_job_killed_while_rewriting_a_committed_day_leaves_the_old_copy_and_its_lease_is_taken_over_once_expired(
        spark, root, landing, tmp_path):
    first = ingest.run(spark, spec(landing, root))
    before, old = rows(spark, root), copy_of(spark, root)
    assert len(before) == first.rows_accepted == GOOD and old.pointer.accepted == GOOD

    dead = "dag run killed__1 task ingest"
    proc = start_job(spec(landing, root, writer=dead, lease_seconds=6), tmp_path / "jobs", "killed")
    deadline = time.time() + 240
    try:
        while not plays_versions(spark, root) - {old.version}:  # its new copy started
            assert proc.poll() is None, output(tmp_path / "jobs", "killed")
            assert time.time() < deadline, "the job never started its copy"
            time.sleep(0.05)
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL
    killed_at = time.time()

    # Readers see the old complete copy, the same rows.
    assert copy_of(spark, root).version == old.version
    assert rows(spark, root) == before
    assert len(plays_versions(spark, root)) == 2  # the dead job's partial copy is aside, unread

    # Its lease outlives it: another writer is refused in one line naming it, until it expires.
    with pytest.raises(LakeBusy, match=rf"^dt={DAY} is being written by {re.escape(dead)} since "):
        ingest.run(spark, spec(landing, root, writer="cli me@host pid 1"))
    assert copy_of(spark, root).version == old.version
    time.sleep(max(0.0, killed_at + 6.5 - time.time()))
    again = ingest.run(spark, spec(landing, root, writer="cli me@host pid 1"))
    assert again.counts == first.counts
    assert copy_of(spark, root).version != old.version and rows(spark, root) == before


def test_the_same_task_retried_after_a_kill_takes_its_own_lease_at_once(spark, root, landing):
    holder = "dag run R task ingest"
    lake = LakeLayout(root)
    now = L.utc_now()
    # What a try killed a second ago left: its lease, valid for two more minutes.
    write_text(spark, LakeLayout(root).day_lease(DAY), C.Lease.new(holder, now, 120).to_json())
    with pytest.raises(LakeBusy, match=rf"by {re.escape(holder)} since {C.format_time(now)} \(lease until "):
        ingest.run(spark, spec(landing, root, writer="cli other@host pid 2"))
    assert L.committed(spark, lake, DAY) is None
    result = ingest.run(spark, spec(landing, root, writer=holder))
    assert result.rows_accepted == GOOD and len(rows(spark, root)) == GOOD
    # Released once committed: the next writer needs no wait.
    assert L.atomic_files(spark, lake).read(LakeLayout(root).day_lease(DAY)) is None
    ingest.run(spark, spec(landing, root, writer="cli other@host pid 2"))


def test_an_expired_lease_of_a_dead_holder_is_taken_over(spark, root, landing):
    long_ago = L.utc_now() - dt.timedelta(hours=1)
    write_text(spark, LakeLayout(root).day_lease(DAY), C.Lease.new("cli ghost@gone pid 9", long_ago, 120).to_json())
    result = ingest.run(spark, spec(landing, root, writer="cli me@host pid 1"))
    assert result.rows_accepted == GOOD and copy_of(spark, root).pointer.writer == "cli me@host pid 1"


# --- (b) two writers at once ---------------------------------------------------------------------
def test_two_writers_of_one_day_started_together_commit_one_complete_copy_and_refuse_the_other(
        spark, root, landing, tmp_path):
    expected = None
    for attempt in range(2):  # the race is timing dependent: run it more than once
        folder = tmp_path / f"race{attempt}"
        jobs = [start_job(spec(landing, root), folder, f"w{i}") for i in range(2)]
        try:
            codes = [proc.wait(300) for proc in jobs]
        finally:
            for proc in jobs:
                kill(proc)
        outputs = [output(folder, f"w{i}") for i in range(2)]
        assert sorted(codes) == [0, 1], outputs
        refusals = [m for line in outputs[codes.index(1)].splitlines() for m in [BUSY_LINE.match(line)] if m]
        assert len(refusals) == 1, outputs[codes.index(1)]
        refusal = refusals[0]
        assert re.fullmatch(r"\S+@\S+ pid \d+", refusal["holder"])  # the winner, named
        committed = copy_of(spark, root)
        assert committed.pointer.accepted == GOOD and len(rows(spark, root)) == GOOD
        expected = expected or rows(spark, root)
        assert rows(spark, root) == expected
        winner = json.loads((folder / f"w{codes.index(0)}.result.json").read_text())
        assert winner["rows_accepted"] == GOOD and winner["rows_quarantined"] == len(BAD)


def test_of_many_writers_taking_a_lease_at_the_same_moment_exactly_one_wins(spark, root):
    """The lease's own race, tight (threads released together), many times over."""
    lake = LakeLayout(root)
    files = L.atomic_files(spark, lake)  # one client for the threads (making boto3 clients is not thread-safe)
    for attempt in range(15):
        uri = f"{lake.root}/_leases/race-{attempt}.json"
        barrier, won, refused = threading.Barrier(4), [], []

        def contend(i):
            lease = L.HeldLease(files, uri, "dt=race", f"writer {i}", seconds=30)
            barrier.wait()
            try:
                won.append(lease.acquire())
            except LakeBusy as busy:
                refused.append(busy)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(won) == 1 and len(refused) == 3, (won, refused)
        assert {b.holder for b in refused} == {won[0].holder}
        won[0].confirm()
        won[0].release()


def test_a_writer_whose_lease_was_taken_does_not_commit(spark, root, landing):
    lake = LakeLayout(root)
    ingest.run(spark, spec(landing, root))
    before = copy_of(spark, root)
    with L.writing_day(spark, lake, DAY, "slow writer", lease_seconds=30) as day:
        # Someone takes the lease over meanwhile (as if this writer had stalled past its expiry).
        files = L.atomic_files(spark, lake)
        found = files.read(LakeLayout(root).day_lease(DAY))
        taken = C.Lease.new("cli fast@host pid 3", L.utc_now(), 120).to_json()
        if isinstance(files, L.S3Files):
            assert files.replace_if(LakeLayout(root).day_lease(DAY), taken, found.tag)
        else:
            assert files.take(LakeLayout(root).day_lease(DAY), found.tag)
            assert files.create(LakeLayout(root).day_lease(DAY), taken)
        with pytest.raises(LakeBusy, match="being written by cli fast@host pid 3"):
            day.commit(1, 0)
    assert copy_of(spark, root) == before


# --- (c) reruns, (e) retention ---------------------------------------------------------------
def test_a_rerun_over_a_committed_day_commits_the_same_rows_and_keeps_the_old_copy_for_the_retention(
        spark, root, landing):
    first = ingest.run(spark, spec(landing, root))
    before, old = rows(spark, root), copy_of(spark, root)
    second = ingest.run(spark, spec(landing, root))
    new = copy_of(spark, root)
    assert second.counts == first.counts and second.quarantine_reasons == first.quarantine_reasons
    assert new.version != old.version and rows(spark, root) == before
    assert new.pointer.accepted == GOOD and new.pointer.quarantined == len(BAD)
    assert spark.read.json(new.quarantine).count() == len(BAD)
    # Within the retention the old copy stays readable for a reader that started on it.
    assert plays_versions(spark, root) == {old.version, new.version}
    assert spark.read.parquet(old.plays).count() == GOOD


def test_the_retention_deletes_old_copies_but_never_the_current_one(spark, root, landing):
    lake = LakeLayout(root)
    ingest.run(spark, spec(landing, root))
    old = copy_of(spark, root)
    third = None
    for _ in range(2):
        ingest.run(spark, spec(landing, root, retention_hours=0))
        third = copy_of(spark, root)
        assert plays_versions(spark, root) == {third.version}
        assert versions(spark, root, lake.quarantine(DAY)) == {third.version}
        assert len(rows(spark, root)) == GOOD and third.version != old.version
    # Nothing left to delete: the current copy stays, however old.
    assert L.clean_up(spark, lake, third.pointer, 0, now=L.utc_now() + dt.timedelta(days=400)) == []
    assert copy_of(spark, root) == third and len(rows(spark, root)) == GOOD


def test_a_day_of_the_old_layout_stays_readable_and_its_files_go_once_rewritten(spark, root, landing):
    lake = LakeLayout(root)
    plays = spark.createDataFrame([(f"e{i}", f"u{i}") for i in range(5)], "event_id string, user_id string")
    plays.write.parquet(lake.plays(DAY))  # the old layout: part files and _SUCCESS in the day folder
    spark.createDataFrame([("x", "not json")], "reason string, raw_line string").write.json(lake.quarantine(DAY))
    old = copy_of(spark, root)
    assert old.version is None and L.present_days(spark, lake, [dt.date(2026, 11, 20)]) == [dt.date(2026, 11, 20)]
    assert L.read_day(spark, lake, DAY).count() == 5
    assert L.read_plays(spark, lake, [dt.date(2026, 11, 20)]).filter(f"dt = '{DAY}'").count() == 5
    assert L.day_rows(spark, lake, dt.date(2026, 11, 20)) == 5

    ingest.run(spark, spec(landing, root, retention_hours=0))
    assert copy_of(spark, root).version is not None and len(rows(spark, root)) == GOOD
    assert {e.name for e in L.list_folder(spark, lake.plays(DAY))} == {LakeLayout(root).committed_pointer(DAY).rsplit("/", 1)[1],
                                                                          f"v={copy_of(spark, root).version}"}
    assert {e.name for e in L.list_folder(spark, lake.quarantine(DAY))} == {f"v={copy_of(spark, root).version}"}


def test_a_damaged_pointer_stops_readers_in_one_line_naming_it(spark, root):
    lake = LakeLayout(root)
    write_text(spark, LakeLayout(root).committed_pointer(DAY), "{not json")
    with pytest.raises(Exception, match=rf"^{re.escape(LakeLayout(root).committed_pointer(DAY))} is not a day's pointer"):
        L.present_days(spark, lake, [dt.date(2026, 11, 20)])
