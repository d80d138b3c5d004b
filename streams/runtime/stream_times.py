"""The ``shares`` partitions' newest event times, kept where the broker drops commit metadata.

The shares reader commits each partition's newest event time with its offset,
in the offset commit's metadata (``t=<ms>``), and a reader that takes the
partition over resumes it from there (:meth:`SourceClock.resume`): without it,
a restarted worker on a quiet stream would never know where event time stood,
its restored events would wait for the next event, and its views would say
"still loading" until one came. Apache Kafka keeps that metadata. The bundled
broker (Tansu 0.6) keeps the offset and drops the metadata: its storage writes
the whole commit request, but its OffsetFetch answers with the offset alone
(``Storage::offset_fetch`` returns offsets; probed: ``''`` back).

So on that broker each checkpoint also writes the times of the offsets it is
about to commit, each with its offset, to a topic of the application's own
(:func:`topic_name`, one partition), *before* the producer flush that the
offset commit waits for (:meth:`streams.runtime.checkpoint.Checkpoint`): a
committed offset's record is on the broker before the offset is. A reader
taking a partition over takes the time of the newest record whose offset is
the committed one (:func:`match`), and nothing else: the pair it resumes is
one a commit made, as Kafka's metadata gives it. A record written for offsets
whose commit then failed (a kill, a rebalance) names an offset not committed
and is never taken: its time can be past records the new reader reads again,
whose events would then come late. Where no record matches (none written yet,
or written by a release without this), the time stays unknown, as before.

The records are a few dozen bytes a checkpoint (one a second while records
are read): a day of reading is about 86,000 records, and the broker compacts
nothing (Tansu 0.6 has no compaction). So a reader reads back a bounded
number, from the newest, a window at a time (:func:`read_back`, at most
:data:`READ_LIMIT`): every record names every partition its writer holds (the
others with the pair they were last committed with), and a holder whose
partitions are quiet writes them again every :data:`REWRITE_S`, so a partition's
committed pair is among the newest records whoever held it. A record that is
not one is counted, logged and dead-lettered (:func:`bad_records`), never
dropped silently. Apache Kafka needs none of it.

>>> value = encode({2: (1_500, 1767225600000), 0: (40, 1767225599000)})
>>> value
b'{"0":[40,1767225599000],"2":[1500,1767225600000]}'
>>> decode(value)
{0: (40, 1767225599000), 2: (1500, 1767225600000)}
>>> bad = []
>>> match([value, b"not json", b"[]"], {0: 40}, on_bad=lambda at, v, why: bad.append((at, why)))
{0: 1767225599000}
>>> bad  # counted and logged by the worker (``bad_times_record``), never dropped silently
[(1, 'not a times record: not JSON'), (2, 'not a times record: not an object')]
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson

from streams.events import Rejection
from streams.stages import DeadLetter, Source
from streams.stats import Stats
from streams.watermarks import NO_TIME

log = logging.getLogger("viralwatch.worker")

#: The last part of the topic's name (see :func:`topic_name`).
TOPIC_SUFFIX = "shares-times"
#: The rejected reason of a record on the topic that is not one (:func:`bad_records`).
BAD_RECORD = "bad_times_record"
#: Records read back at a time, from the newest (see :func:`read_back`).
READ_WINDOW = 2_000
#: Records read back at most, from the newest (see :func:`read_back`): every writer names
#: every partition it holds in each record and writes at least every :data:`REWRITE_S`, at
#: most a record a second of checkpoints: 16,000 is that many minutes of over a hundred
#: workers (a partition's holder lost, its session timing out: under a minute more).
READ_LIMIT = 16_000
#: A holder writes its partitions' committed pairs again after this long without writing
#: (:meth:`KeptTimes.refresh`): a quiet stream's 1,440 records a day a worker.
REWRITE_S = 60.0
#: How long a read back may take before the times are left unknown (a reader resumes
#: without them: its partitions' marks wait for records, as they did before).
READ_TIMEOUT_S = 20.0
#: How long (wall clock) a generation of the times' topic is written before the next one
#: begins (:func:`generation_topic`): the broker keeps every record, so a writer that saw
#: a generation begin and settle drops those before the previous one
#: (:meth:`KeptTimes.drop_old`): at most about two periods of records are kept, some 7,200
#: a worker reading all along, 120 a quiet one.
PERIOD_S = 3_600.0


def generation_topic(topic: str, generation: int) -> str:
    """A generation of the times' topic: the records written in one :data:`PERIOD_S`
    (``generation``: the wall clock's seconds over it).

    >>> generation_topic("viralwatch-shares-times", 493_527)
    'viralwatch-shares-times-493527'
    """
    return f"{topic}-{generation}"


def generations(topic: str, names: Iterable[str]) -> list[str]:
    """The generations of ``topic`` among the topics ``names``, newest first; ``topic``
    itself (written by a release before generations) the oldest.

    >>> generations("a-shares-times", ["a-shares-times-9", "a-shares-times", "b",
    ...                                "a-shares-times-10", "a-shares-times-x"])
    ['a-shares-times-10', 'a-shares-times-9', 'a-shares-times']
    """
    found = [(g, name) for name in names if (g := generation_of(topic, name)) is not None]
    return [name for _, name in sorted(found, reverse=True)]


def generation_of(topic: str, name: str) -> int | None:
    """The generation the topic ``name`` is of ``topic`` (-1: ``topic`` itself; ``None``:
    not one).

    >>> generation_of("a-t", "a-t-12"), generation_of("a-t", "a-t"), generation_of("a-t", "a-tx")
    (12, -1, None)
    """
    if name == topic:
        return -1
    suffix = name[len(topic) + 1 :] if name.startswith(f"{topic}-") else ""
    return int(suffix) if suffix.isdigit() else None


def topic_name(app_id: str) -> str:
    """The times' topic of an application (its shares group ``<app_id>.shares``), named as
    its state logs' changelogs are (``<app_id>-<table>-changelog``).

    >>> topic_name("viralwatch")
    'viralwatch-shares-times'
    """
    return f"{app_id}-{TOPIC_SUFFIX}"


def encode(pairs: Mapping[int, tuple[int, int]]) -> bytes:
    """One checkpoint's record: each partition's ``(offset, newest event time)``."""
    return orjson.dumps({str(p): list(pairs[p]) for p in sorted(pairs)})


def taken(offsets: Mapping[int, int], newest: Callable[[int], int]) -> dict[int, tuple[int, int]]:
    """Each partition's ``(offset, newest event time)`` as a checkpoint takes the offsets it
    is about to commit (``newest``: the source clock's, :data:`NO_TIME` where none is known
    yet): the shares reader's (:meth:`SharesReader.note_offsets`, the commit's metadata and
    :meth:`KeptTimes.write`) and the kill model's (``LocalRun``), one rule.

    >>> taken({0: 40, 3: 7}, {0: 1767225599000, 3: NO_TIME}.__getitem__)
    {0: (40, 1767225599000), 3: (7, -1)}
    """
    return {p: (o, newest(p)) for p, o in offsets.items()}


def decode(value: bytes | None) -> dict[int, tuple[int, int]]:
    """A record's pairs. Anything else (another writer's, a damaged one) raises
    ``ValueError`` saying what is wrong: the reader counts it and goes on with the records
    around it (:func:`match`'s ``on_bad``), never makes a time up and never stops on it.

    >>> decode(b'{"0": [1]}')
    Traceback (most recent call last):
    ...
    ValueError: not a times record: partition 0's pair is not [offset, time]
    """
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise ValueError("not a times record: not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a times record: not an object")
    out: dict[int, tuple[int, int]] = {}
    for key, pair in doc.items():
        if not key.isdigit():
            raise ValueError("not a times record: a key is not a partition")
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError(f"not a times record: partition {key}'s pair is not [offset, time]")
        offset, ts = pair
        if not (type(offset) is int and type(ts) is int and offset >= 0 and ts >= 0):
            raise ValueError(f"not a times record: partition {key}'s offset or time is not one")
        out[int(key)] = (offset, ts)
    return out


#: Told of a record :func:`decode` refuses: its place (an offset on the topic, or an index
#: in what :func:`match` was given), its bytes, and what is wrong with it.
OnBad = Callable[[int, "bytes | None", str], None]


def bad_records(
    topic: str, stats: Stats, deadletter: Callable[[Iterable[DeadLetter]], None]
) -> OnBad:
    """The worker's ``on_bad``: a record of ``topic`` that is not one is never dropped
    silently: counted (``bad_times_record`` in the stats' rejected, the rejected metric),
    logged in one line (offsets and times: no user's id is in such a record) and
    dead-lettered with its bytes, as a bad record of the other topics a worker reads."""

    def bad(offset: int, value: bytes | None, detail: str) -> None:
        stats.rejected[BAD_RECORD] += 1
        log.warning("%s offset %d: skipped, %s (%s)", topic, offset, detail, BAD_RECORD)
        rejection = Rejection(BAD_RECORD, detail, value or b"")
        deadletter([DeadLetter(rejection, TOPIC_SUFFIX, Source(topic, 0, offset))])

    return bad


def _raise(at: int, value: bytes | None, detail: str) -> None:
    raise ValueError(f"record {at}: {detail}")


def match(
    values: Iterable[bytes | None],
    committed: Mapping[int, int],
    on_bad: OnBad = _raise,
    at: Iterable[int] | None = None,
) -> dict[int, int]:
    """Each partition's time as its committed offset was committed: the time of the last
    record (``values`` oldest first) naming that partition at that offset. A partition no
    record names at its committed offset is left out. A record that is not one is told to
    ``on_bad`` (with its place: ``at``'s, else its index; by default it raises) and
    skipped: the records around it are matched as ever.

    >>> records = [encode({0: (10, 100), 1: (7, 90)}), encode({0: (12, 130)}),
    ...            encode({0: (15, 170)})]  # the last one's commit failed
    >>> sorted(match(records, {0: 12, 1: 7, 2: 3}).items())
    [(0, 130), (1, 90)]
    >>> match(records, {0: 14})  # never committed with a time: unknown, not 130 or 170
    {}
    >>> match([encode({0: (12, 120)}), encode({0: (12, 130)})], {0: 12})  # the last wins
    {0: 130}
    """
    out: dict[int, int] = {}
    for i, value in zip(at if at is not None else itertools.count(), values, strict=False):
        try:
            pairs = decode(value)
        except ValueError as exc:
            on_bad(i, value, str(exc))
            continue
        for p, (offset, ts) in pairs.items():
            if committed.get(p) == offset:
                out[p] = ts
    return out


async def read_back(
    reader: Any,
    topic: str,
    committed: Mapping[int, int],
    on_bad: OnBad,
    window: int = READ_WINDOW,
    limit: int = READ_LIMIT,
) -> tuple[dict[int, int], int]:
    """:func:`match` over ``topic``'s records, read from the newest back, a window at a
    time (doubling), until every partition of ``committed`` has its time, the start is
    reached or ``limit`` records back are read; and how many records were read.

    Bounded because every writer names every partition it holds in each record it writes,
    and writes one at least every :data:`REWRITE_S` while it holds any
    (:meth:`KeptTimes.write`, :meth:`KeptTimes.refresh`): a partition's committed pair is
    among the newest records whoever held it, as long as it was held. A partition not
    found within ``limit`` is left out (unknown, as with no record), never guessed.

    ``reader`` is an unstarted aiokafka consumer without a group; it is started and stopped
    here. The broker's end offset may be short (the bundled broker's ListOffsets answers
    the last batch's base offset + 1), but a fetch gives whole batches: reading up to the
    offset before the end it said gives every record written before the question, and the
    record of a committed offset was written before the offset was committed, so before
    this is asked. A record that is not one is told to ``on_bad`` with its offset.
    Raises ``TimeoutError`` after :data:`READ_TIMEOUT_S`.
    """
    from aiokafka import TopicPartition

    tp = TopicPartition(topic, 0)
    await reader.start()
    try:
        reader.assign([tp])
        end = (await reader.end_offsets([tp]))[tp]
        deadline = time.monotonic() + READ_TIMEOUT_S
        found: dict[int, int] = {}
        read = 0
        hi = end
        floor = max(0, end - limit)
        while hi > floor and len(found) < len(committed):
            lo = max(floor, hi - window)
            reader.seek(tp, lo)
            offsets: list[int] = []
            values: list[bytes | None] = []
            while await reader.position(tp) < hi:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic} back to offset {lo}")
                got = await reader.getmany(tp, timeout_ms=200)
                for record in got.get(tp, ()):
                    # the first window keeps the end's batch whole (past the end said)
                    if record.offset >= lo and (hi == end or record.offset < hi):
                        offsets.append(record.offset)
                        values.append(record.value)
            read += len(values)
            missing = {p: o for p, o in committed.items() if p not in found}
            found |= match(values, missing, on_bad, at=offsets)
            hi = lo
            window *= 2
        return found, read
    finally:
        await reader.stop()


class KeptTimes:
    """A worker's times' topic (:func:`topic_name`): each checkpoint's pairs written
    (:meth:`write`), a partition's read back as it is assigned (:meth:`read`), the topic's
    old generations dropped (:meth:`drop_old`).

    The broker keeps every record (Tansu 0.6 deletes none: ``delete_records`` drops the
    connection, ``retention.ms`` is not applied), but it deletes a topic, and frees its
    records. So records go to a generation of the topic, a new one each :data:`PERIOD_S`
    (:func:`generation_topic`): a writer's first record in a generation names every pair
    committed here (:meth:`write`), so the generation holds each partition it holds, as
    the topic did; a reader reads the newest generation back first and an older one only
    for what it did not find (:meth:`read`). A writer that sees a generation begin drops
    the generations before the previous one (:meth:`drop_old`), once the producer's flush
    has put the new one's first record on the broker: every pair committed before it is
    there, and a pair committed since is in a record of the new one or, its checkpoint's
    record written before the new one began, of the previous one, and in the next one's
    first record. A kill before the drop leaves more generations, never fewer.

    Every record names every partition held here whose committed pair is known: those
    about to be committed with their new pair, the others with the pair they were last
    committed with (:meth:`committed`, :meth:`resumed`), written again; and a holder whose
    partitions are quiet writes them again every :data:`REWRITE_S` (:meth:`refresh`). So a
    reader taking a partition over finds its committed pair among the newest records and
    reads a bounded number back (:func:`read_back`), where it read back to the start for a
    partition quiet for a day (about 86,000 records a day: one a second while any other
    partition is read). A pair written again is one its offset was committed with: the time
    Kafka's metadata gives back with it.

    ``send`` hands one record's value for a topic (a generation) to the producer the
    checkpoint flushes before it commits (the worker's: through Faust's buffer, which its
    flush counts; the bundled broker makes a topic written to); ``make_reader`` makes an
    unstarted aiokafka consumer without a group (one a read back, one a listing of the
    generations); ``on_bad`` is told of each record read back that is not one (the worker
    counts it, ``bad_times_record``, and logs it); ``clock``, monotonic seconds
    (:meth:`refresh`); ``wall``, the wall clock's seconds (the generations); ``delete``
    deletes topics (:meth:`drop_old`; none: nothing is dropped), after ``flush`` (the
    producer's: everything sent before it is on the broker); ``create`` makes topics (a
    generation is written to once made here, :meth:`make_current`; none: as it begins)."""

    def __init__(
        self,
        topic: str,
        send: Callable[[str, bytes], None],
        make_reader: Callable[[], Any],
        on_bad: OnBad = _raise,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        delete: Callable[[list[str]], Awaitable[None]] | None = None,
        flush: Callable[[], Awaitable[None]] | None = None,
        create: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.topic = topic
        self.send = send
        self.make_reader = make_reader
        self.on_bad = on_bad
        self.clock = clock
        self.wall = wall
        self.delete = delete
        self.flush = flush
        self.create = create
        #: the newest generation made here (:meth:`make_current`; ``None``: none yet): with
        #: ``create``, a writer writes to no other (:meth:`_begin`)
        self.made: int | None = None
        #: records written (the worker's stats record says it: none on Apache Kafka)
        self.written = 0
        #: records read back at assignments (the stats record says it: bounded)
        self.read_back = 0
        #: old generations of the topic deleted (:meth:`drop_old`)
        self.dropped = 0
        #: each partition held here: the pair its offset was last committed with
        self._committed: dict[int, tuple[int, int]] = {}
        self._written_at = clock()
        #: the generation written to (``None``: none yet)
        self.generation: int | None = None
        #: generations before this one are to be dropped (:meth:`drop_old`)
        self.drop_below: int | None = None

    def _generation(self) -> int:
        return int(self.wall() // PERIOD_S)

    def _begin(self) -> str | None:
        """The generation to write to (``None``: none made here, nothing is written): a new
        one begun first with every pair committed here (a generation seen to begin and
        settle: those before it are dropped next).

        With ``create``, the newest generation made here, never the clock's unless made:
        a topic not made has no leader for the worker's producer, whose flush, which the
        commit waits for, then waits for ever. So a first write past the end of the
        generation made at start goes to that one (the clock's is made in the same tick,
        after the commit, and begun at the next write), and with none made (the make
        failed) nothing is written: the pairs are unknown to a reader, as with no record,
        and the first generation begun names them all. Never an older one than the one
        written to (a wall clock set back): those before it may be dropped."""
        generation = self._generation() if self.create is None else self.made
        if generation is None:
            return None
        if self.generation is not None and generation <= self.generation:
            return generation_topic(self.topic, self.generation)
        topic = generation_topic(self.topic, generation)
        if self.generation is not None:  # seen to begin here: the older ones can go
            self.drop_below = self.generation
        self.generation = generation
        if self._committed:
            self.send(topic, encode(self._committed))
            self.written += 1
        return topic

    def write(
        self, pairs: Mapping[int, tuple[int, int]], held: Iterable[int] | None = None
    ) -> None:
        """The ``(offset, newest event time)`` of each partition about to be committed
        (:func:`taken`): the times known (a partition with none yet, :data:`NO_TIME`, is
        committed with none, as in the metadata), with the last committed pair of each other
        partition ``held`` (default: those named); nothing when no time is known."""
        held = set(pairs) if held is None else set(held)
        for p in [p for p in self._committed if p not in held]:  # given up
            del self._committed[p]
        topic = self._begin()
        record = {p: pair for p, pair in self._committed.items() if p not in pairs}
        record |= {p: pair for p, pair in pairs.items() if pair[1] != NO_TIME}
        if record and topic is not None:
            self.send(topic, encode(record))
            self.written += 1
            self._written_at = self.clock()

    def committed(self, pairs: Mapping[int, tuple[int, int]]) -> None:
        """These partitions' offsets were committed, each with its time (:data:`NO_TIME`:
        with none): the pairs :meth:`write` writes again while they are held."""
        for p, pair in pairs.items():
            if pair[1] == NO_TIME:
                self._committed.pop(p, None)
            else:
                self._committed[p] = pair

    def resumed(self, committed: Mapping[int, int], times: Mapping[int, int]) -> None:
        """Partitions taken over at their ``committed`` offsets, with the ``times`` found for
        them (read back or from the metadata; those without one are unknown)."""
        self.committed({p: (o, times.get(p, NO_TIME)) for p, o in committed.items()})

    def refresh(self, held: Iterable[int]) -> None:
        """Write the committed pairs of the partitions ``held`` again if nothing was
        written for :data:`REWRITE_S` (a quiet holder: its pairs stay among the newest)."""
        if self.clock() - self._written_at >= REWRITE_S:
            self.write({}, held)
            self._written_at = self.clock()

    async def read(self, committed: Mapping[int, int]) -> dict[int, int]:
        """Each partition's time as its committed offset was committed (:func:`read_back`),
        from the newest generation back, an older one for those not found; those with none
        are left out."""
        found: dict[int, int] = {}
        for topic in generations(self.topic, await topics(self.make_reader())):
            missing = {p: o for p, o in committed.items() if p not in found}
            if not missing:
                break
            got, read = await read_back(self.make_reader(), topic, missing, self.on_bad)
            self.read_back += read
            found |= got
        return found

    async def make_current(self) -> None:
        """Make this generation's topic where not made yet (``create``: a topic written to
        before it is made keeps the producer's flush waiting): a writer begins only a
        generation made here (:meth:`write`; till then it writes to the newest made here).

        Not the next one ahead of the clock: a generation made before it is written to
        stands empty on the broker (an idle holder writes a minute after the hour at
        most), and nothing needs it: a reader reads the generations that hold records,
        newest first, and one made at the hour's first checkpoint is begun at the next
        (a second later), the first's record going to the previous generation, which is
        kept till the one after begins (:meth:`drop_old`)."""
        if self.create is None:
            return
        now = self._generation()
        if self.made is None or now > self.made:
            await self.create([generation_topic(self.topic, now)])
            self.made = now

    async def drop_old(self) -> list[str]:
        """Once :meth:`write` began a generation after another: delete those before the
        previous one (and the topic of a release before generations), after the producer's
        flush has put the new one's first record on the broker; the topics deleted. A
        deletion that fails is tried again as the next generation begins."""
        below, self.drop_below = self.drop_below, None
        if below is None or self.delete is None:
            return []
        if self.flush is not None:
            await self.flush()
        names = generations(self.topic, await topics(self.make_reader()))
        old = [n for n in names if (g := generation_of(self.topic, n)) is not None and g < below]
        if old:
            await self.delete(old)
            self.dropped += len(old)
        return old


async def topics(reader: Any) -> set[str]:
    """The broker's topics, asked by ``reader`` (an unstarted aiokafka consumer: started and
    stopped here)."""
    await reader.start()
    try:
        return set(await reader.topics())
    finally:
        await reader.stop()
