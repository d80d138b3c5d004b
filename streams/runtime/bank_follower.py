"""The bank follower: every worker applies every bank update, from the start, as it comes.

Banks change while the pipeline runs: a hash is added when a person
submits it, withdrawn when it was wrong. Each worker reads every partition
of the ``bank`` topic (no consumer group: every worker matches against the
whole bank) from the beginning, marks the ``banks`` readiness check done
once it has read what there was when it started, and dead-letters an update
it cannot read, going on with the rest. A timed update (a reviewer's, see
:mod:`streams.review`) is also handed on (``on_update``: the topology's
clusters partitions apply it to the live clusters at its event time).

It reads the ``audit`` topic the same way, into an :class:`ActionLog` (what
a cluster's page shows); a record it cannot read is dead-lettered too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from streams.banks import BankUpdate, HashBanks
from streams.review import AUDIT_TOPIC, ActionLog, ReviewAction
from streams.runtime.faust_adapter import LOCAL_FETCH_WAIT_MS, force_metadata_update
from streams.settings import Settings
from streams.stages import DeadLetter, Source
from streams.stats import Stats
from streams.web import Health

log = logging.getLogger("viralwatch.worker")


class BankFollower:
    """Applies the ``bank`` topic to one worker's :class:`HashBanks`."""

    def __init__(
        self,
        settings: Settings,
        banks: HashBanks,
        stats: Stats,
        health: Health,
        *,
        deadletter: Callable[[Iterable[DeadLetter]], None],
        on_update: Callable[[BankUpdate], None] | None = None,
        actions: ActionLog | None = None,
    ) -> None:
        self.settings = settings
        self.banks = banks
        self.stats = stats
        self.health = health
        self.deadletter = deadletter
        self.on_update = on_update
        #: the reviewer actions read from the ``audit`` topic
        self.actions = actions if actions is not None else ActionLog()
        #: per bank, when its latest update was written to the ``bank`` topic (Unix seconds)
        self.updated: dict[str, float] = {}
        stats.bank_entries = banks.sizes()

    async def run(self) -> None:
        """Apply every bank update, from the start of the ``bank`` topic, as it comes.

        Each worker reads every partition (no consumer group): all of them
        match against the whole bank.
        """
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        topic, audit = s.topic("bank"), s.topic(AUDIT_TOPIC)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=LOCAL_FETCH_WAIT_MS * 4 if s.local_broker else 500,
            **s.security.aiokafka_config(),
        )
        await consumer.start()
        try:
            tps = []
            for name in (topic, audit):
                parts = consumer.partitions_for_topic(name)
                while not parts:
                    await asyncio.sleep(0.5)
                    await force_metadata_update(consumer)
                    parts = consumer.partitions_for_topic(name)
                tps += [TopicPartition(name, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)  # what there was at start: read before ready
            self.health.set("banks", False, "reading the bank topic")
            while True:
                got = await consumer.getmany(timeout_ms=1000)
                for tp, records in got.items():
                    for rec in records:
                        if tp.topic == audit:
                            self.record(tp.partition, rec.offset, rec.value)
                        else:
                            self.apply(tp.partition, rec.offset, rec.key, rec.value, rec.timestamp)
                if ends and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                    ends = {}
                    self.health.set("banks", True, f"{len(self.banks)} entries")
        finally:
            await consumer.stop()

    def apply(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None = None,
    ) -> None:
        try:
            update = BankUpdate.parse(key, value)
        except ValueError as exc:
            self._bad("bank", "bad_bank_update", str(exc), partition, offset, value)
            return
        changed = update.apply(self.banks)
        written = timestamp_ms / 1000 if timestamp_ms else time.time()
        bank = update.entry.bank
        self.updated[bank] = max(self.updated.get(bank, 0.0), written)
        self.stats.bank_entries = self.banks.sizes()
        self.stats.bank_updated_s = time.time()
        if self.on_update is not None:
            self.on_update(update)
        log.info(
            "bank update %s %s/%s %s...: %s",
            update.op,
            update.entry.bank,
            update.entry.signal_type,
            update.entry.signal[:8],
            "applied" if changed else "no change",
        )

    def record(self, partition: int, offset: int, value: bytes | None) -> None:
        """Keep a reviewer action read from the ``audit`` topic (dead-letter one it cannot read)."""
        try:
            action = ReviewAction.from_json(value)
        except ValueError as exc:
            self._bad(AUDIT_TOPIC, "bad_review_action", str(exc), partition, offset, value)
            return
        self.actions.add(action)

    def _bad(
        self, topic: str, reason: str, detail: str, partition: int, offset: int, raw: bytes | None
    ) -> None:
        from streams.events import Rejection

        self.stats.rejected[reason] += 1
        source = Source(self.settings.topic(topic), partition, offset)
        self.deadletter([DeadLetter(Rejection(reason, detail, raw or b""), topic, source)])


def read_banks(settings: Settings, timeout_s: float = 30.0) -> tuple[HashBanks, int]:
    """The banks as the ``bank`` topic holds them now (read from the start to its end, as a
    worker does at start), and how many records could not be read."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        **settings.security.kafka_python_config(),
    )
    banks, bad = HashBanks(), 0
    try:
        topic = settings.topic("bank")
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(topic)
        while not parts:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} does not exist")
            consumer.poll(timeout_ms=200)
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took over {timeout_s:g}s")
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    try:
                        BankUpdate.parse(rec.key, rec.value).apply(banks)
                    except ValueError:
                        bad += 1
    finally:
        consumer.close()
    return banks, bad
