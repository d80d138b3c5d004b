"""What a final-size prediction costs: the incremental state against recomputing from history.

The peer is the batch SEISMIC of :mod:`graphs.seismic` (the R package's
arithmetic over every post so far), which is what a detector without
incremental state would run on each prediction. The incremental state is
driven as the detector drives it: posts added in event-time order, a
forecast every ``--every`` seconds of event time over the cascade's life.
The peer is timed at six times (the deciles 1, 3, 5, 7, 9 and the end of
the cascade), the incremental state at the same six times inside its run;
``ratio`` is peer / incremental over those. Medians over ``--repeats`` runs.

- ``add ns``: one post into the state (whole replay / posts).
- ``predict us``: one forecast, median over every forecast of the run, and
  its 99th percentile.
- ``best us``, ``rich us``, ``amplified us``: one forecast by the shipped
  ``best`` model (the one alerts carry), by its ``rich`` option and by
  ``amplified`` (the ``best`` before it), each in a run of its own over the
  same schedule; ``best/amplified`` the ratio
  of the two medians: what the new model costs against the old.
- ``buckets``: what the state holds at the end (its memory, 5-7 floats each).

Cascades: the real tweet of ../shared (15,563 posts over a week; the folder
``VIRALWATCH_SHARED`` names over it, as for the tests: a git worktree has no
../shared) when present, and a synthetic hot cascade (``--hot`` reshares drawn, those in the
first day kept).

    python bench/bench_prediction.py
    python bench/bench_prediction.py --hot 1000000 --repeats 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphs.prediction import IncrementalPredictor, Model  # noqa: E402
from graphs.seismic import predict_at  # noqa: E402

SHARED = Path(os.environ.get("VIRALWATCH_SHARED") or ROOT.parent / "shared")
TWEET = SHARED / "data" / "cascades" / "seismic-tweet.csv"


def hot_cascade(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.sort(600.0 * (rng.uniform(0, 1, n) ** (-1 / 0.8) - 1))
    t = t[t < 86_400.0]
    followers = np.rint(rng.lognormal(4.5, 1.5, t.size + 1))
    return np.concatenate([[0.0], t]), followers


def measure(
    name: str, times: np.ndarray, followers: np.ndarray, every: float, repeats: int
) -> dict[str, Any]:
    marks = [float(t) for t in np.quantile(times[1:], [0.1, 0.3, 0.5, 0.7, 0.9, 1.0])]
    schedule = sorted({*np.arange(every, times[-1] + every, every).tolist(), *marks})
    tl, fl = times.tolist(), [int(f) for f in followers]
    add_ns, all_us, p99_us, at_marks, peer = [], [], [], [], []
    best_us: list[float] = []
    rich_us: list[float] = []
    amp_us: list[float] = []
    buckets = 0
    for _ in range(repeats):
        # each learned model in a run of its own: the same adds, a forecast at each time
        learned: tuple[tuple[Model, list[float]], ...] = (
            ("best", best_us),
            ("rich", rich_us),
            ("amplified", amp_us),
        )
        for model, spent_in in learned:
            pred = IncrementalPredictor()
            i, spent_each = 0, []
            for t in schedule:
                while i < len(tl) and tl[i] <= t:
                    pred.add(tl[i], fl[i], original=i == 0)
                    i += 1
                start = time.perf_counter()
                pred.predict(t, model)
                spent_each.append(time.perf_counter() - start)
            spent_in.append(statistics.median(spent_each) * 1e6)
        pred = IncrementalPredictor()
        i, add_time, each, marked = 0, 0.0, [], []
        for t in schedule:
            start = time.perf_counter()
            while i < len(tl) and tl[i] <= t:
                pred.add(tl[i], fl[i], original=i == 0)
                i += 1
            add_time += time.perf_counter() - start
            start = time.perf_counter()
            pred.predict(t, "seismic")
            spent = time.perf_counter() - start
            each.append(spent)
            if t in marks:
                marked.append(spent)
        add_ns.append(add_time / times.size * 1e9)
        all_us.append(statistics.median(each) * 1e6)
        p99_us.append(float(np.percentile(each, 99)) * 1e6)
        at_marks.append(statistics.median(marked) * 1e6)
        batch = []
        for t in marks:
            j = int(np.searchsorted(times, t, side="right"))
            start = time.perf_counter()
            predict_at(times[:j], followers[:j], t)
            batch.append(time.perf_counter() - start)
        peer.append(statistics.median(batch) * 1e6)
        buckets = pred.buckets
    inc, batch_us = statistics.median(at_marks), statistics.median(peer)
    return {
        "cascade": name,
        "posts": int(times.size),
        "forecasts": len(schedule),
        "add_ns": round(statistics.median(add_ns)),
        "predict_us": round(statistics.median(all_us), 1),
        "predict_p99_us": round(statistics.median(p99_us), 1),
        "predict_at_marks_us": round(inc, 1),
        "batch_at_marks_us": round(batch_us, 1),
        "ratio": round(batch_us / inc, 1),
        "best_us": round(statistics.median(best_us), 1),
        "rich_us": round(statistics.median(rich_us), 1),
        "amplified_us": round(statistics.median(amp_us), 1),
        "best/amplified": round(statistics.median(best_us) / statistics.median(amp_us), 2),
        "buckets": buckets,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hot", type=int, default=300_000, help="reshares in the synthetic day")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--every", type=float, default=10.0, help="seconds of event time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    if TWEET.exists():
        rows = np.loadtxt(TWEET, delimiter=",", skiprows=1)
        results.append(measure("tweet", rows[:, 0], rows[:, 1], args.every, args.repeats))
    else:
        print(f"({TWEET} absent: tweet skipped)", file=sys.stderr)
    times, followers = hot_cascade(args.hot)
    results.append(measure("synthetic-hot", times, followers, args.every, args.repeats))
    if args.json:
        print(json.dumps(results))
        return
    head = ("cascade", "posts", "forecasts", "add ns", "predict us", "p99 us", "at marks us",
            "batch us", "ratio", "best us", "rich us", "amplified us",
            "best/amplified", "buckets")  # fmt: skip
    print("".join(f"{h:>15}" for h in head))
    for r in results:
        print("".join(f"{v!s:>15}" for v in r.values()))


if __name__ == "__main__":
    main()
