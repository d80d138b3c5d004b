"""The ``shares`` reader's fetches read by the compiled core (``_core.read_fetched``, a run of
records handed to the ingest stage where they lie: ``streams.runtime.faust_adapter``'s bare
records, ``Ingest.handle_records``) give what aiokafka's own loop gives a consumer reading
uncommitted records, record for record, for any batches; what the core does not read (a
compressed batch, a bad CRC, malformed bytes) is left to aiokafka's loop, counted, and read
as before; the ingest stage makes of a run what it makes of the same values as lines."""

from __future__ import annotations

import collections
import logging
from typing import Any

import crc32c
import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition
from hypothesis import event, given, settings
from hypothesis import strategies as st

from streams import events  # noqa: F401  (gives the core its record classes)
from streams._core import FetchedRecords, RecordBatchBuilder, RecordRun, read_fetched
from streams.runtime import faust_adapter
from streams.stages import Ingest

T0 = 1_767_225_600_000
#: a batch's attributes: the timestamp type (log append time) and control bits
LOG_APPEND_TIME, CONTROL = 0x08, 0x20

Rec = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]


def _batch(base: int, records: list[Rec], attributes: int = 0) -> bytes:
    """A record batch of ``records`` (key, value, headers, timestamp delta) from offset
    ``base``, as a broker hands it out: the producer's bytes, the base offset written in,
    the attributes set (and the CRC-32C written again)."""
    builder = RecordBatchBuilder(1 << 22)
    for key, value, headers, delta in records:
        assert builder.append(timestamp=T0 + delta, key=key, value=value, headers=headers)
    b = bytearray(builder._build())
    b[0:8] = base.to_bytes(8, "big")
    if attributes:
        b[21:23] = attributes.to_bytes(2, "big")
        b[17:21] = crc32c.crc32c(bytes(b[21:])).to_bytes(4, "big")
    return bytes(b)


def _fetch(batches: list[tuple[int, list[Rec]]], base: int = 100, start: int = 0) -> bytes:
    """The batches from offset ``base`` (an empty one holds a record) as a broker answers a
    fetch from ``start``: from the batch holding it on."""
    raw, offset = b"", base
    for attributes, records in batches:
        n = max(1, len(records))
        if offset + n > start:
            raw += _batch(offset, records or [(None, b"", [], 0)], attributes)
        offset += n
    return raw


def _aiokafka_s(raw: bytes, fetch_offset: int, check_crcs: bool = True) -> tuple[list[Any], int]:
    """What aiokafka's own loop gives a consumer reading uncommitted records, and the
    partition's next fetch offset after."""
    records = fetcher.PartitionRecords(
        TopicPartition("shares", 1),
        fetcher.MemoryRecords(raw),
        [],
        fetch_offset,
        None,
        None,
        check_crcs,
        0,
    )
    records._consumer_record = faust_adapter._as_read
    return list(records), records.next_fetch_offset


def _fields(r: Any) -> tuple[Any, ...]:
    return (r.offset, r.timestamp, r.timestamp_type, r.key, r.value, list(r.headers))


_bytes = st.one_of(st.none(), st.binary(max_size=40))
_record = st.tuples(
    _bytes,
    _bytes,
    st.lists(st.tuples(st.text(max_size=5), _bytes), max_size=2),
    st.integers(-5, 5_000),
)
_batches = st.lists(
    st.tuples(st.sampled_from([0, 0, 0, LOG_APPEND_TIME, CONTROL]), st.lists(_record, max_size=6)),
    min_size=1,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(batches=_batches, skip=st.integers(0, 20), cut=st.integers(0, 80))
def test_a_fetch_is_read_as_aiokafka_reads_it(
    batches: list[tuple[int, list[Rec]]], skip: int, cut: int
) -> None:
    """Any batches (control ones, log-append time, keys, null values, headers), a fetch
    offset anywhere in them, the last batch fetched in part: the same records, with the
    same fields, and the same next fetch offset once all are taken."""
    start = 100 + min(skip, sum(max(1, len(r)) for _, r in batches) - 1)
    raw = _fetch(batches, start=start)
    raw = raw[: len(raw) - cut] if cut < len(raw) else raw
    got = read_fetched(raw, start, True)
    assert isinstance(got, FetchedRecords)
    run = got.run(0, len(got))
    want, next_offset = _aiokafka_s(raw, start)
    assert [_fields(r) for r in run] == [_fields(r) for r in want]
    assert got.next_after(len(got)) == next_offset
    assert all(run[i].offset == r.offset for i, r in enumerate(want))
    if len(run):
        assert run[-1].offset == want[-1].offset
        assert got.next_after(0) == start


@settings(max_examples=400, deadline=None)
@given(
    batches=_batches,
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 200),
    check_crcs=st.booleans(),
)
def test_any_bytes_are_read_as_aiokafka_reads_them_or_left_to_it(
    batches: list[tuple[int, list[Rec]]],
    edits: list[tuple[int, int]],
    cut: int,
    check_crcs: bool,
) -> None:
    """A fetch's bytes changed anywhere (a length, a varint, a count, an offset, the CRC
    left to hold or not) and cut anywhere: the core reads them, never raising, and what
    it reads is what aiokafka's loop reads; or it says why it leaves them to that loop."""
    raw = bytearray(_fetch(batches))
    for at, byte in edits:
        raw[at % len(raw)] = byte
    data = bytes(raw[: max(0, len(raw) - cut)])
    got = read_fetched(data, 100, check_crcs)
    event("left to aiokafka" if isinstance(got, tuple) else "read")
    if isinstance(got, tuple):
        reason, detail = got
        assert reason in ("old_magic", "compressed", "crc", "malformed") and detail
        return
    want, next_offset = _aiokafka_s(data, 100, check_crcs)
    assert [_fields(r) for r in got.run(0, len(got))] == [_fields(r) for r in want]
    assert got.next_after(len(got)) == next_offset


def _result(raw: bytes, fetch_offset: int, unread: collections.Counter[str]) -> Any:
    """aiokafka's ``FetchResult`` of one fetched partition, read the bare records' way."""
    from types import SimpleNamespace

    tp = TopicPartition("shares", 1)
    state = SimpleNamespace(paused=False, position=fetch_offset, consumed_to=lambda o: None)
    assignment = SimpleNamespace(active=True, state_value=lambda _tp: state)
    records = fetcher.PartitionRecords(
        tp, fetcher.MemoryRecords(raw), [], fetch_offset, None, None, True, 0
    )
    result = fetcher.FetchResult(tp, assignment=assignment, partition_records=records, backoff=0)
    result.check_assignment = lambda _tp: True
    faust_adapter._bare(result, unread)
    return result


def test_the_consumer_gives_runs_of_the_core_s_no_record_object_each() -> None:
    """``getall`` gives a ``RecordRun`` of the records asked for (a record is made only
    when one is read), taken in turn; nothing is counted as left to aiokafka."""
    raw = _fetch([(0, [(None, b"v%d" % i, [], i) for i in range(5)]), (CONTROL, [])] * 2)
    unread: collections.Counter[str] = collections.Counter()
    result = _result(raw, 100, unread)
    first, rest = result.getall(3), result.getall(None)
    assert type(first) is RecordRun and type(rest) is RecordRun
    assert [r.value for r in first] + [r.value for r in rest] == [
        b"v%d" % i for i in (0, 1, 2, 3, 4, 0, 1, 2, 3, 4)
    ]
    assert (first[0].offset, first[-1].offset, rest[0].offset, rest[-1].offset) == (
        100,
        102,
        103,
        110,
    )
    assert result._partition_records is None and not unread
    with pytest.raises(IndexError):
        first[3]


def test_a_compressed_fetch_is_left_to_aiokafka_counted_and_read_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gzip batch is not read by the core: the fetch is read by aiokafka's loop (which
    decompresses it) as before, counted as ``compressed`` and said once."""
    builder = DefaultRecordBatchBuilder(2, 1, 0, -1, -1, -1, 1 << 20)  # gzip
    for i in range(4):
        builder.append(i, T0 + i, None, b"z%d" % i, [])
    gzip = builder.build()
    gzip[0:8] = (100).to_bytes(8, "big")  # its base offset
    raw = _batch(96, [(None, b"plain", [], 0)] * 4) + bytes(gzip)
    unread: collections.Counter[str] = collections.Counter()
    with caplog.at_level(logging.WARNING, logger="viralwatch.worker"):
        got = [_result(raw, 97, unread).getall(None) for _ in range(2)]
    assert all(type(g) is list for g in got)
    want, _ = _aiokafka_s(raw, 97)
    assert [_fields(r) for r in got[0]] == [_fields(r) for r in want]
    assert [r.value for r in want] == [b"plain"] * 3 + [b"z%d" % i for i in range(4)]
    assert unread == {"compressed": 2}
    assert sum("a compressed record batch" in m for m in caplog.messages) == 1


def test_a_fetch_with_a_bad_crc_is_refused_as_aiokafka_refuses_it() -> None:
    """A CRC that does not hold: the core leaves the fetch to aiokafka's loop, which gives
    the batches before it and then refuses it (``CorruptRecordException``), counted."""
    raw = bytearray(_fetch([(0, [(None, b"a", [], 0)] * 3), (0, [(None, b"b", [], 0)] * 2)]))
    raw[-2] ^= 1  # the last value
    unread: collections.Counter[str] = collections.Counter()
    result = _result(bytes(raw), 100, unread)
    assert [r.offset for r in result.getall(3)] == [100, 101, 102]
    with pytest.raises(CorruptRecordException, match="Invalid CRC"):
        result.getall(10)
    assert unread == {"crc": 1}


LINES = [
    b'{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1","user_id":"u1",'
    b'"content":{"md5":"' + b"a" * 32 + b'"}}',
    b"{oops",
    None,
    b'{"event_id":"e2","type":"share","ts":1767225601000,"post_id":"p2","user_id":"u2",'
    b'"parent_post_id":"p1"}',
    b'{"event_id":"e3","type":"upload","ts":1767225602000,"post_id":"p3","user_id":"u3",'
    b'"content":{"vpdq":["' + b"0" * 64 + b',100,0.0"]}}',
    b'{"event_id":"\xc3\xa91","type":"share","ts":"2026-01-01T00:00:03+00:00",'
    b'"post_id":"p4","user_id":"u4","parent_post_id":"p3"}',
    b"x" * (400 * 1024),
    b'{"event_id":"e5","type":"upload","ts":"soon","post_id":"p5","user_id":"u5"}',
]


def test_ingest_parses_a_run_where_it_lies_as_it_parses_its_lines() -> None:
    """The ingest stage makes of a run of fetched records (and of the Kafka client's own
    records) what it makes of their values as lines: the same envelopes, the same dead
    letters, each naming its record's topic, partition and offset."""
    raw = _batch(7, [(None, v, [], i) for i, v in enumerate(LINES)])
    fetched = read_fetched(raw, 7, True)
    assert isinstance(fetched, FetchedRecords)
    run = fetched.run(0, len(fetched))
    values = [v if v is not None else b"" for v in LINES]
    offsets = [7 + i for i in range(len(LINES))]
    by_lines = Ingest(4, 10.0, topic="t.shares").handle_lines(
        values, [3] * len(values), lambda i: (3, offsets[i]), 5.0
    )
    listed = list(run)
    for records in (run, listed):
        batch = Ingest(4, 10.0, topic="t.shares").handle_records([(3, records)], 5.0)
        assert batch.envelopes == by_lines.envelopes
        assert batch.deadletters == by_lines.deadletters
        assert batch.events == by_lines.events == 4
    dead = {(d.source.topic, d.source.partition, d.source.offset): d.rejection.reason
            for d in by_lines.deadletters}  # fmt: skip
    assert dead == {
        ("t.shares", 3, 8): "not_json",
        ("t.shares", 3, 9): "not_json",
        ("t.shares", 3, 13): "too_large",
        ("t.shares", 3, 14): "bad_ts",
    }


def test_ingest_takes_runs_of_several_partitions_in_the_order_read() -> None:
    """Runs of several partitions, the core's and listed ones mixed, in one call: what
    the lines of all of them in that order make."""
    good = LINES[0]
    assert good is not None
    share = LINES[3]
    assert share is not None
    a = read_fetched(_batch(0, [(None, good, [], 0), (None, b"[]", [], 1)]), 0, True)
    b = read_fetched(_batch(50, [(None, share, [], 0)]), 50, True)
    assert isinstance(a, FetchedRecords) and isinstance(b, FetchedRecords)
    runs: list[tuple[int, Any]] = [(0, a.run(0, 2)), (2, list(b.run(0, 1))), (1, a.run(1, 2))]
    got = Ingest(2, 10.0, topic="s").handle_records(runs, 1.0)
    lines = [good, b"[]", share, b"[]"]
    where = [(0, 0), (0, 1), (2, 50), (1, 1)]
    want = Ingest(2, 10.0, topic="s").handle_lines(lines, [0, 0, 2, 1], lambda i: where[i], 1.0)
    assert got.envelopes == want.envelopes and got.deadletters == want.deadletters
    assert [(d.source.partition, d.source.offset) for d in got.deadletters] == [(0, 1), (1, 1)]
