"""
### music_recs_model_consumer

An example consumer of the published model: it runs whenever `music_recs_daily` moves
`latest.json` (an event on the Asset `music_recs_published_model`), instead of polling the
pointer. It reads the manifest named in the event through the read-only connection
`aws_models_reader` (setting `consumer_aws_conn_id`), and checks it as a serving loader should
before swapping models: the event names the configured models bucket and a key under its prefix,
the manifest has the SHA-256 announced with it, and every published object is there with the
size and SHA-256 the manifest records. Copy it and replace the check with your loader.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, get_current_context, task

from music_recs_airflow import tasks
from music_recs_airflow.assets import PUBLISHED_MODEL


@dag(
    dag_id="music_recs_model_consumer",
    schedule=[PUBLISHED_MODEL],
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "music-recs", "retries": 1, "execution_timeout": dt.timedelta(minutes=10)},
    tags=["music-recs", "consumer"],
    doc_md=__doc__,
)
def music_recs_model_consumer():
    @task
    def check_published_model() -> list[dict]:
        events = get_current_context()["triggering_asset_events"][PUBLISHED_MODEL]
        return [tasks.check_published_model(dict(e.extra)) for e in events]

    check_published_model()


music_recs_model_consumer()
