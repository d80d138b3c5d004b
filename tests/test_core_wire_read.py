"""The compiled reader of stage records (``_core.WireReader``) against the Python reader.

Envelopes and cluster-log entries are read by the core (``Envelope.unpack``,
``streams.wire.decode_routed_log``); the Python reader they used before, kept for
what the core leaves to it (``Envelope.read_in_python``,
``streams.wire.routed_log_in_python``), is the oracle. For anything the stages
write (valid events with text of any kind, every record, marks, progress), for
items that are not records or hold events that are not valid, for frames that are
not the stages' (floats, keys that are not partitions, a key twice) and for any
bytes at all, the two give equal envelopes (items, rejections with their details
and kept bytes, marks, progress, inputs), or raise the same error. (The core gives
runs of events to route and of unbanked uploads as compiled batches, ``EvBatch``:
compared as the records they stand for, ``streams.wire.records``.)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams._core import EvBatch
from streams.alerts import MatchInfo
from streams.events import Content, ShareEvent
from streams.router import Routed
from streams.stages import Envelope
from streams.wire import (
    Forget,
    Registration,
    ToRoute,
    Touch,
    Unbanked,
    WireVersion,
    decode_routed_log,
    encode,
    encode_parts,
    read_envelope,
    routed_log_in_python,
    routed_log_parts,
)
from streams.wire import (
    records as wire_records,
)

EXAMPLES = int(os.environ.get("VIRALWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None)

TS = st.integers(946_684_800_000, 4_102_444_799_999)
_id = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=8
) | st.sampled_from(['"', "\\", "é", "😀", "a b", "\u2028", "x\x00"])
_hex = st.text("0123456789abcdef", min_size=32, max_size=32)
_content = st.builds(
    Content,
    pdq=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    pdq_quality=st.none() | st.integers(0, 100),
    md5=st.none() | _hex,
)
_event = st.one_of(
    st.builds(
        ShareEvent,
        event_id=_id,
        type=st.just("share"),
        ts_ms=TS,
        post_id=_id,
        user_id=_id,
        parent_post_id=_id,
        followers=st.none() | st.integers(0, 10**6),
    ),
    st.builds(
        ShareEvent,
        event_id=_id,
        type=st.just("upload"),
        ts_ms=TS,
        post_id=_id,
        user_id=_id,
        content=_content,
    ),
    st.builds(
        ShareEvent, event_id=_id, type=st.just("takedown"), ts_ms=TS, post_id=_id, user_id=_id
    ),
    # not valid: the reader leaves them to Python, which rejects them
    st.builds(
        ShareEvent,
        event_id=_id,
        type=st.just("share"),
        ts_ms=st.integers(-(2**63), 2**63 - 1),
        post_id=_id,
        user_id=_id,
    ),
)
_match = st.builds(
    MatchInfo,
    bank=_id,
    signal_type=st.just("md5"),
    signal=_hex,
    distance=st.integers(0, 31),
)
_record = st.one_of(
    st.builds(Routed, _event, _id | st.just(""), st.none() | _match),
    st.builds(ToRoute, _event),
    st.builds(Unbanked, _event),
    st.builds(Registration, _id, _id | st.just("")),
    st.builds(Forget, _id),
    st.builds(Touch, _id, st.integers(-(2**63), 2**63 - 1)),
)
_int = st.integers(-(2**63), 2**64 - 1)  # what orjson writes and reads
_json = st.recursive(
    st.none() | st.booleans() | _int | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
_routed = st.builds(Routed, _event, _id, st.none())
#: what a held event's fields may be broken into: any value, or text near a hash's base64
_held_field = (
    _json
    | st.text("AB/+=x-_", min_size=20, max_size=44)
    | st.sampled_from(
        ["AAAAAAAAAAAAAAAAAAAA/x", "A" * 43, "A" * 42 + "B", "ff" * 16, "u", "s", "t", "upload"]
    )
)
#: an item as JSON: a record the stages write (a cluster log's compact form too), one
#: written and then broken, or any value
_item = st.one_of(
    _record.map(lambda r: orjson.loads(encode(r))),
    _routed.map(lambda r: _logged(r)),
    st.tuples(_record, st.integers(0, 4), _json).map(lambda t: _broken(*t)),
    st.tuples(_routed, st.integers(0, 8), st.integers(0, 3), _held_field).map(
        lambda t: _broken_held(*t)
    ),
    st.tuples(
        st.builds(ToRoute, _event) | st.builds(Unbanked, _event), st.integers(0, 8), _held_field
    ).map(lambda t: _broken_to_route(*t)),
    st.lists(
        st.sampled_from(["s", "s2", "s3", "e", "c", "r", "f", "u", "u2", "t", "x"]) | _json,
        max_size=5,
    ),
    _json,
)


def _logged(record: Routed) -> Any:
    """``record`` as a cluster log writes it (``["c", cluster, held event]``)."""
    (part,) = routed_log_parts([record], 10**9)
    (item,) = orjson.loads(part)
    return item


def _broken_held(record: Routed, at: int, inner: int, value: object) -> Any:
    """A cluster log's item with a field of its held event (or of that event's hashes,
    ``inner``) replaced, or one added."""
    item = _logged(record)
    held = item[2]
    if at == 7 and len(held) == 8 and isinstance(held[7], list) and inner < len(held[7]):
        held[7][inner] = value
    elif at < len(held):
        held[at] = value
    else:
        held.append(value)
    return item


def _broken_to_route(record: ToRoute | Unbanked, at: int, value: object) -> Any:
    """An event to route or an unbanked upload as the resolve topic carries it (``["s2",
    form]``, ``["u2", form]``, or version 1's ``["s", event]``) with a field of its form (or
    of the event) replaced, or one added."""
    item = orjson.loads(encode(record))
    form = item[1]
    if isinstance(form, list):
        if at < len(form):
            form[at] = value
        else:
            form.append(value)
    else:
        form[sorted(form)[at % len(form)]] = value
    return item


def _broken(record: object, at: int, value: object) -> Any:
    item = orjson.loads(encode(record))
    if at < len(item):
        item[at] = value
    else:
        item.append(value)
    return item


def _partitions(value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(
        st.integers(0, 12).map(str) | st.sampled_from(["007", "-1", "a", " 1", "1.0", "+2"]),
        value,
        max_size=3,
    )


_frame = st.fixed_dictionaries(
    {"i": st.lists(_item, max_size=8)},
    optional={
        "m": _partitions(
            st.tuples(st.integers(0, 2**53), st.sampled_from([0, 1])).map(list)
            | st.lists(_int | st.booleans() | st.floats(allow_nan=False), max_size=3)
        )
        | _json,
        "p": _partitions(st.integers(0, 2**53) | st.floats(allow_nan=False) | st.booleans()),
        "w": _partitions(st.integers(0, 2**53)),
        "x": _json,
    },
)


def _opened(env: Envelope) -> Envelope:
    """``env`` with its compiled batches opened into the records they stand for."""
    return dataclasses.replace(env, items=wire_records(env.items))


def _outcome(read: Any, raw: bytes) -> Any:
    try:
        return _opened(read(raw))
    except (ValueError, TypeError) as exc:
        return (type(exc), str(exc))


def _same(raw: bytes) -> None:
    assert _outcome(Envelope.unpack, raw) == _outcome(Envelope.read_in_python, raw)
    assert decode_routed_log(raw) == routed_log_in_python(raw)


@FUZZ
@given(
    st.lists(_record, max_size=20),
    st.dictionaries(st.integers(0, 7), st.tuples(TS, st.booleans()), max_size=3),
    st.dictionaries(st.integers(0, 7), TS, max_size=3),
    st.dictionaries(st.integers(0, 7), TS, max_size=3),
)
def test_what_the_stages_write_reads_as_the_python_reader_reads_it(
    records: list[Any],
    marks: dict[int, tuple[int, bool]],
    progress: dict[int, int],
    inputs: dict[int, int],
) -> None:
    env = Envelope(records, marks, progress, inputs=inputs)
    raw = env.pack()
    read = _opened(Envelope.unpack(raw))
    assert read == Envelope.read_in_python(raw)
    assert read_envelope(raw) is not None  # read by the core, but for the items it leaves
    valid = [r for r in records if not isinstance(r, Routed) or r.match is None]
    if read.rejected == [] and len(valid) == len(records):
        assert read == env  # a round trip
    _same(encode(records))


def _fields(item: object) -> dict[str, object]:
    """Every field of a record, those left out of its equality included (``getattr`` of a
    field the core did not set raises: a slot it left empty)."""
    return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}  # type: ignore[arg-type]


@FUZZ
@given(st.lists(_record, max_size=20))
def test_the_core_s_records_have_every_field_set_as_the_python_reader_s(
    records: list[Any],
) -> None:
    """The core builds records without their ``__init__`` (``record`` in
    ``rust/python/src/lib.rs``), so a field with a default it does not set is an empty
    slot: equality left ``Touch.released`` out, and orjson's dataclass writer crashed the
    process on it (a dead-lettered touch in a cluster-log entry). Each record's fields,
    all of them, are the Python reader's, and each one can be written as JSON."""
    raw = Envelope(records).pack()
    core = wire_records(Envelope.unpack(raw).items)
    python = wire_records(Envelope.read_in_python(raw).items)
    assert [_fields(r) for r in core] == [_fields(r) for r in python]
    assert [orjson.loads(orjson.dumps(r)) for r in core] == [
        orjson.loads(orjson.dumps(r)) for r in python
    ]


@FUZZ
@given(st.lists(_record, max_size=20), st.dictionaries(st.integers(0, 7), TS, max_size=3))
def test_the_clusters_topic_s_compact_envelope_reads_as_the_full_one(
    records: list[Any], progress: dict[int, int]
) -> None:
    """The clusters topic's form (``Envelope.pack(WireVersion.V2)``: a routed event without a
    match as the cluster log keeps it) reads, by either reader, as the full form reads:
    the same items, progress and rejections' reasons (their kept bytes are the item's own)."""
    env = Envelope(records, progress=progress)
    full, compact = env.pack(), env.pack(WireVersion.V2)
    read = _opened(Envelope.unpack(compact))
    assert read == Envelope.read_in_python(compact)
    before = _opened(Envelope.unpack(full))
    assert (read.items, read.progress) == (before.items, before.progress)
    assert [x.reason for x in read.rejected] == [x.reason for x in before.rejected]
    if any(isinstance(r, Routed) and r.match is None for r in records):
        assert len(compact) < len(full)
    else:
        assert compact == full


@FUZZ
@given(_frame)
def test_any_frame_and_items_read_as_the_python_reader_reads_them(body: dict[str, Any]) -> None:
    _same(orjson.dumps(body))
    _same(orjson.dumps(body["i"]))


@FUZZ
@given(st.binary(max_size=200) | _frame.map(orjson.dumps).map(lambda b: b[: len(b) // 2]))
def test_any_bytes_read_as_the_python_reader_reads_them(raw: bytes) -> None:
    _same(raw)


@FUZZ
@given(st.lists(_routed, max_size=20), st.integers(200, 3000))
def test_a_cluster_log_s_compact_form_reads_back_as_the_events_written(
    records: list[Routed], limit: int
) -> None:
    """The cluster log's ``"c"`` items (a held event's form, hashes in base64) restore the
    records written, as the earlier ``"e"`` items do, by either reader; fewer bytes."""
    parts = routed_log_parts(records, limit)
    earlier = encode_parts(records, limit)
    back = [decode_routed_log(p) for p in parts]
    assert back == [routed_log_in_python(p) for p in parts]
    before = [decode_routed_log(p) for p in earlier]
    assert [r for routed, _ in back for r in routed] == [r for routed, _ in before for r in routed]
    assert sum(len(bad) for _, bad in back) == sum(len(bad) for _, bad in before)
    if not any(bad for _, bad in before):  # (an invalid event is refused either way)
        assert [r for routed, _ in back for r in routed] == records
    if records:
        assert sum(map(len, parts)) < sum(map(len, earlier))
    assert all(len(p) <= limit for p in parts if p.count(b'["c"') + p.count(b'["e"') > 1)


def test_a_cluster_log_keeps_an_upload_in_three_fifths_of_the_bytes() -> None:
    """The pipeline benchmark's upload: 302 bytes as ``"e"``, 175 as ``"c"``."""
    upload = ShareEvent(
        "e000b00000016",
        "upload",
        1767225600008,
        "p000b00000014",
        "u0056974",
        followers=14,
        content=Content(pdq="34da973d" * 8, pdq_quality=91, md5="47dfaa62" * 4),
    )
    routed = Routed(upload, "u-66274f729a52a47e", None)
    (compact,), (earlier,) = routed_log_parts([routed], 10**6), encode_parts([routed], 10**6)
    assert (len(compact), len(earlier)) == (175, 302)
    assert decode_routed_log(compact) == decode_routed_log(earlier) == ([routed], [])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"i":[["s",{"event_id":"e","type":"share"}]]}',  # not a valid event: rejected
        b'{"i":[["r","p1"]],"i":[["f","p2"]]}',  # a key twice: the last
        b'{"i":[],"p":{"1":4,"01":5}}',  # two keys of one partition: Python's
        b'{"i":[["f","\\ud800"]]}',  # a lone surrogate: not JSON orjson reads
        b'{"i":[["u",{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1",'
        b'"user_id":"u1","content":{"vpdq":["x"]}}]]}',  # a video's frames: Python's
        b'{"i":[["e",{"event_id":"e1","type":"share","ts":1767225600000,"post_id":"p2",'
        b'"parent_post_id":"p1","user_id":"u1"},3,17]]}',  # an earlier version's record
        b'[["c","u-1",["e1","u",1767225600000,"p1","u1",null,null,'
        b'[null,90,"AAAAAAAAAAAAAAAAAAAA/x"]]]]',  # base64 not as written: Python's
        b'[["c","u-1",["e\\u0031","s",1767225600000,"p1","u1","p0"]]]',  # an escape
        b'[["c","u-1",{"event_id":"e1","type":"share","ts":1767225600000,"post_id":"p2",'
        b'"parent_post_id":"p1","user_id":"u1"}]]',  # the canonical object: Python's
        b'[["c","u-1",["e1","upload",1767225600000,"p1","u1"]]]',  # not a type letter
    ],
)
def test_what_the_core_leaves_to_python_reads_as_before(raw: bytes) -> None:
    _same(raw)


def test_the_routed_events_of_a_cluster_share_its_id() -> None:
    """One string per cluster id in a batch: a reorder buffer holds many events of one."""
    events = [ShareEvent(f"e{i}", "share", 1767225600000, f"p{i}", "u", "p0") for i in range(3)]
    env = Envelope.unpack(Envelope([Routed(ev, "b-1") for ev in events]).pack())
    first, *rest = (item.cluster_id for item in env.items)
    assert all(c is first for c in rest)


def test_events_to_route_and_unbanked_uploads_come_compiled_in_runs() -> None:
    """A resolve partition's loop reads the events of an envelope compiled: each run of
    events to route, or of unbanked uploads, is one batch; a video's upload (its frames
    Python's) and every other record stay records, in their places."""
    ts = 1767225600000
    up = [
        ShareEvent(f"u{i}", "upload", ts, f"q{i}", "u", content=Content(md5=f"{i:032x}"))
        for i in range(3)
    ]
    share = [ShareEvent(f"e{i}", "share", ts, f"p{i}", "u", "px") for i in range(3)]
    video = ShareEvent("v", "upload", ts, "pv", "u", content=Content(vpdq=("0" * 64 + ",1,0",)))
    items = [ToRoute(share[0]), ToRoute(share[1]), Registration("p9", "b-1"), Unbanked(up[0])]
    items += [Unbanked(up[1]), ToRoute(share[2]), ToRoute(up[2]), Unbanked(video), Forget("p1")]
    raw = Envelope(items).pack()
    read = Envelope.unpack(raw)
    kinds = [(len(x), x.for_index) if type(x) is EvBatch else type(x).__name__ for x in read.items]
    assert kinds == [(2, False), "Registration", (2, True), (2, False), "Unbanked", "Forget"]
    assert wire_records(read.items) == Envelope.read_in_python(raw).items
    assert wire_records(read.items)[:7] == items[:7] and read.rejected == []


def test_the_resolve_topic_reads_either_version_and_refuses_a_later_one_saying_so() -> None:
    """The resolve topic's wire, version 2: an event to route and an unbanked upload cross
    in the held form (``["s2", form]``, ``["u2", form]``), fewer bytes than version 1's
    canonical dict (``["s", event]``, ``["u", event]``), which is still read; a later
    version's record is a ``bad_record`` that says why."""
    ev = ShareEvent("e1", "share", 1767225600000, "p2", "u1", "p1", followers=40)
    v1 = orjson.dumps({"i": [["s", ev.to_dict()]]})
    v2 = Envelope([ToRoute(ev)]).pack()
    assert v2 == b'{"i":[["s2",["e1","s",1767225600000,"p2","u1","p1",40]]]}'
    assert len(v2) < 0.6 * len(v1)
    for raw in (v1, v2):
        assert wire_records(Envelope.unpack(raw).items) == [ToRoute(ev)]
        _same(raw)
    up = ShareEvent("e2", "upload", 1767225600000, "p3", "u1", content=Content(md5="0f" * 16))
    v1 = orjson.dumps({"i": [["u", up.to_dict()]]})
    v2 = Envelope([Unbanked(up)]).pack()
    form = b'["e2","u",1767225600000,"p3","u1",null,null,[null,null,"Dw8PDw8PDw8PDw8PDw8PDw"]]'
    assert v2 == b'{"i":[["u2",' + form + b"]]}"
    assert len(v2) < 0.7 * len(v1)
    for raw in (v1, v2):
        assert wire_records(Envelope.unpack(raw).items) == [Unbanked(up)]
        _same(raw)
    later = orjson.dumps({"i": [["s3", ["e1", "s", 1767225600000, "p2", "u1", "p1"]], ["f", "p"]]})
    read = Envelope.unpack(later)
    assert read.items == [Forget("p")]
    (bad,) = read.rejected
    assert bad.reason == "bad_record"
    assert bad.detail == (
        "record 's3' is a later wire version than this worker reads (s2): upgrade it"
    )
    _same(later)


@FUZZ
@given(st.lists(_record, max_size=10))
def test_the_core_reads_every_record_the_stages_write_itself(records: list[Any]) -> None:
    """Valid events and no match: no item goes to the fallback (one that raises here)."""
    from streams import _core
    from streams.events import Rejection, parse_ts

    def fallback(text: str) -> Any:
        raise AssertionError(f"left to Python: {text}")

    classes = (ToRoute, Routed, Registration, Forget, Unbanked, Touch, ShareEvent, Content)
    reader = _core.WireReader(*classes, Rejection, parse_ts, fallback)
    raw = Envelope(records).pack()
    if Envelope.read_in_python(raw).rejected or any(
        isinstance(r, Routed) and r.match is not None for r in records
    ):
        assert reader.envelope(raw) is None  # the fallback was asked, and raised
        return
    read = reader.envelope(raw)
    assert read is not None and wire_records(read[0]) == records and read[1] == []


#: The record tags a worker of wire version 1 reads (``streams.wire`` before ``s2``, ``u2``
#: and the ``clusters`` topic's ``c``): anything else it dead-letters as ``bad_record``.
VERSION_1_TAGS = frozenset({"s", "u", "e", "r", "f", "t"})


def _read_by_version_1(raw: bytes) -> Envelope:
    """An envelope as a worker of wire version 1 reads it: by the Python decoder (which
    then read every envelope), every item's tag one it knows (else the test fails: that
    worker would have dead-lettered it)."""
    tags = {item[0] for item in orjson.loads(raw)["i"]}
    assert tags <= VERSION_1_TAGS, f"{sorted(tags - VERSION_1_TAGS)} on the wire at version 1"
    return Envelope.read_in_python(raw)


@FUZZ
@given(st.lists(_record, max_size=20), st.dictionaries(st.integers(0, 7), TS, max_size=3))
def test_a_worker_pinned_to_wire_version_1_writes_what_both_versions_read(
    records: list[Any], progress: dict[int, int]
) -> None:
    """Pinned (``VIRALWATCH_WIRE_VERSION=1``, a rolling update's first step), a worker
    writes on either topic only version 1's tags, and what it writes reads the same by
    the old decoder and by this version's compiled reader, and as the latest version's
    records read."""
    env = Envelope(records, progress=progress)
    pinned, latest = env.pack(WireVersion.V1), env.pack(WireVersion.V2)
    old = _read_by_version_1(pinned)
    new = _opened(Envelope.unpack(pinned))
    assert new == old
    was = _opened(Envelope.unpack(latest))
    assert (new.items, new.progress) == (was.items, was.progress)
    assert [x.reason for x in new.rejected] == [x.reason for x in was.rejected]
