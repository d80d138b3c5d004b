"""The worker's Prometheus metrics: values read from the core, bounded labels, a real scrape."""

from __future__ import annotations

import random
import subprocess
import urllib.request
from collections import Counter
from dataclasses import dataclass

import pytest
from eventgen import T0, Traffic, pdq_hex
from programs import find_program
from prometheus_client import CollectorRegistry

from streams.alerts import Alert, Pseudonymizer
from streams.banks import BankEntry, HashBanks
from streams.events import EVENT_TYPES, REJECT_REASONS
from streams.metrics import PipelineMetrics, serve_metrics
from streams.pipeline import Pipeline
from streams.policy import AlertPolicy
from streams.stats import Stats

#: Every label any viralwatch metric may carry: none of them per user or per post.
ALLOWED_LABELS = {"type", "reason", "bank", "severity", "status", "cluster", "sink", "le"}


@dataclass(frozen=True)
class Summary:
    cluster_id: str
    bank: str | None
    velocity_5m: float
    size: int
    live: int


@dataclass
class FakeSink:
    name: str
    backlog: int = 0
    delivered: int = 0
    failures: int = 0
    rejected: int = 0
    duplicates: int = 0


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def series(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples]


def test_counters_are_read_from_the_core_at_scrape_time() -> None:
    registry, stats = CollectorRegistry(), Stats()
    PipelineMetrics(registry, stats)
    assert value(registry, "viralwatch_events_total", type="upload") == 0
    stats.events["upload"] += 2
    stats.rejected["not_json"] += 3
    stats.rejected["bad_ts"] += 1
    stats.matched["stopncii"] += 2
    stats.alerts[("high", "firing")] += 1
    stats.clusters_evicted = 4
    stats.log_compactions, stats.log_bytes = 2, 4096
    assert value(registry, "viralwatch_events_total", type="upload") == 2
    assert value(registry, "viralwatch_events_rejected_total", reason="not_json") == 3
    assert value(registry, "viralwatch_events_dead_lettered_total") == 4
    assert value(registry, "viralwatch_uploads_matched_total", bank="stopncii") == 2
    assert value(registry, "viralwatch_alerts_total", severity="high", status="firing") == 1
    assert value(registry, "viralwatch_alerts_total", severity="critical", status="resolved") == 0
    assert value(registry, "viralwatch_clusters_evicted_total") == 4
    assert value(registry, "viralwatch_state_log_compactions_total") == 2
    assert value(registry, "viralwatch_state_log_bytes") == 4096


def test_the_stats_counts_store_as_a_dict_and_read_as_a_counter() -> None:
    """Every event adds to a count (``stats.events[type] += 1``): a Counter's
    ``__delitem__``, a Python method, would route each store through a Python-level
    ``__setitem__`` call; the counts keep dict's own, and read as Counters."""
    stats = Stats()
    for counts in (stats.events, stats.rejected, stats.matched, stats.alerts):
        assert isinstance(counts, Counter)
        assert type(counts).__delitem__ is dict.__delitem__
    stats.events["share"] += 2
    stats.alerts[("high", "firing")] += 1
    assert stats.events["upload"] == 0 and "upload" not in stats.events
    assert stats.summary()["events"] == {"share": 2}
    assert stats.summary()["alerts"] == {"high/firing": 1}


def test_every_event_type_and_reject_reason_has_a_series_from_the_start() -> None:
    registry = CollectorRegistry()
    PipelineMetrics(registry, Stats())
    for kind in EVENT_TYPES:
        assert value(registry, "viralwatch_events_total", type=kind) == 0
    for reason in REJECT_REASONS:
        assert value(registry, "viralwatch_events_rejected_total", reason=reason) == 0


def test_processing_lag_is_wall_clock_minus_watermark_and_absent_before_any_event() -> None:
    registry, stats = CollectorRegistry(), Stats()
    clock = [1_767_225_700.0]
    PipelineMetrics(registry, stats, clock=lambda: clock[0])
    assert value(registry, "viralwatch_processing_lag_seconds") is None
    stats.watermark_ms = T0
    assert value(registry, "viralwatch_processing_lag_seconds") == pytest.approx(100.0)
    assert value(registry, "viralwatch_watermark_timestamp_seconds") == T0 / 1000
    clock[0] += 30
    assert value(registry, "viralwatch_processing_lag_seconds") == pytest.approx(130.0)


def test_fastest_clusters_are_bounded_to_top_n() -> None:
    rows = [Summary(f"b-{i:02d}", "ncii", 100.0 - i, 10 + i, 9) for i in range(50)]
    asked = []

    def fastest(n: int) -> list[Summary]:
        asked.append(n)
        return rows  # a detector that ignores n must still not blow up the label set

    registry = CollectorRegistry()
    PipelineMetrics(registry, Stats(), fastest=fastest, top_n=5)
    velocity = [s for s in series(registry) if s[0] == "viralwatch_cluster_velocity_per_minute"]
    assert [s[1]["cluster"] for s in velocity] == ["b-00", "b-01", "b-02", "b-03", "b-04"]
    assert value(registry, "viralwatch_cluster_size", cluster="b-03", bank="ncii") == 13
    assert value(registry, "viralwatch_cluster_live_copies", cluster="b-03", bank="ncii") == 9
    assert set(asked) == {5}
    with pytest.raises(ValueError, match="top_n"):
        PipelineMetrics(CollectorRegistry(), Stats(), top_n=1000)


def test_a_scrape_that_races_the_detector_is_retried() -> None:
    calls = []

    def flaky(n: int) -> list[Summary]:
        calls.append(n)
        if len(calls) % 2:
            raise RuntimeError("dictionary changed size during iteration")
        return [Summary("b-1", "ncii", 3.0, 4, 4)]

    registry = CollectorRegistry()
    PipelineMetrics(registry, Stats(), fastest=flaky)
    assert value(registry, "viralwatch_cluster_velocity_per_minute", cluster="b-1", bank="ncii")


def test_alerts_leaving_the_worker_give_latency_and_the_active_set() -> None:
    registry = CollectorRegistry()
    now = T0 / 1000 + 2.0
    m = PipelineMetrics(registry, Stats(), clock=lambda: now)
    fire = Alert("vw-1", "firing", "high", T0, "b-1", T0 - 60_000)
    warn = Alert("vw-2", "firing", "warning", T0, "b-2", T0 - 60_000)
    m.observe_alerts([fire, warn])
    assert value(registry, "viralwatch_alerts_active", severity="high") == 1
    assert value(registry, "viralwatch_alerts_active", severity="warning") == 1
    assert value(registry, "viralwatch_event_to_alert_seconds_count") == 2
    assert value(registry, "viralwatch_event_to_alert_seconds_sum") == pytest.approx(4.0)
    assert value(registry, "viralwatch_event_to_alert_seconds_bucket", le="1.0") == 0
    assert value(registry, "viralwatch_event_to_alert_seconds_bucket", le="2.5") == 2
    m.observe_alerts([Alert("vw-1", "resolved", "high", T0 + 1, "b-1", T0 - 60_000)])
    assert value(registry, "viralwatch_alerts_active", severity="high") == 0
    assert value(registry, "viralwatch_event_to_alert_seconds_count") == 2  # firing only


def test_sinks_backlog_and_counters_are_exported_per_sink() -> None:
    registry = CollectorRegistry()
    m = PipelineMetrics(registry, Stats())
    am = FakeSink("alertmanager", backlog=3, failures=7)
    m.watch_sink(am)
    m.watch_sink(FakeSink("webhook", delivered=2))
    assert value(registry, "viralwatch_sink_backlog", sink="alertmanager") == 3
    assert value(registry, "viralwatch_sink_failures_total", sink="alertmanager") == 7
    assert value(registry, "viralwatch_sink_delivered_total", sink="webhook") == 2
    am.backlog = 0
    assert value(registry, "viralwatch_sink_backlog", sink="alertmanager") == 0
    with pytest.raises(ValueError, match="already watched"):
        m.watch_sink(FakeSink("webhook"))


def test_lookup_latency_histogram_observes_seconds() -> None:
    registry = CollectorRegistry()
    m = PipelineMetrics(registry, Stats())
    m.observe_lookup(0.0003)
    m.observe_lookup(0.02)
    assert value(registry, "viralwatch_hash_lookup_seconds_count") == 2
    assert value(registry, "viralwatch_hash_lookup_seconds_bucket", le="0.0005") == 1


def spreading_pipeline() -> tuple[Pipeline, str]:
    t, rng = Traffic(), random.Random(11)
    pdq = pdq_hex(rng)
    root = t.upload(T0, pdq=pdq, user="uploader-alice")
    t.burst(root, T0 + 1000, 200, 1000)  # 60 a minute
    banks = HashBanks()
    banks.add(BankEntry("ncii", "pdq", pdq, "case-1"))
    pipe = Pipeline(banks, AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"k"))
    for line in t.lines():
        pipe.feed(line)
    return pipe, BankEntry("ncii", "pdq", pdq).cluster_id


def test_metrics_of_a_real_pipeline_run_name_its_fastest_cluster_and_no_user() -> None:
    pipe, cluster = spreading_pipeline()
    registry = CollectorRegistry()
    PipelineMetrics(registry, pipe.stats, fastest=pipe.detector.fastest)
    # applied so far: all but the last minute, which the allowed lateness still holds
    assert value(registry, "viralwatch_events_total", type="share") == 200 - 60
    assert value(registry, "viralwatch_uploads_matched_total", bank="ncii") == 1
    [top] = pipe.detector.fastest(1)
    name = "viralwatch_cluster_velocity_per_minute"
    velocity = value(registry, name, cluster=cluster, bank="ncii")
    assert velocity is not None and velocity > 20
    assert velocity == pytest.approx(top.velocity_5m)
    for name, labels, _ in series(registry):
        assert name.startswith("viralwatch_"), name
        assert set(labels) <= ALLOWED_LABELS, (name, labels)
        for v in labels.values():
            assert not v.startswith(("user", "uploader")), (name, labels)


def test_a_real_scrape_passes_promtool_check_metrics() -> None:
    pipe, _ = spreading_pipeline()
    registry = CollectorRegistry()
    m = PipelineMetrics(registry, pipe.stats, fastest=pipe.detector.fastest)
    m.watch_sink(FakeSink("alertmanager"))
    m.observe_lookup(0.001)
    server = serve_metrics(registry, 0)
    try:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body = response.read()
    finally:
        server.stop()
    assert b"viralwatch_cluster_velocity_per_minute{" in body
    promtool = find_program("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus): cannot lint the scrape")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
