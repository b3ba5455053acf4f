"""A local S3-compatible server (moto in server mode) on 127.0.0.1, for the one-machine run and tests.

It speaks the S3 HTTP API; the pipeline talks to it with boto3 exactly as to AWS.
State lives in the server's memory: stopping it forgets every object.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HOST = "127.0.0.1"


def endpoint(port: int) -> str:
    return f"http://{HOST}:{port}"


def is_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(endpoint(port) + "/moto-api/", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def start(port: int, log_path: str, pid_path: str | None = None, timeout: float = 30.0) -> subprocess.Popen | None:
    """Start moto on ``port`` unless one already answers there; wait until it serves.

    Returns the new process, or None when a server was already running.
    """
    if is_up(port):
        return None
    if _port_taken(port):
        raise RuntimeError(f"port {port} on {HOST} is taken by something that is not an S3 server; "
                           f"set MUSIC_RECS_S3_PORT to a free port")
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives the shell that started it
    )
    if pid_path:
        with open(pid_path, "w") as fh:
            fh.write(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the local S3 server exited at start (code {proc.returncode}); see {log_path}")
        if is_up(port):
            return proc
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"the local S3 server did not answer on port {port} within {timeout:.0f}s; see {log_path}")


def stop(pid_path: str) -> bool:
    try:
        with open(pid_path) as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    os.remove(pid_path)
    return True
