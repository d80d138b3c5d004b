"""The views on Apache Kafka with two workers: an alert's cascade link works on either one.

Two ``python -m streams.runtime`` processes share the partitions; each has
its HTTP port and the same tokens. The first alert's ``links.cascade`` is
fetched from *both*: one holds the cluster, the other forwards the request
to it (found through the consumer group's assignment), and both answer with
the cluster. A reviewer's false-positive verdict posted to the worker that
does not hold it reaches the ``bank`` and ``audit`` topics.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import orjson
import pytest
from browser import Browser, chromium_or_skip
from kafka_helpers import (
    TopicReader,
    WorkerProcess,
    latest_stats,
    produce_lines,
    tansu,
    worker_env,
    workers,
)
from programs import free_port
from test_streaming_integration import scenario_files, setup

from streams.runtime.broker import LocalBroker, RunningBroker
from streams.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["tansu"]  # the module-scoped fixture, imported for pytest

VIEWER, REVIEWER = "viewer-token-0001", "reviewer-token-0002"
TOKENS = f"viewer:{VIEWER},reviewer@oncall:{REVIEWER}"


def fetch(
    base: str,
    path: str,
    token: str | None,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    import http.client

    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body or None, headers=h)
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


@dataclass
class Pair:
    """Two workers with HTTP ports on Apache Kafka, traffic produced, the first alert read."""

    settings: Settings
    bases: list[str]
    procs: list[WorkerProcess]
    first: dict[str, Any]

    def logs(self) -> str:
        return "\n---\n".join(p.log_tail(30) for p in self.procs)


@pytest.fixture(scope="module")
def pair(broker: RunningBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp_path = tmp_path_factory.mktemp("views")
    lines, _, bank_path = scenario_files(tmp_path)
    s = setup(broker, tmp_path, bank_path)
    ports = [free_port(), free_port()]
    procs = [
        WorkerProcess(
            worker_env(
                s,
                VIRALWATCH_HTTP_HOST="127.0.0.1",
                VIRALWATCH_HTTP_PORT=str(port),
                VIRALWATCH_WEB_TOKENS=TOKENS,
            ),
            tmp_path / f"worker-{i}.log",
        )
        for i, port in enumerate(ports)
    ]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    with workers(*procs):
        run = Pair(s, bases, procs, {})
        stats = TopicReader(broker, s.topic("stats"))
        stats.until(
            lambda r: sum(1 for d in latest_stats(r).values() if d["time"] > time.time() - 2) == 2,
            90,
            "two workers reporting",
            on_timeout=run.logs,
        )
        stats.close()
        produce_lines(broker, s.topic("shares"), lines, keying="post")
        alerts = TopicReader(broker, s.topic("alerts"))
        alerts.until(lambda r: len(r) >= 1, 120, "the first alert", on_timeout=run.logs)
        run.first = orjson.loads(alerts.records[0].value)
        alerts.close()
        yield run


def test_an_alerts_cascade_link_works_on_both_workers(pair: Pair, broker: RunningBroker) -> None:
    s, bases, first, logs = pair.settings, pair.bases, pair.first, pair.logs
    link = urllib.parse.urlsplit(first["links"]["cascade"])
    assert link.path == f"/cascade/{first['cluster_id']}"

    def ask(base: str) -> tuple[int, dict[str, str], bytes]:
        deadline = time.monotonic() + 60
        while True:  # the owner may still be restoring or rebalancing: 503, then 200
            got = fetch(base, link.path, VIEWER, headers={"Accept": "application/json"})
            if got[0] != 503 or time.monotonic() > deadline:
                return got
            time.sleep(0.5)

    served_by = set()
    for base in bases:
        status, headers, body = ask(base)
        assert status == 200, f"{base}: {status} {body[:300]!r}\n{logs()}"
        doc = json.loads(body)
        assert doc["cluster_id"] == first["cluster_id"]
        assert doc["cascade"]["size"] >= first["cascade"]["size"]
        served_by.add(headers["X-Viralwatch-Served-By"])
        status, _, graphml = fetch(base, link.path + "/graph.graphml", VIEWER)
        assert status == 200
        g = nx.read_graphml(io.BytesIO(graphml))
        assert g.number_of_nodes() >= first["cascade"]["size"]
        assert g.number_of_nodes() <= json.loads(ask(base)[2])["cascade"]["size"]
    assert len(served_by) == 1 and served_by <= set(bases), served_by  # one owner

    # no token: 401 on each; a viewer who acts: 403; probes stay open
    for base in bases:
        assert fetch(base, link.path, None)[0] == 401
        assert fetch(base, "/emerging", "wrong-token-xyz")[0] == 401
        assert fetch(base, "/readyz", None)[0] in (200, 503)
        assert fetch(base, "/metrics", None)[0] == 200
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, _, _ = fetch(base, link.path + "/false-positive", VIEWER, "POST", b"reason=x", form)
        assert status == 403

    # a reviewer's verdict, posted to the worker that does not hold the cluster
    (owner,) = served_by
    other = next(b for b in bases if b != owner)
    status, _, body = fetch(
        other,
        link.path + "/false-positive",
        REVIEWER,
        "POST",
        json.dumps({"reason": "test: a sunset, not NCII"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 202, body
    action = json.loads(body)["action"]
    assert (action["kind"], action["reviewer"], action["cluster_id"]) == (
        "false_positive",
        "oncall",
        first["cluster_id"],
    )
    audit = TopicReader(broker, s.topic("audit"))
    audit.until(lambda r: len(r) >= 1, 30, "the audit record")
    assert json.loads(audit.records[0].value)["action_id"] == action["action_id"]
    audit.close()
    bank = TopicReader(broker, s.topic("bank"))
    bank.until(
        lambda r: any(b"allowlist" in (x.value or b"") for x in r), 30, "the allow-list entry"
    )
    bank.close()
    page = fetch(owner, link.path, REVIEWER)[2].decode()
    assert "false positive" in page and '<svg id="tree"' in page


#: The README's screenshots, written only when asked (``make docs-img`` sets
#: ``DOCS_IMG_DIR`` to this folder): a test run writes into its own temporary
#: folder, never into the tree it runs in (CI runs from a clean checkout).
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def screenshots_dir(tmp_path: Path, env: Mapping[str, str] = os.environ) -> Path:
    """Where the browser test's screenshots go: ``DOCS_IMG_DIR`` if set (the docs'
    images made again, on purpose), else the test's own temporary folder."""
    chosen = env.get("DOCS_IMG_DIR")
    out = Path(chosen) if chosen else tmp_path / "img"
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_the_screenshots_go_to_the_docs_only_when_asked(tmp_path: Path) -> None:
    assert screenshots_dir(tmp_path, {}) == tmp_path / "img"
    assert not screenshots_dir(tmp_path, {}).is_relative_to(DOCS_IMG.parents[1])
    asked = tmp_path / "docs-img"
    assert screenshots_dir(tmp_path, {"DOCS_IMG_DIR": str(asked)}) == asked


def test_a_browser_follows_the_alert_sees_the_tree_and_banks_an_emerging_item(
    pair: Pair, tmp_path: Path
) -> None:
    """Debian's Chromium, headless: the alert's link, sign-in, the tree (a post's tooltip on
    hover), the review queue, banking its first item, the item leaving the queue (the bank
    change relabels the cluster: retroaction). The screenshots in the README are taken here."""
    chromium_or_skip()
    asyncio.run(browse(pair, tmp_path, screenshots_dir(tmp_path)))


async def browse(pair: Pair, tmp_path: Path, img: Path) -> None:
    link = urllib.parse.urlsplit(pair.first["links"]["cascade"]).path
    base = pair.bases[1]  # any worker: the one that does not hold it forwards
    async with Browser(tmp_path / "profile") as b:
        await b.goto(base + link)
        assert "sign in" in await b.js("document.title")  # no token yet: the sign-in page
        await b.submit("form[action='/login']", {"token": REVIEWER})
        assert await b.js("location.pathname") == link, await b.js("document.body.innerText")
        posts = await b.js("JSON.parse(document.getElementById('posts').textContent).id.length")
        assert posts >= pair.first["cascade"]["size"]
        assert await b.js("document.querySelector('#tree path.root').getAttribute('d').length")
        # hover the deepest post shown on the screen: its tooltip names it, with its details
        x, y, post = await b.js(
            "(() => { const d = JSON.parse(document.getElementById('posts').textContent);"
            "const svg = document.getElementById('tree'); const m = svg.getScreenCTM();"
            "let best = null; for (let i = 0; i < d.id.length; i++) {"
            "const p = svg.createSVGPoint(); p.x = d.x[i]; p.y = d.y[i];"
            "const q = p.matrixTransform(m); if (q.y < innerHeight - 150 && q.x < innerWidth - 250"
            " && (!best || q.y > best[1])) best = [q.x, q.y, d.id[i]]; } return best; })()"
        )
        await b.mouse(x, y)
        tip = await b.js("(t => t.hidden ? '' : t.textContent)(document.getElementById('tip'))")
        assert post in tip and "followers" in tip and "user      u-" in tip, tip
        await b.screenshot(img / "views-cascade.png")

        # the review queue: unbanked content spreading fast
        deadline = time.monotonic() + 120
        rows: list[str] = []
        while not rows:
            await b.goto(base + "/emerging")
            rows = await b.js(
                "[...document.querySelectorAll('tr[data-cluster]')].map(r => r.dataset.cluster)"
            )
            if not rows:
                assert time.monotonic() < deadline, "nothing emerging\n" + pair.logs()
                await asyncio.sleep(2)
        await b.screenshot(img / "views-emerging.png")
        target = rows[0]
        await b.submit(
            f"tr[data-cluster='{target}'] form",
            {"bank": "internal", "reason": "browser test: a new leak"},
        )
        assert await b.js("location.search") == "?done=bank", await b.js("document.body.innerText")
        # banked (retroaction relabels the cluster): it leaves the queue
        deadline = time.monotonic() + 60
        while target in rows:
            assert time.monotonic() < deadline, f"{target} still queued\n" + pair.logs()
            await asyncio.sleep(1)
            await b.goto(base + "/emerging")
            rows = await b.js(
                "[...document.querySelectorAll('tr[data-cluster]')].map(r => r.dataset.cluster)"
            )
        # the next one is judged not harmful: dismissed, it leaves the queue at once
        dismissed = rows[0]
        await b.submit(
            f"tr[data-cluster='{dismissed}'] form[action$='/dismiss']",
            {"reason": "browser test: a meme"},
        )
        assert await b.js("location.search") == "?done=dismiss"
        rows = await b.js(
            "[...document.querySelectorAll('tr[data-cluster]')].map(r => r.dataset.cluster)"
        )
        assert dismissed not in rows and target not in rows
        # its page: banked now, its hashes, and who banked it and why
        await b.goto(base + f"/cascade/{target}")
        page = await b.js("document.body.innerText")
        assert "unbanked" not in page and "browser test: a new leak" in page, page[:2000]
        assert "oncall" in page and await b.js("!!document.querySelector('#tree path.root')")


def test_a_restarted_worker_answers_an_alerts_cascade_link_with_no_more_traffic(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """A worker raises an alert, is restarted (a rolling update at a quiet hour) and no event
    comes after: the alert's cascade link answers the cascade at once, not 404. The
    replacement rebuilds the clusters partitions it is assigned from their logs as the
    assignment's tables are recovered (not at the first batch, which a quiet stream never
    brings); until it has, a view of one says 503 "still loading", with Retry-After."""
    restart_with_no_more_traffic(broker, tmp_path)


def test_a_restarted_worker_on_the_bundled_broker_answers_an_alerts_cascade_link_too(
    tansu: LocalBroker, tmp_path: Path
) -> None:
    """The same on the bundled broker (Tansu, what ``make demo`` and a new user run). It
    keeps a committed offset but drops the metadata committed with it, where Apache Kafka
    keeps the ``shares`` partitions' newest event times: without them the replacement's
    restored events waited for the next event, and the link said 503 "still loading" for as
    long as none came. The times go to a topic of their own there, each with its offset,
    before the offset is committed (:mod:`streams.runtime.stream_times`)."""
    restart_with_no_more_traffic(tansu, tmp_path)


def restart_with_no_more_traffic(broker: RunningBroker, tmp_path: Path) -> None:
    lines, _, bank_path = scenario_files(tmp_path)
    s = setup(broker, tmp_path, bank_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = worker_env(
        s,
        VIRALWATCH_HTTP_HOST="127.0.0.1",
        VIRALWATCH_HTTP_PORT=str(port),
        VIRALWATCH_WEB_TOKENS=TOKENS,
    )
    first = WorkerProcess(env, tmp_path / "first.log")
    second = WorkerProcess(env, tmp_path / "second.log")
    both = [first, second]

    def logs() -> str:
        return "\n---\n".join(p.log_tail(30) for p in both)

    def ask(path: str) -> tuple[int, dict[str, str], bytes]:
        deadline = time.monotonic() + 90
        while True:  # restoring: 503 saying so (and before the port listens: refused)
            try:
                got = fetch(base, path, VIEWER, headers={"Accept": "application/json"})
            except OSError:
                got = (0, {}, b"")
            if got[0] not in (0, 503) or time.monotonic() > deadline:
                return got
            if got[0] == 503:
                assert got[1].get("Retry-After"), got
            time.sleep(0.5)

    with workers(first):
        produce_lines(broker, s.topic("shares"), lines, keying="post")
        alerts = TopicReader(broker, s.topic("alerts"))
        alerts.until(lambda r: len(r) >= 1, 120, "the first alert", on_timeout=logs)
        time.sleep(5)  # the rest of the traffic through
        alerts.poll()
        alerts.close()
        links = sorted(
            {
                urllib.parse.urlsplit(orjson.loads(r.value)["links"]["cascade"]).path
                for r in alerts.records
            }
        )
        live: dict[str, dict[str, Any]] = {}
        for path in links:
            status, _, body = ask(path)
            if status == 200:
                live[path] = json.loads(body)
        assert live, f"no alert's cluster is live at the end of the traffic\n{logs()}"
        assert first.stop() == 0, logs()
    with workers(second):  # the same port, the same group; no more traffic
        for path, before in live.items():
            status, headers, body = ask(path)
            assert status == 200, f"{path}: {status} {body[:300]!r}\n{logs()}"
            doc = json.loads(body)
            assert doc["cluster_id"] == before["cluster_id"]
            assert doc["cascade"]["size"] == before["cascade"]["size"]
            assert headers["X-Viralwatch-Served-By"] == base
        deadline = time.monotonic() + 60  # (the bank topic may still be read)
        while (got := fetch(base, "/readyz", None))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        status, _, body = got
        assert status == 200, body
        restored = json.loads(body)["conditions"]["restored"]
        held = ", ".join(map(str, range(s.partitions)))
        assert restored == f"ok: tables recovered; clusters partitions {held} rebuilt"
