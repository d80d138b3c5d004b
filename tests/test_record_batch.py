"""The core's Kafka record batch (``streams._core.RecordBatchBuilder``), which the worker's
producer writes its records into in place of aiokafka's builder: the same bytes as aiokafka's
for any records (so every consumer reads them as before), read back by aiokafka, and written
to Apache Kafka and read back by aiokafka's consumer and by Apache Kafka's own Java consumer.
"""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka.record.default_records import (
    DefaultRecordBatch,
    DefaultRecordBatchBuilder,
    _DefaultRecordBatchBuilderPy,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from streams._core import RecordBatchBuilder
from streams.runtime import faust_adapter

if TYPE_CHECKING:
    from streams.runtime.kafka_server import KafkaBroker

_bytes = st.none() | st.binary(max_size=300)
_record = st.tuples(
    st.integers(-(2**40), 2**41),  # timestamps, before and after the first
    _bytes,
    _bytes,
    st.lists(st.tuples(st.text(max_size=8), _bytes), max_size=2),
)


def _aiokafka(batch_size: int, transactional: bool) -> Any:
    """aiokafka's reference builder, in Python. Its compiled builder (what aiokafka uses when
    built, and what a compressing producer still uses) differs in two edge cases, pinned by
    :func:`test_aiokafka_s_compiled_builder_differs_only_where_said`: it refuses a record
    that would fill the batch to exactly its size, and it takes a first timestamp of -1
    (Kafka's "no timestamp") for none, so the first record reads back with the second's."""
    return _DefaultRecordBatchBuilderPy(
        2,
        0,
        is_transactional=int(transactional),
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=0,
        batch_size=batch_size,
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_record, min_size=1, max_size=30),
    st.integers(0, 4000),
    st.booleans(),
    st.none() | st.tuples(st.integers(0, 2**40), st.integers(0, 2**15 - 1), st.integers(0, 2**30)),
)
def test_a_batch_s_bytes_are_aiokafka_s_for_any_records(
    records: list[Any], batch_size: int, transactional: bool, state: Any
) -> None:
    """Record for record, the same answer (taken or full, its offset, size and timestamp),
    and the same bytes built, header, CRC and producer state included."""
    ours, theirs = (
        RecordBatchBuilder(batch_size, transactional),
        _aiokafka(batch_size, transactional),
    )
    n = 0
    for ts, key, value, headers in records:
        got = ours.append(timestamp=ts, key=key, value=value, headers=headers)
        want = theirs.append(n, ts, key, value, headers)
        if want is None:
            assert got is None and ours.closed()
            break
        assert got is not None
        assert (got.offset, got.size, got.timestamp, got.crc) == (
            want.offset,
            want.size,
            want.timestamp,
            None,
        )
        n += 1
        assert ours.size() == theirs.size() and ours.record_count() == n
    if state is not None:
        ours._set_producer_state(*state)
        theirs.set_producer_state(*state)
    built = ours._build()
    assert built == bytes(theirs.build())
    assert ours._build() is built and ours.closed()  # built once (a retry sends it again)
    assert (ours.size(), ours.record_count()) == (len(built), n)
    read = DefaultRecordBatch(bytearray(built))
    assert read.validate_crc()
    assert [(r.timestamp, r.key, r.value) for r in read] == [
        (ts, k, v) for ts, k, v, _ in records[:n]
    ]


def test_aiokafka_s_compiled_builder_differs_only_where_said() -> None:
    """The compiled builder against the reference one (and so against ours): the same bytes
    for the producers' records (timestamps of now, batches not filled to the byte); it
    refuses a record that fills the batch exactly, which the reference takes; and a first
    timestamp of -1 is lost. If aiokafka changes either, this says so."""

    def both(batch_size: int, stamps: list[int]) -> tuple[Any, Any]:
        c, p = (
            DefaultRecordBatchBuilder(2, 0, 0, -1, -1, 0, batch_size),
            _aiokafka(batch_size, False),
        )
        for b in (c, p):
            for n, ts in enumerate(stamps):
                b.append(n, ts, b"k", b"v" * 40, [])
        return c, p

    now = 1_800_000_000_000
    c, p = both(1_000, [now, now + 5, now + 3])
    assert bytes(c.build()) == bytes(p.build())
    header = 61  # a v2 batch's header
    one = RecordBatchBuilder(1_000)
    assert one.append(timestamp=now, key=b"k", value=b"v" * 40) is not None
    record = one.size() - header  # this record's bytes (its time delta takes one byte)
    c, p = both(header + 2 * record, [now, now + 1])
    assert (_stamps(c), _stamps(p)) == ([now], [now, now + 1])  # the exact fill: refused by one
    c, p = both(1_000, [-1, 9])
    assert (_stamps(c), _stamps(p)) == ([9, 9], [-1, 9])


def _stamps(builder: Any) -> list[int]:
    return [r.timestamp for r in DefaultRecordBatch(bytearray(builder.build()))]


def test_write_takes_what_append_takes_and_stamps_a_record_given_no_time() -> None:
    ours, theirs = RecordBatchBuilder(200), _aiokafka(200, False)
    assert ours.write(1_800_000_000_000, b"k", b"v" * 50)
    assert ours.write(1_800_000_000_001, b"gone", None)  # a tombstone
    assert ours.write(1_800_000_000_002, bytearray(b"k2"), b"w" * 40)
    assert not ours.write(1_800_000_000_003, b"k3", b"x" * 100)  # full: closed
    assert ours.closed() and not ours.write(1_800_000_000_004, b"k", b"v")
    taken = [
        (1_800_000_000_000, b"k", b"v" * 50),
        (1_800_000_000_001, b"gone", None),
        (1_800_000_000_002, b"k2", b"w" * 40),
    ]
    for n, (ts, k, v) in enumerate(taken):
        assert theirs.append(n, ts, k, v, []) is not None
    assert ours._build() == bytes(theirs.build())
    with pytest.raises(TypeError, match="Not supported type for value"):
        RecordBatchBuilder(200).write(None, b"k", "text")
    stamped = RecordBatchBuilder(200)
    got = stamped.append(timestamp=None, key=None, value=b"v")
    assert got is not None and abs(got.timestamp - __import__("time").time() * 1000) < 60_000


def test_the_accumulator_s_batch_sends_built_bytes_and_answers_a_send_into_it() -> None:
    """A ``MessageBatch`` holding the core's builder: a record Faust's send appends (through
    the batch's ``append``) gets its offset and timestamp when the broker answers; the
    sender's producer state goes into the bytes built."""
    from aiokafka.producer.message_accumulator import MessageBatch
    from aiokafka.structs import TopicPartition

    async def run() -> None:
        batch = MessageBatch(TopicPartition("t", 0), RecordBatchBuilder(1000), 10, 0)
        assert batch._builder.write(1_800_000_000_000, b"a", b"1")
        sent = batch.append(b"b", b"2", 1_800_000_000_007)
        assert sent is not None and batch.record_count == 2 and not batch.is_empty()
        batch.set_producer_state(5, 1, 30)
        built = batch.get_data_buffer()
        read = DefaultRecordBatch(bytearray(built))
        assert read.validate_crc() and (read.producer_id, read.base_sequence) == (5, 30)
        assert [(r.offset, r.key) for r in read] == [(0, b"a"), (1, b"b")]
        batch.done(base_offset=40, timestamp=-1)
        answered = await sent
        assert (answered.offset, answered.timestamp) == (41, 1_800_000_000_007)

    asyncio.run(run())


def _write(broker_url: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    """``records`` written by the worker's producer (:meth:`faust_adapter.Producer.write`,
    into the core's batches), idempotently as a worker on Apache Kafka writes, and flushed."""

    async def run() -> None:
        app = faust_adapter.App(f"batch-{uuid.uuid4().hex[:8]}", broker=broker_url)
        app.idempotent_producer = True
        producer = app.counted_producer
        await producer.start()
        try:
            for n, (key, value) in enumerate(records):
                producer.write(topic, n % 2, key, value)  # stamped now, as a worker's
            accumulator = producer._producer._message_accumulator  # type: ignore[union-attr]
            builders = {type(b._builder) for q in accumulator._batches.values() for b in q}
            assert builders == {RecordBatchBuilder}
            await asyncio.wait_for(producer.flush_written(), 60)
        finally:
            await producer.stop()

    asyncio.run(run())


def _read_aiokafka(bootstrap: str, topic: str, count: int) -> list[tuple[int, bytes, Any]]:
    from aiokafka import AIOKafkaConsumer

    async def run() -> list[tuple[int, bytes, Any]]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", check_crcs=True
        )
        await consumer.start()
        got: list[tuple[int, bytes, Any]] = []
        try:
            async with asyncio.timeout(60):
                while len(got) < count:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        got += [(r.partition, r.key, r.value) for r in records]
        finally:
            await consumer.stop()
        return got

    return asyncio.run(run())


#: Apache Kafka's Java consumer (the console consumer's), checking every batch's CRC:
#: each record as ``partition key-hex value-hex`` (``-`` for a null value).
_JAVA_READER = textwrap.dedent(
    """
    import java.time.Duration;
    import java.util.*;
    import org.apache.kafka.clients.consumer.*;
    import org.apache.kafka.common.serialization.ByteArrayDeserializer;

    public class ReadBack {
        static String hex(byte[] b) {
            if (b == null) return "-";
            StringBuilder s = new StringBuilder();
            for (byte x : b) s.append(String.format("%02x", x));
            return s.toString();
        }
        public static void main(String[] args) {
            Properties p = new Properties();
            p.put("bootstrap.servers", args[0]);
            p.put("group.id", "read-back-" + UUID.randomUUID());
            p.put("auto.offset.reset", "earliest");
            p.put("check.crcs", "true");
            p.put("key.deserializer", ByteArrayDeserializer.class.getName());
            p.put("value.deserializer", ByteArrayDeserializer.class.getName());
            int want = Integer.parseInt(args[2]);
            try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
                c.subscribe(List.of(args[1]));
                int got = 0;
                long until = System.currentTimeMillis() + 60_000;
                while (got < want && System.currentTimeMillis() < until) {
                    for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) {
                        String line = r.partition() + " " + hex(r.key());
                        System.out.println(line + " " + hex(r.value()));
                        got++;
                    }
                }
            }
        }
    }
    """
)


@pytest.mark.integration
def test_records_written_to_apache_kafka_read_back_by_aiokafka_and_kafka_s_java_consumer(
    tmp_path: Path, broker: KafkaBroker
) -> None:
    """On the session's Apache Kafka (``conftest.broker``), in a topic of its own."""
    from streams.runtime.broker import ensure_topics
    from streams.runtime.kafka_server import java, kafka_lib

    bootstrap = broker.url.removeprefix("kafka://")
    topic = f"t{uuid.uuid4().hex[:8]}.batches"
    ensure_topics([bootstrap], {topic: 2})
    records: list[tuple[bytes, bytes | None]] = [
        (b"k%d" % n, None if n % 7 == 3 else b"v%d-" % n + bytes(range(n % 256)) * 3)
        for n in range(600)
    ]
    _write(broker.url, topic, records)
    want = sorted((n % 2, k, v) for n, (k, v) in enumerate(records))
    assert sorted(_read_aiokafka(bootstrap, topic, len(records))) == want
    source = tmp_path / "ReadBack.java"
    source.write_text(_JAVA_READER)
    out = subprocess.run(
        [java(), "-cp", f"{kafka_lib()}/*", str(source), bootstrap, topic, str(len(records))],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout.decode()
    read = [line.split(" ") for line in out.splitlines() if line and line[0].isdigit()]
    assert (
        sorted(
            (int(p), bytes.fromhex(k), None if v == "-" else bytes.fromhex(v)) for p, k, v in read
        )
        == want
    )
