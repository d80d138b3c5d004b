"""A backlog on Apache Kafka, read by one worker and by two: backpressure, never loss.

Every event is on the ``shares`` topic before a worker starts, so the reader can
take tens of thousands of records a second, far more than the stages after it
hold at once. Reshares wait for their parents in a bounded store
(``VIRALWATCH_MAX_HELD``, lowered here so that a small backlog finds the bound);
reading must slow down when it fills, never refuse a valid reshare
(``orphan_overflow``). Before the reader held back (``shares_reader.held_back``),
one worker refused thousands of this backlog's reshares in its first seconds and
its alerts were not ``replay``'s.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka_helpers import (
    TopicReader,
    WorkerProcess,
    latest_stats,
    produce_lines,
    worker_env,
    workers,
)
from test_streaming_integration import IN_TIME, Expected, assert_exactly_once, setup, wait_done

from streams.runtime.broker import RunningBroker
from streams.runtime.shares_reader import HEARD_AHEAD_MS
from streams.settings import Settings
from streams.simulate import Scenario, simulate, write_bank

pytestmark = pytest.mark.integration

#: About 150,000 events over 30 minutes of event time, every one in time.
SCALE = 5.0
#: Reshares held per worker, a tenth of the default (2,500 per resolve partition): about
#: twice what the allowed lateness keeps waiting at once in this backlog.
MAX_HELD = 10_000
#: Events waiting for the watermark per worker (``VIRALWATCH_MAX_PENDING``), a
#: twenty-fifth of the default. With no such bound two workers kept 12,000-15,000 each
#: waiting at once (one worker about 6,000: its watermark trails its reading by the
#: allowed lateness, no more).
MAX_PENDING = 2_000


def pending_bound(lines: list[bytes], s: Settings) -> int:
    """What may wait for the watermark in a worker: the bound, and what must wait whatever
    it is (the allowed lateness and the reader's window past the watermark; all of it, a
    worker's clusters partitions take events from every worker's reading)."""
    return MAX_PENDING + most_in_window(lines, s.lateness_ms + HEARD_AHEAD_MS)


def most_in_window(lines: list[bytes], window_ms: int) -> int:
    """The most events of ``lines`` in any ``window_ms`` of event time: what a clusters
    partition must hold whatever the bound (the reader still reads the slowest input that
    far past the watermark, for it to move on)."""
    ts = []
    for line in lines:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            if isinstance(t := orjson.loads(line).get("ts"), int):
                ts.append(t)
    ts.sort()
    return max((bisect.bisect_right(ts, t + window_ms) - i for i, t in enumerate(ts)), default=0)


@pytest.fixture(scope="module")
def backlog(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], Path, Expected]:
    sim = simulate(Scenario(seed=11, **{**IN_TIME, "background_per_minute": 300.0}, scale=SCALE))
    bank_path = tmp_path_factory.mktemp("backlog") / "bank.csv"
    write_bank(sim.bank, bank_path)
    return sim.lines, bank_path, Expected(sim.lines, sim.bank)


@contextlib.contextmanager
def stats_kept(broker: RunningBroker, s: Settings, path: Path) -> Iterator[None]:
    """The workers' stats time line written to ``path`` at the end, passed or failed (a
    timeout prints only each worker's last record)."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            stats = TopicReader(broker, s.topic("stats"))
            while stats.poll(0.5):
                pass
            path.write_bytes(b"".join(r.value + b"\n" for r in stats.records))
            stats.close()


def most_pending(stats: TopicReader, settle: int = 2) -> dict[str, int]:
    """Each worker's most events waiting for the watermark, over its stats records from
    the ``settle``-th after it was last given partitions (a clusters partition taken
    over comes back with the events its previous owner had waiting, and the start reads
    before any watermark is known: what the bound cannot help)."""
    while stats.poll(0.5):
        pass  # to the topic's end
    timeline: dict[str, list[tuple[Any, int]]] = {}
    for r in stats.records:
        d = orjson.loads(r.value)
        timeline.setdefault(d["worker"], []).append((d.get("partitions"), d.get("pending") or 0))
    out: dict[str, int] = {}
    for worker, records in timeline.items():
        final = records[-1][0]
        given = len(records)  # the first record with the partitions it ended with
        while given > 0 and records[given - 1][0] == final:
            given -= 1
        out[worker] = max((k for _, k in records[given + settle :]), default=0)
    return out


def refused(procs: tuple[WorkerProcess, ...], stats: TopicReader) -> dict[str, int]:
    """Each worker's reshares refused for a full held store, as its last stats record says."""
    return {
        w: d.get("stats", {}).get("rejected", {}).get("orphan_overflow", 0)
        for w, d in latest_stats(stats.records).items()
    }


@pytest.mark.parametrize("n", [1, 2])
def test_a_backlog_is_read_with_backpressure_and_nothing_refused(
    broker: RunningBroker, tmp_path: Path, backlog: tuple[list[bytes], Path, Expected], n: int
) -> None:
    lines, bank_path, expected = backlog
    assert len(lines) > 100_000 and len(expected.alerts) >= 10
    read_within_bounds(
        broker, tmp_path, lines, bank_path, expected, n, VIRALWATCH_MAX_HELD=MAX_HELD
    )


def read_within_bounds(
    broker: RunningBroker,
    tmp_path: Path,
    lines: list[bytes],
    bank_path: Path,
    expected: Expected,
    n: int,
    **env: int,
) -> None:
    """``n`` workers read ``lines`` from a backlog (keyed by post): nothing refused, the
    events waiting for the watermark within :func:`pending_bound`, ``replay``'s alerts and
    takedown requests exactly once."""
    s = setup(broker, tmp_path, bank_path)
    produce_lines(broker, s.topic("shares"), lines, keying="post")
    settings = {"VIRALWATCH_MAX_PENDING": MAX_PENDING, **env}
    wenv = worker_env(s, **{k: str(v) for k, v in settings.items()})
    procs = tuple(WorkerProcess(wenv, tmp_path / f"worker-{i}.log") for i in range(n))
    started = time.monotonic()
    with workers(*procs), stats_kept(broker, s, tmp_path / "stats.jsonl"):
        alerts, actions = wait_done(broker, s, expected, procs, timeout=150.0)
        stats = TopicReader(broker, s.topic("stats"))
        stats.until(lambda r: len(latest_stats(r)) >= n, 20, "every worker's stats")
        overflow = refused(procs, stats)
        pending = most_pending(stats)
        stats.close()
    took = time.monotonic() - started
    assert not any(overflow.values()), f"reshares refused: {overflow} ({took:.0f} s)"
    bound = pending_bound(lines, s)
    assert all(0 < k <= bound for k in pending.values()), (
        f"waiting at most: {pending}, bound {bound} ({took:.0f} s)"
    )
    assert_exactly_once(alerts, expected.alerts, "alerts")
    assert_exactly_once(actions, expected.actions, "takedown requests")


#: Reshares of posts that never come, over the backlog's span (scaled by SCALE: 200): each
#: holds its resolve partition's progress until its peers' progress passes it, so the
#: clusters watermark trails what is read by far more than the allowed lateness.
ORPHANS = 40


def test_orphans_in_a_backlog_keep_what_waits_bounded(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """Two workers, a backlog with a flood of orphans: the events waiting for the
    watermark stay within ``VIRALWATCH_MAX_PENDING`` (and what must wait whatever it is),
    nothing refused, ``replay``'s alerts. Before the *pending* rule of
    ``shares_reader.held_back`` each worker had 45,000 waiting (the whole backlog read
    ahead of a watermark held by one orphan after another), against a bound of 8,000."""
    sim = simulate(
        Scenario(
            seed=13, **{**IN_TIME, "background_per_minute": 300.0, "orphans": ORPHANS}, scale=SCALE
        )
    )
    bank_path = tmp_path / "bank.csv"
    write_bank(sim.bank, bank_path)
    read_within_bounds(broker, tmp_path, sim.lines, bank_path, Expected(sim.lines, sim.bank), 2)
