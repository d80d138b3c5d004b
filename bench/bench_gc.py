"""What a full garbage collection costs a worker, and what it gives back.

A worker freezes its long-lived objects out of garbage collection every few
seconds and collects everything only now and then (``streams.runtime.worker.GcPacer``).
How rarely depends on two figures, measured here on the detection core fed
``viralwatch simulate`` traffic exactly as ``replay`` feeds it:

- ``pause``: one full collection over the state a worker holds after
  ``--scale`` times the default scenario (all tracked objects walked; every
  stage waits it out, so it lands on alert latency);
- ``garbage``: over ``--hours`` of event time (clusters created and evicted
  all along), freezing as the worker does, the cyclic garbage that only a
  full collection can free, i.e. what collecting rarely leaks in between.

    python bench/bench_gc.py                   # about a minute
    python bench/bench_gc.py --scale 20 --hours 3
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import pipeline_for  # noqa: E402

from streams.pipeline import FEED_CHUNK, Pipeline  # noqa: E402
from streams.simulate import Scenario, iter_lines, scenario_bank  # noqa: E402

#: Chunks fed between two freezes (a worker freezes every 10 s, about this much traffic).
FREEZE_EVERY_CHUNKS = 20


def fed(scenario: Scenario, freeze: bool) -> Pipeline:
    """A pipeline after the scenario's traffic; the input lines themselves are not kept."""
    lines = list(iter_lines(scenario))
    pipe = pipeline_for(scenario_bank(scenario))
    for n, i in enumerate(range(0, len(lines), FEED_CHUNK)):
        pipe.feed_many(lines[i : i + FEED_CHUNK])
        if freeze and n % FREEZE_EVERY_CHUNKS == 0:
            gc.collect(1)
            gc.freeze()
    return pipe


def pause(scale: float, repeats: int) -> dict[str, float]:
    pipe = fed(Scenario(seed=11, scale=scale), freeze=False)
    gc.collect()
    objects = len(gc.get_objects())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - start)
    return {
        "scale": scale,
        "clusters_live": pipe.detector.cluster_count,
        "tracked_objects": objects,
        "full_collection_ms": statistics.median(times) * 1000,
    }


def garbage(hours: float) -> dict[str, float]:
    gc.collect()
    gc.freeze()  # what was there before is not this run's
    pipe = fed(Scenario(seed=11, minutes=round(hours * 60)), freeze=True)
    pipe.finish()
    gc.collect(1)
    gc.unfreeze()
    start = time.perf_counter()
    found = gc.collect()
    return {
        "hours": hours,
        "clusters_created": pipe.stats.clusters_created,
        "clusters_evicted": pipe.stats.clusters_evicted,
        "cyclic_garbage_objects": found,
        "full_collection_ms": (time.perf_counter() - start) * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = {"pause": pause(args.scale, args.repeats), "garbage": garbage(args.hours)}
    if args.json:
        print(json.dumps(out))
        return
    p, g = out["pause"], out["garbage"]
    print(
        f"full collection at {p['clusters_live']:,} live clusters ({p['tracked_objects']:,} "
        f"tracked objects): {p['full_collection_ms']:,.0f} ms (median of {args.repeats})"
    )
    print(
        f"over {g['hours']:g} h of event time ({g['clusters_created']:,} clusters created, "
        f"{g['clusters_evicted']:,} evicted), frozen as a worker does: one full collection "
        f"freed {g['cyclic_garbage_objects']:,} objects"
    )


if __name__ == "__main__":
    main()
