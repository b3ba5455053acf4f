"""Settings of the single-machine Airflow (``infra/local``), whose metadata database is SQLite.

``SQLITE_CONNECT_ARGS`` is named by ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS`` in
``infra/local/env.sh``: sqlite3 waits 5 s for a lock by default, and the scheduler, the API
server, the DAG processor and a CLI backfill all write to one file; on a busy 2-core machine
``airflow backfill create`` waited longer and failed with "database is locked". The timeout does
not cover a write that would deadlock (a transaction that read, then writes while another holds the
write lock): SQLite refuses it at once, Airflow removes the partial backfill and the command must be
run again (docs/operations.md, "Backfills"). A deployment uses PostgreSQL (``infra/DEPLOYMENT.md``)
and does not set this; nor does the scheduler test (``music_recs_dev.local_postgres``).
"""

SQLITE_CONNECT_ARGS = {"timeout": 60}
