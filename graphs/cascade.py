"""The reshare cascade of one content cluster: a forest of posts.

A content cluster is everything that carries one piece of content: its
uploads (independent roots: re-uploads of the same or a near-identical file)
and every reshare under them. It is a NetworkX ``DiGraph`` with an edge from
parent to reshare and the user, event time and liveness on each node.

The figures on-call reads (size, live copies, roots, unique users, depth,
breadth) are kept incrementally, in O(1) per post, because a hot cluster
takes thousands of posts a minute and its figures are read after each batch.
Structural virality is computed on demand in O(n) (see
:mod:`graphs.virality`).

A takedown removes a post from the live count but keeps it in the graph: the
history of how content spread is evidence, and reshares of a removed post
still exist elsewhere.

Examples
--------
>>> c = Cascade()
>>> c.add_root("p1", user="alice", ts_ms=0)
True
>>> c.add_reshare("p2", parent="p1", user="bob", ts_ms=1_000)
True
>>> c.add_reshare("p3", parent="p2", user="carol", ts_ms=2_000)
True
>>> c.take_down("p2")
True
>>> (c.size, c.live, c.roots, c.unique_users, c.depth, c.breadth)
(3, 2, 1, 3, 2, 1)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import NamedTuple

import networkx as nx

from graphs.virality import forest_virality


class CascadeMark(NamedTuple):
    """A cascade's figures at a point (:meth:`Cascade.mark`), to go back to."""

    size: int
    depth: int
    breadth: int
    live: int
    roots: int


class Cascade:
    """A reshare forest with incrementally maintained figures.

    Posts are added once: adding a post id that is already there does
    nothing and returns ``False`` (redelivered events change nothing).
    A reshare whose parent is not (yet) in the cascade is the caller's to
    hold; :meth:`add_reshare` refuses it with ``ValueError``.
    """

    __slots__ = ("_breadth", "_depth", "_level_counts", "_live", "_roots", "_users", "graph")

    def __init__(self) -> None:
        self.graph: nx.DiGraph = nx.DiGraph()
        # plain dicts, not Counters: a store in a Counter (a Python subclass of dict) goes
        # through the type's slot and a method call, about 800 instructions more than a
        # dict's, and each post stores twice
        self._users: dict[str, int] = {}
        self._level_counts: dict[int, int] = {}
        self._depth = 0
        self._breadth = 0
        self._live = 0
        self._roots = 0

    def __contains__(self, post_id: object) -> bool:
        return post_id in self.graph

    def __len__(self) -> int:
        return self.size

    def _add(
        self,
        post_id: str,
        parent: str | None,
        user: str,
        ts_ms: int,
        level: int,
        followers: int | None,
    ) -> None:
        # NetworkX's tables written as ``add_edge(parent, post_id)`` (``add_node`` for an
        # upload) writes them, in its order, with the attributes in the order
        # ``add_node(post_id, **attrs)`` would write them: the post is new and its parent
        # here (the callers' look-ups), so its checks and a call less a post (every post
        # of a banked cluster comes here)
        graph = self.graph
        succ = graph._succ
        attrs = {"user": user, "ts_ms": ts_ms, "level": level, "live": True}
        if followers is not None:  # shown on the cascade view; unknown is left out
            attrs["followers"] = followers
        if parent is None:
            succ[post_id] = {}
            graph._pred[post_id] = {}
            graph._node[post_id] = attrs
        else:
            succ[post_id] = {}
            graph._node[post_id] = attrs
            edge: dict[str, object] = {}
            succ[parent][post_id] = edge
            graph._pred[post_id] = {parent: edge}
        if graph.__networkx_cache__:  # NetworkX's converted graphs (``nx._clear_cache``)
            graph.__networkx_cache__.clear()
        # ``get`` and a store (a user is new to its cluster at most posts: 18,166 of 21,114
        # at a worker's density); the same counts, in the same key order
        users = self._users
        users[user] = users.get(user, 0) + 1
        counts = self._level_counts
        counts[level] = at_level = counts.get(level, 0) + 1
        # compares, not ``max`` twice (a C call that iterates its arguments), every post
        if level > self._depth:
            self._depth = level
        if at_level > self._breadth:
            self._breadth = at_level
        self._live += 1

    def add_post(
        self,
        post_id: str,
        parent: str | None,
        *,
        user: str,
        ts_ms: int,
        followers: int | None = None,
    ) -> bool | None:
        """Add an upload (``parent`` None) or a reshare of ``parent``: ``False`` if the post
        is already here, ``None`` if its parent is not (the caller holds it), else ``True``.

        Why one method: the detector adds every post of a banked cluster, and asking
        first whether the post and its parent are here (``in`` the cascade, then ``in``
        the graph: two Python calls each) and then adding it (which asked both again)
        was four lookups through eight calls a reshare; here each is one lookup in the
        graph's node table.

        >>> c = Cascade()
        >>> c.add_post("p1", None, user="a", ts_ms=0), c.add_post("p3", "p2", user="c", ts_ms=2)
        (True, None)
        >>> c.add_post("p2", "p1", user="b", ts_ms=1), c.add_post("p2", "p9", user="b", ts_ms=1)
        (True, False)
        >>> c.graph.nodes["p2"]["level"], c.size, c.roots
        (1, 2, 1)
        """
        nodes = self.graph._node  # NetworkX's node table: post -> its attributes
        if post_id in nodes:
            return False
        if parent is None:
            self._add(post_id, None, user, ts_ms, 0, followers)
            self._roots += 1
            return True
        above = nodes.get(parent)
        if above is None:
            return None
        self._add(post_id, parent, user, ts_ms, above["level"] + 1, followers)
        return True

    def add_root(
        self, post_id: str, *, user: str, ts_ms: int, followers: int | None = None
    ) -> bool:
        """Add an independent upload; ``False`` if the post is already here."""
        return self.add_post(post_id, None, user=user, ts_ms=ts_ms, followers=followers) is True

    def add_reshare(
        self,
        post_id: str,
        *,
        parent: str,
        user: str,
        ts_ms: int,
        followers: int | None = None,
    ) -> bool:
        """Add a reshare of ``parent``; ``False`` if the post is already here."""
        added = self.add_post(post_id, parent, user=user, ts_ms=ts_ms, followers=followers)
        if added is None:
            raise ValueError(f"parent {parent!r} is not in this cascade")
        return added

    @classmethod
    def from_made(cls, posts: Iterable[tuple[str, str | None, str, int, bool]]) -> Cascade:
        """The forest of posts given as ``(post, parent, user, ts_ms, live)``, parents first:
        an unbanked cluster's posts (kept without a graph) when its content turns out banked.

        >>> c = Cascade.from_made([("p1", None, "a", 0, False), ("p2", "p1", "b", 1, True)])
        >>> (c.size, c.live, c.depth, c.unique_users)
        (2, 1, 1, 2)
        """
        c = cls()
        for post, parent, user, ts_ms, live in posts:
            if parent is None:
                c.add_root(post, user=user, ts_ms=ts_ms)
            else:
                c.add_reshare(post, parent=parent, user=user, ts_ms=ts_ms)
            if not live:
                c.take_down(post)
        return c

    def copy(self) -> Cascade:
        """An independent copy (a what-if: the figures with posts not applied yet).

        >>> c = Cascade()
        >>> _ = c.add_root("a", user="u", ts_ms=0)
        >>> d = c.copy()
        >>> _ = d.add_reshare("b", parent="a", user="v", ts_ms=1)
        >>> c.size, d.size, d.depth
        (1, 2, 1)
        """
        other = Cascade()
        other.graph = self.graph.copy()
        other._users = self._users.copy()
        other._level_counts = self._level_counts.copy()
        other._depth, other._breadth = self._depth, self._breadth
        other._live, other._roots = self._live, self._roots
        return other

    def mark(self) -> CascadeMark:
        """Where the cascade stands: :meth:`rewind` takes it back here (a what-if in place).

        >>> c = Cascade()
        >>> _ = c.add_root("a", user="u", ts_ms=0)
        >>> m = c.mark()
        >>> _ = c.add_reshare("b", parent="a", user="v", ts_ms=1)
        >>> c.size, c.depth, c.unique_users
        (2, 1, 2)
        >>> c.rewind(m)
        >>> c.size, c.depth, c.unique_users, list(c.graph.succ["a"])
        (1, 0, 1, [])
        """
        return CascadeMark(self.size, self._depth, self._breadth, self._live, self._roots)

    def rewind(self, mark: CascadeMark) -> None:
        """Remove the posts added since ``mark``, newest first, and put the figures back.

        Only for posts added (:meth:`add_root`, :meth:`add_reshare`) since the mark,
        nothing taken down meanwhile. What an early alert's figures read (the cluster's
        applied posts with its held ones added) costs what is held, not a copy of a graph
        of up to 20,000 posts (:meth:`copy`: about 8 us a post, the event loop held that
        long). The graph's dicts keep their order (the added posts were the last keys of
        each): figures, virality and spreaders are read in the same order as before.
        """
        graph = self.graph
        if len(graph) < mark.size:
            raise ValueError("the cascade is smaller than at its mark")
        nodes = graph.nodes
        for post in reversed(list(graph)[mark.size :]):  # (a list of keys: a C copy)
            data = nodes[post]
            for counts, key in ((self._users, data["user"]), (self._level_counts, data["level"])):
                counts[key] -= 1
                if not counts[key]:
                    del counts[key]
            graph.remove_node(post)
        self._depth, self._breadth = mark.depth, mark.breadth
        self._live, self._roots = mark.live, mark.roots

    def take_down(self, post_id: str) -> bool:
        """Mark a post removed; ``False`` if unknown or already down."""
        node = self.graph.nodes.get(post_id)
        if node is None or not node["live"]:
            return False
        node["live"] = False
        self._live -= 1
        return True

    def live_posts(self) -> list[str]:
        """The posts still up, in the order they were added."""
        return [n for n, live in self.graph.nodes(data="live") if live]

    @property
    def size(self) -> int:
        """Posts ever in the cluster, taken down or not (the node table's length: what
        ``number_of_nodes`` gives, without its Python call and an ``int`` call; the
        detector reads it on every banked event)."""
        return len(self.graph._node)

    @property
    def live(self) -> int:
        """Posts still up."""
        return self._live

    @property
    def roots(self) -> int:
        """Independent uploads."""
        return self._roots

    @property
    def unique_users(self) -> int:
        return len(self._users)

    @property
    def depth(self) -> int:
        """Longest chain of reshares from an upload (an upload alone is 0)."""
        return self._depth

    @property
    def breadth(self) -> int:
        """Most posts at any one depth."""
        return self._breadth

    def structural_virality(self) -> float:
        """See :func:`graphs.virality.structural_virality`; O(n).

        Computed as :func:`graphs.virality.forest_virality` over the posts in the order
        they were added (a parent is always added before its reshares): the same integer
        sums, so the same number, without NetworkX's traversal (an alert's figures read it).
        """
        pred = self.graph._pred  # post -> {its parent: edge} (no view a post)
        index = {post: i for i, post in enumerate(pred)}
        return forest_virality([index[next(iter(p))] if p else -1 for p in pred.values()])

    def posts(self) -> list[str]:
        """Every post, in the order they were added."""
        return list(self.graph)

    def top_spreaders(self, n: int) -> list[tuple[str, int]]:
        """Users whose posts were reshared most often (direct reshares), best first.

        Ties are broken by user id so the answer is deterministic. Read from the graph's
        own tables, not NetworkX's out-degree view and a node lookup per post (Python
        calls: 3,400 instructions a post against 920, a hot cluster's thousands of posts
        at each alert, each early one's too); the order (most, then user id) is total,
        so the first ``n`` are the same however the users were counted.

        >>> c = Cascade()
        >>> _ = c.add_root("a", user="u1", ts_ms=0)
        >>> _ = c.add_reshare("b", parent="a", user="u2", ts_ms=1)
        >>> _ = c.add_reshare("c", parent="a", user="u3", ts_ms=2)
        >>> _ = c.add_reshare("d", parent="b", user="u3", ts_ms=3)
        >>> c.top_spreaders(2)
        [('u1', 2), ('u2', 1)]
        """
        nodes = self.graph._node
        counts: dict[str, int] = {}
        for post, reshares in self.graph._succ.items():
            if reshares:
                user = nodes[post]["user"]
                counts[user] = counts.get(user, 0) + len(reshares)
        # (most, then user id) as tuples compare, with no key function called a user
        order = [(-drew, user) for user, drew in counts.items()]
        first = heapq.nsmallest(n, order) if n >= 0 else sorted(order)[:n]
        return [(user, -most) for most, user in first]
