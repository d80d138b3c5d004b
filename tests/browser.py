"""Debian's Chromium, headless, driven over the DevTools protocol: the views' browser tests.

No browser is downloaded (``make programs`` installs Debian's ``chromium``);
the protocol is spoken over a WebSocket with aiohttp (installed with Faust),
so nothing else is needed. :class:`Browser` starts Chromium on a free
debugging port with a profile in the test's temporary directory, talks to
its one page, and kills the whole process group at the end.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from programs import find_program


def chromium_or_skip() -> str:
    path = find_program("chromium", "chromium-browser")
    if path is None:
        pytest.skip("chromium not installed (Debian package chromium; `make programs`)")
    return path


class Browser:
    """One headless Chromium page: navigate, evaluate JavaScript, move the mouse, screenshot."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        self.profile = profile
        self.width, self.height = width, height
        self.proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None
        self._session: Any = None
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def __aenter__(self) -> Browser:
        import aiohttp

        self.profile.mkdir(parents=True, exist_ok=True)
        log = (self.profile.parent / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [
                chromium_or_skip(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("Chromium did not start (see chromium.log)")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            pages[0]["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024
        )
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # Chromium and every helper it started
            self.proc.wait(10)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (``AssertionError`` with the error if it failed)."""
        n = next(self._ids)
        await self._ws.send_json({"id": n, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self._ws.receive_json(), 60)
            if msg.get("id") == n:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self._events.append(msg)

    async def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self._events):
                if e.get("method") == method:
                    del self._events[: i + 1]
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {method} in {timeout:g} s")
            msg = await asyncio.wait_for(self._ws.receive_json(), left)
            self._events.append(msg)

    async def goto(self, url: str) -> None:
        """Navigate and wait for the page's load event."""
        self._events.clear()
        await self.send("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")

    async def js(self, expression: str) -> Any:
        """The value of ``expression`` in the page (awaited if a promise)."""
        got = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in got:
            raise AssertionError(f"{expression[:80]}: {got['exceptionDetails']}")
        return got["result"].get("value")

    async def submit(self, form_selector: str, fields: dict[str, str]) -> None:
        """Fill a form's fields and submit it as a user would; wait for the next page."""
        self._events.clear()
        await self.js(
            f"(() => {{ const f = document.querySelector({json.dumps(form_selector)});"
            f"for (const [k, v] of Object.entries({json.dumps(fields)})) f.elements[k].value = v;"
            "f.requestSubmit(); return true; })()"
        )
        await self.wait_event("Page.loadEventFired")

    async def mouse(self, x: float, y: float) -> None:
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    async def screenshot(self, out: Path) -> None:
        got = await self.send("Page.captureScreenshot", format="png")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(got["data"]))
