"""The sink base: a bounded queue, a delivery thread, deduplication, backoff and retry.

Why a thread: every stage of a worker shares one asyncio event loop, and an
HTTP post to a receiver that is slow or gone (a 5 s timeout, retried) would
stall all of them. So :meth:`AlertSink.send` only puts alerts in the sink's
queue and returns; one delivery thread per sink (:meth:`~AlertSink.start`)
posts them, retries with exponential backoff, and does the sink's periodic
work (the Alertmanager sink re-posts firing alerts). :meth:`~AlertSink.close`
lets that thread drain the queue for a bounded time.

An alert handed to a sink is delivered, refused by the receiver for good (an
HTTP 4xx: logged and counted, as bad input is), still queued, or dropped
because the queue was full (the oldest go first, as Prometheus's notifier
does: counted in ``viralwatch_sink_dropped_total`` and logged, and each sink
says what a drop costs: :attr:`AlertSink.drop_means`). Queued alerts keep
their order, so a receiver never hears that an alert resolved before it heard
it fire. Deliveries are remembered by :attr:`~streams.alerts.Alert.dedupe_key`,
so an alert handed over twice (a redelivered event, a replayed partition) is
sent once.

A worker that takes a partition over rebuilds its alerts' state and hands the
ones already sent to :meth:`AlertSink.reannounce`: a sink that keeps alerts
alive (Alertmanager) takes them back, one that delivers each alert once (a
webhook that pages) ignores them. :meth:`AlertSink.release` is the other
half: a partition revoked from this worker is no longer kept alive here.

Without :meth:`~AlertSink.start` nothing is delivered until :meth:`~AlertSink.flush`
is called: deterministic, for tests with a scripted transport and clock.

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
>>> sink.send([a])                # queued: send never posts
>>> sink.backlog, len(calls)
(1, 0)
>>> sink.flush()                  # the receiver answers 503: kept, retried later
1
>>> sink.failures
1
>>> clock[0] = 1.0
>>> sink.flush()                  # after the backoff delay: delivered
0
>>> sink.send([a])                # the same alert again: not sent twice
>>> sink.flush(), sink.delivered, sink.duplicates, len(calls)
(0, 1, 1, 2)
"""

from __future__ import annotations

import http.client
import itertools
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from streams.alerts import Alert, duration_text

log = logging.getLogger("viralwatch.sinks")

#: Alerts a sink's queue holds before the oldest are dropped (Prometheus's notifier: 10,000).
DEFAULT_CAPACITY = 10_000
#: Alerts per delivery round: one post to Alertmanager, one by one to a webhook.
DEFAULT_BATCH = 500
#: At most one "queue full" line per this many seconds (the counter has every drop).
DROP_LOG_EVERY_S = 10.0
#: The delivery thread's shortest sleep between rounds it was not woken for.
MIN_WAIT_S = 0.05


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
        if p.horizon_s is not None:
            text += f" within {duration_text(p.horizon_s)}"
        text += p.bracket
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
#: raise ``OSError`` (``URLError``, a timeout) when the receiver cannot be reached, or
#: ``http.client.HTTPException`` when what it answered is no HTTP.
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
    retry: str | None = None  # why the rest stays queued (the receiver is down)


class AlertSink(ABC):
    """A destination for alerts: a bounded queue and one delivery thread.

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
    capacity
        Alerts the queue holds; beyond it the oldest are dropped (counted, logged).
    batch_size
        Alerts taken from the queue per delivery round.
    """

    #: What dropping an alert from the full queue costs, for the log line.
    drop_means = "those alerts are not delivered by this sink (the alerts topic has them)"

    def __init__(
        self,
        name: str,
        *,
        transport: Transport = urllib_transport,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        timeout: float = 5.0,
        remember: int = 100_000,
        capacity: int = DEFAULT_CAPACITY,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        if not name:
            raise ValueError("a sink needs a name")
        if timeout <= 0 or remember < 1:
            raise ValueError("timeout must be > 0 and remember >= 1")
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be >= 1")
        self.name = name
        self.capacity = capacity
        self._transport = transport
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._timeout = timeout
        self._remember = remember
        self._batch = batch_size
        self._queue_lock = threading.Lock()  # guards the queue, the sink's state, the counters
        self._deliver_lock = threading.Lock()  # one delivery round at a time
        self._pending: OrderedDict[str, Alert] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._failures_in_row = 0
        self._next_attempt = 0.0
        self.delivered = 0
        self.failures = 0
        self.rejected = 0
        self.duplicates = 0
        self.dropped = 0
        self._drops_unlogged = 0
        self._drop_logged_at = -math.inf
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._drain_until = math.inf  # time.monotonic() deadline once stopping

    # -- what callers use (any thread; none of these does network I/O) ------

    @property
    def backlog(self) -> int:
        """Alerts queued and not yet delivered: the queue's depth."""
        with self._queue_lock:
            return len(self._pending)

    def send(self, alerts: Sequence[Alert]) -> None:
        """Queue alerts for delivery (deduplicated) and return at once."""
        dropped: list[Alert] = []
        with self._queue_lock:
            for alert in alerts:
                key = alert.dedupe_key
                if key in self._pending or key in self._done:
                    self.duplicates += 1
                    continue
                self._pending[key] = alert
                self._accepted(alert)
            while len(self._pending) > self.capacity:
                dropped.append(self._pending.popitem(last=False)[1])
            self.dropped += len(dropped)
        self._wake.set()
        if dropped:
            self._overflowed(dropped)

    def reannounce(self, alerts: Sequence[Alert]) -> None:
        """Alerts this process did not make, already sent by a partition's previous owner.

        A worker that took a partition over rebuilt its state and hands its
        firing alerts (and alerts it made again while rebuilding) here, in
        the order they were made. This base delivers each alert once, so it
        ignores them: a webhook that pages must not page twice. The
        Alertmanager sink takes them back (see its class doc).
        """
        return None

    def release(self, clusters: Callable[[str], bool]) -> int:
        """Stop keeping alive the alerts of the clusters for which ``clusters(id)`` is true.

        Called when this worker loses their partition: their new owner
        re-announces them. Returns how many alerts were let go (0 here).
        """
        return 0

    def flush(self, *, wait: bool = True) -> int:
        """Deliver what is due now, on the calling thread; returns the backlog.

        The delivery thread calls this; tests call it directly. Rounds of up
        to ``batch_size`` alerts go out until the queue is empty or the
        receiver fails (then nothing more until the backoff delay has
        passed). With ``wait=False`` it returns at once when another thread
        is delivering.
        """
        if not self._deliver_lock.acquire(blocking=wait):
            return self.backlog
        try:
            while True:
                now = self._clock()
                if now < self._next_attempt:
                    break
                with self._queue_lock:
                    batch = list(itertools.islice(self._pending.values(), self._batch))
                if not batch and not self._has_periodic_work(now):
                    break
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
                    break
                self._failures_in_row = 0
                self._next_attempt = 0.0
                if len(outcome.delivered) + len(outcome.refused) == 0:
                    break  # periodic work only, or nothing could be done: not a loop
            return self.backlog
        finally:
            self._deliver_lock.release()

    def start(self, interval: float = 1.0) -> None:
        """Start the delivery thread; it wakes on :meth:`send`, when a retry or periodic
        work is due, and at least every ``interval`` seconds."""
        if interval <= 0:
            raise ValueError("interval must be > 0")
        if self._thread is not None:
            if not self._stopping.is_set():
                return
            self._thread.join(timeout=self._timeout + 1)  # a stop still finishing its post
        self._stopping.clear()
        self._drain_until = math.inf
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name=f"sink-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the delivery thread without draining (queued alerts stay queued)."""
        self._finish(0.0)

    def close(self, timeout: float = 10.0) -> int:
        """Drain the queue for up to ``timeout`` seconds, stop; returns what is left.

        The first attempt is made at once whatever the backoff; what is left
        at the end is logged as an error: those alerts were not delivered.
        """
        if self._thread is None:
            self.start()
        self._next_attempt = 0.0
        self._finish(timeout)
        left = self.backlog
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
        """Deliver ``batch`` (queued, oldest first) and periodic work; say what happened.

        Runs on the delivery thread. Alerts neither delivered nor refused stay
        queued; set :attr:`Outcome.retry` to back off before the next attempt.
        """

    def _accepted(self, alert: Alert) -> None:
        """Hook: an alert entered the queue (called with the queue lock held)."""
        return None

    def _has_periodic_work(self, now: float) -> bool:
        return False

    def _next_periodic(self) -> float:
        """When (``clock`` seconds) periodic work is next due; ``inf``: none."""
        return math.inf

    # -- the delivery thread ------------------------------------------------

    def _run(self, interval: float) -> None:
        while True:
            self._wake.wait(self._wait_s(interval))
            self._wake.clear()  # before reading the queue: a send after this wakes us again
            if self._stopping.is_set() and (
                self.backlog == 0 or time.monotonic() >= self._drain_until
            ):
                return
            try:
                self.flush()
            except Exception as err:  # a bug must not silently stop delivery: log, back off
                log.exception("sink %s: delivery round failed", self.name)
                self._failed(self._clock(), f"{type(err).__name__} in the sink")
            self._log_drops()

    def _wait_s(self, interval: float) -> float:
        """How long the thread may sleep: until a retry, periodic work or the drain's end."""
        now = self._clock()
        due = self._next_periodic()
        with self._queue_lock:
            if self._pending:
                due = min(due, self._next_attempt)
        # never a busy loop, whatever a subclass reports (a send wakes the thread at once)
        wait = min(interval, max(MIN_WAIT_S, due - now))
        if self._stopping.is_set():
            wait = min(wait, max(0.0, self._drain_until - time.monotonic()))
        return wait

    def _finish(self, timeout: float) -> None:
        thread = self._thread
        if thread is None:
            return
        self._drain_until = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        # a post under way may outlast the drain by up to one request timeout: not waited for
        thread.join(timeout=max(0.0, timeout) + 0.5)
        if not thread.is_alive():
            self._thread = None

    # -- helpers for subclasses -------------------------------------------

    def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST; return a 2xx response, raise :class:`Retry` or :class:`Refused`."""
        all_headers = {"Content-Type": "application/json", "User-Agent": "viralwatch"}
        all_headers.update(headers)
        try:
            response = self._transport(url, body, all_headers, self._timeout)
        except (OSError, http.client.HTTPException) as err:  # unreachable, or no HTTP answer
            raise Retry(f"{type(err).__name__}: {err}") from err
        if 200 <= response.status < 300:
            return response
        detail = f"HTTP {response.status}: {response.body[:300]!r}"
        if response.status >= 500 or response.status in (408, 429):
            raise Retry(detail)
        raise Refused(detail)

    def _each(self, batch: list[Alert], post: Callable[[Alert], object]) -> Outcome:
        """``post`` each alert of ``batch`` on its own, in order: one refused for good is set
        aside, and a receiver that is down (:class:`Retry`) ends the round: the alerts
        after it wait too (a receiver must not hear "resolved" before "firing")."""
        outcome = Outcome()
        for alert in batch:
            try:
                post(alert)
            except Retry as err:
                outcome.retry = str(err)
                break
            except Refused as err:
                outcome.refused.append((alert, str(err)))
            else:
                outcome.delivered.append(alert)
        return outcome

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
            "sink %s: delivery failed (%s); %d queued, retry in %.1fs",
            self.name,
            detail,
            self.backlog,
            delay,
        )

    def _overflowed(self, dropped: list[Alert]) -> None:
        with self._queue_lock:
            self._drops_unlogged += len(dropped)
            self._forgot(dropped)
        self._log_drops()

    def _forgot(self, dropped: list[Alert]) -> None:
        """Hook: alerts dropped from the full queue (called with the queue lock held)."""
        return None

    def _log_drops(self) -> None:
        """One warning per :data:`DROP_LOG_EVERY_S` at most, with the count since the last."""
        now = time.monotonic()
        with self._queue_lock:
            n = self._drops_unlogged
            if not n or now - self._drop_logged_at < DROP_LOG_EVERY_S:
                return
            self._drops_unlogged = 0
            self._drop_logged_at = now
            total = self.dropped
        log.warning(
            "sink %s: queue full (%d alerts, receiver slow or down): dropped the %d oldest "
            "(%d in all); %s",
            self.name,
            self.capacity,
            n,
            total,
            self.drop_means,
        )

    def _forget_pending(self, alert: Alert) -> bool:
        key = alert.dedupe_key
        if self._pending.pop(key, None) is None:
            return False
        self._done[key] = None
        while len(self._done) > self._remember:
            self._done.popitem(last=False)
        return True
