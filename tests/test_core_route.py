"""The compiled core's held orphans (held by ``_core.PostRoutes``, the router's only way in)
against a simple Python oracle, and a resolve partition's limits under a flood of orphans.

The oracle is the router's held-orphan code as it was in Python (dicts of
waiting events and of held parents), with one fix: an expired takedown no
longer drops the held-parent link of the reshare that adds the post it takes
down (that link is the reshare's, and the loop check needs it). The core
must answer every sequence of holds, releases and expiries as the oracle
does: what is held or refused (and why), what comes out and in which order
(replay's dead letters depend on it). A release is a registration: it releases
the chains of reshares that waited, depth first, as the Python router's stack did.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from streams import _core
from streams.banks import HashBanks
from streams.events import ShareEvent
from streams.stages import Envelope, ResolvePartition
from streams.stats import Stats
from streams.wire import ToRoute, records

EXAMPLES = int(os.environ.get("VIRALWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None)
T0 = 1_767_225_600_000


@dataclass
class Oracle:
    """The held orphans as the router kept them in Python."""

    waiting: dict[str, list[tuple[str, int, str | None]]] = field(default_factory=dict)
    parent: dict[str, str] = field(default_factory=dict)
    held: int = 0

    def hold(
        self, target: str, post: str, share: bool, ts: int, item: str, limit: int
    ) -> tuple[str, int] | None:
        if share:
            walk, seen = target, 0
            while walk in self.parent and seen <= self.held:
                walk = self.parent[walk]
                seen += 1
                if walk == post:
                    return ("cycle", 0)
        if self.held >= limit:
            return ("orphan_overflow", self.held)
        self.waiting.setdefault(target, []).append((item, ts, post if share else None))
        if share:
            self.parent[post] = target
        self.held += 1
        return None

    def release(self, post: str, put: Callable[[str], None] = lambda _: None) -> list[str]:
        """``post`` is routed (``put``): what waited for it, in the order held, then what
        waited for the posts of those reshares, depth first (the last released first)."""
        out, stack = [], [post]
        while stack:
            p = stack.pop()
            put(p)
            self.parent.pop(p, None)
            entries = self.waiting.pop(p, [])
            self.held -= len(entries)
            for item, _, own in entries:
                out.append(item)
                if own is not None:
                    stack.append(own)
        return out

    def expire(self, cut: int) -> list[str]:
        out = []
        for target in list(self.waiting):
            entries = self.waiting[target]
            keep = [e for e in entries if e[1] > cut]
            for item, ts, own in entries:
                if ts <= cut:
                    self.held -= 1
                    if own is not None:
                        self.parent.pop(own, None)
                    out.append(item)
            if keep:
                self.waiting[target] = keep
            else:
                del self.waiting[target]
        return out


_posts = st.sampled_from(["p0", "p1", "p2", "p3", "p4", "é", ""])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("hold"), _posts, _posts, st.booleans(), st.integers(0, 50)),
        st.tuples(st.just("release"), _posts),
        st.tuples(st.just("expire"), st.integers(-1, 60)),
    ),
    max_size=80,
)


@FUZZ
@given(_ops, st.integers(0, 12))
def test_the_core_holds_releases_and_expires_as_the_python_code_did(
    ops: list[tuple], limit: int
) -> None:
    core, oracle = _core.PostRoutes(), Oracle()
    for n, op in enumerate(ops):
        if op[0] == "hold":  # no post is mapped: a route holds it (or refuses it)
            _, target, post, share, ts = op
            item = f"i{n}"
            assert core.route(target, post, share, ts, item, limit) == (
                None,
                [],
                oracle.hold(target, post, share, ts, item, limit),
            )
        elif op[0] == "release":
            assert core.register(op[1], "u-1") == oracle.release(op[1])
            core.forget_many(core.keys())  # back to no post mapped
        else:
            assert core.expire(op[1]) == oracle.expire(op[1])
        assert core.held == oracle.held <= max(limit, 0) and len(core) == 0
    assert core.expire(10**12) == oracle.expire(10**12)
    assert core.held == 0


def _share(i: int, parent: str, ts: int) -> ShareEvent:
    return ShareEvent(f"e{i}", "share", ts, f"p{i}", f"u{i}", parent)


def _resolver(stats: Stats, max_held: int = 100_000, hold_ms: int = 1_800_000) -> ResolvePartition:
    return ResolvePartition(
        0,
        partitions=1,
        sources=1,
        banks=HashBanks([]),
        stats=stats,
        lateness_ms=0,
        hold_ms=hold_ms,
        max_held=max_held,
    )


def test_a_flood_of_orphans_is_bounded_refused_with_a_reason_and_freed_on_expiry() -> None:
    """Through a resolve partition's compiled loop (``ResolveLoop``): the limit, the refusal's
    reason, expiry once every input has passed, and the memory given back."""
    stats = Stats()
    r = _resolver(stats, max_held=1_000, hold_ms=60_000)
    # the core's byte count is the process's: garbage of earlier tests freed by a collection
    # in the middle of this one would move it, so collect at each reading
    gc.collect()
    base = _core.allocated_bytes()
    flood = Envelope([ToRoute(_share(i, f"gone{i}", T0 + i)) for i in range(10_000)])
    out = r.handle([flood])
    assert r.held == r.router.held == stats.orphans_held == 1_000 and stats.held == 1_000
    refused = [d.rejection for d in out.deadletters]
    assert len(refused) == 9_000 and {x.reason for x in refused} == {"orphan_overflow"}
    assert refused[0].detail == "1000 events already wait for their parents"
    assert out.routed == 0 and out.delta_items == 1_000  # the held ones, logged
    grown = _core.allocated_bytes() - base
    # the core's share of 1,000 held reshares: the held orphans, the loop's (ts, id) order
    # and its held events by id in the order held (about 105 B each: what was a Python dict)
    assert grown < 1_000 * 600, grown
    late = r.handle([Envelope([], {0: (T0 + 10_000 + 60_000, False)})])
    expired = [d.rejection for d in late.deadletters]
    assert [x.event_id for x in expired] == [f"e{i}" for i in range(1_000)]
    assert {x.reason for x in expired} == {"orphan_expired"}
    assert expired[0].detail == "share waited 60s of event time for post 'gone0', which never came"
    assert r.held == r.router.held == stats.orphans_held == 0
    assert late.delta_record is not None and len(late.delta_record.released) == 1_000
    del out  # (its delta's events held, a compiled batch)
    gc.collect()
    assert _core.allocated_bytes() - base < 4_096  # what the flood held is freed


def test_a_loop_of_held_reshares_is_refused_and_the_rest_released_in_order() -> None:
    r = _resolver(Stats())
    takedown = ShareEvent("t2", "takedown", T0, "p2", "mod")
    first = r.handle(
        [
            Envelope(
                [
                    ToRoute(_share(2, "p1", T0)),
                    ToRoute(_share(3, "p2", T0)),
                    ToRoute(_share(1, "p3", T0)),  # p1 would wait for p3, which waits for p1
                    ToRoute(takedown),
                ]
            )
        ]
    )
    [loop] = [d.rejection for d in first.deadletters]
    assert loop.reason == "cycle" and loop.event_id == "e1"
    assert r.held == 3 and first.routed == 0
    r.posts["p0"] = "u-1"
    released = r.handle([Envelope([ToRoute(_share(1, "p0", T0 + 1))])])
    assert [(x.event.event_id, x.cluster_id) for x in records(released.clusters[0])] == [
        ("e1", "u-1"),
        ("e2", "u-1"),
        ("e3", "u-1"),
        ("t2", "u-1"),
    ]
    assert r.held == r.router.held == 0
