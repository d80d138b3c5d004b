"""The whole streaming topology in one process, on the worker's own wiring: tests run it.

:class:`LocalRun` builds the :class:`~streams.runtime.topology.Topology` a
worker builds (the same stages, :class:`~streams.runtime.hand_over.HandOver`,
:class:`~streams.runtime.state_log.StateLog` objects,
:class:`~streams.runtime.outputs.Outputs` and
:class:`~streams.runtime.checkpoint.Checkpoint`), with lists in memory for
topics and dicts for tables, and drives it with a seeded scheduler: stages
take batches of random sizes from random partitions until everything has
flowed through. Whatever the interleaving, the alerts must be those of
``replay``; this is how the unit tests check it without a broker (as
bytewax's ``testing.run_main`` runs the real engine in a unit test).

``restarts`` replaces the process that many times, spread over the input:
a new topology on the same topics and tables (the state logs, the alerts
and actions already sent), which rebuilds every partition from its log, as
a worker replacing a killed one does; the ``shares`` records read since the
last offset commit (every ``commit_every`` steps) are read again.

``moves`` moves a random part of the partitions of each internal topic that
many times, as a rebalance does when a worker joins or leaves: their state is
dropped and rebuilt from its log by their new owner (here the same process),
while the other partitions carry on as they were and send nothing again.
The last move comes once the stream is over and everything has flowed.
The short way to a moved partition opens once it has read all that was on
its topic (a worker waits a grace for that); with ``short_way_after`` set,
once it has read that many batches, whatever is still on its topic from
before the move (a grace that ran out before the new owner's stage had read
what the previous owner sent: "a matter of time, not proof"). With
``moves_between``, the new owner is another process: what is on a moved
partition's topic is not this process's (it forgets its marks of it).

>>> from streams.alerts import Pseudonymizer
>>> from streams.banks import HashBanks
>>> from streams.policy import AlertPolicy
>>> run = LocalRun(HashBanks(), AlertPolicy.default(), Pseudonymizer(b"k"), partitions=2)
>>> run.run([b"{oops"]).alerts, [d.rejection.reason for d in run.deadletters]
({}, ['not_json'])
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from streams.alerts import Alert, EarlyAlert, Pseudonymizer
from streams.banks import BankUpdate, HashBanks
from streams.detector import Predictor
from streams.pipeline import DEFAULT_PREDICTOR, is_bank_update
from streams.policy import AlertPolicy
from streams.runtime import stream_times
from streams.runtime.checkpoint import Checkpoint, Gate
from streams.runtime.hand_over import HandOver, Hop
from streams.runtime.outputs import Outputs
from streams.runtime.state_log import StateLog
from streams.runtime.topology import StageSettings, Topology
from streams.stages import DeadLetter, Envelope
from streams.stats import Stats
from streams.watermarks import SourceClock
from streams.wire import LATEST_WIRE, WireVersion, decode_routed_log

#: A record on a topic in memory: the incarnation of the process that sent it, the
#: send's mark, the bytes.
Record = tuple[int, int, bytes]
#: The internal topics in memory: per topic, per partition, the records not read yet.
Topics = dict[str, list[list[Record]]]
#: The incarnation of the records another process sent (``LocalRun.moves_between``).
OTHER = -1


class SharesRecord(NamedTuple):
    """A ``shares`` record as a run reads it: its offset (its line's position in the
    partition's lines) and value, as the Kafka client's record holds them."""

    offset: int
    value: bytes


def shares_records(lines: Sequence[bytes], at: int) -> list[SharesRecord]:
    """A partition's ``lines`` read from position ``at`` on, as records (what
    :meth:`Topology.ingest_records` takes)."""
    return [SharesRecord(at + i, line) for i, line in enumerate(lines)]


class Table(dict[bytes, bytes]):
    """A table in memory (what a Faust table is to the state log and the outputs).

    With a :class:`Tear`, each write is noted with the value it replaced, so that a kill
    can take back what never reached the broker.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.tear: Tear | None = None

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if self.tear is not None:
            self.tear.stored(self, key, self.get(key), value)
        super().__setitem__(key, value)

    def pop(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        was = super().pop(key, None)
        if self.tear is not None and was is not None:
            self.tear.stored(self, key, was, None)
        return default if was is None else was


@dataclass
class Write:
    """A table's write: the value it replaced and the one it wrote (``None``: a deletion),
    and, once it is sent to the table's changelog, the partition."""

    table: Table
    key: bytes
    old: bytes | None
    new: bytes | None
    seq: int
    partition: int | None = None


@dataclass
class Tear:
    """The tables' writes since everything sent before them was acknowledged, and what of
    them a process killed now loses.

    A write not sent yet (a :class:`~streams.runtime.checkpoint.Gate` holds the resolve
    log's records until what came before them is acknowledged) is lost. Of those sent,
    Kafka keeps each partition's records in the order written, so what survives of each
    changelog partition is a prefix; the partitions are independent (the client sends
    each partition's batches on their own: any of them may be on the broker when the
    process dies, the others not). A kill keeps a random prefix of each.

    With ``topics``, the records sent to the internal topics (``resolve``, ``clusters``)
    since they were last acknowledged are torn the same way, each topic partition's on
    its own: a random prefix of them is kept, never shorter than what was read already
    (a record read was on the broker). Without, every record sent to a topic is kept, as
    if acknowledged when sent: the tables' tear alone (the model before; its seeds' kills
    fall where its tests say).

    Where the kills fall: at the points :class:`LocalRun` spreads over the input, or, with
    ``after_release``, at the first point after each of them where the runtime's own events
    say a kill can tear what the copies mend: a release of an event held before a
    checkpoint began has been handed over in-process
    (:meth:`streams.runtime.topology.Topology._copy_handed`), a step has run since (which
    sends what the step of the release sealed), and no checkpoint has committed since the
    release. Spread kills no longer fall there since the resolve log is sealed at every
    batch when no copy waits: with the copies off they lose nothing either.
    """

    #: kill only where a release of an event held before a checkpoint can be torn (above)
    after_release: bool = False
    #: tear the internal topics' records not acknowledged too (above)
    topics: bool = False
    writes: list[Write] = field(default_factory=list)
    #: the internal topics' records sent and not acknowledged (with ``topics``), oldest
    #: first: (topic, partition, the record, its place among the writes: see :meth:`mark`)
    records: list[tuple[str, int, Record, int]] = field(default_factory=list)
    #: the writes not sent yet, by table and key, oldest first
    _unsent: dict[tuple[str, bytes], list[Write]] = field(default_factory=dict)

    def watch(self, table: Table) -> None:
        table.tear = self

    def stored(self, table: Table, key: bytes, old: bytes | None, new: bytes | None) -> None:
        self.writes.append(w := Write(table, key, old, new, self._next()))
        self._unsent.setdefault((table.name, key), []).append(w)

    def mark(self) -> int:
        """Where the writes and the topics' records stand now (see :meth:`acknowledged`)."""
        return self._seq

    #: the place of the next write or record (one count for both: a mark taken between a
    #: record and a write tells which came first)
    _seq: int = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq - 1

    def sent(self, table: Table, partition: int, key: bytes) -> None:
        waiting = self._unsent.get((table.name, key))
        if waiting:
            waiting.pop(0).partition = partition

    def sent_record(self, topic: str, partition: int, record: Record) -> None:
        """A record sent to an internal topic: torn by a kill until acknowledged."""
        if self.topics:
            self.records.append((topic, partition, record, self._next()))

    def acknowledged(self, upto: int | None = None) -> None:
        """Everything sent so far (before :meth:`mark` said ``upto``) is on the broker."""
        upto = self._seq if upto is None else upto
        self.writes = [w for w in self.writes if w.partition is None or w.seq >= upto]
        self.records = [r for r in self.records if r[3] >= upto]

    def kill(self, rng: random.Random, topics: Topics | None = None) -> list[Write]:
        """Take back what a kill now loses (at random, within Kafka's order); what it lost.
        With ``topics`` (and :attr:`topics` set), the topics' records it lost are taken off
        them too (:attr:`torn_records` counts them)."""
        streams: dict[tuple[str, int], list[int]] = {}
        lost: list[int] = []
        for i, w in enumerate(self.writes):
            if w.partition is None:
                lost.append(i)
            else:
                streams.setdefault((w.table.name, w.partition), []).append(i)
        for idx in streams.values():
            lost += idx[rng.randint(0, len(idx)) :]
        for i in sorted(lost, reverse=True):
            w = self.writes[i]
            if w.old is None:
                dict.pop(w.table, w.key, None)
            else:
                dict.__setitem__(w.table, w.key, w.old)
        taken = [self.writes[i] for i in sorted(lost)]
        if topics is not None:
            self._tear_topics(rng, topics)
        self.writes, self.records, self._unsent = [], [], {}
        return taken

    #: the topics' records kills took back
    torn_records: int = 0

    def _tear_topics(self, rng: random.Random, topics: Topics) -> None:
        """Of each topic partition's records not acknowledged, keep a random prefix at least
        as long as what was read of them (those still unread are its list's tail)."""
        sent: dict[tuple[str, int], list[Record]] = {}
        for topic, partition, record, _ in self.records:
            sent.setdefault((topic, partition), []).append(record)
        for (topic, partition), records in sent.items():
            unread = set(topics[topic][partition])
            read = sum(1 for r in records if r not in unread)
            gone = set(records[rng.randint(read, len(records)) :])
            if gone:
                topics[topic][partition] = [r for r in topics[topic][partition] if r not in gone]
                self.torn_records += len(gone)


def split_input(
    lines: Iterable[bytes], partitions: int, key: str = "none", run: int = 7
) -> tuple[list[list[bytes]], list[tuple[int, BankUpdate]]]:
    """The input as the models' ``shares`` topic holds it: each partition's lines (a line's
    offset is its index), and the bank topic's records by how many share lines come before
    each. ``key`` ``"none"`` puts runs of ``run`` lines on each partition in turn, as a
    producer without a key does; ``"post"`` picks the partition by a hash of the line.

    >>> shares, banks = split_input([b'{"event_id": "%d"}' % i for i in range(5)], 2, run=2)
    >>> [len(part) for part in shares], banks
    ([3, 2], [])
    """
    shares: list[list[bytes]] = [[] for _ in range(partitions)]
    bank_updates: list[tuple[int, BankUpdate]] = []
    total = 0
    for line in lines:
        if is_bank_update(line):
            bank_updates.append((total, BankUpdate.parse(None, line)))
            continue
        p = (total // run) % partitions if key == "none" else zlib.crc32(line) % partitions
        shares[p].append(line)
        total += 1
    return shares, bank_updates


@dataclass
class LocalRun:
    """Every stage and topic of the streaming pipeline in memory, with a seeded scheduler.

    Input lines are spread over ``partitions`` input partitions (by ``key``:
    ``"none"`` round-robin in runs of ``run`` lines, as a batching producer
    does, or ``"post"`` by a hash of the line). Firings the events seen
    already prove go out before the watermark reaches them
    (:meth:`Detector.fire_early`): the same ids and statuses as replay's, with
    figures as of what had been seen (:attr:`early` says which), and
    :attr:`emitted` says when each alert came out.
    """

    banks: HashBanks
    policy: AlertPolicy
    pseudonymizer: Pseudonymizer
    partitions: int = 4
    lateness_ms: int = 60_000
    hold_ms: int = 1_800_000
    #: event time after which a quiet cluster is evicted (the worker's default)
    idle_ms: int = 3_600_000
    seed: int = 0
    max_batch: int = 50
    #: resolve partitions hand registrations to their peers at once (as a worker
    #: holding them all does), besides sending them through the topic, for this
    #: many rounds of answers (what is left goes through the topic alone)
    local_peers: bool = False
    local_rounds: int = 4
    #: resolve partitions hand envelopes to the clusters partitions at once (as a
    #: worker does with those it holds), half of the time at random (the other half
    #: through the topic alone, as during the grace after an assignment)
    local_clusters: bool = False
    #: the same for ingest's envelopes to the resolve partitions
    local_resolve: bool = False
    predictor_factory: Callable[[], Predictor] | None = DEFAULT_PREDICTOR
    #: the state logs are compacted past this many bytes (as a worker's are)
    log_compact_bytes: int = 8 * 1024 * 1024
    log_compact_garbage: float = 0.5
    #: times the process is replaced mid-stream (see the module doc)
    restarts: int = 0
    #: times some partitions change owner mid-stream (see the module doc)
    moves: int = 0
    #: a moved partition's short way opens after it has read this many batches, though
    #: records sent before the move may still be on its topic (None: once it is read to
    #: the end; see the module doc)
    short_way_after: int | None = None
    #: a move hands the partitions to another process: what is on a moved partition's topic
    #: was sent by a process other than its new owner (this one forgets its marks of it), as
    #: when a partition moves between workers with records in flight (not with a ``tear``
    #: of the topics, which knows records by their incarnation)
    moves_between: bool = False
    #: a partition assigned takes no short way until it has read what other processes sent
    #: it before (:meth:`Hop.assign`'s ``others``: the worker's rule; off: a test's check
    #: that the moves between processes then fail)
    wait_for_others: bool = True
    #: the clusters partitions are rebuilt from their logs as they are assigned (a new
    #: process, a move), as a worker does once its assignment's tables are recovered
    #: (:meth:`Topology.rebuild`); off: at their first batch, as before
    rebuild_assigned: bool = True
    #: steps between commits of the ``shares`` offsets
    commit_every: int = 10
    #: a restart is a kill: of the tables' writes since everything was last acknowledged
    #: (a commit, or a step reading an internal topic), some are lost (see :class:`Tear`)
    tear: Tear | None = None
    #: the resolve log's records wait for what came before them (the worker's order; off:
    #: the order before, which a kill could tear)
    gate_resolve_log: bool = True
    #: what is handed over in-process that a replacement cannot make again is copied to the
    #: resolve topic (the worker's way; off: a test's check that the kill model then fails)
    copy_handed: bool = True
    #: what a resolve partition owes a peer handed something in-process since the last
    #: acknowledgement is handed it too (the worker's way; off: sent through the topic after
    #: ``local_rounds``, a test's check that the kill model then finds events late)
    handed_owed: bool = True
    #: the internal topics' records read are committed with the ``shares`` offsets (every
    #: ``commit_every`` steps), not at once: a kill reads those read since again (off: a
    #: step reading an internal topic commits it, everything sent before acknowledged)
    commit_internal: bool = False
    #: the wire version written on the topics (a worker's ``VIRALWATCH_WIRE_VERSION``)
    wire: WireVersion = LATEST_WIRE
    #: the alerts and takedown requests (by key) a kill lost before the broker had them
    torn: list[bytes] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    alerts: dict[str, bytes] = field(default_factory=dict)
    actions: dict[str, bytes] = field(default_factory=dict)
    deadletters: list[DeadLetter] = field(default_factory=list)
    #: the alerts (by dedupe key) sent before the watermark reached them
    early: set[str] = field(default_factory=set)
    #: when each alert (by dedupe key) came out: (input lines read by then, the
    #: watermark of the clusters partition that sent it)
    emitted: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: input lines read so far (lines read again after a restart too)
    read: int = 0
    #: alerts (by dedupe key) sent a second time: must stay empty (an id goes out once)
    resent: list[str] = field(default_factory=list)
    #: times the process was killed (with a :class:`Tear`) or replaced
    kills: int = 0
    #: uploads in the cluster log's writes the kills took back (each counted when written,
    #: and again when its input, read again, brings it back: at most this many twice)
    lost_uploads: int = 0
    #: times partitions moved
    moved: int = 0
    #: times the short way to a moved partition opened with records still on its topic
    opened_early: int = 0
    #: the process's topology as the run left it (the last one, after restarts)
    topology: Topology | None = None
    #: batches each moved partition has read since it moved (see ``short_way_after``)
    _batches_read: dict[tuple[str, int], int] = field(default_factory=dict)
    #: checkpoints committed in the run (every acknowledgement of everything written)
    _acks: int = 0
    #: the hand-over of the process built last (:meth:`build`), told of acknowledgements
    _hand_over: HandOver | None = None

    def build(
        self,
        rng: random.Random,
        topics: Topics | None = None,
        tables: dict[str, Table] | None = None,
        incarnation: int = 0,
    ) -> tuple[Topology, Checkpoint, Topics]:
        """The topology a worker holding every partition builds, on memory topics and tables
        (new ones, or those a previous ``incarnation`` of the process left)."""
        n = self.partitions
        if topics is None:
            topics = {name: [[] for _ in range(n)] for name in ("resolve", "clusters")}
        if tables is None:
            tables = {}
        for name in ("resolve-log", "cluster-log", "alerts-sent", "actions-sent"):
            tables.setdefault(name, Table(name))
        marks = itertools.count()

        def sender(name: str) -> Callable[[int, Envelope | bytes], int]:
            def send(partition: int, envelope: Envelope | bytes) -> int:
                mark = next(marks)
                # in the topics' wire version, as a worker sends it
                raw = envelope.pack(self.wire) if isinstance(envelope, Envelope) else envelope
                topics[name][partition].append(record := (incarnation, mark, raw))
                if self.tear is not None:
                    self.tear.sent_record(name, partition, record)
                return mark

            return send

        def coin(enabled: bool) -> Callable[[], bool]:
            return lambda: enabled and rng.random() < 0.5

        def older(name: str, p: int) -> bool:
            """Whether topic partition ``p`` still holds records an earlier incarnation sent
            (they are read first: each partition's list is in the order sent)."""
            part = topics[name][p]
            return bool(part) and part[0][0] != incarnation

        # A replacement takes no short way while what the process before it sent is unread,
        # as a worker takes none for a grace after an assignment (HAND_OVER_GRACE_S): its
        # in-process progress would overtake the copies on the resolve topic of what the
        # process before it handed over (see Hop.copy), and release what waits for them late.
        # Its grace ends on an event, not a time: the read of the last of those records (no
        # more are ever sent). Each topic partition that holds some is looked at until its
        # own are read, then no more; once none is left the grace is over for good. (It is
        # looked at, not told by run()'s reader: tests read a replacement's topics by hand.)
        unread_older = {(name, p) for name in topics for p in range(n) if older(name, p)}

        def grace_over() -> bool:
            if unread_older:
                unread_older.difference_update([k for k in unread_older if not older(*k)])
            return not unread_older

        hops = HandOver(
            resolve=Hop("resolve", sender("resolve"), enabled=coin(self.local_resolve)),
            clusters=Hop("clusters", sender("clusters"), enabled=coin(self.local_clusters)),
            # a clock that reads 0 during the grace and 1 from its end: a grace of 1
            grace_s=1.0 if unread_older else 0.0,
            clock=lambda: float(grace_over()),
        )
        hops.assigned()
        self._hand_over = hops
        # (what an earlier incarnation sent waits for the grace above, which ends once read)
        if self.local_resolve or self.local_peers:
            hops.resolve.assign(range(n), others=False)
        if self.local_clusters:
            hops.clusters.assign(range(n), others=False)
        for p in range(n):
            hops.resolve.read_from(p)
            hops.clusters.read_from(p)
        tear = self.tear
        if tear is not None:
            for table in tables.values():
                tear.watch(table)

        def noted(table: Table) -> Callable[[int, bytes, bytes | None], None] | None:
            if tear is None:
                return None
            return lambda partition, key, _: tear.sent(table, partition, key)

        # the resolve log's records are sent once what came before them is acknowledged, as
        # a worker's are (the gate's group is sent at the next step: see Gate)
        resolve_send = noted(tables["resolve-log"])
        gate = None
        if tear is not None and resolve_send is not None and self.gate_resolve_log:
            gate = Gate(resolve_send, acknowledge=tear.acknowledged, mark=tear.mark)
        logs = [
            StateLog(
                tables[name],
                compact_bytes=self.log_compact_bytes,
                compact_garbage=self.log_compact_garbage,
                on_compacted=self._compacted,
                send=(gate.send if gate is not None else resolve_send)
                if name == "resolve-log"
                else noted(tables[name]),
            )
            for name in ("resolve-log", "cluster-log")
        ]
        sent = {"alerts": noted(tables["alerts-sent"]), "actions": noted(tables["actions-sent"])}
        outputs = Outputs(
            tables["alerts-sent"],
            tables["actions-sent"],
            deadletter=self.deadletters.append,
            send=None if tear is None else lambda kind, p, k, v: sent[kind](p, k, v),  # type: ignore[misc]
        )
        outputs.on_sent = self._sent
        topology = Topology(
            StageSettings(
                partitions=n,
                sources=n,
                lateness_ms=self.lateness_ms,
                hold_ms=self.hold_ms,
                max_held=100_000,
                idle_ms=self.idle_ms,
                partition_idle_s=1e9,
                peer_rounds=self.local_rounds if self.local_peers else 0,
            ),
            banks=self.banks,
            policy=self.policy,
            stats=self.stats,
            pseudonymizer=self.pseudonymizer,
            hand_over=hops,
            resolve_log=logs[0],
            cluster_log=logs[1],
            outputs=outputs,
            predictor_factory=self.predictor_factory,
        )
        topology.ingest.clock.assign(range(n), 0.0)
        topology.copying = self.copy_handed
        topology.handed_owed = self.handed_owed
        checkpoint = Checkpoint(sinks=[outputs], logs=logs, gate=gate, copies=topology)
        return topology, checkpoint, topics

    def run(self, lines: Iterable[bytes], key: str = "none", run: int = 7) -> LocalRun:
        rng = random.Random(self.seed)
        n = self.partitions
        shares, bank_updates = split_input(lines, n, key, run)
        total = sum(map(len, shares))
        #: the bank updates applied so far (a new process reads the bank topic from the start)
        applied: list[BankUpdate] = []
        tables: dict[str, Table] = {}
        incarnation = 0
        topology, checkpoint, topics = self.build(rng, tables=tables)
        self._rebuild(topology)
        resolve, clusters = topics["resolve"], topics["clusters"]
        #: with commit_internal: the internal topics' records read since the last commit
        reread: Topics = {name: [[] for _ in range(n)] for name in topics}
        #: the next ``shares`` record to read, and the last committed, per partition
        pos, committed, seen = [0] * n, [0] * n, [0] * n
        #: each checkpoint's partitions' (offset, newest event time), written before its
        #: offsets are committed, as the shares reader keeps them on the bundled broker
        #: (streams.runtime.stream_times; on Apache Kafka the commit's metadata holds the
        #: same pair): a replacement resumes the time written with each committed offset
        kept_times: list[bytes] = []

        def new_kept() -> stream_times.KeptTimes:
            """A process's writer of the times (its own pairs as last committed)."""
            return stream_times.KeptTimes(
                stream_times.topic_name("local"),
                lambda _, value: kept_times.append(value),
                make_reader=lambda: None,
                wall=lambda: 0.0,  # one generation (the rotation: tests/test_stream_times.py)
            )

        kept = new_kept()

        def keep_times(clock: SourceClock, commit: bool) -> None:
            """A checkpoint's pairs written (every partition named: this process holds them
            all), then committed with its offsets, or not (a kill before the commit)."""
            moved = {p: pos[p] for p in range(n) if pos[p] != committed[p]}
            pairs = stream_times.taken(moved, clock.newest)
            kept.write(pairs, held=range(n))
            if commit:
                kept.committed(pairs)

        #: input lines read (new ones only) after which the process is replaced
        restart_at = [total * (i + 1) // (self.restarts + 1) for i in range(self.restarts)]
        #: input lines read after which partitions move (the last once all has flowed)
        move_at = [total * (i + 1) // self.moves for i in range(self.moves - 1)]
        move_at += [total + 1] * (self.moves > 0)
        fresh = 0
        now = 0.0
        steps = 0
        flushed = False

        def received(hop: Hop, p: int, records: list[Record]) -> list[bytes]:
            """The records read, marked when this incarnation sent them (see HandOver)."""
            return hop.received(p, [(m if i == incarnation else None, r) for i, m, r in records])

        #: with Tear.after_release: the step in which an event held before a checkpoint
        #: began was last released and handed over, and the checkpoints committed by then
        release: tuple[int, int] | None = None

        def released() -> None:
            nonlocal release
            if release is None or release[1] != self._acks:
                release = (steps, self._acks)

        def placed() -> bool:
            """Whether a kill may fall here (see :class:`Tear`)."""
            if self.tear is None or not self.tear.after_release:
                return True
            return release is not None and release[1] == self._acks and steps > release[0] + 1

        if self.tear is not None and self.tear.after_release:
            topology.on_released = released
        while True:
            if restart_at and fresh >= restart_at[0] and placed():
                restart_at.pop(0)
                incarnation += 1  # a new process: its state comes from the logs alone
                self.kills += 1
                # its last checkpoint wrote its pairs; the kill came before their commit
                keep_times(topology.ingest.clock, commit=False)
                if self.tear is not None:
                    self._killed(self.tear.kill(rng, topics))
                for name, parts in reread.items():  # read again from the last commit
                    for q, records in enumerate(parts):
                        topics[name][q] = records + topics[name][q]
                        parts[q] = []
                topology, checkpoint, _ = self.build(rng, topics, tables, incarnation)
                self._rebuild(topology)  # before its bank follower reads the bank topic again
                release = None
                flushed = False  # (a replacement after the input's end goes idle in turn)
                if self.tear is not None and self.tear.after_release:
                    topology.on_released = released
                for update in applied:  # its bank follower reads the bank topic again
                    topology.change_bank(update)
                pos = committed[:]  # what was read after the last commit is read again
                # read back as far as a worker reads (stream_times.read_back)
                newest = kept_times[-stream_times.READ_LIMIT :]
                resumed = stream_times.match(newest, dict(enumerate(committed)))
                for p, ts in resumed.items():
                    topology.ingest.clock.resume(p, ts)
                kept = new_kept()
                kept.resumed(dict(enumerate(committed)), resumed)
            if move_at and fresh >= move_at[0]:
                move_at.pop(0)
                self._move(rng, topology, topics)
            while bank_updates and bank_updates[0][0] <= fresh:  # the bank follower
                _, update = bank_updates.pop(0)
                update.apply(self.banks)
                applied.append(update)
                topology.change_bank(update)
                checkpoint.stage()
            choices = [("s", p) for p in range(n) if pos[p] < len(shares[p])]
            choices += [("r", p) for p in range(n) if resolve[p]]
            choices += [("c", p) for p in range(n) if clusters[p]]
            if not choices:
                if flushed and move_at:  # the last moves come once everything has flowed
                    move_at.pop(0)
                    self._move(rng, topology, topics)
                    now += 60.0  # a rebalance takes its time
                elif flushed:
                    break
                flushed = True  # input over: every partition goes idle, held events flow out
                topology.heartbeat(now + 2e9)
                checkpoint.stage()
                continue
            stage, p = rng.choice(choices)
            size = rng.randint(1, self.max_batch)
            now += 0.001
            hops = topology.hand_over
            if stage == "s":
                at = pos[p]
                chunk = shares[p][at : at + size]
                pos[p] += len(chunk)
                fresh += max(0, pos[p] - seen[p])
                seen[p] = max(seen[p], pos[p])
                self.read += len(chunk)
                topology.ingest_records([(p, shares_records(chunk, at))], now)
            elif stage == "r":
                records, resolve[p] = resolve[p][:size], resolve[p][size:]
                if self.commit_internal:
                    reread["resolve"][p] += records
                topology.resolve_received({p: received(hops.resolve, p, records)})
                if self._opens(hops.resolve, p, resolve[p]):
                    hops.resolve.read_from(p)
            else:
                records, clusters[p] = clusters[p][:size], clusters[p][size:]
                if self.commit_internal:
                    reread["clusters"][p] += records
                topology.detect(p, received(hops.clusters, p, records))
                if self._opens(hops.clusters, p, clusters[p]):
                    hops.clusters.read_from(p)
            checkpoint.stage()
            steps += 1
            if stage != "s" and not self.commit_internal:  # as if Faust committed them
                self._acknowledged(checkpoint)
            if steps % self.commit_every == 0:
                self._acknowledged(checkpoint)
                for parts in reread.values():
                    for q in range(n):
                        parts[q] = []
                keep_times(topology.ingest.clock, commit=True)
                committed = pos[:]
        self.actions.update((k.decode(), v) for k, v in tables["actions-sent"].items())
        self.topology = topology
        return self

    def _opens(self, hop: Hop, partition: int, unread: list[Record]) -> bool:
        """Whether the short way to ``partition`` opens after the batch it just read."""
        if not unread:
            return True
        if self.short_way_after is None:
            return False
        key = (hop.name, partition)
        self._batches_read[key] = self._batches_read.get(key, 0) + 1
        if self._batches_read[key] < self.short_way_after:
            return False
        self.opened_early += partition not in hop.reading
        return True

    def _move(self, rng: random.Random, topology: Topology, topics: Topics) -> None:
        """Some partitions of each internal topic change owner (see the module doc)."""
        n = self.partitions
        hops = {"resolve": topology.hand_over.resolve, "clusters": topology.hand_over.clusters}
        for name, hop in hops.items():
            moved = rng.sample(range(n), rng.randint(1, max(1, n - 1)))
            for p in moved:
                held = p in hop.held
                self._batches_read.pop((name, p), None)
                topology.revoke(name, p)
                if self.moves_between:  # what is on its topic another process sent
                    topics[name][p] = [(OTHER, m, raw) for _, m, raw in topics[name][p]]
                    hop.last_sent.pop(p, None)
                if held:  # the new owner holds it; the short way opens once read
                    hop.assign([p], others=self.wait_for_others)
            if name == "clusters":
                topology.release(set(moved))
        self._rebuild(topology)
        self.moved += 1

    def _rebuild(self, topology: Topology) -> None:
        """The clusters partitions this process holds, rebuilt now if ``rebuild_assigned``
        (every partition: a single process holds them all)."""
        if self.rebuild_assigned:
            topology.rebuild(range(self.partitions))

    def _acknowledged(self, checkpoint: Checkpoint) -> None:
        """Everything written is on the broker (a commit waits for it: the gate's group too,
        sealed now, after the copies of what was handed over in-process: see
        :meth:`Checkpoint.stage`), the logs of what was handed over in-process too (the long
        way may be taken again: :meth:`HandOver.acknowledged`)."""
        checkpoint.stage(begin=True)
        self._acks += 1
        if self._hand_over is not None:
            self._hand_over.acknowledged()
        if self.tear is not None:
            if checkpoint.gate is not None:
                checkpoint.gate.release()
            self.tear.acknowledged()

    def _killed(self, lost: list[Write]) -> None:
        """What a kill took back: the alerts among it never reached the alerts topic."""
        for w in lost:
            if w.new is not None and w.table.name == "cluster-log":
                routed, _ = decode_routed_log(w.new)
                self.lost_uploads += sum(1 for r in routed if r.event.type == "upload")
            if w.new is not None and w.table.name in ("alerts-sent", "actions-sent"):
                self.torn.append(w.key)
                if w.table.name == "alerts-sent":
                    self.alerts.pop(w.key.decode(), None)
                    self.early.discard(w.key.decode())

    def _compacted(self) -> None:
        self.stats.log_compactions += 1

    def _sent(self, partition: int, watermark: int, alerts: list[Alert]) -> None:
        for alert in alerts:
            key = alert.dedupe_key
            if key in self.alerts:
                self.resent.append(key)
            self.alerts[key] = alert.to_json()
            self.emitted[key] = (self.read, watermark)
            if isinstance(alert, EarlyAlert):
                self.early.add(key)
