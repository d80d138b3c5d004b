"""Alert sinks: the Alertmanager and webhook payloads, retry with backoff, no loss, no duplicates.

Most tests drive the sinks through a scripted transport and a hand-moved
clock (deterministic backoff); the last ones go over real HTTP to a local
receiver. The sinks against a real Alertmanager: test_oncall_integration.py.
"""

from __future__ import annotations

import logging
import os
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    status: str = "firing", severity: str = "high", cluster: str = "b-1", ts: int = T0
) -> Alert:
    return Alert(
        alert_id=alert_id(cluster, 1, severity),
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
    am_sink(script, clock, repost_interval=60).send([alert()])
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
    assert (sink.delivered, sink.rejected, sink.backlog) == (1, 1, 0)
    assert "refused alert" in caplog.text and "b-2" in caplog.text and "HTTP 400" in caplog.text


def test_resolution_in_the_future_of_the_wall_clock_is_clamped() -> None:
    # Alertmanager reads a future endsAt as "still firing".
    script, clock = Script(), Clock()
    sink = am_sink(script, clock)
    future = int(WALL * 1000) + 3_600_000
    sink.send([alert(ts=future), alert("resolved", ts=future + 60_000)])
    [[firing, resolved]] = script.posted()
    assert firing["startsAt"] == resolved["startsAt"] == resolved["endsAt"]


def test_alertmanager_sink_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="http"):
        AlertmanagerSink("am:9093")
    with pytest.raises(ValueError, match="validity"):
        AlertmanagerSink("http://am:9093", repost_interval=60, validity=30)


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
    WebhookSink("http://hook", transport=script).send([alert()])
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
    assert (sink.rejected, sink.delivered, sink.backlog) == (1, 1, 0)


def test_a_429_is_retried_not_refused() -> None:
    script, clock = Script(answers=[429]), Clock()
    sink = WebhookSink("http://hook", transport=script, clock=clock, backoff=Backoff(initial=1))
    sink.send([alert()])
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
