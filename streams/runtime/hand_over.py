"""The in-process hand-over: an envelope for a partition this process holds skips Kafka.

Every hop between stages (ingest → resolve, resolve → its peers, resolve →
clusters) is an internal topic. Through Kafka, each hop is one more
produce-and-fetch on the way to every alert; when the process that made an
envelope also holds the partition it is for, it hands the envelope over in
memory instead. The receiving stage logs what it received as it logs any
batch, so nothing is lost if the process dies, and no Kafka copy is sent;
but for one hop: what a resolve partition hands a peer of its process (its
registrations) also goes to the ``resolve`` topic (:meth:`Hop.copy`), as the
two partitions log to two changelog partitions, which a kill can tear apart
(the sender's record kept, the receiver's lost: seed 12 of the kill model).

The rule that keeps this exact: **the short way never overtakes the long
one.** A partition reads its topic in order; an envelope this process sent
it through Kafka and it has not read yet goes first, in memory, and its
copy is skipped when it is read (:class:`streams.stages.UnreadSends`). For
``grace_s`` after an assignment everything goes through Kafka, so what a
partition's previous owner sent comes first (a matter of time, not proof).
What was sent a partition before it was assigned here (by any process: its
previous owner's ingest, this one's before a revoke) is not in memory to go
first: the partition takes no short way until it has read past the first
envelope this process sent it after the assignment, which is behind all of
that on its topic (:meth:`Hop.assign`: each process flushes as its partitions
are revoked; the moves model, the short way opened early, had events late
without it, the partitions moving within a process or between two).

Nor does the long way overtake the short one's log. What a partition was
handed in-process is kept only in its log (a changelog partition); an
envelope sent it later through its topic (the progress past those events)
is kept in another partition of the broker, and a kill can keep the second
and lose the first: the restored partition reads that progress again, its
watermark passes the events, and when the stage upstream (its input read
again) makes them again they come late (the kill model at 120 restarts: 1,
1 and 22 late events in seeds 1, 3 and 7). So a partition handed envelopes
in-process takes the short way until the process's writes are acknowledged
(:meth:`HandOver.acknowledged`). In a worker, whose short way is open to
every partition it reads once the grace is over, that changes nothing; a
revoke forgets it (the rebalance's flush acknowledges what was written).
The same rule for the resolve peers: a partition handed registrations by its
peers in-process (:attr:`Hop.handed_by_peers`) is handed what they owe it
after their rounds too (progress past them), until the writes are
acknowledged (the kill model's seeds 30 and 49, their internal topics read
again from the last commit, had events late: the owed record kept, the
peer's log of the registrations lost). A worker, which never calls
:meth:`HandOver.acknowledged`, so hands its peers all they are owed: its
rounds go on until no answer is left for a partition it holds.

One :class:`Hop` per internal topic (the resolve hop serves ingest and the
resolve peers: both write the ``resolve`` topic), both in one
:class:`HandOver`, which the worker and :class:`streams.runtime.local_run.LocalRun`
build alike.

>>> sent = []
>>> hop = Hop("clusters", lambda p, env: sent.append((p, env)) or len(sent))
>>> hand = HandOver(resolve=hop, clusters=hop, grace_s=3.0, clock=lambda: 10.0)
>>> hop.assign([0, 1], others=False); hand.assigned()  # grace: everything through Kafka
>>> hand.route(hop, {0: Envelope([])}), len(sent)
({}, 1)
>>> hand = HandOver(resolve=hop, clusters=hop, grace_s=0.0, clock=lambda: 10.0)
>>> hop.read_from(0)                              # partition 0 has been read since assigned
>>> local = hand.route(hop, {0: Envelope([]), 1: Envelope([])})
>>> sorted(local), [len(envs) for envs in local.values()], len(sent)  # the unread one first
([0], [2], 2)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from streams.stages import Envelope, UnreadSends

T = TypeVar("T")

#: Sends an envelope (or its bytes) to a partition of the hop's topic; returns the send's
#: mark (increasing from one send to the next).
SendEnvelope = Callable[[int, Envelope | bytes], int]


class Hop:
    """One internal topic as this process writes it: the partitions it holds, the ones it has
    read from since they were assigned, and what it sent them through Kafka alone, unread."""

    __slots__ = (
        "behind",
        "copies",
        "enabled",
        "handed",
        "handed_by_peers",
        "held",
        "last_sent",
        "name",
        "read_behind",
        "reading",
        "send_record",
        "unread",
        "waited",
    )

    def __init__(
        self,
        name: str,
        send: SendEnvelope,
        enabled: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        #: sends and copies alike (:meth:`copy`), so a partition's records keep the order
        #: sent: in a worker, the resolve hop's straight into the Kafka client's batches,
        #: beside the outputs and logs of its batch, the clusters hop's (no copies) through
        #: Faust's buffer
        self.send_record = send
        #: whether the short way may be taken now (a test's coin; always, in a worker)
        self.enabled = enabled
        self.unread = UnreadSends()
        self.held: set[int] = set()
        self.reading: set[int] = set()
        #: partitions handed envelopes in-process since this process's writes were last
        #: acknowledged (:meth:`HandOver.acknowledged`): they take the short way until then
        self.handed: set[int] = set()
        #: partitions handed envelopes in-process by their resolve peers since the writes were
        #: last acknowledged: what they are owed is handed them too (the same rule for the
        #: peers' rounds: :func:`streams.stages.resolve_local_peers`)
        self.handed_by_peers: set[int] = set()
        #: copies sent of envelopes handed over in-process (:meth:`copy`)
        self.copies = 0
        #: the mark of the last envelope sent each partition through Kafka whose order
        #: matters (held here or not), until the partition is read past it here
        self.last_sent: dict[int, int] = {}
        #: partitions assigned while a send may be unread: the mark they must read before
        #: the short way opens, ``None`` while it is that of the next send (see :meth:`assign`)
        self.behind: dict[int, int | None] = {}
        #: envelopes sent through Kafka because their partition was behind, its short way
        #: open otherwise (what :meth:`assign`'s rule costs)
        self.waited = 0
        #: records read by partitions behind (:meth:`assign`), the one that ends it included:
        #: how long, in records read, the rule kept their short way closed
        self.read_behind = 0

    def assign(self, partitions: Iterable[int], others: bool = True) -> None:
        """Partitions this process now holds. One takes no short way until it has read what
        was sent it through Kafka before: the short way would overtake it (the moves model:
        ingest's marks handed in-process to a moved resolve partition passed the events of
        its records still unread, which then came late; seeds 7, 17, 21, 26 of
        ``tests/test_runtime_owners.py``'s moves test).

        What this process sent it, it knows: the last of those sends' marks. What ``others``
        (other processes: its previous owner's ingest, any worker's) sent it, it does not;
        a record of this process's sent it after the assignment comes after them on its
        topic (they were on the broker before the assignment: each process flushes as its
        partitions are revoked), so the partition waits to read the next send's. That is the
        end offset its topic had at the assignment, or later, without asking the broker:
        the first envelope routed to it after the assignment goes through Kafka, and the
        short way opens once that is read (the grace is as long, in a worker). ``others``
        false: no other process can have sent it anything unread (a test's single process
        on topics it made)."""
        for p in partitions:
            self.held.add(p)
            mark = self.last_sent.get(p)
            if others:
                self.behind[p] = None
            elif mark is not None:
                self.behind[p] = mark

    def revoke(self, partition: int) -> None:
        """The partition went to another process: forget what was noted of it (but the last
        send to it: see :meth:`assign`)."""
        self.held.discard(partition)
        self.reading.discard(partition)
        self.handed.discard(partition)
        self.behind.pop(partition, None)
        self.handed_by_peers.discard(partition)
        self.unread.drop(partition)

    def read_from(self, partition: int) -> None:
        """The partition's stage has read a batch: it may be handed envelopes in-process."""
        self.reading.add(partition)

    def ready(self, partition: int) -> bool:
        return (
            partition in self.reading
            and (self.enabled is None or self.enabled())
            and partition not in self.behind
        )

    def send(self, partition: int, envelope: Envelope | bytes, track: bool = True) -> None:
        """Through Kafka; noted until read if the partition is held here (the short way must
        not overtake it) and ``track`` (an envelope whose order does not matter need not be)."""
        mark = self.send_record(partition, envelope)
        self._after(partition, mark)
        if track and isinstance(envelope, Envelope):
            self.last_sent[partition] = mark
            if partition in self.held:
                self.unread.sent(partition, mark, envelope)

    def copy(self, partition: int, envelope: Envelope) -> None:
        """A copy, through Kafka, of what was handed to ``partition`` in-process, sent
        before the sender's log records are (the checkpoint's gate waits for it): skipped
        when read here, read by whoever restores the partition (a replacement process).

        The copy is the receiver's durable inbox for what a replacement would not hand over
        again: the sender's log and the receiver's go to two changelog partitions, which a
        kill can tear apart, and a sender whose log says it released a reshare held before
        the checkpoint began does not hand its registration over again (seed 12 of the
        kill model: the reshare's own reshares waited at the receiver for ever). What it
        carries may be taken twice (a replacement whose log kept it): registrations are
        idempotent, and a touch keeps the later time (:mod:`streams.runtime.checkpoint`
        says what is copied and what is left out).

        The topology gathers a partition's copies until a checkpoint begins
        (:meth:`streams.runtime.topology.Topology.write_copies`): a copy a batch, which
        the live process reads back, raised alert p50 from about 25 to 40 ms. In a worker
        it is written straight into the Kafka client's open batch, as every send of the
        resolve hop is, not through Faust's buffer (which cost 10-15 ms more:
        docs/performance.md, "The kill model's copies, measured")."""
        mark = self.send_record(partition, envelope)
        self._after(partition, mark)
        self.unread.copied(partition, mark)
        self.copies += 1

    def _after(self, partition: int, mark: int) -> None:
        """A send to ``partition``: the mark it waits for, if it waits for the next send's."""
        behind = self.behind
        if behind and partition in behind and behind[partition] is None:
            behind[partition] = mark

    def wait(self, partition: int, short: bool) -> None:
        """An envelope for ``partition`` goes through Kafka: counted in :attr:`waited` if its
        short way is open (``short``: the grace is over; it has read a batch) but for
        :meth:`assign`'s rule."""
        if short and partition in self.behind and partition in self.reading:
            self.waited += 1

    def received(self, partition: int, records: Iterable[tuple[int | None, T]]) -> list[T]:
        """What ``partition`` read, ``(mark, record)`` (mark ``None``: not this process's),
        less the copies of what was handed to it in-process already; a partition that read
        the last envelope sent it before it was assigned is no longer behind (see
        :meth:`assign`: those sent since go first, as unread ones do)."""
        if partition in self.last_sent or partition in self.behind:
            records = list(records)
            if partition in self.behind:
                self.read_behind += len(records)
            top = max((m for m, _ in records if m is not None), default=None)
            if top is not None:
                wait = self.behind.get(partition, top + 1)
                if wait is not None and wait <= top:
                    del self.behind[partition]  # (what was sent since is in unread)
                if self.last_sent.get(partition, top + 1) <= top:
                    del self.last_sent[partition]
        return self.unread.received(partition, records)

    def take(self, partitions: Iterable[int]) -> dict[int, list[Envelope]]:
        """The unread envelopes of ``partitions``, about to go the short way."""
        return self.unread.take(partitions)


class HandOver:
    """The hops of one process and the grace after an assignment (see the module doc)."""

    def __init__(
        self,
        *,
        resolve: Hop,
        clusters: Hop,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolve = resolve
        self.clusters = clusters
        self.grace_s = grace_s
        self.clock = clock
        self._from = 0.0
        #: envelopes handed over in-process (a worker reports it)
        self.handed_over = 0

    def assigned(self) -> None:
        """Partitions were assigned: for ``grace_s`` everything goes through Kafka."""
        self._from = self.clock() + self.grace_s

    @property
    def short(self) -> bool:
        """Whether the short way may be taken at all now (the grace is over)."""
        return self.clock() >= self._from

    def route(
        self, hop: Hop, envelopes: Mapping[int, Envelope]
    ) -> dict[int, list[bytes | Envelope]]:
        """Which envelopes the next stage gets in-process (each after the unread ones of its
        partition): those to a partition whose short way is open (:meth:`Hop.ready`), or
        that was handed one in-process since the writes were last acknowledged (``handed``:
        see the module doc); the others are sent through ``hop``'s topic."""
        short = self.short
        local: dict[int, list[bytes | Envelope]] = {}
        handed = hop.handed
        for k, envelope in envelopes.items():
            if short and (hop.ready(k) or k in handed):
                local[k] = [*hop.take([k]).get(k, []), envelope]
            else:
                hop.wait(k, short)
                hop.send(k, envelope)
        if local:
            handed.update(local)
            self.handed_over += len(local)
        return local

    def acknowledged(self) -> None:
        """Everything this process wrote so far is on the broker (the receivers' logs of what
        was handed over in-process too): the long way may be taken again."""
        for hop in (self.resolve, self.clusters):
            hop.handed.clear()
            hop.handed_by_peers.clear()
