"""What writing a produce request to the connection costs: aiokafka's own ``send`` against
the worker's one-join ``send`` (``faust_adapter._send_joined``).

A request of eight record batches (``--batch`` bytes each, two topics of four
partitions, as a worker's state logs go out) is sent ``--sends`` times to a
connection whose writer keeps nothing, each way in turn, ``--repeats`` rounds;
the time a request is printed for each (the median of the rounds). Run under
callgrind with ``--only aiokafka|joined`` and ``--sends 0`` for the start-up
alone, the difference over the sends is each way's instructions::

    python bench/bench_send.py                       # timeit, both ways
    valgrind --tool=callgrind python bench/bench_send.py --only joined --sends 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka.conn import AIOKafkaConnection
from aiokafka.protocol.produce import ProduceRequest

from streams.runtime import faust_adapter

WAYS: dict[str, Callable[..., Any]] = {
    "aiokafka": faust_adapter.AIOKAFKA_SEND,
    "joined": faust_adapter._send_joined,
}


class _Writer:
    """A stream writer that keeps the size of what it was given, not the bytes."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size = len(data)

    def drain(self) -> None:
        return None


def _request(batch: int) -> Any:
    batches = [os.urandom(batch) for _ in range(8)]
    return ProduceRequest(
        None,
        -1,
        30_000,
        [
            ("resolve-log", [(p, batches[p]) for p in range(4)]),
            ("cluster-log", [(p, batches[4 + p]) for p in range(4)]),
        ],
    )


def _sends(conn: Any, send: Callable[..., Any], request: Any, n: int) -> float:
    """Seconds a request over ``n`` sends (what each returns, awaited by no one, closed)."""
    start = time.perf_counter()
    for _ in range(n):
        send(conn, request, True).close()
    conn._requests.clear()
    return (time.perf_counter() - start) / n if n else 0.0


async def _run(args: argparse.Namespace) -> dict[str, list[float]]:
    conn: Any = AIOKafkaConnection("127.0.0.1", 9, client_id="bench-send")
    conn._writer = _Writer()
    conn._versions = {0: (0, 7)}
    request = _request(args.batch)
    ways = [args.only] if args.only else list(WAYS)
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(args.repeats):
        for way in ways:
            times[way].append(_sends(conn, WAYS[way], request, args.sends))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200_000, help="bytes a record batch")
    parser.add_argument("--sends", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=sorted(WAYS))
    args = parser.parse_args()
    times = asyncio.run(_run(args))
    if args.sends:
        for way, seconds in times.items():
            print(
                f"{way:9s} {statistics.median(seconds) * 1e3:8.3f} ms a request of "
                f"{8 * args.batch:,} B (median of {args.repeats}, {args.sends} sends each)"
            )


if __name__ == "__main__":
    main()
