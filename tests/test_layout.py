"""The cascade page's drawing and figures from parent indices, checked on random forests."""

from __future__ import annotations

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs.layout import forest_layout
from graphs.virality import (
    forest_virality,
    forest_wiener,
    structural_virality,
    wiener_index_tree,
)


@st.composite
def forests(draw: st.DrawFn) -> list[int]:
    """Parent indices, each parent before its children (-1: an upload)."""
    n = draw(st.integers(1, 60))
    return [
        -1
        if i == 0 or (draw(st.booleans()) and draw(st.booleans()))
        else draw(st.integers(0, i - 1))
        for i in range(n)
    ]


@settings(max_examples=200, deadline=None)
@given(forests())
def test_the_layout_is_a_tidy_tree(parents: list[int]) -> None:
    x, row, columns = forest_layout(parents)
    g = nx.DiGraph()
    g.add_nodes_from(range(len(parents)))
    g.add_edges_from((p, i) for i, p in enumerate(parents) if p >= 0)
    leaves = [i for i in g if g.out_degree(i) == 0]
    assert sorted(x[i] for i in leaves) == [float(c) for c in range(columns)]  # one column each
    for i, p in enumerate(parents):
        if p >= 0:
            assert row[i] == row[p] + 1
        else:
            assert row[i] == 0
    for node in g:
        kids = list(g.successors(node))
        if kids:  # above the middle of its children, inside their span
            assert min(x[k] for k in kids) <= x[node] <= max(x[k] for k in kids)
    seen: set[tuple[float, int]] = set()
    for i in range(len(parents)):
        assert (x[i], row[i]) not in seen  # no two posts drawn on one spot
        seen.add((x[i], row[i]))


@settings(max_examples=200, deadline=None)
@given(forests())
def test_virality_from_parent_indices_is_networkxs(parents: list[int]) -> None:
    g = nx.DiGraph()
    g.add_nodes_from(range(len(parents)))
    g.add_edges_from((p, i) for i, p in enumerate(parents) if p >= 0)
    assert abs(forest_virality(parents) - structural_virality(g)) < 1e-9


@settings(max_examples=300, deadline=None)
@given(forests())
def test_the_one_pass_sums_are_networkxs_tree_walks(parents: list[int]) -> None:
    """The one pass's integers are the per-tree walk's (:func:`wiener_index_tree`), so the
    virality is the same float to the bit, not only close: an alert's figure unchanged."""
    g = nx.DiGraph()
    g.add_nodes_from(range(len(parents)))
    g.add_edges_from((p, i) for i, p in enumerate(parents) if p >= 0)
    total, pairs = wiener_index_tree(g)
    assert forest_wiener(parents) == (total, pairs)
    assert forest_virality(parents) == (total / pairs if pairs else 0.0)
