"""Emerging content: unbanked uploads clustered as people re-upload them.

A leaked image or video that no bank knows yet is re-uploaded again and
again, and the copies are re-encodes, crops and light edits: near-duplicates,
not byte copies. Keyed by its exact hash, each copy would be a small cluster
of its own that never crosses a velocity rule. So an unbanked upload joins
the live unbanked cluster that holds content within the PDQ threshold (31,
HMA's) of it, or the same MD5; only content near nothing live starts a
cluster of its own (:func:`unbanked_cluster_id`, a digest of its exact hash).

Which cluster, when several are near: one holding the same MD5 first, then
the one holding the nearest PDQ, ties broken by cluster id: the answer
depends on the live clusters' content, never on the order of a dict or of
the index. Clusters are not merged: content near two live clusters joins
one of them (merging would re-key every post of the other).

:class:`ContentIndex` holds the content of live clusters (the exact
compiled index, :class:`streams.pdqindex.PDQIndex`, for PDQ: an add or a
removal takes effect at once and a single search costs a few microseconds,
so uploads are searched one at a time, in order; a dict for MD5). The
router uses one (:class:`EmergingClusters`) to cluster unbanked uploads,
with the idle eviction the detector applies (a cluster idle for ``idle_ms``
of event time leaves the index, so memory follows the live uploads;
``bench/bench_emerging.py`` measures what each costs). The detector
finds by its own the live clusters a bank change concerns (retroaction,
false positives). In replay, where both live in one process, they share one
(the detector's is a view of the router's, :data:`DETECTOR_VIEW`): the same
content, kept once, each side's answers exactly those of an index of its own.

One owner. In ``replay`` one router holds the index. A streaming worker has
many resolve partitions, spread over worker processes; an index per process
would start two clusters for near-duplicates routed by different workers,
and forget everything when a worker is replaced. So one resolve partition owns the index
(:data:`streams.stages.INDEX_PARTITION`), as a stream processor gives a
keyed state one owner: the others send it their unbanked uploads
(:class:`streams.wire.Unbanked`) and it answers with registrations, as for any
post; it logs the index in its state log and a worker that takes the
partition over folds it back (:meth:`EmergingClusters.fold`).

Order. Which cluster an upload joins depends on the uploads clustered
before it (the earlier of two near-duplicates starts the cluster). Both
replay and the owner cluster unbanked uploads in ``(ts, event_id)`` order,
once their watermark has passed them (``ReplayLoop`` and ``ResolveLoop``,
``rust/python/src/replay.rs`` and ``resolve.rs``), so the
answer is the same for any input within the allowed lateness, however it is
ordered within it, whatever the number of workers, the order the partitions
were read in (a backlog), restarts and rebalances. The price: an unbanked
upload's cluster is known about an allowed lateness after it is read (a hop
or two more in a worker), and its reshares wait for it. The review queue
waited for the watermark already (a cluster enters it when its events are
applied); banked content does not go through the owner.

>>> clusters = EmergingClusters(idle_ms=60_000)
>>> a = clusters.assign(Content(pdq="f" * 64, pdq_quality=90), ts_ms=0)
>>> b = clusters.assign(Content(pdq="f" * 60 + "0" * 4, pdq_quality=90), ts_ms=1_000)  # 16 bits
>>> c = clusters.assign(Content(pdq="0" * 64, pdq_quality=90), ts_ms=2_000)
>>> a == b != c
True
>>> clusters.expire(61_500)     # ``a`` idle since 1 s, over a minute before: evicted
['u-d590d9e20b847689']
>>> clusters.assign(Content(pdq="f" * 64, pdq_quality=90), ts_ms=70_000) == a  # afresh
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from streams._core import ContentSignals, IdleClusters, unbanked_id
from streams.banks import DEFAULT_PDQ_THRESHOLD, BankConfig, BankEntry, hamming, pdq_usable
from streams.events import Content
from streams.videobank import VideoBank, video_rank
from streams.vpdq import format_vpdq, parse_vpdq, usable_hashes

#: The threshold within which an unbanked upload joins a live cluster.
EMERGING_PDQ_THRESHOLD: Final = DEFAULT_PDQ_THRESHOLD
Signal = tuple[str, str]  # (signal type, lowercase hex)


def unbanked_cluster_id(content: Content) -> str:
    """The cluster that content no bank knows starts: a digest of its exact MD5, else its PDQ,
    else its vPDQ.

    >>> unbanked_cluster_id(Content(md5="0" * 32)).startswith("u-")
    True
    """
    if content.md5:
        key = f"md5:{content.md5}"
    elif content.pdq or not content.vpdq:
        key = f"pdq:{content.pdq}"
    else:  # a video: its frames' hashes
        key = f"vpdq:{format_vpdq(content.vpdq)}"
    return unbanked_id(key)  # BLAKE2b, 8 bytes (rust/core/src/blake2b.rs)


def allowed_cluster_id(content: Content) -> str:
    """The cluster of content on the allow-list (a reviewer's false positive): ``a-``, so it
    is seen (counted) but never alerts and never enters the review queue.

    >>> c = Content(md5="0" * 32)
    >>> allowed_cluster_id(c)[2:] == unbanked_cluster_id(c)[2:]
    True
    """
    return "a-" + unbanked_cluster_id(content)[2:]


def signals_of(content: Content) -> list[Signal]:
    """The signals of an upload that clustering and matching may use (a flat PDQ is not one).

    >>> signals_of(Content(pdq="F" * 64, pdq_quality=10, md5="A" * 32))
    [('md5', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')]
    """
    out: list[Signal] = []
    if content.md5:
        out.append(("md5", content.md5.lower()))
    if content.pdq and pdq_usable(content):
        out.append(("pdq", content.pdq.lower()))
    return out


def video_signal(content: Content) -> Signal | None:
    """A video's signal for the index of unbanked content (its frames' text), if it has a
    frame good enough to match by.

    >>> from streams.vpdq import VpdqFrame
    >>> video_signal(Content(vpdq=(VpdqFrame("f" * 64, 100, 0.0),)))[0]
    'vpdq'
    """
    if content.vpdq and usable_hashes(content.vpdq):
        return ("vpdq", format_vpdq(content.vpdq))
    return None


def signal_of(text: str) -> Signal:
    """A signal from its text alone: 32 hex digits an MD5, 64 a PDQ, a JSON list a video.

    >>> signal_of("a" * 32)[0], signal_of("f" * 64)[0], signal_of('["..."]')[0]
    ('md5', 'pdq', 'vpdq')
    """
    if text.startswith("["):
        return ("vpdq", text)
    return ("md5" if len(text) == 32 else "pdq", text)


#: The detector's view of an index it shares with the router (replay): see
#: ``rust/core/src/content.rs`` (``View``). The router's is the owner's, 0.
DETECTOR_VIEW: Final = 1

#: The bank name live unbanked videos take in an index's :class:`VideoBank` (its settings
#: are a bank's defaults: frames within 31, vPDQ's two match percentages).
EMERGING_VIDEOS: Final = "emerging"


class ContentIndex:
    """The content (signals) of live clusters, searchable by MD5 and by PDQ distance.

    >>> idx = ContentIndex()
    >>> idx.add("u-1", Content(pdq="f" * 64, pdq_quality=90, md5="a" * 32))
    >>> idx.add("u-2", Content(pdq="f" * 62 + "00", pdq_quality=90))
    >>> idx.near("pdq", "f" * 63 + "0", 31)          # nearest first
    [('u-1', 4), ('u-2', 4)]
    >>> idx.near("md5", "a" * 32, 31), idx.drop("u-1"), idx.near("pdq", "f" * 64, 31)
    ([('u-1', 0)], True, [('u-2', 8)])
    >>> idx.near("vpdq", '["..."]', 31)   # no videos held (and none at all without ``videos``)
    []
    """

    def __init__(
        self,
        videos: bool = False,
        *,
        shared: ContentSignals | None = None,
        view: int = 0,
        scan: bool = False,
    ) -> None:
        #: which clusters hold each signal, each cluster's signals in order, the PDQ
        #: signals in the compiled index (``rust/core/src/content.rs``); ``shared``: an
        #: index another holds too, this one's clusters being its ``view``'s; ``scan``: its
        #: PDQ search scans the hashes, without the tables that make it fast (for an index
        #: searched only now and then: about 70 bytes a hash less, a millisecond a search
        #: at 330,000 hashes)
        self._held = shared if shared is not None else ContentSignals(scan)
        self.view = view
        #: live videos, found by their frames as banked ones are (the router's index only)
        self._videos = VideoBank(BankConfig) if videos else None

    def shared_view(self, view: int = DETECTOR_VIEW) -> ContentIndex:
        """Another index over this one's content: ``view``'s clusters (no videos), kept in the
        same tables (replay's detector: see the module doc).

        >>> router = ContentIndex()
        >>> detector = router.shared_view()
        >>> router.add("u-1", Content(md5="a" * 32)); detector.add("b-1", Content(md5="a" * 32))
        >>> router.near("md5", "a" * 32, 31), detector.near("md5", "a" * 32, 31)
        ([('u-1', 0)], [('b-1', 0)])
        >>> router.drop("u-1"), "u-1" in router, len(router), detector.held("b-1") == ["a" * 32]
        (True, False, 1, True)
        """
        return ContentIndex(shared=self._held, view=view)

    def __contains__(self, cluster_id: object) -> bool:
        return isinstance(cluster_id, str) and self._held.contains(cluster_id, self.view)

    @property
    def held_signals(self) -> ContentSignals:
        """The compiled holders (which :class:`EmergingClusters` also hands the core)."""
        return self._held

    @property
    def clusters(self) -> int:
        return self._held.clusters_in(self.view)

    def signals(self, cluster_id: str) -> set[Signal]:
        return {signal_of(t) for t in self._held.held(cluster_id, self.view)}

    def held(self, cluster_id: str) -> list[str]:
        """The signals (hex) ``cluster_id`` holds, in the order it took them."""
        return self._held.held(cluster_id, self.view)

    def add(self, cluster_id: str, content: Content) -> None:
        """``cluster_id`` holds ``content`` (its usable signals)."""
        self.add_signals(cluster_id, signals_of(content))

    def add_signals(self, cluster_id: str, signals: Iterable[Signal]) -> list[str]:
        """``cluster_id`` holds these signals; returns those it did not hold yet (hex).

        A PDQ text that is not 64 hex digits, or a video's that is not vPDQ, raises
        ``ValueError`` and changes nothing."""
        kept = [(k, t) for k, t in signals if k != "vpdq" or self._videos is not None]
        videos = [
            t
            for k, t in dict.fromkeys(kept)
            if k == "vpdq" and not self._held.holders(t, self.view)
        ]
        if videos and self._videos is not None:  # frames indexed before they are held
            self._videos.add_many([BankEntry(EMERGING_VIDEOS, "vpdq", t) for t in videos])
        try:
            new, _ = self._held.add(cluster_id, kept, self.view)
        except ValueError:
            for t in videos:
                if self._videos is not None:
                    self._videos.withdraw(EMERGING_VIDEOS, t)
            raise
        return new

    def drop(self, cluster_id: str) -> bool:
        """Forget a cluster's content (evicted); ``False`` if it held none."""
        freed = self._held.drop(cluster_id, self.view)
        if freed is None:
            return False
        if self._videos is not None:
            for text in freed:
                if text.startswith("["):
                    self._videos.withdraw(EMERGING_VIDEOS, text)
        return True

    def near(self, signal_type: str, signal: str, threshold: int) -> list[tuple[str, int]]:
        """Clusters holding ``signal`` (MD5: equal; PDQ: within ``threshold``), nearest first,
        ties by cluster id; each cluster once, at its nearest."""
        if signal_type == "vpdq":
            return self._near_video(signal.lower())
        return self._held.near(signal_type, signal.lower(), threshold, self.view)

    def _near_video(self, text: str) -> list[tuple[str, int]]:
        """Clusters holding a video that ``text``'s frames match by vPDQ's rule (a bank's
        defaults), best match first (the two percentages, then the frame distance), ties by
        cluster id; each cluster once, at its best."""
        if self._videos is None or not len(self._videos):
            return []
        try:
            hits = self._videos.lookup(parse_vpdq(text))
        except ValueError:
            return []
        ranked: dict[str, tuple[tuple[float, float, int, str, str], int]] = {}
        for h in hits:
            for c in self._held.holders(h.entry.signal, self.view):
                rank = video_rank(h)
                if c not in ranked or rank < ranked[c][0]:
                    ranked[c] = (rank, h.distance)
        return [(c, d) for c, (_, d) in sorted(ranked.items(), key=lambda kv: (kv[1][0], kv[0]))]

    def signals_of(self, content: Content) -> list[Signal]:
        """The signals of an upload this index holds and searches (a video's, if it has them)."""
        out = signals_of(content)
        video = video_signal(content) if self._videos is not None else None
        return [*out, video] if video is not None else out

    def find(self, content: Content, threshold: int) -> str | None:
        """The cluster an upload joins: one holding its MD5, else the nearest PDQ, else the
        video its frames match best (by the rule in the module doc); ``None`` when none is
        near."""
        found: list[tuple[int, str]] = []
        for kind, text in self.signals_of(content):  # MD5 first: a copy needs no search
            found += [(-1 if kind == "md5" else d, c) for c, d in self.near(kind, text, threshold)]
            if found:
                break
        return min(found)[1] if found else None

    @property
    def nbytes(self) -> int:
        """The PDQ indexes' arrays (the maps' share is measured by ``bench/bench_emerging.py``)."""
        return self._held.nbytes + (self._videos.nbytes if self._videos is not None else 0)

    def __len__(self) -> int:
        """Distinct signals held (in every view of a shared index)."""
        return len(self._held)


class EmergingClusters:
    """Unbanked uploads' clusters, as the router assigns them (see the module doc).

    ``expire`` evicts what the detector evicts: a cluster none of whose events
    (uploads, reshares, takedowns, as :meth:`touch` reports them) is newer
    than ``idle_ms`` before the watermark.

    Per upload, the compiled core does the work (``_core.IdleClusters``,
    ``rust/core/src/emerging.rs``): the search, the signals held, the idle order
    and the changes for the state log, in one call. A video's upload, whose
    frames are searched here (:class:`ContentIndex`), goes the same way but for
    the search and its signals.
    """

    def __init__(
        self,
        idle_ms: int = 3_600_000,
        threshold: int = EMERGING_PDQ_THRESHOLD,
        *,
        log_changes: bool = True,
    ) -> None:
        self.idle_ms = idle_ms
        self.threshold = threshold
        self.index = ContentIndex(videos=True)
        #: the idle order (least recently touched first) and what changed since
        #: :meth:`take_changes` (for the owner's state log): the clusters touched, least
        #: recently first, with the signals they took; the clusters evicted. Replay logs
        #: nothing (``log_changes=False``): kept, the changes would grow with every cluster
        self._idle = IdleClusters(self.index.held_signals, idle_ms, threshold, log_changes)

    def __len__(self) -> int:
        return len(self._idle)

    @property
    def idle_clusters(self) -> IdleClusters:
        """The compiled idle order and holders (replay's compiled loop works on them)."""
        return self._idle

    @property
    def joined(self) -> int:
        """Uploads that joined a live cluster of other content."""
        return self._idle.joined

    def assign(self, content: Content, ts_ms: int) -> str:
        """The cluster of an unbanked upload: a live near one, or its own."""
        own = unbanked_cluster_id(content)
        video = video_signal(content)
        if video is None:
            return self._idle.assign(signals_of(content), own, ts_ms)
        near = self.index.find(content, self.threshold)
        cid = near if near is not None else own
        if near is not None and near != own:
            self._idle.joined += 1
        new = self.index.add_signals(cid, [*signals_of(content), video])
        self._idle.touch(cid, ts_ms)
        self._idle.record(cid, new)
        return cid

    def touch(self, cluster_id: str, ts_ms: int) -> None:
        """An event of ``cluster_id`` at ``ts_ms`` (only unbanked clusters are kept)."""
        self._idle.touch(cluster_id, ts_ms)

    def expire(self, watermark_ms: int) -> list[str]:
        """Evict the clusters idle since ``idle_ms`` before ``watermark_ms``; their ids."""
        out = self._idle.expire(watermark_ms)
        for cid in out:
            self.index.drop(cid)
        return out

    # -- persistence (the index's owner logs it: streams.stages.ResolvePartition) --

    def take_changes(self) -> tuple[dict[str, tuple[int, tuple[str, ...]]], tuple[str, ...]]:
        """What changed since the last call, as :meth:`fold` takes it: the clusters touched
        (least recently first) with their latest event time and the signals they took, then
        the clusters evicted.

        >>> clusters = EmergingClusters(idle_ms=60_000)
        >>> a = clusters.assign(Content(md5="a" * 32), ts_ms=0)
        >>> clusters.take_changes() == ({a: (0, ("a" * 32,))}, ())
        True
        >>> clusters.touch(a, 5_000); clusters.expire(70_000) == [a]
        True
        >>> clusters.take_changes() == ({}, (a,))
        True
        """
        changed, evicted = self._idle.take_changes()
        return {cid: (last, tuple(new)) for cid, last, new in changed}, tuple(evicted)

    def log_changes(self, limit: int) -> tuple[tuple[bytes, ...], int, tuple[str, ...]]:
        """:meth:`take_changes` as the owner's state log writes it (the compact ``"U"`` of
        :class:`~streams.wire.ResolveDelta`, written by the core: no Python object per
        cluster): its parts (each at most ``limit`` bytes), the entries they hold, and the
        clusters evicted.

        >>> clusters = EmergingClusters(idle_ms=60_000)
        >>> a = clusters.assign(Content(md5="0" * 30 + "ff"), ts_ms=5)
        >>> clusters.touch(a, 7_000)
        >>> (part,), items, evicted = clusters.log_changes(1_000)
        >>> part == b'[7000,["' + a.encode() + b'",0,["AAAAAAAAAAAAAAAAAAAA/w"]]]', items, evicted
        (True, 2, ())
        """
        parts, items, evicted = self._idle.log_changes(limit)
        return tuple(parts), items, tuple(evicted)

    def snapshot_log(self, limit: int) -> tuple[tuple[bytes, ...], int]:
        """:meth:`snapshot` as :meth:`log_changes` writes it: the parts, the entries."""
        parts, items = self._idle.snapshot_log(limit)
        return tuple(parts), items

    def fold(
        self, changed: Mapping[str, tuple[int, Sequence[str]]], evicted: Iterable[str] = ()
    ) -> None:
        """Take back what :meth:`take_changes` gave (a log read back, in the order written):
        the same clusters, content and idle order as the index that wrote it.

        >>> a = EmergingClusters(idle_ms=60_000)
        >>> cid = a.assign(Content(pdq="f" * 64, pdq_quality=90), ts_ms=0)
        >>> b = EmergingClusters(idle_ms=60_000)
        >>> b.fold(*a.take_changes())
        >>> b.assign(Content(pdq="f" * 63 + "0", pdq_quality=90), ts_ms=1_000) == cid
        True
        """
        for cid, (last, signals) in changed.items():
            self.index.add_signals(cid, map(signal_of, signals))
            self._idle.fold(cid, last)
        for cid in evicted:
            if self._idle.forget(cid):
                self.index.drop(cid)

    def snapshot(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Every live cluster, as :meth:`fold` takes it (least recently touched first)."""
        return {cid: (last, tuple(self.index.held(cid))) for cid, last in self._idle.snapshot()}

    @property
    def live_items(self) -> int:
        """Entries a snapshot holds (clusters and their signals)."""
        return len(self._idle) + len(self.index)


def within(signal_type: str, a: str, b: str, threshold: int) -> int | None:
    """The distance of two signals of one type if they match (MD5: equal), else ``None``.

    >>> within("pdq", "f" * 64, "f" * 63 + "0", 31), within("md5", "a" * 32, "b" * 32, 31)
    (4, None)
    """
    if signal_type == "md5":
        return 0 if a == b else None
    d = hamming(a, b)
    return d if d <= threshold else None
