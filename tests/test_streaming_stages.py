"""The streaming pipeline's stages without a broker: watermarks, envelopes, routing across
partitions, event-time order, recovery, and the whole topology against ``replay``."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams._core import ClusterLoop, ForgetSink
from streams.alerts import MatchInfo, Pseudonymizer
from streams.banks import BankEntry, BankUpdate, HashBanks
from streams.emerging import EmergingClusters
from streams.events import Content, Rejection, ShareEvent, event_from_dict, parse_events
from streams.pipeline import Pipeline
from streams.policy import AlertPolicy
from streams.router import Routed, Router, low_quality
from streams.runtime.local_run import LocalRun
from streams.settings import DEV_PSEUDONYM_KEY, ENV_VARS, KafkaSecurity, Settings
from streams.simulate import Scenario, Simulation, simulate, three_cascades
from streams.stages import (
    INDEX_PARTITION,
    MAX_RECORD_BYTES,
    ClusterPartition,
    Envelope,
    Ingest,
    LogCutback,
    LogLedger,
    ResolveBatch,
    ResolvePartition,
    log_parts,
    merge_resolved,
    partition_for,
    resolve_local_peers,
    split_envelope,
    split_log,
)
from streams.stats import Stats
from streams.watermarks import NO_TIME, SourceClock, Watermark
from streams.wire import (
    READER,
    Forget,
    Item,
    Registration,
    ResolveDelta,
    ToRoute,
    Touch,
    Unbanked,
    WireVersion,
    decode_delta,
    decode_routed_log,
    encode,
    encode_items,
    encode_parts,
    held_form,
    routed_log_parts,
)
from streams.wire import records as wire_records

T0 = 1_767_225_600_000
MD5 = "a" * 32
MD5B = MD5.encode()


Event = dict[str, Any]


def ev(
    eid: str, kind: str, ts: int, post: str, parent: str | None = None, **extra: object
) -> Event:
    d: dict[str, object] = {
        "event_id": eid,
        "type": kind,
        "ts": ts,
        "post_id": post,
        "user_id": "u",
    }
    if parent:
        d["parent_post_id"] = parent
    if kind == "upload":
        d["content"] = {"md5": MD5}
    d.update(extra)
    return d


def banks() -> HashBanks:
    b = HashBanks()
    b.add(BankEntry("ncii", "md5", MD5))
    return b


def cluster() -> str:
    return BankEntry("ncii", "md5", MD5).cluster_id


def share(e: Event) -> ShareEvent:
    parsed = event_from_dict(e)
    assert isinstance(parsed, ShareEvent), parsed
    return parsed


def to_route(e: Event) -> ToRoute:
    """An input event on its way to a resolve partition (ingest's record)."""
    return ToRoute(share(e))


def routed(e: Event, cluster_id: str) -> Routed:
    """An event with its cluster (resolve's record to the clusters partitions)."""
    return Routed(share(e), cluster_id)


# -- watermarks ----------------------------------------------------------------------


def test_watermark_waits_for_every_partition_then_follows_the_slowest() -> None:
    wm = Watermark(sources=3, lateness_ms=100)
    assert wm.update({0: (1_000, False), 1: (5_000, False)}) == NO_TIME
    assert wm.update({2: (3_000, False)}) == 900
    assert wm.update({0: (4_000, False)}) == 2_900  # partition 2 is now the slowest


def test_watermark_ignores_idle_partitions_and_flushes_when_all_are_idle() -> None:
    wm = Watermark(sources=2, lateness_ms=1_000)
    wm.update({0: (10_000, False), 1: (2_000, False)})
    assert wm.value == 1_000
    assert wm.update({1: (2_000, True)}) == 9_000  # partition 1 went quiet
    assert wm.update({0: (10_000, True)}) == 10_000  # input stopped: everything may go
    assert wm.update({0: (10_500, False), 1: (3_000, False)}) == 10_000  # never back


def test_a_partition_without_events_is_unknown_until_it_goes_idle() -> None:
    clock = SourceClock(idle_s=1.0)
    clock.assign([0, 1], now=0.0)
    clock.observe(0, 5_000, now=0.1)
    wm = Watermark(sources=2, lateness_ms=0)
    assert wm.update(clock.marks(now=0.5)) == NO_TIME
    assert wm.update(clock.marks(now=1.05)) == 5_000  # 1 never spoke: idle, 0 alone counts
    clock.observe(0, 6_000, now=1.2)
    assert clock.marks(now=1.3)[1] == (NO_TIME, True)
    assert clock.marks(now=1.3)[0] == (6_000, False)


def test_a_partition_its_last_reader_called_idle_is_waited_for_once_another_reads_it() -> None:
    """After a rebalance the new reader of a shares partition has read less of it than its
    last owner (from the committed offset, or nothing yet): its marks are older. Its "busy"
    holds the watermark back (the last owner's "idle" no longer does) until it is idle too."""
    wm = Watermark(sources=2, lateness_ms=1_000)
    wm.update({0: (10_000, True), 1: (4_000, False)})  # 0 idle at 10 s (its last owner)
    assert wm.value == 3_000
    new = SourceClock(idle_s=1.0, log_end=True)
    new.assign([0], now=0.0)
    assert wm.update(new.marks(now=0.1)) == 3_000  # (NO_TIME, busy): 0 holds it back again
    assert wm.update({1: (20_000, False)}) == 9_000  # at 0's last time, not 1's 19 s
    new.observe(0, 9_000, now=0.2)  # reading what its last owner read again
    new.at_end(0, as_of=1.5)
    assert new.marks(now=1.6)[0] == (9_000, True)
    assert wm.update(new.marks(now=1.6)) == 9_000  # an older "idle": not taken (a stale copy?)
    new.observe(0, 10_000, now=1.7)
    new.at_end(0, as_of=2.8)
    assert wm.update(new.marks(now=2.8)) == 19_000  # as far as its last owner: idle again


def test_a_partition_is_idle_only_after_a_recent_look_at_its_log_end() -> None:
    clock = SourceClock(idle_s=1.0, log_end=True)
    clock.assign([0, 1], now=0.0)
    clock.observe(0, 5_000, now=0.1)
    clock.at_end(1, as_of=0.2)
    assert clock.marks(now=5.0) == {0: (5_000, False), 1: (NO_TIME, False)}  # looks too old
    clock.at_end(0, as_of=4.5)
    clock.at_end(1, as_of=3.9)
    assert clock.marks(now=5.0) == {0: (5_000, True), 1: (NO_TIME, False)}
    clock.at_end(1, as_of=3.0)  # an older look changes nothing
    clock.at_end(1, as_of=4.0)
    assert clock.marks(now=5.0)[1] == (NO_TIME, True)
    clock.assign([0], now=5.0)
    clock.at_end(1, as_of=5.0)  # not ours any more
    assert list(clock.marks(now=5.5)) == [0]


def test_revoked_partitions_leave_the_clock() -> None:
    clock = SourceClock(idle_s=1.0)
    clock.assign([0, 1], now=0.0)
    clock.assign([1], now=0.5)
    assert list(clock.marks(now=0.6)) == [1]


# -- wire forms ----------------------------------------------------------------------


def test_envelope_round_trip_and_garbage() -> None:
    env = Envelope([Registration("p", "b-1")], {0: (5, True)}, {2: 7})
    assert Envelope.unpack(env.pack()) == env
    for bad in (b"", b"{", b"[1]", b'{"i": 3}', b'{"i": [], "m": {"x": [1, 0]}}', None):
        with pytest.raises(ValueError):
            Envelope.unpack(bad)


#: What the earlier code wrote: its ingest record ``["e", event, partition, offset]``, its
#: cluster-log entry (routed events) and its resolve-log delta, byte for byte.
OLD_INGEST_ENVELOPE = (
    b'{"i":[["e",{"event_id":"u","type":"upload","ts":1767225600000,"post_id":"p1",'
    b'"user_id":"u","content":{"md5":"' + MD5B + b'"}},0,17]],"m":{"0":[1767225600000,0]}}'
)
OLD_CLUSTER_LOG = (
    b'[["e",{"event_id":"s","type":"share","ts":1767225600001,"post_id":"p2","user_id":"u",'
    b'"parent_post_id":"p1"},"b-x",{"bank":"ncii","signal_type":"md5","signal":"'
    + MD5B
    + b'","distance":0}]]'
)
OLD_RESOLVE_LOG = (
    b'{"p":{"p1":"b-x"},"h+":[{"event_id":"w","type":"share","ts":1767225600002,'
    b'"post_id":"w1","user_id":"u","parent_post_id":"q1"}],"h-":[],"f":[]}'
)


def test_records_the_earlier_code_wrote_are_read() -> None:
    """A rolling update: the changelogs (and unread envelopes) an older worker wrote are
    read by this one, no version check needed (see streams.wire)."""
    (item,) = Envelope.unpack(OLD_INGEST_ENVELOPE).items
    assert isinstance(item, ToRoute) and item.event.post_id == "p1"
    detect = cluster_partition()
    assert detect.restore([OLD_CLUSTER_LOG]) == [] and detect.pending == 1
    (held,) = detect.loop.held()
    assert held.cluster_id == "b-x" and held.match is not None and held.match.bank == "ncii"
    r = resolver(0, parts=1)
    out = r.restore([OLD_RESOLVE_LOG])
    assert dict(r.posts.items()) == {"p1": "b-x"} and r.held == 1 and not out.deadletters
    # an older worker's delta naming a post (an event) twice is folded in its order, as before
    both = orjson.loads(OLD_RESOLVE_LOG)
    both.update({"f": ["p1"], "h-": ["w"]})
    r = resolver(0, parts=1)
    out = r.restore([orjson.dumps(both)])
    assert "p1" not in r.posts and r.held == 0 and not out.deadletters


_HEX = "0123456789abcdefABCDEF"
_held_events = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=6),
        "type": st.sampled_from(["upload", "share", "takedown"]),
        "ts": st.integers(T0 - 10**12, T0 + 10**12),
        "post_id": st.text(min_size=1, max_size=6),
        "user_id": st.text(min_size=1, max_size=6),
    },
    optional={
        "parent_post_id": st.text(min_size=1, max_size=6),
        "followers": st.integers(0, 2**40),
        "content": st.fixed_dictionaries(
            {},
            optional={
                "pdq": st.text(_HEX, min_size=64, max_size=64),
                "pdq_quality": st.integers(0, 100),
                "md5": st.text(_HEX, min_size=32, max_size=32),
                "vpdq": st.just(["ab" * 32 + ",90,0.500"]),
            },
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_held_events, max_size=4), st.lists(st.from_type(object), max_size=3))
def test_held_events_are_logged_compact_and_read_back_the_same(
    events: list[Event], junk: list[object]
) -> None:
    """The resolve log's compact held events (``held_parts``: hashes in base64) read back as
    the events held, whatever they hold; an older worker's canonical dicts and hex held
    forms are read too; and anything else in
    ``h+`` is a ``bad_record`` rejection, never an exception."""
    held = tuple(e for e in map(event_from_dict, events) if isinstance(e, ShareEvent))
    raw = encode(ResolveDelta(held=held))
    older = orjson.dumps({"h+": [e.to_dict() for e in held]}) if held else raw
    hex_form = orjson.dumps({"h+": [held_form(e) for e in held]})  # the hashes in hex
    for entry in (raw, older, hex_form):
        back = decode_delta(entry)
        assert isinstance(back, ResolveDelta) and back.held == held
    if held:
        assert len(raw) < len(orjson.dumps({"h+": [e.to_dict() for e in held]}))
    for x in junk:
        try:
            entry = orjson.dumps({"h+": [x]}, default=repr)
        except TypeError:  # an integer past 64 bits: no JSON a log holds
            continue
        out = decode_delta(entry)
        assert isinstance(out, Rejection) and out.reason == "bad_record"
    bad = decode_delta(orjson.dumps({"h+": [["e", "u", T0, "p", "u", None, None, ["!" * 64]]]}))
    assert isinstance(bad, Rejection) and bad.reason == "bad_record"


def test_malformed_records_are_counted_and_dead_lettered_never_a_crash() -> None:
    good = ev("u", "upload", T0, "p1")
    bad_items = [
        ["s"],  # a field short
        ["x", 1],  # no such record
        ["s", {**good, "ts": "yesterday"}],  # the event parser refuses it
        ["e", good, "b-1", {"bank": "ncii"}],  # a match without its fields
        "not an array",
    ]
    raw = orjson.dumps({"i": [*bad_items, ["s", good]], "m": {"0": [T0, 0]}})
    r = resolver(0, parts=1)
    b = r.handle([raw])
    assert [d.rejection.reason for d in b.deadletters] == ["bad_record"] * 5
    assert r.stats.rejected["bad_record"] == 5
    assert b.routed == 1  # the good item around them went on
    # a record of another stage's topic is refused there too
    detect = cluster_partition()
    batch = detect.handle([Envelope([Registration("p", "b-1")]).pack()])
    assert [x.reason for x in batch.decisions.rejections] == ["bad_record"]
    # a log entry that does not decode is dead-lettered on restore, the others folded
    assert [x.reason for x in detect.restore([b"{oops", OLD_CLUSTER_LOG])] == ["bad_record"]
    assert detect.pending == 1
    out = resolver(0, parts=1).restore([b'{"p": 3}', OLD_RESOLVE_LOG])
    assert [d.rejection.reason for d in out.deadletters] == ["bad_record"]


def test_bank_updates() -> None:
    b = HashBanks()
    key, value = BankUpdate("add", BankEntry("ncii", "md5", MD5, "label")).record()
    up = BankUpdate.parse(key, value)
    assert up.entry.label == "label" and up.apply(b) and len(b) == 1
    assert BankUpdate.parse(key, None).apply(b) and len(b) == 0  # a tombstone withdraws
    for k, v in [
        (None, b"[]"),
        (
            None,
            b'{"op": "delete", "bank": "x", "signal_type": "md5", "signal": "' + b"a" * 32 + b'"}',
        ),
        (None, b'{"op": "add", "bank": "", "signal_type": "md5", "signal": "' + MD5B + b'"}'),
        (None, b'{"op": "add", "bank": "x", "signal_type": "md5", "signal": "zz"}'),
        (b"just-a-key", None),
        (None, b"\xff"),
    ]:
        with pytest.raises(ValueError, match="bank update"):
            BankUpdate.parse(k, v)


# -- stage 1a -------------------------------------------------------------------------


def test_ingest_sends_each_event_to_the_partition_of_the_post_it_needs() -> None:
    ingest = Ingest(resolve_partitions=4, idle_s=10.0, topic="t.shares")
    records = [
        (0, 0, orjson.dumps(ev("e1", "upload", T0, "p1"))),
        (0, 1, orjson.dumps(ev("e2", "share", T0 + 1, "p2", "p1"))),
        (1, 0, orjson.dumps(ev("e3", "takedown", T0 + 2, "p2"))),
        (1, 1, b'{"event_id": "e4"}'),
    ]
    batch = ingest.handle(records, now=0.0)
    assert batch.events == 3
    where = {
        item.event.event_id: r  # type: ignore[union-attr]
        for r, raw in batch.envelopes.items()
        for item in wire_records(Envelope.unpack(raw).items)  # (compiled: an EvBatch)
    }
    assert where == {
        "e1": partition_for("p1", 4),
        "e2": partition_for("p1", 4),
        "e3": partition_for("p2", 4),
    }
    (dead,) = batch.deadletters
    assert dead.rejection.reason == "missing_field"
    assert dead.to_dict()["source"] == {"topic": "t.shares", "partition": 1, "offset": 1}
    marks = Envelope.unpack(batch.envelopes[0]).marks
    assert marks == {0: (T0 + 1, False), 1: (T0 + 2, False)}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # the input partition
            st.sampled_from(["upload", "share", "takedown", "bad"]),
            st.integers(0, 5_000),  # event time
            st.sampled_from(["p1", "p2", "p\u00e9", "q" * 30, "p\ud800"]),  # post or parent
        ),
        max_size=40,
    ),
    st.integers(1, 5),
)
def test_ingest_is_the_per_event_loop_it_replaced(
    rows: list[tuple[int, str, int, str]], parts: int
) -> None:
    """``Ingest.handle`` (one compiled call per batch) against the Python loop it replaced: each
    event in its partition's envelope in order, the same rejections with their sources, the
    same marks; any text an id (a lone surrogate is refused by the parser)."""
    records: list[tuple[int, int, bytes | None]] = []
    for i, (source, kind, dt, post) in enumerate(rows):
        if kind == "bad":
            raw: bytes | None = None if i % 2 else b"{oops"
        else:
            parent = post if kind == "share" else None
            body = ev(f"e{i}", kind, T0 + dt, f"x{i}" if parent else post, parent)
            raw = json.dumps(body).encode()  # escapes a lone surrogate, which orjson refuses
        records.append((source, i, raw))
    batch = Ingest(parts, idle_s=10.0, topic="s").handle(records, now=5.0)
    clock, want = SourceClock(10.0), [[] for _ in range(parts)]
    dead = []
    parsed = parse_events([v if v is not None else b"" for _, _, v in records])
    for (source, offset, _), x in zip(records, parsed, strict=True):
        if isinstance(x, Rejection):
            clock.observe(source, None, 5.0)
            dead.append((x.reason, x.raw, source, offset))
            continue
        clock.observe(source, x.ts_ms, 5.0)
        key = x.parent_post_id if x.type == "share" else x.post_id
        assert key is not None
        want[partition_for(key, parts)].append(ToRoute(x))
    assert [wire_records(batch.unpacked[r].items) for r in range(parts)] == want
    assert {env.marks == clock.marks(5.0) for env in batch.unpacked.values()} == {True}
    # the compiled batches are written as their records are (what a hop through Kafka sends)
    for r, env in batch.unpacked.items():
        assert env.pack() == Envelope(want[r], env.marks).pack()
    got = [
        (d.rejection.reason, d.rejection.raw, d.source.partition, d.source.offset)
        for d in batch.deadletters
        if d.source is not None
    ]
    assert got == dead and batch.events == len(records) - len(dead)


# -- stage 1b -------------------------------------------------------------------------


def resolver(
    partition: int, parts: int = 2, lateness: int = 0, hold_ms: int = 600_000, max_held: int = 1000
) -> ResolvePartition:
    return ResolvePartition(
        partition,
        partitions=parts,
        sources=1,
        banks=banks(),
        stats=Stats(),
        lateness_ms=lateness,
        hold_ms=hold_ms,
        max_held=max_held,
    )


def post_in(partition: int, parts: int = 2, prefix: str = "p") -> str:
    return next(
        f"{prefix}{i}" for i in range(1000) if partition_for(f"{prefix}{i}", parts) == partition
    )


def routed_ids(batch_envelopes: dict[int, bytes]) -> list[str]:
    return [
        i.event.event_id  # type: ignore[union-attr]
        for raw in batch_envelopes.values()
        for i in Envelope.unpack(raw).items
    ]


def test_a_reshare_of_a_reshare_waits_for_the_registration_from_another_partition() -> None:
    here, there = resolver(0), resolver(1)
    parent = post_in(0)  # a reshare whose own post lives on partition 0...
    grand = post_in(1, prefix="g")  # ...of an upload on partition 1
    child = Envelope([to_route(ev("c", "share", T0 + 20, "c1", parent))], {0: (T0 + 20, False)})
    b = here.handle([child.pack()])
    assert routed_ids(b.to_clusters) == [] and here.held == 1
    assert orjson.loads(b.delta or b"{}")["h+"][0][0] == "c"  # its event id
    # the child holds this partition's progress back: it must not be overtaken
    assert here.progress < T0 + 20
    up = Envelope(
        [
            to_route(ev("u", "upload", T0, grand)),
            to_route(ev("s", "share", T0 + 10, parent, grand)),
        ],
        {0: (T0 + 30, False)},
    )
    b2 = there.handle([up.pack()])
    assert sorted(routed_ids(b2.to_clusters)) == ["s", "u"]
    regs = Envelope.unpack(b2.to_peers[0]).items
    assert regs == [Registration(parent, cluster())]
    b3 = here.handle([b2.to_peers[0]])
    assert routed_ids(b3.to_clusters) == ["c"] and here.held == 0
    assert orjson.loads(b3.delta or b"{}")["h-"] == ["c"]


def test_a_true_orphan_stops_holding_progress_once_every_peer_has_passed_it() -> None:
    here = resolver(1)  # (partition 0 holds the index of unbanked content: see below)
    orphan = Envelope(
        [to_route(ev("o", "share", T0 + 5, "o1", post_in(1, prefix="x")))],
        {0: (T0 + 100, False)},
    )
    b = here.handle([orphan.pack()])
    assert here.progress == T0 + 4
    assert set(b.to_peers) == {0}  # told its peer how far it got
    b = here.handle([Envelope([], progress={0: T0 + 50}).pack()])
    assert here.progress == T0 + 100 and here.held == 1  # still waiting, no longer blocking


def test_a_held_reshare_outlives_the_hold_while_a_peer_that_may_register_its_parent_is_behind() -> (
    None
):
    """A backlog: this partition's input is an hour ahead of its peer's. The reshare's
    parent is routed on the peer only later; the reshare must not have expired by then."""
    here, there = resolver(0), resolver(1)
    parent, grand = post_in(0), post_in(1, prefix="g")
    hour = 3_600_000  # more than the hold (10 minutes here)
    child = Envelope([to_route(ev("c", "share", T0 + 20, "c1", parent))], {0: (T0 + hour, False)})
    b = here.handle([child.pack(), Envelope([], progress={1: T0}).pack()])
    assert here.held == 1 and not b.deadletters  # the peer is at T0: its registration may come
    up = Envelope(
        [
            to_route(ev("u", "upload", T0, grand)),
            to_route(ev("s", "share", T0 + 10, parent, grand)),
        ],
        {0: (T0 + hour, False)},
    )
    b2 = there.handle([up.pack()])
    b3 = here.handle([b2.to_peers[0]])
    assert routed_ids(b3.to_clusters) == ["c"] and here.held == 0 and not b3.deadletters
    # a true orphan still expires once every peer has passed it by the hold
    orphan = Envelope([to_route(ev("o", "share", T0 + 30, "o1", post_in(0, prefix="x")))])
    here.handle([orphan.pack()])
    later = T0 + hour + 20_000
    b4 = here.handle([Envelope([], {0: (later, False)}, {1: later}).pack()])
    assert [d.rejection.reason for d in b4.deadletters] == ["orphan_expired"]


def test_a_large_envelope_and_log_entry_are_cut_into_records_that_restore_the_same() -> None:
    """A batch of a backlog can pass Kafka's 1 MiB record limit: it is sent in parts."""
    there = resolver(1)
    ups = [to_route(ev(f"u{i}", "upload", T0 + i, post_in(1, prefix=f"g{i}-"))) for i in range(300)]
    b = there.handle([Envelope(ups, {0: (T0 + 400, False)}).pack()])
    parts = split_envelope(b.to_clusters[partition_for(cluster(), 2)], limit=8_000)
    assert len(parts) > 3 and all(len(p) <= 8_000 for p in parts)
    assert [Envelope.unpack(p).progress for p in parts][-1] == {1: T0 + 400}
    assert sum(len(Envelope.unpack(p).items) for p in parts) == 300
    # the resolve log: held then released in one batch, cut into parts, restores the same
    delta = {"p": {f"x{i}": "b-1" for i in range(500)}, "h+": [ev("w", "share", T0, "w1", "x9")]}
    delta["h-"] = ["w"]
    whole, cut = resolver(0), resolver(0)
    whole.restore([orjson.dumps(delta)])
    pieces = split_log(orjson.dumps(delta), limit=2_000)
    assert len(pieces) > 3
    cut.restore(pieces)
    assert cut.posts.items() == whole.posts.items() and cut.held == whole.held == 0


def test_a_large_index_delta_is_cut_into_entries_that_read_back_the_same() -> None:
    """The owner's compact index ("U", cut by the core at another limit) and its bound of
    clustered uploads, cut from the record and from the bytes: every entry under the
    limit, the clusters read back in their order."""
    rng = random.Random(1)
    index = EmergingClusters(idle_ms=10**9)
    for i in range(3000):
        pdq = f"{rng.getrandbits(256):064x}"
        index.assign(Content(pdq=pdq, pdq_quality=90, md5=f"{i:032x}"), ts_ms=i * 1000)
    parts, items, _ = index.log_changes(10**9)
    delta = ResolveDelta(index_log=parts, index_items=items, clustered_to=T0)
    raw = encode(delta)
    whole = decode_delta(raw)
    assert isinstance(whole, ResolveDelta) and len(whole.index) == 3000
    for entries in (split_log(raw, 20_000), log_parts(delta, 20_000)):
        assert len(entries) > 10 and all(len(e) <= 20_000 for e in entries)
        read = [decode_delta(e) for e in entries]
        assert all(isinstance(d, ResolveDelta) for d in read)
        got = [c for d in read for c in d.index.items()]  # type: ignore[union-attr]
        assert got == list(whole.index.items())
        assert [d.clustered_to for d in read if d.clustered_to is not None] == [T0]  # type: ignore[union-attr]


def test_a_large_batch_is_cut_from_its_records_as_from_its_bytes() -> None:
    """Past the record limit, the resolve log's entries and an envelope's records are cut from
    the records themselves (not read back from their bytes): the same bytes either way, and
    an envelope's input watermarks ride on its last part (they were dropped)."""
    read = [event_from_dict(ev(f"w{i}", "share", T0 + i, f"w{i}", f"x{i}")) for i in range(6_000)]
    held = tuple(e for e in read if isinstance(e, ShareEvent))
    assert len(held) == 6_000
    record = ResolveDelta(
        posts={f"p{i:06d}": f"u-{i:016x}" for i in range(12_000)}, held=held, released=("w7",)
    )
    raw = encode(record)
    assert len(raw) > MAX_RECORD_BYTES
    batch = ResolveBatch(0, 1, [[]], [[]], delta=raw, delta_record=record)
    entries = batch.log_entries()
    assert len(entries) > 1 and entries == split_log(raw)
    assert all(len(e) <= MAX_RECORD_BYTES for e in entries)
    small = ResolveBatch(0, 1, [[]], [[]], delta=b'{"h-":["w1"]}', delta_record=None)
    assert (
        small.log_entries() == [b'{"h-":["w1"]}'] and ResolveBatch(0, 1, [], []).log_entries() == []
    )
    env = Envelope(
        [Registration(f"p{i:06d}", f"u-{i:016x}") for i in range(20_000)],
        {0: (T0, False)},
        {1: T0},
        inputs={2: T0 - 5},
    )
    parts = env.parts()
    assert len(parts) > 1 and parts == split_envelope(env.pack())
    read = [Envelope.unpack(p) for p in parts]
    assert [(e.marks, e.progress, e.inputs) for e in read][-1] == (
        {0: (T0, False)},
        {1: T0},
        {2: T0 - 5},
    )
    assert all(not (e.marks or e.progress or e.inputs) for e in read[:-1])
    assert [i for e in read for i in e.items] == env.items


def test_resolve_restore_rebuilds_posts_and_held_reshares() -> None:
    first = resolver(0)
    up_post = post_in(0)
    deltas = []
    for env in (
        Envelope([to_route(ev("u", "upload", T0, up_post))], {0: (T0, False)}),
        Envelope([to_route(ev("w", "share", T0 + 3, "w1", post_in(0, prefix="q")))]),
    ):
        b = first.handle([env.pack()])
        if b.delta:
            deltas.append(b.delta)
    again = resolver(0)
    out = again.restore(deltas)
    assert routed_ids(out.to_clusters) == [] and again.held == 1
    assert again.posts.items() == first.posts.items()
    # a redelivered copy of the held reshare is held once, not twice
    again.handle(
        [Envelope([to_route(ev("w", "share", T0 + 3, "w1", post_in(0, prefix="q")))]).pack()]
    )
    assert again.held == 1 and again.router.held == 1
    # and the upload's reshares still find their cluster
    b = again.handle([Envelope([to_route(ev("s", "share", T0 + 9, "s1", up_post))]).pack()])
    (item,) = [i for raw in b.to_clusters.values() for i in Envelope.unpack(raw).items]
    assert isinstance(item, Routed) and item.cluster_id == cluster()


def test_a_resolve_snapshot_restores_what_every_delta_before_it_restores() -> None:
    first = resolver(0)
    up_post, gone = post_in(0), post_in(0, prefix="g")
    deltas = []
    for env in (
        Envelope([to_route(ev("u", "upload", T0, up_post))], {0: (T0, False)}),
        Envelope([to_route(ev("g", "upload", T0 + 1, gone))]),
        Envelope([to_route(ev("w", "share", T0 + 3, "w1", post_in(0, prefix="q")))]),
        Envelope([Forget(gone), to_route(ev("s", "share", T0 + 4, "s1", up_post))]),
    ):
        b = first.handle([env.pack()])
        if b.delta:
            deltas.append(b.delta)
    from_deltas, from_snapshot, both = resolver(0), resolver(0), resolver(0)
    from_deltas.restore(deltas)
    from_snapshot.restore(first.snapshot())
    both.restore([*deltas, *first.snapshot()])  # a crash before the old deltas were deleted
    for again in (from_deltas, from_snapshot, both):
        assert again.posts.items() == first.posts.items() and gone not in again.posts
        assert again.held == first.held == 1
    assert sum(map(len, first.snapshot())) < sum(len(d) for d in deltas)


def test_register_releases_exactly_what_waited() -> None:
    r = resolver(0, parts=1)
    r.handle(
        [
            Envelope(
                [
                    to_route(ev("c", "share", T0, "c1", "p1")),
                    to_route(ev("t", "takedown", T0 + 1, "p1")),
                ]
            ).pack()
        ]
    )
    assert r.router.held == r.held == 2
    batch = r.handle([Envelope([Registration("p1", "b-x")])])
    released = [x.event.event_id for x in wire_records(batch.clusters[0])]
    assert released == ["c", "t"]  # in the order held
    assert r.router.held == r.held == 0 and r.posts["p1"] == "b-x" and r.posts["c1"] == "b-x"
    assert batch.delta_record is not None and batch.delta_record.released == ("c", "t")


_POSTS = ["p0", "p1", "p\u00e9", "p4", "p5", "q\u00e9"]  # three of each of 2 partitions
_MD5S = [MD5, "b" * 32, "c" * 32]


def _resolve_items(draw: Any, partition: int, marks: bool = False) -> list[Item | bytes]:
    """Items resolve partition ``partition`` (of 2) may read, and records that are not
    envelopes: an event's, a registration's and a forgotten post's keys are its own posts.
    ``marks``: envelopes of event-time marks and the peer's progress and input watermark
    too (so that the index's owner clusters the unbanked uploads they pass)."""
    ours = [p for p in _POSTS if partition_for(p, 2) == partition]
    out: list[Item | bytes] = []
    kinds = ["upload", "share", "takedown", "reg", "forget", "unbanked", "touch", "junk", "again"]
    for i in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(kinds + ["mark"] * (3 if marks else 0)))
        eid = f"e{i}"  # one event an id; a redelivery repeats an item ("again")
        post, other = draw(st.sampled_from(ours)), draw(st.sampled_from(ours))
        ts = T0 + draw(st.integers(0, 60_000))
        if kind == "upload":
            md5 = draw(st.sampled_from(_MD5S))
            out.append(to_route(ev(eid, "upload", ts, post, content={"md5": md5})))
        elif kind == "share":
            out.append(to_route(ev(eid, "share", ts, f"s{i}", other)))
        elif kind == "takedown":
            out.append(to_route(ev(eid, "takedown", ts, post)))
        elif kind == "reg":
            out.append(Registration(post, draw(st.sampled_from([cluster(), "u-1", "u-2"]))))
        elif kind == "forget":
            out.append(Forget(post))
        elif kind == "unbanked":
            md5 = draw(st.sampled_from(_MD5S[1:]))
            event = share(ev(f"x{eid}", "upload", ts, f"x{post}", content={"md5": md5}))
            out.append(Unbanked(event))
        elif kind == "touch":
            out.append(Touch("u-1", ts))
        elif kind == "again" and out:
            out.append(out[draw(st.integers(0, len(out) - 1))])
        elif kind == "junk":
            out.append(b"{oops")
        elif kind == "mark":
            peer = 1 - partition
            out.append(Envelope([], {0: (ts, False)}, {peer: ts}, inputs={peer: ts}).pack())
    return out


def _resolved(partition: int, records: list[bytes], cuts: list[int]) -> tuple[Any, ...]:
    """What a resolve partition made of ``records`` handed over in batches of ``cuts`` sizes,
    then marks that pass every event: routed, dead letters, peers' items, what it holds and
    maps. (Its log read back: the test after the next.)"""
    r = resolver(partition, hold_ms=30_000, max_held=6)
    batches, i = [], 0
    for n in cuts:
        if i < len(records):
            batches.append(r.handle(records[i : i + n]))
            i += n
    if i < len(records):
        batches.append(r.handle(records[i:]))
    batches.append(r.handle([Envelope([], {0: (T0 + 200_000, False)}).pack()]))
    routed = [
        (x.event.event_id, x.cluster_id, k)
        for b in batches
        for k, xs in enumerate(b.clusters)
        for x in wire_records(xs)
    ]
    dead = [
        (d.rejection.reason, d.rejection.event_id, d.stage) for b in batches for d in b.deadletters
    ]
    peers = [
        encode(x) for b in batches for p in b.peers for x in wire_records(p) if type(x) is not Touch
    ]
    touched: dict[str, int] = {}  # one Touch a cluster a batch: its latest time
    for x in (x for b in batches for p in b.peers for x in p if type(x) is Touch):
        assert isinstance(x, Touch)
        touched[x.cluster_id] = max(x.ts_ms, touched.get(x.cluster_id, x.ts_ms))
    for b in batches:
        for entry in b.log_entries():  # every entry reads back
            assert isinstance(decode_delta(entry), ResolveDelta)
    held = sorted(x.event.event_id for x in wire_records([r.loop.held_events()]))
    assert len(held) == r.held
    posts = sorted(r.posts.items())
    return sorted(routed), sorted(dead), sorted(peers), touched, held, posts


@settings(max_examples=50, deadline=None)
@given(st.data(), st.integers(0, 1), st.lists(st.integers(1, 6), max_size=12))
def test_a_resolve_partition_gives_the_same_whatever_its_batches(
    data: Any, partition: int, cuts: list[int]
) -> None:
    """The compiled loop (``ResolveLoop``) over any items, redelivered ones, refusals past
    ``max_held``, records that are not envelopes: never an exception, and the same events
    routed, dead letters, registrations, posts and held events whether handed over at once
    or in batches."""
    items = data.draw(st.composite(lambda draw: _resolve_items(draw, partition))())
    records = [x if isinstance(x, bytes) else Envelope([x]).pack() for x in items]
    whole = _resolved(partition, records, [len(records) or 1])
    assert _resolved(partition, records, cuts) == whole
    routed = whole[0]
    assert all(c.startswith(("b-", "u-", "a-")) for _, c, _ in routed)


def _held_state(r: ResolvePartition) -> tuple[Any, ...]:
    """What a resolve partition's log must give back: its posts, the events it holds (whole),
    and the index of unbanked content (the owner's)."""
    events = [x.event for x in wire_records([r.loop.held_events()])]
    held = sorted((e.event_id, encode(e)) for e in events)
    assert len(held) == len({e.event_id for e in events}) == r.held
    index = None if r.index is None else sorted(r.index.snapshot().items())
    return sorted(r.posts.items()), held, index


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(0, 1), st.lists(st.integers(1, 6), max_size=12))
def test_a_resolve_log_read_back_after_any_batch_gives_the_live_partition(
    data: Any, partition: int, cuts: list[int]
) -> None:
    """A worker restarted after any batch that a checkpoint began after restores, from the
    log entries written so far, the posts, held events and index the partition held:
    whatever the batch did, a post forgotten then mapped again (an evicted cluster's upload
    redelivered), an event released then held again; at the index's owner, the uploads it
    clustered (named by a bound) and the index (compact). Restarted where no checkpoint
    began, it lacks only the unbanked uploads the owner was handed since the last began
    and holds still (logged as one begins, :meth:`ResolvePartition.seal`): their input is
    committed only by a later checkpoint, so a replacement reads it again."""
    items = data.draw(st.composite(lambda draw: _resolve_items(draw, partition, True))())
    records = [x if isinstance(x, bytes) else Envelope([x]).pack() for x in items]
    live = resolver(partition, hold_ms=30_000, max_held=6)
    log: list[bytes] = []
    i = 0
    for n in [*cuts, len(records)]:
        if i >= len(records):
            break
        log += live.handle(records[i : i + n]).log_entries()
        i += n
        again = resolver(partition, hold_ms=30_000, max_held=6)
        again.restore(log)
        posts, held, index = _held_state(live)
        if not data.draw(st.booleans(), label="a checkpoint begins"):
            got = _held_state(again)
            assert (got[0], got[2]) == (posts, index)
            missing = set(held) - set(got[1])
            assert set(got[1]) <= set(held)
            assert all(orjson.loads(e)["type"] == "upload" for _, e in missing)
            assert partition == INDEX_PARTITION or not missing
        log += live.seal()[0]
        again = resolver(partition, hold_ms=30_000, max_held=6)
        again.restore(log)
        assert _held_state(again) == _held_state(live)
        # the same log as an older worker wrote it (the index as "u": hex, whole times)
        older = resolver(partition, hold_ms=30_000, max_held=6)
        older.restore(map(_index_as_older_wrote_it, log))
        assert _held_state(older) == _held_state(live)


def _index_as_older_wrote_it(entry: bytes) -> bytes:
    """A resolve-log entry with its compact index (``"U"``) in the earlier form (``"u"``)."""
    body = orjson.loads(entry)
    if "U" not in body:
        return entry
    d = decode_delta(entry)
    assert isinstance(d, ResolveDelta)
    del body["U"]
    body["u"] = {c: [ts, list(signals)] for c, (ts, signals) in d.index.items()}
    return orjson.dumps(body)


def test_a_post_forgotten_then_mapped_again_and_an_event_released_then_held_again_read_back() -> (
    None
):
    """The two orders of one batch the log's form once read back wrong."""
    post, parent = post_in(0, parts=1), "q0"
    reshare = to_route(ev("w", "share", T0 + 3, "w1", parent))
    live = resolver(0, parts=1)
    first = [to_route(ev("u", "upload", T0, post)), Registration("v1", "b-1"), reshare]
    entries = live.handle([Envelope(first).pack()]).log_entries()
    # the post's cluster evicted (forgotten), its upload redelivered (mapped again); another
    # post forgotten and mapped to another cluster; the held reshare released by its
    # parent's registration, the parent forgotten, the reshare redelivered (held again)
    batch = live.handle(
        [
            Envelope(
                [
                    Forget(post),
                    to_route(ev("u", "upload", T0, post)),
                    Forget("v1"),
                    Registration("v1", "b-2"),
                    Registration(parent, "b-x"),
                    Forget(parent),
                    reshare,
                ]
            ).pack()
        ]
    )
    entries += batch.log_entries()
    assert post in live.posts and live.posts["v1"] == "b-2" and live.held == 1
    again = resolver(0, parts=1)
    again.restore(entries)
    assert _held_state(again) == _held_state(live)


# -- stage 2 --------------------------------------------------------------------------


def cluster_partition() -> ClusterPartition:
    return cluster_partition_with(idle_ms=3_600_000)


def cluster_partition_with(idle_ms: int) -> ClusterPartition:
    return ClusterPartition(
        0,
        partitions=1,
        sources=1,
        policy=AlertPolicy.default(),
        stats=Stats(),
        pseudonymizer=Pseudonymizer(b"k"),
        idle_ms=idle_ms,
    )


def routed_env(events: list[Event], progress: int | None = None) -> bytes:
    items = [routed(e, cluster()) for e in events]
    return Envelope(items, progress={0: progress} if progress is not None else {}).pack()


def burst(n: int, start: int = T0) -> list[Event]:
    out = [ev("u", "upload", start, "root")]
    out += [ev(f"s{i:03d}", "share", start + 1000 * (i + 1), f"r{i}", "root") for i in range(n)]
    return out


def test_events_are_applied_in_event_time_order_whatever_the_arrival_order() -> None:
    events = burst(30)
    in_order, shuffled = cluster_partition(), cluster_partition()
    a = in_order.handle([routed_env(events, progress=T0 + 40_000)])
    mixed = events[::-1]
    b1 = shuffled.handle([routed_env(mixed[:15], progress=T0)])
    b2 = shuffled.handle([routed_env(mixed[15:], progress=T0 + 40_000)])
    assert [x.to_json() for x in a.decisions.alerts] == [
        x.to_json() for x in b1.decisions.alerts + b2.decisions.alerts
    ]
    assert a.decisions.alerts[0].severity == "warning"


def test_nothing_is_applied_before_the_watermark_and_late_events_are_applied_at_once() -> None:
    cp = cluster_partition()
    b = cp.handle([routed_env(burst(30)[:20])])  # no progress from the resolve partition yet
    assert b.applied == 0 and cp.pending == 20
    b = cp.handle([routed_env([], progress=T0 + 10_000)])
    assert b.applied == 11
    b = cp.handle([routed_env([ev("late", "share", T0 + 500, "l1", "root")])])
    assert b.applied == 1  # behind what was applied: applied now, not held


def test_a_burst_held_before_the_watermark_is_known_fires_early_once_it_is() -> None:
    # a worker starting: the whole burst comes before any resolve partition's progress
    cp = cluster_partition()
    b = cp.handle([routed_env(burst(30))])
    assert b.decisions.alerts == [] and cp.pending == 31
    # progress heard, far behind the crossing (the 25th share): proved by the events held,
    # so it goes out now, not an allowed lateness later when the watermark passes it
    b = cp.handle([routed_env([], progress=T0)])
    [early] = b.decisions.alerts
    assert early.to_dict()["provisional"] is True
    # replay's alert: the same id, at the same crossing
    [replayed] = cluster_partition().handle([routed_env(burst(30), T0 + 40_000)]).decisions.alerts
    assert (early.alert_id, early.severity, early.ts_ms) == (
        replayed.alert_id,
        "warning",
        replayed.ts_ms,
    )
    # the watermark path reaches it: the same alert, not sent again
    b = cp.handle([routed_env([], progress=T0 + 40_000)])
    assert b.decisions.alerts == [] and cp.pending == 0


def test_cluster_restore_gives_the_same_decisions() -> None:
    events = burst(40)
    whole = cluster_partition()
    logs = []
    out = []
    for chunk in (events[:25], events[25:]):
        b = whole.handle([routed_env(chunk, progress=chunk[-1]["ts"])])
        out += [a.to_json() for a in b.decisions.alerts]
        if b.log:
            logs += b.log
    again = cluster_partition()
    again.restore(logs)
    b = again.handle([routed_env([], progress=events[-1]["ts"])])
    assert [a.to_json() for a in b.decisions.alerts] == out and out


def test_a_clusters_partition_counts_low_quality_and_allowed_uploads_once_received_new() -> None:
    """``low_quality`` and ``allowed`` are counted where ``unmatched_uploads`` is: an upload
    received new (neither held nor applied), once, with the batch's log (``count_uploads``
    when the entries are written), whether it came read from the topic or handed over as a
    record, however often it comes; a resolve partition's router counts neither (it classifies
    an upload each time its input is read)."""
    low = {"md5": "1" * 32, "pdq": "0f" * 32, "pdq_quality": 10}
    video = {"vpdq": ["0f" * 32 + ",10,0.0"]}  # its one frame under the cut: Python's rule
    fine = {"md5": "2" * 32, "pdq": "f0" * 32, "pdq_quality": 90}
    events = [
        ev("up-low", "upload", T0, "p1", content=low),
        ev("up-video", "upload", T0 + 1, "p2", content=video),
        ev("up-fine", "upload", T0 + 2, "p3", content=fine),
        ev("up-allowed", "upload", T0 + 3, "p4", content=fine),
    ]
    labels = ["u-" + "a" * 32, "u-" + "b" * 32, "u-" + "c" * 32, "a-1"]
    items = [routed(e, c) for e, c in zip(events, labels, strict=True)]
    cp = cluster_partition()
    counted: list[tuple[int, list[str], int, int]] = []
    for records in (
        [Envelope(items, progress={0: T0}).pack()],  # read from the topic
        [Envelope(items[::-1], progress={0: T0 + 5})],  # again, handed over: held already
    ):
        b = cp.handle(records)
        if b.uploads is not None:
            counted.append(b.uploads)
    b = cp.handle([routed_env([], progress=T0 + 120_000)])  # the lateness passed: applied
    assert cp.detector.unbanked_store.live_events == 4
    assert b.uploads is None
    b = cp.handle([Envelope(items, progress={0: T0 + 120_001}).pack()])  # applied already
    assert b.uploads is None
    assert counted == [(4, [], 2, 1)]
    for uploads in counted:
        cp.count_uploads(*uploads)
    s = cp.stats
    assert (s.unmatched_uploads, s.low_quality, s.allowed) == (4, 2, 1)
    assert low_quality(share(events[1]).content)  # type: ignore[arg-type]


def test_no_router_counts_an_upload_where_it_classifies_it() -> None:
    """A resolve partition classifies an upload each time its input is read (again after a
    kill), replay's router each time a line comes (the simulator delivers some twice): no
    router counts ``low_quality`` or ``allowed``; its clusters partition counts them once
    as received new (above), replay once as applied new."""
    content = {"md5": "1" * 32, "pdq": "0f" * 32, "pdq_quality": 10}
    low = ev("up-low", "upload", T0, "p1", content=content)
    r = resolver(0, parts=1)
    for _ in range(2):  # read again
        r.handle([Envelope([to_route(low)]).pack()])
    assert (r.stats.low_quality, r.stats.allowed) == (0, 0)
    router = Router(banks(), Stats())
    assert router.classify_batch([share(low)]) == [None]
    assert router.stats.low_quality == 0
    pipe = Pipeline(banks(), AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"k"))
    line = json.dumps(low).encode()
    pipe.feed_many([line, line])  # delivered twice
    pipe.finish()
    s = pipe.stats
    assert (s.unmatched_uploads, s.low_quality, s.duplicates) == (1, 1, 1)


def _clusters_records(draw: Any) -> list[bytes]:
    """Records of a clusters partition's topic: routed events of banked (one with its
    bank's match), allow-listed and unbanked clusters, redelivered ones, progress, items
    that are not records or not routed events, records that are not envelopes, and bytes
    of a good record cut or changed anywhere."""
    n = draw(st.integers(0, 40))
    events = burst(n)
    labels = st.sampled_from([cluster(), "u-" + "c" * 32, "a-1", "b-other"])
    out: list[bytes] = []
    i = 0
    while i < len(events):
        k = draw(st.integers(1, 8))
        items: list[Any] = []
        for e in events[i : i + k]:
            r = routed(e, draw(labels))
            if draw(st.integers(0, 9)) == 0 and e["type"] == "upload":
                r = Routed(r.event, cluster(), MatchInfo("ncii", "md5", MD5, 0))
            items.append(r)
        if draw(st.booleans()):
            items.insert(draw(st.integers(0, len(items))), Registration("p", "b-1"))
        progress = draw(st.one_of(st.none(), st.integers(T0, T0 + 60_000)))
        env = Envelope(items, progress={0: progress} if progress is not None else {})
        raw = env.pack(draw(st.sampled_from(WireVersion)))  # the topic's form, either version
        if draw(st.integers(0, 9)) == 0:  # an item that is not a record
            raw = raw.replace(b'["e",', b'["e"', 1).replace(b'["c",', b'["c"', 1)
        if draw(st.integers(0, 9)) == 0:
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(st.binary(max_size=3)) + raw[at + 1 :]
        out.append(raw)
        if draw(st.integers(0, 5)) == 0:
            out.append(draw(st.sampled_from([b"{oops", b"", b'{"i": 3}', raw])))
        i += k
    return out


def _detected(records: list[bytes | Envelope], cuts: list[int]) -> tuple[Any, ...]:
    """What a clusters partition made of ``records`` handed over in batches of ``cuts``
    (the rest at once), then a mark past every event: alerts, rejections, the events
    applied and their log entries (as bytes, and read back)."""
    cp = cluster_partition()
    batches, i = [], 0
    for n in cuts:
        if i >= len(records):
            break
        batches.append(cp.handle(records[i : i + n]))
        i += n
    batches.append(cp.handle(records[i:]))
    batches.append(cp.handle([routed_env([], progress=T0 + 10_000_000)]))
    alerts = [a.to_json() for b in batches for a in b.decisions.alerts]
    rejected = [(x.reason, x.detail, x.raw) for b in batches for x in b.decisions.rejections]
    log = [entry for b in batches for entry in b.log]
    read = [decode_routed_log(entry) for entry in log]
    assert sum(b.log_items for b in batches) == sum(len(r) for r, _ in read)
    return alerts, rejected, sum(b.applied for b in batches), log, read, dict(cp.stats.rejected)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.lists(st.integers(1, 4), max_size=8))
def test_a_clusters_partition_reads_its_records_as_the_records_handed_over_give(
    data: Any, cuts: list[int]
) -> None:
    """The compiled loop reads a record of the topic itself (``ClusterLoop.read``: no
    ``Routed`` made but for banked clusters', logged as it came): any bytes give the same
    alerts, rejections, events applied and log entries, byte for byte, as the records
    read first and handed over in-process (the records' way), whatever the batches;
    never an exception."""
    records = data.draw(st.composite(_clusters_records)())
    as_read = _detected(list(records), cuts)
    handed: list[bytes | Envelope] = []
    for raw in records:
        try:
            handed.append(Envelope.unpack(raw))
        except ValueError:
            handed.append(raw)  # not an envelope: dead-lettered either way
    assert as_read == _detected(handed, cuts)


@settings(max_examples=40, deadline=None)
@given(st.data(), st.lists(st.integers(1, 4), max_size=8))
def test_a_clusters_partition_reads_the_topic_s_compact_form_as_the_full_one(
    data: Any, cuts: list[int]
) -> None:
    """A worker sends routed events to the clusters topic as the cluster log keeps them
    (``Envelope.pack(WireVersion.V2)``: no field names, hashes in base64): a clusters
    partition makes of them what it made of the full form, the same alerts, rejections,
    events applied and log entries byte for byte, from fewer bytes."""
    events = burst(data.draw(st.integers(1, 40)))
    labels = st.sampled_from([cluster(), "u-" + "c" * 32, "a-1", "b-other"])
    envs, i = [], 0
    while i < len(events):
        k = data.draw(st.integers(1, 8))
        items: list[Any] = []
        for e in events[i : i + k]:
            r = routed(e, data.draw(labels))
            if data.draw(st.integers(0, 9)) == 0 and e["type"] == "upload":
                r = Routed(r.event, cluster(), MatchInfo("ncii", "md5", MD5, 0))
            items.append(r)
        progress = data.draw(st.one_of(st.none(), st.integers(T0, T0 + 60_000)))
        envs.append(Envelope(items, progress={0: progress} if progress is not None else {}))
        i += k
    full = [env.pack() for env in envs]
    compact = [env.pack(WireVersion.V2) for env in envs]
    assert _detected(list(compact), cuts) == _detected(list(full), cuts)
    assert sum(map(len, compact)) < sum(map(len, full))


def test_a_compact_envelope_is_cut_by_the_bytes_it_writes() -> None:
    """A batch too large for one record, sent in the clusters topic's compact form, is cut
    by the compact bytes (``Envelope.cut``), not the full form's: each part under the
    limit, each but the last too full for the next item, fewer parts than the full form's
    runs made, read back as the items in order, the progress on the last part only."""
    items: list[Item] = [routed(e, cluster()) for e in burst(400)]
    env = Envelope(items, progress={0: T0})
    limit = 6_000
    parts = env.cut(limit, WireVersion.V2)
    read = [Envelope.unpack(p) for p in parts]
    assert [r for e in read for r in wire_records(e.items)] == items
    assert [e.progress for e in read] == [{}] * (len(parts) - 1) + [{0: T0}]
    assert all(len(p) <= limit for p in parts)
    tail = len(b',"p":{"0":%d}}' % T0)
    for part, after in zip(parts, read[1:], strict=False):
        following = len(encode_items(wire_records(after.items)[:1], WireVersion.V2)) - 2
        assert len(part) - 1 + 1 + following + tail > limit  # the next item did not fit
    sized_by_the_full_form = env.cut(limit, WireVersion.V1)  # as the runs were sized before
    assert len(parts) < 0.75 * len(sized_by_the_full_form)


def test_a_routed_event_read_from_its_record_is_logged_compact() -> None:
    """An event read from the topic is logged in the cluster log's compact form, as one
    handed over in-process is: the bytes ``routed_log_parts`` writes for its record, a
    large batch cut as it cuts it (a third fewer than the record's own), and only a
    banked cluster's event is given to Python's detector."""
    events = burst(300)
    items = [routed(e, cluster() if i % 2 else "u-" + "c" * 32) for i, e in enumerate(events)]
    cp = cluster_partition()
    expected: list[Routed] = []
    cp.detector.expect_many = expected.extend  # type: ignore[method-assign]
    b = cp.handle([Envelope(items).pack()])
    assert b.log == routed_log_parts(items, MAX_RECORD_BYTES) and b.log_items == len(items)
    assert sum(map(len, b.log)) < 0.7 * sum(map(len, encode_parts(items, MAX_RECORD_BYTES)))
    assert expected == [r for r in items if r.cluster_id.startswith("b-")]
    # the clusters topic's own form (the log's): logged as it came, the same bytes
    again = cluster_partition()
    compact = Envelope(items).pack(WireVersion.V2)
    assert len(compact) < 0.7 * len(Envelope(items).pack())
    c = again.handle([compact])
    assert c.log == b.log and c.log_items == len(items)
    # cut into parts under the limit, each event whole, as routed_log_parts cuts them
    det = cluster_partition().detector
    store, content = det.unbanked_store, det.content
    loop = ClusterLoop(
        store,
        content.held_signals,
        det.clusters,
        Routed,
        ForgetSink(1),
        0,
        content.view,
        READER,
        2_000,
    )
    assert loop.read(Envelope(items).pack()) is not None
    assert loop.take_log() == routed_log_parts(items, 2_000) and loop.take_log() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=30), st.integers(1, 6))
def test_the_forget_sink_writes_what_envelopes_of_forgets_pack_to(
    posts: list[str], partitions: int
) -> None:
    """The compiled clusters partition writes the posts of the clusters it evicts for their
    resolve partitions itself: the bytes ``Envelope([Forget(post), ...]).pack()`` writes,
    one envelope per partition, the posts in the order given (any text, escapes too)."""
    sink = ForgetSink(partitions)
    sink.extend(posts)
    want: dict[int, list[Item]] = {}
    for post in posts:
        want.setdefault(partition_for(post, partitions), []).append(Forget(post))
    assert sink.take() == {k: Envelope(items).pack() for k, items in want.items()}
    assert len(sink) == 0 and sink.take() == {}


def test_an_evicted_unbanked_cluster_has_its_posts_forgotten_by_their_partitions() -> None:
    """Unbanked clusters live in the compiled store: idle an hour of event time, they are
    evicted there and their posts go to their resolve partitions as Forget records, with
    a banked cluster's posts (Python's) after them."""
    part = ClusterPartition(
        0,
        partitions=4,
        sources=1,
        policy=AlertPolicy.default(),
        stats=Stats(),
        pseudonymizer=Pseudonymizer(b"k"),
        idle_ms=3_600_000,
    )
    up = [routed(ev(f"e{i}", "upload", T0 + i, f"p{i}"), f"u-{i % 3}") for i in range(9)]
    banked = [routed(ev("b0", "upload", T0 + 20, "q0"), "b-1")]
    first = part.handle([Envelope([*up, *banked], progress={0: T0 + 100}).pack()])
    assert not first.forget and first.applied == 10
    later = routed(ev("z", "upload", T0 + 7_300_000, "z1"), "u-9")
    b = part.handle([Envelope([later], progress={0: T0 + 7_300_000}).pack()])
    forgotten: dict[int, list[str]] = {}
    for r, raw in b.forget.items():
        assert all(type(i) is Forget for i in Envelope.unpack(raw).items)
        forgotten[r] = [i.post_id for i in Envelope.unpack(raw).items]  # type: ignore[union-attr]
    want: dict[int, list[str]] = {}
    for post in [f"p{i}" for i in (0, 3, 6, 1, 4, 7, 2, 5, 8)] + ["q0"]:
        want.setdefault(partition_for(post, 4), []).append(post)
    assert forgotten == want
    assert part.detector.cluster_count == 1 and part.stats.clusters_evicted == 4


def test_a_compacted_cluster_log_restores_the_clusters_still_held() -> None:
    """The log keeps the events of clusters in memory and those not applied yet, once each."""
    hour = 3_600_000

    def items(events: list[Event], cluster_id: str) -> list[Item]:
        return [routed(e, cluster_id) for e in events]

    old = burst(30)  # crosses the rule at T0, then idle: evicted an hour later
    new = burst(30, start=T0 + 2 * hour)
    for e in new:
        e["event_id"] += "-new"
    waiting = ev("later", "share", T0 + 3 * hour, "x9", "root")
    live = cluster_partition()
    logs: list[bytes] = []
    out: list[bytes] = []
    for chunk, progress in (
        (items(old, "b-old"), T0 + 40_000),
        (items(old[:5], "b-old"), T0 + 40_000),  # redelivered
        (items(new[:20], "b-new"), T0 + 2 * hour + 20_000),
        (items([waiting], "b-new"), T0 + 2 * hour + 20_000),  # ahead of the watermark
    ):
        b = live.handle([Envelope(chunk, progress={0: progress}).pack()])
        out += [a.to_json() for a in b.decisions.alerts]
        if b.log:
            logs += b.log
    assert "b-old" not in live.detector.clusters and live.pending == 1
    kept = [item for x in live.compact(logs) for item in orjson.loads(x)]
    assert {i[0] for i in kept} == {"c"}  # compact: ["c", cluster, held event]
    assert sorted(i[2][0] for i in kept) == sorted([e["event_id"] for e in new[:20]] + ["later"])
    rest = Envelope(items(new[20:], "b-new"), progress={0: T0 + 3 * hour}).pack()
    expected = live.handle([rest])
    for log_entries in (logs, live.compact(logs), [*logs, *live.compact(logs)]):
        again = cluster_partition()
        again.restore(log_entries)
        again.handle([Envelope([], progress={0: T0 + 2 * hour + 20_000}).pack()])
        b = again.handle([rest])
        assert [a.to_json() for a in b.decisions.alerts] == [
            a.to_json() for a in expected.decisions.alerts
        ]
        assert again.detector.clusters.keys() == live.detector.clusters.keys() == {"b-new"}
        st, live_st = again.detector.clusters["b-new"], live.detector.clusters["b-new"]
        assert st.event_ids == live_st.event_ids and st.fired == live_st.fired
    assert out and expected.decisions.alerts


@pytest.mark.parametrize("counted", [True, False], ids=["garbage-counted", "bytes-only"])
def test_a_compacted_cluster_log_levels_off_while_clusters_come_and_go(counted: bool) -> None:
    """Six hours of event time, a new cluster every minute, each idle after five: the log,
    compacted by the ledger's rule, stays near the live state instead of growing with
    all traffic; and a replacement restored from it holds the live clusters. The rule
    counts garbage when the stage says what it holds (``live_items``), else bytes."""
    minute, idle = 60_000, 30 * 60_000
    live = cluster_partition_with(idle)
    ledger = LogLedger(min_bytes=20_000)
    holds = (lambda: live.live_items) if counted else (lambda: None)
    logs: list[bytes] = []
    written = 0
    sizes = []
    compactions = 0
    for m in range(6 * 60):
        start = T0 + m * minute
        events = burst(20, start=start)[:6]  # an upload and five reshares, 1 s apart
        for e in events:
            e["event_id"] += f"-{m}"
        items = [routed(e, f"b-{m}") for e in events]
        b = live.handle([Envelope(items, progress={0: start + 10_000}).pack()])
        assert len(b.log) == 1 and b.log_items == len(items)
        logs += b.log
        ledger.wrote(f"0:{m}".encode(), len(b.log[0]), b.log_items)
        written += len(b.log[0])
        if ledger.due(holds()):
            snapshot = live.compact(logs)
            ledger.start()
            for i, part in enumerate(snapshot):
                ledger.wrote(f"0:{m}s{i}".encode(), len(part))
            ledger.done(holds())
            logs = snapshot
            compactions += 1
            if counted:  # each compaction at least halved the log
                kept = sum(len(orjson.loads(x)) for x in snapshot)
                assert kept == live.live_items
        sizes.append(ledger.size)
    assert compactions >= 3
    assert ledger.size == sum(len(x) for x in logs)
    # the clusters of the last half hour (idle_ms) or so are live; the log holds about
    # twice that at most, while everything written is twelve times that
    assert max(sizes[-120:]) < written / 4
    assert max(sizes[-120:]) <= 1.2 * max(sizes[120:240])  # level, not climbing
    again = cluster_partition_with(idle)
    again.restore(logs)
    again.handle([Envelope([], progress={0: start + 10_000}).pack()])  # where live stands
    assert again.detector.clusters.keys() == live.detector.clusters.keys()
    assert 25 <= len(live.detector.clusters) <= 40


def test_a_log_whose_events_are_all_live_is_not_compacted_again_and_again() -> None:
    """While no cluster is evicted (a cluster lives an hour of event time by default), a
    compaction would keep every event: the bytes-only rule still rewrote the whole log
    each time it doubled. Counting garbage, the log is left alone until evictions make
    half of it garbage, then compacted once, to what is live."""
    minute, idle = 60_000, 90 * 60_000
    live = cluster_partition_with(idle)
    counted, by_bytes = LogLedger(min_bytes=5_000), LogLedger(min_bytes=5_000)
    due_counted = due_bytes = 0
    for m in range(3 * 60):
        start = T0 + m * minute
        events = burst(20, start=start)[:6]
        for e in events:
            e["event_id"] += f"-{m}"
        b = live.handle(
            [Envelope([routed(e, f"b-{m}") for e in events], progress={0: start + 10_000}).pack()]
        )
        assert len(b.log) == 1
        for ledger in (counted, by_bytes):
            ledger.wrote(f"0:{m}".encode(), len(b.log[0]), b.log_items)
        if by_bytes.due():
            due_bytes += 1
            everything = by_bytes.size
            by_bytes.start()
            by_bytes.wrote(b"s", everything)  # nothing was garbage: it kept it all
            by_bytes.done()
        if counted.due(live.live_items):
            due_counted += 1
            assert m >= 90 + 45  # not before evictions (after 90 min) made half garbage
            assert 2 * live.live_items <= counted.kept_items + counted.items  # type: ignore[operator]
            counted.start()
            counted.wrote(b"s", 1)
            counted.done(live.live_items)
    assert due_bytes >= 4  # the old rule: the whole log again, each time it doubled
    assert due_counted == 1


def test_a_cluster_log_cut_back_a_slice_per_batch_loses_nothing_at_any_point() -> None:
    """The worker compacts stage 2's log a slice per batch (``LogCutback``), with batches
    still written meanwhile. A replacement restored from the log as it stands after any
    batch (a crash mid-compaction) holds the live clusters; each event is kept once, a
    redelivered batch included; and the log still levels off."""
    minute, idle = 60_000, 30 * 60_000
    live = cluster_partition_with(idle)
    ledger = LogLedger(min_bytes=12_000)  # 20,000 before the compact form
    table: dict[bytes, bytes] = {}
    stamp = iter(range(10**9))
    cut: LogCutback | None = None
    cutbacks = checked = 0
    sizes = []
    compacted: list[bytes] = []

    def write(parts: list[bytes]) -> None:
        for part in parts:
            key = f"0:{next(stamp):09d}".encode()
            table[key] = part
            ledger.wrote(key, len(part))

    for m in range(4 * 60):
        start = T0 + m * minute
        events = burst(20, start=start)[:6]
        for e in events:
            e["event_id"] += f"-{m}"
        items = [routed(e, f"b-{m}") for e in events]
        if m == 10:  # far ahead of event time: pending through many cut-backs
            items.append(routed(ev("far", "upload", T0 + 200 * minute, "far1"), "b-far"))
        # the last two reshares wait for the next batch's progress: pending when compacted
        envelope = Envelope(items, {}, {0: start + 3_500})
        for _ in range(2 if m % 7 == 0 else 1):  # now and then a batch is delivered twice
            b = live.handle([envelope.pack()])
            assert b.log
            write(b.log)
        if cut is None and ledger.due():
            cut = LogCutback(ledger.start())
        if cut is not None:
            parts = live.compact(cut.next_slice(table.get, budget=3_000), cut.seen)
            write(parts)
            compacted += parts
            if cut.finished:
                ledger.done()
                for key in cut.old:
                    del table[key]
                cut, cutbacks = None, cutbacks + 1
                kept = [r.event.event_id for part in compacted for r in decode_routed_log(part)[0]]
                assert len(kept) == len(set(kept))  # what a cut-back keeps, it keeps once
                compacted = []
        if m % 23 == 0 or (cut is not None and m % 3 == 0):
            again = cluster_partition_with(idle)
            again.restore(table[k] for k in sorted(table))
            again.handle([Envelope([], progress={0: start + 3_500}).pack()])
            assert again.detector.clusters.keys() == live.detector.clusters.keys()
            assert again.loop.keys() == live.loop.keys()
            assert len(live.loop.keys()) == 2 + (10 <= m < 200)
            assert all(
                again.detector.clusters[c].event_ids == st.event_ids
                for c, st in live.detector.clusters.items()
            )
            checked += cut is not None
        sizes.append(sum(map(len, table.values())))
    assert cutbacks >= 5 and checked >= 5  # several, and restores in the middle of them
    assert max(sizes[-60:]) <= 1.3 * max(sizes[60:120])  # level, not climbing


# -- the whole topology against replay ------------------------------------------------------


def replay_alerts(
    lines: list[bytes], bank: HashBanks, idle_ms: int = 3_600_000, lateness_ms: int = 60_000
) -> tuple[list[bytes], int]:
    pipe = Pipeline(
        bank,
        AlertPolicy.default(),
        pseudonymizer=Pseudonymizer(DEV_PSEUDONYM_KEY),
        idle_ms=idle_ms,
        lateness_ms=lateness_ms,
    )
    for line in lines:
        pipe.feed(line)
    decisions = pipe.finish()
    return sorted(
        a.to_json() for a in decisions.alerts if a.ts_ms <= pipe.max_ts_ms
    ), pipe.max_ts_ms


def bank_of(entries: list[BankEntry]) -> HashBanks:
    b = HashBanks()
    for e in entries:
        b.add(e)
    return b


def local_run(sim: Simulation, *, key: str = "none", **settings: Any) -> LocalRun:
    """The streaming topology in memory (:class:`LocalRun`) run on ``sim``'s lines as the
    tests hold it against :func:`replay_alerts`: ``sim``'s bank, the default policy and the
    dev pseudonym key, ``settings`` as :class:`LocalRun` takes them, ``key`` as its
    :meth:`~LocalRun.run` does."""
    return LocalRun(
        bank_of(sim.bank), AlertPolicy.default(), Pseudonymizer(DEV_PSEUDONYM_KEY), **settings
    ).run(sim.lines, key=key)


def assert_replay_alert_records(
    records: list[bytes], expected: list[bytes], in_time: list[bytes] | None = None
) -> None:
    """Alert records as sent (a LocalRun's, or read from the alerts topic) against replay's.

    The same (id, status) pairs, each once. One sent when the watermark reached it is
    replay's byte for byte; one sent before (``"provisional": true``, its figures as of what
    had been seen) is replay's cluster, episode and severity, firing, for a share no earlier
    in event time than replay's crossing (it cannot prove a crossing replay has not made),
    sent while the watermark (``as_of``) was behind that share.

    ``in_time``: the alerts of replay with every event in time (an allowed lateness longer
    than any delay in the input), for input with events later than the allowed lateness.
    Replay counts such an event when it reads it, after the rule may have been evaluated
    at its time; a worker whose watermark lagged (partitions that moved) applies it in
    time, and its early firing may then come at the crossing in event time, which is the
    in-time replay's: an early firing is then checked against the earlier of the two, and
    one sent at the watermark may be either replay's bytes."""
    want = {(d["alert_id"], d["status"]): (d, raw) for raw in expected for d in [orjson.loads(raw)]}
    truth = {
        (d["alert_id"], d["status"]): (d["ts"], raw)
        for raw in in_time or []
        for d in [orjson.loads(raw)]
    }
    got = [(orjson.loads(raw), raw) for raw in records]
    pairs = Counter((d["alert_id"], d["status"]) for d, _ in got)
    twice = [pair for pair, n in pairs.items() if n > 1]
    assert not twice, f"{len(twice)} alerts sent twice, e.g. {twice[:1]}"
    missing, extra = want.keys() - pairs.keys(), pairs.keys() - want.keys()
    assert not missing and not extra, f"{len(missing)} missing, {len(extra)} unexpected alerts"
    for d, raw in got:
        ref, ref_raw = want[(d["alert_id"], d["status"])]
        late_ts, late_raw = truth.get((d["alert_id"], d["status"]), (ref["ts"], ref_raw))
        if not d.get("provisional"):
            assert raw in (ref_raw, late_raw)
            continue
        assert d["status"] == "firing" and d["reason"] == "velocity"
        assert [d[k] for k in ("cluster_id", "episode", "severity")] == [
            ref[k] for k in ("cluster_id", "episode", "severity")
        ]
        crossing = min(ref["ts"], late_ts)
        assert d["ts"] >= crossing and ref["ts"] >= d["first_seen"] and d["as_of"] < d["ts"]


def assert_replay_alerts(run: LocalRun, expected: list[bytes]) -> None:
    """A LocalRun's alerts are replay's (:func:`assert_replay_alert_records`), those it says it
    sent early are the provisional ones, and each firing is counted once."""
    assert_replay_alert_records(list(run.alerts.values()), expected)
    assert run.resent == []
    assert run.early == {k for k, raw in run.alerts.items() if b'"provisional":true' in raw}
    firing = sum(n for (_, status), n in run.stats.alerts.items() if status == "firing")
    assert firing == sum(orjson.loads(raw)["status"] == "firing" for raw in expected)


IN_TIME = dict(  # the acceptance traffic, with every event inside the allowed lateness
    background_per_minute=20.0,
    critical_banked=0,
    high_banked=1,
    warning_banked=0,
    slow_banked=1,
    quiet_banked=0,
    fast_unbanked=1,
    md5_banked=0,
    very_late=0,
    orphans=2,
    cycles=1,
    malformed_per_kind=1,
    extra_bank_entries=50,
    late_fraction=0.0,
)


@pytest.mark.parametrize(
    ("seed", "partitions", "keying"),
    [(0, 4, "none"), (1, 4, "post"), (2, 3, "none"), (3, 1, "post"), (4, 8, "post")],
)
def test_local_topology_gives_the_replay_alerts(seed: int, partitions: int, keying: str) -> None:
    """At the default allowed lateness (60 s), the crossings go out before the watermark
    reaches them; ids and statuses are replay's, and the rest byte for byte."""
    sim = simulate(Scenario(seed=7, **IN_TIME))  # type: ignore[arg-type]
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank))
    run = local_run(sim, key=keying, partitions=partitions, seed=seed)
    assert expected
    assert_replay_alerts(run, expected)
    assert run.early  # each sent while the watermark ("as_of") was behind its share ("ts")
    reasons = sorted(d.rejection.reason for d in run.deadletters if d.stage == "parse")
    assert reasons == sorted(sim.truth["malformed"])  # each bad line dead-lettered, once


@pytest.mark.parametrize(("seed", "rounds"), [(1, 4), (5, 4), (9, 1), (11, 1)])
def test_registrations_handed_straight_to_peers_give_the_replay_alerts(
    seed: int, rounds: int
) -> None:
    """A worker holding several resolve partitions hands registrations and progress to
    its own peers at once, and the copies still arrive through the topic later. With
    one round, answers to answers go through the topic alone, and must be handed over
    first the next time (or a peer learns progress before a registration sent before it)."""
    sim = simulate(Scenario(seed=7, **IN_TIME))  # type: ignore[arg-type]
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank))
    # no allowed lateness: a reshare a hop late would change what is applied when
    run: dict[str, Any] = dict(seed=seed, lateness_ms=0)
    short = local_run(sim, local_peers=True, local_rounds=rounds, **run)
    assert expected
    assert_replay_alerts(short, expected)
    through_kafka = local_run(sim, **run)
    quick, slow = short.stats.summary(), through_kafka.stats.summary()
    del quick["held"], slow["held"]  # how many reshares waited for a parent differs
    assert quick == slow  # everything else is counted the same


@pytest.mark.parametrize(
    ("seed", "hops"),
    [(0, "clusters"), (1, "clusters"), (2, "resolve"), (3, "resolve"), (4, "both"), (5, "both")],
)
def test_envelopes_handed_straight_to_the_next_stage_give_the_replay_alerts(
    seed: int, hops: str
) -> None:
    """A worker hands ingest's and resolve's envelopes to the partitions of the next stage
    it holds in-process, but through the topic alone during the grace after an
    assignment: what went that way and is unread is handed over first, or a partition
    would learn a source's progress before events sent before it (with no allowed
    lateness, they would then come late and change what is applied when)."""
    sim = simulate(Scenario(seed=7, **IN_TIME))  # type: ignore[arg-type]
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank))
    short = local_run(
        sim,
        seed=seed,
        lateness_ms=0,
        local_peers=hops == "both",
        local_resolve=hops != "clusters",
        local_clusters=hops != "resolve",
    )
    assert expected
    assert_replay_alerts(short, expected)
    assert short.stats.late == 0
    # the copies of what was handed over while unread are skipped: no event comes twice
    # but those the input repeats
    assert short.stats.duplicates <= sim.truth["duplicates"]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_topology_pinned_to_wire_version_1_gives_the_replay_alerts(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling update's first step (``VIRALWATCH_WIRE_VERSION=1``): every record on the
    ``resolve`` and ``clusters`` topics is one a worker of version 1 reads (its tags, and
    no item it would dead-letter), and the alerts are replay's. Unpinned, the same run's
    topics carry the latest version's records (both read by this version)."""
    sim = simulate(Scenario(seed=7, **IN_TIME))  # type: ignore[arg-type]
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank))
    sent: list[bytes] = []
    pack = Envelope.pack

    def recorded(env: Envelope, wire: WireVersion | None = None) -> bytes:
        raw = pack(env, wire)
        sent.append(raw)
        return raw

    monkeypatch.setattr(Envelope, "pack", recorded)
    tags: dict[WireVersion, set[str]] = {}
    for wire in WireVersion:
        sent.clear()
        run = local_run(sim, seed=seed, local_resolve=True, local_clusters=True, wire=wire)
        assert_replay_alerts(run, expected)
        assert not [d for d in run.deadletters if d.stage != "parse"]
        tags[wire] = {item[0] for raw in sent for item in orjson.loads(raw)["i"]}
    assert {"s", "u", "e"} <= tags[WireVersion.V1] <= {"s", "u", "e", "r", "f", "t"}
    assert {"s2", "u2", "c"} <= tags[WireVersion.V2] and "s" not in tags[WireVersion.V2]


def test_with_late_events_the_same_alerts_fire() -> None:
    """Replay applies an event later than the lateness at once, out of order; the stream,
    whose watermark follows the slowest partition, may still apply it in order. The same
    alerts fire (ids, severities, statuses); their figures can differ by those events."""
    sim = three_cascades(seed=7)
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank))
    run = local_run(sim, seed=6)

    def ids(rows: list[bytes]) -> list[tuple[str, str, str]]:
        return sorted((d["alert_id"], d["status"], d["severity"]) for d in map(orjson.loads, rows))

    assert ids(list(run.alerts.values())) == ids(expected)


# -- settings -------------------------------------------------------------------------


def test_settings_from_environment_and_flags() -> None:
    env = {
        "VIRALWATCH_BROKER": "kafka://h:1",
        "VIRALWATCH_BANKS": "a.csv:b.csv",
        "VIRALWATCH_PARTITION_IDLE": "500ms",
        "VIRALWATCH_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "VIRALWATCH_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "VIRALWATCH_KAFKA_SASL_USERNAME": "svc",
        "VIRALWATCH_KAFKA_SASL_PASSWORD": "s3cret",
        "VIRALWATCH_PSEUDONYM_KEY": "k",
    }
    s = Settings.from_env(env, partitions=2, broker=None)
    assert s.broker == "kafka://h:1" and s.partitions == 2 and s.partition_idle_s == 0.5
    assert [p.name for p in s.bank_files] == ["a.csv", "b.csv"]
    kafka_python, aiokafka = s.security.kafka_python_config(), s.security.aiokafka_config()
    sasl = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "s3cret",
    }
    # both clients name the protocol and SASL alike; TLS: files for one, a context for the other
    assert kafka_python == sasl | {"ssl_cafile": None, "ssl_certfile": None, "ssl_keyfile": None}
    assert aiokafka.keys() == sasl.keys() | {"ssl_context"}
    assert {k: aiokafka[k] for k in sasl} == sasl
    assert "s3cret" not in repr(s) and s.pseudonym_key == b"k" and not s.uses_dev_key
    assert s.bootstrap == ["h:1"]


def test_the_environment_of_a_settings_object_gives_it_back_but_its_secrets() -> None:
    """Workers started by the demo, tests and benchmarks get every setting, not some."""
    changed = Settings(
        broker="kafka://h:1",
        topic_prefix="x.",
        app_id="a",
        partitions=3,
        replicas=2,
        bank_files=(Path("a.csv"), Path("b.csv")),
        policy_file=Path("p.toml"),
        lateness_ms=5,
        hold_ms=6,
        max_held=7,
        idle_ms=8,
        partition_idle_s=0.5,
        batch_size=9,
        batch_wait_s=0.02,
        session_timeout_s=7.0,
        heartbeat_s=0.5,
        http_host="0.0.0.0",
        http_port=2,
        alertmanager_url="http://am",
        webhook_url="http://hook",
        data_dir=Path("/d"),
        local_broker=True,
        log_level="INFO",
        pseudonym_key=b"secret",
    )
    env = changed.to_env()
    assert "VIRALWATCH_PSEUDONYM_KEY" not in env
    assert Settings.from_env(env) == changed.with_(pseudonym_key=Settings().pseudonym_key)


def test_the_readme_documents_every_setting_with_the_code_default() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = {
        cell.strip("` "): line.split("|")[2].strip()
        for line in readme.splitlines()
        if line.startswith("| `VIRALWATCH_")
        for cell in line.split("|")[1].split(",")
    }
    assert set(ENV_VARS) <= set(rows), sorted(set(ENV_VARS) - set(rows))
    d = Settings()
    assert rows["VIRALWATCH_PARTITIONS"] == str(d.partitions)
    assert rows["VIRALWATCH_BATCH_SIZE"] == str(d.batch_size)
    assert rows["VIRALWATCH_BATCH_WAIT"] == f"{d.batch_wait_s:g}"
    assert rows["VIRALWATCH_PRODUCER_LINGER"] == f"{d.linger_s:g}"
    assert rows["VIRALWATCH_LOG_COMPACT_GARBAGE"] == f"{d.log_compact_garbage:g}"
    assert rows["VIRALWATCH_ALERTMANAGER_REPOST"] == f"{d.alertmanager_repost_s:g}"
    assert rows["VIRALWATCH_PARTITION_IDLE"] == f"{d.partition_idle_s:g}"
    assert rows["VIRALWATCH_MAX_HELD"] == str(d.max_held)
    assert rows["VIRALWATCH_MAX_PENDING"] == str(d.max_pending)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VIRALWATCH_BROKER": "http://x:1"}, "scheme"),
        ({"VIRALWATCH_LATENESS": "soon"}, "VIRALWATCH_LATENESS"),
        ({"VIRALWATCH_TOPIC_PREFIX": "a b"}, "topic_prefix"),
        ({"VIRALWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL mechanism"),
        ({"VIRALWATCH_SESSION_TIMEOUT": "1", "VIRALWATCH_HEARTBEAT": "2"}, "session_timeout"),
    ],
)
def test_bad_settings_say_why(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_plaintext_security_has_no_tls_context() -> None:
    assert KafkaSecurity().ssl_context() is None
    assert KafkaSecurity("SSL").ssl_context() is not None


def test_the_worker_producer_lingers_as_the_settings_say(tmp_path: Path) -> None:
    """Every stage hands records on through the producer: its linger is the setting's."""
    from streams.banks import HashBanks
    from streams.policy import AlertPolicy
    from streams.runtime.worker import Worker

    for linger in (Settings().linger_s, 0.0, 0.02):
        s = Settings(broker="kafka://127.0.0.1:9", data_dir=tmp_path, linger_s=linger)
        w = Worker(s, banks=HashBanks(), policy=AlertPolicy.default())
        assert w.app.conf.producer_linger == linger
        # a state-log part fits one batch, and a batch fits the broker's default limit
        assert MAX_RECORD_BYTES <= w.app.conf.producer_max_batch_size < 1024 * 1024
    env = {"VIRALWATCH_BROKER": "kafka://127.0.0.1:9", "VIRALWATCH_PRODUCER_LINGER": "20ms"}
    assert Settings.from_env(env).linger_s == 0.02
    with pytest.raises(ValueError, match="linger_s"):
        Settings(linger_s=-1)


def test_the_state_logs_changelogs_are_defined_once(tmp_path: Path) -> None:
    """The topics the worker creates before Faust starts are the ones its tables log to,
    with the same configs: whichever creates a changelog first creates the same topic."""
    from streams.banks import HashBanks
    from streams.policy import AlertPolicy
    from streams.runtime.worker import Worker

    s = Settings(
        broker="kafka://127.0.0.1:9", data_dir=tmp_path, app_id="vw", changelog_config="a=1"
    )
    w = Worker(s, banks=HashBanks(), policy=AlertPolicy.default())
    tables = {
        t.changelog_topic.get_topic_name(): dict(t.extra_topic_configs)
        for t in (w.resolve_log, w.cluster_log)
    }
    assert tables == s.state_log_changelogs()
    assert set(tables) == {"vw-resolve-log-changelog", "vw-cluster-log-changelog"}
    assert all(c == {"cleanup.policy": "compact", "a": "1"} for c in tables.values())


def test_the_alertmanager_repost_interval_is_a_setting() -> None:
    """Operators whose Alertmanager resolves sooner or later can change the re-post."""
    assert Settings().alertmanager_repost_s == 60.0
    env = {"VIRALWATCH_ALERTMANAGER_REPOST": "15s"}
    assert Settings.from_env(env).alertmanager_repost_s == 15.0
    assert (
        Settings.from_env(Settings(alertmanager_repost_s=30).to_env()).alertmanager_repost_s == 30
    )
    for bad in (0, -1):
        with pytest.raises(ValueError, match="alertmanager_repost_s"):
            Settings(alertmanager_repost_s=bad)


def test_the_garbage_share_that_makes_a_log_due_is_a_setting() -> None:
    """0 lets the bytes alone decide (what tests of compaction in short runs use)."""
    assert Settings.from_env({"VIRALWATCH_LOG_COMPACT_GARBAGE": "0"}).log_compact_garbage == 0
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="log_compact_garbage"):
            Settings(log_compact_garbage=bad)
    ledger = LogLedger(min_bytes=10, garbage=0.0)
    ledger.wrote(b"0:1", 10, items=3)
    assert ledger.due(live=3)  # nothing is garbage, and still due: the bytes decide
    half = LogLedger(min_bytes=10, garbage=0.5)
    half.wrote(b"0:1", 10, items=3)
    assert not half.due(live=3) and not half.due(live=2) and half.due(live=1)
    with pytest.raises(ValueError):
        LogLedger(min_bytes=10, garbage=1.0)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(50, 700))
def test_compiled_batches_handed_over_are_their_records(parts: int, batch: int) -> None:
    """Ingest's and resolve's events stay compiled in-process (``EvBatch``): a clusters
    partition handed them logs the bytes, counts the events and decides what it would
    given their records, or the bytes a hop through Kafka carries; and each envelope's
    bytes are its records' (whatever the batch size)."""
    sim = simulate(Scenario(seed=3, **IN_TIME))  # type: ignore[arg-type]
    stats = Stats()
    ingest = Ingest(parts, idle_s=30.0, stats=stats)
    resolvers = {
        r: ResolvePartition(
            r,
            partitions=parts,
            sources=parts,
            banks=bank_of(sim.bank),
            stats=stats,
            lateness_ms=60_000,
            hold_ms=600_000,
            max_held=10_000,
        )
        for r in range(parts)
    }
    ways = ("batches", "records", "bytes")
    clusters = {
        (way, k): ClusterPartition(
            k,
            partitions=parts,
            sources=parts,
            policy=AlertPolicy.default(),
            stats=Stats(),
            pseudonymizer=Pseudonymizer(b"k"),
        )
        for way in ways
        for k in range(parts)
    }
    logs: dict[str, list[bytes]] = {way: [] for way in ways}
    counted: dict[str, int] = dict.fromkeys(ways, 0)
    alerts: dict[str, list[Any]] = {way: [] for way in ways}
    compiled = 0
    lines = sim.lines
    for start in range(0, len(lines), batch):
        chunk = [(i % parts, i, lines[i]) for i in range(start, min(start + batch, len(lines)))]
        made = ingest.handle(chunk, now=float(start))
        for env in made.unpacked.values():
            assert env.pack() == Envelope(wire_records(env.items), env.marks).pack()
        first = [resolvers[r].handle([env]) for r, env in made.unpacked.items()]
        peers, _ = resolve_local_peers(resolvers, first, 4)
        to_clusters, _ = merge_resolved(first + peers)
        for k, env in sorted(to_clusters.items()):
            compiled += sum(len(x) for x in env.items if not isinstance(x, Routed))
            as_records = Envelope(wire_records(env.items), progress=env.progress)
            assert env.pack() == as_records.pack()
            for way, sent in zip(ways, (env, as_records, env.pack()), strict=True):
                got = clusters[way, k].handle([sent])
                logs[way] += got.log
                counted[way] += got.log_items
                alerts[way] += got.decisions.alerts
    assert compiled > len(lines) // 2  # most events crossed compiled
    read = {way: [i for raw in logs[way] for i in orjson.loads(raw)] for way in ways}
    assert read["batches"] == read["records"] == read["bytes"]
    assert counted["batches"] == counted["records"] == counted["bytes"] == len(read["bytes"])
    assert alerts["batches"] == alerts["records"] == alerts["bytes"]
