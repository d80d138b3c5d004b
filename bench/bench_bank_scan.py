"""What a timed bank change's search costs in a worker's clusters partition: the live
clusters holding a signal (``Detector.near``: the partition's content index and its unbanked
store, which keeps its clusters' signals and is scanned), at the worker memory measure's
state (``bench_core.py --memory worker``: the simulator's background cascades, none
evicted). CPU time per search, medians; PDQ hashes and MD5s held and not held.

    python bench/bench_bank_scan.py --posts 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from bench_core import WORKER_BATCH, unbanked_lines
from bench_stages import ingest_range, stages

from streams.banks import HashBanks
from streams.stages import merge_resolved, resolve_local_peers


def build(lines: list[bytes], seconds: float, idle_ms: int = 24 * 3_600_000) -> Any:
    """One worker's stages (one partition each) fed the stream of ``seconds`` of event time
    (the clock follows it); its clusters partition."""
    ingest, resolvers, clusters = stages(1, HashBanks(), idle_ms=idle_ms)
    for start in range(0, len(lines), WORKER_BATCH):
        end = min(start + WORKER_BATCH, len(lines))
        now = start * seconds / len(lines)
        made = ingest_range(ingest, lines, start, end, 1, now=now)
        batches = [resolvers[r].handle([env]) for r, env in made.unpacked.items()]
        peers, _ = resolve_local_peers(resolvers, batches, 4)
        to_clusters, _ = merge_resolved(batches + peers)
        for k, env in to_clusters.items():
            clusters[k].handle([env])
    return clusters[0]


def held_signals(lines: list[bytes], rng: random.Random, n: int) -> dict[str, list[str]]:
    """Signals of ``n`` uploads of the stream, picked at random: content the store holds."""
    out: dict[str, list[str]] = {"pdq": [], "md5": []}
    for line in rng.sample(lines, len(lines)):
        content = json.loads(line).get("content") or {}
        for kind in out:
            if kind in content and len(out[kind]) < n:
                out[kind].append(content[kind].lower())
        if all(len(v) >= n for v in out.values()):
            break
    return out


def cpu_us(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--minutes", type=int, default=30, help="the stream's length")
    ap.add_argument(
        "--idle-minutes",
        type=float,
        default=24 * 60.0,
        help="clusters idle this long are evicted (default a day: none is); shorter, the "
        "store churns as a long-running worker's does: new clusters take freed slots and "
        "memory, no longer in the order they were made",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lines = unbanked_lines(args.posts, args.seed, args.minutes)
    det = build(lines, args.minutes * 60.0, int(args.idle_minutes * 60_000)).detector
    rng = random.Random(args.seed)
    held = held_signals(lines, rng, args.repeats)
    del lines
    out: dict[str, Any] = {"clusters": det.cluster_count, "posts": det.live_posts}
    hexdigits = "0123456789abcdef"
    absent = {
        "pdq": "".join(rng.choice(hexdigits) for _ in range(64)),
        "md5": "".join(rng.choice(hexdigits) for _ in range(32)),
    }
    for kind in ("pdq", "md5"):
        q = absent[kind]
        found = det.near(kind, q)
        out[f"{kind}_absent_us"] = cpu_us(lambda q=q, kind=kind: det.near(kind, q), args.repeats)
        out[f"{kind}_absent_found"] = len(found)
        queries = iter(held[kind] * 2)
        out[f"{kind}_held_us"] = cpu_us(
            lambda kind=kind, queries=queries: det.near(kind, next(queries)), args.repeats
        )
        out[f"{kind}_held_found"] = statistics.median(len(det.near(kind, q)) for q in held[kind])
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
