"""The throwaway PostgreSQL the scheduler test gives Airflow: it serves SQL, and stop() leaves nothing."""

import sqlalchemy

from music_recs_dev.local_postgres import LocalPostgres
from tests.conftest import free_port


def test_serves_a_database_and_stop_removes_it():
    pg = LocalPostgres(free_port()).start()
    try:
        engine = sqlalchemy.create_engine(pg.url)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("create table t (x int)"))
            conn.execute(sqlalchemy.text("insert into t values (41), (1)"))
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select sum(x) from t")).scalar() == 42
        engine.dispose()
    finally:
        pg.stop()
    assert not pg.dir.exists()
