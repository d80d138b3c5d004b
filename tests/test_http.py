"""The worker's HTTP port (streams/web.py): routes, probes, and every kind of bad input.

The server is started on a free loopback port and spoken to through raw
sockets, so a malformed request is really malformed; each test bounds its
own waits, so a hang fails instead of stalling the suite. The flags and
variables of the port are checked through the real command.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from streams.metrics import add_metrics, serve_metrics
from streams.settings import DEPRECATED_ENV, Settings, deprecated_in
from streams.web import (
    NO_ROUTE,
    SECURITY_HEADERS,
    Health,
    HttpServer,
    Response,
    Router,
    ServeError,
    add_probes,
    serve,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def server(health: Health) -> Iterator[HttpServer]:
    registry = CollectorRegistry()
    Counter("probe_test", "A counter the tests read back.", registry=registry).inc(3)
    router = Router()
    add_metrics(router, registry)
    add_probes(router, health)
    running = serve(router, "127.0.0.1", 0, max_connections=4, client_timeout_s=1.0)
    try:
        yield running
    finally:
        running.stop()


def exchange_when_free(server: HttpServer, raw: bytes, timeout: float = 5.0) -> bytes:
    """:func:`exchange`, again while the answer is the connection limit's 503.

    A handler thread gives its slot back just after it closes the connection, so on a
    loaded machine the next client can still find the slots of the clients before it
    taken (a 503 "too many connections", seen under load 7-8): the limit doing its
    job, not an answer to ``raw``. Anything else is returned at once.
    """
    deadline = time.monotonic() + 10.0
    while True:
        response = exchange(server, raw, timeout=timeout)
        busy = response.startswith(b"HTTP/1.1 503") and response.endswith(b"too many connections")
        if not busy or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def exchange(server: HttpServer, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw`` and read until the server closes the connection (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(raw)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:100]
    return int(response.split(b" ", 2)[1])


def get(server: HttpServer, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(server.url(path), timeout=5) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers["Content-Type"]


# -- routes ------------------------------------------------------------------------


def test_metrics_are_prometheus_text(server: HttpServer) -> None:
    status, body, content_type = get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert b"probe_test_total 3.0" in body


def test_livez_answers_while_the_loop_turns_and_fails_when_it_stalls() -> None:
    now = [100.0]
    health = Health(stall_s=60, clock=lambda: now[0])
    router = Router()
    add_probes(router, health)
    assert router.handle("GET", "/livez").status == 200  # before the loop's first beat
    health.beat()
    now[0] += 59
    assert router.handle("GET", "/livez").status == 200
    now[0] += 2
    stalled = router.handle("GET", "/livez")
    assert stalled.status == 503 and b"stalled" in stalled.body
    health.beat()
    assert router.handle("GET", "/livez").status == 200


def test_readyz_says_what_it_waits_for(server: HttpServer, health: Health) -> None:
    status, body, content_type = get(server, "/readyz")
    assert (status, content_type) == (503, "application/json")
    doc = json.loads(body)
    assert doc["ready"] is False and set(doc["conditions"]) == {"banks", "assigned", "restored"}
    health.set("banks", True, "3 entries")
    health.set("assigned", True, "clusters/0")
    health.set("restored", False, "restoring table state")
    status, body, _ = get(server, "/readyz")
    assert status == 503
    assert json.loads(body)["conditions"]["restored"] == "waiting: restoring table state"
    health.set("restored", True)
    status, body, _ = get(server, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    health.set("assigned", False, "rebalancing")  # a rebalance: not ready again
    assert get(server, "/readyz")[0] == 503
    health.set("assigned", True)
    health.stopping()
    status, body, _ = get(server, "/readyz")
    assert status == 503 and "stopping" in json.loads(body)["conditions"]


def test_unknown_paths_are_404_and_other_methods_405(server: HttpServer) -> None:
    for path in ("/", "/metricsx", "/metrics/", "/cascade/b-1", "/%2e%2e/etc/passwd", "//"):
        assert get(server, path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "get"):
        response = exchange(server, f"{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status_of(response) == 405, method
        assert b"Allow: GET, HEAD" in response


def test_every_answer_carries_the_security_headers_once(server: HttpServer) -> None:
    """The router's answers (a document, a refusal, a 404, a 405), http.server's own (a bad
    request line) and the connection limit's 503 all carry nosniff and the rest: a view's
    GraphML or JSON, whose text comes from the events, is never sniffed into a page."""
    raws = [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ]
    heads = [exchange(server, raw).partition(b"\r\n\r\n")[0] + b"\r\n" for raw in raws]
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.2)
        busy = exchange(server, b"GET /livez HTTP/1.1\r\n\r\n")
        assert status_of(busy) == 503
        heads.append(busy.partition(b"\r\n\r\n")[0] + b"\r\n")
    finally:
        for sock in idle:
            sock.close()
    assert [status_of(h) for h in heads] == [200, 503, 404, 405, 400, 503]
    for head in heads:
        for key, value in SECURITY_HEADERS:
            assert head.count(f"\r\n{key}: {value}\r\n".encode()) == 1, (key, head)


def test_an_answer_refused_before_the_router_counts_under_the_route_it_decodes_to() -> None:
    """A body over a route's limit is refused before the router reads it; the route it
    counts under, and the limit, come from the path decoded as the router decodes it."""
    router = Router()
    router.add("/act/<cluster>", lambda req: Response.text("done"), ("POST",), max_body=10)
    running = serve(router, "127.0.0.1", 0)
    try:
        for target in ("/act/b-1", "/act%2Fb-1", "/%61ct/b%2D1"):
            raw = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
            assert status_of(exchange(running, raw.encode() + b"x" * 11)) == 413, target
        raw = b"POST /act/%ff HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nxxxxxxxxxxx"
        assert status_of(exchange(running, raw)) == 400
    finally:
        running.stop()
    assert router.answered() == {("/act/<cluster>", 413): 3, (NO_ROUTE, 400): 1}
    assert router.route_of("/act%2Fb-1") == router.route_of("/act/b-1") == "/act/<cluster>"


def test_head_gives_the_headers_of_get_without_the_body(server: HttpServer) -> None:
    response = exchange(server, b"HEAD /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 200 and b"Content-Length: 6" in head and body == b""


def test_keep_alive_serves_several_requests_on_one_connection(server: HttpServer) -> None:
    raw = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n" * 2
    raw += b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = exchange(server, raw)
    assert response.count(b"HTTP/1.1 200") == 2 and response.count(b"HTTP/1.1 404") == 1


def test_a_body_sent_to_the_server_is_refused_and_the_connection_closed(
    server: HttpServer,
) -> None:
    raw = b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nGET /livez "
    response = exchange(server, raw)
    assert status_of(response) == 405 and b"Connection: close" in response
    assert response.count(b"HTTP/1.1") == 1  # the body was never read as a request


def test_a_handler_that_raises_gives_500_and_the_server_goes_on() -> None:
    router = Router()
    router.add("/boom", lambda request: Response(body=bytes(1 // 0)))
    add_probes(router, Health([]))
    running = serve(router, "127.0.0.1", 0)
    try:
        assert get(running, "/boom")[0] == 500
        assert get(running, "/livez")[0] == 200
    finally:
        running.stop()


def test_route_patterns_take_parameters_for_the_views_to_come() -> None:
    router = Router()
    router.add("/cascade/<cluster>", lambda r: Response.json(dict(r.params, q=r.query)))
    response = router.handle("GET", "/cascade/b-1%2F2?depth=3")
    assert response.status == 404  # a parameter is one segment: an encoded '/' is not one
    doc = json.loads(router.handle("GET", "/cascade/b-9?depth=3").body)
    assert doc == {"cluster": "b-9", "q": {"depth": ["3"]}}
    assert router.patterns == ["/cascade/<cluster>"]
    for bad in ("cascade", "/cascade/<1x>", "/a/<b"):
        with pytest.raises(ValueError):
            router.add(bad, lambda r: Response())


# -- bad requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET /livez HTTP/x.y\r\n\r\n", 400),
        (b"GET /%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /livez HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
    ],
    ids=[
        "no-target",
        "method-only",
        "four-words",
        "bad-version",
        "not-utf8",
        "nul",
        "asterisk",
        "long-line",
        "many-headers",
    ],
)
def test_malformed_requests_get_4xx(server: HttpServer, raw: bytes, status: int) -> None:
    assert status_of(exchange(server, raw)) == status
    assert get(server, "/livez")[0] == 200  # and the server goes on


def test_random_bytes_never_crash_or_hang_the_server(server: HttpServer) -> None:
    rng = random.Random(14)
    started = time.monotonic()
    for _ in range(60):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        if rng.random() < 0.5:
            raw = b"GET /" + raw + b" HTTP/1.1\r\n\r\n"
        response = exchange_when_free(server, raw, timeout=3.0)
        assert response == b"" or 400 <= status_of(response) < 500, response[:80]
    assert time.monotonic() - started < 60
    assert get(server, "/livez")[0] == 200


def test_a_client_that_hangs_up_mid_request_changes_nothing(server: HttpServer) -> None:
    for partial in (b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost:", b"G"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.sendall(partial)
    assert get(server, "/metrics")[0] == 200


def test_a_silent_client_neither_blocks_others_nor_holds_its_connection(
    server: HttpServer,
) -> None:
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    slow.sendall(b"GET /metrics HTTP/1.1\r\n")  # and then nothing
    started = time.monotonic()
    assert get(server, "/livez")[0] == 200
    assert time.monotonic() - started < 1.0  # answered while the slow one waits
    # the server drops it after its client timeout (1 s here): an empty read
    slow.settimeout(5)
    assert slow.recv(1024) == b""
    assert 0.5 < time.monotonic() - started < 4.0
    slow.close()


def test_past_the_connection_limit_new_clients_get_503_at_once(server: HttpServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.2)  # each is being served (waiting for its request line)
        started = time.monotonic()
        response = exchange(server, b"GET /livez HTTP/1.1\r\n\r\n")
        assert status_of(response) == 503 and b"too many connections" in response
        assert time.monotonic() - started < 2.0
    finally:
        for sock in idle:
            sock.close()
    # the slots come back once those connections end
    deadline = time.monotonic() + 5
    while get_status(server, "/livez") != 200:
        assert time.monotonic() < deadline, "slots never freed"
        time.sleep(0.1)


def get_status(server: HttpServer, path: str) -> int:
    try:
        return get(server, path)[0]
    except OSError:
        return 0


def test_many_clients_at_once_are_all_answered(server: HttpServer) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(10):
            status = get_status(server, "/metrics")
            with lock:
                results.append(status)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)  # a loaded CI machine: one of 30 missed a 30-s join once
    assert sorted(results) == [200] * 30, results


def test_stop_returns_even_with_a_connection_open() -> None:
    router = Router()
    add_probes(router, Health([]))
    running = serve(router, "127.0.0.1", 0)
    idle = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 3
    idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=2).close()


def test_a_taken_port_or_a_foreign_address_is_one_clear_error() -> None:
    router = Router()
    running = serve(router, "127.0.0.1", 0)
    try:
        with pytest.raises(ServeError, match=r"127\.0\.0\.1:\d+: Address already in use"):
            serve(router, "127.0.0.1", running.port)
    finally:
        running.stop()
    with pytest.raises(ServeError, match=r"cannot serve HTTP on 192\.0\.2\.1:0"):
        serve(router, "192.0.2.1", 0)  # TEST-NET-1: never an address of this machine


def test_the_replay_metrics_server_is_the_same_server() -> None:
    metrics = serve_metrics(CollectorRegistry(), 0)
    try:
        with urllib.request.urlopen(metrics.url, timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(metrics.url.replace("/metrics", "/livez"), timeout=5) as r:
            assert r.read() == b"alive\n"
    finally:
        metrics.stop()


# -- settings, flags and variables ----------------------------------------------------


def test_http_settings_from_the_environment() -> None:
    s = Settings.from_env({"VIRALWATCH_HTTP_HOST": "0.0.0.0", "VIRALWATCH_HTTP_PORT": "6066"})
    assert (s.http_host, s.http_port) == ("0.0.0.0", 6066)
    assert Settings().http_port is None and Settings().http_host == "127.0.0.1"
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize("old", sorted(DEPRECATED_ENV))
def test_the_old_port_variables_still_work_and_say_they_are_deprecated(old: str) -> None:
    assert Settings.from_env({old: "9108"}).http_port == 9108
    assert Settings.from_env({old: "9108", "VIRALWATCH_HTTP_PORT": "9108"}).http_port == 9108
    with pytest.raises(ValueError, match=f"{old}=7 .* disagrees with VIRALWATCH_HTTP_PORT=9108"):
        Settings.from_env({old: "7", "VIRALWATCH_HTTP_PORT": "9108"})
    with pytest.raises(ValueError, match=f"{old}: not a port"):
        Settings.from_env({old: "http"})
    assert deprecated_in({old: "1"}) == [f"{old} is deprecated: use VIRALWATCH_HTTP_PORT"]


def run_worker_command(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    base = {k: v for k, v in __import__("os").environ.items() if not k.startswith("VIRALWATCH_")}
    done = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--http-port", "abc"], "--http-port: not a port (0..65535): 'abc'"),
        (["--http-port", "65536"], "--http-port: not a port (0..65535): '65536'"),
        (["--http-port", "-1"], "--http-port: not a port (0..65535): '-1'"),
        (["--http-host", "a b"], "--http-host: not an IP address or host name: 'a b'"),
        (["--http-host", "http://0.0.0.0:6066"], "--http-host: not an IP address or host name"),
        (["--http-host", ""], "--http-host: not an IP address or host name: ''"),
        (["--http-port", "1", "--metrics-port", "2"], "disagrees with --http-port 1"),
        (["--wire-version", "3"], "--wire-version: not a wire version this worker writes (1, 2)"),
    ],
)
def test_bad_http_flags_exit_2_with_one_line(flags: list[str], message: str) -> None:
    status, stderr = run_worker_command(["streams.cli", "worker", *flags])
    assert status == 2, stderr
    assert stderr.splitlines() == [stderr.strip()] and message in stderr, stderr


#: ``viralwatch worker`` run in-process with a bad flag and a bad variable: what it said
#: and whether the runtime (Faust) was imported.
_REFUSED_BEFORE_THE_RUNTIME = """
import runpy, sys
sys.argv = ["viralwatch", "worker", *sys.argv[1:]]
try:
    runpy.run_module("streams.cli", run_name="__main__")
except SystemExit as exc:
    print(exc.code, "faust" in sys.modules, "streams.runtime.worker" in sys.modules)
"""


@pytest.mark.parametrize(
    ("flags", "env"),
    [(["--http-port", "abc"], {}), ([], {"VIRALWATCH_WIRE_VERSION": "v2"})],
)
def test_the_worker_command_refuses_a_bad_setting_before_importing_the_runtime(
    flags: list[str], env: dict[str, str]
) -> None:
    """A bad flag or variable is said before Faust and the runtime are imported (about a
    second of the command's CPU: the suite runs the refusals dozens of times)."""
    done = subprocess.run(
        [sys.executable, "-c", _REFUSED_BEFORE_THE_RUNTIME, *flags],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("VIRALWATCH_")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.stdout.split() == ["2", "False", "False"], done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VIRALWATCH_HTTP_PORT": "six"}, "VIRALWATCH_HTTP_PORT: not a port"),
        ({"VIRALWATCH_HTTP_PORT": "99999"}, "VIRALWATCH_HTTP_PORT: not a port"),
        ({"VIRALWATCH_HTTP_HOST": "0.0.0.0:1"}, "VIRALWATCH_HTTP_HOST: not an IP address"),
        ({"VIRALWATCH_WEB_PORT": "x"}, "VIRALWATCH_WEB_PORT: not a port"),
        ({"VIRALWATCH_WIRE_VERSION": "v2"}, "VIRALWATCH_WIRE_VERSION: not a wire version"),
        (
            {"VIRALWATCH_METRICS_PORT": "1", "VIRALWATCH_HTTP_PORT": "2"},
            "VIRALWATCH_METRICS_PORT=1 (deprecated, read as VIRALWATCH_HTTP_PORT) disagrees",
        ),
    ],
)
@pytest.mark.parametrize("command", [["streams.runtime"], ["streams.cli", "worker"]])
def test_bad_http_variables_exit_2_with_one_line(
    env: dict[str, str], message: str, command: list[str]
) -> None:
    status, stderr = run_worker_command(command, env)
    assert status == 2, stderr
    assert stderr.splitlines() == [stderr.strip()] and message in stderr, stderr


def test_a_worker_whose_port_is_taken_says_so_in_one_line_before_anything_else() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # no broker answers there: the port is refused before the broker is asked
        env = {"VIRALWATCH_BROKER": "kafka://127.0.0.1:9", "VIRALWATCH_HTTP_PORT": str(port)}
        status, stderr = run_worker_command(["streams.runtime"], env)
    assert status == 2, stderr
    assert (
        stderr.strip()
        == f"viralwatch: cannot serve HTTP on 127.0.0.1:{port}: Address already in use"
    )


def test_a_worker_given_an_old_port_variable_says_it_is_deprecated_and_uses_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"VIRALWATCH_BROKER": "kafka://127.0.0.1:9", "VIRALWATCH_METRICS_PORT": str(port)}
        status, stderr = run_worker_command(["streams.runtime"], env)
    assert status == 2, stderr
    assert stderr.splitlines() == [
        "viralwatch: VIRALWATCH_METRICS_PORT is deprecated: use VIRALWATCH_HTTP_PORT",
        f"viralwatch: cannot serve HTTP on 127.0.0.1:{port}: Address already in use",
    ]
