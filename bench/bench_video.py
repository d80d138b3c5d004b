"""Video: vPDQ hashing beside FFmpeg decoding alone, and bank lookups beside brute force.

1. **Hashing.** A synthetic 720p H.264 clip (1280x720, 30 fps, made here with
   PyAV; ``--seconds`` long) is read three ways, interleaved, ``--repeats``
   times: FFmpeg decoding alone (PyAV demuxes and decodes every frame, no
   conversion: the ceiling), ``viralwatch hash`` at vPDQ's default of one frame
   a second, and a hash of every frame (the PDQ side's own throughput, over
   the first 300 frames).
   Reported: decoded frames/s, hashed frames/s and seconds per minute of 720p
   video, medians, and the ratio to decoding alone.
2. **Bank lookups.** A bank of ``--videos`` videos x ``--frames`` frames
   (random PDQ frames, quality 100) and queries, half of them re-encodes of a
   banked video (each frame 0..20 bits off, 0..10% trimmed at each end), half
   unrelated videos. The video bank (candidates through the PDQ multi-index,
   then exact percentages) and a NumPy brute force over every banked frame
   answer the same queries; their answers must agree. Reported: lookups/s,
   medians of ``--repeats`` passes, and bytes per banked frame (tracemalloc
   while the bank is built, the entries' text included; the brute force keeps
   the frames as 32-byte rows and a video id each).

    python bench/bench_video.py                   # 60 s of 720p; 10,000 videos x 60 frames
    python bench/bench_video.py --seconds 20 --videos 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import videos  # noqa: E402

from streams.banks import BankConfig, BankEntry  # noqa: E402
from streams.hashing import file_md5  # noqa: E402
from streams.videobank import VideoBank, VideoHit  # noqa: E402
from streams.videohash import VideoLimits, hash_video  # noqa: E402
from streams.vpdq import VpdqFrame, format_vpdq, usable_hashes  # noqa: E402

# ------------------------------------------------------------------ hashing


def make_clip(path: Path, seconds: float) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for img in videos.frames(3, seconds, 30, 1280, 720):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode_only(path: Path) -> int:
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in src.decode(stream))


def hashing(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip720.mp4", args.seconds)
        md5 = file_md5(clip)
        runs: dict[str, list[float]] = {"decode": [], "vpdq_1fps": [], "every_frame": []}
        frames = {"decode": 0, "vpdq_1fps": 0, "every_frame": 0}
        for _ in range(args.repeats):
            for name in runs:
                gc.collect()
                t0 = time.perf_counter()
                if name == "decode":
                    frames[name] = decode_only(clip)
                elif name == "vpdq_1fps":
                    frames[name] = len(hash_video(clip, md5).frames)
                else:  # the first 300 frames (10 s) are enough for a rate
                    limits = VideoLimits(max_frames=300)
                    rec = hash_video(clip, md5, seconds_per_hash=1 / 30, limits=limits)
                    frames[name] = len(rec.frames)
                runs[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in runs.items()}
    minutes = args.seconds / 60
    return {
        "clip": f"1280x720 H.264, 30 fps, {args.seconds:g} s",
        "repeats": args.repeats,
        "decode_frames_per_s": round(frames["decode"] / med["decode"], 1),
        "decode_s_per_minute": round(med["decode"] / minutes, 2),
        "vpdq_1fps_s_per_minute": round(med["vpdq_1fps"] / minutes, 2),
        "vpdq_1fps_hashed_frames": frames["vpdq_1fps"],
        "vpdq_1fps_vs_decode": round(med["vpdq_1fps"] / med["decode"], 2),
        "every_frame_hashed_per_s": round(frames["every_frame"] / med["every_frame"], 1),
        "every_frame_s_per_minute": round(60 * 30 * med["every_frame"] / frames["every_frame"], 1),
    }


# ------------------------------------------------------------------ bank lookups


def rand_frames(rng: random.Random, n: int) -> list[str]:
    return [f"{rng.getrandbits(256):064x}" for _ in range(n)]


def reencode(frames: list[str], rng: random.Random) -> list[str]:
    cut = len(frames) // 10
    kept = frames[rng.randint(0, cut) : len(frames) - rng.randint(0, cut)]
    out = []
    for h in kept:
        v = int(h, 16)
        for b in rng.sample(range(256), rng.randint(0, 20)):
            v ^= 1 << b
        out.append(f"{v:064x}")
    return out


def as_video(hashes: list[str]) -> tuple[VpdqFrame, ...]:
    return tuple(VpdqFrame(h, 100, float(i)) for i, h in enumerate(hashes))


class BruteForce:
    """Every banked frame in one array; a lookup compares each query frame with all of them."""

    def __init__(self, entries: list[BankEntry], banked: list[list[str]]) -> None:
        self.entries = entries
        self.words = np.frombuffer(
            bytes.fromhex("".join(h for frames in banked for h in frames)), dtype=np.uint64
        ).reshape(-1, 4)
        self.video = np.repeat(np.arange(len(banked)), [len(f) for f in banked])
        self.frames = np.array([len(f) for f in banked])

    def lookup(self, frames: tuple[VpdqFrame, ...], cfg: BankConfig) -> list[VideoHit]:
        from streams.vpdq import VideoScore

        queries = usable_hashes(frames)
        q = np.frombuffer(bytes.fromhex("".join(queries)), dtype=np.uint64).reshape(-1, 4)
        qi_all, row_all, d_all = [], [], []
        for i in range(len(q)):
            d = np.bitwise_count(self.words ^ q[i]).sum(axis=1, dtype=np.int64)
            rows = np.flatnonzero(d <= cfg.pdq_threshold)
            qi_all.append(np.full(len(rows), i))
            row_all.append(rows)
            d_all.append(d[rows])
        qi, rows, dist = (np.concatenate(x) for x in (qi_all, row_all, d_all))
        hits = []
        for v in np.unique(self.video[rows]).tolist():
            at = self.video[rows] == v
            score = VideoScore(
                np.unique(qi[at]).size * 100 / len(queries),
                np.unique(rows[at]).size * 100 / int(self.frames[v]),
                len(queries),
                int(self.frames[v]),
            )
            if score.passes(cfg.vpdq_query_match_pct, cfg.vpdq_compared_match_pct):
                nearest = np.full(len(queries), 1 << 30)
                np.minimum.at(nearest, qi[at], dist[at])
                hits.append(VideoHit(self.entries[v], int(nearest[qi[at]].max()), score))
        return hits


def bank(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    cfg = BankConfig("ncii")
    banked = [rand_frames(rng, args.frames) for _ in range(args.videos)]
    texts = [format_vpdq(as_video(f)) for f in banked]
    entries = [BankEntry("ncii", "vpdq", t, f"case-{i}") for i, t in enumerate(texts)]
    t0 = time.perf_counter()
    VideoBank(lambda _: cfg).add_many(entries)
    build_s = time.perf_counter() - t0
    del entries
    gc.collect()
    tracemalloc.start()  # the bank's whole footprint: entries (their text too), index, tables
    before = tracemalloc.get_traced_memory()[0]
    texts = [format_vpdq(as_video(f)) for f in banked]
    entries = [BankEntry("ncii", "vpdq", t, f"case-{i}") for i, t in enumerate(texts)]
    del texts
    index = VideoBank(lambda _: cfg)
    index.add_many(entries)
    index_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    brute = BruteForce(entries, banked)
    brute_bytes = brute.words.nbytes + brute.video.nbytes + brute.frames.nbytes
    n_frames = args.videos * args.frames
    queries = []
    for i in range(args.queries):
        if i % 2 == 0:
            queries.append(as_video(reencode(rng.choice(banked), rng)))
        else:
            queries.append(as_video(rand_frames(rng, args.frames)))
    brute_queries = queries[: args.brute_queries]
    # the same answers, and the planted half all found
    found = [index.lookup(q) for q in queries]
    assert sum(bool(f) for f in found) == len(queries[::2]), "a re-encode was missed"
    for q, f in zip(brute_queries, found, strict=False):
        assert f == brute.lookup(q, cfg), "the index and the brute force disagree"
    index_rates, brute_rates = [], []
    for _ in range(args.repeats):
        gc.collect()
        t0 = time.perf_counter()
        for q in queries:
            index.lookup(q)
        index_rates.append(len(queries) / (time.perf_counter() - t0))
        gc.collect()
        t0 = time.perf_counter()
        for q in brute_queries:
            brute.lookup(q, cfg)
        brute_rates.append(len(brute_queries) / (time.perf_counter() - t0))
    index_rate, brute_rate = statistics.median(index_rates), statistics.median(brute_rates)
    return {
        "bank": f"{args.videos:,} videos x {args.frames} frames ({n_frames:,} frames)",
        "queries": f"{len(queries)} (half re-encodes of banked videos), brute force "
        f"{len(brute_queries)}",
        "repeats": args.repeats,
        "build_s": round(build_s, 1),
        "index_lookups_per_s": round(index_rate, 1),
        "brute_force_lookups_per_s": round(brute_rate, 2),
        "speedup": round(index_rate / brute_rate, 1),
        "index_bytes_per_frame": round(index_bytes / n_frames, 1),
        "index_array_bytes_per_frame": round(index.nbytes / n_frames, 1),
        "brute_force_bytes_per_frame": round(brute_bytes / n_frames, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the 720p clip")
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--brute-queries", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hashing", action="store_true")
    ap.add_argument("--skip-bank", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    if not args.skip_hashing:
        out["hashing"] = hashing(args)
        print(json.dumps(out["hashing"], indent=1), flush=True)
    if not args.skip_bank:
        out["bank"] = bank(args)
        print(json.dumps(out["bank"], indent=1), flush=True)


if __name__ == "__main__":
    main()
