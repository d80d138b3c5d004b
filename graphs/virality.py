"""Structural virality: how far apart, on average, two posts of a cascade are.

Goel, Anderson, Hofman and Watts (Management Science, 2016) define the
structural virality of a reshare tree as the mean shortest-path distance
between all pairs of its nodes, the tree taken as undirected. A broadcast (one
post, everyone reshares it) scores just under 2; a long chain of person-to-
person reshares scores high. It tells on-call *how* an item spreads: a high
score means many independent hops, so takedowns of a few accounts will not
stop it.

The all-pairs definition costs O(n^2). In a tree every path through an edge
that splits the tree into ``s`` and ``n - s`` nodes is counted once per pair
of sides, so the Wiener index (the sum of all pair distances) is
``sum over edges of s * (n - s)``: O(n) from subtree sizes.

A forest (several independent uploads of the same content) has no path
between trees. We take the mean over the pairs that *are* connected, i.e. the
pooled ``sum of Wiener indices / sum of pair counts`` over the trees. A forest
of single posts scores 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import networkx as nx


def _components(graph: nx.DiGraph) -> Iterable[tuple[Hashable, list[Hashable]]]:
    for root in (n for n, d in graph.in_degree() if d == 0):
        yield root, list(nx.dfs_preorder_nodes(graph, root))


def wiener_index_tree(graph: nx.DiGraph) -> tuple[int, int]:
    """Sum of pairwise distances and number of connected pairs in a forest.

    ``graph`` is a forest of out-trees (edge parent -> child). Returns
    ``(total_distance, pairs)``, summed over its trees.

    Examples
    --------
    >>> g = nx.DiGraph([(0, 1), (0, 2), (0, 3)])
    >>> wiener_index_tree(g)
    (9, 6)
    >>> nx.wiener_index(g.to_undirected())
    9.0
    """
    total = 0
    pairs = 0
    for _root, order in _components(graph):
        n = len(order)
        pairs += n * (n - 1) // 2
        size: dict[Hashable, int] = {}
        for node in reversed(order):
            s = 1 + sum(size[c] for c in graph.successors(node))
            size[node] = s
            if graph.in_degree(node):
                total += s * (n - s)
    return total, pairs


def structural_virality(graph: nx.DiGraph) -> float:
    """Mean distance between connected pairs of posts (Goel et al. 2016), in O(n).

    Examples
    --------
    A broadcast of one post reshared 4 times:

    >>> star = nx.DiGraph([(0, i) for i in range(1, 5)])
    >>> structural_virality(star)
    1.6
    >>> chain = nx.DiGraph([(i, i + 1) for i in range(4)])
    >>> structural_virality(chain)
    2.0
    >>> structural_virality(nx.DiGraph())
    0.0
    """
    total, pairs = wiener_index_tree(graph)
    return total / pairs if pairs else 0.0


def forest_wiener(parents: Sequence[int]) -> tuple[int, int]:
    """:func:`wiener_index_tree` of a forest given as parent indices (``-1``: a root), each
    parent before its children: ``(total_distance, pairs)``, the same integers.

    One pass, children before parents: a tree's ``sum of s * (n - s)`` over its edges is
    ``n * sum(s) - sum(s * s)``, and the sum of the subtree sizes below a node is carried
    up with its size, so a tree's ``n`` and ``sum(s)`` are its root's when the pass gets
    there (no tree id a post, no count of each tree's posts, no pass over them: half the
    instructions of the four passes that did it, an alert's figures reading it).

    Examples
    --------
    >>> forest_wiener([-1, 0, 0, 0]), forest_wiener([-1, 0, 1, -1, 3])
    ((9, 6), (5, 4))
    """
    n = len(parents)
    size = [1] * n
    below = [0] * n  # the sizes of the subtrees under each node, summed
    squares = total = pairs = 0
    for i in range(n - 1, -1, -1):
        p = parents[i]
        s = size[i]
        if p >= 0:
            size[p] += s
            below[p] += below[i] + s
            squares += s * s
        else:
            total += s * below[i]
            pairs += s * (s - 1) // 2
    return total - squares, pairs


def forest_virality(parents: Sequence[int]) -> float:
    """:func:`structural_virality` of a forest given as parent indices (``-1``: a root),
    each parent before its children: the same subtree-size sum (:func:`forest_wiener`),
    without building a graph (the cascade view has the posts in that form already).

    Examples
    --------
    >>> forest_virality([-1, 0, 0, 0, 0]), forest_virality([-1, 0, 1, 2, 3])
    (1.6, 2.0)
    >>> g = nx.DiGraph([(0, 1), (0, 2), (2, 3), (4, 5)])
    >>> forest_virality([-1, 0, 0, 2, -1, 4]) == structural_virality(g)
    True
    """
    total, pairs = forest_wiener(parents)
    return total / pairs if pairs else 0.0
