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
are read; none on a quiet stream): a day of reading is about 86,000 records,
read back from the newest, a window at a time, only as far as the partitions
asked for need (:func:`read_back`). Apache Kafka needs none of it.

>>> value = encode({2: (1_500, 1767225600000), 0: (40, 1767225599000)})
>>> value
b'{"0":[40,1767225599000],"2":[1500,1767225600000]}'
>>> decode(value)
{0: (40, 1767225599000), 2: (1500, 1767225600000)}
>>> decode(b"not json"), decode(b'{"0": [1]}'), decode(b'{"x": [1, 2]}'), decode(b"[]")
({}, {}, {}, {})
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from streams.watermarks import NO_TIME

#: The last part of the topic's name (see :func:`topic_name`).
TOPIC_SUFFIX = "shares-times"
#: Records read back at a time, from the newest (see :func:`read_back`).
READ_WINDOW = 2_000
#: How long a read back may take before the times are left unknown (a reader resumes
#: without them: its partitions' marks wait for records, as they did before).
READ_TIMEOUT_S = 20.0


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
    """A record's pairs; ``{}`` for anything else (another writer's, a damaged one: a
    time is never made up, and bad input never stops a reader)."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[int, tuple[int, int]] = {}
    for key, pair in doc.items():
        if not (key.isdigit() and isinstance(pair, list) and len(pair) == 2):
            return {}
        offset, ts = pair
        if not (type(offset) is int and type(ts) is int and offset >= 0 and ts >= 0):
            return {}
        out[int(key)] = (offset, ts)
    return out


def match(values: Iterable[bytes | None], committed: Mapping[int, int]) -> dict[int, int]:
    """Each partition's time as its committed offset was committed: the time of the last
    record (``values`` oldest first) naming that partition at that offset. A partition no
    record names at its committed offset is left out.

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
    for value in values:
        for p, (offset, ts) in decode(value).items():
            if committed.get(p) == offset:
                out[p] = ts
    return out


async def read_back(
    reader: Any, topic: str, committed: Mapping[int, int], window: int = READ_WINDOW
) -> dict[int, int]:
    """:func:`match` over ``topic``'s records, read from the newest back, a window at a
    time, until every partition of ``committed`` has its time or the start is reached.

    ``reader`` is an unstarted aiokafka consumer without a group; it is started and stopped
    here. The broker's end offset may be short (the bundled broker's ListOffsets answers
    the last batch's base offset + 1), but a fetch gives whole batches: reading up to the
    offset before the end it said gives every record written before the question, and the
    record of a committed offset was written before the offset was committed, so before
    this is asked. Raises ``TimeoutError`` after :data:`READ_TIMEOUT_S`.
    """
    from aiokafka import TopicPartition

    tp = TopicPartition(topic, 0)
    await reader.start()
    try:
        reader.assign([tp])
        end = (await reader.end_offsets([tp]))[tp]
        deadline = time.monotonic() + READ_TIMEOUT_S
        found: dict[int, int] = {}
        hi = end
        while hi > 0 and len(found) < len(committed):
            lo = max(0, hi - window)
            reader.seek(tp, lo)
            values: list[bytes | None] = []
            while await reader.position(tp) < hi:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic} back to offset {lo}")
                got = await reader.getmany(tp, timeout_ms=200)
                for record in got.get(tp, ()):
                    # the first window keeps the end's batch whole (past the end said)
                    if record.offset >= lo and (hi == end or record.offset < hi):
                        values.append(record.value)
            missing = {p: o for p, o in committed.items() if p not in found}
            found |= match(values, missing)
            hi = lo
            window *= 2
        return found
    finally:
        await reader.stop()


class KeptTimes:
    """A worker's times' topic (:func:`topic_name`): each checkpoint's pairs written
    (:meth:`write`), a partition's read back as it is assigned (:meth:`read`).

    ``send`` hands one record's value to the producer the checkpoint flushes before it
    commits (the worker's: through Faust's buffer, which its flush counts); ``make_reader``
    makes an unstarted aiokafka consumer without a group (one a read back)."""

    def __init__(
        self, topic: str, send: Callable[[bytes], None], make_reader: Callable[[], Any]
    ) -> None:
        self.topic = topic
        self.send = send
        self.make_reader = make_reader
        #: records written (the worker's stats record says it: none on Apache Kafka)
        self.written = 0

    def write(self, pairs: Mapping[int, tuple[int, int]]) -> None:
        """The ``(offset, newest event time)`` of each partition about to be committed
        (:func:`taken`): the times known (a partition with none yet, :data:`NO_TIME`, is
        committed with none, as in the metadata); nothing when none is."""
        known = {p: pair for p, pair in pairs.items() if pair[1] != NO_TIME}
        if known:
            self.send(encode(known))
            self.written += 1

    async def read(self, committed: Mapping[int, int]) -> dict[int, int]:
        """Each partition's time as its committed offset was committed (:func:`read_back`);
        those with none are left out."""
        return await read_back(self.make_reader(), self.topic, committed)
