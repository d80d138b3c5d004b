"""Alert delivery to a real Alertmanager that goes away, with a worker restart in the middle.

Debian's ``prometheus-alertmanager`` runs on a free loopback port with a
webhook receiver standing in for the pager (one notification group per alert,
resolutions notified). The Alertmanager sink posts to it from its delivery
thread; the test:

1. sends two firing alerts and sees them in Alertmanager's API and notified;
2. stops Alertmanager for longer than a firing post's validity; meanwhile one
   alert resolves, another fires, and the "worker" is killed with those
   still queued (its sink stopped without draining, as SIGKILL leaves it);
3. a second sink, the new owner of the partition, re-announces what it
   rebuilt (the firing alerts and the alerts it made again, in order) and
   sends one new alert, while Alertmanager is still down;
4. starts Alertmanager again on the same storage, and checks: every firing
   alert is there once (by alert id) and stays there, re-posted, for several
   validities; the resolution made before the kill is notified; no alert still
   firing is ever notified resolved; each alert was notified firing once;
5. resolves the rest: Alertmanager shows nothing active, each is notified resolved.

Everything started here is stopped by PID at the end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from programs import (
    PAGER_CONFIG,
    Program,
    WebhookReceiver,
    free_port,
    get_json,
    http_ok,
    require_program,
    start,
    wait_until,
)

from streams.alerts import Alert, CascadeFigures, MatchInfo, alert_id
from streams.sinks import AlertmanagerSink, Backoff

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPOST_S = 2.0  # the sink re-posts firing alerts this often ...
VALIDITY_S = 4 * REPOST_S  # ... each post keeps an alert firing this long
DOWN_S = VALIDITY_S + 4  # Alertmanager is away longer than any post keeps an alert alive


def spread(cluster: str, status: str = "firing", severity: str = "high") -> Alert:
    now_ms = int(time.time() * 1000)
    return Alert(
        alert_id=alert_id(cluster, 1, severity),
        status=status,  # type: ignore[arg-type]
        severity=severity,  # type: ignore[arg-type]
        ts_ms=now_ms - (0 if status == "resolved" else 60_000),
        cluster_id=cluster,
        first_seen_ms=now_ms - 300_000,
        match=MatchInfo("ncii", "pdq", "ab" * 32, 2),
        cascade=CascadeFigures(size=120, live=110, velocity_5m=30.0),
    )


class Alertmanager:
    """The real program on a fixed port and storage folder, so it can be stopped and started."""

    def __init__(self, binary: str, tmp: Path, receiver_url: str) -> None:
        self.binary, self.tmp = binary, tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "alertmanager.yml").write_text(PAGER_CONFIG.format(url=receiver_url))
        self.program: Program | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.program = start(
            f"alertmanager-{self.runs}",
            [
                self.binary,
                f"--config.file={self.tmp / 'alertmanager.yml'}",
                f"--storage.path={self.tmp / 'am-data'}",  # kept across restarts: the nflog
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            self.tmp,
        )
        self.program.wait_ready(http_ok(f"{self.url}/-/ready"))

    def stop(self) -> None:
        if self.program is not None:
            self.program.stop()

    def active(self) -> dict[str, list[dict[str, Any]]]:
        """Alert id -> the alerts Alertmanager lists with that id (active only)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for a in get_json(f"{self.url}/api/v2/alerts?active=true&silenced=false&inhibited=false"):
            out.setdefault(a["annotations"]["alert_id"], []).append(a)
        return out


class Watch:
    """Polls Alertmanager's API from a thread: every listing taken while it was up."""

    def __init__(self, am: Alertmanager) -> None:
        self.am = am
        self.seen: list[tuple[float, dict[str, list[dict[str, Any]]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                listing = self.am.active()
            except OSError:
                continue  # down
            self.seen.append((time.monotonic(), listing))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def notified(receiver: WebhookReceiver) -> list[tuple[str, str]]:
    """(alert id, status) of every alert in every notification, in order."""
    return [
        (a["annotations"]["alert_id"], a["status"])
        for r in receiver.received()
        for a in r.json()["alerts"]
    ]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[Alertmanager, WebhookReceiver]]:
    binary = require_program(
        "prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager"
    )
    receiver = WebhookReceiver().start()
    am = Alertmanager(binary, tmp_path, receiver.url)
    try:
        am.start()
        yield am, receiver
    finally:
        am.stop()
        receiver.stop()


def new_sink(am: Alertmanager) -> AlertmanagerSink:
    sink = AlertmanagerSink(
        am.url,
        repost_interval=REPOST_S,
        backoff=Backoff(initial=0.2, factor=2, maximum=1.0),
        timeout=2.0,
    )
    sink.start(interval=0.2)
    return sink


def test_alertmanager_down_and_a_worker_restart_lose_nothing_and_repeat_nothing(
    alertmanager: tuple[Alertmanager, WebhookReceiver],
) -> None:
    am, receiver = alertmanager
    a1, a2 = spread("b-1"), spread("b-2")
    old = new_sink(am)
    new: AlertmanagerSink | None = None
    watch = Watch(am)
    try:
        # 1. delivered and notified
        old.send([a1, a2])
        wait_until(lambda: {a1.alert_id, a2.alert_id} <= set(am.active()), 10, "a1, a2 in AM")
        wait_until(lambda: len(notified(receiver)) >= 2, 10, "a1, a2 notified")

        # 2. Alertmanager goes away; a1 resolves, a3 fires; the worker is killed
        am.stop()
        down_at = time.monotonic()
        a1_end, a3 = spread("b-1", "resolved"), spread("b-3", severity="critical")
        old.send([a1_end, a3])
        wait_until(lambda: old.failures >= 2, 10, "the old sink to find Alertmanager down")
        old.stop()  # SIGKILL: what it had queued is gone with it
        assert old.backlog == 2

        # 3. the new owner rebuilt the partition: it re-announces, and sends a new alert
        new = new_sink(am)
        rebuilt = [a1, a2, a1_end, a3]  # made again from the changelog, in order
        new.reannounce([*rebuilt, a2, a3])  # then Detector.firing_alerts
        a4 = spread("b-4")
        new.send([a4])
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
        assert new.failures >= 1 and new.active == 3

        # 4. Alertmanager is back: everything arrives, once
        am.start()
        back_at = time.monotonic()
        firing = {a2.alert_id, a3.alert_id, a4.alert_id}
        wait_until(lambda: set(am.active()) == firing, 15, "a2, a3, a4 firing in AM, a1 not")
        wait_until(
            lambda: (a1.alert_id, "resolved") in notified(receiver), 15, "a1's resolution notified"
        )
        time.sleep(2 * VALIDITY_S)  # several validities: only re-posts keep them there
        listing = am.active()
        assert set(listing) == firing
        assert all(len(listing[aid]) == 1 for aid in firing)  # each once, by alert id
        for aid in firing:
            [shown] = listing[aid]
            assert shown["status"]["state"] == "active"
        # from the first listing that had them all until now, none ever went missing
        after = [seen for at, seen in watch.seen if at > back_at]
        first_full = next(i for i, seen in enumerate(after) if firing <= set(seen))
        gaps = [sorted(firing - set(seen)) for seen in after[first_full:] if firing - set(seen)]
        assert gaps == [], f"firing alerts missing from Alertmanager: {gaps[:3]}"
        assert all(len(v) == 1 for _, seen in watch.seen for v in seen.values())

        # 5. the spread stops: resolved in Alertmanager, each notified resolved
        new.send([spread("b-2", "resolved"), spread("b-3", "resolved", "critical")])
        new.send([spread("b-4", "resolved")])
        wait_until(lambda: am.active() == {}, 15, "nothing active in AM")
        wait_until(
            lambda: {(aid, "resolved") for aid in firing} <= set(notified(receiver)),
            15,
            "the resolutions notified",
        )
        assert new.close(timeout=5) == 0
    finally:
        watch.stop()
        old.stop()
        if new is not None:
            new.stop()

    events = notified(receiver)
    firings = Counter(aid for aid, status in events if status == "firing")
    assert firings == {a.alert_id: 1 for a in (a1, a2, a3, a4)}, events  # paged once each
    for aid in (a1.alert_id, a2.alert_id, a3.alert_id, a4.alert_id):
        statuses = [status for i, status in events if i == aid]
        # never "resolved" and then firing again: resolved only once, at the end
        assert statuses == ["firing", "resolved"], (aid, statuses)
