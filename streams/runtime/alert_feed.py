"""The webhook's feed: the ``alerts`` topic, read in a consumer group of its own.

A webhook pages someone: an alert it never posts is a page that never came.
Fed in-process (as Alertmanager is), the alerts a worker had queued for a
slow or absent receiver died with it when it was killed: its replacement
knows they were *sent* (the ``alerts`` topic says so) and must not page them
twice, so nobody posted them. Fed from the topic instead, delivery is a
consumer like any other: the feed hands what it read to the sink, waits
until the sink has delivered each alert (or the receiver refused it for
good, a 4xx: counted and logged, as bad input is), and only then commits the
offsets. A worker killed in between leaves them uncommitted, and whichever
worker holds those partitions of the group next posts them: at least once,
with the alert's dedupe key in ``X-Viralwatch-Delivery`` for receivers that
must not act twice (and the sink's own memory of what it delivered, so a
worker posts an alert once).

While the receiver is down the feed pauses its partitions and keeps polling
(the group does not take it for dead), so the sink's queue holds at most one
batch and nothing is dropped. A group that has never committed starts
``start_back_s`` (15 minutes by default) back in time, not at the beginning
of a topic that keeps every alert ever sent: adding a webhook to a running
deployment pages what fires now, not last month's alerts. A record that is
not an alert (``Alert.from_json`` refuses it) is dead-lettered and skipped;
a tombstone is skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streams.alerts import Alert
from streams.events import Rejection
from streams.runtime.faust_adapter import on_assigned
from streams.settings import Settings
from streams.sinks.base import AlertSink
from streams.stages import DeadLetter, Source
from streams.stats import Stats

log = logging.getLogger("viralwatch.worker")

#: Where a group that has never committed starts, back from now.
START_BACK_S = 15 * 60.0
#: How often the feed looks whether the sink is done with a batch.
POLL_S = 0.05


class AlertFeed:
    """Reads ``alerts`` in group ``<app>-<name>`` and hands each alert to ``sink`` once, committing
    what the sink is done with (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        sink: AlertSink,
        stats: Stats,
        *,
        deadletter: Callable[[Iterable[DeadLetter]], None],
        name: str = "webhook",
        start_back_s: float = START_BACK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.stats = stats
        self.deadletter = deadletter
        self.group = f"{settings.app_id}-{name}"
        self.start_back_s = start_back_s
        self.clock = clock

    def decode(self, partition: int, offset: int, value: bytes | None) -> Alert | None:
        """The alert a record holds; ``None`` for a tombstone or a record that is not one
        (dead-lettered, counted)."""
        if value is None:
            return None
        try:
            return Alert.from_json(value)
        except ValueError as exc:
            self.stats.rejected["bad_alert_record"] += 1
            source = Source(self.settings.topic("alerts"), partition, offset)
            rejection = Rejection("bad_alert_record", str(exc), value)
            self.deadletter([DeadLetter(rejection, self.group, source)])
            return None

    async def run(self) -> None:
        """Deliver until cancelled (the worker stops it)."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import CommitFailedError

        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_s * 1000),
            **s.security.aiokafka_config(),
        )
        await consumer.start()
        try:
            listener = on_assigned(lambda tps: self._start_back(consumer, tps))
            consumer.subscribe([s.topic("alerts")], listener=listener)
            while True:
                got = await consumer.getmany(timeout_ms=500, max_records=500)
                if not got:
                    continue
                await self._deliver(consumer, got)
                try:
                    await consumer.commit()  # what was read, now that the sink is done with it
                except CommitFailedError as exc:  # a rebalance: the next owner posts them again
                    log.warning("%s: offsets not committed (%s)", self.group, exc)
        finally:
            await consumer.stop()

    async def _start_back(self, consumer: Any, assigned: Any) -> None:
        """Partitions the group has never committed start :attr:`start_back_s` back in time
        (the offsets of that time; the end if none is that late)."""
        fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
        if not fresh:
            return
        since_ms = int((self.clock() - self.start_back_s) * 1000)
        found = await consumer.offsets_for_times({tp: since_ms for tp in fresh})
        ends = await consumer.end_offsets(fresh)
        for tp in fresh:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])
        log.info(
            "%s: %d partition(s) never committed start %.0f s back",
            self.group,
            len(fresh),
            self.start_back_s,
        )

    async def _deliver(self, consumer: Any, got: Mapping[Any, list[Any]]) -> None:
        """Hand what was read to the sink and wait until it is done with it, polling with every
        partition paused meanwhile (a consumer that stops polling is taken for dead); what a
        poll returns anyway (a partition assigned meanwhile) goes to the sink too."""
        while True:
            alerts = [
                alert
                for tp, records in got.items()
                for r in records
                if (alert := self.decode(tp.partition, r.offset, r.value)) is not None
            ]
            self.sink.send(alerts)
            if not self.sink.backlog:
                break
            consumer.pause(*consumer.assignment())
            got = await consumer.getmany(timeout_ms=int(POLL_S * 1000))
        consumer.resume(*consumer.assignment())
