"""The runtime's owners without a broker: the checkpoint's order, the staged state log, the
hand-over's rule, and the in-process runner built from the worker's own objects."""

from __future__ import annotations

import asyncio
import functools
import os
import random
from pathlib import Path
from typing import Any

import pytest
from test_streaming_stages import (
    IN_TIME,
    assert_replay_alert_records,
    bank_of,
    local_run,
    replay_alerts,
)

from streams.alerts import Pseudonymizer
from streams.banks import HashBanks
from streams.events import Content, ShareEvent
from streams.pipeline import Pipeline
from streams.policy import AlertPolicy
from streams.runtime.checkpoint import Checkpoint, Gate
from streams.runtime.hand_over import HandOver, Hop
from streams.runtime.local_run import LocalRun, Table, Tear
from streams.runtime.state_log import StateLog
from streams.runtime.topology import Topology
from streams.runtime.worker import Worker
from streams.settings import DEV_PSEUDONYM_KEY, Settings
from streams.simulate import Scenario, simulate
from streams.stages import Envelope, partition_for
from streams.wire import Registration, ToRoute


class Steps:
    """Records the order of the checkpoint's steps; ``fail`` makes one of them raise."""

    def __init__(self, fail: str | None = None) -> None:
        self.done: list[str] = []
        self.fail = fail

    def step(self, name: str) -> None:
        if name == self.fail:
            raise RuntimeError(f"{name} failed")
        self.done.append(name)

    def checkpoint(self) -> Checkpoint:
        steps = self

        class Sink:
            def flush(self) -> None:
                steps.step("sinks")

        class Log:
            def flush(self) -> None:
                steps.step("state logs")

        async def flush() -> None:
            steps.step("producer")

        async def commit(offsets: dict[int, int]) -> None:
            steps.step(f"commit {sorted(offsets.items())}")

        return Checkpoint(sinks=[Sink()], logs=[Log()], flush_producer=flush, commit_offsets=commit)


def test_the_checkpoint_flushes_sinks_then_logs_then_the_producer_then_commits() -> None:
    steps = Steps()
    cp = steps.checkpoint()
    cp.store_offset(1, 9)
    cp.store_offset(0, 4)
    assert asyncio.run(cp.commit({0, 1}))
    assert steps.done == ["sinks", "state logs", "producer", "commit [(0, 5), (1, 10)]"]
    steps.done.clear()
    cp.store_offset(0, 5)
    assert asyncio.run(cp.commit({1})) is False  # partition 0 is not ours any more
    assert steps.done == ["sinks", "state logs"]


@pytest.mark.parametrize("failing", ["sinks", "state logs", "producer"])
def test_a_failing_step_aborts_the_checkpoint_and_offsets_stay(failing: str) -> None:
    steps = Steps(fail=failing)
    cp = steps.checkpoint()
    cp.store_offset(0, 4)
    with pytest.raises(RuntimeError, match=failing):
        asyncio.run(cp.commit({0}))
    assert not any(s.startswith("commit") for s in steps.done)
    order = ["sinks", "state logs", "producer"]
    assert steps.done == order[: order.index(failing)]  # nothing after the failed step ran
    steps.fail = None
    assert asyncio.run(cp.commit({0}))  # the next checkpoint commits them
    assert steps.done[-1] == "commit [(0, 5)]"


def test_a_failed_commit_is_retried_by_the_next_checkpoint() -> None:
    steps = Steps(fail="commit [(0, 5)]")
    cp = steps.checkpoint()
    cp.store_offset(0, 4)
    assert asyncio.run(cp.commit({0})) is False  # logged, not raised: a rebalance
    steps.fail = None
    assert asyncio.run(cp.commit({0}))


class Acks:
    """A producer flush per call, each acknowledged when a test says (``acked[n].set()``),
    and the commits, all noted in ``done`` in order."""

    def __init__(self) -> None:
        self.acked: dict[int, asyncio.Event] = {}
        self.done: list[str] = []

    def flush(self) -> Any:
        n = len(self.acked)
        self.acked[n] = asyncio.Event()
        self.done.append(f"flush {n} asked")

        async def wait() -> None:
            await self.acked[n].wait()
            self.done.append(f"flush {n} acked")

        return wait()

    async def commit(self, offsets: dict[int, int]) -> None:
        self.done.append(f"commit {sorted(offsets.items())}")


def test_a_checkpoint_behind_the_reader_commits_what_was_handled_before_it_began() -> None:
    """The orders a checkpoint that overlaps reading relies on: its offsets are those stored
    before its step 2, the producer flush it waits for is asked for as it begins (after
    step 2: records sent later are not waited for), and the next checkpoint waits for it,
    so offsets are committed in order and one at a time."""
    broker = Acks()
    acked, done = broker.acked, broker.done

    class Sink:
        def flush(self) -> None:
            done.append("sinks")

    cp = Checkpoint(
        sinks=[Sink()], logs=[], flush_producer=broker.flush, commit_offsets=broker.commit
    )

    async def scenario() -> None:
        cp.store_offset(0, 4)
        assert await cp.commit_behind({0})
        assert done == ["sinks", "flush 0 asked"] and cp.in_flight
        cp.store_offset(0, 5)  # read on while the first checkpoint waits
        cp.stage()
        second = asyncio.ensure_future(cp.commit_behind({0}))
        await asyncio.sleep(0.01)
        assert not second.done()  # one in flight at a time: the reader waits for it
        assert not any(s.startswith("commit") for s in done)
        acked[0].set()
        assert await second  # the first committed, then the second begun
        assert done[-4:] == ["flush 0 acked", "commit [(0, 5)]", "sinks", "flush 1 asked"]
        acked[1].set()
        await cp.settle()
        assert done[-2:] == ["flush 1 acked", "commit [(0, 6)]"] and cp.commits == 2
        assert not await cp.commit_behind({0})  # nothing new read

    asyncio.run(scenario())


def test_a_checkpoint_behind_the_reader_raises_its_failure_at_the_next_one() -> None:
    async def flush() -> None:
        raise RuntimeError("the producer failed")

    async def commit(offsets: dict[int, int]) -> None:
        raise AssertionError("never committed after a failed flush")

    cp = Checkpoint(sinks=[], logs=[], flush_producer=flush, commit_offsets=commit)

    async def scenario() -> None:
        cp.store_offset(0, 4)
        assert await cp.commit_behind({0})
        cp.store_offset(0, 5)
        with pytest.raises(RuntimeError, match="the producer failed"):
            await cp.commit_behind({0})

    asyncio.run(scenario())
    assert cp.commits == 0


def test_a_partition_forgotten_while_its_checkpoint_waits_is_not_noted_committed() -> None:
    """Its next owner commits it; if it comes back here, what this process reads of it from
    then on is committed again, not taken for committed already."""
    acked = asyncio.Event()
    committed: list[dict[int, int]] = []

    async def flush() -> None:
        await acked.wait()

    async def commit(offsets: dict[int, int]) -> None:
        committed.append(offsets)

    cp = Checkpoint(sinks=[], logs=[], flush_producer=flush, commit_offsets=commit)

    async def scenario() -> None:
        cp.store_offset(0, 4)
        cp.store_offset(1, 7)
        assert await cp.commit_behind({0, 1})
        cp.forget([1])  # a rebalance took it meanwhile
        acked.set()
        await cp.settle()
        cp.store_offset(1, 7)  # given back, read again from the same place
        assert await cp.commit({0, 1})

    asyncio.run(scenario())
    assert committed == [{0: 5, 1: 8}, {1: 8}]


def test_the_upstream_log_is_sent_once_what_came_before_it_is_acknowledged() -> None:
    """The resolve log's records of a batch (reshares released: no longer held) go to the
    broker only once the batch's cluster log and outputs are acknowledged, and a commit
    (the reader's, or Faust's flush before it commits an agent's) waits for them too."""
    broker = Acks()
    acked, done = broker.acked, broker.done
    gate = Gate(lambda p, k, v: done.append(f"resolve-log {p} {k.decode()}"))

    class Logs:
        def flush(self) -> None:
            done.append("cluster log")
            gate.send(0, b"released", b"[]")

    cp = Checkpoint(
        sinks=[],
        logs=[Logs()],
        flush_producer=broker.flush,
        commit_offsets=broker.commit,
        gate=gate,
    )

    async def scenario() -> None:
        cp.store_offset(0, 4)
        assert await cp.commit_behind({0})
        await asyncio.sleep(0.01)
        # the gate's barrier asked after the cluster log, then the commit's flush
        assert done == ["cluster log", "flush 0 asked", "flush 1 asked"]
        acked[1].set()
        await asyncio.sleep(0.01)
        assert "resolve-log 0 released" not in done  # its barrier is not acknowledged yet
        acked[0].set()
        await asyncio.sleep(0.01)
        # sent once acknowledged; then the commit waits for it to be acknowledged in turn
        assert done[-3:] == ["flush 0 acked", "resolve-log 0 released", "flush 2 asked"]
        assert not any(x.startswith("commit") for x in done)  # the record is not acked yet
        acked[2].set()
        await cp.settle()
        assert done[-2:] == ["flush 2 acked", "commit [(0, 5)]"]
        # Faust's flush (settle_writes) waits for a batch's held-back records in the same way
        cp.stage()
        settled = asyncio.ensure_future(cp.flush())
        await asyncio.sleep(0.01)
        assert not settled.done() and done[-1] == "flush 4 asked"
        acked[3].set()
        acked[4].set()
        await asyncio.sleep(0.01)
        assert done[-2:] == ["resolve-log 0 released", "flush 5 asked"] and not settled.done()
        acked[5].set()
        await settled

    asyncio.run(scenario())


def test_a_gate_whose_barrier_fails_sends_nothing_and_the_commit_raises_offsets_unmoved() -> None:
    """The producer flush the gate's group waits for fails (the producer lost the broker):
    the resolve log's records stay unsent, the commit raises what failed, no offset is
    committed, and the next commit begins from the same offsets."""
    done: list[str] = []
    calls = [0]

    async def flush() -> None:
        calls[0] += 1
        if calls[0] == 1:  # the first: the barrier the gate's group waits for
            raise RuntimeError("the producer failed")

    async def commit(offsets: dict[int, int]) -> None:
        done.append(f"commit {sorted(offsets.items())}")

    gate = Gate(lambda p, k, v: done.append(f"resolve-log {p} {k.decode()}"))

    class Logs:
        def flush(self) -> None:
            gate.send(0, b"released", b"[]")

    cp = Checkpoint(sinks=[], logs=[Logs()], flush_producer=flush, commit_offsets=commit, gate=gate)

    async def scenario() -> None:
        cp.store_offset(0, 4)
        with pytest.raises(RuntimeError, match="the producer failed"):
            await cp.commit({0})
        assert done == [] and gate.sent == 0 and cp.commits == 0
        with pytest.raises(RuntimeError, match="the producer failed"):
            await cp.commit({0})  # the group waits for the same failed barrier: still raised

    asyncio.run(scenario())
    assert done == [] and cp.next_offsets() == {0: 5}


def test_once_a_gate_s_barrier_failed_a_commit_raises_with_nothing_new_to_commit() -> None:
    """A worker that reads nothing new after a barrier failed (its shares partitions quiet,
    or none held) must stop too: the groups behind the barrier are never sent, so nothing it
    does later can be committed. Its commit raises, saying why, though it has no offset to
    commit (before, it returned as if all were well, and the worker read on)."""

    async def flush() -> None:
        raise RuntimeError("the producer failed")

    gate = Gate(lambda p, k, v: None)

    class Logs:
        def flush(self) -> None:
            gate.send(0, b"released", b"[]")

    cp = Checkpoint(sinks=[], logs=[Logs()], flush_producer=flush, gate=gate)

    async def scenario() -> None:
        cp.stage()  # a resolve agent's batch: its group waits for a barrier that fails
        await asyncio.sleep(0.01)
        assert gate.sent == 0 and isinstance(gate.failed, RuntimeError)
        for _ in range(2):
            with pytest.raises(RuntimeError, match="a producer flush that failed"):
                await cp.commit(set())
        assert cp.commits == 0

    asyncio.run(scenario())


def torn_process(partitions: int) -> tuple[LocalRun, random.Random, dict[str, Table]]:
    """A process holding every one of ``partitions``, resolve peers handed over in-process,
    whose kill the test makes by hand (the tables it writes, and its coin)."""
    run = LocalRun(
        HashBanks(),
        AlertPolicy.default(),
        Pseudonymizer(b"k"),
        partitions=partitions,
        local_peers=True,
        tear=Tear(),
    )
    return run, random.Random(0), {}


def reshare(post: str, parent: str, ts: int) -> ToRoute:
    """A reshare of ``parent`` (its post ``post``), for a resolve partition."""
    return ToRoute(ShareEvent(f"e-{post}", "share", ts, post, "u1", parent_post_id=parent))


def parent_and_reshare(n: int, a: int, b: int) -> tuple[str, str]:
    """A post P of resolve partition ``a`` (R's parent: R goes to ``a``) and a post R of
    partition ``b`` (R's reshares go to ``b``), of ``n`` partitions."""
    post_p = next(f"p{i}" for i in range(100) if partition_for(f"p{i}", n) == a)
    post_r = next(f"r{i}" for i in range(100) if partition_for(f"r{i}", n) == b)
    return post_p, post_r


def test_a_registration_handed_over_in_process_reaches_a_replacement_whose_log_lost_it() -> None:
    """Seed 12's tear, constructed. Resolve partition ``a`` holds reshare R (its parent P
    unknown), partition ``b`` holds S, a reshare of R. P's registration comes to ``a``: it
    releases R and hands R's registration to ``b`` in-process, which releases S. Both log
    it, in one group of the gate, to two changelog partitions; a kill keeps ``a``'s record
    and loses ``b``'s. ``a`` will not release R again, so the replacement of ``b`` holds S
    for ever unless the registration is somewhere durable: the copy on the resolve topic
    (skipped by the live process, read by the replacement). Before the copy, the
    replacement of ``b`` never learnt R's cluster: R's reshares waited there."""
    n, a, b = 2, 0, 1
    post_p, post_r = parent_and_reshare(n, a, b)
    run, rng, tables = torn_process(n)
    topology, checkpoint, topics = run.build(rng, tables=tables)
    topology.resolve_received(
        {
            a: [Envelope([reshare(post_r, post_p, 1_000)])],
            b: [Envelope([reshare("s1", post_r, 2_000)])],
        }
    )
    checkpoint.stage()
    run._acknowledged(checkpoint)  # both held, on the broker
    log = tables["resolve-log"]
    before = {k for k in log if k.startswith(b"%d:" % b)}
    topology.resolve_received({a: [Envelope([Registration(post_p, "b-1")])]})
    checkpoint.stage()
    assert topics["resolve"][b] == [] and topology.copies_pending  # not yet: it waits
    checkpoint.stage(begin=True)  # a checkpoint: the copy written, then the group sealed
    assert checkpoint.gate is not None
    checkpoint.gate.release()  # the group sent; the kill keeps a's record, loses b's
    lost = [k for k in log if k.startswith(b"%d:" % b) and k not in before]
    assert lost
    for key in lost:
        dict.pop(log, key)
    on_topic = [(mark, raw) for _, mark, raw in topics["resolve"][b]]
    # what is on b's topic the live process handed b already: skipped if it reads it
    assert topology.hand_over.resolve.received(b, list(on_topic)) == []
    # the replacement: every partition rebuilt from its log, the topic read again
    again, _, _ = run.build(rng, topics, tables, incarnation=1)
    again.resolve_received({b: [raw for _, raw in on_topic]})
    # a reshare of R that comes now is routed at once, not held: b knows R's cluster
    sent = [len(records) for records in topics["clusters"]]
    again.resolve_received({b: [Envelope([reshare("s2", post_r, 3_000)])]})
    routed = [raw for k in range(n) for _, _, raw in topics["clusters"][k][sent[k] :]]
    assert any(b"e-s2" in raw for raw in routed)


def test_a_reshare_held_and_released_in_one_checkpoint_is_not_copied_but_routed_again() -> None:
    """The other side of the copies: what the release of an event held since the checkpoint
    began made is not copied, as the replacement makes it again. As in the test above, but
    R is held, and released, after the last checkpoint began: its input is not committed
    (the next checkpoint would wait for both logs), so the kill that keeps ``a``'s record and
    loses ``b``'s is followed by the replacement reading that input again. ``a``'s log says
    R is released, and that P's cluster is known: R is routed at once and its registration
    handed to ``b`` again, which learns R's cluster; no copy was needed."""
    n, a, b = 2, 0, 1
    post_p, post_r = parent_and_reshare(n, a, b)
    run, rng, tables = torn_process(n)
    topology, checkpoint, topics = run.build(rng, tables=tables)
    run._acknowledged(checkpoint)  # a checkpoint began (nothing held yet)
    log = tables.get("resolve-log", {})
    before = {k for k in log if k.startswith(b"%d:" % b)}
    # the input since: R for a and S (a reshare of R) for b, both held, then P's
    # registration (R released, its registration handed to b in-process: S released)
    inputs = [
        {
            a: [Envelope([reshare(post_r, post_p, 1_000)])],
            b: [Envelope([reshare("s1", post_r, 2_000)])],
        },
        {a: [Envelope([Registration(post_p, "b-1")])]},
    ]
    for received in inputs:
        topology.resolve_received(received)
        checkpoint.stage()
    assert topology.resolvers[a].held == topology.resolvers[b].held == 0
    assert not topology.copies_pending
    checkpoint.stage(begin=True)
    assert topology.hand_over.resolve.copies == 0 and topics["resolve"][b] == []
    assert checkpoint.gate is not None
    checkpoint.gate.release()  # the group sent; the kill keeps a's records, loses b's
    log = tables["resolve-log"]
    lost = [k for k in log if k.startswith(b"%d:" % b) and k not in before]
    assert lost
    for key in lost:
        dict.pop(log, key)
    # the replacement: every partition rebuilt from its log, the uncommitted input read again
    again, checkpoint, _ = run.build(rng, topics, tables, incarnation=1)
    assert again.resolvers.get(b) is None or post_r not in again.resolvers[b].posts
    on_topic = len(topics["resolve"][b])
    for received in inputs:
        again.resolve_received(received)
        checkpoint.stage()
    # (after an assignment the hand-over goes through Kafka for a while: b reads it there)
    sent_b = [raw for _, _, raw in topics["resolve"][b][on_topic:]]
    if sent_b:
        again.resolve_received({b: sent_b})
    assert post_r in again.resolvers[b].posts and again.resolvers[b].held == 0
    sent = [len(records) for records in topics["clusters"]]
    again.resolve_received({b: [Envelope([reshare("s2", post_r, 3_000)])]})
    routed = [raw for k in range(n) for _, _, raw in topics["clusters"][k][sent[k] :]]
    assert any(b"e-s2" in raw for raw in routed)


def upload_inputs(
    n: int, a: int, lateness_ms: int
) -> tuple[str, list[dict[int, list[bytes | Envelope]]]]:
    """A post of resolve partition ``a`` (of ``n``), and the input of its unbanked upload
    ``e-up`` for the resolve partitions: the upload for ``a`` (the owner's input at its
    time too), then every input past it by more than the lateness."""
    post = next(f"p{i}" for i in range(100) if partition_for(f"p{i}", n) == a)
    t = 1_767_225_600_000
    # its PDQ under the quality cut (counted low quality; not a signal: the MD5 is)
    content = Content(md5="a" * 32, pdq="0f" * 32, pdq_quality=10)
    upload = ShareEvent("e-up", "upload", t, post, "u1", content=content)
    before = {p: (t, False) for p in range(n)}
    passed = {p: (t + lateness_ms + 60_000, False) for p in range(n)}
    return post, [
        {a: [Envelope([ToRoute(upload)], marks=before)], 0: [Envelope([], marks=before)]},
        {p: [Envelope([], marks=passed)] for p in range(n)},
    ]


def test_an_unbanked_upload_the_index_s_owner_lost_is_clustered_once_by_its_replacement() -> None:
    """Resolve partition ``a`` hands an unbanked upload to the index's owner (partition 0)
    in-process; a kill keeps ``a``'s records and loses the owner's. No copy of it goes to the
    resolve topic, and none is needed: ``a`` logs nothing of an upload it passes on, and the
    input that brought it is not committed before both logs are acknowledged, so the
    replacement reads it again, ``a`` passes it on again, and the new owner clusters it, once."""
    n, a = 2, 1
    run, rng, tables = torn_process(n)
    topology, checkpoint, topics = run.build(rng, tables=tables)
    _, inputs = upload_inputs(n, a, run.lateness_ms)  # (not committed)

    def clustered() -> int:
        return sum(raw.count(b"e-up") for k in range(n) for _, _, raw in topics["clusters"][k])

    topology.resolve_received(inputs[0])
    checkpoint.stage(begin=True)
    assert topology.resolvers[0].held == 1 and topology.hand_over.resolve.copies == 0
    assert checkpoint.gate is not None
    checkpoint.gate.release()  # the group sent; the kill loses the owner's record
    log = tables["resolve-log"]
    lost = [k for k in log if k.startswith(b"0:")]
    assert lost and not topics["resolve"][0]  # the upload is on no topic
    for key in lost:
        dict.pop(log, key)
    again, checkpoint, _ = run.build(rng, topics, tables, incarnation=1)
    assert clustered() == 0
    for p in range(n):  # what the process before it sent is read first
        records, topics["resolve"][p] = topics["resolve"][p], []
        if records:
            again.resolve_received({p: [raw for _, _, raw in records]})
        records, topics["clusters"][p] = topics["clusters"][p], []
        if records:
            again.detect(p, [raw for _, _, raw in records])
    for received in inputs:
        again.resolve_received(received)
        checkpoint.stage()
    assert clustered() == 1 and again.resolvers[0].held == 0


def test_an_upload_the_index_s_owner_held_across_a_checkpoint_has_its_registration_copied() -> None:
    """The owner's side: an unbanked upload held when a checkpoint began, clustered after it,
    has its post's registration (for its own partition, ``a``, here in-process) copied: the
    owner's log says it is clustered, and the input that brought it may be committed, so a
    replacement would neither cluster it again nor register its post. One held and clustered
    within a checkpoint is not copied (its input is read again: the test above)."""
    n, a = 2, 1
    for across in (True, False):
        run, rng, tables = torn_process(n)
        topology, checkpoint, topics = run.build(rng, tables=tables)
        post, (upload, passed) = upload_inputs(n, a, run.lateness_ms)
        topology.resolve_received(upload)
        assert topology.resolvers[0].held == 1
        if across:
            checkpoint.stage(begin=True)  # a checkpoint begins: the upload held before it
        topology.resolve_received(passed)
        assert topology.resolvers[0].held == 0 and post in topology.resolvers[a].posts
        assert topology.copies_pending == across
        checkpoint.stage(begin=True)
        copied = [raw for _, _, raw in topics["resolve"][a] if b'"r"' in raw]
        assert (len(copied) == 1 and post.encode() in copied[0]) if across else copied == []


def test_an_upload_the_owner_clustered_and_kept_in_its_log_is_applied_once_after_a_kill() -> None:
    """The index's owner clusters an unbanked upload held and clustered since the last
    checkpoint began; a kill keeps every log record (the owner's, which says the upload is
    clustered, included) and the input is read again. The owner holds the redelivered
    upload anew and clusters it a second time (into the same cluster: its content is in the
    index now), routing it again and registering its post again; the clusters partition
    applies it once (the event ids a cluster applied: ``rust/core/src/unbanked.rs``), so its
    post is counted once and the copy as a duplicate. (Dropping the redelivered upload at
    the owner would need its post's registration sent again all the same: see
    :mod:`streams.runtime.checkpoint`, what is copied.)"""
    n, a = 2, 1
    run, rng, tables = torn_process(n)
    topology, checkpoint, topics = run.build(rng, tables=tables)
    run._acknowledged(checkpoint)  # a checkpoint began (nothing held yet)
    post, inputs = upload_inputs(n, a, run.lateness_ms)  # the input since (not committed)
    routed: list[tuple[int, bytes]] = []

    def take_routed() -> None:
        for k in range(n):
            routed.extend((k, raw) for _, _, raw in topics["clusters"][k])
            topics["clusters"][k] = []

    for received in inputs:
        topology.resolve_received(received)
        checkpoint.stage()
    assert topology.resolvers[0].held == 0 and post in topology.resolvers[a].posts
    checkpoint.stage(begin=True)
    assert checkpoint.gate is not None
    checkpoint.gate.release()  # every record on the broker; the kill loses none of them
    take_routed()
    again, checkpoint, _ = run.build(rng, topics, tables, incarnation=1)
    for p in range(n):  # what the process before it sent is read first
        records, topics["resolve"][p] = topics["resolve"][p], []
        if records:
            again.resolve_received({p: [raw for _, _, raw in records]})
    for received in inputs:  # the input read again
        again.resolve_received(received)
        checkpoint.stage()
    take_routed()
    assert again.resolvers[0].held == 0 and post in again.resolvers[a].posts
    copies = [(k, raw) for k, raw in routed if b"e-up" in raw]
    assert len(copies) == 2 and copies[0][0] == copies[1][0]  # clustered twice, one cluster
    duplicates, unmatched = run.stats.duplicates, run.stats.unmatched_uploads
    low = run.stats.low_quality
    for k, raw in routed:
        again.detect(k, [raw])
    again.heartbeat(2e9)
    k = copies[0][0]
    unbanked = again.detector(k).detector.unbanked_store
    assert (len(unbanked), unbanked.posts) == (1, 1)
    assert run.stats.duplicates == duplicates + 1
    # counted once received new, when the cluster log holding it is written: the copy is not
    assert (run.stats.unmatched_uploads, run.stats.low_quality) == (unmatched, low)
    checkpoint.stage(begin=True)
    assert run.stats.unmatched_uploads == unmatched + 1
    # and its low quality with it, once (the resolve partitions, which read it twice, count
    # none: main counted it at each)
    assert run.stats.low_quality == low + 1


@functools.cache
def unkilled() -> tuple[tuple[int, int, int], tuple[int, dict[str, int], int, int]]:
    """The unbanked clusters, their posts and live events the clusters partitions hold at
    the end of :func:`torn_run`'s stream with no kill, and its uploads' counters."""
    sim = simulate(Scenario(seed=7, minutes=60, **IN_TIME))  # type: ignore[arg-type]
    run = local_run(sim, local_peers=True, local_resolve=True, local_clusters=True)
    return unbanked_of(run), uploads_counted(run)


def unbanked_unkilled() -> tuple[int, int, int]:
    """:func:`unkilled`'s unbanked clusters, posts and live events."""
    return unkilled()[0]


def uploads_counted(run: LocalRun) -> tuple[int, dict[str, int], int, int]:
    """A run's uploads that matched no bank, those matched, by bank, and of the unmatched
    those of low quality and those the allow-list took."""
    s = run.stats
    return s.unmatched_uploads, dict(s.matched), s.low_quality, s.allowed


def assert_uploads_counted_once(run: LocalRun) -> None:
    """A kill run's uploads are counted as the run's without kills, but for those whose
    cluster log write a kill took back: a clusters partition counts an upload received new
    (neither held nor applied to its cluster) once the log entry holding it is written, so
    one read again after a kill is not counted again (main counted each at its resolve
    partition, every time its input was read: 3,573-6,895 unmatched against 1,205), and
    one restored from the log and applied again is not either; only an upload whose
    written entry a kill took back (it is counted, then comes again) can be counted
    twice. (Exactly those, in the spread kills' seeds 1, 10 and 12: 26, 35 and 73.)
    ``low_quality`` and ``allowed`` (among the unmatched) are counted the same way, so within
    the same bound (a resolve partition counted them each time its input was read: 396
    against 85 low quality in spread seed 1)."""
    unmatched, matched, low, allowed = uploads_counted(run)
    unmatched_0, matched_0, low_0, allowed_0 = unkilled()[1]
    assert unmatched >= unmatched_0, (unmatched, unmatched_0)
    assert all(matched.get(bank, 0) >= n for bank, n in matched_0.items()), (matched, matched_0)
    extra = unmatched - unmatched_0 + sum(matched.values()) - sum(matched_0.values())
    assert extra <= run.lost_uploads, (extra, run.lost_uploads)
    # each excess one is an unmatched upload counted twice
    assert 0 <= low - low_0 <= unmatched - unmatched_0, (low, low_0, unmatched, unmatched_0)
    assert 0 <= allowed - allowed_0 <= unmatched - unmatched_0, (allowed, allowed_0)


def unbanked_of(run: LocalRun) -> tuple[int, int, int]:
    """The unbanked clusters, posts and live events of a run's clusters partitions."""
    assert run.topology is not None
    stores = [run.topology.detector(k).detector.unbanked_store for k in range(run.partitions)]
    return (
        sum(len(u) for u in stores),
        sum(u.posts for u in stores),
        sum(u.live_events for u in stores),
    )


def torn_run(
    seed: int,
    gated: bool = True,
    after_release: bool = False,
    copies: bool = True,
    restarts: int = 40,
    topics: bool = False,
    commit_internal: bool = False,
    handed_owed: bool = True,
) -> tuple[LocalRun, list[bytes], set[str]]:
    """An hour of the simulator's traffic (the integration test's stream: 255 takedown
    requests), every hop in process, a worker killed ``restarts`` times (placed kills: a
    few of them, see :class:`Tear`): each kill loses, of the
    tables' records written since everything was last acknowledged, what Kafka may lose
    (a random tail of each changelog partition: see :class:`Tear`); ``after_release``:
    the kills placed after releases of events held before a checkpoint began (see
    :class:`Tear`); ``copies``: off, nothing handed over in-process is copied; ``topics``:
    the internal topics' records not acknowledged torn too; ``commit_internal``: the
    internal topics' offsets committed with the shares' (see :class:`LocalRun`). With
    replay's alerts and takedown requests."""
    sim = simulate(Scenario(seed=7, minutes=60, **IN_TIME))  # type: ignore[arg-type]
    run = local_run(
        sim,
        seed=seed,
        restarts=restarts,
        local_peers=True,
        local_resolve=True,
        local_clusters=True,
        tear=Tear(after_release=after_release, topics=topics),
        gate_resolve_log=gated,
        copy_handed=copies,
        commit_internal=commit_internal,
        handed_owed=handed_owed,
    )
    pipe = Pipeline(
        bank_of(sim.bank), AlertPolicy.default(), pseudonymizer=Pseudonymizer(DEV_PSEUDONYM_KEY)
    )
    for line in sim.lines:
        pipe.feed(line)
    decisions = pipe.finish()
    alerts = sorted(a.to_json() for a in decisions.alerts if a.ts_ms <= pipe.max_ts_ms)
    return run, alerts, {a.action_id for a in decisions.actions}


@pytest.mark.parametrize(("seed", "tore"), [(1, True), (10, False), (12, True)])
def test_a_kill_between_a_checkpoint_s_writes_loses_no_takedown_request(
    seed: int, tore: bool
) -> None:
    """Flake B (the integration test's 242 of 255 takedown requests after a kill): with the
    resolve log's records held back until what they made downstream is acknowledged, the
    alerts and takedown requests are replay's, each once, no event late. The kills of seeds
    1 and 12 tore alerts and takedown requests off the broker too: the replacement made them
    again. Which seeds tear moves with where the kills fall: before the index's owner was
    bounded by its peers' input watermarks (:meth:`ResolvePartition._asked`), seeds 10 and 1
    tore and 12 did not; while the registrations handed a peer were copied ahead of what
    was owed it, all three tore (seed 10: 26 alerts and takedown requests, made again); since
    what is owed a peer handed them goes in-process too, seed 10 tears none again.
    Seed 12 lost one before what is handed over in-process was copied to the topic (see
    ``test_a_registration_handed_over_in_process_reaches_a_replacement_whose_log_lost_it``);
    only what a replacement would not make again is copied, and the resolve log's records
    are sealed at every batch when no copy waits."""
    run, alerts, actions = torn_run(seed, gated=True)
    assert len(actions) == 255 and bool(run.torn) == tore
    assert set(run.actions) == actions
    assert_replay_alert_records(list(run.alerts.values()), alerts)
    assert run.resent == [] and run.stats.late == 0
    assert unbanked_of(run) == unbanked_unkilled()  # no post counted twice, or lost
    assert_uploads_counted_once(run)  # nor an upload, read again after a kill


def test_without_the_gate_a_kill_loses_reshares_a_resolve_partition_released() -> None:
    """The order before: a resolve log saying reshares were released (their parent came)
    on the broker, the cluster log that got them not. The replacement holds them nowhere
    and their inputs are committed: their posts' takedown requests are never made. (Seed 3:
    253 of 255 since the index's owner is bounded by its peers' input watermarks; seed 0,
    239 of 255 before that, lost none after it. Seed 2, 236 of 255, lost none once a
    partition handed envelopes in-process kept the short way until acknowledged; seed 3,
    249 of 255 while every hand-over was copied, none once the copies were cut to what a
    replacement cannot make again, until the owner's bound moved the kills again: the
    writes their kills fall between are others. Seed 4, 254 of 255, once the registrations
    handed a peer were copied ahead of what is owed it; seed 3 lost none then. Seed 7,
    242 of 255, once the index owner's held uploads were logged as a checkpoint begins,
    not with each batch: seeds 0-5 lose none then, seed 6 one. Seed 4, 242 of 255, once
    what is owed a peer handed something went in-process too: seed 7 lost none then, nor
    seeds 0-3, 5, 7 and 10; 6, 8, 9 and 11 lost 1, 3, 33 and 3.)"""
    run, _, actions = torn_run(4, gated=False)
    assert set(run.actions) < actions


def kill_restarts() -> int:
    """The restarts of the placed kills' runs: ``VIRALWATCH_KILL_RESTARTS`` (40 by default;
    11-23 placed kills a run either way, at 120 some fall elsewhere)."""
    return int(os.environ.get("VIRALWATCH_KILL_RESTARTS", "40"))


def kill_seeds() -> list[int]:
    """The seeds of the placed kills' tests: ``VIRALWATCH_KILL_SEEDS`` (``0-19``, or
    ``0,2,6``), three by default (the README's 20 are run with ``0-19``)."""
    spec = os.environ.get("VIRALWATCH_KILL_SEEDS", "0,2,6")
    seeds: list[int] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        seeds += range(int(low), int(high or low) + 1)
    return seeds


@pytest.mark.parametrize("seed", kill_seeds())
def test_kills_after_releases_of_events_held_before_a_checkpoint_lose_no_takedown_request(
    seed: int,
) -> None:
    """The kills placed where the copies matter (``Tear(after_release=True)``: a release
    of an event held before a checkpoint began handed over in-process, a step since, no
    checkpoint committed; see :class:`Tear`): with the copies, replay's alerts and
    takedown requests, each once, no event late, and the unbanked clusters of a run without
    kills. ``VIRALWATCH_KILL_RESTARTS`` sets the restarts (:func:`kill_restarts`)."""
    run, alerts, actions = torn_run(seed, after_release=True, restarts=kill_restarts())
    assert run.kills > 0 and len(actions) == 255
    assert set(run.actions) == actions
    assert_replay_alert_records(list(run.alerts.values()), alerts)
    assert run.resent == []
    # replay's alerts can hide a loss: an event its clusters partition takes late changes
    # nothing when no rule reads it (see test_a_kill_keeps_no_event_handed_over_...)
    assert run.stats.late == 0
    # no post counted twice (or lost) in an unbanked cluster: the uploads and reshares read
    # again after each kill, clustered again by the index's owner, were applied once
    assert unbanked_of(run) == unbanked_unkilled()
    # nor an upload counted twice in unmatched_uploads (or matched) for being read again
    assert_uploads_counted_once(run)


def test_a_kill_keeps_a_prefix_of_each_topic_partition_s_records_not_acknowledged() -> None:
    """``Tear(topics=True)``: of the records sent to an internal topic since the last
    acknowledgement (or before the mark an acknowledgement names), a kill keeps a random
    prefix of each partition's, never shorter than what was read of them (a record read
    was on the broker); each partition on its own."""
    kept: set[tuple[int, int]] = set()
    for seed in range(40):
        tear = Tear(topics=True)
        topics: dict[str, list[list[tuple[int, int, bytes]]]] = {"resolve": [[], []]}

        def send(p: int, i: int, tear: Tear = tear, topics: Any = topics) -> None:
            topics["resolve"][p].append(record := (0, i, b"%d" % i))
            tear.sent_record("resolve", p, record)

        send(0, 0)
        tear.acknowledged()  # record 0 is on the broker
        send(0, 1)
        mark = tear.mark()
        send(0, 2)
        tear.acknowledged(mark)  # record 1 too (sent before the mark), not record 2
        for i in range(3, 8):
            send(0, i)
            send(1, 10 + i)
        topics["resolve"][0] = topics["resolve"][0][4:]  # 0-3 read: 2 and 3 stay
        tear.kill(random.Random(seed), topics)
        left = [m for _, m, _ in topics["resolve"][0]]
        assert left == list(range(4, 4 + len(left))), left  # a prefix of the unread
        other = [m for _, m, _ in topics["resolve"][1]]
        assert other == list(range(13, 13 + len(other))), other
        assert tear.torn_records == 8 - 4 - len(left) + 5 - len(other)
        assert tear.records == []  # a new process: nothing of its own sent yet
        kept.add((len(left), len(other)))
    assert {n for n, _ in kept} == set(range(5)) and len(kept) > 10  # all, none, and between


@pytest.mark.parametrize("seed", kill_seeds())
def test_kills_that_tear_the_internal_topics_lose_no_takedown_request(seed: int) -> None:
    """A kill loses the last records sent to the internal topics (``resolve``, ``clusters``)
    that were not acknowledged, too (``Tear(topics=True)``), and the records read from them
    since the last commit are read again (``commit_internal``: their offsets committed with
    the shares', not at each step, so what a step made of them can be torn as well): the
    placed kills still give replay's alerts and takedown requests, each once, no event late,
    the unbanked clusters of a run without kills. (Seeds 0-19 at 40 restarts, 52-227
    records torn a run. Of 20-59, seeds 30 and 49 had 3 and 1 events late until the
    registrations handed a peer were copied ahead of what is owed it:
    ``test_a_kill_keeps_no_registration_handed_to_a_peer_from_coming_late``.)"""
    run, alerts, actions = torn_run(
        seed, after_release=True, restarts=kill_restarts(), topics=True, commit_internal=True
    )
    assert run.tear is not None and run.tear.torn_records > 0
    assert run.kills > 0 and len(actions) == 255
    assert set(run.actions) == actions
    assert_replay_alert_records(list(run.alerts.values()), alerts)
    assert run.resent == [] and run.stats.late == 0
    assert unbanked_of(run) == unbanked_unkilled()
    assert_uploads_counted_once(run)


@pytest.mark.slow
def test_a_kill_keeps_no_event_handed_over_in_process_from_coming_late() -> None:
    """What a clusters partition is handed in-process is kept in its log alone; what is sent
    it later through its topic (the progress past those events), in another partition of
    the broker. A kill kept the topic's records and lost the log's: the restored partition
    read the progress again, its watermark passed the events, and the resolve side (its
    input read again) made them again twenty steps later: 22 events late (seed 7, 120
    restarts, 15 placed kills; seeds 1 and 3 one each; replay's alerts all the same). A
    partition handed envelopes in-process now takes the short way until the writes are
    acknowledged (:meth:`streams.runtime.hand_over.HandOver.acknowledged`)."""
    run, alerts, actions = torn_run(7, after_release=True, restarts=120)
    assert run.kills > 10 and set(run.actions) == actions
    assert_replay_alert_records(list(run.alerts.values()), alerts)
    assert run.stats.late == 0


@pytest.mark.parametrize(("seed", "topics"), [(30, False), (49, True)])
def test_a_kill_keeps_no_registration_handed_to_a_peer_from_coming_late(
    seed: int, topics: bool
) -> None:
    """What a resolve partition hands a peer in-process (registrations) is kept in the
    peer's log alone, gated behind what was sent before it; what it still owes the peer
    after its rounds (its progress, past those registrations) goes through the ``resolve``
    topic, another partition of the broker. A kill kept the topic's record and lost the
    log's (``commit_internal``: the internal topics read again from the last commit): the
    restored peer read the progress again, passed the reshares waiting for those
    registrations (their parents' partition said it had sent everything before them), and
    the registrations, made again from the input read again, released them late (seed 30:
    15 events late at the clusters stage; seed 49, topics torn too: 1). What is owed a peer
    handed anything in-process since the last acknowledgement is now handed it in-process
    too, in its log after what it was handed (the twentieth session copied the
    registrations to its topic partition ahead of what was owed it instead)."""
    run, alerts, actions = torn_run(seed, after_release=True, topics=topics, commit_internal=True)
    assert run.kills > 0 and set(run.actions) == actions
    assert_replay_alert_records(list(run.alerts.values()), alerts)
    assert run.stats.late == 0


@pytest.mark.parametrize(("seed", "topics", "late"), [(30, False, 15), (49, True, 1)])
def test_with_what_is_owed_a_peer_through_the_topic_a_kill_makes_events_late(
    seed: int, topics: bool, late: int
) -> None:
    """The counter-test: what is owed a peer after the rounds sent through the topic
    though the peer was handed registrations in-process (``handed_owed=False``, the order
    before, with no copy of them either): the kills of seeds 30 and 49 make events late
    (replay's alerts all the same: a late event no rule reads changes nothing)."""
    run, alerts, actions = torn_run(
        seed, after_release=True, topics=topics, commit_internal=True, handed_owed=False
    )
    assert run.kills > 0 and set(run.actions) == actions
    assert_replay_alert_records(list(run.alerts.values()), alerts)
    assert run.stats.late == late


def post_of(partition: int, n: int, prefix: str) -> str:
    """A post id of resolve partition ``partition`` of ``n`` (its reshares go there)."""
    return next(p for i in range(1000) if partition_for(p := f"{prefix}{i}", n) == partition)


@pytest.mark.parametrize("handed_owed", [True, False])
def test_what_a_peer_handed_something_is_owed_goes_in_process_until_acknowledged(
    handed_owed: bool,
) -> None:
    """The rule that keeps what is owed a peer from overtaking what it was handed: a resolve
    partition handed anything in-process since the writes were last acknowledged is handed
    what it is owed after the rounds too (in its log, after what it was handed), not sent
    it through the topic, where a kill could keep it and lose the log's record of the
    rest. It holds across checkpoints begun (a rebalance's flush begins one) until an
    acknowledgement, so no checkpoint drops it. Constructed: ``b`` is handed a registration
    (call 1); two checkpoints begin, none acknowledged; then a chain of releases, two
    rounds long (``c`` -> ``a`` -> ``c``), ends owing ``b`` a registration: handed it
    in-process (off, ``handed_owed=False``: on ``b``'s topic, the order before)."""
    n, a, b, c = 3, 0, 1, 2
    run = LocalRun(
        HashBanks(),
        AlertPolicy.default(),
        Pseudonymizer(b"k"),
        partitions=n,
        local_peers=True,
        local_rounds=2,
        tear=Tear(),
        handed_owed=handed_owed,
    )
    topology, checkpoint, topics = run.build(random.Random(0), tables={})
    hop = topology.hand_over.resolve
    p, r = post_of(a, n, "p"), post_of(b, n, "r")
    q, x, y, z = post_of(c, n, "q"), post_of(a, n, "x"), post_of(c, n, "y"), post_of(b, n, "z")
    topology.resolve_received(
        {
            a: [Envelope([reshare(r, p, 1_000), reshare(y, x, 3_000)])],
            b: [Envelope([reshare("s", r, 2_000), reshare("w", z, 5_000)])],
            c: [Envelope([reshare(x, q, 2_000), reshare(z, y, 4_000)])],
        }
    )
    topology.resolve_received({a: [Envelope([Registration(p, "b-1")])]})  # a -> b: R's
    assert (b in hop.handed_by_peers) == handed_owed and topics["resolve"][b] == []
    checkpoint.stage(begin=True)
    checkpoint.stage(begin=True)  # two checkpoints begun, none acknowledged
    topics["resolve"][b].clear()  # (copies of registrations released: not what is owed)
    topology.resolve_received({c: [Envelope([Registration(q, "b-2")])]})  # c -> a -> c -> b
    owed = [Envelope.unpack(raw) for _, _, raw in topics["resolve"][b]]
    if handed_owed:
        assert owed == [] and b in hop.handed_by_peers  # Z's registration handed b in-process
        assert topology.resolvers[b].held == 0  # S and W released
        run._acknowledged(checkpoint)
        assert not hop.handed_by_peers  # everything on the broker: the topic may be taken again
    else:
        assert len(owed) == 1 and len(owed[0].items) == 1  # Z's, through the topic
        assert topology.resolvers[b].held == 1  # W waits for it


def test_without_the_copies_kills_after_releases_lose_takedown_requests() -> None:
    """The placed kills tell the copies apart, as the spread ones no longer do: with nothing
    handed over in-process copied, some seed loses takedown requests (of seeds 0-19 nine do:
    0, 2, 5, 6, 7, 11, 12, 14 and 19, 249 to 254 of 255; with the copies none). The reshares
    of a post whose registration a kill kept at its sender and lost at its receiver wait
    there for ever (seed 12's tear, ``test_a_registration_handed_over_in_process_...``)."""
    lost = {}
    for seed in kill_seeds():  # up to the first that loses some
        run, _, actions = torn_run(seed, after_release=True, copies=False)
        assert run.kills > 0 and set(run.actions) <= actions
        lost[seed] = len(actions - set(run.actions))
        if lost[seed]:
            break
    assert any(lost.values()), lost


def test_the_state_log_writes_staged_entries_at_the_checkpoint_with_their_partition() -> None:
    sent: list[tuple[int, bytes, bytes | None]] = []
    log = StateLog(Table("demo-log"), compact_bytes=1 << 20, send=lambda *r: sent.append(r))
    log.append(0, b'{"p": {"a": "b-1"}}')
    log.append(1, b'{"p": {"c": "b-1"}}')
    assert dict(log.table) == {} and log.size == 0 and sent == []  # staged only
    log.flush()
    assert sorted((p, v) for p, _, v in sent) == [
        (0, b'{"p": {"a": "b-1"}}'),
        (1, b'{"p": {"c": "b-1"}}'),
    ]
    assert {k: v for _, k, v in sent} == dict(log.table)  # each key as the table holds it
    assert log.read(0) == [b'{"p": {"a": "b-1"}}']
    assert log.read(1) == [b'{"p": {"c": "b-1"}}']


def test_a_compaction_sends_its_snapshot_then_the_deletion_of_each_key_it_replaced() -> None:
    """In the partition's changelog, in that order: a crash between leaves both (folding
    is idempotent), never neither."""
    sent: list[tuple[int, bytes, bytes | None]] = []
    log = StateLog(Table("demo-log"), compact_bytes=1 << 20, send=lambda *r: sent.append(r))
    for i in range(3):
        log.append(2, b'{"h+": [%d]}' % i)
    log.flush()
    old = [k for _, k, _ in sent]
    del sent[:]
    log.compact(2, lambda: [b'{"p": {}}'])
    assert [(p, v) for p, _, v in sent] == [(2, b'{"p": {}}'), (2, None), (2, None), (2, None)]
    assert [k for _, k, _ in sent[1:]] == old and list(log.table) == [sent[0][1]]


def test_a_compaction_writes_what_was_staged_first() -> None:
    """The snapshot replaces every delta before it, staged ones too: written after it,
    a staged delta would be folded back over the newer snapshot."""
    log = StateLog(Table("demo-log"), compact_bytes=1 << 20)
    log.append(0, b'{"h+": [1]}')
    log.compact(0, lambda: [b'{"p": {}}'])
    log.flush()
    assert log.read(0) == [b'{"p": {}}']


def test_the_short_way_waits_out_the_grace_and_never_overtakes_the_long_one() -> None:
    now = [100.0]
    sent: list[tuple[int, Envelope | bytes]] = []
    hop = Hop("clusters", lambda p, env: sent.append((p, env)) or len(sent))
    hand = HandOver(resolve=hop, clusters=hop, grace_s=3.0, clock=lambda: now[0])
    hop.assign([0], others=False)  # (no other process sent it anything)
    hop.read_from(0)
    hand.assigned()
    first, second, third = (
        Envelope([]),
        Envelope([], progress={0: 1}),
        Envelope([], progress={0: 2}),
    )
    assert hand.route(hop, {0: first}) == {}  # within the grace: through Kafka
    now[0] += 3.0
    assert hand.route(hop, {0: second}) == {0: [first, second]}  # the unread one first
    assert hop.received(0, [(1, "copy of first"), (None, "another's")]) == ["another's"]
    hop.revoke(0)
    assert hand.route(hop, {0: third}) == {}  # not held any more
    assert len(sent) == 2


def test_a_partition_assigned_takes_no_short_way_until_it_read_what_was_sent_it_before() -> None:
    """What this process sent a partition through Kafka before it held it (or before it was
    revoked and assigned again) is on its topic, and the records it reads next are those:
    an envelope handed it in-process first would overtake them (the moves model: ingest's
    marks handed a moved resolve partition passed the events of its records still unread,
    which came late). Once it has read the last of them it takes the short way, what was
    sent it since going first; others' records (no mark) prove nothing."""
    sent: list[tuple[int, Envelope | bytes]] = []
    hop = Hop("resolve", lambda p, env: sent.append((p, env)) or len(sent))
    hand = HandOver(resolve=hop, clusters=hop, grace_s=0.0, clock=lambda: 1.0)
    events, progress = Envelope([], marks={0: (1, False)}), Envelope([], marks={0: (2, False)})
    assert hand.route(hop, {0: events, 1: events}) == {}  # not held: marks 1 and 2
    hop.assign([0, 1], others=False)  # (this process's sends alone)
    hop.read_from(0)
    hop.read_from(1)
    assert hand.route(hop, {0: progress}) == {}  # behind mark 1: through Kafka (mark 3)
    assert hop.received(0, [(None, "another's")]) == ["another's"]
    assert hand.route(hop, {0: progress}) == {}  # (mark 4)
    assert hop.received(0, [(1, "events")]) == ["events"]
    assert hand.route(hop, {0: events}) == {0: [progress, progress, events]}
    assert len(sent) == 4
    hop.revoke(1)
    hop.assign([1], others=False)  # assigned again: mark 2 is still unread
    hop.read_from(1)
    assert hand.route(hop, {1: events}) == {}  # (mark 5)
    assert hop.received(1, [(2, "events"), (5, "events")]) == ["events", "events"]
    assert hand.route(hop, {1: progress}) == {1: [progress]}


def test_a_partition_assigned_takes_no_short_way_until_it_read_past_what_others_sent_it() -> None:
    """What another process sent a partition before it was assigned here (its previous
    owner's ingest, any worker's) is on its topic, unknown to this process: an envelope
    handed it in-process would overtake it (the moves model with the partitions moving
    between processes: seeds 7, 17, 21, 26 had events late). Those records were on the
    broker before the assignment (a process flushes as its partitions are revoked), so a
    record this process sends the partition after it comes after them: the short way opens
    once the first such send is read, not on others' records nor on this process's older
    ones; each envelope sent through Kafka meanwhile, its short way open otherwise, is
    counted (``waited``: the rule's cost), and so is each record the partitions read till
    then, the one that ends it included (``read_behind``: how long it held)."""
    sent: list[tuple[int, Envelope | bytes]] = []
    hop = Hop("resolve", lambda p, env: sent.append((p, env)) or len(sent))
    hand = HandOver(resolve=hop, clusters=hop, grace_s=0.0, clock=lambda: 1.0)
    events, progress = Envelope([], marks={0: (1, False)}), Envelope([], marks={0: (2, False)})
    assert hand.route(hop, {0: events}) == {}  # not held: mark 1
    hop.assign([0, 1])
    hop.read_from(0)
    hop.read_from(1)
    assert hop.received(0, [(None, "another's"), (1, "events")]) == ["another's", "events"]
    assert hop.received(1, [(None, "another's")]) == ["another's"]
    assert hand.route(hop, {0: progress, 1: progress}) == {}  # marks 2 and 3: the ones to read
    assert hop.waited == 2
    assert hop.received(0, [(None, "another's")]) == ["another's"]
    assert hand.route(hop, {0: events}) == {}  # (mark 4)
    assert hop.received(0, [(2, "progress")]) == ["progress"]  # read past mark 2
    assert hand.route(hop, {0: progress, 1: progress}) == {0: [events, progress]}  # (1: mark 5)
    assert hop.received(1, [(3, "progress"), (5, "progress")]) == ["progress", "progress"]
    assert hand.route(hop, {1: events}) == {1: [events]}
    assert len(sent) == 5 and hop.waited == 4
    assert hop.read_behind == 4 + 3  # partition 0's four records, partition 1's three
    hop.assign([1], others=False)  # no other process: what this one sent is read
    assert hand.route(hop, {1: events}) == {1: [events]}


def test_the_long_way_never_overtakes_what_the_short_one_has_not_logged() -> None:
    """A partition handed an envelope in-process keeps it in its log alone until the writes
    are acknowledged: an envelope sent it through its topic meanwhile (the progress past
    those events) could reach the broker first and a kill keep it alone. So until then it
    takes the short way, though the way through Kafka was chosen (the in-process runner's
    coin); once acknowledged, the coin rules again."""
    open_ = [True]
    sent: list[tuple[int, Envelope | bytes]] = []
    hop = Hop("clusters", lambda p, env: sent.append((p, env)) or len(sent), lambda: open_[0])
    hand = HandOver(resolve=hop, clusters=hop, grace_s=0.0, clock=lambda: 1.0)
    hop.assign([0, 1], others=False)  # (no other process sent them anything)
    hop.read_from(0)
    hop.read_from(1)
    events, progress = Envelope([], progress={0: 1}), Envelope([], progress={0: 2})
    assert hand.route(hop, {0: events}) == {0: [events]}
    open_[0] = False  # the coin says through Kafka
    assert hand.route(hop, {0: progress, 1: progress}) == {0: [progress]}
    assert sent == [(1, progress)]  # partition 1 was handed nothing: through Kafka
    hand.acknowledged()
    assert hand.route(hop, {0: progress}) == {}
    assert sent == [(1, progress), (0, progress)]


def test_the_local_run_is_built_from_the_workers_own_objects(tmp_path: Path) -> None:
    """One wiring: the worker and the in-process runner hold the same kinds of owners, and
    the worker keeps no stage logic of its own (the stages never call back into it)."""
    worker = Worker(
        Settings(broker="kafka://127.0.0.1:9", partitions=2, data_dir=tmp_path),
        banks=HashBanks(),
        policy=AlertPolicy.default(),
    )
    run = LocalRun(HashBanks(), AlertPolicy.default(), Pseudonymizer(b"k"), partitions=2)
    topology, checkpoint, _ = run.build(random.Random(0))
    assert type(topology) is type(worker.topology) is Topology
    assert type(checkpoint) is type(worker.checkpoint) is Checkpoint
    assert type(topology.hand_over) is type(worker.hand_over) is HandOver
    for ours, theirs in (
        (topology.resolve_log, worker.resolve_logs),
        (topology.cluster_log, worker.cluster_logs),
    ):
        assert type(ours) is type(theirs) is StateLog
    assert worker.checkpoint.logs == [worker.resolve_logs, worker.cluster_logs]
    assert worker.checkpoint.sinks == [worker.topology.outputs]
    stage_logic = {"_hand_over", "_send_own", "_detect", "_resolve", "_to_clusters", "_to_resolve"}
    assert not stage_logic & set(dir(worker))


def test_a_worker_s_sends_and_copies_on_a_hop_keep_the_order_written(tmp_path: Path) -> None:
    """Every record a worker sends on the ``resolve`` topic goes straight into the Kafka
    client's batches (none through Faust's buffer), so a partition's records are in the
    order written. Before, the copies of in-process hand-overs went that way and
    the other sends through Faust's buffer, a task step later: a copy could overtake a
    tracked send written before it, and, read first, tell the hand-over that the send was
    read (the next envelope for that partition then went the short way without it)."""
    from test_faust_adapter import _Client

    async def scenario() -> None:
        worker = Worker(
            Settings(broker="kafka://127.0.0.1:9", partitions=2, data_dir=tmp_path),
            banks=HashBanks(),
            policy=AlertPolicy.default(),
        )
        producer = worker.app.counted_producer
        client = producer._producer = _Client(batch_bytes=1 << 16)
        try:
            hop = worker.hand_over.resolve
            hop.assign([0])  # held here, not read yet: a send is tracked until read
            hop.send(0, Envelope([], progress={1: 5}))
            hop.copy(0, Envelope([Registration("p1", "b-1")]))
            hop.send(0, Envelope([], progress={1: 6}))
            assert producer.counted.put_count == 0  # nothing waits in Faust's buffer
            client.drain()
            resolve = client.records(worker.settings.topic("resolve"), 0)
            on_topic = [Envelope.unpack(v) for _, v in resolve if v is not None]
            assert [(e.progress, len(e.items)) for e in on_topic] == [
                ({1: 5}, 0),
                ({}, 1),
                ({1: 6}, 0),
            ]
        finally:
            producer._producer = None

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("seed", "hops"), [(0, "none"), (1, "clusters"), (2, "resolve"), (3, "both")]
)
def test_a_process_replaced_mid_stream_rebuilds_from_its_logs_and_gives_the_replay_alerts(
    seed: int, hops: str
) -> None:
    """The production wiring through a restart, without a broker: three times, a new
    topology on the same topics and tables rebuilds every partition from its state log
    (compacted several times: small logs, and clusters evicted after 30 minutes of quiet
    so that half of a log soon is garbage), re-reads the input since the last commit, and
    neither loses nor repeats an alert (the alerts-sent table is the alerts topic)."""
    sim = simulate(Scenario(seed=7, minutes=120, **IN_TIME))  # type: ignore[arg-type]
    idle_ms = 30 * 60_000
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank), idle_ms=idle_ms)
    run = local_run(
        sim,
        seed=seed,
        restarts=3,
        idle_ms=idle_ms,
        log_compact_bytes=20_000,
        local_peers=hops == "both",
        local_resolve=hops in ("resolve", "both"),
        local_clusters=hops in ("clusters", "both"),
    )
    assert expected
    assert_replay_alert_records(list(run.alerts.values()), expected)
    assert run.resent == []
    assert run.early == {k for k, raw in run.alerts.items() if b'"provisional":true' in raw}
    assert run.stats.log_compactions > 0
    assert run.read > len(sim.lines)  # what came after the last commit was read again


def test_a_log_read_back_counts_its_garbage_once_the_stage_has_folded_it() -> None:
    """A log read back as found has an unknown count of items until its stage says how many
    it holds; an empty one has none. Then only new garbage makes it due."""
    from streams.runtime.state_log import StateLog

    class Table(dict[bytes, bytes]):
        name = "demo-log"

    table = Table()
    log = StateLog(table, compact_bytes=10)
    assert log.read(0) == [] and log.ledger(0).kept_items == 0
    log.append(0, b'[["e", 1], ["e", 2]]', items=2)
    log.flush()
    again = StateLog(table, compact_bytes=10)
    assert len(again.read(0)) == 1 and again.ledger(0).kept_items is None
    assert again.due(0, live=2)  # unknown: the bytes decide (20 written, nothing kept)
    again.restored(0, live=2)
    assert not again.due(0, live=2)  # all of it live
    again.append(0, b'[["e", 3], ["e", 4]]', items=2)
    again.flush()
    assert not again.due(0, live=3) and again.due(0, live=2)  # 2 of 4 garbage: due


@pytest.mark.parametrize("seed", range(6))
def test_partitions_that_change_owner_mid_stream_still_flow_to_the_end(seed: int) -> None:
    """A rebalance moves some partitions and leaves the others be (a worker joining): the
    moved ones are rebuilt from their logs, and the ones that stayed do not send their
    progress again unless it moves. Every clusters partition must still apply every event
    by the end of the stream (none left waiting for a mark that never comes again), and
    the alerts stay replay's."""
    sim = simulate(Scenario(seed=11, minutes=60, **IN_TIME))  # type: ignore[arg-type]
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank))
    run = local_run(
        sim,
        seed=seed,
        moves=3,
        log_compact_bytes=4096,
        log_compact_garbage=0.0,
        local_peers=seed % 2 == 0,
        local_resolve=seed % 3 == 0,
        local_clusters=seed % 3 != 1,
    )
    assert run.moved == 3 and run.topology is not None
    waiting = {k: d.pending for k, d in run.topology.detectors.items() if d.pending}
    assert not waiting, f"events never applied, per clusters partition: {waiting}"
    assert expected
    assert_replay_alert_records(list(run.alerts.values()), expected)
    assert run.resent == []


@pytest.fixture(scope="module")
def in_time_hour() -> tuple[Any, list[Any], int]:
    """An hour of simulated traffic, replay's alerts for it, and the reshares a run with
    no move still holds at its end (orphans whose parent never comes)."""
    sim = simulate(Scenario(seed=11, minutes=60, **IN_TIME))  # type: ignore[arg-type]
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank))
    still = local_run(sim)
    assert still.topology is not None
    return sim, expected, sum(r.held for r in still.topology.resolvers.values())


def moves_after(seed: int) -> int:
    """The batches after which the moves test opens a moved partition's short way: 3 in
    every fourth seed (3, 7, 11, ...), else 1."""
    return 3 if seed % 4 == 3 else 1


#: The moves test's seeds and batches: seeds 1-11 but 6 and 8, and those that had events
#: late before a partition assigned took no short way until it had read what this process
#: sent it through Kafka before (:meth:`streams.runtime.hand_over.Hop.assign`; seed 7 too);
#: and the pairs the test ran before that, with ``after`` the other way round. (Seeds 0, 6
#: and 8 never open the short way early since what is owed a peer handed something goes
#: in-process too: their topics are read to the end first.)
MOVES_SEEDS = [(s, moves_after(s)) for s in [1, 2, 3, 4, 5, 7, 9, 10, 11, 17, 21, 26, 41, 45]]
MOVES_SEEDS += [(s, moves_after(s)) for s in [71, 73]]
MOVES_SEEDS += [(1, 3), (3, 1), (5, 3)]


@pytest.mark.parametrize(("seed", "after"), MOVES_SEEDS)
def test_the_short_way_opened_before_a_moved_partition_read_its_previous_owner_s_records(
    in_time_hour: tuple[Any, list[Any], int], seed: int, after: int
) -> None:
    """The two-worker stall (once: 99,653 of 99,728 events, 39 reshares held) suspected the
    hand-over's grace: after a rebalance the new owner hands envelopes over in-process once
    its grace is over and the partition has read a batch, though records its previous owner
    sent may still be on the topic, unread. Here the short way to a moved partition opens
    after ``after`` batches, with the previous owner's records still queued behind them:
    no more reshares held at the end than with no move, every event applied, none late,
    the alerts replay's. (The grace was not the stall's cause; see the worker's flush on
    revoke.) The previous owner is this process: what it sent a partition before the move
    is on the topic, and a partition assigned takes no short way until it has read the last
    of it (:meth:`Hop.assign`). Without that, ingest's marks handed a moved resolve
    partition in-process passed the events of its records still unread, which came late
    (seeds 7, 17, 21, 26, 41, 45, 71, 73 of 0-79: 3, 1, 2, 7, 4, 1, 2, 2), the alerts
    replay's all the same: late events no rule read."""
    sim, expected, held_still = in_time_hour
    run = local_run(
        sim,
        seed=seed,
        moves=6,
        max_batch=20 if seed % 2 else 200,
        short_way_after=after,
        local_peers=seed % 2 == 0,
        local_resolve=True,
        local_clusters=True,
    )
    assert run.moved == 6 and run.topology is not None
    assert run.opened_early > 0, "the short way never opened early: nothing checked"
    held = sum(r.held for r in run.topology.resolvers.values())
    waiting = {k: d.pending for k, d in run.topology.detectors.items() if d.pending}
    assert held == held_still, f"{held} reshares held at the end, {held_still} with no move"
    assert not waiting, f"events never applied, per clusters partition: {waiting}"
    assert run.stats.late == 0
    assert expected
    assert_replay_alert_records(list(run.alerts.values()), expected)
    assert run.resent == []


#: The seeds of the moves between processes: of 0-79, those with events late when a moved
#: partition waited for nothing another process sent it (12, 3, 1, 2, 4, 1, 1, 199, 2, 2
#: late; seed 16's alerts not replay's, none late; seed 26, late before what is owed a peer
#: handed something went in-process too, none).
MOVES_BETWEEN_SEEDS = [4, 7, 17, 21, 41, 45, 56, 66, 71, 73]


def moved_between(sim: Any, seed: int, wait_for_others: bool) -> LocalRun:
    """The moves test's run (:data:`MOVES_SEEDS`' settings), the partitions moving between
    processes: what is on a moved partition's topic another process sent."""
    return local_run(
        sim,
        seed=seed,
        moves=6,
        max_batch=20 if seed % 2 else 200,
        short_way_after=moves_after(seed),
        local_peers=seed % 2 == 0,
        local_resolve=True,
        local_clusters=True,
        moves_between=True,
        wait_for_others=wait_for_others,
    )


@pytest.mark.parametrize("seed", MOVES_BETWEEN_SEEDS)
def test_a_partition_moved_between_processes_reads_what_the_others_sent_it_first(
    in_time_hour: tuple[Any, list[Any], int], seed: int
) -> None:
    """A partition that moves between workers has on its topic records other processes sent
    it (its previous owner's ingest, its peers'), which its new owner knows nothing of. Its
    short way opens once it has read past the first envelope the new owner sent it after the
    assignment (:meth:`Hop.assign`'s ``others``), so those go first, whenever the grace
    ends: no event late, the alerts replay's, every event applied."""
    sim, expected, held_still = in_time_hour
    run = moved_between(sim, seed, wait_for_others=True)
    assert run.moved == 6 and run.topology is not None
    assert run.opened_early > 0, "the short way never opened early: nothing checked"
    hops = run.topology.hand_over
    assert hops.resolve.waited + hops.clusters.waited > 0, "the rule never held one back"
    held = sum(r.held for r in run.topology.resolvers.values())
    waiting = {k: d.pending for k, d in run.topology.detectors.items() if d.pending}
    assert held == held_still, f"{held} reshares held at the end, {held_still} with no move"
    assert not waiting, f"events never applied, per clusters partition: {waiting}"
    assert run.stats.late == 0
    assert_replay_alert_records(list(run.alerts.values()), expected)
    assert run.resent == []


@pytest.mark.parametrize("seed", MOVES_BETWEEN_SEEDS)
def test_without_waiting_for_what_others_sent_a_moved_partition_events_come_late(
    in_time_hour: tuple[Any, list[Any], int], seed: int
) -> None:
    """The test above's counter-test: with a moved partition waiting only for what its new
    owner sent it (``wait_for_others`` off), the short way overtakes the others' records,
    and their events come late."""
    sim, _, _ = in_time_hour
    run = moved_between(sim, seed, wait_for_others=False)
    assert run.stats.late > 0


def test_a_replaced_process_resumes_each_input_partition_s_newest_event_time() -> None:
    """A process replaced reads the input again from the last commit only: without the
    newest event time committed with each offset (SourceClock.resume), the stream's end as
    it knows it stops short of the newest event read before that commit, and the events
    after that time wait in the clusters partitions for ever (as the 2-worker benchmark's
    backlog did, 98,849 of 99,728 events applied). This input, seed and schedule did so.
    (Its early firings are checked against the crossing in event time: see the test below.)"""
    sim = simulate(Scenario(seed=11, scale=0.3))
    bank = bank_of(sim.bank)
    expected, _ = replay_alerts(sim.lines, bank)
    in_time, _ = replay_alerts(sim.lines, bank, lateness_ms=EVERY_EVENT_IN_TIME_MS)
    run = moved_run(sim, seed=2, restarts=1)
    assert run.topology is not None
    waiting = {k: d.pending for k, d in run.topology.detectors.items() if d.pending}
    assert not waiting, f"events never applied, per clusters partition: {waiting}"
    assert_replay_alert_records(list(run.alerts.values()), expected, in_time)
    assert run.resent == []


#: longer than any delay the simulator plants (``very_late``: 20-25 minutes)
EVERY_EVENT_IN_TIME_MS = 30 * 60_000


def moved_run(sim: Any, seed: int, restarts: int) -> LocalRun:
    return local_run(
        sim,
        seed=seed,
        moves=4,
        restarts=restarts,
        max_batch=200,
        local_peers=True,
        local_resolve=True,
        local_clusters=True,
    )


@pytest.mark.parametrize("seed", [2, 5, 8])
def test_alerts_after_partitions_move_are_replay_s_or_those_of_replay_with_every_event_in_time(
    seed: int,
) -> None:
    """Seed 2 once looked like a bug: an early firing one share before replay's crossing
    (00:13:03.236 against .319). The share that makes the difference came 143 s after the
    stream had passed its time, later than the allowed 60 s: replay counted it late, when
    it read it, after evaluating the rule at .236. The moved partitions held the workers'
    watermark back, so they applied it in time and proved the crossing at .236, which is
    where replay with every event in time crosses. Nothing early is ever before that, and
    an alert sent at the watermark is one of the two replays' (seeds 5 and 8 sent some
    at the in-time crossing, by the watermark or early)."""
    sim = simulate(Scenario(seed=11, scale=0.3))
    bank = bank_of(sim.bank)
    expected, _ = replay_alerts(sim.lines, bank)
    in_time, _ = replay_alerts(sim.lines, bank, lateness_ms=EVERY_EVENT_IN_TIME_MS)
    assert in_time != expected  # the input has late events that change replay's alerts
    run = moved_run(sim, seed=seed, restarts=0)
    assert run.early, "no early firing: nothing checked"
    assert_replay_alert_records(list(run.alerts.values()), expected, in_time)


def test_a_replacement_rebuilds_its_clusters_partitions_at_once_loading_till_applied() -> None:
    """A replacement rebuilds every clusters partition it holds from its log as it is
    assigned (``Topology.rebuild``, what a worker does once its tables are recovered), not
    at the partition's first batch, which a quiet stream may not bring for hours (the views
    answered 404 for a live cluster meanwhile). A partition rebuilt holds its events read
    back unapplied until its watermark is known: it is *loading* (a view says 503) until
    then, and then holds every cluster the process before it held."""
    sim = simulate(Scenario(seed=7, minutes=20, **IN_TIME))  # type: ignore[arg-type]
    run = local_run(sim, seed=3)
    live = run.topology
    assert live is not None
    n, parts = run.partitions, range(run.partitions)
    assert live.loading(parts) == []
    tables = {
        "resolve-log": live.resolve_log.table,
        "cluster-log": live.cluster_log.table,
        "alerts-sent": live.outputs.alerts,
        "actions-sent": live.outputs.actions,
    }
    again, _, _ = run.build(random.Random(0), None, tables, incarnation=1)  # type: ignore[arg-type]
    assert again.loading(parts) == list(parts) and not again.detectors
    assert again.unbuilt(reversed(parts)) == list(reversed(parts))  # what a worker asks
    assert again.rebuild(parts) == list(parts)
    assert again.unbuilt(parts) == []
    logged = [k for k in parts if live.cluster_log.read(k)]
    assert logged and again.loading(parts) == logged
    assert all(again.detectors[k].detector.cluster_count == 0 for k in logged)  # unapplied
    assert again.rebuild(parts) == []  # once
    for k in parts:  # every resolve partition's progress, where the clusters partition stood
        wm = live.detectors[k].watermark.value
        again.detect(k, [Envelope([], progress=dict.fromkeys(range(n), wm))])
    assert again.loading(parts) == []
    for k in parts:
        assert again.detectors[k].detector.cluster_count == live.detectors[k].detector.cluster_count
        assert again.detectors[k].detector.cluster_count > 0
