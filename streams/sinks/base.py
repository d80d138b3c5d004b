"""The sink base: a pending queue, deduplication, and backoff while the receiver is down.

An alert handed to a sink is either delivered, refused by the receiver for
good (an HTTP 4xx: logged and counted, as bad input is), or still pending;
nothing is dropped quietly. Pending alerts keep their order, so a receiver
never hears that an alert resolved before it heard it fire. Deliveries are
remembered by :attr:`~streams.alerts.Alert.dedupe_key`, so an alert handed
over twice (a redelivered event, a replayed partition) is sent once.

Delivery is synchronous and short (a timeout per request). :meth:`send`
tries at once; :meth:`start` runs a small thread that retries and does the
sink's periodic work (the Alertmanager sink re-posts firing alerts);
:meth:`close` keeps trying for a while before the process exits.

>>> calls = []
>>> def transport(url, body, headers, timeout):
...     calls.append(url)
...     return HttpResponse(200 if len(calls) > 1 else 503)
>>> class Probe(AlertSink):
...     def _deliver(self, batch, now):
...         try:
...             self._post("http://receiver/", b"{}", {})
...         except Retry as err:
...             return Outcome(retry=str(err))
...         return Outcome(delivered=batch)
>>> clock = [0.0]
>>> sink = Probe("probe", transport=transport, clock=lambda: clock[0])
>>> from streams.alerts import Alert
>>> a = Alert("vw-1", "firing", "high", 0, "b-1", 0)
>>> sink.send([a])                # the receiver answers 503: kept, retried later
>>> sink.backlog, sink.failures
(1, 1)
>>> clock[0] = 1.0
>>> sink.flush()                  # after the backoff delay: delivered
0
>>> sink.send([a])                # the same alert again: not sent twice
>>> sink.delivered, sink.duplicates, len(calls)
(1, 1, 2)
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from streams.alerts import Alert

log = logging.getLogger("viralwatch.sinks")


def figures(alert: Alert) -> str:
    """The cascade's figures on one line, for an annotation or a chat message."""
    c = alert.cascade
    text = (
        f"size={c.size} live={c.live} uploads={c.roots} users={c.unique_users} "
        f"depth={c.depth} breadth={c.breadth} virality={c.structural_virality:.2f} "
        f"velocity/min 1m={c.velocity_1m:.1f} 5m={c.velocity_5m:.1f} 15m={c.velocity_15m:.1f}"
    )
    p = c.predicted_final_size
    if p is not None:
        text += f" predicted={p.size:.0f} [{p.low:.0f}, {p.high:.0f}]"
    return text


def summary(alert: Alert) -> str:
    """One line saying what is spreading and how fast."""
    c = alert.cascade
    bank = alert.match.bank if alert.match else "unbanked"
    return (
        f"{alert.severity}: {bank} content spreading, {c.velocity_5m:.0f} shares/min "
        f"over 5m, {c.size} posts ({c.live} live)"
    )


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What a transport returns: the status and (the start of) the body."""

    status: int
    body: bytes = b""


#: ``transport(url, body, headers, timeout)``: POST and return the response;
#: raise ``OSError`` (``URLError``, a timeout) when the receiver cannot be reached.
Transport = Callable[[str, bytes, Mapping[str, str], float], HttpResponse]


def urllib_transport(
    url: str, body: bytes, headers: Mapping[str, str], timeout: float
) -> HttpResponse:
    """POST with the standard library; HTTP errors come back as a response, not raised."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResponse(response.status, response.read(4096))
    except urllib.error.HTTPError as err:
        return HttpResponse(err.code, err.read(4096) if err.fp else b"")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff between failed attempts: ``initial * factor**(n-1)``, capped.

    >>> [Backoff(initial=1, factor=2, maximum=5).delay(n) for n in (1, 2, 3, 4)]
    [1.0, 2.0, 4.0, 5.0]
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial:
            raise ValueError("backoff needs initial > 0, factor >= 1, maximum >= initial")

    def delay(self, failures: int) -> float:
        return float(min(self.maximum, self.initial * self.factor ** max(0, failures - 1)))


class Retry(Exception):
    """The receiver is unreachable or busy (connection error, timeout, 5xx, 408, 429)."""


class Refused(Exception):
    """The receiver refused the request for good (any other 4xx); retrying cannot help."""


@dataclass
class Outcome:
    """What one delivery round did."""

    delivered: list[Alert] = field(default_factory=list)
    refused: list[tuple[Alert, str]] = field(default_factory=list)
    retry: str | None = None  # why the rest stays pending (the receiver is down)


class AlertSink(ABC):
    """A destination for alerts, with a pending queue and retry.

    Parameters
    ----------
    name
        The sink's name in metrics and logs (``alertmanager``, ``webhook``...).
    transport
        The HTTP client; :func:`urllib_transport` by default.
    clock
        Monotonic seconds (for backoff and periodic work).
    backoff
        Delays between failed attempts.
    timeout
        Seconds per HTTP request.
    remember
        How many delivered dedupe keys are remembered (oldest forgotten first).
    """

    def __init__(
        self,
        name: str,
        *,
        transport: Transport = urllib_transport,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        timeout: float = 5.0,
        remember: int = 100_000,
    ) -> None:
        if not name:
            raise ValueError("a sink needs a name")
        if timeout <= 0 or remember < 1:
            raise ValueError("timeout must be > 0 and remember >= 1")
        self.name = name
        self._transport = transport
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._timeout = timeout
        self._remember = remember
        self._queue_lock = threading.Lock()  # guards the queue and counters
        self._deliver_lock = threading.Lock()  # one delivery round at a time
        self._pending: OrderedDict[str, Alert] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._failures_in_row = 0
        self._next_attempt = 0.0
        self.delivered = 0
        self.failures = 0
        self.rejected = 0
        self.duplicates = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- what callers use -------------------------------------------------

    @property
    def backlog(self) -> int:
        """Alerts accepted and not yet delivered."""
        with self._queue_lock:
            return len(self._pending)

    def send(self, alerts: Sequence[Alert]) -> None:
        """Accept alerts (deduplicated) and try to deliver them now."""
        with self._queue_lock:
            for alert in alerts:
                key = alert.dedupe_key
                if key in self._pending or key in self._done:
                    self.duplicates += 1
                    continue
                self._pending[key] = alert
                self._accepted(alert)
        self.flush(wait=False)

    def flush(self, *, wait: bool = True) -> int:
        """Deliver what is due (pending alerts once the backoff allows, periodic work).

        Returns the backlog. With ``wait=False`` it returns at once when
        another thread is delivering (that thread will see the new alerts).
        """
        if not self._deliver_lock.acquire(blocking=wait):
            return self.backlog
        try:
            now = self._clock()
            if now < self._next_attempt:
                return self.backlog
            with self._queue_lock:
                batch = list(self._pending.values())
            if not batch and not self._has_periodic_work(now):
                return 0
            outcome = self._deliver(batch, now)
            with self._queue_lock:
                for alert in outcome.delivered:
                    if self._forget_pending(alert):
                        self.delivered += 1
                for alert, detail in outcome.refused:
                    if self._forget_pending(alert):
                        self._refused(alert, detail)
            if outcome.retry is not None:
                self._failed(now, outcome.retry)
            else:
                self._failures_in_row = 0
                self._next_attempt = 0.0
            return self.backlog
        finally:
            self._deliver_lock.release()

    def start(self, interval: float = 1.0) -> None:
        """Retry and do periodic work every ``interval`` seconds on a daemon thread."""
        if self._thread is not None:
            return
        self._stopping.clear()

        def run() -> None:
            while not self._stopping.wait(interval):
                try:
                    self.flush()
                except Exception:  # a bug must not silently stop retries: log, keep going
                    log.exception("sink %s: delivery round failed", self.name)

        self._thread = threading.Thread(target=run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (pending alerts stay pending)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 5)
            self._thread = None

    def close(self, timeout: float = 10.0) -> int:
        """Stop, then keep delivering for up to ``timeout`` seconds; returns what is left.

        What is left is logged as an error: those alerts were not delivered.
        """
        self.stop()
        deadline = time.monotonic() + timeout
        left = self.flush()
        while left and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            left = self.flush()
        if left:
            log.error(
                "sink %s: %d alert(s) not delivered at close (receiver unreachable)",
                self.name,
                left,
            )
        return left

    # -- what subclasses implement ----------------------------------------

    @abstractmethod
    def _deliver(self, batch: list[Alert], now: float) -> Outcome:
        """Deliver ``batch`` (pending, oldest first) and periodic work; say what happened.

        Alerts neither delivered nor refused stay pending; set
        :attr:`Outcome.retry` to back off before the next attempt.
        """

    def _accepted(self, alert: Alert) -> None:
        """Hook: an alert entered the queue (called with the queue lock held)."""
        return None

    def _has_periodic_work(self, now: float) -> bool:
        return False

    # -- helpers for subclasses -------------------------------------------

    def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST; return a 2xx response, raise :class:`Retry` or :class:`Refused`."""
        all_headers = {"Content-Type": "application/json", "User-Agent": "viralwatch"}
        all_headers.update(headers)
        try:
            response = self._transport(url, body, all_headers, self._timeout)
        except OSError as err:
            raise Retry(f"{type(err).__name__}: {err}") from err
        if 200 <= response.status < 300:
            return response
        detail = f"HTTP {response.status}: {response.body[:300]!r}"
        if response.status >= 500 or response.status in (408, 429):
            raise Retry(detail)
        raise Refused(detail)

    def _refused(self, alert: Alert, detail: str) -> None:
        self.rejected += 1
        log.error(
            "sink %s: receiver refused alert %s (%s, cluster %s): %s",
            self.name,
            alert.alert_id,
            alert.status,
            alert.cluster_id,
            detail,
        )

    def _failed(self, now: float, detail: str) -> None:
        self.failures += 1
        self._failures_in_row += 1
        delay = self._backoff.delay(self._failures_in_row)
        self._next_attempt = now + delay
        log.warning(
            "sink %s: delivery failed (%s); %d pending, retry in %.1fs",
            self.name,
            detail,
            self.backlog,
            delay,
        )

    def _forget_pending(self, alert: Alert) -> bool:
        key = alert.dedupe_key
        if self._pending.pop(key, None) is None:
            return False
        self._done[key] = None
        while len(self._done) > self._remember:
            self._done.popitem(last=False)
        return True
