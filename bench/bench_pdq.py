"""PDQ lookups per second: viralwatch's index and python-threatexchange's on one bank and queries.

For each bank size: a bank of random PDQ hashes, and queries that are half
planted near-duplicates (a banked hash with 0..31 bits flipped, evenly) and
half random hashes (non-matches). Both indexes answer every query at Hamming
distance <= 31; recall is measured against a NumPy brute-force scan of the
same bank. Lookups per second are medians over ``--repeats`` timed passes
(after one warm-up pass), the two indexes interleaved so that both see the
same machine load. faiss is timed with one OpenMP thread and with one per CPU,
and keeps the better median for single and for batched lookups (the table
says which); viralwatch's index runs on one thread. Memory per entry is the
growth of the resident set while the index is built, measured in a fresh
process for each index (the peer's includes its list of (hash, id) entries).

The peer is ``threatexchange.signal_type.pdq.pdq_index.PDQIndex`` (what
``PdqSignal.get_index_cls()`` returns, and so what Hasher-Matcher-Actioner
uses): faiss ``IndexBinaryMultiHash`` (16 hash maps, one flip) wrapped in
``IndexBinaryIDMap2``. Its single lookup is ``PDQIndex.query``; it has no
public batch query, so its batched figure calls the faiss wrapper it holds,
``index.search_with_distance_in_result(queries, 31)``.

    pip install -e '.[bench]'
    python bench/bench_pdq.py                     # 100k and 1M entries
    python bench/bench_pdq.py --sizes 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.pdqindex import PDQIndex  # noqa: E402

THRESHOLD = 31


def make_case(size: int, queries: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """Bank hashes, query hashes, and the bank as an ``(n, 4)`` uint64 array."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64 - 1, size=(size, 4), dtype=np.uint64, endpoint=True)
    words = np.unique(words, axis=0)  # distinct hashes (random 256-bit: all, in practice)
    words = words[rng.permutation(len(words))]
    bank = [w.tobytes().hex() for w in words]
    planted = queries // 2
    qwords = words[rng.integers(0, len(words), planted)].copy()
    for i in range(planted):
        bits = rng.choice(256, i % (THRESHOLD + 1), replace=False)
        for b in bits:
            qwords[i, b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    strangers = rng.integers(0, 2**64 - 1, size=(queries - planted, 4), dtype=np.uint64)
    qwords = np.concatenate([qwords, strangers])
    qs = [w.tobytes().hex() for w in qwords]
    return bank, qs, words


def brute_force_pairs(words: np.ndarray, queries: list[str]) -> set[tuple[int, int]]:
    """(query number, bank row) within the threshold: a full NumPy scan per query."""
    cols = [np.ascontiguousarray(words[:, k]) for k in range(4)]
    pairs: set[tuple[int, int]] = set()
    for qi, q in enumerate(queries):
        qw = np.frombuffer(bytes.fromhex(q), dtype=np.uint64)
        d = np.bitwise_count(cols[0] ^ qw[0]).astype(np.uint16)
        for k in range(1, 4):
            d += np.bitwise_count(cols[k] ^ qw[k])
        pairs.update((qi, int(r)) for r in np.flatnonzero(d <= THRESHOLD))
    return pairs


class Ours:
    name = "viralwatch PDQIndex"

    def __init__(self, bank: list[str]) -> None:
        self.index = PDQIndex(bank)

    def single(self, queries: list[str]) -> list[list[str]]:
        return [[h for h, _ in self.index.search(q, THRESHOLD)] for q in queries]

    def batch(self, queries: list[str], size: int) -> list[list[str]]:
        out = []
        for lo in range(0, len(queries), size):
            found = self.index.search_many(queries[lo : lo + size], THRESHOLD)
            out += [[h for h, _ in f] for f in found]
        return out

    def rows(self, found: list[list[str]], row_of: dict[str, int]) -> set[tuple[int, int]]:
        return {(qi, row_of[h]) for qi, hs in enumerate(found) for h in hs}


class Peer:
    name = "threatexchange PDQIndex (faiss MIH)"

    def __init__(self, bank: list[str]) -> None:
        from threatexchange.signal_type.pdq.pdq_index import PDQIndex as TXPDQIndex

        self.index = TXPDQIndex((h, i) for i, h in enumerate(bank))

    def single(self, queries: list[str]) -> list[list[int]]:
        return [[m.metadata for m in self.index.query(q)] for q in queries]

    def batch(self, queries: list[str], size: int) -> list[list[int]]:
        out: list[list[int]] = []
        for lo in range(0, len(queries), size):
            chunk = queries[lo : lo + size]
            found = self.index.index.search_with_distance_in_result(chunk, THRESHOLD)
            # keyed by query string; repeated queries share one answer
            out += [[self.index.local_id_to_entry[i][1] for i, _, _ in found[q]] for q in chunk]
        return out

    def rows(self, found: list[list[int]], row_of: dict[str, int]) -> set[tuple[int, int]]:
        return {(qi, r) for qi, rs in enumerate(found) for r in rs}


ENGINES: dict[str, Callable[[list[str]], Any]] = {"ours": Ours, "peer": Peer}


def rss_bytes() -> int:
    """Resident set size, after handing freed heap back to the system (glibc)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(engine: str, size: int, seed: int) -> None:
    """Child process: build one index, print the resident-set growth per entry."""
    bank, _, words = make_case(size, 2, seed)
    del words
    gc.collect()
    before = rss_bytes()
    index = ENGINES[engine](bank)
    gc.collect()
    grown = rss_bytes() - before
    print(json.dumps({"bytes_per_entry": grown / len(bank)}))
    del index


def memory_per_entry(engine: str, size: int, seed: int) -> float:
    r = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-probe",
            engine,
            "--sizes",
            str(size),
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return float(json.loads(r.stdout.strip().splitlines()[-1])["bytes_per_entry"])


def run_size(size: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    bank, queries, words = make_case(size, args.queries, args.seed)
    truth = brute_force_pairs(words, queries)
    del words
    engines = {}
    build = {}
    for key in ("ours", "peer"):
        gc.collect()
        start = time.perf_counter()
        engines[key] = ENGINES[key](bank)
        build[key] = time.perf_counter() - start
    recall = {}
    row_of = {h: i for i, h in enumerate(bank)}
    for key, eng in engines.items():  # warm-up, and the answers whose recall is reported
        found = eng.rows(eng.single(queries), row_of)
        found_b = eng.rows(eng.batch(queries, args.batch), row_of)
        recall[key] = (
            len(found & truth) / len(truth),
            len(found_b & truth) / len(truth),
            len(found - truth) + len(found_b - truth),
        )
    # faiss runs OpenMP threads; on a loaded machine one thread can beat two, so
    # the peer is timed with each and keeps its better median per kind of lookup.
    threads = sorted({1, os.cpu_count() or 1})
    variants = [("ours", 0)] + [("peer", t) for t in threads]
    times: dict[tuple[str, int], dict[str, list[float]]] = {
        v: {"single": [], "batch": []} for v in variants
    }
    for _ in range(args.repeats):
        for key, nthreads in variants:
            eng = engines[key]
            if nthreads:
                set_faiss_threads(nthreads)
            for kind in ("single", "batch"):
                start = time.perf_counter()
                eng.single(queries) if kind == "single" else eng.batch(queries, args.batch)
                times[key, nthreads][kind].append(time.perf_counter() - start)
    rows = []
    for key, eng in engines.items():
        best: dict[str, tuple[float, int]] = {}
        for kind in ("single", "batch"):
            best[kind] = max(
                (len(queries) / statistics.median(times[k, t][kind]), t)
                for k, t in variants
                if k == key
            )
        name = eng.name
        if key == "peer":
            name += f", faiss threads {best['single'][1]}/{best['batch'][1]}"
        rows.append(
            {
                "size": len(bank),
                "engine": name,
                "key": key,
                "single_per_s": best["single"][0],
                "batch_per_s": best["batch"][0],
                "build_s": build[key],
                "bytes_per_entry": memory_per_entry(key, size, args.seed),
                "recall": min(recall[key][0], recall[key][1]),
                "false_matches": recall[key][2],
                "true_pairs": len(truth),
            }
        )
    return rows


def set_faiss_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| bank entries | index | single lookups/s | batched lookups/s | build s "
        "| memory B/entry | recall |\n|---:|---|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['size']:,} | {r['engine']} | {r['single_per_s']:,.0f} | {r['batch_per_s']:,.0f} "
            f"| {r['build_s']:.1f} | {r['bytes_per_entry']:.0f} | {r['recall']:.3f} |"
        )
    sizes = sorted({r["size"] for r in rows})
    for size in sizes:
        ours = next(r for r in rows if r["size"] == size and r["key"] == "ours")
        peer = next(r for r in rows if r["size"] == size and r["key"] == "peer")
        lines.append(
            f"| {size:,} | **ratio viralwatch / threatexchange** "
            f"| **{ours['single_per_s'] / peer['single_per_s']:.1f}x** "
            f"| **{ours['batch_per_s'] / peer['batch_per_s']:.1f}x** "
            f"| {ours['build_s'] / peer['build_s']:.2f}x "
            f"| {ours['bytes_per_entry'] / peer['bytes_per_entry']:.2f}x | |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=2000, help="half planted, half random")
    p.add_argument("--batch", type=int, default=500, help="queries per batched call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=20260101)
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--memory-probe", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe, args.sizes[0], args.seed)
        return
    try:
        import faiss

        threads = faiss.omp_get_max_threads()
    except ImportError:
        sys.exit("bench_pdq: threatexchange is not installed: pip install -e '.[bench]'")
    started = time.perf_counter()
    rows = []
    for size in args.sizes:
        rows += run_size(size, args)
        print(f"# {size:,} entries done at {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(
        f"{args.queries} queries ({args.queries // 2} planted at distances 0..{THRESHOLD}, "
        f"the rest random), threshold {THRESHOLD}, batches of {args.batch}, "
        f"median of {args.repeats} passes; faiss OpenMP threads tried: 1 and {threads}; "
        f"{os.cpu_count()} CPUs; numpy {np.__version__}\n"
    )
    print(table(rows))
    for r in rows:
        if r["recall"] < 1.0 or r["false_matches"]:
            print(
                f"\n{r['engine']} at {r['size']:,}: recall {r['recall']:.4f}, "
                f"{r['false_matches']} pairs beyond the threshold"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
