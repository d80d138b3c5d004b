"""The streaming pipeline's stages, without Kafka: records in, records out.

:class:`streams.runtime.topology.Topology` wires these together (for a worker
and for the tests' in-process runner alike); everything that decides lives
here, so it is unit-tested without a broker and runs the same core as
``replay`` (:class:`~streams.router.Router`, :class:`~streams.detector.Detector`,
and replay's compiled reorder buffer and unbanked clusters: ``_core.ClusterLoop``).

The topology (every internal topic has the same number of partitions as
the worker was configured with; keys are placed by :func:`partition_for`)::

    shares ─► Ingest ─► resolve ─► ResolvePartition ─► clusters ─► ClusterPartition ─► alerts
    (any key) parse,    (by the    post -> cluster,    (by        reorder by event    actions
              validate  post to    hold orphans,       cluster)   time, detect        deadletter
                        look up)   match uploads
                           ▲                 │ registrations of reshares, keyed by their own post;
                           └─────────────────┘ unbanked uploads to partition 0, which owns their
                                               index and registers them back

Why the post -> cluster map is partitioned by post id (and not a global table
on every worker): it is the largest state of stage 1 (one entry per post) and
it must scale out with the workers. A share is sent to the partition of the
post it reshares (its parent), so its lookup is local; an upload goes to the
partition of its own post; once a post is routed its registration is sent,
keyed by the post itself, to the partition that its own reshares will go to.
A reshare whose parent is not registered yet is held at the parent's
partition until the registration comes (or ``hold_ms`` of event time
passes: dead-lettered as ``orphan_expired``), exactly as ``replay`` holds it.
The cost: one more hop for reshares of reshares whose parent is not known
yet, and a cycle that spans partitions is found as an expired orphan rather
than as a ``cycle``.

Records between stages are *envelopes*: one Kafka record carries a batch of
items for one partition plus the sender's event-time marks (see
:mod:`streams.watermarks`), so a batch of a thousand events costs a few
sends, not a thousand, and the watermark travels in order with the data.
Items are typed records (:mod:`streams.wire`), one codec each.

State and recovery. Each stage keeps its state in memory and writes, per
batch and per partition, what changed (stage 1b: registrations, held and
released orphans; stage 2: the routed events it received) to a Faust table
whose changelog topic is the durable copy. A replacement worker folds these
back (:meth:`ResolvePartition.restore`, :meth:`ClusterPartition.restore`) and
re-applies stage 2's events in event-time order, so its detector state is
exactly the lost one's. Outputs are idempotent: alert and takedown records
are keyed by their stable ids and sent once per key (``streams.runtime.outputs``).

>>> ingest = Ingest(resolve_partitions=2, idle_s=5.0)
>>> batch = ingest.handle([(0, 0, b'{"event_id":"e1","type":"upload","ts":1767225600000,'
...     b'"post_id":"p1","user_id":"u1","content":{"md5":"' + b"a" * 32 + b'"}}'),
...     (0, 1, b"{oops")], now=0.0)
>>> len(batch.envelopes), [d.rejection.reason for d in batch.deadletters]
(2, ['not_json'])
"""

from __future__ import annotations

import base64
import heapq
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Final, TypeGuard, TypeVar

import orjson

from streams._core import (
    ClusterLoop,
    EvBatch,
    ForgetSink,
    PostRoutes,
    ResolveLoop,
    evict_unbanked,
    ingest_lines,
    ingest_records,
)
from streams.alerts import Pseudonymizer
from streams.banks import MIN_PDQ_QUALITY, BankUpdate, HashBanks
from streams.detector import Decisions, Detector, LoopHost, Predictor
from streams.emerging import EmergingClusters
from streams.events import Rejection, ShareEvent
from streams.pipeline import DEFAULT_PREDICTOR
from streams.policy import AlertPolicy
from streams.router import Routed, Router, RoutingHost
from streams.stats import Stats
from streams.watermarks import NO_TIME, Mark, SourceClock, Watermark
from streams.wire import (
    BAD_RECORD,
    READER,
    Forget,
    Item,
    PostsLog,
    Registration,
    ResolveDelta,
    ToRoute,
    Touch,
    Unbanked,
    WireVersion,
    decode_delta,
    decode_items,
    decode_routed_log,
    encode,
    encode_items,
    encode_parts,
    held_parts,
    posts_log,
    read_envelope,
    records,
    routed_log_parts,
)

T = TypeVar("T")

#: How often (event time) held orphans are checked for expiry, as ``replay`` does.
EXPIRE_EVERY_MS: Final = 10_000
#: Largest record the stages write (envelopes, table deltas). Kafka's default
#: ``max.message.bytes`` is 1 MiB; a batch of a backlog can be larger, so it is
#: cut into records under this size (an event is at most 64 KiB, see ``events``).
MAX_RECORD_BYTES: Final = 512 * 1024
#: The resolve partition that holds the index of unbanked content (:class:`ResolvePartition`).
INDEX_PARTITION: Final = 0


def partition_for(key: str, partitions: int) -> int:
    """The partition of an internal topic that ``key`` belongs to (CRC-32, stable everywhere).

    >>> partition_for("p1", 4) == partition_for("p1", 4)
    True
    >>> {partition_for(f"p{i}", 4) for i in range(100)} == {0, 1, 2, 3}
    True
    """
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


# -- envelopes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """One record between stages: items for one partition, and the sender's event-time marks.

    ``items`` are typed records (:mod:`streams.wire`); ``marks`` are stage
    1a's per-input-partition marks (newest event time, idle); ``progress`` is
    stage 1b's per-resolve-partition progress (the event time up to which that
    partition has routed everything it will); ``inputs``, for the index's
    owner, each resolve partition's input watermark (the event time up to
    which it has read and passed on every upload: its progress before the
    reshares waiting for those uploads' clusters hold it back). ``rejected``: the items of a
    record read from a topic that did not decode (the stage dead-letters them).
    An envelope handed over in-process is never encoded: its records are the
    ones the sender made.
    """

    items: list[Item]
    marks: dict[int, Mark] = field(default_factory=dict)
    progress: dict[int, int] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    inputs: dict[int, int] = field(default_factory=dict)

    def pack(self, wire: WireVersion | None = None) -> bytes:
        """The record's bytes; ``wire``: as a worker writing that wire version sends it on a
        topic (:func:`~streams.wire.topic_parts`: at version 2 each routed event without a
        match as a cluster log keeps it, ``["c", cluster_id, held event]``, the ``clusters``
        topic's form, so what a clusters partition reads back is the same).

        >>> env = Envelope([Registration("p1", "b-1")], {3: (1000, False)}, {0: 5}, inputs={1: 9})
        >>> Envelope.unpack(env.pack()) == env
        True
        >>> Envelope.unpack(b'{"i": [["r", "p1"], ["f", "p2"]]}').rejected[0].detail
        'r: expected 2 fields, not 1'
        """
        # {"i": items, ...} as orjson writes it, the items by the compiled writer
        return b'{"i":' + encode_items(self.items, wire) + self._tail()

    def _tail(self) -> bytes:
        """What follows the items in the record's bytes: the marks, progress and input
        watermarks, and the closing brace."""
        rest: dict[str, Any] = {}
        if self.marks:
            rest["m"] = {str(p): [t, 1 if idle else 0] for p, (t, idle) in self.marks.items()}
        if self.progress:
            rest["p"] = {str(p): t for p, t in self.progress.items()}
        if self.inputs:
            rest["w"] = {str(p): t for p, t in self.inputs.items()}
        return b"," + orjson.dumps(rest)[1:] if rest else b"}"

    def parts(self, limit: int = MAX_RECORD_BYTES, wire: WireVersion | None = None) -> list[bytes]:
        """The record's bytes, in parts under ``limit`` if it is larger (as :func:`split_envelope`
        cuts them), from the items themselves: a large envelope is not read back to be cut.

        >>> env = Envelope([Registration(f"p{i}", "b-1") for i in range(100)], inputs={1: 9})
        >>> parts = env.parts(limit=600)
        >>> len(parts) > 1, [Envelope.unpack(p).inputs for p in parts][-2:]
        (True, [{}, {1: 9}])
        >>> env.parts() == [env.pack()]
        True
        """
        raw = self.pack(wire)
        return [raw] if len(raw) <= limit else self.cut(limit, wire)

    def cut(self, limit: int, wire: WireVersion | None = None) -> list[bytes]:
        """The items in runs under ``limit`` bytes each, in order, cut as the writer writes
        them in ``wire``'s forms (:func:`~streams.wire.encode_parts`: a run of compact
        events holds as many as fit in their own bytes, not in the full form's); the marks,
        progress and input watermarks ride on the last part only, so no receiver moves a
        watermark past items still on their way. (An item larger than the limit alone.)

        >>> env = Envelope([Registration(f"p{i}", "b-1") for i in range(100)], {0: (5, False)})
        >>> parts = env.cut(300)
        >>> max(map(len, parts)) <= 300, [Envelope.unpack(p).marks for p in parts][-2:]
        (True, [{}, {0: (5, False)}])
        """
        tail = self._tail()
        runs = encode_parts(self.items, max(2, limit - len(b'{"i":') - len(tail)), wire)
        return [b'{"i":' + run + b"}" for run in runs[:-1]] + [b'{"i":' + runs[-1] + tail]

    @classmethod
    def of(cls, raw: bytes | Envelope | None) -> Envelope:
        """An envelope as read from a topic, or as handed over in-process (not packed)."""
        return raw if isinstance(raw, Envelope) else cls.unpack(raw)

    @classmethod
    def unpack(cls, raw: bytes | None) -> Envelope:
        """Read an envelope; ``ValueError`` if the bytes are not one (an item that is not a
        record is kept in :attr:`rejected`, the others are read)."""
        if raw is None:
            raise ValueError("an envelope cannot be empty")
        read = read_envelope(raw)  # the compiled reader: every envelope the stages write
        if read is None:
            return cls.read_in_python(raw)
        items, rejected, marks, progress, inputs = read
        return cls(items, marks, progress, rejected, inputs)

    @classmethod
    def read_in_python(cls, raw: bytes) -> Envelope:
        """:meth:`unpack` in Python: for what the compiled reader leaves to it (a record
        that is not an envelope, or a frame the stages do not write), which it reads as
        every envelope was read before, and says what is wrong with it."""
        try:
            body = orjson.loads(raw)
            items = body["i"]
            if not isinstance(items, list):
                raise TypeError("items must be a list")
            marks = {int(p): (int(m[0]), bool(m[1])) for p, m in body.get("m", {}).items()}
            progress = {int(p): int(t) for p, t in body.get("p", {}).items()}
            inputs = {int(p): int(t) for p, t in body.get("w", {}).items()}
        except (
            orjson.JSONDecodeError,
            TypeError,
            KeyError,
            IndexError,
            ValueError,
            AttributeError,  # a frame that is not a mapping ("m": null)
        ) as exc:
            raise ValueError(f"not an envelope: {exc}") from None
        good, bad = decode_items(items)
        return cls(good, marks, progress, bad, inputs)


def _raw(record: bytes | Envelope | None) -> bytes:
    """What to dead-letter of a record that is not an envelope."""
    return record if isinstance(record, bytes) else b""


def _unpack(
    records: Iterable[bytes | Envelope | None], stage: str, stats: Stats, dead: list[DeadLetter]
) -> list[Envelope]:
    """The envelopes of a batch (read from a topic, or handed over in-process); what is
    not an envelope, and every item that is not a record, is counted and dead-lettered."""
    return [env for raw in records if (env := _read(raw, stage, stats, dead)) is not None]


def _read(
    raw: bytes | Envelope | None, stage: str, stats: Stats, dead: list[DeadLetter]
) -> Envelope | None:
    """One record's envelope (``None``: it is not one); what does not decode is counted and
    dead-lettered (see :func:`_unpack`)."""
    try:
        env = Envelope.of(raw)
    except ValueError as exc:
        stats.rejected["bad_envelope"] += 1
        dead.append(DeadLetter(Rejection("bad_envelope", str(exc), _raw(raw)), stage))
        return None
    _rejected(env.rejected, stage, stats, dead)
    return env


def _rejected(
    rejections: Iterable[Rejection], stage: str, stats: Stats, dead: list[DeadLetter]
) -> None:
    for rejection in rejections:
        stats.rejected[rejection.reason] += 1
        dead.append(DeadLetter(rejection, stage))


def _routed(item: Item) -> TypeGuard[Routed | EvBatch]:
    """Whether ``item`` is a routed event (a record, or a batch of compiled ones)."""
    return type(item) is Routed or (type(item) is EvBatch and item.routed_events)


def _unexpected(item: Item, stage: str, stats: Stats, dead: list[DeadLetter]) -> None:
    """A record that does not belong on this topic (a stage's bug, or a stray producer)."""
    stats.rejected[BAD_RECORD] += 1
    detail = f"a {type(item).__name__} record has no place in stage {stage}"
    dead.append(DeadLetter(Rejection(BAD_RECORD, detail, encode(item)), stage))


def _runs(items: list[T], limit: int) -> list[list[T]]:
    """``items`` in order, cut into runs whose JSON stays under ``limit`` bytes each (an
    item larger than that, alone).

    Cut by count and checked, a run still too large cut again: a few encodings
    of the whole, in C, where sizing item by item cost a Python call each (0.3 s
    of a 16 MiB snapshot, with every stage waiting).

    >>> runs = _runs([Registration(f"p{i}", "b-1") for i in range(100)], limit=300)
    >>> [len(r) for r in runs], max(len(encode(r)) for r in runs)
    ([15, 15, 15, 15, 15, 15, 10], 271)
    >>> sum(runs, []) == [Registration(f"p{i}", "b-1") for i in range(100)]
    True
    """
    size = len(encode(items))
    if size <= limit or len(items) <= 1:
        return [items]
    step = -(-len(items) // (size // limit + 2))
    return [run for i in range(0, len(items), step) for run in _runs(items[i : i + step], limit)]


def split_envelope(
    raw: bytes, limit: int = MAX_RECORD_BYTES, wire: WireVersion | None = None
) -> list[bytes]:
    """An envelope as records under ``limit`` bytes, to send in order to one partition.

    The items are cut in order; the marks and progress ride on the last part
    only, so no receiver moves its watermark past items still on their way.

    >>> env = Envelope([Registration(f"p{i}", "b-1") for i in range(100)], {0: (5, False)}, {1: 7})
    >>> parts = split_envelope(env.pack(), limit=600)
    >>> len(parts) > 1, [Envelope.unpack(p).marks for p in parts][-2:]
    (True, [{}, {0: (5, False)}])
    >>> [i for p in parts for i in Envelope.unpack(p).items] == env.items
    True
    """
    if len(raw) <= limit:
        return [raw]
    return Envelope.unpack(raw).cut(limit, wire)


def split_log(raw: bytes, limit: int = MAX_RECORD_BYTES) -> list[bytes]:
    """A stage's per-batch log entry as entries under ``limit`` bytes, to write in order.

    Two shapes: stage 2's list of routed items (any cut is the same union), and
    stage 1b's delta ``{"p", "f", "h+", "h-"}``, which is folded in that order
    (see :class:`~streams.wire.ResolveDelta`); the parts keep that order (all of
    one kind before the next), so folding them one after the other gives what
    folding the whole delta gave.

    >>> delta = {"p": {f"p{i}": "b-1" for i in range(50)}, "h-": ["e1"]}
    >>> parts = [orjson.loads(x) for x in split_log(orjson.dumps(delta), limit=300)]
    >>> len(parts) > 2 and parts[-1] == {"h-": ["e1"]}
    True
    >>> {k: v for d in parts for k, v in d.get("p", {}).items()} == delta["p"]
    True
    """
    if len(raw) <= limit:
        return [raw]
    return log_parts(orjson.loads(raw), limit)


def log_parts(
    body: ResolveDelta | list[Any] | dict[str, Any], limit: int = MAX_RECORD_BYTES
) -> list[bytes]:
    """A log entry not encoded yet (a snapshot) as entries under ``limit`` bytes, as
    :func:`split_log` cuts them; nothing for an empty delta.

    >>> [orjson.loads(x) for x in log_parts({"p": {"p1": "b-1"}, "f": [], "h+": []})]
    [{'p': {'p1': 'b-1'}}]
    """
    index_log: tuple[bytes, ...] = ()
    held: list[bytes] = []
    if isinstance(body, ResolveDelta):
        index_log = body.index_log  # parts the core cut already
        held = held_parts(body.held, limit - 32) if body.held else []
        if type(body.posts) is PostsLog:  # cut as a dict's items
            body = replace(body, posts=dict(body.posts.items()))
        body = body.to_wire()
    if isinstance(body, list):
        return encode_parts(body, limit)
    out: list[bytes] = []
    for kind in ("p", "f", "h+", "h-", "h<", "u", "U", "u-", "g"):
        value = body.get(kind)
        if kind == "h<" and value is not None:
            out.append(encode({kind: value}))
            continue
        if not value:
            continue
        if kind == "U":  # parts of [t0, cluster...], cut again if over the limit
            for part in index_log or [orjson.dumps(part) for part in value]:
                if len(part) <= limit - 32:
                    out.append(b'{"U":[' + part + b"]}")
                    continue
                t0, *clusters = orjson.loads(part)
                out += [encode({"U": [[t0, *run]]}) for run in _runs(clusters, limit - 64)]
            continue
        if kind == "h+" and held:
            out += [b'{"h+":' + part + b"}" for part in held]
            continue
        pairs = isinstance(value, dict)
        items = list(value.items()) if pairs else value
        for run in _runs(items, limit - 32):
            out.append(encode({kind: dict(run) if pairs else run}))
    return out


class LogLedger:
    """The keys of one partition's log table, and when to cut the log back to a snapshot.

    The stages' logs are append-only (a delta per batch); left alone, a
    replacement worker's rebuild would grow with all traffic ever seen. So
    the owner now and then writes a snapshot of what it still needs and
    deletes every older key. When: at least ``min_bytes`` written since the
    last compaction and at least what it kept (the log doubled), and at
    least ``garbage`` (half, by default) of what the log holds is garbage.
    The ledger counts the *items* written (events, registrations), the
    stage says how many it still holds (``live``): with the default, a
    compaction at least halves the log, the log stays within about twice
    the live state (or ``min_bytes``), and each item is rewritten a bounded
    number of times on average. Without that count (a stage that gives
    none, or a log just read back), or with ``garbage=0``, the bytes alone
    decide.

    Why not bytes alone: while nothing is evicted (a cluster lives an hour
    of event time by default) a compaction keeps everything, so it only
    read and wrote the whole state again, and again each time the log
    doubled: at 2,000 events/s that was most of a worker's time after a few
    minutes, and the alerts waited (``bench/bench_pipeline.py``).

    >>> ledger = LogLedger(min_bytes=100)
    >>> ledger.wrote(b"0:1", 60, items=6); ledger.due(live=6)
    False
    >>> ledger.wrote(b"0:2", 60, items=6); ledger.due(live=12)   # all of it still needed
    False
    >>> ledger.due(live=5)                                        # 7 of 12 are garbage
    True
    >>> old = ledger.start()           # then write the snapshot's parts
    >>> ledger.wrote(b"0:3", 50); ledger.done(live=5); old
    [b'0:1', b'0:2']
    >>> ledger.keys, ledger.due(live=5), ledger.size
    ([b'0:3'], False, 50)

    Without a count, the bytes: written since the last compaction >= kept.

    >>> ledger.wrote(b"0:4", 99); ledger.due(), ledger.wrote(b"0:5", 1), ledger.due()
    (False, None, True)
    """

    __slots__ = ("garbage", "items", "kept", "kept_items", "keys", "min_bytes", "written")

    def __init__(self, min_bytes: int, kept_items: int | None = 0, garbage: float = 0.5) -> None:
        if not 0.0 <= garbage < 1.0:
            raise ValueError("garbage must be in [0, 1)")
        self.min_bytes = min_bytes
        #: the share of the log that must be garbage for a compaction to be due
        self.garbage = garbage
        #: every key of this partition's log, oldest first
        self.keys: list[bytes] = []
        #: bytes written since the last compaction, and bytes that compaction kept
        self.written = 0
        self.kept = 0
        #: items written since the last compaction, and items it kept (``None``: not known,
        #: a log read back as it was found)
        self.items = 0
        self.kept_items = kept_items

    def wrote(self, key: bytes, size: int, items: int = 0) -> None:
        self.keys.append(key)
        self.written += size
        self.items += items

    def due(self, live: int | None = None) -> bool:
        """Whether to compact, ``live`` being the items the stage still needs (if it knows)."""
        if self.written < max(self.min_bytes, self.kept):
            return False
        if live is None or self.kept_items is None or self.garbage <= 0.0:
            return True
        total = self.kept_items + self.items
        return total - live >= self.garbage * total

    @property
    def size(self) -> int:
        """Bytes in the log now (what a replacement reads back)."""
        return self.kept + self.written

    def start(self) -> list[bytes]:
        """Begin a compaction: returns the keys to delete once the snapshot is written."""
        old, self.keys, self.written, self.items = self.keys, [], 0, 0
        return old

    def done(self, live: int | None = None) -> None:
        """The snapshot is written: it is what the log keeps (``live`` items, if known)."""
        self.kept, self.written = self.written, 0
        self.kept_items, self.items = live, 0


class LogCutback:
    """A compaction of a log that is re-read (stage 2's), done a slice per batch.

    Stage 2's snapshot is not its memory but its log filtered (the events of
    clusters still live): reading back 16 MiB or more at once held every
    stage for most of a second, and every alert with it. So the old entries
    are read a slice at a time, between batches, each slice's survivors
    written as new entries, and the old keys deleted when the last slice is
    done. Crash-safe at any point: what is written duplicates what is not
    deleted yet, and folding both is idempotent. ``seen`` keeps an event
    redelivered into two old entries from being kept twice.

    >>> log = {b"0:1": b"a" * 300, b"0:2": b"b" * 300, b"0:3": b"c" * 300}
    >>> cut = LogCutback(list(log))
    >>> [len(cut.next_slice(log.get, budget=500)) for _ in range(2)], cut.finished
    ([2, 1], True)
    """

    __slots__ = ("old", "position", "seconds", "seen")

    def __init__(self, old: list[bytes]) -> None:
        #: the keys to re-read, then delete, oldest first
        self.old = old
        self.position = 0
        self.seen: set[str] = set()
        #: the time spent on it so far (for the log line that reports it)
        self.seconds = 0.0

    def next_slice(self, read: Callable[[bytes], bytes | None], budget: int) -> list[bytes]:
        """The next old entries, at least one and about ``budget`` bytes."""
        out: list[bytes] = []
        size = 0
        while self.position < len(self.old) and (not out or size < budget):
            raw = read(self.old[self.position])
            self.position += 1
            if raw is not None:
                out.append(raw)
                size += len(raw)
        return out

    @property
    def finished(self) -> bool:
        return self.position >= len(self.old)


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input record was read: a dead-letter names it so it can be found again."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected record, its reason, and where it came from (``source`` when known)."""

    rejection: Rejection
    stage: str
    source: Source | None = None

    @property
    def key(self) -> bytes | None:
        eid = self.rejection.event_id
        return eid.encode() if eid else None

    def to_dict(self) -> dict[str, Any]:
        r = self.rejection
        return {
            "reason": r.reason,
            "detail": r.detail,
            "event_id": r.event_id,
            "stage": self.stage,
            "source": None
            if self.source is None
            else {
                "topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
            },
            "raw": r.raw.decode("utf-8", "replace"),
            "raw_b64": base64.b64encode(r.raw).decode(),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)


# -- stage 1a: ingest -----------------------------------------------------


@dataclass
class IngestBatch:
    """What one batch of input records became."""

    #: one envelope per resolve partition (every partition gets the marks)
    unpacked: dict[int, Envelope]
    deadletters: list[DeadLetter] = field(default_factory=list)
    events: int = 0

    @property
    def envelopes(self) -> dict[int, bytes]:
        """The envelopes as records."""
        return {r: env.pack() for r, env in self.unpacked.items()}


class Ingest:
    """Stage 1a: parse and validate share events; send each to the partition of the post it needs.

    Stateless but for the event-time clock of the input partitions it reads.
    """

    def __init__(
        self,
        resolve_partitions: int,
        idle_s: float,
        topic: str = "shares",
        stats: Stats | None = None,
        log_end: bool = False,
    ) -> None:
        self.partitions = resolve_partitions
        #: ``log_end``: its reader says when a partition is read to its end (SourceClock.at_end)
        self.clock = SourceClock(idle_s, log_end=log_end)
        self.topic = topic
        self.stats = stats if stats is not None else Stats()

    def handle(self, records: Iterable[tuple[int, int, bytes | None]], now: float) -> IngestBatch:
        """``records`` are ``(partition, offset, value)`` of the input topic, in offset order:
        :meth:`handle_lines` of their values."""
        batch = list(records)
        return self.handle_lines(
            [value if value is not None else b"" for _, _, value in batch],
            [partition for partition, _, _ in batch],
            lambda i: (batch[i][0], batch[i][1]),
            now,
        )

    def handle_lines(
        self,
        lines: list[bytes],
        sources: list[int],
        where: Callable[[int], tuple[int, int]],
        now: float,
    ) -> IngestBatch:
        """``lines[i]`` was read from input partition ``sources[i]``, in offset order per
        partition; ``where(i)`` is its ``(partition, offset)``, asked only of a rejected line
        (the dead letter's source).

        Parsed and each event put in the batch of its resolve partition in one call
        (``_core.ingest_lines``), which also gives the newest event time of each input
        partition; the events stay compiled (an ``EvBatch`` per partition: no Python record
        per event) and Python touches the rejections only. The shares reader hands the
        Kafka client's records over as these two lists, with no tuple made per record.
        """
        items, rejected, newest = ingest_lines(lines, sources, self.partitions)
        dead = []
        for i, rejection in rejected:
            partition, offset = where(i)
            dead.append(DeadLetter(rejection, "parse", Source(self.topic, partition, offset)))
        return self._batch(items, dead, newest, len(lines), now)

    def handle_records(self, runs: Sequence[tuple[int, Sequence[Any]]], now: float) -> IngestBatch:
        """``runs``: ``(input partition, records)`` as the ``shares`` reader read them, each
        partition's records in offset order: a ``RecordRun`` (the records where they lie in
        the fetched bytes, read by the core: :func:`streams.runtime.faust_adapter.bare_records`)
        or the Kafka client's records (``offset``, ``value``; a ``None`` value an empty
        line). The batch :meth:`handle_lines` makes of their values, a dead letter's source
        its record's partition and offset.

        One call (``_core.ingest_records``) parses the values where they lie: no
        ``bytes``, list or tuple is made per record (a rejected record's value alone is
        made a ``bytes``, for its dead letter).
        """
        items, rejected, newest = ingest_records(runs, self.partitions)
        dead = [
            DeadLetter(rejection, "parse", Source(self.topic, partition, offset))
            for partition, offset, rejection in rejected
        ]
        return self._batch(items, dead, newest, sum(len(r) for _, r in runs), now)

    def _batch(
        self,
        items: list[EvBatch | None],
        dead: list[DeadLetter],
        newest: list[tuple[int, int | None]],
        lines: int,
        now: float,
    ) -> IngestBatch:
        """The batch of ``lines`` read: ``items`` per resolve partition, ``dead`` the lines
        refused (counted by reason), the input partitions' clock moved to ``newest``."""
        for d in dead:
            self.stats.rejected[d.rejection.reason] += 1
        clock = self.clock
        for partition, ts in newest:
            clock.observe(partition, ts, now)
        marks = clock.marks(now)
        return IngestBatch(
            {r: Envelope([] if b is None else [b], marks) for r, b in enumerate(items)},
            dead,
            lines - len(dead),
        )

    def heartbeat(self, now: float) -> dict[int, Envelope]:
        """Marks-only envelopes for every resolve partition (sent when no data flows)."""
        marks = self.clock.marks(now)
        if not marks:
            return {}
        return {r: Envelope([], marks) for r in range(self.partitions)}


# -- stage 1b: resolve ------------------------------------------------------


@dataclass
class ResolveBatch:
    """What one batch of a resolve partition became (see :func:`merge_resolved` to send it)."""

    partition: int
    partitions: int
    #: routed events, per cluster partition (runs of compiled ones as one ``EvBatch``)
    clusters: list[list[Routed | EvBatch]]
    #: registrations (and, for the index's owner, unbanked uploads), per resolve partition
    peers: list[list[Item]]
    #: this partition's progress, when it moved (``None``: it did not)
    progress: int | None = None
    #: this partition's input watermark, for the index's owner, when it moved
    inputs: int | None = None
    deadletters: list[DeadLetter] = field(default_factory=list)
    #: what changed, to persist (``None``: nothing), and how many items it records
    delta: bytes | None = None
    routed: int = 0
    delta_items: int = 0
    #: the record ``delta`` encodes (cut from it when too large for one log record)
    delta_record: ResolveDelta | None = None

    def log_entries(self) -> list[bytes]:
        """``delta`` as the log's entries: itself, or, past :data:`MAX_RECORD_BYTES`, parts cut
        from its record (:func:`log_parts`) as :func:`split_log` cuts the bytes, without
        reading a large entry back (a batch of a backlog can hold thousands of events)."""
        if self.delta is None:
            return []
        if len(self.delta) <= MAX_RECORD_BYTES or self.delta_record is None:
            return split_log(self.delta)
        return log_parts(self.delta_record)

    @property
    def to_clusters(self) -> dict[int, bytes]:
        return {k: env.pack() for k, env in merge_resolved([self])[0].items()}

    @property
    def to_peers(self) -> dict[int, bytes]:
        return {r: env.pack() for r, env in merge_resolved([self])[1].items()}


def merge_resolved(
    batches: list[ResolveBatch],
) -> tuple[dict[int, Envelope], dict[int, Envelope]]:
    """The envelopes for a batch of several resolve partitions: per cluster partition, and per
    resolve partition (registrations, and the progress of the others).

    One envelope per destination, whatever the number of partitions this
    worker owns: records between stages grow with the partitions, not with
    their square. Progress goes out only when it moved (or with data): an
    unchanged mark would only make the peers answer with theirs.
    """
    if not batches:
        return {}, {}
    moved = _moved(batches)
    to_clusters: dict[int, Envelope] = {}
    for k in range(batches[0].partitions):
        routed: list[Item] = [item for b in batches for item in b.clusters[k]]
        if routed or moved:
            to_clusters[k] = Envelope(routed, progress=moved)
    return to_clusters, _to_peers(batches, moved)


def _moved(batches: list[ResolveBatch]) -> dict[int, int]:
    """The progress of each of ``batches`` that moved, by partition."""
    return {b.partition: b.progress for b in batches if b.progress is not None}


def _to_peers(batches: list[ResolveBatch], moved: dict[int, int]) -> dict[int, Envelope]:
    """:func:`merge_resolved`'s envelopes per resolve partition (``moved``: the progress
    of ``batches`` that moved), alone: what :func:`resolve_local_peers` hands over each
    round, where the envelopes for the clusters partitions were made and dropped."""
    parts = batches[0].partitions
    inputs = {b.partition: b.inputs for b in batches if b.inputs is not None}
    to_peers: dict[int, Envelope] = {}
    for r in range(parts):
        registrations: list[Item] = [item for b in batches for item in b.peers[r]]
        others = {p: t for p, t in moved.items() if p != r}
        read = {p: t for p, t in inputs.items() if p != r} if r == INDEX_PARTITION else {}
        if registrations or others or read:
            to_peers[r] = Envelope(registrations, progress=others, inputs=read)
    return to_peers


class UnreadSends:
    """Envelopes a worker sent through a topic alone to partitions it holds itself,
    not read there yet: the next time the short way (in-process) is taken they
    go first (:func:`resolve_local_peers`, :mod:`streams.runtime.hand_over`), so
    that it never overtakes the long one.

    Each send has a mark that increases from one send to the next (a
    timestamp, a counter). A partition is read in order, so once it has read
    one of this worker's envelopes, every earlier one sent to it is read too.

    >>> a, b, c = (Envelope([Forget(post)]) for post in "abc")
    >>> sends = UnreadSends()
    >>> sends.sent(1, 10, a); sends.sent(1, 11, b); sends.sent(2, 12, c)
    >>> sends.read(1, 10)
    >>> sends.take([1, 2]) == {1: [b], 2: [c]}
    True
    >>> sends.take([1, 2])
    {}
    """

    __slots__ = ("_handed", "_unread")

    def __init__(self) -> None:
        self._unread: dict[int, list[tuple[int, Envelope]]] = {}
        #: marks of envelopes handed over while unread: their copies are skipped
        self._handed: dict[int, set[int]] = {}

    def sent(self, partition: int, mark: int, envelope: Envelope) -> None:
        """``envelope`` went to ``partition`` through the topic alone."""
        self._unread.setdefault(partition, []).append((mark, envelope))

    def copied(self, partition: int, mark: int) -> None:
        """The envelope of ``mark`` is the copy of one handed over in-process already: it is
        skipped when read (see :meth:`streams.runtime.hand_over.Hop.copy`)."""
        self._handed.setdefault(partition, set()).add(mark)

    def read(self, partition: int, mark: int) -> None:
        """``partition`` has read this worker's envelope of ``mark`` (and so all before it)."""
        if partition in self._unread:
            self._unread[partition] = [(m, env) for m, env in self._unread[partition] if m > mark]
        handed = self._handed.get(partition)
        if handed:  # the parts of an envelope share its mark: keep it until a later one
            handed.difference_update([m for m in handed if m < mark])

    def received(self, partition: int, records: Iterable[tuple[int | None, T]]) -> list[T]:
        """What ``partition`` read, ``(mark, value)`` (mark ``None``: not this worker's),
        less the copies of what was handed to it in-process already; notes what it read.

        >>> env = Envelope([Forget("p")])
        >>> sends = UnreadSends()
        >>> sends.sent(0, 10, env); sends.sent(0, 11, env)
        >>> len(sends.take([0])[0])  # handed over in-process, unread
        2
        >>> sends.received(0, [(None, "theirs"), (10, "copy"), (11, "copy"), (12, "new")])
        ['theirs', 'new']
        """
        out: list[T] = []
        top: int | None = None
        handed = self._handed.get(partition, set())
        for mark, value in records:
            if mark is not None:
                top = mark if top is None else max(top, mark)
                if mark in handed:
                    continue
            out.append(value)
        if top is not None:
            self.read(partition, top)
        return out

    def take(self, partitions: Iterable[int]) -> dict[int, list[Envelope]]:
        """The unread envelopes of ``partitions`` (about to go the short way), forgotten here."""
        out = {}
        for r in partitions:
            unread = self._unread.pop(r, None)
            if unread:
                out[r] = [env for _, env in unread]
                self._handed.setdefault(r, set()).update(m for m, _ in unread)
        return out

    def drop(self, partition: int) -> None:
        """Forget a partition this worker no longer holds."""
        self._unread.pop(partition, None)
        self._handed.pop(partition, None)


def resolve_local_peers(
    resolvers: Mapping[int, ResolvePartition],
    batches: list[ResolveBatch],
    rounds: int = 4,
    on_batch: Callable[[int, ResolveBatch], None] | None = None,
    unread: Mapping[int, list[Envelope]] | None = None,
    on_handed: Callable[[int, Envelope], None] | None = None,
    handed: Collection[int] | None = None,
) -> tuple[list[ResolveBatch], dict[int, Envelope]]:
    """Hand the registrations and progress of ``batches`` to the peer partitions in
    ``resolvers`` now, for ``rounds`` rounds of answers, and on while an answer is for a
    partition handed something in-process (in ``handed``, or in these rounds; ``handed``
    ``None``: ``rounds`` at most). Returns the batches that made, and what the partitions
    of ``resolvers`` are still owed (the last round's answers, left for Kafka alone; a
    partition not in it got everything).

    A reshare waits for its parent's registration from the partition that
    routed the parent, and holds event time back until then: through Kafka
    that is one more hop on the way to every alert. The caller sends
    through Kafka what is for the other partitions, and what is owed.
    ``handed``: the partitions handed envelopes in-process since the process's
    writes were last acknowledged (:attr:`streams.runtime.hand_over.Hop.handed_by_peers`).
    What such a partition was handed is in its log alone; were what it is owed
    (progress past it) sent through its topic, a kill could keep that record
    and lose the log's, and the replacement would pass the reshares waiting
    for those registrations (seeds 30 and 49 of the kill model). So it is
    handed that too, logged after them (:mod:`streams.runtime.hand_over`'s
    rule); the rounds end, as progress goes out only when it moves.
    ``unread[r]`` are envelopes sent to ``r`` through Kafka alone that it has
    not read yet: they go first, so that the short way never overtakes the
    long one (a peer that learnt a partition's progress before a registration
    sent before it could let a reshare waiting for that registration fall
    behind event time).
    ``on_batch(partition, batch)`` is called for each batch made (to persist
    its delta), ``on_handed(partition, envelope)`` for each envelope a round
    handed over (not the unread ones: they are on the topic already).
    """
    out: list[ResolveBatch] = []
    pending = batches
    first = {r: list(envs) for r, envs in (unread or {}).items() if envs and r in resolvers}
    given = None if handed is None else set(handed)
    n = 0
    while True:
        answers = _to_peers(pending, _moved(pending)) if pending else {}
        local = {r: [env] for r, env in answers.items() if r in resolvers}
        if n >= rounds and (given is None or given.isdisjoint(local)):
            return out, {r: envs[0] for r, envs in local.items()}
        n += 1
        if given is not None:
            given.update(local)
        if on_handed is not None:
            for r, (env,) in local.items():
                on_handed(r, env)
        for r, envs in first.items():
            local[r] = envs + local.get(r, [])
        first = {}
        if not local:
            return out, {}
        pending = []
        for r, sent in local.items():
            batch = resolvers[r].handle(sent)
            if on_batch is not None:
                on_batch(r, batch)
            pending.append(batch)
        out += pending


class ResolvePartition(RoutingHost):
    """Stage 1b for one partition of the resolve topic: route events, hold orphans.

    Progress. This partition tells the next stage (and its peers) how far it
    has routed: the watermark of the input partitions (the slowest active
    one, minus the allowed lateness), held back by each reshare waiting
    here for its parent's registration, so that the reshare is not late when
    the registration comes. A waiting reshare stops holding progress back
    once every *other* resolve partition has progressed past it: a
    registration it could be waiting for would then already have arrived
    (registrations are sent before the progress that covers them, in the
    same partition). So a reshare whose parent is on its way is never
    overtaken, and one whose parent never comes costs about one hop of delay.

    The index of unbanked content. Partition :data:`INDEX_PARTITION` owns it
    (:mod:`streams.emerging` says why one owner): every partition sends it the
    uploads that match no bank (:class:`~streams.wire.Unbanked`, with the
    latest events of unbanked clusters, :class:`~streams.wire.Touch`), ahead
    of the progress that covers them; it holds them (logged with the held
    reshares) until every partition's input watermark has passed them (as
    replay waits for its watermark), clusters them in ``(ts, event_id)``
    order, and registers each upload's post with its partition, whose
    reshares waited for it as for any parent. The input watermark, not the
    progress: the reshares of the very uploads waiting to be clustered hold
    their partition's progress back, so a rule on progress would let event
    time advance one short cycle (cluster, register, release, progress) at a
    time, a few seconds of event time per round trip between workers, and
    fall behind any busy stream. Its own
    progress is at most the time up to which every peer has sent it its
    uploads (their input watermarks, or their progress, heard), so no clusters
    partition's watermark passes an upload on its way to it. Its log also keeps the index
    (:meth:`EmergingClusters.take_changes`) and the progress it heard: a
    worker taking it over needs no word from the peers to go on.
    """

    def __init__(
        self,
        partition: int,
        *,
        partitions: int,
        sources: int,
        banks: HashBanks,
        stats: Stats,
        lateness_ms: int,
        hold_ms: int,
        max_held: int,
        idle_ms: int = 3_600_000,
    ) -> None:
        self.partition = partition
        self.partitions = partitions
        self.stats = stats
        #: this partition's posts -> their clusters, and the reshares held (the compiled core's:
        #: posts of other partitions are queued for them, those kept recorded for the log)
        self.posts = PostRoutes(partition, partitions)
        #: the index of unbanked content, if this partition is its owner (see the class doc)
        self.index = EmergingClusters(idle_ms=idle_ms) if partition == INDEX_PARTITION else None
        #: the banks' answers, expiry of held orphans and refusals (the index's owner's
        #: clusters unbanked content in :attr:`index`; the others, content it cannot use)
        self.router = Router(
            banks,
            stats,
            post_clusters=self.posts,
            hold_ms=hold_ms,
            max_held=max_held,
            emerging=self.index,
        )
        self.watermark = Watermark(sources, lateness_ms)
        #: the peer partitions, in order (every batch reads each one's time: see
        #: :meth:`_with_peers`)
        self._others = tuple(r for r in range(partitions) if r != partition)
        #: the progress heard from each peer (persisted by the index's owner, whose own
        #: progress waits for theirs)
        self.peers: dict[int, int] = {}
        self.progress = NO_TIME
        #: the input watermark heard from each peer (the index's owner), and this
        #: partition's, as last sent to the owner
        self.inputs: dict[int, int] = {}
        self.input_mark = NO_TIME
        #: the per-event loop (``rust/python/src/resolve.rs``): routing, holding (reshares
        #: waiting for their parent's registration, and at the index's owner unbanked
        #: uploads waiting to be clustered, compiled, in the order held), clustering
        #: unbanked uploads at the owner, each routed event to its clusters partition
        self.loop = ResolveLoop(
            self.posts,
            None if self.index is None else self.index.idle_clusters,
            partitions,
            max_held,
            MIN_PDQ_QUALITY,
            (Routed, ToRoute, Registration, Forget, Unbanked, Touch),
        )
        self._expired_at = NO_TIME

    @property
    def held(self) -> int:
        return self.loop.held_count

    @property
    def live_items(self) -> int:
        """Items a snapshot of this partition would hold (its log's ledger counts garbage
        against it): the posts registered here and the reshares held (and the index)."""
        index = 0 if self.index is None else self.index.live_items
        return len(self.posts) + self.loop.held_count + index

    # -- persistence --

    def restore(self, deltas: Iterable[bytes]) -> ResolveBatch:
        """Fold persisted deltas (in the order they were written) back into a fresh partition.

        Held reshares are routed again: they wait again, or (if their parent
        is known by now) come out in the returned batch. An entry that does not
        decode is counted and dead-lettered in that batch (stage ``restore``);
        the others are folded.
        """
        held: dict[str, ShareEvent] = {}
        #: the held uploads by (ts, event id), for the bounds that release them
        uploads: list[tuple[int, str]] = []
        bad: list[DeadLetter] = []
        for raw in deltas:
            d = decode_delta(raw)
            if isinstance(d, Rejection):
                self.stats.rejected[d.reason] += 1
                bad.append(DeadLetter(d, "restore"))
                continue
            self.posts.fold(dict(d.posts.items()), d.forgot)
            assert isinstance(d.held, tuple)  # (read back: records)
            for ev in d.held:
                held[ev.event_id] = ev
                if ev.type == "upload":
                    heapq.heappush(uploads, (ev.ts_ms, ev.event_id))
            for eid in d.released:
                held.pop(eid, None)
            if d.clustered_to is not None:
                while uploads and uploads[0][0] <= d.clustered_to:
                    ts, eid = heapq.heappop(uploads)
                    was = held.get(eid)  # (an entry whose event left, or came again, stays)
                    if was is not None and was.type == "upload" and was.ts_ms == ts:
                        del held[eid]
            if self.index is not None:
                self.index.fold(d.index, d.evicted)
            for p, t in d.heard.items():
                if t > self.peers.get(p, NO_TIME):
                    self.peers[p] = t
        self.posts.take_new_log([])
        waiting = sorted(held.values(), key=lambda ev: (ev.ts_ms, ev.event_id))
        items: list[Item] = [ToRoute(ev) for ev in waiting]
        # the held events' posts and touches, marked released: their input may be committed
        # long ago (see :mod:`streams.runtime.checkpoint`, what is copied); and those
        # still held, once released
        self.posts.released = True
        try:
            batch = self.handle([Envelope(items)] if items else [])
        finally:
            self.posts.released = False
        self.loop.seal()
        batch.deadletters[:0] = bad
        return batch

    def snapshot(self) -> list[bytes]:
        """This partition's whole persisted state as resolve-log entries (in parts, if large).

        Folded alone (:meth:`restore`), it gives what folding every delta
        written so far gives, so the log can be cut back to it (see
        :class:`LogLedger`). Posts forgotten with their evicted clusters are
        not in it, and neither are reshares no longer held.

        >>> r = ResolvePartition(0, partitions=1, sources=1, banks=HashBanks(), stats=Stats(),
        ...                      lateness_ms=0, hold_ms=60_000, max_held=10)
        >>> regs = [Registration("p1", "b-1"), Registration("p2", "b-1"), Forget("p1")]
        >>> b = r.handle([Envelope(regs).pack()])
        >>> [orjson.loads(x) for x in r.snapshot()]
        [{'p': {'p2': 'b-1'}}]
        """
        index_log, index_items = (
            ((), 0) if self.index is None else self.index.snapshot_log(MAX_RECORD_BYTES - 32)
        )
        return log_parts(
            ResolveDelta(
                posts=dict(self.posts.items()),
                held=self.loop.held_events(),
                heard=self.peers if self.index is not None else {},
                index_log=index_log,
                index_items=index_items,
            )
        )

    def seal(self) -> tuple[list[bytes], int]:
        """A checkpoint begins: what is held now, once released, is marked for a copy
        (:meth:`streams.runtime.topology.Topology._copy_handed`).

        Returns the log entries (and the items they record) of the unbanked uploads the
        index's owner has held since the last seal and holds still: a batch's delta
        leaves them out, and the caller writes these before the checkpoint commits
        anything. Most are clustered before a checkpoint begins, and then never logged
        in the resolve log (the cluster log holds them): their input, read since the
        last checkpoint began, is committed only by a later one, which waits for the
        cluster log. They had been a third of the resolve log's bytes (``h+``, 46 B an
        event of the pipeline benchmark's stream), and the cluster log wrote each again.

        >>> r = ResolvePartition(0, partitions=1, sources=1, banks=HashBanks(), stats=Stats(),
        ...                      lateness_ms=0, hold_ms=60_000, max_held=10)
        >>> from streams.events import Content
        >>> up = ShareEvent("e1", "upload", 1767225600000, "p1", "u1",
        ...                 content=Content(md5="0f" * 16, pdq_quality=90))
        >>> b = r.handle([Envelope([Unbanked(up)])])
        >>> r.loop.held_count, b.delta is None   # held, not in the batch's delta
        (1, True)
        >>> entries, items = r.seal()
        >>> [orjson.loads(x)["h+"][0][0] for x in entries], items, r.seal()
        (['e1'], 1, ([], 0))
        """
        held = self.loop.seal()
        if not held:
            return [], 0
        delta = ResolveDelta(held=held)
        return log_parts(delta), delta.items

    # -- processing --

    def handle(self, envelopes: Iterable[bytes | Envelope | None]) -> ResolveBatch:
        """Process envelopes of this partition, in offset order.

        The marks and progress of each envelope here; its items in one call of the
        compiled loop (:attr:`loop`), which hands back the routed events per clusters
        partition and what changed; then, per batch, the unbanked uploads every input
        has passed (the index's owner), expiry, progress and the log's delta.
        """
        parts = self.partitions
        dead: list[DeadLetter] = []
        heard: dict[int, int] = {}
        # each record decoded once, here (none if handed over in-process)
        unpacked = _unpack(envelopes, "route", self.stats, dead)
        for env in unpacked:
            if env.marks:
                self.watermark.update(env.marks)
            for p, t in env.progress.items():
                if p != self.partition and t > self.peers.get(p, NO_TIME):
                    self.peers[p] = heard[p] = t
            for p, t in env.inputs.items():
                if p != self.partition and t > self.inputs.get(p, NO_TIME):
                    self.inputs[p] = t
        loop, index = self.loop, self.index
        # the banks do not change within a batch: the loop screens its uploads first
        loop.route(self, [env.items for env in unpacked], self.router.banks.screen())
        wm = self.watermark.value
        settled = self._settled(wm)
        if index is not None:
            # the unbanked uploads every partition's input watermark has passed, in
            # (ts, event_id) order, as replay clusters them once its watermark passes them
            loop.cluster_due(self, self._read(wm))
        expired: list[Rejection] = []
        if settled != NO_TIME and settled - self._expired_at >= EXPIRE_EVERY_MS:
            # only what every peer has passed: a registration could still be on its way
            self._expired_at = settled
            expired = self.router.expire(settled)
            loop.unhold_ids([x.event_id for x in expired if x.event_id is not None])
        (
            out,
            ask,
            held_add,
            held_del,
            clustered_to,
            forgot,
            rejected,
            routed,
            duplicates,
            held,
            orphans,
        ) = loop.take()
        self.stats.duplicates += duplicates
        self.stats.held += held
        if orphans:
            self.stats.orphans_held = self.posts.held
        for x in rejected:
            if type(x) is Rejection:
                self.stats.rejected[x.reason] += 1
                dead.append(DeadLetter(x, "route"))
            else:
                _unexpected(x, "route", self.stats, dead)
        for x in expired:
            self.stats.rejected[x.reason] += 1
            dead.append(DeadLetter(x, "route"))
        progress = self._progress(wm, settled)
        moved = progress > self.progress
        if moved:
            self.progress = progress
        read_moved = index is None and wm > self.input_mark
        if read_moved:
            self.input_mark = wm
        peers: list[list[Item]] = [[] for _ in range(parts)]
        peers[INDEX_PARTITION] += ask  # for the index's owner, before the progress covering them
        for home, registrations in self.posts.take_foreign():
            peers[home].append(registrations)  # a RegBatch: each a Registration on the wire
        index_log, index_items, evicted = (
            index.log_changes(MAX_RECORD_BYTES - 32) if index is not None else ((), 0, ())
        )
        posts, forgot = self._last_changes(forgot)
        delta = ResolveDelta(
            posts,
            tuple(forgot),
            held_add,
            tuple(held_del),
            evicted=evicted,
            heard=heard if index is not None else {},
            index_log=index_log,
            index_items=index_items,
            clustered_to=clustered_to,
        )
        changed = bool(delta)
        return ResolveBatch(
            partition=self.partition,
            partitions=parts,
            clusters=out,
            peers=peers,
            progress=self.progress if moved else None,
            inputs=self.input_mark if read_moved else None,
            deadletters=dead,
            delta=encode(delta.to_wire()) if changed else None,
            routed=routed,
            delta_items=delta.items,
            delta_record=delta if changed else None,
        )

    def _last_changes(self, forgot: list[str]) -> tuple[PostsLog | dict[str, str], list[str]]:
        """The batch's posts mapped and forgotten as the log writes them: each post once,
        as the batch left it (see :class:`~streams.wire.ResolveDelta`), so no order of
        folding reads back wrong a post forgotten then mapped again (an evicted cluster's
        upload redelivered). What is mapped now says which came last: only a batch that
        forgot anything is looked at again; the posts it forgot and did not map again
        leave the mapped ones (mapped, then forgotten). The core writes the mapped ones'
        text (:class:`~streams.wire.PostsLog`). (The loop's ``take`` gives the events held
        and released so.)"""
        if forgot:
            forgot = [p for p in dict.fromkeys(forgot) if p not in self.posts]
        return posts_log(self.posts.take_new_log(forgot)), forgot

    # -- what the compiled loop asks of Python --

    def _refused(self, target: str, event: ShareEvent, reason: str, held: int) -> Rejection:
        [rejection] = self.router.refused(target, event, (reason, held))
        return rejection

    def _assign_video(self, event: ShareEvent) -> str:
        """At the index's owner: the cluster of a video's upload (its frames searched here)."""
        assert event.content is not None and self.index is not None
        return self.index.assign(event.content, event.ts_ms)

    def _read(self, wm: int) -> int:
        """The input watermark every resolve partition has passed (this one's is ``wm``):
        an upload before it that is still to come would be late."""
        return self._with_peers(wm, self.inputs)

    def _settled(self, wm: int) -> int:
        """The event time that this partition and every peer have routed up to.

        A registration for a post routed before it has been sent by now (it goes
        before the progress that covers it), so a reshare older than this that
        still waits is not waiting for a registration on its way. Orphans expire
        on this time, not on this partition's watermark alone: a peer that is
        behind (a backlog, a restart) may still register their parents.
        """
        return self._with_peers(wm, self.peers)

    def _with_peers(self, wm: int, heard: dict[int, int]) -> int:
        """The lowest of ``wm`` (this partition's) and every peer's time in ``heard``: a
        peer not heard from holds it at :data:`NO_TIME`."""
        if wm == NO_TIME:
            return NO_TIME
        low = wm
        for r in self._others:
            t = heard.get(r, NO_TIME)
            if t < low:
                low = t
        return low

    def _progress(self, wm: int, settled: int) -> int:
        """The watermark, held back by reshares still waiting here (see the class doc); the
        index's owner's, by the time up to which its peers have sent it their uploads
        (:meth:`_asked`) too, and by the uploads it has yet to cluster. ``settled``:
        :meth:`_settled` of ``wm``, as the batch found it."""
        if wm == NO_TIME:
            return NO_TIME
        waiting = self.loop.waiting_front(settled)
        progress = wm if waiting is None else min(wm, waiting - 1)
        if self.index is None:
            return progress
        # the owner's: never past an upload it has not clustered yet (its cluster, and the
        # registration its reshares wait for, go out before the progress that covers them;
        # after a takeover it clusters only once its peers' input watermarks come again),
        # nor past one still on its way to it (see :meth:`_asked`)
        first = self.loop.unclustered
        unclustered = progress if first is None else first - 1
        return min(progress, self._asked(wm), unclustered)

    def _asked(self, wm: int) -> int:
        """At the index's owner: the event time up to which every peer has sent it its
        unbanked uploads.

        A peer sends an upload ahead of both the progress and the input watermark
        that cover it, so either one heard is such a time; the input watermark is
        the nearer, held back by nothing but the peer's reading. Its progress is
        held back by its reshares waiting for registrations, many of them this
        owner's, and an owner bounded by that progress kept every clusters
        partition's watermark one exchange behind the peer's: the owner's
        progress is the lowest, and a peer's went round by it. After a takeover
        the input watermarks are not known until sent again, the progress is
        (the owner's log keeps it).

        >>> r = ResolvePartition(0, partitions=2, sources=1, banks=HashBanks(), stats=Stats(),
        ...                      lateness_ms=0, hold_ms=60_000, max_held=10)
        >>> r.peers[1], r.inputs[1] = 5_000, 9_000
        >>> r._asked(20_000), r._asked(7_000)
        (9000, 7000)
        """
        heard = {p: max(t, self.inputs.get(p, NO_TIME)) for p, t in self.peers.items()}
        return self._with_peers(wm, self.inputs | heard)


# -- stage 2: clusters ------------------------------------------------------


@dataclass
class ClusterBatch:
    """What one batch of a cluster partition became."""

    decisions: Decisions
    #: the routed events received, to persist, as log entries under
    #: :data:`MAX_RECORD_BYTES` each (none: nothing received), and how many events
    log: list[bytes] = field(default_factory=list)
    log_items: int = 0
    #: evicted posts to forget, per resolve partition
    forget: dict[int, bytes] = field(default_factory=dict)
    applied: int = 0
    #: the uploads received new (neither held nor applied before): how many matched no
    #: bank, the bank of each one matched, and of the unmatched how many were of low
    #: quality and how many the allow-list took (none: no upload new), for
    #: :meth:`ClusterPartition.count_uploads` once :attr:`log` is written
    uploads: tuple[int, list[str], int, int] | None = None


class ClusterPartition(LoopHost):
    """Stage 2 for one partition of the clusters topic: reorder by event time, detect.

    Events wait until the watermark (the slowest resolve partition's progress)
    passes them, then go to the detector in ``(ts, event_id)`` order: the order
    ``replay`` applies them in. An event that comes after the watermark passed it
    is applied at once and counted late, as ``replay`` does. The reorder buffer
    and what is released from it are replay's compiled loop's
    (``_core.ClusterLoop``, ``rust/python/src/detect.rs``): unbanked clusters'
    events are applied in the compiled store, idle ones evicted there and their
    posts written as ``Forget`` records for their resolve partitions, with no
    Python object made per event; Python's detector is called for banked
    clusters' events and bank changes and, in batches, for what the store did
    (:class:`~streams.detector.LoopHost`).

    Waiting for the watermark would hold every alert back by the allowed
    lateness, so the detector is told what waits (:meth:`Detector.expect`),
    and after each batch the clusters that received events are asked for the
    firings the events seen already make certain (:meth:`Detector.fire_early`,
    whose module doc holds the argument): those go out at once, with replay's
    ids; everything that depends on order waits for the watermark. Only banked
    clusters (``b-``) can fire early: an unbanked one never alerts, and one that
    turns out banked does so through a bank change (:meth:`Detector.expect_bank`).
    """

    def __init__(
        self,
        partition: int,
        *,
        partitions: int,
        sources: int,
        policy: AlertPolicy,
        stats: Stats,
        pseudonymizer: Pseudonymizer,
        idle_ms: int = 3_600_000,
        predictor_factory: Callable[[], Predictor] | None = DEFAULT_PREDICTOR,
    ) -> None:
        self.partition = partition
        self.partitions = partitions
        self.stats = stats
        self.detector = det = Detector(
            policy,
            stats,
            pseudonymizer=pseudonymizer,
            idle_ms=idle_ms,
            predictor_factory=predictor_factory,
            counts_uploads=False,  # counted as received and logged (:meth:`count_uploads`)
        )
        #: the posts of evicted unbanked clusters, for their resolve partitions to forget
        self._forget = ForgetSink(partitions)
        #: the reorder buffer and the detector's compiled side (see the class doc)
        self.loop = ClusterLoop(
            det.unbanked_store,
            det.content.held_signals,
            det.clusters,
            Routed,
            self._forget,
            MIN_PDQ_QUALITY,
            det.content.view,
            READER,
            MAX_RECORD_BYTES,
        )
        det.evict_with(
            partial(
                evict_unbanked,
                det.unbanked_store,
                self._forget,
                det.content.held_signals,
                view=det.content.view,
            )
        )
        self.watermark = Watermark(sources, 0)
        self.applied = 0
        #: the timed bank changes taken, (ts, order key): each is applied once
        self._bank_seen: set[tuple[int | None, str]] = set()
        #: what came before the watermark was known (every resolve partition heard from):
        #: the banked clusters given events and the bank changes, asked for early firings
        #: once it is (see :meth:`advance`)
        self._unasked: set[str] = set()
        self._unasked_banks: list[BankUpdate] = []

    def restore(self, logs: Iterable[bytes]) -> list[Rejection]:
        """Take back every event this partition received (persisted logs, any order).

        Returns what did not decode (counted here; the caller dead-letters it).
        """
        bad: list[Rejection] = []
        for raw in logs:
            routed, rejected = decode_routed_log(raw)
            self._unasked.update(self._push(routed))
            bad += rejected
        self.loop.take_received()  # counted when they first came (a predecessor's)
        for rejection in bad:
            self.stats.rejected[rejection.reason] += 1
        return bad

    def compact(self, logs: Iterable[bytes], seen: set[str] | None = None) -> list[bytes]:
        """What of these log entries a replacement still needs, as new entries.

        The events applied to a cluster still in memory, and those not applied
        yet; each once (``seen``: the events already kept by earlier slices of
        the same compaction, see :class:`LogCutback`). The events of evicted
        clusters are left out: folded back, they would only be evicted again
        (event time has passed them by more than ``idle_ms``), and a cluster id
        used again after an eviction starts afresh, here as in the live
        detector. So restoring the compacted entries gives the clusters this
        partition holds, and the log stops growing with all traffic ever seen.
        An item that does not decode is not kept: it is counted (it was, or will
        be, dead-lettered when the log is restored).
        """
        seen = set() if seen is None else seen
        pending = self.loop.keys()
        applied = self.detector.applied
        kept: list[Routed] = []
        for raw in logs:
            routed, bad = decode_routed_log(raw)
            for rejection in bad:
                self.stats.rejected[rejection.reason] += 1
            for item in routed:
                eid = item.event.event_id
                if eid in seen:
                    continue
                if eid in pending or applied(item.cluster_id, eid):
                    seen.add(eid)
                    kept.append(item)
        return routed_log_parts(kept, MAX_RECORD_BYTES) if kept else []

    def count_uploads(
        self, unmatched: int, matched: list[str], low_quality: int, allowed: int
    ) -> None:
        """Count a batch's uploads received new here (:attr:`ClusterBatch.uploads`), once
        its log entries are written (the worker's checkpoint): those that matched no bank,
        those matched, by bank, and of the unmatched those of low quality
        (:func:`~streams.router.low_quality`) and those the allow-list took (no router
        counts them: a resolve partition classifies an upload each time its input is read).
        Each upload once:
        one held, or applied to its cluster, before is a redelivery (read again after a
        kill), not counted; one whose entry a kill lost before it was written is counted
        when it comes again. Not where the detector
        applies them: a replacement applies again each event its log gives back
        (:meth:`restore`), those its predecessor counted included."""
        self.stats.unmatched_uploads += unmatched
        self.stats.low_quality += low_quality
        self.stats.allowed += allowed
        for bank in matched:
            self.stats.matched[bank] += 1

    def _push(self, routed: list[Routed]) -> set[str]:
        """Hold ``routed`` for the watermark; the banked clusters among them (see
        :meth:`_noted`)."""
        return self._noted(self.loop.push(routed))

    def _noted(self, banked: list[Routed]) -> set[str]:
        """The clusters of banked events the loop holds, each event noted by the detector
        (:meth:`Detector.expect_many`) for its early firing."""
        self.detector.expect_many(banked)
        return {item.cluster_id for item in banked}

    def handle(self, envelopes: Iterable[bytes | Envelope | None]) -> ClusterBatch:
        """Hold the routed events of these records (read from the topic, or handed over
        in-process), then apply what the watermark passed (:meth:`advance`).

        A record read from the topic is read by the compiled loop itself
        (:meth:`ClusterLoop.read`): its events held with no ``Routed`` record but for
        banked clusters'; one it does not read, and an envelope handed over in-process,
        the records' way. Either way the log keeps the events compact
        (:func:`~streams.wire.routed_log_parts`: the bytes a worker writes most).
        """
        loop, stats = self.loop, self.stats
        # handed over in-process (records, or a resolve partition's compiled batches):
        # logged as they are written
        received: list[Routed | EvBatch] = []
        received_events = 0
        banked: list[Routed] = []
        read_events = 0
        dead: list[DeadLetter] = []
        stray: list[DeadLetter] = []  # records of other kinds, after every rejection
        for raw in envelopes:
            read = loop.read(raw) if type(raw) is bytes else None
            if read is not None:
                progress, held_banked, rejected, others, n = read
                _rejected(rejected, "detect", stats, dead)
                read_events += n
            else:
                env = _read(raw, "detect", stats, dead)
                if env is None:
                    continue
                progress = env.progress
                routed = [item for item in env.items if _routed(item)]
                others = records(item for item in env.items if not _routed(item))
                held_banked = loop.push(routed)
                received += routed
                received_events += sum(len(x) if type(x) is EvBatch else 1 for x in routed)
            for item in others:
                _unexpected(item, "detect", stats, stray)
            if progress:
                self.watermark.update({p: (t, False) for p, t in progress.items()})
            banked += held_banked
        uploads = loop.take_received()
        batch = self.advance(self._noted(banked))
        if uploads[0] or uploads[1]:
            batch.uploads = uploads
        batch.decisions.rejections.extend(d.rejection for d in dead + stray)
        batch.log = loop.take_log()
        if received:
            batch.log += routed_log_parts(received, MAX_RECORD_BYTES)
        batch.log_items = read_events + received_events
        return batch

    def advance(self, received: Iterable[str] = ()) -> ClusterBatch:
        """Apply what the watermark has passed (and late arrivals), let event time run to it,
        and send what the events held for the ``received`` (banked) clusters already prove.

        Until every resolve partition has been heard from, the watermark is unknown and
        nothing can be proved: the clusters given events meanwhile (and the bank changes)
        are asked once it is known. Otherwise a cluster that got all its events then (a
        burst as a worker starts, or a partition restored from its log) would send its
        firing only when the watermark passed it, an allowed lateness later.
        """
        wm = self.watermark.value
        loop, det = self.loop, self.detector
        if wm == NO_TIME:
            self._unasked.update(received)
        elif self._unasked or self._unasked_banks:
            for update in self._unasked_banks:  # before what they change is released
                det.expect_bank(update, max(wm, loop.released_ms))
            self._unasked_banks = []
            received = self._unasked.union(received)
            self._unasked = set()
        applied = loop.release(self, max(wm, loop.released_ms))
        self.applied += applied
        if wm != NO_TIME:
            det.advance(wm)
            det.fire_early(received, max(wm, loop.released_ms))
        decisions = det.drain()
        forget = self._forget
        if decisions.evicted_posts:  # banked clusters' (Python's), after the unbanked
            forget.extend(decisions.evicted_posts)
        return ClusterBatch(decisions, forget=forget.take() if len(forget) else {}, applied=applied)

    def change_bank(self, update: BankUpdate) -> ClusterBatch:
        """A timed bank change, from the bank follower: applied to the live clusters when the
        watermark passes its time, in event-time order with the events, as ``replay`` applies
        it (retroaction, false positives: :meth:`Detector.change_bank`); what it makes certain
        already goes out now (:meth:`Detector.expect_bank`). One without a time changes
        matching only. Every worker gives every clusters partition it holds every change
        (the bank topic is read whole), again when it is assigned one: the same change
        twice is the same item."""
        mark = (update.ts_ms, update.order_key)
        if update.ts_ms is None or mark in self._bank_seen:
            return ClusterBatch(Decisions())
        if len(self._bank_seen) >= 65_536:  # those long applied can no longer come twice
            done = self.loop.released_ms - self.detector.idle_ms
            self._bank_seen = {m for m in self._bank_seen if m[0] is not None and m[0] > done}
        self._bank_seen.add(mark)
        self.loop.push_bank(update, update.ts_ms, update.order_key)
        if self.watermark.value != NO_TIME:
            self.detector.expect_bank(update, max(self.watermark.value, self.loop.released_ms))
        else:  # noted once the watermark is known (see advance)
            self._unasked_banks.append(update)
        return self.advance()

    @property
    def pending(self) -> int:
        return len(self.loop)

    @property
    def live_items(self) -> int:
        """Events a compaction of this partition's log would keep: those held for the
        watermark and those of the clusters in memory (see :meth:`compact`)."""
        return len(self.loop) + self.detector.live_events
