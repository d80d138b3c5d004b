"""Cascades and structural virality, checked against brute force on the graph itself."""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs.cascade import Cascade
from graphs.virality import structural_virality, wiener_index_tree

PROPS = settings(max_examples=200, deadline=None)


# ---------------------------------------------------------------- helpers


def recursive_tree(n: int, rng: random.Random, offset: int = 0) -> nx.DiGraph:
    """A random recursive tree: node i reshares a uniformly chosen earlier node."""
    g = nx.DiGraph()
    g.add_node(offset)
    for i in range(1, n):
        g.add_edge(offset + rng.randrange(i), offset + i)
    return g


def out_tree(tree: nx.Graph, root: int) -> nx.DiGraph:
    """Orient an undirected tree away from ``root`` (edge parent -> reshare)."""
    g = nx.bfs_tree(tree, root)
    g.add_nodes_from(tree)
    return g


def brute_virality(forest: nx.DiGraph) -> float:
    """All-pairs mean distance within each tree, pooled over the forest's trees."""
    und = forest.to_undirected()
    total = pairs = 0
    for comp in nx.connected_components(und):
        n = len(comp)
        if n > 1:
            total += nx.wiener_index(und.subgraph(comp))
            pairs += n * (n - 1) // 2
    return total / pairs if pairs else 0.0


def figures(c: Cascade) -> tuple[int, int, int, int, int, int]:
    return (c.size, c.live, c.roots, c.unique_users, c.depth, c.breadth)


def brute_figures(c: Cascade) -> tuple[int, int, int, int, int, int]:
    """Recompute every figure from the graph alone, ignoring the incremental counters."""
    g = c.graph
    roots = [n for n in g if g.in_degree(n) == 0]
    levels: dict[str, int] = {}
    for r in roots:
        for node, dist in nx.single_source_shortest_path_length(g, r).items():
            levels[node] = dist
    per_level = Counter(levels.values())
    return (
        g.number_of_nodes(),
        sum(1 for _, live in g.nodes(data="live") if live),
        len(roots),
        len({u for _, u in g.nodes(data="user")}),
        max(levels.values(), default=0),
        max(per_level.values(), default=0),
    )


def brute_top_spreaders(c: Cascade, n: int) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for parent, _child in c.graph.edges:
        counts[c.graph.nodes[parent]["user"]] += 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


# ---------------------------------------------------------------- structural virality


def test_known_shapes() -> None:
    star = nx.DiGraph([(0, i) for i in range(1, 101)])
    # broadcast: 100 pairs at distance 1, C(100,2) at distance 2
    assert structural_virality(star) == pytest.approx((100 + 2 * 4950) / 5050)
    chain = nx.DiGraph([(i, i + 1) for i in range(99)])
    assert structural_virality(chain) == pytest.approx(101 / 3)  # (n + 1) / 3 for a path
    single = nx.DiGraph()
    single.add_node("p")
    assert structural_virality(single) == 0.0
    assert wiener_index_tree(single) == (0, 0)
    assert wiener_index_tree(nx.DiGraph()) == (0, 0)


@given(st.integers(min_value=1, max_value=120), st.randoms(use_true_random=False))
@PROPS
def test_virality_equals_wiener_index_on_random_recursive_trees(n: int, rng: random.Random) -> None:
    tree = recursive_tree(n, rng)
    total, pairs = wiener_index_tree(tree)
    assert pairs == n * (n - 1) // 2
    assert total == nx.wiener_index(tree.to_undirected())
    expect = nx.wiener_index(tree.to_undirected()) / pairs if pairs else 0.0
    assert structural_virality(tree) == pytest.approx(expect, rel=1e-12)


@given(st.integers(min_value=2, max_value=120), st.integers(min_value=0, max_value=2**32 - 1))
@PROPS
def test_virality_equals_wiener_index_on_uniform_labeled_trees(n: int, seed: int) -> None:
    tree = nx.random_labeled_tree(n, seed=seed)
    root = random.Random(seed).randrange(n)  # the upload may be any node
    g = out_tree(tree, root)
    total, pairs = wiener_index_tree(g)
    assert (total, pairs) == (nx.wiener_index(tree), n * (n - 1) // 2)
    assert structural_virality(g) == pytest.approx(nx.wiener_index(tree) / pairs, rel=1e-12)


@given(
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6),
    st.randoms(use_true_random=False),
)
@PROPS
def test_virality_on_forests_is_pooled_over_trees(sizes: list[int], rng: random.Random) -> None:
    """A forest (several independent uploads) has no path between its trees, so
    ``nx.wiener_index`` of the whole forest is infinite. Structural virality is
    the mean over the pairs that are connected: the *pooled* ratio
    ``sum of per-tree Wiener indices / sum of per-tree pair counts``, not the
    mean of per-tree viralities. Single-post trees add no pairs; a forest of
    single posts scores 0."""
    forest = nx.DiGraph()
    offset = 0
    per_tree = []
    for n in sizes:
        tree = recursive_tree(n, rng, offset)
        forest.update(tree)
        per_tree.append((nx.wiener_index(tree.to_undirected()), n * (n - 1) // 2))
        offset += n
    total = sum(w for w, _ in per_tree)
    pairs = sum(p for _, p in per_tree)
    assert wiener_index_tree(forest) == (total, pairs)
    assert structural_virality(forest) == pytest.approx(total / pairs if pairs else 0.0)
    assert structural_virality(forest) == pytest.approx(brute_virality(forest))
    if len(sizes) > 1:
        assert nx.wiener_index(forest.to_undirected()) == float("inf")


def test_forest_pooling_is_not_a_mean_of_means() -> None:
    star = [(0, i) for i in range(1, 5)]  # W = 4 + 2*6 = 16, pairs 10
    chain = [(10, 11), (11, 12)]  # W = 4, pairs 3
    forest = nx.DiGraph(star + chain)
    assert structural_virality(forest) == pytest.approx(20 / 13)
    assert structural_virality(forest) != pytest.approx((16 / 10 + 4 / 3) / 2)


def test_virality_of_a_deep_chain_does_not_recurse() -> None:
    n = 50_000  # far past Python's recursion limit
    chain = nx.DiGraph([(i, i + 1) for i in range(n - 1)])
    assert structural_virality(chain) == pytest.approx((n + 1) / 3)


def test_cascade_virality_uses_the_whole_forest() -> None:
    c = Cascade()
    rng = random.Random(11)
    for r in range(3):
        c.add_root(f"r{r}", user=f"u{r}", ts_ms=0)
    for i in range(200):
        parent = rng.choice(list(c.graph))
        c.add_reshare(f"p{i}", parent=parent, user=f"u{rng.randrange(50)}", ts_ms=i)
    assert c.structural_virality() == pytest.approx(brute_virality(c.graph))


# ---------------------------------------------------------------- figures


def test_empty_cascade() -> None:
    c = Cascade()
    assert figures(c) == (0, 0, 0, 0, 0, 0)
    assert len(c) == 0 and "p" not in c
    assert c.structural_virality() == 0.0
    assert c.top_spreaders(5) == []
    assert c.live_posts() == []


ops = st.lists(
    st.tuples(
        st.sampled_from(["root", "reshare", "reshare", "reshare", "takedown", "dup"]),
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=0, max_value=9),
    ),
    max_size=120,
)


@given(ops)
@PROPS
def test_figures_match_brute_force_after_random_operations(seq: list[tuple[str, int, int]]) -> None:
    c = Cascade()
    posts: list[str] = []
    live: set[str] = set()
    for step, (op, pick, user) in enumerate(seq):
        pid = f"p{step}"
        if op == "root" or (op == "reshare" and not posts):
            assert c.add_root(pid, user=f"u{user}", ts_ms=step)
            posts.append(pid)
            live.add(pid)
        elif op == "reshare":
            parent = posts[pick % len(posts)]
            assert c.add_reshare(pid, parent=parent, user=f"u{user}", ts_ms=step)
            posts.append(pid)
            live.add(pid)
        elif op == "takedown" and posts:
            target = posts[pick % len(posts)]
            assert c.take_down(target) == (target in live)
            live.discard(target)
        elif op == "dup" and posts:
            again = posts[pick % len(posts)]
            before = (figures(c), nx.to_dict_of_lists(c.graph), dict(c.graph.nodes(data=True)))
            assert not c.add_root(again, user="someone-else", ts_ms=-1)
            assert not c.add_reshare(again, parent=posts[0], user="someone-else", ts_ms=-1)
            after = (figures(c), nx.to_dict_of_lists(c.graph), dict(c.graph.nodes(data=True)))
            assert after == before
        assert figures(c) == brute_figures(c)
    assert set(c.live_posts()) == live
    assert c.live_posts() == [p for p in posts if p in live]
    assert all(p in c for p in posts) and len(c) == len(posts)
    assert c.structural_virality() == pytest.approx(brute_virality(c.graph))
    for n in (0, 1, 3, 100):
        assert c.top_spreaders(n) == brute_top_spreaders(c, n)


def test_takedown_keeps_history() -> None:
    c = Cascade()
    c.add_root("a", user="u1", ts_ms=0)
    c.add_reshare("b", parent="a", user="u2", ts_ms=1)
    assert c.take_down("a")
    assert not c.take_down("a")  # already down
    assert not c.take_down("nope")  # unknown
    assert (c.size, c.live, c.roots, c.unique_users) == (2, 1, 1, 2)
    # a reshare of a removed post still joins the cascade: copies exist elsewhere
    assert c.add_reshare("c", parent="a", user="u3", ts_ms=2)
    assert figures(c) == (3, 2, 1, 3, 1, 2)
    assert c.graph.nodes["a"]["live"] is False


def test_duplicate_add_returns_false_and_changes_nothing() -> None:
    c = Cascade()
    assert c.add_root("a", user="u1", ts_ms=0)
    assert c.add_reshare("b", parent="a", user="u2", ts_ms=5)
    c.take_down("b")
    snapshot = (figures(c), list(c.graph.edges), dict(c.graph.nodes(data=True)))
    assert not c.add_root("a", user="u9", ts_ms=99)
    assert not c.add_root("b", user="u9", ts_ms=99)  # a reshare redelivered as an upload
    assert not c.add_reshare("b", parent="a", user="u9", ts_ms=99)
    assert not c.add_reshare("a", parent="b", user="u9", ts_ms=99)  # would be a cycle
    assert not c.add_reshare("b", parent="unknown", user="u9", ts_ms=99)
    assert (figures(c), list(c.graph.edges), dict(c.graph.nodes(data=True))) == snapshot
    assert c.graph.nodes["b"]["live"] is False  # a redelivery does not revive a takedown


def test_reshare_of_unknown_parent_raises_and_changes_nothing() -> None:
    c = Cascade()
    c.add_root("a", user="u1", ts_ms=0)
    before = (figures(c), list(c.graph.nodes), list(c.graph.edges))
    with pytest.raises(ValueError, match="'missing'"):
        c.add_reshare("b", parent="missing", user="u2", ts_ms=1)
    with pytest.raises(ValueError):
        c.add_reshare("self", parent="self", user="u2", ts_ms=1)
    assert (figures(c), list(c.graph.nodes), list(c.graph.edges)) == before
    assert "b" not in c and "missing" not in c


def test_depth_and_breadth_by_hand() -> None:
    c = Cascade()
    c.add_root("r1", user="a", ts_ms=0)
    c.add_root("r2", user="a", ts_ms=0)  # same uploader twice: two roots, one user
    for i in range(3):
        c.add_reshare(f"x{i}", parent="r1", user=f"b{i}", ts_ms=1)
    c.add_reshare("y", parent="r2", user="b0", ts_ms=2)
    c.add_reshare("z", parent="y", user="c", ts_ms=3)
    # level 0: r1, r2; level 1: x0..x2, y; level 2: z
    assert figures(c) == (7, 7, 2, 5, 2, 4)


# ---------------------------------------------------------------- spreaders


def test_top_spreaders_counts_direct_reshares_per_user() -> None:
    c = Cascade()
    c.add_root("a", user="u1", ts_ms=0)
    c.add_root("a2", user="u1", ts_ms=0)
    for i in range(3):
        c.add_reshare(f"b{i}", parent="a", user="u2", ts_ms=1)
    c.add_reshare("c", parent="a2", user="u3", ts_ms=2)
    c.add_reshare("d", parent="b0", user="u4", ts_ms=3)
    c.add_reshare("e", parent="b1", user="u4", ts_ms=3)
    # u1's two posts were reshared 4 times in all; u2's posts twice; u3, u4 never
    assert c.top_spreaders(10) == [("u1", 4), ("u2", 2)]
    assert c.top_spreaders(1) == [("u1", 4)]
    assert c.top_spreaders(0) == []


def test_top_spreaders_is_deterministic_under_insertion_order() -> None:
    """Ties are broken by user id, so the same cascade built in any order agrees."""
    rng = random.Random(5)
    edges = []
    nodes = ["p0"]
    for i in range(1, 300):
        edges.append((rng.choice(nodes), f"p{i}"))
        nodes.append(f"p{i}")
    users = {p: f"u{rng.randrange(30)}" for p in nodes}

    def build(order_seed: int) -> Cascade:
        r = random.Random(order_seed)
        c = Cascade()
        c.add_root("p0", user=users["p0"], ts_ms=0)
        pending = list(edges)
        r.shuffle(pending)
        while pending:  # any order in which parents come before their reshares
            rest = []
            for parent, child in pending:
                if parent in c:
                    c.add_reshare(child, parent=parent, user=users[child], ts_ms=0)
                else:
                    rest.append((parent, child))
            pending = rest
        return c

    results = {tuple(build(s).top_spreaders(15)) for s in range(6)}
    assert len(results) == 1
    [top] = results
    counts = [n for _, n in top]
    assert counts == sorted(counts, reverse=True)
    for (u1, n1), (u2, n2) in pairwise(top):
        assert n1 > n2 or (n1 == n2 and u1 < u2)
    assert list(top) == brute_top_spreaders(build(0), 15)


@given(
    st.lists(
        st.tuples(st.integers(min_value=-1, max_value=10**6), st.booleans(), st.booleans()),
        max_size=150,
    )
)
@PROPS
def test_cascade_virality_is_the_graphs_to_the_bit(steps: list[tuple[int, bool, bool]]) -> None:
    """``Cascade.structural_virality`` (the subtree sums over the posts in the order added)
    is :func:`structural_virality` of its graph (NetworkX's traversal), the same float, for
    any forest built by uploads, reshares of any post so far, takedowns, copies and
    ``from_made``; and a node's followers are kept as before (absent when unknown)."""
    c = Cascade()
    for i, (pick, takedown, known) in enumerate(steps):
        posts = c.posts()
        followers = i * 7 if known else None
        if pick < 0 or not posts:
            c.add_root(f"p{i}", user=f"u{i % 5}", ts_ms=i, followers=followers)
        else:
            parent = posts[pick % len(posts)]
            c.add_reshare(f"p{i}", parent=parent, user=f"u{i % 7}", ts_ms=i, followers=followers)
        if takedown:
            c.take_down(posts[pick % len(posts)] if posts else f"p{i}")
        node = c.graph.nodes[f"p{i}"]
        assert list(node) == ["user", "ts_ms", "level", "live", *(["followers"] if known else [])]
        assert c.structural_virality() == structural_virality(c.graph)
    d = c.copy()
    assert d.structural_virality() == structural_virality(d.graph) == c.structural_virality()
    made = Cascade.from_made(
        (p, next(iter(c.graph.pred[p]), None), c.graph.nodes[p]["user"], 0, True) for p in c.posts()
    )
    assert made.structural_virality() == structural_virality(made.graph)


def _state(c: Cascade) -> tuple[object, ...]:
    """Everything of a cascade, orders included (the figures read the graph's dicts in order)."""
    g = c.graph
    return (
        [(n, dict(d)) for n, d in g.nodes(data=True)],
        [(n, list(g.succ[n])) for n in g],
        [(n, list(g.pred[n])) for n in g],
        list(c._users.items()),
        list(c._level_counts.items()),
        (c.size, c.live, c.roots, c.unique_users, c.depth, c.breadth),
        c.structural_virality(),
        c.top_spreaders(5),
    )


@PROPS
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7), st.booleans()), max_size=40),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 9), st.booleans()), max_size=40),
)
def test_rewind_gives_back_the_cascade_at_its_mark(
    before: list[tuple[int, int, bool]], after: list[tuple[int, int, bool]]
) -> None:
    """Posts added after a mark (roots and reshares, under old posts and new, some by new
    users, at new levels) and rewound leave the cascade as it was to the dicts' order, and
    the figures read while they were in are a copy's (what an early alert reads)."""
    c = Cascade()
    for i, (pick, user, down) in enumerate(before):
        post = f"a{i}"
        if c.size and pick % 4:
            c.add_reshare(post, parent=list(c.graph)[pick % c.size], user=f"u{user}", ts_ms=i)
        else:
            c.add_root(post, user=f"u{user}", ts_ms=i, followers=pick if down else None)
        if down and pick % 3 == 0:
            c.take_down(post)
    was = _state(c)
    copy = c.copy()
    mark = c.mark()
    for i, (pick, user, new_user) in enumerate(after):
        name, u = f"b{i}", f"{'n' if new_user else 'u'}{user}"
        for x in (c, copy):
            if x.size and pick % 5:
                x.add_reshare(name, parent=list(x.graph)[pick % x.size], user=u, ts_ms=i)
            else:
                x.add_root(name, user=u, ts_ms=i)
    assert _state(c) == _state(copy)
    assert c.top_spreaders(100) == brute_top_spreaders(c, 100)  # the graph's tables, read
    c.rewind(mark)
    assert _state(c) == was
    assert c.top_spreaders(100) == brute_top_spreaders(c, 100)  # and after a rewind


def test_rewind_refuses_a_cascade_smaller_than_its_mark() -> None:
    c = Cascade()
    c.add_root("a", user="u", ts_ms=0)
    mark = c.mark()
    shrunk = Cascade()
    with pytest.raises(ValueError):
        shrunk.rewind(mark)


def _tables(g: nx.DiGraph) -> str:
    """A graph's whole state as NetworkX keeps it: its node table (each node's attributes,
    in order) and both adjacency tables, every dict in its insertion order."""
    return repr(
        (
            list((n, list(a.items())) for n, a in g.nodes.items()),
            [(n, list(s.items())) for n, s in g.succ.items()],
            [(n, list(p.items())) for n, p in g.pred.items()],
        )
    )


@PROPS
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40),  # the post
            st.one_of(st.none(), st.integers(0, 40)),  # its parent (None: an upload)
            st.one_of(st.none(), st.integers(0, 10**6)),  # followers
        ),
        max_size=80,
    )
)
def test_add_post_makes_the_graph_add_node_and_add_edge_made(
    posts: list[tuple[int, int | None, int | None]],
) -> None:
    """``Cascade.add_post`` writes a post's node through the edge that makes it, then its
    attributes, where the cascade called ``add_node(post, **attributes)`` and then
    ``add_edge``: the same graph, every table in the same order (what views and
    ``graphs/`` read: node and edge order decide iteration), and the same answers to
    duplicates and to posts whose parent is not there."""
    c = Cascade()
    g = nx.DiGraph()
    for i, (post, parent, followers) in enumerate(posts):
        pid, ppid = f"p{post}", None if parent is None else f"p{parent}"
        got = c.add_post(pid, ppid, user=f"u{i % 7}", ts_ms=i, followers=followers)
        if pid in g:
            want: bool | None = False
        elif ppid is not None and ppid not in g:
            want = None
        else:
            level = 0 if ppid is None else g.nodes[ppid]["level"] + 1
            attrs = {"user": f"u{i % 7}", "ts_ms": i, "level": level, "live": True}
            if followers is not None:
                attrs["followers"] = followers
            g.add_node(pid, **attrs)
            if ppid is not None:
                g.add_edge(ppid, pid)
            want = True
        assert got is want
    assert _tables(c.graph) == _tables(g)
    assert c.size == g.number_of_nodes()
