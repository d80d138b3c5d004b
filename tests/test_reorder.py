"""Event-time reordering: whatever the arrival order, records come out in (ts, key) order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.reorder import ReorderBuffer

PROPS = settings(max_examples=250, deadline=None)

pushes = st.lists(
    st.tuples(st.integers(min_value=0, max_value=50), st.sampled_from("abcde")),
    max_size=60,
)


def fill(items: list[tuple[int, str]]) -> ReorderBuffer[tuple[int, str, int]]:
    buf: ReorderBuffer[tuple[int, str, int]] = ReorderBuffer()
    for i, (ts, key) in enumerate(items):
        buf.push(ts, key, (ts, key, i))
    return buf


def expected(items: list[tuple[int, str]]) -> list[tuple[int, str, int]]:
    """(ts, key) order; equal pairs keep their arrival order."""
    return sorted((ts, key, i) for i, (ts, key) in enumerate(items))


@given(pushes)
@PROPS
def test_drain_gives_sorted_ts_key_order(items: list[tuple[int, str]]) -> None:
    buf = fill(items)
    assert len(buf) == len(items)
    assert buf.drain() == expected(items)
    assert len(buf) == 0 and buf.drain() == []
    assert buf.released_ms == (max(ts for ts, _ in items) if items else -1)


@given(pushes, st.lists(st.integers(min_value=-5, max_value=60), max_size=8))
@PROPS
def test_release_honours_the_watermark(items: list[tuple[int, str]], watermarks: list[int]) -> None:
    """Each release gives exactly the held items at or before the watermark, in order."""
    buf = fill(items)
    held = expected(items)
    out: list[tuple[int, str, int]] = []
    for wm in watermarks:
        got = buf.release(wm)
        assert got == [x for x in held if x[0] <= wm]
        held = [x for x in held if x[0] > wm]
        assert len(buf) == len(held)
        assert all(x[0] > wm for x in held)
        out += got
    out += buf.drain()
    assert sorted(out) == expected(items)


@given(pushes)
@PROPS
def test_monotone_watermarks_release_everything_in_global_order(
    items: list[tuple[int, str]],
) -> None:
    buf = fill(items)
    out = []
    for wm in range(-1, 52, 7):
        out += buf.release(wm)
    assert out + buf.drain() == expected(items)


@given(st.lists(pushes, min_size=1, max_size=5), st.randoms(use_true_random=False))
@PROPS
def test_interleaved_partitions_give_one_order(
    batches: list[list[tuple[int, str]]], rng: random.Random
) -> None:
    """Records read from several partitions (each in event-time order) in any interleaving,
    released only behind the slowest unfinished partition, come out in one global order."""
    # keys are unique, like event ids, so (ts, key) is a total order
    parts = [
        sorted((ts, f"{key}-{p}-{i}") for i, (ts, key) in enumerate(b))
        for p, b in enumerate(batches)
    ]
    want = sorted(rec for part in parts for rec in part)

    def run(seed: int) -> list[tuple[int, str]]:
        r = random.Random(seed)
        cursor = [0] * len(parts)
        progress = [-1] * len(parts)
        buf: ReorderBuffer[tuple[int, str]] = ReorderBuffer()
        out: list[tuple[int, str]] = []
        while any(c < len(part) for c, part in zip(cursor, parts, strict=True)):
            p = r.choice([q for q, part in enumerate(parts) if cursor[q] < len(part)])
            ts, key = parts[p][cursor[p]]
            buf.push(ts, key, (ts, key))
            cursor[p] += 1
            progress[p] = ts
            live = [progress[q] for q, part in enumerate(parts) if cursor[q] < len(part)]
            # an unfinished partition may still send records at its current time
            out += buf.release(min(live) - 1 if live else max(progress))
        return out + buf.drain()

    assert run(rng.randrange(2**32)) == want
    assert run(rng.randrange(2**32)) == want


def test_released_ms_tracks_the_latest_released_time() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer()
    assert buf.released_ms == -1
    assert buf.release(10**12) == []
    assert buf.released_ms == -1
    for ts in (30, 10, 20):
        buf.push(ts, str(ts), f"x{ts}")
    assert buf.next_ms == 10
    assert buf.release(15) == ["x10"]
    assert buf.next_ms == 20
    assert buf.released_ms == 10
    assert buf.release(5) == []  # a watermark going back releases nothing and forgets nothing
    assert buf.released_ms == 10
    assert buf.release(30) == ["x20", "x30"]
    assert buf.released_ms == 30
    assert buf.next_ms == 2**63 - 1  # nothing held: no watermark releases anything
    # a late record (behind what was released) is still released, never dropped;
    # the caller sees it is late by comparing with released_ms before pushing
    buf.push(12, "late", "late")
    assert buf.release(30) == ["late"]
    assert buf.released_ms == 30


def test_ties_on_ts_are_broken_by_key_then_arrival() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer()
    for key, item in [("b", "b1"), ("a", "a1"), ("b", "b2"), ("a", "a2")]:
        buf.push(100, key, item)
    assert buf.release(100) == ["a1", "a2", "b1", "b2"]


def test_items_are_never_compared() -> None:
    class Opaque:  # no ordering: pushing equal (ts, key) must not compare items
        pass

    buf: ReorderBuffer[Opaque] = ReorderBuffer()
    items = [Opaque() for _ in range(5)]
    for it in items:
        buf.push(1, "k", it)
    assert buf.drain() == items
    for it in items:
        buf.push(1, "k", it)
    assert buf.release(1) == items


def test_large_random_stream_matches_sort() -> None:
    rng = random.Random(7)
    items = [(rng.randrange(10_000), f"e{rng.randrange(10**6)}") for _ in range(20_000)]
    buf = fill(items)
    out = []
    for wm in range(0, 10_000, 997):
        out += buf.release(wm)
    assert out + buf.drain() == expected(items)


@given(st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.text()), max_size=40))
@PROPS
def test_any_key_orders_as_python_orders_str(items: list[tuple[int, str]]) -> None:
    """The compiled buffer compares keys as bytes: for any text (lone surrogates included,
    which no parsed event id has) that is Python's own order of ``str``."""
    buf: ReorderBuffer[int] = ReorderBuffer()
    for i, (ts, key) in enumerate(items):
        buf.push(ts, key, i)
    assert buf.keys() == {key for _, key in items}
    assert buf.drain() == [i for _, _, i in sorted((ts, k, i) for i, (ts, k) in enumerate(items))]


def test_a_key_must_be_text_and_a_bad_push_holds_nothing() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer()
    with pytest.raises(TypeError):
        buf.push(1, b"bytes", "x")  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        buf.push(2**63, "k", "x")
    assert len(buf) == 0 and buf.drain() == []


def test_a_cycle_through_a_held_record_is_collected() -> None:
    """The buffer tells the garbage collector what it holds, so a record that refers back to
    the buffer holding it does not leak."""
    import gc
    import weakref

    class Record:
        pass

    buf: ReorderBuffer[Record] = ReorderBuffer()
    rec = Record()
    rec.buffer = buf  # type: ignore[attr-defined]
    buf.push(1, "k", rec)
    gone = weakref.ref(rec)
    del buf, rec
    gc.collect()
    assert gone() is None
