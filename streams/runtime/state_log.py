"""A stage's state log: per-batch changes in a Faust table, cut back to snapshots now and then.

One :class:`StateLog` owns one log table (``resolve-log`` or ``cluster-log``):
the keys it writes, what each partition's log holds (:class:`LogLedger`),
and the order of a compaction: the snapshot is written *before* the old
keys are deleted, in the same changelog partition, so a crash in between
leaves both, and restoring both gives the same state (folding is
idempotent). A compaction is done at once (:meth:`StateLog.compact`, a
resolve partition's snapshot is its memory) or a slice per batch
(:meth:`StateLog.cut_back`, a clusters partition's snapshot is its log
filtered, which means reading it back: 16 MiB at once held every stage for
most of a second).

A batch's entries are staged (:meth:`StateLog.append`) and written when
the :class:`~streams.runtime.checkpoint.Checkpoint` says (:meth:`StateLog.flush`,
after the sinks, before the producer flush and the offset commit); a
partition's staged entries are written before anything else of it (a
compaction, a read), so the log's order is the order of the batches.

The table is anything with a mapping's ``__setitem__``, ``get``, ``pop``
and iteration: in a worker the store of a Faust table, with ``send``, which
writes each entry (and the deletion of each key a compaction drops) to the
table's changelog partition of the stage's partition, straight into the
Kafka client's batches (:meth:`streams.runtime.faust_adapter.Producer.write`;
the flushes before an offset commit wait for them); a plain dict in a test
and in :class:`~streams.runtime.local_run.LocalRun`. A Faust table's own
``__setitem__`` sent each write to the partition of the stream's current
event, which the worker had to set first, and made a Faust message and two
futures of each.

>>> class Table(dict):
...     name = "demo-log"
>>> log = StateLog(Table(), compact_bytes=50)
>>> for i in range(6):
...     log.append(0, b'[["x", %d]]' % i)
>>> len(log.table), log.flush(), len(log.table)   # staged, then written
(0, None, 6)
>>> log.size, log.due(0)
(60, True)
>>> log.compact(0, lambda: [b'[["x", 5]]'])   # the six entries replaced by one
6
>>> log.read(0)
[b'[["x", 5]]']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Protocol

from streams.stages import LogCutback, LogLedger, split_log

log = logging.getLogger("viralwatch.worker")


class LogTable(Protocol):
    """What a state log needs of its table (a Faust table, or a dict with a ``name``)."""

    name: str

    def __setitem__(self, key: bytes, value: bytes) -> None: ...

    def get(self, key: bytes) -> bytes | None: ...

    def pop(self, key: bytes, default: bytes | None = None) -> bytes | None: ...

    def __iter__(self) -> Iterator[bytes]: ...

    def __getitem__(self, key: bytes) -> bytes: ...


class StateLog:
    """The log table of one stage: append, read back, compact (see the module doc)."""

    def __init__(
        self,
        table: LogTable | MutableMapping[bytes, bytes],
        *,
        compact_bytes: int,
        compact_garbage: float = 0.5,
        slice_bytes: int = 1024 * 1024,
        on_compacted: Callable[[], None] | None = None,
        send: Callable[[int, bytes, bytes | None], None] | None = None,
        name: str | None = None,
        position: Callable[[int], int | None] | None = None,
    ) -> None:
        self.table: LogTable = table  # type: ignore[assignment]
        #: writes (partition, key, entry) to the changelog, or its deletion (entry ``None``),
        #: after the table holds it; none: the table is the log (in process, a test)
        self.send = send
        self._name = name
        self.compact_bytes = compact_bytes
        #: the share of a log that must be garbage for a compaction (see LogLedger)
        self.compact_garbage = compact_garbage
        #: how much of a log one cut-back slice reads (at most a quarter of ``compact_bytes``)
        self.slice_bytes = min(slice_bytes, max(1, compact_bytes // 4))
        self.on_compacted = on_compacted
        #: where a partition's stage stands in its input topic (the next offset to hand it;
        #: ``None``: not known): each key written says it (see :meth:`logged_position`)
        self.position = position
        #: entries appended and not written yet, per partition, oldest first, and their items
        self._staged: dict[int, list[bytes]] = {}
        self._staged_items: dict[int, int] = {}
        #: what to call once a partition's staged entries are written (see :meth:`append`)
        self._written: dict[int, list[Callable[[], None]]] = {}
        self._ledgers: dict[int, LogLedger] = {}
        self._cutbacks: dict[int, LogCutback] = {}
        self._last_stamp = 0

    @property
    def name(self) -> str:
        return self._name or str(getattr(self.table, "name", "log"))

    @property
    def size(self) -> int:
        """Bytes in the logs of the partitions held (what a replacement would read back)."""
        return sum(ledger.size for ledger in self._ledgers.values())

    def _key(self, partition: int) -> bytes:
        """A new key: partition, a per-process increasing wall-clock stamp, and where the
        partition's stage stands in its input topic (``position``), if known.

        The stamp makes it new: a redelivered batch must add to the log, not
        overwrite what the first delivery wrote. The position tells a new owner of
        the partition where this one stood (:meth:`logged_position`). Keys sort by
        partition and stamp (20 digits), with or without a position; an older
        version's keys have none.
        """
        stamp = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = stamp
        at = self.position(partition) if self.position is not None else None
        return f"{partition}:{stamp:020d}{'' if at is None else f':{at}'}".encode()

    def logged_position(self, partition: int) -> int | None:
        """Where the partition's stage stood in its input topic when its log was last
        written: every record before that offset had been handed to the stage, and what
        it changed is in the log (or changed nothing logged). ``None``: no key says (an
        older version's log, or a worker that had read nothing of the topic).

        A worker taking the partition over judges its first batch from here, not from
        the offset Faust committed, which can be past records the previous owner's
        Kafka client skipped (see :mod:`streams.runtime.read_offsets`).

        >>> class Table(dict):
        ...     name = "demo-log"
        >>> at = {0: 17}
        >>> log = StateLog(Table(), compact_bytes=50, position=at.get)
        >>> log.append(0, b"[]"); log.append(1, b"[]"); log.flush()
        >>> at[0] = 25; log.append(0, b"[]"); log.flush()
        >>> log.logged_position(0), log.logged_position(1)
        (25, None)
        >>> sorted(log.table)[0].split(b":")[2]
        b'17'
        """
        prefix = f"{partition}:".encode()
        positions = []
        for key in self.table:
            if key.startswith(prefix):
                fields = key.split(b":")
                if len(fields) == 3 and fields[2].isdigit():
                    positions.append(int(fields[2]))
        return max(positions, default=None)

    def ledger(self, partition: int) -> LogLedger:
        ledger = self._ledgers.get(partition)
        return ledger if ledger is not None else self._new_ledger(partition, kept_items=0)

    def _new_ledger(self, partition: int, kept_items: int | None) -> LogLedger:
        ledger = self._ledgers[partition] = LogLedger(
            self.compact_bytes, kept_items=kept_items, garbage=self.compact_garbage
        )
        return ledger

    def append(
        self,
        partition: int,
        entry: bytes | list[bytes],
        items: int = 0,
        written: Callable[[], None] | None = None,
    ) -> None:
        """Stage one batch's changes (in parts, if it is large): :meth:`flush` writes them.

        ``entry``: one entry (cut here if it is too large), or entries already cut.
        ``items``: how many things (events, registrations) the entry records, for the
        ledger's count of garbage (see :class:`~streams.stages.LogLedger`). ``written``:
        called once they are written (dropped with them if the partition is forgotten
        first): what is counted once logged (a stage's uploads received new).
        """
        parts = split_log(entry) if isinstance(entry, bytes) else entry
        self._staged.setdefault(partition, []).extend(parts)
        self._staged_items[partition] = self._staged_items.get(partition, 0) + items
        if written is not None:
            self._written.setdefault(partition, []).append(written)

    def flush(self) -> None:
        """Write every partition's staged entries (the checkpoint's second step)."""
        for partition in list(self._staged):
            self._flush(partition)

    def _flush(self, partition: int) -> None:
        staged = self._staged.pop(partition, None)
        items = self._staged_items.pop(partition, 0)
        written = self._written.pop(partition, ())
        if staged:
            self.write(partition, staged, items)
        for then in written:
            then()

    def write(self, partition: int, parts: Iterable[bytes], items: int = 0) -> None:
        ledger = self.ledger(partition)
        table, send = self.table, self.send
        for part in parts:
            key = self._key(partition)
            table[key] = part
            if send is not None:
                send(partition, key, part)
            ledger.wrote(key, len(part), items)
            items = 0

    def _delete(self, partition: int, keys: Iterable[bytes]) -> None:
        """Drop keys a compaction replaced (a key no longer there is not written again)."""
        table, send = self.table, self.send
        for key in keys:
            if table.pop(key, None) is not None and send is not None:
                send(partition, key, None)

    def read(self, partition: int) -> list[bytes]:
        """A partition's entries, oldest first, as its new owner finds them (and notes)."""
        self._flush(partition)
        prefix = f"{partition}:".encode()
        keys = sorted(k for k in self.table if k.startswith(prefix))
        # noted afresh, from what is there: how many items the entries record is not known
        # until the stage has folded them (see :meth:`restored`); an empty log records none
        ledger = self._new_ledger(partition, kept_items=0 if not keys else None)
        entries = []
        for key in keys:
            entry = self.table[key]
            ledger.wrote(key, len(entry))
            entries.append(entry)
        return entries

    def restored(self, partition: int, live: int) -> None:
        """The stage folded what :meth:`read` gave and holds ``live`` items: count the log's
        garbage from there (what was garbage in it already is counted as live: a
        compaction comes a little later than it could, never too soon)."""
        ledger = self.ledger(partition)
        if ledger.kept_items is None:
            ledger.kept_items = live

    def due(self, partition: int, live: int | None = None) -> bool:
        """Whether a partition's log is due a compaction (``live``: items its stage holds)."""
        return self.ledger(partition).due(live)

    def compact(
        self, partition: int, snapshot: Callable[[], list[bytes]], live: int | None = None
    ) -> int:
        """Cut a partition's log back to ``snapshot()`` (``live`` items) now; the entries it
        replaced."""
        self._flush(partition)
        ledger = self.ledger(partition)
        old = ledger.start()
        started = time.monotonic()
        self.write(partition, snapshot())
        ledger.done(live)
        self._delete(partition, old)
        self._compacted(partition, len(old), time.monotonic() - started)
        return len(old)

    def cut_back(
        self,
        partition: int,
        keep: Callable[[list[bytes], set[str]], list[bytes]],
        live: int | None = None,
    ) -> bool:
        """One slice of a compaction by filtering (``keep(entries, seen)`` gives what stays).

        Starts one when the log is due; returns whether one is under way. Entries staged
        and not written yet are not part of it (a clusters partition's entries fold back in
        any order: they are written after it, and kept).
        """
        ledger = self.ledger(partition)
        cut = self._cutbacks.get(partition)
        if cut is None:
            if not ledger.due(live):
                return False
            cut = self._cutbacks[partition] = LogCutback(ledger.start())
        started = time.monotonic()
        entries = cut.next_slice(self.table.get, self.slice_bytes)
        self.write(partition, keep(entries, cut.seen))
        cut.seconds += time.monotonic() - started
        if not cut.finished:
            return True
        ledger.done(live)
        self._delete(partition, cut.old)
        del self._cutbacks[partition]
        self._compacted(partition, len(cut.old), cut.seconds)
        return False

    def forget(self, partition: int) -> None:
        """The partition went to another worker: what is noted of it here no longer holds.

        What was staged for it and not written is dropped with it: its offsets were not
        committed either, so its new owner reads those records again.
        """
        self._staged.pop(partition, None)
        self._staged_items.pop(partition, None)
        self._written.pop(partition, None)
        self._ledgers.pop(partition, None)
        self._cutbacks.pop(partition, None)

    def _compacted(self, partition: int, old: int, seconds: float) -> None:
        ledger = self.ledger(partition)
        if self.on_compacted is not None:
            self.on_compacted()
        log.info(
            "%s partition %d compacted: %d entries -> %d (%d bytes), %.3f s of work",
            self.name,
            partition,
            old,
            len(ledger.keys),
            ledger.kept,
            seconds,
        )
