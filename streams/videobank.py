"""The bank of videos: banked vPDQ signals, found by their frames, scored exactly.

vPDQ's rule compares every frame of a query with every frame of each banked
video (:func:`streams.vpdq.compare`): at 10,000 videos of 60 frames that is 36
million PDQ distances a lookup. Here the usable frames of every banked video
(quality >= 50, each hash once) go into one exact PDQ multi-index
(:class:`streams.pdqindex.PDQIndex`): a lookup searches it with the query's
frames at the widest threshold of the banks, which finds *every* (query
frame, banked frame) pair within that distance, so the candidate videos are
those with at least one pair, and their two percentages, counted from those
pairs at each bank's own threshold, are exactly the brute-force ones
(:func:`brute_force_videos` is that reference; a test holds the two equal).

Memory: the index keeps each distinct frame once with an integer tag (its
frame id); a frame id's owner is one int64 (a video id, or a mark that
several videos share it, resolved in a small dict), and each video keeps the
ids of its frames. Python objects are per video, not per frame.

An image matches a banked video too when its PDQ hash is within the bank's
threshold of one of the video's frames (a screenshot): :meth:`VideoBank.lookup_frame`.

>>> from streams.banks import BankConfig, BankEntry
>>> from streams.vpdq import VpdqFrame, format_vpdq
>>> frames = [VpdqFrame(h * 64, 100, float(i)) for i, h in enumerate("0f")]
>>> bank = VideoBank(BankConfig)
>>> bank.add_many([BankEntry("ncii", "vpdq", format_vpdq(frames))])
1
>>> [(h.entry.bank, h.score.query_match_pct) for h in bank.lookup(frames[:1])]
[('ncii', 100.0)]
>>> bank.lookup_frame("f" * 63 + "0")[0].distance
4
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from streams.pdqindex import PDQIndex
from streams.vpdq import VideoScore, VpdqFrame, compare, hamming, parse_vpdq, usable_hashes

if TYPE_CHECKING:
    from streams.banks import BankConfig, BankEntry

Ids = npt.NDArray[np.int64]

_FREE: Final = -1  # a frame id no video holds (its hash has left the index)
_SHARED: Final = -2  # a frame id several videos hold: see VideoBank._shared


@dataclass(frozen=True, slots=True)
class VideoHit:
    """A banked video a query matched: the entry, the frame distance, the vPDQ score.

    ``score`` is None when the query was an image that matched one frame;
    ``distance`` is then that frame's distance, and for a video the largest of
    the matched query frames' nearest distances.
    """

    entry: BankEntry
    distance: int
    score: VideoScore | None


@dataclass(slots=True)
class _Video:
    frames: Ids  # frame ids of its usable unique hashes, in the signal's order
    entries: tuple[BankEntry, ...]  # one per bank holding it


class VideoBank:
    """Banked videos (``vpdq`` entries), searched by frame through one PDQ multi-index.

    ``config`` gives a bank's settings by name (its PDQ threshold, the two
    match percentages, whether it is enabled); call :meth:`changed` when
    they change. Entries come normalised (the signal in its canonical text).
    """

    def __init__(self, config: Callable[[str], BankConfig]) -> None:
        self._config = config
        self._index = PDQIndex()
        self._owner: Ids = np.zeros(0, dtype=np.int64)  # by frame id
        self._shared: dict[int, list[int]] = {}  # frame id -> the videos holding it
        self._next_frame = 0
        self._videos: list[_Video | None] = []
        self._free_videos: list[int] = []
        self._by_signal: dict[str, int] = {}
        self._per_bank: Counter[str] = Counter()
        self._radius: int | None = None

    # ------------------------------------------------------------------ changes

    def changed(self) -> None:
        """Bank settings changed: the search radius is worked out again."""
        self._radius = None

    def add_many(self, entries: Iterable[BankEntry]) -> int:
        """Add entries (one index insertion for all their new frames); the number new.

        An entry already in its bank is not new (its label is updated). A bad
        signal raises ``ValueError``; what came before it is searchable.
        """
        new = 0
        fresh: list[tuple[int, list[str]]] = []
        try:
            for entry in entries:
                vid = self._by_signal.get(entry.signal)
                if vid is not None:
                    video = self._videos[vid]
                    assert video is not None
                    others = tuple(e for e in video.entries if e.bank != entry.bank)
                    if len(others) == len(video.entries):
                        new += 1
                        self._per_bank[entry.bank] += 1
                    video.entries = (*others, entry)
                    continue
                hashes = usable_hashes(parse_vpdq(entry.signal))
                vid = self._free_videos.pop() if self._free_videos else len(self._videos)
                if vid == len(self._videos):
                    self._videos.append(None)
                self._videos[vid] = _Video(np.zeros(0, dtype=np.int64), (entry,))
                self._by_signal[entry.signal] = vid
                self._per_bank[entry.bank] += 1
                new += 1
                fresh.append((vid, hashes))
        finally:
            self._index_frames(fresh)
            self._radius = None
        return new

    def _index_frames(self, fresh: list[tuple[int, list[str]]]) -> None:
        """Give new videos their frame ids: a known hash keeps its id, a new one gets the next."""
        hashes = [h for _, hs in fresh for h in hs]
        if not hashes:
            return
        position = {h: i for i, h in enumerate(dict.fromkeys(hashes))}
        distinct = list(position)
        ids = np.array(self._index.tags_of(distinct), dtype=np.int64)
        absent = np.flatnonzero(ids == -2)
        count = len(absent)
        ids[absent] = np.arange(self._next_frame, self._next_frame + count, dtype=np.int64)
        self._next_frame += count
        if self._next_frame > len(self._owner):
            grown = np.full(max(self._next_frame, 2 * len(self._owner)), _FREE, dtype=np.int64)
            grown[: len(self._owner)] = self._owner
            self._owner = grown
        self._index.add_many([distinct[i] for i in absent.tolist()], ids[absent].tolist())
        frame_ids = ids[[position[h] for h in hashes]]
        pos = 0
        for vid, hs in fresh:
            frames = frame_ids[pos : pos + len(hs)].copy()
            pos += len(hs)
            video = self._videos[vid]
            assert video is not None
            video.frames = frames
            owners = self._owner[frames]
            free = owners == _FREE
            self._owner[frames[free]] = vid
            for fid in frames[~free].tolist():
                owner = int(self._owner[fid])
                if owner == _SHARED:
                    self._shared[fid].append(vid)
                else:
                    self._shared[fid] = [owner, vid]
                    self._owner[fid] = _SHARED

    def withdraw(self, bank: str, signal: str) -> bool:
        """Withdraw a (canonical) signal from one bank; ``False`` when it is not there."""
        vid = self._by_signal.get(signal)
        video = self._videos[vid] if vid is not None else None
        if vid is None or video is None:
            return False
        kept = tuple(e for e in video.entries if e.bank != bank)
        if len(kept) == len(video.entries):
            return False
        self._per_bank[bank] -= 1
        if not self._per_bank[bank]:
            del self._per_bank[bank]
        self._radius = None
        if kept:
            video.entries = kept
            return True
        del self._by_signal[signal]
        self._videos[vid] = None
        self._free_videos.append(vid)
        gone: set[int] = set()
        for fid in video.frames.tolist():
            owner = int(self._owner[fid])
            if owner == vid:
                self._owner[fid] = _FREE
                gone.add(fid)
            elif owner == _SHARED:
                holders = self._shared[fid]
                holders.remove(vid)
                if len(holders) == 1:
                    self._owner[fid] = holders[0]
                    del self._shared[fid]
        # the hashes of the frames no video holds now leave the index (read off the signal)
        hashes = usable_hashes(parse_vpdq(signal))
        for h, fid in zip(hashes, video.frames.tolist(), strict=True):
            if fid in gone:
                self._index.remove(h)
        return True

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return sum(self._per_bank.values())

    def sizes(self) -> Counter[str]:
        """Videos per bank (kept as they change: no walk over the entries)."""
        return Counter(self._per_bank)

    def holds(self, bank: str) -> bool:
        """Whether a bank holds any video."""
        return bank in self._per_bank

    def entries(self) -> Iterator[BankEntry]:
        for video in self._videos:
            if video is not None:
                yield from video.entries

    @property
    def frames(self) -> int:
        """Distinct usable frame hashes in the index."""
        return len(self._index)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (index, owners, each video's frame ids): not the entries' text."""
        per_video = sum(v.frames.nbytes for v in self._videos if v is not None)
        return self._index.nbytes + int(self._owner.nbytes) + per_video

    # ------------------------------------------------------------------ lookups

    def _search_radius(self) -> int | None:
        if self._radius is None:
            widths = [c.pdq_threshold for c in map(self._config, self._per_bank) if c.enabled]
            self._radius = max(widths, default=-1)
        return None if self._radius < 0 else self._radius

    def _pairs(self, queries: list[str], radius: int) -> tuple[Ids, Ids, Ids, Ids]:
        """Every (query, frame id, distance, video) within ``radius``, grouped by video."""
        qi, fid, dist = (
            np.array(a, dtype=np.int64) for a in self._index.search_tags(queries, radius)
        )
        vid = self._owner[fid]
        shared = vid == _SHARED
        if shared.any():
            extra = [
                (q, f, d, v)
                for q, f, d in zip(
                    qi[shared].tolist(), fid[shared].tolist(), dist[shared].tolist(), strict=True
                )
                for v in self._shared[f]
            ]
            keep = ~shared
            more = np.array(extra, dtype=np.int64).reshape(-1, 4)
            qi = np.concatenate([qi[keep], more[:, 0]])
            fid = np.concatenate([fid[keep], more[:, 1]])
            dist = np.concatenate([dist[keep], more[:, 2]])
            vid = np.concatenate([vid[keep], more[:, 3]])
        order = np.argsort(vid, kind="stable")
        return qi[order], fid[order], dist[order], vid[order]

    def _groups(self, vid: Ids) -> Iterator[tuple[_Video, slice]]:
        if not len(vid):
            return
        bounds = [0, *(np.flatnonzero(np.diff(vid)) + 1).tolist(), len(vid)]
        for lo, hi in itertools.pairwise(bounds):
            video = self._videos[int(vid[lo])]
            assert video is not None
            yield video, slice(lo, hi)

    def _by_threshold(self, video: _Video) -> dict[int, list[BankEntry]]:
        out: dict[int, list[BankEntry]] = {}
        for e in video.entries:
            cfg = self._config(e.bank)
            if cfg.enabled:
                out.setdefault(cfg.pdq_threshold, []).append(e)
        return out

    def lookup(self, frames: Sequence[VpdqFrame]) -> list[VideoHit]:
        """Every banked video that a video's frames match by vPDQ's rule, best first.

        Best: the highest query percentage, then compared percentage, then the
        smallest distance; ties by bank name and signal.
        """
        queries = usable_hashes(frames)
        radius = self._search_radius()
        if radius is None or not queries:
            return []
        qi, fid, dist, vid = self._pairs(queries, radius)
        hits: list[VideoHit] = []
        for video, at in self._groups(vid):
            for threshold, entries in self._by_threshold(video).items():
                near = dist[at] <= threshold
                if not near.any():
                    continue
                q_near, d_near = qi[at][near], dist[at][near]
                score = VideoScore(
                    np.unique(q_near).size * 100 / len(queries),
                    np.unique(fid[at][near]).size * 100 / len(video.frames),
                    len(queries),
                    len(video.frames),
                )
                nearest = np.full(len(queries), np.iinfo(np.int64).max, dtype=np.int64)
                np.minimum.at(nearest, q_near, d_near)
                distance = int(nearest[q_near].max())
                for e in entries:
                    cfg = self._config(e.bank)
                    if score.passes(cfg.vpdq_query_match_pct, cfg.vpdq_compared_match_pct):
                        hits.append(VideoHit(e, distance, score))
        return sorted(hits, key=video_rank)

    def lookup_frame(self, pdq: str) -> list[VideoHit]:
        """Every banked video with a frame within its bank's threshold of an image's hash.

        Nearest first (one hit per video and bank, at its nearest frame).
        """
        radius = self._search_radius()
        if radius is None:
            return []
        _, _, dist, vid = self._pairs([pdq.lower()], radius)
        hits: list[VideoHit] = []
        for video, at in self._groups(vid):
            d = int(dist[at].min())
            for threshold, entries in self._by_threshold(video).items():
                if d <= threshold:
                    hits.extend(VideoHit(e, d, None) for e in entries)
        return sorted(hits, key=frame_rank)


def video_rank(h: VideoHit) -> tuple[float, float, int, str, str]:
    assert h.score is not None
    s = h.score
    return (-s.query_match_pct, -s.compared_match_pct, h.distance, h.entry.bank, h.entry.signal)


def frame_rank(h: VideoHit) -> tuple[int, str, str]:
    return (h.distance, h.entry.bank, h.entry.signal)


def brute_force_videos(
    entries: Iterable[BankEntry], frames: Sequence[VpdqFrame], config: Callable[[str], BankConfig]
) -> list[VideoHit]:
    """The reference answer of :meth:`VideoBank.lookup`: vPDQ's comparison with every video."""
    queries = usable_hashes(frames)
    hits: list[VideoHit] = []
    for e in entries:
        cfg = config(e.bank)
        if not cfg.enabled or not queries:
            continue
        banked = usable_hashes(parse_vpdq(e.signal))
        score = compare(queries, banked, cfg.pdq_threshold)
        if score.passes(cfg.vpdq_query_match_pct, cfg.vpdq_compared_match_pct):
            nearest = [min(hamming(q, b) for b in banked) for q in queries]
            distance = max(d for d in nearest if d <= cfg.pdq_threshold)
            hits.append(VideoHit(e, distance, score))
    return sorted(hits, key=video_rank)


def brute_force_frame(
    entries: Iterable[BankEntry], pdq: str, config: Callable[[str], BankConfig]
) -> list[VideoHit]:
    """The reference answer of :meth:`VideoBank.lookup_frame`."""
    hits: list[VideoHit] = []
    for e in entries:
        cfg = config(e.bank)
        banked = usable_hashes(parse_vpdq(e.signal))
        if cfg.enabled and banked:
            d = min(hamming(pdq, b) for b in banked)
            if d <= cfg.pdq_threshold:
                hits.append(VideoHit(e, d, None))
    return sorted(hits, key=frame_rank)
