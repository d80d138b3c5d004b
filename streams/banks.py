"""Hash banks: named sets of known-harmful hashes, and matching uploads against them.

A bank entry is a signal (a PDQ or MD5 hash, or a video's vPDQ) in a named
bank. Banks come from CSV files (``signal_type,signal,bank[,label]``) and
change while the pipeline runs: StopNCII adds hashes and withdraws them, and
a withdrawn hash must stop matching at once.

Which entry an upload matches, when several do (the rule that decides which
cluster it joins): an MD5 equality first (distance 0, an exact file copy),
then the PDQ entry at the smallest Hamming distance; ties broken by bank
name, then by the signal's hex, so the answer never depends on load order.
Videos (``vpdq`` entries) are matched by :mod:`streams.videobank`, which this
class delegates to: after MD5, a video upload's frames by vPDQ's rule (the
best query percentage first), and an image whose PDQ matches no image entry
may still match a frame of a banked video (``Match.kind`` ``video_frame``).

>>> banks = HashBanks()
>>> banks.add(BankEntry("stopncii", "md5", "0" * 32))
True
>>> m = banks.match(Content(md5="0" * 32))
>>> (m.entry.bank, m.distance)
('stopncii', 0)
>>> banks.withdraw("stopncii", "md5", "0" * 32)
True
>>> banks.match(Content(md5="0" * 32)) is None
True
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from streams._core import TextSet
from streams.events import Content
from streams.pdqindex import PDQIndex
from streams.stats import Stats
from streams.videobank import VideoBank, VideoHit, brute_force_frame, brute_force_videos
from streams.vpdq import (
    COMPARED_MATCH_PCT_DEFAULT,
    QUERY_MATCH_PCT_DEFAULT,
    VideoScore,
    VpdqFrame,
    canonical_vpdq,
)

SignalType = Literal["pdq", "md5", "vpdq"]
SIGNAL_TYPES: Final = ("pdq", "md5", "vpdq")
#: What matched: a file's MD5, an image's PDQ, a video's vPDQ, or an image one frame of a video.
MatchKind = Literal["md5", "pdq", "vpdq", "video_frame"]
SIGNAL_HEX_LEN: Final = {"pdq": 64, "md5": 32}
#: PDQ hashes under this quality are too flat to be a match signal (Meta's
#: guidance; HMA and StopNCII use the same cut).
MIN_PDQ_QUALITY: Final = 50
#: HMA's default PDQ threshold.
DEFAULT_PDQ_THRESHOLD: Final = 31
#: The allow-list (a negative bank): content a reviewer judged a false positive.
#: An upload matching it matches no bank at all, whatever else it matches:
#: it is checked first (see :meth:`HashBanks.match_many`).
ALLOW_BANK: Final = "allowlist"
#: what a banked cluster's id begins with (:attr:`BankEntry.cluster_id`), the unbanked
#: ones never: the test of a banked cluster wherever an id is at hand
BANKED_PREFIX: Final = "b-"


@dataclass(frozen=True, slots=True)
class BankEntry:
    """One banked signal."""

    bank: str
    signal_type: SignalType
    signal: str
    label: str | None = None

    @property
    def cluster_id(self) -> str:
        """The id of the content cluster that uploads matching this entry join.

        Stable across processes and runs (a keyed digest of bank, type and signal).
        """
        digest = hashlib.blake2b(
            f"{self.bank}\x00{self.signal_type}\x00{self.signal}".encode(), digest_size=8
        ).hexdigest()
        return f"{BANKED_PREFIX}{digest}"


@dataclass(frozen=True, slots=True)
class Match:
    """An upload matched ``entry`` at Hamming ``distance`` (0 for MD5).

    A video match carries its vPDQ ``video`` score (the two percentages).
    """

    entry: BankEntry
    distance: int
    video: VideoScore | None = None

    @property
    def kind(self) -> MatchKind:
        """How it matched; a ``vpdq`` entry without a score was matched by an image."""
        if self.entry.signal_type == "vpdq" and self.video is None:
            return "video_frame"
        return self.entry.signal_type

    @classmethod
    def of_video(cls, hit: VideoHit) -> Match:
        return cls(hit.entry, hit.distance, hit.score)


@dataclass(frozen=True, slots=True)
class BankConfig:
    """Per-bank settings: its PDQ threshold (images and video frames), whether it matches
    at all, and vPDQ's two percentages for its videos (query and banked video)."""

    name: str
    pdq_threshold: int = DEFAULT_PDQ_THRESHOLD
    enabled: bool = True
    vpdq_query_match_pct: float = QUERY_MATCH_PCT_DEFAULT
    vpdq_compared_match_pct: float = COMPARED_MATCH_PCT_DEFAULT

    def __post_init__(self) -> None:
        if not 0 <= self.pdq_threshold <= 128:
            raise ValueError(f"bank {self.name}: pdq_threshold must be 0..128")
        for pct in (self.vpdq_query_match_pct, self.vpdq_compared_match_pct):
            if not 0 <= pct <= 100:
                raise ValueError(f"bank {self.name}: a vPDQ match percentage must be 0..100")


def normalise_signal(signal_type: str, signal: str) -> tuple[SignalType, str]:
    """Validate a signal and give it in canonical lowercase form; raises ``ValueError``.

    >>> normalise_signal("MD5", "AB" * 16)
    ('md5', 'abababababababababababababababab')
    """
    kind = signal_type.strip().lower()
    if kind not in SIGNAL_TYPES:
        raise ValueError(f"signal_type must be pdq, md5 or vpdq, not {signal_type!r}")
    if kind == "vpdq":
        return "vpdq", canonical_vpdq(signal)
    text = signal.strip().lower()
    if len(text) != SIGNAL_HEX_LEN[kind]:
        raise ValueError(f"a {kind} signal is {SIGNAL_HEX_LEN[kind]} hex digits, not {len(text)}")
    try:
        int(text, 16)
    except ValueError:
        raise ValueError(f"{kind} signal is not hexadecimal: {text!r}") from None
    return kind, text  # type: ignore[return-value]


def hamming(a: str, b: str) -> int:
    """Hamming distance between two equal-length hex hashes.

    >>> hamming("f" * 64, "f" * 63 + "0")
    4
    """
    return (int(a, 16) ^ int(b, 16)).bit_count()


class HashBanks:
    """All banks, taking adds and withdrawals while the pipeline runs.

    PDQ lookups go through an exact multi-index (:class:`streams.pdqindex.PDQIndex`,
    the very answer of a scan), MD5 lookups through a dict. In front of both
    sits an LRU cache of whole answers keyed by the exact hashes, because the
    same file is uploaded again and again while it spreads; any change to the
    banks (add, withdraw, configure) empties it, so a withdrawn hash stops
    matching at once. Counts cache misses as ``stats.lookups`` and hits as
    ``stats.cache_hits`` when given a :class:`streams.stats.Stats` (the router
    counts low-quality PDQ hashes, not this class).

    >>> banks = HashBanks([BankConfig("strict", pdq_threshold=10)])
    >>> banks.add(BankEntry("strict", "pdq", "f" * 64))
    True
    >>> banks.add(BankEntry("ncii", "pdq", "f" * 60 + "0" * 4))
    True
    >>> [(m.entry.bank, m.distance) for m in banks.lookup_pdq("f" * 62 + "00")]
    [('ncii', 8), ('strict', 8)]
    >>> banks.match(Content(pdq="f" * 56 + "0" * 8, pdq_quality=90)).entry.bank
    'ncii'
    """

    def __init__(
        self,
        configs: Iterable[BankConfig] = (),
        *,
        stats: Stats | None = None,
        cache_size: int = 65_536,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._configs: dict[str, BankConfig] = {c.name: c for c in configs}
        # signal -> its entries, one per bank (a tuple: most signals are in one bank,
        # and at millions of entries a dict each would double the memory)
        self._md5: dict[str, tuple[BankEntry, ...]] = {}
        # its keys again, compiled: the screen asks them of every upload's MD5 (a question
        # of the dict made a Python string of each; see ``TextSet``)
        self._md5_keys = TextSet()
        self._pdq: dict[str, tuple[BankEntry, ...]] = {}
        self._pdq_per_bank: Counter[str] = Counter()
        self._per_bank: Counter[str] = Counter()  # image entries (MD5, PDQ)
        self._index = PDQIndex()
        self._videos = VideoBank(self.config)
        self._radius: int | None = None  # widest PDQ threshold of an enabled bank
        #: (bank, type, signal) -> the event time its add took effect at (a timed add, see
        #: :meth:`match_at`), and the latest of those
        self._since: dict[tuple[str, str, str], int] = {}
        self._latest_since = -1
        self._cache: OrderedDict[MatchKey, Match | None] = OrderedDict()
        self.cache_size = cache_size
        self.stats = stats
        #: called as ``on_lookups(seconds, lookups)`` after each batch of index
        #: lookups (cache misses), so an adapter can observe lookup latency
        #: without this module importing a metrics library
        self.on_lookups: Callable[[float, int], None] | None = None

    # ------------------------------------------------------------------ changes

    def config(self, bank: str) -> BankConfig:
        return self._configs.get(bank) or BankConfig(bank)

    def configure(self, config: BankConfig) -> None:
        self._configs[config.name] = config
        self._changed()

    def add(self, entry: BankEntry, since_ms: int | None = None) -> bool:
        """Add an entry; ``False`` when it was there already (its label is updated).

        ``since_ms``: the event time the add takes effect at (a timed bank
        update): uploads older than that do not match it (:meth:`match_at`).
        """
        new = self._add(entry, None, None)
        kind, signal = normalise_signal(entry.signal_type, entry.signal)
        key = (entry.bank, kind, signal)
        if since_ms is None:
            self._since.pop(key, None)
        else:
            self._since[key] = since_ms
            self._latest_since = max(self._latest_since, since_ms)
        return new

    def add_many(self, entries: Iterable[BankEntry]) -> int:
        """Add many entries (a bank load): one index insertion for all; the number new."""
        fresh: list[str] = []
        videos: list[BankEntry] = []
        try:
            return sum(self._add(entry, fresh, videos) for entry in entries)
        finally:  # a bad entry stops the load, but what was added is searchable
            self._index.add_many(fresh)
            if videos:
                self._videos.add_many(videos)

    def _add(
        self, entry: BankEntry, fresh: list[str] | None, videos: list[BankEntry] | None
    ) -> bool:
        """Add to the tables; a new PDQ signal goes to the index, or to ``fresh`` for later.

        A video goes to the video bank (through ``videos``, for later, in a load).
        """
        kind, signal = normalise_signal(entry.signal_type, entry.signal)
        if (kind, signal) != (entry.signal_type, entry.signal):
            entry = BankEntry(entry.bank, kind, signal, entry.label)
        if kind == "vpdq":
            self._changed()
            if videos is None:
                return self._videos.add_many([entry]) == 1
            videos.append(entry)
            return True  # counted when the load's videos are added
        signal = entry.signal  # one string object for the key and the entry
        table = self._md5 if kind == "md5" else self._pdq
        group = table.get(signal, ())
        others = tuple(e for e in group if e.bank != entry.bank)
        table[signal] = (*others, entry)
        if kind == "md5" and not group:
            self._md5_keys.add(signal)
        self._changed()
        new = len(others) == len(group)
        if new:
            self._per_bank[entry.bank] += 1
        if new and kind == "pdq":
            self._pdq_per_bank[entry.bank] += 1
            if not group:
                if fresh is None:
                    self._index.add(signal)
                else:
                    fresh.append(signal)
        return new

    def withdraw(self, bank: str, signal_type: str, signal: str) -> bool:
        """Withdraw a signal from one bank; harmless (``False``) when it is not there."""
        try:
            kind, text = normalise_signal(signal_type, signal)
        except ValueError:
            return False
        if kind == "vpdq":
            self._changed()
            return self._videos.withdraw(bank, text)
        table = self._md5 if kind == "md5" else self._pdq
        group = table.get(text, ())
        kept = tuple(e for e in group if e.bank != bank)
        if len(kept) == len(group):
            return False
        self._since.pop((bank, kind, text), None)
        self._per_bank[bank] -= 1
        if not self._per_bank[bank]:
            del self._per_bank[bank]
        if kept:
            table[text] = kept
        if kind == "pdq":
            self._pdq_per_bank[bank] -= 1
            if not self._pdq_per_bank[bank]:
                del self._pdq_per_bank[bank]
        if not kept:
            del table[text]
            if kind == "pdq":
                self._index.remove(text)
            else:
                self._md5_keys.discard(text)
        self._changed()
        return True

    def _changed(self) -> None:
        self._cache.clear()
        self._radius = None
        self._videos.changed()

    def __len__(self) -> int:
        return sum(self._per_bank.values()) + len(self._videos)

    def sizes(self) -> dict[str, int]:
        """Entries per bank (the allow-list too; a video is one entry), for metrics and views.

        >>> banks = HashBanks()
        >>> banks.add_many([BankEntry("a", "md5", "1" * 32), BankEntry("a", "pdq", "f" * 64)])
        2
        >>> banks.sizes(), banks.withdraw("a", "md5", "1" * 32), banks.sizes()
        ({'a': 2}, True, {'a': 1})
        """
        out = self._per_bank + self._videos.sizes()
        return dict(sorted(out.items()))

    def entries(self) -> Iterator[BankEntry]:
        for group in self._md5.values():
            yield from group
        for pgroup in self._pdq.values():
            yield from pgroup
        yield from self._videos.entries()

    @property
    def videos(self) -> VideoBank:
        """The banked videos (``vpdq`` entries)."""
        return self._videos

    # ------------------------------------------------------------------ lookups

    def _pdq_radius(self) -> int | None:
        """The widest threshold among enabled banks holding PDQ entries (None: no search)."""
        if self._radius is None and self._pdq_per_bank:
            widths = [c.pdq_threshold for c in map(self.config, self._pdq_per_bank) if c.enabled]
            self._radius = max(widths, default=-1)
        return None if self._radius is None or self._radius < 0 else self._radius

    def _pdq_matches(self, found: Iterable[tuple[str, int]]) -> list[Match]:
        out = []
        for signal, d in found:
            for entry in self._pdq[signal]:
                cfg = self.config(entry.bank)
                if cfg.enabled and d <= cfg.pdq_threshold:
                    out.append(Match(entry, d))
        return sorted(out, key=_rank)

    def lookup_pdq(self, pdq: str) -> list[Match]:
        """Every enabled entry within its bank's threshold of ``pdq``, best first."""
        radius = self._pdq_radius()
        if radius is None:
            return []
        return self._pdq_matches(self._index.search(pdq.lower(), radius))

    def lookup_pdq_many(self, hashes: Sequence[str]) -> list[list[Match]]:
        """:meth:`lookup_pdq` for many hashes, in one batched index search."""
        radius = self._pdq_radius()
        if radius is None:
            return [[] for _ in hashes]
        found = self._index.search_many([h.lower() for h in hashes], radius)
        return [self._pdq_matches(f) for f in found]

    def lookup_md5(self, md5: str) -> list[Match]:
        """Every enabled entry with this MD5, best (by the tie rule) first."""
        group = self._md5.get(md5.lower(), ())
        if not group:  # most uploads: no sort, no generator
            return []
        return sorted((Match(e, 0) for e in group if self.config(e.bank).enabled), key=_rank)

    def holds_allow_list(self) -> bool:
        """Whether the allow-list holds anything (if not, :meth:`allowed` is ``False``).

        >>> banks = HashBanks()
        >>> banks.holds_allow_list(), banks.add(BankEntry(ALLOW_BANK, "md5", "a" * 32))
        (False, True)
        >>> banks.holds_allow_list()
        True
        """
        return ALLOW_BANK in self._per_bank or self._videos.holds(ALLOW_BANK)

    def allowed(self, content: Content, at_ms: int | None = None) -> bool:
        """Whether ``content`` is on the allow-list (:data:`ALLOW_BANK`): its MD5, or a PDQ
        within the allow-list's threshold (as of event time ``at_ms``, when given)."""
        found = [Match(e, 0) for e in self._md5.get((content.md5 or "").lower(), ())]
        if content.pdq is not None and pdq_usable(content) and ALLOW_BANK in self._pdq_per_bank:
            found += self.lookup_pdq(content.pdq)
        if self._videos.holds(ALLOW_BANK):
            found += self._video_matches(match_key(content), [])
        return any(m.entry.bank == ALLOW_BANK and self._current(m, at_ms) for m in found)

    def _current(self, m: Match, at_ms: int | None) -> bool:
        if at_ms is None or at_ms >= self._latest_since:
            return True
        e = m.entry
        return self._since.get((e.bank, e.signal_type, e.signal), at_ms) <= at_ms

    def timed_after(self, ts_ms: int) -> bool:
        """Whether an add took effect after ``ts_ms`` (an upload that old needs :meth:`match_at`).

        >>> banks = HashBanks()
        >>> banks.add(BankEntry("b", "md5", "a" * 32), since_ms=1000)
        True
        >>> banks.timed_after(999), banks.match_at(Content(md5="a" * 32), 999)
        (True, None)
        >>> banks.match_at(Content(md5="a" * 32), 1000).entry.bank
        'b'
        """
        return ts_ms < self._latest_since

    def match_at(self, content: Content, ts_ms: int) -> Match | None:
        """:meth:`match` as of event time ``ts_ms``: timed adds after it do not count.

        Why: a worker's banks change when its bank follower reads the change,
        and its routers match uploads as they read them, so an upload a few
        seconds older than a bank add may be matched before or after it. Taken
        at its event time, the answer is the same whichever came first, and
        the same as replay's. (A withdrawal takes effect when read.)
        """
        found = self.lookup_md5(content.md5) if content.md5 is not None else []
        if content.pdq is not None and pdq_usable(content):
            found += self.lookup_pdq(content.pdq)
        found = [m for m in found if self._current(m, ts_ms)]
        videos = self._video_matches(match_key(content), found)
        return _best(found + [m for m in videos if self._current(m, ts_ms)])

    def screen(self) -> tuple[TextSet, PDQIndex, int, bool]:
        """What tells, in bulk, the uploads no entry can match (replay's compiled loop reads
        it, ``rust/python/src/replay.rs``): the MD5 table's keys (lowercase hex),
        the PDQ index, the widest PDQ threshold of an enabled bank (``-1``: no PDQ
        search) and whether videos are banked (a frame may match an image's PDQ). An
        upload none of these can match has no match, nor is it on the allow-list; the
        others are matched as :meth:`match_many` matches them. Valid until the banks change.
        """
        radius = self._pdq_radius()
        return self._md5_keys, self._index, -1 if radius is None else radius, len(self._videos) > 0

    def match(self, content: Content) -> Match | None:
        """The one entry this content matches, by the rule in the module docstring."""
        return self.match_many([content])[0]

    def match_many(self, contents: Sequence[Content]) -> list[Match | None]:
        """:meth:`match` for many uploads, with one batched index search for all misses.

        Gives what calling :meth:`match` on each in turn gives, counters included
        (unless a batch holds more distinct hashes than the cache).
        """
        out: list[Match | None] = [None] * len(contents)
        todo: dict[MatchKey, list[int]] = {}
        hits = 0
        for i, content in enumerate(contents):
            key = match_key(content)
            if key == (None, None, None):
                continue
            if key in self._cache:
                self._cache.move_to_end(key)
                out[i] = self._cache[key]
                hits += 1
            elif key in todo:
                todo[key].append(i)
                hits += 1
            else:
                todo[key] = [i]
        if self.stats is not None:
            self.stats.cache_hits += hits
            self.stats.lookups += len(todo)
        if not todo:
            return out
        started = time.perf_counter()
        answers: dict[MatchKey, Match | None] = {}
        pending: list[MatchKey] = []
        exacts: dict[MatchKey, list[Match]] = {}
        allow_pdq = ALLOW_BANK in self._pdq_per_bank  # then every PDQ is looked up
        for key in todo:
            md5, pdq, _ = key
            exact = exacts[key] = self.lookup_md5(md5) if md5 is not None else []
            if pdq is not None and (allow_pdq or not exact):
                pending.append(key)
            else:
                answers[key] = _best(exact + self._video_matches(key, exact))
        radius = self._pdq_radius()
        for key in pending if radius is None else ():
            answers[key] = _best(exacts[key] + self._video_matches(key, exacts[key]))
        if pending and radius is not None:
            queries = [str(pdq).lower() for _, pdq, _ in pending]
            for key, found in zip(pending, self._index.search_many(queries, radius), strict=True):
                earlier = exacts[key] + self._pdq_matches(found)
                answers[key] = _best(earlier + self._video_matches(key, earlier))
        for key, where in todo.items():
            answer = answers.get(key)
            for i in where:
                out[i] = answer
            if self.cache_size:
                self._cache[key] = answer
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if self.on_lookups is not None:
            self.on_lookups(time.perf_counter() - started, len(todo))
        return out

    def _video_matches(self, key: MatchKey, earlier: list[Match]) -> list[Match]:
        """After MD5 and image entries: a video's frames by vPDQ, then an image against frames.

        Looked up only when nothing earlier matched, or the allow-list holds
        videos (an allow-listed video must still cancel the match).
        """
        if earlier and not self._videos.holds(ALLOW_BANK):
            return []
        _, pdq, vpdq = key
        found = self.lookup_vpdq(vpdq) if vpdq is not None else []
        return found + self.lookup_video_frame(pdq) if pdq is not None else found

    def lookup_vpdq(self, frames: Sequence[VpdqFrame]) -> list[Match]:
        """Every enabled video entry that a video's frames match by vPDQ's rule, best first."""
        return [Match.of_video(h) for h in self._videos.lookup(frames)]

    def lookup_video_frame(self, pdq: str) -> list[Match]:
        """Every enabled video entry with a frame within its bank's threshold of ``pdq``."""
        return [Match.of_video(h) for h in self._videos.lookup_frame(pdq)]


def _best(found: list[Match]) -> Match | None:
    """The answer among an upload's matches (MD5 ones first, each kind best first): none when
    any is on the allow-list, else the first."""
    if any(m.entry.bank == ALLOW_BANK for m in found):
        return None
    return found[0] if found else None


def brute_force_match(
    entries: Iterable[BankEntry], content: Content, configs: Iterable[BankConfig] = ()
) -> Match | None:
    """The reference answer of :meth:`HashBanks.match`: a plain scan, for tests.

    >>> brute_force_match([BankEntry("b", "md5", "a" * 32)], Content(md5="a" * 32)).distance
    0
    """
    cfg = {c.name: c for c in configs}
    entries = list(entries)
    found: list[Match] = []
    for e in entries:
        c = cfg.get(e.bank) or BankConfig(e.bank)
        if not c.enabled:
            continue
        if e.signal_type == "md5" and content.md5 is not None and content.md5 == e.signal:
            found.append(Match(e, -1))  # MD5 equality outranks every PDQ distance
        elif e.signal_type == "pdq" and content.pdq is not None and pdq_usable(content):
            d = hamming(e.signal, content.pdq)
            if d <= c.pdq_threshold:
                found.append(Match(e, d))
    videos = _brute_force_videos(entries, content, cfg)
    if any(m.entry.bank == ALLOW_BANK for m in found + videos):
        return None
    if not found:
        return videos[0] if videos else None
    best = min(found, key=_rank)
    return Match(best.entry, 0) if best.distance < 0 else best


def _brute_force_videos(
    entries: list[BankEntry], content: Content, cfg: dict[str, BankConfig]
) -> list[Match]:
    videos = [e for e in entries if e.signal_type == "vpdq"]

    def config(bank: str) -> BankConfig:
        return cfg.get(bank) or BankConfig(bank)

    hits = brute_force_videos(videos, content.vpdq, config) if content.vpdq is not None else []
    if content.pdq is not None and pdq_usable(content):
        hits += brute_force_frame(videos, content.pdq, config)
    return [Match.of_video(h) for h in hits]


#: What a match depends on (the cache key): MD5, PDQ if usable, a video's frames.
MatchKey = tuple[str | None, str | None, tuple[VpdqFrame, ...] | None]


def match_key(content: Content) -> MatchKey:
    """What a match depends on: the MD5, the PDQ hash if it may be used, a video's frames."""
    return (content.md5, content.pdq if pdq_usable(content) else None, content.vpdq)


def pdq_usable(content: Content) -> bool:
    """Whether the PDQ hash of this content may be used as a match signal.

    A hash without a quality score is taken as usable (banks and partners
    often send hashes alone); one under :data:`MIN_PDQ_QUALITY` is not.
    """
    return content.pdq is not None and (
        content.pdq_quality is None or content.pdq_quality >= MIN_PDQ_QUALITY
    )


def _rank(m: Match) -> tuple[int, str, str]:
    return (m.distance, m.entry.bank, m.entry.signal)


def parse_bank_csv(text: str, source: str = "<bank>") -> list[BankEntry]:
    """Bank entries from CSV text with header ``signal_type,signal,bank[,label]``.

    Raises ``ValueError`` naming the source and line of the first bad row.

    >>> parse_bank_csv("signal_type,signal,bank\\nmd5," + "a" * 32 + ",demo\\n")[0].bank
    'demo'
    """
    reader = csv.DictReader(io.StringIO(text))
    need = {"signal_type", "signal", "bank"}
    if reader.fieldnames is None or not need <= {f.strip() for f in reader.fieldnames}:
        raise ValueError(f"{source}: header must have signal_type,signal,bank[,label]")
    entries = []
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        line = reader.line_num
        try:
            kind, signal = normalise_signal(row.get("signal_type", ""), row.get("signal", ""))
        except ValueError as exc:
            raise ValueError(f"{source}:{line}: {exc}") from None
        bank = row.get("bank", "")
        if not bank:
            raise ValueError(f"{source}:{line}: bank is empty")
        entries.append(BankEntry(bank, kind, signal, row.get("label") or None))
    return entries


def load_bank_csv(path: str | Path) -> list[BankEntry]:
    """Read a bank CSV file; raises ``OSError`` or ``ValueError`` with a one-line reason."""
    p = Path(path)
    return parse_bank_csv(p.read_text(encoding="utf-8"), str(p))


# -- changes while running ----------------------------------------------------

BANK_OPS: Final = ("add", "withdraw")


@dataclass(frozen=True, slots=True)
class BankUpdate:
    """One record of the ``bank`` topic: add a signal to a bank, or withdraw it.

    Keyed by ``bank/signal_type/signal``, so the topic can be compacted to the
    latest state of each signal; a record with no value (a tombstone)
    withdraws the signal its key names.

    >>> key, value = BankUpdate("withdraw", BankEntry("ncii", "md5", "a" * 32)).record()
    >>> key
    b'ncii/md5/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    >>> BankUpdate.parse(key, None).op
    'withdraw'
    >>> BankUpdate.parse(None, b'{"op": "add"}')
    Traceback (most recent call last):
    ValueError: bank update: signal_type must be pdq, md5 or vpdq, not ''
    """

    op: Literal["add", "withdraw"]
    entry: BankEntry
    #: the event time it takes effect at (``None``: when it is read), see ``streams.review``
    ts_ms: int | None = None

    @property
    def key(self) -> str:
        """``bank/signal_type/signal``: the record key (the topic is compacted by it)."""
        e = self.entry
        return f"{e.bank}/{e.signal_type}/{e.signal}"

    @property
    def order_key(self) -> str:
        """Where it sorts among events of the same millisecond (before them: ``\\x00``)."""
        return f"\x00{self.op}/{self.key}"

    def record(self) -> tuple[bytes, bytes]:
        e = self.entry
        value: dict[str, Any] = {
            "op": self.op,
            "bank": e.bank,
            "signal_type": e.signal_type,
            "signal": e.signal,
        }
        if e.label:
            value["label"] = e.label
        if self.ts_ms is not None:
            value["ts"] = self.ts_ms
        return self.key.encode(), orjson.dumps(value)

    @classmethod
    def parse(cls, key: bytes | None, value: bytes | None) -> BankUpdate:
        """Read a ``bank`` record; ``ValueError`` with the reason when it is not a valid one."""
        try:
            if value is None:
                parts = (key or b"").decode().split("/")
                if len(parts) != 3:
                    raise ValueError("a tombstone's key must be bank/signal_type/signal")
                body: dict[str, Any] = dict(
                    zip(("bank", "signal_type", "signal"), parts, strict=True), op="withdraw"
                )
            else:
                body = orjson.loads(value)
                if not isinstance(body, dict):
                    raise ValueError("not a JSON object")
            op = body.get("op")
            if op != "add" and op != "withdraw":
                raise ValueError(f"op must be add or withdraw, not {op!r}")
            kind, signal = normalise_signal(
                str(body.get("signal_type") or ""), str(body.get("signal") or "")
            )
            bank = body.get("bank")
            if not isinstance(bank, str) or not bank.strip():
                raise ValueError("bank must be a non-empty name")
            label = body.get("label")
            if label is not None and not isinstance(label, str):
                raise ValueError("label must be text")
            ts = body.get("ts")
            if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts < 0):
                raise ValueError("ts must be epoch milliseconds")
            return cls(op, BankEntry(bank.strip(), kind, signal, label or None), ts)
        except (ValueError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"bank update: {exc}") from None

    def apply(self, banks: HashBanks) -> bool:
        """Change ``banks``; ``True`` when something changed."""
        e = self.entry
        if self.op == "add":
            return banks.add(e, self.ts_ms)
        return banks.withdraw(e.bank, e.signal_type, e.signal)
