"""An exact PDQ index: every banked hash within a Hamming threshold, fast at millions.

Multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012) with a NumPy
verification step. The 256 bits of a PDQ hash are cut into 16 disjoint
16-bit chunks, and each chunk value has a bucket (a table per chunk, stored
as one compressed sparse row array over the 16 x 65,536 possible keys).

Why it is exact (recall 1.0, the very answer of a brute-force scan): let
``t = threshold // 16``. If a banked hash ``x`` is within ``threshold`` of the
query ``q``, some chunk of ``x`` differs from the same chunk of ``q`` in at
most ``t`` bits: were every chunk ``t + 1`` or more bits apart, the whole
hashes would be ``16 * (t + 1) > threshold`` bits apart (pigeonhole). So
probing, in each chunk's table, every value within ``t`` bits of the query's
chunk finds every hash within the threshold (and some that are not), and
verifying the full 256-bit distance of each candidate keeps exactly those
within it. At the banks' default of 31, ``t = 1``: 17 probes in each of the 16
tables. Thresholds up to :data:`MAX_INDEXED_THRESHOLD` (63, ``t = 3``, 697
probes per table) use the tables; above that the index scans every row
(vectorised), just as exact: with four flips (2,517 probes per table) the
probes and their candidates would cost about what a scan of a million rows
does. (At a million random entries: 0.2 ms a lookup at 31, 1 ms at 47, 5 ms
at 63, 11 ms for a scan.)

Changes take effect at once. Added hashes go to a tail that is scanned (a few
microseconds for a thousand rows) and, once it holds ``tail_max`` rows, are
merged into the tables (an insertion, not a rebuild). A removed hash is
marked dead and never reported again; dead rows are compacted away when they
outnumber the live ones. Not thread-safe: one writer and reader, as in a
pipeline worker.

Each hash may carry an integer *tag*, given when it is added and found by
:meth:`PDQIndex.search_tags` and :meth:`PDQIndex.tags_of`: rows move when the
index compacts, a tag does not, so a caller (the video bank: a tag is a frame
id) keeps its own tables keyed by tag instead of a dict keyed by hash.

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
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

BITS: Final = 256
CHUNKS: Final = 16
CHUNK_BITS: Final = BITS // CHUNKS
#: Most bits flipped per chunk when probing: 1 + 16 + 120 + 560 = 697 probes per table.
MAX_FLIPS: Final = 3
#: Largest threshold answered through the tables; above it, a vectorised scan.
MAX_INDEXED_THRESHOLD: Final = CHUNKS * (MAX_FLIPS + 1) - 1
DEFAULT_THRESHOLD: Final = 31

_KEYS: Final = CHUNKS << CHUNK_BITS  # 16 tables x 65,536 chunk values
_CHUNK_BASE: Final = np.arange(CHUNKS, dtype=np.int64) << CHUNK_BITS
# Queries per vectorised block, so a batch's temporary arrays stay a few tens of MB.
_BLOCK_CANDIDATES: Final = 1 << 15
_BLOCK_SCAN_CELLS: Final = 1 << 18

Words = npt.NDArray[np.uint64]
Rows = npt.NDArray[np.int64]


def _flip_masks(max_flips: int) -> npt.NDArray[np.int64]:
    masks = [0]
    for k in range(1, max_flips + 1):
        masks += [sum(1 << b for b in bits) for bits in itertools.combinations(range(16), k)]
    return np.array(masks, dtype=np.int64)


# _FLIPS[t]: every 16-bit mask of at most t set bits.
_FLIPS: Final = [_flip_masks(t) for t in range(MAX_FLIPS + 1)]


def parse_hashes(hashes: Iterable[str]) -> Words:
    """PDQ hex strings as an ``(n, 4)`` array of 64-bit words; raises ``ValueError``.

    Any fixed mapping of bits to words gives the same Hamming distances, so
    the words keep the bytes in their hex order.

    >>> parse_hashes(["0" * 63 + "1"]).shape
    (1, 4)
    """
    raw = bytearray()
    for n, h in enumerate(hashes):
        if len(h) != 64:
            raise ValueError(f"PDQ hash {n}: 64 hex digits expected, not {len(h)}")
        try:
            raw += bytes.fromhex(h)
        except ValueError:
            raise ValueError(f"PDQ hash {n}: not hexadecimal: {h!r}") from None
        if len(raw) != 32 * (n + 1):  # fromhex skips whitespace
            raise ValueError(f"PDQ hash {n}: not hexadecimal: {h!r}")
    return np.frombuffer(bytes(raw), dtype=np.uint64).reshape(-1, 4).copy()


def format_hash(words: Words) -> str:
    """The hex string of one row of words (inverse of :func:`parse_hashes`)."""
    return words.tobytes().hex()


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


class PDQIndex:
    """Distinct PDQ hashes, searchable by Hamming distance with the answer of a full scan.

    Parameters
    ----------
    tail_max:
        Hashes added since the last merge that are scanned rather than looked
        up; when the tail outgrows this, it is merged into the tables.
    """

    def __init__(self, hashes: Iterable[str] = (), *, tail_max: int = 1024) -> None:
        if tail_max < 0:
            raise ValueError("tail_max must be >= 0")
        self.tail_max = tail_max
        self._words: Words = np.zeros((0, 4), dtype=np.uint64)
        self._alive = np.zeros(0, dtype=bool)
        self._tags = np.zeros(0, dtype=np.int64)
        self._n = 0  # rows in use (live and dead)
        self._live = 0
        self._indexed = 0  # rows [0, _indexed) are in the tables
        self._offsets = np.zeros(_KEYS + 1, dtype=np.int32)
        self._ids = np.zeros(0, dtype=np.int32)
        self.add_many(hashes)

    def __len__(self) -> int:
        return self._live

    def __contains__(self, pdq: object) -> bool:
        if not isinstance(pdq, str):
            return False
        try:
            q = parse_hashes([pdq])
        except ValueError:
            return False
        return bool(len(self._find_exact(q)[0]))

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (words, liveness, tables)."""
        return int(
            self._words.nbytes
            + self._alive.nbytes
            + self._tags.nbytes
            + self._offsets.nbytes
            + self._ids.nbytes
        )

    # ---------------------------------------------------------------- changes

    def add(self, pdq: str) -> bool:
        """Add one hash; ``False`` when it is there already."""
        return self.add_many([pdq]) == 1

    def add_many(self, hashes: Iterable[str], tags: Sequence[int] | None = None) -> int:
        """Add hashes (already present ones and repeats are skipped); the number added.

        ``tags``, one per hash, are kept with the hashes that are added (a
        skipped hash keeps the tag it has); without them a hash's tag is -1.
        """
        return self.add_words(parse_hashes(hashes), tags)

    def add_words(self, words: Words, tags: Sequence[int] | Rows | None = None) -> int:
        """:meth:`add_many` for hashes already parsed (rows of :func:`parse_hashes`)."""
        words = np.ascontiguousarray(words, dtype=np.uint64).reshape(-1, 4)
        if not len(words):
            return 0
        tag = np.full(len(words), -1, dtype=np.int64)
        if tags is not None:
            tag[:] = np.asarray(tags, dtype=np.int64)  # a length mismatch raises
        first = _distinct_rows(words)
        words, tag = words[first], tag[first]
        if len(words) > self.tail_max:
            self._merge_tail()  # the tail must be small for the membership check
        if self._n:
            found_q, _ = self._find_exact(words)
            if len(found_q):
                keep = np.ones(len(words), dtype=bool)
                keep[found_q] = False
                words, tag = words[keep], tag[keep]
        k = len(words)
        if not k:
            return 0
        self._reserve(self._n + k)
        self._words[self._n : self._n + k] = words
        self._tags[self._n : self._n + k] = tag
        self._alive[self._n : self._n + k] = True
        self._n += k
        self._live += k
        if self._n - self._indexed > self.tail_max:
            self._merge_tail()
        return k

    def remove(self, pdq: str) -> bool:
        """Remove a hash at once; ``False`` (and no harm) when it is not there."""
        try:
            q = parse_hashes([pdq])
        except ValueError:
            return False
        _, rows = self._find_exact(q)
        if not len(rows):
            return False
        self._alive[rows] = False
        self._live -= len(rows)
        if self._n - self._live > max(self._live, 1024):
            self._rebuild()
        return True

    # ---------------------------------------------------------------- lookups

    def search(self, pdq: str, threshold: int = DEFAULT_THRESHOLD) -> list[tuple[str, int]]:
        """Every hash within ``threshold`` of ``pdq``, as ``(hex, distance)``, nearest first.

        Ties at one distance are in hex order.
        """
        return self.search_many([pdq], threshold)[0]

    def search_many(
        self, queries: Sequence[str], threshold: int = DEFAULT_THRESHOLD
    ) -> list[list[tuple[str, int]]]:
        """:meth:`search` for many queries at once (much faster per query)."""
        qi, rows, dist = self.search_words(parse_hashes(queries), threshold)
        out: list[list[tuple[str, int]]] = [[] for _ in range(len(queries))]
        words = self._words
        for i, r, d in zip(qi.tolist(), rows.tolist(), dist.tolist(), strict=True):
            out[i].append((words[r].tobytes().hex(), d))
        for found in out:
            if len(found) > 1:
                found.sort(key=lambda m: (m[1], m[0]))
        return out

    def search_words(self, queries: Words, threshold: int) -> tuple[Rows, Rows, Rows]:
        """The low-level search: ``(query index, row, distance)`` arrays, by query then row.

        Rows are only valid until the next change to the index; read a row's
        hash with :meth:`hash_at`.
        """
        if not 0 <= threshold <= BITS:
            raise ValueError(f"threshold must be 0..{BITS}, not {threshold}")
        q = np.ascontiguousarray(queries, dtype=np.uint64).reshape(-1, 4)
        parts: list[tuple[Rows, Rows, Rows]] = []
        if threshold > MAX_INDEXED_THRESHOLD:
            parts.append(self._scan(q, 0, self._n, threshold))
        else:
            if self._indexed:
                parts.append(self._probe(q, threshold))
            if self._n > self._indexed:
                parts.append(self._scan(q, self._indexed, self._n, threshold))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        qi = np.concatenate([p[0] for p in parts])
        rows = np.concatenate([p[1] for p in parts])
        dist = np.concatenate([p[2] for p in parts])
        if len(qi) < 2:
            return qi, rows, dist
        # A hash near the query in several chunks is a candidate several times.
        key = qi * max(self._n, 1) + rows
        key, first = np.unique(key, return_index=True)
        return qi[first], rows[first], dist[first]

    def hash_at(self, row: int) -> str:
        return format_hash(self._words[row])

    def search_tags(self, queries: Words, threshold: int) -> tuple[Rows, Rows, Rows]:
        """:meth:`search_words` answering each hash found by its tag: ``(query, tag, distance)``."""
        qi, rows, dist = self.search_words(queries, threshold)
        return qi, self._tags[rows], dist

    def tags_of(self, words: Words) -> Rows:
        """The tag of each hash (rows of :func:`parse_hashes`), -2 for one not in the index.

        >>> index = PDQIndex()
        >>> index.add_many(["f" * 64], tags=[7])
        1
        >>> index.tags_of(parse_hashes(["f" * 64, "0" * 64])).tolist()
        [7, -2]
        """
        out = np.full(len(words), -2, dtype=np.int64)
        qi, rows = self._find_exact(np.ascontiguousarray(words, dtype=np.uint64).reshape(-1, 4))
        out[qi] = self._tags[rows]
        return out

    # ---------------------------------------------------------------- internals

    def _probe(self, q: Words, threshold: int) -> tuple[Rows, Rows, Rows]:
        """Candidates from the tables, verified; duplicates are left to the caller."""
        masks = _FLIPS[threshold // CHUNKS]
        per_query = CHUNKS * len(masks) * max(1, self._indexed >> CHUNK_BITS)
        step = max(1, _BLOCK_CANDIDATES // per_query)
        out = []
        for lo in range(0, len(q), step):
            block = q[lo : lo + step]
            chunks = block.view(np.uint16).reshape(len(block), CHUNKS).astype(np.int64)
            keys = ((chunks[:, :, None] ^ masks) + _CHUNK_BASE[:, None]).ravel()
            starts = self._offsets[keys]
            lens = self._offsets[keys + 1] - starts
            total = int(lens.sum())
            # Every slot of every probed bucket, as one flat gather.
            ends = np.cumsum(lens)
            pos = np.arange(total, dtype=np.int64) + np.repeat(starts - ends + lens, lens)
            cand = np.take(self._ids, pos)
            if len(block) == 1:
                qi = np.zeros(total, dtype=np.int64)
                qrows = np.tile(block, (total, 1))
            else:
                probes_per_query = CHUNKS * len(masks)
                qi = np.repeat(np.arange(len(block), dtype=np.int64), probes_per_query)
                qi = np.repeat(qi, lens)
                qrows = np.take(block, qi, axis=0)
            hit, dist = _verify(np.take(self._words, cand, axis=0), qrows, threshold)
            rows = cand[hit].astype(np.int64)
            live = self._alive[rows]
            out.append((qi[hit][live] + lo, rows[live], dist[live]))
        return _concat(out)

    def _scan(self, q: Words, lo: int, hi: int, threshold: int) -> tuple[Rows, Rows, Rows]:
        """Rows ``[lo, hi)`` compared with every query: exact at any threshold."""
        n = hi - lo
        if not n:
            return _concat([])
        step = max(1, _BLOCK_SCAN_CELLS // n)
        out = []
        for qlo in range(0, len(q), step):
            block = q[qlo : qlo + step]
            pairs = np.repeat(block, n, axis=0)  # (query, row) pairs, query-major
            rows = np.tile(self._words[lo:hi], (len(block), 1))
            hit, dist = _verify(rows, pairs, threshold)
            qi, r = np.divmod(hit, n)
            live = self._alive[r + lo]
            out.append((qi[live] + qlo, r[live] + lo, dist[live]))
        return _concat(out)

    def _find_exact(self, q: Words) -> tuple[Rows, Rows]:
        """Live rows equal to each query: one table suffices (equal hashes share every chunk)."""
        parts = []
        if self._indexed:
            step = max(1, _BLOCK_CANDIDATES // max(1, self._indexed >> CHUNK_BITS))
            for lo in range(0, len(q), step):
                block = q[lo : lo + step]
                keys = block.view(np.uint16).reshape(len(block), CHUNKS)[:, 0].astype(np.int64)
                starts = self._offsets[keys]
                lens = self._offsets[keys + 1] - starts
                ends = np.cumsum(lens)
                pos = np.arange(int(lens.sum()), dtype=np.int64)
                pos += np.repeat(starts - ends + lens, lens)
                cand = np.take(self._ids, pos).astype(np.int64)
                qi = np.repeat(np.arange(len(block), dtype=np.int64), lens)
                same = (np.take(self._words, cand, axis=0) == block[qi]).all(axis=1)
                same &= self._alive[cand]
                parts.append((qi[same] + lo, cand[same]))
        if self._n > self._indexed:
            tail = self._words[self._indexed : self._n]
            same = (q[:, None, :] == tail[None, :, :]).all(axis=2)
            same &= self._alive[self._indexed : self._n]
            qi, r = np.nonzero(same)
            parts.append((qi, r + self._indexed))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _reserve(self, n: int) -> None:
        if n <= len(self._words):
            return
        cap = max(n, 2 * len(self._words), 1024)
        words = np.zeros((cap, 4), dtype=np.uint64)
        words[: self._n] = self._words[: self._n]
        alive = np.zeros(cap, dtype=bool)
        alive[: self._n] = self._alive[: self._n]
        tags = np.full(cap, -1, dtype=np.int64)
        tags[: self._n] = self._tags[: self._n]
        self._words, self._alive, self._tags = words, alive, tags

    def _merge_tail(self) -> None:
        """Put the tail's live rows into the tables: an insertion, O(size) memory moves."""
        if self._n == self._indexed:
            return
        if self._n - self._indexed >= self._indexed:
            self._rebuild()
            return
        rows = np.flatnonzero(self._alive[self._indexed : self._n]) + self._indexed
        chunks = self._words[rows].view(np.uint16).reshape(len(rows), CHUNKS).astype(np.int64)
        keys = (chunks + _CHUNK_BASE).ravel()
        vals = np.repeat(rows, CHUNKS).astype(np.int32)
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
        self._ids = np.insert(self._ids, self._offsets[keys + 1], vals)
        self._offsets[1:] += np.cumsum(np.bincount(keys, minlength=_KEYS))
        self._indexed = self._n

    def _rebuild(self) -> None:
        """Drop dead rows and build the tables afresh (bulk loads, compaction)."""
        live = np.flatnonzero(self._alive[: self._n])
        words = self._words[live]
        n = len(words)
        tags = self._tags[live]
        self._tags = np.full(max(n, 1024), -1, dtype=np.int64)
        self._tags[:n] = tags
        self._words = np.zeros((max(n, 1024), 4), dtype=np.uint64)
        self._words[:n] = words
        self._alive = np.zeros(len(self._words), dtype=bool)
        self._alive[:n] = True
        self._n = self._live = self._indexed = n
        chunks = words.view(np.uint16).reshape(n, CHUNKS)
        ids = []
        counts = []
        for c in range(CHUNKS):
            column = chunks[:, c]
            ids.append(np.argsort(column, kind="stable").astype(np.int32))  # radix sort
            counts.append(np.bincount(column, minlength=1 << CHUNK_BITS))
        self._ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
        self._offsets = np.zeros(_KEYS + 1, dtype=np.int32)
        np.cumsum(np.concatenate(counts), out=self._offsets[1:])


def _verify(rows: Words, queries: Words, threshold: int) -> tuple[Rows, Rows]:
    """Which paired rows are within ``threshold`` bits, and their distances.

    The hot loop of every lookup, so it avoids NumPy's slow reductions over a
    short axis: the four per-word bit counts (bytes, each <= 64) are summed by
    one multiplication of their 32-bit view by 0x01010101, which leaves the sum
    modulo 256 in the top byte (the partial sums below it stay under 256, so
    nothing carries into it). Only a distance of 256 wraps (to 0); the few rows
    that pass this filter get their exact distance, which weeds it out.
    """
    np.bitwise_xor(rows, queries, out=rows)
    counts = np.bitwise_count(rows)
    approx = (counts.view(np.uint32).ravel() * np.uint32(0x01010101)) >> np.uint32(24)
    hit = np.flatnonzero(approx <= threshold)
    dist = counts[hit].sum(axis=1, dtype=np.int64)
    keep = dist <= threshold
    return hit[keep], dist[keep]


def _distinct_rows(words: Words) -> Rows:
    """The index of each distinct row's first occurrence, in order."""
    if len(words) < 2:
        return np.arange(len(words), dtype=np.int64)
    order = np.lexsort(words.T[::-1])
    s = words[order]
    new = np.ones(len(s), dtype=bool)
    new[1:] = (s[1:] != s[:-1]).any(axis=1)
    return np.sort(order[new])


def _concat(parts: list[tuple[Rows, Rows, Rows]]) -> tuple[Rows, Rows, Rows]:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    if len(parts) == 1:
        return parts[0]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )
