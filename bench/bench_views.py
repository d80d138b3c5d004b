"""What the cascade view of a big cluster costs: the stages' pause, the page, the graph files.

A banked cluster of ``--posts`` posts (default 10,000: uploads, a reshare
tree with hubs, a few takedowns) is built in a real detector; then, as a
worker serving ``/cascade/<id>`` does:

- ``capture``: the copy taken on the event loop (the only time the stages wait);
- ``snapshot``: pseudonyms, figures and velocity series, on the HTTP thread;
- ``html``, ``json``, ``graph.json``, ``graphml``: each rendering of the snapshot;
- ``http html`` / ``http json``: the whole request over loopback, through the real
  threaded server and a real asyncio loop standing in for the stages' (token check,
  capture on the loop, render, send).

The peer, measured in the same run on the same graph: NetworkX's own
``node_link_data`` of the cascade's live graph (what any export of it costs at
least). Medians over ``--repeats``; ``ratio`` is a step over the peer.

    python bench/bench_views.py
    python bench/bench_views.py --posts 50000 --repeats 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.alerts import MatchInfo, Pseudonymizer  # noqa: E402
from streams.banks import BankEntry, HashBanks  # noqa: E402
from streams.cascade_view import (  # noqa: E402
    capture_cluster,
    graph_json,
    graphml,
    snapshot,
    to_doc,
)
from streams.detector import Detector  # noqa: E402
from streams.events import ShareEvent  # noqa: E402
from streams.pages import cascade_page  # noqa: E402
from streams.policy import AlertPolicy  # noqa: E402
from streams.review import ActionLog  # noqa: E402
from streams.router import Routed  # noqa: E402
from streams.runtime.views import TokenSource, Views  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.stages import ClusterPartition, partition_for  # noqa: E402
from streams.stats import Stats  # noqa: E402
from streams.web import Router, serve  # noqa: E402

T0 = 1_767_225_600_000
TOKEN = "bench-viewer-token"


def build(detector: Detector, cid: str, n: int, seed: int = 7) -> None:
    """``n`` posts: 5 uploads, reshares preferring popular posts (hubs), 2% taken down."""
    rng = random.Random(seed)
    match = MatchInfo("ncii", "pdq", "ab" * 32, 3)
    posts: list[str] = []
    weights: list[float] = []
    for i in range(n):
        ts = T0 + i * 150
        if i < 5:
            ev = ShareEvent(f"e{i}", "upload", ts, f"p{i}", f"user{i}", followers=1000)
        else:
            parent = rng.choices(posts, weights)[0] if rng.random() < 0.7 else rng.choice(posts)
            ev = ShareEvent(
                f"e{i}",
                "share",
                ts,
                f"p{i}",
                f"user{rng.randrange(n // 2)}",
                parent,
                followers=rng.randrange(20_000),
            )
        detector.apply(Routed(ev, cid, match))
        posts.append(f"p{i}")
        weights.append(1.0 + (50.0 if rng.random() < 0.01 else 0.0))
    for i in rng.sample(range(n), n // 50):
        tid = f"t{i}"
        detector.apply(Routed(ShareEvent(tid, "takedown", T0 + n * 150, f"p{i}", "x"), cid))
    detector.drain()


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cid = BankEntry("ncii", "pdq", "ab" * 32).cluster_id
    partitions = 4
    p = partition_for(cid, partitions)
    stats = Stats()
    part = ClusterPartition(
        p,
        partitions=partitions,
        sources=partitions,
        policy=AlertPolicy.default(),
        stats=stats,
        pseudonymizer=Pseudonymizer(b"k"),
    )
    det = part.detector
    build(det, cid, args.posts)
    pseudo = Pseudonymizer(b"k")
    now = T0 + args.posts * 150
    cap = capture_cluster(det, cid, now)
    assert cap is not None
    snap = snapshot(cap, pseudo)
    graph = det.clusters[cid].cascade.graph  # type: ignore[union-attr]
    out: dict[str, Any] = {"posts": args.posts, "repeats": args.repeats}
    peer = median_ms(lambda: nx.node_link_data(graph, edges="edges"), args.repeats)
    steps = {
        "capture (on the loop)": lambda: capture_cluster(det, cid, now),
        "snapshot": lambda: snapshot(cap, pseudo),
        "html": lambda: cascade_page(snap, nonce="n", may_act=True),
        "json": lambda: json.dumps(to_doc(snap)),
        "graph.json": lambda: json.dumps(graph_json(snap)),
        "graphml": lambda: graphml(snap),
    }
    results = {name: median_ms(fn, args.repeats) for name, fn in steps.items()}
    results["html bytes"] = float(len(cascade_page(snap, nonce="n", may_act=True)))

    # the whole request, through the real server and a real loop standing in for the stages'
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    settings = Settings(partitions=partitions, web_tokens=f"viewer:{TOKEN}")
    views = Views(settings, TokenSource(settings.web_tokens))
    router = Router()
    views.add_routes(router)
    server = serve(router, "127.0.0.1", 0)
    views.url = f"http://127.0.0.1:{server.port}"
    app = SimpleNamespace(
        assignor=SimpleNamespace(
            external_topic_distribution={views.url: {settings.topic("clusters"): [p]}}
        )
    )
    worker = SimpleNamespace(
        worker_id="bench",
        detectors={p: part},
        banks=HashBanks(),
        stats=stats,
        app=app,
        actions=ActionLog(),
        bank_updated={},
    )
    task = asyncio.run_coroutine_threadsafe(views.run(worker), loop)  # type: ignore[arg-type]

    def get(accept: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request(
            "GET", f"/cascade/{cid}", headers={"Authorization": f"Bearer {TOKEN}", "Accept": accept}
        )
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 200 and body, (r.status, body[:200])

    time.sleep(0.2)
    results["http html"] = median_ms(lambda: get("text/html"), args.repeats)
    results["http json"] = median_ms(lambda: get("application/json"), args.repeats)
    task.cancel()
    server.stop()
    loop.call_soon_threadsafe(loop.stop)

    out["peer: networkx node_link_data ms"] = round(peer, 2)
    for name, ms in results.items():
        if name.endswith("bytes"):
            out[name] = int(ms)
        else:
            out[f"{name} ms"] = round(ms, 2)
            out[f"{name} ratio"] = round(ms / peer, 2) if peer else None
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"cascade view of {args.posts:,} posts, medians of {args.repeats} (ms; ratio to peer)")
    print(f"  peer, networkx node_link_data: {peer:8.2f}")
    for name, ms in results.items():
        if name.endswith("bytes"):
            print(f"  {name:26s} {int(ms):>10,}")
        else:
            print(f"  {name:26s} {ms:8.2f}   x{ms / peer:.2f}")


if __name__ == "__main__":
    main()
