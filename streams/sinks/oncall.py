"""What one process gives on-call: ``/metrics``, and alerts to Alertmanager and webhooks.

The command line (``replay``) and the streaming worker both build one
:class:`OnCall` from their settings and hand it every alert they emit; it
keeps the metrics registry, the HTTP server and the sinks together so that
starting and stopping them is one call each. None of its calls waits on the
network: each sink delivers from a thread of its own.

A worker also tells it which alerts it took over with a partition
(:meth:`OnCall.reannounce`) and which it handed over (:meth:`OnCall.release`),
so that Alertmanager and ``viralwatch_alerts_active`` follow the alerts from
worker to worker while webhooks, which page, hear each alert once.

:class:`Pacer` replays recorded events at a chosen speed of event time, so a
replay can be watched live (Prometheus scraping a velocity that rises and
falls, Alertmanager receiving a firing alert and later its resolution).

>>> from streams.stats import Stats
>>> oncall = OnCall(Stats())             # nothing asked for: no server, no sink
>>> oncall.emit([])
>>> oncall.close()
0

>>> from streams.alerts import Alert
>>> oncall = OnCall(Stats())
>>> oncall.reannounce([Alert("vw-1", "firing", "high", 0, "b-1", 0)])  # taken over
>>> oncall.metrics.active_by_severity()["high"]
1
>>> oncall.release(lambda cluster: cluster == "b-1")                    # handed over
>>> oncall.metrics.active_by_severity()["high"]
0
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry

from streams.alerts import Alert
from streams.metrics import Fastest, MetricsServer, PipelineMetrics, serve_metrics
from streams.sinks.alertmanager import AlertmanagerSink
from streams.sinks.base import AlertSink
from streams.sinks.webhook import WebhookSink
from streams.stats import Stats

log = logging.getLogger("viralwatch.oncall")


class OnCall:
    """Metrics (served when ``metrics_port`` is given) and alert sinks for one process.

    Parameters
    ----------
    stats
        The core's counters.
    fastest
        ``Detector.fastest``, for the per-cluster gauges.
    metrics_port
        Serve ``/metrics`` here (0: any free port, see :attr:`metrics_url`).
    metrics_host
        Interface to serve on; loopback unless told otherwise.
    alertmanager
        Alertmanager's base URL, or ``None``.
    webhook
        A webhook URL, or ``None``.
    webhook_secret
        HMAC key for the webhook's signature header (from the environment).
    repost_interval
        Seconds between re-posts of firing alerts to Alertmanager.
    sinks
        More sinks (already built), delivered to like the others.
    fed
        Sinks fed from elsewhere (a worker's webhook reads the ``alerts`` topic:
        :mod:`streams.runtime.alert_feed`): watched, started and closed here, never
        handed alerts by :meth:`emit`.
    """

    def __init__(
        self,
        stats: Stats,
        *,
        fastest: Fastest | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        alertmanager: str | None = None,
        webhook: str | None = None,
        webhook_secret: bytes | None = None,
        repost_interval: float = 60.0,
        sinks: Sequence[AlertSink] = (),
        fed: Sequence[AlertSink] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = PipelineMetrics(self.registry, stats, fastest=fastest)
        self.sinks: list[AlertSink] = list(sinks)
        if alertmanager:
            self.sinks.append(AlertmanagerSink(alertmanager, repost_interval=repost_interval))
        if webhook:
            self.sinks.append(WebhookSink(webhook, secret=webhook_secret))
        self.fed = list(fed)
        for sink in self.sinks + self.fed:
            self.metrics.watch_sink(sink)
        self.server: MetricsServer | None = None
        if metrics_port is not None:
            self.server = serve_metrics(self.registry, metrics_port, metrics_host)
        for sink in self.sinks + self.fed:
            sink.start(interval=min(1.0, repost_interval / 4))

    @property
    def metrics_url(self) -> str | None:
        return self.server.url if self.server else None

    def emit(self, alerts: Sequence[Alert]) -> None:
        """Alerts leaving the process: counted, then handed to every sink."""
        if not alerts:
            return
        self.metrics.observe_alerts(alerts)
        for sink in self.sinks:
            sink.send(alerts)

    def reannounce(self, alerts: Sequence[Alert]) -> None:
        """Alerts a partition's previous owner sent, as this worker rebuilt them.

        Counted active again and handed to every sink's
        :meth:`~streams.sinks.base.AlertSink.reannounce` (Alertmanager keeps
        them alive; a webhook ignores them: it must not page twice).
        """
        if not alerts:
            return
        self.metrics.observe_alerts(alerts, again=True)
        for sink in self.sinks:
            sink.reannounce(alerts)

    def release(self, clusters: Callable[[str], bool]) -> None:
        """This worker no longer owns these clusters: stop counting and re-posting their alerts."""
        self.metrics.release(clusters)
        for sink in self.sinks:
            sink.release(clusters)

    def hold(self, seconds: float) -> None:
        """Keep serving (and re-posting, and retrying) for ``seconds``."""
        if seconds > 0:
            time.sleep(seconds)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is pending (for up to ``timeout`` s each), stop; return the undelivered."""
        left = sum(sink.close(timeout) for sink in self.sinks + self.fed)
        if self.server is not None:
            self.server.stop()
            self.server = None
        return left


class Pacer:
    """Sleeps so that event time advances ``speed`` times faster than the wall clock.

    >>> now = [0.0]
    >>> def sleep(seconds): now[0] += seconds
    >>> p = Pacer(60.0, clock=lambda: now[0], sleep=sleep)
    >>> p.wait(1_000_000); p.wait(1_060_000); now[0]   # a minute of event time: 1 s
    1.0
    >>> p.wait(1_030_000); now[0]                      # an earlier event: no wait
    1.0
    """

    def __init__(
        self,
        speed: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not speed > 0:
            raise ValueError("speed must be > 0 (event-time seconds per wall-clock second)")
        self.speed = speed
        self._clock = clock
        self._sleep = sleep
        self._origin: tuple[int, float] | None = None

    def wait(self, event_ms: int) -> None:
        """Return when the wall clock has caught up with ``event_ms`` at this speed."""
        if self._origin is None:
            self._origin = (event_ms, self._clock())
            return
        first_ms, started = self._origin
        due = started + (event_ms - first_ms) / 1000 / self.speed
        delay = due - self._clock()
        if delay > 0:
            self._sleep(delay)
