"""The compiled post -> cluster map and reshare routing (``_core.PostRoutes``) against a simple
Python oracle: the router's dict and held-orphan code as they were in Python (the held
orphans' oracle is ``test_core_route``'s).

Any text is a post id (surrogates included), any sequence of registrations, forgets, routes
and expiries gives the oracle's answers (which cluster, what is held, refused, released and
in which order), a resolve partition's map records what the Python ``_PostMap`` recorded,
and a flood of posts forgotten gives its memory back.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from test_core_route import Oracle

from streams import _core

EXAMPLES = int(os.environ.get("VIRALWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None)


def home(post: str, parts: int) -> int:
    return zlib.crc32(post.encode("utf-8", "surrogatepass")) % parts


@dataclass
class RouterOracle(Oracle):
    """The Python router's map (``_PostMap`` for a partition) beside its held orphans."""

    partition: int | None = None
    parts: int = 1
    own: dict[str, str] = field(default_factory=dict)
    new: dict[str, str] = field(default_factory=dict)
    foreign: list[tuple[int, str, str]] = field(default_factory=list)

    def put(self, post: str, cluster: str) -> None:
        if self.partition is None or home(post, self.parts) == self.partition:
            if post not in self.own:
                self.own[post] = cluster
                if self.partition is not None:
                    self.new[post] = cluster
        else:
            self.foreign.append((home(post, self.parts), post, cluster))

    def register(self, post: str, cluster: str) -> list[str]:
        return self.release(post, lambda p: self.put(p, cluster))

    def route(
        self, target: str, post: str, share: bool, ts: int, item: str, limit: int
    ) -> tuple[str | None, list[str], tuple[str, int] | None]:
        cluster = self.own.get(target)
        if cluster is not None:
            return cluster, self.register(post, cluster) if share else [], None
        return None, [], self.hold(target, post, share, ts, item, limit)


posts = st.sampled_from(
    # short, long, and decimal ids past 15 digits (inline as their value while a u64 holds
    # them: 18446744073709551615 is u64's largest; a leading zero or one more keeps the text)
    [
        *["p0", "p1", "p2", "p3", "p4", "", "\ud800x", "é" * 30, "q" * 40],
        *["1234567890123456", "18446744073709551615", "18446744073709551616"],
        "01234567890123456",
    ]
)
clusters = st.sampled_from(["b-1", "u-2", "a-3", "u-" + "9" * 30, "u-0123456789abcdef"])
ops = st.lists(
    st.one_of(
        st.tuples(st.just("register"), posts, clusters),
        st.tuples(st.just("forget"), st.lists(posts, max_size=3)),
        st.tuples(
            st.just("route"), posts, posts, st.booleans(), st.integers(0, 50), st.integers(0, 6)
        ),
        st.tuples(st.just("expire"), st.integers(-1, 60)),
    ),
    max_size=60,
)


@FUZZ
@given(ops, st.sampled_from([None, 0, 1, 2]), st.lists(posts, max_size=3))
def test_postroutes_answers_as_the_python_router_did(
    steps: list[tuple],  # type: ignore[type-arg]
    partition: int | None,
    dropped: list[str],
) -> None:
    parts = 3 if partition is not None else 1
    core = _core.PostRoutes(partition, parts) if partition is not None else _core.PostRoutes()
    oracle = RouterOracle(partition=partition, parts=parts)
    for n, step in enumerate(steps):
        if step[0] == "register":
            assert core.register(step[1], step[2]) == oracle.register(step[1], step[2])
        elif step[0] == "forget":
            gone = sum(oracle.own.pop(p, None) is not None for p in dict.fromkeys(step[1]))
            assert core.forget_many(list(dict.fromkeys(step[1]))) == gone
        elif step[0] == "route":
            _, target, post, share, ts, limit = step
            item = f"e{n}"
            assert core.route(target, post, share, ts, item, limit) == oracle.route(
                target, post, share, ts, item, limit
            )
        else:
            assert core.expire(step[1]) == oracle.expire(step[1])
        assert len(core) == len(oracle.own) and core.held == oracle.held
        assert core.clusters == len(set(oracle.own.values()))
    assert dict(core.items()) == oracle.own
    assert [p for p, _ in core.items()] == sorted(
        oracle.own, key=lambda p: p.encode("utf-8", "surrogatepass")
    )
    assert all(core.get(p) == c and p in core for p, c in oracle.own.items())
    # the log's "p": orjson's bytes of the dict the Python map recorded, less the dropped
    # (a post id that is not UTF-8: the dict itself, which orjson refuses)
    new = {p: c for p, c in oracle.new.items() if p not in dropped}
    taken = core.take_new_log(dropped)
    if isinstance(taken, dict):
        assert list(taken.items()) == list(new.items())
        assert any(p.encode("utf-8", "surrogatepass") != p.encode("utf-8", "replace") for p in new)
    else:
        assert taken == (orjson.dumps(new), len(new))
    assert core.take_new_log([]) == (b"{}", 0)
    foreign = core.take_foreign()
    assert [home for home, _ in foreign] == sorted({home for home, _, _ in oracle.foreign})
    assert [(home, *pair) for home, regs in foreign for pair in regs.pairs()] == sorted(
        oracle.foreign,
        key=lambda f: f[0],  # by partition, each in the order routed
    )
    assert all(len(regs) == len(regs.pairs()) > 0 for _, regs in foreign)
    assert core.take_foreign() == []


@FUZZ
@given(
    st.lists(
        st.tuples(st.one_of(st.text(max_size=40), st.from_regex(r"\A[0-9]{14,21}\Z")), st.text()),
        max_size=40,
    )
)
def test_any_text_is_a_post_and_folds_back(pairs: list[tuple[str, str]]) -> None:
    core = _core.PostRoutes()
    want: dict[str, str] = {}
    for post, cluster in pairs:
        core.register(post, cluster)
        want.setdefault(post, cluster)
    again = _core.PostRoutes()
    again.fold(dict(core.items()), [p for p, _ in pairs[:3]])
    for p, _ in pairs[:3]:
        want.pop(p, None)
    assert dict(again.items()) == want and len(again) == len(want)


def test_a_flood_of_posts_forgotten_gives_its_memory_back() -> None:
    core = _core.PostRoutes()
    base = _core.allocated_bytes()
    ids = [f"post-{i}" for i in range(200_000)]
    for i, p in enumerate(ids):
        core.register(p, f"u-{i // 3}")
    held = _core.allocated_bytes() - base
    assert held < 200_000 * 120  # about 32 bytes an entry, and a cluster id per 3 posts
    assert core.nbytes <= held
    assert core.forget_many(ids) == len(ids) and len(core) == 0 and core.clusters == 0
    assert _core.allocated_bytes() - base < 64 * 1024


def test_a_cycle_through_a_held_event_is_collected() -> None:
    """The map tells the garbage collector which events it holds, so a held event that
    refers back to the map (through whatever holds it) does not leak."""
    import gc
    import weakref

    class Held:
        pass

    routes = _core.PostRoutes()
    ev = Held()
    ev.routes = routes  # type: ignore[attr-defined]
    assert routes.route("parent", "p", True, 1, ev, 10) == (None, [], None)
    assert routes.held == 1
    gone = weakref.ref(ev)  # collected only with the cycle through the map
    del routes, ev
    gc.collect()
    assert gone() is None
