"""The on-call configuration: Prometheus rules and their unit tests, Alertmanager routing,
the generated Grafana dashboards, and the runbook links, checked with the real tools.

promtool and amtool come with the Debian packages prometheus and
prometheus-alertmanager (`make programs` installs them); without them those
tests skip and say so.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from programs import require_program
from prometheus_client import CollectorRegistry

from streams.alerts import SEVERITIES, Alert
from streams.metrics import PipelineMetrics
from streams.stats import Stats

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
GRAFANA = ROOT / "deploy" / "grafana"
RUNBOOK = ROOT / "docs" / "runbook.md"
POLICY = ROOT / "streams" / "policy.toml"

#: PromQL functions, keywords and label names that look like identifiers in an expression.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "by", "without", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "rate", "irate", "increase", "delta",
    "histogram_quantile", "absent", "le", "offset", "bool", "label_values",
}  # fmt: skip


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


# -- what streams/metrics.py exports --------------------------------------------


@dataclass(frozen=True)
class _Summary:
    cluster_id: str = "b-1"
    bank: str | None = "ncii"
    velocity_5m: float = 1.0
    size: int = 2
    live: int = 2


@dataclass
class _Sink:
    name: str = "alertmanager"
    backlog: int = 0
    delivered: int = 0
    failures: int = 0
    rejected: int = 0
    duplicates: int = 0
    capacity: int = 10_000  # a bounded queue (streams.metrics.QueueStatus)
    dropped: int = 0


def exported_metric_names() -> set[str]:
    """Every sample name a worker's registry exposes, with every part of it in use."""
    registry = CollectorRegistry()
    stats = Stats(watermark_ms=1)
    stats.matched["ncii"] += 1
    m = PipelineMetrics(registry, stats, fastest=lambda n: [_Summary()])
    m.watch_sink(_Sink())
    m.observe_lookup(0.001)
    m.observe_alerts([Alert("vw-1", "firing", "high", 0, "b-1", 0)])
    return {s.name for metric in registry.collect() for s in metric.samples}


def metric_names_in(expr: str) -> set[str]:
    """The metric names an expression reads (label matchers and strings removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("__")}


# -- Prometheus ----------------------------------------------------------------


def rule_exprs() -> list[tuple[str, str]]:
    """(alert name, expression) for every rule in rules.yml (the file is plain block YAML)."""
    text = (PROMETHEUS / "rules.yml").read_text(encoding="utf-8")
    out = []
    for block in re.split(r"\n\s+- alert: ", text)[1:]:
        name = block.split("\n", 1)[0].strip()
        m = re.search(r"\n\s+expr: (\|\n(?P<multi>(?:\s{10,}.*\n)+)|(?P<one>.*))", block)
        assert m, f"no expr for {name}"
        expr = m.group("multi") or m.group("one")
        out.append((name, " ".join(expr.split())))
    return out


def test_promtool_unit_tests_for_the_alert_rules_pass() -> None:
    promtool = require_program("promtool", package="prometheus")
    result = run([promtool, "test", "rules", "tests.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_rule_has_a_firing_unit_test() -> None:
    tests = (PROMETHEUS / "tests.yml").read_text(encoding="utf-8")
    names = [name for name, _ in rule_exprs()]
    assert len(names) == 11
    for name in names:
        # an eval that expects this alert to fire (exp_alerts with labels, not [])
        pattern = rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:"
        assert re.search(pattern, tests), f"{name} has no test where it fires"


def test_prometheus_config_and_rules_are_valid() -> None:
    promtool = require_program("promtool", package="prometheus")
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 rules found" in result.stdout


def test_alert_rules_read_metrics_the_workers_export() -> None:
    exported = exported_metric_names() | {"up"}
    for name, expr in rule_exprs():
        used = metric_names_in(expr)
        assert used, f"{name}: no metric found in {expr!r}"
        assert used <= exported, f"{name} reads {sorted(used - exported)}, not exported"


# -- Alertmanager --------------------------------------------------------------


def test_alertmanager_config_is_valid() -> None:
    amtool = require_program("amtool", package="prometheus-alertmanager")
    result = run([amtool, "check-config", str(ALERTMANAGER)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "ViralwatchSpread", "severity": "critical", "cluster": "b-1"},
         "safety-critical"),
        ({"alertname": "ViralwatchSpread", "severity": "high", "cluster": "b-1"}, "safety-high"),
        ({"alertname": "ViralwatchSpread", "severity": "warning", "cluster": "b-1"},
         "safety-chat"),
        ({"alertname": "ViralwatchSpreadVelocity", "severity": "high", "component": "spread"},
         "safety-high"),
        ({"alertname": "ViralwatchWorkerDown", "severity": "critical", "component": "pipeline"},
         "pipeline-pager"),
        ({"alertname": "ViralwatchNoEvents", "severity": "high", "component": "pipeline"},
         "pipeline-chat"),
        ({"alertname": "Unknown"}, "safety-chat"),
    ],
)  # fmt: skip
def test_alerts_route_by_severity_and_component(labels: dict[str, str], receiver: str) -> None:
    amtool = require_program("amtool", package="prometheus-alertmanager")
    argv = [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}"]
    result = run(argv + [f"{k}={v}" for k, v in labels.items()])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_critical_inhibits_lower_severities_of_the_same_cluster() -> None:
    text = ALERTMANAGER.read_text(encoding="utf-8")
    rule = re.search(
        r"source_matchers: \['alertname=\"ViralwatchSpread\"', 'severity=\"critical\"'\]\n"
        r"\s+target_matchers: \['alertname=\"ViralwatchSpread\"', 'severity=~\"high\|warning\"'\]\n"
        r"\s+equal: \[cluster\]",
        text,
    )
    assert rule, "critical must inhibit high and warning for the same cluster"


# -- Grafana -------------------------------------------------------------------


def generator() -> ModuleType:
    pytest.importorskip(
        "grafana_foundation_sdk", reason="grafana-foundation-sdk==0.0.21 (dev extra) not installed"
    )
    spec = importlib.util.spec_from_file_location("dashboards", GRAFANA / "dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def boards() -> dict[str, Any]:
    return {
        p.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def panel_exprs() -> Iterator[tuple[str, str, str]]:
    for name, board in boards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield name, panel["title"], target["expr"]


def test_dashboards_in_the_repository_are_what_the_generator_makes() -> None:
    rendered = generator().render()
    assert sorted(rendered) == sorted(boards()), "a dashboard file is missing or extra"
    for name, text in rendered.items():
        on_disk = (GRAFANA / "dashboards" / name).read_text(encoding="utf-8")
        assert on_disk == text, f"{name} drifted: run python deploy/grafana/dashboards.py"


def test_dashboards_have_what_on_call_needs() -> None:
    by_uid = {b["uid"]: b for b in boards().values()}
    assert set(by_uid) == {"viralwatch-oncall", "viralwatch-pipeline"}
    oncall = by_uid["viralwatch-oncall"]
    titles = " | ".join(p["title"] for p in oncall["panels"])
    for needed in ("alerts firing", "Fastest banked clusters", "Velocity", "by bank", "Takedowns",
                   "live copies"):  # fmt: skip
        assert needed.lower() in titles.lower(), needed
    [var] = oncall["templating"]["list"]
    assert var["name"] == "cluster"
    health = " | ".join(p["title"] for p in by_uid["viralwatch-pipeline"]["panels"]).lower()
    for needed in ("throughput", "lag", "rejections", "latency", "backlog"):
        assert needed in health, needed


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_program("promtool", package="prometheus")
    exprs = [expr for _, _, expr in panel_exprs()]
    assert len(exprs) >= 30
    lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
    for i, expr in enumerate(exprs):
        concrete = expr.replace("$__rate_interval", "5m").replace("$cluster", ".*")
        assert "$" not in concrete, f"unhandled variable in {expr!r}"
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(concrete)}"]
    rules = tmp_path / "queries.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run([promtool, "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


def test_a_bad_query_would_be_caught(tmp_path: Path) -> None:
    # The check above can fail: promtool refuses broken PromQL in the same harness.
    promtool = require_program("promtool", package="prometheus")
    rules = tmp_path / "bad.yml"
    rules.write_text(
        'groups:\n  - name: g\n    rules:\n      - record: r\n        expr: "sum by (x (y)"\n',
        encoding="utf-8",
    )
    assert run([promtool, "check", "rules", str(rules)]).returncode != 0


def test_every_panel_query_reads_metrics_the_workers_export() -> None:
    exported = exported_metric_names() | {"up"}
    for board, title, expr in panel_exprs():
        used = metric_names_in(expr)
        assert used, f"{board} / {title}: no metric in {expr!r}"
        assert used <= exported, f"{board} / {title} reads {sorted(used - exported)}"
    for board in boards().values():
        for var in board.get("templating", {}).get("list", []):
            m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", var["query"])
            assert m, f"variable query not understood: {var['query']}"
            assert m.group(1) in exported, var["query"]


def test_the_metric_name_check_can_fail() -> None:
    assert metric_names_in('sum by (bank) (rate(viralwatch_nope_total{bank="x"}[5m]))') == {
        "viralwatch_nope_total"
    }
    assert "viralwatch_nope_total" not in exported_metric_names()


def test_provisioning_points_at_the_dashboards_datasource() -> None:
    datasources = (GRAFANA / "provisioning" / "datasources" / "viralwatch.yml").read_text()
    uids = set(re.findall(r"^\s+uid: (\S+)", datasources, flags=re.M))
    for board in boards().values():
        for panel in board["panels"]:
            if "datasource" in panel:
                assert panel["datasource"]["uid"] in uids
    providers = (GRAFANA / "provisioning" / "dashboards" / "viralwatch.yml").read_text()
    assert "type: file" in providers and "path: /var/lib/grafana/dashboards/viralwatch" in providers


def test_alert_links_in_the_policy_point_at_the_on_call_dashboard() -> None:
    links = tomllib.loads(POLICY.read_text(encoding="utf-8"))["links"]
    assert "/d/viralwatch-oncall/" in links["dashboard"]
    assert "var-cluster={cluster_id}" in links["dashboard"]


# -- runbook -------------------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings (and explicit ``<a id>`` anchors)."""
    anchors = set(re.findall(r'<a id="([^"]+)"', markdown))
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_links_to_a_runbook_section_that_exists() -> None:
    anchors = github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    rules = (PROMETHEUS / "rules.yml").read_text(encoding="utf-8")
    linked = re.findall(r"runbook_url: \S+#(\S+)", rules)
    assert len(linked) == len(rule_exprs())
    template = tomllib.loads(POLICY.read_text(encoding="utf-8"))["links"]["runbook"]
    base, _, anchor = template.partition("#")
    assert "{severity}" in anchor, "spread alerts should link to their severity's section"
    linked += [anchor.format(severity=s) for s in SEVERITIES]
    missing = [a for a in linked if a not in anchors]
    assert not missing, f"runbook sections missing for {missing}"
    assert {re.match(r"(\S+)#", u).group(1) for u in re.findall(r"runbook_url: (\S+)", rules)} == {  # type: ignore[union-attr]
        base
    }


def test_runbook_covers_the_on_call_procedures() -> None:
    text = RUNBOOK.read_text(encoding="utf-8").lower()
    for section in ("first five minutes", "inspect a cluster", "escalat", "silenc"):
        assert section in text, section
