"""Grafana dashboards for viralwatch, as code (grafana-foundation-sdk 0.0.21).

    python deploy/grafana/dashboards.py          # write deploy/grafana/dashboards/*.json
    python deploy/grafana/dashboards.py --check  # exit 1 if the JSON is not what this makes

Two boards:

- ``viralwatch-oncall`` (on-call overview): alerts active now and emitted,
  the fastest banked clusters (velocity, size, live copies), velocity over
  time, matches by bank, takedowns. The ``cluster`` variable narrows it to
  one cluster: alerts link here with ``?var-cluster=<cluster id>``.
- ``viralwatch-pipeline`` (pipeline health): throughput, processing lag,
  rejections, dead letters, lookup and alert latency, cluster state, alert
  delivery.

Every query reads a metric that ``streams/metrics.py`` exports (the tests
check each one against a real registry, and check the PromQL with promtool).
"""

from __future__ import annotations

import sys
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    dashboard,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import (
    common as common_builders,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataTransformerConfig,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = common.DataSourceRef(type_val="prometheus", uid="prometheus")
ONCALL_UID = "viralwatch-oncall"
PIPELINE_UID = "viralwatch-pipeline"
CLUSTER = 'cluster=~"$cluster"'


def query(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant().format(PromQueryFormat.TABLE)
    return q


def series(
    title: str,
    description: str,
    unit: str,
    *queries: prometheus.Dataquery,
    height: int = 8,
    span: int = 12,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(height)
        .span(span)
        .line_width(2)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .calcs(["lastNotNull", "max"])
        )
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def single(title: str, description: str, unit: str, expr: str, *, span: int = 4) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(span)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(query(expr))
    )


def oncall() -> dashboard.Dashboard:
    cluster_var = (
        dashboard.QueryVariable("cluster")
        .label("Cluster")
        .description("Banked clusters among the fastest; alerts link here with one selected.")
        .datasource(DATASOURCE)
        .query("label_values(viralwatch_cluster_velocity_per_minute, cluster)")
        .definition("label_values(viralwatch_cluster_velocity_per_minute, cluster)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
        .multi(True)
        .allow_custom_value(True)
    )
    fastest_table = (
        table.Panel()
        .title("Fastest banked clusters now")
        .description(
            "The fastest banked clusters by 5-minute velocity (shares/min), with cascade "
            "size and live copies. Live copies are what takedowns still have to remove."
        )
        .datasource(DATASOURCE)
        .height(9)
        .span(12)
        .with_target(
            query(
                "topk(10, max by (cluster, bank) "
                f"(viralwatch_cluster_velocity_per_minute{{{CLUSTER}}}))",
                ref="velocity",
                instant=True,
            )
        )
        .with_target(
            query(
                f"max by (cluster, bank) (viralwatch_cluster_size{{{CLUSTER}}})",
                ref="size",
                instant=True,
            )
        )
        .with_target(
            query(
                f"max by (cluster, bank) (viralwatch_cluster_live_copies{{{CLUSTER}}})",
                ref="live",
                instant=True,
            )
        )
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "Value #velocity": "shares/min (5m)",
                        "Value #size": "posts",
                        "Value #live": "live copies",
                    },
                },
            )
        )
        .sort_by(
            [common_builders.TableSortByFieldState().display_name("shares/min (5m)").desc(True)]
        )
    )
    by_severity = (
        bargauge.Panel()
        .title("Spread alerts firing, by severity")
        .description("Alerts this pipeline has firing now (warning, high, critical).")
        .datasource(DATASOURCE)
        .height(9)
        .span(6)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(query("sum by (severity) (viralwatch_alerts_active)", "{{severity}}"))
    )
    builder = (
        dashboard.Dashboard("Viralwatch on-call")
        .uid(ONCALL_UID)
        .description("Known-harmful content spreading now: what to look at first.")
        .tags(["viralwatch", "on-call"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone(common.TimeZoneUtc)
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .variables([cluster_var])
        .with_row(dashboard.Row("Now"))
        .with_panel(
            single(
                "Spread alerts firing",
                "Alerts firing now, all severities (each resolves when velocity stays low).",
                "none",
                "sum(viralwatch_alerts_active)",
                span=6,
            )
        )
        .with_panel(
            single(
                "Critical alerts firing",
                "Critical spread alerts firing now: each one pages.",
                "none",
                'sum(viralwatch_alerts_active{severity="critical"})',
                span=6,
            )
        )
        .with_panel(
            single(
                "Fastest cluster (shares/min)",
                "The highest 5-minute velocity among banked clusters.",
                "none",
                f"max(viralwatch_cluster_velocity_per_minute{{{CLUSTER}}})",
                span=6,
            )
        )
        .with_panel(
            single(
                "Live copies in the fastest clusters",
                "Posts not yet taken down, summed over the fastest banked clusters.",
                "none",
                f"sum(viralwatch_cluster_live_copies{{{CLUSTER}}})",
                span=6,
            )
        )
        .with_panel(fastest_table)
        .with_panel(by_severity)
        .with_panel(
            series(
                "Alerts emitted",
                "Alerts leaving the pipeline per hour, by severity and status.",
                "none",
                query(
                    "sum by (severity, status) "
                    "(rate(viralwatch_alerts_total[$__rate_interval])) * 3600",
                    "{{severity}} {{status}}",
                ),
                height=9,
                span=6,
            )
        )
        .with_row(dashboard.Row("Spread"))
        .with_panel(
            series(
                "Velocity of the fastest clusters",
                "Shares per minute over the last 5 minutes of event time, per banked cluster.",
                "none",
                query(
                    f"max by (cluster, bank) (viralwatch_cluster_velocity_per_minute{{{CLUSTER}}})",
                    "{{cluster}} ({{bank}})",
                ),
            )
        )
        .with_panel(
            series(
                "Cascade size and live copies",
                "Posts in each fast cascade, and how many are still up.",
                "none",
                query(
                    f"max by (cluster) (viralwatch_cluster_size{{{CLUSTER}}})",
                    "{{cluster}} posts",
                    "size",
                ),
                query(
                    f"max by (cluster) (viralwatch_cluster_live_copies{{{CLUSTER}}})",
                    "{{cluster}} live",
                    "live",
                ),
            )
        )
        .with_panel(
            series(
                "Uploads matched, by bank",
                "Uploads matching a bank entry, per minute.",
                "none",
                query(
                    "sum by (bank) (rate(viralwatch_uploads_matched_total[$__rate_interval])) * 60",
                    "{{bank}}",
                ),
            )
        )
        .with_panel(
            series(
                "Takedowns",
                "Takedown events applied per minute (all clusters).",
                "none",
                query(
                    'sum(rate(viralwatch_events_total{type="takedown"}[$__rate_interval])) * 60',
                    "takedowns/min",
                ),
                query(
                    "sum(rate(viralwatch_clusters_emerging_total[$__rate_interval])) * 60",
                    "emerging unbanked clusters/min",
                    "B",
                ),
            )
        )
    )
    return builder


def pipeline() -> dashboard.Dashboard:
    builder = (
        dashboard.Dashboard("Viralwatch pipeline health")
        .uid(PIPELINE_UID)
        .description("Is the pipeline keeping up, refusing input, or failing to deliver alerts?")
        .tags(["viralwatch", "pipeline"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone(common.TimeZoneUtc)
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_row(dashboard.Row("Flow"))
        .with_panel(
            single(
                "Workers up",
                "Workers Prometheus scrapes successfully.",
                "none",
                'sum(up{job="viralwatch"})',
                span=6,
            )
        )
        .with_panel(
            single(
                "Processing lag",
                "The worst worker's lag: wall clock minus its event-time watermark.",
                "s",
                "max(viralwatch_processing_lag_seconds)",
                span=6,
            )
        )
        .with_panel(
            single(
                "Dead-lettered",
                "Share of input refused over the last 5 minutes.",
                "percentunit",
                "sum(rate(viralwatch_events_dead_lettered_total[5m])) / "
                "(sum(rate(viralwatch_events_total[5m])) "
                "+ sum(rate(viralwatch_events_dead_lettered_total[5m])))",
                span=6,
            )
        )
        .with_panel(
            single(
                "Alerts waiting for delivery",
                "Alerts every sink is still retrying; above 0 for long, on-call hears nothing.",
                "none",
                "sum(viralwatch_sink_backlog)",
                span=6,
            )
        )
        .with_panel(
            series(
                "Throughput",
                "Events applied per second, by type.",
                "ops",
                query(
                    "sum by (type) (rate(viralwatch_events_total[$__rate_interval]))", "{{type}}"
                ),
            )
        )
        .with_panel(
            series(
                "Processing lag",
                "Wall clock minus the event-time watermark, per worker.",
                "s",
                query("viralwatch_processing_lag_seconds", "{{instance}}"),
            )
        )
        .with_row(dashboard.Row("Refused input"))
        .with_panel(
            series(
                "Rejections by reason",
                "Events refused per second, by reason (each one is dead-lettered).",
                "ops",
                query(
                    "sum by (reason) "
                    "(rate(viralwatch_events_rejected_total[$__rate_interval])) > 0",
                    "{{reason}}",
                ),
            )
        )
        .with_panel(
            series(
                "Late, held and duplicate events",
                "Applied late (within the allowed lateness), reshares held for their parent, "
                "redelivered ids, per second.",
                "ops",
                query("sum(rate(viralwatch_events_late_total[$__rate_interval]))", "late"),
                query("sum(rate(viralwatch_reshares_held_total[$__rate_interval]))", "held", "B"),
                query(
                    "sum(rate(viralwatch_events_duplicate_total[$__rate_interval]))",
                    "duplicate",
                    "C",
                ),
                query("sum(viralwatch_orphans_held)", "orphans held now", "D"),
            )
        )
        .with_row(dashboard.Row("Latency"))
        .with_panel(
            series(
                "Hash lookup latency",
                "Bank lookups (cache misses): median and 99th percentile.",
                "s",
                query(
                    "histogram_quantile(0.5, sum by (le) "
                    "(rate(viralwatch_hash_lookup_seconds_bucket[$__rate_interval])))",
                    "p50",
                ),
                query(
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(viralwatch_hash_lookup_seconds_bucket[$__rate_interval])))",
                    "p99",
                    "B",
                ),
            )
        )
        .with_panel(
            series(
                "Event to alert",
                "From the event that crossed a threshold to the alert leaving the worker.",
                "s",
                query(
                    "histogram_quantile(0.5, sum by (le) "
                    "(rate(viralwatch_event_to_alert_seconds_bucket[$__rate_interval])))",
                    "p50",
                ),
                query(
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(viralwatch_event_to_alert_seconds_bucket[$__rate_interval])))",
                    "p99",
                    "B",
                ),
            )
        )
        .with_panel(
            series(
                "Lookups and cache",
                "Bank lookups and cache hits per second.",
                "ops",
                query("sum(rate(viralwatch_hash_lookups_total[$__rate_interval]))", "lookups"),
                query(
                    "sum(rate(viralwatch_hash_lookup_cache_hits_total[$__rate_interval]))",
                    "cache hits",
                    "B",
                ),
                query(
                    "sum(rate(viralwatch_uploads_low_quality_total[$__rate_interval]))",
                    "low-quality PDQ",
                    "C",
                ),
            )
        )
        .with_panel(
            series(
                "Cluster state",
                "Clusters held in state, created and evicted per minute.",
                "none",
                query("sum(viralwatch_clusters_active)", "active"),
                query(
                    "sum(rate(viralwatch_clusters_created_total[$__rate_interval])) * 60",
                    "created/min",
                    "B",
                ),
                query(
                    "sum(rate(viralwatch_clusters_evicted_total[$__rate_interval])) * 60",
                    "evicted/min",
                    "C",
                ),
            )
        )
        .with_panel(
            series(
                "State logs",
                "Bytes in the workers' state logs (what a replacement reads back): cut back "
                "to a snapshot once they grow by VIRALWATCH_LOG_COMPACT_BYTES and by what the "
                "last snapshot kept, so they should level off, not climb for ever.",
                "bytes",
                query("sum(viralwatch_state_log_bytes)", "in logs"),
            )
        )
        .with_row(dashboard.Row("Alert delivery"))
        .with_panel(
            series(
                "Backlog by sink",
                "Alerts waiting (retrying with backoff) per sink.",
                "none",
                query("sum by (sink) (viralwatch_sink_backlog)", "{{sink}}"),
            )
        )
        .with_panel(
            series(
                "Deliveries, failures and refusals",
                "Per minute, by sink. Refused alerts were not delivered: see the worker's log.",
                "none",
                query(
                    "sum by (sink) (rate(viralwatch_sink_delivered_total[$__rate_interval])) * 60",
                    "{{sink}} delivered",
                ),
                query(
                    "sum by (sink) (rate(viralwatch_sink_failures_total[$__rate_interval])) * 60",
                    "{{sink}} failed attempts",
                    "B",
                ),
                query(
                    "sum by (sink) (rate(viralwatch_sink_rejected_total[$__rate_interval])) * 60",
                    "{{sink}} refused",
                    "C",
                ),
            )
        )
    )
    return builder


BOARDS = {"oncall-overview.json": oncall, "pipeline-health.json": pipeline}


def render() -> dict[str, str]:
    """Each board's file name and JSON text (stable: sorted keys, fixed indent)."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(make().build()) + "\n" for name, make in BOARDS.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, text in render().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python deploy/grafana/dashboards.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
