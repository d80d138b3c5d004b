"""The PDQ index gives exactly a brute-force scan's answer, through every kind of change."""

from __future__ import annotations

import random

import numpy as np
import pytest
from eventgen import flip, pdq_hex
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_data import SHARED, absent

from streams.pdqindex import MAX_INDEXED_THRESHOLD, PDQIndex, brute_force

PDQ_DATA = SHARED / "data" / "pdq"


def test_planted_near_duplicates_at_every_distance_0_to_40() -> None:
    rng = random.Random(3)
    bank = [pdq_hex(rng) for _ in range(3000)]
    queries = [flip(rng.choice(bank), d, rng) for d in range(41) for _ in range(3)]
    queries += [pdq_hex(rng) for _ in range(20)]
    queries += [flip(rng.choice(bank), d, rng) for d in range(41, 70)]  # for the wide thresholds
    index = PDQIndex(bank, tail_min=100)
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
    bank = [pdq_hex(rng) for _ in range(500)]
    queries = [flip(rng.choice(bank), rng.randrange(45), rng) for _ in range(100)]
    index = PDQIndex(bank, tail_min=0)
    assert [index.search(q, 40) for q in queries] == index.search_many(queries, 40)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    tail_min=st.sampled_from([0, 3, 50, 10_000]),
    threshold=st.sampled_from([0, 7, 31, 32, 40, 47, 48, 63, 64, 80]),
    ops=st.lists(st.tuples(st.sampled_from(["add", "remove", "readd"]), st.integers(0, 10**6))),
)
def test_index_equals_brute_force_through_adds_and_removals(
    seed: int, n: int, tail_min: int, threshold: int, ops: list[tuple[str, int]]
) -> None:
    rng = random.Random(seed)
    bank = [pdq_hex(rng) for _ in range(n)]
    index = PDQIndex(bank[: n // 2], tail_min=tail_min)
    live = set(bank[: n // 2])
    for h in bank[n // 2 :]:
        assert index.add(h) == (h not in live)
        live.add(h)
    removed: list[str] = []
    for op, k in ops:
        if op == "add" or not live:
            h = flip(rng.choice(bank), k % 41, rng) if bank else pdq_hex(rng)
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
    queries += removed[:5] + [pdq_hex(rng) for _ in range(5)]
    expected = brute_force(sorted(live), queries, threshold)
    assert index.search_many(queries, threshold) == expected
    assert [index.search(q, threshold) for q in queries[:8]] == expected[:8]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    distances=st.lists(st.sampled_from([0, 1, 30, 31, 32, 33, 63, 64]), min_size=1, max_size=40),
    removed=st.lists(st.integers(0, 39), max_size=10),
    threshold=st.sampled_from([30, 31, 32, 63, 64]),
    tail_min=st.sampled_from([0, 5, 1024]),
)
def test_the_edges_of_the_threshold_duplicates_and_removals_are_a_scans(
    seed: int, distances: list[int], removed: list[int], threshold: int, tail_min: int
) -> None:
    """Hashes exactly at the threshold and one past it, repeated (in either case), some
    removed: the index gives a scan's answer, tags included, in a scan's order."""
    rng = random.Random(seed)
    query = pdq_hex(rng)
    bank = [flip(query, d, rng) for d in distances]
    bank += [bank[i % len(bank)].upper() for i in removed]  # repeats: not added again
    index = PDQIndex(tail_min=tail_min)
    tags = list(range(len(bank)))
    added = index.add_many(bank, tags)
    first = {h.lower(): t for t, h in reversed(list(enumerate(bank)))}
    assert added == len(first) == len(index)
    for i in removed:
        h = bank[i % len(distances)]
        assert index.remove(h) == (h.lower() in first)
        first.pop(h.lower(), None)
    expected = brute_force(first, [query], threshold)[0]
    assert index.search(query, threshold) == expected
    assert index.search_tags([query, query], threshold) == (
        [0] * len(expected) + [1] * len(expected),
        [first[h] for h, _ in expected] * 2,
        [d for _, d in expected] * 2,
    )


def test_bulk_load_and_compaction_after_mass_removal() -> None:
    rng = random.Random(5)
    bank = [pdq_hex(rng) for _ in range(4000)]
    index = PDQIndex(tail_min=64)
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
    bank = [pdq_hex(rng) for _ in range(2000)]
    index = PDQIndex(bank, tail_min=10)
    extra = pdq_hex(rng)
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
    index = PDQIndex([h], tail_min=0)
    assert index.search(comp, 31) == []
    assert index.search(comp, 47) == []
    assert index.search(comp, 256) == [(h, 256)]
    assert index.search(comp, 255) == []


def test_thresholds_beyond_the_tables_fall_back_to_an_exact_scan() -> None:
    rng = random.Random(8)
    bank = [pdq_hex(rng) for _ in range(300)]
    index = PDQIndex(bank, tail_min=0)
    q = [flip(bank[0], 100, rng), pdq_hex(rng)]
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
        index.add_many(["0" * 64, "nope"])  # all or nothing
    assert len(index) == 0
    with pytest.raises(TypeError):
        index.search_many([b"0" * 64])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        index.add_many(["0" * 64], tags=[1, 2])
    assert index.search("0" * 64) == []
    assert 5 not in index


def test_tags_go_with_the_hashes_added_and_a_present_hash_keeps_its_own() -> None:
    rng = random.Random(12)
    bank = [pdq_hex(rng) for _ in range(3000)]
    index = PDQIndex(tail_min=50)
    assert index.add_many(bank, tags=list(range(3000))) == 3000
    assert index.add_many([*bank[:10], bank[0].upper()], tags=[-5] * 11) == 0
    assert index.tags_of([*bank[::7], pdq_hex(rng)]) == [*range(0, 3000, 7), -2]
    queries = [flip(bank[i], i % 35, rng) for i in range(0, 3000, 11)]
    qi, tags, dist = index.search_tags(queries, 31)
    expected = brute_force(bank, queries, 31)
    tag = {h: t for t, h in enumerate(bank)}
    assert list(zip(qi, tags, dist, strict=True)) == [
        (i, tag[h], d) for i, found in enumerate(expected) for h, d in found
    ]


def test_needles_against_haystack_give_the_250_brute_force_pairs() -> None:
    if not PDQ_DATA.is_dir():
        pytest.skip(absent(PDQ_DATA, "PDQ reference data"))
    needles = (PDQ_DATA / "needles.txt").read_text().split()
    haystack = (PDQ_DATA / "haystack.txt").read_text().split()
    expected = brute_force(haystack, needles, 31)
    assert sum(map(len, expected)) == 250
    assert all(expected)  # every needle has a match
    for tail_min in (0, 1024):
        index = PDQIndex(haystack, tail_min=tail_min)
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
    q = np.frombuffer(bytes.fromhex("".join(queries)), dtype=np.uint64).reshape(-1, 4)
    found = index.search_many(queries, 31)
    expected = []
    for i in range(len(q)):
        dist = np.bitwise_count(q[i] ^ words).sum(axis=1)
        expected.append(
            sorted((bank[r], int(dist[r])) for r in np.flatnonzero(dist <= 31).tolist())
        )
    assert [sorted(f) for f in found] == expected
    assert sum(map(len, expected)) >= 300 * 32 // 41  # the planted ones within 31 at least
