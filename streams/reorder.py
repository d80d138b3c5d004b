"""Event-time ordering: hold records until event time has passed them, then apply in order.

Kafka orders records within a partition only, and producers key share events
as they like, so the reshares of one cascade arrive out of order. Stream
processors answer this with a *watermark* (Flink) or *stream time* (Kafka
Streams): how far event time is known to have advanced. Records wait here
until the watermark passes them, and come out in ``(ts, key)`` order, so
every consumer of the same events applies them in the same order, whatever
the partitioning and the batch boundaries. The key (the event id) breaks
ties, so even equal timestamps give one order.

>>> buf = ReorderBuffer()
>>> for ts, key in [(30, "c"), (10, "a"), (20, "b")]:
...     buf.push(ts, key, key.upper())
>>> buf.release(20)
['A', 'B']
>>> len(buf), buf.drain()
(1, ['C'])
"""

from __future__ import annotations

import heapq
from typing import Generic, TypeVar

T = TypeVar("T")


class ReorderBuffer(Generic[T]):
    """A min-heap of items by ``(ts, key)``, released up to a watermark."""

    __slots__ = ("_heap", "_seq", "released_ms")

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, int, T]] = []
        self._seq = 0
        #: the event time of the last item released (``-1`` before any)
        self.released_ms = -1

    def push(self, ts_ms: int, key: str, item: T) -> None:
        self._seq += 1  # keeps equal (ts, key) pairs in arrival order; never compares items
        heapq.heappush(self._heap, (ts_ms, key, self._seq, item))

    def release(self, watermark_ms: int) -> list[T]:
        """Every item at or before the watermark, in event-time order."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= watermark_ms:
            ts, _key, _seq, item = heapq.heappop(heap)
            self.released_ms = max(self.released_ms, ts)
            out.append(item)
        return out

    def drain(self) -> list[T]:
        """Everything, in order (end of input)."""
        out = [entry[3] for entry in sorted(self._heap)]
        if self._heap:
            self.released_ms = max(self.released_ms, max(e[0] for e in self._heap))
        self._heap.clear()
        return out

    def keys(self) -> set[str]:
        """The keys of the items waiting."""
        return {entry[1] for entry in self._heap}

    def __len__(self) -> int:
        return len(self._heap)
