"""Where to draw each post of a reshare forest: a tidy tree layout in linear time.

The cascade page draws a forest (independent uploads are roots, reshares
hang under what they reshared). Each leaf gets the next column, in the
order the posts were added (event time, as a rule); a post with reshares
sits above the middle of its first and last child; its row is its depth.
Nothing overlaps, a chain stays a vertical line, and the cost is one pass
over the posts, without recursion, so a chain of 10,000 reshares is as cheap
as a star of 10,000.

Posts are given as indices ``0..n-1`` and the index of each one's parent
(``-1`` for an upload); the order of the indices is the order siblings are
drawn in.

>>> x, row, columns = forest_layout([-1, 0, 0, 1, -1])
>>> x, row, columns
([0.5, 0.0, 1.0, 0.0, 2.0], [0, 1, 1, 2, 0], 3)
"""

from __future__ import annotations

from collections.abc import Sequence


def forest_layout(parents: Sequence[int]) -> tuple[list[float], list[int], int]:
    """Column (``x``, in leaf widths) and row (depth) of every post, and the columns used.

    A parent index that is out of range, or that would close a loop, makes
    the post a root: a drawing must never fail on odd input.

    >>> forest_layout([])
    ([], [], 0)
    >>> forest_layout([1, 0])   # a loop: cut at its first post
    ([0.0, 0.0], [0, 1], 1)
    >>> x, row, _ = forest_layout([-1] + list(range(9_999)))   # a chain: one column
    >>> max(x), max(row)
    (0.0, 9999)
    """
    n = len(parents)
    children: list[list[int]] = [[] for _ in range(n)]
    roots: list[int] = []
    for i, p in enumerate(parents):
        if 0 <= p < n and p != i:
            children[p].append(i)
        else:
            roots.append(i)
    reached = bytearray(n)
    row = [0] * n
    kids: list[list[int]] = [[] for _ in range(n)]
    order: list[int] = []  # pre-order: leaves come left to right

    def walk(root: int) -> None:
        stack = [root]
        reached[root] = 1
        while stack:
            node = stack.pop()
            order.append(node)
            mine = kids[node]
            for child in reversed(children[node]):
                if not reached[child]:
                    reached[child] = 1
                    row[child] = row[node] + 1
                    mine.append(child)
                    stack.append(child)
            mine.reverse()

    for r in roots:
        walk(r)
    # A loop has no root above it: what the walks did not reach is cut at its first post.
    for i in range(n):
        if not reached[i]:
            walk(i)
    x = [0.0] * n
    columns = 0
    for node in order:
        if not kids[node]:
            x[node] = float(columns)
            columns += 1
    for node in reversed(order):
        mine = kids[node]
        if mine:
            x[node] = (x[mine[0]] + x[mine[-1]]) / 2
    return x, row, columns
