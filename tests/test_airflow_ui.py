"""Airflow 3's Trigger form in a real browser (music_recs_dev.airflow_ui), on a throwaway stack.

A tiny DAG whose params have the shapes the pipeline's form uses: nullable numbers and a nullable
choice ("empty: the recipe's"), a plain integer and a flag. A person triggers it, leaving the
nullable fields alone and changing others; the test checks the conf the form sent, the conf the
run got (REST API), and that Airflow ran it: null is a value these params accept.
"""

import contextlib
import datetime as dt
import json
import subprocess
import textwrap
import time
import urllib.error
import urllib.request

import psutil
import pytest
from playwright.sync_api import expect

from music_recs_dev.airflow_ui import AirflowUI, UIError, admin_password, chromium, new_page, trigger_dag
from tests.conftest import airflow_env, free_port

DAG_ID = "ui_form_probe"
DAG_FILE = f'''
    import datetime as dt

    from airflow.sdk import DAG, Param, task

    with DAG("{DAG_ID}", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False, params={{
        "rank": Param(None, type=["null", "integer"], minimum=2, maximum=512, description="empty: the recipe's"),
        "alpha": Param(None, type=["null", "number"], minimum=0, description="empty: the recipe's"),
        "reg_scaling": Param(None, type=["null", "string"], enum=[None, "per_rating", "constant"],
                             values_display={{"None": "the recipe's", "per_rating": "Per rating",
                                              "constant": "Constant"}}),
        "max_iter": Param(10, type="integer", minimum=1, maximum=50),
        "flag": Param(False, type="boolean"),
    }}):
        @task
        def noop():
            return None

        noop()
'''
DEFAULTS = {"rank": None, "alpha": None, "reg_scaling": None, "max_iter": 10, "flag": False}
STARTUP_S = 150


class _Api:
    def __init__(self, base: str, password: str):
        self.base = base
        req = urllib.request.Request(f"{base}/auth/token", json.dumps({"username": "admin", "password": password}).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            self.token = json.load(resp)["access_token"]

    def get(self, path: str) -> dict:
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)


def _until(check, deadline_s: float, what: str, proc=None):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"airflow standalone exited ({proc.returncode}) while waiting for {what}")
        try:
            value = check()
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`airflow standalone` on loopback with a temp home (SQLite) and a folder holding only DAG_FILE."""
    root = tmp_path_factory.mktemp("airflow_ui")
    (root / "dags").mkdir()
    (root / "plugins").mkdir()
    (root / "dags" / "ui_form_probe.py").write_text(textwrap.dedent(DAG_FILE))
    port = free_port()
    env = airflow_env({
        "AIRFLOW_HOME": str(root / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
    })
    for name in ("AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_SPARK_DEFAULT"):
        env.pop(name, None)
    log = open(root / "standalone.log", "w")
    proc = subprocess.Popen(["airflow", "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        password = _until(lambda: admin_password(root / "home"), STARTUP_S, "the admin password", proc)
        api = _until(lambda: _Api(base, password), STARTUP_S, "the API server", proc)
        _until(lambda: api.get(f"/api/v2/dags/{DAG_ID}/details")["params"], STARTUP_S, f"{DAG_ID} to be parsed", proc)
        yield {"base": base, "password": password, "api": api, "root": root}
    finally:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in family:  # standalone and each component it started
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(family, timeout=20)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=10)
        log.close()


def test_the_trigger_form_sends_null_for_fields_left_alone(stack):
    """Untouched nullable fields go out as null (not missing, not ""); changed ones as typed values."""
    api = stack["api"]
    run = trigger_dag(stack["base"], DAG_ID, {"rank": 64, "flag": True}, password=stack["password"],
                      logical_date=dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc),
                      screenshot=stack["root"] / "form.png")
    assert run.conf == {**DEFAULTS, "rank": 64, "flag": True}
    assert json.dumps(run.conf) == '{"rank": 64, "alpha": null, "reg_scaling": null, "max_iter": 10, "flag": true}'
    assert run.logical_date == "2026-11-20T00:00:00.000Z"
    got = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run.run_id}")
    assert got["conf"] == run.conf and got["logical_date"] == "2026-11-20T00:00:00Z"

    with chromium() as browser:
        ui = AirflowUI(new_page(browser), stack["base"])
        ui.login(stack["password"])
        form = ui.trigger_form(DAG_ID)
        # What a person sees before touching anything: empty numbers, the None choice's label.
        assert {n: form.shows(n) for n in DEFAULTS} == {"rank": "", "alpha": "", "reg_scaling": "the recipe's",
                                                       "max_iter": "10", "flag": "off"}
        # Set, then emptied again: back to null, not "" and not a missing key.
        form.set("rank", 128)
        form.set("reg_scaling", "per_rating")
        assert form.shows("reg_scaling") == "Per rating"
        form.set("rank", None)
        form.set("reg_scaling", None)
        form.set("alpha", 0.25)
        cleared = form.submit()
        assert cleared.conf == {**DEFAULTS, "alpha": 0.25}
        # A number typed outside minimum/maximum is moved onto the bound when the field loses focus
        # (the form would send 512): the driver refuses such a value before typing it.
        form = ui.trigger_form(DAG_ID)
        with pytest.raises(ValueError, match="outside its minimum/maximum"):
            form.set("rank", 1000)
        box = form.field("rank").get_by_role("spinbutton")
        box.fill("1000")
        box.press("Tab")
        expect(box).to_have_value("512")
        with pytest.raises(UIError, match="no param 'ranks'"):
            form.set("ranks", 64)

    # Airflow accepted both and ran them (the form unpaused the DAG): null passes the params' schema.
    def finished():
        runs = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
        states = {r["dag_run_id"]: r["state"] for r in runs}
        return states if all(s in ("success", "failed") for s in states.values()) else None

    states = _until(finished, 90, "both runs to finish")
    assert states == {run.run_id: "success", cleared.run_id: "success"}
