"""
### music_recs_model_consumer

An example consumer of the published model: it runs whenever `music_recs_daily` moves
`latest.json` (an event on the Asset `music_recs_published_model`), instead of polling the
pointer. It reads the manifest named in the event and checks that every published object is
there with the size and SHA-256 the manifest records, the check a serving loader makes before
swapping models. Copy it and replace the check with your loader.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, get_current_context, task

from music_recs_airflow import tasks
from music_recs_airflow.assets import PUBLISHED_MODEL
from music_recs_airflow.publish import verify_publication
from music_recs_airflow.s3 import S3Store


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
        store = S3Store.from_airflow(tasks.load_settings().aws_conn_id)
        return [verify_publication(store, e.extra["bucket"], e.extra["manifest"]) for e in events]

    check_published_model()


music_recs_model_consumer()
