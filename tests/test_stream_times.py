"""The ``shares`` partitions' newest event times where the broker drops a commit's metadata
(the bundled broker): each written with its offset before the offset is committed, and a
reader taking a partition over resumes the time written with the committed offset, never
one written for a commit that failed (``streams.runtime.stream_times``)."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka_helpers import names, tansu

from streams.runtime.broker import LocalBroker
from streams.runtime.shares_reader import SharesReader, parse_stream_time, stream_time
from streams.runtime.stream_times import (
    BAD_RECORD,
    KeptTimes,
    bad_records,
    decode,
    encode,
    match,
    read_back,
)
from streams.settings import Settings
from streams.watermarks import NO_TIME, SourceClock

__all__ = ["tansu"]  # the module-scoped fixture, imported for pytest


def test_a_partition_resumes_the_time_committed_with_its_offset_and_no_other() -> None:
    """A model of the shares reader's checkpoints on the bundled broker: records read,
    checkpoints that write their pairs and then commit or fail to (a kill, a rebalance),
    and kills after which a new reader goes on from the committed offsets with the times
    read back. After every step, what a new reader would read back is exactly what Apache
    Kafka's commit metadata holds (the model's ``committed_time``: the time committed with
    each committed offset), as the moves models assume (``TwoProcesses``' own
    ``committed_time``; the kill model, ``LocalRun``, resumes through :func:`match`
    itself). Taking the newest record whatever its offset
    would resume a failed commit's time, past records read again."""
    newest_wins: set[int] = set()  # seeds where the newest record is not the committed pair
    for seed in range(300):
        rng = random.Random(seed)
        n = 3
        times = [[rng.randrange(10**6) for _ in range(rng.randrange(1, 40))] for _ in range(n)]
        records: list[bytes] = []
        committed: dict[int, int] = {}
        committed_time: dict[int, int] = {}  # what Kafka's metadata would give back
        pos, newest = [0] * n, [NO_TIME] * n
        for _ in range(80):
            roll = rng.random()
            if roll < 0.5:  # a batch read
                p = rng.randrange(n)
                read = times[p][pos[p] : pos[p] + rng.randint(1, 5)]
                newest[p] = max([newest[p], *read])
                pos[p] += len(read)
            elif roll < 0.85:  # a checkpoint: its pairs written, then the commit, or a failure
                offsets = {p: pos[p] for p in range(n) if pos[p] and committed.get(p) != pos[p]}
                pairs = {p: (o, newest[p]) for p, o in offsets.items() if newest[p] != NO_TIME}
                if pairs:
                    records.append(encode(pairs))
                if rng.random() < 0.7:
                    committed.update(offsets)
                    for p in offsets:
                        ts = parse_stream_time(stream_time(newest[p]))
                        if ts is None:
                            committed_time.pop(p, None)
                        else:
                            committed_time[p] = ts
            else:  # a kill: the new reader goes on from the commits, with the times read back
                found = match(records, committed)
                pos = [committed.get(p, 0) for p in range(n)]
                newest = [found.get(p, NO_TIME) for p in range(n)]
            assert match(records, committed) == committed_time, seed
            latest = {p: (o, t) for value in records for p, (o, t) in decode(value).items()}
            if any(latest[p][1] != committed_time.get(p) for p in committed if p in latest):
                newest_wins.add(seed)
    assert len(newest_wins) > 100  # the counter-rule is wrong in most of the model's runs


@given(st.binary(max_size=200))
def test_a_record_of_any_bytes_is_read_or_refused_never_anything_else(value: bytes) -> None:
    try:
        pairs = decode(value)
    except ValueError as exc:
        assert str(exc).startswith("not a times record")
        return
    assert all(o >= 0 and t >= 0 for o, t in pairs.values())


@given(
    st.dictionaries(
        st.integers(0, 1000), st.tuples(st.integers(0, 2**62), st.integers(0, 2**62)), max_size=8
    )
)
def test_a_record_reads_back_what_was_written(pairs: dict[int, tuple[int, int]]) -> None:
    assert decode(encode(pairs)) == pairs


class Coordinator:
    def __init__(self, found: dict[Any, Any]) -> None:
        self.found = found

    async def fetch_committed_offsets(self, tps: list[Any]) -> dict[Any, Any]:
        return {tp: self.found[tp] for tp in tps if tp in self.found}


class Kept(KeptTimes):
    """The times' topic, its records kept here, its read back answered from ``times``."""

    def __init__(self, times: dict[int, int]) -> None:
        sent: list[bytes] = []
        super().__init__("app-shares-times", sent.append, lambda: None)
        self.sent = sent
        self.times = times
        self.asked: list[dict[int, int]] = []

    async def read(self, committed: Any) -> dict[int, int]:
        self.asked.append(dict(committed))
        return {p: t for p, t in self.times.items() if p in committed}


def test_the_reader_commits_the_noted_times_and_resumes_from_the_kept_ones_when_dropped() -> None:
    """The pairs are noted as the checkpoint takes its offsets, written to the times' topic
    (where kept) and committed as metadata; a reader assigned partitions resumes each from
    the metadata, and only those whose metadata came back empty from the times' topic."""
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    clock = SourceClock(1.0)
    clock.assign([0, 1, 2], 0.0)
    clock.observe(0, 5_000, 0.0)
    clock.observe(1, 7_000, 0.0)
    topology = SimpleNamespace(ingest=SimpleNamespace(clock=clock))
    kept = Kept({1: 9_000, 2: 4_000})
    reader = SharesReader(Settings(topic_prefix="t."), topology, None, kept_times=kept)  # type: ignore[arg-type]
    committed: list[dict[Any, Any]] = []

    async def commit(offsets: dict[Any, Any]) -> None:
        committed.append(offsets)

    tp = [TopicPartition("t.shares", p) for p in range(3)]
    reader.consumer = SimpleNamespace(commit=commit)
    reader.note_offsets({0: 10, 2: 4})
    clock.observe(0, 6_000, 1.0)  # read after the offsets were taken: not with them
    assert [decode(v) for v in kept.sent] == [{0: (10, 5_000)}]  # 2 has no time yet
    asyncio.run(reader.commit_offsets({0: 10, 2: 4}))
    assert committed == [{tp[0]: OffsetAndMetadata(10, "t=5000"), tp[2]: OffsetAndMetadata(4, "")}]

    again = SourceClock(1.0)
    topology.ingest = SimpleNamespace(clock=again)
    found = {tp[0]: OffsetAndMetadata(10, "t=5000"), tp[1]: OffsetAndMetadata(3, "")}
    reader.consumer = SimpleNamespace(_coordinator=Coordinator(found))
    asyncio.run(reader.resume_stream_times(tp))
    assert kept.asked == [{1: 3}]  # 2 was never committed
    assert (again.newest(0), again.newest(1), again.newest(2)) == (5_000, 9_000, NO_TIME)


@pytest.mark.integration
def test_the_times_are_read_back_from_the_bundled_broker_a_window_at_a_time(
    tansu: LocalBroker,
) -> None:
    """On the bundled broker (whose end offset is its last batch's base + 1): records sent
    some a batch, read back from the newest in windows of 3; each partition gets the time of
    the last record naming its committed offset, found however far back it is."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.runtime.broker import ensure_topics

    prefix, _ = names()
    topic = f"{prefix}shares-times"
    ensure_topics([tansu.bootstrap], {topic: 1})
    values = [encode({0: (1, 100), 1: (4, 400)}), encode({0: (2, 150)})]
    values += [encode({0: (3 + i, 200 + i)}) for i in range(10)]  # 1 committed at 4 long ago
    values[5] = b"damaged"  # (0 at 6)
    values += [encode({0: (12, 500), 2: (9, 900)})]  # 2's commit failed (committed at 8)

    async def run() -> tuple[dict[int, int], dict[int, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, linger_ms=100)
        await producer.start()
        try:
            for i in range(0, len(values), 4):  # four a batch
                sent = [await producer.send(topic, v, partition=0) for v in values[i : i + 4]]
                await asyncio.gather(*sent)
        finally:
            await producer.stop()

        def reader() -> Any:
            return AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, fetch_max_wait_ms=25)

        committed = {0: 12, 1: 4, 2: 8}
        far = await read_back(reader(), topic, committed, told, window=3)
        near = await read_back(reader(), topic, {0: 11}, told, window=3)
        return far, near

    bad: list[tuple[int, bytes | None]] = []

    def told(offset: int, value: bytes | None, detail: str) -> None:
        bad.append((offset, value))

    far, near = asyncio.run(run())
    assert far == {0: 500, 1: 400}
    assert near == {0: 208}
    assert bad == [(5, b"damaged")]  # told with its offset; the records around it read


def test_a_damaged_record_is_counted_logged_and_dead_lettered_and_the_others_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record on the times' topic that is not one (damaged, another writer's) is never
    dropped silently: the worker's ``on_bad`` counts it (``bad_times_record``, the
    rejected metric), logs one line and dead-letters its bytes; the records around it are
    read as ever."""
    from streams.stats import Stats

    stats = Stats()
    letters: list[Any] = []
    bad = bad_records("app-shares-times", stats, letters.extend)
    values = [encode({0: (10, 100)}), b'{"0": [11', encode({1: (4, 40)}), b'{"0": "x"}']
    with caplog.at_level("WARNING"):
        found = match(values, {0: 10, 1: 4}, bad, at=[7, 8, 9, 10])
    assert found == {0: 100, 1: 40}
    assert stats.rejected == {BAD_RECORD: 2}
    assert [(d.source.offset, d.rejection.reason, d.rejection.raw) for d in letters] == [
        (8, BAD_RECORD, b'{"0": [11'),
        (10, BAD_RECORD, b'{"0": "x"}'),
    ]
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        "app-shares-times offset 8: skipped, not a times record: not JSON (bad_times_record)",
        "app-shares-times offset 10: skipped, not a times record: partition 0's pair is not "
        "[offset, time] (bad_times_record)",
    ]
    with pytest.raises(ValueError, match="record 1"):  # no on_bad: never silent either
        match(values, {0: 10})
