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
the chains of reshares that waited for it. The per-event loops that route are
compiled too, one routing code for both (``rust/python/src/routing.rs``):
replay's (``_core.ReplayLoop``) and a streaming resolve partition's
(``_core.ResolveLoop``, whose map keeps only its own posts). :class:`Router`
keeps what they ask of Python: the banks' answers for a batch's uploads, the
clusters of content the index cannot use, refusals and expiry.

>>> from streams.banks import HashBanks, BankEntry
>>> from streams.events import parse_event
>>> banks = HashBanks([])
>>> _ = banks.add(BankEntry("ncii", "md5", "a" * 32))
>>> r = Router(banks, Stats())
>>> up = parse_event(b'{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1",'
...     b'"user_id":"u1","content":{"md5":"' + b"a" * 32 + b'"}}')
>>> [x.cluster_id == BankEntry("ncii", "md5", "a" * 32).cluster_id for x in r.classify_batch([up])]
[True]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streams._core import PostRoutes
from streams.alerts import MatchInfo
from streams.banks import BANKED_PREFIX, HashBanks, Match, pdq_usable
from streams.emerging import EmergingClusters, allowed_cluster_id, video_signal
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
        return self.cluster_id.startswith(BANKED_PREFIX)


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


def low_quality(content: Content) -> bool:
    """Whether an upload that matched no bank is counted low quality (``Stats.low_quality``):
    a PDQ under the quality cut, or a video none of whose frames is usable. The one rule,
    counted with an unmatched upload where it is new, once (``rust/python/src/detect.rs``'s
    ``Unmatched``): a worker's clusters partition as it receives the upload
    (``_core.ClusterLoop.take_received``), replay as its store applies it (the detector's
    counters); a compiled event's PDQ by ``routing::low_pdq``, the same test, the others'
    here. Not where an upload is classified: a line delivered twice (the simulator's
    duplicates) or an input read again after a kill is classified again."""
    return (content.pdq is not None and not pdq_usable(content)) or (
        content.vpdq is not None and not usable_hashes(content.vpdq)
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
    ) -> None:
        self.banks = banks
        #: unbanked content's clusters (near-duplicates join one)
        self.emerging = emerging if emerging is not None else EmergingClusters()
        self.stats = stats
        #: post -> cluster, and the events waiting for their parent (or target) post
        self.post_clusters = post_clusters if post_clusters is not None else PostRoutes()
        self.hold_ms = hold_ms
        self.max_held = max_held

    @property
    def held(self) -> int:
        return self.post_clusters.held

    def classify_batch(self, uploads: Sequence[ShareEvent]) -> list[Routed | None]:
        """Each upload's bank match (or the allow-list's cluster); ``None``: content no bank
        knows, for the index of unbanked content. Matched in one search: the answer depends
        on the banks alone (not on the uploads before it), which must not change in between,
        so the compiled loops take a batch's answers ahead of routing it (asking only about
        the uploads an entry may match: ``rust/python/src/routing.rs``'s screen). Nothing is
        counted here: an upload is classified each time it is read (a line delivered twice,
        a resolve partition's input read again after a kill) and counted once, where it is
        new (:func:`low_quality`)."""
        matches = self.banks.match_many([ev.content for ev in uploads])  # type: ignore[misc]
        return [self._classified(ev, m) for ev, m in zip(uploads, matches, strict=True)]

    def _classified(self, event: ShareEvent, m: Match | None) -> Routed | None:
        content = event.content
        assert content is not None
        if self.banks.timed_after(event.ts_ms):  # a bank add took effect after this upload
            m = self.banks.match_at(content, event.ts_ms)
        if m is not None:
            return Routed(event, m.entry.cluster_id, match_info(m))
        if self.banks.holds_allow_list() and self.banks.allowed(content, event.ts_ms):
            return Routed(event, allowed_cluster_id(content))
        return None

    def unsignalled(self, event: ShareEvent) -> str | None:
        """An unbanked upload with no image signal the index uses: a video waits for the
        index (``None``); content no index can use starts its own cluster now."""
        assert event.content is not None
        if video_signal(event.content) is not None:
            return None
        return self.emerging.assign(event.content, event.ts_ms)

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


class RoutingHost:
    """What the compiled routing (``rust/python/src/routing.rs``) asks of the object that
    drives it, replay's ``Pipeline`` or a streaming ``ResolvePartition``, and that its
    :class:`Router` answers alike for both: the banks' answers for a batch's uploads, and
    whether an unbanked upload waits for the index (a video) or starts its cluster now."""

    router: Router

    def _classify(self, uploads: list[ShareEvent]) -> list[Routed | None]:
        return self.router.classify_batch(uploads)

    def _unsignalled(self, event: ShareEvent) -> str | None:
        return self.router.unsignalled(event)
