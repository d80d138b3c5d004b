"""Prometheus metrics for a viralwatch worker: what on-call and the pipeline's owners graph.

The core counts in a plain :class:`streams.stats.Stats` (no Prometheus import,
no cost beyond an integer add); this module reads it at scrape time through
a custom collector, so a counter can never drift from the summary that
``replay`` prints. What the core cannot count (wall-clock latencies, alerts
as the sinks see them) the adapters observe here.

Label cardinality is bounded by construction: event types, rejection
reasons, banks, severities and sinks are small fixed sets, and clusters
appear only in the top-N fastest banked clusters (``top_n``, 10 by default).
No label ever carries a user id or a post id.

>>> from prometheus_client import CollectorRegistry
>>> from streams.stats import Stats
>>> registry, stats = CollectorRegistry(), Stats()
>>> metrics = PipelineMetrics(registry, stats)
>>> stats.events["share"] += 3
>>> registry.get_sample_value("viralwatch_events_total", {"type": "share"})
3.0
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from streams.alerts import SEVERITIES, Alert
from streams.events import EVENT_TYPES, REJECT_REASONS
from streams.stats import Stats
from streams.web import Health, Request, Response, Router, add_probes, serve

#: Clusters exported with their own labels: the fastest banked ones only.
DEFAULT_TOP_N = 10
#: Hash lookups take microseconds on the index, milliseconds on a brute-force scan.
LOOKUP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
#: From the event that tipped a cluster over a threshold to the alert leaving the worker.
ALERT_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Active alerts remembered for the ``viralwatch_alerts_active`` gauge (a safety bound).
MAX_ACTIVE_ALERTS = 100_000


class ClusterSummary(Protocol):
    """What the detector tells about one cluster (``Detector.fastest``)."""

    @property
    def cluster_id(self) -> str: ...
    @property
    def bank(self) -> str | None: ...
    @property
    def velocity_5m(self) -> float: ...
    @property
    def size(self) -> int: ...
    @property
    def live(self) -> int: ...


class SinkStatus(Protocol):
    """What a sink tells about its delivery (see ``streams.sinks.base.AlertSink``)."""

    @property
    def name(self) -> str: ...
    @property
    def backlog(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def duplicates(self) -> int: ...


@runtime_checkable
class QueueStatus(Protocol):
    """What a sink with a bounded queue also tells (``AlertSink``): its size and its drops."""

    @property
    def capacity(self) -> int: ...
    @property
    def dropped(self) -> int: ...


Fastest = Callable[[int], Sequence[ClusterSummary]]


class PipelineMetrics:
    """All of a worker's metrics, registered in ``registry``.

    Parameters
    ----------
    registry
        Where the metrics live; tests pass their own.
    stats
        The core's counters, read at each scrape.
    fastest
        ``Detector.fastest``: the top clusters by 5-minute velocity, read at
        each scrape. ``None`` exports no per-cluster series.
    top_n
        How many clusters ``fastest`` is asked for (bounds the label set).
    clock
        Wall-clock seconds, for the processing lag and alert latency.

    >>> from prometheus_client import CollectorRegistry
    >>> from streams.stats import Stats
    >>> @dataclass
    ... class C:
    ...     cluster_id: str; bank: str; velocity_5m: float; size: int; live: int
    >>> stats = Stats(watermark_ms=1_000_000)
    >>> registry = CollectorRegistry()
    >>> m = PipelineMetrics(registry, stats, fastest=lambda n: [C("b-1", "ncii", 12.5, 40, 38)],
    ...                     clock=lambda: 1_060.0)
    >>> registry.get_sample_value("viralwatch_processing_lag_seconds")
    60.0
    >>> registry.get_sample_value("viralwatch_cluster_velocity_per_minute",
    ...                           {"cluster": "b-1", "bank": "ncii"})
    12.5
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        stats: Stats,
        *,
        fastest: Fastest | None = None,
        top_n: int = DEFAULT_TOP_N,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= top_n <= 100:
            raise ValueError("top_n must be 0..100: each cluster is a label value")
        self.registry = registry
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, tuple[str, str]] = {}  # alert_id -> (severity, cluster), firing
        self._sinks: list[SinkStatus] = []
        self.lookup_seconds = Histogram(
            "viralwatch_hash_lookup_seconds",
            "Time to look one upload's hashes up in the banks (cache misses only).",
            buckets=LOOKUP_BUCKETS,
            registry=registry,
        )
        self.event_to_alert_seconds = Histogram(
            "viralwatch_event_to_alert_seconds",
            "From the event time of the event that fired an alert to the alert leaving "
            "the worker (wall clock). On a replay of old events this is the events' age.",
            buckets=ALERT_LATENCY_BUCKETS,
            registry=registry,
        )
        self._collector = _CoreCollector(self, stats, fastest, top_n)
        registry.register(self._collector)

    def observe_lookup(self, seconds: float) -> None:
        """Record one bank lookup's duration."""
        self.lookup_seconds.observe(max(0.0, seconds))

    def observe_lookups(self, seconds: float, count: int) -> None:
        """Record a batched search of ``count`` lookups that took ``seconds`` in all.

        Each lookup is recorded at the batch's mean, so the histogram's count
        stays the number of lookups (``viralwatch_hash_lookups_total``).
        """
        if count > 0:
            each = max(0.0, seconds) / count
            for _ in range(count):
                self.lookup_seconds.observe(each)

    def observe_alerts(self, alerts: Iterable[Alert], *, again: bool = False) -> None:
        """Record alerts as they leave the worker: latency of firing ones, the active set.

        ``again``: alerts a partition's previous owner sent, re-announced by
        this worker after it took the partition over (see
        ``streams.sinks.base.AlertSink.reannounce``): counted active again,
        their latency was observed when they fired.
        """
        now = self._clock()
        with self._lock:
            for alert in alerts:
                if alert.status == "firing":
                    if not again:
                        self.event_to_alert_seconds.observe(max(0.0, now - alert.ts_ms / 1000))
                    if alert.alert_id in self._active or len(self._active) < MAX_ACTIVE_ALERTS:
                        self._active[alert.alert_id] = (alert.severity, alert.cluster_id)
                else:
                    self._active.pop(alert.alert_id, None)

    def release(self, clusters: Callable[[str], bool]) -> None:
        """Stop counting alerts of clusters this worker no longer owns (their new owner does)."""
        with self._lock:
            for aid in [a for a, (_, c) in self._active.items() if clusters(c)]:
                del self._active[aid]

    def watch_sink(self, sink: SinkStatus) -> None:
        """Export a sink's backlog and delivery counters."""
        with self._lock:
            if any(s.name == sink.name for s in self._sinks):
                raise ValueError(f"a sink named {sink.name!r} is already watched")
            self._sinks.append(sink)

    def active_by_severity(self) -> dict[str, int]:
        with self._lock:
            counts = dict.fromkeys(SEVERITIES, 0)
            for severity, _ in self._active.values():
                counts[severity] = counts.get(severity, 0) + 1
            return counts

    def sinks(self) -> list[SinkStatus]:
        with self._lock:
            return list(self._sinks)

    def now(self) -> float:
        return self._clock()


class _CoreCollector(Collector):
    """Reads the core's counters, the fastest clusters and the sinks at scrape time."""

    def __init__(
        self, owner: PipelineMetrics, stats: Stats, fastest: Fastest | None, top_n: int
    ) -> None:
        self._owner = owner
        self._stats = stats
        self._fastest = fastest
        self._top_n = top_n

    def describe(self) -> Iterable[Metric]:
        # Describing by collecting lets the registry check for duplicate names.
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        # Every known type and reason is exported from the start (at 0), so
        # rate() and "no events" rules see a series before the first event.
        yield _labelled_counter(
            "viralwatch_events",
            "Share events consumed, by type.",
            "type",
            {**dict.fromkeys(EVENT_TYPES, 0), **s.events},
        )
        rejected = {**dict.fromkeys(REJECT_REASONS, 0), **s.rejected}
        yield _labelled_counter(
            "viralwatch_events_rejected",
            "Events refused by validation or routing, by reason.",
            "reason",
            rejected,
        )
        yield _counter(
            "viralwatch_events_dead_lettered",
            "Events written to the dead-letter output (every rejection is).",
            sum(rejected.values()),
        )
        yield _counter(
            "viralwatch_events_duplicate", "Redelivered event ids, applied once.", s.duplicates
        )
        yield _counter(
            "viralwatch_events_late",
            "Events applied late, within the allowed lateness.",
            s.late,
        )
        yield _counter("viralwatch_reshares_held", "Reshares held until their parent came.", s.held)
        yield _labelled_counter(
            "viralwatch_uploads_matched",
            "Uploads matched to a bank entry, by bank.",
            "bank",
            dict(s.matched),
        )
        yield _counter(
            "viralwatch_uploads_unmatched", "Uploads that matched no bank.", s.unmatched_uploads
        )
        yield _counter(
            "viralwatch_uploads_low_quality",
            "Uploads whose PDQ quality is under the floor (not used as a signal).",
            s.low_quality,
        )
        yield _counter("viralwatch_hash_lookups", "Bank index lookups (cache misses).", s.lookups)
        yield _counter(
            "viralwatch_hash_lookup_cache_hits", "Lookups answered from the cache.", s.cache_hits
        )
        yield _counter("viralwatch_clusters_created", "Clusters created.", s.clusters_created)
        yield _counter(
            "viralwatch_clusters_evicted", "Idle clusters evicted from state.", s.clusters_evicted
        )
        yield _counter(
            "viralwatch_state_log_compactions",
            "State logs (resolve-log, cluster-log partitions) cut back to a snapshot.",
            s.log_compactions,
        )
        yield GaugeMetricFamily(
            "viralwatch_state_log_bytes",
            "Bytes in the state logs of the partitions this worker holds (what a restart reads).",
            value=s.log_bytes,
        )
        yield GaugeMetricFamily(
            "viralwatch_partitions_stalled",
            "Clusters partitions held here whose watermark has not moved for 30 s while "
            "events wait (the worker's log says which and what holds them back).",
            value=s.partitions_stalled,
        )
        yield _counter(
            "viralwatch_uploads_allowed",
            "Uploads on the allow-list (a reviewer's false positive): matched no bank.",
            s.allowed,
        )
        yield _counter(
            "viralwatch_clusters_relabelled",
            "Live unbanked clusters banked by a later bank change (retroaction).",
            s.relabelled,
        )
        entries = GaugeMetricFamily(
            "viralwatch_bank_entries", "Entries in each bank (and the allow-list).", labels=["bank"]
        )
        for bank, n in sorted(s.bank_entries.items()):
            entries.add_metric([bank], float(n))
        yield entries
        if s.bank_updated_s > 0:
            yield GaugeMetricFamily(
                "viralwatch_bank_last_update_timestamp_seconds",
                "When this worker last applied a bank update (Unix seconds).",
                value=s.bank_updated_s,
            )
        yield _counter(
            "viralwatch_clusters_emerging",
            "Unbanked clusters that crossed a velocity threshold (for review).",
            s.emerging,
        )
        alerts = CounterMetricFamily(
            "viralwatch_alerts",
            "Alerts emitted, by severity and status.",
            labels=["severity", "status"],
        )
        counted = dict(s.alerts)
        for severity in SEVERITIES:
            for status in ("firing", "resolved"):
                counted.setdefault((severity, status), 0)
        for (severity, status), n in sorted(counted.items()):
            alerts.add_metric([severity, status], float(n))
        yield alerts
        active = GaugeMetricFamily(
            "viralwatch_alerts_active",
            "Alerts firing now, as emitted by this worker, by severity.",
            labels=["severity"],
        )
        for severity, n in self._owner.active_by_severity().items():
            active.add_metric([severity], float(n))
        yield active

        yield GaugeMetricFamily(
            "viralwatch_clusters_active", "Clusters held in state.", value=float(s.clusters_active)
        )
        yield GaugeMetricFamily(
            "viralwatch_orphans_held",
            "Reshares held now, waiting for their parent.",
            value=float(s.orphans_held),
        )
        if s.watermark_ms > 0:
            watermark = s.watermark_ms / 1000
            yield GaugeMetricFamily(
                "viralwatch_watermark_timestamp_seconds",
                "Event time up to which all input has been applied (Unix seconds).",
                value=watermark,
            )
            yield GaugeMetricFamily(
                "viralwatch_processing_lag_seconds",
                "Wall clock minus the event-time watermark.",
                value=max(0.0, self._owner.now() - watermark),
            )
        yield from self._clusters()
        yield from self._sink_metrics()

    def _clusters(self) -> Iterator[Metric]:
        velocity = GaugeMetricFamily(
            "viralwatch_cluster_velocity_per_minute",
            "Shares per minute over the last 5 minutes of event time, "
            "for the fastest banked clusters.",
            labels=["cluster", "bank"],
        )
        size = GaugeMetricFamily(
            "viralwatch_cluster_size",
            "Posts in the cascade, for the fastest banked clusters.",
            labels=["cluster", "bank"],
        )
        live = GaugeMetricFamily(
            "viralwatch_cluster_live_copies",
            "Posts not taken down, for the fastest banked clusters.",
            labels=["cluster", "bank"],
        )
        for c in self._read_fastest():
            labels = [c.cluster_id, c.bank or "unbanked"]
            velocity.add_metric(labels, float(c.velocity_5m))
            size.add_metric(labels, float(c.size))
            live.add_metric(labels, float(c.live))
        yield velocity
        yield size
        yield live

    def _read_fastest(self) -> Sequence[ClusterSummary]:
        if self._fastest is None or self._top_n == 0:
            return ()
        # A scrape runs on the HTTP server's thread while the pipeline may be
        # changing its clusters; a read that races a resize is simply retried.
        for _ in range(3):
            try:
                return list(self._fastest(self._top_n))[: self._top_n]
            except RuntimeError:
                continue
        return ()

    def _sink_metrics(self) -> Iterator[Metric]:
        backlog = GaugeMetricFamily(
            "viralwatch_sink_backlog",
            "Alerts queued for delivery (the queue's depth; retried with backoff), by sink.",
            labels=["sink"],
        )
        capacity = GaugeMetricFamily(
            "viralwatch_sink_queue_capacity",
            "Alerts a sink's queue holds before it drops the oldest, by sink.",
            labels=["sink"],
        )
        dropped = CounterMetricFamily(
            "viralwatch_sink_dropped",
            "Alerts dropped from a full queue (receiver slow or down too long), by sink.",
            labels=["sink"],
        )
        delivered = CounterMetricFamily(
            "viralwatch_sink_delivered", "Alerts delivered, by sink.", labels=["sink"]
        )
        failures = CounterMetricFamily(
            "viralwatch_sink_failures",
            "Delivery attempts that failed and will be retried, by sink.",
            labels=["sink"],
        )
        rejected = CounterMetricFamily(
            "viralwatch_sink_rejected",
            "Alerts the receiver refused for good (HTTP 4xx), by sink.",
            labels=["sink"],
        )
        duplicates = CounterMetricFamily(
            "viralwatch_sink_duplicates",
            "Alerts handed to a sink again after delivery, not sent twice, by sink.",
            labels=["sink"],
        )
        for sink in self._owner.sinks():
            backlog.add_metric([sink.name], float(sink.backlog))
            delivered.add_metric([sink.name], float(sink.delivered))
            failures.add_metric([sink.name], float(sink.failures))
            rejected.add_metric([sink.name], float(sink.rejected))
            duplicates.add_metric([sink.name], float(sink.duplicates))
            if isinstance(sink, QueueStatus):
                capacity.add_metric([sink.name], float(sink.capacity))
                dropped.add_metric([sink.name], float(sink.dropped))
        yield from (backlog, capacity, delivered, failures, rejected, duplicates, dropped)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))


def _labelled_counter(
    name: str, documentation: str, label: str, values: dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], float(n))
    return family


def export_wire_version(registry: CollectorRegistry, version: int) -> None:
    """``viralwatch_wire_version_written``: the wire version this worker writes on the
    ``resolve`` and ``clusters`` topics (``VIRALWATCH_WIRE_VERSION``). During a rolling
    update's second step (README, "Rolling updates") ``min`` over the workers says
    whether any is still pinned.

    >>> registry = CollectorRegistry()
    >>> export_wire_version(registry, 1)
    >>> registry.get_sample_value("viralwatch_wire_version_written")
    1.0
    """
    gauge = Gauge(
        "viralwatch_wire_version_written",
        "The wire version this worker writes on the resolve and clusters topics.",
        registry=registry,
    )
    gauge.set(version)


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the text format, and its content type (for a web framework's view)."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def add_metrics(router: Router, registry: CollectorRegistry) -> None:
    """Serve ``registry`` at ``/metrics`` on ``router`` (Prometheus's text format).

    >>> from prometheus_client import CollectorRegistry, Counter
    >>> registry = CollectorRegistry()
    >>> Counter("x", "An example.", registry=registry).inc()
    >>> router = Router()
    >>> add_metrics(router, registry)
    >>> b"x_total 1.0" in router.handle("GET", "/metrics").body
    True
    """

    def metrics(request: Request) -> Response:
        body, content_type = exposition(registry)
        return Response(200, body, content_type)

    router.add("/metrics", metrics)
    registry.register(_HttpCollector(router))


class _HttpCollector(Collector):
    """The HTTP port's answers by route and status (:meth:`Router.answered`), at scrape time.

    Its labels are the routes' patterns (``/cascade/<cluster>``, never a cluster id) and
    the status codes: bounded sets.

    >>> from prometheus_client import CollectorRegistry
    >>> registry, router = CollectorRegistry(), Router()
    >>> add_metrics(router, registry)
    >>> router.handle("GET", "/cascade/b-1").status
    404
    >>> registry.get_sample_value(
    ...     "viralwatch_http_responses_total", {"route": "(none)", "code": "404"})
    1.0
    """

    def __init__(self, router: Router) -> None:
        self._router = router

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "viralwatch_http_responses",
            "Answers of the HTTP port (views, probes, /metrics), by route pattern and status: "
            "a view's refusals (4xx) and failures (5xx) among them.",
            labels=["route", "code"],
        )
        for (route, code), n in sorted(self._router.answered().items()):
            family.add_metric([route, str(code)], float(n))
        yield family


@dataclass
class MetricsServer:
    """A running ``/metrics`` (and ``/livez``) HTTP server; :meth:`stop` shuts it down."""

    host: str
    port: int
    _stop: Callable[[], None]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._stop()


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from threads of its own.

    ``port`` 0 picks a free port (see :attr:`MetricsServer.port`). The server
    is the worker's (:func:`streams.web.serve`), with ``/livez`` beside
    ``/metrics``; a port it cannot listen on raises
    :class:`streams.web.ServeError`.

    >>> from prometheus_client import CollectorRegistry
    >>> server = serve_metrics(CollectorRegistry(), 0)
    >>> server.port > 0
    True
    >>> server.stop()
    """
    router = Router()
    add_metrics(router, registry)
    add_probes(router, Health(()))
    server = serve(router, host, port)
    return MetricsServer(host, server.port, server.stop)
