"""A reviewer's action on Apache Kafka: its bank changes on the bank topic, then its record on
the audit topic, each readable back by what the workers run."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from kafka_helpers import TopicReader, create_topics, names, settings_for

from streams.banks import ALLOW_BANK, BankUpdate
from streams.review import ReviewAction, Signal
from streams.runtime.kafka_server import KafkaBroker
from streams.runtime.produce import publish_action

pytestmark = pytest.mark.integration


def test_a_false_positive_goes_to_the_allow_list_and_the_audit_topic(broker: KafkaBroker) -> None:
    prefix, app = names()
    settings = settings_for(broker, prefix, app)
    create_topics(settings)
    action = ReviewAction(
        "false_positive",
        reviewer="alice",
        reason="a landscape, not NCII",
        ts_ms=1_767_225_600_000,
        cluster_id="b-00112233445566ff",
        signals=(Signal("pdq", "ab" * 32), Signal("md5", "cd" * 16)),
        bank="stopncii",
    )
    publish_action(action, settings)
    publish_action(action, settings)  # twice: the same action, the same id
    bank, audit = (
        TopicReader(broker, settings.topic("bank")),
        TopicReader(broker, settings.topic("audit")),
    )
    try:
        updates = bank.until(lambda r: len(r) >= 4, 30, "four bank updates")
        audited = audit.until(lambda r: len(r) >= 2, 30, "two audit records")
    finally:
        bank.close()
        audit.close()
    parsed = [BankUpdate.parse(r.key, r.value) for r in updates]
    assert {(u.op, u.entry.bank, u.entry.signal_type, u.ts_ms) for u in parsed} == {
        ("add", ALLOW_BANK, "pdq", action.ts_ms),
        ("add", ALLOW_BANK, "md5", action.ts_ms),
    }
    back = [ReviewAction.from_json(r.value) for r in audited]
    assert back == [action, action] and {r.key for r in audited} == {b"b-00112233445566ff"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "bank", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("VIRALWATCH_")},
    )


def test_operators_add_withdraw_and_list_bank_entries_through_the_bank_topic(
    broker: KafkaBroker,
) -> None:
    prefix, app = names()
    settings = settings_for(broker, prefix, app)
    create_topics(settings)
    where = ["--broker", broker.url, "--topic-prefix", prefix]
    pdq, md5 = "ab" * 32, "CD" * 16
    added = cli("add", pdq, md5, "--bank", "partner", "--by", "ops", "--reason", "list 7", *where)
    assert added.returncode == 0, added.stderr
    action = ReviewAction.from_json(added.stdout.encode())
    assert (action.kind, action.bank, action.reviewer, len(action.signals)) == (
        "bank",
        "partner",
        "ops",
        2,
    )
    gone = cli("withdraw", md5, "--bank", "partner", "--by", "ops", "--reason", "wrong", *where)
    assert gone.returncode == 0, gone.stderr
    listed = cli("list", *where)
    assert listed.returncode == 0, listed.stderr
    rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["bank"], r["signal_type"], r["signal"]) for r in rows] == [("partner", "pdq", pdq)]
    assert "partner: 1" in listed.stderr
    audit = TopicReader(broker, settings.topic("audit"))
    try:
        records = audit.until(lambda r: len(r) >= 2, 30, "two audit records")
    finally:
        audit.close()
    kinds = [ReviewAction.from_json(r.value).kind for r in records]
    assert sorted(kinds) == ["bank", "withdraw"]
    bad = cli("add", "z" * 64, "--by", "ops", *where)
    assert bad.returncode != 0 and "hex" in bad.stderr and "Traceback" not in bad.stderr


def test_readiness_waits_for_the_bank_topic_and_the_bank_metrics_follow_it(
    broker: KafkaBroker,
) -> None:
    """A worker's bank follower on Apache Kafka: the ``banks`` readiness condition (what
    ``/readyz`` says) turns ready only once every update already on the bank topic is applied
    (300 entries, a record that is not an update dead-lettered on the way); the bank size and
    last-update metrics show them; the audit topic's actions are kept for the clusters' pages;
    an update written afterwards is applied as it comes."""
    import asyncio
    import time

    from prometheus_client import CollectorRegistry

    from streams.banks import BankEntry, HashBanks
    from streams.metrics import PipelineMetrics
    from streams.runtime.bank_follower import BankFollower
    from streams.runtime.produce import make_producer
    from streams.stages import DeadLetter
    from streams.stats import Stats
    from streams.web import Health

    prefix, app = names()
    settings = settings_for(broker, prefix, app)
    create_topics(settings)
    producer = make_producer(settings, linger_ms=5)
    for i in range(300):
        key, value = BankUpdate("add", BankEntry("partner", "pdq", f"{i:064x}")).record()
        producer.send(settings.topic("bank"), key=key, value=value)
        if i == 150:
            producer.send(settings.topic("bank"), key=b"junk", value=b"{not an update")
    producer.flush()
    dismissal = ReviewAction("dismiss", "bob", "a meme", 1_767_225_600_000, "u-00112233445566ff")
    publish_action(dismissal, settings)  # (the audit topic: what a cluster's page shows)

    banks, stats = HashBanks(), Stats()
    registry = CollectorRegistry()
    PipelineMetrics(registry, stats)
    seen_at_ready: list[int] = []

    class Watched(Health):
        def set(self, name: str, ok: bool, reason: str = "") -> None:
            if name == "banks" and ok and not seen_at_ready:
                seen_at_ready.append(len(banks))
            super().set(name, ok, reason)

    health = Watched(["banks"])
    dead: list[DeadLetter] = []
    follower = BankFollower(settings, banks, stats, health, deadletter=dead.extend)

    async def follow() -> None:
        task = asyncio.create_task(follower.run())
        try:
            deadline = time.monotonic() + 60
            while not health.ready()[0]:
                assert time.monotonic() < deadline, f"never ready: {health.ready()}"
                assert not task.done(), task
                await asyncio.sleep(0.05)
            assert seen_at_ready == [300]  # ready only with everything there was applied
            get = registry.get_sample_value
            assert get("viralwatch_bank_entries", {"bank": "partner"}) == 300
            updated = get("viralwatch_bank_last_update_timestamp_seconds", {})
            assert updated is not None and updated > time.time() - 120
            assert [d.rejection.reason for d in dead] == ["bad_bank_update"]
            assert follower.actions.for_cluster(dismissal.cluster_id or "") == [dismissal]
            key, value = BankUpdate("withdraw", BankEntry("partner", "pdq", f"{7:064x}")).record()
            await asyncio.to_thread(
                lambda: producer.send(settings.topic("bank"), key=key, value=value).get(30)
            )
            while get("viralwatch_bank_entries", {"bank": "partner"}) != 299:
                assert time.monotonic() < deadline + 30, "the withdrawal never came"
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(follow())
    finally:
        producer.close()
