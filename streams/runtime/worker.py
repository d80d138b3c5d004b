"""The Faust application: topics, tables and agents around the pure stages. The only Faust importer.

Each agent is a few lines: take a batch, hand it to a stage of
:mod:`streams.stages`, persist what the stage says changed, send what it
produced. What decides (parsing, routing, event-time order, detection)
lives in the pure modules and is the same code ``replay`` runs.

Stages (Faust agents in consumer group ``Settings.app_id``; ``shares`` is
read by a batch consumer of its own, group ``<app_id>.shares``: see
:meth:`Worker._read_shares`)::

    shares     -> ingest   -> resolve     (envelopes, by post)
    resolve    -> resolve  -> clusters    (envelopes, by cluster), resolve (registrations)
    clusters   -> detect   -> alerts, actions (through their tables), deadletter

Tables (memory store, changelog topics are the durable copy):

- ``resolve-log``: per resolve partition and batch, what changed (posts
  registered, reshares held and released);
- ``cluster-log``: per clusters partition and batch, the routed events received;
- both cut back now and then to a snapshot of what a replacement still
  needs (:class:`streams.runtime.state_log.StateLog`: at once for the resolve
  log, a slice per batch for the cluster log);
- ``alerts-sent`` and ``actions-sent``: the outputs themselves. Their
  changelog topics *are* the ``alerts`` and ``actions`` topics, keyed by the
  alert's dedupe key and the action id: writing the table sends the record,
  and a restarted worker recovers the set of what was already sent from
  the output itself, so no alert id is sent twice even across a crash.

Delivery is at least once (the local broker has no transactions): Faust
commits an input offset only after the producer has flushed everything
sent and written for it, and every output is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.types import TP
from mode.supervisors import CrashingSupervisor

from streams.alerts import Alert, Pseudonymizer
from streams.banks import HashBanks, load_bank_csv
from streams.detector import ClusterSummary
from streams.policy import AlertPolicy
from streams.runtime.bank_follower import BankFollower
from streams.runtime.broker import (
    BrokerError,
    LocalBroker,
    ensure_topics,
    start_local_broker,
)
from streams.runtime.faust_adapter import (
    LOCAL_FETCH_WAIT_MS,
    App,
    ConsumerThread,
    backlogged,
    credentials,
    faust_broker_url,
    set_current_event,
)
from streams.runtime.state_log import StateLog
from streams.settings import TOPICS, Settings, deprecated_in
from streams.stages import (
    ClusterPartition,
    DeadLetter,
    Envelope,
    Ingest,
    ResolveBatch,
    ResolvePartition,
    UnreadSends,
    merge_resolved,
    partition_for,
    resolve_local_peers,
    split_envelope,
)
from streams.stats import Stats
from streams.watermarks import NO_TIME
from streams.web import Health, HttpServer, Router, add_probes, serve

log = logging.getLogger("viralwatch.worker")

#: How often a worker tells the next stage where event time stands when no data flows.
HEARTBEAT_S = 0.25
#: How often the ``shares`` reader commits its offsets (after a flush of what they became).
COMMIT_EVERY_S = 1.0
#: Rounds of registrations handed straight to peer partitions of this worker, per batch.
LOCAL_PEER_ROUNDS = 4
#: Seconds after an assignment before envelopes are handed over in-process again
#: (see :meth:`Worker._to_resolve`, :meth:`Worker._to_clusters`).
HAND_OVER_GRACE_S = 3.0
#: How far (event time) a shares partition may be read ahead of the slowest one with a backlog.
READ_SKEW_MS = 5_000
#: How often a worker publishes its counters on the ``stats`` topic.
STATS_EVERY_S = 1.0
#: How often long-lived objects are frozen out of garbage collection, and how
#: often they are all collected once (see :class:`GcPacer`).
GC_FREEZE_EVERY_S = 10.0
#: Allocations (net) before a young collection, and young collections before an older
#: one: CPython's 700 / 10 / 10 collect every few events here (see :class:`GcPacer`).
GC_THRESHOLDS = (50_000, 20, 10)
#: Rare: a full collection walks the whole state (0.8 s at 90,000 live clusters here) and
#: frees next to nothing (2,368 objects after 3 h and 54,000 evicted clusters):
#: ``python bench/bench_gc.py``.
GC_FULL_EVERY_S = 6 * 3600.0
#: Stage 2's log is compacted this much at a time, between batches (see :class:`StateLog`):
#: about 20 ms of reading here, so alerts do not wait out a whole compaction. (At most a
#: quarter of ``VIRALWATCH_LOG_COMPACT_BYTES``: a cut-back takes several batches.)
CUTBACK_SLICE_BYTES = 1024 * 1024
#: A worker whose stage raised ends within this time, even if its clean stop hangs (an
#: agent that crashed never acks the events it held, and Faust's stop waits for them).
CRASH_EXIT_S = 15.0
#: The exit status of a worker ended that way (``EX_SOFTWARE``: an internal error).
CRASH_EXIT_STATUS = 70


class GcPacer:
    """Keep Python's full garbage collections from pausing the worker every few seconds.

    A worker holds millions of long-lived objects (cascades, post maps,
    windows). CPython's oldest-generation collection walks all of them: at
    2,000 events/s that was a 0.2-0.3 s pause every 4 s, and every stage
    (and so every alert) waited it out. Every ``freeze_every_s`` the
    survivors are frozen (:func:`gc.freeze`): collections then walk only what
    is new. Cyclic garbage among frozen objects would never be freed, so
    every ``full_every_s`` they are unfrozen and collected once: one full
    pause in that period instead of hundreds. That pause grows with the state
    and there is next to no such garbage (evicted clusters are freed by
    reference counting), so the period is long (:data:`GC_FULL_EVERY_S`).

    >>> pacer = GcPacer(freeze_every_s=10, full_every_s=600, now=0.0)
    >>> pacer.tend(5.0), pacer.tend(10.0), pacer.tend(20.0), pacer.tend(600.0)
    (None, 'freeze', 'freeze', 'full')
    """

    def __init__(self, freeze_every_s: float, full_every_s: float, now: float) -> None:
        self.freeze_every_s = freeze_every_s
        self.full_every_s = full_every_s
        self._frozen_at = now
        self._full_at = now

    def tend(self, now: float, act: bool = False) -> str | None:
        """What is due at ``now`` (``"freeze"``, ``"full"`` or ``None``); done if ``act``."""
        if now - self._full_at >= self.full_every_s:
            self._full_at = self._frozen_at = now
            if act:
                gc.unfreeze()
                gc.collect()
                gc.freeze()
            return "full"
        if now - self._frozen_at >= self.freeze_every_s:
            self._frozen_at = now
            if act:
                gc.collect(1)  # the young garbage goes first, not into the frozen set
                gc.freeze()
            return "freeze"
        return None


# -- the application ----------------------------------------------------------------


class Worker:
    """One viralwatch worker: a Faust app built from the settings, with the stages' state."""

    def __init__(
        self,
        settings: Settings,
        *,
        banks: HashBanks,
        policy: AlertPolicy,
        shares_partitions: int | None = None,
        on_alerts: Callable[[list[Alert]], None] | None = None,
        health: Health | None = None,
    ) -> None:
        if settings.broker is None:
            raise ValueError("the worker needs a broker (start one with start_local_broker)")
        self.settings = s = settings
        self.banks = banks
        self.policy = policy
        self.stats = Stats()
        self.pseudonymizer = Pseudonymizer(s.pseudonym_key)
        self.partitions = s.partitions
        self.sources = shares_partitions or s.partitions
        self.on_alerts = on_alerts
        #: alerts already sent that this worker rebuilt with a partition it took over, and
        #: the clusters of partitions it lost (see :meth:`_detect`, :meth:`_revoke`)
        self.on_reannounce: Callable[[list[Alert]], None] | None = None
        self.on_release: Callable[[Callable[[str], bool]], None] | None = None
        self._restored: set[int] = set()
        #: what /readyz and /livez read: banks read, partitions assigned, state restored
        self.health = health if health is not None else Health()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.read = 0
        self.alerts_sent = 0
        self.actions_sent = 0
        self.deadlettered = 0
        self._delays: dict[str, list[float]] = defaultdict(list)
        #: shares partitions with records not read yet (see :meth:`_touch_backlogged`)
        self.backlogged: list[int] = []
        #: the ``shares`` reader (see :meth:`_read_shares`), and its offsets per partition
        self._shares: Any = None
        self._crash_timer: threading.Timer | None = None
        self._next_offsets: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self.sent: Counter[str] = Counter()
        self.ingest = Ingest(
            self.partitions, s.partition_idle_s, topic=s.topic("shares"), stats=self.stats
        )
        self.resolvers: dict[int, ResolvePartition] = {}
        #: the last input event of each resolve partition: its table writes go with it
        self._last_resolve_event: dict[int, Any] = {}
        #: when envelopes may be handed over in-process again (after a rebalance)
        self._hand_over_from = 0.0
        #: the key of the envelopes this worker sends its own stages, and what it sent
        #: the resolve partitions it holds through Kafka alone that they have not read
        #: yet, marked by timestamp in ms (see :meth:`_to_resolve`,
        #: :meth:`_resolve_local_peers`)
        self._own_key = f"from:{self.worker_id}".encode()
        self._unread_resolve = UnreadSends()
        self._last_send_ms = 0
        self.detectors: dict[int, ClusterPartition] = {}
        #: clusters partitions this worker holds, the last input event of each (its
        #: table writes go with it), and the envelopes this worker sent them through
        #: Kafka alone not read yet (see :meth:`_to_clusters`)
        self._held_clusters: set[int] = set()
        #: resolve partitions this worker holds (see :meth:`_to_resolve`)
        self._held_resolve: set[int] = set()
        self._resolve_stream: Any = None
        self._last_detect_event: dict[int, Any] = {}
        self._unread_clusters = UnreadSends()
        self.handed_over = 0
        self.bank_follower = BankFollower(
            s, self.banks, self.stats, self.health, deadletter=self._deadletter
        )
        self.app = self._build()

    # -- construction --

    def _build(self) -> App:
        s = self.settings
        (s.data_dir / s.app_id).mkdir(parents=True, exist_ok=True)
        conf: dict[str, Any] = {}
        if s.local_broker:
            ConsumerThread.fetch_max_wait_ms = LOCAL_FETCH_WAIT_MS
        creds = credentials(s)
        if creds is not None:
            conf["broker_credentials"] = creds
        # Faust's web server stays off: the worker's one HTTP port is streams.web's.
        conf["web_enabled"] = False
        app = App(
            s.app_id,
            broker=faust_broker_url(s.broker or ""),
            store="memory://",
            topic_partitions=s.partitions,
            topic_replication_factor=s.replicas,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=s.heartbeat_s,
            broker_request_timeout=max(90.0, s.session_timeout_s * 2),
            broker_max_poll_records=max(500, s.batch_size),
            consumer_auto_offset_reset="earliest",
            datadir=str(s.data_dir / s.app_id),
            processing_guarantee="at_least_once",
            table_standby_replicas=s.standby_replicas,
            **conf,
        )
        raw: dict[str, Any] = dict(
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        n = self.partitions
        self.t_resolve = app.topic(s.topic("resolve"), partitions=n, **raw)
        self.t_clusters = app.topic(s.topic("clusters"), partitions=n, **raw)
        self.t_alerts = app.topic(s.topic("alerts"), partitions=n, **raw)
        self.t_actions = app.topic(s.topic("actions"), partitions=n, **raw)
        self.t_deadletter = app.topic(s.topic("deadletter"), **raw)
        self.t_stats = app.topic(s.topic("stats"), **raw)
        table: dict[str, Any] = dict(key_type=bytes, value_type=bytes, partitions=n)
        logs = dict(table, extra_topic_configs=s.changelog_configs)
        self.resolve_log = app.Table("resolve-log", **logs)
        self.cluster_log = app.Table("cluster-log", **logs)
        compacted = self._count_compaction
        self.resolve_logs = StateLog(
            self.resolve_log, compact_bytes=s.log_compact_bytes, on_compacted=compacted
        )
        self.cluster_logs = StateLog(
            self.cluster_log,
            compact_bytes=s.log_compact_bytes,
            slice_bytes=CUTBACK_SLICE_BYTES,
            on_compacted=compacted,
        )
        self.sent_alerts = app.Table("alerts-sent", changelog_topic=self.t_alerts, **table)
        self.sent_actions = app.Table("actions-sent", changelog_topic=self.t_actions, **table)
        app.probe_end_offsets = s.local_broker

        take = (s.batch_size, s.batch_wait_s)
        # an agent that raises stops the worker (a supervisor restarts the process)
        crash: Any = CrashingSupervisor

        @app.task  # type: ignore[untyped-decorator]
        async def ingest() -> None:
            with self._fatal("ingest"):
                await self._read_shares()

        @app.agent(self.t_resolve, name="resolve", supervisor_strategy=crash)
        async def resolve(stream: Any) -> None:
            self._resolve_stream = stream
            with self._fatal("resolve"):
                async for events in stream.take_events(*take):
                    self._delay("resolve", (e.message.timestamp for e in events))
                    unread = self._unread_resolve
                    received = self._received(events, self._last_resolve_event, unread)
                    self._resolve_all(stream, received)

        @app.agent(self.t_clusters, name="detect", supervisor_strategy=crash)
        async def detect(stream: Any) -> None:
            with self._fatal("detect"):
                async for events in stream.take_events(*take):
                    self._delay("detect", (e.message.timestamp for e in events))
                    unread = self._unread_clusters
                    received = self._received(events, self._last_detect_event, unread)
                    for k, envelopes in received.items():
                        self._detect(stream, k, self._last_detect_event[k], envelopes)

        @app.timer(HEARTBEAT_S)  # type: ignore[untyped-decorator]
        async def heartbeat() -> None:
            self.health.beat()  # the loop turns: /livez
            self._heartbeat()

        @app.timer(STATS_EVERY_S)  # type: ignore[untyped-decorator]
        async def publish_stats() -> None:
            self.stats.log_bytes = self.resolve_logs.size + self.cluster_logs.size
            self.t_stats.send_soon(key=self.worker_id.encode(), value=self.summary_json())

        pacer = GcPacer(GC_FREEZE_EVERY_S, GC_FULL_EVERY_S, time.monotonic())
        gc.set_threshold(*GC_THRESHOLDS)

        @app.timer(GC_FREEZE_EVERY_S / 2)  # type: ignore[untyped-decorator]
        async def tend_gc() -> None:
            if pacer.tend(time.monotonic(), act=True) == "full":
                log.info("full garbage collection done")

        @app.task  # type: ignore[untyped-decorator]
        async def bank_updates() -> None:
            await self.bank_follower.run()

        @app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
            for condition in ("assigned", "restored"):  # a rebalance: not ready until it ends
                self.health.set(condition, False, "rebalancing")
            self._revoke(revoked)

        @app.on_partitions_assigned.connect  # type: ignore[arg-type]
        async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
            self._hand_over_from = time.monotonic() + HAND_OVER_GRACE_S
            clusters, resolve = self.settings.topic("clusters"), self.settings.topic("resolve")
            self._held_clusters |= {tp.partition for tp in assigned if tp.topic == clusters}
            self._held_resolve |= {tp.partition for tp in assigned if tp.topic == resolve}
            mine = sorted(
                f"{tp.topic}/{tp.partition}" for tp in assigned if tp.topic in (clusters, resolve)
            )
            self.health.set(
                "assigned", True, ", ".join(mine) or "none (more workers than partitions)"
            )
            self.health.set("restored", False, "restoring table state from the changelogs")

        @app.on_rebalance_complete.connect  # type: ignore[arg-type]
        async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
            # Faust sends this once the tables of the new assignment are recovered
            # (or needed no recovery); each stage's state is rebuilt from them.
            self.health.set("restored", True, "tables recovered")

        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def on_shutdown(sender: Any, **kwargs: Any) -> None:
            self.health.stopping()

        return app

    # -- stage 1a --

    async def _read_shares(self) -> None:
        """Stage 1a: read ``shares`` in batches, in its own consumer group.

        Not a Faust agent: Faust's per-record path (an event, a task and a
        stream step for each record) cost more CPU than everything the stages
        do with a record, and this stage keeps no table that needs Faust.
        Offsets are committed once the envelopes made from those records are
        flushed (at least once: a record read again changes nothing
        downstream). A crash ends the worker, as an agent's would.
        """
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import OffsetAndMetadata

        s = self.settings
        consumer = AIOKafkaConsumer(
            self.t_shares_name,
            bootstrap_servers=s.bootstrap,
            group_id=f"{s.app_id}.shares",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_s * 1000),
            fetch_max_wait_ms=LOCAL_FETCH_WAIT_MS if s.local_broker else 500,
            max_poll_records=s.batch_size,
            **s.security.aiokafka_config(),
        )
        await consumer.start()
        self._shares = consumer
        wait_ms = max(1, int(s.batch_wait_s * 1000))
        committed_at = time.monotonic()
        try:
            while True:
                got = await consumer.getmany(timeout_ms=wait_ms, max_records=s.batch_size)
                records = [
                    (tp.partition, r.offset, r.value, r.timestamp)
                    for tp, recs in got.items()
                    for r in recs
                ]
                if records:
                    self._ingest(records)
                self._pace_partitions(consumer)
                if self._next_offsets and time.monotonic() - committed_at >= COMMIT_EVERY_S:
                    committed_at = time.monotonic()
                    await self._commit_shares(consumer, OffsetAndMetadata)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading %s failed: stopping the worker", self.t_shares_name)
            os.kill(os.getpid(), signal.SIGTERM)
            raise
        finally:
            self._shares = None
            with contextlib.suppress(Exception):
                await consumer.stop()

    @contextlib.contextmanager
    def _fatal(self, stage: str) -> Iterator[None]:
        """A stage that raises ends the worker: a bug must not leave a process that looks
        alive and does nothing. The exception goes on to Faust, which stops the worker
        cleanly; if that stop hangs (a crashed agent never acks the events it held, and
        Faust waits for them), the process ends after :data:`CRASH_EXIT_S` all the same.
        Nothing is lost: offsets of what was not processed are not committed."""
        try:
            yield
        except Exception:
            log.critical(
                "stage %s failed: the worker stops (in %.0f s at most)", stage, CRASH_EXIT_S
            )
            if self._crash_timer is None:
                self._crash_timer = threading.Timer(
                    CRASH_EXIT_S, os._exit, args=(CRASH_EXIT_STATUS,)
                )
                self._crash_timer.daemon = True
                self._crash_timer.start()
            raise

    async def _commit_shares(self, consumer: Any, offset_type: Any) -> None:
        """Commit what was read, once what it became has been sent."""
        from aiokafka import TopicPartition

        owned = {tp.partition for tp in consumer.assignment()}
        offsets = {
            TopicPartition(self.t_shares_name, p): offset_type(o, "")
            for p, o in self._next_offsets.items()
            if p in owned and self._committed.get(p) != o
        }
        if not offsets:
            return
        await self.app.producer.flush()
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # a rebalance: the new owner reads them again (at least once)
            log.warning("commit of %s offsets failed: %s", self.t_shares_name, exc)
            return
        self._committed.update({tp.partition: om.offset for tp, om in offsets.items()})

    def _ingest(self, records: list[tuple[int, int, bytes | None, int | None]]) -> None:
        self.read += len(records)
        self._delay("ingest", ((r[3] or 0) / 1000 for r in records))
        for partition, offset, _, _ in records:
            self._next_offsets[partition] = offset + 1
        now = time.monotonic()
        self._touch_backlogged(now)
        batch = self.ingest.handle(((p, o, v) for p, o, v, _ in records), now)
        self._deadletter(batch.deadletters)
        self._to_resolve(batch.unpacked)

    def _heartbeat(self) -> None:
        consumer = self._shares
        if consumer is None:
            return
        now = time.monotonic()
        with contextlib.suppress(Exception):  # the consumer's assignment: best effort
            owned = {tp.partition for tp in consumer.assignment()}
            for p in set(self._next_offsets) - owned:  # revoked: its next owner goes on
                del self._next_offsets[p]
            self.ingest.clock.assign(owned, now)
            self._touch_backlogged(now)
        self._to_resolve(self.ingest.heartbeat(now))

    def _touch_backlogged(self, now: float) -> None:
        """A shares partition with records not read yet is busy, not idle.

        Idleness is measured in wall time since a partition's last record, so a
        worker working through a backlog (and reading one partition's chunk
        while the others wait in the fetcher) would call them idle and let the
        watermark run ahead of them: their events would come late and their
        reshares' parents "never". So a partition whose highwater is past what
        this worker has read counts as just seen. (The local broker's
        highwater can be one batch short: the last batch of a partition is
        then judged by wall time alone.)
        """
        consumer = self._shares
        if consumer is None:
            return
        with contextlib.suppress(Exception):  # internals of a running consumer: best effort
            clock = self.ingest.clock
            self.backlogged = backlogged(consumer, self._next_offsets)
            for p in self.backlogged:
                clock.observe(p, None, now)

    def _pace_partitions(self, consumer: Any) -> None:
        """Read a backlog evenly in event time: pause the partitions that are ahead.

        aiokafka hands out one partition's fetched records before the next's,
        so a worker catching up would read one partition far ahead in event
        time of the others; the watermark follows the slowest, so
        nothing downstream could be applied until the others caught up, and
        everything read early would wait in memory. Partitions more than
        :data:`READ_SKEW_MS` ahead of the slowest one with records unread
        are paused until it catches up (see :meth:`SourceClock.ahead`).
        """
        with contextlib.suppress(Exception):  # pausing is an optimisation: never stop reading
            ahead = self.ingest.clock.ahead(self.backlogged, READ_SKEW_MS)
            owned = {tp.partition: tp for tp in consumer.assignment()}
            paused = {tp.partition for tp in consumer.paused()}
            pause = [owned[p] for p in ahead - paused if p in owned]
            resume = [owned[p] for p in paused - ahead if p in owned]
            if pause:
                consumer.pause(*pause)
            if resume:
                consumer.resume(*resume)

    @property
    def t_shares_name(self) -> str:
        return self.settings.topic("shares")

    # -- stage 1b --

    def _received(
        self, events: list[Any], last_event: dict[int, Any], unread: UnreadSends
    ) -> dict[int, list[bytes]]:
        """A batch of an internal topic's records as each partition's envelopes, noting
        each partition's last event and what it has read of this worker's own sends (the
        copies of those handed over in-process while unread are left out)."""
        received: dict[int, list[bytes]] = {}
        mine = self._own_key
        for events_of_partition in _by_partition(events):
            last = events_of_partition[-1]
            p = last.message.partition
            last_event[p] = last
            records = (
                (round(m.timestamp * 1000) if m.key == mine else None, m.value)
                for m in (e.message for e in events_of_partition)
            )
            received[p] = unread.received(p, records)
        return received

    def _to_resolve(self, envelopes: dict[int, Envelope]) -> None:
        """Ingest's envelopes on to the resolve partitions; those this worker holds get them
        in-process (see :meth:`_hand_over`)."""
        stream = self._resolve_stream
        local = self._hand_over(
            envelopes,
            self.t_resolve,
            self._unread_resolve,
            self._held_resolve,
            ready=lambda r: (
                stream is not None and r in self.resolvers and r in self._last_resolve_event
            ),
        )
        if local:
            self._resolve_all(stream, local)

    def _resolve_all(self, stream: Any, received: Mapping[int, Sequence[bytes | Envelope]]) -> None:
        """Stage 1b for what each partition received; then on to peers and clusters."""
        batches: list[ResolveBatch] = []
        for r, envelopes in received.items():
            batches += self._resolve(stream, r, envelopes)
        made, delivered = self._resolve_local_peers(stream, batches)
        to_clusters, to_peers = merge_resolved(batches + made)
        unread, held = self._unread_resolve, self._held_resolve
        for r, envelope in to_peers.items():
            if r not in delivered:  # else handed over in-process (and logged there): no copy
                self._send_own(self.t_resolve, unread, held, r, envelope)
        self._to_clusters(stream, to_clusters)

    def _resolve(
        self, stream: Any, partition: int, envelopes: Sequence[bytes | Envelope]
    ) -> list[ResolveBatch]:
        """One partition's share of a batch; its changes are written to the resolve log."""
        out = []
        state = self.resolvers.get(partition)
        if state is None:
            state, restored = self._restore_resolver(partition)
            out.append(restored)
        out.append(state.handle(envelopes))
        self._resolved(stream, partition, out)
        return out

    def _resolved(self, stream: Any, partition: int, batches: list[ResolveBatch]) -> None:
        set_current_event(stream, self._last_resolve_event[partition])  # its changelog partition
        for batch in batches:
            if batch.delta is not None:
                self.resolve_logs.append(partition, batch.delta)
            self._deadletter(batch.deadletters)
        if self.resolve_logs.due(partition):
            self.resolve_logs.compact(partition, self.resolvers[partition].snapshot)

    def _resolve_local_peers(
        self, stream: Any, batches: list[ResolveBatch]
    ) -> tuple[list[ResolveBatch], set[int]]:
        """Registrations and progress straight to the peer partitions this worker holds
        (:func:`streams.stages.resolve_local_peers`): one Kafka hop less before most alerts.
        Returns the batches that made and the partitions that got all that was for them.

        What this worker sent a peer through Kafka alone and the peer has not
        read yet goes the short way first, so the short way never overtakes
        the long one. For :data:`HAND_OVER_GRACE_S` after partitions are
        assigned nothing goes the short way: what a partition's previous owner
        sent through Kafka should reach its peers first (that one is a matter
        of time, not proof).
        """
        if time.monotonic() < self._hand_over_from:
            return [], set()
        return resolve_local_peers(
            self.resolvers,
            batches,
            LOCAL_PEER_ROUNDS,
            on_batch=lambda r, batch: self._resolved(stream, r, [batch]),
            unread=self._unread_resolve.take(self.resolvers),
        )

    def _restore_resolver(self, partition: int) -> tuple[ResolvePartition, ResolveBatch]:
        s = self.settings
        state = ResolvePartition(
            partition,
            partitions=self.partitions,
            sources=self.sources,
            banks=self.banks,
            stats=self.stats,
            lateness_ms=s.lateness_ms,
            hold_ms=s.hold_ms,
            max_held=max(1, s.max_held // self.partitions),
        )
        deltas = self.resolve_logs.read(partition)
        self.resolvers[partition] = state
        restored = state.restore(deltas)
        if deltas:
            log.info("resolve partition %d restored from %d batches", partition, len(deltas))
        return state, restored

    # -- stage 2 --

    def _detector(self, partition: int) -> ClusterPartition:
        state = self.detectors.get(partition)
        if state is not None:
            return state
        state = ClusterPartition(
            partition,
            partitions=self.partitions,
            sources=self.partitions,
            policy=self.policy,
            stats=self.stats,
            pseudonymizer=self.pseudonymizer,
            idle_ms=self.settings.idle_ms,
        )
        logs = self.cluster_logs.read(partition)
        state.restore(logs)
        self.detectors[partition] = state
        if logs:
            self._restored.add(partition)
            log.info("clusters partition %d restored: %d events", partition, state.pending)
        return state

    def _to_clusters(self, stream: Any, envelopes: dict[int, Envelope]) -> None:
        """Resolve's envelopes on to the clusters partitions; those this worker holds get
        them in-process (see :meth:`_hand_over`)."""
        local = self._hand_over(
            envelopes,
            self.t_clusters,
            self._unread_clusters,
            self._held_clusters,
            ready=lambda k: k in self.detectors and k in self._last_detect_event,
        )
        for k, received in local.items():
            self._detect(stream, k, self._last_detect_event[k], received)

    def _hand_over(
        self,
        envelopes: dict[int, Envelope],
        topic: Any,
        unread: UnreadSends,
        held: set[int],
        ready: Callable[[int], bool],
    ) -> dict[int, list[bytes | Envelope]]:
        """Which envelopes the next stage gets in-process; the others go through ``topic``.

        Through Kafka that is one more hop on the way to every alert. An
        envelope for a partition this worker holds, and has read from since it
        was assigned (``ready``), is handed over instead, unpacked: the stage
        logs what it received as it does any batch, so nothing is lost if this
        worker dies, and no Kafka copy is sent. What this worker sent that
        partition through Kafka alone and it has not read yet goes first, so the
        short way never overtakes the long one (its copies are skipped when read,
        :meth:`UnreadSends.received`); for :data:`HAND_OVER_GRACE_S` after an
        assignment everything goes through Kafka, so that what a previous owner
        sent comes first.
        """
        short = time.monotonic() >= self._hand_over_from
        local: dict[int, list[bytes | Envelope]] = {}
        for k, envelope in envelopes.items():
            if short and ready(k):
                local[k] = [*unread.take([k]).get(k, []), envelope]
            else:
                self._send_own(topic, unread, held, k, envelope)
        self.handed_over += len(local)
        return local

    def _send_own(
        self, topic: Any, unread: UnreadSends, held: set[int], partition: int, envelope: Envelope
    ) -> None:
        """Send an envelope to this worker's stages through Kafka; note it until read if the
        partition is one this worker holds (the short way must not overtake it)."""
        stamp = self._send(topic, envelope.pack(), partition, key=self._own_key)
        if partition in held:
            unread.sent(partition, stamp, envelope)

    def _detect(
        self, stream: Any, partition: int, event: Any, envelopes: Sequence[bytes | Envelope]
    ) -> None:
        """Stage 2 for one partition: ``event`` is one of its input events (its table writes
        go to that partition's changelog)."""
        state = self._detector(partition)
        batch = state.handle(envelopes)
        set_current_event(stream, event)
        if batch.log is not None:
            self.cluster_logs.append(partition, batch.log)
        self.cluster_logs.cut_back(partition, state.compact)
        sent: list[Alert] = []
        again: list[Alert] = []  # made before, by whoever held this state: never sent twice
        for alert in batch.decisions.alerts:
            key = alert.dedupe_key.encode()
            if key not in self.sent_alerts:
                self.sent_alerts[key] = alert.to_json()
                sent.append(alert)
            else:
                again.append(alert)
        for action in batch.decisions.actions:
            key = action.action_id.encode()
            if key not in self.sent_actions:
                self.sent_actions[key] = action.to_json()
                self.actions_sent += 1
        self.alerts_sent += len(sent)
        for r, envelope in batch.forget.items():
            self._send(self.t_resolve, envelope, r)
        self._deadletter(DeadLetter(r, "detect") for r in batch.decisions.rejections)
        if partition in self._restored and state.watermark.value != NO_TIME:
            # the restored events up to the watermark are applied: what fires now is known
            self._restored.discard(partition)
            again += state.detector.firing_alerts(state.watermark.value)
        if again and self.on_reannounce is not None:
            self.on_reannounce(again)  # first: they were made before this batch's new ones
        if sent and self.on_alerts is not None:
            self.on_alerts(sent)

    # -- everything else --

    def _delay(self, stage: str, stamps_s: Iterable[float | None]) -> None:
        """Note how long the oldest record of a batch waited since it was produced
        (``stamps_s``: the records' Kafka timestamps, in seconds)."""
        stamp = min((t or 0.0) for t in stamps_s)
        if stamp > 0:
            self._delays[stage].append(time.time() - stamp)

    def _send(self, topic: Any, value: bytes, partition: int, key: bytes | None = None) -> int:
        """Send an envelope to a partition of an internal topic (in parts, if it is large).

        Returns its timestamp (epoch ms, increasing from one send to the next).
        """
        stamp = self._last_send_ms = max(round(time.time() * 1000), self._last_send_ms + 1)
        for part in split_envelope(value):
            self.sent[topic.get_topic_name()] += 1
            topic.send_soon(key=key, value=part, partition=partition, timestamp=stamp / 1000)
        return stamp

    def _count_compaction(self) -> None:
        self.stats.log_compactions += 1

    def _deadletter(self, letters: Iterable[DeadLetter]) -> None:
        for letter in letters:
            self.deadlettered += 1
            self.t_deadletter.send_soon(key=letter.key, value=letter.to_json())

    def _revoke(self, revoked: set[TP]) -> None:
        """Drop the in-memory state of partitions this worker no longer owns.

        It is rebuilt from the tables when a partition comes back (whoever
        processed it meanwhile wrote its changes there).
        """
        for tp in revoked:
            if tp.topic == self.settings.topic("resolve"):
                self.resolvers.pop(tp.partition, None)
                self._last_resolve_event.pop(tp.partition, None)
                self._unread_resolve.drop(tp.partition)
                self._held_resolve.discard(tp.partition)
                self.resolve_logs.forget(tp.partition)
            elif tp.topic == self.settings.topic("clusters"):
                self.detectors.pop(tp.partition, None)
                self._held_clusters.discard(tp.partition)
                self._last_detect_event.pop(tp.partition, None)
                self._unread_clusters.drop(tp.partition)
                self.cluster_logs.forget(tp.partition)
                self._restored.discard(tp.partition)
        lost = {tp.partition for tp in revoked if tp.topic == self.settings.topic("clusters")}
        if lost and self.on_release is not None:  # their new owner re-announces their alerts
            self.on_release(lambda cluster: partition_for(cluster, self.partitions) in lost)

    # -- reporting --

    def fastest(self, n: int) -> list[ClusterSummary]:
        rows = [row for d in self.detectors.values() for row in d.detector.fastest(n)]
        rows.sort(key=lambda r: (-r.velocity_5m, -r.size, r.cluster_id))
        return rows[:n]

    def summary(self) -> dict[str, Any]:
        applied = sum(d.applied for d in self.detectors.values())
        return {
            "worker": self.worker_id,
            "time": time.time(),
            "read": self.read,
            "applied": applied,
            "pending": sum(d.pending for d in self.detectors.values()),
            "held": sum(r.held for r in self.resolvers.values()),
            "clusters": sum(len(d.detector.clusters) for d in self.detectors.values()),
            "alerts": self.alerts_sent,
            "actions": self.actions_sent,
            "deadletters": self.deadlettered,
            "compactions": self.stats.log_compactions,
            "log_bytes": self.stats.log_bytes,
            "handed_over": self.handed_over,
            "watermarks": {str(k): d.watermark.value for k, d in sorted(self.detectors.items())},
            "partitions": {
                "shares": sorted(self.ingest.clock.assigned),
                "resolve": sorted(self.resolvers),
                "clusters": sorted(self.detectors),
            },
            "backlogged": self.backlogged,
            # the bundled broker's workarounds, in use or not (never on Apache Kafka)
            "workarounds": {
                "end_offset_probes": self.app.end_offset_probes,
                "short_fetch_wait": ConsumerThread.fetch_max_wait_ms is not None,
            },
            "delay_s": self._take_delays(),
            "sent": dict(self.sent),
            "stats": self.stats.summary(),
        }

    def _take_delays(self) -> dict[str, dict[str, float]]:
        """Per stage since the last call: mean and largest wait of the oldest record of a batch."""
        out = {
            stage: {"mean": round(sum(v) / len(v), 4), "max": round(max(v), 4), "batches": len(v)}
            for stage, v in self._delays.items()
            if v
        }
        self._delays.clear()
        return out

    def summary_json(self) -> bytes:
        return orjson.dumps(self.summary())

    def run(self) -> None:
        """Run until stopped (SIGTERM, SIGINT); raises if an agent crashed."""
        worker = faust.Worker(self.app, loglevel=self.settings.log_level, quiet=True)
        # Faust's terminal spinner sets the root logger to DEBUG so that every
        # debug record turns it: aiokafka then builds a log record for each
        # request and message, about 5% of the worker's CPU, to show nothing.
        worker.spinner = None
        worker.execute_from_commandline()


def _by_partition(events: list[Any]) -> Iterable[list[Any]]:
    """Events of a batch grouped by partition, each group in offset order."""
    groups: dict[int, list[Any]] = defaultdict(list)
    for e in events:
        groups[e.message.partition].append(e)
    return groups.values()


# -- starting a worker ----------------------------------------------------------------


def load_banks(paths: Iterable[Path]) -> HashBanks:
    """The banks from CSV files; ``OSError``/``ValueError`` name the file and line."""
    banks = HashBanks()
    for path in paths:
        for entry in load_bank_csv(path):
            banks.add(entry)
    return banks


def load_policy(path: Path | None) -> AlertPolicy:
    return AlertPolicy.from_toml(path) if path else AlertPolicy.default()


#: Why a worker with no broker configured does not start (a production worker must never
#: carry on with a toy broker that loses everything when it stops).
NO_BROKER = (
    "no broker configured: set VIRALWATCH_BROKER=kafka://HOST:PORT or give --broker; "
    "--embedded-broker (VIRALWATCH_EMBEDDED_BROKER=1) starts the bundled in-memory broker "
    "for a demo or a laptop, never for production"
)


def prepare(
    settings: Settings, say: Callable[[str], None]
) -> tuple[Settings, LocalBroker | None, int]:
    """Start the bundled broker if none is configured and that is allowed; create the topics.

    Returns the settings to run with, the broker started (or ``None``), and
    the partition count of the ``shares`` topic (which may predate us).
    """
    broker: LocalBroker | None = None
    if settings.broker is None:
        if not settings.embedded_broker:
            raise ValueError(NO_BROKER)
        broker = start_local_broker()
        settings = settings.with_(broker=broker.url, local_broker=True)
        say(
            f"no broker configured (--broker or VIRALWATCH_BROKER): started the bundled "
            f"Kafka-compatible broker at {broker.url} (memory storage, pid {broker.pid}); "
            "it stops with this command"
        )
    try:
        wanted = {settings.topic(name): settings.partitions for name in TOPICS}
        counts = ensure_topics(
            settings.bootstrap,
            wanted,
            replicas=settings.replicas,
            client_config=settings.security.kafka_python_config(),
        )
        for name in ("resolve", "clusters", "alerts", "actions"):
            topic = settings.topic(name)
            if counts[topic] != settings.partitions:
                raise ValueError(
                    f"topic {topic} has {counts[topic]} partitions, the settings say "
                    f"{settings.partitions}: use --partitions {counts[topic]} or a new prefix"
                )
    except BaseException:
        if broker is not None:
            broker.stop()
        raise
    return settings, broker, counts[settings.topic("shares")]


def run_worker(settings: Settings, say: Callable[[str], None] | None = None) -> None:
    """``viralwatch worker``: run one worker until it is stopped."""

    def echo(msg: str) -> None:
        print(f"viralwatch: {msg}", file=sys.stderr, flush=True)

    say = say or echo
    for line in deprecated_in():
        say(line)
    # The HTTP port first: /livez answers and /readyz says what is awaited while the
    # banks load and the state is restored, and a port already taken fails at once.
    health = Health()
    registry, http = serve_worker_http(settings, health)
    if http is not None:
        say(f"HTTP at {http.url()}: /metrics, /livez, /readyz")
    try:
        _run_worker(settings, say, health, registry, http is not None)
    finally:
        if http is not None:
            http.stop()


def serve_worker_http(settings: Settings, health: Health) -> tuple[Any, HttpServer | None]:
    """A worker's metrics registry, and its HTTP server if ``settings.http_port`` is set.

    Raises :class:`streams.web.ServeError` (a ``ValueError``) when it cannot listen.
    """
    from prometheus_client import CollectorRegistry

    from streams.metrics import add_metrics

    registry = CollectorRegistry()
    if settings.http_port is None:
        return registry, None
    router = Router()
    add_metrics(router, registry)
    add_probes(router, health)
    return registry, serve(router, settings.http_host, settings.http_port)


def _run_worker(
    settings: Settings, say: Callable[[str], None], health: Health, registry: Any, served: bool
) -> None:
    health.set("banks", False, "loading the bank files")
    banks = load_banks(settings.bank_files)
    health.set("banks", False, f"bank files read ({len(banks)} entries); the bank topic next")
    policy = load_policy(settings.policy_file)
    settings, broker, shares_partitions = prepare(settings, say)
    oncall = None
    try:
        if settings.uses_dev_key:
            say("VIRALWATCH_PSEUDONYM_KEY is not set; pseudonyms use a development key")
        worker = Worker(
            settings,
            banks=banks,
            policy=policy,
            shares_partitions=shares_partitions,
            health=health,
        )
        if served or settings.alertmanager_url or settings.webhook_url:
            from streams.sinks.oncall import OnCall
            from streams.sinks.webhook import secret_from_env

            oncall = OnCall(
                worker.stats,
                fastest=worker.fastest,
                alertmanager=settings.alertmanager_url,
                webhook=settings.webhook_url,
                webhook_secret=secret_from_env(),
                registry=registry,
            )
            worker.on_alerts = oncall.emit
            worker.on_reannounce = oncall.reannounce
            worker.on_release = oncall.release
        say(
            f"worker {worker.worker_id} of {settings.app_id}: broker {settings.broker}, "
            f"topics {settings.topic('*')}, {settings.partitions} partitions, "
            f"{len(banks)} bank entries, lateness {settings.lateness_ms} ms"
        )
        worker.run()
    finally:
        if oncall is not None:
            oncall.close()
        if broker is not None:
            broker.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m streams.runtime``: a worker configured from the environment only.

    Unusable settings (or no broker) end it at once with status 2 and one line saying why.
    """
    try:
        settings = Settings.from_env()
        run_worker(settings)
    except (ValueError, BrokerError, ConnectionError, FileNotFoundError) as exc:
        print(f"viralwatch: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
