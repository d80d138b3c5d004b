"""The ``shares`` reader: stage 1a's input, read in batches by a consumer group of its own.

Not a Faust agent: Faust's per-record path (an event, a task and a stream
step for each record) cost more CPU than everything the stages do with a
record, and this stage keeps no table that needs Faust. Its records go to
:meth:`Topology.ingest_records`; its offsets are committed by the
:class:`~streams.runtime.checkpoint.Checkpoint` once what they became is
flushed (at least once: a record read again changes nothing downstream).

It also keeps the event-time clock of the ``shares`` partitions honest: a
partition with records not read yet is busy, not idle
(:meth:`SharesReader.touch_backlogged`), and partitions far ahead in event
time are paused while the others catch up (:meth:`SharesReader.pace`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from streams.runtime.checkpoint import Checkpoint
from streams.runtime.faust_adapter import (
    LOCAL_FETCH_WAIT_MS,
    bare_records,
    committed_with_metadata,
    log_ends,
    on_assigned,
)
from streams.runtime.stream_times import KeptTimes, taken
from streams.runtime.topology import Topology
from streams.settings import Settings
from streams.watermarks import NO_TIME

log = logging.getLogger("viralwatch.worker")

#: How often the reader commits its offsets (after a flush of what they became).
COMMIT_EVERY_S = 1.0
#: How far (event time) a shares partition may be read ahead of the slowest one with a backlog.
READ_SKEW_MS = 5_000
#: How far (event time) a shares partition may be read ahead of what the resolve partitions
#: here have heard of the slowest input (see :func:`held_back`). With two workers each hears
#: of the other's reading one Kafka hop late, so this is how much event time a round trip
#: between them lets each read: 5 s held two workers to about 90 s of event time a second
#: (their readers paused most of the time), below one worker's rate. What a held store
#: can take is bounded by the *held* rule, not by this.
HEARD_AHEAD_MS = 30_000
#: How full a resolve partition's held store may get before only the slowest shares
#: partition is read (see :func:`held_back`).
HELD_SLOW_FILL = 0.5
#: Most records read in one batch when a whole one could overflow a held store (see
#: :func:`read_limit`): the batch size before it became 4,000.
NEAR_BOUND_BATCH = 1_000
#: Most of a bound (on a held store, on what waits for the watermark) one batch may be
#: (see :func:`read_limit`): 4,000 records at the default bounds, 1,000 at the tests' tenth
#: of them, where 4,000-record batches had 11,000-19,000 events wait against a bound of
#: 2,000 (``tests/test_backlog_integration.py``; 4,100-4,200 at 1,000).
BOUND_BATCH_SHARE = 0.1
#: Once what waits for the watermark reaches ``VIRALWATCH_MAX_PENDING``, the *pending*
#: rule of :func:`held_back` holds until it falls below this share of the bound (see
#: :func:`holding`): the reader then reads whole batches again, rather than a batch cut
#: to what fits under the bound each time the watermark frees a few.
PENDING_RESUME_FILL = 0.8


class SharesReader:
    """Reads ``shares`` into a :class:`Topology`; commits through a :class:`Checkpoint`."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        checkpoint: Checkpoint,
        *,
        on_delays: Callable[[Iterable[float]], None] | None = None,
        kept_times: KeptTimes | None = None,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.checkpoint = checkpoint
        #: where the partitions' newest event times are kept beside the offsets on a broker
        #: that drops a commit's metadata (the bundled one: see :mod:`.stream_times`)
        self.kept_times = kept_times
        #: the offsets a checkpoint is about to commit, each with its partition's newest
        #: event time as they were taken (see :meth:`note_offsets`)
        self._noted: dict[int, tuple[int, int]] = {}
        #: the Kafka timestamps (s) of each batch read, to note how long records waited
        self.on_delays = on_delays
        self.topic = settings.topic("shares")
        self.consumer: Any = None
        self.read = 0
        #: wall time (Unix s) of the first batch read with records: where a backlog's span
        #: starts (the benchmark reads it from the stats record, finer than the record's time)
        self.first_read_at: float | None = None
        #: partitions with records not read yet (see :meth:`touch_backlogged`)
        self.backlogged: list[int] = []
        #: partitions paused by :meth:`pace` (the stats record shows them)
        self.paused: list[int] = []
        #: whether the *pending* rule holds (see :func:`holding`)
        self.holding = False
        #: wall time (s) the reader stood with every partition it has records for paused,
        #: by the rule that paused the slowest of them (:func:`stop_cause`): what holds a
        #: backlog's reading back, time-weighted (the stats record and the benchmark say it)
        self.stopped_s: dict[str, float] = {}
        #: how many times it stood, by the same rule (a stop's mean length: what a round
        #: trip between two workers costs a reader held by what it has heard)
        self.stops: dict[str, int] = {}
        self._stopped: tuple[float, str] | None = None
        #: wall time (s) the reading waited for the checkpoint's commits (in line with it)
        self.commit_s = 0.0
        #: fetched partitions the compiled core left to the Kafka client's own loop, by why
        #: (``compressed``, ``old_magic``, ``crc``, ``malformed``: see :func:`bare_records`)
        self.unread: Counter[str] = Counter()

    def make_consumer(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        s = self.settings
        return AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            group_id=f"{s.app_id}.shares",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_s * 1000),
            fetch_max_wait_ms=LOCAL_FETCH_WAIT_MS if s.local_broker else 500,
            max_poll_records=s.batch_size,
            **s.security.aiokafka_config(),
        )

    async def run(self) -> None:
        """Read until cancelled; an error is raised to the caller (which ends the worker).

        The consumer gives the records as the compiled core reads them
        (:func:`bare_records`), set up once here, after ``start()`` and before it is
        subscribed: aiokafka makes the fetcher
        and its dict of fetched results once, in ``start()``; a rebalance or a lost
        assignment clears that dict (``clear()``), a reconnection is the client's and keeps
        the fetcher, so every result fetched for the consumer's life goes through it."""
        s = self.settings
        consumer = self.make_consumer()
        await consumer.start()
        bare_records(consumer, self.unread)
        self.consumer = consumer
        await self.drop_old_times()  # (this generation made: written to)
        consumer.subscribe([self.topic], listener=on_assigned(self.resume_stream_times))
        wait_ms = max(1, int(s.batch_wait_s * 1000))
        committed_at = time.monotonic()
        try:
            while True:
                await self.poll(wait_ms)
                self.pace()
                if time.monotonic() - committed_at >= COMMIT_EVERY_S:
                    committed_at = time.monotonic()
                    await self.checkpoint.commit(self.owned())
                    self.commit_s += time.monotonic() - committed_at
                    if self.kept_times is not None:  # a quiet holder's pairs written again
                        self.kept_times.refresh(self.topology.ingest.clock.assigned)
                        await self.drop_old_times()
        finally:
            self.consumer = None
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def drop_old_times(self) -> None:
        """The times' topic's current generation made, and its old ones deleted once a new one
        began (:meth:`~streams.runtime.stream_times.KeptTimes.make_current`, ``drop_old``); a
        failure is said, and tried again (the records stay meanwhile, the writer writes to
        the generation it has)."""
        kept = self.kept_times
        if kept is None:
            return
        try:
            await kept.make_current()
            dropped = await kept.drop_old()
        except Exception as exc:  # the broker's: tried again at the next commit
            log.warning("%s: its generations could not be made or deleted (%r)", kept.topic, exc)
            return
        if dropped:
            log.info("%s: old generations deleted: %s", kept.topic, ", ".join(dropped))

    async def poll(self, wait_ms: int) -> int:
        """One batch from the consumer (waiting up to ``wait_ms``), handled; how many records.

        The records are runs of the compiled core's, not aiokafka's ``ConsumerRecord``
        (:func:`bare_records`, set up by :meth:`run`): no object is made per record."""
        s = self.settings
        limit = read_limit(s.batch_size, self.topology.held_fill(), s.max_held, s.max_pending)
        got = await self.consumer.getmany(timeout_ms=wait_ms, max_records=limit)
        runs = [(tp.partition, recs) for tp, recs in got.items() if recs]
        if runs:
            self.handle(runs)
        return sum(len(recs) for _, recs in runs)

    def owned(self) -> set[int]:
        consumer = self.consumer
        return {tp.partition for tp in consumer.assignment()} if consumer is not None else set()

    def handle(self, runs: Sequence[tuple[int, Sequence[Any]]]) -> None:
        """One batch read: each partition's records (in offset order, with ``offset``,
        ``value`` and ``timestamp``: a run of the compiled core's, as :func:`bare_records`
        gives them, or the Kafka client's records) through the topology, then the
        checkpoint's first steps.

        Per partition, not per record: the runs go to the parser as they are (the values
        parsed where they lie in the fetched bytes, :meth:`Topology.ingest_records`), the
        offset stored is the run's last, and the delay noted is of each run's first
        record (the oldest a partition gives: its producer stamps in order). A list of
        the values and one of their partitions had cost 0.08 us an event, the Kafka
        client's record objects 0.23 (the twenty-third session's count).
        """
        if self.first_read_at is None:
            self.first_read_at = time.time()
        self.read += sum(len(recs) for _, recs in runs)
        if self.on_delays is not None:
            self.on_delays([(recs[0].timestamp or 0) / 1000 for _, recs in runs])
        for partition, recs in runs:
            self.checkpoint.store_offset(partition, recs[-1].offset)
        now = time.monotonic()
        self.touch_backlogged(now)
        self.topology.ingest_records(runs, now)
        self.checkpoint.stage()

    def heartbeat(self) -> None:
        """Where event time stands when no data flows (and which partitions are read here)."""
        consumer = self.consumer
        if consumer is None:
            return
        now = time.monotonic()
        with contextlib.suppress(Exception):  # the consumer's assignment: best effort
            owned = self.owned()
            revoked = set(self.checkpoint.next_offsets()) - owned
            self.checkpoint.forget(revoked)  # their next owner goes on
            self.topology.ingest.clock.assign(owned, now)
            self.touch_backlogged(now)
        self.topology.heartbeat(now)
        self.checkpoint.stage()

    def touch_backlogged(self, now: float) -> None:
        """A shares partition with records not read yet is busy, not idle; one read to the
        end of its log may be idle.

        Idleness is measured in wall time since a partition's last record, so a
        worker working through a backlog (and reading one partition's chunk
        while the others wait in the fetcher) would call them idle and let the
        watermark run ahead of them: their events would come late and their
        reshares' parents "never". So a partition whose highwater is past what
        this worker has read counts as just seen; and one is idle only when
        the fetcher's last answer for it, no older than the idle time, found it
        read to its end (:meth:`SourceClock.at_end`): one not fetched lately
        (paused, just assigned, its leader not answering) is waited for. (The
        local broker's highwater can be one batch short: the last batch of a
        partition is then judged by wall time alone.)
        """
        consumer = self.consumer
        if consumer is None:
            return
        with contextlib.suppress(Exception):  # internals of a running consumer: best effort
            clock = self.topology.ingest.clock
            self.backlogged, ends = log_ends(consumer, self.checkpoint.next_offsets())
            for p in self.backlogged:
                clock.observe(p, None, now)
            ago = time.time() - now  # the fetcher's epoch seconds on the clock of ``now``
            for p, answered in ends.items():
                clock.at_end(p, answered - ago)

    def pace(self) -> None:
        """Read a backlog evenly in event time: pause the partitions that are ahead.

        aiokafka hands out one partition's fetched records before the next's,
        so a worker catching up would read one partition far ahead in event
        time of the others; the watermark follows the slowest, so
        nothing downstream could be applied until the others caught up, and
        everything read early would wait in memory. Partitions more than
        :data:`READ_SKEW_MS` ahead of the slowest one with records unread
        are paused until it catches up (see :meth:`SourceClock.ahead`).
        """
        consumer = self.consumer
        if consumer is None:
            return
        with contextlib.suppress(Exception):  # pausing is an optimisation: never stop reading
            clock = self.topology.ingest.clock
            ahead = clock.ahead(self.backlogged, READ_SKEW_MS)
            newest = {p: clock.newest(p) for p in clock.assigned}
            heard, pending_to = self.heard(), self.pending_to()
            ahead |= held_back(
                newest, self.backlogged, heard, self.topology.held_fill(), pending_to=pending_to
            )
            self.paused = sorted(ahead)
            busy = [p for p in self.backlogged if p in newest]
            stopped = bool(busy) and ahead.issuperset(busy)
            self.note_stop(
                stop_cause(newest, busy, heard, pending_to) if stopped else None,
                time.monotonic(),
            )
            owned = {tp.partition: tp for tp in consumer.assignment()}
            paused = {tp.partition for tp in consumer.paused()}
            pause = [owned[p] for p in ahead - paused if p in owned]
            resume = [owned[p] for p in paused - ahead if p in owned]
            if pause:
                consumer.pause(*pause)
            if resume:
                consumer.resume(*resume)

    def heard_more(self) -> None:
        """The stages here have taken another worker's records (its reading heard, the
        watermark moved on): a reader standing with partitions held back looks again now
        (:meth:`pace`), not after its wait for a batch (``VIRALWATCH_BATCH_WAIT``, 50 ms,
        with nothing to read). Two workers reading a backlog take turns this way, each
        held by what it has heard of the other's reading; each turn waited for that
        look, up to the batch wait, before the reader could fetch again."""
        if self.paused:
            self.pace()

    def note_stop(self, cause: str | None, now: float) -> None:
        """The reader stands (``cause``: the rule that holds its slowest partition) or reads
        (``None``) from ``now`` on: the time since the last call goes to the cause then.

        >>> r = SharesReader.__new__(SharesReader)
        >>> r.stopped_s, r.stops, r._stopped = {}, {}, None
        >>> r.note_stop("heard", 10.0); r.note_stop("heard", 10.5); r.note_stop(None, 11.25)
        >>> r.note_stop("pending", 12.0); r.note_stop(None, 12.5); r.stopped_s, r.stops
        ({'heard': 1.25, 'pending': 0.5}, {'heard': 1, 'pending': 1})
        """
        was = None
        if self._stopped is not None:
            since, was = self._stopped
            self.stopped_s[was] = self.stopped_s.get(was, 0.0) + now - since
        if cause is not None and cause != was:
            self.stops[cause] = self.stops.get(cause, 0) + 1
        self._stopped = None if cause is None else (now, cause)

    def heard(self) -> int | None:
        """What the *heard* rule of :func:`held_back` bounds the reading by:
        :meth:`Topology.heard`, or, on a worker that holds no resolve partition (more
        workers than partitions, or between two assignments), what its clusters partitions
        have heard: their lowest watermark (the resolve partitions' progress, behind their
        inputs by the allowed lateness) plus the lateness. Before, such a worker read with
        no bound at all. ``None`` (no bound) when it holds neither, or a watermark is not
        known yet (a partition just taken over waits for the progress of every resolve
        partition: reading is not held up for it)."""
        heard = self.topology.heard()
        if heard is not None or self.topology.resolvers or not self.topology.detectors:
            return heard
        wm = self.lowest_watermark(unknown_is_lowest=True)
        return None if wm == NO_TIME else wm + self.settings.lateness_ms

    def lowest_watermark(self, *, unknown_is_lowest: bool) -> int:
        """The lowest watermark of the clusters partitions held here (:data:`NO_TIME`: none
        held). One not known yet (a partition just taken over) is :data:`NO_TIME`: with
        ``unknown_is_lowest`` that is the answer (:meth:`heard`: no bound until every one is
        known, reading is not held up for it); without, it is left out (:meth:`pending_to`:
        the bound is the known ones', :data:`NO_TIME` only when none is known)."""
        marks = [d.watermark.value for d in self.topology.detectors.values()]
        if not unknown_is_lowest:
            marks = [wm for wm in marks if wm != NO_TIME]
        return min(marks, default=NO_TIME)

    def pending(self) -> int:
        """Events waiting for the watermark in the clusters partitions held here (what
        ``VIRALWATCH_MAX_PENDING`` bounds: see :meth:`pending_to`)."""
        return sum(d.pending for d in self.topology.detectors.values())

    def pending_to(self) -> int | None:
        """``None`` while the *pending* rule does not hold (:func:`holding`: the clusters
        partitions here have not reached ``VIRALWATCH_MAX_PENDING`` events waiting for the
        watermark, or have fallen below :data:`PENDING_RESUME_FILL` of it since); while it
        holds, how far (event time) the slowest partition may still be read (see
        :func:`held_back`): the allowed lateness and :data:`HEARD_AHEAD_MS` past the
        lowest of their watermarks known, what the inputs must pass for it to move on;
        :data:`NO_TIME` while none is known (the start, a partition taken over: only
        partitions not read yet are read)."""
        self.holding = holding(self.pending(), self.settings.max_pending, self.holding)
        if not self.holding:
            return None
        wm = self.lowest_watermark(unknown_is_lowest=False)
        return NO_TIME if wm == NO_TIME else wm + self.settings.lateness_ms + HEARD_AHEAD_MS

    def note_offsets(self, offsets: dict[int, int]) -> None:
        """The checkpoint takes ``offsets`` to commit (after its step 2, before the producer
        flush): each partition's newest event time is taken with its offset now, and goes
        with it in the commit's metadata (:meth:`commit_offsets`); where the broker drops
        that metadata, the pairs are written to the times' topic now
        (:class:`~streams.runtime.stream_times.KeptTimes`), so the flush the commit waits
        for covers them: a committed offset's time is on the broker before the offset is."""
        clock = self.topology.ingest.clock
        self._noted = taken(offsets, clock.newest)
        if self.kept_times is not None:
            # with the pairs of the others held, as last committed: every record names
            # every partition held, so a read back is bounded (stream_times.read_back)
            self.kept_times.write(self._noted, held=clock.assigned)

    def _time_of(self, partition: int, offset: int) -> int:
        """The newest event time to commit with ``offset`` of ``partition``: the one noted
        with it (:meth:`note_offsets`), else the clock's now."""
        noted = self._noted.get(partition)
        if noted is not None and noted[0] == offset:
            return noted[1]
        return self.topology.ingest.clock.newest(partition)

    async def commit_offsets(self, offsets: dict[int, int]) -> None:
        """Step 4 of the checkpoint: commit ``offsets`` (next to read, per partition), each
        with its partition's newest event time (:meth:`note_offsets`) as metadata."""
        from aiokafka import TopicPartition
        from aiokafka.structs import OffsetAndMetadata

        consumer = self.consumer
        if consumer is None:
            raise RuntimeError("the shares reader is not running")
        at = OffsetAndMetadata
        pairs = {p: (o, self._time_of(p, o)) for p, o in offsets.items()}
        await consumer.commit(
            {TopicPartition(self.topic, p): at(o, stream_time(t)) for p, (o, t) in pairs.items()}
        )
        if self.kept_times is not None:
            self.kept_times.committed(pairs)

    async def resume_stream_times(self, partitions: Iterable[Any]) -> None:
        """Partitions assigned: their newest event time as their previous reader committed it
        (see :meth:`SourceClock.resume`): from the commit's metadata, or, where the broker
        dropped it, from the times' topic (the time written with the committed offset,
        :mod:`.stream_times`); unknown where neither has it."""
        consumer = self.consumer
        tps = [tp for tp in partitions if tp.topic == self.topic]
        if consumer is None or not tps:
            return
        clock = self.topology.ingest.clock
        dropped: dict[int, int] = {}
        kept = self.kept_times
        for tp, (offset, metadata) in (await committed_with_metadata(consumer, tps)).items():
            ts = parse_stream_time(metadata)
            if ts is not None:
                clock.resume(tp.partition, ts)
                if kept is not None:
                    kept.resumed({tp.partition: offset}, {tp.partition: ts})
            elif offset >= 0:
                dropped[tp.partition] = offset
        if kept is None or not dropped:
            return
        kept.resumed(dropped, {})  # unknown until found (a pair held before is no longer)
        try:
            found = await kept.read(dropped)
        except Exception as exc:  # the broker's, or too slow: unknown, as with no record
            log.warning(
                "shares partitions %s: their event times could not be read back from %s "
                "(%r); they are known again once records are read",
                sorted(dropped),
                kept.topic,
                exc,
            )
            return
        for p, ts in found.items():
            clock.resume(p, ts)
        kept.resumed(dropped, found)
        log.info(
            "shares partitions %s: newest event times read back from %s with their committed "
            "offsets%s",
            sorted(found),
            kept.topic,
            f"; none for {sorted(set(dropped) - set(found))}" if len(found) < len(dropped) else "",
        )


def holding(pending: int, max_pending: int, was_holding: bool) -> bool:
    """Whether the *pending* rule of :func:`held_back` holds, with ``pending`` events
    waiting for the watermark: from ``max_pending`` on, and, once it held, until they
    fall below :data:`PENDING_RESUME_FILL` of it.

    Without the lower mark, pending sat at the bound in a million-event backlog with two
    workers (the clusters watermark trails the inputs by 160-230 s of event time): each
    time the watermark freed a few hundred events, a batch was read and the rule held
    again, and the batches were cut to what fitted (1,000 records: 38-39 us an event
    against 34-35 with whole batches, the fourteenth session's diagnostic runs).

    >>> holding(49_999, 50_000, was_holding=False), holding(50_000, 50_000, False)
    (False, True)
    >>> holding(40_000, 50_000, True), holding(39_999, 50_000, True)
    (True, False)
    """
    if pending >= max_pending:
        return True
    return was_holding and pending >= max_pending * PENDING_RESUME_FILL


def read_limit(batch_size: int, held_fill: float, max_held: int, max_pending: int) -> int:
    """Most records the next batch reads: ``batch_size``, but no more than
    :data:`BOUND_BATCH_SHARE` of the bound on a held store (``max_held``) or on what
    waits for the watermark (``max_pending``), and no more than :data:`NEAR_BOUND_BATCH`
    once a whole batch could fill the fullest held store (``held_fill`` full) past its
    bound, where reshares are refused. A share is never below :data:`NEAR_BOUND_BATCH`
    (the batch size before it was 4,000).

    The bounds are checked between batches (:func:`held_back`), so a worker passes them
    by what the batches in flight carry (its own, and the other workers' on their way):
    larger batches would pass them by more, hence a share of each bound. Larger batches
    cost less (each batch has its envelopes, records and checkpoint: two workers, whose
    envelopes cross Kafka, spent about 30 us an event at 4,000 records a batch against
    35-46 at 1,000), so they are read whole, at the default bounds, until one could
    overflow a held store (a record holds one reshare at most). Before, the cut came at a
    quarter full and at a batch short of ``VIRALWATCH_MAX_PENDING``: in a million-event
    backlog with two workers the index's owner read 1,000 at a time in nearly every
    batch (its held store 0.3-0.76 full: the *held* rule of :func:`held_back` keeps it
    from filling), the other worker in half of them (what waits for the watermark sat
    at its bound). That rule now holds until what waits has fallen well below the bound
    (:func:`holding`), so the reading goes in whole batches or waits.

    >>> read_limit(4000, held_fill=0.1, max_held=100_000, max_pending=50_000)
    4000
    >>> read_limit(4000, held_fill=0.96, max_held=100_000, max_pending=50_000)
    4000
    >>> read_limit(4000, held_fill=0.961, max_held=100_000, max_pending=50_000)
    1000
    >>> read_limit(4000, held_fill=0.1, max_held=10_000, max_pending=50_000)  # a tenth
    1000
    >>> read_limit(4000, held_fill=0.1, max_held=100_000, max_pending=30_000)
    3000
    >>> read_limit(500, held_fill=0.999, max_held=100_000, max_pending=2_000)
    500
    """
    if held_fill + batch_size / max(1, max_held) > 1:
        return min(batch_size, NEAR_BOUND_BATCH)
    share = int(min(max_held, max_pending) * BOUND_BATCH_SHARE)
    return min(batch_size, max(share, NEAR_BOUND_BATCH))


def held_back(
    newest: Mapping[int, int],
    backlogged: Iterable[int],
    heard: int | None,
    held_fill: float,
    *,
    pending_to: int | None = None,
) -> set[int]:
    """The partitions with records unread (``backlogged``) that must wait, so that reading
    a backlog never outruns what the stages after it can hold: backpressure, not loss.

    Reading a backlog, the reader can take 65,000 records a second, tens of minutes of
    event time, while the resolve partitions have heard of a fraction (for
    :data:`~streams.runtime.worker.HAND_OVER_GRACE_S` after an assignment everything goes
    through the ``resolve`` topic, and the registrations a held reshare waits for queue
    behind the data there). The reshares waiting for their parents then filled each
    resolve partition's held store in the first second and were refused
    (``orphan_overflow``), their own reshares became orphans for good, and those held the
    progress back one round at a time: 37,755 of 299,058 events refused, the clusters
    watermark crawling at 3 s of event time a second (a 300,000-event backlog with
    ``VIRALWATCH_MAX_HELD=20000``). Two rules, with ``newest`` each owned partition's
    newest event time read:

    - *heard*: a partition read more than :data:`HEARD_AHEAD_MS` past ``heard``, the
      slowest busy input as every resolve partition here has heard it
      (:meth:`Topology.heard`: the other workers' inputs too, so workers align with each
      other), waits until they hear more; while they have not heard of every input
      (:data:`NO_TIME`, the first second), a partition read at all waits. It never
      deadlocks: what was read reaches the resolve partitions without more reading.
    - *held*: when a held store here is :data:`HELD_SLOW_FILL` full, only the slowest
      partition (a partition not read yet the slowest of all) is read: it is what the
      watermark that frees held events waits for, so it is never paused by this rule.
    - *pending*: when the clusters partitions here hold ``VIRALWATCH_MAX_PENDING`` events
      waiting for the watermark (``pending_to`` is not ``None``), only the slowest
      partition is read, and it only up to ``pending_to`` (their watermark, the allowed
      lateness and :data:`HEARD_AHEAD_MS`; while it is :data:`NO_TIME`, only if it was
      not read yet, as for *heard*: the first seconds read 30,000 records). Reading
      the slowest alone does not slow reading down, it only keeps the partitions level;
      the limit does, and what the watermark must have to move on (every input past it
      by the lateness) is still read: no deadlock. The window of the *heard* rule bounds
      how far a reader gets ahead of what was heard, not how much waits behind the
      watermark: with two workers the clusters watermark trails the inputs by the chain
      of held reshares (500 s of event time in a million-event backlog), and up to
      230,000 events read waited for it at a 30-s window (one worker: 33,000).

    >>> newest = {0: 10_000, 1: 14_000, 2: 60_000, 3: NO_TIME}
    >>> sorted(held_back(newest, [0, 1, 2], heard=9_000, held_fill=0.1))
    [2]
    >>> sorted(held_back(newest, [0, 1, 2, 3], heard=NO_TIME, held_fill=0.1))  # not heard yet
    [0, 1, 2]
    >>> sorted(held_back(newest, [0, 1, 2], heard=None, held_fill=0.1))  # nothing to bound by
    []
    >>> sorted(held_back(newest, [0, 1, 2], heard=30_000, held_fill=0.6))  # held filling
    [1, 2]
    >>> sorted(held_back(newest, [1, 2], heard=30_000, held_fill=0.6))  # 0 is read to its end
    [2]
    >>> sorted(held_back(newest, [0, 1, 2], heard=30_000, held_fill=0.1, pending_to=NO_TIME))
    [0, 1, 2]
    >>> sorted(held_back(newest, [0, 3], heard=30_000, held_fill=0.1, pending_to=NO_TIME))
    [0]
    >>> sorted(held_back(newest, [0, 1, 2], heard=30_000, held_fill=0.1, pending_to=12_000))
    [1, 2]
    >>> sorted(held_back(newest, [0, 1, 2], heard=30_000, held_fill=0.1, pending_to=9_000))
    [0, 1, 2]
    """
    busy = [p for p in backlogged if p in newest]
    if not busy:
        return set()
    out: set[int] = set()
    if heard is not None:
        out |= {p for p in busy if past_heard(newest[p], heard)}
    if held_fill >= HELD_SLOW_FILL or pending_to is not None:
        slowest = min(busy, key=lambda p: (newest[p], p))
        out |= {p for p in busy if p != slowest}
        if pending_to is not None and newest[slowest] > pending_to:
            out.add(slowest)  # NO_TIME: it was read; the watermark is coming
    return out


def past_heard(newest: int, heard: int) -> bool:
    """The *heard* rule of :func:`held_back` for a partition read up to ``newest``: read
    more than :data:`HEARD_AHEAD_MS` past what was heard, or, while not every input has been
    heard of (``heard`` is :data:`NO_TIME`), read at all. :func:`stop_cause` asks it too.

    >>> past_heard(40_000, 9_000), past_heard(39_000, 9_000), past_heard(NO_TIME, NO_TIME)
    (True, False, False)
    """
    return newest != NO_TIME if heard == NO_TIME else newest > heard + HEARD_AHEAD_MS


def stop_cause(
    newest: Mapping[int, int], busy: Sequence[int], heard: int | None, pending_to: int | None
) -> str:
    """Which rule of :func:`held_back` holds the slowest of the ``busy`` partitions (the
    others wait for it, by the *held* rule or :data:`READ_SKEW_MS`, so it is what stops
    the reading): ``"heard"``, ``"pending"``, both (``"heard+pending"``), or ``"other"``
    (neither: the state changed between the two looks).

    >>> newest = {0: 10_000, 1: 50_000}
    >>> stop_cause(newest, [0, 1], heard=-25_000, pending_to=None)
    'heard'
    >>> stop_cause(newest, [0, 1], heard=-25_000, pending_to=9_000)
    'heard+pending'
    >>> stop_cause(newest, [0, 1], heard=NO_TIME, pending_to=NO_TIME)
    'heard+pending'
    >>> stop_cause(newest, [0, 1], 5_000, 9_000), stop_cause(newest, [0], None, None)
    ('pending', 'other')
    """
    t = min(newest[p] for p in busy)
    by_heard = heard is not None and past_heard(t, heard)
    by_pending = pending_to is not None and t > pending_to
    return "+".join(k for k, on in (("heard", by_heard), ("pending", by_pending)) if on) or "other"


#: The offset commit's metadata: the partition's newest event time, ``"t=<ms>"``.
STREAM_TIME_PREFIX = "t="


def stream_time(ts_ms: int) -> str:
    """The commit metadata for a partition whose newest event time is ``ts_ms``.

    >>> stream_time(1767225600000), parse_stream_time(stream_time(1767225600000))
    ('t=1767225600000', 1767225600000)
    >>> stream_time(-1), parse_stream_time(""), parse_stream_time("t=soon")
    ('', None, None)
    """
    return f"{STREAM_TIME_PREFIX}{ts_ms}" if ts_ms >= 0 else ""


def parse_stream_time(metadata: str) -> int | None:
    """The event time in a commit's metadata; ``None`` if there is none (or another's)."""
    if not metadata.startswith(STREAM_TIME_PREFIX):
        return None
    digits = metadata[len(STREAM_TIME_PREFIX) :]
    return int(digits) if digits.isdigit() else None
