"""What clustering unbanked uploads costs: memory per live upload, and time per upload.

Every unbanked upload stays in the :class:`streams.emerging.EmergingClusters` of the
index's owner (resolve partition 0: which live cluster a near-duplicate joins; one for
the whole pipeline, whatever the workers) until its cluster is
idle for ``idle_ms``, and in the detector's :class:`streams.emerging.ContentIndex`
(which live clusters a bank change concerns) as long as its cluster lives. So
memory grows with the live unbanked uploads; this measures by how much.

For each size N: N uploads of distinct random content (a PDQ hash of quality
90 and an MD5 each, as platforms send them; a quarter of them near-duplicates,
12 bits from an earlier one, so they join its cluster), assigned in turn.
Memory is what ``tracemalloc`` sees allocated (Python objects and NumPy's
arrays) after the last one, less before the first, plus what the compiled
core's heap grew by (``_core.allocated_bytes``: the index and the holders'
maps, which tracemalloc does not see), divided by N: the cost of
one live upload in the router's structure (the detector's index is the same
class without the idle order, so it costs about as much again). Time per
upload is the median (CPU time of the process: on a shared machine wall-clock
time moves by 3x between runs) over ``--repeats`` passes of assigning 1,000 more uploads
to the filled structure, in batches of 200 as the index's owner does (each
upload assigned in turn, each batch's changes taken for the state log; the
structure grows by 1,000 a pass); the peer, measured
in the same run on the same hashes, is a NumPy brute-force scan of the live
hashes (what an index saves).

    python bench/bench_emerging.py                    # 10k and 100k live uploads
    python bench/bench_emerging.py --sizes 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams import _core  # noqa: E402
from streams.emerging import EmergingClusters  # noqa: E402
from streams.events import Content  # noqa: E402

#: Uploads assigned per timed pass (the structure grows by this much each pass).
BATCH = 1_000
#: Uploads in a router's batch (a resolve partition's batch of events holds about this many).
ROUTER_BATCH = 200


def uploads(n: int, seed: int) -> list[Content]:
    rng = random.Random(seed)
    out: list[Content] = []
    for i in range(n):
        if out and i % 4 == 3:
            base = int(rng.choice(out).pdq or "0", 16)
            for bit in rng.sample(range(256), 12):
                base ^= 1 << bit
            pdq = f"{base:064x}"
        else:
            pdq = f"{rng.getrandbits(256):064x}"
        out.append(Content(pdq=pdq, pdq_quality=90, md5=f"{rng.getrandbits(128):032x}"))
    return out


def fill(contents: list[Content]) -> EmergingClusters:
    clusters = EmergingClusters(idle_ms=10**12)
    assign(clusters, contents, 0)
    return clusters


def assign(clusters: EmergingClusters, contents: list[Content], start: int) -> None:
    """As the index's owner does: a batch's uploads assigned in turn, then what changed
    taken for its state log."""
    for lo in range(0, len(contents), ROUTER_BATCH):
        batch = contents[lo : lo + ROUTER_BATCH]
        for i, c in enumerate(batch):
            clusters.assign(c, start + lo + i)
        clusters.take_changes()


def parse_hashes(hashes: list[str]) -> np.ndarray:
    """PDQ hex strings as an ``(n, 4)`` array of 64-bit words (for the peer's scan)."""
    return np.frombuffer(bytes.fromhex("".join(hashes)), dtype=np.uint64).reshape(-1, 4)


def scan(words: np.ndarray, query: np.ndarray) -> int:
    """The peer: every live hash's distance to the query, the nearest kept if within 31."""
    d = np.bitwise_count(words ^ query).sum(axis=1)
    i = int(d.argmin())
    return i if d[i] <= 31 else -1


def measure(n: int, repeats: int) -> dict[str, float]:
    contents = uploads(n, seed=n)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] + _core.allocated_bytes()
    clusters = fill(contents)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] + _core.allocated_bytes()
    tracemalloc.stop()
    words = parse_hashes([c.pdq or "" for c in contents])
    ours, peer = [], []
    for r in range(repeats):  # interleaved: both see the same load
        more = uploads(BATCH, seed=n + 1 + r)
        queries = parse_hashes([c.pdq or "" for c in more])
        t = time.process_time()
        assign(clusters, more, n + r * BATCH)
        ours.append((time.process_time() - t) / BATCH)
        t = time.process_time()
        for q in queries:
            scan(words, q)
        peer.append((time.process_time() - t) / BATCH)
    return {
        "live_uploads": n,
        "clusters": len(clusters),
        "bytes_per_upload": (after - before) / n,
        "index_arrays_bytes_per_upload": clusters.index.nbytes / n,
        "assign_us_median": statistics.median(ours) * 1e6,
        "scan_us_median": statistics.median(peer) * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print("live uploads  clusters  bytes/upload  (index arrays)  assign us  scan us  ratio")
    for n in map(int, args.sizes.split(",")):
        r = measure(n, args.repeats)
        print(
            f"{r['live_uploads']:>12,}  {r['clusters']:>8,}  {r['bytes_per_upload']:>12,.0f}"
            f"  {r['index_arrays_bytes_per_upload']:>14,.0f}  {r['assign_us_median']:>9,.1f}"
            f"  {r['scan_us_median']:>7,.1f}  {r['scan_us_median'] / r['assign_us_median']:>5.1f}x"
        )


if __name__ == "__main__":
    main()
