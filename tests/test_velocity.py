"""Event-time velocity, checked against brute-force counting over the accepted event times."""

from __future__ import annotations

import random
from bisect import insort

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs.velocity import MINUTE_MS, WINDOWS_MS, Velocity

PROPS = settings(max_examples=250, deadline=None)
T0 = 1_767_225_600_000
HORIZON = 20 * MINUTE_MS


class BruteVelocity:
    """The model: every accepted time, counted by scanning."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self.times: list[int] = []
        self.latest: int | None = None

    def add(self, ts: int) -> bool:
        if self.latest is not None and ts <= self.latest - self.horizon_ms:
            return False
        insort(self.times, ts)
        self.latest = ts if self.latest is None else max(self.latest, ts)
        return True

    def count(self, window: int, now: int) -> int:
        return sum(1 for t in self.times if now - window < t <= now)


def queries(latest: int, horizon: int, rng: random.Random) -> list[int]:
    """Times ``now`` at which every window's answer is defined: the window lies inside
    the horizon kept behind the latest event (``now - window >= latest - horizon``)."""
    lo = latest - (horizon - max(WINDOWS_MS))
    fixed = [latest, latest + 1, latest - 1, lo, latest + MINUTE_MS, latest + 15 * MINUTE_MS]
    return [t for t in fixed if t >= lo] + [
        rng.randint(lo, latest + 16 * MINUTE_MS) for _ in range(6)
    ]


# event times: mostly forward, with jumps and stragglers far behind the front
steps = st.lists(
    st.one_of(
        st.integers(min_value=0, max_value=20_000),  # forward a little
        st.integers(min_value=-HORIZON - 60_000, max_value=0),  # late, maybe too late
        st.integers(min_value=0, max_value=40 * MINUTE_MS),  # a long gap
        st.just(0),  # same millisecond
    ),
    min_size=1,
    max_size=150,
)


@given(
    steps,
    st.sampled_from([HORIZON, 15 * MINUTE_MS, 60 * MINUTE_MS]),
    st.randoms(use_true_random=False),
)
@PROPS
def test_counts_rates_and_acceleration_match_brute_force(
    deltas: list[int], horizon: int, rng: random.Random
) -> None:
    v, model = Velocity(horizon_ms=horizon), BruteVelocity(horizon)
    front = T0
    for i, d in enumerate(deltas):
        ts = front + d
        front = max(front, ts)
        assert v.add(ts) == model.add(ts)
        assert v.latest_ms == model.latest
        if i % 10 == 0 or i == len(deltas) - 1:
            assert model.latest is not None
            for now in queries(model.latest, horizon, rng):
                for w in WINDOWS_MS:
                    assert v.count(w, now) == model.count(w, now), (w, now)
                    assert v.rate(w, now) == pytest.approx(model.count(w, now) * MINUTE_MS / w)
                # the rules a window's count meets, one binary search for all
                rules = [(k, w, (k, w)) for w in WINDOWS_MS for k in (-1, 0, 1, 2, 3, 7, 40, 151)]
                assert v.reaching(rules, now) == [
                    (k, w) for k, w, _ in rules if model.count(w, now) >= k
                ], now
                if now - 2 * MINUTE_MS >= model.latest - horizon:
                    assert v.acceleration(now) == model.count(MINUTE_MS, now) - model.count(
                        MINUTE_MS, now - MINUTE_MS
                    )
    # everything still kept is inside the horizon behind the latest event
    assert model.latest is not None
    assert len(v) == sum(1 for t in model.times if t > model.latest - horizon)


@given(
    st.lists(st.integers(min_value=0, max_value=HORIZON - 1), min_size=1, max_size=200),
    st.randoms(use_true_random=False),
)
@PROPS
def test_out_of_order_inside_the_horizon_equals_in_order(
    times: list[int], rng: random.Random
) -> None:
    """Any arrival order of the same times inside the horizon gives the same counts."""
    shuffled = list(times)
    rng.shuffle(shuffled)
    a, b = Velocity(), Velocity()
    for t in sorted(times):
        assert a.add(T0 + t)
    for t in shuffled:
        assert b.add(T0 + t)  # all within the horizon of each other: none refused
    latest = T0 + max(times)
    for now in queries(latest, HORIZON, rng):
        for w in WINDOWS_MS:
            assert a.count(w, now) == b.count(w, now)
        assert a.acceleration(now) == b.acceleration(now)
    assert len(a) == len(b) == len(times)


def test_late_event_updates_the_window_it_belongs_to() -> None:
    v = Velocity()
    for t in range(0, 10 * MINUTE_MS, 10_000):  # 6 a minute for 10 minutes
        v.add(T0 + t)
    now = T0 + 10 * MINUTE_MS - 1
    before = {w: v.count(w, now) for w in WINDOWS_MS}
    assert before == {MINUTE_MS: 6, 5 * MINUTE_MS: 30, 15 * MINUTE_MS: 60}
    # 3 minutes behind the front: inside 5m and 15m, not inside the last minute
    assert v.add(now - 3 * MINUTE_MS)
    assert v.count(MINUTE_MS, now) == 6
    assert v.count(5 * MINUTE_MS, now) == 31
    assert v.count(15 * MINUTE_MS, now) == 61
    # and it is counted in the 1-minute window of its own time
    assert v.count(MINUTE_MS, now - 3 * MINUTE_MS) == 7
    assert v.latest_ms == now - 9_999  # a late event does not move the front


def test_too_old_is_refused_and_changes_nothing() -> None:
    v = Velocity(horizon_ms=HORIZON)
    v.add(T0)
    v.add(T0 + HORIZON)
    assert len(v) == 1  # T0 is exactly one horizon behind: pruned
    assert not v.add(T0)  # exactly one horizon behind the latest: too old
    assert not v.add(T0 - 1)
    assert not v.add(T0 - 10**9)
    assert len(v) == 1 and v.latest_ms == T0 + HORIZON
    assert v.add(T0 + 1)  # just inside
    assert len(v) == 2
    assert v.count(15 * MINUTE_MS, T0 + 15 * MINUTE_MS) == 1


def test_windows_are_half_open() -> None:
    v = Velocity()
    for t in (0, 30_000, 60_000):
        v.add(T0 + t)
    assert v.count(MINUTE_MS, T0 + 60_000) == 2  # (0, 60000]: the event at 0 is out
    assert v.count(MINUTE_MS, T0 + 59_999) == 2  # [.., 59999]: 0 and 30000
    assert v.count(MINUTE_MS, T0 - 1) == 0
    assert v.count(MINUTE_MS, T0) == 1
    assert v.rate(5 * MINUTE_MS, T0 + 60_000) == pytest.approx(3 / 5)


def test_equal_times_are_all_counted() -> None:
    v = Velocity()
    for _ in range(50):
        assert v.add(T0)
    assert v.add(T0 - 1)
    assert v.count(MINUTE_MS, T0) == 51
    assert v.rate(MINUTE_MS, T0) == 51.0


def test_acceleration_by_hand() -> None:
    v = Velocity()
    for t in range(0, MINUTE_MS, 6_000):  # 10 in the first minute
        v.add(T0 + t)
    for t in range(MINUTE_MS, 2 * MINUTE_MS, 2_000):  # 30 in the second
        v.add(T0 + t)
    assert v.acceleration(T0 + 2 * MINUTE_MS - 1) == 20.0
    # slowing down: nothing in the third minute
    assert v.acceleration(T0 + 3 * MINUTE_MS - 1) == -30.0
    assert v.acceleration(T0 + 10 * MINUTE_MS) == 0.0
    assert isinstance(v.acceleration(T0), float)


def test_long_stream_prunes_and_still_counts_right() -> None:
    """Many horizons of traffic: memory stays bounded by the horizon, counts stay right."""
    rng = random.Random(3)
    v, model = Velocity(), BruteVelocity(HORIZON)
    t = T0
    for _ in range(30_000):
        t += rng.randrange(0, 400)
        ts = t - (rng.randrange(0, 5 * MINUTE_MS) if rng.random() < 0.05 else 0)
        assert v.add(ts) == model.add(ts)
    assert len(v) == sum(1 for x in model.times if x > t - HORIZON)
    assert len(v) < 30_000 // 2
    for w in WINDOWS_MS:
        assert v.count(w, t) == model.count(w, t)
        assert v.count(w, t - 4 * MINUTE_MS) == model.count(w, t - 4 * MINUTE_MS)


def test_horizon_must_cover_the_longest_window() -> None:
    with pytest.raises(ValueError, match="15 minutes"):
        Velocity(horizon_ms=15 * MINUTE_MS - 1)
    assert Velocity(horizon_ms=15 * MINUTE_MS).horizon_ms == 15 * MINUTE_MS


def test_empty() -> None:
    v = Velocity()
    assert len(v) == 0 and v.latest_ms is None
    assert all(v.count(w, T0) == 0 for w in WINDOWS_MS)
    assert v.acceleration(T0) == 0.0
    assert v.below_from(1, MINUTE_MS) is None


# ---------------------------------------------------------------- below_from


@given(
    st.lists(st.integers(min_value=0, max_value=HORIZON - 1), min_size=0, max_size=80),
    st.integers(min_value=1, max_value=40),
    st.sampled_from(WINDOWS_MS),
)
@PROPS
def test_below_from_is_when_the_count_drops_under_for_good(
    offsets: list[int], shares: int, window: int
) -> None:
    """With nothing more coming, the count stays under ``shares`` from ``below_from`` on;
    and if that is after the latest event, it is the first such moment."""
    v, model = Velocity(), BruteVelocity(HORIZON)
    for off in offsets:  # arbitrary arrival order
        v.add(T0 + off)
        model.add(T0 + off)
    at = v.below_from(shares, window)
    if at is None:
        assert len(model.times) < shares
        return
    latest = T0 + max(offsets)
    # the count of (t - window, t] only loses events once t >= latest: check the edges
    for t in {at, at + 1, at + window, max(at, latest), max(at, latest) + window}:
        assert model.count(window, t) < shares, t
    if at - 1 >= latest:
        assert model.count(window, at - 1) >= shares
    else:
        assert model.count(window, latest) < shares
    assert at == sorted(model.times)[-shares] + window


def test_below_from_by_hand() -> None:
    v = Velocity()
    for t in (0, 10_000, 20_000, 20_000):
        v.add(T0 + t)
    assert v.below_from(1, MINUTE_MS) == T0 + 80_000
    assert v.below_from(2, MINUTE_MS) == T0 + 80_000  # two at 20 s leave together
    assert v.below_from(3, MINUTE_MS) == T0 + 70_000
    assert v.below_from(4, MINUTE_MS) == T0 + 60_000
    assert v.below_from(5, MINUTE_MS) is None
    assert v.add(T0 + 5_000)  # a late one becomes the 4th latest
    assert v.below_from(3, MINUTE_MS) == T0 + 70_000
    assert v.below_from(4, MINUTE_MS) == T0 + 65_000
    assert v.below_from(5, MINUTE_MS) == T0 + 60_000
