"""Partitions whose event time stands still while events wait: found, said, counted.

A clusters partition applies an event only once every resolve partition's
progress has passed it (:class:`streams.watermarks.Watermark`). After a
rebalance, a partition whose watermark stops short of its events waits in
silence: in CI a joining worker's partitions took every event and never
reached the end of the stream, and nothing in either worker's log said so.
So each worker watches two things, the same way:

- each clusters partition it holds: one with events waiting whose watermark
  has not moved for :data:`STALL_S` of wall time is *stalled* (the warning
  names the sources holding it back: the slowest resolve partitions'
  progress, and where those held here stand);
- each ``resolve`` and ``clusters`` partition it holds: one whose records
  wait on the broker (its highwater past the next offset its stage is to be
  handed) while that offset has not moved for as long is *not read* (the
  Kafka client is not delivering it: a fetcher that stopped, a partition left
  paused, batches held back for records that do not come).

Each is said once in a warning, again every :data:`STALL_REPEAT_S` while it
lasts, and once more when it moves on; the worker reports them in its
``stats`` record (``stalled``) and the ``viralwatch_partitions_stalled``
gauge.

A mark standing still with nothing waiting is no stall: a quiet stream.

>>> watch = StallWatch(after_s=30.0, repeat_s=60.0)
>>> watch.check({"clusters/0": (1_000, 5), "clusters/1": (2_000, 0)}, now=0.0)
([], [])
>>> watch.check({"clusters/0": (1_000, 5), "clusters/1": (2_000, 0)}, now=31.0)
([Stall(key='clusters/0', mark=1000, since_s=31.0, waiting=5)], [])
>>> watch.check({"clusters/0": (1_000, 5), "clusters/1": (2_000, 0)}, now=40.0)  # said
([], [])
>>> watch.stalled
['clusters/0']
>>> watch.check({"clusters/0": (1_500, 2)}, now=45.0)  # it moved: said once more
([], [Stall(key='clusters/0', mark=1500, since_s=45.0, waiting=2)])
>>> watch.stalled
[]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Wall time a clusters partition's watermark may stand still while events wait, before
#: the worker says so. Well over what a healthy partition shows (a rebalance's restore
#: takes a few seconds here, an allowed lateness is event time, not wall time) and well
#: under what an on-call page would wait.
STALL_S = 30.0
#: How often a stall that lasts is said again.
STALL_REPEAT_S = 60.0


@dataclass(frozen=True)
class Stall:
    """A partition (``topic/partition``), where its mark stands (a watermark, an offset),
    how long (s) it has not moved, and how much waits behind it (events, records)."""

    key: str
    mark: int
    since_s: float
    waiting: int


class StallWatch:
    """Per partition held, since when its mark has stood where it is."""

    __slots__ = ("_said", "_since", "after_s", "repeat_s")

    def __init__(self, after_s: float = STALL_S, repeat_s: float = STALL_REPEAT_S) -> None:
        self.after_s = after_s
        self.repeat_s = repeat_s
        #: per partition: its mark and since when (wall time) it stands there
        self._since: dict[str, tuple[int, float]] = {}
        #: the stalled partitions, each with when it was last said
        self._said: dict[str, float] = {}

    def check(
        self, partitions: Mapping[str, tuple[int, int]], now: float
    ) -> tuple[list[Stall], list[Stall]]:
        """``partitions``: each held partition's ``(mark, what waits behind it)``. Returns the
        stalls to say now (new, or lasting past :attr:`repeat_s` since last said) and the
        stalled partitions that moved on. Partitions no longer held are forgotten."""
        for gone in set(self._since) - set(partitions):
            del self._since[gone]
            self._said.pop(gone, None)
        say: list[Stall] = []
        ended: list[Stall] = []
        for p, (mark, pending) in sorted(partitions.items()):
            known = self._since.get(p)
            if known is None or known[0] != mark:
                self._since[p] = (mark, now)
                if p in self._said:
                    del self._said[p]
                    since = now - known[1] if known is not None else 0.0
                    ended.append(Stall(p, mark, round(since, 1), pending))
                continue
            since = now - known[1]
            if pending <= 0:  # nothing waits: a quiet stream, no stall
                if self._said.pop(p, None) is not None:
                    ended.append(Stall(p, mark, round(since, 1), pending))
                continue
            if since < self.after_s:
                continue
            said = self._said.get(p)
            if said is None or now - said >= self.repeat_s:
                self._said[p] = now
                say.append(Stall(p, mark, round(since, 1), pending))
        return say, ended

    @property
    def stalled(self) -> list[str]:
        """The partitions stalled now."""
        return sorted(self._said)
