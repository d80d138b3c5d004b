"""Moves between two real processes: two topologies, each with its own hand-over and producer
buffer, on shared topics and tables in memory, partitions moving between them.

:class:`LocalRun`'s ``moves_between`` moves a partition "to another process" inside one
process: it relabels what is on the partition's topic as another sender's. Here there are
two processes (:meth:`LocalRun.build` twice, incarnations 0 and 1), each with:

- its own producer buffer: what it sends to an internal topic is in flight (written, not on
  the topic yet) until a flush moves it there, a partition's records in the order sent (a
  random prefix of each partition's buffer at random steps, as the client's batches go; all
  of it at a commit and at a rebalance);
- its own assignment of the Faust group's ``resolve`` and ``clusters`` partitions. A
  rebalance is eager, as aiokafka's protocol is: every process has every partition revoked
  (its state dropped, :meth:`Topology.revoke`), flushes (the worker's flush on revoke:
  what it wrote staged, the copies written, its buffer on the topics; ``revoke_flush`` off,
  a counter-test's switch: not), then is assigned its new share (:meth:`Hop.assign`, the
  grace restarted) and restores each partition from its log when it reads it, reading
  its topic again from the last commit (Faust commits nothing on revocation: what was
  read since is read again, by whoever holds it now);
- its own share of the ``shares`` partitions, a consumer group of its own that does
  nothing on revocation (:func:`streams.runtime.faust_adapter.on_assigned`): a partition
  that moves is read by its new owner from the last commit, with its committed newest
  event time (:meth:`SourceClock.resume`); its old owner just stops reading it. A process
  commits the ``shares`` offsets it holds after a flush of everything it sent.

A partition's short way opens once the grace is over and it has read ``after`` batches
since its assignment (the worker's: one batch, the grace a matter of time).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from test_streaming_stages import IN_TIME, assert_replay_alert_records, bank_of, replay_alerts

from streams.alerts import Pseudonymizer
from streams.policy import AlertPolicy
from streams.runtime.checkpoint import Checkpoint
from streams.runtime.hand_over import Hop
from streams.runtime.local_run import LocalRun, Table, Topics, shares_records, split_input
from streams.runtime.topology import Topology
from streams.settings import DEV_PSEUDONYM_KEY
from streams.simulate import Scenario, simulate
from streams.watermarks import NO_TIME

HOPS = ("resolve", "clusters")


@dataclass
class Process:
    """One worker: its topology, checkpoint, producer buffer and what it holds."""

    incarnation: int
    topology: Topology
    checkpoint: Checkpoint
    #: what it sent and is not on the topics yet, per topic and partition, oldest first
    buffer: Topics
    #: the ``shares`` partitions it reads, and where it reads each next
    shares: dict[int, int] = field(default_factory=dict)
    #: the ``resolve`` and ``clusters`` partitions it holds
    held: dict[str, set[int]] = field(default_factory=dict)
    #: batches each partition held has read since its assignment
    batches: dict[tuple[str, int], int] = field(default_factory=dict)
    steps: int = 0

    def hop(self, name: str) -> Hop:
        hops = self.topology.hand_over
        return hops.resolve if name == "resolve" else hops.clusters

    def unsent(self) -> int:
        return sum(len(part) for parts in self.buffer.values() for part in parts)


@dataclass
class TwoProcesses:
    """Two workers on shared topics (see the module doc); :meth:`run` as LocalRun's."""

    local: LocalRun
    seed: int = 0
    #: rebalances of the Faust group, and moves of ``shares`` partitions, over the input
    rebalances: int = 12
    share_moves: int = 3
    #: batches a partition reads after its assignment before its short way opens
    after: int = 1
    #: a process flushes its buffer on a rebalance (off: a counter-test's switch)
    revoke_flush: bool = True
    commit_every: int = 40
    #: the odds that a process with records in flight may flush some at a step
    flush_odds: float = 0.1
    #: the shares offsets committed, and the newest event time committed with each
    committed: dict[int, int] = field(default_factory=dict)
    committed_time: dict[int, int] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    #: envelopes flushed to the topics, and the most in flight at once
    flushed: int = 0
    in_flight_max: int = 0
    #: times the short way opened with records still on the partition's topic
    opened_early: int = 0

    def run(self, lines: list[bytes], run: int = 7) -> TwoProcesses:
        local, rng = self.local, random.Random(self.seed)
        n = local.partitions
        shares, bank_updates = split_input(lines, n, run=run)
        total = sum(map(len, shares))
        self.topics: Topics = {name: [[] for _ in range(n)] for name in HOPS}
        self.reread: Topics = {name: [[] for _ in range(n)] for name in HOPS}
        tables: dict[str, Table] = {}
        for i in range(2):
            buffer: Topics = {name: [[] for _ in range(n)] for name in HOPS}
            topology, checkpoint, _ = local.build(rng, buffer, tables, incarnation=i)
            self.processes.append(Process(i, topology, checkpoint, buffer))
        for p in range(n):
            self.committed[p], self.committed_time[p] = 0, NO_TIME
        self._rebalance(rng, first=True)
        self._move_shares(rng, first=True)
        rebalance_at = [total * (k + 1) // (self.rebalances + 1) for k in range(self.rebalances)]
        shares_at = [total * (2 * k + 1) // (2 * self.share_moves) for k in range(self.share_moves)]
        fresh = 0
        seen = [0] * n
        now = 0.0
        ended = False
        while True:
            if rebalance_at and fresh >= rebalance_at[0]:
                rebalance_at.pop(0)
                self._rebalance(rng)
            if shares_at and fresh >= shares_at[0]:
                shares_at.pop(0)
                self._move_shares(rng)
            while bank_updates and bank_updates[0][0] <= fresh:  # each bank follower
                _, update = bank_updates.pop(0)
                update.apply(local.banks)
                for proc in self.processes:
                    proc.topology.change_bank(update)
                    proc.checkpoint.stage()
            choices: list[tuple[Process, str, int]] = []
            for proc in self.processes:
                choices += [(proc, "s", p) for p, at in proc.shares.items() if at < len(shares[p])]
                for name in HOPS:
                    choices += [(proc, name, p) for p in proc.held[name] if self.topics[name][p]]
                if proc.unsent() and rng.random() < self.flush_odds:
                    choices.append((proc, "flush", -1))
            if not choices and any(proc.unsent() for proc in self.processes):
                for proc in self.processes:  # the client sends what lingered, in the end
                    self._flush(rng, proc, everything=True)
                continue
            if not choices:
                if ended:
                    break
                ended = True  # input over: every partition goes idle, held events flow out
                for proc in self.processes:
                    proc.topology.heartbeat(now + 2e9)
                    proc.checkpoint.stage()
                continue
            proc, stage, p = rng.choice(choices)
            now += 0.001
            size = rng.randint(1, local.max_batch)
            if stage == "flush":
                self._flush(rng, proc, everything=rng.random() < 0.2)
                continue
            if stage == "s":
                at = proc.shares[p]
                chunk = shares[p][at : at + size]
                proc.shares[p] = at + len(chunk)
                fresh += max(0, proc.shares[p] - seen[p])
                seen[p] = max(seen[p], proc.shares[p])
                proc.topology.ingest_records([(p, shares_records(chunk, at))], now)
            else:
                records, self.topics[stage][p] = (
                    self.topics[stage][p][:size],
                    self.topics[stage][p][size:],
                )
                self.reread[stage][p] += records
                hop = proc.hop(stage)
                envelopes = hop.received(
                    p, [(m if i == proc.incarnation else None, r) for i, m, r in records]
                )
                if stage == "resolve":
                    proc.topology.resolve_received({p: envelopes})
                else:
                    proc.topology.detect(p, envelopes)
                key = (stage, p)
                proc.batches[key] = proc.batches.get(key, 0) + 1
                if proc.batches[key] >= self.after and p not in hop.reading:
                    self.opened_early += bool(self.topics[stage][p])
                    hop.read_from(p)
            proc.checkpoint.stage()
            proc.steps += 1
            if proc.steps % self.commit_every == 0:
                self._commit(proc)
        return self

    def _flush(self, rng: random.Random, proc: Process, everything: bool) -> None:
        """What ``proc`` sent goes to the topics: all of it, or a random prefix of each
        partition's buffer (Kafka keeps a partition's order, not one across partitions)."""
        self.in_flight_max = max(self.in_flight_max, proc.unsent())
        for name, parts in proc.buffer.items():
            for q, part in enumerate(parts):
                k = len(part) if everything else rng.randint(0, len(part))
                self.topics[name][q] += part[:k]
                self.flushed += k
                del part[:k]

    def _acknowledged(self, proc: Process) -> None:
        """Everything ``proc`` wrote is on the topics (its writes staged, the copies of
        what it handed over in-process written first: the worker's flush)."""
        proc.checkpoint.stage(begin=True)
        self._flush(random.Random(0), proc, everything=True)
        proc.topology.hand_over.acknowledged()

    def _commit(self, proc: Process) -> None:
        """``proc`` commits the offsets it holds (``shares`` and the internal topics: as the
        worker's checkpoint and Faust's commit do), once what they became is sent."""
        self._acknowledged(proc)
        for name in HOPS:
            for p in proc.held[name]:
                self.reread[name][p] = []
        for p, at in proc.shares.items():
            self.committed[p] = at
            self.committed_time[p] = proc.topology.ingest.clock.newest(p)

    def _rebalance(self, rng: random.Random, first: bool = False) -> None:
        """The Faust group rebalances (eager): every partition revoked from every process,
        each flushing; then each assigned its new share (at least one of each topic)."""
        n = self.local.partitions
        for proc in self.processes:
            for name in HOPS:
                for p in sorted(range(n) if first else proc.held[name]):
                    proc.topology.revoke(name, p)
                proc.held[name] = set()
            proc.topology.release(set(range(n)))
            proc.batches.clear()
            if self.revoke_flush:
                self._acknowledged(proc)
            else:
                proc.checkpoint.stage(begin=True)  # (its logs staged: restored from them)
        for name, parts in self.reread.items():  # read again from the last commit
            for q, records in enumerate(parts):
                self.topics[name][q] = records + self.topics[name][q]
                parts[q] = []
        for name in HOPS:
            order = rng.sample(range(n), n)
            cut = rng.randint(1, n - 1)
            self.processes[0].held[name] = set(order[:cut])
            self.processes[1].held[name] = set(order[cut:])
        for proc in self.processes:
            proc.topology.hand_over.assigned()
            for name in HOPS:
                proc.hop(name).assign(sorted(proc.held[name]), others=self.local.wait_for_others)

    def _move_shares(self, rng: random.Random, first: bool = False) -> None:
        """The ``shares`` group rebalances: partitions change reader, each new reader going
        on from the last commit (its old one just stops: no flush)."""
        n = self.local.partitions
        order = rng.sample(range(n), n)
        cut = rng.randint(1, n - 1)
        owners = {p: 0 if k < cut else 1 for k, p in enumerate(order)}
        for proc in self.processes:
            mine = {p for p, i in owners.items() if i == proc.incarnation}
            kept = {p: at for p, at in proc.shares.items() if p in mine}
            clock = proc.topology.ingest.clock
            clock.assign(mine, 0.0)
            for p in sorted(mine - set(kept)):
                kept[p] = self.committed[p]
                clock.resume(p, self.committed_time[p])
            proc.shares = kept


def two_processes(sim: Any, seed: int, **settings: Any) -> TwoProcesses:
    """The moves test's settings (``tests/test_runtime_owners.py``) between two processes."""
    local = LocalRun(
        bank_of(sim.bank),
        AlertPolicy.default(),
        Pseudonymizer(DEV_PSEUDONYM_KEY),
        max_batch=20 if seed % 2 else 200,
        local_peers=seed % 2 == 0,
        local_resolve=True,
        local_clusters=True,
        wait_for_others=settings.pop("wait_for_others", True),
        partitions=settings.pop("partitions", 4),
    )
    return TwoProcesses(local, seed=seed, **settings).run(sim.lines)


@pytest.fixture(scope="module")
def in_time_hour() -> tuple[Any, list[Any]]:
    sim = simulate(Scenario(seed=11, minutes=60, **IN_TIME))  # type: ignore[arg-type]
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank))
    return sim, expected


def assert_exact(run: TwoProcesses, expected: list[bytes]) -> None:
    """Replay's alerts, each once, every event applied and none late."""
    waiting = {
        (proc.incarnation, k): d.pending
        for proc in run.processes
        for k, d in proc.topology.detectors.items()
        if d.pending
    }
    assert not waiting, f"events never applied, per process and clusters partition: {waiting}"
    assert run.local.stats.late == 0
    assert expected
    assert_replay_alert_records(list(run.local.alerts.values()), expected)
    assert run.local.resent == []


@pytest.mark.parametrize("seed", range(20))
def test_partitions_moving_between_two_processes_with_records_in_flight_lose_nothing(
    in_time_hour: tuple[Any, list[bytes]], seed: int
) -> None:
    """Twelve rebalances of the Faust group and three moves of ``shares`` partitions between
    two processes, each with records in flight (written, not on the topics yet): replay's
    alerts, every event applied, none late; the rule held envelopes back, the short way
    opened with records still on a moved partition's topic, records were in flight."""
    sim, expected = in_time_hour
    run = two_processes(sim, seed)
    assert sum(proc.steps for proc in run.processes) > 0 and run.in_flight_max > 0
    hops = [proc.hop(name) for proc in run.processes for name in HOPS]
    assert sum(hop.waited for hop in hops) > 0 and sum(hop.read_behind for hop in hops) > 0
    assert_exact(run, expected)


#: Of seeds 0-39, those with events late with the flush on revoke skipped (3, 3, 5 late; also
#: 21 and 39: 1 each) and with the rule off (2 and 4 late; also 39: 1); all 40 exact with both.
NO_FLUSH_SEEDS = [11, 17, 29]
NO_RULE_SEEDS = [11, 19]


@pytest.mark.parametrize("seed", NO_FLUSH_SEEDS)
def test_without_the_flush_on_revoke_records_in_flight_come_late(
    in_time_hour: tuple[Any, list[bytes]], seed: int
) -> None:
    """The flush on revoke skipped (``revoke_flush`` off): what a partition's previous owner
    sent is still in its buffer when the new owner, its short way open past its own first
    send, hands the partition progress in-process: the previous owner's records land behind
    it, their events late."""
    sim, _ = in_time_hour
    assert two_processes(sim, seed, revoke_flush=False).local.stats.late > 0


@pytest.mark.parametrize("seed", NO_RULE_SEEDS)
def test_without_waiting_for_what_others_sent_a_moved_partition_events_come_late(
    in_time_hour: tuple[Any, list[bytes]], seed: int
) -> None:
    """The rule off (``wait_for_others``: a partition assigned waits only for what its new
    owner sent it): what the previous owner sent is on the topic, unread, when the new owner
    opens the short way after one batch: events late."""
    sim, _ = in_time_hour
    assert two_processes(sim, seed, wait_for_others=False).local.stats.late > 0
