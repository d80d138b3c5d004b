"""The Alertmanager sink: spread alerts into Alertmanager's v2 API.

Alertmanager identifies an alert by its labels, so the labels here are the
alert's identity and routing keys only: ``alertname="ViralwatchSpread"``,
``severity``, ``bank`` and ``cluster`` (no user, no post). Everything on-call
reads (summary, figures, links, the alert id) goes in annotations.

Alertmanager forgets a firing alert at its ``endsAt``. Each post of a firing
alert sets ``endsAt`` a little ahead (``validity``), and the sink re-posts
every firing alert each ``repost_interval`` (from its delivery thread) until
the alert resolves; a resolved alert is posted with its ``endsAt``.

The set of firing alerts lives in this process, so it is handed over with
the partitions: the worker that takes a clusters partition over (after a
crash, a rolling restart, a rebalance) rebuilds the detector from the
changelog and passes its firing alerts to :meth:`AlertmanagerSink.reannounce`
before their ``endsAt`` passes; the worker that loses one calls
:meth:`AlertmanagerSink.release`. Alertmanager identifies an alert by its
labels, so a post of an alert it holds only extends it: nothing shows twice.

What Alertmanager is never told: that labels it holds firing resolved while
this sink keeps them firing. A resolution of an older episode with the same
labels (cluster, severity, bank) as an alert firing now is not posted (it is
counted delivered: Alertmanager's view is already right), since Alertmanager
would take it as the end of the alert that is still firing.

Times: ``startsAt`` and ``endsAt`` are the alert's event times, kept no later
than the wall clock (Alertmanager reads a future ``endsAt`` as still firing).

>>> from streams.sinks.base import HttpResponse
>>> posted = []
>>> def transport(url, body, headers, timeout):
...     posted.append((url, orjson.loads(body)))
...     return HttpResponse(200)
>>> sink = AlertmanagerSink("http://am:9093", transport=transport, wall_clock=lambda: 1767225900.0)
>>> from streams.alerts import Alert, MatchInfo
>>> fire = Alert("vw-1", "firing", "high", 1767225600000, "b-1", 1767225500000,
...              match=MatchInfo("stopncii", "pdq", "ab" * 32, 3))
>>> sink.send([fire])
>>> sink.flush()       # the delivery thread's work (see sink.start)
0
>>> url, [am] = posted[0]
>>> url
'http://am:9093/api/v2/alerts'
>>> sorted(am["labels"].items())
[('alertname', 'ViralwatchSpread'), ('bank', 'stopncii'), ('cluster', 'b-1'), ('severity', 'high')]
>>> am["startsAt"], am["endsAt"]
('2026-01-01T00:00:00.000Z', '2026-01-01T00:09:00.000Z')
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from streams.alerts import Alert, rfc3339
from streams.settings import parse_post_url
from streams.sinks.base import AlertSink, Outcome, Refused, Retry, figures, summary

ALERTNAME = "ViralwatchSpread"

log = logging.getLogger("viralwatch.sinks")


def _identity(alert: Alert) -> tuple[str, str, str]:
    """What Alertmanager tells alerts apart by (the labels this sink sets)."""
    return (alert.severity, alert.match.bank if alert.match else "unbanked", alert.cluster_id)


#: Where Alertmanager takes posted alerts, under its base URL.
API_PATH = "/api/v2/alerts"


def endpoint(url: str) -> str:
    """The URL alerts are posted to: ``url`` is Alertmanager's base URL, or the endpoint
    itself. Given the endpoint (what Alertmanager's API documentation shows), the sink had
    appended it again, and Alertmanager answered every post 404: a refusal, so every alert
    was dropped as refused for good.

    >>> endpoint("http://am:9093"), endpoint("http://ops/alertmanager/")
    ('http://am:9093/api/v2/alerts', 'http://ops/alertmanager/api/v2/alerts')
    >>> endpoint("http://am:9093/api/v2/alerts/")
    'http://am:9093/api/v2/alerts'
    """
    base = url.rstrip("/")
    return base if base.endswith(API_PATH) else base + API_PATH


class AlertmanagerSink(AlertSink):
    """Posts alerts to ``{url}/api/v2/alerts`` and keeps the firing ones alive.

    Parameters
    ----------
    url
        Alertmanager's base URL (``http://alertmanager:9093``, or under a route prefix
        ``http://ops/alertmanager``), or its endpoint itself (``.../api/v2/alerts``):
        both post to the endpoint (see :func:`endpoint`).
    repost_interval
        Seconds between re-posts of each firing alert; keep it well under
        Alertmanager's ``resolve_timeout``.
    validity
        How far ahead of now a firing post's ``endsAt`` is (default four
        re-post intervals, as Prometheus does).
    wall_clock
        Unix seconds (``time.time``), for ``startsAt``/``endsAt``.
    extra_labels
        Constant labels on every alert (``{"env": "prod"}``); must not
        contain a per-user or per-post value.
    **kwargs
        Passed to :class:`~streams.sinks.base.AlertSink` (transport, clock,
        backoff, timeout, capacity, batch_size).
    """

    drop_means = (
        "a dropped firing alert is still re-posted (it stays in the re-post set); a dropped "
        "resolution reaches Alertmanager as the alert's endsAt timeout (validity)"
    )

    def __init__(
        self,
        url: str,
        *,
        name: str = "alertmanager",
        repost_interval: float = 60.0,
        validity: float | None = None,
        wall_clock: Callable[[], float] = time.time,
        extra_labels: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        parse_post_url("Alertmanager", url)
        if repost_interval <= 0:
            raise ValueError("repost_interval must be > 0")
        self.url = endpoint(url)
        self._repost = repost_interval
        self._validity = validity if validity is not None else 4 * repost_interval
        if self._validity <= repost_interval:
            raise ValueError("validity must be longer than repost_interval")
        self._wall = wall_clock
        self._extra = dict(extra_labels or {})
        self._active: dict[str, Alert] = {}  # alert_id -> firing alert
        self._starts: dict[str, int] = {}  # alert_id -> firing event time, until resolved
        self._last_repost = -math.inf
        self._asked = 0  # re-posts asked for at once (re-announces): a post under way keeps them

    @property
    def active(self) -> int:
        """Firing alerts this sink keeps alive in Alertmanager."""
        with self._queue_lock:
            return len(self._active)

    def reannounce(self, alerts: Sequence[Alert]) -> None:
        """Take back alerts a partition's previous owner sent (in the order they were made).

        A firing one joins the re-post set (unless this sink already knows its
        resolution) and all of them are posted in the next round, so
        Alertmanager hears them again before their ``endsAt``. A resolved one
        leaves the set and is posted too, unless this sink delivered it
        already: the previous owner may have died before it could.
        """
        news = False
        with self._queue_lock:
            for alert in alerts:
                if alert.status == "firing":
                    if self._known(alert.alert_id + ":resolved"):
                        continue
                    news |= self._active.get(alert.alert_id) is None
                    self._active[alert.alert_id] = alert
                    self._starts.setdefault(alert.alert_id, alert.ts_ms)
                else:
                    self._active.pop(alert.alert_id, None)
                    if not self._known(alert.dedupe_key):
                        self._pending[alert.dedupe_key] = alert
            if news:
                self._last_repost = -math.inf  # post what is firing now, in the next round
                self._asked += 1
        self.send([])  # wakes the delivery thread; keeps the queue within its capacity

    def release(self, clusters: Callable[[str], bool]) -> int:
        """Stop re-posting the firing alerts of these clusters (their new owner re-announces)."""
        with self._queue_lock:
            gone = [aid for aid, a in self._active.items() if clusters(a.cluster_id)]
            for aid in gone:
                del self._active[aid]
                self._starts.pop(aid, None)
        if gone:
            log.info(
                "sink %s: %d firing alert(s) handed over with their partitions",
                self.name,
                len(gone),
            )
        return len(gone)

    def _known(self, key: str) -> bool:
        return key in self._pending or key in self._done

    def _accepted(self, alert: Alert) -> None:
        if alert.status == "firing":
            self._active[alert.alert_id] = alert
            self._starts.setdefault(alert.alert_id, alert.ts_ms)
        else:
            self._active.pop(alert.alert_id, None)

    def _forgot(self, dropped: list[Alert]) -> None:
        for alert in dropped:
            if alert.status == "resolved":
                self._starts.pop(alert.alert_id, None)

    def _has_periodic_work(self, now: float) -> bool:
        return bool(self._active) and now - self._last_repost >= self._repost

    def _next_periodic(self) -> float:
        return self._last_repost + self._repost if self._active else math.inf

    def _deliver(self, batch: list[Alert], now: float) -> Outcome:
        with self._queue_lock:
            due = now - self._last_repost >= self._repost
            asked = self._asked
            queued = {a.alert_id for a in self._pending.values()}  # posted when their turn comes
            repost = [a for a in self._active.values() if a.alert_id not in queued] if due else []
            firing = {_identity(a): a.alert_id for a in self._active.values()}
            starts = dict(self._starts)
        # an older episode's resolution must not end the same labels firing now
        stale = [
            a
            for a in batch
            if a.status == "resolved" and firing.get(_identity(a), a.alert_id) != a.alert_id
        ]
        if stale:
            batch = [a for a in batch if a not in stale]
        if not batch and not repost:
            return Outcome(delivered=stale)
        wall_ms = int(self._wall() * 1000)
        # queued first, re-posts last: what is firing now is the last word for its labels
        body = orjson.dumps([self.to_am(a, wall_ms, starts) for a in [*batch, *repost]])
        try:
            self._post(self.url, body, {})
        except Retry as err:
            return Outcome(delivered=stale, retry=str(err))
        except Refused as err:
            if len(batch) + len(repost) == 1:
                outcome = Outcome(refused=[(batch[0], str(err))] if batch else [])
            else:
                outcome = self._one_by_one(batch, wall_ms, starts)
        else:
            outcome = Outcome(delivered=batch)
        with self._queue_lock:
            # a refused re-post is not retried at once either: it waits for the next interval
            if due and asked == self._asked:  # else a re-announce came during the post
                self._last_repost = now
        outcome.delivered.extend(stale)
        with self._queue_lock:
            done = outcome.delivered + [a for a, _ in outcome.refused]
            for alert in done:
                if alert.status == "resolved":
                    self._starts.pop(alert.alert_id, None)
            for alert, _ in outcome.refused:  # refused for good: re-posting cannot help
                if self._active.get(alert.alert_id) is alert:
                    del self._active[alert.alert_id]
        return outcome

    def _one_by_one(self, batch: list[Alert], wall_ms: int, starts: dict[str, int]) -> Outcome:
        """Isolate what Alertmanager refused (it refuses a whole post for one bad alert)."""
        return self._each(
            batch,
            lambda a: self._post(self.url, orjson.dumps([self.to_am(a, wall_ms, starts)]), {}),
        )

    def to_am(
        self, alert: Alert, wall_ms: int, starts: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """The alert as Alertmanager's v2 ``postableAlert``.

        ``starts`` maps alert ids to their firing event time; a resolution
        this process did not see fire starts at the cluster's first sighting.
        """
        start = (starts or {}).get(alert.alert_id, alert.ts_ms)
        if alert.status == "resolved":
            start = (starts or {}).get(alert.alert_id, alert.first_seen_ms)
        starts_ms = min(start, wall_ms)
        if alert.status == "resolved":
            ends_ms = max(starts_ms, min(alert.ts_ms, wall_ms))
        else:
            ends_ms = wall_ms + int(self._validity * 1000)
        links = dict(alert.links)
        labels = {
            **self._extra,
            "alertname": ALERTNAME,
            "severity": alert.severity,
            "bank": alert.match.bank if alert.match else "unbanked",
            "cluster": alert.cluster_id,
        }
        annotations = {
            "summary": summary(alert),
            "figures": figures(alert),
            "alert_id": alert.alert_id,
            "episode": str(alert.episode),
            "first_seen": rfc3339(alert.first_seen_ms),
            "event_time": rfc3339(alert.ts_ms),
        }
        if alert.reason:
            annotations["reason"] = alert.reason
        if alert.match is not None:
            annotations["match"] = f"{alert.match.signal_type} distance {alert.match.distance}" + (
                f" ({alert.match.label})" if alert.match.label else ""
            )
        for key in ("runbook", "dashboard", "cascade"):
            if links.get(key):
                annotations[f"{key}_url"] = links[key]
        out: dict[str, Any] = {
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(starts_ms),
            "endsAt": rfc3339(ends_ms),
        }
        if links.get("cascade"):
            out["generatorURL"] = links["cascade"]
        return out
