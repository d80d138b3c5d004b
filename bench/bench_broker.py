"""How the bundled broker's produce -> fetch latency grows with the record batches of a partition.

The latency of the streaming pipeline on the bundled broker grows over a run
(``bench/bench_pipeline.py`` reports each half), and so does a plain
consumer's. This measures why: one partition is filled with single-record
batches (one acknowledged send each, as a producer at a low rate makes
them), and every ``--step`` batches the time from one more send to its fetch
by a consumer waiting at the end is timed (median of 20), beside the same
on a partition of another topic that stays small. Production Kafka finds an
offset through an index and does not slow down this way.

    python bench/bench_broker.py                 # about 20 s
    python bench/bench_broker.py --steps 10 --step 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.runtime.broker import ensure_topics, start_local_broker  # noqa: E402


async def _latency_ms(producer: Any, consumer: Any, topic: str, n: int = 20) -> float:
    """Median ms from a send (acknowledged) to its fetch, the consumer waiting at the end."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await (await producer.send(topic, b"probe"))
        while not await consumer.getmany(timeout_ms=1000):
            pass
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def run(bootstrap: str, steps: int, step: int) -> list[dict[str, Any]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    ensure_topics([bootstrap], {"grows": 1, "small": 1})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    readers = {}
    await producer.start()
    try:
        for topic in ("grows", "small"):
            c = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=25)
            await c.start()
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            await c.seek_to_end(tp)
            readers[topic] = c
        rows = []
        batches = 0
        for _ in range(steps):
            for _ in range(step):
                await (await producer.send("grows", b"x" * 200))  # one batch each
            batches += step
            while await readers["grows"].getmany(timeout_ms=100):
                pass  # the consumer is at the end again
            row = {
                "batches": batches,
                "grows_ms": await _latency_ms(producer, readers["grows"], "grows"),
                "small_ms": await _latency_ms(producer, readers["small"], "small"),
            }
            print(
                f"{batches:>7,} batches: send -> fetch {row['grows_ms']:5.1f} ms "
                f"(a small partition beside it: {row['small_ms']:5.1f} ms)",
                flush=True,
            )
            rows.append(row)
        return rows
    finally:
        await producer.stop()
        for c in readers.values():
            await c.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--step", type=int, default=3000)
    args = ap.parse_args()
    broker = start_local_broker()
    try:
        rows = asyncio.run(run(broker.bootstrap, args.steps, args.step))
    finally:
        broker.stop()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
