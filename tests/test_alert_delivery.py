"""Alerts follow their partition from worker to worker: the worker's hooks, without Kafka.

Two :class:`streams.runtime.worker.Worker` objects share in-memory stand-ins for the
changelogged tables (``cluster-log`` and ``alerts-sent``, whose changelog is
the alerts topic): the first applies a spreading cluster and "dies"; the
second takes the partition over, rebuilds it from the log, and must hand the
firing alert to the sinks as a re-announce (Alertmanager posts it again, the
webhook does not page again, ``viralwatch_alerts_active`` counts it), never
as a new alert. A resolution the first worker made but could not deliver
(Alertmanager down) reaches Alertmanager through the next owner. Revoking the
partition releases its alerts. The same story on Apache Kafka with real
processes and a real Alertmanager: test_alert_delivery_integration.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.types import TP

from streams.alerts import Alert, MatchInfo, rfc3339
from streams.banks import HashBanks
from streams.events import Content, EventType, ShareEvent
from streams.policy import AlertPolicy
from streams.router import Routed
from streams.runtime.worker import Worker
from streams.settings import Settings
from streams.sinks import AlertmanagerSink, HttpResponse, WebhookSink
from streams.sinks.oncall import OnCall
from streams.stages import Envelope
from streams.stats import Stats
from streams.wire import Item

T0 = 1_767_225_600_000
MATCH = MatchInfo("ncii", "pdq", "ab" * 32, 0, "")
CLUSTER = "b-spread"


class Table(dict[bytes, bytes]):
    """A changelogged table as the worker uses it; shared by the workers = its changelog."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class Topic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name

    def send_soon(self, **kwargs: Any) -> None:
        return None


class Posts:
    """A transport: what Alertmanager and the webhook were sent (``down``: refused)."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, Any]] = []
        self.down = False

    def __call__(self, url: str, body: bytes, headers: Any, timeout: float) -> HttpResponse:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        self.bodies.append((url, orjson.loads(body)))
        return HttpResponse(200)

    def to_alertmanager(self) -> list[tuple[str, str]]:
        """(alert id, endsAt) of every alert posted to Alertmanager, in order."""
        return [
            (a["annotations"]["alert_id"], a["endsAt"])
            for url, body in self.bodies
            if url.endswith("/api/v2/alerts")
            for a in body
        ]

    def to_webhook(self) -> list[tuple[str, str]]:
        return [
            (body["alert"]["alert_id"], body["alert"]["status"])
            for url, body in self.bodies
            if url.endswith("/hook")
        ]


class Node:
    """One worker process: a Worker on the shared tables, with its own on-call outputs."""

    def __init__(self, tables: dict[str, Table], tmp: Path, posts: Posts) -> None:
        settings = Settings(broker="kafka://127.0.0.1:9", partitions=1, data_dir=tmp)
        self.worker = w = Worker(settings, banks=HashBanks(), policy=AlertPolicy.default())
        w.cluster_log = w.cluster_logs.table = tables["cluster-log"]
        w.cluster_logs.send = None
        w.outputs.alerts = tables["alerts-sent"]
        w.outputs.actions = tables["actions-sent"]
        w.outputs.send = None  # the shared tables are the output topics here
        w.t_resolve = Topic("resolve")
        w.t_deadletter = Topic("deadletter")
        wall = (T0 + 3_600_000) / 1000  # an hour after the spread began
        self.am = AlertmanagerSink(
            "http://am:9093", transport=posts, wall_clock=lambda: wall, repost_interval=60
        )
        self.hook = WebhookSink("http://receiver/hook", transport=posts)
        self.oncall = OnCall(Stats(), sinks=[self.am, self.hook])
        w.on_alerts = self.oncall.emit
        w.on_reannounce = self.oncall.reannounce
        w.on_release = self.oncall.release
        self.new: list[Alert] = []
        self.again: list[Alert] = []
        emit, reannounce = w.on_alerts, w.on_reannounce
        w.on_alerts = lambda alerts: (self.new.extend(alerts), emit(alerts))[-1]
        w.on_reannounce = lambda alerts: (self.again.extend(alerts), reannounce(alerts))[-1]

    def feed(self, items: list[Item], watermark: int) -> None:
        envelope = Envelope(items, progress={0: watermark})
        self.worker.topology.detect(0, [envelope])
        self.worker.checkpoint.stage()  # what the detect agent does after each batch

    def revoke(self, topic: str) -> None:
        self.worker._revoke({TP(self.worker.settings.topic(topic), 0)})

    def deliver(self) -> None:
        self.am.flush()
        self.hook.flush()

    def active(self) -> int:
        return sum(self.oncall.metrics.active_by_severity().values())


def spread(start: int, n: int, every_ms: int = 1000, tag: str = "") -> list[Item]:
    """An upload and ``n`` reshares of it, as routed events of the cluster."""

    def event(i: int, kind: EventType) -> ShareEvent:
        return ShareEvent(
            f"{kind}{tag}{i}",
            kind,
            start + i * every_ms,
            f"p{tag}{i}",
            f"user{tag}{i}",
            parent_post_id=f"p{tag}0" if kind == "share" else None,
            content=Content(pdq=MATCH.signal, pdq_quality=100) if kind == "upload" else None,
        )

    return [Routed(event(0, "upload"), CLUSTER, MATCH)] + [
        Routed(event(i, "share"), CLUSTER, MATCH) for i in range(1, n + 1)
    ]


@pytest.fixture
def tables() -> dict[str, Table]:
    return {name: Table(name) for name in ("cluster-log", "alerts-sent", "actions-sent")}


def test_the_new_owner_reannounces_a_firing_alert_and_never_sends_it_again(
    tables: dict[str, Table], tmp_path: Path
) -> None:
    posts = Posts()
    first = Node(tables, tmp_path, posts)
    first.feed(spread(T0, 40), watermark=T0 + 41_000)
    [fired] = first.new
    assert (fired.status, fired.severity) == ("firing", "warning")
    first.deliver()
    assert posts.to_webhook() == [(fired.alert_id, "firing")]
    # the first worker is SIGKILLed: nothing of it runs any more (no close, no re-post)

    second = Node(tables, tmp_path, posts)
    second.feed([], watermark=T0 + 50_000)  # its first batch: the log restored and applied
    assert second.new == []  # the alerts topic has it already: not sent again
    assert [(a.alert_id, a.status) for a in second.again][-1] == (fired.alert_id, "firing")
    assert second.again[-1].reason == "restored"  # Detector.firing_alerts
    assert second.am.active == 1 and second.active() == 1  # kept alive, counted again
    second.deliver()
    assert posts.to_alertmanager()[-1][0] == fired.alert_id  # posted again: endsAt ahead
    assert posts.to_webhook() == [(fired.alert_id, "firing")]  # the pager heard it once

    second.revoke("clusters")  # a rebalance gives the partition away
    assert second.am.active == 0 and second.active() == 0


def test_a_resolution_the_dead_worker_could_not_deliver_reaches_alertmanager(
    tables: dict[str, Table], tmp_path: Path
) -> None:
    posts = Posts()
    first = Node(tables, tmp_path, posts)
    first.feed(spread(T0, 40), watermark=T0 + 41_000)
    first.deliver()
    posts.down = True  # Alertmanager (and the webhook) go down
    first.feed([], watermark=T0 + 30 * 60_000)  # quiet for long enough: resolved
    [fired, resolved] = first.new
    assert (resolved.alert_id, resolved.status) == (fired.alert_id, "resolved")
    first.deliver()
    assert first.am.backlog == 1  # queued, then lost with the process (SIGKILL)

    posts.down = False
    second = Node(tables, tmp_path, posts)
    second.feed([], watermark=T0 + 31 * 60_000)
    assert second.new == []
    assert [(a.alert_id, a.status) for a in second.again] == [
        (fired.alert_id, "firing"),
        (fired.alert_id, "resolved"),
    ]  # made again while rebuilding, in order: nothing is firing now
    second.deliver()
    ends = dict(posts.to_alertmanager())
    assert ends[fired.alert_id] == rfc3339(resolved.ts_ms)  # posted resolved: endsAt passed
    assert second.am.active == 0 and second.active() == 0
    assert posts.to_webhook() == [(fired.alert_id, "firing")]  # no second page either way


def test_a_partition_restored_with_no_firing_alert_reannounces_nothing(
    tables: dict[str, Table], tmp_path: Path
) -> None:
    posts = Posts()
    first = Node(tables, tmp_path, posts)
    first.feed(spread(T0, 5), watermark=T0 + 6_000)  # too slow to alert
    second = Node(tables, tmp_path, posts)
    calls: list[Callable[[str], bool]] = []
    second.worker.on_release = calls.append
    second.feed([], watermark=T0 + 7_000)
    assert (second.new, second.again, posts.bodies) == ([], [], [])
    second.revoke("resolve")  # not a clusters partition: nothing released
    assert calls == []
    second.revoke("clusters")
    [owned] = calls
    assert owned(CLUSTER)
