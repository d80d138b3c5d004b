"""The event-time reorder buffer: what holding a record until the watermark passes it costs.

Every routed event goes through :class:`streams.reorder.ReorderBuffer` (compiled,
``rust/core/src/reorder.rs``) in replay and in each clusters partition of a worker:
pushed with its ``(ts, event id)``, released in that order once the watermark
passes it. Its peer, timed in the same run on the same records, is the
structure it replaced: a ``heapq`` of ``(ts, key, record)`` tuples, popped
while the head is at or before the watermark.

The records: ``--records`` keys of simulator-like event ids, event times a
second apart on average with ``--jitter`` ms of disorder, the watermark moved
(to the newest time seen minus ``--lateness``) every ``--every`` records, as a
stream with out-of-order arrivals does; what remains at the end is drained.
Both must release the same records in the same order (checked before timing).

Timed on CPU time (``time.process_time``: the machine is shared), the
collector off, runs interleaved, ``--repeats`` of each; medians, per record.

    python bench/bench_reorder.py               # a few seconds
    python bench/bench_reorder.py --records 1000000 --every 1 --json
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_core import alternated_us  # noqa: E402

from streams.reorder import ReorderBuffer  # noqa: E402

Record = tuple[int, str, object]


def make_records(n: int, jitter_ms: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    out: list[Record] = []
    for i in range(n):
        ts = 1_767_225_600_000 + i * 1000 + rng.randint(-jitter_ms, jitter_ms)
        key = f"e-{rng.getrandbits(48):012x}"
        out.append((ts, key, object()))
    return out


def compiled(records: list[Record], every: int, lateness_ms: int) -> list[object]:
    buf: ReorderBuffer[object] = ReorderBuffer()
    out: list[object] = []
    newest = -1
    for i, (ts, key, item) in enumerate(records, 1):
        buf.push(ts, key, item)
        newest = max(newest, ts)
        if i % every == 0 and buf.next_ms <= newest - lateness_ms:
            out += buf.release(newest - lateness_ms)
    out += buf.drain()
    return out


def heap_of_tuples(records: list[Record], every: int, lateness_ms: int) -> list[object]:
    heap: list[Record] = []
    out: list[object] = []
    newest = -1
    for i, rec in enumerate(records, 1):
        heapq.heappush(heap, rec)
        newest = max(newest, rec[0])
        if i % every == 0:
            wm = newest - lateness_ms
            while heap and heap[0][0] <= wm:
                out.append(heapq.heappop(heap)[2])
    while heap:
        out.append(heapq.heappop(heap)[2])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--every", type=int, default=50, help="records between watermark moves")
    ap.add_argument("--jitter", type=int, default=5_000, help="ms of disorder in event time")
    ap.add_argument("--lateness", type=int, default=60_000, help="allowed lateness, ms")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON line only")
    args = ap.parse_args()
    if min(args.records, args.every, args.repeats) < 1 or min(args.jitter, args.lateness) < 0:
        ap.error("--records, --every and --repeats must be positive, the times not negative")

    records = make_records(args.records, args.jitter, args.seed)
    runs: dict[str, Callable[[], list[object]]] = {
        "heapq": lambda: heap_of_tuples(records, args.every, args.lateness),
        "compiled": lambda: compiled(records, args.every, args.lateness),
    }
    first = [fn() for fn in runs.values()]
    if any(out != first[0] for out in first):
        sys.exit("the compiled buffer and the heap released different orders")
    us = alternated_us(runs, args.repeats, args.records)
    result = {
        "records": args.records,
        "every": args.every,
        "repeats": args.repeats,
        "us_per_record": {k: round(v, 3) for k, v in us.items()},
        "compiled_vs_heapq": round(us["compiled"] / us["heapq"], 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.records} records, watermark every {args.every}, medians of {args.repeats}:")
    for name, v in us.items():
        print(f"  {name:9} {v:6.3f} us/record  ({v / us['heapq']:.2f}x heapq)")


if __name__ == "__main__":
    main()
