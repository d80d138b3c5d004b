"""The PDQ index gives exactly a brute-force scan's answer, through every kind of change."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.pdqindex import MAX_INDEXED_THRESHOLD, PDQIndex, brute_force, parse_hashes

SHARED = Path(__file__).resolve().parents[2] / "shared"
PDQ_DATA = SHARED / "data" / "pdq"


def rand_hash(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def flip(h: str, d: int, rng: random.Random) -> str:
    """A hash exactly ``d`` bits from ``h``."""
    v = int(h, 16)
    for bit in rng.sample(range(256), d):
        v ^= 1 << bit
    return f"{v:064x}"


def test_planted_near_duplicates_at_every_distance_0_to_40() -> None:
    rng = random.Random(3)
    bank = [rand_hash(rng) for _ in range(3000)]
    queries = [flip(rng.choice(bank), d, rng) for d in range(41) for _ in range(3)]
    queries += [rand_hash(rng) for _ in range(20)]
    queries += [flip(rng.choice(bank), d, rng) for d in range(41, 70)]  # for the wide thresholds
    index = PDQIndex(bank, tail_max=100)
    for threshold in (0, 1, 15, 16, 30, 31, 32, 40, 47, 48, 63, 64, 65):
        assert index.search_many(queries, threshold) == brute_force(bank, queries, threshold), (
            threshold
        )
    # the planted ones at <= 31 are found, with their distance
    found = index.search_many(queries, 31)
    for d in range(32):
        for k in range(3):
            assert d in [dist for _, dist in found[3 * d + k]]


def test_single_and_batched_searches_agree() -> None:
    rng = random.Random(4)
    bank = [rand_hash(rng) for _ in range(500)]
    queries = [flip(rng.choice(bank), rng.randrange(45), rng) for _ in range(100)]
    index = PDQIndex(bank, tail_max=0)
    assert [index.search(q, 40) for q in queries] == index.search_many(queries, 40)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    tail_max=st.sampled_from([0, 3, 50, 10_000]),
    threshold=st.sampled_from([0, 7, 31, 32, 40, 47, 48, 63, 64, 80]),
    ops=st.lists(st.tuples(st.sampled_from(["add", "remove", "readd"]), st.integers(0, 10**6))),
)
def test_index_equals_brute_force_through_adds_and_removals(
    seed: int, n: int, tail_max: int, threshold: int, ops: list[tuple[str, int]]
) -> None:
    rng = random.Random(seed)
    bank = [rand_hash(rng) for _ in range(n)]
    index = PDQIndex(bank[: n // 2], tail_max=tail_max)
    live = set(bank[: n // 2])
    for h in bank[n // 2 :]:
        assert index.add(h) == (h not in live)
        live.add(h)
    removed: list[str] = []
    for op, k in ops:
        if op == "add" or not live:
            h = flip(rng.choice(bank), k % 41, rng) if bank else rand_hash(rng)
            assert index.add(h) == (h not in live)
            live.add(h)
        elif op == "remove":
            h = sorted(live)[k % len(live)]
            assert index.remove(h)
            assert not index.remove(h)
            live.discard(h)
            removed.append(h)
        elif removed:
            h = removed[k % len(removed)]
            assert index.add(h) == (h not in live)
            live.add(h)
    assert len(index) == len(live)
    # planted near-duplicates at every distance 0..40, removed hashes, and strangers
    queries = [flip(rng.choice(bank), d, rng) for d in range(41)] if bank else []
    queries += removed[:5] + [rand_hash(rng) for _ in range(5)]
    expected = brute_force(sorted(live), queries, threshold)
    assert index.search_many(queries, threshold) == expected
    assert [index.search(q, threshold) for q in queries[:8]] == expected[:8]


def test_bulk_load_and_compaction_after_mass_removal() -> None:
    rng = random.Random(5)
    bank = [rand_hash(rng) for _ in range(4000)]
    index = PDQIndex(tail_max=64)
    assert index.add_many(bank + bank[:10]) == 4000  # repeats are skipped
    full = index.nbytes
    for h in bank[:3500]:
        assert index.remove(h)
    queries = [flip(rng.choice(bank), rng.randrange(35), rng) for _ in range(200)]
    assert index.search_many(queries) == brute_force(bank[3500:], queries, 31)
    assert len(index) == 500
    assert index.nbytes < full  # compacted: the removed rows are no longer held


def test_withdrawal_takes_effect_at_once_in_tables_and_tail() -> None:
    rng = random.Random(6)
    bank = [rand_hash(rng) for _ in range(2000)]
    index = PDQIndex(bank, tail_max=10)
    extra = rand_hash(rng)
    index.add(extra)  # in the tail
    for h in (bank[7], extra):
        near = flip(h, 20, rng)
        assert index.search(near) == [(h, 20)]
        assert h in index
        assert index.remove(h)
        assert index.search(near) == []
        assert h not in index


def test_complement_is_256_bits_away_not_0() -> None:
    """The fast filter sums bit counts modulo 256; a distance of 256 must not pass as 0."""
    h = "0f" * 32
    comp = "f0" * 32
    index = PDQIndex([h], tail_max=0)
    assert index.search(comp, 31) == []
    assert index.search(comp, 47) == []
    assert index.search(comp, 256) == [(h, 256)]
    assert index.search(comp, 255) == []


def test_thresholds_beyond_the_tables_fall_back_to_an_exact_scan() -> None:
    rng = random.Random(8)
    bank = [rand_hash(rng) for _ in range(300)]
    index = PDQIndex(bank, tail_max=0)
    q = [flip(bank[0], 100, rng), rand_hash(rng)]
    for threshold in (MAX_INDEXED_THRESHOLD + 1, 100, 128, 256):
        assert index.search_many(q, threshold) == brute_force(bank, q, threshold)


def test_bad_input_raises_value_error() -> None:
    index = PDQIndex()
    for bad in ("abc", "z" * 64, "f" * 63 + " ", "f" * 65):
        with pytest.raises(ValueError):
            index.add(bad)
        with pytest.raises(ValueError):
            index.search(bad)
        assert not index.remove(bad)
        assert bad not in index
    with pytest.raises(ValueError):
        index.search("0" * 64, -1)
    with pytest.raises(ValueError):
        index.search("0" * 64, 257)
    with pytest.raises(ValueError):
        PDQIndex(tail_max=-1)
    assert index.search("0" * 64) == []
    assert 5 not in index


def test_rows_and_words_round_trip() -> None:
    h = "0123456789abcdef" * 4
    index = PDQIndex([h])
    qi, rows, dist = index.search_words(parse_hashes([h]), 0)
    assert (qi.tolist(), dist.tolist()) == ([0], [0])
    assert index.hash_at(int(rows[0])) == h


def test_needles_against_haystack_give_the_250_brute_force_pairs() -> None:
    if not PDQ_DATA.is_dir():
        pytest.skip(f"shared PDQ reference data not found at {PDQ_DATA} (absent in a fresh clone)")
    needles = (PDQ_DATA / "needles.txt").read_text().split()
    haystack = (PDQ_DATA / "haystack.txt").read_text().split()
    expected = brute_force(haystack, needles, 31)
    assert sum(map(len, expected)) == 250
    assert all(expected)  # every needle has a match
    for tail_max in (0, 1024):
        index = PDQIndex(haystack, tail_max=tail_max)
        assert index.search_many(needles, 31) == expected


def test_large_random_bank_batched_equals_numpy_scan() -> None:
    """At a size where the tables hold many hashes per bucket (2^16+ rows)."""
    rng = np.random.default_rng(9)
    words = rng.integers(0, 2**63, size=(70_000, 4), dtype=np.uint64) * np.uint64(2) + (
        rng.integers(0, 2, size=(70_000, 4), dtype=np.uint64)
    )
    bank = [w.tobytes().hex() for w in words]
    index = PDQIndex(bank)
    pyrng = random.Random(10)
    queries = [flip(bank[pyrng.randrange(len(bank))], d % 41, pyrng) for d in range(300)]
    q = parse_hashes(queries)
    got = index.search_words(q, 31)
    expected = []
    for i in range(len(q)):
        dist = np.bitwise_count(q[i] ^ words).sum(axis=1)
        expected += [(i, bank[r]) for r in np.flatnonzero(dist <= 31).tolist()]
    got_pairs = zip(got[0].tolist(), [bank[r] for r in got[1].tolist()], strict=True)
    assert sorted(got_pairs) == sorted(expected)
    assert len(expected) >= 300 * 32 // 41  # the planted ones within 31 at least
