"""What a worker's stages cost per event, without Kafka: ingest, resolve, then clusters.

The same traffic as ``bench_pipeline.py``'s throughput run (``Scenario(seed=11)``
scaled to ``--events``, its bank loaded), cut into batches of ``--batch`` input
records spread over ``--partitions`` input partitions, through the stages one
worker holding every partition runs: :class:`streams.stages.Ingest` (its
``handle_lines``, as the shares reader calls it: parse,
send each event to the resolve partition of the post it needs), then every
:class:`streams.stages.ResolvePartition` with its peers' registrations handed
over in-process (:func:`streams.stages.resolve_local_peers`, as
``Topology`` does) and each batch's state-log entries written
(``ResolveBatch.log_entries``); then every :class:`streams.stages.ClusterPartition`
given its envelopes (``merge_resolved``), either as the records it reads from
its topic (``--hop topic``, the bytes a peer worker sent: packed untimed, the
sender's work; ``--hop records``, the same bytes decoded into records first, as
a partition read them before ``ClusterLoop.read``) or handed over in-process
(``--hop local``, as one worker holding every partition does), its log
entries made (``ClusterBatch.log``, their bytes an event printed).
``--by-partition``: each resolve partition's CPU and log per event, the log by key
(partition 0 owns the index of unbanked content: its share is what one worker holding
it does more than the others).
What a worker adds around them (Kafka, Faust) is ``bench_pipeline.py``'s to
measure.

Timed on CPU time (``time.process_time``: the machine is shared), with the
worker's collector thresholds (``streams.runtime.worker.GC_THRESHOLDS``),
medians of ``--repeats`` fresh runs. Run it in two trees, alternately, to
compare them.

    python bench/bench_stages.py                      # about a minute
    python bench/bench_stages.py --events 30000 --repeats 5 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.alerts import Pseudonymizer  # noqa: E402
from streams.banks import HashBanks  # noqa: E402
from streams.policy import AlertPolicy  # noqa: E402
from streams.runtime.worker import GC_THRESHOLDS  # noqa: E402
from streams.simulate import Scenario, iter_lines, scenario_bank  # noqa: E402
from streams.stages import (  # noqa: E402
    ClusterPartition,
    Envelope,
    Ingest,
    IngestBatch,
    ResolveBatch,
    ResolvePartition,
    merge_resolved,
    resolve_local_peers,
)
from streams.stats import Stats  # noqa: E402
from streams.wire import WireVersion  # noqa: E402


def stages(
    partitions: int, banks: HashBanks, idle_ms: int = 3_600_000
) -> tuple[Ingest, dict[int, ResolvePartition], dict[int, ClusterPartition]]:
    """One worker's fresh stages, holding every partition of each (``bench_core.py``'s worker
    memory measure builds them here too)."""
    stats = Stats()
    ingest = Ingest(partitions, 30.0, stats=stats)
    resolvers = {
        r: ResolvePartition(
            r,
            partitions=partitions,
            sources=partitions,
            banks=banks,
            stats=stats,
            lateness_ms=60_000,
            hold_ms=1_800_000,
            max_held=100_000,
            idle_ms=idle_ms,
        )
        for r in range(partitions)
    }
    detectors = {
        k: ClusterPartition(
            k,
            partitions=partitions,
            sources=partitions,
            policy=AlertPolicy.default(),
            stats=stats,
            pseudonymizer=Pseudonymizer(b"bench"),
            idle_ms=idle_ms,
        )
        for k in range(partitions)
    }
    return ingest, resolvers, detectors


def ingest_range(
    ingest: Ingest, lines: list[bytes], start: int, end: int, partitions: int, now: float
) -> IngestBatch:
    """``lines[start:end]`` through ``ingest`` as a worker's shares reader hands a batch over
    (:meth:`Ingest.handle_lines`: the values and their input partitions as two lists, line
    ``i`` read from partition ``i % partitions`` at offset ``i``), not the tuples of
    :meth:`Ingest.handle`, which only the tests' adapters take."""
    return ingest.handle_lines(
        lines[start:end],
        [i % partitions for i in range(start, end)],
        lambda j: ((start + j) % partitions, start + j),
        now,
    )


def run(
    lines: list[bytes],
    banks: HashBanks,
    partitions: int,
    batch: int,
    hop: str,
    checkpoint: int = 0,
) -> dict[str, Any]:
    """One fresh set of stages over ``lines``: CPU us per event of each, and what came out
    (per resolve partition too: CPU, and its log's bytes by key). A checkpoint begins every
    ``checkpoint`` events (0: never), as a worker's begins every second: the resolve
    partitions are sealed and what that logs (the index owner's uploads still held) is
    counted and timed with the resolve stage."""
    ingest, resolvers, detectors = stages(partitions, banks)
    ingest_s = resolve_s = clusters_s = 0.0
    routed = logged = alerts = cluster_logged = topic_bytes = 0
    part_s: dict[int, float] = dict.fromkeys(resolvers, 0.0)
    part_log: dict[int, Counter[str]] = {r: Counter() for r in resolvers}
    for r, partition in resolvers.items():
        partition.handle = _timed(partition.handle, part_s, r)  # type: ignore[method-assign,assignment]
    # what the last round of peers left for Kafka (``resolve_local_peers``), read with the
    # next batch: dropped, it held every partition's progress back for good (the clusters
    # stage applied a tenth of the events, the index's owner clustered few uploads)
    owed: dict[int, Envelope] = {}
    for start in range(0, len(lines), batch):
        end = min(start + batch, len(lines))
        t0 = time.process_time()
        made = ingest_range(ingest, lines, start, end, partitions, now=float(start))
        t1 = time.process_time()
        sent = {r: [env] for r, env in made.unpacked.items()}
        for r, left in owed.items():
            sent[r] = [left, *sent.get(r, [])]
        batches = [resolvers[r].handle(envs) for r, envs in sent.items()]
        peers, owed = resolve_local_peers(resolvers, batches, 4)
        entries = [(b.partition, b.log_entries()) for b in batches + peers]
        if checkpoint and start // checkpoint != end // checkpoint:
            # a checkpoint begins: the index owner's uploads still held are logged
            entries += [(r, p.seal()[0]) for r, p in resolvers.items()]
        t2 = time.process_time()
        for b in batches + peers:
            routed += b.routed
        for r, written in entries:  # what the log holds, by key (untimed)
            for entry in written:
                logged += len(entry)
                for key, value in orjson.loads(entry).items():
                    part_log[r][key] += len(orjson.dumps({key: value})) - 1
        to_clusters, _ = merge_resolved(batches + peers)
        # packed as a worker sends to the clusters topic (the compact form)
        hopped = {
            k: env.pack(WireVersion.V2) if hop != "local" else env for k, env in to_clusters.items()
        }
        topic_bytes += sum(len(raw) for raw in hopped.values() if type(raw) is bytes)
        t3 = time.process_time()
        for k, raw in hopped.items():
            # "records": decoded into records first, then handed over (how a partition
            # read its topic before ClusterLoop.read), for a comparison in one build
            env = Envelope.of(raw) if hop == "records" else raw
            done = detectors[k].handle([env])
            alerts += len(done.decisions.alerts)
            cluster_logged += sum(map(len, done.log))
        clusters_s += time.process_time() - t3
        resolve_s += t2 - t1
        ingest_s += t1 - t0
    n = len(lines)
    return {
        "ingest_us": ingest_s / n * 1e6,
        "resolve_us": resolve_s / n * 1e6,
        "clusters_us": clusters_s / n * 1e6,
        "routed": routed,
        "alerts": alerts,
        "applied": sum(d.applied for d in detectors.values()),
        "log_bytes_per_event": logged / n,
        "cluster_log_bytes_per_event": cluster_logged / n,
        "clusters_topic_bytes_per_event": topic_bytes / n,
        "by_partition": {
            r: {
                "resolve_us": part_s[r] / n * 1e6,
                "log_bytes_per_event": sum(part_log[r].values()) / n,
                "log_by_key": {k: round(v / n, 1) for k, v in sorted(part_log[r].items())},
            }
            for r in resolvers
        },
    }


def _timed(
    handle: Callable[[Iterable[Any]], ResolveBatch], into: dict[int, float], r: int
) -> Callable[[Iterable[Any]], ResolveBatch]:
    """``handle`` (a resolve partition's), its CPU time added to ``into[r]``."""

    def timed(envelopes: Iterable[Any]) -> ResolveBatch:
        t = time.process_time()
        try:
            return handle(envelopes)
        finally:
            into[r] += time.process_time() - t

    return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hop", choices=("topic", "records", "local"), default="topic")
    ap.add_argument("--by-partition", action="store_true")
    ap.add_argument(
        "--checkpoint",
        type=int,
        default=25_000,
        help="events between checkpoints (0: none; about a second of one worker's backlog)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    scenario = Scenario(seed=11, scale=max(args.events / 30_000, 0.05))
    lines = list(iter_lines(scenario))[: args.events]
    # loaded as a worker loads its bank file (``load_banks``: one insertion, the PDQ index
    # merged whole), not an entry at a time, which past 1,024 PDQ hashes (from about 117,000
    # events) left up to 1,024 of them in the index's tail, scanned by every upload's screen
    banks = HashBanks()
    banks.add_many(scenario_bank(scenario))
    gc.set_threshold(*GC_THRESHOLDS)
    runs = [
        run(lines, banks, args.partitions, args.batch, args.hop, args.checkpoint)
        for _ in range(args.repeats)
    ]
    out: dict[str, Any] = {
        k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "by_partition"
    }
    if args.by_partition:  # the median run's, by its resolve CPU
        out["by_partition"] = sorted(runs, key=lambda r: r["resolve_us"])[len(runs) // 2][
            "by_partition"
        ]
    out["events"] = len(lines)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{len(lines):,} events, {args.partitions} partitions, batches of {args.batch}")
    print(f"  ingest    {out['ingest_us']:6.2f} us CPU/event")
    print(f"  resolve   {out['resolve_us']:6.2f} us CPU/event (routed {out['routed']:,.0f})")
    print(f"  resolve log {out['log_bytes_per_event']:.0f} B/event")
    hop = {
        "topic": "read from its topic",
        "records": "read from its topic as records, then handed over",
        "local": "handed over in-process",
    }[args.hop]
    alerts = f"applied {out['applied']:,.0f}, alerts {out['alerts']:,.0f}"
    print(f"  clusters  {out['clusters_us']:6.2f} us CPU/event ({hop}; {alerts})")
    if args.hop != "local":
        print(f"  clusters topic {out['clusters_topic_bytes_per_event']:.0f} B/event")
    print(f"  cluster log {out['cluster_log_bytes_per_event']:.0f} B/event")
    for r, p in out.get("by_partition", {}).items():
        keys = ", ".join(f"{k} {v}" for k, v in p["log_by_key"].items())
        print(
            f"  resolve partition {r}: {p['resolve_us']:6.2f} us CPU/event, log "
            f"{p['log_bytes_per_event']:.1f} B/event ({keys})"
        )


if __name__ == "__main__":
    main()
