"""How far event time has advanced, across input partitions: per-partition clocks and a watermark.

Kafka orders records within a partition only, and a worker that catches up on
a backlog reads its partitions in chunks that can be minutes of event time
apart. So a downstream stage may apply a record only once *every* input
partition has moved past it (Flink's watermarks, Kafka Streams' stream time):

- upstream, a :class:`SourceClock` keeps, for each partition it reads, the
  newest event time seen there, and whether the partition is *idle*: no
  record for a while of wall-clock time (a partition nobody writes to must
  not hold the others back forever) and, for a reader that can look, read to
  the end of its log as of a look no older than that while (Kafka Streams'
  rule: a partition is not waited for only once it is caught up), so that
  records already written to it but not read yet are waited for, whatever
  the wall clock says;
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

    __slots__ = ("_assigned", "_ends", "_last_seen", "_max_ts", "idle_s")

    def __init__(self, idle_s: float, *, log_end: bool = False) -> None:
        """``log_end``: the reader says when it has read a partition to its end
        (:meth:`at_end`), and a partition is idle only if a look no older than ``idle_s``
        said so; without it (a reader that cannot look), wall-clock silence alone."""
        if idle_s < 0:
            raise ValueError("idle_s cannot be negative")
        self.idle_s = idle_s
        self._max_ts: dict[int, int] = {}
        self._last_seen: dict[int, float] = {}
        self._assigned: set[int] = set()
        #: per partition, when a look last found it read to its end (``None``: never asked)
        self._ends: dict[int, float] | None = {} if log_end else None

    def assign(self, partitions: Iterable[int], now: float) -> None:
        """Partitions this reader now owns; new ones start "not seen yet" at ``now``."""
        new = set(partitions)
        for p in new - self._assigned:
            self._last_seen[p] = now
        for p in self._assigned - new:
            self._last_seen.pop(p, None)
            self._max_ts.pop(p, None)
            if self._ends is not None:
                self._ends.pop(p, None)
        self._assigned = new

    def at_end(self, partition: int, as_of: float) -> None:
        """A look at ``partition``'s log end (at ``as_of``, the clock of ``now``) found
        nothing left to read: with :meth:`marks`' silence, it may be called idle.

        Kafka Streams waits for a partition with no records buffered unless its
        consumer has reached the log end; wall-clock silence alone called a partition
        idle while its records waited unread (a reader behind, a fetch not answered, a
        partition just assigned), and the others' event time could then run an allowed
        lateness past them: they came late. The look must be no older than ``idle_s``:
        what was written since has event times no older than the silence (for a
        producer on time), so it cannot be late.

        >>> clock = SourceClock(idle_s=2.0, log_end=True)
        >>> clock.assign([0], now=0.0); clock.observe(0, 9_000, now=0.5)
        >>> clock.marks(now=5.0)  # silent, but nobody looked: not idle
        {0: (9000, False)}
        >>> clock.at_end(0, as_of=4.5); clock.marks(now=5.0)
        {0: (9000, True)}
        >>> clock.marks(now=7.0)  # the look is older than the silence asked for
        {0: (9000, False)}
        """
        ends = self._ends
        if (
            ends is not None
            and partition in self._assigned
            and as_of > ends.get(partition, as_of - 1)
        ):
            ends[partition] = as_of

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
        idle_s, ends = self.idle_s, self._ends
        out: dict[int, Mark] = {}
        for p in sorted(self._assigned):
            idle = now - self._last_seen.get(p, now) >= idle_s
            if idle and ends is not None:
                looked = ends.get(p)
                idle = looked is not None and now - looked <= idle_s
            out[p] = (self._max_ts.get(p, NO_TIME), idle)
        return out


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

    An older mark that says "not idle" is taken (its time is not): it can only hold the
    watermark back, until the next mark. It is how a reader that took a partition over
    (and has not read as far as the last owner yet) says it is busy with it; its last
    owner may have called it idle, and the watermark must not run on past what the new
    reader is about to read.

    >>> wm.update({1: (3_000, True)})  # its last owner: idle
    5000
    >>> wm.update({1: (NO_TIME, False)}), wm.update({0: (9_000, False)})  # its new reader
    (5000, 5000)
    >>> wm.update({1: (3_000, True)})  # read to 3000 again, and idle
    9000

    A reader that has read nothing of it (no time at all) is taken when it calls it idle
    again: nothing else could ever end what its "busy" began.

    >>> wm.update({1: (NO_TIME, False)}), wm.update({0: (12_000, False)})
    (9000, 9000)
    >>> wm.update({1: (NO_TIME, True)})
    12000
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
                # an older mark: a copy that came again (its idleness is stale too), or a
                # reader that took the partition over and is reading it again; "busy" is
                # taken from either (it holds the watermark back, never moves it on), and
                # "idle" from a reader that has read nothing (nothing to catch up with)
                if not is_idle or (t == NO_TIME and not idle[p]):
                    idle[p] = is_idle
                continue
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
