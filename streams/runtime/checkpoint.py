"""The checkpoint: one owner of the order in which a batch's work becomes durable.

Delivery is at least once: an input offset may be committed only once
everything made from the records before it is safe on the broker. The
order, modelled on Quix Streams' ``Checkpoint.commit``, lives here and
nowhere else:

1. **sinks flush**: each output hands what it staged on (alerts and takedown
   requests into their tables, whose changelogs are the ``alerts`` and
   ``actions`` topics; dead letters; the on-call hooks). A sink whose flush
   raises aborts the checkpoint: nothing after it runs, the offsets stay
   where they were, and the records are read again.
2. **state logs**: every :class:`~streams.runtime.state_log.StateLog` writes
   the deltas staged since the last checkpoint into its table (its
   changelog topic).
3. **producer flush**: everything sent and written is acknowledged.
4. **offsets commit**: the offsets of what was read up to here.

The offsets are taken once step 2 is done, and told to ``note_offsets``
before step 3 begins: the shares reader takes each partition's newest event
time with its offset there, committed with it as metadata in step 4; where
the broker drops that metadata (the bundled one), it writes the pairs to a
topic of their own then, so step 3 covers them and a committed offset's time
is on the broker before the offset is (:mod:`streams.runtime.stream_times`).

Upstream logs wait for what they made downstream (:class:`Gate`). The
client sends each partition's batches on their own, so a batch's records
reach the broker in any order across partitions, and a kill can fall
between them. Most orders are harmless: what a restored stage finds in its
log it re-applies, and an output it makes again that was sent is not sent
again. One is not: a resolve partition that releases held reshares (their
parent came) logs that they are no longer held, and the clusters partition
that gets them logs them; with the first on the broker and not the second,
the replacement holds them nowhere and their input offsets can be long
committed (a kill mid-stream: 242 of 255 takedown requests, the reshares of
a cluster past ``high`` lost). So the ``resolve-log`` records of a batch are
sent only once everything written before them (the sinks, the cluster log,
the records for the clusters topic) is acknowledged; the commits wait for
them too (steps 3 and 4, and Faust's flush before it commits an agent's
offsets). The other way round costs nothing but work: a reshare still
held in a resolve log is released again by the replacement, and a clusters
partition takes an event id once.

The gate does not order the resolve log's own partitions, and no order of
them would do: a resolve partition that releases a held reshare hands its
post's registration to a peer partition of the same process
(:func:`streams.stages.resolve_local_peers`), and the two log it to two
changelog partitions in one group. With the sender's record on the broker
and not the receiver's, the sender never hands it over again and the post's
reshares wait at the receiver for ever (seed 12 of the kill model); sending
the receivers' records first, a flush between, loses takedown requests the
other way (seed 19 of the kill model, killed between the two: the receiver's
record on the broker, the sender's not). So what is handed over in-process
that a replacement would not make again also goes, as a copy, to the
``resolve`` topic (:meth:`streams.runtime.hand_over.Hop.copy`), written when a
checkpoint begins and before the resolve log's records it covers are sealed
(:meth:`Checkpoint.stage`: those records wait unsealed until then), so the
group's barrier waits for it; the live receiver skips it, and a replacement
reads it. That is what the release of an event held before the checkpoint
began made (its post's registration, its unbanked cluster's touch): the
input that brought such an event may be committed, and a sender whose log
says it released it does not release it again. What was made from input
read since the checkpoint began is not copied: that input is committed only
by a later checkpoint, which waits for every record staged before it, so a
replacement reads it again and makes it again (as it passes an unbanked
upload on again, which is never copied: it would be clustered twice); nor
is what the peer is owed after it sent it through the topic, where a kill
could keep it while the peer's log lost the registration: it is handed
in-process too (:attr:`streams.runtime.hand_over.Hop.handed_by_peers`). Each
resolve partition is sealed as a checkpoint begins, copies pending or not
(``Copies.write_copies``; :meth:`Checkpoint.flush` too, as a commit may
follow it): what it holds then is "held before" (below: what each kind
copied is, and why the others are not). Registrations are idempotent (a post already mapped keeps
its first mapping) and a touch keeps the later time, so a copy taken again
changes nothing.

What is copied (:meth:`streams.runtime.topology.Topology._copy_handed`
notes it, :meth:`~streams.runtime.topology.Topology.write_copies` writes it):
the registrations of the posts of released events that were held before the
checkpoint began (``RegBatch.released``), and, for the index's owner, the
latest time of each unbanked cluster such an event touched
(``Touch.released``, one a cluster a checkpoint). "Held before": each
resolve partition is sealed as a checkpoint begins (``ResolveLoop.seal``);
a partition read back from its log marks what its log kept held. The
index's owner marks an upload it clusters held before the checkpoint began
(its log's bound says it is clustered); one held and clustered since is
passed on again from the input read again, held and clustered again (an
owner that came to drop a redelivered upload it clustered would have to
register its post again). In the benchmark's one worker (300,000 events)
the registrations copied had been 0.76 an event, 33 B of the 47, the
touches 0.34, 14 B, before only these were: most were of events routed at
once, and of reshares (and uploads at the owner) held and released in the
same checkpoint.

A lost touch can change an outcome: the owner evicts an unbanked cluster
from its index once event time passes its latest event by ``idle_ms``, so
an owner that missed a released reshare's touch evicts the cluster early,
and an upload of the same content in between starts a new cluster where
replay's joins the old. So a released event's touch is copied, the latest a
cluster (the owner keeps the later of two times: the latest alone says what
all of them say). A registration is idempotent because a post already
mapped keeps its first mapping and releases nothing again
(``PostClusters::insert``, ``rust/core/src/posts.rs``): a replacement whose
log kept it, or a live receiver that reads a copy it did not skip, changes
nothing by taking it again. Not copied: the unbanked uploads for the
index's owner (a copy would deliver one a second time to an owner whose log
kept it), and the progress (it is sent again as it moves).

Steps 1 and 2 run at the end of every batch a stage handles
(:meth:`Checkpoint.stage`); all four on the ``shares`` reader's commit
interval (:meth:`Checkpoint.commit`, or :meth:`Checkpoint.commit_behind`,
which lets the reader read on while steps 3 and 4 wait for the broker: it
had waited 6.8 s of a 22-s backlog run, 0.3 s a checkpoint). Reading on is
safe because of three orders, each tested: the offsets a checkpoint commits
are those stored before its step 2, so everything they became was handed to
the producer before it began; the producer flush it waits for is of what
was sent before it began (``flush_producer`` is called as the checkpoint
begins: Faust's own flush, which waits for an empty buffer, chased a live
stream's records for seconds); and one checkpoint is in flight at a time,
so offsets are committed in order and the reader runs at most one
checkpoint ahead of what is durable (without that bound, the producer's
buffer, which alerts share with the state logs, grew with nothing to hold
the reader back, and alerts waited behind it). The Faust agents' input offsets are
committed by Faust, which does steps 3 and 4 for them: it commits an event's
offset once the table writes attached to it are acknowledged, and the writes
of step 2 are attached to the batch's last event (``focus``).

>>> import asyncio
>>> done = []
>>> class Sink:
...     def flush(self): done.append("sinks")
>>> class Log:
...     def flush(self): done.append("state logs")
>>> async def flush(): done.append("producer")
>>> async def commit(offsets): done.append(f"offsets {offsets}")
>>> def noted(offsets): done.append(f"noted {offsets}")
>>> cp = Checkpoint(sinks=[Sink()], logs=[Log()], flush_producer=flush, commit_offsets=commit,
...                 note_offsets=noted)
>>> cp.store_offset(0, 41); cp.store_offset(0, 42)
>>> asyncio.run(cp.commit({0, 1})), done
(True, ['sinks', 'state logs', 'noted {0: 43}', 'producer', 'offsets {0: 43}'])
>>> asyncio.run(cp.commit({0, 1}))  # nothing new read: nothing to commit
False
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

log = logging.getLogger("viralwatch.worker")


class Flushes(Protocol):
    """A sink or a state log: hands on what it staged (raising aborts the checkpoint)."""

    def flush(self) -> None: ...


Send = Callable[[int, bytes, bytes | None], None]


class Gate:
    """An upstream log's records, sent once everything written before them is acknowledged.

    The log writes (partition, key, value) here (:meth:`send`); the checkpoint's step 2
    seals what came since (:meth:`seal`) with a barrier, begun then, that ends once
    everything sent before it is acknowledged; a sealed group is sent once its barrier
    has ended and every group before it was sent.

    In process (no barrier) a group sealed is held until the next seal (or
    :meth:`release`), then sent after ``acknowledge`` of what came before it:

    >>> sent = []
    >>> gate = Gate(lambda p, k, v: sent.append((p, k)), acknowledge=lambda m: sent.append("ack"))
    >>> gate.send(0, b"k1", b"v"); gate.seal(None); sent
    []
    >>> gate.send(0, b"k2", b"v"); gate.seal(None); sent
    ['ack', (0, b'k1')]
    """

    def __init__(
        self,
        send: Send,
        acknowledge: Callable[[int], None] | None = None,
        mark: Callable[[], int] | None = None,
    ) -> None:
        self._send = send
        #: in process: what was written before a mark is acknowledged, and the mark now
        self._acknowledge = acknowledge
        self._mark = mark
        self._open: list[tuple[int, bytes, bytes | None]] = []
        #: the groups sealed and not sent, oldest first, each with its barrier
        self._sealed: deque[tuple[asyncio.Future[None], list[tuple[int, bytes, bytes | None]]]]
        self._sealed = deque()
        self._sending: asyncio.Future[None] | None = None
        #: in process: the group sealed last, with where the writes stood then
        self._held: tuple[int, list[tuple[int, bytes, bytes | None]]] | None = None
        #: groups sealed and groups sent so far (a drain waits for a count)
        self.sealed = 0
        self.sent = 0
        #: what failed the barrier of the oldest group (never sent, nor any after it)
        self.failed: BaseException | None = None

    def send(self, partition: int, key: bytes, value: bytes | None) -> None:
        """A record of the log (``None``: a deletion), sent with the next group sealed."""
        self._open.append((partition, key, value))

    @property
    def unsealed(self) -> int:
        """Records written since the last seal."""
        return len(self._open)

    def seal(self, barrier: asyncio.Future[None] | None) -> None:
        """The records written since the last seal go once ``barrier`` ends (``None``: now,
        after ``acknowledge``)."""
        group, self._open = self._open, []
        if not group:
            return
        self.sealed += 1
        if barrier is None and not self._sealed:
            # in process: the group before is sent now, what came before it acknowledged;
            # this one waits for the next seal (a kill before then loses it)
            self.release()
            self._held = (self._mark() if self._mark is not None else 0, group)
            return
        self._sealed.append((barrier if barrier is not None else _done(), group))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send_sealed())

    def release(self) -> None:
        """In process: the group held is sent, what was written before it acknowledged (the
        in-process runner's model of a barrier ending)."""
        held, self._held = self._held, None
        if held is not None:
            mark, group = held
            if self._acknowledge is not None:
                self._acknowledge(mark)
            self._write(group)

    async def _send_sealed(self) -> None:
        while self._sealed:
            barrier, group = self._sealed[0]
            try:
                await asyncio.shield(barrier)
            except Exception as exc:  # raised: the records stay unsent, for good
                self.failed = exc
                raise
            self._sealed.popleft()
            self._write(group)

    def _write(self, group: list[tuple[int, bytes, bytes | None]]) -> None:
        send = self._send
        for partition, key, value in group:
            send(partition, key, value)
        self.sent += 1

    async def drain(self, upto: int | None = None) -> None:
        """Wait until the groups sealed so far (the first ``upto``) are sent; raise what
        stopped one."""
        upto = self.sealed if upto is None else upto
        while self.sent < upto:
            sending = self._sending
            if sending is None or sending.done():
                sending = self._sending = asyncio.ensure_future(self._send_sealed())
            await asyncio.shield(sending)


def _done() -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_event_loop().create_future()
    done.set_result(None)
    return done


class Copies(Protocol):
    """Copies on the ``resolve`` topic of what a process handed its own partitions in-process
    (the topology's, :meth:`streams.runtime.topology.Topology.write_copies`), written when a
    checkpoint begins, before the resolve log's records they cover are sealed.
    ``write_copies`` is called as every checkpoint begins (and before every flush), copies
    pending or not: what is copied depends on what was held before the checkpoint began."""

    @property
    def copies_pending(self) -> bool: ...

    def write_copies(self) -> None: ...


class Checkpoint:
    """The order of one process's commits (see the module doc).

    ``flush_producer`` is called as a checkpoint begins (after its step 2); what it
    returns, awaited, must wait until every record sent before the call is
    acknowledged, and need not wait for those sent after.
    """

    def __init__(
        self,
        *,
        sinks: Sequence[Flushes],
        logs: Sequence[Flushes],
        flush_producer: Callable[[], Awaitable[None]] | None = None,
        commit_offsets: Callable[[dict[int, int]], Awaitable[None]] | None = None,
        gate: Gate | None = None,
        copies: Copies | None = None,
        note_offsets: Callable[[dict[int, int]], None] | None = None,
    ) -> None:
        self.sinks = list(sinks)
        #: copies of in-process hand-overs: the gate's records wait for them (see :meth:`stage`)
        self.copies = copies
        self.logs = list(logs)
        #: the upstream log's records, sent once what came before is acknowledged
        self.gate = gate
        self.flush_producer = flush_producer
        self.commit_offsets = commit_offsets
        #: told the offsets to commit before the producer flush (see the module doc)
        self.note_offsets = note_offsets
        #: the next offset to read, per input partition, and what was committed
        self._next: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        #: checkpoints committed (a test and the worker's summary read it)
        self.commits = 0
        #: the last steps of the checkpoint begun last, while they wait (commit_behind)
        self._in_flight: asyncio.Future[bool] | None = None

    def store_offset(self, partition: int, offset: int) -> None:
        """``offset`` of ``partition`` was read and handled.

        An offset lower than one stored before is a partition read again after
        a rebalance gave it back: what is committed follows what was read.
        """
        self._next[partition] = offset + 1

    def next_offsets(self) -> dict[int, int]:
        """The next offset to read of each partition read so far (a copy)."""
        return dict(self._next)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this process no longer reads: their next owner commits them."""
        for p in partitions:
            self._next.pop(p, None)
            self._committed.pop(p, None)

    def stage(self, begin: bool = False) -> None:
        """Steps 1 and 2: what a batch made goes to the sinks and the state logs.

        The resolve log's records are sealed in a group now, unless copies of in-process
        hand-overs wait (``copies``): then only when a checkpoint begins (``begin``), after
        the copies are written, so that the group's barrier covers them. The copies go a few
        times a second so, not once a batch: the live process reads each back (skipping
        it), and a copy a batch raised alert p50 from about 25 to 40 ms."""
        for sink in self.sinks:
            sink.flush()
        for state_log in self.logs:
            state_log.flush()
        copies = self.copies
        if copies is not None:
            if begin:
                copies.write_copies()  # (and what is held now was held before this one)
            elif copies.copies_pending:
                return
        gate = self.gate
        if gate is not None and gate.unsealed:
            flush = self.flush_producer
            gate.seal(None if flush is None else asyncio.ensure_future(flush()))

    async def flush(self) -> None:
        """Everything sent before the call acknowledged, the upstream log's records
        included (the worker's flush before a rebalance, and Faust's before it commits).
        The resolve log's records waiting for copies (see :meth:`stage`) are sealed first;
        a commit may follow, so this begins a checkpoint for the copies either way."""
        if self.copies is not None:
            self.stage(begin=True)  # (the index owner's held uploads logged and sealed too)
        gate = self.gate
        upto = gate.sealed if gate is not None else 0
        if self.flush_producer is not None:
            await self.flush_producer()
        await self._settle_gate(upto)

    async def _settle_gate(self, upto: int) -> None:
        """The upstream log's first ``upto`` groups sent (once the rest is acknowledged,
        :class:`Gate`), then acknowledged themselves; nothing when they already were."""
        gate = self.gate
        if gate is not None and gate.sent < upto:
            await gate.drain(upto)
            if self.flush_producer is not None:
                await self.flush_producer()

    def _begin(
        self, owned: Iterable[int]
    ) -> tuple[dict[int, int], asyncio.Future[None], int] | None:
        """Steps 1 and 2, the offsets to commit, and the producer flush (begun): or ``None``
        when nothing new was read.

        Raises once a barrier of the gate has failed, new offsets or not: the groups behind
        it are never sent, so no commit can ever follow, and a worker whose reader had
        nothing new to commit would read on committing nothing (the caller, the shares
        reader, ends the worker when it raises)."""
        gate = self.gate
        if gate is not None and gate.failed is not None:
            raise RuntimeError(
                f"the resolve log's records wait for a producer flush that failed: {gate.failed!r}"
            ) from gate.failed
        owned = set(owned)
        offsets = {
            p: o for p, o in self._next.items() if p in owned and self._committed.get(p) != o
        }
        self.stage(begin=True)
        if not offsets:
            return None
        if self.note_offsets is not None:
            self.note_offsets(offsets)
        flushed = asyncio.ensure_future(
            self.flush_producer() if self.flush_producer is not None else _nothing()
        )
        return offsets, flushed, self.gate.sealed if self.gate is not None else 0

    async def _finish(
        self, offsets: dict[int, int], flushed: asyncio.Future[None], upto: int
    ) -> bool:
        """Steps 3 and 4 of a checkpoint begun."""
        await flushed
        # the upstream log's records of what the offsets cover (sealed by step 2)
        await self._settle_gate(upto)
        if self.commit_offsets is not None:
            try:
                await self.commit_offsets(offsets)
            except Exception as exc:  # a rebalance: the new owner reads them again
                log.warning("commit of offsets %s failed: %s", sorted(offsets), exc)
                return False
        # a partition forgotten meanwhile is its next owner's to commit
        self._committed.update((p, o) for p, o in offsets.items() if p in self._next)
        self.commits += 1
        return True

    async def commit(self, owned: Iterable[int]) -> bool:
        """All four steps for the partitions of ``owned``, in line; whether offsets were
        committed (after the checkpoint in flight, if any: offsets go in order).

        A failed commit (a rebalance took the partitions) is logged and left:
        their new owner reads those records again (at least once).
        """
        await self.settle()
        begun = self._begin(owned)
        return False if begun is None else await self._finish(*begun)

    async def commit_behind(self, owned: Iterable[int]) -> bool:
        """All four steps, the last two (waiting for the broker) behind the caller, who reads
        on; whether a checkpoint was begun.

        The one in flight is waited for first (and what failed in it raised here): one at
        a time, so the reader is never more than one checkpoint ahead of what is durable.
        """
        await self.settle()
        begun = self._begin(owned)
        if begun is None:
            return False
        self._in_flight = asyncio.ensure_future(self._finish(*begun))
        return True

    async def settle(self) -> None:
        """Wait for the checkpoint in flight, if any; what failed in it is raised here."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            await in_flight

    def abandon(self) -> None:
        """The reader stops: the checkpoint in flight is given up (its records are read
        again by whoever reads next, at least once)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.cancel()

    @property
    def in_flight(self) -> bool:
        """Whether a checkpoint's last steps are still waiting for the broker."""
        return self._in_flight is not None and not self._in_flight.done()


async def _nothing() -> None:
    """No producer to flush (the in-process runner)."""
