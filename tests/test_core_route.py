"""The compiled core's held orphans (held by ``_core.PostRoutes``, the router's only way in)
against a simple Python oracle, and the router's limits under a flood of orphans.

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

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from streams import _core
from streams.banks import HashBanks
from streams.events import Rejection, ShareEvent
from streams.router import Router
from streams.stats import Stats

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


def test_a_flood_of_orphans_is_bounded_refused_with_a_reason_and_freed_on_expiry() -> None:
    stats = Stats()
    router = Router(HashBanks([]), stats, max_held=1_000, hold_ms=60_000)
    base = _core.allocated_bytes()
    out = [x for i in range(10_000) for x in router.route(_share(i, f"gone{i}", T0 + i))]
    assert router.held == stats.orphans_held == 1_000 and stats.held == 1_000
    assert len(out) == 9_000 and all(isinstance(r, Rejection) for r in out)
    assert {r.reason for r in out if isinstance(r, Rejection)} == {"orphan_overflow"}
    assert out[0].detail == "1000 events already wait for their parents"
    grown = _core.allocated_bytes() - base
    assert grown < 1_000 * 400, grown  # the core's share of 1,000 held reshares
    expired = router.expire(T0 + 10_000 + 60_000)
    assert [r.event_id for r in expired] == [f"e{i}" for i in range(1_000)]
    assert expired[0].detail == "share waited 60s of event time for post 'gone0', which never came"
    assert router.held == stats.orphans_held == 0
    assert _core.allocated_bytes() - base < 4_096  # what the flood held is freed


def test_a_loop_of_held_reshares_is_refused_and_the_rest_released_in_order() -> None:
    router = Router(HashBanks([]), Stats())
    assert router.route(_share(2, "p1", T0)) == []
    assert router.route(_share(3, "p2", T0)) == []
    [loop] = router.route(_share(1, "p3", T0))  # p1 would wait for p3, which waits for p1
    assert isinstance(loop, Rejection) and loop.reason == "cycle"
    takedown = ShareEvent("t2", "takedown", T0, "p2", "mod")
    assert router.route(takedown) == []
    router.post_clusters["p0"] = "u-1"
    released = router.route(_share(1, "p0", T0 + 1))
    assert [(x.event.event_id, x.cluster_id) for x in released if not isinstance(x, Rejection)] == [
        ("e1", "u-1"),
        ("e2", "u-1"),
        ("e3", "u-1"),
        ("t2", "u-1"),
    ]
    assert router.held == 0
