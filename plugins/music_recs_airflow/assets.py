"""The Airflow Assets the pipeline produces.

``PUBLISHED_MODEL``: the model behind ``latest.json``. ``music_recs_daily`` emits an event on it
each time a run moves the pointer (a publication that keeps the pointer, e.g. a backfilled
older day, emits none), with ``day``, ``run_id``, ``manifest`` (its S3 key), ``bucket`` and
``pointer`` as the event's extra. A consumer schedules on it (``schedule=[PUBLISHED_MODEL]``)
instead of polling ``latest.json``; ``dags/music_recs_model_consumer.py`` is an example.
"""

from __future__ import annotations

from airflow.sdk import Asset

PUBLISHED_MODEL = Asset(name="music_recs_published_model")
