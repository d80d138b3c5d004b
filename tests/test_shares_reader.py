"""The shares reader's bounds, without Kafka: what it reads a backlog up to (see
``streams.runtime.shares_reader.held_back``; on Apache Kafka: test_backlog_integration.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from streams.runtime.shares_reader import (
    HEARD_AHEAD_MS,
    NEAR_BOUND_BATCH,
    PENDING_RESUME_FILL,
    SharesReader,
    held_back,
)
from streams.settings import Settings
from streams.watermarks import NO_TIME


def reader(heard: int | None, resolvers: dict[int, Any], watermarks: list[int]) -> SharesReader:
    detectors = {
        k: SimpleNamespace(watermark=SimpleNamespace(value=wm), pending=0)
        for k, wm in enumerate(watermarks)
    }
    topology = SimpleNamespace(heard=lambda: heard, resolvers=resolvers, detectors=detectors)
    return SharesReader(Settings(lateness_ms=60_000), topology, None)  # type: ignore[arg-type]


def test_a_worker_without_resolve_partitions_reads_no_further_than_its_clusters_heard() -> None:
    """Before, :meth:`Topology.heard` was ``None`` on a worker holding no resolve partition
    and nothing bounded its reading; now its clusters partitions' watermark does."""
    r = reader(None, {}, [1_000_000, 900_000])
    assert r.heard() == 900_000 + 60_000
    newest = {0: 900_000, 1: 960_000 + HEARD_AHEAD_MS + 1}
    assert held_back(newest, [0, 1], r.heard(), 0.0) == {1}


def test_the_resolve_partitions_heard_comes_first_and_nothing_known_bounds_nothing() -> None:
    assert reader(5_000, {}, [1_000]).heard() == 5_000
    assert reader(None, {0: object()}, [1_000]).heard() is None  # every input idle
    assert reader(None, {}, []).heard() is None  # neither kind of partition held
    assert reader(None, {}, [1_000, NO_TIME]).heard() is None  # a watermark not known yet


def test_heard_and_pending_to_take_the_lowest_watermark_their_own_way_on_an_unknown_one() -> None:
    """One method takes the clusters partitions' lowest watermark for both bounds; they
    differ on one not known yet (a partition just taken over): *heard* does not bound the
    reading until every one is known, the *pending* bound goes by the known ones."""
    r = reader(None, {}, [1_000, NO_TIME, 700])
    for d in r.topology.detectors.values():
        d.pending = r.settings.max_pending  # past the bound: pending_to says how far
    assert r.heard() is None
    assert r.pending_to() == 700 + 60_000 + HEARD_AHEAD_MS
    assert r.lowest_watermark(unknown_is_lowest=False) == 700
    assert r.lowest_watermark(unknown_is_lowest=True) == NO_TIME
    unknown = reader(None, {}, [NO_TIME, NO_TIME])
    for d in unknown.topology.detectors.values():
        d.pending = unknown.settings.max_pending
    assert unknown.pending_to() == NO_TIME and unknown.heard() is None
    known = reader(None, {}, [1_000, 700])
    assert known.heard() == 700 + 60_000
    assert known.pending_to() is None  # nothing waits past the bound: no bound


def test_a_batch_is_read_whole_unless_one_could_overflow_a_held_store() -> None:
    """The reader asks the consumer for a batch of ``VIRALWATCH_BATCH_SIZE`` records, and
    for :data:`NEAR_BOUND_BATCH` at most once a whole batch could fill a held store past
    its bound; what waits for the watermark, even at its bound, no longer cuts the batch
    (its rule holds until it has fallen below :data:`PENDING_RESUME_FILL` of the bound)."""
    asked: list[int] = []

    async def getmany(timeout_ms: int, max_records: int) -> dict[Any, Any]:
        asked.append(max_records)
        return {}

    fill = [0.0]
    detector = SimpleNamespace(watermark=SimpleNamespace(value=NO_TIME), pending=0)
    topology = SimpleNamespace(detectors={0: detector}, held_fill=lambda: fill[0])
    settings = Settings(batch_size=4_000, max_pending=50_000, max_held=100_000)
    r = SharesReader(settings, topology, None)  # type: ignore[arg-type]
    r.consumer = SimpleNamespace(getmany=getmany)
    asyncio.run(r.poll(1))
    detector.pending = 49_000  # a batch of 4,000 passes 50,000: by one batch at most
    asyncio.run(r.poll(1))
    detector.pending = 10_000
    fill[0] = 0.75  # the held rule reads the slowest partition alone; a batch still fits
    asyncio.run(r.poll(1))
    fill[0] = 0.97  # a batch of 4,000 could overflow the store
    asyncio.run(r.poll(1))
    assert asked == [4_000, 4_000, 4_000, NEAR_BOUND_BATCH]


def test_the_pending_rule_holds_from_the_bound_down_to_the_lower_mark() -> None:
    """From ``VIRALWATCH_MAX_PENDING`` events waiting, :meth:`SharesReader.pending_to`
    bounds the reading, and goes on bounding it until they fall below
    :data:`PENDING_RESUME_FILL` of the bound: before, the rule let go as soon as the
    watermark freed a few events, and pending sat at the bound a small batch at a time."""
    r = reader(None, {}, [1_000])
    (d,) = r.topology.detectors.values()
    bound = r.settings.max_pending
    low = int(bound * PENDING_RESUME_FILL)
    seen = []
    for pending in (0, bound - 1, bound, bound - 1, low, low - 1, bound - 1, bound + 5):
        d.pending = pending
        seen.append(r.pending_to())
    to = 1_000 + 60_000 + HEARD_AHEAD_MS
    assert seen == [None, None, to, to, to, None, None, to]


class _Clock:
    def __init__(self, newest: dict[int, int]) -> None:
        self.times = newest
        self.assigned = set(newest)

    def ahead(self, backlogged: list[int], skew_ms: int) -> set[int]:
        return set()

    def newest(self, p: int) -> int:
        return self.times[p]


class _Consumer:
    def __init__(self, partitions: list[int]) -> None:
        self.tps = {p: SimpleNamespace(partition=p) for p in partitions}
        self.stopped: set[int] = set()

    def assignment(self) -> list[Any]:
        return list(self.tps.values())

    def paused(self) -> list[Any]:
        return [self.tps[p] for p in self.stopped]

    def pause(self, *tps: Any) -> None:
        self.stopped |= {tp.partition for tp in tps}

    def resume(self, *tps: Any) -> None:
        self.stopped -= {tp.partition for tp in tps}


def test_the_time_a_reader_stands_goes_to_the_rule_holding_its_slowest_partition(
    monkeypatch: Any,
) -> None:
    """What the stats record says holds a backlog's reading back: the time with every
    partition it has records for paused, by the rule of ``held_back`` that holds the
    slowest (the others wait for that one); reading time goes to none."""
    r = reader(None, {}, [0])
    heard: list[int | None] = [0]
    clock = _Clock({0: 10_000, 1: 20_000})
    r.topology = SimpleNamespace(  # type: ignore[assignment]
        heard=lambda: heard[0],
        resolvers={0: object()},
        detectors=r.topology.detectors,
        held_fill=lambda: 0.0,
        ingest=SimpleNamespace(clock=clock),
    )
    r.consumer = _Consumer([0, 1])
    r.backlogged = [0, 1]
    now = [100.0]
    monkeypatch.setattr("streams.runtime.shares_reader.time.monotonic", lambda: now[0])
    r.pace()  # 10 s read, 0 heard: both within the window, reading
    assert r.consumer.stopped == set() and r.stopped_s == {}
    clock.times[0] = clock.times[1] = HEARD_AHEAD_MS + 1  # both past what was heard
    now[0] = 101.0
    r.pace()
    assert r.consumer.stopped == {0, 1}
    now[0] = 101.5
    r.pace()  # still standing: one stop
    heard[0] = HEARD_AHEAD_MS  # heard more (an agent took the other worker's records):
    now[0] = 102.0
    r.heard_more()  # reading again at once, not after the reader's wait for a batch
    assert r.consumer.stopped == set() and r.paused == []
    assert r.stopped_s == {"heard": 1.0} and r.stops == {"heard": 1}
    for d in r.topology.detectors.values():
        d.pending = r.settings.max_pending  # what waits for the watermark at its bound
    clock.times[0] = clock.times[1] = heard[0] = 100_000  # past the watermark (0), the
    now[0] = 103.0  # lateness and the window: held by the pending rule alone
    r.pace()
    assert r.consumer.stopped == {0, 1}
    now[0] = 103.25
    r.pace()
    assert r.stopped_s == {"heard": 1.0, "pending": 0.25} and r.stops["pending"] == 1


def test_the_index_s_owner_hears_the_other_workers_reading_one_hop_away() -> None:
    """:meth:`Topology.heard` at the index's owner is its resolve partitions' marks of the
    inputs, as at every other worker. It was also held to its peers' input watermarks as
    they had sent them (``inputs``): with two workers, its own reading heard by the
    other worker and sent back, a round trip on itself on which it stood while the other
    worker waited one hop on it (the two read in turns; docs/compiled-core.md, "Two
    workers: the owner one hop away again, its commits behind, what crosses, counted")."""
    from streams.runtime.topology import Topology
    from streams.stages import INDEX_PARTITION

    def partition(marks: dict[int, int], inputs: dict[int, int]) -> SimpleNamespace:
        watermark = SimpleNamespace(
            marks=lambda: {p: (t, False) for p, t in marks.items()},
            sources=4,
            value=min(marks.values()) - 60_000,
        )
        return SimpleNamespace(watermark=watermark, inputs=inputs)

    read = {0: 500_000, 1: 480_000, 2: 510_000, 3: 490_000}
    behind = {1: 300_000, 2: 500_000, 3: 300_000}  # the peers' input watermarks heard
    owner = SimpleNamespace(
        resolvers={INDEX_PARTITION: partition(read, behind), 2: partition(read, {})},
        hand_over=SimpleNamespace(resolve=SimpleNamespace(held={INDEX_PARTITION, 2})),
        settings=SimpleNamespace(lateness_ms=60_000, partitions=4),
    )
    assert Topology.heard(owner) == 480_000  # type: ignore[arg-type]  # not 300,000 + 60,000
    newest = {0: 500_000, 2: 510_000}
    assert held_back(newest, [0, 2], Topology.heard(owner), 0.0) == set()  # type: ignore[arg-type]
    owner.resolvers[2] = partition({**read, 1: 400_000}, {})
    assert Topology.heard(owner) == 400_000  # type: ignore[arg-type]
    assert held_back(newest, [0, 2], Topology.heard(owner), 0.0) == {0, 2}  # type: ignore[arg-type]
