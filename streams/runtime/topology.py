"""The streaming topology, wired once: the stages of the partitions one process holds.

The worker and the in-process runner of the tests
(:class:`streams.runtime.local_run.LocalRun`) build the same
:class:`Topology`: the same stages (:mod:`streams.stages`), the same
in-process hand-over (:mod:`streams.runtime.hand_over`), the same state logs
(:mod:`streams.runtime.state_log`) and outputs
(:mod:`streams.runtime.outputs`). What differs is at the edges: where a
record sent to a topic goes (Kafka, or a list in memory), how a table write
finds its changelog partition (``focus``), and who drives the batches (Faust
agents and the ``shares`` reader, or a seeded scheduler). So "the stream
gives replay's alerts" tests run the production wiring.

::

    shares ─► ingest_records ─► to_resolve ─► resolve_received ─► to_clusters ─► detect
                                  │ hand-over or   │ peers: registrations  │ hand-over or
                                  ▼ resolve topic  ▼ in-process, or topic  ▼ clusters topic

Nothing here commits or flushes: the
:class:`~streams.runtime.checkpoint.Checkpoint` does, after each batch.
Stages never call back into their driver.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from streams._core import EvBatch, RegBatch
from streams.alerts import Pseudonymizer
from streams.banks import BankUpdate, HashBanks
from streams.detector import Predictor
from streams.pipeline import DEFAULT_PREDICTOR
from streams.policy import AlertPolicy
from streams.runtime.hand_over import HandOver
from streams.runtime.outputs import Outputs
from streams.runtime.state_log import StateLog
from streams.stages import (
    INDEX_PARTITION,
    ClusterPartition,
    DeadLetter,
    Envelope,
    Ingest,
    ResolveBatch,
    ResolvePartition,
    merge_resolved,
    partition_for,
    resolve_local_peers,
)
from streams.stats import Stats
from streams.watermarks import NO_TIME
from streams.wire import Item, Touch, Unbanked

#: How often (wall time) the resolve partitions held here remind the partitions downstream
#: of their progress (see :meth:`Topology.remind`).
PROGRESS_REMINDER_S = 5.0

log = logging.getLogger("viralwatch.worker")

#: Timed bank changes kept for a clusters partition taken over later (a reviewer's, or a
#: partner's with a time; the untimed bulk of a bank load is not kept).
BANK_CHANGES_KEPT = 100_000


@dataclass(frozen=True)
class StageSettings:
    """What the stages of a topology are built with (a worker's come from its settings)."""

    partitions: int
    #: partitions of the ``shares`` topic (it may predate the others)
    sources: int
    lateness_ms: int
    hold_ms: int
    #: reshares held, per resolve partition
    max_held: int
    #: event time after which a quiet cluster is evicted
    idle_ms: int = 3_600_000
    #: wall time after which a quiet ``shares`` partition stops holding the watermark
    partition_idle_s: float = 30.0
    #: ...once its reader has found it read to the end of its log, too (the worker's
    #: reader looks: :meth:`streams.watermarks.SourceClock.at_end`)
    idle_at_log_end: bool = False
    shares_topic: str = "shares"
    #: rounds of registrations handed to peer resolve partitions in-process (0: none)
    peer_rounds: int = 4


class Topology:
    """Every stage of the partitions this process holds, and the hops between them."""

    def __init__(
        self,
        settings: StageSettings,
        *,
        banks: HashBanks,
        policy: AlertPolicy,
        stats: Stats,
        pseudonymizer: Pseudonymizer,
        hand_over: HandOver,
        resolve_log: StateLog,
        cluster_log: StateLog,
        outputs: Outputs,
        predictor_factory: Callable[[], Predictor] | None = DEFAULT_PREDICTOR,
    ) -> None:
        self.settings = s = settings
        self.banks = banks
        self.policy = policy
        self.stats = stats
        self.pseudonymizer = pseudonymizer
        self.hand_over = hand_over
        self.resolve_log = resolve_log
        self.cluster_log = cluster_log
        self.outputs = outputs
        self.predictor_factory = predictor_factory
        self.ingest = Ingest(
            s.partitions,
            s.partition_idle_s,
            topic=s.shares_topic,
            stats=stats,
            log_end=s.idle_at_log_end,
        )
        self._reminded_at: float | None = None
        #: what peers here were handed in-process since the last checkpoint began, to copy to
        #: the topic (see :meth:`_copy_handed`): registrations, and the latest time of each
        #: unbanked cluster a released event touched
        self._copies: dict[int, list[Item]] = {}
        self._touches: dict[int, dict[str, int]] = {}
        #: False: nothing handed over in-process is copied (a test's switch: the kill
        #: model must then lose takedown requests, ``tests/test_runtime_owners.py``)
        self.copying = True
        #: False: what a peer here is owed after ``peer_rounds`` rounds goes through the topic
        #: though it was handed something in-process since the last acknowledgement (a test's
        #: switch: the kill model must then find events late, ``tests/test_runtime_owners.py``)
        self.handed_owed = True
        #: called as the release of an event held before the checkpoint began is handed
        #: over in-process (copies on or off): the kill model places kills after it
        #: (:class:`streams.runtime.local_run.Tear`'s ``after_release``)
        self.on_released: Callable[[], None] | None = None
        #: wall time (Unix s) a clusters partition here last applied events: where a
        #: backlog's span ends (the benchmark reads it from the stats record)
        self.applied_at: float | None = None
        self.resolvers: dict[int, ResolvePartition] = {}
        self.detectors: dict[int, ClusterPartition] = {}
        #: clusters partitions rebuilt from their log whose firing alerts are not known yet
        self._restored: set[int] = set()
        #: the timed bank changes seen (the bank follower's), for a clusters partition
        #: taken over later: it applies them in event-time order with its events
        self.bank_changes: deque[BankUpdate] = deque(maxlen=BANK_CHANGES_KEPT)

    # -- stage 1a --

    def ingest_records(self, runs: Sequence[tuple[int, Sequence[Any]]], now: float) -> int:
        """A batch of ``shares`` records, ``(partition, records)`` as the reader read them
        (see :meth:`streams.stages.Ingest.handle_records`); the events parsed."""
        batch = self.ingest.handle_records(runs, now)
        self.outputs.deadletter(batch.deadletters)
        self.to_resolve(batch.unpacked)
        return batch.events

    def heartbeat(self, now: float) -> None:
        """Where event time stands on the ``shares`` partitions, when no data flows; and,
        every :data:`PROGRESS_REMINDER_S`, where the resolve partitions held here stand."""
        self.to_resolve(self.ingest.heartbeat(now))
        if self._reminded_at is None or now - self._reminded_at >= PROGRESS_REMINDER_S:
            self._reminded_at = now
            self.remind()

    def remind(self) -> None:
        """Every held resolve partition's progress again, to every clusters partition and
        every peer (and its input watermark to the index's owner).

        Progress goes out when it moves. A partition that changes owner is rebuilt from
        its log, not from the marks it had heard: a clusters partition waits for every
        source's progress before it applies anything, a resolve partition for its peers'
        before its held reshares expire (and its own progress waits for those). Once
        the stream is quiet no mark moves again, so without a reminder a partition
        taken over near the end of a burst would wait for ever (a worker that joined
        had partitions stopped short of the end of the stream). A reminder changes
        nothing where the mark is known (a watermark never goes back), and takes the
        way every envelope takes, so it never overtakes the data it covers.
        """
        marks = {r: st.progress for r, st in self.resolvers.items() if st.progress != NO_TIME}
        read = {r: st.input_mark for r, st in self.resolvers.items() if st.input_mark != NO_TIME}
        if not marks and not read:
            return
        parts = range(self.settings.partitions)
        to_peers = {
            r: Envelope(
                [],
                progress={p: t for p, t in marks.items() if p != r},
                inputs={p: t for p, t in read.items() if p != r} if r == INDEX_PARTITION else {},
            )
            for r in parts
        }
        self.to_resolve({r: env for r, env in to_peers.items() if env.progress or env.inputs})
        if marks:
            self.to_clusters({k: Envelope([], progress=marks) for k in parts})

    # -- stage 1b --

    def to_resolve(self, envelopes: Mapping[int, Envelope]) -> None:
        """Ingest's envelopes on to the resolve partitions (held ones in-process)."""
        local = self.hand_over.route(self.hand_over.resolve, envelopes)
        if local:
            self.resolve_received(local)

    def resolve_received(self, received: Mapping[int, Sequence[bytes | Envelope]]) -> None:
        """Stage 1b for what each partition received; then on to peers and clusters."""
        batches: list[ResolveBatch] = []
        for r, envelopes in received.items():
            batches += self._resolve(r, envelopes)
        hop = self.hand_over.resolve
        # a peer behind what was sent it through Kafka before its assignment takes none of
        # the short way (Hop.assign): what it is sent goes through the topic, after the rest
        behind = hop.behind
        peers = (
            {r: st for r, st in self.resolvers.items() if r not in behind}
            if behind
            else self.resolvers
        )
        made, owed = self._resolve_local_peers(batches, peers)
        to_clusters, to_peers = merge_resolved(batches + made)
        for r, envelope in to_peers.items():
            if owed is not None and r in peers:
                # the rest was handed over in-process (and logged there): no copy (an
                # unbanked upload sent twice would be clustered twice); what is owed is
                # owed a partition handed nothing since the last acknowledgement
                if r in owed:
                    hop.send(r, owed[r])
            else:
                hop.wait(r, owed is not None)
                hop.send(r, envelope)
        self.to_clusters(to_clusters)

    def _resolve(self, partition: int, envelopes: Sequence[bytes | Envelope]) -> list[ResolveBatch]:
        """One partition's share of a batch; its changes are staged in the resolve log."""
        out = []
        state = self.resolvers.get(partition)
        if state is None:
            state, restored = self._restore_resolver(partition)
            out.append(restored)
        out.append(state.handle(envelopes))
        self._resolved(partition, out)
        return out

    def _resolved(self, partition: int, batches: list[ResolveBatch]) -> None:
        for batch in batches:
            if batch.delta is not None:
                self.resolve_log.append(partition, batch.log_entries(), batch.delta_items)
            self.outputs.deadletter(batch.deadletters)
        resolver = self.resolvers[partition]
        if self.resolve_log.due(partition, resolver.live_items):
            self.resolve_log.compact(partition, resolver.snapshot, resolver.live_items)

    def _resolve_local_peers(
        self, batches: list[ResolveBatch], peers: Mapping[int, ResolvePartition]
    ) -> tuple[list[ResolveBatch], dict[int, Envelope] | None]:
        """Registrations and progress straight to the ``peers`` (partitions held here
        read up to what this process sent them through Kafka:
        :func:`streams.stages.resolve_local_peers`): one Kafka hop less before most alerts.
        Returns the batches that made and what the partitions held here are still owed
        (``None``: nothing went the short way).
        What was sent a peer through Kafka alone and is unread goes first; during the grace
        after an assignment, nothing goes the short way (see :mod:`streams.runtime.hand_over`).
        A peer handed anything in-process since the writes were last acknowledged
        (:attr:`~streams.runtime.hand_over.Hop.handed_by_peers`) is handed what it is owed
        too, whatever the rounds (the hop's rule: a kill could keep what is owed it through
        the topic, progress past what it was handed, and lose its log's record of what it
        was handed; ``handed_owed`` off, a test's switch, sends it through the topic after
        ``peer_rounds`` as before).
        """
        rounds = self.settings.peer_rounds
        if rounds <= 0 or not self.hand_over.short:
            return [], None
        return resolve_local_peers(
            peers,
            batches,
            rounds,
            on_batch=lambda r, batch: self._resolved(r, [batch]),
            unread=self.hand_over.resolve.take(peers),
            on_handed=self._copy_handed,
            handed=self.hand_over.resolve.handed_by_peers if self.handed_owed else None,
        )

    def _copy_handed(self, partition: int, envelope: Envelope) -> None:
        """Note for a copy through Kafka (:meth:`streams.runtime.hand_over.Hop.copy`) what a
        peer here was handed in-process that a replacement could not make again: the
        registrations of the posts of events released that were held before this
        checkpoint began (``RegBatch.released``), and, for the index's owner, the latest
        time of each unbanked cluster such an event touched (``Touch.released``, one a
        cluster a checkpoint). :mod:`streams.runtime.checkpoint`'s module doc says why
        these and nothing else (what a replacement makes again, why touches, why a copy
        taken twice changes nothing, what it cost)."""
        copying, hook = self.copying, self.on_released
        if self.handed_owed:
            self.hand_over.resolve.handed_by_peers.add(partition)  # (and what it is owed)
        for item in envelope.items:
            kind = type(item)
            if kind is RegBatch:
                if item.released:  # type: ignore[union-attr]
                    if hook is not None:
                        hook()
                    if copying:
                        self._copies.setdefault(partition, []).append(item)
            elif kind is Touch:
                if item.released:  # type: ignore[union-attr]
                    if hook is not None:
                        hook()
                    if not copying:
                        continue
                    latest = self._touches.setdefault(partition, {})
                    cluster, ts = item.cluster_id, item.ts_ms  # type: ignore[union-attr]
                    if ts > latest.get(cluster, NO_TIME):
                        latest[cluster] = ts
            elif kind is not EvBatch and kind is not Unbanked and copying:
                self._copies.setdefault(partition, []).append(item)  # (a record: kept)

    @property
    def copies_pending(self) -> bool:
        """Whether peers here were handed anything in-process not copied yet (the resolve
        log's records waiting for the copies are sealed once they are written)."""
        return bool(self._copies) or bool(self._touches)

    def write_copies(self) -> None:
        """A checkpoint begins: one copy a peer of what it was handed in-process since the
        last began (a record each, a few a second, not one a batch: the live process reads
        every copy back, and a copy a batch raised alert p50 from about 25 to 40 ms); and
        every resolve partition here sealed (what it holds now was held before this
        checkpoint: see :mod:`streams.runtime.checkpoint`). Called as every checkpoint
        begins, whether copies wait or not."""
        copies, self._copies = self._copies, {}
        touches, self._touches = self._touches, {}
        for r in sorted(copies.keys() | touches.keys()):
            items = copies.get(r, [])
            items += [Touch(c, ts) for c, ts in touches.get(r, {}).items()]
            self.hand_over.resolve.copy(r, Envelope(items))
        for partition, resolver in self.resolvers.items():
            entries, count = resolver.seal()  # the index owner's uploads held, unlogged
            if entries:
                self.resolve_log.append(partition, entries, count)
        self.resolve_log.flush()

    def _restore_resolver(self, partition: int) -> tuple[ResolvePartition, ResolveBatch]:
        s = self.settings
        state = ResolvePartition(
            partition,
            partitions=s.partitions,
            sources=s.sources,
            banks=self.banks,
            stats=self.stats,
            lateness_ms=s.lateness_ms,
            hold_ms=s.hold_ms,
            max_held=s.max_held,
            idle_ms=s.idle_ms,  # for the index of unbanked content, if it holds it
        )
        deltas = self.resolve_log.read(partition)
        self.resolvers[partition] = state
        restored = state.restore(deltas)
        self.resolve_log.restored(partition, state.live_items)
        if deltas:
            log.info("resolve partition %d restored from %d batches", partition, len(deltas))
        return state, restored

    # -- stage 2 --

    def detector(self, partition: int) -> ClusterPartition:
        """The clusters partition's stage, rebuilt from its log the first time it is asked
        (as it is assigned, in a worker: :meth:`rebuild`)."""
        state = self.detectors.get(partition)
        if state is not None:
            return state
        s = self.settings
        state = ClusterPartition(
            partition,
            partitions=s.partitions,
            sources=s.partitions,
            policy=self.policy,
            stats=self.stats,
            pseudonymizer=self.pseudonymizer,
            idle_ms=s.idle_ms,
            predictor_factory=self.predictor_factory,
        )
        logs = self.cluster_log.read(partition)
        bad = state.restore(logs)
        self.cluster_log.restored(partition, state.live_items)
        self.outputs.deadletter(DeadLetter(r, "restore") for r in bad)
        for update in self.bank_changes:
            state.change_bank(update)  # held with the events restored: applied in order
        self.detectors[partition] = state
        if logs:
            self._restored.add(partition)
            log.info("clusters partition %d restored: %d events", partition, state.pending)
        return state

    def loading(self, assigned: Iterable[int]) -> list[int]:
        """The clusters partitions among ``assigned`` still loading, in order: not rebuilt
        from their logs yet, or rebuilt with the events read back still waiting for the
        partition's watermark (a restore takes them back unapplied, and they are applied
        as event time reaches them, up to where the previous owner stood at once: see
        :meth:`detect`). A view of one of their clusters must not call it "not found"."""
        return sorted(p for p in assigned if p not in self.detectors or p in self._restored)

    def rebuild(self, partitions: Iterable[int]) -> list[int]:
        """Rebuild these clusters partitions from their logs now, those not held already
        (:meth:`detector`); the ones rebuilt.

        A worker calls this as its assignment's tables are recovered, not at a partition's
        first batch: that batch comes only once the resolve partitions' progress reaches
        the partition (a second or so after a restart on Apache Kafka with no traffic; on
        the bundled broker, which keeps no commit metadata, not before the next event), and
        until then the views had no state to show and answered 404 for a live cluster an
        alert had just linked to. Rebuilding earlier is what the first
        batch would have done (the same log, read once; the timed bank changes kept are
        applied in order, and those that come after go to the partition held, as to every
        other); the restored alerts are still re-announced once the partition's watermark
        is known (:meth:`detect`). The kill and moves models rebuild so too
        (:class:`~streams.runtime.local_run.LocalRun`)."""
        done = self.unbuilt(partitions)
        for p in done:
            self.detector(p)
        return done

    def unbuilt(self, partitions: Iterable[int]) -> list[int]:
        """Those of these clusters partitions not rebuilt here yet (no detector: what
        :meth:`rebuild` would rebuild), in their order: the one test of it, for the worker
        that rebuilds its assignment one partition at a time (``Worker.rebuild_assigned``)
        and for :meth:`rebuild` itself."""
        return [p for p in partitions if p not in self.detectors]

    def heard(self) -> int | None:
        """The newest event time that every resolve partition here has heard of every busy
        ``shares`` partition (the lowest of their marks, idle ones aside): how far what was
        read has got downstream, this worker's and the others' reading alike.
        :data:`NO_TIME` while one has not heard of every input yet; ``None`` when no resolve
        partition is held here, or every input is idle (nothing to bound by).

        The index's owner is bounded by these marks alone, one hop from the other workers'
        reading, as every other worker is. It was also bounded by its peers' input
        watermarks as it had heard them (``ResolvePartition.inputs``): with two workers
        those hold its own reading, heard by the other worker's resolve partitions and sent
        back, so the owner waited a round trip on itself (out, the other worker's batch, back,
        and its own resolve batch of some 190 ms before it looked again) while the other
        worker waited one hop on it, and the two read in turns. What that term bounded, the
        reshares waiting in the owner's held store for uploads it clusters only once every
        input watermark has passed them, is bounded by the *held* rule of
        :func:`~streams.runtime.shares_reader.held_back` (and refused past
        ``VIRALWATCH_MAX_HELD``), and trails the marks by that one hop more."""
        if any(r not in self.resolvers for r in self.hand_over.resolve.held):
            return NO_TIME  # assigned, nothing read yet (restored when its first batch comes)
        lows = []
        for st in self.resolvers.values():
            marks = st.watermark.marks()
            if len(marks) < st.watermark.sources:
                return NO_TIME
            busy = [t for t, idle in marks.values() if not idle]
            if busy:
                lows.append(min(busy))
        return min(lows) if lows else None

    def held_fill(self) -> float:
        """How full the fullest held store of the resolve partitions here is (0..1)."""
        bound = max(1, self.settings.max_held)
        return max((st.held / bound for st in self.resolvers.values()), default=0.0)

    def to_clusters(self, envelopes: Mapping[int, Envelope]) -> None:
        """Resolve's envelopes on to the clusters partitions (held ones in-process)."""
        for k, received in self.hand_over.route(self.hand_over.clusters, envelopes).items():
            self.detect(k, received)

    def detect(self, partition: int, envelopes: Sequence[bytes | Envelope]) -> None:
        """Stage 2 for one partition: its events staged in the cluster log, its decisions in
        the outputs, the posts of evicted clusters sent to their resolve partitions."""
        state = self.detector(partition)
        batch = state.handle(envelopes)
        if batch.applied:
            self.applied_at = time.time()
        if batch.log:
            # the uploads received new are counted once the entries that hold them are
            # written: a kill before loses both, and the replacement counts their redelivery
            uploads = batch.uploads
            written = None if uploads is None else partial(state.count_uploads, *uploads)
            self.cluster_log.append(partition, batch.log, batch.log_items, written)
        self.cluster_log.cut_back(partition, state.compact, state.live_items)
        wm = state.watermark.value
        again = []
        if partition in self._restored and wm != NO_TIME:
            # the restored events up to the watermark are applied: what fires now is known
            self._restored.discard(partition)
            again = state.detector.firing_alerts(wm)
        self.outputs.decided(partition, batch.decisions, again, wm)
        for r, envelope in batch.forget.items():
            self.hand_over.resolve.send(r, envelope, track=False)

    def change_bank(self, update: BankUpdate) -> None:
        """A bank change the bank follower applied: with an event time, to every clusters
        partition held (retroaction, false positives: :meth:`ClusterPartition.change_bank`),
        and kept for those taken over later."""
        if update.ts_ms is None:
            return
        self.bank_changes.append(update)
        for k, state in self.detectors.items():
            batch = state.change_bank(update)
            self.outputs.decided(k, batch.decisions, [], state.watermark.value)
            for r, envelope in batch.forget.items():
                self.hand_over.resolve.send(r, envelope, track=False)

    # -- partitions --

    def revoke(self, topic: str, partition: int) -> None:
        """Drop the in-memory state of a partition this process no longer holds (``topic``:
        ``resolve`` or ``clusters``). It is rebuilt from its log when it comes back."""
        if topic == "resolve":
            resolver = self.resolvers.pop(partition, None)
            if resolver is not None:
                # the index owner's uploads held and not logged yet: handed over in-process
                # or read since the last checkpoint began, their new owner finds them here
                entries, count = resolver.seal()
                if entries:
                    self.resolve_log.write(partition, entries, count)
            self.hand_over.resolve.revoke(partition)
            self.resolve_log.forget(partition)
        elif topic == "clusters":
            self.detectors.pop(partition, None)
            self.hand_over.clusters.revoke(partition)
            self.cluster_log.forget(partition)
            self._restored.discard(partition)

    def release(self, partitions: set[int]) -> None:
        """The clusters of these clusters partitions went elsewhere (their new owner
        re-announces their alerts)."""
        if partitions:
            n = self.settings.partitions
            self.outputs.release(lambda cluster: partition_for(cluster, n) in partitions)
