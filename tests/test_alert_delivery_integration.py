"""A worker SIGKILLed while an alert fires: Alertmanager never shows it resolved while the spread
goes on, and shows it resolved once the spread stops (integration: Apache Kafka, real
Alertmanager, workers as processes).

The alert lives in Alertmanager only as long as someone re-posts it: each post
keeps it firing for ``validity`` (four re-post intervals). The worker that sent
it is killed; its replacement takes the clusters partitions over, rebuilds
them from the changelog and re-announces the firing alert. The spread goes on
for longer than a validity after the kill, so without the re-announce
Alertmanager would resolve it (and page "resolved") while the content keeps
spreading. The workers re-post every few seconds instead of every minute
(their ``OnCall`` built with a short ``repost_interval``), so this takes a
minute or two, not ten.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventgen import pdq_hex
from kafka_helpers import (
    TopicReader,
    WorkerProcess,
    worker_env,
    workers,
)
from programs import (
    PAGER_CONFIG,
    Program,
    WebhookReceiver,
    free_port,
    get_json,
    http_get,
    http_ok,
    require_program,
    start,
    wait_until,
)
from test_streaming_integration import setup

from streams.runtime.broker import RunningBroker
from streams.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPOST_S = 5.0
VALIDITY_S = 4 * REPOST_S  # the sink's default: four re-post intervals
SHARE_EVERY_S = 5.0  # 60 shares in 5 minutes: warning (25) stays, high (100) never comes

#: A worker whose on-call outputs re-post firing alerts every REPOST_S seconds.
WORKER = f"""
import streams.sinks.oncall as oncall

built = oncall.OnCall.__init__

def short_reposts(self, *args, **kwargs):
    kwargs["repost_interval"] = {REPOST_S}
    built(self, *args, **kwargs)

oncall.OnCall.__init__ = short_reposts
from streams.runtime.worker import main
main([])
"""


class Spread:
    """A banked upload and its reshares, produced live (event time = now) from a thread."""

    def __init__(self, broker: RunningBroker, topic: str, pdq: str, tag: str = "") -> None:
        from kafka import KafkaProducer

        self.topic, self.pdq, self.tag = topic, pdq, tag
        self.producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        self.n = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, event: dict[str, Any]) -> None:
        self.producer.send(self.topic, orjson.dumps(event))
        self.producer.flush()

    def share(self, ts: int | None = None) -> None:
        self.n += 1
        tag = self.tag
        self.send({"event_id": f"{tag}s{self.n}", "type": "share", "ts": ts or now_ms(),
                   "post_id": f"{tag}p{self.n}", "parent_post_id": f"{tag}p0",
                   "user_id": f"user{self.n}"})  # fmt: skip

    def begin(self, burst: int = 30) -> None:
        """The upload and a burst of shares (30: warning fires), then one every few seconds."""
        t, tag = now_ms(), self.tag
        content = {"pdq": self.pdq, "pdq_quality": 90}
        self.send({"event_id": f"{tag}u0", "type": "upload", "ts": t - 10_000,
                   "post_id": f"{tag}p0", "user_id": "uploader", "content": content})  # fmt: skip
        for i in range(burst):
            self.share(t - 9_000 + i * 300)

        def go_on() -> None:
            while not self._stop.wait(SHARE_EVERY_S):
                self.share()

        self._thread = threading.Thread(target=go_on, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The spread stops; an unrelated upload 20 minutes of event time later lets event
        time run past the resolution (velocity under the rule, then resolve_after)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.send({"event_id": "later", "type": "upload", "ts": now_ms() + 20 * 60_000,
                   "post_id": "other", "user_id": "someone",
                   "content": {"md5": "0" * 32}})  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self.producer.close()


def banked_pipeline(
    broker: RunningBroker, tmp_path: Path, pdqs: list[str], **extra: Any
) -> Settings:
    """Settings for workers whose bank holds ``pdqs`` (bank ``ncii``), idle partitions after
    1 s, their topics created."""
    bank = tmp_path / "bank.csv"
    bank.write_text("signal_type,signal,bank\n" + "".join(f"pdq,{p},ncii\n" for p in pdqs))
    return setup(broker, tmp_path, bank, **extra)


def now_ms() -> int:
    return int(time.time() * 1000)


class AlertmanagerWatch:
    """Lists Alertmanager's active spread alerts every 0.25 s from a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, set[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def active(self) -> set[str]:
        listing = get_json(f"{self.url}/api/v2/alerts?active=true&silenced=false&inhibited=false")
        ids = [a["annotations"]["alert_id"] for a in listing]
        assert len(ids) == len(set(ids)), f"an alert shown twice: {ids}"
        return set(ids)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.seen.append((time.monotonic(), self.active()))
            except OSError:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, WebhookReceiver]]:
    binary = require_program(
        "prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager"
    )
    receiver = WebhookReceiver().start()
    port = free_port()
    (tmp_path / "alertmanager.yml").write_text(PAGER_CONFIG.format(url=receiver.url))
    am: Program | None = None
    try:
        am = start(
            "alertmanager",
            [
                binary,
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            tmp_path,
        )
        url = f"http://127.0.0.1:{port}"
        am.wait_ready(http_ok(f"{url}/-/ready"))
        yield url, receiver
    finally:
        if am is not None:
            am.stop()
        receiver.stop()


def notified(receiver: WebhookReceiver, alert: str) -> list[tuple[str, float]]:
    """(status, when) of each notification carrying ``alert``."""
    return [
        (a["status"], r.at)
        for r in receiver.received()
        for a in r.json()["alerts"]
        if a["annotations"].get("alert_id") == alert
    ]


def active_gauge(metrics_url: str) -> float:
    status, body = http_get(metrics_url)
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith('viralwatch_alerts_active{severity="warning"}'):
            return float(line.split()[-1])
    raise AssertionError("no viralwatch_alerts_active gauge")


def test_a_killed_worker_s_firing_alert_stays_firing_in_alertmanager_until_the_spread_stops(
    broker: RunningBroker, tmp_path: Path, alertmanager: tuple[str, WebhookReceiver]
) -> None:
    am_url, receiver = alertmanager
    pdq = pdq_hex(random.Random(14))
    metrics_port = free_port()
    s = banked_pipeline(
        broker, tmp_path, [pdq], lateness_ms=2_000, alertmanager_url=am_url, http_port=metrics_port
    )
    argv = [sys.executable, "-c", WORKER]
    first = WorkerProcess(worker_env(s), tmp_path / "first.log", argv=argv)
    second = WorkerProcess(worker_env(s), tmp_path / "second.log", argv=argv)
    spread = Spread(broker, s.topic("shares"), pdq)
    watch = AlertmanagerWatch(am_url)
    try:
        with workers(first):
            spread.begin()
            ids = wait_until(watch.active, 90, "the spread alert in Alertmanager", interval=0.5)
            [alert] = ids
            time.sleep(REPOST_S + 1)  # firing, re-posted at least once
            first.kill()
        killed_at = time.monotonic()
        assert first.proc is not None and first.proc.returncode == -9
        with workers(second):
            metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            wait_until(lambda: active_gauge(metrics) == 1, 60, "the gauge to count it again")
            taken_over = time.monotonic() - killed_at  # the re-announce, to the gauge and AM
            print(f"re-announced {taken_over:.1f} s after the kill (validity {VALIDITY_S:.0f} s)")
            # the spread goes on well past the validity of the killed worker's last post
            time.sleep(max(0.0, killed_at + VALIDITY_S + 20 - time.monotonic()))
            spread_ends = time.monotonic()
            assert [st for st, _ in notified(receiver, alert)] == ["firing"]
            spread.stop()
            wait_until(lambda: alert not in watch.active(), 60, "Alertmanager to resolve it")
            wait_until(
                lambda: "resolved" in [st for st, _ in notified(receiver, alert)],
                30,
                "the resolution notified",
            )
            assert "clusters partition" in second.log_tail(400)  # restored from the changelog
            alerts = TopicReader(broker, s.topic("alerts"))
            alerts.until(lambda r: len(r) >= 2, 30, "firing and resolved on the alerts topic")
            time.sleep(2)
            alerts.poll()
            records = [orjson.loads(v) for v in alerts.values()]
            alerts.close()
    finally:
        watch.stop()
        spread.close()
    first_seen = next(at for at, active in watch.seen if alert in active)
    missing = [at - killed_at for at, active in watch.seen
               if first_seen <= at < spread_ends and alert not in active]  # fmt: skip
    assert missing == [], f"resolved in Alertmanager while spreading ({missing[:3]} s after kill)"
    assert [(a["alert_id"], a["status"]) for a in records] == [
        (alert, "firing"),
        (alert, "resolved"),
    ]  # each once on the alerts topic: the re-announce is not a new alert
    assert [st for st, _ in notified(receiver, alert)] == ["firing", "resolved"]


def test_alertmanager_answering_after_30_s_does_not_delay_the_alerts_topic(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """Delivery runs on the sink's thread: while every post to Alertmanager hangs, the
    stages' event loop goes on and another cluster's alert reaches the alerts topic as
    soon as the watermark lets it (here about a second: lateness 0, idle partitions 1 s)."""
    rng = random.Random(15)
    first_pdq, second_pdq = pdq_hex(rng), pdq_hex(rng)
    slow = WebhookReceiver(hold_s=30).start()  # every post hangs 30 s
    s = banked_pipeline(
        broker, tmp_path, [first_pdq, second_pdq], lateness_ms=0, alertmanager_url=slow.url
    )
    worker = WorkerProcess(worker_env(s), tmp_path / "worker.log")
    first = Spread(broker, s.topic("shares"), first_pdq, tag="a")
    second = Spread(broker, s.topic("shares"), second_pdq, tag="b")
    alerts = TopicReader(broker, s.topic("alerts"))
    try:
        with workers(worker):
            first.begin()
            alerts.until(lambda r: len(r) >= 1, 90, "the first cluster's alert", worker.log_tail)
            wait_until(lambda: slow.received(), 30, "a post to the slow Alertmanager")
            time.sleep(2)  # that post hangs (the sink times it out after 5 s and retries)
            second.begin(burst=0)
            for _ in range(30):
                second.share()
            crossed = time.time()  # the 25th share crossed the rule; 5 more since
            alerts.until(lambda r: len(r) >= 2, 30, "the second cluster's alert", worker.log_tail)
            arrived = time.time()
            [late] = [orjson.loads(r.value) for r in alerts.records[1:]]
            assert late["cluster_id"] != orjson.loads(alerts.records[0].value)["cluster_id"]
            print(f"second cluster: alert on the topic {arrived - crossed:.2f} s after its shares")
            assert arrived - crossed < 5.0, f"the alert took {arrived - crossed:.1f} s"
            assert slow.received() and worker.alive()
    finally:
        alerts.close()
        first.close()
        second.close()
        slow.stop()


def test_a_webhook_alert_its_worker_could_not_post_before_it_was_killed_is_posted_by_the_next(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """The webhook is fed from the ``alerts`` topic (streams.runtime.alert_feed): the receiver
    is down (503) while the alert fires, the worker that holds it queued is SIGKILLed, the
    receiver comes back, and the next worker posts it, once. A record on the topic that is
    not an alert is dead-lettered, and the alerts around it go on."""
    receiver = WebhookReceiver(status=503).start()
    pdq = pdq_hex(random.Random(15))
    s = banked_pipeline(
        broker, tmp_path, [pdq], lateness_ms=2_000, webhook_url=receiver.url + "/hook"
    )
    first = WorkerProcess(worker_env(s), tmp_path / "first.log")
    second = WorkerProcess(worker_env(s), tmp_path / "second.log")
    spread = Spread(broker, s.topic("shares"), pdq)
    alerts = TopicReader(broker, s.topic("alerts"))
    try:
        with workers(first):
            from kafka import KafkaProducer

            producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
            producer.send(s.topic("alerts"), key=b"junk", value=b"not an alert", partition=0)
            producer.flush()
            producer.close()
            spread.begin()
            alerts.until(
                lambda r: any(b'"firing"' in (x.value or b"") for x in r),
                90,
                "the alert on the alerts topic",
                on_timeout=first.log_tail,
            )
            wait_until(lambda: receiver.received(), 30, "a post the receiver refused (503)")
            first.kill()
        assert first.proc is not None and first.proc.returncode == -9
        spread.close()
        back_at = time.time()
        receiver.status = 200
        with workers(second):
            time.sleep(1.0)
            alerts.poll()
            sent = {
                f"{d['alert_id']}:{d['status']}"
                for v in alerts.values()
                if v and v.startswith(b"{") and (d := orjson.loads(v))
            }

            def posted() -> list[str]:
                return [
                    r.headers["X-Viralwatch-Delivery"]
                    for r in receiver.received()
                    if r.at >= back_at
                ]

            wait_until(
                lambda: sent <= set(posted()), 90, "every alert posted once the receiver is back"
            )
            time.sleep(2.0)
            dead = TopicReader(broker, s.topic("deadletter"))
            dead.until(
                lambda r: any(b"bad_alert_record" in x.value for x in r),
                30,
                "the record that is not an alert, dead-lettered",
            )
            dead.close()
    finally:
        alerts.close()
        spread.close()
        receiver.stop()
    assert sent, "the spread made no alert"
    twice = [k for k in set(posted()) if posted().count(k) > 1]
    assert not twice, f"posted twice once the receiver was back: {twice}"
    refused = {r.headers["X-Viralwatch-Delivery"] for r in receiver.received() if r.at < back_at}
    assert refused & sent, "the first worker tried them while the receiver was down"
