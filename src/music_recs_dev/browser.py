"""Open a page in headless Chromium as a person would, and report what they would see.

Dev tooling for the report test and for the screenshot in ``docs/``: starts Debian's
``chromium`` (``apt-get install chromium``) with a throwaway profile, drives it over the
Chrome DevTools Protocol (the ``websockets`` client Airflow already depends on), loads the
page, waits for every image to decode, and returns the page's text, its images (alt, size,
whether they decoded), every console error or uncaught exception, and optionally a
full-page PNG screenshot.

Run: ``python -m music_recs_dev.browser PAGE.html [--screenshot OUT.png]``
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

BINARIES = ("chromium", "chromium-browser", "google-chrome")

# Waits for every image to decode; an image that cannot be decoded is reported, not thrown.
_IMAGES_JS = """Promise.all([...document.images].map(img => img.decode().then(
    () => ({alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, decoded: true}),
    () => ({alt: img.alt, width: 0, height: 0, decoded: false}))))"""


@dataclasses.dataclass(frozen=True)
class PageView:
    """What a person sees: title, visible text, images, links, and what the console said."""

    title: str
    text: str
    images: list[dict]
    links: list[str]
    console_errors: list[str]
    screenshot: bytes | None = None


def find_chromium() -> str:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no Chromium found; install it (Debian: apt-get install chromium)")


class _DevTools:
    """One page's DevTools session: commands in order, events collected while waiting."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def send(self, method: str, timeout: float = 60, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(f"no {method} within {timeout:.0f}s")


def _console_errors(events: list[dict]) -> list[str]:
    errors = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return errors


def view(page: str | Path, screenshot: bool = False, width: int = 1280, height: int = 900,
         timeout: float = 60) -> PageView:
    """Load ``page`` (a file path or URL) in headless Chromium and return what it shows."""
    url = page if re.match(r"^[a-z]+://", str(page)) else Path(page).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="music_recs_chromium_")
    args = [find_chromium(), "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
            f"--window-size={width},{height}", "about:blank"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = _devtools_port(proc, profile, timeout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as resp:
            target = next(t for t in json.load(resp) if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout) as ws:
            tools = _DevTools(ws)
            for domain in ("Page", "Runtime", "Log"):
                tools.send(f"{domain}.enable")
            tools.send("Page.navigate", url=url)
            tools.wait_for("Page.loadEventFired", timeout)
            images = tools.send("Runtime.evaluate", expression=_IMAGES_JS, awaitPromise=True, returnByValue=True,
                                timeout=timeout)["result"]["value"]
            info = tools.send("Runtime.evaluate", returnByValue=True, expression=(
                "({title: document.title, text: document.body ? document.body.innerText : '',"
                " links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))})"))["result"]["value"]
            shot = None
            if screenshot:
                shot = base64.b64decode(tools.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                                   timeout=timeout)["data"])
            time.sleep(0.2)  # late console messages
            tools.send("Runtime.evaluate", expression="1")
            return PageView(info["title"], info["text"], images, info["links"], _console_errors(tools.events), shot)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(proc: subprocess.Popen, profile: str, timeout: float) -> int:
    """Chromium writes the port it chose to DevToolsActivePort in its profile."""
    marker = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Chromium exited with {proc.returncode}: {proc.stderr.read()[-500:]}")
        if marker.exists():
            first = marker.read_text().split("\n", 1)[0].strip()
            if first.isdigit():
                return int(first)
        time.sleep(0.1)
    raise TimeoutError(f"Chromium did not open its DevTools port within {timeout:.0f}s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page")
    parser.add_argument("--screenshot", help="write a full-page PNG here")
    args = parser.parse_args(argv)
    seen = view(args.page, screenshot=bool(args.screenshot))
    if args.screenshot:
        Path(args.screenshot).write_bytes(seen.screenshot)
    print(f"{seen.title}: {len(seen.images)} images "
          f"({sum(i['decoded'] for i in seen.images)} decoded), {len(seen.console_errors)} console errors")
    for error in seen.console_errors:
        print(f"  console: {error}")
    return 0 if not seen.console_errors and all(i["decoded"] for i in seen.images) else 1


if __name__ == "__main__":
    sys.exit(main())
