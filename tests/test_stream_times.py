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
    taken,
)
from streams.settings import Settings
from streams.watermarks import NO_TIME, SourceClock

__all__ = ["tansu"]  # the module-scoped fixture, imported for pytest


def test_a_partition_resumes_the_time_committed_with_its_offset_and_no_other() -> None:
    """A model of the shares reader's checkpoints on the bundled broker: records read,
    checkpoints that write their pairs (every partition held named: the others' as last
    committed, :meth:`KeptTimes.write`) and then commit or fail to (a kill, a rebalance),
    quiet holders writing their pairs again (:meth:`KeptTimes.refresh`), and kills after
    which a new reader goes on from the committed offsets with the times read back from the
    newest records only (:data:`TAIL` of them, as ``read_back`` reads a bounded number).
    After every step, what a new reader would read back is exactly what Apache Kafka's
    commit metadata holds (the model's ``committed_time``: the time committed with each
    committed offset), as the moves models assume (``TwoProcesses``' own
    ``committed_time``; the kill model, ``LocalRun``, resumes through :func:`match`
    itself), for every partition whose offset failed to be committed fewer than
    :data:`TAIL` - 1 times in a row; past that, it may be unknown (till its offset is
    committed again), never another time. Taking the newest record whatever its offset
    would resume a failed commit's time, past records read again."""
    newest_wins: set[int] = set()  # seeds where the newest record is not the committed pair
    bounded = 0  # steps checked on the newest records alone
    for seed in range(300):
        rng = random.Random(seed)
        n = 3
        times = [[rng.randrange(10**6) for _ in range(rng.randrange(1, 40))] for _ in range(n)]
        records: list[bytes] = []
        kept = KeptTimes("t", records.append, lambda: None)
        committed: dict[int, int] = {}
        committed_time: dict[int, int] = {}  # what Kafka's metadata would give back
        pos, newest = [0] * n, [NO_TIME] * n
        failed = [0] * n  # checkpoints failed in a row with each partition's offset
        lost: set[int] = set()  # unknown since a kill after TAIL failed in a row, till committed
        for _ in range(80):
            roll = rng.random()
            if roll < 0.45:  # a batch read
                p = rng.randrange(n)
                read = times[p][pos[p] : pos[p] + rng.randint(1, 5)]
                newest[p] = max([newest[p], *read])
                pos[p] += len(read)
            elif roll < 0.8:  # a checkpoint: its pairs written, then the commit, or a failure
                offsets = {p: pos[p] for p in range(n) if pos[p] and committed.get(p) != pos[p]}
                pairs = taken(offsets, newest.__getitem__)
                kept.write(pairs, held=range(n))
                if rng.random() < 0.7:
                    committed.update(offsets)
                    kept.committed(pairs)
                    for p in offsets:
                        failed[p] = 0
                    lost -= set(offsets)
                    for p in offsets:
                        ts = parse_stream_time(stream_time(newest[p]))
                        if ts is None:
                            committed_time.pop(p, None)
                        else:
                            committed_time[p] = ts
                else:
                    for p in offsets:
                        failed[p] += 1
            elif roll < 0.9:  # a quiet holder's pairs written again
                kept.write({}, held=range(n))
            else:  # a kill: the new reader goes on from the commits, with the times read back
                found = match(records[-TAIL:], committed)
                pos = [committed.get(p, 0) for p in range(n)]
                newest = [found.get(p, NO_TIME) for p in range(n)]
                kept = KeptTimes("t", records.append, lambda: None)
                kept.resumed(committed, found)
                lost |= set(committed_time) - set(found)
                assert all(failed[p] >= TAIL - 1 for p in lost), seed
            assert match(records, committed) == committed_time, seed
            tail = match(records[-TAIL:], committed)
            assert all(committed_time[p] == t for p, t in tail.items()), seed  # never another
            ok = {p for p in committed_time if p not in lost and failed[p] < TAIL - 1}
            assert all(tail.get(p) == committed_time[p] for p in ok), seed
            bounded += len(ok) == len(committed_time)
            latest = {p: (o, t) for value in records for p, (o, t) in decode(value).items()}
            if any(latest[p][1] != committed_time.get(p) for p in committed if p in latest):
                newest_wins.add(seed)
    assert len(newest_wins) > 100  # the counter-rule is wrong in most of the model's runs
    assert bounded > 300 * 75  # nearly every step


#: The newest records the model's readers read back (a worker reads up to READ_LIMIT).
TAIL = 4


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
    reader.note_offsets({1: 3})  # 0, held and committed with a time, is named again
    assert decode(kept.sent[-1]) == {0: (10, 5_000), 1: (3, 7_000)}
    clock.assign([1, 2], 2.0)  # 0 given up: no longer named
    reader.note_offsets({2: 6})
    assert len(kept.sent) == 2  # nothing known (2 has no time yet): nothing written

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
        far, _ = await read_back(reader(), topic, committed, told, window=3)
        near, _ = await read_back(reader(), topic, {0: 11}, told, window=3)
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


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for v in values:  # a record a batch, as a checkpoint writes one
            await producer.send_and_wait(topic, v, partition=0)
    finally:
        await producer.stop()


@pytest.mark.integration
def test_a_restart_after_many_records_reads_a_bounded_number_of_them_back(
    tansu: LocalBroker,
) -> None:
    """Every record a writer makes names every partition it holds (the others with their
    pairs as last committed), so a partition quiet for a long time while another is read is
    found among the newest records, not at the start of the topic (about 86,000 records a
    day: every one was read back). What a read back reads is bounded (``limit``): a
    partition no record in it names is unknown, never guessed."""
    from aiokafka import AIOKafkaConsumer

    from streams.runtime.broker import ensure_topics

    prefix, _ = names()
    topic = f"{prefix}shares-times"
    ensure_topics([tansu.bootstrap], {topic: 1})
    sent: list[bytes] = []
    kept = KeptTimes(topic, sent.append, lambda: None)
    kept.write({0: (1, 100), 1: (5, 500)}, held=[0, 1])
    kept.committed({0: (1, 100), 1: (5, 500)})
    for i in range(2, 800):  # 0 read and committed a second at a time, 1 quiet all along
        kept.write({0: (i, 100 + i)}, held=[0, 1])
        kept.committed({0: (i, 100 + i)})
    old = [encode({0: (1, 100), 2: (7, 700)})]  # a release that named only what it committed
    old += [encode({0: (i, 100 + i)}) for i in range(2, 800)]
    assert sent[-1] == encode({0: (799, 899), 1: (5, 500)})

    def reader() -> Any:
        return AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, fetch_max_wait_ms=25)

    async def run() -> list[tuple[dict[int, int], int]]:
        await _produce(tansu.bootstrap, topic, old + sent)
        return [
            await read_back(reader(), topic, {1: 5}, _never, window=8, limit=100),
            await read_back(reader(), topic, {2: 7}, _never, window=8, limit=100),
            await read_back(reader(), topic, {2: 7}, _never, window=8, limit=2_000),
        ]

    (quiet, read), (beyond, read_beyond), (whole, read_whole) = asyncio.run(run())
    assert quiet == {1: 500}
    assert read <= 8 + 1  # the first window (and the end's batch, read whole)
    assert beyond == {} and 100 <= read_beyond <= 100 + 1  # unknown: no more read
    assert whole == {2: 700} and read_whole == len(old + sent)  # back to the start


def _never(offset: int, value: bytes | None, detail: str) -> None:
    raise AssertionError(f"offset {offset}: {detail}")
