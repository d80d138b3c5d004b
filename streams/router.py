"""Stage 1: which content cluster each event belongs to.

An upload is matched against the hash banks: a match puts it in the cluster
of the bank entry it matched (``b-...``); content no bank knows joins the
live unbanked cluster of a near-duplicate, or starts one of its own
(``u-...``, see :mod:`streams.emerging`), so unbanked content that spreads
fast can still be counted and queued for review; content on the allow-list
(a reviewer's false positive) gets a cluster that never alerts (``a-...``). A reshare carries no
content: it inherits its parent's cluster, through the post -> cluster map;
it is never looked up in a bank. A takedown goes to the cluster of the post
it takes down.

A reshare (or takedown) whose parent has not been seen yet is *held*, not
dropped: Kafka orders records only within a partition, so a reshare often
overtakes its parent. It is released the moment the parent is routed, and
expires (a counted rejection, ``orphan_expired``) when event time has moved
``hold_ms`` past it. Held items are bounded (``max_held``; past it the
newcomer is refused with ``orphan_overflow``), and a chain of held reshares
that loops back on itself is refused as a ``cycle``.

The post -> cluster map and the held events are the compiled core's
(``_core.PostRoutes``, ``rust/core/src/posts.rs`` and ``route.rs``): post ids
kept as bytes, each cluster id once; what waits for which post, the loop
check, the limit and expiry, with references to the held events and no copy.
A reshare is routed (or held) in one call, and registering a post releases
the chains of reshares that waited for it. A streaming resolve partition's
map keeps only its own posts (:class:`streams.stages.ResolvePartition`).

>>> from streams.banks import HashBanks, BankEntry
>>> from streams.events import parse_event
>>> banks = HashBanks([])
>>> _ = banks.add(BankEntry("ncii", "md5", "a" * 32))
>>> r = Router(banks, Stats())
>>> share = parse_event(b'{"event_id":"e2","type":"share","ts":1767225601000,'
...     b'"post_id":"p2","parent_post_id":"p1","user_id":"u2"}')
>>> r.route(share)   # its parent is not here yet: held
[]
>>> up = parse_event(b'{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1",'
...     b'"user_id":"u1","content":{"md5":"' + b"a" * 32 + b'"}}')
>>> [(x.event.post_id, x.cluster_id == BankEntry("ncii", "md5", "a" * 32).cluster_id)
...  for x in r.route(up)]
[('p1', True), ('p2', True)]
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from streams._core import PostRoutes
from streams.alerts import MatchInfo
from streams.banks import HashBanks, Match, MatchKey, match_key, pdq_usable
from streams.emerging import EmergingClusters, IndexRequests, allowed_cluster_id
from streams.events import Content, Rejection, ShareEvent
from streams.stats import Stats
from streams.vpdq import usable_hashes


@dataclass(frozen=True, slots=True)
class Routed:
    """An event with the cluster it belongs to (and, for a banked upload, its match)."""

    event: ShareEvent
    cluster_id: str
    match: MatchInfo | None = None

    @property
    def banked(self) -> bool:
        return self.cluster_id.startswith("b-")


def match_info(m: Match) -> MatchInfo:
    """The alert's record of a bank match (a video's with its kind and percentages)."""
    e = m.entry
    if e.signal_type != "vpdq":
        return MatchInfo(e.bank, e.signal_type, e.signal, m.distance, e.label)
    video = m.video
    return MatchInfo(
        e.bank,
        e.signal_type,
        e.signal,
        m.distance,
        e.label,
        m.kind,
        round(video.query_match_pct, 2) if video else None,
        round(video.compared_match_pct, 2) if video else None,
    )


class Router:
    """Resolve each event's cluster; hold what cannot be resolved yet."""

    def __init__(
        self,
        banks: HashBanks,
        stats: Stats,
        *,
        post_clusters: PostRoutes | None = None,
        hold_ms: int = 1_800_000,
        max_held: int = 100_000,
        emerging: EmergingClusters | None = None,
        index_requests: IndexRequests | None = None,
    ) -> None:
        self.banks = banks
        #: unbanked content's clusters (near-duplicates join one)
        self.emerging = emerging if emerging is not None else EmergingClusters()
        #: set in a streaming resolve partition, where one partition owns the index: unbanked
        #: uploads wait in :attr:`deferred` for it, and the latest events of unbanked
        #: clusters go to it (see :class:`streams.emerging.IndexRequests`)
        self.index_requests = index_requests
        self.deferred: list[ShareEvent] = []
        self.stats = stats
        #: post -> cluster, and the events waiting for their parent (or target) post
        self.post_clusters = post_clusters if post_clusters is not None else PostRoutes()
        self.hold_ms = hold_ms
        self.max_held = max_held
        # answers of the last prefetch (see :meth:`prefetch`), by match key
        self._prefetched: dict[MatchKey, Match | None] = {}

    @property
    def held(self) -> int:
        return self.post_clusters.held

    def prefetch(self, contents: Sequence[Content]) -> None:
        """Match a batch of uploads in one index search; :meth:`match` then uses the answers.

        One call of the banks for the batch (one pass over their answer cache,
        one search of the compiled index for the misses), so a stage that has a
        batch in hand calls this first. The answers hold until :meth:`drop_prefetched`
        or the next prefetch; counters are counted here, as
        :meth:`HashBanks.match_many` counts them.
        """
        self._prefetched = dict(
            zip(map(match_key, contents), self.banks.match_many(contents), strict=True)
        )

    def drop_prefetched(self) -> None:
        """Forget the last prefetch (the banks may change before the next batch)."""
        self._prefetched = {}

    def match(self, event: ShareEvent) -> Routed | None:
        """Route an upload: bank match, or its own unbanked cluster (``None``: deferred to the
        index's owner, see :attr:`index_requests`)."""
        routed = self.classify(event)
        if routed is not None:
            return routed
        content = event.content
        assert content is not None
        if self.index_requests is not None and self.index_requests.defer(content):
            self.deferred.append(event)
            return None
        return Routed(event, self.emerging.assign(content, event.ts_ms))

    def classify(self, event: ShareEvent) -> Routed | None:
        """An upload's bank match (or the allow-list's cluster), counted; ``None``: content no
        bank knows, for the index of unbanked content. It depends on the banks alone (not on
        the uploads before it), so replay classifies a batch's uploads ahead of its loop
        (:meth:`classify_batch`)."""
        content = event.content
        assert content is not None
        key = match_key(content)
        m = self._prefetched[key] if key in self._prefetched else self.banks.match(content)
        return self._classified(event, m)

    def classify_batch(self, uploads: Sequence[ShareEvent]) -> list[Routed | None]:
        """:meth:`classify` of a batch's uploads, matched in one search (counted as
        :meth:`prefetch` counts them); the banks must not change in between."""
        matches = self.banks.match_many([ev.content for ev in uploads])  # type: ignore[misc]
        return [self._classified(ev, m) for ev, m in zip(uploads, matches, strict=True)]

    def _classified(self, event: ShareEvent, m: Match | None) -> Routed | None:
        content = event.content
        assert content is not None
        if self.banks.timed_after(event.ts_ms):  # a bank add took effect after this upload
            m = self.banks.match_at(content, event.ts_ms)
        if m is not None:
            self.stats.matched[m.entry.bank] += 1
            return Routed(event, m.entry.cluster_id, match_info(m))
        self.stats.unmatched_uploads += 1
        if (content.pdq is not None and not pdq_usable(content)) or (
            content.vpdq is not None and not usable_hashes(content.vpdq)
        ):
            self.stats.low_quality += 1
        if self.banks.holds_allow_list() and self.banks.allowed(content, event.ts_ms):
            self.stats.allowed += 1
            return Routed(event, allowed_cluster_id(content))
        return None

    def cluster_unbanked(self, events: Iterable[ShareEvent]) -> list[Routed | Rejection]:
        """At the index's owner: the uploads :meth:`match` deferred, in the order given
        (``(ts, event_id)``, see :func:`due_uploads`): the cluster each joins or starts
        (:meth:`EmergingClusters.assign`), and what waited for their posts."""
        out: list[Routed | Rejection] = []
        for ev in events:
            assert ev.content is not None  # deferred by match(), an upload's
            routed = Routed(ev, self.emerging.assign(ev.content, ev.ts_ms))
            out.append(routed)
            self._register(routed, out)
        return out

    def touch(self, cluster_id: str, ts_ms: int) -> None:
        """An event of an unbanked cluster: it is not idle (told to the index's owner)."""
        (self.emerging if self.index_requests is None else self.index_requests).touch(
            cluster_id, ts_ms
        )

    def route(self, event: ShareEvent) -> list[Routed | Rejection]:
        """Route one event; the result also holds any held events it released (nothing for an
        upload deferred to the index's owner, or a reshare held)."""
        if event.type == "upload":
            match = self.match(event)
            if match is None:
                return []
            routed = match
        else:
            share = event.type == "share"
            target = event.parent_post_id if share else event.post_id
            assert target is not None
            cluster, released, refused = self.post_clusters.route(
                target, event.post_id, share, event.ts_ms, event, self.max_held
            )
            if cluster is None:
                return self._held(target, event, refused)
            out: list[Routed | Rejection] = [Routed(event, cluster)]
            if cluster[0] == "u":
                self.touch(cluster, event.ts_ms)
            if released:
                self._released(cluster, released, out)
            return out
        out = [routed]
        self._register(routed, out)
        return out

    def _register(self, first: Routed, out: list[Routed | Rejection]) -> None:
        """``first``'s post is routed: map it, and release what waited for it."""
        released = self.post_clusters.register(first.event.post_id, first.cluster_id)
        if released:
            self._released(first.cluster_id, released, out)

    def _released(
        self, cluster: str, released: list[ShareEvent], out: list[Routed | Rejection]
    ) -> None:
        unbanked = cluster[0] == "u"
        for child in released:
            if unbanked:
                self.touch(cluster, child.ts_ms)
            out.append(Routed(child, cluster))
        self.stats.orphans_held = self.post_clusters.held

    def _held(
        self, target: str, event: ShareEvent, refused: tuple[str, int] | None
    ) -> list[Routed | Rejection]:
        if refused is not None:
            return list(self.refused(target, event, refused))
        self.stats.held += 1
        self.stats.orphans_held = self.post_clusters.held
        return []

    @staticmethod
    def refused(target: str, event: ShareEvent, refused: tuple[str, int]) -> list[Rejection]:
        """The rejection of an event the held orphans refused (``cycle``, ``orphan_overflow``)."""
        reason, held = refused
        detail = (
            f"reshare chain loops through post {target!r}"
            if reason == "cycle"
            else f"{held} events already wait for their parents"
        )
        return [Rejection(reason, detail, event.to_json(), event.event_id)]

    def expire(self, watermark_ms: int) -> list[Rejection]:
        """Give up on held events that event time has passed by ``hold_ms``."""
        self.emerging.expire(watermark_ms)
        out: list[Rejection] = []
        for e in self.post_clusters.expire(watermark_ms - self.hold_ms):
            target = e.parent_post_id if e.type == "share" else e.post_id
            out.append(
                Rejection(
                    "orphan_expired",
                    f"{e.type} waited {self.hold_ms // 1000}s of event time for post "
                    f"{target!r}, which never came",
                    e.to_json(),
                    e.event_id,
                )
            )
        self.stats.orphans_held = self.post_clusters.held
        return out

    def forget(self, post_ids: list[str]) -> None:
        """Drop evicted posts from the map, so state stays bounded."""
        self.post_clusters.forget_many(post_ids)


def due_uploads(
    waiting: list[tuple[int, str]], held: Mapping[str, ShareEvent], until_ms: int
) -> list[ShareEvent]:
    """The unbanked uploads waiting for the index's owner that event time has passed: popped
    from ``waiting`` (a heap of ``(ts, event_id)``; ids no longer ``held`` are skipped) in
    ``(ts, event_id)`` order, whatever order they were read in.

    Replay and a streaming worker both cluster unbanked uploads this way, once their
    watermark has passed them (every input read past them, less the allowed lateness), so
    near-duplicates out of order in the input, within that lateness, give the same clusters
    whatever the partitioning and read order: the earlier upload starts the cluster.

    >>> ups = {e: ShareEvent(event_id=e, type="upload", ts_ms=t, post_id=e, user_id="u")
    ...        for e, t in [("e1", 20), ("e2", 10), ("e3", 30)]}
    >>> waiting = []
    >>> for ev in ups.values():
    ...     heapq.heappush(waiting, (ev.ts_ms, ev.event_id))
    >>> [ev.event_id for ev in due_uploads(waiting, ups, 20)], waiting
    (['e2', 'e1'], [(30, 'e3')])
    """
    due: list[ShareEvent] = []
    while waiting and waiting[0][0] <= until_ms:
        _, eid = heapq.heappop(waiting)
        ev = held.get(eid)
        if ev is not None and ev.type == "upload":
            due.append(ev)
    return due
