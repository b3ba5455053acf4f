"""A throwaway PostgreSQL server on 127.0.0.1, for an Airflow metadata database in tests.

Airflow 3's scheduler, API server, triggerer and CLI write to the metadata database at the same
time. SQLite serialises those writes on one file lock: a REST call could wait 60 s and fail
with "database is locked", and a CLI backfill could be refused outright. PostgreSQL is what a
deployment uses (``infra/DEPLOYMENT.md``), so the scheduler test runs on it too.

The cluster lives in a temporary folder and is removed on ``stop()``. The server binaries come
from Debian's ``postgresql`` package (``/usr/lib/postgresql/<major>/bin``). ``initdb`` refuses
to run as root, so as root the cluster is created and run as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
DATABASE = "airflow"
USER = "airflow"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL's server programs were not found; install them "
                       "(Debian: apt-get install postgresql)")


class LocalPostgres:
    """``start()`` initialises a cluster listening on ``port``, starts it and creates database
    ``airflow``; ``url`` is its SQLAlchemy URL; ``stop()`` stops the server and removes the folder."""

    def __init__(self, port: int):
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="music_recs_pg_"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._bin = _bindir()
        # Server programs refuse root; the unprivileged owner needs the folder.
        self._as = [] if os.geteuid() else ["runuser", "-u", "postgres", "--"]
        if self._as:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{USER}@{HOST}:{self.port}/{DATABASE}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([*self._as, str(self._bin / args[0]), *args[1:]],
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")

    def start(self) -> "LocalPostgres":
        # Trust on loopback only: a test server without a password, reachable from this machine.
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")
        # fsync off: nothing here must survive a crash, and the 2 cores are busy with Spark.
        options = f"-c listen_addresses={HOST} -c port={self.port} -c unix_socket_directories={self.dir} " \
                  "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while True:
            try:
                self._run("createdb", "-h", HOST, "-p", str(self.port), "-U", USER, DATABASE, timeout=30)
                return self
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
