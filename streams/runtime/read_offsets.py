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
offset Faust committed) proves records were skipped. The worker then holds
that batch back and seeks the partition back to the first record missing
(:meth:`ReadOffsets.behind`), so they are read again, in order; if they do
not come within :data:`SEEK_BACK_S` it counts them lost (``skipped`` in its
report, and a warning) and reads on from the first record it held back,
instead of waiting silently for events that will never come.

A partition that moved to another worker is judged the same way, from where
its last owner's stage stood: each key of the state logs carries the next
offset of the input topic that stage was to be handed
(:meth:`streams.runtime.state_log.StateLog.logged_position`), so the new owner
starts from there (:meth:`ReadOffsets.resume`) rather than from Faust's
committed offset, which the old owner may have committed past records its
client skipped. A log written by an older version says nothing (the committed
offset then, as before).

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

from collections.abc import Iterable

#: How long (wall time) a worker waits for the records it sought back to before it
#: takes what comes instead (records deleted by retention would never come).
SEEK_BACK_S = 10.0
#: How often (wall time) the seek back is made again while the records do not come.
RESEEK_S = 1.0


class ReadOffsets:
    """Per internal partition held, the next offset its stage should be handed."""

    __slots__ = ("_next", "_revoked", "_waiting", "seeks", "skipped", "wait_s")

    def __init__(self, wait_s: float = SEEK_BACK_S) -> None:
        self.wait_s = wait_s
        self._next: dict[tuple[str, int], int] = {}
        #: partitions sought back: the offset awaited, until when and the last seek (wall
        #: time), and the first offset held back meanwhile
        self._waiting: dict[tuple[str, int], tuple[int, float, float, int]] = {}
        #: where the partitions revoked in the rebalance under way stood (see :meth:`assigned`)
        self._revoked: dict[tuple[str, int], int] = {}
        #: records skipped so far, and seeks back to read them (the worker reports both)
        self.skipped = 0
        self.seeks = 0

    def behind(
        self, topic: str, partition: int, first: int, now: float, committed: int | None = None
    ) -> tuple[bool, int | None]:
        """Before a batch starting at ``first`` is handed over: whether to hold it back
        (records before it were skipped), and the offset to seek back to (``None``:
        sought already, the records are on their way). After :attr:`wait_s` without
        them, the missing records are counted lost and the partition is sought back to
        the first record held back meanwhile, so that only what the client skipped is
        lost, not what this worker held back waiting for it.

        >>> offsets = ReadOffsets(wait_s=5.0)
        >>> offsets.behind("resolve", 0, 21, now=0.0, committed=18)
        (True, 18)
        >>> offsets.behind("resolve", 0, 22, now=0.5)   # stale ones still come: no new seek
        (True, None)
        >>> offsets.behind("resolve", 0, 23, now=1.5)   # still not: seek again
        (True, 18)
        >>> offsets.behind("resolve", 0, 18, now=2.0)   # here they are
        (False, None)
        >>> offsets.read("resolve", 0, 18, 30), offsets.seeks
        (0, 2)
        >>> offsets.behind("resolve", 0, 40, now=3.0)  # 31..39 skipped
        (True, 31)
        >>> offsets.behind("resolve", 0, 45, now=9.0)   # never came: lost; from 40 again
        (True, 40)
        >>> offsets.skipped, offsets.behind("resolve", 0, 40, now=9.5)
        (9, (False, None))
        """
        key = (topic, partition)
        expected = self._next.get(key, committed)
        if expected is None or first <= expected:
            self._waiting.pop(key, None)
            return False, None
        waiting = self._waiting.get(key)
        if waiting is None or waiting[0] != expected:
            self._waiting[key] = (expected, now + self.wait_s, now, first)
            self._next.setdefault(key, expected)
            self.seeks += 1
            return True, expected
        held = min(waiting[3], first)  # the first record held back while waiting
        if now >= waiting[1]:  # the skipped records do not come: go on from the held ones
            del self._waiting[key]
            self.skipped += held - expected
            self._next[key] = held
            if first <= held:
                return False, None
            self._waiting[key] = (held, now + self.wait_s, now, first)
            self.seeks += 1
            return True, held
        if now - waiting[2] >= RESEEK_S:  # records fetched before the seek came after it:
            self._waiting[key] = (expected, waiting[1], now, held)  # the client took them
            self.seeks += 1  # as its place and dropped the ones sought as read already
            return True, expected
        self._waiting[key] = (expected, waiting[1], waiting[2], held)
        return True, None

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

    def position(self, topic: str, partition: int) -> int | None:
        """The next offset of ``partition`` to hand its stage (``None``: not known yet)."""
        return self._next.get((topic, partition))

    def knows(self, topic: str, partition: int) -> bool:
        """Whether this worker knows where ``partition``'s next batch should start."""
        return (topic, partition) in self._next

    def resume(self, topic: str, partition: int, logged: int | None) -> None:
        """A partition taken over from another worker: its first batch is judged from where
        the previous owner's state log says its stage stood (``logged``, see
        :meth:`StateLog.logged_position`), not from the offset Faust committed, which
        can be past records that owner's client skipped (they would be lost: the stages
        would wait for ever for what they carried). Nothing changes where this worker
        knows better (a partition given back to it, :meth:`assigned`) or the log says
        nothing. A log behind the committed offset costs a seek back to records read
        again (at least once, as after any restart).

        >>> offsets = ReadOffsets()
        >>> offsets.resume("resolve", 3, 17)
        >>> offsets.behind("resolve", 3, 21, now=0.0, committed=21)  # 17..20 skipped
        (True, 17)
        >>> offsets.resume("resolve", 3, 40)  # known now: the log does not move it
        >>> offsets.position("resolve", 3)
        17
        """
        if logged is not None and (topic, partition) not in self._next:
            self._next[(topic, partition)] = logged

    def forget(self, topic: str, partition: int) -> None:
        """The partition was revoked: where its next owner starts is Faust's to say, unless
        it is this worker again (:meth:`assigned`)."""
        key = (topic, partition)
        if key in self._next:
            self._revoked[key] = self._next.pop(key)
        self._waiting.pop(key, None)

    def assigned(self, topic: str, partitions: Iterable[int]) -> None:
        """The rebalance ended with ``partitions`` of ``topic`` here. Those this worker held
        before it are judged from where it stood: a rebalance revokes every partition
        before it assigns any (Faust's eager protocol), so nobody read them in between,
        and what this worker handed its stages is in their logs (flushed on revocation).
        Faust's committed offset may be past records it skipped; this worker's is not.

        >>> offsets = ReadOffsets()
        >>> offsets.read("resolve", 2, 0, 16, committed=0)
        0
        >>> offsets.forget("resolve", 2); offsets.assigned("resolve", [2, 3])
        >>> offsets.behind("resolve", 2, 21, now=0.0, committed=21)  # 17..20 never came
        (True, 17)
        """
        mine = set(partitions)
        for key in [k for k in self._revoked if k[0] == topic]:
            offset = self._revoked.pop(key)
            if key[1] in mine:
                self._next[key] = offset
