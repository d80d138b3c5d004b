"""The worker: the Faust application around the topology. The only Faust importer.

The worker builds the runtime's parts and delegates to them; each concern
has one owner:

- :class:`~streams.runtime.topology.Topology`: the stages of the partitions
  this worker holds, wired once (the in-process runner of the tests,
  :class:`~streams.runtime.local_run.LocalRun`, builds the same one);
- :class:`~streams.runtime.hand_over.HandOver`: an envelope for a partition
  this worker holds goes to it in memory, never overtaking what went through Kafka;
- :class:`~streams.runtime.state_log.StateLog`: the state logs (snapshot then
  delete, compaction in slices);
- :class:`~streams.runtime.outputs.Outputs`: alerts and takedown requests
  once per id, dead letters, the on-call hooks;
- :class:`~streams.runtime.checkpoint.Checkpoint`: the order sinks → state
  logs → producer flush → offsets;
- :class:`~streams.runtime.shares_reader.SharesReader` and
  :class:`~streams.runtime.bank_follower.BankFollower`: the two inputs Faust does not read.

What stays here is Faust's: topics, tables, agents, timers, rebalance
signals, and the worker's report. What decides (parsing, routing,
event-time order, detection) lives in the pure modules and is the same code
``replay`` runs.

Stages (Faust agents in consumer group ``Settings.app_id``; ``shares`` is
read by a batch consumer of its own, group ``<app_id>.shares``)::

    shares     -> ingest   -> resolve     (envelopes, by post)
    resolve    -> resolve  -> clusters    (envelopes, by cluster), resolve (registrations)
    clusters   -> detect   -> alerts, actions (through their tables), deadletter

Tables (memory store, changelog topics are the durable copy):

- ``resolve-log``: per resolve partition and batch, what changed (posts
  registered, reshares held and released);
- ``cluster-log``: per clusters partition and batch, the routed events received;
- both cut back now and then to a snapshot of what a replacement still
  needs (at once for the resolve log, a slice per batch for the cluster log);
- ``alerts-sent`` and ``actions-sent``: the outputs themselves (their
  changelog topics *are* the ``alerts`` and ``actions`` topics).

Delivery is at least once (the local broker has no transactions): Faust
commits an input offset only after the producer has flushed everything
sent and written for it, the ``shares`` reader only after its checkpoint
did, and every output is idempotent.
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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import faust
import orjson
from faust.types import TP
from mode.supervisors import CrashingSupervisor

from streams.alerts import Alert, Pseudonymizer
from streams.bank_settings import load_banks
from streams.banks import BankUpdate, HashBanks
from streams.detector import ClusterSummary
from streams.policy import AlertPolicy, load_policy
from streams.review import ActionLog
from streams.runtime import stream_times
from streams.runtime.alert_feed import AlertFeed
from streams.runtime.bank_follower import BankFollower
from streams.runtime.broker import (
    TANSU_CLUSTER_ID,
    BrokerError,
    LocalBroker,
    ensure_topics,
    is_bundled_broker,
    start_local_broker,
    wait_reachable,
    watch_failure,
)
from streams.runtime.checkpoint import Checkpoint, Gate
from streams.runtime.faust_adapter import (
    LOCAL_FETCH_WAIT_MS,
    App,
    ConsumerThread,
    committed_offset,
    credentials,
    faust_broker_url,
    fetched_ages,
    seek_soon,
)
from streams.runtime.hand_over import HandOver, Hop
from streams.runtime.outputs import Outputs
from streams.runtime.read_offsets import ReadOffsets
from streams.runtime.shares_reader import SharesReader
from streams.runtime.stalls import StallWatch
from streams.runtime.state_log import StateLog
from streams.runtime.stream_times import KeptTimes
from streams.runtime.topology import StageSettings, Topology
from streams.runtime.views import TokenSource, Views, advertised_url, listed_partitions
from streams.settings import STATE_LOG_TABLES, TOPICS, Settings, deprecated_in
from streams.stages import (
    ClusterPartition,
    DeadLetter,
    Envelope,
    ResolvePartition,
    split_envelope,
)
from streams.stats import Stats
from streams.web import Health, HttpServer, Router, add_probes, serve
from streams.wire import LATEST_WIRE, WireVersion

log = logging.getLogger("viralwatch.worker")

#: How long a worker waits, when partitions are revoked, for what it sent before to reach
#: the broker (their next owner restores from those logs), before it lets the rebalance go on.
REVOKE_FLUSH_S = 5.0

#: How often a worker tells the next stage where event time stands when no data flows.
HEARTBEAT_S = 0.25
#: Rounds of registrations handed straight to peer partitions of this worker, per batch.
LOCAL_PEER_ROUNDS = 4
#: Seconds after an assignment before envelopes are handed over in-process again
#: (see :mod:`streams.runtime.hand_over`).
HAND_OVER_GRACE_S = 3.0
#: How often a worker publishes its counters on the ``stats`` topic.
STATS_EVERY_S = 1.0
#: How often long-lived objects are frozen out of garbage collection, and how
#: often they are all collected once (see :class:`GcPacer`).
GC_FREEZE_EVERY_S = 10.0
#: Allocations (net) before a young collection, and young collections before an older
#: one: CPython's 700 / 10 / 10 collect every few events here (see :class:`GcPacer`).
GC_THRESHOLDS = (50_000, 20, 10)
#: Bytes of records the producer gathers for one partition into one batch. aiokafka's
#: default (16 KiB) holds one state-log part at most, and a partition has one batch in
#: flight at a time: a batch's log parts went out one round trip each, and the alerts
#: written after them waited their turn in Faust's producer buffer (280 ms at 2,000
#: events/s here, measured between the alert's table write and its send). Under the
#: broker's default ``message.max.bytes`` (1 MiB), which a batch must fit.
PRODUCER_BATCH_BYTES = 512 * 1024
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
    """One viralwatch worker: a Faust app around one :class:`Topology`.

    The worker builds and delegates; each concern has its owner: the
    stages and the hops between them (:class:`Topology`, with its
    :class:`HandOver`), the state logs (:class:`StateLog`), the outputs
    (:class:`Outputs`), the order of commits (:class:`Checkpoint`), the
    ``shares`` reader (:class:`SharesReader`) and the bank follower
    (:class:`BankFollower`). What stays here is Faust: topics, tables,
    agents, timers, rebalance signals, and the worker's report.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        banks: HashBanks,
        policy: AlertPolicy,
        shares_partitions: int | None = None,
        on_alerts: Callable[[list[Alert]], None] | None = None,
        health: Health | None = None,
        views: Views | None = None,
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
        #: what /readyz and /livez read: banks read, partitions assigned, state restored
        self.health = health if health is not None else Health()
        #: the cascade views on the HTTP port: they read the state through this loop
        self.views = views
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._delays: dict[str, list[float]] = defaultdict(list)
        self._crash_timer: threading.Timer | None = None
        self.sent: Counter[str] = Counter()
        #: bytes of those records, by topic (what crosses between workers, per event)
        self.sent_bytes: Counter[str] = Counter()
        self._last_send_ms = 0
        #: the key of the envelopes this worker sends its own stages (see HandOver)
        self._own_key = f"from:{self.worker_id}".encode()
        #: where each internal partition's next batch should start (records the Kafka
        #: client skipped are said, not waited for in silence)
        self.read_offsets = ReadOffsets()
        #: partitions to seek back (see :meth:`_seek_back`)
        self._seeks: list[tuple[Any, int]] = []
        #: clusters partitions whose watermark stands still while events wait, and internal
        #: partitions whose records wait on the broker unread (see stalls)
        self.stalls = StallWatch()
        self.unread = StallWatch()
        #: rebalance signals seen: a rebuild of the partitions assigned stops at the next
        self._rebalances = 0
        self.app = self._build()
        self.on_alerts = on_alerts
        if views is not None:
            self.outputs.on_written = views.note

    # -- what others set and read --

    @property
    def on_alerts(self) -> Callable[[list[Alert]], None] | None:
        """New alerts, once each (the on-call sinks)."""
        return self.outputs.on_alerts

    @on_alerts.setter
    def on_alerts(self, hook: Callable[[list[Alert]], None] | None) -> None:
        self.outputs.on_alerts = hook

    @property
    def on_reannounce(self) -> Callable[[list[Alert]], None] | None:
        """Alerts already sent that this worker rebuilt with a partition it took over."""
        return self.outputs.on_reannounce

    @on_reannounce.setter
    def on_reannounce(self, hook: Callable[[list[Alert]], None] | None) -> None:
        self.outputs.on_reannounce = hook

    @property
    def on_release(self) -> Callable[[Callable[[str], bool]], None] | None:
        """The clusters of partitions this worker lost (their new owner re-announces them)."""
        return self.outputs.on_release

    @on_release.setter
    def on_release(self, hook: Callable[[Callable[[str], bool]], None] | None) -> None:
        self.outputs.on_release = hook

    @property
    def resolvers(self) -> dict[int, ResolvePartition]:
        return self.topology.resolvers

    @property
    def detectors(self) -> dict[int, ClusterPartition]:
        return self.topology.detectors

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
        # Faust's web server stays off: the worker's one HTTP port is streams.web's. Its URL
        # goes round the group with the assignment: a view is forwarded to the owner.
        conf["web_enabled"] = False
        if self.views is not None and self.views.url:
            conf["canonical_url"] = self.views.url
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
            producer_linger=s.linger_s,
            producer_max_batch_size=PRODUCER_BATCH_BYTES,
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
        logs = dict(table, extra_topic_configs=s.state_log_configs)
        resolve_table, cluster_table = STATE_LOG_TABLES
        self.resolve_log = app.Table(resolve_table, **logs)
        self.cluster_log = app.Table(cluster_table, **logs)
        compacted = self._count_compaction
        # the resolve log's records go once what they made downstream is on the broker
        self.resolve_gate = Gate(_writer(app, self.resolve_log.changelog_topic.get_topic_name()))
        self.resolve_logs = StateLog(
            self.resolve_log.data,
            name=resolve_table,
            send=self.resolve_gate.send,
            compact_bytes=s.log_compact_bytes,
            compact_garbage=s.log_compact_garbage,
            on_compacted=compacted,
            position=lambda p: self.read_offsets.position("resolve", p),
        )
        self.cluster_logs = StateLog(
            self.cluster_log.data,
            name=cluster_table,
            send=_writer(app, self.cluster_log.changelog_topic.get_topic_name()),
            compact_bytes=s.log_compact_bytes,
            compact_garbage=s.log_compact_garbage,
            slice_bytes=CUTBACK_SLICE_BYTES,
            on_compacted=compacted,
            position=lambda p: self.read_offsets.position("clusters", p),
        )
        self.sent_alerts = app.Table("alerts-sent", changelog_topic=self.t_alerts, **table)
        self.sent_actions = app.Table("actions-sent", changelog_topic=self.t_actions, **table)
        outputs = {
            "alerts": _writer(app, self.t_alerts.get_topic_name()),
            "actions": _writer(app, self.t_actions.get_topic_name()),
        }
        self.outputs = Outputs(
            self.sent_alerts.data,
            self.sent_actions.data,
            deadletter=self._send_deadletter,
            send=lambda kind, p, key, value: outputs[kind](p, key, value),
        )
        self.hand_over = HandOver(
            resolve=Hop("resolve", lambda p, env: self._write_envelope(self.t_resolve, env, p)),
            clusters=Hop("clusters", lambda p, env: self._send(self.t_clusters, env, p)),
            grace_s=HAND_OVER_GRACE_S,
        )
        self.topology = Topology(
            StageSettings(
                partitions=n,
                sources=self.sources,
                lateness_ms=s.lateness_ms,
                hold_ms=s.hold_ms,
                max_held=max(1, s.max_held // n),
                idle_ms=s.idle_ms,
                partition_idle_s=s.partition_idle_s,
                idle_at_log_end=True,
                shares_topic=s.topic("shares"),
                peer_rounds=LOCAL_PEER_ROUNDS,
            ),
            banks=self.banks,
            policy=self.policy,
            stats=self.stats,
            pseudonymizer=self.pseudonymizer,
            hand_over=self.hand_over,
            resolve_log=self.resolve_logs,
            cluster_log=self.cluster_logs,
            outputs=self.outputs,
        )
        self.checkpoint = Checkpoint(
            sinks=[self.outputs],
            logs=[self.resolve_logs, self.cluster_logs],
            flush_producer=lambda: app.counted_producer.flush_sent(),
            commit_offsets=lambda offsets: self.shares.commit_offsets(offsets),
            gate=self.resolve_gate,
            copies=self.topology,
            note_offsets=lambda offsets: self.shares.note_offsets(offsets),
        )
        app.settle_writes = self.checkpoint.flush  # Faust's flush before it commits offsets
        self.shares = SharesReader(
            s,
            self.topology,
            self.checkpoint,
            on_delays=lambda t: self._delay("ingest", t),
            kept_times=self._kept_times(app, raw) if s.local_broker else None,
        )
        #: sinks fed from the alerts topic (the webhook: streams.runtime.alert_feed)
        self.feeds: list[AlertFeed] = []
        self.bank_follower = BankFollower(
            s,
            self.banks,
            self.stats,
            self.health,
            deadletter=self.outputs.deadletter,
            on_update=self._bank_changed,
            # every reviewer's actions, whichever worker's view took them: the pages show them
            actions=self.views.actions if self.views is not None else None,
        )
        app.probe_end_offsets = s.local_broker
        # the hops between workers: never held behind the stages' own batches
        app.prefetch_topics = frozenset(
            t.get_topic_name() for t in (self.t_resolve, self.t_clusters)
        )
        app.idempotent_producer = not s.local_broker

        take = (s.batch_size, s.batch_wait_s)
        # an agent that raises stops the worker (a supervisor restarts the process)
        crash: Any = CrashingSupervisor

        @app.task  # type: ignore[untyped-decorator]
        async def ingest() -> None:
            with self._fatal("ingest"):
                try:
                    await self.shares.run()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("reading %s failed: stopping the worker", self.shares.topic)
                    os.kill(os.getpid(), signal.SIGTERM)
                    raise

        @app.agent(self.t_resolve, name="resolve", supervisor_strategy=crash)
        async def resolve(stream: Any) -> None:
            with self._fatal("resolve"):
                async for events in stream.take_events(*take):
                    self._delay("resolve", (e.message.timestamp for e in events))
                    received = self._received("resolve", events)
                    # a partition that read nothing new (the copies of what it was handed
                    # in-process: see Hop.copy) has nothing to do, unless it is to be restored
                    resolvers = self.topology.resolvers
                    received = {p: e for p, e in received.items() if e or p not in resolvers}
                    if received:
                        self.topology.resolve_received(received)
                        self.checkpoint.stage()
                        self.shares.heard_more()
                    self._seek_back()

        @app.agent(self.t_clusters, name="detect", supervisor_strategy=crash)
        async def detect(stream: Any) -> None:
            with self._fatal("detect"):
                async for events in stream.take_events(*take):
                    self._delay("detect", (e.message.timestamp for e in events))
                    for k, envelopes in self._received("clusters", events).items():
                        self.topology.detect(k, envelopes)
                    self.checkpoint.stage()
                    self.shares.heard_more()
                    self._seek_back()

        @app.timer(HEARTBEAT_S)  # type: ignore[untyped-decorator]
        async def heartbeat() -> None:
            self.health.beat()  # the loop turns: /livez
            self.shares.heartbeat()

        @app.timer(STATS_EVERY_S)  # type: ignore[untyped-decorator]
        async def publish_stats() -> None:
            self.stats.log_bytes = self.resolve_logs.size + self.cluster_logs.size
            try:
                self._watch_stalls(time.monotonic())
            except Exception:  # a diagnostic: it must never stop the report or the worker
                log.exception("watching for stalled partitions failed")
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

        @app.task  # type: ignore[untyped-decorator]
        async def alert_feeds() -> None:
            await asyncio.gather(*(feed.run() for feed in self.feeds))

        @app.task  # type: ignore[untyped-decorator]
        async def views() -> None:
            if self.views is not None:
                await self.views.run(self)

        @app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
            self._rebalances += 1  # a rebuild under way stops (see rebuild_assigned)
            for condition in ("assigned", "restored"):  # a rebalance: not ready until it ends
                self.health.set(condition, False, "rebalancing")
            self._revoke(revoked)
            # What the revoked partitions' stages wrote must be on the broker before their
            # next owner restores them from their logs (it does once this returns and the
            # group has rejoined). Faust flushed before this signal, but its flush gives up
            # after 0.1 s without a send, records still queued (see ProducerBuffer); and
            # what was handed over in-process since is only in those logs.
            # Bounded: an unbounded wait here is the likeliest (not proven) cause of
            # rebalances that never ended in CI; past the bound it is as before, Faust's
            # own flush having given up sooner.
            self.checkpoint.stage()
            try:
                await asyncio.wait_for(self.checkpoint.flush(), timeout=REVOKE_FLUSH_S)
            except (RuntimeError, TimeoutError) as exc:  # stopped, or the bound passed
                log.warning("could not flush on a rebalance: %r", exc)

        @app.on_partitions_assigned.connect  # type: ignore[arg-type]
        async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
            self._rebalances += 1
            self.hand_over.assigned()
            mine = []
            for hop in (self.hand_over.resolve, self.hand_over.clusters):
                name = self.settings.topic(hop.name)
                hop.assign(tp.partition for tp in assigned if tp.topic == name)
                self.read_offsets.assigned(
                    hop.name, [tp.partition for tp in assigned if tp.topic == name]
                )
                mine += [f"{name}/{tp.partition}" for tp in assigned if tp.topic == name]
            self.health.set(
                "assigned", True, ", ".join(sorted(mine)) or "none (more workers than partitions)"
            )
            held = sorted(self.hand_over.clusters.held)
            self.health.set(
                "restored",
                False,
                "restoring table state from the changelogs"
                + (f"; then {listed_partitions(held)} to rebuild" if held else ""),
            )

        @app.on_rebalance_complete.connect  # type: ignore[arg-type]
        async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
            # Faust sends this once the tables of the new assignment are recovered
            # (or needed no recovery): the clusters partitions are rebuilt from them now.
            await self.rebuild_assigned()

        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def on_shutdown(sender: Any, **kwargs: Any) -> None:
            self.health.stopping()

        return app

    def _kept_times(self, app: App, raw: dict[str, Any]) -> KeptTimes:
        """The times' topic of the bundled broker, which drops the metadata the shares reader
        commits each partition's newest event time in (:mod:`~streams.runtime.stream_times`):
        a generation of it an hour, each made (the client learning its leader) before it is
        written to, its records written into the client's batches (the checkpoint's producer
        flush counts them), read back by a consumer of its own, the old generations deleted.
        (A topic made as the worker ran, sent to through Faust's ``app.topic``, kept the
        flush waiting: the reader stood still after its first record.)"""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        s = self.settings
        name = stream_times.topic_name(s.app_id)

        def send(generation: str, value: bytes) -> None:
            app.counted_producer.write(generation, 0, b"shares", value)

        def make_reader() -> Any:
            return AIOKafkaConsumer(
                bootstrap_servers=s.bootstrap,
                enable_auto_commit=False,
                fetch_max_wait_ms=LOCAL_FETCH_WAIT_MS,
                **s.security.aiokafka_config(),
            )

        async def delete(old: list[str]) -> None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=s.bootstrap, **s.security.aiokafka_config()
            )
            await admin.start()
            try:
                await admin.delete_topics(old)
            finally:
                await admin.close()

        async def create(new: list[str]) -> None:
            config = s.security.kafka_python_config()
            wanted = dict.fromkeys(new, 1)
            await asyncio.to_thread(ensure_topics, s.bootstrap, wanted, client_config=config)
            for generation in new:  # (its records are written into the client's batches)
                await app.counted_producer.learn(generation)

        bad = stream_times.bad_records(name, self.stats, self.outputs.deadletter)
        return KeptTimes(
            name,
            send,
            make_reader,
            on_bad=bad,
            delete=delete,
            flush=lambda: app.counted_producer.flush_sent(),
            create=create,
        )

    @property
    def loading(self) -> list[int]:
        """The clusters partitions assigned here still loading (:meth:`Topology.loading`): a
        view of one of their clusters says 503 "still loading", not 404 (:mod:`.views`)."""
        return self.topology.loading(self.hand_over.clusters.held)

    async def rebuild_assigned(self) -> None:
        """Rebuild the clusters partitions assigned here from their logs, as the assignment's
        tables are recovered, one at a time (the views answer between them); then ready.

        A partition was rebuilt at its first batch: after a restart, a kill or a rebalance
        at a quiet hour, that came only once progress reached it (on the bundled broker not
        before the next event), and meanwhile an alert's cascade link (the views) answered
        404 for a live cluster. ``/readyz`` says which
        partitions are still to rebuild (the readiness probe waits for them: a rolling
        update moves on once a new pod answers for its partitions). A rebalance that
        begins meanwhile stops this one; its own end rebuilds what it assigns. The
        resolve partitions are still restored at their first batch: what a restore
        releases goes on downstream in a batch, and no view reads them."""
        began = self._rebalances
        while began == self._rebalances and (
            loading := self.topology.unbuilt(sorted(self.hand_over.clusters.held))
        ):
            self.health.set(
                "restored",
                False,
                f"tables recovered; rebuilding {listed_partitions(loading)} from their logs",
            )
            self.topology.rebuild(loading[:1])
            await asyncio.sleep(0)  # a view between two partitions: 503 for those left
        if began == self._rebalances:
            held = listed_partitions(sorted(self.hand_over.clusters.held))
            self.health.set("restored", True, f"tables recovered; {held} rebuilt")

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

    # -- between Faust and the topology --

    def _received(self, hop_name: str, events: list[Any]) -> dict[int, list[bytes]]:
        """A batch of an internal topic's records as each partition's envelopes, noting
        what each partition has read of this worker's own sends (the
        copies of those handed over in-process while unread are left out)."""
        hop = self.hand_over.resolve if hop_name == "resolve" else self.hand_over.clusters
        state_log = self.resolve_logs if hop_name == "resolve" else self.cluster_logs
        received: dict[int, list[bytes]] = {}
        mine = self._own_key
        now = time.monotonic()
        for events_of_partition in _by_partition(events):
            last = events_of_partition[-1]
            p = last.message.partition
            first = events_of_partition[0].message.offset
            committed = committed_offset(self.app, last.message.tp)
            if not self.read_offsets.knows(hop_name, p):  # taken over: where its log stood
                self.read_offsets.resume(hop_name, p, state_log.logged_position(p))
            lost = self.read_offsets.skipped
            hold, back = self.read_offsets.behind(hop_name, p, first, now, committed)
            if self.read_offsets.skipped > lost:
                log.warning(
                    "%s/%d: %d records before offset %s were skipped by the Kafka client and "
                    "did not come again: the events they carried are missing",
                    hop_name,
                    p,
                    self.read_offsets.skipped - lost,
                    back if back is not None else first,
                )
            if hold:  # records before these were skipped: read again from the first of them
                if back is not None:
                    log.warning(
                        "%s/%d: records %d..%d were skipped by the Kafka client (a "
                        "rebalance): reading them again",
                        hop_name,
                        p,
                        back,
                        first - 1,
                    )
                    self._seeks.append((last.message.tp, back))
                continue
            skipped = self.read_offsets.read(hop_name, p, first, last.message.offset, committed)
            if skipped:
                log.warning(
                    "%s/%d: %d records before offset %d were skipped by the Kafka client "
                    "and did not come again; the events they carried are missing",
                    hop_name,
                    p,
                    skipped,
                    first,
                )
            hop.read_from(p)
            records = (
                (round(m.timestamp * 1000) if m.key == mine else None, m.value)
                for m in (e.message for e in events_of_partition)
            )
            received[p] = hop.received(p, records)
        return received

    def _seek_back(self) -> None:
        """Seek the partitions whose records the client skipped back to the first of them
        (their later records were held back: they come again after). The seek is made in
        the consumer's thread, not awaited (:func:`seek_soon`)."""
        seeks, self._seeks = self._seeks, []
        for tp, offset in seeks:
            seek_soon(self.app, tp, offset)

    def _send(self, topic: Any, value: Envelope | bytes, partition: int) -> int:
        """Send an envelope to a partition of an internal topic (in parts, if it is large),
        keyed as this worker's own, its records in the wire version the settings say
        (:class:`~streams.wire.WireVersion`: the latest, or an earlier one during a rolling
        update from a release that wrote it), through Faust's buffer (the ``clusters``
        topic).

        Returns its timestamp (epoch ms, increasing from one send to the next): the mark
        by which the hand-over knows when the partition has read it.
        """
        _, stamp, parts = self._records(topic, value)
        for part in parts:
            topic.send_soon(
                key=self._own_key, value=part, partition=partition, timestamp=stamp / 1000
            )
        return stamp

    def _write_envelope(self, topic: Any, value: Envelope | bytes, partition: int) -> int:
        """:meth:`_send`, written straight into the Kafka client's open batch of the
        partition (:meth:`~streams.runtime.faust_adapter.Producer.write`), so that it
        leaves with the outputs and logs its batch wrote; returns its mark likewise.

        Every record of the ``resolve`` topic goes this way, so a partition's records keep
        the order written. With the copies of in-process hand-overs written here and the
        other sends through Faust's buffer (a task step later), a copy could overtake a
        tracked send written before it: read first, its mark told the hand-over that the
        send was read too, and the next envelope for that partition went the short way
        without it, overtaking it.
        """
        name, stamp, parts = self._records(topic, value)
        producer = self.app.counted_producer
        for part in parts:
            producer.write(name, partition, self._own_key, part, timestamp_ms=stamp)
        return stamp

    def _records(self, topic: Any, value: Envelope | bytes) -> tuple[str, int, list[bytes]]:
        """An envelope's records for ``topic`` in the settings' wire version, counted as sent,
        with the topic's name and the send's mark (see :meth:`_send`)."""
        wire = self.settings.wire_version
        parts = (
            value.parts(wire=wire)
            if isinstance(value, Envelope)
            else split_envelope(value, wire=wire)
        )
        stamp = self._last_send_ms = max(round(time.time() * 1000), self._last_send_ms + 1)
        name = topic.get_topic_name()
        for part in parts:
            self.sent[name] += 1
            self.sent_bytes[name] += len(part)
        return name, stamp, parts

    def _bank_changed(self, update: BankUpdate) -> None:
        """A timed bank change reached this worker: the clusters partitions it holds apply it
        (retroaction, false positives), their decisions go out at the next checkpoint."""
        self.topology.change_bank(update)
        self.checkpoint.stage()

    @property
    def actions(self) -> ActionLog:
        """The reviewer actions read from the ``audit`` topic (a cluster's page shows them)."""
        return self.bank_follower.actions

    @property
    def bank_updated(self) -> dict[str, float]:
        """Per bank, when its latest update was written to the ``bank`` topic (``/banks``)."""
        return self.bank_follower.updated

    def _send_deadletter(self, letter: DeadLetter) -> None:
        self.t_deadletter.send_soon(key=letter.key, value=letter.to_json())

    def _delay(self, stage: str, stamps_s: Iterable[float | None]) -> None:
        """Note how long the oldest record of a batch waited since it was produced
        (``stamps_s``: the records' Kafka timestamps, in seconds)."""
        stamp = min((t or 0.0) for t in stamps_s)
        if stamp > 0:
            self._delays[stage].append(time.time() - stamp)

    def _count_compaction(self) -> None:
        self.stats.log_compactions += 1

    def _revoke(self, revoked: set[TP]) -> None:
        """Drop the in-memory state of partitions this worker no longer owns.

        It is rebuilt from the tables when a partition comes back (whoever
        processed it meanwhile wrote its changes there).
        """
        names = {self.settings.topic(name): name for name in ("resolve", "clusters")}
        for tp in revoked:
            name = names.get(tp.topic)
            if name is not None:
                self.read_offsets.forget(name, tp.partition)
                self.topology.revoke(name, tp.partition)
        self.topology.release({tp.partition for tp in revoked if names.get(tp.topic) == "clusters"})

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
            "read": self.shares.read,
            "applied": applied,
            # wall times of the first record read and of the last event applied here: a
            # backlog's span to the millisecond, where the record's own time is a second late
            "first_read_at": self.shares.first_read_at,
            "applied_at": self.topology.applied_at,
            "pending": sum(d.pending for d in self.detectors.values()),
            "held": sum(r.held for r in self.resolvers.values()),
            "clusters": sum(d.detector.cluster_count for d in self.detectors.values()),
            "alerts": self.outputs.alerts_sent,
            "actions": self.outputs.actions_sent,
            "deadletters": self.outputs.deadlettered,
            "compactions": self.stats.log_compactions,
            "log_bytes": self.stats.log_bytes,
            "handed_over": self.hand_over.handed_over,
            # envelopes sent through Kafka, the short way open but for a partition assigned
            # that has not read past its first send since (Hop.assign): the rule's cost
            "waited": {h.name: h.waited for h in (self.hand_over.resolve, self.hand_over.clusters)},
            # and the records read by partitions behind till then (how long it held)
            "read_behind": {
                h.name: h.read_behind for h in (self.hand_over.resolve, self.hand_over.clusters)
            },
            "checkpoints": self.checkpoint.commits,
            # records waiting to be handed to the Kafka client (alerts wait behind them)
            "producer_queued": self.app.counted_producer.queued,
            # records of the internal topics the Kafka client skipped and that did not come
            # again, and seeks back to read skipped ones again (see read_offsets)
            "skipped": self.read_offsets.skipped,
            "seeks": self.read_offsets.seeks,
            "watermarks": {str(k): d.watermark.value for k, d in sorted(self.detectors.items())},
            # partitions standing still while work waits: a clusters partition's watermark
            # with events pending, an internal partition's records unread (stalls.py)
            "stalled": self.stalls.stalled + [f"unread {k}" for k in self.unread.stalled],
            # each resolve partition's progress (what the clusters watermarks wait for)
            "progress": {str(r): st.progress for r, st in sorted(self.resolvers.items())},
            # what each waits for in turn: per resolve partition its input watermark, its
            # reshares held and each shares partition's mark (newest time, idle); per
            # clusters partition the progress heard from each resolve partition
            "waits": {
                "resolve": {
                    str(r): [st.watermark.value, st.held, _marks(st.watermark.marks())]
                    for r, st in sorted(self.resolvers.items())
                },
                "clusters": {
                    str(k): {str(r): t for r, (t, _) in d.watermark.marks().items()}
                    for k, d in sorted(self.detectors.items())
                },
            },
            "partitions": {
                "shares": sorted(self.topology.ingest.clock.assigned),
                "resolve": sorted(self.resolvers),
                "clusters": sorted(self.detectors),
            },
            "backlogged": self.shares.backlogged,
            # the shares partitions the reader holds back (shares_reader.held_back), and why
            "paused": self.shares.paused,
            # seconds the reader stood with every partition it has records for paused, by
            # the rule holding the slowest (shares_reader.stop_cause), and in its commits
            "stopped_s": {k: round(v, 3) for k, v in sorted(self.shares.stopped_s.items())},
            "stops": dict(sorted(self.shares.stops.items())),
            "commit_s": round(self.shares.commit_s, 3),
            # shares fetches the compiled core left to the Kafka client's loop, by why
            # (a compressed batch, a legacy one, a bad CRC, a malformed batch: bare_records)
            "unread_fetches": dict(sorted(self.shares.unread.items())),
            "heard": self.topology.heard(),
            "held_fill": round(self.topology.held_fill(), 3),
            # the bundled broker's workarounds, in use or not (never on Apache Kafka)
            "workarounds": {
                "end_offset_probes": self.app.end_offset_probes,
                "short_fetch_wait": ConsumerThread.fetch_max_wait_ms == LOCAL_FETCH_WAIT_MS,
                # checkpoints' records on the times' topic (streams.runtime.stream_times)
                "times_written": kept.written if (kept := self.shares.kept_times) else 0,
                # and read back at assignments (bounded: stream_times.READ_LIMIT at most)
                "times_read_back": kept.read_back if kept else 0,
                # its old generations deleted (bounded: stream_times.PERIOD_S)
                "times_dropped": kept.dropped if kept else 0,
            },
            "delay_s": self._take_delays(),
            "sent": dict(self.sent),
            "sent_bytes": dict(self.sent_bytes),
            # every record written straight into the Kafka client's batches, by topic: the
            # state logs, the outputs, the ``resolve`` topic's sends and copies
            "written": dict(self.app.counted_producer.written_to),
            "written_bytes": dict(self.app.counted_producer.written_bytes),
            "stats": self.stats.summary(),
        }

    def _watch_stalls(self, now: float) -> None:
        """Say which partitions held here stand still while work waits behind them: a
        clusters partition's watermark with events pending (and which sources hold it
        back), an internal partition whose records wait on the broker unread; and when
        they move on (see :mod:`streams.runtime.stalls`)."""
        detectors = self.detectors
        say, ended = self.stalls.check(
            {f"clusters/{k}": (d.watermark.value, d.pending) for k, d in detectors.items()},
            now,
        )
        for stall in say:
            log.warning(
                "%s: watermark %d has not moved for %.0f s while %d events wait; held back by %s",
                stall.key,
                stall.mark,
                stall.since_s,
                stall.waiting,
                self._holding(int(stall.key.rsplit("/", 1)[1])),
            )
        for stall in ended:
            log.warning(
                "%s: watermark moved on to %d after %.0f s", stall.key, stall.mark, stall.since_s
            )
        say, ended = self.unread.check(self._unread(), now)
        for stall in say:
            log.warning(
                "%s: %d records wait on the broker past offset %d, none handed to the stage "
                "for %.0f s (read offsets: %d records skipped, %d seeks back so far)",
                stall.key,
                stall.waiting,
                stall.mark,
                stall.since_s,
                self.read_offsets.skipped,
                self.read_offsets.seeks,
            )
        for stall in ended:
            log.warning(
                "%s: read again, from offset %d, after %.0f s", stall.key, stall.mark, stall.since_s
            )
        self.stats.partitions_stalled = len(self.stalls.stalled) + len(self.unread.stalled)

    def _unread(self) -> dict[str, tuple[int, int]]:
        """Each internal partition held here: the next offset its stage is to be handed and
        how many records wait on the broker past it (the client's last highwater)."""
        out: dict[str, tuple[int, int]] = {}
        consumer = self.app.consumer
        for hop in (self.hand_over.resolve, self.hand_over.clusters):
            topic = self.settings.topic(hop.name)
            for p in sorted(hop.held):
                tp = TP(topic, p)
                position = self.read_offsets.position(hop.name, p)
                if position is None:
                    position = committed_offset(self.app, tp) or 0
                try:
                    highwater = consumer.highwater(tp)
                except Exception:  # not assigned in the client (a rebalance under way)
                    continue
                if highwater is not None:
                    out[f"{hop.name}/{p}"] = (position, max(0, highwater - position))
        return out

    def _holding(self, partition: int) -> str:
        """The resolve partitions whose progress holds a clusters partition's watermark back
        (the slowest, and those not heard from), and where those held here stand."""
        d = self.detectors.get(partition)
        if d is None:
            return "(revoked)"
        marks = d.watermark.marks()
        missing = [r for r in range(d.watermark.sources) if r not in marks]
        slowest = min((t for t, _ in marks.values()), default=None)
        # until every source is heard from the watermark is unknown: those alone hold it
        holders = missing or [r for r, (t, _) in marks.items() if t == slowest]
        parts = []
        for r in holders:
            where = "not heard from" if r in missing else f"at {marks[r][0]}"
            state = self.resolvers.get(r)
            if state is not None:  # held here: what holds it back in turn
                where += (
                    f" (held here: progress {state.progress}, {state.held} held, input "
                    f"marks {state.watermark.marks()}, peers {dict(sorted(state.peers.items()))})"
                )
            parts.append(f"resolve/{r} {where}")
        return "; ".join(parts) or "nothing known"

    def _take_delays(self) -> dict[str, dict[str, float]]:
        """Per stage since the last call: mean and largest wait of the oldest record of a batch
        (and, as ``fetched_<topic>``, of each fetched result as it came: the hop's fetch)."""
        for topic, ages in fetched_ages(self.app).items():
            self._delays[f"fetched_{topic.rsplit('.', 1)[-1]}"] += ages
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


def _marks(marks: dict[int, tuple[int, bool]]) -> dict[str, list[int]]:
    """A watermark's marks for the report: per source, its time and 1 if idle."""
    return {str(p): [t, int(idle)] for p, (t, idle) in marks.items()}


def _writer(app: App, topic: str) -> Callable[[int, bytes, bytes | None], None]:
    """Writes (partition, key, value) of ``topic`` straight into the Kafka client's batches
    (:meth:`~streams.runtime.faust_adapter.Producer.write`): the outputs and the state logs,
    a table's store noting each key first."""

    def write(partition: int, key: bytes, value: bytes | None) -> None:
        app.counted_producer.write(topic, partition, key, value)

    return write


def _by_partition(events: list[Any]) -> Iterable[list[Any]]:
    """Events of a batch grouped by partition, each group in offset order."""
    groups: dict[int, list[Any]] = defaultdict(list)
    for e in events:
        groups[e.message.partition].append(e)
    return groups.values()


# -- starting a worker ----------------------------------------------------------------


#: Why a worker with no broker configured does not start (a production worker must never
#: carry on with a toy broker that loses everything when it stops).
NO_BROKER = (
    "no broker configured: set VIRALWATCH_BROKER=kafka://HOST:PORT or give --broker; "
    "--embedded-broker (VIRALWATCH_EMBEDDED_BROKER=1) starts the bundled in-memory broker "
    "for a demo or a laptop, never for production"
)


#: The topics whose partitions are the stages' (written by key, or a table's changelog):
#: they must have the settings' partition count (``shares`` may predate the worker).
KEYED_TOPICS = ("resolve", "clusters", "alerts", "actions")


def prepare(
    settings: Settings, say: Callable[[str], None]
) -> tuple[Settings, LocalBroker | None, int]:
    """Start the bundled broker if none is configured and that is allowed (a configured one
    that is the bundled broker gets its workarounds, :func:`is_bundled_broker`); create the
    topics.

    Returns the settings to run with, the broker started (or ``None``), and
    the partition count of the ``shares`` topic (which may predate us). A configured
    broker nothing accepts a connection at within ``settings.broker_wait_s`` is raised as
    ``ConnectionError`` then, not after the Kafka client's bootstrap timeout (about 40 s,
    ``KafkaTimeoutError``); one that comes up within the wait is used. The client's errors
    are raised as ``ConnectionError`` too: the commands say them in one line, exit status 2
    (a worker said them as a traceback).
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
    from kafka.errors import KafkaError

    try:
        if broker is None:
            wait_reachable(settings.bootstrap, settings.broker_wait_s)
        if (
            broker is None
            and not settings.local_broker
            and is_bundled_broker(
                settings.bootstrap, client_config=settings.security.kafka_python_config()
            )
        ):
            settings = settings.with_(local_broker=True)
            say(
                f"the broker at {settings.broker} is the bundled one (Tansu, cluster id "
                f"{TANSU_CLUSTER_ID}): its workarounds are on, as with VIRALWATCH_LOCAL_BROKER=1"
            )
        # The state logs' changelogs too, before Faust starts: workers starting together
        # would otherwise race to create them, and one whose metadata missed the other's
        # creation failed its first state-log write (PartitionsMismatch: 0 partitions).
        changelogs = settings.state_log_changelogs()
        topics = [settings.topic(name) for name in TOPICS] + list(changelogs)
        wanted = dict.fromkeys(topics, settings.partitions)
        if settings.local_broker:  # it drops a commit's metadata (see SharesReader.kept_times)
            # its generation now (the next ones: made by the broker as they are written)
            generation = int(time.time() // stream_times.PERIOD_S)
            wanted[
                stream_times.generation_topic(stream_times.topic_name(settings.app_id), generation)
            ] = 1
        counts = ensure_topics(
            settings.bootstrap,
            wanted,
            replicas=settings.replicas,
            client_config=settings.security.kafka_python_config(),
            configs=changelogs,
        )
        for topic in [settings.topic(name) for name in KEYED_TOPICS] + list(changelogs):
            if counts[topic] != settings.partitions:
                raise ValueError(
                    f"topic {topic} has {counts[topic]} partitions, the settings say "
                    f"{settings.partitions}: use --partitions {counts[topic]} or a new prefix"
                )
    except BaseException as exc:
        if broker is not None:
            broker.stop()
        if isinstance(exc, KafkaError):  # the Kafka client's: one line, not its traceback
            said, kind = str(exc), type(exc).__name__
            said = said if said.startswith(kind) else f"{kind}: {said}"  # kafka-python's has it
            raise ConnectionError(f"the broker at {settings.broker}: {said}") from exc
        raise
    return settings, broker, counts[settings.topic("shares")]


def wire_line(version: WireVersion) -> str:
    """The start line saying what this worker writes on the internal topics: during a
    rolling update (``VIRALWATCH_WIRE_VERSION``) the operator sees each worker's pin.

    >>> wire_line(WireVersion.V1)
    'writes wire version 1 (resolve s/u, clusters e; pinned: the latest is 2); reads 1 to 2'
    """
    pinned = f"; pinned: the latest is {LATEST_WIRE.value}" if version < LATEST_WIRE else ""
    return (
        f"writes wire version {version.value} ({version.writes}{pinned}); "
        f"reads 1 to {LATEST_WIRE.value}"
    )


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
    registry, http, views = serve_worker_http(settings, health)
    if http is not None and views is not None:
        say(
            f"HTTP at {http.url()}: /metrics, /livez, /readyz; views /cascade/<id>, /emerging, "
            f"/banks ({len(views.tokens.tokens())} tokens; others reach it at {views.url})"
        )
    try:
        _run_worker(settings, say, health, registry, views)
    finally:
        if http is not None:
            http.stop()
        if views is not None:
            views.close()


def serve_worker_http(
    settings: Settings, health: Health
) -> tuple[Any, HttpServer | None, Views | None]:
    """A worker's metrics registry, and its HTTP server and views if ``settings.http_port``
    is set.

    Raises ``ValueError`` (:class:`streams.web.ServeError` among them) when it cannot listen
    or the web tokens cannot be read.
    """
    from prometheus_client import CollectorRegistry

    from streams.metrics import add_metrics

    registry = CollectorRegistry()
    if settings.http_port is None:
        return registry, None, None
    views = Views(settings, TokenSource(settings.web_tokens, settings.web_tokens_file))
    router = Router()
    add_metrics(router, registry)
    add_probes(router, health)
    views.add_routes(router)
    http = serve(router, settings.http_host, settings.http_port)
    views.url = advertised_url(settings, http.port)
    return registry, http, views


def _run_worker(
    settings: Settings,
    say: Callable[[str], None],
    health: Health,
    registry: Any,
    views: Views | None,
) -> None:
    served = views is not None
    health.set("banks", False, "loading the bank files")
    banks = load_banks(settings.bank_files, settings.bank_settings_file)
    health.set("banks", False, f"bank files read ({len(banks)} entries); the bank topic next")
    policy = load_policy(settings.policy_file)
    if settings.broker is not None:  # a probe's answer says what the start waits for
        health.set(
            "assigned",
            False,
            f"starting: waiting up to {settings.broker_wait_s:g}s for the broker at "
            f"{settings.broker} to accept a connection, then the topics",
        )
    settings, broker, shares_partitions = prepare(settings, say)
    health.set("assigned", False, "starting: joining the consumer group")
    if views is not None:  # its actions go to the broker prepare started or recognised
        views.settings = settings
    oncall = None
    watched = None
    if broker is not None:  # a panic ends it (or not: then it answers nothing): stop, say why
        pid = broker.pid

        def failed(why: str) -> None:
            say(f"the bundled Kafka broker (pid {pid}) {why}: stopping the worker")
            os.kill(os.getpid(), signal.SIGTERM)

        watched = watch_failure(broker, failed)
    try:
        if settings.uses_dev_key:
            say("VIRALWATCH_PSEUDONYM_KEY is not set; pseudonyms use a development key")
        say(wire_line(settings.wire_version))
        from streams.metrics import export_wire_version

        export_wire_version(registry, settings.wire_version)
        worker = Worker(
            settings,
            banks=banks,
            policy=policy,
            shares_partitions=shares_partitions,
            health=health,
            views=views,
        )
        if served or settings.alertmanager_url or settings.webhook_url:
            from streams.sinks.base import AlertSink
            from streams.sinks.oncall import OnCall
            from streams.sinks.webhook import WebhookSink, secret_from_env

            fed: list[AlertSink] = []
            if settings.webhook_url:  # fed from the alerts topic: posted even if this one dies
                webhook = WebhookSink(settings.webhook_url, secret=secret_from_env())
                worker.feeds.append(
                    AlertFeed(settings, webhook, worker.stats, deadletter=worker.outputs.deadletter)
                )
                fed.append(webhook)
            oncall = OnCall(
                worker.stats,
                fastest=worker.fastest,
                alertmanager=settings.alertmanager_url,
                repost_interval=settings.alertmanager_repost_s,
                fed=fed,
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
        why = watched() if watched is not None else None
        if broker is not None:
            broker.stop()
        if why is not None:  # the worker's end is the broker's failure (its lines, not "0")
            raise BrokerError(f"the bundled Kafka broker {why}")


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
