"""The day commit protocol's decisions (``music_recs.lake_commit``): versions, the pointer and lease
records, who may take a lease, what a reader resolves a day to, what the retention deletes."""

from __future__ import annotations

import datetime as dt
import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from music_recs import lake_commit as C
from music_recs.failures import InvalidInput, LakeBusy, is_permanent
from music_recs.jobs import IngestSpec
from music_recs.plan import LakeLayout

DAY = "2026-11-20"
ROOT = "s3a://lake-bucket/lake"
T0 = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc)
HOUR = dt.timedelta(hours=1)


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def version(hours: float, suffix: str = "0badcafe") -> str:
    return C.new_version(at(hours), suffix)


def pointer(v: str, committed_at: dt.datetime, accepted: int = 10, quarantined: int = 1) -> C.CommittedPointer:
    return C.CommittedPointer(version=v, day=DAY, writer="dag run R task ingest", committed_at=committed_at,
                              accepted=accepted, quarantined=quarantined)


# --- versions and paths -----------------------------------------------------------------
def test_a_version_names_its_start_and_sorts_by_it():
    v = C.new_version(dt.datetime(2026, 11, 21, 3, 4, 5, 999, tzinfo=dt.timezone.utc))
    assert v.startswith("20261121T030405Z-") and len(v.split("-")[1]) == 8
    assert C.version_started(v) == dt.datetime(2026, 11, 21, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert sorted([version(2, "ffffffff"), version(1, "00000000")]) == [version(1, "00000000"), version(2, "ffffffff")]
    assert len({C.new_version(T0) for _ in range(50)}) == 50  # unique per attempt, even in the same second
    # Any zone in, UTC out.
    cet = dt.datetime(2026, 11, 21, 4, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert C.new_version(cet, "0badcafe") == "20261121T030000Z-0badcafe"


@pytest.mark.parametrize("bad", ["", "stray", "20261121T030405Z", "20261121T030405Z-0BADCAFE", "2026-11-21-0badcafe",
                                 "20261121T030405Z-0badcafe/..", None])
def test_what_is_not_a_version_is_refused_and_never_a_copy(bad):
    with pytest.raises(InvalidInput, match="is not a copy's version"):
        C.version_started(bad)
    assert C.version_of_folder(f"v={bad}") is None


def test_naive_times_and_bad_suffixes_are_refused():
    with pytest.raises(InvalidInput, match="timezone-aware"):
        C.new_version(dt.datetime(2026, 11, 21))
    with pytest.raises(InvalidInput, match="8 lower-case hex"):
        C.new_version(T0, "xyz")


@pytest.mark.parametrize("root", [ROOT, f"{ROOT}/", "/data/lake", "file:///data/lake"])
def test_the_day_layout_is_a_function_of_the_lake_root(root):
    r = root.rstrip("/")
    v = version(0)
    assert LakeLayout(root).committed_pointer(DAY) == f"{r}/plays/dt={DAY}/_COMMITTED.json"
    assert LakeLayout(root).plays_copy(DAY, v) == f"{r}/plays/dt={DAY}/v={v}"
    assert LakeLayout(root).quarantine_copy(DAY, v) == f"{r}/quarantine/dt={DAY}/v={v}"
    assert LakeLayout(root).legacy_marker(DAY) == f"{r}/plays/dt={DAY}/_SUCCESS"
    assert LakeLayout(root).day_lease(DAY) == f"{r}/_leases/dt={DAY}.json"
    assert LakeLayout(root).ids_lease == f"{r}/_leases/ids.json"
    assert C.version_of_folder(C.version_folder(v)) == v
    assert C.version_of_folder("part-00000.parquet") is None and C.version_of_folder("_COMMITTED.json") is None


# --- the pointer --------------------------------------------------------------------------
def test_the_pointer_round_trips_as_the_design_spells_it():
    p = pointer(version(0), at(0.5), accepted=1234, quarantined=5)
    values = json.loads(p.to_json())
    assert values == {"version": p.version, "day": DAY, "writer": "dag run R task ingest",
                      "committed_at": "2026-11-21T03:30:00.000Z", "rows": {"accepted": 1234, "quarantined": 5}}
    assert C.CommittedPointer.from_json(p.to_json(), "x", DAY) == p
    # A field a later version adds does not make today's readers lose the day.
    assert C.CommittedPointer.from_json(json.dumps({**values, "checksum": "abc"}), "x") == p


WHERE = f"{ROOT}/plays/dt={DAY}/_COMMITTED.json"


@pytest.mark.parametrize("text, why", [
    ("", "not a JSON object"), ("{", "not a JSON object"), ("[1]", "not a JSON object"), (b"\xff\xfe", "not a JSON object"),
    ('{"day": "2026-11-20"}', "version must be"),
    ('{"version": "v1", "day": "2026-11-20"}', "version must be"),
    ('{"version": "20261121T030000Z-0badcafe", "day": "20.11.2026"}', "day must look like"),
    ('{"version": "20261121T030000Z-0badcafe", "day": "2026-11-20"}', "rows must be"),
    ('{"version": "20261121T030000Z-0badcafe", "day": "2026-11-20", "rows": {"accepted": -1, "quarantined": 0}, '
     '"writer": "w", "committed_at": "2026-11-21T03:00:00Z"}', "rows.accepted must be"),
    ('{"version": "20261121T030000Z-0badcafe", "day": "2026-11-20", "rows": {"accepted": true, "quarantined": 0}, '
     '"writer": "w", "committed_at": "2026-11-21T03:00:00Z"}', "rows.accepted must be"),
    ('{"version": "20261121T030000Z-0badcafe", "day": "2026-11-20", "rows": {"accepted": 1, "quarantined": 0}, '
     '"writer": "", "committed_at": "2026-11-21T03:00:00Z"}', "writer must be"),
    ('{"version": "20261121T030000Z-0badcafe", "day": "2026-11-20", "rows": {"accepted": 1, "quarantined": 0}, '
     '"writer": "w", "committed_at": "2026-11-21T03:00:00"}', "committed_at must be an ISO time with a zone"),
])
def test_a_damaged_pointer_is_refused_in_one_line_naming_its_file(text, why):
    with pytest.raises(InvalidInput) as err:
        C.CommittedPointer.from_json(text, WHERE, DAY)
    assert str(err.value).startswith(WHERE) and why in str(err.value) and "\n" not in str(err.value)


def test_a_pointer_of_another_day_is_refused():
    moved = pointer(version(0), at(0)).to_json().replace(DAY, "2026-11-19")
    with pytest.raises(InvalidInput, match=f"names day 2026-11-19, not its folder's {DAY}"):
        C.CommittedPointer.from_json(moved, WHERE, DAY)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                      max_size=4), max_leaves=12)
# Near-misses of a valid record: each known field replaced by anything JSON holds.
pointer_fields = st.fixed_dictionaries({}, optional={
    "version": st.sampled_from([version(0), "v", ""]) | json_values,
    "day": st.sampled_from([DAY, "2026-02-30"]) | json_values,
    "writer": st.sampled_from(["w", "two\nlines"]) | json_values,
    "committed_at": st.sampled_from(["2026-11-21T03:00:00Z", "0001-01-01T00:00:00+01:00", "yesterday"]) | json_values,
    "rows": st.fixed_dictionaries({}, optional={"accepted": json_values, "quarantined": json_values}) | json_values,
})


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=100), json_values.map(json.dumps),
                 pointer_fields.map(json.dumps)))
def test_any_text_is_a_pointer_or_one_line_naming_the_file(text):
    try:
        p = C.CommittedPointer.from_json(text, WHERE)
    except InvalidInput as exc:
        assert str(exc).startswith(WHERE) and "\n" not in str(exc)
    else:
        assert C.CommittedPointer.from_json(p.to_json(), WHERE) == p


@settings(max_examples=100)
@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1),
                    timezones=st.just(dt.timezone.utc)),
       st.integers(0, 2**40), st.integers(0, 2**40), st.text(min_size=1, max_size=40).filter(
           lambda s: s.strip() and len(s.splitlines()) == 1))
def test_every_pointer_round_trips(when, accepted, quarantined, writer):
    p = C.CommittedPointer(version=C.new_version(when), day=DAY, writer=writer,
                           committed_at=when.replace(microsecond=when.microsecond // 1000 * 1000),
                           accepted=accepted, quarantined=quarantined)
    assert C.CommittedPointer.from_json(p.to_json(), WHERE, DAY) == p


# --- leases -----------------------------------------------------------------------------
LEASE = f"{ROOT}/_leases/dt={DAY}.json"


def test_a_lease_round_trips_and_tells_when_it_ends():
    lease = C.Lease.new("dag run R task ingest", at(0), 120)
    assert json.loads(lease.to_json()) == {"holder": "dag run R task ingest", "token": lease.token,
                                           "acquired_at": "2026-11-21T03:00:00.000Z",
                                           "expires_at": "2026-11-21T03:02:00.000Z"}
    assert C.Lease.from_json(lease.to_json(), LEASE) == lease
    assert not lease.expired(at(0) + dt.timedelta(seconds=119.9)) and lease.expired(at(0) + dt.timedelta(seconds=120))
    assert lease.held_by(lease.token, at(0)) and not lease.held_by("someone else's token", at(0))
    assert not lease.held_by(lease.token, at(0) + dt.timedelta(seconds=100), margin_seconds=30)
    later = lease.renewed(at(0) + dt.timedelta(seconds=90), 120)
    assert (later.token, later.acquired_at, later.expires_at) == (lease.token, lease.acquired_at, at(0) + 210 * dt.timedelta(seconds=1))
    assert C.Lease.new("h", at(0), 1).token != C.Lease.new("h", at(0), 1).token


@pytest.mark.parametrize("holder, seconds, why", [("", 120, "holder must be"), ("a\nb", 120, "holder must be"),
                                                  ("h", 0, "more than 0 seconds")])
def test_a_lease_needs_a_one_line_holder_and_a_duration(holder, seconds, why):
    with pytest.raises(InvalidInput, match=why):
        C.Lease.new(holder, at(0), seconds)


lease_fields = st.fixed_dictionaries({}, optional={
    "holder": st.sampled_from(["h", "", "a\rb"]) | json_values, "token": st.sampled_from(["t", ""]) | json_values,
    "acquired_at": st.sampled_from(["2026-11-21T03:00:00Z", "9999-12-31T23:59:59-01:00"]) | json_values,
    "expires_at": st.sampled_from(["2026-11-21T03:02:00.000+00:00", "soon"]) | json_values})


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=100), json_values.map(json.dumps), lease_fields.map(json.dumps)))
def test_any_text_is_a_lease_or_one_line_naming_the_file(text):
    try:
        lease = C.Lease.from_json(text, LEASE)
    except InvalidInput as exc:
        assert str(exc).startswith(LEASE) and "\n" not in str(exc)
    else:
        assert C.Lease.from_json(lease.to_json(), LEASE) == lease


def test_who_may_take_a_lease():
    theirs = C.Lease.new("dag run A task ingest", at(0), 120)
    assert C.lease_action(None, "cli me@host pid 7", at(0)) is C.LeaseAction.CREATE
    assert C.lease_action(theirs, "cli me@host pid 7", at(0) + dt.timedelta(seconds=60)) is C.LeaseAction.BUSY
    assert C.lease_action(theirs, "cli me@host pid 7", at(0) + dt.timedelta(seconds=120)) is C.LeaseAction.TAKE_OVER
    # The same holder is an earlier try of the same task, killed: its retry need not wait.
    assert C.lease_action(theirs, "dag run A task ingest", at(0)) is C.LeaseAction.TAKE_OVER


def test_an_unreadable_lease_blocks_for_one_lease_then_is_taken_over():
    lease = C.Lease.unreadable(LEASE, at(0), 120)
    assert lease.holder == f"an unreadable lease ({LEASE})"
    assert C.lease_action(lease, "me", at(0) + dt.timedelta(seconds=60)) is C.LeaseAction.BUSY
    assert C.lease_action(lease, "me", at(0) + dt.timedelta(seconds=121)) is C.LeaseAction.TAKE_OVER


def test_lake_busy_is_one_retryable_line_naming_the_day_the_holder_and_until_when():
    busy = LakeBusy(f"dt={DAY}", "dag run A task ingest", "2026-11-21T03:00:00.000Z", "2026-11-21T03:02:00.000Z")
    assert str(busy) == (f"dt={DAY} is being written by dag run A task ingest since 2026-11-21T03:00:00.000Z "
                         "(lease until 2026-11-21T03:02:00.000Z); try again after it ends")
    assert not is_permanent(busy)
    assert str(pickle.loads(pickle.dumps(busy))) == str(busy)


# --- resolving a day ----------------------------------------------------------------------
def reader(files: dict[str, str]):
    return files.get


def test_a_day_resolves_to_the_copy_its_pointer_names():
    v = version(0)
    files = {LakeLayout(ROOT).committed_pointer(DAY): pointer(v, at(0)).to_json(), LakeLayout(ROOT).legacy_marker(DAY): ""}
    copy = C.committed_copy(ROOT, DAY, reader(files))
    assert (copy.plays, copy.quarantine, copy.version) == (LakeLayout(ROOT).plays_copy(DAY, v),
                                                           LakeLayout(ROOT).quarantine_copy(DAY, v), v)
    assert copy.pointer.accepted == 10  # the pointer wins over the old layout's marker still beside it
    assert C.committed_copy(ROOT, DAY, reader(files)).quarantine == f"{ROOT}/quarantine/dt={DAY}/v={v}"


def test_a_day_of_the_old_layout_is_read_as_before_and_a_day_with_neither_is_absent():
    old = C.committed_copy(ROOT, DAY, reader({LakeLayout(ROOT).legacy_marker(DAY): ""}))
    assert (old.plays, old.quarantine, old.version) == (f"{ROOT}/plays/dt={DAY}", f"{ROOT}/quarantine/dt={DAY}", None)
    assert C.committed_copy(ROOT, DAY, reader({})) is None


def test_a_damaged_pointer_is_not_an_absent_day():
    with pytest.raises(InvalidInput, match=f"^{LakeLayout(ROOT).committed_pointer(DAY)} is not a day's pointer"):
        C.committed_copy(ROOT, DAY, reader({LakeLayout(ROOT).committed_pointer(DAY): "", LakeLayout(ROOT).legacy_marker(DAY): ""}))


# --- retention --------------------------------------------------------------------------
def test_the_retention_keeps_older_copies_a_day_after_the_current_one_was_committed():
    older, current = version(-30), version(0)
    committed = pointer(current, at(1))
    assert C.copies_to_delete([older, current, None], committed, at(24.9), 24) == []
    assert C.copies_to_delete([older, current, None], committed, at(25), 24) == [None, older]
    assert C.copies_to_delete([older, current], committed, at(1), 0) == [older]


def test_a_copy_started_after_the_commit_is_kept_a_retention_from_its_start():
    current, failed_later = version(0), version(5)  # a rerun killed before its commit
    committed = pointer(current, at(1))
    assert C.copies_to_delete([current, failed_later], committed, at(28.9), 24) == []
    assert C.copies_to_delete([current, failed_later], committed, at(29), 24) == [failed_later]


@settings(max_examples=200)
@given(st.lists(st.integers(-100, 100), max_size=8), st.integers(-100, 100), st.floats(0, 48),
       st.floats(-10, 200), st.booleans())
def test_the_retention_never_deletes_the_current_copy_nor_a_recent_one(starts, current_start, retention, now_h, legacy):
    versions = [version(h, f"{i:08x}") for i, h in enumerate(starts)] + ([None] if legacy else [])
    current = version(current_start, "ffffffff")
    committed = pointer(current, at(current_start + 0.5))
    now = at(now_h)
    gone = C.copies_to_delete([*versions, current], committed, now, retention)
    assert current not in gone and set(gone) <= set(versions)
    for v in gone:  # nobody read it for the retention: committed_at passed, and its own start if later
        assert now - committed.committed_at >= dt.timedelta(hours=retention)
        assert v is None or now - C.version_started(v) >= dt.timedelta(hours=retention)
    if now - max([committed.committed_at] + [C.version_started(v) for v in versions if v]) >= dt.timedelta(hours=retention):
        assert set(gone) == set(versions)


def test_a_negative_retention_is_refused():
    with pytest.raises(InvalidInput, match="retention_hours must be >= 0"):
        C.copies_to_delete([], pointer(version(0), at(0)), at(0), -1)


# --- the job's spec -----------------------------------------------------------------------
def test_ingest_spec_keeps_its_defaults_and_checks_the_commit_fields():
    spec = IngestSpec(day=DAY, input_uri="/landing", lake_uri="/lake")
    assert (spec.writer, spec.retention_hours, spec.lease_seconds) == ("", 24.0, 120.0)
    again = IngestSpec.from_json(IngestSpec(day=DAY, input_uri="/l", lake_uri="/k", writer="dag run R task ingest",
                                            retention_hours=0, lease_seconds=30).to_json())
    assert (again.writer, again.retention_hours, again.lease_seconds) == ("dag run R task ingest", 0, 30)
    for bad, why in [({"writer": "a\nb"}, "writer must be one line"), ({"retention_hours": -1}, "retention_hours"),
                     ({"retention_hours": True}, "retention_hours"), ({"lease_seconds": 0.5}, "lease_seconds")]:
        with pytest.raises(InvalidInput, match=why):
            IngestSpec(day=DAY, input_uri="/l", lake_uri="/k", **bad)
