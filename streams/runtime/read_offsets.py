"""Records of the internal topics that the Kafka client skipped: found, counted, said.

Two workers reading a backlog once stopped with about 5% of the events
missing (93,393 of 99,728; reproduced 2026-12-03 in about one run of eight on
the shared machine). The cause, found from the topics themselves: records of
the ``resolve`` topic written in the half second before a rebalance were
never processed by any worker: not routed, not held, in no state log, while
the records before and after them on the same partitions were. That is on
every partition, the ones that stayed with their worker and the one that
moved. The stages hold every reshare of what was lost for ever (its parent
never comes), so the stream's end never comes either.

No stage can drop a whole record it was handed, so the records never reached
the agent: Faust's consumer skips records fetched before a rebalance and
delivered after it (their generation is old), and a record read again after
the seek back to the committed offset is dropped as already read when its
fetch thread noted a later one first (faust-streaming issues 216, 221, 606).
Kafka delivers a partition's records in offset order with no holes on these
topics (they are not compacted and not transactional), so a batch that does
not start where the last one ended (or, first after an assignment, at the
offset Faust committed) proves records were skipped. This module notes that,
so a worker says it (a warning, and ``skipped`` in its report) instead of
waiting silently for events that will never come.

>>> offsets = ReadOffsets()
>>> offsets.read("resolve", 1, 0, 16, committed=0)
0
>>> offsets.read("resolve", 1, 21, 30)      # 17..20 never came
4
>>> offsets.read("resolve", 1, 25, 40)      # read again after a seek back: nothing skipped
0
>>> offsets.forget("resolve", 1)            # revoked: the next batch is judged afresh
>>> offsets.read("resolve", 1, 50, 60, committed=45), offsets.skipped
(5, 9)
"""

from __future__ import annotations


class ReadOffsets:
    """Per internal partition held, the next offset its stage should be handed."""

    __slots__ = ("_next", "skipped")

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}
        #: records skipped so far (the worker reports it)
        self.skipped = 0

    def read(
        self, topic: str, partition: int, first: int, last: int, committed: int | None = None
    ) -> int:
        """A batch of ``partition`` with offsets ``first``..``last`` was handed to its stage;
        how many records before it were skipped. ``committed``: the offset the consumer
        was told to start from, for the first batch after an assignment (``None``:
        unknown, nothing is judged)."""
        key = (topic, partition)
        expected = self._next.get(key, committed)
        skipped = first - expected if expected is not None and first > expected else 0
        self.skipped += skipped
        self._next[key] = max(last + 1, self._next.get(key, 0))
        return skipped

    def forget(self, topic: str, partition: int) -> None:
        """The partition was revoked: where its next owner starts is Faust's to say."""
        self._next.pop((topic, partition), None)
