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
    PERIOD_S,
    KeptTimes,
    bad_records,
    decode,
    encode,
    generation_of,
    generation_topic,
    generations,
    match,
    read_back,
    taken,
    topics,
)
from streams.settings import Settings
from streams.watermarks import NO_TIME, SourceClock

__all__ = ["tansu"]  # the module-scoped fixture, imported for pytest


def test_a_partition_resumes_the_time_committed_with_its_offset_and_no_other() -> None:
    """A model of the shares reader's checkpoints on the bundled broker: records read,
    checkpoints that write their pairs (every partition held named: the others' as last
    committed, :meth:`KeptTimes.write`) and then commit or fail to (a kill, a rebalance),
    quiet holders writing their pairs again (:meth:`KeptTimes.refresh`), the wall clock
    passing into new generations of the topic and the old ones dropped
    (:meth:`KeptTimes.drop_old`), and kills, each losing what no commit's flush had made
    durable (with half the odds: a kill during a rotation loses the new generation's first
    record), after which a new reader goes on from the committed offsets with the times
    read back, newest generation first, the newest records only (:data:`TAIL` of each, as
    ``read_back`` reads a bounded number). After every step, what a new reader would read
    back is exactly what Apache Kafka's commit metadata holds (the model's
    ``committed_time``: the time committed with each committed offset), as the moves
    models assume (``TwoProcesses``' own ``committed_time``; the kill model, ``LocalRun``,
    resumes through :func:`match` itself), for every partition whose offset failed to be
    committed fewer than :data:`TAIL` - 1 times in a row; past that, it may be unknown
    (till its offset is committed again), never another time; and once a rotation's drop
    is done, no generation before the settled one it kept is on the broker. Taking the
    newest record whatever its offset would resume a failed commit's time, past records
    read again."""
    newest_wins: set[int] = set()  # seeds where the newest record is not the committed pair
    bounded = 0  # steps checked on the newest records alone
    dropped = 0  # old generations dropped
    for seed in range(300):
        rng = random.Random(seed)
        cuts = ROTATING if seed % 2 else STEADY  # the steps' odds
        n = 3
        times = [[rng.randrange(10**6) for _ in range(rng.randrange(1, 40))] for _ in range(n)]
        broker = ModelBroker()
        topics = broker.topics
        kept = broker.kept()
        committed: dict[int, int] = {}
        committed_time: dict[int, int] = {}  # what Kafka's metadata would give back
        pos, newest = [0] * n, [NO_TIME] * n
        failed = [0] * n  # checkpoints failed in a row with each partition's offset
        lost: set[int] = set()  # unknown since a kill after TAIL failed in a row, till committed
        for _ in range(80):
            roll = rng.random()
            if roll < cuts[0]:  # a batch read
                p = rng.randrange(n)
                read_ = times[p][pos[p] : pos[p] + rng.randint(1, 5)]
                newest[p] = max([newest[p], *read_])
                pos[p] += len(read_)
            elif roll < cuts[1]:  # a checkpoint: its pairs written, then the commit, or a failure
                offsets = {p: pos[p] for p in range(n) if pos[p] and committed.get(p) != pos[p]}
                pairs = taken(offsets, newest.__getitem__)
                kept.write(pairs, held=range(n))
                if rng.random() < 0.7:  # its flush covered every record written before it
                    broker.flushed()
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
            elif roll < cuts[2]:  # a quiet holder's pairs written again
                kept.write({}, held=range(n))
            elif roll < cuts[3]:  # the wall clock runs on, into the next generation or past it
                broker.now += PERIOD_S * rng.uniform(0.2, 2.5)
            elif roll < cuts[4]:  # the reader's commit loop drops what a rotation settled
                below = kept.drop_below
                dropped += len(asyncio.run(kept.drop_old()))
                if below is not None:  # none before the generation written to last is left
                    assert all((generation_of("t", t) or 0) >= below for t in topics), seed
            else:  # a kill: the new reader goes on from the commits, with the times read back
                if rng.random() < 0.5:  # what no flush covered is lost
                    broker.lose_unflushed()
                found = broker.read(committed, TAIL)
                pos = [committed.get(p, 0) for p in range(n)]
                newest = [found.get(p, NO_TIME) for p in range(n)]
                kept = broker.kept()
                kept.resumed(committed, found)
                lost |= set(committed_time) - set(found)
                assert all(failed[p] >= TAIL - 1 for p in lost), seed
            assert broker.read(committed) == committed_time, seed
            tail = broker.read(committed, TAIL)
            assert all(committed_time[p] == t for p, t in tail.items()), seed  # never another
            ok = {p for p in committed_time if p not in lost and failed[p] < TAIL - 1}
            assert all(tail.get(p) == committed_time[p] for p in ok), seed
            bounded += len(ok) == len(committed_time)
            latest = {
                p: (o, t)
                for topic in reversed(generations("t", topics))
                for value in topics[topic]
                for p, (o, t) in decode(value).items()
            }
            if any(latest[p][1] != committed_time.get(p) for p in committed if p in latest):
                newest_wins.add(seed)
    assert len(newest_wins) > 100  # the counter-rule is wrong in most of the model's runs
    assert bounded > 300 * 75  # nearly every step
    assert dropped > 100  # old generations dropped


def test_the_generation_before_a_rotation_is_kept_for_a_commit_in_flight_through_it() -> None:
    """A checkpoint writes its pairs, and a new generation begins (a quiet write) before its
    commit returns (the reader reads on while steps 3 and 4 wait: ``commit_behind``): the
    new generation's first record names the pair committed before, and the checkpoint's
    pair is in the previous generation alone till the next write. So a rotation drops only
    the generations before the previous one: killed then, the pair is read back from it.
    (Dropping the previous one too, it was nowhere: unknown.)"""
    broker = ModelBroker()
    kept = broker.kept()
    kept.write({0: (1, 100)}, held=[0])
    kept.committed({0: (1, 100)})
    kept.write({0: (2, 200)}, held=[0])  # a checkpoint's pairs; its commit in flight
    broker.now += PERIOD_S
    kept.write({}, held=[0])  # a quiet holder's record: the next generation begins
    assert asyncio.run(kept.drop_old()) == []  # (none before the previous one)
    kept.committed({0: (2, 200)})  # the commit returns; then a kill
    assert broker.read({0: 2}) == {0: 200}
    kept.write({}, held=[0])  # written again: the new generation has it too
    broker.now += PERIOD_S
    kept.write({}, held=[0])
    assert asyncio.run(kept.drop_old()) == ["t-0"]
    assert broker.read({0: 2}) == {0: 200} and sorted(broker.topics) == ["t-1", "t-2"]


def test_a_generation_begins_with_every_pair_committed_whatever_the_checkpoints_name() -> None:
    """A new generation's first record names every pair committed here: a partition whose
    checkpoints keep failing is named in the others with the pair of each failed one, never
    committed, so without that record its committed pair would go with the generation it
    was written in. (Without it: unknown after the drop.)"""
    broker = ModelBroker()
    kept = broker.kept()
    kept.write({0: (1, 100)}, held=[0])
    kept.committed({0: (1, 100)})
    for generation in (1, 2):  # a checkpoint a generation, each failing (a rebalance)
        broker.now += PERIOD_S
        kept.write({0: (1 + generation, 100 * (1 + generation))}, held=[0])
    assert asyncio.run(kept.drop_old()) == ["t-0"]
    assert broker.read({0: 1}) == {0: 100}


def test_a_first_write_past_a_generations_end_goes_to_one_made_here_and_none_is_made_ahead() -> (
    None
):
    """A worker makes this generation at start and its first commit falls past that
    generation's end (loaded, its group joined seconds after start): the first record goes
    to the generation made, not the clock's, which nobody made (the bundled broker's client
    has no leader for it: the producer's flush, which the commit waits for, waited for
    ever); the clock's is made in that tick, after the commit, and begun at the next write,
    with every pair committed here. No generation is made ahead of the clock. A writer
    with none made (its make failed) writes nothing: the pairs are unknown to a reader, as
    with no record, and the first generation it begins names them all. (With the first
    write sent to the clock's generation, made or not: ``t-1001`` sent to, not made.)"""
    made: list[str] = []
    sent: list[tuple[str, dict[int, tuple[int, int]]]] = []
    now = [1_001 * PERIOD_S - 0.5]  # half a second before generation 1000 ends

    async def create(new: list[str]) -> None:
        made.extend(new)

    def writer() -> KeptTimes:
        return KeptTimes(
            "t",
            lambda topic, value: sent.append((topic, decode(value))),
            lambda: None,
            wall=lambda: now[0],
            create=create,
        )

    kept = writer()
    asyncio.run(kept.make_current())  # at start
    now[0] += 1.0  # the first commit: past generation 1000's end
    kept.write({0: (7, 700)}, held=[0])
    kept.committed({0: (7, 700)})
    assert sent == [("t-1000", {0: (7, 700)})] and made == ["t-1000"]
    asyncio.run(kept.make_current())  # the tick's, after the commit
    kept.write({0: (8, 800)}, held=[0])  # the next commit begins the clock's generation
    assert sent[1:] == [("t-1001", {0: (7, 700)}), ("t-1001", {0: (8, 800)})]
    assert made == ["t-1000", "t-1001"] and kept.drop_below == 1_000
    assert {topic for topic, _ in sent} <= set(made)

    sent.clear()
    failing = writer()

    async def refused(new: list[str]) -> None:
        raise ConnectionError("the broker is away")

    failing.create = refused
    with pytest.raises(ConnectionError):
        asyncio.run(failing.make_current())
    failing.write({1: (3, 300)}, held=[1])
    failing.committed({1: (3, 300)})
    assert sent == [] and failing.generation is None
    failing.create = create
    asyncio.run(failing.make_current())
    failing.write({}, held=[1])  # (the generation's first record, then the write's)
    assert sent and all(got == ("t-1001", {1: (3, 300)}) for got in sent)


#: The model's steps' odds, as cumulative cuts: reads, checkpoints, quiet holders' writes,
#: the clock into a new generation, drops, kills (the rest); and with fewer reads and
#: more rotations, drops and kills.
STEADY = (0.4, 0.72, 0.8, 0.86, 0.92)
ROTATING = (0.15, 0.45, 0.55, 0.7, 0.82)


class ModelBroker:
    """The model's broker: each generation's records (oldest first), how many of them the
    last commit's flush made durable, the wall clock."""

    def __init__(self) -> None:
        self.topics: dict[str, list[bytes]] = {}
        self.durable: dict[str, int] = {}
        self.now = 0.0

    def kept(self) -> KeptTimes:
        """A new writer of the times (a new process's)."""
        return KeptTimes(
            "t",
            self.send,
            lambda: Listing(self.topics),
            wall=lambda: self.now,
            delete=self.delete,
            flush=self.flush,
        )

    def send(self, topic: str, value: bytes) -> None:
        self.topics.setdefault(topic, []).append(value)

    async def delete(self, old: list[str]) -> None:
        for topic in old:
            del self.topics[topic]

    async def flush(self) -> None:
        self.flushed()

    def flushed(self) -> None:
        self.durable = {topic: len(records) for topic, records in self.topics.items()}

    def lose_unflushed(self) -> None:
        for topic, records in self.topics.items():
            del records[self.durable.get(topic, 0) :]

    def read(self, committed: dict[int, int], tail: int | None = None) -> dict[int, int]:
        """What a reader reads back (:meth:`KeptTimes.read`): the newest generation first,
        an older one for what it did not find; the newest ``tail`` records of each."""
        found: dict[int, int] = {}
        for topic in generations("t", self.topics):
            missing = {p: o for p, o in committed.items() if p not in found}
            found |= match(self.topics[topic][-tail if tail else 0 :], missing)
        return found


class Listing:
    """A reader that lists the model's topics (:func:`streams.runtime.stream_times.topics`)."""

    def __init__(self, topics: dict[str, list[bytes]]) -> None:
        self._topics = topics

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def topics(self) -> set[str]:
        return set(self._topics)


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
        super().__init__(
            "app-shares-times", lambda _, value: sent.append(value), lambda: None, wall=lambda: 0.0
        )
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
    kept = KeptTimes(topic, lambda _, value: sent.append(value), lambda: None, wall=lambda: 0.0)
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


class _OnTansu:
    """A times' topic ``base`` of its own on the bundled broker, and writers of it
    (:meth:`writer`) whose records wait in ``pending`` till :meth:`flush` (the checkpoint's
    producer flush), whose wall clock is ``now[0]`` (from generation 1,000) and whose
    monotonic clock is ``clock[0]``; ``create``: each generation made before it is written
    to, as the worker's are."""

    def __init__(self, tansu: LocalBroker) -> None:
        prefix, _ = names()
        self.bootstrap = tansu.bootstrap
        self.base = f"{prefix}shares-times"
        self.pending: list[tuple[str, bytes]] = []
        self.now = [1_000 * PERIOD_S]
        self.clock = [0.0]
        self.made: list[str] = []

    async def flush(self) -> None:
        for topic in sorted({t for t, _ in self.pending}):
            values = [v for t, v in self.pending if t == topic]
            await _produce(self.bootstrap, topic, values)
        self.pending.clear()

    async def delete(self, old: list[str]) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(old)
        finally:
            await admin.close()

    async def create(self, new: list[str]) -> None:
        from streams.runtime.broker import ensure_topics

        await asyncio.to_thread(ensure_topics, [self.bootstrap], dict.fromkeys(new, 1))
        self.made += new

    def reader(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(bootstrap_servers=self.bootstrap, fetch_max_wait_ms=25)

    def writer(self, *, create: bool = False) -> KeptTimes:
        return KeptTimes(
            self.base,
            lambda topic, value: self.pending.append((topic, value)),
            self.reader,
            on_bad=_never,
            clock=lambda: self.clock[0],
            wall=lambda: self.now[0],
            delete=self.delete,
            flush=self.flush,
            create=self.create if create else None,
        )

    async def held(self) -> dict[int, int]:
        """Each generation on the broker, by its number: how many records it holds."""
        from aiokafka import TopicPartition

        names = generations(self.base, await topics(self.reader()))
        reader = self.reader()
        await reader.start()
        try:
            tps = [TopicPartition(n, 0) for n in names]
            ends = await reader.end_offsets(tps) if tps else {}
        finally:
            await reader.stop()
        return {generation_of(self.base, tp.topic) or 0: end for tp, end in ends.items()}


@pytest.mark.integration
def test_an_idle_holder_makes_no_generation_it_does_not_write_to_on_the_bundled_broker(
    tansu: LocalBroker,
) -> None:
    """A worker with nothing to read: its shares reader's loop each commit interval (a
    commit with nothing new writes nothing), its quiet pairs written again every
    ``REWRITE_S`` (:meth:`KeptTimes.refresh`), this generation made and the old ones dropped
    (``drop_old_times``). Through three hours, no generation is on the broker ahead of the
    clock, at most one is empty (this hour's, made at its first tick, begun at the next
    rewrite) and at most three are left (the hour's, the previous one and, till this hour
    is begun, the one before), and a reader finds the pairs. (Made ahead, the next hour's
    stood empty all hour: an empty generation more after each hour, four left.)"""
    on = _OnTansu(tansu)
    step = 60.0  # seconds a tick (the loop's is one: a quiet one does the same each second)

    async def run() -> tuple[list[tuple[int, dict[int, int]]], dict[int, int]]:
        kept = on.writer(create=True)
        await kept.make_current()
        kept.write({0: (7, 700), 1: (9, 900)})
        await on.flush()
        kept.committed({0: (7, 700), 1: (9, 900)})
        seen: list[tuple[int, dict[int, int]]] = []
        for _ in range(int(3 * PERIOD_S / step)):
            on.clock[0] += step
            on.now[0] += step
            kept.refresh([0, 1])
            await kept.make_current()
            await kept.drop_old()
            await on.flush()
            if on.now[0] % (10 * step) == 0 or on.now[0] % PERIOD_S < 3 * step:
                # every ten minutes, and each hour's first three ticks: the generations
                seen.append((int(on.now[0] // PERIOD_S), await on.held()))
        return seen, await on.writer().read({0: 7, 1: 9})

    seen, found = asyncio.run(run())
    assert found == {0: 700, 1: 900}
    for hour, held in seen:
        newest = max(held)
        assert newest == hour and len(held) <= 3, (hour, held)
        assert [g for g, n in held.items() if n == 0] in ([], [newest]), (hour, held)
    assert on.made == [generation_topic(on.base, g) for g in range(1_000, 1_004)]


@pytest.mark.integration
def test_the_times_topic_is_rotated_on_the_bundled_broker_and_its_old_generations_deleted(
    tansu: LocalBroker,
) -> None:
    """Tansu deletes no record (``delete_records`` drops the connection, ``retention.ms`` is
    not applied) but deletes a topic, and frees its records: so the times go to a new
    generation of the topic each period, and the generations before the previous one are
    deleted once the new one's first record is on the broker. Over six periods of
    checkpoints two generations are left, each holding a period's records at most, and a
    reader finds every committed pair in them; a writer killed as a generation begins,
    before that generation's first record was flushed, leaves the previous one, from which
    a reader finds them too."""
    on = _OnTansu(tansu)
    base, pending, now, flush, reader, writer = (
        on.base,
        on.pending,
        on.now,
        on.flush,
        on.reader,
        on.writer,
    )

    async def run() -> tuple[list[str], dict[int, int], list[str], dict[int, int]]:
        kept = writer()
        kept.write({1: (5, 500)}, held=[0, 1])  # 1 committed once, quiet after
        await flush()
        kept.committed({1: (5, 500)})
        offset = 0
        for _ in range(6):  # six periods of checkpoints of partition 0
            for _ in range(30):
                offset += 1
                kept.write({0: (offset, 1_000 + offset)}, held=[0, 1])
                await flush()
                kept.committed({0: (offset, 1_000 + offset)})
            now[0] += PERIOD_S
            kept.write({}, held=[0, 1])  # a quiet holder's record: the next generation
            await kept.drop_old()
        left = generations(base, await topics(reader()))
        found = await writer().read({0: offset, 1: 5})
        now[0] += PERIOD_S  # a generation begun, the writer killed before its flush
        kept.write({0: (offset + 1, 9_999)}, held=[0, 1])
        pending.clear()
        again = generations(base, await topics(reader()))
        return left, found, again, await writer().read({0: offset, 1: 5})

    left, found, again, found_again = asyncio.run(run())
    assert left == [generation_topic(base, 1_006), generation_topic(base, 1_005)]
    assert found == found_again == {0: 1_180, 1: 500}
    assert generation_topic(base, 1_006) in again
