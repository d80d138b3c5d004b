"""The checkpoint: one owner of the order in which a batch's work becomes durable.

Delivery is at least once: an input offset may be committed only once
everything made from the records before it is safe on the broker. The
order, modelled on Quix Streams' ``Checkpoint.commit``, lives here and
nowhere else:

1. **sinks flush**: each output hands what it staged on (alerts and takedown
   requests into their tables, whose changelogs are the ``alerts`` and
   ``actions`` topics; dead letters; the on-call hooks). A sink whose flush
   raises aborts the checkpoint: nothing after it runs, the offsets stay
   where they were, and the records are read again.
2. **state logs**: every :class:`~streams.runtime.state_log.StateLog` writes
   the deltas staged since the last checkpoint into its table (its
   changelog topic).
3. **producer flush**: everything sent and written is acknowledged.
4. **offsets commit**: the offsets of what was read up to here.

Steps 1 and 2 run at the end of every batch a stage handles
(:meth:`Checkpoint.stage`); all four on the ``shares`` reader's commit
interval (:meth:`Checkpoint.commit`). The Faust agents' input offsets are
committed by Faust, which does steps 3 and 4 for them: it commits an event's
offset once the table writes attached to it are acknowledged, and the writes
of step 2 are attached to the batch's last event (``focus``).

>>> import asyncio
>>> done = []
>>> class Sink:
...     def flush(self): done.append("sinks")
>>> class Log:
...     def flush(self): done.append("state logs")
>>> async def flush(): done.append("producer")
>>> async def commit(offsets): done.append(f"offsets {offsets}")
>>> cp = Checkpoint(sinks=[Sink()], logs=[Log()], flush_producer=flush, commit_offsets=commit)
>>> cp.store_offset(0, 41); cp.store_offset(0, 42)
>>> asyncio.run(cp.commit({0, 1})), done
(True, ['sinks', 'state logs', 'producer', 'offsets {0: 43}'])
>>> asyncio.run(cp.commit({0, 1}))  # nothing new read: nothing to commit
False
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

log = logging.getLogger("viralwatch.worker")


class Flushes(Protocol):
    """A sink or a state log: hands on what it staged (raising aborts the checkpoint)."""

    def flush(self) -> None: ...


class Checkpoint:
    """The order of one process's commits (see the module doc)."""

    def __init__(
        self,
        *,
        sinks: Sequence[Flushes],
        logs: Sequence[Flushes],
        flush_producer: Callable[[], Awaitable[None]] | None = None,
        commit_offsets: Callable[[dict[int, int]], Awaitable[None]] | None = None,
    ) -> None:
        self.sinks = list(sinks)
        self.logs = list(logs)
        self.flush_producer = flush_producer
        self.commit_offsets = commit_offsets
        #: the next offset to read, per input partition, and what was committed
        self._next: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        #: checkpoints committed (a test and the worker's summary read it)
        self.commits = 0

    def store_offset(self, partition: int, offset: int) -> None:
        """``offset`` of ``partition`` was read and handled.

        An offset lower than one stored before is a partition read again after
        a rebalance gave it back: what is committed follows what was read.
        """
        self._next[partition] = offset + 1

    def next_offsets(self) -> dict[int, int]:
        """The next offset to read of each partition read so far (a copy)."""
        return dict(self._next)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this process no longer reads: their next owner commits them."""
        for p in partitions:
            self._next.pop(p, None)
            self._committed.pop(p, None)

    def stage(self) -> None:
        """Steps 1 and 2: what a batch made goes to the sinks and the state logs."""
        for sink in self.sinks:
            sink.flush()
        for state_log in self.logs:
            state_log.flush()

    async def commit(self, owned: Iterable[int]) -> bool:
        """All four steps for the partitions of ``owned``; whether offsets were committed.

        A failed commit (a rebalance took the partitions) is logged and left:
        their new owner reads those records again (at least once).
        """
        owned = set(owned)
        offsets = {
            p: o for p, o in self._next.items() if p in owned and self._committed.get(p) != o
        }
        self.stage()
        if not offsets:
            return False
        if self.flush_producer is not None:
            await self.flush_producer()
        if self.commit_offsets is not None:
            try:
                await self.commit_offsets(offsets)
            except Exception as exc:  # a rebalance: the new owner reads them again
                log.warning("commit of offsets %s failed: %s", sorted(offsets), exc)
                return False
        self._committed.update(offsets)
        self.commits += 1
        return True
