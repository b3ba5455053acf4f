import pytest

from music_recs.failures import TooManyBadRows
from music_recs.jobs import IngestResult
from music_recs_airflow.tasks import check_quarantine_share


def result(read, reasons):
    bad = sum(reasons.values())
    return IngestResult(day="2026-11-20", rows_read=read, rows_accepted=read - bad, rows_quarantined=bad,
                        duplicates_removed=0, duplicates_of_other_days=0, quarantine_reasons=reasons, formats={},
                        seconds={}, quarantine_uri="s3://music-raw/quarantine/stream_logs/dt=2026-11-20/quarantine.jsonl")


def test_under_the_threshold_the_run_goes_on():
    check_quarantine_share(result(1000, {"not_json_object": 50}), 0.05, "2026-11-20")
    check_quarantine_share(result(0, {}), 0.05, "2026-11-20")


def test_above_the_threshold_the_message_names_each_check_and_count():
    with pytest.raises(TooManyBadRows) as err:
        check_quarantine_share(result(1000, {"ts_outside_day": 12, "not_json_object": 70}), 0.05, "2026-11-20")
    msg = str(err.value)
    assert "82 of 1000 rows (8.2%)" in msg and "above the 5% threshold" in msg
    assert msg.index("not_json_object: 70 rows") < msg.index("ts_outside_day: 12 rows")
    assert "quarantine.jsonl" in msg
