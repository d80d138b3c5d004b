"""One index of unbanked content on Apache Kafka, whatever the workers: two workers, then one
killed and replaced.

Two workers (``python -m streams.runtime``) share the partitions. A leak no bank knows is
uploaded twice, as near-duplicates (20 bits apart), the two posts on resolve partitions of
different workers: one cluster (the index has one owner, resolve partition 0, see
``streams.emerging``). The worker holding the index is then killed (SIGKILL) and replaced;
a third near-duplicate, uploaded after the restart, joins the same cluster (the index came
back from the owner's state log). A reviewer banks the original: the cluster alerts
(retroaction) with all three uploads as its roots, and ``replay`` of the same events with
the bank update in its input gives the same alert ids.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventgen import Traffic, flip, pdq_hex
from kafka_helpers import (
    TopicReader,
    WorkerProcess,
    latest_stats,
    produce_in_order,
    worker_env,
    workers,
)
from test_streaming_integration import setup

from streams.alerts import Pseudonymizer
from streams.banks import HashBanks
from streams.emerging import unbanked_cluster_id
from streams.events import Content
from streams.pipeline import Pipeline
from streams.policy import AlertPolicy
from streams.review import ReviewAction, Signal
from streams.runtime.broker import RunningBroker
from streams.runtime.produce import publish_action
from streams.settings import Settings
from streams.stages import INDEX_PARTITION, partition_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEC = 1000
LATENESS_MS = 3_000


def recent(reader: TopicReader, n: int) -> list[dict[str, Any]] | None:
    """The latest reports of the ``n`` live workers, if exactly ``n`` reported lately."""
    reader.poll(0.1)
    live = [d for d in latest_stats(reader.records).values() if d["time"] > time.time() - 2.5]
    return live if len(live) == n else None


def wait_reports(
    broker: RunningBroker, s: Settings, n: int, done: Any, what: str, procs: list[WorkerProcess]
) -> list[dict[str, Any]]:
    """The live workers' latest reports, once ``done(reports)``."""
    reader = TopicReader(broker, s.topic("stats"))
    got: list[list[dict[str, Any]]] = []

    def why() -> str:
        keys = ("worker", "applied", "pending", "held", "clusters", "watermarks", "partitions")
        live = [d for d in latest_stats(reader.records).values() if d["time"] > time.time() - 5]
        reports = "\n".join(str({k: d.get(k) for k in keys}) for d in live)
        return reports + "\n---\n" + "\n---\n".join(p.log_tail() for p in procs)

    def ready(_: list[Any]) -> bool:
        live = recent(reader, n)
        if live is not None and done(live):
            got.append(live)
            return True
        return False

    try:
        reader.until(ready, 120, what, on_timeout=why)
    finally:
        reader.close()
    return got[-1]


def resolve_partitions(reports: list[dict[str, Any]]) -> list[set[int]]:
    return [set(d["partitions"]["resolve"]) for d in reports]


def split(reports: list[dict[str, Any]], partitions: int) -> bool:
    """Each worker holds resolve partitions, and together they hold them all, once each."""
    held = resolve_partitions(reports)
    return all(held) and sorted(p for h in held for p in h) == list(range(partitions))


def settled(reports: list[dict[str, Any]], last_ts: int, events: int, partitions: int) -> bool:
    """Every event applied, every clusters partition held (none moving between workers), its
    watermark at the end of the input."""
    applied = sum(d["applied"] for d in reports)
    held = sorted(int(k) for d in reports for k in d["watermarks"])
    marks = [t for d in reports for t in d["watermarks"].values()]
    return (
        applied >= events
        and held == list(range(partitions))
        and min(marks) >= last_ts - LATENESS_MS
    )


def post_on(partition: int, partitions: int, prefix: str) -> str:
    return next(
        f"{prefix}{i}"
        for i in range(10_000)
        if partition_for(f"{prefix}{i}", partitions) == partition
    )


def test_near_duplicates_through_two_workers_and_a_restart_are_one_cluster(
    broker: RunningBroker, tmp_path: Path
) -> None:
    rng = random.Random(5)
    original = pdq_hex(rng)
    bank_csv = tmp_path / "bank.csv"
    bank_csv.write_text(f"signal_type,signal,bank\npdq,{pdq_hex(rng)},other\n")
    s = setup(broker, tmp_path, bank_csv, lateness_ms=LATENESS_MS)
    n = s.partitions
    first = WorkerProcess(worker_env(s), tmp_path / "first.log")
    second = WorkerProcess(worker_env(s), tmp_path / "second.log")
    third = WorkerProcess(worker_env(s), tmp_path / "third.log")
    procs = [first, second, third]
    t = Traffic(rng)  # one builder: event and post ids never repeat
    inputs: list[bytes] = []  # everything, in the order the workers got it: replay's input
    leak = unbanked_cluster_id(Content(md5="a" * 32))

    with workers(first, second):
        reports = wait_reports(
            broker, s, 2, lambda r: split(r, n), "two workers, resolve partitions split", procs
        )
        by_pid = {int(d["worker"].rsplit(":", 1)[1]): d for d in reports}
        mine, theirs = (set(by_pid[p.pid]["partitions"]["resolve"]) for p in (first, second))
        # neither upload on the index's own partition: both are sent to it, one from
        # the worker holding it, one across workers
        a_part = min(mine - {INDEX_PARTITION} or mine)
        b_part = min(theirs - {INDEX_PARTITION} or theirs)
        now = int(time.time() * 1000)
        t0 = now - 120 * SEC
        a = t.upload(t0, pdq=original, md5="a" * 32, post=post_on(a_part, n, "leak-a"))
        t.burst(a, t0 + 2 * SEC, 20, 2 * SEC)
        b = t.upload(
            t0 + 50 * SEC, pdq=flip(original, 20, rng), md5="b" * 32, post=post_on(b_part, n, "b")
        )
        t.burst(b, t0 + 52 * SEC, 20, 2 * SEC)
        inputs += t.lines()
        # in event-time order on one shares partition: no line is late (see produce_in_order);
        # spread over the partitions, the original could be read after its edit's partition
        # had moved the watermark past it, and the edit would start the cluster
        produce_in_order(broker, s.topic("shares"), inputs)
        last = max(orjson.loads(x)["ts"] for x in inputs)
        reports = wait_reports(
            broker,
            s,
            2,
            lambda r: settled(r, last, len(inputs), n),
            "both uploads and their reshares applied",
            procs,
        )
        # one cluster on the two workers together (two, had each worker its own index)
        assert sum(d["clusters"] for d in reports) == 1, orjson.dumps(reports)
        assert sum(d["stats"]["emerging"] for d in reports) == 1
        # the span the pipeline benchmark times: the first record read, the last applied
        starts = [d["first_read_at"] for d in reports if d["first_read_at"] is not None]
        ends = [d["applied_at"] for d in reports if d["applied_at"] is not None]
        assert starts and ends and min(starts) <= max(ends) <= time.time(), orjson.dumps(reports)

        # the worker holding the index is killed, and replaced
        owner = first if INDEX_PARTITION in mine else second
        owner.kill()
        assert owner.proc is not None and owner.proc.returncode == -9
        with workers(third):
            wait_reports(
                broker, s, 2, lambda r: split(r, n), "the replacement holding partitions", procs
            )
            before = len(t.events)
            # after the watermark the first uploads left (their last share): not late
            t1 = max(int(time.time() * 1000) - 20 * SEC, last + 5 * SEC)
            c = t.upload(t1, pdq=flip(original, 12, rng), md5="c" * 32, post="again")
            t.burst(c, t1 + SEC, 30, 500)
            after = t.lines()[before:]
            produce_in_order(broker, s.topic("shares"), after)
            inputs += after
            last = max(orjson.loads(x)["ts"] for x in after)
            reports = wait_reports(
                broker,
                s,
                2,
                lambda r: settled(r, last, 0, n),
                "the re-upload after the restart applied",
                procs,
            )
            assert sum(d["clusters"] for d in reports) == 1, orjson.dumps(reports)

            # a reviewer banks the original: the one cluster alerts, three uploads its roots
            bank = ReviewAction(
                "bank",
                "alice",
                "confirmed NCII",
                int(time.time() * 1000),
                signals=(Signal("pdq", original),),
            )
            alerts = TopicReader(broker, s.topic("alerts"))
            publish_action(bank, s)
            inputs += [u.record()[1] for u in bank.bank_changes()]
            alerts.until(lambda r: len(r) >= 1, 60, "the retroactive alert")
            time.sleep(2.0)  # anything extra would show now
            alerts.poll(1.0)
            got = [orjson.loads(x.value) for x in alerts.records]
            alerts.close()

    assert {d["cluster_id"] for d in got} == {leak}
    assert max(d["cascade"]["roots"] for d in got) == 3, orjson.dumps(got)
    pipe = Pipeline(
        HashBanks(),
        AlertPolicy.default(),
        pseudonymizer=Pseudonymizer(s.pseudonym_key),
        lateness_ms=LATENESS_MS,
    )
    for line in inputs:
        pipe.feed(line)
    replayed = pipe.finish()
    assert pipe.router.emerging.joined == 2  # replay: the three uploads, one cluster
    # (replay's end flushes event time past the input, and the bank update: what that
    # resolves is not in the stream's)
    cut = max(pipe.max_ts_ms, bank.ts_ms)
    assert {(x.alert_id, x.status) for x in replayed.alerts if x.ts_ms <= cut} == {
        (d["alert_id"], d["status"]) for d in got
    }
