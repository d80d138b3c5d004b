"""The on-call path end to end, with the real programs.

``viralwatch simulate`` writes 45 minutes of traffic with planted cascades;
``viralwatch replay`` runs it at 90 times event time with ``/metrics``
served and its Alertmanager sink pointed at a real Alertmanager (Debian's
``prometheus-alertmanager``) that runs the repository's routing
(deploy/alertmanager/alertmanager.yml, with its receivers pointed at a local
webhook receiver and its timers shortened). A real Prometheus scrapes the
replay every second with the repository's rules loaded. The tests check
that the critical cluster's alert reaches on-call's receiver through
Alertmanager, that the resolution follows once the spread stops, that
Prometheus graphed the cluster's velocity, and take a headless Chromium
screenshot of that graph (saved under artifacts/).

Everything started here is stopped by PID at the end of the module.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from programs import (
    Program,
    WebhookReceiver,
    find_program,
    free_port,
    get_json,
    http_get,
    http_ok,
    require_program,
    start,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
SPEED = 90  # event-time seconds per wall-clock second: 45 minutes in 30 s
MINUTES = 45
VELOCITY = "viralwatch_cluster_velocity_per_minute"


def alertmanager_config(receiver_url: str) -> str:
    """The repository's Alertmanager config, receivers pointed here, timers in seconds.

    Each webhook URL becomes ``<receiver_url>/<receiver name>/<n>``, so the
    test sees which receiver Alertmanager's routing chose.
    """
    text = (ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text(encoding="utf-8")
    out, receiver, n = [], None, 0
    for line in text.splitlines():
        name = re.match(r"\s+- name: (\S+)$", line)
        if name:
            receiver, n = name.group(1), 0
        url = re.match(r"(\s+- url: )\S+$", line)
        if url and receiver:
            n += 1
            line = f"{url.group(1)}{receiver_url}/{receiver}/{n}"
        line = re.sub(r"(group_wait|group_interval): \S+", r"\1: 1s", line)
        line = re.sub(r"repeat_interval: \S+", "repeat_interval: 1h", line)
        out.append(line)
    assert n, "no webhook receiver found to point at the test's receiver"
    return "\n".join(out) + "\n"


def prometheus_config(metrics_port: int) -> str:
    """Scrape the replay every second, with the repository's rules (JSON is YAML)."""
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "deploy" / "prometheus" / "rules.yml")],
            "scrape_configs": [
                {
                    "job_name": "viralwatch",
                    "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                }
            ],
        },
        indent=2,
    )


def notifications(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    """Alertmanager's webhook notifications, each with the receiver path it came to."""
    out = []
    for r in receiver.received():
        doc = r.json()
        doc["_path"] = r.path
        doc["_at"] = r.at
        out.append(doc)
    return out


def notified(
    receiver: WebhookReceiver, cluster: str, severity: str, status: str
) -> list[dict[str, Any]]:
    """Notifications carrying an alert of ``cluster`` at ``severity`` in ``status``."""
    return [
        n
        for n in notifications(receiver)
        for a in n["alerts"]
        if a["labels"].get("cluster") == cluster
        and a["labels"].get("severity") == severity
        and a["status"] == status
    ]


@dataclass
class Run:
    """What the module's one end-to-end run left to inspect."""

    tmp: Path
    receiver: WebhookReceiver
    prometheus_url: str
    alertmanager_url: str
    alerts: list[dict[str, Any]]
    cluster: str
    scrape: bytes
    replay_log: str
    started: float
    ended: float
    programs: list[Program] = field(default_factory=list)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    prometheus = require_program("prometheus", package="prometheus")
    alertmanager = require_program(
        "prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager"
    )
    tmp = tmp_path_factory.mktemp("oncall")
    cli = [sys.executable, "-m", "streams.cli"]
    events = tmp / "events.jsonl"
    sim = subprocess.run(
        [*cli, "simulate", "--out", str(events), "--minutes", str(MINUTES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sim.returncode == 0, sim.stderr

    receiver = WebhookReceiver().start()
    programs: list[Program] = []
    try:
        am_port, prom_port, metrics_port = free_port(), free_port(), free_port()
        (tmp / "alertmanager.yml").write_text(alertmanager_config(receiver.url))
        am = start(
            "alertmanager",
            [
                alertmanager,
                f"--config.file={tmp / 'alertmanager.yml'}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # no gossip port: a single instance
            ],
            tmp,
        )
        programs.append(am)
        am_url = f"http://127.0.0.1:{am_port}"
        am.wait_ready(http_ok(f"{am_url}/-/ready"))

        (tmp / "prometheus.yml").write_text(prometheus_config(metrics_port))
        prom = start(
            "prometheus",
            [
                prometheus,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp,
        )
        programs.append(prom)
        prom_url = f"http://127.0.0.1:{prom_port}"
        prom.wait_ready(http_ok(f"{prom_url}/-/ready"))

        started = time.time()
        replay = start(
            "replay",
            [
                *cli,
                "replay",
                str(events),
                "--bank",
                str(tmp / "events.bank.csv"),
                "--out",
                str(tmp / "alerts.jsonl"),
                "--speed",
                str(SPEED),
                "--metrics-port",
                str(metrics_port),
                "--alertmanager",
                am_url,
                "--hold",
                "8",
            ],
            tmp,
            cwd=ROOT,
            env={"VIRALWATCH_PSEUDONYM_KEY": "integration-test-key"},
        )
        programs.append(replay)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        replay.wait_ready(http_ok(metrics_url))

        # A scrape taken while clusters spread, for promtool check metrics.
        def spreading() -> bytes | None:
            status, body = http_get(metrics_url)
            return body if status == 200 and f"{VELOCITY}{{".encode() in body else None

        scrape = wait_until(spreading, 60, "the replay to export a cluster's velocity")

        try:
            replay.process.wait(timeout=MINUTES * 60 / SPEED + 90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"replay did not finish:\n{replay.tail()}")
        ended = time.time()
        assert replay.process.returncode == 0, replay.tail()
        alerts = [
            json.loads(line) for line in (tmp / "alerts.jsonl").read_text().splitlines() if line
        ]
        critical = [a["cluster_id"] for a in alerts if a["severity"] == "critical"]
        assert critical, f"the simulation planted a critical cascade; alerts: {alerts}"
        yield Run(
            tmp=tmp,
            receiver=receiver,
            prometheus_url=prom_url,
            alertmanager_url=am_url,
            alerts=alerts,
            cluster=critical[0],
            scrape=scrape,
            replay_log=replay.tail(200),
            started=started,
            ended=ended,
            programs=programs,
        )
    finally:
        for program in reversed(programs):
            program.stop()
        receiver.stop()


def test_the_critical_alert_reaches_on_call_through_alertmanager(run: Run) -> None:
    firing = wait_until(
        lambda: notified(run.receiver, run.cluster, "critical", "firing"),
        30,
        "Alertmanager to notify the critical alert",
    )
    first = firing[0]
    # routed by severity: critical pages (pager and chat webhooks of safety-critical)
    paths = {n["_path"] for n in firing}
    assert paths == {"/safety-critical/1", "/safety-critical/2"}, paths
    assert first["receiver"] == "safety-critical"
    [alert] = [a for a in first["alerts"] if a["labels"]["cluster"] == run.cluster]
    assert alert["labels"] == {
        "alertname": "ViralwatchSpread",
        "severity": "critical",
        "bank": alert["labels"]["bank"],
        "cluster": run.cluster,
    }
    sent = next(
        a for a in run.alerts if a["cluster_id"] == run.cluster and a["severity"] == "critical"
    )
    ann = alert["annotations"]
    assert ann["alert_id"] == sent["alert_id"]
    assert ann["runbook_url"].endswith("#critical-spread")
    assert ann["dashboard_url"].endswith(f"var-cluster={run.cluster}")
    assert "live=" in ann["figures"] and "velocity/min" in ann["figures"]
    assert alert["labels"]["bank"] == sent["match"]["bank"]


def test_the_resolution_follows_once_the_spread_stops(run: Run) -> None:
    resolved = wait_until(
        lambda: notified(run.receiver, run.cluster, "critical", "resolved"),
        30,
        "Alertmanager to notify the resolution",
    )
    firing = notified(run.receiver, run.cluster, "critical", "firing")
    assert min(n["_at"] for n in resolved) > min(n["_at"] for n in firing)
    [done] = [
        a
        for a in run.alerts
        if a["cluster_id"] == run.cluster
        and a["severity"] == "critical"
        and a["status"] == "resolved"
    ]
    [alert] = [a for a in resolved[0]["alerts"] if a["labels"]["cluster"] == run.cluster]
    assert alert["endsAt"].startswith(done["ts"][:19])  # the resolution's event time
    # resolved while the replay still ran: the spread stopped, traffic went on
    assert min(n["_at"] for n in resolved) < run.ended


def prom_value(run: Run, expr: str) -> list[float]:
    doc = get_json(f"{run.prometheus_url}/api/v1/query?query=" + urllib.parse.quote(expr))
    return [float(r["value"][1]) for r in doc["data"]["result"]]


def test_every_alert_was_delivered_once_and_every_cluster_reached_on_call(run: Run) -> None:
    assert "could not be delivered" not in run.replay_log
    # the sink's own counters, as Prometheus scraped them last
    sink = '{sink="alertmanager"}'
    assert prom_value(run, f"last_over_time(viralwatch_sink_delivered_total{sink}[10m])") == [
        len(run.alerts)
    ]
    for counter in ("failures_total", "rejected_total", "duplicates_total", "backlog"):
        assert prom_value(run, f"last_over_time(viralwatch_sink_{counter}{sink}[10m])") == [0]
    # each cluster's highest severity (the lower ones may be inhibited) fired and resolved
    rank = {"warning": 0, "high": 1, "critical": 2}
    top: dict[str, str] = {}
    for a in run.alerts:
        if rank[a["severity"]] >= rank[top.get(a["cluster_id"], "warning")]:
            top[a["cluster_id"]] = a["severity"]
    assert len(top) >= 3
    for cluster, severity in top.items():
        for status in ("firing", "resolved"):
            wait_until(
                functools.partial(notified, run.receiver, cluster, severity, status),
                20,
                f"{status} notification for {cluster} at {severity}",
            )


def test_prometheus_scraped_the_velocity_of_the_alerted_cluster(run: Run) -> None:
    query = urllib.parse.urlencode(
        {
            "query": f'{VELOCITY}{{cluster="{run.cluster}"}}',
            "start": f"{run.started:.3f}",
            "end": f"{time.time():.3f}",
            "step": "1",
        }
    )
    doc = get_json(f"{run.prometheus_url}/api/v1/query_range?{query}")
    [series] = doc["data"]["result"]
    values = [float(v) for _, v in series["values"]]
    assert len(values) >= 10
    assert max(values) >= 20, "the critical cluster spread at more than 20 shares a minute"
    up = get_json(
        f"{run.prometheus_url}/api/v1/query?query=" + urllib.parse.quote("max_over_time(up[5m])")
    )
    assert [r["value"][1] for r in up["data"]["result"]] == ["1"]


def test_prometheus_loaded_the_repository_rules(run: Run) -> None:
    doc = get_json(f"{run.prometheus_url}/api/v1/rules")
    names = {r["name"] for g in doc["data"]["groups"] for r in g["rules"]}
    assert {"ViralwatchWorkerDown", "ViralwatchSpreadVelocity"} <= names
    assert len(names) == 11


def test_a_real_scrape_passes_promtool_check_metrics(run: Run) -> None:
    promtool = require_program("promtool", package="prometheus")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=run.scrape, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b'viralwatch_events_total{type="share"}' in run.scrape


def screenshot(chromium: str, url: str, out: Path, profile: Path) -> None:
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1400,900",
        "--virtual-time-budget=15000",
        f"--screenshot={out}",
        url,
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: Chromium and its helpers
        process.communicate()
        pytest.fail("Chromium did not finish the screenshot in 90 s")
    assert process.returncode == 0 and out.exists(), output.decode(errors="replace")[-2000:]


def test_screenshot_of_prometheus_graphing_the_cluster_velocity(run: Run) -> None:
    chromium = find_program("chromium", "chromium-browser", "google-chrome")
    if chromium is None:
        pytest.skip("chromium not installed (Debian package chromium): no screenshot")
    window = max(60, int(time.time() - run.started) + 10)
    params = {
        "g0.expr": f'{VELOCITY}{{cluster="{run.cluster}"}}',
        "g0.tab": "0",
        "g0.range_input": f"{window}s",
        "g0.stacked": "0",
        "g0.show_exemplars": "0",
    }
    url = f"{run.prometheus_url}/graph?" + urllib.parse.urlencode(params)
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / "prometheus-velocity.png"
    out.unlink(missing_ok=True)
    screenshot(chromium, url, out, run.tmp / "chromium-profile")
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (1400, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    # a rendered page with a plotted line, not a blank or error page
    assert colours is None or len(colours) > 50, "the screenshot looks blank"
    shutil.copy(out, run.tmp / out.name)
