"""A real Spark standalone cluster on 127.0.0.1 for tests: one master and N workers,
started with ``spark-class`` from the installed PySpark and stopped (process groups
killed) afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pyspark

from tests.conftest import free_port


class StandaloneCluster:
    def __init__(self, root: Path, workers: int = 2, cores: int = 1, memory: str = "3g"):
        self.root = Path(root)
        self.workers, self.cores, self.memory = workers, cores, memory
        self.port, self.ui_port = free_port(), free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str]) -> None:
        # Each daemon (and the executors a worker starts) gets its own home, temp and working folder
        # and none of the test process's AWS variables: what a job needs from the driver's side
        # (S3 endpoint and keys, the connector's jars, the job's code) must come with the job.
        home = self.root / f"{name}-home"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW_CONN_"))}
        env.update(SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(self.root / "logs"),
                   SPARK_WORKER_DIR=str(self.root / f"{name}-work"), HOME=str(home), TMPDIR=str(home / "tmp"))
        log = open(self.root / f"{name}.log", "w")
        # Own session: killing the group also kills the executors a worker launched.
        self.procs[name] = subprocess.Popen([self.spark_class, *args], stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=home, start_new_session=True)

    def start(self, timeout: float = 90) -> StandaloneCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(self.port), "--webui-port", str(self.ui_port)])
        for i in range(self.workers):
            self._start(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", self.master_url, "--host", "127.0.0.1",
                                       "--cores", str(self.cores), "--memory", self.memory,
                                       "--webui-port", str(free_port()), "--work-dir", str(self.root / f"worker{i}-work")])
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.state()
            if state and state.get("aliveworkers") == self.workers:
                return self
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"spark {name} exited: {(self.root / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"standalone cluster not ready within {timeout}s: {self.state()}")

    def state(self) -> dict | None:
        """The master's JSON status (workers, running applications), or None if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            return None

    def running_executors(self) -> int:
        state = self.state() or {}
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE" and w.get("coresused", 0) > 0)

    def kill_worker(self, index: int) -> None:
        """SIGKILL a worker and everything it launched (its executors), like a lost machine."""
        proc = self.procs[f"worker{index}"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
