"""Alert sinks: the Alertmanager and webhook payloads, retry with backoff, no loss, no duplicates.

Most tests drive the sinks through a scripted transport and a hand-moved
clock (deterministic backoff, ``flush`` standing in for the delivery thread);
the last ones go over real HTTP to a local receiver, slow ones included, with
the delivery thread running. The sinks against a real Alertmanager:
test_oncall_integration.py and test_alert_delivery_alertmanager.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from programs import WebhookReceiver, free_port, wait_until

from streams.alerts import Alert, CascadeFigures, MatchInfo, Prediction, alert_id
from streams.sinks import AlertmanagerSink, Backoff, HttpResponse, WebhookSink, verify_signature
from streams.sinks.webhook import SECRET_ENV, secret_from_env

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, event time
WALL = 1_767_230_000.0  # wall clock, a little over an hour later


def alert(
    status: str = "firing",
    severity: str = "high",
    cluster: str = "b-1",
    ts: int = T0,
    episode: int = 1,
) -> Alert:
    return Alert(
        alert_id=alert_id(cluster, episode, severity),
        episode=episode,
        status=status,  # type: ignore[arg-type]
        severity=severity,  # type: ignore[arg-type]
        ts_ms=ts,
        cluster_id=cluster,
        first_seen_ms=T0 - 300_000,
        match=MatchInfo("stopncii", "pdq", "ab" * 32, 4, "case-7"),
        cascade=CascadeFigures(
            size=130,
            live=120,
            roots=2,
            unique_users=125,
            depth=4,
            breadth=40,
            structural_virality=2.5,
            velocity_1m=30,
            velocity_5m=24.2,
            velocity_15m=9,
            acceleration=3,
            predicted_final_size=Prediction(900, 600, 2100),
        ),
        top_spreaders=(("u-0123456789abcdef", 12),),
        links=(
            ("runbook", "https://viralwatch.example/runbook#high-spread"),
            ("dashboard", "http://grafana/d/viralwatch-oncall/viralwatch-on-call?var-cluster=b-1"),
            ("cascade", "http://worker:6066/cascade/b-1"),
        ),
    )


@dataclass
class Script:
    """A transport that answers from a script and records every request."""

    answers: list[int | Exception] = field(default_factory=list)
    requests: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> HttpResponse:
        self.requests.append((url, body, dict(headers)))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return HttpResponse(answer, b"bad alert" if answer == 400 else b"")

    def posted(self) -> list[list[dict]]:  # type: ignore[type-arg]
        return [orjson.loads(body) for _, body, _ in self.requests]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def am_sink(script: Script, clock: Clock, **kw: object) -> AlertmanagerSink:
    return AlertmanagerSink(
        "http://am:9093/",
        transport=script,
        clock=clock,
        wall_clock=lambda: WALL,
        backoff=Backoff(initial=1, factor=2, maximum=8),
        **kw,  # type: ignore[arg-type]
    )


# -- Alertmanager --------------------------------------------------------------


def test_alertmanager_alert_has_identity_labels_and_everything_else_as_annotations() -> None:
    script, clock = Script(), Clock()
    sink = am_sink(script, clock, repost_interval=60)
    sink.send([alert()])
    assert script.requests == []  # send only queues: the delivery thread posts
    sink.flush()
    [(url, _, headers)] = script.requests
    assert url == "http://am:9093/api/v2/alerts"
    assert headers["Content-Type"] == "application/json"
    [[posted]] = script.posted()
    assert posted["labels"] == {
        "alertname": "ViralwatchSpread",
        "severity": "high",
        "bank": "stopncii",
        "cluster": "b-1",
    }
    ann = posted["annotations"]
    assert ann["runbook_url"] == "https://viralwatch.example/runbook#high-spread"
    assert ann["dashboard_url"].endswith("var-cluster=b-1")
    assert ann["alert_id"] == alert().alert_id
    assert ann["summary"] == (
        "high: stopncii content spreading, 24 shares/min over 5m, 130 posts (120 live)"
    )
    assert "size=130 live=120" in ann["figures"] and "predicted=900 [600, 2100]" in ann["figures"]
    assert "u-0123456789abcdef" not in posted.__repr__()  # spreaders stay out of Alertmanager
    assert posted["generatorURL"] == "http://worker:6066/cascade/b-1"
    # firing: starts at its event time, ends a validity (4 re-post intervals) after now
    assert posted["startsAt"] == "2026-01-01T00:00:00.000Z"
    assert posted["endsAt"] == "2026-01-01T01:17:20.000Z"  # WALL + 240 s


def test_firing_alerts_are_reposted_until_resolved_and_the_resolution_keeps_the_start() -> None:
    script, clock = Script(), Clock()
    sink = am_sink(script, clock, repost_interval=30)
    sink.send([alert()])
    assert sink.flush() == 0 and len(script.requests) == 1  # nothing due yet
    clock.now += 30
    sink.flush()
    assert len(script.requests) == 2
    assert script.posted()[1][0]["labels"]["cluster"] == "b-1"  # the re-post
    assert sink.active == 1
    sink.send([alert("resolved", ts=T0 + 900_000)])
    sink.flush()
    [[resolved]] = script.posted()[2:]
    assert resolved["startsAt"] == "2026-01-01T00:00:00.000Z"  # the firing's start
    assert resolved["endsAt"] == "2026-01-01T00:15:00.000Z"  # its event time
    assert sink.active == 0
    clock.now += 120
    sink.flush()
    assert len(script.requests) == 3  # nothing firing: no more re-posts


def test_alertmanager_down_retries_with_backoff_then_delivers_everything_once_in_order() -> None:
    down = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    script, clock = Script(answers=[down, down, 503]), Clock()
    sink = am_sink(script, clock, repost_interval=600)
    sink.send([alert()])
    sink.flush()
    assert (sink.backlog, sink.failures) == (1, 1)
    sink.send([alert("resolved", ts=T0 + 900_000)])  # within the backoff: queued, not sent
    assert len(script.requests) == 1 and sink.backlog == 2
    clock.now += 1  # first delay: 1 s
    sink.flush()
    assert (len(script.requests), sink.failures) == (2, 2)
    clock.now += 1.5  # second delay is 2 s: not yet
    sink.flush()
    assert len(script.requests) == 2
    clock.now += 0.5
    sink.flush()  # 503: a third failure
    assert (len(script.requests), sink.failures, sink.backlog) == (3, 3, 2)
    clock.now += 4
    assert sink.flush() == 0
    last = script.posted()[-1]
    assert [a["endsAt"] for a in last] == [
        "2026-01-01T01:53:20.000Z",  # firing first (WALL + 4 re-post intervals) ...
        "2026-01-01T00:15:00.000Z",  # ... then its resolution: Alertmanager ends up resolved
    ]
    assert sink.delivered == 2
    sink.send([alert(), alert("resolved", ts=T0 + 900_000)])  # redelivered upstream
    assert sink.duplicates == 2 and len(script.requests) == 4


def test_backoff_is_capped() -> None:
    down = OSError("unreachable")
    script, clock = Script(answers=[down] * 10), Clock()
    sink = am_sink(script, clock)
    sink.send([alert()])
    sink.flush()
    delays = []
    for _ in range(6):
        before = len(script.requests)
        waited = 0.0
        while len(script.requests) == before:
            clock.now += 0.5
            waited += 0.5
            sink.flush()
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_refused_alert_is_counted_and_does_not_block_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Alertmanager refuses a whole post for one bad alert: the sink isolates it.
    script, clock = Script(answers=[400, 200, 400]), Clock()
    sink = am_sink(script, clock)
    with caplog.at_level(logging.ERROR, logger="viralwatch.sinks"):
        sink.send([alert(cluster="b-1"), alert(cluster="b-2")])
        sink.flush()
    assert (sink.delivered, sink.rejected, sink.backlog) == (1, 1, 0)
    assert "refused alert" in caplog.text and "b-2" in caplog.text and "HTTP 400" in caplog.text


def test_resolution_in_the_future_of_the_wall_clock_is_clamped() -> None:
    # Alertmanager reads a future endsAt as "still firing".
    script, clock = Script(), Clock()
    sink = am_sink(script, clock)
    future = int(WALL * 1000) + 3_600_000
    sink.send([alert(ts=future), alert("resolved", ts=future + 60_000)])
    sink.flush()
    [[firing, resolved]] = script.posted()
    assert firing["startsAt"] == resolved["startsAt"] == resolved["endsAt"]


def test_a_refused_firing_alert_is_not_reposted_and_the_thread_never_spins() -> None:
    script = Script(answers=[400] * 1000)
    sink = AlertmanagerSink("http://am:9093", transport=script, repost_interval=60)
    sink.reannounce([alert()])  # only in the re-post set: Alertmanager refuses it
    sink.start(interval=0.05)
    try:
        time.sleep(0.5)
        assert len(script.requests) == 1  # the next re-post is a whole interval away
        sink.send([alert(cluster="b-2")])
        wait_until(lambda: sink.rejected == 1, 5, "the refusal")
        assert sink.active == 1  # the refused one left; the re-announced one stays
    finally:
        sink.close(timeout=1)


def test_alertmanager_sink_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="http"):
        AlertmanagerSink("am:9093")
    with pytest.raises(ValueError, match="validity"):
        AlertmanagerSink("http://am:9093", repost_interval=60, validity=30)


@pytest.mark.parametrize(
    "given",
    [
        "http://am:9093",
        "http://am:9093/",
        "http://am:9093/api/v2/alerts",
        "http://am:9093/api/v2/alerts/",
    ],
)
def test_alertmanager_is_posted_at_its_endpoint_given_its_base_url_or_the_endpoint(
    given: str,
) -> None:
    """Given the endpoint itself (as Alertmanager's API documentation shows it), the sink
    posted to ``.../api/v2/alerts/api/v2/alerts``: a 404 from Alertmanager, a refusal, so
    every alert was dropped as refused for good."""
    posted: list[str] = []

    def transport(
        url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> HttpResponse:
        posted.append(url)
        return HttpResponse(200)

    sink = AlertmanagerSink(given, transport=transport, wall_clock=lambda: WALL)
    sink.send([alert()])
    assert sink.flush() == 0
    assert posted == ["http://am:9093/api/v2/alerts"]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("am:9093", "must be http"),
        ("http://", "names no host"),
        ("http:///api", "names no host"),
        ("http://am:ninety", "could not be cast to integer"),
        ("https://am:70000", "out of range"),
    ],
)
def test_both_sinks_and_the_settings_refuse_a_url_no_post_could_reach(url: str, said: str) -> None:
    """Said when the URL is given, not at the first alert: the HTTP client kept retrying a
    URL with no host for ever, and raised (a traceback each round) for a port no number."""
    from streams.settings import Settings

    for make in (
        lambda: AlertmanagerSink(url),
        lambda: WebhookSink(url),
        lambda: Settings(alertmanager_url=url),
        lambda: Settings(webhook_url=url),
    ):
        with pytest.raises(ValueError, match=said):
            make()


def test_a_receiver_answering_nonsense_is_retried_as_one_that_is_down() -> None:
    """An answer that is no HTTP (a proxy's garbage, a port that speaks something else)
    is a failed attempt, said in one line and retried after the backoff, as a refused
    connection is: it was the HTTP client's own error, raised out of the delivery round
    (a traceback in the log, a bug's "BadStatusLine in the sink")."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        sink = WebhookSink(f"http://127.0.0.1:{port}/hook")
        sink.send([alert()])
        assert sink.flush() == 1  # kept: retried later, not raised
        assert (sink.failures, sink.rejected, sink.delivered) == (1, 0, 0)
        am = AlertmanagerSink(f"http://127.0.0.1:{port}")
        am.send([alert()])
        assert am.flush() == 1 and am.failures == 1
    finally:
        listener.close()
        thread.join(5)


def test_send_only_queues() -> None:
    script = Script()
    sink = am_sink(script, Clock())
    sink.send([alert()])
    assert (script.requests, sink.backlog) == ([], 1)  # the delivery thread posts, not send


def test_a_full_queue_drops_the_oldest_counts_and_says_what_that_costs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script, clock = Script(), Clock()
    sink = am_sink(script, clock, capacity=3)
    with caplog.at_level(logging.WARNING, logger="viralwatch.sinks"):
        sink.send([alert(cluster=f"b-{i}") for i in range(5)])
    assert (sink.backlog, sink.dropped) == (3, 2)
    assert "queue full (3 alerts" in caplog.text and "dropped the 2 oldest" in caplog.text
    assert "still re-posted" in caplog.text  # what a drop costs on this sink
    # Alertmanager: the two dropped firing alerts stay in the re-post set, so one post has all
    sink.flush()
    [posted] = script.posted()
    clusters = [a["labels"]["cluster"] for a in posted]
    assert clusters == ["b-2", "b-3", "b-4", "b-0", "b-1"]
    webhook = WebhookSink("http://hook", transport=Script(), capacity=1)
    webhook.send([alert(), alert("resolved")])
    assert (webhook.dropped, webhook.backlog) == (1, 1)
    assert "not delivered by this sink" in webhook.drop_means


def test_a_long_backlog_goes_out_in_batches() -> None:
    script, clock = Script(), Clock()
    sink = am_sink(script, clock, batch_size=2, repost_interval=600)
    sink.send([alert(cluster=f"b-{i}") for i in range(5)])
    assert sink.flush() == 0
    assert [len(p) for p in script.posted()] == [2, 2, 1]


def test_a_new_owner_reannounces_firing_alerts_to_alertmanager_and_keeps_them_alive() -> None:
    # The worker that took the partition over never sent these: the old one did, then died.
    script, clock = Script(), Clock()
    sink = am_sink(script, clock, repost_interval=30)
    sink.reannounce([alert(), alert(cluster="b-2")])
    assert sink.active == 2
    sink.flush()
    [posted] = script.posted()
    assert [a["labels"]["cluster"] for a in posted] == ["b-1", "b-2"]
    assert posted[0]["startsAt"] == "2026-01-01T00:00:00.000Z"  # the firing's event time
    assert posted[0]["endsAt"] == "2026-01-01T01:15:20.000Z"  # alive for another validity
    clock.now += 30
    sink.flush()
    assert len(script.posted()[1]) == 2  # re-posted until resolved
    sink.reannounce([alert()])  # made again (the rest of the restored log): nothing new
    sink.flush()
    assert len(script.requests) == 2  # no extra round of posts
    sink.send([alert("resolved", ts=T0 + 900_000)])  # the new owner resolves one
    sink.flush()
    [[resolved]] = script.posted()[2:]
    assert resolved["endsAt"] == "2026-01-01T00:15:00.000Z" and sink.active == 1
    assert sink.delivered == 1  # a re-announce is not a delivery of a new alert


def test_a_reannounce_during_a_post_is_posted_at_once_not_at_the_next_interval() -> None:
    script, clock = Script(), Clock()
    sink = am_sink(script, clock, repost_interval=30)
    sink.send([alert(cluster="b-1")])
    during = Script()

    def transport(url: str, body: bytes, headers: Mapping[str, str], t: float) -> HttpResponse:
        if not during.requests:  # the delivery thread is posting; a partition comes in
            sink.reannounce([alert(cluster="b-2")])
        return during(url, body, headers, t)

    sink._transport = transport
    sink.flush()
    posts = [[a["labels"]["cluster"] for a in p] for p in during.posted()]
    assert posts == [["b-1"], ["b-1", "b-2"]]  # the firing set re-posted in the same flush


def test_a_webhook_never_pages_again_for_a_reannounced_alert() -> None:
    script = Script()
    sink = WebhookSink("http://hook", transport=script)
    sink.reannounce([alert(), alert("resolved")])
    sink.flush()
    assert (script.requests, sink.backlog) == ([], 0)


def test_a_reannounced_resolution_is_posted_unless_this_sink_delivered_it() -> None:
    # The old owner resolved the alert while Alertmanager was down and died with the
    # resolution queued: the new owner makes it again while rebuilding, and posts it.
    script, clock = Script(), Clock()
    sink = am_sink(script, clock)
    sink.reannounce([alert(), alert("resolved", ts=T0 + 900_000)])
    assert sink.active == 0
    sink.flush()
    [[posted]] = script.posted()
    assert posted["endsAt"] == "2026-01-01T00:15:00.000Z"
    sink.reannounce([alert("resolved", ts=T0 + 900_000)])  # delivered here already
    sink.reannounce([alert()])  # and its firing cannot come back
    sink.flush()
    assert (len(script.requests), sink.active) == (1, 0)


def test_an_older_episodes_resolution_never_ends_the_same_labels_firing_now() -> None:
    # Alertmanager knows alerts by labels: episode 1's resolution posted after episode 2
    # fired (same cluster and severity) would end episode 2 there.
    script, clock = Script(), Clock()
    sink = am_sink(script, clock)
    old_end = alert("resolved", ts=T0 + 900_000)
    now = alert(ts=T0 + 2_000_000, episode=2)
    sink.reannounce([alert(), old_end, now])
    sink.flush()
    [posted] = script.posted()
    assert [(a["annotations"]["alert_id"], a["endsAt"]) for a in posted] == [
        (now.alert_id, "2026-01-01T01:17:20.000Z")
    ]
    assert sink.backlog == 0  # the stale resolution is done with, not retried
    # in one queue, a resolution before the next episode's firing is fine: it comes first
    script2 = Script()
    sink2 = am_sink(script2, clock)
    sink2.send([alert(), old_end])
    sink2.flush()
    sink2.send([alert(ts=T0 + 2_000_000, episode=2)])
    sink2.flush()
    assert [a["endsAt"][:16] for p in script2.posted() for a in p] == [
        "2026-01-01T01:17", "2026-01-01T00:15", "2026-01-01T01:17",
    ]  # fmt: skip


def test_released_alerts_are_no_longer_reposted_by_this_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script, clock = Script(), Clock()
    sink = am_sink(script, clock, repost_interval=30)
    sink.send([alert(cluster="b-1"), alert(cluster="b-2")])
    sink.flush()
    with caplog.at_level(logging.INFO, logger="viralwatch.sinks"):
        assert sink.release(lambda cluster: cluster == "b-1") == 1
    assert "1 firing alert(s) handed over" in caplog.text
    clock.now += 30
    sink.flush()
    assert [a["labels"]["cluster"] for a in script.posted()[-1]] == ["b-2"]
    assert WebhookSink("http://hook").release(lambda cluster: True) == 0


def test_sink_queue_metrics_are_exported() -> None:
    from prometheus_client import CollectorRegistry

    from streams.metrics import PipelineMetrics
    from streams.stats import Stats

    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, Stats())
    sink = am_sink(Script(), Clock(), capacity=2)
    metrics.watch_sink(sink)
    sink.send([alert(cluster=f"b-{i}") for i in range(3)])

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"sink": "alertmanager"})

    assert value("viralwatch_sink_backlog") == 2
    assert value("viralwatch_sink_queue_capacity") == 2
    assert value("viralwatch_sink_dropped_total") == 1
    sink.flush()
    assert (value("viralwatch_sink_backlog"), value("viralwatch_sink_delivered_total")) == (0, 2)


def test_the_worker_gauge_counts_reannounced_alerts_and_forgets_released_ones() -> None:
    from streams.sinks.oncall import OnCall
    from streams.stats import Stats

    script = Script()
    sink = am_sink(script, Clock())
    oncall = OnCall(Stats(), sinks=[sink])
    try:
        oncall.reannounce([alert(cluster="b-1"), alert(cluster="b-2", severity="critical")])
        active = oncall.metrics.active_by_severity()
        assert (active["high"], active["critical"]) == (1, 1)
        latency = oncall.registry.get_sample_value("viralwatch_event_to_alert_seconds_count")
        assert latency == 0  # observed when they fired, by the worker that sent them
        oncall.release(lambda cluster: cluster == "b-2")
        assert oncall.metrics.active_by_severity()["critical"] == 0 and sink.active == 1
    finally:
        oncall.close(timeout=1)


# -- webhook --------------------------------------------------------------------


def test_webhook_posts_each_alert_signed_with_a_delivery_key() -> None:
    script, clock = Script(), Clock()
    sink = WebhookSink(
        "https://chat.example/hook",
        secret=b"s3cret",
        transport=script,
        clock=clock,
        wall_clock=lambda: WALL,
    )
    sink.send([alert(), alert("resolved", ts=T0 + 900_000)])
    sink.flush()
    assert len(script.requests) == 2
    (_, body, headers), (_, body2, headers2) = script.requests
    doc = orjson.loads(body)
    assert doc["alert"] == orjson.loads(alert().to_json())
    assert doc["text"].startswith("high: stopncii content spreading")
    assert headers["X-Viralwatch-Delivery"] == alert().dedupe_key
    assert headers2["X-Viralwatch-Delivery"].endswith(":resolved")
    assert headers["X-Viralwatch-Timestamp"] == str(int(WALL))
    assert verify_signature(
        b"s3cret",
        body,
        headers["X-Viralwatch-Timestamp"],
        headers["X-Viralwatch-Signature"],
        now=WALL,
    )
    assert not verify_signature(
        b"other",
        body,
        headers["X-Viralwatch-Timestamp"],
        headers["X-Viralwatch-Signature"],
        now=WALL,
    )
    assert not verify_signature(
        b"s3cret",
        body2,
        headers["X-Viralwatch-Timestamp"],
        headers["X-Viralwatch-Signature"],
        now=WALL,
    )


def test_unsigned_webhook_without_a_secret() -> None:
    script = Script()
    sink = WebhookSink("http://hook", transport=script)
    sink.send([alert()])
    sink.flush()
    assert "X-Viralwatch-Signature" not in script.requests[0][2]
    with pytest.raises(ValueError, match="empty"):
        WebhookSink("http://hook", secret=b"")


def test_the_secret_comes_from_the_environment() -> None:
    assert secret_from_env({SECRET_ENV: "abc"}) == b"abc"
    assert secret_from_env({SECRET_ENV: ""}) is None
    assert secret_from_env({}) is None


def test_webhook_never_delivers_a_resolution_before_its_firing() -> None:
    script, clock = Script(answers=[503]), Clock()
    sink = WebhookSink("http://hook", transport=script, clock=clock, backoff=Backoff(initial=1))
    sink.send([alert(), alert("resolved", ts=T0 + 900_000)])
    sink.flush()
    assert len(script.requests) == 1 and sink.backlog == 2  # stopped at the first failure
    clock.now += 1
    sink.flush()
    statuses = [orjson.loads(b)["alert"]["status"] for _, b, _ in script.requests]
    assert statuses == ["firing", "firing", "resolved"]
    assert (sink.delivered, sink.backlog) == (2, 0)


def test_webhook_refusal_drops_only_that_alert() -> None:
    script = Script(answers=[422, 200])
    sink = WebhookSink("http://hook", transport=script)
    sink.send([alert(cluster="b-1"), alert(cluster="b-2")])
    sink.flush()
    assert (sink.rejected, sink.delivered, sink.backlog) == (1, 1, 0)


def test_a_429_is_retried_not_refused() -> None:
    script, clock = Script(answers=[429]), Clock()
    sink = WebhookSink("http://hook", transport=script, clock=clock, backoff=Backoff(initial=1))
    sink.send([alert()])
    sink.flush()
    assert (sink.rejected, sink.backlog) == (0, 1)
    clock.now += 1
    assert sink.flush() == 0


# -- over real HTTP ------------------------------------------------------------


def test_webhook_over_http_survives_a_receiver_that_is_down_then_up() -> None:
    receiver = WebhookReceiver(status=503).start()
    try:
        sink = WebhookSink(
            receiver.url + "/hook", secret=b"k", backoff=Backoff(initial=0.1, maximum=0.2)
        )
        sink.send([alert()])
        sink.flush()
        assert sink.backlog == 1 and sink.failures == 1
        receiver.status = 200
        sink.start(interval=0.05)
        wait_until(lambda: sink.backlog == 0, 10, "delivery after the receiver came back")
        sink.stop()
        got = receiver.received()
        assert len(got) == 2  # the 503 attempt and the delivery
        last = got[-1]
        assert last.path == "/hook"
        assert verify_signature(
            b"k",
            last.body,
            last.headers["X-Viralwatch-Timestamp"],
            last.headers["X-Viralwatch-Signature"],
        )
        assert last.json()["alert"]["alert_id"] == alert().alert_id
    finally:
        receiver.stop()


class SlowReceiver:
    """A real HTTP server on 127.0.0.1 (a free port) that answers each POST after ``delay`` s.

    It records what arrived, and when, once it has answered; :meth:`stop` lets
    every waiting request go at once.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.arrived: list[tuple[float, list[dict]]] = []  # type: ignore[type-arg]
        self._lock = threading.Lock()
        self._release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner._release.wait(owner.delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with owner._lock:
                    owner.arrived.append((time.monotonic(), orjson.loads(body)))

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def alert_ids(self) -> list[str]:
        with self._lock:
            return [a["annotations"]["alert_id"] for _, posted in self.arrived for a in posted]

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def test_a_slow_alertmanager_never_holds_up_the_event_loop() -> None:
    # Alertmanager answers after 3 s. The stages share one asyncio loop: sending alerts
    # from it must return at once, the loop must keep ticking, the alerts arrive later.
    receiver = SlowReceiver(delay=3.0)
    sink = AlertmanagerSink(receiver.url, backoff=Backoff(initial=0.1, maximum=0.5))
    sink.start(interval=0.1)
    sent = [alert(cluster=f"b-{i}") for i in range(6)]
    send_s: list[float] = []
    gaps: list[float] = []

    async def stages() -> float:
        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        for i in range(0, 6, 2):  # three batches, the second while the first post is in flight
            t = time.monotonic()
            sink.send(sent[i : i + 2])
            send_s.append(time.monotonic() - t)
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)
        tick.cancel()
        return started

    try:
        started = asyncio.run(stages())
        assert max(send_s) < 0.05, send_s
        assert max(gaps) < 0.25, f"the event loop stalled {max(gaps):.2f} s"
        assert receiver.alert_ids() == []  # still being answered
        wait_until(lambda: sink.backlog == 0, 20, "the slow Alertmanager to take every alert")
        assert sorted(set(receiver.alert_ids())) == sorted(a.alert_id for a in sent)
        first = min(at for at, _ in receiver.arrived)
        assert first - started >= 3.0  # they arrived later, on the sink's thread
        assert (sink.delivered, sink.failures) == (6, 0)
    finally:
        assert sink.close(timeout=10) == 0
        receiver.stop()


def test_a_receiver_slower_than_the_timeout_is_retried_until_it_answers() -> None:
    # Answering after 30 s is, for a 5 s timeout, not answering: retried with backoff.
    receiver = SlowReceiver(delay=30.0)
    sink = WebhookSink(receiver.url, timeout=0.3, backoff=Backoff(initial=0.1, maximum=0.2))
    sink.start(interval=0.05)
    try:
        t = time.monotonic()
        sink.send([alert()])
        assert time.monotonic() - t < 0.05
        wait_until(lambda: sink.failures >= 2, 10, "timed-out attempts")
        assert sink.backlog == 1
        receiver.delay = 0.0
        receiver._release.set()
        wait_until(lambda: sink.backlog == 0, 10, "delivery once the receiver is quick again")
        assert sink.delivered == 1
    finally:
        sink.close(timeout=1)
        receiver.stop()


def test_close_drains_within_its_timeout() -> None:
    quick = SlowReceiver(delay=0.5)
    hung = SlowReceiver(delay=60.0)
    try:
        sink = AlertmanagerSink(quick.url)
        sink.start(interval=0.1)
        sink.send([alert(cluster=f"b-{i}") for i in range(3)])
        t = time.monotonic()
        assert sink.close(timeout=10) == 0  # drained: every alert delivered before it returns
        assert time.monotonic() - t < 5 and sink.delivered == 3
        stuck = AlertmanagerSink(hung.url)  # started by close: alerts sent before start count
        stuck.send([alert()])
        t = time.monotonic()
        assert stuck.close(timeout=1.0) == 1  # gives up on time, says what is left
        assert time.monotonic() - t < 2.5
    finally:
        quick.stop()
        hung.stop()


def test_close_reports_what_could_not_be_delivered(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there: connection refused
    sink = AlertmanagerSink(f"http://127.0.0.1:{port}", backoff=Backoff(initial=0.05, maximum=0.1))
    sink.send([alert()])
    with caplog.at_level(logging.ERROR, logger="viralwatch.sinks"):
        left = sink.close(timeout=0.5)
    assert left == 1 and sink.failures >= 2
    assert "1 alert(s) not delivered" in caplog.text


# -- the replay command's live outputs ------------------------------------------


def test_replay_delivers_every_alert_to_a_webhook_and_writes_the_same_bytes(
    tmp_path: Path,
) -> None:
    import random
    import subprocess
    import sys

    from eventgen import Traffic, pdq_hex

    t, rng = Traffic(), random.Random(5)
    pdq = pdq_hex(rng)
    root = t.upload(T0, pdq=pdq)
    t.burst(root, T0 + 1000, 300, 1000)  # 60 a minute for 5 minutes: warning, then high
    events, bank = tmp_path / "events.jsonl", tmp_path / "bank.csv"
    events.write_bytes(b"\n".join(t.lines()) + b"\n")
    bank.write_text(f"signal_type,signal,bank\npdq,{pdq},ncii\n")
    root_dir = Path(__file__).resolve().parents[1]
    cli = [sys.executable, "-m", "streams.cli", "replay", str(events), "--bank", str(bank)]
    env = {**os.environ, "VIRALWATCH_PSEUDONYM_KEY": "k", "VIRALWATCH_WEBHOOK_SECRET": "s3cret"}
    plain = subprocess.run(
        [*cli, "--out", str(tmp_path / "plain.jsonl")], cwd=root_dir, env=env,
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    receiver = WebhookReceiver().start()
    try:
        live = subprocess.run(
            [*cli, "--out", str(tmp_path / "live.jsonl"), "--webhook", receiver.url + "/hook",
             "--metrics-port", "0"],
            cwd=root_dir, env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        got = receiver.received()
    finally:
        receiver.stop()
    assert live.returncode == 0, live.stderr
    assert b"metrics at http://127.0.0.1:" in live.stderr
    written = (tmp_path / "live.jsonl").read_bytes()
    assert written == (tmp_path / "plain.jsonl").read_bytes()  # live outputs change nothing
    alerts = [orjson.loads(line) for line in written.splitlines()]
    assert [a["severity"] + "/" + a["status"] for a in alerts] == [
        "warning/firing", "high/firing", "warning/resolved", "high/resolved",
    ]  # fmt: skip
    assert [r.json()["alert"] for r in got] == alerts  # each once, in order
    for r in got:
        assert verify_signature(
            b"s3cret", r.body, r.headers["X-Viralwatch-Timestamp"],
            r.headers["X-Viralwatch-Signature"],
        )  # fmt: skip
