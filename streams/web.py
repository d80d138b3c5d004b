"""The worker's one HTTP port: ``/metrics``, ``/livez``, ``/readyz`` and the views.

Why not Faust's web server: it binds loopback only, serves no
``/metrics``, and runs on the event loop the stages share, so a slow
client or a slow page would hold every partition. Here a small
:class:`Router` (framework-free, so it is tested without sockets) sits
behind a threaded standard-library server (:func:`serve`): each
connection has a thread of its own, never the stages' loop; a client that
sends nothing for :data:`CLIENT_TIMEOUT_S` is dropped, and past
:data:`MAX_CONNECTIONS` at once new connections get a ``503`` at once
instead of a thread, so no client can make the process run out of threads
or the stages wait.

:class:`Health` is what the probes read: named readiness conditions the
worker sets as it loads its banks, is given partitions and restores their
state, and a heartbeat the event loop beats, so ``/livez`` fails when the
loop stops turning (a process that is alive but does nothing is restarted).

>>> router = Router()
>>> router.add("/cascade/<cluster>", lambda req: Response.text(req.params["cluster"]))
>>> router.handle("GET", "/cascade/b-1?x=1").body
b'b-1\\n'
>>> router.handle("GET", "/nowhere").status
404
>>> r = router.handle("DELETE", "/cascade/b-1")
>>> r.status, dict(r.headers)["Allow"]
(405, 'GET, HEAD')
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

log = logging.getLogger("viralwatch.web")

#: Seconds a client may stay silent (while sending a request, or idle between
#: keep-alive requests) before its connection is closed.
CLIENT_TIMEOUT_S: Final = 10.0
#: Connections served at once; more get ``503`` and are closed (each has a thread).
MAX_CONNECTIONS: Final = 32
#: The event loop counts as stalled (``/livez`` fails) after this long without a beat.
#: Generous: a full garbage collection or a compaction slice takes under a second.
LIVENESS_STALL_S: Final = 60.0
#: What a worker must have done before ``/readyz`` says 200 (see :class:`Health`).
WORKER_CONDITIONS: Final = ("banks", "assigned", "restored")

#: The route an answer counts under when no route serves its path (or it was not read).
NO_ROUTE: Final = "(none)"

#: Headers of every answer the port gives (a page, a document, a refusal, ``/metrics``):
#: nothing framed, no referrer leaves the site, a body read only as the type it is sent
#: as (a cascade's GraphML or JSON, whose names and labels come from the events, is never
#: sniffed into HTML), nothing kept by a cache.
SECURITY_HEADERS: Final = (
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),  # no-referrer would make a form's Origin null
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)

_BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    + b"".join(f"{k}: {v}\r\n".encode() for k, v in SECURITY_HEADERS)
    + b"Content-Length: 20\r\nConnection: close\r\nRetry-After: 1\r\n\r\ntoo many connections"
)


# -- requests, responses, routes ------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a handler is given: the method, the decoded path, its query and route parameters."""

    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    #: the request's body: read only for a route that takes one (see :meth:`Router.add`)
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    """A status, a body and its type; :meth:`text` and :meth:`json` build the usual ones.

    >>> Response.json({"ready": True}, 503).body
    b'{"ready": true}\\n'
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, (text if text.endswith("\n") else text + "\n").encode())

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(doc).encode() + b"\n", "application/json")

    @classmethod
    def html(cls, page: str, status: int = 200) -> Response:
        return cls(status, page.encode(), "text/html; charset=utf-8")


Handler = Callable[[Request], Response]

_PARAM = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


@dataclass(frozen=True)
class _Route:
    pattern: str
    regex: re.Pattern[str]
    methods: frozenset[str]
    handler: Handler
    max_body: int = 0


class Router:
    """Paths to handlers; ``<name>`` in a pattern matches one path segment.

    :meth:`handle` never raises: an unknown path is ``404``, a known path
    asked with a method it does not serve ``405`` (with ``Allow``), a
    target that is not a path ``400``, and a handler that raises ``500``
    (logged). ``HEAD`` is served wherever ``GET`` is.

    >>> router = Router()
    >>> router.add("/boom", lambda req: 1 / 0)
    >>> router.handle("GET", "/boom").status
    500
    >>> router.handle("GET", "no-slash").status
    400
    >>> router.add("/boom", lambda req: Response())
    Traceback (most recent call last):
    ValueError: a route for /boom is already there

    It counts its answers by route and status (:meth:`answered`: what
    ``viralwatch_http_responses_total`` exports), so a view's refusals (a bad
    cluster id, a form it cannot read, a token that is not valid) are seen
    without reading logs; a path no route serves counts under :data:`NO_ROUTE`.

    >>> sorted(router.answered().items())
    [(('(none)', 400), 1), (('/boom', 500), 1)]
    """

    def __init__(self) -> None:
        self._routes: list[_Route] = []
        self._count_lock = threading.Lock()
        self._answered: dict[tuple[str, int], int] = {}

    def add(
        self,
        pattern: str,
        handler: Handler,
        methods: Iterable[str] = ("GET",),
        *,
        max_body: int = 0,
    ) -> None:
        """Serve ``pattern`` (``/metrics``, ``/cascade/<cluster>``) with ``handler``.

        ``max_body``: the most bytes of request body the route reads (a form, a
        small JSON object); a bigger body is refused with ``413`` before it is
        read. 0: the route takes no body (one sent is never read; the
        connection is closed after the answer).
        """
        if not pattern.startswith("/"):
            raise ValueError(f"a route pattern starts with '/': {pattern!r}")
        if any(r.pattern == pattern for r in self._routes):
            raise ValueError(f"a route for {pattern} is already there")
        allowed = {m.upper() for m in methods}
        if "GET" in allowed:
            allowed.add("HEAD")
        parts = []
        for piece in re.split(r"(<[^>]*>)", pattern):
            param = _PARAM.fullmatch(piece)
            if param:
                parts.append(f"(?P<{param.group(1)}>[^/]+)")
            elif "<" in piece or ">" in piece:
                raise ValueError(f"bad parameter in route pattern {pattern!r}")
            else:
                parts.append(re.escape(piece))
        regex = re.compile("".join(parts))
        self._routes.append(_Route(pattern, regex, frozenset(allowed), handler, max_body))

    @property
    def patterns(self) -> list[str]:
        return [r.pattern for r in self._routes]

    def body_limit(self, method: str, target: str) -> int:
        """How many bytes of body the route of ``method target`` reads (0: none).

        >>> router = Router()
        >>> router.add("/act", lambda req: Response(), ("POST",), max_body=100)
        >>> router.body_limit("POST", "/act?x=1"), router.body_limit("GET", "/act")
        (100, 0)
        """
        path = request_path(target)
        if path is None:
            return 0
        with_body = (r for r in self._routes if method in r.methods and r.max_body)
        return next((r.max_body for r in with_body if r.regex.fullmatch(path)), 0)

    def handle(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> Response:
        """The response to ``method target`` (a request target: path and query)."""
        route, response = self._answer(method, target, headers, body)
        self.count(route, response.status)
        return response

    def _answer(
        self, method: str, target: str, headers: Mapping[str, str] | None, body: bytes
    ) -> tuple[str, Response]:
        """:meth:`handle`'s response, and the route it counts under."""
        path = request_path(target)
        if path is None:
            return NO_ROUTE, Response.text("bad request target", 400)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, errors="replace")
        allowed: set[str] = set()
        found = NO_ROUTE
        for route in self._routes:
            m = route.regex.fullmatch(path)
            if m is None:
                continue
            found = route.pattern if found == NO_ROUTE else found
            if method not in route.methods:
                allowed |= route.methods
                continue
            request = Request(method, path, query, m.groupdict(), dict(headers or {}), body)
            try:
                return route.pattern, route.handler(request)
            except Exception:
                log.exception("%s %s failed", method, path)
                return route.pattern, Response.text("internal error", 500)
        if allowed:
            allow = ", ".join(sorted(allowed, key=lambda m: (m != "GET", m)))
            return found, Response(405, b"method not allowed\n", headers=(("Allow", allow),))
        return NO_ROUTE, Response.text("not found", 404)

    def route_of(self, target: str) -> str:
        """The pattern of the first route whose path is ``target``'s (:data:`NO_ROUTE`: none),
        the path decoded as :meth:`handle` decodes it, so that an answer refused before the
        router saw it counts under the route that would have served it.

        >>> router = Router()
        >>> router.add("/cascade/<cluster>", lambda req: Response())
        >>> router.route_of("/cascade/b%2D1?x=1"), router.route_of("/cascade%2Fb-1")
        ('/cascade/<cluster>', '/cascade/<cluster>')
        >>> router.route_of("/cascade/%ff"), router.route_of("/nowhere")
        ('(none)', '(none)')
        """
        path = request_path(target)
        if path is None:
            return NO_ROUTE
        return next((r.pattern for r in self._routes if r.regex.fullmatch(path)), NO_ROUTE)

    def count(self, route: str, status: int) -> None:
        """One more answer of ``status`` on ``route`` (the server's own refusals call it too)."""
        with self._count_lock:
            key = (route, status)
            self._answered[key] = self._answered.get(key, 0) + 1

    def answered(self) -> dict[tuple[str, int], int]:
        """The answers so far, by route pattern and status."""
        with self._count_lock:
            return dict(self._answered)


def request_path(target: str) -> str | None:
    """The path of a request target, percent-escapes decoded (UTF-8, strictly); ``None``
    for a target no route serves (undecodable, not starting with ``/``, a NUL in it). The
    one decoding the router's answer, its count and its body limit all read.

    >>> request_path("/cascade/b%2D1?x=%ff"), request_path("/a%ff"), request_path("a")
    ('/cascade/b-1', None, None)
    """
    try:
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path, errors="strict")
    except (ValueError, UnicodeDecodeError):
        return None
    if not path.startswith("/") or "\x00" in path:
        return None
    return path


# -- health -------------------------------------------------------------------------


class Health:
    """Readiness conditions and a liveness heartbeat: the worker writes, the probes read.

    Thread-safe: the worker sets conditions on its event loop, the server
    reads them from its threads.

    >>> now = [0.0]
    >>> health = Health(["banks", "restored"], stall_s=60, clock=lambda: now[0])
    >>> health.set("banks", True, "12 entries")
    >>> health.ready()
    (False, {'banks': 'ok: 12 entries', 'restored': 'waiting: starting'})
    >>> health.set("restored", True)
    >>> health.ready()[0], health.live()
    (True, (True, 'alive'))
    >>> health.beat(); now[0] = 61.0
    >>> health.live()
    (False, 'event loop stalled: no heartbeat for 61 s')
    >>> health.stopping(); health.ready()[0]
    False
    """

    def __init__(
        self,
        conditions: Iterable[str] = WORKER_CONDITIONS,
        *,
        stall_s: float = LIVENESS_STALL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._conditions: dict[str, tuple[bool, str]] = {
            name: (False, "starting") for name in conditions
        }
        self._stall_s = stall_s
        self._clock = clock
        self._beat: float | None = None
        self._stopping = False

    def set(self, name: str, ok: bool, reason: str = "") -> None:
        """Record whether condition ``name`` holds, and why (said by ``/readyz``)."""
        with self._lock:
            if name not in self._conditions:
                raise ValueError(f"no readiness condition {name!r}")
            if self._conditions[name] != (ok, reason):
                log.info("readiness: %s %s%s", name, "ok" if ok else "waiting", f": {reason}")
            self._conditions[name] = (ok, reason)

    def stopping(self) -> None:
        """The process is shutting down: not ready any more, whatever the conditions say."""
        with self._lock:
            self._stopping = True

    def beat(self) -> None:
        """The event loop is turning (call from a timer on it)."""
        with self._lock:
            self._beat = self._clock()

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Ready or not, and each condition as ``ok: ...`` or ``waiting: ...``."""
        with self._lock:
            report = {
                name: ("ok" if ok else "waiting") + (f": {reason}" if reason else "")
                for name, (ok, reason) in self._conditions.items()
            }
            ready = all(ok for ok, _ in self._conditions.values()) and not self._stopping
            if self._stopping:
                report["stopping"] = "waiting: the process is shutting down"
            return ready, report

    def live(self) -> tuple[bool, str]:
        """Alive unless the event loop has beaten once and then not for ``stall_s``."""
        with self._lock:
            if self._beat is None:
                return True, "alive"
            silent = self._clock() - self._beat
            if silent > self._stall_s:
                return False, f"event loop stalled: no heartbeat for {silent:.0f} s"
            return True, "alive"


def add_probes(router: Router, health: Health) -> None:
    """``/livez`` and ``/readyz`` from ``health``: 200 or 503, with the reason in the body.

    >>> router, health = Router(), Health(["restored"])
    >>> add_probes(router, health)
    >>> r = router.handle("GET", "/readyz")
    >>> r.status, json.loads(r.body)
    (503, {'ready': False, 'conditions': {'restored': 'waiting: starting'}})
    >>> router.handle("GET", "/livez").status
    200
    """

    def livez(request: Request) -> Response:
        ok, reason = health.live()
        return Response.text(reason, 200 if ok else 503)

    def readyz(request: Request) -> Response:
        ok, report = health.ready()
        return Response.json({"ready": ok, "conditions": report}, 200 if ok else 503)

    router.add("/livez", livez)
    router.add("/readyz", readyz)


# -- the server -----------------------------------------------------------------------


class ServeError(ValueError):
    """The HTTP server cannot listen where the settings say (a port taken, a host not here).

    A ``ValueError``: like any unusable setting it ends the command with one line.
    """


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        router: Router,
        max_connections: int,
        client_timeout_s: float,
    ) -> None:
        self.router = router
        self.client_timeout_s = client_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.router.count(NO_ROUTE, 503)
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up or timed out: not worth a traceback on stderr.
        log.debug("HTTP connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "viralwatch"
    # An error found before the request line's version is read must still carry a
    # status line (http.server would answer in HTTP/0.9 style: a body alone).
    default_request_version = "HTTP/1.0"
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.client_timeout_s)  # a silent client is dropped

    def end_headers(self) -> None:
        # Every answer, the router's and http.server's own errors (a bad request line).
        for key, value in SECURITY_HEADERS:
            self.send_header(key, value)
        super().end_headers()

    def __getattr__(self, name: str) -> Callable[[], None]:
        # http.server looks for do_<METHOD>: every method goes to the router, which
        # answers 405 for the ones a path does not serve (not http.server's 501).
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        body = b""
        response: Response | None = None
        length = self.headers.get("Content-Length")
        if length or self.headers.get("Transfer-Encoding"):
            limit = self.server.router.body_limit(self.command, self.path)
            if not limit:
                self.close_connection = True  # not read: must not be parsed as a request
            elif self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                response = Response.text("send the body with a Content-Length", 411)
            elif not (length or "").strip().isdigit():
                self.close_connection = True
                response = Response.text("bad Content-Length", 400)
            elif int(length or 0) > limit:
                self.close_connection = True
                response = Response.text(f"request body over {limit} bytes", 413)
            else:
                body = self.rfile.read(int(length or 0))
                if len(body) < int(length or 0):
                    self.close_connection = True
                    return  # the client hung up mid-body: nobody to answer
        if response is None:
            headers = {k: v for k, v in self.headers.items()}
            response = self.server.router.handle(self.command, self.path, headers, body)
        else:  # refused before the router saw it (a body it will not read)
            self.server.router.count(self.server.router.route_of(self.path), response.status)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers:
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


@dataclass
class HttpServer:
    """A running server: where it listens, and :meth:`stop`."""

    host: str
    port: int
    _server: _Server
    _thread: threading.Thread

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        """Stop accepting and close the socket (connections being served end with their thread)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(
    router: Router,
    host: str,
    port: int,
    *,
    max_connections: int = MAX_CONNECTIONS,
    client_timeout_s: float = CLIENT_TIMEOUT_S,
) -> HttpServer:
    """Serve ``router`` on ``host:port`` (0: any free port) from threads of its own.

    Raises :class:`ServeError` (one line: where, and why) when it cannot listen.

    >>> import urllib.request
    >>> router = Router()
    >>> add_probes(router, Health([]))
    >>> server = serve(router, "127.0.0.1", 0)
    >>> urllib.request.urlopen(server.url("/livez")).read()
    b'alive\\n'
    >>> serve(router, "127.0.0.1", server.port)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    streams.web.ServeError: cannot serve HTTP on 127.0.0.1:...: Address already in use
    >>> server.stop()
    """
    try:
        server = _Server((host, port), router, max_connections, client_timeout_s)
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ServeError(f"cannot serve HTTP on {host}:{port}: {reason}") from None
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
    )
    thread.start()
    return HttpServer(host, int(server.server_address[1]), server, thread)
