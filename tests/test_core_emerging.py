"""Unbanked clusters at the index's owner (``streams.emerging.EmergingClusters``, whose
per-upload work is the compiled core's ``_core.IdleClusters``) against a simple Python
oracle: the class as it was in Python (an ``OrderedDict`` idle order, a dict of changes)
over the same :class:`ContentIndex`.

Any sequence of uploads (shared MD5s, near and far PDQs, flat ones, none), touches (of
clusters held or not), expiries, takes of the changes and log folds gives the oracle's
clusters, idle order, evictions and changes.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import OrderedDict

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams._core import unbanked_id
from streams.emerging import (
    EMERGING_PDQ_THRESHOLD,
    ContentIndex,
    EmergingClusters,
    signal_of,
    unbanked_cluster_id,
)
from streams.events import Content, Rejection
from streams.vpdq import canonical_vpdq
from streams.wire import ResolveDelta, decode_delta

EXAMPLES = int(os.environ.get("VIRALWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None)


class Oracle:
    """``EmergingClusters`` as it was in Python."""

    def __init__(self, idle_ms: int) -> None:
        self.idle_ms = idle_ms
        self.index = ContentIndex(videos=True)
        self.last: OrderedDict[str, int] = OrderedDict()
        self.joined = 0
        self.changed: dict[str, list[str]] = {}
        self.evicted: list[str] = []

    def assign(self, content: Content, ts: int) -> str:
        near = self.index.find(content, EMERGING_PDQ_THRESHOLD)
        cid = near if near is not None else unbanked_cluster_id(content)
        if near is not None and near != unbanked_cluster_id(content):
            self.joined += 1
        new = self.index.add_signals(cid, self.index.signals_of(content))
        self.touch(cid, ts)
        if new:
            self.changed[cid] += new
        return cid

    def touch(self, cid: str, ts: int) -> None:
        if cid not in self.index:
            return
        last = self.last.get(cid)
        self.last[cid] = ts if last is None else max(last, ts)
        self.last.move_to_end(cid)
        self.changed[cid] = self.changed.pop(cid, [])

    def expire(self, watermark: int) -> list[str]:
        out = []
        while self.last:
            cid, last = next(iter(self.last.items()))
            if last > watermark - self.idle_ms:
                break
            del self.last[cid]
            self.index.drop(cid)
            self.changed.pop(cid, None)
            self.evicted.append(cid)
            out.append(cid)
        return out

    def take_changes(self) -> tuple[dict[str, tuple[int, tuple[str, ...]]], tuple[str, ...]]:
        changed = {cid: (self.last[cid], tuple(new)) for cid, new in self.changed.items()}
        evicted = tuple(self.evicted)
        self.changed, self.evicted = {}, []
        return changed, evicted


def content_of(rng: random.Random, bases: list[int], kind: int) -> Content:
    md5 = f"{rng.choice(range(6)):032x}"
    flips = 0
    for _ in range(rng.choice([0, 3, 20, 40])):
        flips ^= 1 << rng.randrange(256)  # a bit flipped (twice: back), within 256 bits
    pdq = f"{rng.choice(bases) ^ flips:064x}"
    return [
        Content(md5=md5),
        Content(pdq=pdq, pdq_quality=90),
        Content(pdq=pdq, pdq_quality=90, md5=md5),
        Content(pdq=pdq.upper(), pdq_quality=90),
        Content(pdq=pdq, pdq_quality=10),  # a flat one: no signal
    ][kind]


@FUZZ
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(
        st.tuples(st.sampled_from(["up", "touch", "expire", "take"]), st.integers(0, 4)),
        max_size=80,
    ),
)
def test_emerging_clusters_answer_as_the_python_class_did(
    seed: int, ops: list[tuple[str, int]]
) -> None:
    rng = random.Random(seed)
    bases = [rng.getrandbits(256) for _ in range(3)]
    core, oracle = EmergingClusters(idle_ms=50), Oracle(idle_ms=50)
    # the same, whose changes are taken in the owner's log form (the compact "U")
    logged = EmergingClusters(idle_ms=50)
    limit = rng.choice([60, 200, 10**6])
    ts = 0
    seen: list[str] = ["u-nothing"]
    for op, arg in ops:
        ts += rng.randrange(0, 20)
        if op == "up":
            c = content_of(rng, bases, arg)
            got = core.assign(c, ts)
            assert got == oracle.assign(c, ts) == logged.assign(c, ts)
            seen.append(got)
        elif op == "touch":
            cid, t = rng.choice(seen), ts - rng.randrange(0, 40)
            core.touch(cid, t)
            oracle.touch(cid, t)
            logged.touch(cid, t)
        elif op == "expire":
            assert core.expire(ts) == oracle.expire(ts) == logged.expire(ts)
        else:
            changes = core.take_changes()
            assert changes == oracle.take_changes()
            assert read_log(*logged.log_changes(limit), limit) == changes
        assert len(core) == len(oracle.last) and core.joined == oracle.joined
    assert list(core.snapshot()) == list(oracle.last)
    assert {c: last for c, (last, _) in core.snapshot().items()} == dict(oracle.last)
    assert read_log(*logged.log_changes(limit), limit) == core.take_changes()
    parts, items = logged.snapshot_log(limit)
    assert read_log(parts, items, (), limit) == (core.snapshot(), ())
    # what the log says folds back into the same clusters and idle order
    again = EmergingClusters(idle_ms=50)
    again.fold(core.snapshot())
    assert again.snapshot() == core.snapshot()
    assert again.expire(ts + 10) == core.expire(ts + 10)
    assert {c: [signal_of(t) for t in s] for c, (_, s) in again.snapshot().items()} == {
        c: [signal_of(t) for t in s] for c, (_, s) in core.snapshot().items()
    }


def read_log(
    parts: tuple[bytes, ...], items: int, evicted: tuple[str, ...], limit: int
) -> tuple[dict[str, tuple[int, tuple[str, ...]]], tuple[str, ...]]:
    """The owner's compact index changes read back as the resolve log reads them (each part
    its own entry, as a large delta is cut), in :meth:`EmergingClusters.take_changes`'s form;
    each part under ``limit`` unless it holds one cluster, and as many entries as said."""
    index: dict[str, tuple[int, tuple[str, ...]]] = {}
    for part in parts:
        assert len(part) <= limit or len(orjson.loads(part)) == 2, (limit, part)
        d = decode_delta(b'{"U":[' + part + b"]}")
        assert isinstance(d, ResolveDelta), d
        index.update(d.index)
    assert items == sum(1 + len(s) for _, s in index.values())
    return index, evicted


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=50),
        lambda inner: st.lists(inner, max_size=5),
        max_leaves=30,
    )
)
def test_any_compact_index_in_the_log_is_read_or_refused(value: object) -> None:
    """Whatever a ``"U"`` holds, the resolve log's reader gives a delta or a rejection."""
    got = decode_delta(orjson.dumps({"U": value}))
    assert isinstance(got, ResolveDelta | Rejection)


def test_the_compact_index_reads_back_a_videos_frames_and_refuses_what_is_not_a_signal() -> None:
    frames = canonical_vpdq(["f" * 64 + ",90,1"])
    md5 = b'"AAAAAAAAAAAAAAAAAAAA/w"'
    ok = decode_delta(b'{"U":[[9,["u-1",-2,[' + md5 + b"," + orjson_str(frames) + b"]]]]}")
    assert isinstance(ok, ResolveDelta) and ok.index == {"u-1": (7, ("0" * 30 + "ff", frames))}
    for bad in (b'"AAAA"', b'"' + b"a" * 32 + b'"', b"5", b'"[not frames"'):
        got = decode_delta(b'{"U":[[9,["u-1",0,[' + bad + b"]]]]}")
        assert isinstance(got, Rejection), bad
    assert isinstance(decode_delta(b'{"U":[[9,["u-1",9223372036854775807]]]}'), Rejection)
    assert decode_delta(b'{"U":[[9,["u-1",null]]]}').index == {"u-1": (-(2**63), ())}  # type: ignore[union-attr]


def orjson_str(text: str) -> bytes:
    return orjson.dumps(text)


@FUZZ
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400))
def test_the_cluster_id_digest_is_hashlibs_blake2b(key: str) -> None:
    """The core's BLAKE2b (``rust/core/src/blake2b.rs``) names clusters as ``hashlib`` did:
    any text, across the 128-byte block boundaries."""
    want = "u-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    assert unbanked_id(key) == want


def test_a_flood_of_clusters_expired_gives_the_index_its_memory_back() -> None:
    from streams._core import allocated_bytes

    rng = random.Random(7)
    for log_changes in (False, True):
        clusters = EmergingClusters(idle_ms=1_000, log_changes=log_changes)
        before = allocated_bytes()
        for i in range(50_000):
            pdq = f"{rng.getrandbits(256):064x}"
            clusters.assign(Content(pdq=pdq, md5=f"{i:032x}", pdq_quality=90), ts_ms=i)
        held = allocated_bytes() - before
        assert len(clusters) == 50_000 and held > 50_000 * 100, held
        clusters.take_changes()
        assert len(clusters.expire(10**9)) == 50_000 and len(clusters) == 0
        clusters.take_changes()
        # one more, as a live index would go on: the tables of the flood are given back
        clusters.assign(Content(md5="f" * 32), ts_ms=10**9)
        left = allocated_bytes() - before
        assert left < 1_500_000, (log_changes, left)  # the PDQ index's 4 MB of starts aside
