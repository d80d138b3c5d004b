"""The views on the HTTP port (streams/runtime/views.py), served for real over loopback.

Each "worker" here is the real view code with a real detector state, served
by the real threaded server; its stages' loop is a real asyncio loop on a
thread of its own. What is not real is the consumer group: which worker
holds which partition is given (Faust's assignor is read through one
function, checked on Apache Kafka in ``test_views_integration.py``), and a
reviewer's action is handed to a recorder instead of Kafka (Kafka takes it
in the integration test).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import networkx as nx
import pytest

from streams.alerts import Alert, MatchInfo, Pseudonymizer, alert_id
from streams.banks import BankEntry, HashBanks
from streams.events import Content, ShareEvent
from streams.policy import AlertPolicy
from streams.review import ActionLog, ReviewAction
from streams.router import Routed
from streams.runtime.views import HOP, TokenSource, Unavailable, Views
from streams.settings import Settings
from streams.stages import ClusterPartition, partition_for
from streams.stats import Stats
from streams.web import SECURITY_HEADERS, Router, serve

PARTITIONS = 4
VIEWER, REVIEWER = "viewer-token-1234", "reviewer-token-5678"
TOKENS = f"viewer:{VIEWER},reviewer@alice:{REVIEWER}"
T0 = 1_767_225_600_000
BANKED = BankEntry("ncii", "md5", "a" * 32).cluster_id
UNBANKED = "u-00112233445566ff"


def fill(part: ClusterPartition, cid: str, n: int, match: MatchInfo | None, md5: str) -> None:
    """An upload and ``n`` reshares in ``n`` seconds (a tree: every third reshares a reshare)."""
    det = part.detector
    up = ShareEvent(
        "e0" + cid, "upload", T0, f"{cid}-p0", "alice", followers=100, content=Content(md5=md5)
    )
    det.apply(Routed(up, cid, match))
    for i in range(1, n + 1):
        parent = f"{cid}-p{i - 1 if i % 3 == 0 else 0}"
        ev = ShareEvent(f"e{i}{cid}", "share", T0 + i * 1000, f"{cid}-p{i}", f"user{i}", parent)
        det.apply(Routed(ev, cid, match))
    det.apply(Routed(ShareEvent("td" + cid, "takedown", T0 + n * 1000, f"{cid}-p1", "x"), cid))
    det.drain()


@dataclass
class FakeWorker:
    """The parts of a worker the views read: partitions' state, banks, stats, the group."""

    worker_id: str
    partitions: int = PARTITIONS
    detectors: dict[int, ClusterPartition] = field(default_factory=dict)
    banks: HashBanks = field(default_factory=HashBanks)
    stats: Stats = field(default_factory=Stats)
    app: Any = None
    #: the reviewer actions read from the audit topic
    actions: ActionLog = field(default_factory=ActionLog)
    #: per bank, when its latest update was written to the bank topic
    bank_updated: dict[str, float] = field(default_factory=dict)
    #: the alerts-sent table (key: dedupe key, value: the alert's JSON)
    outputs: Any = field(default_factory=lambda: SimpleNamespace(alerts={}))
    #: clusters partitions assigned, not rebuilt from their logs yet
    loading: list[int] = field(default_factory=list)

    def hold(self, p: int) -> ClusterPartition:
        part = ClusterPartition(
            p,
            partitions=PARTITIONS,
            sources=PARTITIONS,
            policy=AlertPolicy.default(),
            stats=self.stats,
            pseudonymizer=Pseudonymizer(b"k"),
        )
        self.detectors[p] = part
        return part


@dataclass
class Served:
    views: Views
    worker: FakeWorker
    port: int
    published: list[ReviewAction]
    router: Router

    def request(
        self,
        method: str,
        path: str,
        token: str | None = VIEWER,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        h = dict(headers or {})
        if token:
            h.setdefault("Authorization", f"Bearer {token}")
        conn.request(method, path, body=body or None, headers=h)
        r = conn.getresponse()
        out = r.status, dict(r.getheaders()), r.read()
        conn.close()
        return out


@contextlib.contextmanager
def cluster_of_two(tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    """Two workers: ``a`` holds the partitions of both clusters, ``b`` the others."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    settings = Settings(partitions=PARTITIONS, web_tokens=TOKENS)
    mine = {partition_for(BANKED, PARTITIONS), partition_for(UNBANKED, PARTITIONS)}
    owners: dict[str, dict[str, list[int]]] = {}
    app = SimpleNamespace(assignor=SimpleNamespace(external_topic_distribution=owners))
    served: list[Served] = []
    running = []
    tasks: list[Any] = []
    try:
        for name in ("a", "b"):
            published: list[ReviewAction] = []
            views = Views(settings, TokenSource(TOKENS), publish=published.append)
            router = Router()
            views.add_routes(router)
            server = serve(router, "127.0.0.1", 0)
            running.append(server)
            views.url = f"http://127.0.0.1:{server.port}"
            worker = FakeWorker(f"worker-{name}", app=app)
            held = mine if name == "a" else set(range(PARTITIONS)) - mine
            owners[views.url] = {settings.topic("clusters"): sorted(held)}
            for p in held:
                worker.hold(p)
            served.append(Served(views, worker, server.port, published, router))
        a = served[0].worker
        match = MatchInfo("ncii", "md5", "a" * 32, 0)
        fill(a.detectors[partition_for(BANKED, PARTITIONS)], BANKED, 40, match, "a" * 32)
        fill(a.detectors[partition_for(UNBANKED, PARTITIONS)], UNBANKED, 40, None, "b" * 32)
        a.banks.add(BankEntry("ncii", "md5", "a" * 32))
        sent = Alert(  # sent by the partition's previous owner: in the table, not in memory
            alert_id=alert_id(BANKED, 1, "warning"),
            status="firing",
            severity="warning",
            ts_ms=T0 + 24_000,
            cluster_id=BANKED,
            first_seen_ms=T0,
        )
        a.outputs.alerts[sent.dedupe_key.encode()] = sent.to_json()
        a.outputs.alerts[b"junk"] = b"not an alert"
        tasks = []
        for s in served:
            tasks.append(asyncio.run_coroutine_threadsafe(s.views.run(s.worker), loop))
        for s in served:  # each attached to the loop before the first request
            deadline = time.monotonic() + 10
            while True:
                try:
                    s.views.bridge.call(lambda: None)
                    break
                except Unavailable:
                    assert time.monotonic() < deadline, "the views never attached to the loop"
                    time.sleep(0.01)
        yield served[0], served[1]
    finally:
        for server in running:
            server.stop()
        for task in tasks:
            task.cancel()
        concurrent.futures.wait(tasks, timeout=5)  # let the loop run their cancellation
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    with cluster_of_two(tmp_path) as pair:
        yield pair


JSON = {"Accept": "application/json"}


def test_the_cascade_is_the_same_from_either_worker(two: tuple[Served, Served]) -> None:
    a, b = two
    docs = []
    for w in (a, b):
        status, headers, body = w.request("GET", f"/cascade/{BANKED}", headers=JSON)
        assert status == 200, body
        docs.append(json.loads(body))
        assert headers["X-Viralwatch-Served-By"] == a.views.url  # b forwarded it to a
    assert docs[0] == docs[1]
    doc = docs[0]
    assert doc["cascade"]["size"] == 41 and doc["cascade"]["live"] == 40
    assert [(x["alert_id"], x["severity"]) for x in doc["alerts"]] == [
        (alert_id(BANKED, 1, "warning"), "warning")
    ]
    assert doc["match"]["bank"] == "ncii" and doc["hashes"] == [
        {"signal_type": "md5", "signal": "a" * 32}
    ]
    assert "alice" not in json.dumps(doc) and "user1" not in json.dumps(doc)
    for w in (a, b):
        status, _, body = w.request("GET", f"/cascade/{BANKED}/graph.graphml")
        assert status == 200
        g = nx.read_graphml(__import__("io").BytesIO(body))
        assert g.number_of_nodes() == 41 and g.number_of_edges() == 40
        assert not any(d["user"] in ("alice", "user1") for _, d in g.nodes(data=True))
        status, _, body = w.request("GET", f"/cascade/{BANKED}/graph.json")
        assert nx.node_link_graph(json.loads(body), edges="edges").number_of_nodes() == 41


def test_every_answer_of_the_views_carries_the_security_headers(
    two: tuple[Served, Served],
) -> None:
    """The cascade's GraphML and JSON (the text of events, served as data), the page, the
    review queue's JSON, a refusal and a forwarded answer alike (web.SECURITY_HEADERS)."""
    a, b = two
    for w in (a, b):  # b forwards the cascade to a
        for path, token in (
            (f"/cascade/{BANKED}/graph.graphml", VIEWER),
            (f"/cascade/{BANKED}/graph.json", VIEWER),
            (f"/cascade/{BANKED}", VIEWER),
            ("/emerging?scope=local", VIEWER),
            (f"/cascade/{BANKED}", None),
            ("/cascade/b-nowhere", VIEWER),
        ):
            status, headers, _ = w.request("GET", path, token=token, headers=JSON)
            for key, value in SECURITY_HEADERS:
                assert headers.get(key) == value, (path, status, key)


def test_the_cascade_page_is_html_with_the_tree_and_nothing_from_outside(
    two: tuple[Served, Served],
) -> None:
    a, b = two
    status, headers, body = b.request("GET", f"/cascade/{BANKED}", headers={"Accept": "text/html"})
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<svg id="tree"' in page and "Velocity over time" in page
    # the upload drawn as a root, the one taken-down post (p1) marked: one dot each
    assert page.count('<path class="root" d="M') == 1 and page.count('<path class="down" d="M') == 1
    down = page.split('<path class="down" d="')[1].split('"')[0]
    assert down.count("M") == 1
    assert "http://" not in page.replace(a.views.url, "") and "https://" not in page
    nonce = headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page  # the owner's nonce, passed back
    assert "user1" not in page and "alice (reviewer)" not in page
    # the prediction says by when: the band, then the policy's horizon
    assert "] within 7d of first seen</span>" in page
    _, _, raw = b.request("GET", f"/cascade/{BANKED}", headers=JSON)
    assert json.loads(raw)["cascade"]["predicted_final_size"]["horizon"] == "7d"


def test_no_token_is_401_a_wrong_one_too_and_probes_stay_open(two: tuple[Served, Served]) -> None:
    a, _ = two
    for path in (f"/cascade/{BANKED}", "/emerging", "/banks", "/", f"/cascade/{BANKED}/graph.json"):
        status, headers, _ = a.request("GET", path, token=None, headers=JSON)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
        assert a.request("GET", path, token="not-a-token-at-all")[0] == 401, path
    status, _, body = a.request("GET", "/emerging", token=None)
    assert status == 401 and b'name="token"' in body  # a browser gets the sign-in form


def test_a_viewer_who_acts_gets_403_and_nothing_is_published(two: tuple[Served, Served]) -> None:
    a, _ = two
    body = b"reason=looks+bad&bank=internal"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = a.request("POST", f"/cascade/{UNBANKED}/bank", VIEWER, body, form)
    assert status == 403 and not a.published


def test_a_cross_site_action_is_refused(two: tuple[Served, Served]) -> None:
    a, _ = two
    body = b"reason=x"
    for extra in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        headers = {"Content-Type": "application/x-www-form-urlencoded", **extra}
        status, _, out = a.request("POST", f"/cascade/{UNBANKED}/bank", REVIEWER, body, headers)
        assert status == 403 and b"cross-site" in out
    assert not a.published


def test_a_reviewer_banks_an_emerging_cluster_through_either_worker(
    two: tuple[Served, Served],
) -> None:
    a, b = two
    status, _, body = b.request("GET", "/emerging", headers=JSON)
    items = json.loads(body)["items"]
    assert [i["cluster_id"] for i in items] == [UNBANKED]
    assert items[0]["hashes"] == [{"signal_type": "md5", "signal": "b" * 32}]
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": f"http://127.0.0.1:{b.port}",
        "Host": f"127.0.0.1:{b.port}",
        "Sec-Fetch-Site": "same-origin",
    }
    body_ = b"bank=internal&reason=a+new+leak&next=/emerging"
    status, got, _ = b.request("POST", f"/cascade/{UNBANKED}/bank", REVIEWER, body_, headers)
    assert status == 303 and got["Location"] == "/emerging?done=bank"
    [action] = a.published  # the owner wrote it
    assert (action.kind, action.reviewer, action.bank, action.cluster_id) == (
        "bank",
        "alice",
        "internal",
        UNBANKED,
    )
    assert [(s.signal_type, s.signal) for s in action.signals] == [("md5", "b" * 32)]
    doc = json.loads(a.request("GET", f"/cascade/{UNBANKED}", headers=JSON)[2])
    assert doc["reviews"][0]["who"] == "alice" and doc["reviews"][0]["action"] == "bank"


def test_a_dismissed_cluster_leaves_the_queue(two: tuple[Served, Served]) -> None:
    a, _ = two
    status, _, _ = a.request(
        "POST",
        f"/cascade/{UNBANKED}/dismiss",
        REVIEWER,
        json.dumps({"reason": "a meme, not harmful"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 202
    items = json.loads(a.request("GET", "/emerging", headers=JSON)[2])["items"]
    assert items == []


def test_an_action_sent_as_json_with_a_charset_is_answered_in_json(
    two: tuple[Served, Served],
) -> None:
    """``application/json; charset=utf-8`` (what most HTTP clients send) is JSON: the body
    was read as JSON, but the answer was a browser's redirect (303), not the action."""
    a, _ = two
    body = json.dumps({"reason": "a meme, not harmful"}).encode()
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        status, headers, out = a.request(
            "POST", f"/cascade/{UNBANKED}/dismiss", REVIEWER, body, {"Content-Type": content_type}
        )
        assert status == 202, (content_type, status, headers.get("Location"))
        assert json.loads(out)["action"]["kind"] == "dismiss"
    assert [x.kind for x in a.published] == ["dismiss", "dismiss"]


def test_actions_in_a_row_on_one_cluster_get_times_in_that_order(
    two: tuple[Served, Served],
) -> None:
    """An action takes the cluster's time (so it applies at once); the next one on the same
    quiet cluster comes a millisecond later, not at the same time: replay orders changes of
    one time by their keys (an allow-list entry before a bank's), the stream by arrival."""
    a, b = two
    as_json = {"Content-Type": "application/json"}
    for w, kind in ((b, "bank"), (a, "dismiss"), (b, "dismiss")):
        body = json.dumps({"reason": f"{kind} it"}).encode()
        status, _, out = w.request("POST", f"/cascade/{UNBANKED}/{kind}", REVIEWER, body, as_json)
        assert status == 202, out  # (the recorder publishes nothing: still unbanked here)
    times = [x.ts_ms for x in a.published]
    assert times == [T0 + 40_000, T0 + 40_001, T0 + 40_002]  # its last event, then after


def test_bad_input_gets_a_clear_4xx_never_a_500(two: tuple[Served, Served]) -> None:
    a, b = two
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    as_json = {"Content-Type": "application/json"}
    cases = [
        ("GET", "/cascade/not-an-id", b"", {}, 400),
        ("GET", "/cascade/b-" + "0" * 16, b"", {}, 404),
        ("GET", "/cascade/%ff%fe", b"", {}, 400),
        ("DELETE", f"/cascade/{BANKED}", b"", {}, 405),
        ("GET", f"/cascade/{BANKED}/bank", b"", {}, 405),
        ("POST", f"/cascade/{BANKED}/bank", b"reason=x", form, 409),  # banked already
        ("POST", f"/cascade/{UNBANKED}/false-positive", b"reason=x", form, 409),
        ("POST", f"/cascade/{UNBANKED}/dismiss", b"", form, 400),  # a dismissal needs a reason
        ("POST", f"/cascade/{UNBANKED}/bank", b"{not json", as_json, 400),
        ("POST", f"/cascade/{UNBANKED}/bank", b"x" * 20_000, form, 413),
        ("POST", f"/cascade/{UNBANKED}/bank", b"<x/>", {"Content-Type": "text/xml"}, 400),
        ("GET", "/cascade/u-" + "0" * 5000, b"", {}, 400),
        # the other paths too
        ("POST", "/emerging", b"", {}, 405),
        ("DELETE", "/banks", b"", {}, 405),
        ("PUT", "/", b"", {}, 405),
        ("GET", "/logout", b"", {}, 405),
        ("POST", "/login", b"x" * 20_000, form, 413),
        ("POST", "/login", b"<x/>", {"Content-Type": "text/xml"}, 400),
        ("GET", "/nothing-here", b"", {}, 404),
    ]
    for method, path, body, headers, want in cases:
        for w in (a, b):
            status, _, out = w.request(method, path, REVIEWER, body, headers)
            assert status == want, (method, path, status, out[:200])
    assert not a.published and not b.published


def test_refusals_are_counted_by_route_and_status(two: tuple[Served, Served]) -> None:
    """What ``viralwatch_http_responses_total`` exports: a view's refusals seen without
    reading logs, by route pattern (never the cluster id a request named) and status."""
    a, _ = two
    before = a.router.answered()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for method, path, token, body in (
        ("GET", "/cascade/not-an-id", REVIEWER, b""),
        ("GET", "/cascade/not-an-id", REVIEWER, b""),
        ("GET", f"/cascade/{BANKED}", "no-such-token", b""),
        ("DELETE", f"/cascade/{BANKED}", REVIEWER, b""),
        ("POST", f"/cascade/{UNBANKED}/bank", REVIEWER, b"x" * 20_000),  # refused unread
        ("GET", "/nothing-here", REVIEWER, b""),
        ("GET", f"/cascade/{BANKED}", REVIEWER, b""),
    ):
        a.request(method, path, token, body, form if body else {})
    after = a.router.answered()
    new = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert new == {
        ("/cascade/<cluster>", 400): 2,
        ("/cascade/<cluster>", 401): 1,
        ("/cascade/<cluster>", 405): 1,
        ("/cascade/<cluster>/bank", 413): 1,
        ("(none)", 404): 1,
        ("/cascade/<cluster>", 200): 1,
    }


def test_a_partition_still_loading_says_so_with_503_not_404(two: tuple[Served, Served]) -> None:
    """A worker restarted at a quiet hour holds the partition of a live cluster an alert
    linked to before its state is rebuilt from the log: "still loading", 503 with
    Retry-After (an on-call engineer retries), never "not found"; so too when the group's
    assignment names it the owner before it knows; forwarded, the owner's answer."""
    a, b = two
    p = partition_for(BANKED, PARTITIONS)
    held = a.worker.detectors.pop(p)
    try:
        a.worker.loading.append(p)
        for w in (a, b):  # b forwards to a
            status, headers, body = w.request("GET", f"/cascade/{BANKED}", headers=JSON)
            assert status == 503 and headers["Retry-After"], (status, body)
            assert f"still loading partition {p}" in json.loads(body)["error"]
        status, _, page = a.request("GET", f"/cascade/{BANKED}")
        assert status == 503 and b"still loading partition" in page
        # the review queue, from either worker, says its clusters are not in it yet
        said = f"{a.views.url}: clusters partition {p} still loading"
        for w in (a, b):
            status, _, body = w.request("GET", "/emerging", headers=JSON)
            assert status == 200 and said in json.loads(body)["missing"], body
        status, _, page = b.request("GET", "/emerging")
        assert said.encode() in page and b"missing from this list" in page
        a.worker.loading.clear()  # assigned by the group, not told the worker yet
        status, _, body = a.request("GET", f"/cascade/{BANKED}", headers=JSON)
        assert status == 503 and b"still loading" in body, body
    finally:
        a.worker.detectors[p] = held
    status, _, _ = a.request("GET", f"/cascade/{BANKED}", headers=JSON)
    assert status == 200


def test_a_forwarded_request_is_never_forwarded_again(two: tuple[Served, Served]) -> None:
    _, b = two
    status, headers, _ = b.request(
        "GET", f"/cascade/{BANKED}", headers={**JSON, HOP: "http://elsewhere"}
    )
    assert status == 503 and headers["Retry-After"]


def test_banks_show_entries_and_merge_workers(two: tuple[Served, Served]) -> None:
    a, b = two
    a.worker.bank_updated["ncii"] = T0 / 1000
    doc = json.loads(b.request("GET", "/banks", headers=JSON)[2])
    assert doc["missing"] == []
    assert [r["bank"] for r in doc["banks"]] == ["ncii"] and doc["banks"][0]["entries"] == 1
    assert doc["banks"][0]["last_update"] == "2026-01-01T00:00:00.000Z"
    status, _, page = b.request("GET", "/banks")
    assert status == 200 and b"ncii" in page


def test_a_browser_signs_in_and_its_cookie_opens_the_views(two: tuple[Served, Served]) -> None:
    a, _ = two
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = a.request("POST", "/login", None, b"token=wrong-token-000", form)
    assert status == 401
    status, headers, _ = a.request(
        "POST", "/login", None, f"token={VIEWER}&next=/banks".encode(), form
    )
    assert status == 303 and headers["Location"] == "/banks"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, _ = a.request("GET", "/banks", None, headers={"Cookie": cookie.split(";")[0]})
    assert status == 200
    status, headers, _ = a.request(
        "POST", "/login", None, f"token={VIEWER}&next=https://evil.example/".encode(), form
    )
    assert headers["Location"] == "/emerging"  # never sent to another site


def test_the_tokens_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("viewer:first-token-111\n", encoding="utf-8")
    source = TokenSource("", path)
    assert source.tokens().grant("first-token-111") is not None
    path.write_text("# rotated\nreviewer:second-token-2222\n", encoding="utf-8")
    source._checked = 0.0  # do not wait out the re-read interval
    assert source.tokens().grant("first-token-111") is None
    assert source.tokens().grant("second-token-2222").may_act  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="web tokens file"):
        TokenSource("", tmp_path / "missing")


def test_web_token_settings_are_secret_and_checked() -> None:
    s = Settings.from_env({"VIRALWATCH_WEB_TOKENS": TOKENS})
    assert REVIEWER not in repr(s) and "VIRALWATCH_WEB_TOKENS" not in s.to_env()
    with pytest.raises(ValueError, match="role must be viewer or reviewer"):
        Settings.from_env({"VIRALWATCH_WEB_TOKENS": "admin:abcdefghij"})
    with pytest.raises(ValueError, match="VIRALWATCH_HTTP_ADVERTISE"):
        Settings.from_env({"VIRALWATCH_HTTP_ADVERTISE": "10.0.0.1:6066"})


def test_a_false_positive_is_shown_and_can_be_undone(two: tuple[Served, Served]) -> None:
    a, b = two
    part = a.worker.detectors[partition_for(BANKED, PARTITIONS)]
    a.views.bridge.call(lambda: part.detector.clusters[BANKED].allowed_by.add(("md5", "a" * 32)))
    doc = json.loads(b.request("GET", f"/cascade/{BANKED}", headers=JSON)[2])
    assert doc["allowed_by"] == [{"signal_type": "md5", "signal": "a" * 32}]
    page = b.request("GET", f"/cascade/{BANKED}", REVIEWER)[2].decode()
    assert "on the allow-list" in page and "/reverse-false-positive" in page
    as_json = {"Content-Type": "application/json"}
    body = json.dumps({"reason": "it was NCII after all"}).encode()
    status, _, _ = b.request("POST", f"/cascade/{BANKED}/false-positive", REVIEWER, body, as_json)
    assert status == 409  # a false positive already
    status, _, out = b.request(
        "POST", f"/cascade/{BANKED}/reverse-false-positive", REVIEWER, body, as_json
    )
    assert status == 202, out
    [action] = a.published
    assert action.kind == "reverse_false_positive" and action.reviewer == "alice"
    assert [(s.signal_type, s.signal) for s in action.signals] == [("md5", "a" * 32)]
