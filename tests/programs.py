"""Start real programs for tests: find them, give them free ports, wait until ready, stop by PID.

Each program's output goes to a log file in the test's temporary directory;
when a program dies or never gets ready the error carries the log's tail,
so a failure in CI says why without re-running it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

# one owner of choosing ports (re-exported for the tests that start programs)
from streams.runtime.broker import free_port as free_port
from streams.runtime.broker import free_ports as free_ports

#: An Alertmanager that sends every alert, firing and resolved, to one webhook
#: (``{url}/pager``) within about a second: the alert-delivery tests' pager.
PAGER_CONFIG = """\
route:
  receiver: pager
  group_by: ['...']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: pager
    webhook_configs:
      - url: {url}/pager
        send_resolved: true
"""


def viralwatch(
    *args: str, timeout: float = 300, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``viralwatch ARGS`` as a user runs it (``python -m streams.cli``, from the checkout),
    its output captured; ``env``: variables set beside this process's."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parents[1],
    )


def find_program(*names: str) -> str | None:
    """The first of ``names`` found on ``PATH`` (Debian renames some: prometheus-alertmanager)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_program(*names: str, package: str) -> str:
    """The program's path, or skip the test saying which Debian package provides it."""
    path = find_program(*names)
    if path is None:
        pytest.skip(
            f"{' / '.join(names)} not installed (Debian package {package}; `make programs` "
            "installs it as root)"
        )
    return path


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET; the status and body (HTTP errors returned, connection errors raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def get_json(url: str, timeout: float = 5.0) -> Any:
    status, body = http_get(url, timeout)
    if status != 200:
        raise AssertionError(f"GET {url}: HTTP {status}: {body[:300]!r}")
    return json.loads(body)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except (OSError, ValueError, AssertionError) as err:
            last_error = err
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class Program:
    """A started program; its output goes to ``log``."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``check()`` is true; fail with the log's tail if the program exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                    f"{self.tail()}"
                )
            try:
                if check():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM this program (by its PID), then SIGKILL if it does not exit in time."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        return self.process.returncode


def start(
    name: str,
    argv: Sequence[str],
    logdir: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Program:
    """Start ``argv`` with output to ``logdir/<name>.log``."""
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    return Program(name, list(argv), log, process)


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness check: ``url`` answers 200."""

    def check() -> bool:
        try:
            return http_get(url, timeout=2.0)[0] == 200
        except OSError:
            return False

    return check


@contextlib.contextmanager
def running(*programs: Program) -> Iterator[None]:
    """Stop the programs (by PID) when the block ends, whatever happens in it."""
    try:
        yield
    finally:
        for program in reversed(programs):
            program.stop()


# -- a webhook receiver -------------------------------------------------------


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A tiny HTTP server on loopback that records every POST (Alertmanager's receiver).

    ``status`` is what it answers (set 503 to play a receiver that is down); ``hold_s``
    how long it holds each POST, recorded, before it answers (an Alertmanager that hangs;
    :meth:`stop` answers the held ones at once).
    """

    requests: list[Received] = field(default_factory=list)
    status: int = 200
    hold_s: float = 0.0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> WebhookReceiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with owner._lock:
                    owner.requests.append(
                        Received(self.path, dict(self.headers.items()), body, time.time())
                    )
                    status = owner.status
                if owner.hold_s:
                    owner._stopping.wait(owner.hold_s)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- Prometheus and Alertmanager ------------------------------------------------


def prometheus_binary() -> str:
    return require_program("prometheus", package="prometheus")


def alertmanager_binary() -> str:
    return require_program(
        "prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager"
    )


def start_alertmanager(argv: Sequence[str], logdir: Path, port: int) -> Program:
    """Alertmanager with ``argv`` (config and storage flags) on ``127.0.0.1:port``, once ready.

    Gossip is off (``--cluster.listen-address=``): one instance, no second port.
    """
    program = start(
        "alertmanager",
        [
            alertmanager_binary(),
            *argv,
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        logdir,
    )
    program.wait_ready(http_ok(f"http://127.0.0.1:{port}/-/ready"))
    return program


def start_prometheus(argv: Sequence[str], logdir: Path, port: int) -> Program:
    """Prometheus with ``argv`` (config and storage flags) on ``127.0.0.1:port``, once ready."""
    program = start(
        "prometheus",
        [prometheus_binary(), *argv, f"--web.listen-address=127.0.0.1:{port}"],
        logdir,
    )
    program.wait_ready(http_ok(f"http://127.0.0.1:{port}/-/ready"))
    return program


def receivers_pointed_at(config: dict[str, Any], url: str) -> dict[str, Any]:
    """An Alertmanager config (parsed) whose webhooks all post to ``url/<receiver>/<n>``.

    Only the URLs change (the n-th webhook of each receiver gets ``n``), so a
    test sees which receiver the config's own routing chose.

    >>> cfg = {"receivers": [{"name": "pager", "webhook_configs": [{"url": "http://p:1/x"}]}]}
    >>> receivers_pointed_at(cfg, "http://127.0.0.1:9")["receivers"][0]["webhook_configs"]
    [{'url': 'http://127.0.0.1:9/pager/1'}]
    """
    out = json.loads(json.dumps(config))
    found = 0
    for receiver in out.get("receivers", []):
        for n, hook in enumerate(receiver.get("webhook_configs", []), 1):
            hook["url"] = f"{url}/{receiver['name']}/{n}"
            found += 1
    if not found:
        raise AssertionError("no webhook receiver to point at the test's receiver")
    return out
