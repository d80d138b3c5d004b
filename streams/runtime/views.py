"""The views on a worker's HTTP port: cascades, the review queue, the banks; who may see and act.

Paths (every one needs a token, see :mod:`streams.access`; ``/metrics``,
``/livez`` and ``/readyz`` stay open for scrapers and probes)::

    GET  /                                 -> /emerging
    GET  /cascade/<cluster>                viewer    HTML; JSON with Accept: application/json
    GET  /cascade/<cluster>/graph.json     viewer    node-link JSON (NetworkX)
    GET  /cascade/<cluster>/graph.graphml  viewer    GraphML (NetworkX's writer)
    POST /cascade/<cluster>/bank           reviewer  bank its hashes (bank=internal, reason)
    POST /cascade/<cluster>/dismiss        reviewer  not harmful: off the queue (till a higher rule)
    POST /cascade/<cluster>/false-positive reviewer  allow-list its hashes: no more alerts
    POST /cascade/<cluster>/reverse-false-positive   reviewer: off the allow-list again
    GET  /emerging                         viewer    the review queue of every worker
    GET  /banks                            viewer    entries, last update, matches last hour
    GET  /login, POST /login, POST /logout           a browser keeps its token in a cookie

**Whose state.** A cluster lives on the worker holding its partition of the
``clusters`` topic. Every worker advertises its HTTP URL in the consumer
group (Faust's ``canonical_url``: ``VIRALWATCH_HTTP_ADVERTISE``), so after
each rebalance every worker knows every partition's owner
(:func:`streams.runtime.faust_adapter.partition_owners`). A request for a
cluster another worker holds is *proxied* there (the browser never needs to
reach a worker's own address: a Kubernetes Service may send it anywhere),
marked with :data:`HOP` so it is never forwarded twice: an owner that moved
meanwhile answers ``503`` with ``Retry-After``. ``/emerging`` and ``/banks``
ask every other worker for its part and merge. Requests (with the user's
token) go only to URLs of the group's current assignment, never to one a
request names: group membership is the trust boundary, and a member can
already write ``bank`` and ``audit`` itself (the README says more).

**Threads.** The server's threads never touch the stages' state: a view
asks the event loop for a frozen capture (:class:`LoopBridge`, a few
milliseconds for a cascade of 10,000 posts) and renders it on its own
thread. A reviewer's action is written to Kafka from that thread too
(``publish_action``: the bank change on ``bank``, then the record on
``audit``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import logging
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import orjson

from streams.access import (
    COOKIE,
    AccessTokens,
    Grant,
    bearer,
    cookie,
    cross_site,
    header,
    same_site_path,
)
from streams.alerts import Alert, Pseudonymizer, TakedownRequest
from streams.banks import HashBanks
from streams.cascade_view import (
    ClusterCapture,
    ClusterRecords,
    capture_cluster,
    graph_json,
    graphml,
    snapshot,
    to_doc,
)
from streams.pages import (
    banks_page,
    cascade_page,
    emerging_page,
    login_page,
    message_page,
)
from streams.review import CLUSTER_ID, ActionLog, ReviewAction, Signal
from streams.review_queue import (
    MATCH_SAMPLE_S,
    BankRow,
    EmergingItem,
    MatchHistory,
    bank_rows,
    cluster_hashes,
    emerging_items,
    merge_bank_rows,
    rank,
)
from streams.settings import Settings
from streams.stages import ClusterPartition, partition_for
from streams.stats import Stats
from streams.watermarks import NO_TIME
from streams.web import Request, Response, Router

log = logging.getLogger("viralwatch.views")

T = TypeVar("T")
R = TypeVar("R", EmergingItem, BankRow)

#: Marks a request one worker forwarded to another: never forwarded again.
HOP: Final = "X-Viralwatch-Hop"
#: How long a view waits for the event loop to copy what it shows.
LOOP_TIMEOUT_S: Final = 5.0
#: How long a forwarded request, or a peer's part of /emerging and /banks, may take.
PEER_TIMEOUT_S: Final = 10.0
#: The largest request body read (a form or a small JSON object).
MAX_BODY: Final = 16 * 1024
#: How long a browser keeps its token cookie.
COOKIE_MAX_AGE_S: Final = 12 * 3600
#: What a forwarded answer keeps of the owner's headers.
PASSED_BACK: Final = (
    "Content-Security-Policy",
    "Location",
    "Retry-After",
    "Set-Cookie",
    "WWW-Authenticate",
    "X-Viralwatch-Served-By",
)
_BODY_KINDS: Final = {
    "bank": "bank",
    "dismiss": "dismiss",
    "false-positive": "false_positive",
    "reverse-false-positive": "reverse_false_positive",
}


class Unavailable(Exception):
    """The state cannot be read now (starting, busy, rebalancing): ``503`` with the reason."""


class LoopBridge:
    """Run a function on the stages' event loop from another thread, and wait for its answer.

    >>> import asyncio
    >>> bridge = LoopBridge()
    >>> bridge.call(lambda: 1)
    Traceback (most recent call last):
    streams.runtime.views.Unavailable: the worker is starting
    >>> async def main():
    ...     bridge.attach(asyncio.get_running_loop())
    ...     return await asyncio.to_thread(bridge.call, lambda: 41 + 1)
    >>> asyncio.run(main())
    42
    """

    def __init__(self, timeout_s: float = LOOP_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def call(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise Unavailable("the worker is starting")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn())
                except BaseException as exc:
                    done.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed meanwhile
            raise Unavailable("the worker is stopping") from None
        try:
            return done.result(self.timeout_s)
        except concurrent.futures.TimeoutError:
            done.cancel()
            raise Unavailable(f"the worker's loop did not answer in {self.timeout_s:g} s") from None


class ViewedWorker(Protocol):
    """What the views read of a worker (on its loop only)."""

    @property
    def detectors(self) -> Mapping[int, ClusterPartition]: ...

    @property
    def banks(self) -> HashBanks: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def app(self) -> Any: ...

    @property
    def actions(self) -> ActionLog: ...

    @property
    def bank_updated(self) -> Mapping[str, float]: ...

    @property
    def loading(self) -> Collection[int]:
        """The clusters partitions held and still loading: not rebuilt from their logs yet,
        or their events read back not applied yet (a view of one of theirs: 503, not 404)."""
        ...


class TokenSource:
    """The web tokens: from the settings' variable, and from a file re-read when it changes
    (a Kubernetes Secret mounted as a file is updated in place when the Secret is)."""

    def __init__(self, text: str = "", path: Path | None = None) -> None:
        self._fixed = AccessTokens.parse(text)
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._from_file = AccessTokens()
        self._checked = 0.0
        if path is not None:
            self._read(force=True)

    def _read(self, force: bool = False) -> None:
        assert self._path is not None
        try:
            st = self._path.stat()
        except OSError as exc:
            if force:
                raise ValueError(f"web tokens file {self._path}: {exc.strerror}") from None
            log.warning("web tokens file %s: %s (keeping the tokens read before)", self._path, exc)
            return
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp:
            return
        try:
            tokens = AccessTokens.parse(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            if force:
                raise ValueError(f"web tokens file {self._path}: {exc}") from None
            log.warning("web tokens file %s unusable: %s (keeping the old tokens)", self._path, exc)
            return
        self._from_file, self._stamp = tokens, stamp

    def tokens(self) -> AccessTokens:
        with self._lock:
            if self._path is not None and time.monotonic() - self._checked > 5.0:
                self._checked = time.monotonic()
                self._read()
            return self._fixed + self._from_file


def wants_json(request: Request) -> bool:
    """JSON for tools (``?format=json``, or an ``Accept`` naming JSON but not HTML).

    >>> wants_json(Request("GET", "/", headers={"Accept": "application/json"}))
    True
    >>> wants_json(Request("GET", "/", headers={"Accept": "text/html,*/*"}))
    False
    """
    fmt = request.query.get("format", [""])[-1]
    if fmt:
        return fmt == "json"
    accept = (header(request.headers, "Accept") or "").lower()
    return "application/json" in accept and "text/html" not in accept


def media_type(request: Request) -> str:
    """The body's media type, without its parameters (``; charset=utf-8``), in lower case:
    what :func:`_form` reads the body as, and what an action answers in.

    >>> sent = {"Content-Type": "Application/JSON; charset=utf-8"}
    >>> media_type(Request("POST", "/", headers=sent))
    'application/json'
    """
    return (header(request.headers, "Content-Type") or "").split(";")[0].strip().lower()


def _form(request: Request) -> dict[str, str]:
    """A POST's fields: a form or a JSON object of strings (``ValueError`` otherwise)."""
    kind = media_type(request)
    if not request.body:
        return {}
    if kind == "application/json":
        try:
            doc = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the body is not JSON: {exc}") from None
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            raise ValueError("the body must be a JSON object of strings")
        return dict(doc)
    if kind in ("application/x-www-form-urlencoded", ""):
        try:
            text = request.body.decode("utf-8")
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"the form is not readable: {exc}") from None
        return dict(pairs)
    raise ValueError(f"send a form or JSON, not {kind}")


class Views:
    """The views of one worker: routes on its router, state read through its loop."""

    def __init__(
        self,
        settings: Settings,
        tokens: TokenSource,
        *,
        pseudonymizer: Pseudonymizer | None = None,
        publish: Callable[[ReviewAction], None] | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.pseudonymize = pseudonymizer or Pseudonymizer(settings.pseudonym_key)
        self.bridge = LoopBridge()
        #: this worker's URL as others reach it (set once the server listens)
        self.url = ""
        self.worker: ViewedWorker | None = None
        #: loop-side state: alerts and takedowns sent, matches sampled, reviewer actions
        self.records = ClusterRecords()
        self.matches = MatchHistory()
        self.actions = ActionLog()
        #: the partition states whose sent alerts were read into ``records``
        self._indexed: dict[int, ClusterPartition] = {}
        self._publish = publish
        self._producer: Any = None
        self._producer_lock = threading.Lock()

    # -- the worker's side (its event loop) --

    async def run(self, worker: ViewedWorker) -> None:
        """Serve ``worker``'s state until cancelled: sample the matches and bank sizes."""
        self.worker = worker
        self.actions = worker.actions  # read from the audit topic by the bank follower
        self.bridge.attach(asyncio.get_running_loop())
        try:
            while True:
                self._sample(worker, time.time())
                await asyncio.sleep(MATCH_SAMPLE_S)
        finally:
            self.bridge.attach(None)

    def _sample(self, worker: ViewedWorker, now: float) -> None:
        self.matches.sample(worker.stats.matched, now)

    def note(self, alerts: list[Alert], actions: list[TakedownRequest]) -> None:
        """The worker sent (or re-announced) these: kept for the cluster's page."""
        self.records.note(alerts, actions)

    # -- routes --

    def add_routes(self, router: Router) -> None:
        router.add("/", self._guarded(lambda req, grant: _see_other("/emerging")))
        router.add("/login", self._login, ("GET", "POST"), max_body=MAX_BODY)
        router.add("/logout", self._logout, ("POST",), max_body=MAX_BODY)
        router.add("/cascade/<cluster>", self._guarded(self._cascade))
        router.add("/cascade/<cluster>/graph.json", self._guarded(self._cascade))
        router.add("/cascade/<cluster>/graph.graphml", self._guarded(self._cascade))
        for action in _BODY_KINDS:
            router.add(
                f"/cascade/<cluster>/{action}",
                self._guarded(self._act, act=True),
                ("POST",),
                max_body=MAX_BODY,
            )
        router.add("/emerging", self._guarded(self._emerging))
        router.add("/banks", self._guarded(self._banks))

    def _guarded(
        self, handler: Callable[[Request, Grant], Response], act: bool = False
    ) -> Callable[[Request], Response]:
        """``handler`` for a valid token (a reviewer's, same-site, to act); 401/403 otherwise."""

        def guarded(request: Request) -> Response:
            token = bearer(request.headers) or cookie(request.headers)
            grant = self.tokens.tokens().grant(token)
            if grant is None:
                return self._unauthorized(request, "a valid token is needed" if token else "")
            if act:
                if not grant.may_act:
                    return self._refuse(request, grant, "acting needs a reviewer token", 403)
                why = cross_site(request.headers)
                if why is not None:
                    return self._refuse(request, grant, why, 403)
            try:
                return handler(request, grant)
            except Unavailable as exc:
                return _with(
                    self._refuse(request, grant, f"not available now: {exc}", 503),
                    ("Retry-After", "2"),
                )

        return guarded

    # -- pages and documents --

    def _html(self, make: Callable[[str], str], status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(12)
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
            "img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        return Response(
            status,
            make(nonce).encode(),
            "text/html; charset=utf-8",
            (("Content-Security-Policy", csp),),  # the rest on every answer: web.SECURITY_HEADERS
        )

    def _unauthorized(self, request: Request, error: str) -> Response:
        challenge = ("WWW-Authenticate", 'Bearer realm="viralwatch"')
        if wants_json(request) or request.method != "GET":
            return _with(Response.json({"error": error or "a token is needed"}, 401), challenge)
        target = request.path + (
            "?" + urllib.parse.urlencode(request.query, doseq=True) if request.query else ""
        )
        return _with(
            self._html(lambda n: login_page(same_site_path(target), nonce=n, error=error), 401),
            challenge,
        )

    def _refuse(self, request: Request, grant: Grant, why: str, status: int) -> Response:
        if wants_json(request) or request.method != "GET":
            return Response.json({"error": why}, status)
        title = {403: "Not allowed", 404: "Not found", 503: "Not available now"}.get(
            status, "Refused"
        )
        return self._html(lambda n: message_page(title, why, nonce=n, who=_who(grant)), status)

    def _cascade(self, request: Request, grant: Grant) -> Response:
        cid = request.params["cluster"]
        if not CLUSTER_ID.fullmatch(cid):
            return self._refuse(request, grant, f"not a cluster id: {cid[:80]!r}", 400)
        found = self._at_owner(request, cid)
        if isinstance(found, Response):
            return found
        if found is None:
            return self._refuse(
                request, grant, f"no cluster {cid} here (never seen, or evicted when idle)", 404
            )
        snap = snapshot(found, self.pseudonymize, served_by=self.url)
        served = ("X-Viralwatch-Served-By", self.url)
        if request.path.endswith("/graph.graphml"):
            return Response(200, graphml(snap), "application/graphml+xml", (served,))
        if request.path.endswith("/graph.json"):
            return _with(Response.json(graph_json(snap)), served)
        if wants_json(request):
            return _with(Response.json(to_doc(snap)), served)
        done = request.query.get("done", [""])[-1]
        flash = f"Recorded: {done.replace('_', ' ')}." if done in _BODY_KINDS.values() else ""
        return _with(
            self._html(
                lambda n: cascade_page(
                    snap, nonce=n, may_act=grant.may_act, who=_who(grant), flash=flash
                )
            ),
            served,
        )

    def _at_owner(self, request: Request, cid: str) -> ClusterCapture | Response | None:
        """This worker's capture of ``cid``, or the owner's answer (forwarded), or ``None``."""
        p = partition_for(cid, self.settings.partitions)
        where, found = self.bridge.call(lambda: self._locate(cid, p))
        if where == "here":
            return found if isinstance(found, ClusterCapture) else None
        if where == "nobody" or header(request.headers, HOP):
            raise Unavailable(
                f"partition {p} of the clusters topic is moving between workers; try again"
            )
        assert isinstance(found, str)
        return self._forward(request, found)

    def _locate(self, cid: str, p: int) -> tuple[str, ClusterCapture | str | None]:
        """On the loop: the capture if this worker holds ``cid``'s partition, else its owner."""
        from streams.runtime.faust_adapter import partition_owners

        w = self.worker
        if w is None:
            raise Unavailable("the worker is starting")
        if p in w.loading:
            raise Unavailable(loading(p))
        part = w.detectors.get(p)
        if part is not None and self._indexed.get(p) is not part:
            # taken over (or first asked): what the previous owner sent, from the table
            self._indexed[p] = part
            sent = getattr(getattr(w, "outputs", None), "alerts", None)
            if sent is not None:
                n = self.settings.partitions
                self.records.restore(sent.values(), lambda cid: partition_for(cid, n) == p)
        if part is not None:
            wm = part.watermark.value
            reviews = tuple(a.to_dict() for a in self.actions.for_cluster(cid))
            hashes = cluster_hashes(part.detector, cid)
            capture = capture_cluster(
                part.detector,
                cid,
                0 if wm == NO_TIME else wm,
                self.records,
                hashes=hashes,
                reviews=[_review_row(r) for r in reviews],
            )
            return "here", capture
        owner = partition_owners(w.app, self.settings.topic("clusters")).get(p)
        if owner is None:
            return "nobody", None
        if owner == self.url:  # the group's assignment says so before the worker has it
            raise Unavailable(loading(p))
        return "elsewhere", owner

    def _forward(self, request: Request, base: str) -> Response:
        """The owner's answer to this very request (same method, headers that matter, body)."""
        target = urllib.parse.quote(request.path, safe="/:@-._~!$&'()*+,;=")
        if request.query:
            target += "?" + urllib.parse.urlencode(request.query, doseq=True)
        headers = {HOP: self.url or "peer"}
        for name in (
            "Authorization",
            "Cookie",
            "Accept",
            "Content-Type",
            "Origin",
            "Sec-Fetch-Site",
            "Host",
        ):
            value = header(request.headers, name)
            if value is not None:
                headers[name] = value
        try:
            status, body, got = _http(base, request.method, target, headers, request.body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return _with(
                Response.text(
                    f"the worker holding this cluster ({base}) did not answer: {exc}", 502
                ),
                ("Retry-After", "2"),
            )
        kept = tuple((k, v) for k, v in got if k in PASSED_BACK)
        content_type = dict(got).get("Content-Type", "application/octet-stream")
        return Response(status, body, content_type, kept)

    # -- the review queue and the banks (every worker's part) --

    def _emerging(self, request: Request, grant: Grant) -> Response:
        local, loading = self.bridge.call(self._local_emerging)
        if request.query.get("scope", [""])[-1] == "local":
            return Response.json(
                {"worker": self.url, "items": [i.to_dict() for i in local], "loading": loading}
            )
        items, missing = self._with_peers(request, "/emerging", "items", local, EmergingItem)
        missing[:0] = still_loading(self.url, loading)
        ranked = rank(items)
        if wants_json(request):
            return Response.json({"items": [i.to_dict() for i in ranked], "missing": missing})
        done = request.query.get("done", [""])[-1]
        flash = f"Recorded: {done.replace('_', ' ')}." if done in _BODY_KINDS.values() else ""
        return self._html(
            lambda n: emerging_page(
                ranked,
                nonce=n,
                may_act=grant.may_act,
                who=_who(grant),
                missing=missing,
                flash=flash,
            )
        )

    def _local_emerging(self) -> tuple[list[EmergingItem], list[int]]:
        """This worker's part of the queue, and the clusters partitions it holds still loading
        (their clusters are not in it yet: the page says so rather than leave them out)."""
        w = self.worker
        if w is None:
            raise Unavailable("the worker is starting")
        items: list[EmergingItem] = []
        for part in w.detectors.values():
            wm = part.watermark.value
            items += emerging_items(
                part.detector,
                0 if wm == NO_TIME else wm,
                self.actions.dismissed_at,
            )
        return items, sorted(w.loading)

    def _banks(self, request: Request, grant: Grant) -> Response:
        local = self.bridge.call(self._local_banks)
        if request.query.get("scope", [""])[-1] == "local":
            return Response.json({"worker": self.url, "banks": [r.to_dict() for r in local]})
        rows, missing = self._with_peers(request, "/banks", "banks", local, BankRow)
        merged = merge_bank_rows(rows)
        if wants_json(request):
            return Response.json({"banks": [r.to_dict() for r in merged], "missing": missing})
        return self._html(lambda n: banks_page(merged, nonce=n, who=_who(grant), missing=missing))

    def _local_banks(self) -> list[BankRow]:
        w = self.worker
        if w is None:
            raise Unavailable("the worker is starting")
        return bank_rows(w.banks, self.matches.last_window(time.time()), dict(w.bank_updated))

    def _with_peers(
        self, request: Request, path: str, key: str, local: list[R], kind: type[R]
    ) -> tuple[list[R], list[str]]:
        """This worker's rows and every other worker's (their ``path?scope=local``, rows under
        ``key``), and the workers that did not answer (or answered nonsense)."""
        parts, missing = self._gather(request, f"{path}?scope=local")
        rows = list(local)
        for doc in parts:
            try:
                rows += [kind.from_dict(d) for d in doc[key]]
                missing += still_loading(str(doc["worker"]), doc.get("loading", []))
            except (KeyError, TypeError, ValueError) as exc:
                missing.append(f"{doc.get('worker', '?')} (unreadable: {exc})")
        return rows, missing

    def _gather(self, request: Request, path: str) -> tuple[list[dict[str, Any]], list[str]]:
        """Every other worker's part (``path``, JSON), and the workers that did not answer."""
        if header(request.headers, HOP):
            return [], []

        def peers() -> set[str]:
            from streams.runtime.faust_adapter import partition_owners

            w = self.worker
            if w is None:
                return set()
            return set(partition_owners(w.app, self.settings.topic("clusters")).values())

        others = sorted(self.bridge.call(peers) - {self.url})
        if not others:
            return [], []
        headers = {HOP: self.url or "peer", "Accept": "application/json"}
        for name in ("Authorization", "Cookie"):
            value = header(request.headers, name)
            if value is not None:
                headers[name] = value

        def ask(base: str) -> dict[str, Any]:
            status, body, _ = _http(base, "GET", path, headers, b"", timeout=PEER_TIMEOUT_S / 2)
            if status != 200:
                raise ValueError(f"HTTP {status}")
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            return doc

        out: list[dict[str, Any]] = []
        missing: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(others))) as pool:
            futures = {pool.submit(ask, base): base for base in others}
            for fut, base in futures.items():
                try:
                    out.append(fut.result(PEER_TIMEOUT_S))
                except Exception as exc:
                    missing.append(f"{base} ({exc})")
        return out, missing

    # -- acting --

    def _act(self, request: Request, grant: Grant) -> Response:
        cid = request.params["cluster"]
        kind = _BODY_KINDS[request.path.rsplit("/", 1)[-1]]
        if not CLUSTER_ID.fullmatch(cid):
            return Response.json({"error": f"not a cluster id: {cid[:80]!r}"}, 400)
        try:
            fields = _form(request)
        except ValueError as exc:
            return Response.json({"error": str(exc)}, 400)
        found = self._at_owner(request, cid)
        if isinstance(found, Response):
            return found
        if found is None:
            return Response.json({"error": f"no cluster {cid} here"}, 404)
        banked = found.status.banked
        if kind in ("bank", "dismiss") and banked:
            return Response.json({"error": f"{cid} is banked already"}, 409)
        if kind == "false_positive" and not banked:
            return Response.json({"error": f"{cid} is not banked: nothing to call wrong"}, 409)
        allowed = found.status.allowed_by
        if kind == "false_positive" and allowed:
            return Response.json({"error": f"{cid} is a false positive already"}, 409)
        if kind == "reverse_false_positive" and not allowed:
            return Response.json({"error": f"{cid} is not on the allow-list"}, 409)
        hashes = allowed if kind == "reverse_false_positive" else found.status.hashes
        if kind != "dismiss" and not hashes:
            return Response.json({"error": f"the hashes of {cid} are not known here"}, 409)
        # its time: the cluster's (as far as the stage has seen it), so it applies now, and
        # after this cluster's earlier actions: two in a row on a quiet cluster (bank, then
        # false positive) would share a time, and replay would order them by their keys
        actions = self.actions
        after = self.bridge.call(
            lambda: max((a.ts_ms for a in actions.for_cluster(cid)), default=-1)
        )
        try:
            action = ReviewAction(
                kind,  # type: ignore[arg-type]
                reviewer=grant.who,
                reason=fields.get("reason", ""),
                ts_ms=max(0, found.as_of_ms, after + 1),
                cluster_id=cid,
                signals=tuple(Signal(k, s) for k, s in hashes),  # type: ignore[arg-type]
                bank=fields.get("bank") or (found.match.bank if found.match else "internal"),
            )
        except ValueError as exc:
            return Response.json({"error": str(exc)}, 400)
        try:
            self._send(action)
        except Exception as exc:
            log.warning("could not publish %s on %s: %s", action.kind, cid, exc)
            return Response.json({"error": f"could not write the action to Kafka: {exc}"}, 502)
        log.info("%s by %s on %s: %s", action.kind, action.reviewer, cid, action.action_id)
        self.bridge.call(lambda: actions.add(action))
        if wants_json(request) or media_type(request) == "application/json":
            return Response.json({"action": action.to_dict()}, 202)
        back = same_site_path(fields.get("next"), f"/cascade/{cid}")
        sep = "&" if "?" in back else "?"
        return _see_other(f"{back}{sep}done={action.kind}")

    def _send(self, action: ReviewAction) -> None:
        if self._publish is not None:
            self._publish(action)
            return
        from streams.runtime.produce import make_producer, publish_action

        with self._producer_lock:
            if self._producer is None:
                self._producer = make_producer(self.settings, linger_ms=0)
            producer = self._producer
        publish_action(action, self.settings, producer=producer)

    def close(self) -> None:
        with self._producer_lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None

    # -- signing in (browsers) --

    def _login(self, request: Request) -> Response:
        if request.method == "GET":
            nxt = same_site_path(request.query.get("next", [""])[-1])
            return self._html(lambda n: login_page(nxt, nonce=n))
        why = cross_site(request.headers)
        if why is not None:
            return Response.text(why, 403)
        try:
            fields = _form(request)
        except ValueError as exc:
            return Response.text(str(exc), 400)
        nxt = same_site_path(fields.get("next"))
        token = fields.get("token", "").strip()
        if self.tokens.tokens().grant(token) is None:
            return self._html(
                lambda n: login_page(nxt, nonce=n, error="that token is not valid"), 401
            )
        secure = "; Secure" if header(request.headers, "X-Forwarded-Proto") == "https" else ""
        value = (
            f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; "
            f"Max-Age={COOKIE_MAX_AGE_S}{secure}"
        )
        return _with(_see_other(nxt), ("Set-Cookie", value))

    def _logout(self, request: Request) -> Response:
        why = cross_site(request.headers)
        if why is not None:
            return Response.text(why, 403)
        gone = f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        return _with(_see_other("/login"), ("Set-Cookie", gone))


def loading(partition: int) -> str:
    """Why a view of a cluster of a partition this worker holds but has not loaded yet is
    503, not 404: the cluster may well be live (after a restart, an alert raised before it
    links here); the partition's state is being read back from its log, and its events
    applied once its watermark is known (:meth:`streams.runtime.topology.Topology.loading`).

    >>> loading(2)
    'this worker is still loading partition 2 of the clusters topic (its state, from its log)'
    """
    return (
        f"this worker is still loading partition {partition} of the clusters topic "
        "(its state, from its log)"
    )


def still_loading(worker: str, partitions: list[int]) -> list[str]:
    """What ``/emerging`` says of a worker with clusters partitions still loading (their
    clusters are not in the queue yet), in the list of the workers not heard in full.

    >>> still_loading("http://w1:6066", [2, 3]), still_loading("http://w1:6066", [])
    (['http://w1:6066: clusters partitions 2, 3 still loading'], [])
    """
    if not partitions:
        return []
    if not all(isinstance(p, int) for p in partitions):
        raise ValueError(f"loading: not partition numbers: {partitions!r}")
    return [f"{worker}: {listed_partitions(partitions)} still loading"]


def listed_partitions(partitions: list[int]) -> str:
    """Clusters partitions as ``/readyz`` and ``/emerging`` say them.

    >>> listed_partitions([0, 2, 3]), listed_partitions([1]), listed_partitions([])
    ('clusters partitions 0, 2, 3', 'clusters partition 1', 'no clusters partition')
    """
    if not partitions:
        return "no clusters partition"
    numbers = ", ".join(map(str, partitions))
    return f"clusters partition{'s' * (len(partitions) > 1)} {numbers}"


def _review_row(r: Mapping[str, Any]) -> dict[str, Any]:
    signals = r.get("signals") or []
    return {
        "when": r.get("time", ""),
        "who": r.get("reviewer", ""),
        "action": str(r.get("kind", "")).replace("_", " "),
        "why": r.get("reason", ""),
        "detail": f"bank {r.get('bank', '')}, {len(signals)} hash(es), {r.get('action_id', '')}",
    }


def _who(grant: Grant) -> str:
    return f"{grant.who} ({grant.role})"


def _with(response: Response, *headers: tuple[str, str]) -> Response:
    r = response
    return Response(r.status, r.body, r.content_type, (*r.headers, *headers))


def _see_other(location: str) -> Response:
    return Response(303, b"", "text/plain; charset=utf-8", (("Location", location),))


def _http(
    base: str,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    timeout: float = PEER_TIMEOUT_S,
) -> tuple[int, bytes, list[tuple[str, str]]]:
    """One request to another worker; the status, body and headers (redirects not followed)."""
    url = urllib.parse.urlsplit(base)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"not an HTTP URL: {base!r}")
    conn_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(url.hostname, url.port, timeout=timeout)
    try:
        conn.request(method, target, body=body or None, headers=dict(headers))
        response = conn.getresponse()
        return response.status, response.read(), list(response.getheaders())
    finally:
        conn.close()


def advertised_url(settings: Settings, port: int) -> str:
    """The URL other workers reach this one's HTTP port at.

    ``VIRALWATCH_HTTP_ADVERTISE`` when set (in Kubernetes: the pod's IP, from
    the downward API); else the interface it listens on, or, listening on
    every interface, the host name (a compose service's containers reach each
    other by it).

    >>> advertised_url(Settings(http_host="127.0.0.1"), 6066)
    'http://127.0.0.1:6066'
    """
    if settings.http_advertise:
        return settings.http_advertise.rstrip("/")
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):
        import socket

        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
