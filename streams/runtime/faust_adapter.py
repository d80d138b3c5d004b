"""Where viralwatch reaches into Faust and aiokafka: every private attribute, in one place.

The worker needs a few things neither library offers publicly: a shorter
fetch wait and the real end offsets on the bundled broker (whose
ListOffsets answer is one batch short), more room in Faust's producer
buffer, a consumer's fetch positions without awaiting, and a produce
request's bytes in one join (:func:`_encode_produce`), written with its size and header
in one more (:func:`_send_joined`). Each is reached
here and nowhere else, and ``tests/test_faust_adapter.py`` fails when an
installed Faust or aiokafka no longer has what is reached, so an upgrade
breaks a test, not a running worker.

The rest of the runtime uses the public names below: :class:`App` (a Faust
app built with :class:`Transport`), :func:`read_true_ends`,
:func:`backlogged`, :func:`committed_with_metadata`, :func:`committed_offset`, :func:`on_assigned`,
:func:`force_metadata_update`, :func:`seek_soon`, :func:`credentials`, :func:`bare_records`,
:func:`faust_broker_url`, and the producer's :meth:`Producer.write` (records
written straight into aiokafka's batches, with its public batch API).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiokafka.errors as aiokafka_errors
import faust
from aiokafka import conn as aiokafka_conn
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException, ProducerClosed
from aiokafka.protocol import produce as aiokafka_produce
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer as FaustProducerBuffer
from faust.types import TP

from streams._core import FetchedRecords, RecordBatchBuilder, read_fetched, record_batch_at
from streams.settings import Settings, parse_bootstrap

log = logging.getLogger("viralwatch.worker")

#: The local broker does not wake a waiting fetch when data arrives, so a
#: consumer would wait out Faust's fixed 1.5 s fetch wait on every hop.
LOCAL_FETCH_WAIT_MS = 25
#: The fetch wait of the worker's consumer of the stages' topics on Apache Kafka, in place
#: of Faust's fixed 1.5 s. Kafka answers a waiting fetch when data comes, but only for the
#: partitions the fetch asked for, and aiokafka leaves out of a fetch every partition
#: whose records it still holds unconsumed (and sends no other to the broker while one is
#: in flight): a record for a partition the stages were still reading waited for the
#: fetch in flight, up to 1.5 s, on a hop between workers. Two workers stood idle
#: together for about a second every few seconds (a 300,000-event backlog: 9,209
#: events/s against 17,805 with 100 ms, load 4-5). An idle worker asks 10 times a second.
KAFKA_FETCH_WAIT_MS = 100
#: Records that may wait for the Kafka client before Faust pauses the streams.
PRODUCER_BUFFER_RECORDS = 5000


_I16 = struct.Struct(">h").pack
_I32 = struct.Struct(">i").pack
_ACKS_TIMEOUT = struct.Struct(">hi").pack
_PARTITION_SIZE = struct.Struct(">ii").pack


def _encode_produce(request: Any) -> bytes:
    """A ProduceRequest's bytes (the versions in :data:`PRODUCE_REQUESTS`) as aiokafka's
    schema encodes them, in one join: the record batches are copied once, not once a level.

    aiokafka's ``Struct.encode`` joins each level of the request's nested schema (a
    partition's size and records, the partitions of a topic, the topics, the request), so a
    record batch is copied six times before the connection adds the header: 5.8 ms for a
    1.6 MB request here (3.6 ns a byte, out of cache) against 0.45 ms for one join. A worker
    from a backlog sends its state logs' 270 B an event through these requests in batches of
    up to :data:`~streams.runtime.worker.PRODUCER_BATCH_BYTES`. The bytes are the same:
    ``tests/test_faust_adapter.py`` compares them with the schema's for every version.
    (The connection joins these parts with the request's size and header, once:
    :func:`_send_joined`.)
    """
    return b"".join(_produce_parts(request))


def _produce_parts(request: Any) -> list[Any]:
    """The pieces :func:`_encode_produce` joins, the record batches among them uncopied."""
    fields = request.__dict__
    parts: list[Any] = []
    add = parts.append
    if request.API_VERSION >= 3:
        tid = fields["transactional_id"]
        if tid is None:
            add(_I16(-1))
        else:
            text = str(tid).encode("utf-8")
            add(_I16(len(text)))
            add(text)
    add(_ACKS_TIMEOUT(fields["required_acks"], fields["timeout"]))
    topics = fields["topics"]
    if topics is None:
        add(_I32(-1))
        return parts
    add(_I32(len(topics)))
    for topic, partitions in topics:
        name = str(topic).encode("utf-8")
        add(_I16(len(name)))
        add(name)
        if partitions is None:
            add(_I32(-1))
            continue
        add(_I32(len(partitions)))
        for partition, records in partitions:
            if records is None:
                add(_PARTITION_SIZE(partition, -1))
            else:
                add(_PARTITION_SIZE(partition, len(records)))
                add(records)
    return parts


def _produce_layout(request: Any) -> bool:
    """Whether a ProduceRequest version's schema is the one :func:`_encode_produce` writes:
    ``[transactional_id: String,] required_acks: Int16, timeout: Int32, topics:
    Array(topic: String, Array(partition: Int32, records: Bytes))`` (versions 0 to 7 in aiokafka
    0.14; a later flexible version, with compact arrays and tagged fields, keeps aiokafka's own)."""
    from aiokafka.protocol import types as t

    schema = request.SCHEMA
    head: tuple[str, ...] = ("transactional_id",) if request.API_VERSION >= 3 else ()
    if schema.names != (*head, "required_acks", "timeout", "topics"):
        return False
    *tid, acks, timeout, topics = schema.fields
    if (tid and type(tid[0]) is not t.String) or (acks, timeout) != (t.Int16, t.Int32):
        return False
    topic: Any = topics.array_of if type(topics) is t.Array else None
    if type(topic) is not t.Schema or len(topic.fields) != 2:
        return False
    name, partitions = topic.fields
    partition: Any = partitions.array_of if type(partitions) is t.Array else None
    return (
        type(name) is t.String
        and type(partition) is t.Schema
        and partition.fields == (t.Int32, t.Bytes)
    )


#: the ProduceRequest versions aiokafka may send, each encoded by :func:`_encode_produce`
#: where its schema is the one that writes (all of them in aiokafka 0.14)
PRODUCE_REQUESTS = [r for r in aiokafka_produce.ProduceRequest._CLASSES if _produce_layout(r)]
for _request in PRODUCE_REQUESTS:
    _request.encode = _encode_produce


def _send_joined(self: Any, request: Any, expect_response: bool = True) -> Any:
    """aiokafka's ``AIOKafkaConnection.send``, the request's size, header and body written
    in one join: a produce request's record batches copied once in all.

    aiokafka's joins the header to the encoded body (a copy), then the size to that (a
    second copy) before the socket's own: with :func:`_encode_produce`'s join, a record
    batch was copied three times on its way to the socket. A worker from a backlog
    writes its state logs' 270 B an event through these: the two concatenations took
    2.7% of one worker's busy samples (py-spy, 300,000 events; memcpy under this
    method), 0.7 us an event. The bytes written, the correlation ids and what is
    awaited are aiokafka 0.14's (``tests/test_faust_adapter.py`` compares them).
    """
    if self._writer is None:
        raise aiokafka_errors.KafkaConnectionError(
            f"No connection to broker at {self._host}:{self._port}"
        )
    request_struct = request.prepare(self._versions)
    correlation_id = self._next_correlation_id()
    header = request_struct.build_request_header(
        correlation_id=correlation_id, client_id=self._client_id
    ).encode()
    if type(request_struct) in _JOINED:
        body = _produce_parts(request_struct)
    else:
        body = [request_struct.encode()]
    size = len(header) + sum(map(len, body))
    try:
        self._writer.write(b"".join([_I32(size), header, *body]))
    except OSError as err:
        self.close(reason=aiokafka_conn.CloseReason.CONNECTION_BROKEN)
        raise aiokafka_errors.KafkaConnectionError(
            f"Connection at {self._host}:{self._port} broken: {err}"
        ) from err
    aiokafka_conn.log.debug(
        "Request to %s:%d %d: %s", self._host, self._port, correlation_id, request_struct
    )
    if not expect_response:
        return self._writer.drain()
    fut = self._loop.create_future()
    self._requests.append((correlation_id, request_struct, fut))
    return aiokafka_conn.wait_for(fut, self._request_timeout)


#: the request classes whose body :func:`_send_joined` writes from :func:`_produce_parts`
_JOINED = frozenset(PRODUCE_REQUESTS)
#: aiokafka's own ``send`` (the tests compare the two)
AIOKAFKA_SEND = aiokafka_conn.AIOKafkaConnection.send
aiokafka_conn.AIOKafkaConnection.send = _send_joined


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    #: the fetch wait (see :data:`KAFKA_FETCH_WAIT_MS`); the worker sets
    #: :data:`LOCAL_FETCH_WAIT_MS` on the local broker
    fetch_max_wait_ms: int | None = KAFKA_FETCH_WAIT_MS

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if self.fetch_max_wait_ms is not None:
            consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer

    async def on_start(self) -> None:
        """Faust's start of the consumer, then its fetched results of the app's
        ``prefetch_topics`` taken as they come (see :class:`Prefetched`)."""
        await super().on_start()
        topics = frozenset(getattr(self.app, "prefetch_topics", ()))
        if topics:
            consumer = self._ensure_consumer()
            Prefetched.install(consumer._fetcher, topics, limit=consumer._max_poll_records)

    async def getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        """Faust's fetch, draining only the partitions active both when it was asked and
        when the records are taken (see :class:`StillActive`)."""
        if active_partitions is not None:
            active_partitions = StillActive(active_partitions)  # type: ignore[assignment]
        return await super().getmany(active_partitions, timeout)

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        """Faust's ``_fetch_records`` (the consumer's thread), the records already taken
        from the fetcher (:class:`Prefetched`) handed over first, and a fetch answered
        while it waits handed over at once."""
        fetcher = consumer._fetcher
        results = getattr(fetcher, "_records", None)
        if type(results) is not Prefetched:
            return await super()._fetch_records(
                consumer, active_partitions, timeout=timeout, max_records=max_records
            )
        if not self.consumer.flow_active:
            return {}
        if consumer._closed or fetcher._closed:
            raise aiokafka_errors.ConsumerStoppedError()
        deadline = time.monotonic() + (timeout or 0.0)
        with fetcher._subscriptions.fetch_context():
            while True:
                got = results.take(active_partitions, max_records)
                left = None if max_records is None else max_records - sum(map(len, got.values()))
                if left is None or left > 0:
                    rest = await fetcher.fetched_records(
                        active_partitions, timeout=0, max_records=left
                    )
                    for tp, records in rest.items():
                        got[tp] = got[tp] + records if tp in got else records
                remaining = deadline - time.monotonic()
                if got or remaining <= 0 or fetcher._closed:
                    return got
                waiter = fetcher._create_fetch_waiter()
                done, _ = await asyncio.wait([waiter], timeout=remaining)
                if waiter in done:
                    waiter.result()  # an authorization error, as aiokafka raises it
                else:
                    waiter.cancel()

    async def _highwaters(self, partitions: list[TP]) -> Any:
        """End offsets; on the local broker, read past its answer to find the real ones.

        The local broker answers ListOffsets(latest) with the last batch's
        base offset + 1, so Faust's table recovery (which reads a changelog up
        to that offset) would miss the rest of a changelog's last batch. The
        earlier way round, one record per produce batch for the changelogs,
        allowed one record per partition per round trip: a burst of takedown
        requests stalled every stage for seconds. Production Kafka needs
        neither.
        """
        ends = dict(await super()._highwaters(partitions))
        if getattr(self.app, "probe_end_offsets", False) and any(ends.values()):
            self.app.end_offset_probes += 1  # type: ignore[attr-defined]
            reader = self._create_client_consumer(self.transport)  # type: ignore[arg-type]
            reader._fetch_max_wait_ms = LOCAL_FETCH_WAIT_MS
            ends = await read_true_ends(reader, ends)
        return ends


class Prefetched(collections.OrderedDict[Any, Any]):
    """Faust's consumer's fetched results (aiokafka's ``Fetcher._records``), where each
    result for a partition of ``topics`` (the internal topics, ``resolve`` and ``clusters``)
    is taken as it comes (its records listed, the position moved past them) and kept
    here, so that the fetcher asks for that partition's next records at once.

    aiokafka asks for no partition whose fetched records are not yet taken, and asks a
    broker for nothing at all while any partition's records, fetched less than its
    ``prefetch_backoff`` (0.1 s) ago, wait to be taken; only one fetch is in flight to a
    broker at a time. Faust takes them from the app's loop, which is busy in a stage's
    batch for 50-130 ms at a time from a backlog: a record another worker sent on
    ``resolve`` (the hop between two workers) then waited for that loop before it was
    even asked for, or, left out of the fetch in flight, for that fetch's answer (up to
    :data:`KAFKA_FETCH_WAIT_MS`): 49-102 ms from its send to the consumer's thread.

    What is kept here is handed over by :meth:`take` in the order fetched, as
    ``fetched_records`` would have: not for a partition not asked for (Faust's inactive
    ones) or paused, which keep theirs (as :meth:`_BareRecords.held` does); dropped when
    the assignment it was fetched under ends (aiokafka clears its results then:
    :meth:`clear`), or the partition is sought (:meth:`install` wraps the fetcher's
    ``seek_to`` and ``request_offset_reset``). A partition holding ``limit`` records or
    more leaves the next result with the fetcher, as before: a backlog is held to what
    aiokafka held, twice.
    """

    def __init__(self, fetcher: Any, topics: frozenset[str], limit: int) -> None:
        super().__init__()
        self.fetcher = fetcher
        self.topics = topics
        self.limit = limit
        #: per partition, each taken result's assignment and records, in the order fetched
        self.ready: dict[Any, deque[tuple[Any, list[Any]]]] = {}
        #: records kept per partition
        self.counts: dict[Any, int] = {}
        #: results taken as they came (the stats can say how the fetch went)
        self.taken = 0
        #: per topic, how old each taken result's first record was when it came (s, from
        #: its Kafka timestamp): the fetch's part of a hop (:func:`fetched_ages` takes them)
        self.ages: dict[str, list[float]] = {}

    @classmethod
    def install(cls, fetcher: Any, topics: frozenset[str], limit: int) -> Prefetched:
        """Make a started consumer's fetcher keep its results here; idempotent."""
        results = fetcher._records
        if type(results) is cls:
            return results  # type: ignore[no-any-return]
        mine = cls(fetcher, topics, limit)
        for tp, result in results.items():
            collections.OrderedDict.__setitem__(mine, tp, result)
        seek_to, reset = fetcher.seek_to, fetcher.request_offset_reset

        def sought(tp: Any, offset: int) -> None:
            mine.drop(tp)
            seek_to(tp, offset)

        def reset_requested(tps: Any, strategy: Any) -> Any:
            for tp in tps:
                mine.drop(tp)
            return reset(tps, strategy)

        fetcher.seek_to = sought
        fetcher.request_offset_reset = reset_requested
        fetcher._records = mine
        return mine

    def __setitem__(self, tp: Any, result: Any) -> None:
        if (
            tp.topic in self.topics
            and type(result) is aiokafka_fetcher.FetchResult
            and tp not in self
            and self.counts.get(tp, 0) < self.limit
        ):
            records = result.getall()  # the assignment checked, the position moved
            if records:
                stamp = records[0].timestamp
                if stamp:
                    self.ages.setdefault(tp.topic, []).append(time.time() - stamp / 1000)
                self.ready.setdefault(tp, deque()).append((result._assignment, records))
                self.counts[tp] = self.counts.get(tp, 0) + len(records)
                self.taken += 1
            return  # nothing to take: aiokafka's getall would have dropped it too
        super().__setitem__(tp, result)

    def clear(self) -> None:
        self.ready.clear()
        self.counts.clear()
        super().clear()

    def drop(self, tp: Any) -> None:
        """Forget what was kept for ``tp`` (it is sought elsewhere)."""
        self.ready.pop(tp, None)
        self.counts.pop(tp, None)

    def take(self, partitions: Any, max_records: int | None) -> dict[Any, list[Any]]:
        """Up to ``max_records`` of the kept records of the partitions in ``partitions``
        (all when it is empty or ``None``, as aiokafka reads it) that are not paused."""
        out: dict[Any, list[Any]] = {}
        if not self.ready:
            return out
        subscription = self.fetcher._subscriptions.subscription
        assignment = subscription.assignment if subscription is not None else None
        left = max_records
        for tp in list(self.ready):
            chunks = self.ready[tp]
            if assignment is None or not assignment.active or chunks[0][0] is not assignment:
                self.drop(tp)
                continue
            if (partitions and tp not in partitions) or assignment.state_value(tp).paused:
                continue
            got: list[Any] = []
            while chunks and (left is None or left > 0):
                _, records = chunks[0]
                if left is not None and len(records) > left:
                    got += records[:left]
                    chunks[0] = (chunks[0][0], records[left:])
                    left = 0
                    break
                got += records
                chunks.popleft()
                if left is not None:
                    left -= len(records)
            if got:
                out[tp] = got
                self.counts[tp] -= len(got)
            if not chunks:
                self.drop(tp)
            if left == 0:
                break
        return out


def fetched_ages(app: Any) -> dict[str, list[float]]:
    """Per topic, how old each result :class:`Prefetched` took was when it came, since the
    last call (empty when the app's consumer keeps none)."""
    thread = getattr(app.consumer, "_thread", None)
    consumer = getattr(thread, "_consumer", None)
    results = getattr(getattr(consumer, "_fetcher", None), "_records", None)
    if type(results) is not Prefetched:
        return {}
    ages, results.ages = results.ages, {}  # one swap: the consumer's thread appends
    return ages


class StillActive:
    """The partitions a fetch may drain: those active when Faust asked and still active now.

    Faust hands aiokafka's ``fetched_records`` its own set of active partitions, which
    a rebalance changes while the fetch waits in the consumer's thread (up to a second).
    aiokafka drains every partition with records when that set is empty, and Faust drops
    what it was handed for a partition no longer active, or while its flow is stopped,
    after aiokafka has moved the partition's position past it. A table recovery seeks
    the changelogs and fetches them while the set is empty (every partition paused
    between the assignment and the recovery's resume): a fetch asked before the
    rebalance took the changelogs' records and Faust dropped them, the positions at
    the end: the recovery waited for ever ("No event received for active tp ... since
    recovery start"; the survivor of ``test_a_killed_worker_pages_and_clears_when_it_is_back``).
    Here an empty set drains nothing, and a partition resumed after the fetch was asked
    waits for the next fetch.
    """

    __slots__ = ("_asked", "_live")

    def __init__(self, live: set[TP]) -> None:
        self._live = live
        self._asked = frozenset(live)  # the app's loop: Faust changes ``live`` there

    def __bool__(self) -> bool:  # aiokafka: an empty set means every partition
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self._asked and tp in self._live


async def read_true_ends(reader: Any, ends: dict[Any, int], timeout_s: float = 30.0) -> Any:
    """``ends`` corrected by reading each partition from its last record to an empty fetch.

    ``reader`` is an unstarted aiokafka consumer without a group; it is
    started and stopped here. A partition the broker calls empty stays empty.
    """
    from aiokafka import TopicPartition

    out = dict(ends)
    todo = {TopicPartition(tp.topic, tp.partition): tp for tp, end in ends.items() if end}
    if not todo:
        return out
    await reader.start()
    try:
        reader.assign(list(todo))
        for tp in todo:
            reader.seek(tp, ends[todo[tp]] - 1)
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            got = await reader.getmany(*todo, timeout_ms=200)
            for tp in list(todo):
                records = got.get(tp)
                if records:
                    out[todo[tp]] = max(out[todo[tp]], records[-1].offset + 1)
                else:  # an empty fetch: the end
                    del todo[tp]
        if todo:
            raise TimeoutError(f"could not read to the end of {sorted(map(str, todo))}")
    finally:
        await reader.stop()
    return out


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ProducerBuffer(FaustProducerBuffer):
    """Faust's producer buffer, counting the records put and those handed to the client.

    Faust's ``flush`` waits until the buffer is empty: while a reader goes on
    putting records (a checkpoint that overlaps reading) it chases them, and
    returns on the first 0.1 s without a send even if records put before it
    are still waiting. A checkpoint needs neither: only the records put before
    it began (:meth:`flush_until`). The buffer is one queue read by one task,
    so the first ``mark`` records put are the first ``mark`` handed over.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        #: records put so far, and handed to the client so far (in the order put)
        self.put_count = 0
        self.sent_count = 0

    def put(self, fut: Any) -> None:
        super().put(fut)
        self.put_count += 1

    async def _send_pending(self, fut: Any) -> None:
        try:
            await super()._send_pending(fut)
        finally:  # handed over or failed, it is no longer waiting: a flush must not wait
            self.sent_count += 1  # for it until the producer stops

    async def flush_until(self, mark: int) -> None:
        """Wait until the first ``mark`` records put are handed to the client."""
        while self.sent_count < mark:
            if self.state != "running":
                raise RuntimeError("cannot flush: the producer is not running")
            self.message_sent.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)


class Producer(faust_aiokafka.Producer):
    """Faust's producer with room for a burst of records before streams pause, a flush of
    what was sent before it (:meth:`flush_sent`), and records written straight into the
    Kafka client's batches (:meth:`write`).

    Faust pauses every stream once more than 100 records wait to be handed to
    the client, and resumes them one record at a time; a batch that decides
    a few hundred takedown requests would stall every stage for that long.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.app.conf.producer_threaded:  # never set by viralwatch: its own queue
            raise ValueError("the worker's producer is not threaded")
        self.counted = ProducerBuffer(loop=self.loop, beacon=self.beacon)
        self.counted.app = self.app
        self.counted.max_messages = PRODUCER_BUFFER_RECORDS
        self.buffer = self.counted
        #: the client's batches holding records written (:meth:`write`): the last of each
        #: (topic, partition), and each one's number and delivery (a flush waits for those
        #: numbered up to its mark)
        self._last_batch: dict[Any, Any] = {}
        self._batches = 0
        self._delivering: deque[tuple[int, asyncio.Future[Any]]] = deque()
        #: records written so far, and per topic those records and their bytes (keys and
        #: values: the worker's report, which the pipeline benchmark sums per event)
        self.written = 0
        self.written_to: collections.Counter[str] = collections.Counter()
        self.written_bytes: collections.Counter[str] = collections.Counter()

    def _new_producer(self, transactional_id: str | None = None) -> Any:
        """Faust's aiokafka producer, whose client asks metadata for every topic, always
        (:func:`ask_every_topic`): the topics :meth:`write` writes keep their leaders
        whatever else the client is sent to or learns."""
        producer = super()._new_producer(transactional_id)
        ask_every_topic(producer.client)
        return producer

    async def learn(self, topic: str) -> None:
        """Have the Kafka client learn ``topic``'s partitions and their leaders: a record
        :meth:`write` adds to a topic it does not know waits in its batch for ever (the
        sender drains no batch without a leader), and so would a flush. For a topic made
        while the worker runs (the times' generations). The client asks for every topic
        (:func:`ask_every_topic`) until it knows this one, or raises after its request
        timeout."""
        await self._ensure_producer().client._wait_on_metadata(topic)

    def write(
        self,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes | None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Add a record to the Kafka client's open batch of ``topic``'s ``partition`` (a new
        one if there is none or it is full), as the client's own ``send`` does, without a
        future for the record (a new one is the core's, :func:`_new_builder`); the flushes
        (:meth:`flush_sent`, Faust's :meth:`flush`) wait for its batch as for a record
        sent. ``value`` ``None`` deletes the key (a tombstone).

        Why not Faust's ``send_soon``: there a record is a Faust message, a future
        of its own and another of aiokafka's (each asks the loop, a ``getpid``
        system call), a place in Faust's buffer and a task step to hand it over:
        a one-worker backlog spent about a tenth of its CPU there, two thirds of
        its records takedown requests. Here a record is an append to aiokafka's
        batch builder (C). Records of one partition keep the order written.
        (aiokafka's public batch API, ``send_batch``, waits for the partition's
        last batch to leave before it takes another: a batch per checkpoint and
        partition waited out the linger, one after the other.)
        """
        accumulator = self._ensure_producer()._message_accumulator
        if accumulator._closed:
            raise ProducerClosed()
        if accumulator._exception is not None:
            raise copy.copy(accumulator._exception)
        tp = TopicPartition(topic, partition)
        pending = accumulator._batches.get(tp)
        batch = pending[-1] if pending else None
        if batch is None or not _append(batch._builder, timestamp_ms, key, value):
            # none open, or full (the sender is woken): a new one, which takes its first
            batch = accumulator._append_batch(_new_builder(accumulator), tp)
            _append(batch._builder, timestamp_ms, key, value)
        if self._last_batch.get(tp) is not batch:
            self._last_batch[tp] = batch
            self._batches += 1
            if len(self._delivering) >= 256:  # no flush for a while: drop the acked
                self._delivering = deque(d for d in self._delivering if not _acked(d[1]))
            self._delivering.append((self._batches, batch.future))
        self.written += 1
        self.written_to[topic] += 1
        self.written_bytes[topic] += len(key) + (len(value) if value is not None else 0)

    async def flush_written(self) -> None:
        """Wait until every record written before this call is acknowledged by the broker;
        raise if one was not (the offsets that made it must not be committed)."""
        await self._written_by(self._batches)

    async def _written_by(self, mark: int) -> None:
        delivering = [f for n, f in self._delivering if n <= mark]
        if not delivering:
            return
        await asyncio.wait(delivering)  # (not gather: cancelled, it would cancel the client's)
        for delivered in delivering:
            if not _acked(delivered):  # a batch the broker did not take
                if delivered.cancelled():
                    raise RuntimeError("a batch of records written was cancelled")
                raise delivered.exception()  # type: ignore[misc]
        while self._delivering and _acked(self._delivering[0][1]):
            self._delivering.popleft()

    async def flush(self) -> None:
        """Faust's flush (before it commits an agent's offsets, on a rebalance), with the
        records written, and those held back until they were (``App.settle_writes``)."""
        await self.flush_written()
        settle = getattr(self.app, "settle_writes", None)
        if settle is not None:
            await settle()
        await super().flush()

    def flush_sent(self) -> Awaitable[None]:
        """Wait (when awaited) until every record sent or written before this call is
        acknowledged by the broker; records sent after it are not waited for.

        The records waiting in Faust's buffer when called are handed to the client
        first (:meth:`ProducerBuffer.flush_until`); then the batches holding the records
        written before the call are waited for (:meth:`flush_written`), and aiokafka's
        own flush waits for the batches it holds then, which hold every record handed
        to it before.
        """
        return self._flush_until(self.counted.put_count, self._batches)

    async def _flush_until(self, mark: int, written: int) -> None:
        await self.counted.flush_until(mark)
        await self._written_by(written)
        if self._producer is not None:
            await self._producer.flush()

    @property
    def queued(self) -> int:
        """Records waiting in Faust's buffer to be handed to the client (the worker's report)."""
        return int(self.counted.size)

    def _settings_extra(self) -> Any:
        """Idempotent on Apache Kafka (:attr:`App.idempotent_producer`): a produce retried
        after the broker wrote it but before it answered (a broker restarting) is written
        once, not twice. Without it an alert went out twice when the broker restarted mid
        stream (``test_the_broker_restarted_mid_stream_loses_nothing_and_repeats_nothing``,
        about one run in eight at load 9: the worker's log said the alerts partition's
        produce was retried)."""
        if getattr(self.app, "idempotent_producer", False):
            return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}
        return super()._settings_extra()


def _new_builder(accumulator: Any) -> Any:
    """A new batch for :meth:`Producer.write`'s records: the core's
    (:class:`streams._core.RecordBatchBuilder`), unless the producer compresses (then
    aiokafka's own).

    Why the core's: aiokafka's builder (Cython) computes a batch's CRC-32C in software, a
    byte at a time, and grows its buffer by reallocation; the core's computes it with the
    CPU's CRC instruction and writes the same bytes (``tests/test_record_batch.py`` compares
    them with aiokafka's builder for random records, and reads them back from Apache Kafka
    with aiokafka and with Kafka's own Java consumer). The accumulator's sender calls the
    same methods of it (``append``, ``close``, ``closed``, ``size``, ``record_count``,
    ``_set_producer_state``, ``_build``); a record sent by Faust into such a batch gets the
    metadata aiokafka's would give.
    """
    if accumulator._compression_type:
        return accumulator.create_builder()
    txn = accumulator._txn_manager
    transactional = txn is not None and txn.transactional_id is not None
    return RecordBatchBuilder(accumulator._batch_size, transactional)


def _append(builder: Any, timestamp_ms: int | None, key: bytes, value: bytes | None) -> bool:
    """Add a record to a batch of the accumulator (the core's, or aiokafka's when Faust's
    send opened it): whether it went in (no: full)."""
    if type(builder) is RecordBatchBuilder:
        return builder.write(timestamp_ms, key, value)
    return builder.append(timestamp=timestamp_ms, key=key, value=value) is not None


def _acked(delivered: asyncio.Future[Any]) -> bool:
    """A batch the broker took (one that failed is kept: the next flush raises it)."""
    return delivered.done() and not delivered.cancelled() and delivered.exception() is None


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


class App(faust.App):
    """A Faust app whose consumers may use a short fetch wait (see :data:`LOCAL_FETCH_WAIT_MS`)
    and find the real end offsets of the local broker's partitions (see
    :meth:`ConsumerThread._highwaters`)."""

    #: correct the broker's end offsets by reading (the local broker only)
    probe_end_offsets: bool = False
    #: produce idempotently (Apache Kafka; the local broker has no producer ids)
    idempotent_producer: bool = False
    #: the topics whose fetched records the consumer's thread takes as they come, so that
    #: a new record is never left out of a fetch behind them (see :class:`Prefetched`)
    prefetch_topics: frozenset[str] = frozenset()
    #: How often the end offsets were probed (the bundled broker only; a test reads it).
    end_offset_probes: int = 0
    #: what must be on the broker before offsets are committed besides what was sent: the
    #: upstream state log's records held back until what they made is (see
    #: :class:`streams.runtime.checkpoint.Gate`); awaited by the producer's flush
    settle_writes: Callable[[], Awaitable[None]] | None = None

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)

    @property
    def counted_producer(self) -> Producer:
        """The app's producer, as this module builds it (see :class:`Producer`)."""
        producer = self.producer
        if not isinstance(producer, Producer):
            raise TypeError(f"not the adapter's producer: {type(producer).__name__}")
        return producer


def log_ends(consumer: Any, next_offsets: dict[int, int]) -> tuple[list[int], dict[int, float]]:
    """Where each assigned partition stands against its log end, as the last fetch saw it:
    those whose highwater is past the next offset this worker will read (*backlogged*), and
    those read to the end, each with when (epoch seconds) the fetch that said so was answered.

    The next offset is one past the last record read, or, before any, the consumer's
    fetch position.

    The highwater comes with every fetch response, including the long polls that find
    nothing (aiokafka notes the time of each): so the look is as fresh as the fetcher's
    last answer for that partition, and a partition not fetched (paused, no position, its
    leader not answering) grows old here, which the caller must weigh. A partition with no
    position or no highwater yet is in neither.
    """
    subscription = consumer._subscription.subscription  # aiokafka: positions, no await
    if subscription is None:  # not subscribed (yet)
        return [], {}
    states = subscription.assignment
    behind, at_end = [], {}
    for tp in consumer.assignment():
        state = states.state_value(tp) if states is not None else None
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        nxt = next_offsets.get(tp.partition)
        if nxt is None:
            if state is None or not state.has_valid_position:
                continue
            nxt = state.position
        if highwater > nxt:
            behind.append(tp.partition)
        elif state is not None and state.timestamp is not None:
            at_end[tp.partition] = state.timestamp / 1000
    return behind, at_end


class _BareResults(collections.OrderedDict[Any, Any]):
    """aiokafka's fetched results of one consumer (``Fetcher._records``), each made, as it is
    put there, to give the records as the core reads them (see :func:`bare_records`);
    ``unread``: the fetches it leaves to aiokafka, counted by why."""

    def __init__(self, unread: collections.Counter[str] | None = None) -> None:
        super().__init__()
        self.unread = unread

    def __setitem__(self, tp: Any, result: Any) -> None:
        _bare(result, self.unread)
        super().__setitem__(tp, result)


def _bare(result: Any, unread: collections.Counter[str] | None = None) -> None:
    records = getattr(result, "_partition_records", None)  # (a fetch error has none)
    if records is None:
        return
    if records._isolation_level == aiokafka_fetcher.READ_COMMITTED:
        # aborted transactions are aiokafka's to skip: its own loop, without the wrapping
        # (PartitionRecords._unpack_records calls ``self._consumer_record(tp, record)`` per
        # record: an instance attribute is called unbound, with the same arguments)
        records._consumer_record = _as_read
        return
    bare = _BareRecords(result, records, unread)
    records._records_iterator = bare.one_by_one()  # next(records), getone: the same
    result.getall = bare.getall


def _as_read(tp: Any, record: Any) -> Any:
    return record


class _RawMemoryRecords(MemoryRecords):  # type: ignore[misc]
    """aiokafka's ``MemoryRecords`` of a fetched partition, holding the bytes it reads
    (``raw``), so that :class:`_BareRecords` reads them with the compiled core, which
    checks a record batch's CRC-32C in hardware (SSE 4.2) where aiokafka's Cython computes
    it in software (0.30 us a 250-B record). aiokafka's fetcher makes one per fetched
    partition; made by this class (the name in :mod:`aiokafka.consumer.fetcher`, set on
    import), it reads as before: the bytes are the ones it holds anyway."""

    __slots__ = ("raw",)

    def __init__(self, bytes_data: bytes) -> None:
        super().__init__(bytes_data)
        self.raw = bytes_data


aiokafka_fetcher.MemoryRecords = _RawMemoryRecords  # type: ignore[misc]


class _BareRecords:
    """One fetched partition's records (a ``FetchResult``'s ``PartitionRecords``) as
    :func:`bare_records` gives them: runs of records read by the compiled core where they
    lie in the fetched bytes, or, where it leaves a fetch to aiokafka, each record batch's
    own records, taken a batch at a time.

    aiokafka hands each record through two generators and a check of its offset, in
    Python, to a loop in ``FetchResult.getall`` that counts it against ``max_records``:
    0.52 us a record above the record batch's own iteration (0.08 us, Cython), a 250-B
    ``shares`` event, with the record batch's CRC-32C checked in software (0.30 us).
    Here the fetch's bytes are read once by the core (``_core.read_fetched``: every
    batch's CRC-32C checked in hardware, control batches and records below the fetch
    offset skipped, no object per record), and ``getall`` gives a ``RecordRun`` of the
    records asked for, which the ingest stage parses in place
    (:meth:`streams.stages.Ingest.handle_records`); a record of it is made only when one
    is read (a run's first timestamp, its last offset). A fetch the core does not read (a
    compressed batch, a legacy one, a CRC that does not hold, bytes that are not a
    well-formed batch) is counted by why (``unread``) and read as before: each record
    batch checked (by the core, in hardware, where the batch's bytes are known,
    aiokafka's check otherwise, and aiokafka's again before a mismatch is raised), listed
    once by aiokafka's Cython (which decompresses, or refuses with its own error), and the
    records asked for sliced off it. Either way everything aiokafka's unpacking does for a
    consumer reading uncommitted records is kept: control batches skipped, records below
    the fetch offset skipped, the partition's next fetch offset moved past what was
    taken, and past a batch once it is all taken; ``getall`` checks the assignment and
    moves the consumer's position as aiokafka's does. A consumer reading committed
    records keeps aiokafka's loop.
    """

    __slots__ = (
        "at",
        "batch",
        "done",
        "end",
        "fetched",
        "pos",
        "raw_bytes",
        "records",
        "result",
        "unread",
    )

    def __init__(
        self, result: Any, records: Any, unread: collections.Counter[str] | None = None
    ) -> None:
        self.result = result
        self.records = records
        self.batch: list[Any] = []
        self.at = 0
        self.end = 0  # the next offset of the batch being taken
        raw = getattr(records._records, "raw", None)
        self.raw_bytes = raw if type(raw) is bytes else None
        self.pos = 0  # where the next record batch starts in ``raw_bytes``
        self.done = False
        #: the fetch as the core read it (``None``: not read yet; ``False``: left to aiokafka)
        self.fetched: FetchedRecords | Literal[False] | None = None
        #: fetches left to aiokafka, by why (the reader's count, shared by its fetches)
        self.unread = unread

    def getall(self, max_records: int | None = None) -> Any:
        """``FetchResult.getall``: up to ``max_records`` records, the position moved; none
        while the partition is paused, what was fetched kept for when it is resumed
        (:meth:`held`)."""
        result = self.result
        if self.held():
            return []
        if not result.check_assignment(result._topic_partition) or not result.has_more():
            return []
        got = self.take(max_records)
        result._update_position()
        if self.done:
            result._partition_records = None
        return got

    def held(self) -> bool:
        """Whether the partition is paused, still assigned, at the position these records
        were fetched for: then they are kept, where aiokafka's ``check_assignment`` drops
        them (and its fetcher fetches them again once the partition is resumed).

        The ``shares`` reader pauses partitions several times a second from a backlog (the
        read skew, what the stages have heard: :func:`streams.runtime.shares_reader.held_back`),
        each pause with up to a fetch's megabyte of the partition read and waiting: every
        ``getmany`` then dropped it, and it was fetched, read from the socket, checked and
        listed again (one worker from 300,000 events: 61 drops, 1.26 records listed a
        record taken; with batches of 1,000, 268 and 2.16). Apache Kafka's Java consumer
        keeps a paused partition's fetched records likewise (KAFKA-7548, since 2.4). A
        seek (another position) or a lost assignment still drops them, as aiokafka does."""
        result, records = self.result, self.records
        assignment = result._assignment
        if not assignment.active or result._partition_records is None:
            return False
        state = assignment.state_value(result._topic_partition)
        return bool(state.paused) and state.position == records.next_fetch_offset

    def one_by_one(self) -> Any:
        """The records one at a time (``PartitionRecords.__next__``, ``getone``)."""
        while got := self.take(1):
            yield got[0]

    def take(self, n: int | None) -> Any:
        """Up to ``n`` records (all: ``None``): a run of the core's, or a list of aiokafka's
        records where the core left the fetch to it."""
        if self.fetched is None:
            self.fetched = self._read()
        if self.fetched is not False:
            return self._take_read(self.fetched, n)
        return self._take_listed(n)

    def _read(self) -> FetchedRecords | Literal[False]:
        """The fetch read by the core, at the first take (a fetch dropped unread is not
        read); ``False`` where it is left to aiokafka (counted, and said once a reason)."""
        raw, records = self.raw_bytes, self.records
        if raw is None:
            return False
        got = read_fetched(raw, records.next_fetch_offset, bool(records._check_crcs))
        if isinstance(got, FetchedRecords):
            return got
        reason, detail = got
        if self.unread is not None:
            if not self.unread[reason]:
                log.warning(
                    "%s: a fetch holds %s: its records are read by the Kafka client's own "
                    "loop (counted in the stats record's unread_fetches)",
                    records._tp,
                    detail,
                )
            self.unread[reason] += 1
        return False

    def _take_read(self, fetched: FetchedRecords, n: int | None) -> Any:
        at = self.at
        stop = len(fetched) if n is None else min(len(fetched), at + n)
        self.at = stop
        self.records.next_fetch_offset = fetched.next_after(stop)
        if stop >= len(fetched):
            self.done = True
        return fetched.run(at, stop)

    def _take_listed(self, n: int | None) -> list[Any]:
        records = self.records
        out: list[Any] = []
        while n is None or len(out) < n:
            batch, at = self.batch, self.at
            if at >= len(batch):
                if not self._next_batch():
                    self.done = True
                    break
                continue
            stop = len(batch) if n is None else min(len(batch), at + n - len(out))
            out += batch[at:stop]
            self.at = stop
            records.next_fetch_offset = (
                batch[stop - 1].offset + 1 if stop < len(batch) else self.end
            )
        return out

    def _next_batch(self) -> bool:
        """The next record batch with records at or after the fetch offset, listed."""
        records = self.records
        memory = records._records
        while memory.has_next():
            batch = memory.next_batch()
            holds = self._crc_ok()
            if records._check_crcs and not (holds or batch.validate_crc()):
                raise CorruptRecordException(f"Invalid CRC - {records._tp}")
            if batch.is_control_batch:
                records.next_fetch_offset = batch.next_offset
                continue
            got = list(batch)
            first = records.next_fetch_offset
            if got and got[0].offset < first:
                got = [r for r in got if r.offset >= first]
            if not got:
                records.next_fetch_offset = batch.next_offset
                continue
            self.batch, self.at, self.end = got, 0, batch.next_offset
            return True
        return False

    def _crc_ok(self) -> bool:
        """Whether the record batch at :attr:`pos` of the fetched bytes is a magic-2 one that
        holds its CRC-32C, checked in hardware (no: not such a batch, or its bytes not known
        here; aiokafka's own check then decides), :attr:`pos` moved past it: the core's
        ``record_batch_at``, where the batch header's fields are placed once."""
        raw = self.raw_bytes
        got = None if raw is None else record_batch_at(raw, self.pos)
        if got is None:
            return False
        self.pos, holds = got
        return holds


def bare_records(consumer: Any, unread: collections.Counter[str] | None = None) -> None:
    """Make a started aiokafka consumer's ``getmany`` give each partition's records as the
    compiled core reads them from the fetched bytes (a ``RecordRun``: a sequence of records
    with ``offset``, ``timestamp``, ``key``, ``value``, ``headers``, made only when one is
    read), not a ``ConsumerRecord`` each (see :class:`_BareRecords`); a fetch the core
    leaves to aiokafka (counted in ``unread`` by why) as its record batches' own records.

    aiokafka makes a ``ConsumerRecord`` per record (a dataclass of eleven fields, with
    the key's and value's sizes and the headers as a tuple): about half a microsecond
    of a worker's CPU per ``shares`` event, the reader's largest item after the
    parser; its record batch's records, a record object, a ``bytes`` of the value and a
    list of the headers each, about 0.3 more. Everything else of aiokafka's fetch is
    kept (CRC checks, control batches, aborted transactions, positions,
    ``max_records``). For a consumer without deserializers (the record's value is what
    a ``ConsumerRecord`` would hold); results fetched before the call are changed too.
    Idempotent.
    """
    fetcher = consumer._fetcher  # aiokafka: made by start()
    if fetcher is None or type(fetcher._records) is _BareResults:
        return
    if consumer._value_deserializer is not None or consumer._key_deserializer is not None:
        raise ValueError("bare records hold the bytes as read: no deserializers")
    results = _BareResults(unread)
    for tp, result in fetcher._records.items():
        results[tp] = result
    fetcher._records = results


def seek_soon(app: Any, tp: TP, offset: int) -> None:
    """Seek ``tp`` of Faust's consumer to ``offset``, in the consumer's own thread, without
    waiting for it.

    Faust's ``Consumer.seek`` moves the aiokafka client from the app's loop
    while the client's fetcher runs in Faust's consumer thread: a replacement
    worker crashed in CI with a ``KeyError`` in aiokafka's ``fetched_records``,
    its partition state changed under the fetcher. Faust's ``seek_wait`` runs in
    that thread but then waits for the position, up to the request timeout,
    inside the agent that asked (two-worker runs stalled with it). Here the seek
    is queued on the thread's loop and the caller goes on; once it is done, the
    app's loop is told to take records from ``offset`` again (Faust drops records
    below the last offset it handed over). A partition revoked meanwhile is not
    sought, nor one assigned again by a rebalance since (its generation is not the
    one the seek was asked in: where it starts is the new assignment's); the
    reader notices records that still do not come and seeks again
    (:mod:`streams.runtime.read_offsets`).
    """
    consumer = app.consumer
    thread = consumer._thread  # Faust: the ConsumerThread that owns the aiokafka client
    app_loop = asyncio.get_running_loop()
    generation = app.consumer_generation_id

    def read_from() -> None:  # the app's loop: Faust's delivery takes ``offset`` again
        if app.consumer_generation_id == generation:
            consumer._read_offset[tp] = offset if offset else None

    def seek() -> None:  # the consumer's thread
        if app.consumer_generation_id != generation:
            return  # a rebalance came first
        try:
            thread._ensure_consumer().seek(tp, offset)
        except Exception as exc:  # revoked meanwhile, or the consumer stopping
            thread.log.warning("could not seek %s back to %d: %r", tp, offset, exc)
            return
        with contextlib.suppress(RuntimeError):  # the app's loop closed: stopping
            app_loop.call_soon_threadsafe(read_from)

    try:
        thread.thread_loop.call_soon_threadsafe(seek)
    except RuntimeError as exc:  # the consumer's loop is closed: the worker is stopping
        thread.log.warning("could not seek %s back to %d: %r", tp, offset, exc)


def credentials(settings: Settings) -> Any:
    sec = settings.security
    if sec.sasl:
        return faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password,
            mechanism=sec.sasl_mechanism,
            ssl_context=sec.ssl_context(),
        )
    if sec.tls:
        return faust.SSLCredentials(sec.ssl_context())
    return None


def faust_broker_url(broker: str) -> str:
    """Faust's form of a broker list: ``kafka://h1:p1;h2:p2``."""
    return "kafka://" + ";".join(parse_bootstrap(broker))


def on_assigned(callback: Callable[[Any], Awaitable[None]]) -> Any:
    """An aiokafka rebalance listener that awaits ``callback(partitions)`` when partitions
    are assigned (before they are fetched from) and does nothing on revocation."""
    from aiokafka import ConsumerRebalanceListener

    class OnAssigned(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            return None

        async def on_partitions_assigned(self, assigned: Any) -> None:
            await callback(assigned)

    return OnAssigned()


async def committed_with_metadata(
    consumer: Any, partitions: list[Any]
) -> dict[Any, tuple[int, str]]:
    """Each partition's committed offset with the metadata committed with it: ``(-1, "")``
    when none was committed, ``""`` when no metadata was (or the broker dropped it: the
    bundled one does, see :mod:`streams.runtime.stream_times`).

    aiokafka's ``committed`` returns the offset alone; its group coordinator
    fetches both.
    """
    found = await consumer._coordinator.fetch_committed_offsets(partitions)
    return {
        tp: (found[tp].offset, found[tp].metadata or "") if tp in found else (-1, "")
        for tp in partitions
    }


def ask_every_topic(client: Any) -> None:
    """Have an aiokafka client ask metadata for every topic, always, never for a set of
    them. The client asks for every topic while its topic set is empty, and once a topic is
    added (``add_topic``, which ``_wait_on_metadata`` calls for a topic it does not know: a
    ``send`` to a topic made after it started, a generation of the times topic learnt), for
    that set alone, and each answer replaces what it knew. A producer's records written
    straight into its batches (:meth:`Producer.write`) are never sent, so their topics are
    never added: they lost their leaders and their batches waited for ever (the times
    topic's rotation met it: a worker's checkpoint stood at its first record to a new
    generation). Here adding a topic asks for every topic again and adds none: the set
    stays empty, every answer names every topic, the new one with them once it is made.
    (A set of every topic written would name the times' deleted generations, which a
    metadata request may make again on a broker that makes topics on request.)"""

    def add_topic(topic: str) -> Any:
        return client.force_metadata_update()

    client.add_topic = add_topic


async def force_metadata_update(consumer: Any) -> None:
    """Ask the cluster for fresh metadata now (a topic created after the consumer started).

    aiokafka's consumer has no public way; its client does.
    """
    await consumer._client.force_metadata_update()


def committed_offset(app: Any, tp: Any) -> int | None:
    """The offset Faust's consumer started ``tp`` from after its last assignment (the
    committed one it sought to), if it knows it (``None`` for offset 0 too)."""
    offsets = getattr(app.consumer, "_committed_offset", None)
    value = offsets.get(tp) if offsets is not None else None
    return value if isinstance(value, int) else None


def partition_owners(app: Any, topic: str) -> dict[int, str]:
    """Which worker holds each partition of ``topic``, by the URL it advertised (Faust's
    ``canonical_url``), as of the last rebalance; empty before the first.

    Every member of the group sends its URL with its subscription and the
    leader hands every member the whole assignment with the URLs (the way
    Faust's own web views find a table key's owner), so each worker knows
    where every partition lives without a topic or a registry of its own.
    """
    dist = app.assignor.external_topic_distribution
    return {
        int(p): str(url).rstrip("/") for url, topics in dist.items() for p in topics.get(topic, ())
    }
