"""Event-time velocity: how fast a cascade grows, in shares per minute.

Rates are counted on the time the shares *happened* (event time), not on when
a worker saw them: a backlog replayed at 50k events/s must give the same
rates as the live stream did. Sliding windows ending at ``now`` are the
half-open interval ``(now - window, now]``.

Timestamps are kept sorted. Events mostly come in order (the pipeline
applies them in event-time order), so an insert is an append; a late one
inside the horizon is inserted where it belongs and updates every window
that covers it. A count is two binary searches.

Examples
--------
>>> v = Velocity()
>>> for t in range(0, 60_000, 2_000):  # 30 shares in one minute
...     _ = v.add(t)
>>> v.rate(60_000, now_ms=59_000)
30.0
>>> v.rate(300_000, now_ms=59_000)
6.0
>>> v.add(1_000)   # a late share, still inside the horizon
True
>>> v.count(60_000, now_ms=59_000)
31
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Iterable
from typing import Final, TypeVar

T = TypeVar("T")

MINUTE_MS: Final = 60_000
#: The windows on-call reads: 1, 5 and 15 minutes.
WINDOWS_MS: Final = (MINUTE_MS, 5 * MINUTE_MS, 15 * MINUTE_MS)


class Velocity:
    """Sorted event times within a horizon, and rates over windows ending at ``now``."""

    __slots__ = ("_start", "_ts", "horizon_ms", "latest_ms")

    def __init__(self, horizon_ms: int = 20 * MINUTE_MS) -> None:
        if horizon_ms < max(WINDOWS_MS):
            raise ValueError("horizon_ms must cover the longest window (15 minutes)")
        self.horizon_ms = horizon_ms
        self._ts: list[int] = []
        self._start = 0
        self.latest_ms: int | None = None

    @classmethod
    def from_times(cls, times: list[int], horizon_ms: int) -> Velocity:
        """The velocity of shares at ``times`` (sorted, within the horizon of the latest):
        one kept elsewhere (an unbanked cluster's, in the compiled core) taken back.

        >>> v = Velocity.from_times([0, 1_000, 2_000], 20 * MINUTE_MS)
        >>> v.count(60_000, 2_000), v.latest_ms
        (3, 2000)
        """
        v = cls(horizon_ms)
        v._ts = list(times)
        v.latest_ms = times[-1] if times else None
        return v

    def add(self, ts_ms: int) -> bool:
        """Count one share at ``ts_ms``; ``False`` if it is older than the horizon."""
        latest = self.latest_ms
        if latest is not None and ts_ms <= latest - self.horizon_ms:
            return False
        if latest is None or ts_ms >= latest:
            self._ts.append(ts_ms)
            self.latest_ms = ts_ms
            self._prune()
        else:
            insort(self._ts, ts_ms, lo=self._start)
        return True

    def _prune(self) -> None:
        assert self.latest_ms is not None
        cut = bisect_right(self._ts, self.latest_ms - self.horizon_ms, lo=self._start)
        self._start = cut
        if self._start > 1024 and self._start * 2 > len(self._ts):
            del self._ts[: self._start]
            self._start = 0

    def count(self, window_ms: int, now_ms: int) -> int:
        """Shares in ``(now - window, now]``."""
        hi = bisect_right(self._ts, now_ms, lo=self._start)
        lo = bisect_right(self._ts, now_ms - window_ms, lo=self._start, hi=hi)
        return hi - lo

    def reaching(self, rules: Iterable[tuple[int, int, T]], now_ms: int) -> list[T]:
        """The tags of the ``(shares, window_ms, tag)`` rules whose window ending at ``now``
        holds ``shares`` or more (``count(window_ms, now_ms) >= shares``), in their order.

        Why: the detector asks its velocity rules on every event of a banked cluster;
        counting each window is two binary searches, where one serves all the rules here:
        the times up to ``now`` end at ``hi``, and a window holds ``shares`` of them exactly
        when the ``shares``-th latest, ``hi - shares``, is inside it (the times are sorted).

        >>> v = Velocity()
        >>> for t in range(0, 60_000, 2_000):  # 30 shares in one minute
        ...     _ = v.add(t)
        >>> v.reaching([(30, 60_000, "a"), (31, 60_000, "b"), (10, 20_000, "c")], 58_000)
        ['a', 'c']
        >>> v.count(60_000, 58_000), v.count(20_000, 58_000)
        (30, 10)
        """
        ts, start = self._ts, self._start
        hi = bisect_right(ts, now_ms, lo=start)
        return [
            tag
            for shares, window_ms, tag in rules
            if shares <= 0 or (hi - shares >= start and ts[hi - shares] > now_ms - window_ms)
        ]

    def rate(self, window_ms: int, now_ms: int) -> float:
        """Shares per minute over the window ending at ``now``."""
        return self.count(window_ms, now_ms) * MINUTE_MS / window_ms

    def acceleration(self, now_ms: int) -> float:
        """Change of the 1-minute rate over the last minute, in shares/min per minute.

        >>> v = Velocity()
        >>> for t in range(0, 60_000, 2_000):  # 30 shares in the first minute
        ...     _ = v.add(t)
        >>> for t in range(60_000, 120_000, 1_000):  # 60 in the second
        ...     _ = v.add(t)
        >>> v.acceleration(119_999)
        30.0
        """
        return float(self.count(MINUTE_MS, now_ms) - self.count(MINUTE_MS, now_ms - MINUTE_MS))

    def below_from(self, shares: int, window_ms: int) -> int | None:
        """When the count over ``window_ms`` drops under ``shares`` if nothing more comes.

        That is the moment the ``shares``-th latest event leaves the window;
        ``None`` when fewer than ``shares`` events are kept at all.

        >>> v = Velocity()
        >>> for t in (0, 10_000, 20_000):
        ...     _ = v.add(t)
        >>> v.below_from(2, 60_000)   # the 2nd latest (10 s) leaves a 1-minute window at 70 s
        70000
        """
        ts = self._ts
        # the length read here, not through len(self): a Python __len__ by the type's slot
        # (this runs for every banked event's evaluation)
        if len(ts) - self._start < shares:
            return None
        return ts[len(ts) - shares] + window_ms

    def held(self) -> int:
        """The times kept (``len``): a method, for the detector's evaluation of every banked
        event, where ``len`` went through the type's slot to a Python ``__len__`` (845
        instructions a call more).

        >>> v = Velocity()
        >>> v.add(0), v.add(1_000), v.held() == len(v) == 2
        (True, True, True)
        """
        return len(self._ts) - self._start

    __len__ = held
