"""How far event time has advanced, across input partitions: per-partition clocks and a watermark.

Kafka orders records within a partition only, and a worker that catches up on
a backlog reads its partitions in chunks that can be minutes of event time
apart. So a downstream stage may apply a record only once *every* input
partition has moved past it (Flink's watermarks, Kafka Streams' stream time):

- upstream, a :class:`SourceClock` keeps, for each partition it reads, the
  newest event time seen there, and whether the partition is *idle* (no
  record for a while of wall-clock time: a partition nobody writes to must
  not hold the others back forever);
- downstream, a :class:`Watermark` combines the marks of every partition:
  the slowest active partition's time, minus the allowed lateness (records
  within a partition may be that much out of order). When every partition is
  idle, the input has stopped: the watermark jumps to the newest time seen,
  so what is held is applied instead of waiting for traffic that may never
  come. The watermark never goes back.

>>> clock = SourceClock(idle_s=2.0)
>>> clock.assign([0, 1], now=0.0)
>>> clock.observe(0, 10_000, now=0.5)
>>> clock.observe(1, 7_000, now=0.5)
>>> wm = Watermark(sources=2, lateness_ms=1_000)
>>> wm.update(clock.marks(now=1.0))
6000
>>> wm.update(clock.marks(now=5.0))  # both silent for 2 s: apply everything seen
10000
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

#: "No event time yet" (real event times are epoch milliseconds after 2000).
NO_TIME: Final = -1

#: A partition's mark: the newest event time read from it, and whether it is idle.
Mark = tuple[int, bool]


class SourceClock:
    """Per-partition event-time progress of one reader (the stage that reads the input topic)."""

    __slots__ = ("_assigned", "_last_seen", "_max_ts", "idle_s")

    def __init__(self, idle_s: float) -> None:
        if idle_s < 0:
            raise ValueError("idle_s cannot be negative")
        self.idle_s = idle_s
        self._max_ts: dict[int, int] = {}
        self._last_seen: dict[int, float] = {}
        self._assigned: set[int] = set()

    def assign(self, partitions: Iterable[int], now: float) -> None:
        """Partitions this reader now owns; new ones start "not seen yet" at ``now``."""
        new = set(partitions)
        for p in new - self._assigned:
            self._last_seen[p] = now
        for p in self._assigned - new:
            self._last_seen.pop(p, None)
            self._max_ts.pop(p, None)
        self._assigned = new

    def observe(self, partition: int, ts_ms: int | None, now: float) -> None:
        """A record was read from ``partition`` (``ts_ms`` ``None``: it had no usable time)."""
        if partition not in self._assigned:
            self._assigned.add(partition)
        self._last_seen[partition] = now
        if ts_ms is not None and ts_ms > self._max_ts.get(partition, NO_TIME):
            self._max_ts[partition] = ts_ms

    def newest(self, partition: int) -> int:
        """The newest event time read from ``partition`` (:data:`NO_TIME`: none yet)."""
        return self._max_ts.get(partition, NO_TIME)

    def resume(self, partition: int, ts_ms: int) -> None:
        """``partition``'s newest event time as its previous reader committed it.

        A reader that takes a partition over reads it from the last committed
        offset on, so it would never learn of event times read before that: once
        every partition is idle the watermark jumps to the newest time seen, and
        events up to the true newest would wait for traffic that may never come.
        So the newest time goes with each offset commit (Kafka Streams keeps its
        partition time the same way) and comes back here. Never moves a time back,
        and does not count as a record seen (idleness is unchanged).

        >>> clock = SourceClock(idle_s=2.0)
        >>> clock.assign([0], now=0.0)
        >>> clock.resume(0, 9_000); clock.observe(0, 7_000, now=1.0); clock.newest(0)
        9000
        >>> clock.marks(now=5.0)
        {0: (9000, True)}
        """
        if ts_ms > self._max_ts.get(partition, NO_TIME):
            self._max_ts[partition] = ts_ms

    @property
    def assigned(self) -> frozenset[int]:
        return frozenset(self._assigned)

    def ahead(self, busy: Iterable[int], skew_ms: int) -> set[int]:
        """Partitions read more than ``skew_ms`` of event time past the slowest ``busy`` one.

        A reader working through a backlog pauses these, so that the
        partitions advance together: the watermark follows the slowest, and
        whatever a fast one delivers early only waits downstream. A busy
        partition not read yet counts as the slowest of all; the slowest is
        never ahead, so reading always goes on.

        >>> clock = SourceClock(idle_s=2)
        >>> clock.assign([0, 1, 2, 3], now=0.0)
        >>> for p, ts in ((0, 1_000), (1, 9_000), (2, 20_000)):
        ...     clock.observe(p, ts, now=0.0)
        >>> sorted(clock.ahead(busy=[0, 1, 2], skew_ms=5_000))
        [1, 2]
        >>> sorted(clock.ahead(busy=[1, 2], skew_ms=5_000))  # 0 is read to its end
        [2]
        >>> sorted(clock.ahead(busy=[1, 2, 3], skew_ms=5_000))  # 3 has given nothing yet
        [1, 2]
        """
        busy = [p for p in busy if p in self._assigned]
        if not busy:
            return set()
        slowest = min(self._max_ts.get(p, NO_TIME) for p in busy)
        owned = self._assigned
        return {p for p, ts in self._max_ts.items() if p in owned and ts - slowest > skew_ms}

    def marks(self, now: float) -> dict[int, Mark]:
        """Each owned partition's ``(newest event time, idle)``."""
        return {
            p: (self._max_ts.get(p, NO_TIME), now - self._last_seen.get(p, now) >= self.idle_s)
            for p in sorted(self._assigned)
        }


class Watermark:
    """The event time up to which every input partition has been read (see the module doc).

    ``sources`` is the number of input partitions; until each has sent a
    mark the watermark stays at :data:`NO_TIME`, so nothing is applied on a
    partial view (a restarted worker waits for every partition's reader).

    >>> wm = Watermark(sources=2, lateness_ms=0)
    >>> wm.update({0: (5_000, False)})
    -1
    >>> wm.update({1: (3_000, False)})
    3000
    >>> wm.update({1: (2_000, False)})  # a stale mark does not move it back
    3000
    >>> wm.update({1: (2_000, True)})  # nor is its idleness taken (a copy that came again)
    3000
    """

    __slots__ = ("_idle", "_ts", "lateness_ms", "sources", "value")

    def __init__(self, sources: int, lateness_ms: int) -> None:
        if sources < 1:
            raise ValueError("a watermark needs at least one source partition")
        if lateness_ms < 0:
            raise ValueError("lateness_ms cannot be negative")
        self.sources = sources
        self.lateness_ms = lateness_ms
        self._ts: dict[int, int] = {}
        self._idle: dict[int, bool] = {}
        self.value = NO_TIME

    def update(self, marks: Mapping[int, Mark]) -> int:
        """Take newer marks; return the (never decreasing) watermark."""
        ts, idle = self._ts, self._idle
        for p, (t, is_idle) in marks.items():
            if not 0 <= p < self.sources:
                continue  # a partition of another topic layout: not ours to count
            known = ts.get(p)
            if known is None or t > known:
                ts[p] = max(t, NO_TIME)
            elif t < known:
                continue  # an older mark (a copy that came again): its idleness is stale too
            idle[p] = is_idle
        if len(ts) == self.sources:
            active = [ts[p] for p in ts if not idle[p]]
            if active:
                slowest = min(active)
                candidate = slowest - self.lateness_ms if slowest != NO_TIME else NO_TIME
            else:
                candidate = max(ts.values())
            if candidate > self.value:
                self.value = candidate
        return self.value

    def marks(self) -> dict[int, Mark]:
        """What is known of each source partition."""
        return {p: (self._ts[p], self._idle[p]) for p in sorted(self._ts)}
