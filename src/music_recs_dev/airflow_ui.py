"""Drive headless Chromium with Playwright, and Airflow 3's web UI in it as a person would.

Chromium is Debian's (``apt-get install chromium``; ``infra/local/test.sh`` installs it), never a
browser build of Playwright's own: no ``playwright install``. ``chromium()`` opens it for any page
(the report test); ``AirflowUI`` logs in through the simple auth manager's page, opens a DAG's
Trigger form, changes the fields it is given and submits. The form posts to the REST API
(``POST /api/v2/dags/{dag_id}/dagRuns``); that request and its answer are captured, so the caller
gets the new run's id and the exact ``conf`` the form sent.

Run: ``python -m music_recs_dev.airflow_ui trigger URL DAG_ID [--field NAME=JSON ...] [--logical-date ISO]``
(password from ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``), or
``python -m music_recs_dev.airflow_ui screenshot PAGE.html OUT.png`` (a full-page PNG, e.g. docs/report.png).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from playwright.sync_api import Browser, Locator, Page, Playwright, Response, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM_NAMES = ("chromium", "chromium-browser")  # Debian's, then other distributions' name
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def chromium_executable() -> str:
    """Debian's Chromium on PATH, found as infra/local/test.sh finds it."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no Chromium on PATH; install it (Debian: apt-get install chromium)")


def launch_chromium(playwright: Playwright, **kwargs: Any) -> Browser:
    """Headless Debian Chromium under Playwright (its own browser builds are never used)."""
    return playwright.chromium.launch(executable_path=chromium_executable(), headless=True, **kwargs)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the block; closed (with Playwright's driver) after it."""
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, width: int = 1280, height: int = 1400) -> Page:
    """A page in a fresh context on UTC (Airflow's UI shows dates in the browser's zone)."""
    return browser.new_context(viewport={"width": width, "height": height}, timezone_id="UTC").new_page()


def screenshot_page(page: str | os.PathLike, out: str | os.PathLike, width: int = 1280) -> None:
    """A full-page PNG of ``page`` (a file or URL) once it has loaded and its images have decoded."""
    url = str(page) if re.match(r"^[a-z]+://", str(page)) else Path(page).resolve().as_uri()
    with chromium() as browser:
        tab = new_page(browser, width=width, height=900)
        tab.goto(url, wait_until="load")
        tab.evaluate("Promise.all([...document.images].map(img => img.decode().catch(() => null)))")
        tab.screenshot(path=str(out), full_page=True)


def admin_password(airflow_home: str | os.PathLike | None = None, username: str = "admin") -> str:
    """The password the simple auth manager generated for ``username`` in ``$AIRFLOW_HOME``."""
    home = Path(airflow_home or os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return json.loads((home / PASSWORDS_FILE).read_text())[username]


class UIError(RuntimeError):
    """The page is not what a person would see there, or Airflow refused what was submitted."""


@dataclasses.dataclass(frozen=True)
class TriggeredRun:
    """A run the Trigger form created: its id, and what the form sent and got back."""

    dag_id: str
    run_id: str
    conf: dict  # the ``conf`` the form posted, exactly
    request: dict  # the whole JSON body the form posted (logical_date, dag_run_id, note, ...)
    response: dict  # the REST API's answer: the new DAG run

    @property
    def logical_date(self) -> str | None:
        return self.request.get("logical_date")


class TriggerForm:
    """A DAG's open Trigger form. ``set`` changes one field as a person would; ``submit`` sends it."""

    def __init__(self, ui: AirflowUI, dag_id: str, dialog: Locator, params: dict):
        self.ui, self.dag_id, self.dialog = ui, dag_id, dialog
        self.params = params  # name -> {"value": default, "schema": {...}}, as the form got them

    @property
    def page(self) -> Page:
        return self.ui.page

    def field(self, name: str) -> Locator:
        """The row of param ``name``: its label, widget and description."""
        if name not in self.params:
            raise UIError(f"{self.dag_id} has no param {name!r}; its params: {sorted(self.params)}")
        row = self.dialog.locator("[data-scope=field][data-part=root]").filter(
            has=self.page.locator(f'[name="element_{name}"]'))
        try:
            row.wait_for(state="visible", timeout=self.ui.timeout_ms)
        except PlaywrightTimeout:
            raise UIError(f"the Trigger form of {self.dag_id} shows no field for param {name!r}") from None
        return row

    def set(self, name: str, value: Any) -> None:
        """Change param ``name`` to ``value`` (None: empty the field)."""
        row = self.field(name)
        schema = self.params[name].get("schema") or {}
        kind = _widget(row)
        if kind == "dropdown":
            self._choose(row, name, schema, value)
        elif kind == "switch":
            if not isinstance(value, bool):
                raise ValueError(f"{name} is a switch: give True or False, not {value!r}")
            box = row.get_by_role("checkbox")
            if box.is_checked() != value:
                row.locator("[data-scope=switch][data-part=control]").click()
            _wait(lambda: expect(box).to_be_checked(checked=value, timeout=self.ui.timeout_ms),
                  f"the switch {name} did not turn {value}")
        elif kind in ("number", "text"):
            low, high = schema.get("minimum"), schema.get("maximum")
            if kind == "number" and value is not None and (
                    (low is not None and value < low) or (high is not None and value > high)):
                # The field would silently move it onto the bound on blur, and the form send that.
                raise ValueError(f"{name}: {value!r} is outside its minimum/maximum {low}..{high}")
            box = row.get_by_role("spinbutton") if kind == "number" else row.get_by_role("textbox")
            text = "" if value is None else _text(value)
            box.fill(text)
            box.press("Tab")  # the number input commits on blur, as when a person moves on
            _wait(lambda: expect(box).to_have_value(text, timeout=self.ui.timeout_ms),
                  f"{name} does not read {text!r}")
        else:
            raise UIError(f"param {name!r} has a widget this driver does not fill (schema {schema})")

    def _choose(self, row: Locator, name: str, schema: dict, value: Any) -> None:
        enum = schema.get("enum") or []
        if value is None and None not in enum:
            # No "null" entry to pick: empty it with the field's clear button (the "x"); the form
            # then sends null, which such a schema refuses.
            clear = row.get_by_role("button", name="Clear selected options", include_hidden=True)
            if clear.count():
                clear.click()
                _wait(lambda: expect(clear).to_have_count(0, timeout=self.ui.timeout_ms), f"{name} was not emptied")
            return
        if value not in enum:
            raise ValueError(f"{name}: {value!r} is not one of its choices {enum}")
        label = _label(value, schema.get("values_display"))
        row.get_by_role("combobox").click()
        options = self.page.get_by_role("option")
        options.first.wait_for()
        shown = [t.strip() for t in options.all_inner_texts()]
        if shown.count(label) != 1:
            raise UIError(f"{name}: {shown.count(label)} choices labelled {label!r} in its list {shown}")
        options.filter(has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).click()
        control = row.locator(f'[id="element_{name}"] > div').first
        _wait(lambda: expect(control).to_have_text(label, timeout=self.ui.timeout_ms),
              f"{name} does not show {label!r}")

    def set_logical_date(self, when: dt.datetime) -> None:
        """Type ``when`` (aware, whole minutes: the picker has no seconds) into the Logical Date picker."""
        if when.tzinfo is None:
            raise ValueError("logical_date must be timezone-aware")
        if when.second or when.microsecond:
            raise ValueError(f"the form's logical date has minutes, not seconds: {when.isoformat()}")
        self.dialog.get_by_test_id("datetime-input").click()
        picker = self.page.locator("[data-scope=popover][data-part=content][data-state=open]").filter(
            has=self.page.get_by_placeholder("YYYY/MM/DD"))
        picker.wait_for(timeout=self.ui.timeout_ms)
        zone = picker.locator("p").first.inner_text().strip()  # the zone the picker reads dates in
        try:
            local = when.astimezone(ZoneInfo(zone))
        except (KeyError, ValueError) as exc:
            raise UIError(f"the date picker shows an unknown time zone {zone!r}") from exc
        for placeholder, text in (("YYYY/MM/DD", local.strftime("%Y/%m/%d")), ("HH:mm", local.strftime("%H:%M"))):
            box = picker.get_by_placeholder(placeholder)
            box.fill(text)
            box.press("Enter")
        self.page.keyboard.press("Escape")
        picker.wait_for(state="hidden", timeout=self.ui.timeout_ms)
        shown = local.strftime("%b %d, %Y %H:%M")
        date = self.dialog.get_by_test_id("datetime-input")
        _wait(lambda: expect(date).to_have_text(shown, timeout=self.ui.timeout_ms),
              f"the logical date does not read {shown!r}")

    def set_unpause(self, unpause: bool) -> None:
        """Tick or untick "Unpause <dag> on trigger" (shown only for a paused DAG)."""
        label = self.dialog.locator("label[data-scope=checkbox]").filter(
            has_text=re.compile(rf"^\s*Unpause {re.escape(self.dag_id)} on trigger\s*$"))
        if not label.count():
            raise UIError(f"no 'Unpause {self.dag_id} on trigger' box: the DAG is not paused")
        box = label.get_by_role("checkbox", include_hidden=True)
        if box.is_checked() != unpause:
            label.click()
        _wait(lambda: expect(box).to_be_checked(checked=unpause, timeout=self.ui.timeout_ms),
              "the unpause box did not change")

    def shows(self, name: str) -> str:
        """What the field of param ``name`` shows (number/text: its value; dropdown: the chosen label)."""
        row = self.field(name)
        kind = _widget(row)
        if kind == "number":
            return row.get_by_role("spinbutton").input_value()
        if kind == "text":
            return row.get_by_role("textbox").input_value()
        if kind == "switch":
            return "on" if row.get_by_role("checkbox").is_checked() else "off"
        # the dropdown's control (its sibling spans are screen-reader announcements)
        return row.locator(f'[id="element_{name}"] > div').first.inner_text().strip()

    def submit(self) -> TriggeredRun:
        """Press Trigger; returns the new run, or raises UIError with what Airflow or the form said."""
        button = self.dialog.get_by_test_id("trigger-dag-submit")
        if button.is_disabled():
            raise UIError(f"the Trigger button of {self.dag_id} is disabled: {self._problems() or 'no message shown'}")
        path = f"/api/v2/dags/{self.dag_id}/dagRuns"
        try:
            with self.page.expect_response(
                    lambda r: r.request.method == "POST" and r.url.split("?")[0].endswith(path),
                    timeout=self.ui.timeout_ms) as answer:
                button.click()
        except PlaywrightTimeout:
            raise UIError(f"pressing Trigger sent no POST {path}: {self._problems() or 'no message shown'}") from None
        response: Response = answer.value
        body = response.request.post_data_json or {}
        if not response.ok:
            raise UIError(f"Airflow refused the run ({response.status}): {response.text()[:2000]}; "
                          f"the form sent {json.dumps(body)}")
        run = response.json()
        self.dialog.wait_for(state="hidden", timeout=self.ui.timeout_ms)  # the form closes on success
        return TriggeredRun(self.dag_id, run["dag_run_id"], body.get("conf") or {}, body, run)

    def _problems(self) -> str:
        texts = self.dialog.locator("[data-part=error-text], [role=alert]").all_inner_texts()
        return "; ".join(t.strip() for t in texts if t.strip())


class AirflowUI:
    """Airflow 3's web UI at ``base_url`` in one Playwright page."""

    def __init__(self, page: Page, base_url: str, timeout_s: float = 30.0):
        self.page, self.base_url, self.timeout_ms = page, base_url.rstrip("/"), timeout_s * 1000
        page.set_default_timeout(self.timeout_ms)

    def login(self, password: str, username: str = "admin") -> None:
        """Sign in on the simple auth manager's page, as a person does."""
        self.page.goto(self.base_url + "/")
        try:
            self.page.get_by_label("Username").fill(username)
        except PlaywrightTimeout:
            raise UIError(f"no sign-in form at {self.page.url} (is the simple auth manager on?)") from None
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        try:
            self.page.wait_for_url(lambda url: "/auth/login" not in url)
        except PlaywrightTimeout:
            raise UIError(f"signing in as {username} failed: {self.page.locator('body').inner_text()[:500]}") from None

    def trigger_form(self, dag_id: str) -> TriggerForm:
        """Open ``dag_id``'s page and its Trigger form (signed in first)."""
        details = f"/api/v2/dags/{dag_id}/details"
        with self.page.expect_response(lambda r: r.url.split("?")[0].endswith(details)) as got:
            self.page.goto(f"{self.base_url}/dags/{dag_id}")
        if got.value.status == 401 or "/auth/login" in self.page.url:
            raise UIError("not signed in: call login() first")
        if not got.value.ok:
            raise UIError(f"no DAG {dag_id!r} in the UI ({got.value.status}): {got.value.text()[:500]}")
        params = got.value.json().get("params") or {}
        self.page.get_by_role("button", name="Trigger Dag").click()
        dialog = self.page.get_by_role("dialog").filter(has_text=f"Trigger Dag - {dag_id}")
        try:
            dialog.wait_for()
        except PlaywrightTimeout:
            raise UIError(f"the Trigger button of {dag_id} opened no 'Trigger Dag - {dag_id}' form") from None
        form = TriggerForm(self, dag_id, dialog, params)
        for name in params:  # every param's field has rendered
            form.field(name)
        return form

    def trigger(self, dag_id: str, fields: Mapping[str, Any] | None = None, *,
                logical_date: dt.datetime | None = None, unpause: bool | None = None,
                screenshot: str | os.PathLike | None = None) -> TriggeredRun:
        """Trigger ``dag_id`` from its form, changing only ``fields`` (and the logical date if given).

        ``unpause``: tick or untick "Unpause on trigger" (None: as the form has it: ticked).
        ``screenshot``: a PNG of the filled form, taken just before pressing Trigger."""
        form = self.trigger_form(dag_id)
        if logical_date is not None:
            form.set_logical_date(logical_date)
        for name, value in (fields or {}).items():
            form.set(name, value)
        if unpause is not None:
            form.set_unpause(unpause)
        if screenshot:
            form.dialog.screenshot(path=str(screenshot))
        return form.submit()


def trigger_dag(base_url: str, dag_id: str, fields: Mapping[str, Any] | None = None, *,
                logical_date: dt.datetime | None = None, password: str | None = None, username: str = "admin",
                airflow_home: str | os.PathLike | None = None, unpause: bool | None = None,
                screenshot: str | os.PathLike | None = None, timeout_s: float = 30.0) -> TriggeredRun:
    """Open Chromium, sign in, trigger ``dag_id`` from its form; see ``AirflowUI.trigger``."""
    password = password or admin_password(airflow_home, username)
    with chromium() as browser:
        ui = AirflowUI(new_page(browser), base_url, timeout_s)
        ui.login(password, username)
        return ui.trigger(dag_id, fields, logical_date=logical_date, unpause=unpause, screenshot=screenshot)


def _widget(row: Locator) -> str:
    if row.get_by_role("spinbutton").count():
        return "number"
    if row.get_by_role("combobox").count():
        return "dropdown"
    if row.locator("[data-scope=switch]").count():
        return "switch"
    if row.locator("input[type=text], input:not([type])").count() == 1:
        return "text"
    return "other"


def _label(value: Any, values_display: Mapping[str, str] | None) -> str:
    """The label the dropdown shows for ``value``, as Airflow 3.3's form picks it: JSON null is
    "null"; with ``values_display``, a value it does not name gets its "None" entry's label."""
    key = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if values_display:
        return values_display.get(key, values_display.get("None", key))
    return key


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)


def _wait(assertion, what: str) -> None:
    """Run a Playwright ``expect`` (it retries until its timeout); its failure becomes a UIError."""
    try:
        assertion()
    except AssertionError as exc:
        raise UIError(f"{what}: {exc}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    trigger = commands.add_parser("trigger", help="trigger a DAG from its form; print the run id and conf sent")
    trigger.add_argument("url", help="the Airflow UI, e.g. http://127.0.0.1:8080")
    trigger.add_argument("dag_id")
    trigger.add_argument("--field", action="append", default=[], metavar="NAME=JSON",
                         help="a param to change, its value as JSON (null empties it); repeatable")
    trigger.add_argument("--logical-date", type=dt.datetime.fromisoformat, help="ISO date-time with zone")
    trigger.add_argument("--screenshot", help="a PNG of the filled form")
    shot = commands.add_parser("screenshot", help="a full-page PNG of a page")
    shot.add_argument("page", help="an HTML file or a URL")
    shot.add_argument("out", help="the PNG to write")
    args = parser.parse_args(argv)
    if args.command == "screenshot":
        screenshot_page(args.page, args.out)
        return 0
    fields = {}
    for item in args.field:
        name, _, raw = item.partition("=")
        fields[name] = json.loads(raw)
    run = trigger_dag(args.url, args.dag_id, fields, logical_date=args.logical_date, screenshot=args.screenshot)
    print(json.dumps({"run_id": run.run_id, "conf": run.conf, "request": run.request}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
