"""What ``streams.runtime.faust_adapter`` reaches inside Faust and aiokafka is still there.

Each private attribute the adapter uses is checked against the installed
libraries: an upgrade that renames or removes one fails here, not in a
running worker. The checks read real objects (an unstarted aiokafka
consumer, Faust's classes), not the adapter's own idea of them.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.record.default_records import DefaultRecordBatch
from faust.transport.drivers import aiokafka as faust_aiokafka
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka_helpers import names, tansu

from streams._core import record_batch_at
from streams.runtime import faust_adapter
from streams.runtime.broker import LocalBroker
from streams.settings import Settings

__all__ = ["tansu"]  # the module-scoped fixture, imported for pytest


def test_faust_still_has_the_methods_the_adapter_overrides() -> None:
    thread = faust_aiokafka.AIOKafkaConsumerThread
    for name in ("_create_worker_consumer", "_highwaters", "_create_client_consumer"):
        assert callable(getattr(thread, name, None)), f"AIOKafkaConsumerThread.{name} is gone"
    assert inspect.iscoroutinefunction(thread._highwaters)
    assert callable(getattr(faust_aiokafka.Consumer, "_new_consumer_thread", None))
    import faust

    assert callable(getattr(faust.App, "_new_transport", None))
    for cls in ("Consumer", "Producer"):
        assert hasattr(faust_aiokafka.Transport, cls)


def test_the_adapter_subclasses_what_faust_builds() -> None:
    assert issubclass(faust_adapter.ConsumerThread, faust_aiokafka.AIOKafkaConsumerThread)
    assert issubclass(faust_adapter.Consumer, faust_aiokafka.Consumer)
    assert issubclass(faust_adapter.Producer, faust_aiokafka.Producer)
    assert faust_adapter.Transport.Consumer is faust_adapter.Consumer
    assert faust_adapter.Transport.Producer is faust_adapter.Producer


def test_faust_s_consumer_still_notes_the_committed_offset_it_seeks_to() -> None:
    """``committed_offset`` reads it: the offset the first batch after an assignment starts
    from (``read_offsets`` judges that batch against it)."""
    import faust
    from faust.transport.consumer import Consumer

    source = inspect.getsource(Consumer.perform_seek)
    assert "_committed_offset" in source and "seek_to_committed" in source
    app = faust.App("adapter-test", broker="kafka://127.0.0.1:1")
    tp = faust.types.TP("t", 0)
    app.consumer._committed_offset[tp] = 17
    assert faust_adapter.committed_offset(app, tp) == 17
    assert faust_adapter.committed_offset(app, faust.types.TP("t", 1)) is None


def test_the_producer_is_idempotent_where_the_app_says_so() -> None:
    """On Apache Kafka a retried produce is written once (see ``Producer._settings_extra``);
    Faust still builds its aiokafka producer from ``_settings_extra``."""
    assert "_settings_extra" in inspect.getsource(faust_aiokafka.Producer._new_producer)
    for idempotent in (False, True):
        app = faust_adapter.App("adapter-test", broker="kafka://127.0.0.1:1")
        app.idempotent_producer = idempotent
        producer = app.producer
        assert isinstance(producer, faust_adapter.Producer)
        extra = dict(producer._settings_extra())
        assert extra.get("enable_idempotence", False) is idempotent
        assert extra.get("acks", "all") == "all"


def test_aiokafka_s_client_still_narrows_its_metadata_through_add_topic() -> None:
    """``ask_every_topic`` replaces the client's ``add_topic``: aiokafka's ``send`` still
    adds an unknown topic through it (``_wait_on_metadata``), and Faust still builds its
    producer in ``_new_producer``; once replaced, adding a topic leaves the set empty."""
    from aiokafka.client import AIOKafkaClient

    assert "self.add_topic(topic)" in inspect.getsource(AIOKafkaClient._wait_on_metadata)
    assert "self._topics.add(topic)" in inspect.getsource(AIOKafkaClient.add_topic)
    assert callable(getattr(faust_aiokafka.Producer, "_new_producer", None))
    asked: list[str] = []

    class Client:
        def __init__(self) -> None:
            self._topics: set[str] = set()

        def force_metadata_update(self) -> str:
            asked.append("every topic")
            return "asked"

    client = Client()
    faust_adapter.ask_every_topic(client)
    assert client.add_topic("new") == "asked"  # type: ignore[attr-defined]
    assert asked == ["every topic"] and client._topics == set()


def test_faust_producer_buffer_has_the_limit_the_adapter_raises() -> None:
    from faust.transport.producer import ProducerBuffer

    buffer = ProducerBuffer()
    assert isinstance(buffer.max_messages, int)


def test_an_aiokafka_consumer_has_the_internals_the_adapter_reads() -> None:
    async def check() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=500)
        try:
            assert consumer._fetch_max_wait_ms == 500  # set by ConsumerThread on the local broker
            assert hasattr(consumer._subscription, "subscription")  # read by log_ends()
            assert callable(consumer._client.force_metadata_update)
            assert callable(consumer.highwater) and callable(consumer.assignment)
            # log_ends() reads when the last fetch for a partition was answered
            from aiokafka.consumer.subscription_state import TopicPartitionState

            state = TopicPartitionState(None)
            assert state.timestamp is None and hasattr(state, "has_valid_position")
        finally:
            await consumer.stop()

    asyncio.run(check())


def test_aiokafka_s_group_coordinator_still_fetches_committed_offsets_with_metadata() -> None:
    """committed_with_metadata() reaches the coordinator a started consumer keeps in
    ``_coordinator``."""
    import inspect

    from aiokafka.consumer.consumer import AIOKafkaConsumer as Consumer
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.structs import OffsetAndMetadata

    assert inspect.iscoroutinefunction(GroupCoordinator.fetch_committed_offsets)
    assert "self._coordinator = GroupCoordinator(" in inspect.getsource(Consumer.start)
    found = OffsetAndMetadata(5, "t=1")
    assert (found.offset, found.metadata) == (5, "t=1")


def test_log_ends_reads_positions_of_a_consumer_with_no_assignment() -> None:
    async def check() -> tuple[list[int], dict[int, float]]:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        try:
            return faust_adapter.log_ends(consumer, {})
        finally:
            await consumer.stop()

    assert asyncio.run(check()) == ([], {})


@pytest.mark.parametrize(
    ("broker", "expected"),
    [("kafka://a:1;b:2", "kafka://a:1;b:2"), ("a:1,b", "kafka://a:1;b:9092")],
)
def test_faust_broker_url(broker: str, expected: str) -> None:
    assert faust_adapter.faust_broker_url(broker) == expected


def test_no_credentials_for_plaintext() -> None:
    assert faust_adapter.credentials(Settings()) is None


def test_the_producer_buffer_flushes_what_was_put_before_the_flush_not_after() -> None:
    """A checkpoint that overlaps reading waits for the records sent before it began, not for
    those the reader sends meanwhile (Faust's ``flush`` waits for an empty buffer: a live
    stream's records kept it waiting for seconds), and not less: Faust's gives up after
    0.1 s without a send, records put before it still waiting (a slow broker; Faust flushes
    so on a rebalance, and the checkpoint had). The buffer is one queue read by one task,
    in order: the first ``mark`` put are the first ``mark`` handed to the client."""
    from types import SimpleNamespace

    gates: list[asyncio.Event] = []
    published: list[int] = []

    class Channel:
        async def publish_message(self, fut: Any, wait: bool = False) -> None:
            await gates[fut.n].wait()
            published.append(fut.n)

    channel = Channel()

    def record(n: int) -> Any:
        gates.append(asyncio.Event())
        return SimpleNamespace(n=n, message=SimpleNamespace(channel=channel))

    async def scenario() -> None:
        buffer = faust_adapter.ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        await buffer.start()
        try:
            for n in range(3):
                buffer.put(record(n))
            mark = buffer.put_count
            for n in range(3, 6):  # sent while the checkpoint waits
                buffer.put(record(n))
            flushed = asyncio.ensure_future(buffer.flush_until(mark))
            for n in range(2):
                gates[n].set()
            await asyncio.wait_for(buffer.flush(), 1.0)  # Faust's: gives up after 0.1 s ...
            assert buffer.sent_count == 2 and buffer.size == 3  # ... with record 2 unsent
            await asyncio.sleep(0.25)
            assert not flushed.done()  # record 2, put before the mark, is not handed over
            gates[2].set()
            await asyncio.wait_for(flushed, 1.0)
            assert published == [0, 1, 2] and buffer.size == 2  # 3 is being sent, 4 and 5 wait
        finally:
            for gate in gates:
                gate.set()
            await buffer.flush()  # all of it, before the buffer stops
            await buffer.stop()
        assert published == list(range(6)) and buffer.sent_count == 6

    asyncio.run(scenario())


def test_the_app_s_producer_counts_what_it_buffers() -> None:
    app = faust_adapter.App("adapter-test", broker="kafka://127.0.0.1:1")
    producer = app.counted_producer
    assert producer.buffer is producer.counted
    assert isinstance(producer.counted, faust_adapter.ProducerBuffer)
    assert producer.counted.max_messages == faust_adapter.PRODUCER_BUFFER_RECORDS
    assert producer.queued == 0


def test_faust_s_consumer_still_has_the_thread_and_read_offsets_seek_soon_uses() -> None:
    import faust

    app = faust_adapter.App("adapter-test", broker="kafka://127.0.0.1:1")
    consumer: Any = app.consumer
    thread = consumer._thread
    assert isinstance(thread, faust_adapter.ConsumerThread)
    assert isinstance(thread.thread_loop, asyncio.AbstractEventLoop)
    assert callable(thread._ensure_consumer)
    assert consumer._read_offset[faust.types.TP("t", 0)] is None  # a defaultdict of offsets
    # Faust's own seek moves the client from the app's loop: the race seek_soon avoids
    assert "self._thread.seek(" in inspect.getsource(type(consumer)._seek)


def test_a_seek_is_made_in_the_consumer_s_thread_and_not_awaited() -> None:
    """The aiokafka client is moved only from the thread whose loop runs its fetcher (a
    seek from the app's loop raced the fetcher: KeyError in ``fetched_records``), and the
    agent asking is not held up (Faust's ``seek_wait`` awaited the position, up to the
    request timeout); Faust's delivery takes the offset again only once the seek is done.
    A partition revoked meanwhile is not sought, and nothing raises in the agent."""
    import logging
    import threading
    from types import SimpleNamespace

    from aiokafka.errors import IllegalStateError
    from faust.types import TP

    thread_loop = asyncio.new_event_loop()
    runner = threading.Thread(target=thread_loop.run_forever, daemon=True)
    runner.start()
    seeks: list[tuple[int, int, bool]] = []
    gate = threading.Event()

    class Client:
        def seek(self, tp: Any, offset: int) -> None:
            gate.wait(5)
            seeks.append((tp.partition, offset, threading.current_thread() is runner))
            if tp.partition == 9:
                raise IllegalStateError("No current assignment for partition")

    thread = SimpleNamespace(
        thread_loop=thread_loop, _ensure_consumer=Client, log=logging.getLogger("test")
    )
    consumer = SimpleNamespace(_thread=thread, _read_offset={})
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=4)

    async def scenario() -> None:
        faust_adapter.seek_soon(app, TP("t", 1), 17)
        faust_adapter.seek_soon(app, TP("t", 9), 3)
        await asyncio.sleep(0.05)  # the seek waits in the thread: the caller went on
        assert seeks == [] and consumer._read_offset == {}
        gate.set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(seeks) == 2 and consumer._read_offset:
                break
        await asyncio.sleep(0.05)
        assert seeks == [(1, 17, True), (9, 3, True)]
        assert consumer._read_offset == {TP("t", 1): 17}
        # asked in generation 4, run after a rebalance: the new assignment's start stands
        hold = threading.Event()
        thread_loop.call_soon_threadsafe(hold.wait, 5)  # the thread busy a moment
        faust_adapter.seek_soon(app, TP("t", 2), 5)
        app.consumer_generation_id = 5
        hold.set()
        await asyncio.sleep(0.2)
        assert seeks == [(1, 17, True), (9, 3, True)]
        assert consumer._read_offset == {TP("t", 1): 17}

    try:
        asyncio.run(scenario())
    finally:
        thread_loop.call_soon_threadsafe(thread_loop.stop)
        runner.join(5)
        thread_loop.close()

    async def stopping() -> None:  # the consumer's loop closed: nothing raises in the agent
        faust_adapter.seek_soon(app, TP("t", 1), 3)

    asyncio.run(stopping())
    assert seeks == [(1, 17, True), (9, 3, True)]


def test_a_record_whose_send_fails_is_no_longer_waited_for() -> None:
    """A record the client refused is not handed over later either: a flush waiting for it
    would wait until the producer stops (it is counted, whatever became of it)."""
    from types import SimpleNamespace

    class Channel:
        async def publish_message(self, fut: Any, wait: bool = False) -> None:
            raise RuntimeError("refused")

    async def scenario() -> None:
        buffer = faust_adapter.ProducerBuffer()
        fut = SimpleNamespace(message=SimpleNamespace(channel=Channel()))
        buffer.put_count = 1
        with pytest.raises(RuntimeError, match="refused"):
            await buffer._send_pending(fut)
        assert buffer.sent_count == 1
        await asyncio.wait_for(buffer.flush_until(1), 1.0)

    asyncio.run(scenario())


class _Client:
    """aiokafka's producer as :meth:`faust_adapter.Producer.write` uses it: its real
    accumulator (small batches, so records spill into several), drained by the test as
    the client's sender would, each batch answered as the broker would."""

    def __init__(self, batch_bytes: int = 300) -> None:
        from types import SimpleNamespace

        from aiokafka.producer.message_accumulator import MessageAccumulator

        cluster = SimpleNamespace(leader_for_partition=lambda tp: 0)
        self._message_accumulator = MessageAccumulator(
            cluster, batch_bytes, 0, 30, loop=asyncio.get_running_loop()
        )
        self.sent: list[Any] = []  # batches drained, in order

    async def flush(self) -> None:  # (aiokafka's waits for every batch it holds)
        return None

    def drain(self) -> None:
        while True:
            nodes, _ = self._message_accumulator.drain_by_nodes(ignore_nodes=[])
            if not nodes:
                return
            self.sent += [b for batches in nodes.values() for b in batches.values()]

    @staticmethod
    def keys(batch: Any) -> list[tuple[bytes, bytes | None]]:
        return [(r.key, r.value) for r in DefaultRecordBatch(bytearray(batch.get_data_buffer()))]

    def records(self, topic: str, partition: int) -> list[tuple[bytes, bytes | None]]:
        return [kv for b in self.sent if b.tp == (topic, partition) for kv in self.keys(b)]

    def answer(self, error: Exception | None = None, but: bytes | None = None) -> None:
        """The broker's answer to each batch drained (``but`` the one holding that key)."""
        for batch in self.sent:
            if not batch.future.done() and but not in [k for k, _ in self.keys(batch)]:
                if error is None:
                    batch.done(base_offset=0)
                else:
                    batch.failure(exception=error)


def test_aiokafka_s_producer_still_has_the_accumulator_write_appends_to() -> None:
    """:meth:`faust_adapter.Producer.write` appends to the accumulator's open batch of a
    partition as aiokafka's ``send`` does (its private parts, checked here)."""
    from aiokafka.producer.message_accumulator import MessageAccumulator, MessageBatch

    for name in ("_append_batch", "create_builder"):
        assert callable(getattr(MessageAccumulator, name, None)), name
    source = inspect.getsource(MessageAccumulator.__init__)
    for name in (
        "self._batches",
        "self._closed",
        "self._exception",
        "self._compression_type",  # the core's batch only where nothing is compressed
        "self._batch_size",
        "self._txn_manager",
    ):
        assert name in source, name
    assert "self._builder" in inspect.getsource(MessageBatch.__init__)
    assert "self._message_accumulator" in inspect.getsource(
        __import__("aiokafka").AIOKafkaProducer.__init__
    )


def test_records_written_go_in_order_and_a_flush_waits_for_those_written_before_it() -> None:
    """Each partition's records in the order written, in as many batches as they fill; a
    flush returns once the broker took every batch holding a record written before it was
    called (not those after), and raises if it refused one."""

    async def scenario() -> None:
        app = faust_adapter.App("adapter-test", broker="kafka://127.0.0.1:1")
        producer = app.counted_producer
        client = producer._producer = _Client()
        try:
            for n in range(12):
                producer.write("actions", n % 2, b"k%d" % n, b"v" * 40 + b"%d" % n)
            producer.write("alerts", 1, b"a", b"alert")
            producer.write("log", 0, b"gone", None)  # a tombstone
            flushed = asyncio.ensure_future(producer.flush_sent())
            client.drain()  # the sender takes them
            producer.write("actions", 0, b"late", b"written after the flush began")
            client.drain()
            await asyncio.sleep(0.05)
            assert not flushed.done()  # the broker has not answered yet
            client.answer(but=b"late")  # the flush does not wait for what came after it
            await asyncio.wait_for(flushed, 1.0)
            assert producer.written == 15
            # counted per topic, keys and values (the worker's report)
            assert producer.written_to == {"actions": 13, "alerts": 1, "log": 1}
            actions = sum(len(b"k%d" % n) + 40 + len(b"%d" % n) for n in range(12)) + 4 + 29
            assert producer.written_bytes == {"actions": actions, "alerts": 6, "log": 4}
            assert client.records("actions", 0) == [
                *((b"k%d" % n, b"v" * 40 + b"%d" % n) for n in range(0, 12, 2)),
                (b"late", b"written after the flush began"),
            ]
            assert client.records("actions", 1) == [
                (b"k%d" % n, b"v" * 40 + b"%d" % n) for n in range(1, 12, 2)
            ]
            assert client.records("alerts", 1) == [(b"a", b"alert")]
            assert client.records("log", 0) == [(b"gone", None)]
            assert len([b for b in client.sent if b.tp == ("actions", 1)]) > 1  # spilled
            # the late record's batch: drained, unanswered; a new flush waits for it
            again = asyncio.ensure_future(producer.flush())
            await asyncio.sleep(0.05)
            assert not again.done()
            client.answer()
            await asyncio.wait_for(again, 1.0)
            producer.write("actions", 0, b"refused", b"x")
            failed = asyncio.ensure_future(producer.flush_sent())
            client.drain()
            await asyncio.sleep(0.05)
            client.answer(RuntimeError("the broker refused the batch"))
            with pytest.raises(RuntimeError, match="refused the batch"):
                await asyncio.wait_for(failed, 1.0)
        finally:
            producer._producer = None

    asyncio.run(scenario())


def _partition_records(values: list[bytes | None], base: int = 40) -> Any:
    """aiokafka's records of one fetched partition: two record batches of ``values``, from
    offset ``base``, as a fetch response holds them."""
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    raw = b""
    half = len(values) // 2
    for start, run in ((0, values[:half]), (half, values[half:])):
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
        for i, value in enumerate(run):
            builder.append(i, 1_767_225_600_000 + start + i, None, value, [])
        batch = builder.build()
        batch[0:8] = (base + start).to_bytes(8, "big")  # the batch's base offset
        raw += bytes(batch)
    return PartitionRecords(
        TopicPartition("shares", 3), MemoryRecords(raw), [], base, None, None, False, 0
    )


def test_bare_records_are_the_record_batch_s_own_with_what_a_consumer_record_holds() -> None:
    """``bare_records`` swaps the dict aiokafka's fetcher puts each fetched partition in, so
    that the records its ``getmany`` gives are the record batch's own: the same offsets,
    timestamps and values as the ``ConsumerRecord`` s of before, no ``ConsumerRecord``."""
    from collections import OrderedDict
    from types import SimpleNamespace

    from aiokafka.structs import ConsumerRecord

    values: list[bytes | None] = [b'{"event_id":"e%d"}' % i for i in range(7)] + [None]
    before = list(_partition_records(values))
    assert all(type(r) is ConsumerRecord for r in before)
    early = SimpleNamespace(_partition_records=_partition_records(values))
    fetcher = SimpleNamespace(_records=OrderedDict({"early": early}))
    consumer = SimpleNamespace(_fetcher=fetcher, _key_deserializer=None, _value_deserializer=None)
    faust_adapter.bare_records(consumer)
    faust_adapter.bare_records(consumer)  # idempotent
    fetcher._records["late"] = late = SimpleNamespace(_partition_records=_partition_records(values))
    fetcher._records["failed"] = SimpleNamespace()  # a fetch error: nothing to change
    for result in (early, late):
        got = list(result._partition_records)
        assert not any(type(r) is ConsumerRecord for r in got)
        assert [(r.offset, r.timestamp, r.value) for r in got] == [
            (r.offset, r.timestamp, r.value) for r in before
        ]
        assert [r.offset for r in got] == list(range(40, 48))
    assert list(fetcher._records) == ["early", "late", "failed"]
    with pytest.raises(ValueError, match="deserializers"):
        faust_adapter.bare_records(
            SimpleNamespace(
                _fetcher=SimpleNamespace(_records=OrderedDict()),
                _key_deserializer=None,
                _value_deserializer=bytes.decode,
            )
        )


def _raw_batches(sizes: list[int], base: int) -> bytes:
    """Record batches (magic 2) of ``sizes`` records each, from offset ``base``, as a fetch
    response holds them: record ``i``'s value names it."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    raw, offset = b"", base
    for size in sizes:
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
        for i in range(size):
            builder.append(i, 1_767_225_600_000 + offset + i, None, b"v%d" % (offset + i), [])
        batch = builder.build()
        batch[0:8] = offset.to_bytes(8, "big")
        raw += bytes(batch)
        offset += size
    return raw


class _FetchedState:
    """A partition's state in aiokafka's subscription: where ``consumed_to`` moved it."""

    paused = False
    has_valid_position = True

    def __init__(self, position: int) -> None:
        self.position = position
        self.moved: list[int] = []

    def consumed_to(self, offset: int) -> None:
        self.moved.append(offset)
        self.position = offset


def _fetch_result(
    raw: bytes, fetch_offset: int, bare: bool, check_crcs: bool = True, own_check: bool = False
) -> Any:
    """aiokafka's ``FetchResult`` of one fetched partition, as its fetcher makes it (with the
    fetcher module's ``MemoryRecords``), given the bare records' reading or not; its
    ``check_assignment`` aiokafka's own under an active assignment if ``own_check``, else
    one that passes."""
    from types import SimpleNamespace

    from aiokafka.consumer import fetcher
    from aiokafka.structs import TopicPartition

    tp = TopicPartition("shares", 1)
    state = _FetchedState(fetch_offset)
    assignment = SimpleNamespace(active=True, state_value=lambda _tp: state)
    records = fetcher.PartitionRecords(
        tp, fetcher.MemoryRecords(raw), [], fetch_offset, None, None, check_crcs, 0
    )
    result = fetcher.FetchResult(tp, assignment=assignment, partition_records=records, backoff=0)
    if not own_check:
        result.check_assignment = lambda _tp: True  # (aiokafka's asks the assignment's state)
    if bare:
        faust_adapter._bare(result)
    else:
        records._consumer_record = faust_adapter._as_read
    return result, state


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    skip=st.integers(0, 12),
    asks=st.lists(st.one_of(st.none(), st.integers(1, 12)), min_size=1, max_size=12),
)
def test_bare_records_are_taken_as_aiokafka_takes_them(
    sizes: list[int], skip: int, asks: list[int | None]
) -> None:
    """Record batches taken a batch at a time (``_BareRecords``) give what aiokafka's own
    loop gives for any batches, fetch offset (records below it skipped) and ``max_records``
    asked in turn: the same records, the partition's position moved to the same offsets,
    the result let go when all is taken."""
    base = 100
    raw = _raw_batches(sizes, base)
    start = base + min(skip, sum(sizes) - 1)
    ours, our_state = _fetch_result(raw, start, bare=True)
    theirs, their_state = _fetch_result(raw, start, bare=False)
    assert type(ours._partition_records._records) is faust_adapter._RawMemoryRecords
    for ask in [*asks, None, None]:
        if theirs._partition_records is None:
            break
        got, want = ours.getall(ask), theirs.getall(ask)
        assert [(r.offset, r.timestamp, r.value) for r in got] == [
            (r.offset, r.timestamp, r.value) for r in want
        ]
        assert our_state.moved[-1:] == their_state.moved[-1:]
    assert ours.getall(None) == [] and ours._partition_records is None
    one_by_one = _fetch_result(raw, start, bare=True)[0]._partition_records  # getone's way
    assert [r.value for r in one_by_one] == [
        r.value for r in _fetch_result(raw, start, bare=False)[0]._partition_records
    ]
    if skip < sizes[0]:  # a fetch offset in the first batch: nothing below it is given
        assert [r.value for r in _fetch_result(raw, start, bare=True)[0].getall(None)] == [
            b"v%d" % n for n in range(start, base + sum(sizes))
        ]


@pytest.mark.parametrize("raw_known", [True, False])
def test_a_bare_record_batch_with_a_wrong_crc_is_refused(raw_known: bool) -> None:
    """A record batch whose bytes do not hold its CRC-32C is refused as aiokafka refuses it
    (``CorruptRecordException``; the fetcher fetches it again), whether its CRC is checked
    on its bytes or by aiokafka; the batch before it is given first."""
    from aiokafka.errors import CorruptRecordException
    from aiokafka.record.memory_records import MemoryRecords

    raw = bytearray(_raw_batches([3, 4], 7))
    raw[-2] ^= 0x01  # the last byte of the second batch's last value
    result, _ = _fetch_result(bytes(raw), 7, bare=True)
    if not raw_known:
        records = result._partition_records
        records._records = MemoryRecords(bytes(raw))
        faust_adapter._bare(result)
    assert [r.offset for r in result.getall(3)] == [7, 8, 9]
    bare = result.getall.__self__
    assert (bare.raw_bytes is not None) is raw_known  # checked by the core where known
    if raw_known:  # the second batch's end told, its CRC found not to hold
        assert record_batch_at(bytes(raw), bare.pos) == (len(raw), False)
    with pytest.raises(CorruptRecordException, match="Invalid CRC"):
        result.getall(10)
    unchecked, _ = _fetch_result(bytes(raw), 7, bare=True, check_crcs=False)
    assert len(unchecked.getall(None)) == 7


def test_a_paused_partition_keeps_what_was_fetched_until_it_is_resumed() -> None:
    """A paused partition's records, fetched and not all taken, are kept (aiokafka drops them
    at the next ``getmany``, and fetches them again once the partition is resumed): none is
    given while it is paused, then the same records aiokafka would give from its position.
    A seek to another position, or a lost assignment, drops them as aiokafka does."""
    raw = _raw_batches([5, 4], 100)
    theirs, their_state = _fetch_result(raw, 100, bare=False, own_check=True)
    ours, our_state = _fetch_result(raw, 100, bare=True, own_check=True)
    taken = [r.offset for r in ours.getall(3)]
    assert taken == [r.offset for r in theirs.getall(3)] == [100, 101, 102]
    their_state.paused = our_state.paused = True
    assert theirs.getall(10) == [] and not theirs.has_more()  # aiokafka's: dropped
    for _ in range(3):
        assert ours.getall(10) == [] and ours.has_more()  # ours: kept
    assert our_state.position == 103
    our_state.paused = False
    assert [(r.offset, r.value) for r in ours.getall(None)] == [
        (n, b"v%d" % n) for n in range(103, 109)
    ]
    assert our_state.position == 109 and not ours.has_more()

    for gone in ("seek", "revoked"):
        ours, our_state = _fetch_result(raw, 100, bare=True, own_check=True)
        assert len(ours.getall(2)) == 2
        our_state.paused = True
        if gone == "seek":
            our_state.position = 104  # another position: what was fetched is not its
        else:
            ours._assignment.active = False
        assert ours.getall(10) == [] and not ours.has_more()


def test_aiokafka_s_fetcher_still_has_what_bare_records_reaches() -> None:
    """The fetcher keeps its results in ``_records``, made once, each put there by an
    assignment; a partition's records are unpacked by ``self._consumer_record``; a
    consumer's fetcher and deserializers are where ``bare_records`` reads them."""
    from aiokafka.consumer import fetcher as fetcher_module
    from aiokafka.consumer.consumer import AIOKafkaConsumer as Consumer
    from aiokafka.consumer.fetcher import Fetcher, FetchResult, PartitionRecords

    fetcher = inspect.getsource(Fetcher)
    assert fetcher.count("self._records = ") == 1
    assert "self._records = collections.OrderedDict()" in inspect.getsource(Fetcher.__init__)
    assert "self._records[tp] = FetchResult(" in fetcher
    assert "setdefault" not in fetcher and "self._records.update" not in fetcher
    assert "self._consumer_record(tp, record)" in inspect.getsource(
        PartitionRecords._unpack_records
    )
    # the bare records' reading: a fetched partition's bytes made into the fetcher module's
    # MemoryRecords; the results and records it reaches
    assert "records = MemoryRecords(part_data[-1])" in fetcher
    assert fetcher_module.MemoryRecords is faust_adapter._RawMemoryRecords
    # a paused partition's records: aiokafka's check drops them (so ours keeps them, on
    # the attributes it reads: the assignment's activity and state, paused and position)
    check = inspect.getsource(FetchResult.check_assignment)
    for name in ("assignment.active", "state_value(", "tp_state.paused", "tp_state.position"):
        assert name in check
    assert "self._partition_records = None" in check
    assert "self._assignment = assignment" in inspect.getsource(FetchResult.__init__)
    unpack = inspect.getsource(PartitionRecords._unpack_records)
    for name in ("_records", "_check_crcs", "_tp", "next_fetch_offset", "is_control_batch"):
        assert name in unpack
    assert "self._records_iterator = self._unpack_records()" in inspect.getsource(
        PartitionRecords.__init__
    )
    getall = inspect.getsource(FetchResult.getall)
    assert "self._update_position()" in getall and "self._partition_records = None" in getall
    start = inspect.getsource(Consumer.start)
    assert "self._fetcher = Fetcher(" in start
    assert "value_deserializer=self._value_deserializer" in start
    assert "key_deserializer=self._key_deserializer" in start


def test_the_stages_consumer_fetches_with_a_short_wait_not_faust_s_fixed_one() -> None:
    """Faust builds the worker's consumer with a fixed 1.5-s fetch wait; on Apache Kafka a
    record for a partition left out of the fetch in flight waited that out on a hop between
    workers (see :data:`faust_adapter.KAFKA_FETCH_WAIT_MS`)."""

    async def check() -> None:
        app = faust_adapter.App("adapter-test", broker="kafka://127.0.0.1:1")
        thread: Any = app.consumer._thread  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(app.transport)
        try:
            assert consumer._fetch_max_wait_ms == faust_adapter.KAFKA_FETCH_WAIT_MS
            assert faust_adapter.KAFKA_FETCH_WAIT_MS < 1500
            source = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread)
            assert "fetch_max_wait_ms=1500" in source  # what it replaces, still Faust's
        finally:
            await consumer.stop()

    asyncio.run(check())


# -- a fetch asked before a rebalance drains only what is still active -------------------


class _State:
    def __init__(self) -> None:
        self.paused = False
        self.position = 0

    def consumed_to(self, offset: int) -> None:
        self.position = offset


class _Assignment:
    active = True

    def __init__(self) -> None:
        self.states: dict[Any, _State] = {}

    def state_value(self, tp: Any) -> _State:
        return self.states.setdefault(tp, _State())


class _Records:
    """A partition's fetched records, as aiokafka's ``PartitionRecords`` gives them."""

    def __init__(self, offsets: list[int]) -> None:
        self._left = list(offsets)
        self.next_fetch_offset = 0

    def __iter__(self) -> _Records:
        return self

    def __next__(self) -> int:
        if not self._left:
            raise StopIteration
        self.next_fetch_offset = self._left[0] + 1
        return self._left.pop(0)


class _Subscriptions:
    reassignment_in_progress = False

    def is_assigned(self, tp: Any) -> bool:
        return True


def _fetcher_holding(records: dict[Any, list[int]]) -> Any:
    """aiokafka's own ``Fetcher.fetched_records`` over fetched results of ``records``."""
    from collections import OrderedDict

    from aiokafka.consumer.fetcher import Fetcher, FetchResult

    fetcher = Fetcher.__new__(Fetcher)
    fetcher._subscriptions = _Subscriptions()
    fetcher._records = OrderedDict()
    fetcher._notify = lambda fut: None
    fetcher._wait_consume_future = None
    assignment = _Assignment()
    for tp, offsets in records.items():
        fetcher._records[tp] = FetchResult(
            tp, assignment=assignment, partition_records=_Records(offsets), backoff=0
        )
    return fetcher


def test_a_fetch_asked_before_a_rebalance_does_not_take_the_changelogs_records() -> None:
    """The survivor's recovery stall: the changelogs' records, fetched after the recovery's
    seek, were taken by a fetch Faust asked before the rebalance (its set of active
    partitions emptied meanwhile, which aiokafka reads as every partition) and dropped."""
    from faust.types import TP

    source, changelog = TP("viralwatch.resolve", 1), TP("viralwatch-resolve-log-changelog", 2)

    async def scenario() -> None:
        # aiokafka: an empty set of partitions drains every partition (the hazard)
        fetcher = _fetcher_holding({source: [7], changelog: [0, 1, 2]})
        assert set(await fetcher.fetched_records(set(), timeout=0)) == {source, changelog}

        fetcher = _fetcher_holding({source: [7], changelog: [0, 1, 2]})
        live = {source}
        asked = faust_adapter.StillActive(live)  # the fetch in flight as the rebalance comes
        live.clear()  # the rebalance pauses every partition
        assert await fetcher.fetched_records(asked, timeout=0) == {}
        live.add(changelog)  # the recovery resumes the changelogs
        assert await fetcher.fetched_records(asked, timeout=0) == {}  # not asked for then
        got = await fetcher.fetched_records(faust_adapter.StillActive(live), timeout=0)
        assert got == {changelog: [0, 1, 2]}  # the next fetch: every record, none lost

    asyncio.run(scenario())


def test_the_worker_consumer_hands_faust_fetch_a_still_active_view() -> None:
    asked: list[Any] = []

    async def fake_call_thread(fun: Any, consumer: Any, active: Any, **kwargs: Any) -> Any:
        asked.append(active)
        return {}

    thread = faust_adapter.ConsumerThread.__new__(faust_adapter.ConsumerThread)
    thread._consumer = type("C", (), {"_max_poll_records": 500})()
    thread.call_thread = fake_call_thread  # type: ignore[method-assign]
    live: set[Any] = {("t", 0)}
    asyncio.run(thread.getmany(live, 1.0))
    (view,) = asked
    assert isinstance(view, faust_adapter.StillActive) and ("t", 0) in view
    live.clear()
    assert view and ("t", 0) not in view


def _schema_bytes(request: Any) -> bytes:
    """A request's bytes as aiokafka's schema encodes them (its own ``Struct.encode``)."""
    return bytes(request.SCHEMA.encode([request.__dict__[n] for n in request.SCHEMA.names]))


records = st.none() | st.binary(max_size=300) | st.binary(max_size=300).map(bytearray)
partitions = st.none() | st.lists(st.tuples(st.integers(-1, 2**31 - 1), records), max_size=4)
topics = st.none() | st.lists(st.tuples(st.text(max_size=20), partitions), max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from(faust_adapter.PRODUCE_REQUESTS),
    transactional_id=st.none() | st.text(max_size=10),
    acks=st.sampled_from([-1, 0, 1]),
    timeout=st.integers(0, 2**31 - 1),
    topics=topics,
)
def test_a_produce_request_is_encoded_in_one_join_to_the_schema_s_own_bytes(
    version: Any, transactional_id: str | None, acks: int, timeout: int, topics: Any
) -> None:
    head = [transactional_id] if version.API_VERSION >= 3 else []
    request = version(*head, acks, timeout, topics)
    assert request.encode() == _schema_bytes(request)


def test_every_produce_request_version_aiokafka_may_send_is_encoded_in_one_join() -> None:
    """aiokafka picks a version from ``ProduceRequest._CLASSES``: each has the layout the
    one-join encoding writes (an upgrade adding a version with another one keeps
    aiokafka's encoding for it, and fails here to be looked at)."""
    from aiokafka.protocol.produce import ProduceRequest

    assert list(ProduceRequest._CLASSES) == faust_adapter.PRODUCE_REQUESTS
    for version in ProduceRequest._CLASSES:
        assert version.encode is faust_adapter._encode_produce
    # a layout it does not write is left alone
    from aiokafka.protocol.metadata import MetadataRequest_v0

    assert not faust_adapter._produce_layout(MetadataRequest_v0)


class _Writer:
    """A connection's stream writer that keeps what is written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def drain(self) -> str:
        return "drained"


def _sent(send: Any, request: Any, expect_response: bool) -> tuple[list[bytes], Any, list[int]]:
    """What ``send`` writes for ``request`` on a fresh connection (two sends: the second
    takes the next correlation id), what it returns, and the correlation ids it awaits."""
    from aiokafka.conn import AIOKafkaConnection

    async def run() -> tuple[list[bytes], Any, list[int]]:
        conn = AIOKafkaConnection("127.0.0.1", 9, client_id="vw-test")
        conn._writer = writer = _Writer()  # type: ignore[assignment]
        conn._versions = {0: (0, 7), 3: (0, 4)}  # produce up to v7, metadata up to v4
        returned = []
        for _ in range(2):
            got = send(conn, request, expect_response)
            if inspect.iscoroutine(got):
                got.close()
                got = "awaitable"
            returned.append(got)
        ids = [entry[0] for entry in conn._requests]
        return writer.written, returned, ids

    return asyncio.run(run())


@settings(max_examples=100, deadline=None)
@given(
    acks=st.sampled_from([-1, 0, 1]),
    timeout=st.integers(0, 2**31 - 1),
    topics=st.lists(
        st.tuples(
            st.text(max_size=20),
            st.lists(st.tuples(st.integers(0, 2**31 - 1), st.binary(max_size=300)), max_size=4),
        ),
        max_size=4,
    ),
    expect_response=st.booleans(),
)
def test_a_request_is_written_in_one_join_as_aiokafka_writes_it(
    acks: int, timeout: int, topics: Any, expect_response: bool
) -> None:
    """The connection's send writes the size, header and body in one join
    (``faust_adapter._send_joined``): the bytes, the correlation ids and what it returns
    are aiokafka's own ``send``'s, for a produce request and another."""
    from aiokafka.conn import AIOKafkaConnection
    from aiokafka.protocol.metadata import MetadataRequest
    from aiokafka.protocol.produce import ProduceRequest

    assert AIOKafkaConnection.send is faust_adapter._send_joined
    produce = ProduceRequest(None, acks, timeout, topics)
    for request in (produce, MetadataRequest([name for name, _ in topics])):
        ours = _sent(faust_adapter._send_joined, request, expect_response)
        theirs = _sent(faust_adapter.AIOKAFKA_SEND, request, expect_response)
        assert ours == theirs
        written, _, _ = ours
        assert len(written) == 2 and written[0] != written[1]  # the correlation id moved on


def test_aiokafka_s_send_is_still_the_one_the_joined_send_copies() -> None:
    """``_send_joined`` repeats aiokafka 0.14's ``AIOKafkaConnection.send`` but for the
    joins: an upgrade that changes it fails here to be looked at."""
    source = inspect.getsource(faust_adapter.AIOKAFKA_SEND)
    for line in (
        "request_struct = request.prepare(self._versions)",
        "correlation_id = self._next_correlation_id()",
        "message = header.encode() + request_struct.encode()",
        'size = struct.pack(">i", len(message))',
        "self._writer.write(size + message)",
        "self.close(reason=CloseReason.CONNECTION_BROKEN)",
        "return self._writer.drain()",
        "fut = self._loop.create_future()",
        "return wait_for(fut, self._request_timeout)",
    ):
        assert line in source, line
    assert source.count("self._writer.write(") == 1
    assert "self._requests.append((correlation_id,request_struct,fut)" in "".join(source.split())


# -- the internal topics' fetched records taken as they come (Prefetched) -----------------


def _bare_fetcher(tps: list[Any], positions: int = 100) -> Any:
    """aiokafka's own ``Fetcher`` (its request building, its ``fetched_records``, seeks and
    waiters) over a real subscription of ``tps``, each at ``positions``, with no client."""
    from collections import OrderedDict

    from aiokafka.consumer.fetcher import READ_UNCOMMITTED, Fetcher
    from aiokafka.consumer.subscription_state import SubscriptionState

    fetcher = Fetcher.__new__(Fetcher)
    subscriptions = SubscriptionState()
    subscriptions.assign_from_user(set(tps))
    for tp in tps:
        subscriptions.seek(tp, positions)
    fetcher._subscriptions = subscriptions
    fetcher._records = OrderedDict()
    fetcher._in_flight = set()
    fetcher._select_read_replica = lambda tp: 0  # one broker
    fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes = 100, 1
    fetcher._fetch_max_bytes, fetcher._max_partition_fetch_bytes = 1 << 20, 1 << 20
    fetcher._isolation_level, fetcher._client_rack = READ_UNCOMMITTED, None
    fetcher._fetcher_timeout, fetcher._prefetch_backoff = 0.2, 0.1
    fetcher._wait_consume_future, fetcher._fetch_waiters = None, set()
    fetcher._loop, fetcher._closed = asyncio.get_running_loop(), False
    return fetcher


def _fetched(fetcher: Any, tp: Any, sizes: list[int]) -> int:
    """A fetch answered for ``tp`` from its position, as ``_proc_fetch_request`` puts it;
    the offset after it."""
    from aiokafka.consumer import fetcher as fetcher_module

    assignment = fetcher._subscriptions.subscription.assignment
    at = assignment.state_value(tp).position
    records = fetcher_module.PartitionRecords(
        tp, fetcher_module.MemoryRecords(_raw_batches(sizes, at)), [], at, None, None, True, 0
    )
    fetcher._records[tp] = fetcher_module.FetchResult(
        tp, assignment=assignment, partition_records=records, backoff=fetcher._prefetch_backoff
    )
    return at + sum(sizes)


def _asked(fetcher: Any) -> dict[Any, int]:
    """The partitions (and offsets) of the fetch aiokafka would send now."""
    from aiokafka.structs import TopicPartition

    requests = fetcher._get_actions_per_node(fetcher._subscriptions.subscription.assignment)[0]
    return {
        TopicPartition(topic, p): offset
        for _, request in requests
        for topic, parts in request.topics
        for p, offset, _ in parts
    }


def test_a_resolve_record_is_asked_for_while_the_stages_have_not_taken_the_last() -> None:
    """aiokafka asks for nothing while fetched records wait to be taken (its backoff), then
    leaves their partition out: a record sent to it waited for the app's loop, then for the
    fetch in flight. Taken as they come, the next fetch asks for every partition, each
    from past what was taken; the records are handed over in the order fetched."""
    from aiokafka.structs import TopicPartition

    resolve, clusters, other = (TopicPartition(t, 0) for t in ("r", "c", "o"))

    async def scenario() -> None:
        fetcher = _bare_fetcher([resolve, clusters, other])
        _fetched(fetcher, resolve, [3])
        assert _asked(fetcher) == {}  # aiokafka's: held until they are taken
        fetcher._records[resolve]._created -= 1.0  # past the backoff
        assert set(_asked(fetcher)) == {clusters, other}  # the partition left out

        fetcher = _bare_fetcher([resolve, clusters, other])
        kept = faust_adapter.Prefetched.install(fetcher, frozenset({"r", "c"}), limit=10)
        assert faust_adapter.Prefetched.install(fetcher, frozenset(), 1) is kept
        end = _fetched(fetcher, resolve, [3, 2])
        assert resolve not in fetcher._records and kept.taken == 1
        assert _asked(fetcher) == {resolve: end, clusters: 100, other: 100}
        end = _fetched(fetcher, resolve, [4])
        _fetched(fetcher, other, [2])  # not a prefetched topic: aiokafka's, as before
        assert other in fetcher._records
        got = await fetcher.fetched_records(set(), timeout=0)  # aiokafka's own: the rest
        assert [r.offset for r in got[other]] == [100, 101] and resolve not in got
        taken = kept.take(set(), 4)
        assert [r.offset for r in taken[resolve]] == [100, 101, 102, 103]
        assert [r.value for r in kept.take(set(), None)[resolve]] == [
            b"v%d" % n for n in range(104, end)
        ]
        assert kept.take(set(), None) == {} and kept.counts == {}

    asyncio.run(scenario())


def test_prefetched_records_wait_for_a_paused_partition_and_go_with_a_seek_or_an_assignment() -> (
    None
):
    """A partition not asked for, or paused, keeps what was taken for it; a seek or a new
    assignment drops it (the position it was fetched for is gone), and one holding its
    limit leaves the next result with the fetcher, handed over after the kept ones."""
    from aiokafka.consumer.fetcher import OffsetResetStrategy
    from aiokafka.structs import TopicPartition

    r0, r1 = TopicPartition("r", 0), TopicPartition("r", 1)

    async def scenario() -> None:
        fetcher = _bare_fetcher([r0, r1])
        kept = faust_adapter.Prefetched.install(fetcher, frozenset({"r"}), limit=3)
        _fetched(fetcher, r0, [2])
        _fetched(fetcher, r1, [2])
        assignment = fetcher._subscriptions.subscription.assignment
        assert set(kept.take(faust_adapter.StillActive({r1}), None)) == {r1}
        fetcher._subscriptions.pause(r0)
        assert kept.take(set(), None) == {}  # paused: kept
        fetcher._subscriptions.resume(r0)
        _fetched(fetcher, r0, [2])
        assert r0 not in fetcher._records and kept.counts[r0] == 4
        _fetched(fetcher, r0, [2])  # the limit reached: the fetcher keeps this one
        assert r0 in fetcher._records and kept.counts[r0] == 4
        got = await fetcher.fetched_records(set(), timeout=0)
        assert [r.offset for r in got[r0]] == [104, 105]  # (what _fetch_records appends)
        assert [r.offset for r in kept.take(set(), None)[r0]] == [100, 101, 102, 103]

        _fetched(fetcher, r0, [2])
        fetcher.seek_to(r0, 101)
        assert kept.take(set(), None) == {} and assignment.state_value(r0).position == 101
        _fetched(fetcher, r1, [2])
        fetcher.request_offset_reset([r1], OffsetResetStrategy.EARLIEST).cancel()
        assert r1 not in kept.ready
        fetcher._subscriptions.seek(r1, 200)
        _fetched(fetcher, r1, [2])
        fetcher._records.clear()  # the assignment lost (aiokafka's fetch loop)
        assert kept.take(set(), None) == {} and not kept.ready
        _fetched(fetcher, r1, [1])
        fetcher._subscriptions.assign_from_user({r0, r1})  # a new assignment
        assert kept.take(set(), None) == {} and not kept.ready

    asyncio.run(scenario())


def test_the_stages_consumer_hands_over_a_fetch_answered_while_it_waits() -> None:
    """Faust's fetch through :class:`faust_adapter.Prefetched`: what was kept goes first,
    with what the fetcher holds after it, and a fetch answered while it waits is handed
    over then, not at the end of its wait (aiokafka's own would wait on: its results
    are already taken)."""
    from types import SimpleNamespace

    from aiokafka.structs import TopicPartition

    r0 = TopicPartition("r", 0)

    async def scenario() -> None:
        fetcher = _bare_fetcher([r0])
        faust_adapter.Prefetched.install(fetcher, frozenset({"r"}), limit=100)
        thread = faust_adapter.ConsumerThread.__new__(faust_adapter.ConsumerThread)
        thread.consumer = SimpleNamespace(flow_active=True)
        consumer = SimpleNamespace(_fetcher=fetcher, _closed=False)
        _fetched(fetcher, r0, [3])
        got = await thread._fetch_records(consumer, set(), timeout=5.0, max_records=2)
        assert [r.offset for r in got[r0]] == [100, 101]

        async def answer() -> None:
            await asyncio.sleep(0.05)
            _fetched(fetcher, r0, [2])
            for waiter in list(fetcher._fetch_waiters):
                fetcher._notify(waiter)  # as the fetch loop does on new data

        got = await thread._fetch_records(consumer, set(), timeout=5.0, max_records=10)
        assert [r.offset for r in got[r0]] == [102]
        task = asyncio.create_task(answer())
        started = asyncio.get_running_loop().time()
        got = await thread._fetch_records(consumer, set(), timeout=5.0, max_records=10)
        assert [r.offset for r in got[r0]] == [103, 104]
        assert asyncio.get_running_loop().time() - started < 1.0
        await task
        assert await thread._fetch_records(consumer, set(), timeout=0.01) == {}
        thread.consumer.flow_active = False
        _fetched(fetcher, r0, [1])
        assert await thread._fetch_records(consumer, set(), timeout=0.01) == {}

    asyncio.run(scenario())


@pytest.mark.integration
def test_records_written_keep_their_leaders_once_a_topic_made_later_is_sent_to(
    tansu: LocalBroker,
) -> None:
    """aiokafka's client asks metadata for every topic while its topic set is empty, and once
    a ``send`` to a topic it does not know adds one, for that set alone: the topics
    ``Producer.write`` writes (never sent, never added) lost their leaders, and their
    batches waited for ever (the times topic's rotation met it: a worker's checkpoint stood
    at its first record to a new generation). On the bundled broker: records written, then
    a record sent through Faust to a topic made after the producer started, then records
    written again and one more topic learnt (``Producer.learn``): each flush returns and
    every record is on the broker."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.runtime.broker import ensure_topics

    prefix, app_id = names()
    written, later, learnt = f"{prefix}written", f"{prefix}later", f"{prefix}learnt"
    ensure_topics([tansu.bootstrap], {written: 2})

    async def scenario() -> None:
        app = faust_adapter.App(app_id, broker=tansu.url)
        producer = app.counted_producer
        await producer.start()
        try:
            producer.write(written, 0, b"k", b"before")
            await asyncio.wait_for(producer.flush_sent(), 20)
            ensure_topics([tansu.bootstrap], {later: 1, learnt: 1})
            await asyncio.wait_for(producer.send_and_wait(later, b"k", b"sent", 0, None, None), 20)
            for n in range(2):
                producer.write(written, n, b"k", b"after")
            await asyncio.wait_for(producer.flush_sent(), 20)  # (waited for ever)
            await asyncio.wait_for(producer.learn(learnt), 20)
            producer.write(learnt, 0, b"k", b"learnt")
            producer.write(written, 1, b"k", b"last")
            await asyncio.wait_for(producer.flush_sent(), 20)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, fetch_max_wait_ms=25)
        await consumer.start()
        try:
            tps = [TopicPartition(written, 0), TopicPartition(written, 1)]
            tps += [TopicPartition(later, 0), TopicPartition(learnt, 0)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            got: dict[Any, list[bytes]] = {tp: [] for tp in tps}
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    got[tp] += [r.value for r in records]
        finally:
            await consumer.stop()
        assert got == {
            tps[0]: [b"before", b"after"],
            tps[1]: [b"after", b"last"],
            tps[2]: [b"sent"],
            tps[3]: [b"learnt"],
        }

    asyncio.run(asyncio.wait_for(scenario(), 60))  # (a hang fails, within a minute)
