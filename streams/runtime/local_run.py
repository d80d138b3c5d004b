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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from streams.alerts import Alert, Pseudonymizer
from streams.banks import BankUpdate, HashBanks
from streams.detector import EarlyAlert, Predictor
from streams.pipeline import DEFAULT_PREDICTOR, is_bank_update
from streams.policy import AlertPolicy
from streams.runtime.checkpoint import Checkpoint
from streams.runtime.hand_over import HandOver, Hop
from streams.runtime.outputs import Outputs
from streams.runtime.state_log import StateLog
from streams.runtime.topology import StageSettings, Topology
from streams.stages import DeadLetter, Envelope
from streams.stats import Stats


class Table(dict[bytes, bytes]):
    """A table in memory (what a Faust table is to the state log and the outputs)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


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
    stats: Stats = field(default_factory=Stats)
    alerts: dict[str, bytes] = field(default_factory=dict)
    actions: dict[str, bytes] = field(default_factory=dict)
    deadletters: list[DeadLetter] = field(default_factory=list)
    #: the alerts (by dedupe key) sent before the watermark reached them
    early: set[str] = field(default_factory=set)
    #: when each alert (by dedupe key) came out: (input lines read by then, the
    #: watermark of the clusters partition that sent it)
    emitted: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: input lines read so far
    read: int = 0

    def build(
        self, rng: random.Random
    ) -> tuple[Topology, Checkpoint, dict[str, list[list[tuple[int | None, bytes]]]]]:
        """The topology a worker holding every partition builds, on memory topics."""
        n = self.partitions
        topics: dict[str, list[list[tuple[int | None, bytes]]]] = {
            name: [[] for _ in range(n)] for name in ("resolve", "clusters")
        }
        marks = itertools.count()

        def sender(name: str) -> Callable[[int, Envelope | bytes], int]:
            def send(partition: int, envelope: Envelope | bytes) -> int:
                mark = next(marks)
                raw = envelope.pack() if isinstance(envelope, Envelope) else envelope
                topics[name][partition].append((mark, raw))
                return mark

            return send

        def coin(enabled: bool) -> Callable[[], bool]:
            return lambda: enabled and rng.random() < 0.5

        hops = HandOver(
            resolve=Hop("resolve", sender("resolve"), enabled=coin(self.local_resolve)),
            clusters=Hop("clusters", sender("clusters"), enabled=coin(self.local_clusters)),
            grace_s=0.0,
        )
        hops.assigned()
        if self.local_resolve or self.local_peers:
            hops.resolve.assign(range(n))
        if self.local_clusters:
            hops.clusters.assign(range(n))
        for p in range(n):
            hops.resolve.read_from(p)
            hops.clusters.read_from(p)
        logs = [
            StateLog(Table(name), compact_bytes=self.log_compact_bytes)
            for name in ("resolve-log", "cluster-log")
        ]
        outputs = Outputs(
            Table("alerts-sent"), Table("actions-sent"), deadletter=self.deadletters.append
        )
        outputs.on_sent = self._sent
        topology = Topology(
            StageSettings(
                partitions=n,
                sources=n,
                lateness_ms=self.lateness_ms,
                hold_ms=self.hold_ms,
                max_held=100_000,
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
        return topology, Checkpoint(sinks=[outputs], logs=logs), topics

    def run(self, lines: Iterable[bytes], key: str = "none", run: int = 7) -> LocalRun:
        rng = random.Random(self.seed)
        n = self.partitions
        shares: list[list[tuple[int, bytes]]] = [[] for _ in range(n)]
        #: bank updates (the bank topic's records), by how many share lines come before each
        bank_updates: list[tuple[int, BankUpdate]] = []
        i = 0
        for line in lines:
            if is_bank_update(line):
                bank_updates.append((i, BankUpdate.parse(None, line)))
                continue
            p = (i // run) % n if key == "none" else zlib.crc32(line) % n
            shares[p].append((len(shares[p]), line))
            i += 1
        topology, checkpoint, topics = self.build(rng)
        resolve, clusters = topics["resolve"], topics["clusters"]
        hops = topology.hand_over
        pos = [0] * n
        now = 0.0
        flushed = False
        while True:
            while bank_updates and bank_updates[0][0] <= self.read:  # the bank follower
                _, update = bank_updates.pop(0)
                update.apply(self.banks)
                topology.change_bank(update)
                checkpoint.stage()
            choices = [("s", p) for p in range(n) if pos[p] < len(shares[p])]
            choices += [("r", p) for p in range(n) if resolve[p]]
            choices += [("c", p) for p in range(n) if clusters[p]]
            if not choices:
                if flushed:
                    break
                flushed = True  # input over: every partition goes idle, held events flow out
                topology.heartbeat(now + 2e9)
                checkpoint.stage()
                continue
            stage, p = rng.choice(choices)
            size = rng.randint(1, self.max_batch)
            now += 0.001
            if stage == "s":
                chunk = shares[p][pos[p] : pos[p] + size]
                pos[p] += len(chunk)
                self.read += len(chunk)
                topology.ingest_records(((p, off, line) for off, line in chunk), now)
            elif stage == "r":
                records, resolve[p] = resolve[p][:size], resolve[p][size:]
                topology.resolve_received({p: hops.resolve.received(p, records)})
            else:
                records, clusters[p] = clusters[p][:size], clusters[p][size:]
                topology.detect(p, hops.clusters.received(p, records))
            checkpoint.stage()
        self.actions.update((k.decode(), v) for k, v in topology.outputs.actions.items())
        return self

    def _sent(self, partition: int, watermark: int, alerts: list[Alert]) -> None:
        for alert in alerts:
            key = alert.dedupe_key
            self.alerts[key] = alert.to_json()
            self.emitted[key] = (self.read, watermark)
            if isinstance(alert, EarlyAlert):
                self.early.add(key)
