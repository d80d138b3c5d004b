"""The bank follower: every worker applies every bank update, from the start, as it comes.

Banks change while the pipeline runs: a hash is added when a person
submits it, withdrawn when it was wrong. Each worker reads every partition
of the ``bank`` topic (no consumer group: every worker matches against the
whole bank) from the beginning, marks the ``banks`` readiness check done
once it has read what there was when it started, and dead-letters an update
it cannot read, going on with the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from streams.banks import BankUpdate, HashBanks
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
    ) -> None:
        self.settings = settings
        self.banks = banks
        self.stats = stats
        self.health = health
        self.deadletter = deadletter

    async def run(self) -> None:
        """Apply every bank update, from the start of the ``bank`` topic, as it comes.

        Each worker reads every partition (no consumer group): all of them
        match against the whole bank.
        """
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        topic = s.topic("bank")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=LOCAL_FETCH_WAIT_MS * 4 if s.local_broker else 500,
            **s.security.aiokafka_config(),
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic)
            while not parts:
                await asyncio.sleep(0.5)
                await force_metadata_update(consumer)
                parts = consumer.partitions_for_topic(topic)
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)  # what there was at start: read before ready
            self.health.set("banks", False, "reading the bank topic")
            while True:
                got = await consumer.getmany(timeout_ms=1000)
                for tp, records in got.items():
                    for rec in records:
                        self.apply(tp.partition, rec.offset, rec.key, rec.value)
                if ends and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                    ends = {}
                    self.health.set("banks", True, f"{len(self.banks)} entries")
        finally:
            await consumer.stop()

    def apply(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        try:
            update = BankUpdate.parse(key, value)
        except ValueError as exc:
            from streams.events import Rejection

            self.stats.rejected["bad_bank_update"] += 1
            source = Source(self.settings.topic("bank"), partition, offset)
            self.deadletter(
                [DeadLetter(Rejection("bad_bank_update", str(exc), value or b""), "bank", source)]
            )
            return
        changed = update.apply(self.banks)
        log.info(
            "bank update %s %s/%s %s...: %s",
            update.op,
            update.entry.bank,
            update.entry.signal_type,
            update.entry.signal[:8],
            "applied" if changed else "no change",
        )
