"""An exact PDQ index: every banked hash within a Hamming threshold, fast at millions.

The index is compiled (``rust/core/src/pdq.rs``, :class:`streams._core.PdqIndex`):
multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012) over 16 tables
of 16-bit chunks. Why it is exact (recall 1.0, the very answer of a
brute-force scan): a hash within ``threshold`` of the query has some chunk
within ``threshold // 16`` bits of the query's same chunk (pigeonhole), so
probing every such chunk value finds it, and the full distance of each
candidate keeps exactly those within the threshold. At the banks' default of
31: 17 probes in each of the 16 tables. Thresholds over
:data:`MAX_INDEXED_THRESHOLD` (63) scan every row, just as exact.

Changes take effect at once: an added hash is found by the next search (it
waits in a scanned tail, merged into the tables in one pass every few
thousand adds), a removed one is never reported again (rows are compacted
when the dead outnumber the live). Each hash may carry an integer *tag*,
given when it is added and found by :meth:`PDQIndex.search_tags` and
:meth:`PDQIndex.tags_of` (the video bank's frame ids). Answers are
deterministic: per query nearest first, ties in hex order. A string that is
not 64 hex digits raises ``ValueError`` (``remove`` and ``in`` answer
``False``).

>>> index = PDQIndex()
>>> index.add_many(["f" * 64, "0" * 64])
2
>>> near = "f" * 62 + "00"          # 8 bits away from "f" * 64
>>> index.search(near, threshold=31)
[('ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff', 8)]
>>> index.remove("f" * 64)
True
>>> index.search(near)
[]
>>> index.add_many(["f" * 64], tags=[7]), index.tags_of(["f" * 64, "1" * 64])
(1, [7, -2])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from streams._core import PDQ_MAX_INDEXED_THRESHOLD
from streams._core import PdqIndex as PDQIndex

__all__ = ["DEFAULT_THRESHOLD", "MAX_INDEXED_THRESHOLD", "PDQIndex", "brute_force"]

#: Largest threshold answered through the tables; above it, a scan.
MAX_INDEXED_THRESHOLD: Final = PDQ_MAX_INDEXED_THRESHOLD
DEFAULT_THRESHOLD: Final = 31


def brute_force(
    bank: Iterable[str], queries: Iterable[str], threshold: int = DEFAULT_THRESHOLD
) -> list[list[tuple[str, int]]]:
    """The reference answer: for each query, every distinct bank hash within ``threshold``.

    Python integers, no index: slow, obviously right, the yardstick of the tests.

    >>> brute_force(["f" * 64, "0" * 64], ["f" * 63 + "e"], 31)
    [[('ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff', 1)]]
    """
    values = {h.lower(): int(h, 16) for h in bank}
    out = []
    for q in queries:
        qv = int(q, 16)
        found = [(h, (v ^ qv).bit_count()) for h, v in values.items()]
        out.append(sorted(((h, d) for h, d in found if d <= threshold), key=lambda m: (m[1], m[0])))
    return out
