"""The compiled writer of stage records (``_core.WireWriter``) against ``orjson``.

Envelopes and cluster-log entries are written by the core (``streams.wire.encode_parts``);
what ``orjson`` (``streams.wire.encode``) wrote before is the oracle. For any records
(any text, control characters and lone surrogates included; ``bool`` where an ``int``
goes; ``str`` subclasses; integers over 64 bits; matches; videos; items of no known
kind) and any size limit, the parts are the oracle's bytes for a run of the items each,
in order, under the limit unless one item alone is larger; and whatever the oracle
refuses (text that is not UTF-8), the core refuses with the same error.
"""

from __future__ import annotations

import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.alerts import MatchInfo
from streams.events import Content, ShareEvent
from streams.router import Routed
from streams.settings import Settings
from streams.stages import Envelope
from streams.vpdq import VpdqFrame
from streams.wire import (
    LATEST_WIRE,
    Forget,
    Registration,
    ToRoute,
    Touch,
    Unbanked,
    WireVersion,
    encode,
    encode_items,
    encode_parts,
    topic_parts,
)

EXAMPLES = int(os.environ.get("VIRALWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None)


class Text(str):
    """A ``str`` subclass: orjson writes it as a string; the core leaves it to orjson."""


_text = (
    st.text(max_size=8)
    | st.sampled_from(["", "é", '"\\', "\x00\x1f\x7f\n\t\r\b\f", "\u2028", "😀", "/", "\ud800"])
    | st.text(max_size=4).map(Text)
)
_int = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([2**64, -(2**70), True, False, 0])
_hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
_content = st.builds(
    Content,
    pdq=st.none() | _hex64 | _text,
    pdq_quality=st.none() | _int,
    md5=st.none() | _text,
    vpdq=st.none() | st.just((VpdqFrame("ab" * 32, 90, 0.5),)),
)
_event = st.builds(
    ShareEvent,
    event_id=_text,
    type=st.sampled_from(["upload", "share", "takedown"]) | _text,
    ts_ms=_int,
    post_id=_text,
    user_id=_text,
    parent_post_id=st.none() | _text,
    followers=st.none() | _int,
    content=st.none() | _content,
)
_match = st.builds(
    MatchInfo,
    bank=_text,
    signal_type=st.just("pdq"),
    signal=_hex64,
    distance=st.integers(0, 256),
    label=st.none() | _text,
    kind=st.none() | _text,
    query_match_pct=st.none() | st.floats(0, 100),
    compared_match_pct=st.none() | st.sampled_from([0, 50.5, 100.0]),
)
_item = st.one_of(
    st.builds(Routed, _event, _text, st.none() | _match),
    st.builds(ToRoute, _event),
    st.builds(Unbanked, _event),
    st.builds(Registration, _text, _text),
    st.builds(Forget, _text),
    st.builds(Touch, _text, _int),
    st.lists(st.integers(), max_size=3),  # not a record: the fallback writes it
)


def _oracle_ok(items: list[object]) -> bool:
    try:
        encode(items)
    except TypeError:
        return False
    return True


@FUZZ
@given(st.lists(_item, max_size=30), st.integers(1, 3000))
def test_parts_are_orjson_s_bytes_for_runs_of_the_items_in_order(
    items: list[object], limit: int
) -> None:
    if not _oracle_ok(items):  # a lone surrogate: orjson refuses it, and so does the core
        with pytest.raises(TypeError):
            encode_parts(items, limit)  # type: ignore[arg-type]
        return
    parts = encode_parts(items, limit)  # type: ignore[arg-type]
    runs = [orjson.loads(p) for p in parts]
    assert [x for run in runs for x in run] == orjson.loads(encode(items))
    assert len(parts) == max(1, sum(1 for r in runs if r))  # no empty part, but for none
    n = 0
    for part, run in zip(parts, runs, strict=True):
        assert part == encode(items[n : n + len(run)])  # byte for byte
        if len(part) > limit:
            assert len(run) <= 1  # an item too large goes alone
        n += len(run)
    assert encode_items(items) == encode(items)  # type: ignore[arg-type]


@FUZZ
@given(
    st.lists(_item.filter(lambda i: not isinstance(i, list)), max_size=10),
    st.dictionaries(st.integers(0, 7), st.tuples(_int, st.booleans()), max_size=3),
    st.dictionaries(st.integers(0, 7), st.integers(0, 2**40), max_size=3),
)
def test_an_envelope_packs_to_the_bytes_orjson_wrote(
    items: list[object], marks: dict[int, tuple[int, bool]], progress: dict[int, int]
) -> None:
    env = Envelope(items, marks, progress)  # type: ignore[arg-type]
    body: dict[str, object] = {"i": items}
    if marks:
        body["m"] = {str(p): [t, 1 if idle else 0] for p, (t, idle) in marks.items()}
    if progress:
        body["p"] = {str(p): t for p, t in progress.items()}
    if not _oracle_ok([body]):
        with pytest.raises(TypeError):
            env.pack()
        return
    assert env.pack() == encode(body)


def _version_1(item: object) -> object:
    """An item as a worker of wire version 1 wrote it (``encode``'s form, events to route
    and unbanked uploads as their dicts)."""
    if type(item) is ToRoute:
        return ["s", item.event]
    if type(item) is Unbanked:
        return ["u", item.event]
    return item


@FUZZ
@given(st.lists(_item, max_size=30), st.integers(1, 3000))
def test_pinned_to_wire_version_1_the_topics_get_version_1_s_bytes(
    items: list[object], limit: int
) -> None:
    """``VIRALWATCH_WIRE_VERSION=1``: every record byte for byte as a worker of version 1
    wrote it (``["s", event]``, ``["u", event]``, routed events ``["e", ...]``), any event
    (a video's, escapes, what the core leaves to the fallback), cut as the latest is."""
    oracle = [_version_1(i) for i in items]
    if not _oracle_ok(oracle):
        with pytest.raises(TypeError):
            topic_parts(items, limit, WireVersion.V1)  # type: ignore[arg-type]
        return
    parts = topic_parts(items, limit, WireVersion.V1)  # type: ignore[arg-type]
    assert parts == encode_parts(oracle, limit)  # type: ignore[arg-type]
    assert topic_parts(items, 10**9, WireVersion.V1) == [encode(oracle)]  # type: ignore[arg-type]


def test_the_topics_get_the_latest_wire_version_unless_pinned() -> None:
    """The default writes version 2 (``s2``, ``u2``, and ``c`` on ``clusters``), the pin
    version 1's tags; both settings name the same owner."""
    upload = ShareEvent("e1", "upload", 1767225600000, "p1", "u1", content=Content(md5="ab" * 16))
    share = ShareEvent("e2", "share", 1767225600000, "p2", "u1", parent_post_id="p1")
    items = [ToRoute(share), Unbanked(upload), Routed(share, "b-1", None), Forget("p0")]

    def tags(wire: WireVersion) -> list[str]:
        return [i[0] for i in orjson.loads(Envelope(items).pack(wire))["i"]]  # type: ignore[arg-type]

    assert Settings().wire_version is LATEST_WIRE is WireVersion.V2
    assert tags(Settings().wire_version) == ["s2", "u2", "c", "f"]
    pinned = Settings.from_env({"VIRALWATCH_WIRE_VERSION": "1"}).wire_version
    assert tags(pinned) == ["s", "u", "e", "f"]
    for bad in ("3", "0", "v1", "2.0"):
        with pytest.raises(ValueError, match="VIRALWATCH_WIRE_VERSION: not a wire version"):
            Settings.from_env({"VIRALWATCH_WIRE_VERSION": bad})
    with pytest.raises(ValueError, match="wire_version must be a WireVersion"):
        Settings(wire_version=1)  # type: ignore[arg-type]


def test_a_batch_of_a_backlog_is_cut_into_records_kafka_accepts() -> None:
    """A thousand routed events at once: cut as written, each part under the limit, and
    read back as the same records."""
    items = [
        Routed(ShareEvent(f"e{i}", "share", 1767225600000 + i, "p2", "u1", "p1"), "b-1", None)
        for i in range(1000)
    ]
    parts = encode_parts(items, 20_000)
    assert len(parts) > 5 and all(len(p) <= 20_000 for p in parts)
    assert [i for p in parts for i in orjson.loads(p)] == orjson.loads(encode(items))


def test_the_writer_takes_its_classes_in_one_order_or_refuses() -> None:
    from streams import _core

    classes = (Routed, ToRoute, Registration, Forget, Unbanked, Touch, ShareEvent, Content)
    # the record classes swapped: a Touch read as a Forget has no post_id, and a Forget
    # as a Touch no cluster_id; so the order the writer takes them in is the one it names
    swapped = _core.WireWriter(*classes[:3], Touch, Unbanked, Forget, *classes[6:], encode)
    with pytest.raises(AttributeError):
        swapped.parts([Touch("u-1", 5)], 1 << 20)
    right = _core.WireWriter(*classes, encode)
    assert right.parts([Touch("u-1", 5)], 1 << 20) == [b"[" + encode(Touch("u-1", 5)) + b"]"]
    with pytest.raises(TypeError, match="8 classes"):
        _core.WireWriter(*classes[:-1], encode)
    with pytest.raises(TypeError, match="8 classes"):
        _core.WireWriter(*classes[:-1], "not a class", encode)


_post_ids = st.one_of(
    st.text(max_size=20),  # lone surrogates too: the records' fallback refuses them as orjson does
    st.from_regex(r"\A[0-9]{14,21}\Z"),
    st.sampled_from(["p1", "", "é" * 30]),
)


@FUZZ
@given(st.lists(st.tuples(_post_ids, st.sampled_from(["b-1", "u-0123456789abcdef"])), max_size=30))
def test_a_batch_of_registrations_is_written_as_its_records(
    pairs: list[tuple[str, str]],
) -> None:
    """A resolve partition's registrations for a peer (``PostRoutes.take_foreign``: one
    ``RegBatch`` per partition owed any) are the bytes of their ``Registration`` records,
    whole and cut, and open (``records``) into those records."""
    from streams import _core
    from streams.wire import records

    routes = _core.PostRoutes(3, 4)
    for post, cluster in pairs:
        routes.register(post, cluster)
    for home, batch in routes.take_foreign():
        assert home != 3 and len(batch) > 0
        regs = [Registration(p, c) for p, c in batch.pairs()]
        assert records([Forget("x"), batch]) == [Forget("x"), *regs]
        try:
            expected = encode(regs)
        except orjson.JSONEncodeError:  # a lone surrogate: refused either way
            with pytest.raises(orjson.JSONEncodeError):
                encode_items([batch])
            continue
        assert encode_items([batch]) == expected
        assert encode_parts([batch, Forget("x")], 60) == encode_parts([*regs, Forget("x")], 60)
        assert Envelope([batch]).pack() == Envelope(regs).pack()
