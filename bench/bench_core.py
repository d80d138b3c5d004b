"""The detection core on one core: replay throughput, and memory per cascade node held in state.

Throughput. ``viralwatch simulate`` traffic (``--scale`` times the default
30-minute scenario, held in memory so that no disk is timed) goes through
:class:`streams.pipeline.Pipeline` exactly as ``viralwatch replay`` runs it:
parse, validate, match, route, reorder on event time, detect, alert, finish.
Its peers, timed in the same run on the same lines, say where the time goes:

- ``json``: ``orjson.loads`` of each line (the floor of any Python consumer
  of JSON events);
- ``parse``: :func:`streams.events.parse_event` one line at a time (JSON plus
  validation into a frozen record);
- ``parse_batch``: :func:`streams.events.parse_events` in batches of
  ``FEED_CHUNK`` lines, as replay and the ingest stage call it;
- ``core``: the compiled core's ``_core.parse_events`` alone on the same
  batches (all but a video's frames).

Runs are interleaved (json, parse, ..., pipeline, json, ...), ``--repeats``
times, each timed in CPU seconds of this process; medians are reported, and
each stage's ratio to ``json``: compare runs made at different times (before
and after a change, on a machine others share) by their ratios, not by their
rates.

Memory, each measured in a fresh interpreter after a full collection, as the
heap's growth (Python's by ``tracemalloc``, and the compiled core's, which
``tracemalloc`` does not see, by its own count) and the resident set's
(``/proc``):

- ``cascade``: one hot banked cluster of ``--nodes`` reshares (a random
  recursive tree, so depth and breadth are realistic): the
  :class:`graphs.cascade.Cascade` alone (the NetworkX graph and its
  incremental figures);
- ``state``: everything the pipeline keeps per node of it (the cascade, the
  router's post -> cluster map, the detector's event ids and velocity
  window, the prediction state), bytes per node;
- ``unbanked``: everything the pipeline keeps per live post of content no
  bank holds (``--unbanked`` live posts of the simulator's background
  cascades, none evicted; by default a million, issue 17's target, which
  takes a few minutes: ``--unbanked 280000`` for a short run), and where it
  goes: each part's share, as the heap it frees when dropped (in that order:
  the compiled replay loop's own (its reorder buffer, the uploads waiting
  for the watermark), the router's post -> cluster map, its idle order of
  unbanked clusters, the detector's unbanked clusters, the index of content
  (one, the router's and the detector's: replay shares it), the rest, mostly
  the banks' answer cache, which is bounded);
- ``worker``: the same per live post of the same stream, kept by a worker's
  stages through the production classes (one worker holding every partition
  of each stage, ``--partitions`` of them: ``Ingest.handle_lines`` -> ``ResolvePartition``
  -> ``ClusterPartition``, in batches of ``WORKER_BATCH`` input records), and
  where it goes: each resolve partition's loop, post -> cluster map, index of
  unbanked content (the owner's) and rest, then each clusters partition's loop
  (its reorder buffer), unbanked clusters, index of content (its own: a bank
  change must find its clusters, which another worker may hold) and rest.

    python bench/bench_core.py                       # about five minutes
    python bench/bench_core.py --unbanked 280000     # about two
    # a worker's state per live post, and replay's beside it, alone
    python bench/bench_core.py --skip-throughput --memory worker,unbanked --json
    python bench/bench_core.py --scale 3 --repeats 5 --nodes 200000 --json
    python bench/bench_core.py --videos 0.1   # a tenth of the uploads are videos
    python bench/bench_core.py --mix platform  # about 1% of events in banked clusters
    # replay's targets alone: json and replay, the default traffic (32,263 events) fed
    # 5 times a run (a fresh pipeline each) so that a run lasts seconds, no memory measure
    python bench/bench_core.py --stages json,pipeline --times 5 --skip-memory --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphs.cascade import Cascade  # noqa: E402
from streams import _core  # noqa: E402
from streams.alerts import Pseudonymizer  # noqa: E402
from streams.banks import BankEntry, HashBanks  # noqa: E402
from streams.events import (  # noqa: E402
    Content,
    Rejection,
    ShareEvent,
    parse_event,
    parse_events,
    parse_ts,
)
from streams.pipeline import FEED_CHUNK, Pipeline  # noqa: E402
from streams.policy import AlertPolicy  # noqa: E402
from streams.simulate import Scenario, simulate  # noqa: E402

T0 = 1_767_225_600_000

#: the throughput stages ``--stages`` names, in the order a run times them; ``json``, the
#: floor the others' ratios are to, is always among those chosen
STAGES = ("json", "parse", "parse_batch", "core", "pipeline")
#: the memory measures ``--memory`` names
MEMORY = ("cascade", "unbanked", "worker")


def names_among(
    choices: tuple[str, ...], required: str | None = None
) -> Callable[[str], list[str]]:
    """An argparse ``type=`` for a comma-separated list of ``choices``: a name not among them
    (or a list without ``required``) is refused while the arguments are read, so a mistyped
    flag exits 2 with one line at once, not after the simulation and the runs before it."""

    def parse(text: str) -> list[str]:
        chosen = text.split(",")
        unknown = [name for name in chosen if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, unknown))}: choose among {', '.join(choices)}"
            )
        if required is not None and required not in chosen:
            raise argparse.ArgumentTypeError(
                f"{required} must be among them (the others' ratios are to it): {required},{text}"
            )
        return chosen

    return parse


#: uploads per minute of background traffic in ``--mix platform``: with the default
#: scenario's banked cascades, about 1% of events are in banked clusters (6% by default)
PLATFORM_BACKGROUND = 2_400.0


def pipeline_for(bank: list[BankEntry]) -> Pipeline:
    banks = HashBanks()
    banks.add_many(bank)
    return Pipeline(banks, AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"bench"))


def timed(fn: Callable[[], Any]) -> float:
    """CPU seconds of ``fn()``: the work is single-threaded, and on a machine others share
    the CPU time it takes moves far less than the wall-clock time it waits."""
    gc.collect()
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def alternated_us(
    runs: Mapping[str, Callable[[], object]], repeats: int, per: int
) -> dict[str, float]:
    """Each run's median CPU microseconds per item (``per`` items a call) over ``repeats``
    rounds, each round calling every run once in turn: a machine others share slows the
    runs of a round alike, not one run's calls all. The collector is off meanwhile (a
    pause lands on whichever run is going, not on the one whose garbage it is).

    >>> sorted(alternated_us({"a": lambda: None, "b": lambda: sum(range(9))}, 3, 1))
    ['a', 'b']
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in runs.items():
                t0 = time.process_time()
                fn()
                times[name].append((time.process_time() - t0) / per * 1e6)
    finally:
        gc.enable()
    return {name: statistics.median(v) for name, v in times.items()}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    videos: dict[str, Any] = (
        dict(video_banked=1, video_fraction=args.videos, extra_video_entries=1000)
        if args.videos
        else {}
    )
    mix: dict[str, Any] = (
        dict(background_per_minute=PLATFORM_BACKGROUND) if args.mix == "platform" else {}
    )
    sim = simulate(Scenario(seed=args.seed, scale=args.scale, **videos, **mix))
    lines = sim.lines
    alerts: list[int] = []

    times = range(args.times)  # each run goes through the stream this many times

    def json_only() -> None:
        loads = orjson.loads
        for _ in times:
            for line in lines:
                try:  # noqa: SIM105 (contextlib.suppress would be timed too)
                    loads(line)
                except orjson.JSONDecodeError:
                    pass

    def parse_only() -> None:
        for _ in times:
            for line in lines:
                parse_event(line)

    chunks = [lines[i : i + FEED_CHUNK] for i in range(0, len(lines), FEED_CHUNK)]

    def parse_batch() -> None:
        for _ in times:
            for chunk in chunks:
                parse_events(chunk)

    def core_only() -> None:
        for _ in times:
            for chunk in chunks:
                _core.parse_events(chunk, parse_ts, ShareEvent, Content, Rejection)

    def replay() -> None:  # as ``viralwatch replay`` feeds a file (a fresh pipeline each time)
        for _ in times:
            pipe = pipeline_for(sim.bank)
            for i in range(0, len(lines), FEED_CHUNK):
                pipe.feed_many(lines[i : i + FEED_CHUNK])
            alerts.append(len(pipe.finish().alerts) + len(pipe.drain().alerts))

    every: dict[str, Callable[[], None]] = {
        "json": json_only,
        "parse": parse_only,
        "parse_batch": parse_batch,
        "core": core_only,
        "pipeline": replay,
    }
    assert tuple(every) == STAGES  # the names --stages was checked against
    stages = {name: fn for name, fn in every.items() if name in args.stages}
    events = len(lines) * args.times
    runs: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(args.repeats):
        for name, fn in stages.items():
            runs[name].append(events / timed(fn))
    if len(set(alerts)) > 1:
        raise RuntimeError(f"replay is not deterministic: {alerts} alerts")
    rate = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "events": len(lines),
        "times": args.times,
        "alerts": alerts[0] if alerts else None,
        "repeats": args.repeats,
        "events_per_s": rate,
        "us_per_event": {k: 1e6 / v for k, v in rate.items()},
        "ratio_to_json": {k: v / rate["json"] for k, v in rate.items()},
    }


def hot_cluster_lines(n: int, seed: int) -> tuple[list[bytes], list[BankEntry]]:
    """One banked upload and ``n - 1`` reshares over an hour: a random recursive tree."""
    rng = random.Random(seed)
    md5 = f"{rng.getrandbits(128):032x}"
    lines = [
        orjson.dumps(
            {
                "event_id": "e0",
                "type": "upload",
                "ts": T0,
                "post_id": "p0",
                "user_id": "u0",
                "followers": 500,
                "content": {"md5": md5},
            }
        )
    ]
    step = 3_600_000 / n
    for i in range(1, n):
        parent = rng.randrange(max(0, i - 5_000), i) if rng.random() < 0.9 else 0
        lines.append(
            orjson.dumps(
                {
                    "event_id": f"e{i}",
                    "type": "share",
                    "ts": T0 + int(i * step),
                    "post_id": f"p{i}",
                    "parent_post_id": f"p{parent}",
                    "user_id": f"u{rng.randrange(n)}",
                    "followers": rng.randrange(1, 5_000),
                }
            )
        )
    return lines, [BankEntry("bench", "md5", md5)]


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``): counts what the compiled core
    allocates, which ``tracemalloc`` (the Python heap only) does not see."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def held_bytes(build: Callable[[], Any], *, keep_tracing: bool = False) -> tuple[int, int, Any]:
    """Bytes still held once ``build()`` returns (what it returns keeps alive): the heap's
    growth, Python's (``tracemalloc``) and the compiled core's (its own exact count,
    ``_core.allocated_bytes``), and the resident set's.

    Run in a fresh interpreter (:func:`in_fresh_process`): memory freed earlier in the same
    process would be reused, and the resident set would grow less than the state.
    ``keep_tracing``: ``tracemalloc`` goes on (the caller measures what it drops, then stops
    it), so what ``build`` made stays traced."""
    gc.collect()
    rss0 = rss_bytes()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] + _core.allocated_bytes()
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] + _core.allocated_bytes()
    if not keep_tracing:
        tracemalloc.stop()
    return after - before, rss_bytes() - rss0, kept


def cascade_memory(nodes: int, seed: int) -> dict[str, Any]:
    """The hot banked cluster's graph alone, and the whole pipeline's state for it."""
    lines, bank = hot_cluster_lines(nodes, seed)
    events = [e for e in map(parse_event, lines) if isinstance(e, ShareEvent)]
    if len(events) != nodes:
        raise RuntimeError("the hot cluster's lines do not parse")

    def cascade_only() -> Cascade:
        c = Cascade()
        for ev in events:
            if ev.parent_post_id is None:
                c.add_root(ev.post_id, user=ev.user_id, ts_ms=ev.ts_ms)
            else:
                c.add_reshare(ev.post_id, parent=ev.parent_post_id, user=ev.user_id, ts_ms=ev.ts_ms)
        return c

    def whole_state() -> Pipeline:
        pipe = pipeline_for(bank)
        for line in lines:
            pipe.feed(line)
        pipe.drain()
        return pipe

    cascade_traced, _, c = held_bytes(cascade_only)
    del c
    state_traced, state_rss, pipe = held_bytes(whole_state)
    st = next(iter(pipe.detector.clusters.values()))
    if st.cascade.size + pipe.held != nodes:
        raise RuntimeError("the hot cluster did not take every post")
    return {
        "nodes": nodes,
        "depth": st.cascade.depth,
        "breadth": st.cascade.breadth,
        "cascade_bytes_per_node": cascade_traced / nodes,
        "state_bytes_per_node": state_traced / nodes,
        "state_rss_per_node": state_rss / nodes,
    }


def unbanked_lines(posts: int, seed: int, minutes: int = 30) -> list[bytes]:
    """The simulator's background cascades alone (content no bank holds), about ``posts``
    posts in ``minutes``, none late, duplicated or malformed: the memory measures' stream."""
    return simulate(
        Scenario(
            seed=seed,
            minutes=minutes,
            background_per_minute=posts / minutes / 3.05,  # about 3 posts per cascade
            critical_banked=0,
            high_banked=0,
            warning_banked=0,
            slow_banked=0,
            quiet_banked=0,
            fast_unbanked=0,
            md5_banked=0,
            late_fraction=0.0,
            very_late=0,
            duplicate_fraction=0.0,
            malformed_per_kind=0,
            orphans=0,
            cycles=0,
        )
    ).lines


def unbanked_memory(posts: int, seed: int) -> dict[str, Any]:
    """Everything the pipeline keeps per live post of content no bank holds (the bulk of a
    platform's traffic): the simulator's background cascades alone, none evicted; and each
    part's share (see the module doc)."""
    lines = unbanked_lines(posts, seed)

    def whole_state() -> Pipeline:
        pipe = Pipeline(
            HashBanks(),
            AlertPolicy.default(),
            pseudonymizer=Pseudonymizer(b"bench"),
            idle_ms=24 * 3_600_000,
        )
        for i in range(0, len(lines), FEED_CHUNK):
            pipe.feed_many(lines[i : i + FEED_CHUNK])
        pipe.drain()
        return pipe

    traced, rss, pipe = held_bytes(whole_state, keep_tracing=True)
    live = pipe.detector.live_posts + pipe.held
    out = {
        "unbanked_posts": live,
        "unbanked_clusters": pipe.detector.cluster_count,
        "unbanked_bytes_per_post": traced / live,
        "unbanked_rss_per_post": rss / live,
    }
    out["unbanked_parts"] = unbanked_parts(pipe, live)
    return out


def drop_loop(pipe: Pipeline) -> None:
    """Drop replay's compiled loop, and the detector's way to evict (which holds the
    router's map, the store and the content index, as the loop does)."""
    pipe.loop = None  # type: ignore[assignment]
    pipe.detector._evict = None


def drop_index(router: Any) -> None:
    """Drop the router's index of unbanked content."""
    router.emerging = None


def unbanked_parts(pipe: Pipeline, live: int) -> dict[str, float]:
    """Bytes per live post each part of ``pipe`` holds: the heap freed as each is dropped,
    in order (what two parts share is the first's), the rest last."""
    from streams.emerging import ContentIndex

    drops: list[tuple[str, Callable[[], None]]] = [
        # the compiled loop first, and the detector's evictor: they hold the parts below too
        ("replay_loop", lambda: drop_loop(pipe)),
        ("post_routes", lambda: setattr(pipe.router, "post_clusters", _core.PostRoutes())),
        # the router's idle order (its content is the index below, which the detector shares)
        ("router_index", lambda: drop_index(pipe.router)),
        (
            "unbanked_clusters",
            lambda: setattr(pipe.detector, "_unbanked", _core.UnbankedClusters([], 1, 1)),
        ),
        ("content_index", lambda: setattr(pipe.detector, "content", ContentIndex())),
    ]
    # the rest: the banks (their answer cache), stats, the router
    drops.append(("rest", pipe.__dict__.clear))
    return dropped_in_turn(drops, live)


def dropped_in_turn(drops: list[tuple[str, Callable[[], None]]], live: int) -> dict[str, float]:
    """Each part's share per live post: the heap (Python's and the compiled core's) freed as
    each of ``drops`` is called, in order; then ``tracemalloc`` stops."""

    def heap() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] + _core.allocated_bytes()

    parts: dict[str, float] = {}
    before = heap()
    for name, drop in drops:
        drop()
        now = heap()
        parts[name] = (before - now) / live
        before = now
    tracemalloc.stop()
    return parts


#: input records a worker's stages take at a time in the worker measure (a backlog's batches)
WORKER_BATCH = 2000


def worker_memory(posts: int, seed: int, partitions: int = 1) -> dict[str, Any]:
    """What a worker keeps per live post of unbanked content, through the production classes:
    one worker holding every partition of each stage (``partitions`` of them),
    :class:`~streams.stages.Ingest` -> :class:`~streams.stages.ResolvePartition` (peers'
    registrations handed over in-process, as ``Topology`` does) ->
    :class:`~streams.stages.ClusterPartition`, fed :func:`unbanked_lines` in batches of
    :data:`WORKER_BATCH`; and each part's share (see the module doc)."""
    from bench_stages import ingest_range, stages

    from streams.stages import merge_resolved, resolve_local_peers

    lines = unbanked_lines(posts, seed)

    def whole_worker() -> tuple[dict[int, Any], dict[int, Any]]:
        # a day idle: nothing evicted, every post stays live
        ingest, resolvers, clusters = stages(partitions, HashBanks(), idle_ms=24 * 3_600_000)
        for start in range(0, len(lines), WORKER_BATCH):
            end = min(start + WORKER_BATCH, len(lines))
            made = ingest_range(ingest, lines, start, end, partitions, now=float(start))
            batches = [resolvers[r].handle([env]) for r, env in made.unpacked.items()]
            peers, _ = resolve_local_peers(resolvers, batches, 4)
            to_clusters, _ = merge_resolved(batches + peers)
            for k, env in to_clusters.items():
                clusters[k].handle([env])
        return resolvers, clusters

    traced, rss, (resolvers, clusters) = held_bytes(whole_worker, keep_tracing=True)
    live = sum(len(r.posts) for r in resolvers.values())
    out: dict[str, Any] = {
        "worker_partitions": partitions,
        "worker_posts": live,
        "worker_detector_posts": sum(c.detector.live_posts for c in clusters.values()),
        "worker_pending": sum(c.pending for c in clusters.values()),
        "worker_clusters": sum(c.detector.cluster_count for c in clusters.values()),
        "worker_bytes_per_post": traced / live,
        "worker_rss_per_post": rss / live,
    }
    out["worker_parts"] = worker_parts(resolvers, clusters, live)
    return out


def worker_parts(
    resolvers: dict[int, Any], clusters: dict[int, Any], live: int
) -> dict[str, float]:
    """Bytes per live post each part of a worker's partitions holds: the heap freed as each
    is dropped, in order (what two parts share is the first's), each stage's rest last."""
    from streams.emerging import ContentIndex

    def each(parts: dict[int, Any], fn: Callable[[Any], None]) -> Callable[[], None]:
        def drop() -> None:
            for p in parts.values():
                fn(p)

        return drop

    def drop_resolve_loop(r: Any) -> None:
        r.loop = None

    def drop_post_map(r: Any) -> None:
        r.posts = r.router.post_clusters = None

    def drop_resolve_index(r: Any) -> None:
        r.index = None
        drop_index(r.router)

    def drop_cluster_loop(c: Any) -> None:
        c.loop = None
        c.detector._evict = None

    def drop_unbanked(c: Any) -> None:
        c.detector._unbanked = _core.UnbankedClusters([], 1, 1)

    def drop_content(c: Any) -> None:
        c.detector.content = ContentIndex()

    drops: list[tuple[str, Callable[[], None]]] = [
        # each compiled loop first: it holds the parts after it too
        ("resolve_loop", each(resolvers, drop_resolve_loop)),
        ("resolve_post_routes", each(resolvers, drop_post_map)),
        ("resolve_index", each(resolvers, drop_resolve_index)),
        ("resolve_rest", each(resolvers, lambda r: r.__dict__.clear())),
        ("clusters_loop", each(clusters, drop_cluster_loop)),
        ("clusters_unbanked", each(clusters, drop_unbanked)),
        ("clusters_content_index", each(clusters, drop_content)),
        ("clusters_rest", each(clusters, lambda c: c.__dict__.clear())),
    ]
    return dropped_in_turn(drops, live)


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a new interpreter (see :func:`held_bytes`)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def memory(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "cascade" in args.memory:
        out.update(in_fresh_process(cascade_memory, args.nodes, args.seed))
    if "unbanked" in args.memory:
        out.update(in_fresh_process(unbanked_memory, args.unbanked, args.seed))
    if "worker" in args.memory:
        out.update(in_fresh_process(worker_memory, args.unbanked, args.seed, args.partitions))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="x the 30-minute scenario")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", action="store_true", help="one JSON line only")
    ap.add_argument(
        "--mix",
        choices=("default", "platform"),
        default="default",
        help="traffic: the simulator's default (6%% of events in banked clusters) or a "
        "platform-like mix (about 1%%: the background 8x larger)",
    )
    ap.add_argument(
        "--unbanked",
        type=int,
        default=1_000_000,
        help="live posts of unbanked content for the memory measure (default: a million, "
        "issue 17's target; 280000 for a short run)",
    )
    ap.add_argument(
        "--videos",
        type=float,
        default=0.0,
        help="share of uploads that are videos (vPDQ), with a banked video cascade "
        "and 1,000 more banked videos (default 0: images only)",
    )
    ap.add_argument(
        "--stages",
        type=names_among(STAGES, required="json"),
        default=list(STAGES),
        help="throughput stages to time, json among them (default: all; "
        "json,pipeline for replay's targets)",
    )
    ap.add_argument(
        "--times",
        type=int,
        default=1,
        help="go through the stream this many times a run (replay: a fresh pipeline each), "
        "so that a run of the default traffic (32,263 events, under a second) lasts seconds",
    )
    ap.add_argument("--skip-memory", action="store_true", help="throughput only")
    ap.add_argument("--skip-throughput", action="store_true", help="memory only")
    ap.add_argument(
        "--memory",
        type=names_among(MEMORY),
        default=list(MEMORY),
        help="memory measures (default: all): cascade, unbanked (replay's), worker "
        "(a worker's stages, the unbanked measure's stream)",
    )
    ap.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="partitions of each stage the worker measure's one worker holds",
    )
    args = ap.parse_args()
    out = {
        "throughput": None if args.skip_throughput else throughput(args),
        "memory": None if args.skip_memory else memory(args),
    }
    if args.json:
        print(json.dumps(out))
        return
    t, m = out["throughput"], out["memory"]
    if t is not None:
        print_throughput(t)
    if m is not None:
        print_memory(m)
    print(json.dumps(out))


def print_throughput(t: dict[str, Any]) -> None:
    times = f" x {t['times']}" if t["times"] > 1 else ""
    print(
        f"throughput, {t['events']:,} simulated events{times}, one core, median of {t['repeats']}:"
    )
    for name, label in (
        ("json", "orjson.loads only"),
        ("parse", "parse + validate"),
        ("parse_batch", "  the same, batched"),
        ("core", "  compiled part alone"),
        ("pipeline", "replay (whole core)"),
    ):
        if name not in t["events_per_s"]:
            continue
        print(
            f"  {label:<22}{t['events_per_s'][name]:>10,.0f} events/s"
            f"  {t['us_per_event'][name]:7.1f} us/event"
            f"  {t['ratio_to_json'][name]:6.3f}x json"
        )


def print_memory(m: dict[str, Any]) -> None:
    if "nodes" in m:
        print(f"memory, one cluster of {m['nodes']:,} posts (depth {m['depth']}):")
        print(f"  cascade graph alone   {m['cascade_bytes_per_node']:>8,.0f} B/node")
        print(
            f"  whole pipeline state  {m['state_bytes_per_node']:>8,.0f} B/node"
            f" (resident: {m['state_rss_per_node']:,.0f})"
        )
    if "unbanked_posts" in m:
        print(f"memory, {m['unbanked_posts']:,} live posts of unbanked content:")
        print(
            f"  whole pipeline state  {m['unbanked_bytes_per_post']:>8,.0f} B/post"
            f" (resident: {m['unbanked_rss_per_post']:,.0f})"
        )
        for part, size in m["unbanked_parts"].items():
            print(f"    {part:<20}{size:>8,.0f} B/post")
    if "worker_posts" in m:
        print(
            f"memory, a worker ({m['worker_partitions']} partition(s) of each stage), "
            f"{m['worker_posts']:,} live posts of unbanked content:"
        )
        print(
            f"  whole worker state    {m['worker_bytes_per_post']:>8,.0f} B/post"
            f" (resident: {m['worker_rss_per_post']:,.0f})"
        )
        for part, size in m["worker_parts"].items():
            print(f"    {part:<24}{size:>8,.0f} B/post")


if __name__ == "__main__":
    main()
