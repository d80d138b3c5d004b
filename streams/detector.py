"""Stage 2: each cluster's cascade, velocity and alert episode, on event time.

The detector takes routed events in event-time order (see
:mod:`streams.reorder`) and keeps, per content cluster, the reshare forest
(:class:`graphs.cascade.Cascade`), the event-time velocity
(:class:`graphs.velocity.Velocity`) and the state of its alert episode. It
has no clock: ``now`` is always the event time of what it is given, so a
replay of a file and the live stream make the same decisions.

Decisions (alerts, takedown requests, rejections) are collected in
:attr:`Detector.outbox`; the caller takes them with :meth:`Detector.drain`
after a batch, so a streaming worker sends one batch of records, not one
send per event.

Episodes. A banked cluster whose velocity meets a rule opens an *episode*.
Each velocity rule fires (an alert at its severity) at most once per
episode, the first time it is met in it, whether or not a higher severity
fired before; several rules met at one event fire lowest first. The
``[predicted]`` rule only escalates an episode a velocity rule opened (a
forecast alone is noise), and fires its severity at most once per episode:
there is one alert id per cluster, episode and severity, whichever rule got
there first. The first firing at ``high`` or above sends takedown requests,
once per episode. The episode is *resolved* (every severity it fired,
resolved) once velocity has stayed under the lowest rule for
``resolve_after``. The time of resolution is computed from event times alone
(the moment the last qualifying share left the window, plus
``resolve_after``), so it does not depend on when a worker happens to check.
A new episode may not open within ``cooldown`` of the last one's end.

Why no severity is skipped: under "fire the highest rule met, if above the
highest fired", whether ``high`` ever fires depends on whether ``critical``
(or a forecast) got there first, which depends on events not seen yet, and
no firing could be announced before every event up to it is in. Here an
alert exists exactly when its rule was met during its episode.

Unbanked clusters never alert: crossing a rule counts them as *emerging*
(:attr:`Stats.emerging`) and queues them on :attr:`Detector.emerging` for
human review.

Early firing. A streaming worker (:class:`streams.stages.ClusterPartition`)
applies an event only once the watermark ``wm`` (the slowest input
partition, minus the allowed lateness) has passed it, in the order replay
applies them, so a crossing would reach on-call a whole allowed lateness
after the share. It also tells the detector what it holds
(:meth:`Detector.expect`), and after each batch asks
(:meth:`Detector.fire_early`) which velocity firings the events already seen
*prove*. Let ``K`` be a cluster's applied events plus those held, and ``F``
(a superset) every event replay will apply. A count over a window is
monotone in the set of events: met at an event time ``tau`` with ``K``, it
is met at ``tau`` with ``F``, and replay evaluates the rules at every
event's time. A held event counts only if replay will count it when it
applies it: an upload, or a reshare whose parent is in the applied graph or
is a counted held post not newer than it (one of the same millisecond that
sorts first is counted when its parent is applied, within that instant; a
reshare older than its parent is counted when the parent comes, not before). A
firing goes out early only when its id is certain:

1. *Escalation.* Episode ``E`` is open at the watermark, to resolve at
   ``d0`` (the lowest rule's ``n_L``-th latest share leaving its window, plus
   ``resolve_after``). More events can only move that later, so for
   ``tau < d0``, ``E`` is open at ``tau`` in ``F``, the rule is met there,
   and ``(cluster, E, severity)`` fires (unless it already had).
2. *Opening.* No episode is open at the watermark. Replay opens ``E + 1`` at
   the first evaluation ``t'`` after it where a rule is met and the cooldown
   is over; with ``cooldown_until <= tau``, that is at ``tau`` at the latest.
   It must still be open at ``tau``: it resolves no earlier than
   ``x + w_L + resolve_after``, ``x`` the ``n_L``-th latest share counted at
   ``t'``. The rule ``H`` met at ``t'`` counts ``n_H`` shares in
   ``(t' - w_H, t']``; those not newer than ``wm - w_L`` are applied already
   (or reshares the detector holds for a parent), in ``(wm - w_H, wm - w_L]``.
   If these are at most ``n_H - n_L`` for every rule
   (:attr:`AlertPolicy.opening_allowances`), at least ``n_L`` are newer, so
   ``x > wm - w_L`` and ``E + 1`` lasts past ``wm + resolve_after``. Hence
   ``tau < wm + resolve_after`` is asked, and ``tau < last_ms + idle_ms``
   (no eviction can start the cluster afresh, at episode 0, before ``tau``).

   A first draft asked instead for a "ladder-safe" policy (every rule met at
   ``t`` implies the lowest met at some evaluation ``<= t``; true of
   ``n_H >= ceil(w_H / w_L) n_L``) and a cooldown over by ``wm`` minus the
   longest window. That does not hold: a reshare older than its parent is
   counted when the parent comes, so 476 reshares that waited twelve minutes
   for their parent meet ``critical`` (500 in 15 minutes) with the upload,
   the parent and 22 fresh shares, ``warning`` never met; that episode
   resolves within minutes, and a ``warning`` announced for ``E + 1`` belongs
   to ``E + 2`` or to none (``tests/test_early_firing.py`` has the case). Nor
   did it stop at an eviction.

Everything that depends on order stays on the watermark path: resolution,
an episode's end, cooldown, takedown requests, the ``[predicted]`` rule.
When the watermark path reaches a firing sent early it updates the state
exactly as always, and sends (and counts) nothing. Events later than the
watermark (counted ``late``) and two events adding one post (rejected as
``duplicate_post``) already break replay's equality; they are left out of
the argument, and change nothing here but which figures an alert carries. Lateness
is not the same in both: a worker whose watermark lags (partitions moving)
applies in time a share ``replay`` counts late, so its early firing can be
at the crossing in event time, before ``replay``'s, with ``replay``'s id.

An early alert is an :class:`EarlyAlert`: its velocity and acceleration are
those of every share seen (``K``) at ``tau``, its ``ts`` is ``tau``; its
graph figures (size, live copies, users, depth, breadth, virality, top
spreaders) are those of the events applied (up to ``as_of``) and of the
posts held that replay will count up to ``ts`` (:meth:`Detector._as_seen`);
the forecast is the last one made.

What it costs. :meth:`Detector.expect` and :meth:`Detector.apply` keep each
banked cluster's held posts in a sorted list (an append and a pop at the
front, as a rule); :meth:`Detector.fire_early` looks only at the clusters a
batch brought events for; a rule is looked at only if the shares applied and
held could reach it at all, and then at the held shares' times in order, up
to the first crossing: near a threshold that is about ``shares x lateness /
window`` of them (33 for ``critical``'s 500 in 15 minutes, at 60 s). Once
every severity fired in an episode, no window is counted at all.

>>> det = Detector(AlertPolicy.default(), Stats(), pseudonymizer=Pseudonymizer(b"k"))
>>> t0, m = 1_767_225_600_000, MatchInfo("ncii", "md5", "a" * 32, 0)
>>> burst = [Routed(ShareEvent("e0", "upload", t0, "p0", "u0"), "b-1", m)] + [
...     Routed(ShareEvent(f"e{i}", "share", t0 + i * 1000, f"p{i}", f"u{i}", "p0"), "b-1")
...     for i in range(1, 30)
... ]
>>> for item in burst:            # held: the watermark is a minute behind
...     det.expect(item)
>>> det.fire_early(["b-1"], t0 - 60_000)
>>> [early] = det.drain().alerts  # the 25th share, 24 s after the upload: proved already
>>> early.severity, early.ts_ms - t0, early.to_dict()["provisional"]
('warning', 24000, True)
>>> for item in burst:            # the watermark passes them: the same id, not sent again
...     det.apply(item)
>>> det.drain().alerts, det.clusters["b-1"].fired, det.stats.alerts[("warning", "firing")]
([], ['warning'], 1)
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from graphs.cascade import Cascade
from graphs.velocity import MINUTE_MS, WINDOWS_MS, Velocity
from streams._core import ClusterIds, EventIds, UnbankedClusters, unmatched_kinds
from streams.alerts import (
    Alert,
    CascadeFigures,
    EarlyAlert,
    MatchInfo,
    Prediction,
    Pseudonymizer,
    Severity,
    TakedownRequest,
    alert_id,
    severity_rank,
)
from streams.banks import ALLOW_BANK, BANKED_PREFIX, DEFAULT_PDQ_THRESHOLD, BankUpdate
from streams.emerging import ContentIndex, Signal, signal_of, signals_of
from streams.events import Rejection, ShareEvent
from streams.forecast import LaterPrediction, PredictorFactory
from streams.policy import AlertPolicy
from streams.router import Routed
from streams.stats import Stats


class Predictor(Protocol):
    """Incremental final-size prediction for one cascade (see ``graphs.prediction``)."""

    def add(self, t_s: float, followers: int | None = None, *, original: bool = False) -> None: ...

    def predict(self, now_s: float) -> Prediction | None: ...

    def read(self, now_s: float) -> Callable[[], Prediction | None]:
        """The forecast at ``now_s``: the state read now, the figures when called (each
        call the same answer; ``streams.forecast``'s computes them once)."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterSummary:
    """A cluster's headline figures, for dashboards and the review queue."""

    cluster_id: str
    bank: str | None
    velocity_5m: float
    size: int
    live: int
    first_seen_ms: int
    last_ms: int


@dataclass
class Decisions:
    """What the detector decided since the last drain."""

    alerts: list[Alert] = field(default_factory=list)
    actions: list[TakedownRequest] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    evicted_posts: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.alerts or self.actions or self.rejections or self.evicted_posts)

    def clear(self) -> None:
        """Empty every list in place: a host that has taken the decisions (replay's, after
        each event that made one: under a takedown, every post) makes no new record."""
        self.alerts.clear()
        self.actions.clear()
        self.rejections.clear()
        self.evicted_posts.clear()


@dataclass
class ClusterState:
    """One cluster: its cascade, velocity, and where its alert episode stands."""

    cluster_id: str
    first_seen_ms: int
    #: the reshare forest (unbanked clusters, which never alert, are kept in the compiled
    #: core instead: :class:`UnbankedCluster` is a copy of one)
    cascade: Cascade = field(default_factory=Cascade)
    velocity: Velocity = field(default_factory=Velocity)
    match: MatchInfo | None = None
    last_ms: int = 0
    #: the ids of the events applied: a redelivered event is applied once (16 bytes an id,
    #: in the compiled core)
    event_ids: EventIds = field(default_factory=EventIds)
    # children (and takedowns) of posts that are not in the cascade yet
    pending: dict[str, list[ShareEvent]] = field(default_factory=dict)
    episode: int = 0
    active: bool = False
    #: the severities fired in the open episode, in the order they fired
    fired: list[Severity] = field(default_factory=list)
    resolve_due_ms: int | None = None
    #: the time of the entry of :attr:`Detector._due` that stands for this episode's
    #: schedule (at or before :attr:`resolve_due_ms`; moved on when it comes up)
    resolve_queued_ms: int | None = None
    cooldown_until_ms: int = 0
    takedown_severity: Severity | None = None
    takedown_alert: str = ""
    emerging: bool = False
    #: unbanked: when each severity's rule was first met (the review queue: a dismissed
    #: cluster comes back once it meets a rule higher than any it had met by then)
    emerging_met: dict[str, int] | None = None
    predictor: Predictor | None = None
    #: the forecast the policy last made (:attr:`prediction`), computed when first read
    forecast: Callable[[], Prediction | None] | None = None
    predicted_at_ms: int = -1
    #: matched a bank: from its first upload (``b-``), or since a bank change (retroaction)
    banked: bool = False
    #: the allow-list signals (a reviewer's false positive) its content matches: while there
    #: is one, or for content on the allow-list when uploaded (``a-``), it never alerts
    allowed_by: set[tuple[str, str]] = field(default_factory=set)
    #: when it was last touched, in the detector's one order of clusters (banked here,
    #: unbanked in the compiled core): idle clusters are evicted in that order
    seq: int = 0

    @property
    def allowed(self) -> bool:
        return bool(self.allowed_by) or self.cluster_id.startswith("a-")

    @property
    def prediction(self) -> Prediction | None:
        """The forecast the policy last made (``None``: none yet, or no reshare then)."""
        return self.forecast() if self.forecast is not None else None

    def since_first_s(self, ts_ms: int) -> float:
        """Seconds from the cluster's first event to ``ts_ms``: the time its predictor is
        given, a post's and a forecast's (one expression for all: were one written apart
        and changed alone, the forecasts' last bits would part)."""
        return (ts_ms - self.first_seen_ms) / 1000


@dataclass(frozen=True, slots=True)
class UnbankedCluster:
    """A copy of an unbanked cluster's state (kept in the compiled core): what the review
    queue and the views read of it.

    >>> c = UnbankedCluster("u-1", 0, 2_000, 2, 2, 1, False, None, (1_000, 2_000),
    ...                     (("p0", None, "u0", 0, True), ("p1", "p0", "u1", 1_000, True)))
    >>> c.rate(60_000, 2_000), c.banked, [p for p, parent, *_ in c.made() if parent is None]
    (2.0, False, ['p0'])
    """

    cluster_id: str
    first_seen_ms: int
    last_ms: int
    size: int
    live: int
    roots: int
    allowed: bool
    #: when each severity's rule was first met (``None``: none yet)
    emerging_met: dict[str, int] | None
    #: the shares' event times within the velocity horizon, sorted
    times: tuple[int, ...]
    #: every post as ``(post, parent, user, ts_ms, live)``, parents first
    posts: tuple[tuple[str, str | None, str, int, bool], ...]
    #: the allow-list signals its content matches (a reviewer's false positive)
    allowed_by: tuple[tuple[str, str], ...] = ()
    match: MatchInfo | None = None
    banked: bool = False

    def rate(self, window_ms: int, now_ms: int) -> float:
        """Shares per minute over ``(now - window, now]`` (as :meth:`Velocity.rate`)."""
        times = self.times
        n = bisect_right(times, now_ms) - bisect_right(times, now_ms - window_ms)
        return n * MINUTE_MS / window_ms

    def made(self) -> list[tuple[str, str | None, str, int, bool]]:
        return list(self.posts)


#: a ``seq`` after every other: no cluster of the detector's own is older
_NO_BARRIER = 2**63
#: an event time after every other
_NO_STOP = 2**62
#: the node table of no cascade (a held event's cluster not applied yet)
_NO_POSTS: Mapping[str, object] = MappingProxyType({})
#: a lookahead's forgotten first times stay in its list (``start`` moves past them) until
#: more than this many, and are cut once they are half of it (:meth:`Lookahead.forget`)
_TRIM_FROM = 256
#: the event types, in the order the compiled core counts them
_KINDS = ("upload", "share", "takedown")
#: what the unbanked store counted: duplicates, late, clusters created, uploads, shares,
#: takedowns applied, of the uploads those of low quality and those the allow-list took
#: (replay's: ``rust/python/src/detect.rs``'s ``Unmatched``), and the latest event time
#: applied (``None``: none)
UnbankedCounts = tuple[int, int, int, int, int, int, int, int, int | None]


def _key(ev: ShareEvent) -> tuple[int, str]:
    return (ev.ts_ms, ev.event_id)


def _counted_under(parent: ShareEvent, reshare: ShareEvent) -> bool:
    """Whether replay counts ``reshare`` at every evaluation from its own time on, given that
    it counts its held ``parent`` from the parent's: the reshare is not older than it.

    Later in ``(ts, event_id)`` order, it is applied after its parent. Of the same
    millisecond but ordered first (event ids compare as text: ``"e12" < "e2"``), it
    waits for the parent in the detector and is counted when the parent is applied, within
    the same instant: an evaluation at that instant (a firing is looked for at the last
    share of an instant) counts both, as every later one does. Older than its parent, it
    is counted only from the parent's time, not its own: not counted ahead at all.
    """
    return reshare.ts_ms >= parent.ts_ms


def _duplicate_post(ev: ShareEvent) -> Rejection:
    return Rejection(
        "duplicate_post",
        f"post {ev.post_id!r} was already added by another event",
        ev.to_json(),
        ev.event_id,
    )


def _figures(
    c: Cascade, rates: list[float], acceleration: float, prediction: Prediction | None
) -> CascadeFigures:
    """An alert's figures: the graph's, the 1/5/15-minute rates, acceleration, the forecast
    (never below the size stated beside it: :meth:`~streams.alerts.Prediction.at_least`)."""
    return CascadeFigures(
        size=c.size,
        live=c.live,
        roots=c.roots,
        unique_users=c.unique_users,
        depth=c.depth,
        breadth=c.breadth,
        structural_virality=c.structural_virality(),
        velocity_1m=rates[0],
        velocity_5m=rates[1],
        velocity_15m=rates[2],
        acceleration=acceleration,
        predicted_final_size=None if prediction is None else prediction.at_least(c.size),
    )


#: An early alert's graph figures include the posts held (added to the applied cascade and
#: taken out again) up to this many posts applied; a bigger cascade's keep what was applied
#: (the figures of one at this size cost about 49 ms).
AS_SEEN_MAX_POSTS = 20_000


class Lookahead:
    """One banked cluster's events received but not applied yet: its part of the reorder buffer.

    Kept beside the buffer (not a scan of it) so that :meth:`Detector.fire_early`
    costs what the cluster holds: ``times[start:]`` are the sorted event times
    of the held posts that replay will count when it applies them (see the
    module doc), ``posts`` those posts, ``waiting`` the held reshares not known
    to be counted, by parent. It refers to the events themselves; no record is
    made per event. Events are applied in time order, so the one applied is
    the first of ``times``: ``start`` moves on instead of the list shifting.
    """

    __slots__ = ("first_ms", "held", "match", "posts", "start", "times", "waiting")

    def __init__(self, first_ms: int, match: MatchInfo | None) -> None:
        self.times: list[int] = []
        self.start = 0
        self.posts: dict[str, ShareEvent] = {}
        self.waiting: dict[str, list[ShareEvent]] = {}
        #: every item held for this cluster, copies and takedowns included
        self.held = 0
        #: the earliest event time held, and the first bank match seen held
        self.first_ms = first_ms
        self.match = match

    def __len__(self) -> int:
        return len(self.times) - self.start

    def count(self, window_ms: int, now_ms: int) -> int:
        """Counted held shares in ``(now - window, now]``."""
        times, lo = self.times, self.start
        return bisect_right(times, now_ms, lo) - bisect_right(times, now_ms - window_ms, lo)

    def attach(self, ev: ShareEvent) -> None:
        """Count ``ev``, and the held reshares under it that are not older than it (see
        :func:`_counted_under`)."""
        stack = [ev]
        while stack:
            e = stack.pop()
            self.posts[e.post_id] = e
            insort(self.times, e.ts_ms, self.start)
            if not self.waiting:
                continue  # as a rule: no held reshare waits for a parent
            kids = self.waiting.pop(e.post_id, None)
            if kids:
                stay = []
                for k in kids:  # those older than their parent are counted when it comes
                    if _counted_under(e, k) and k.post_id not in self.posts:
                        stack.append(k)
                    else:
                        stay.append(k)
                if stay:
                    self.waiting[e.post_id] = stay

    def judge(self, ev: ShareEvent, nodes: Mapping[str, object]) -> None:
        """Count ``ev`` (a post or reshare held, not a copy of one applied) among the held
        shares if replay will count it when it applies it; ``nodes`` is the applied
        cascade's node table (an empty mapping when the cluster has none).

        Every banked event held comes here, more of them as a stream's banked cascades
        grow, so it is one Python call an event: the look-ups are read here, and
        :meth:`attach`'s work done in place when no held reshare waits for a parent (as a
        rule). One look-up of a held post: the same event is a copy, another one a second
        event adding the post; neither counted.
        """
        post, parent = ev.post_id, ev.parent_post_id
        posts, waiting = self.posts, self.waiting
        if post in posts:
            return  # a copy of a held one, or a second event adding one post: not counted
        if waiting:
            kids = waiting.get(parent or "")
            if kids is not None and any(k.event_id == ev.event_id for k in kids):
                return  # a copy of a held reshare
        if post in nodes:
            return  # a second event adding one post: rejected, never counted (not proved)
        if parent is not None and parent not in nodes:
            before = posts.get(parent)
            if before is None or not _counted_under(before, ev):
                waiting.setdefault(parent, []).append(ev)
                return
        if waiting:
            self.attach(ev)
        else:
            posts[post] = ev
            times, ts = self.times, ev.ts_ms
            # held events come in time order as a rule: insort's place is the end when
            # the time is not below the last (its own test), one compare and no C call's
            # argument parsing and search
            if times and ts < times[-1]:
                insort(times, ts, self.start)
            else:
                times.append(ts)

    def forget(self, ev: ShareEvent) -> None:
        """``ev`` was applied: it counts in the detector now, not here."""
        p = self.posts.get(ev.post_id)
        if p is not None and p.event_id == ev.event_id:
            del self.posts[ev.post_id]
            times, lo = self.times, self.start
            i = bisect_left(times, ev.ts_ms, lo)
            if i == lo:  # the first, as a rule
                self.start = lo = lo + 1
                if lo > _TRIM_FROM and lo * 2 > len(times):
                    del times[:lo]
                    self.start = 0
            else:
                del times[i]
        elif ev.type == "share" and ev.parent_post_id in self.waiting:
            kids = self.waiting[ev.parent_post_id]
            kids[:] = [k for k in kids if k.event_id != ev.event_id]
            if not kids:
                del self.waiting[ev.parent_post_id]

    def events(self) -> list[ShareEvent]:
        """The held posts and reshares, in ``(ts, event_id)`` order."""
        out = [*self.posts.values(), *(e for kids in self.waiting.values() for e in kids)]
        out.sort(key=_key)
        return out


def _add_held(c: Cascade, ahead: Lookahead, tau: int) -> None:
    """Add to ``c`` the posts ``ahead`` holds up to ``tau``, in ``(ts, event_id)`` order, a
    reshare held until its parent is in (those of one instant may come before it)."""
    waiting: dict[str, list[ShareEvent]] = {}
    for ev in sorted(ahead.posts.values(), key=_key):
        if ev.ts_ms > tau:
            break
        if ev.parent_post_id is not None and ev.parent_post_id not in c:
            waiting.setdefault(ev.parent_post_id, []).append(ev)
            continue
        stack = [ev]
        while stack:
            e = stack.pop()
            if e.parent_post_id is None:
                c.add_root(e.post_id, user=e.user_id, ts_ms=e.ts_ms)
            else:
                c.add_reshare(e.post_id, parent=e.parent_post_id, user=e.user_id, ts_ms=e.ts_ms)
            stack += waiting.pop(e.post_id, ())


def _graph(st: ClusterState) -> Cascade:
    """The reshare graph of a banked cluster (only banked clusters alert, so only they have one)."""
    if not isinstance(st.cascade, Cascade):
        raise TypeError(f"{st.cluster_id} is unbanked: it keeps no graph to measure")
    return st.cascade


class Detector:
    """Per-cluster state and the alert policy; feed it routed events in event-time order."""

    def __init__(
        self,
        policy: AlertPolicy,
        stats: Stats,
        *,
        pseudonymizer: Pseudonymizer,
        idle_ms: int = 3_600_000,
        top_spreaders: int = 5,
        predictor_factory: Callable[[], Predictor] | None = None,
        predict_every_ms: int = 10_000,
        review_queue: int = 1_000,
        content: ContentIndex | None = None,
        counts_uploads: bool = True,
    ) -> None:
        longest = max(policy.windows_ms)
        if idle_ms < longest + policy.resolve_after_ms:
            raise ValueError("idle_ms must outlast the longest window plus resolve_after")
        self.policy = policy
        self._fewest = min(rule.shares for rule in policy.rules)
        # what Velocity.reaching asks of each rule, and the entry a rule met adds (computed
        # once: read on every event)
        self._thresholds = tuple(
            (rule.shares, rule.window_ms, (rule.severity, "velocity")) for rule in policy.rules
        )
        #: how many severities an episode can fire (velocity rules', and the forecast's)
        self._severities = len(
            {r.severity for r in policy.rules} | {p.severity for p in [policy.predicted] if p}
        )
        self._allowances = policy.opening_allowances
        #: what an episode's resolve time asks of the policy (the lowest rule's count and
        #: window, the wait after it): read at every event of an active episode, and a
        #: property's call each (the policy is frozen and this detector's for its life)
        low = policy.lowest
        self._resolve_rule = (low.shares, low.window_ms, policy.resolve_after_ms)
        self.stats = stats
        #: whether the uploads applied are counted here (matched, by bank, or unmatched, and
        #: with the unmatched those of low quality and those the allow-list took), once
        #: each, where they are applied new: replay's. A clusters partition counts them as
        #: it receives them (``_core.ClusterLoop.take_received``): a replacement applies
        #: again every event its log gives back, those its predecessor counted included.
        #: Decided where the detector is made (a keyword)
        self.counts_uploads = counts_uploads
        self.pseudonymize = pseudonymizer
        self.idle_ms = idle_ms
        self.top_n = top_spreaders
        if policy.predicted is not None and isinstance(predictor_factory, PredictorFactory):
            # the policy's horizon is what every alert's prediction is for
            predictor_factory = predictor_factory.at_horizon(policy.predicted.horizon_s)
        self.predictor_factory = predictor_factory
        self.predict_every_ms = predict_every_ms
        self.horizon_ms = max(longest, max(WINDOWS_MS)) + 5 * MINUTE_MS
        #: banked clusters (and unbanked ones that turned out banked), least recently
        #: touched first; the unbanked ones are in the compiled core (:attr:`_unbanked`)
        self.clusters: OrderedDict[str, ClusterState] = OrderedDict()
        self._severity_names: list[Severity] = list(dict.fromkeys(r.severity for r in policy.rules))
        #: with an index of its own (a worker's clusters partition), the unbanked clusters
        #: keep their content's signals themselves and :attr:`content` holds the banked
        #: ones' only: a bank change scans them (about 40 bytes a live post less than an
        #: index record, id entry and table entries per cluster and signal)
        self._unbanked = UnbankedClusters(
            [(self._severity_names.index(r.severity), r.window_ms, r.shares) for r in policy.rules],
            self.horizon_ms,
            idle_ms,
            content is None,
        )
        self._live_events = 0
        self._due: list[tuple[int, str]] = []
        self.emerging: deque[ClusterSummary] = deque(maxlen=review_queue)
        #: the uploads' content of live clusters: which clusters a bank change concerns
        #: (replay's is a view of the router's index: ``content``, every live cluster's); one
        #: of its own (a worker's clusters partition) holds banked clusters' only (the
        #: unbanked store holds the rest, see :meth:`near`) and is searched only for bank
        #: changes, so its PDQ search scans, without the tables
        self.content = content if content is not None else ContentIndex(scan=True)
        self.outbox = Decisions()
        #: per banked cluster, what is held for it and not applied yet (streaming only)
        self._ahead: dict[str, Lookahead] = {}
        #: per cluster, the ids of firings sent early that the watermark has not reached
        self._sent_early: dict[str, set[str]] = {}
        #: per cluster, the timed bank changes held for it, (ts, to the allow-list) (streaming)
        self._bank_pending: dict[str, list[tuple[int, bool]]] = {}
        #: how idle unbanked clusters are evicted, when not through the outbox (evict_with)
        self._evict: Callable[[int, int], tuple[bool, ClusterIds]] | None = None

    # -- input ------------------------------------------------------------

    @property
    def unbanked_store(self) -> UnbankedClusters:
        """The compiled store of unbanked clusters (replay's compiled loop applies to it)."""
        return self._unbanked

    @property
    def live_events(self) -> int:
        """Events applied to the clusters in memory (a state log counts its garbage by it)."""
        return self._live_events + self._unbanked.live_events

    @property
    def live_posts(self) -> int:
        """Posts of the live clusters, banked and unbanked."""
        return sum(st.cascade.size for st in self.clusters.values()) + self._unbanked.posts

    @property
    def cluster_count(self) -> int:
        """Live clusters, banked and unbanked."""
        return len(self.clusters) + len(self._unbanked)

    def cluster(self, cluster_id: str) -> ClusterState | UnbankedCluster | None:
        """A live cluster: a banked one's state, or a copy of an unbanked one's."""
        st = self.clusters.get(cluster_id)
        if st is not None:
            return st
        row = self._unbanked.summary(cluster_id)
        if row is None:
            return None
        _, first, last, size, live, roots, _, _, _, allowed, met = row
        names = self._severity_names
        return UnbankedCluster(
            cluster_id,
            first,
            last,
            size,
            live,
            roots,
            allowed,
            {names[s]: t for s, t in met} if met else None,
            tuple(self._unbanked.times(cluster_id)),
            tuple(self._unbanked.made(cluster_id)),
            tuple(self._unbanked.allowed_by(cluster_id)),
        )

    def applied(self, cluster_id: str, event_id: str) -> bool:
        """Whether ``event_id`` was applied to the live cluster ``cluster_id``."""
        st = self.clusters.get(cluster_id)
        if st is not None:
            return event_id in st.event_ids
        return self._unbanked.applied(cluster_id, event_id)

    def limits(self) -> tuple[int, int]:
        """Where a run of unbanked events must stop for the banked side: ``(stop_ms,
        barrier)``; they change only when Python applies something (replay's compiled loop
        and a clusters partition's ask after each item they hand it).

        ``stop_ms``: the event time from which :meth:`advance` changes banked clusters (an
        episode due to resolve, the oldest one idle): a run of unbanked events stops
        before it. A schedule superseded since (a later one pushed, the episode resolved,
        the cluster gone) is dropped here, as :meth:`advance` would drop it: a run stopped
        for it only to hand Python one unbanked event (886 times in a 56,754-event
        platform replay). ``barrier``: :meth:`_barrier`, the oldest banked cluster's
        ``seq``, read here from the same front cluster (one iterator an item, not two
        and a call)."""
        due = self._due
        while due:
            at, cid = due[0]
            if self._scheduled(at, cid):
                break
            self._requeue(heapq.heappop(due))
        stop = due[0][0] if due else _NO_STOP
        clusters = self.clusters
        if not clusters:
            return stop, _NO_BARRIER
        front = next(iter(clusters.values()))
        if not front.active:
            idle_at = front.last_ms + self.idle_ms
            if idle_at < stop:
                stop = idle_at
        return stop, front.seq

    def _scheduled(self, due: int, cid: str) -> bool:
        """Whether ``cid``'s episode is still due to resolve at ``due``."""
        st = self.clusters.get(cid)
        return st is not None and st.active and st.resolve_due_ms == due

    def _requeue(self, entry: tuple[int, str]) -> None:
        """An entry of :attr:`_due` taken off unresolved: if it stood for an open episode
        whose due moved later since (see :meth:`_schedule_resolve`), its due goes in now.

        Why it is exact: while an episode is open its schedule has an entry at or
        before its due, so the entry at the due is in before the heap comes to it; a
        resolution (or a run's stop) comes at the first ``(due, cluster)`` entry that
        matches, in the same order as with an entry pushed at every change."""
        queued, cid = entry
        st = self.clusters.get(cid)
        if st is not None and st.active and st.resolve_queued_ms == queued:
            due = st.resolve_due_ms
            if due is not None and due > queued:
                st.resolve_queued_ms = due
                heapq.heappush(self._due, (due, cid))

    def _barrier(self) -> int:
        if not self.clusters:
            return _NO_BARRIER
        return next(iter(self.clusters.values())).seq

    def _apply_unbanked(self, run: list[Routed], start: int, stop_ms: int) -> int:
        """Apply the events of unbanked clusters from ``run[start]`` on in the compiled core,
        up to the first of a banked cluster or at ``stop_ms``; how many it applied. (A
        compiled loop, replay's or a clusters partition's, applies runs itself: see
        ``rust/python/src/detect.rs``; here :meth:`apply` gives one event.)"""
        done, rejected, crossings, evicted, contents, counts = self._unbanked.apply_many(
            run, start, stop_ms, self._barrier(), self.clusters, self.counts_uploads
        )
        if not done:
            return 0
        if contents is not None or evicted is not None:
            self._contents_and_evictions(run, contents or [], evicted or [])
        self._settled(rejected, crossings, counts)
        return int(done)

    def settle_unbanked(
        self,
        evicted: ClusterIds,
        rejected: list[ShareEvent],
        crossings: list[tuple[str, int, int, int, int, int]],
        counts: UnbankedCounts,
    ) -> None:
        """What replay's compiled loop (``_core.ReplayLoop``) applied in the unbanked store
        since it last said: the clusters evicted (their posts forgotten by the router's map,
        their content by :attr:`content`, both by the loop), then what
        :meth:`_apply_unbanked` counts and queues."""
        self._forgotten(evicted)
        self._settled(rejected or None, crossings or None, counts)

    def evict_with(self, evict: Callable[[int, int], tuple[bool, ClusterIds]]) -> None:
        """Evict idle unbanked clusters with ``evict(cut_ms, barrier)`` rather than through
        :attr:`outbox`: replay's ``_core.evict_unbanked``, which forgets their posts in the
        router's map and their content in :attr:`content` itself (no Python string per
        post, no call per cluster), and gives ``(stopped, [cluster])``."""
        self._evict = evict

    def _forgotten(self, evicted: ClusterIds) -> None:
        """Unbanked clusters evicted, their posts and content forgotten already (their ids
        are made strings only if something waits for one)."""
        if self._bank_pending or self._sent_early:
            for cid in evicted:
                self._bank_pending.pop(cid, None)  # a cluster of that id later starts afresh
                self._sent_early.pop(cid, None)
        self.stats.clusters_evicted += len(evicted)

    def _settled(
        self,
        rejected: list[ShareEvent] | None,
        crossings: list[tuple[str, int, int, int, int, int]] | None,
        counts: UnbankedCounts,
    ) -> None:
        """The unbanked store's rejections, review-queue crossings and counters."""
        if rejected is not None:
            self.outbox.rejections.extend(map(_duplicate_post, rejected))
        duplicates, late, created, *kinds, low, allowed, latest = counts
        stats = self.stats
        if crossings is not None:
            for cid, shares_5m, size, live, first, last in crossings:
                stats.emerging += 1
                rate = shares_5m * MINUTE_MS / WINDOWS_MS[1]
                self.emerging.append(ClusterSummary(cid, None, rate, size, live, first, last))
        if duplicates:
            stats.duplicates += duplicates
        if late:
            stats.late += late
        if created:
            stats.clusters_created += created
        events = stats.events
        for kind, n in zip(_KINDS, kinds, strict=True):
            if n:
                events[kind] += n
        if self.counts_uploads:  # the unbanked store's uploads matched no bank
            stats.unmatched_uploads += kinds[0]
            stats.low_quality += low
            stats.allowed += allowed
        stats.clusters_active = len(self.clusters) + len(self._unbanked)
        if latest is not None:
            stats.watermark_ms = max(stats.watermark_ms, latest)

    def _contents_and_evictions(
        self, run: list[Routed], contents: list[int], evicted: list[tuple[int, str, list[str]]]
    ) -> None:
        """The content index takes the uploads applied and drops the clusters evicted, in
        their order (a cluster id evicted may start afresh with a later upload)."""
        unbanked = self._unbanked
        if unbanked.keeps_signals:  # the store's clusters hold them: the ones still live
            gone_at = {cid: at for at, cid, _ in evicted}
            for i in contents:
                cid = run[i].cluster_id
                content = run[i].event.content
                assert content is not None
                if gone_at.get(cid, -1) <= i:
                    unbanked.hold(cid, signals_of(content))
            for _, cid, posts in evicted:
                self._evicted_unbanked(cid, posts)
            return
        k = 0
        for i in contents:
            while k < len(evicted) and evicted[k][0] <= i:
                self._evicted_unbanked(evicted[k][1], evicted[k][2])
                k += 1
            content = run[i].event.content
            assert content is not None
            self.content.add(run[i].cluster_id, content)
        for _, cid, posts in evicted[k:]:
            self._evicted_unbanked(cid, posts)

    def _evicted_unbanked(self, cid: str, posts: Sequence[str]) -> None:
        self.content.drop(cid)
        self._bank_pending.pop(cid, None)  # a cluster of that id later starts afresh
        self._sent_early.pop(cid, None)
        self.outbox.evicted_posts.extend(posts)
        self.stats.clusters_evicted += 1

    def apply(self, item: Routed) -> None:
        """Apply one routed event. Idempotent: an event id seen before changes nothing."""
        ev = item.event
        if item.cluster_id not in self.clusters and not item.banked:  # a look-up before a call
            self.advance(ev.ts_ms)
            self._apply_unbanked([item], 0, _NO_STOP)
            return
        ahead_of = self._ahead
        if ahead_of:  # streaming: it is not held any more
            ahead = ahead_of.get(item.cluster_id)
            if ahead is not None:
                ahead.held -= 1
                if ahead.held <= 0:
                    del ahead_of[item.cluster_id]
                elif ev.type != "takedown":
                    # :meth:`Lookahead.forget`'s case as a rule, in place: the post held
                    # is this event's, its time the first held (the times are sorted, and
                    # every held post's is among them), no trim due; else forget's own way
                    posts, lo = ahead.posts, ahead.start
                    p = posts.get(ev.post_id)
                    if (
                        p is not None
                        and p.event_id == ev.event_id
                        and ahead.times[lo] == ev.ts_ms
                        and lo < _TRIM_FROM
                    ):
                        del posts[ev.post_id]
                        ahead.start = lo + 1
                    else:
                        ahead.forget(ev)
        self.advance(ev.ts_ms)
        st = self.clusters.get(item.cluster_id)
        if st is None:
            st = ClusterState(
                item.cluster_id, ev.ts_ms, velocity=Velocity(self.horizon_ms), banked=True
            )
            if self.predictor_factory is not None:
                st.predictor = self.predictor_factory()
            self.clusters[item.cluster_id] = st
            self.stats.clusters_created += 1
            self.stats.clusters_active = self.cluster_count
        else:
            self.clusters.move_to_end(item.cluster_id)
        st.seq = self._unbanked.next_seq()
        if not st.event_ids.add(ev.event_id):
            self.stats.duplicates += 1
            return
        self._live_events += 1
        self.stats.events[ev.type] += 1
        if ev.type == "upload" and self.counts_uploads:  # once: as the store's are
            if item.match is not None:
                self.stats.matched[item.match.bank] += 1
            else:  # (a relabelled unbanked cluster's)
                self.stats.unmatched_uploads += 1
                low, allowed = unmatched_kinds(item.cluster_id, ev)
                self.stats.low_quality += low
                self.stats.allowed += allowed
        if ev.content is not None:
            self.content.add(st.cluster_id, ev.content)
        if st.match is None and item.match is not None:
            st.match = item.match
        # compares, not the builtins ``min``/``max`` (a C call that iterates its arguments:
        # about 600 instructions each, on every banked event; the same ints kept)
        ts = ev.ts_ms
        if ts < st.first_seen_ms:
            st.first_seen_ms = ts
        if ts < st.last_ms:
            self.stats.late += 1
        elif ts > st.last_ms:
            st.last_ms = ts
        if ev.type == "takedown":
            if not st.cascade.take_down(ev.post_id) and ev.post_id not in st.cascade:
                st.pending.setdefault(ev.post_id, []).append(ev)
            return
        self._add_post(st, ev)
        self._evaluate(st, st.last_ms)

    def _add_post(self, st: ClusterState, ev: ShareEvent) -> None:
        parent = ev.parent_post_id if ev.type == "share" else None
        assert parent is not None or ev.type != "share"
        added = st.cascade.add_post(
            ev.post_id, parent, user=ev.user_id, ts_ms=ev.ts_ms, followers=ev.followers
        )
        if added is None:
            # its parent is later in event time (clocks disagree): attach when it comes
            assert parent is not None
            st.pending.setdefault(parent, []).append(ev)
            return
        if not added:
            self.outbox.rejections.append(_duplicate_post(ev))
            return
        self._counted(st, ev)
        for child in st.pending.pop(ev.post_id, ()):
            if child.type == "takedown":
                st.cascade.take_down(child.post_id)
            else:
                self._add_post(st, child)

    def _counted(self, st: ClusterState, ev: ShareEvent) -> None:
        if not st.velocity.add(ev.ts_ms):
            self.stats.late += 1
        if st.predictor is not None:
            # followers None is "unknown" (the network average), not zero; an
            # upload shows its audience but is not itself a reshare
            t = st.since_first_s(ev.ts_ms)
            st.predictor.add(
                t if t > 0.0 else 0.0,  # max(0.0, t) to the bit (-0.0 and NaN: 0.0), no call
                ev.followers,
                original=ev.type == "upload",
            )
        if st.takedown_severity is not None:
            self.outbox.actions.append(
                TakedownRequest.for_post(
                    st.cluster_id, ev.post_id, ev.ts_ms, st.takedown_severity, st.takedown_alert
                )
            )

    # -- policy -----------------------------------------------------------

    def _evaluate(self, st: ClusterState, now: int) -> None:
        met: list[tuple[Severity, str]] = []
        # no window holds enough (most clusters), or every severity fired (a hot one): no count
        spent = st.active and len(st.fired) == self._severities
        if st.velocity.held() >= self._fewest and not spent:
            # AlertPolicy.met, one binary search for all the rules: this runs on every event
            met = st.velocity.reaching(self._thresholds, now)
        rule = self.policy.predicted
        if (
            st.predictor is not None
            and rule is not None
            and st.cascade.size >= rule.min_observed  # a smaller one cannot fire it: see figures
            and (now - st.predicted_at_ms >= self.predict_every_ms)
        ):
            st.forecast = later = self._read_forecast(st, now)
            st.predicted_at_ms = now
            # The rule's answer decides something only in an episode a velocity rule opens
            # now or opened before, and not once its severity fired there (then it adds a
            # severity the loop below passes over, to a list in severity order already, as
            # velocity rules go lowest first; an allowed cluster's list being empty or not
            # is the one difference, so its forecast is made). Else the figures are made
            # when an alert reads them, if one does: about a quarter of the forecasts.
            if (met or st.active) and (rule.severity not in st.fired or st.allowed):
                # the rule fires on no more than its bounds (monotone in both): bounds it
                # does not fire on settle it, no forecast computed (most clusters: small);
                # the rough ones first (no loop over the buckets: nearly all settle there)
                bound = None
                if isinstance(later, LaterPrediction):
                    bound = later.at_most(rough=True)
                    if bound is None or rule.fires(*bound, st.cascade.size):
                        bound = later.at_most()
                p = later() if bound is None or rule.fires(*bound, st.cascade.size) else None
                if p is not None and rule.fires(p.size, p.low, st.cascade.size):
                    # it escalates an episode a velocity rule opened (now, or before)
                    met.append((rule.severity, "predicted"))
                    met.sort(key=lambda m: severity_rank(m[0]))  # lowest first
        if not met:
            self._schedule_resolve(st, now)
            return
        if st.allowed:  # a reviewer's false positive: neither an alert nor the review queue
            return
        if not st.active:
            if now < st.cooldown_until_ms:
                return
            st.episode += 1
            st.active = True
        for sev, reason in met:
            if sev not in st.fired:
                self._fire(st, sev, now, reason)
        self._schedule_resolve(st, now)

    def _fire(self, st: ClusterState, sev: Severity, now: int, reason: str) -> None:
        st.fired.append(sev)
        aid = alert_id(st.cluster_id, st.episode, sev)
        sent = self._sent_early.get(st.cluster_id)
        if sent is not None and aid in sent:  # announced already: the state moves on, quietly
            sent.discard(aid)
            if not sent:
                del self._sent_early[st.cluster_id]
        else:
            self.outbox.alerts.append(self._alert(st, sev, "firing", now, reason))
            self.stats.alerts[(sev, "firing")] += 1
        if self.policy.requests_takedown(sev) and st.takedown_severity is None:
            st.takedown_severity = sev
            st.takedown_alert = aid
            self.outbox.actions.extend(
                TakedownRequest.for_post(st.cluster_id, post, now, sev, aid)
                for post in st.cascade.live_posts()
            )

    def _resolve_due(self, st: ClusterState, now: int) -> int:
        """When the episode of ``st`` resolves if no share comes: ``resolve_after_ms`` after
        its velocity fell below the lowest rule (``now`` while it is not below yet)."""
        shares, window_ms, after_ms = self._resolve_rule
        below = st.velocity.below_from(shares, window_ms)
        return (below if below is not None else now) + after_ms

    def _schedule_resolve(self, st: ClusterState, now: int) -> None:
        if not st.active:
            return
        due = self._resolve_due(st, now)
        if due != st.resolve_due_ms:
            st.resolve_due_ms = due
            # a due later than the entry queued for the episode is pushed when that entry
            # comes up (:meth:`_requeue`): a hot cluster's due moves on at nearly every
            # event, and an entry pushed each time left the heap a thousand entries deep
            # at a worker's density, each taken off again (about 10 us a pop, its tuples
            # out of cache)
            queued = st.resolve_queued_ms
            if queued is None or due < queued:
                st.resolve_queued_ms = due
                heapq.heappush(self._due, (due, st.cluster_id))

    def advance(self, now_ms: int) -> None:
        """Let event time pass to ``now_ms``: resolve episodes that are due, evict idle clusters."""
        while self._due and self._due[0][0] <= now_ms:
            due, cid = entry = heapq.heappop(self._due)
            if self._scheduled(due, cid):
                self._resolve(self.clusters[cid], due, "velocity")
            else:  # superseded (a later due: queued now), or the episode over
                self._requeue(entry)
        cut = now_ms - self.idle_ms
        clusters, unbanked = self.clusters, self._unbanked
        while True:  # least recently touched first, banked (here) and unbanked (compiled)
            front = unbanked.front()
            if front is not None:
                # what the compiled eviction looks at first, read without the call when
                # the call would evict nothing (nearly every banked event's: 19,745 of
                # 19,746 in a replay of 300,000 events, about 1 us each): the front
                # touched after the oldest banked cluster (the call answers "not
                # stopped"), or not idle (it answers "stopped")
                barrier = self._barrier()
                if front[0] >= barrier:
                    stopped = False
                elif front[1] > cut:
                    break
                elif self._evict is not None:
                    stopped, forgotten = self._evict(cut, barrier)
                    self._forgotten(forgotten)
                else:
                    stopped, evicted = unbanked.evict(cut, barrier)
                    for _, gone, posts in evicted:
                        self._evicted_unbanked(gone, posts)
                if stopped:
                    break
            if not clusters:
                break
            cid, st = next(iter(clusters.items()))
            if st.last_ms > cut or st.active:
                break
            del clusters[cid]
            self._live_events -= len(st.event_ids)
            self.content.drop(cid)
            self._bank_pending.pop(cid, None)  # a cluster of that id later starts afresh
            self.outbox.evicted_posts.extend(st.cascade.posts())
            self.stats.clusters_evicted += 1
            self._sent_early.pop(cid, None)
            if cid in self._ahead:  # what it holds was judged against the graph now gone
                self._rejudge(cid)
        stats = self.stats
        stats.clusters_active = len(clusters) + len(unbanked)
        if now_ms > stats.watermark_ms:  # (max's answer, no call: every banked event's)
            stats.watermark_ms = now_ms

    def drain(self) -> Decisions:
        """Take the decisions made since the last drain."""
        out, self.outbox = self.outbox, Decisions()
        return out

    # -- bank changes (retroaction, false positives) ----------------------------

    def change_bank(self, update: BankUpdate) -> None:
        """Apply a timed bank change to the live clusters whose content it matches, at its
        event time ``update.ts_ms`` (give them in event-time order with the events).

        An add to a bank relabels every live unbanked cluster holding content
        within the PDQ threshold (or the same MD5): from then on it is banked,
        its reshare forest built from the posts it holds (the cluster keeps its
        id), and it is evaluated at once, so it alerts if its velocity is over a
        rule (retroaction). An add to the allow-list (:data:`ALLOW_BANK`) stops
        every matching cluster alerting: an open episode is resolved at that
        time (reason ``false_positive``), and no takedown is requested again
        while the entry stands; withdrawing the entry lifts that.
        Withdrawing an entry from a bank leaves formed clusters as they are.
        """
        ts, e = update.ts_ms, update.entry
        if ts is None:
            return  # no event time: changes matching only (see streams.review)
        self.advance(ts)
        mark = (ts, e.bank == ALLOW_BANK)
        for cid in [c for c, waits in self._bank_pending.items() if mark in waits]:
            waits = self._bank_pending[cid]  # noted by expect_bank: not waiting any more
            waits.remove(mark)
            if not waits:
                del self._bank_pending[cid]
        sig = (e.signal_type, e.signal)
        unbanked = self._unbanked
        for cid, d in self.near(e.signal_type, e.signal):
            st = self.clusters.get(cid)
            if st is None:
                if cid not in unbanked:
                    continue
                if e.bank == ALLOW_BANK:  # a false positive (or no longer one)
                    unbanked.allow(cid, *sig, update.op != "withdraw")
                    continue
                if update.op != "add" or self._unbanked_allowed(cid):
                    continue
                st = self._take(cid)
            if e.bank == ALLOW_BANK:
                if update.op == "withdraw":
                    st.allowed_by.discard(sig)
                elif sig not in st.allowed_by:
                    st.allowed_by.add(sig)  # a false positive: nothing more from it
                    st.takedown_severity = None
                    if st.active:
                        self._resolve(st, ts, "false_positive")
            elif update.op == "add" and not st.banked and not st.allowed:
                match = MatchInfo(e.bank, e.signal_type, e.signal, d, e.label)
                self._relabel(st, match)
                self._evaluate(st, ts)

    def near(self, signal_type: str, signal: str) -> list[tuple[str, int]]:
        """The live clusters holding ``signal`` (MD5: equal; PDQ: within the default
        threshold), nearest first, ties by cluster id, each once at its nearest: what a bank
        change concerns (:attr:`content`'s, and the unbanked store's where it keeps them)."""
        near = self.content.near(signal_type, signal, DEFAULT_PDQ_THRESHOLD)
        unbanked = self._unbanked
        if not unbanked.keeps_signals:
            return near
        more = unbanked.near(signal_type, signal.lower(), DEFAULT_PDQ_THRESHOLD)
        if not near:
            return more
        return sorted([*near, *more], key=lambda cd: (cd[1], cd[0]))  # no cluster in both

    def signals(self, cluster_id: str) -> set[Signal]:
        """The signals of the content a live cluster's uploads carried."""
        if self._unbanked.keeps_signals and cluster_id in self._unbanked:
            return {signal_of(t) for _, t in self._unbanked.held(cluster_id)}
        return self.content.signals(cluster_id)

    def _unbanked_allowed(self, cid: str) -> bool:
        row = self._unbanked.summary(cid)
        return row is not None and bool(row[9])

    def _state(self, cid: str) -> ClusterState:
        """A live unbanked cluster as a :class:`ClusterState` (unbanked still), its reshare
        forest built from its posts: what an early retroactive firing measures."""
        row = self._unbanked.summary(cid)
        assert row is not None
        seq, first, last, *_ = row
        return ClusterState(
            cid,
            first,
            cascade=Cascade.from_made(self._unbanked.made(cid)),
            velocity=Velocity.from_times(self._unbanked.times(cid), self.horizon_ms),
            last_ms=last,
            allowed_by=set(self._unbanked.allowed_by(cid)),
            seq=seq,
        )

    def _take(self, cid: str) -> ClusterState:
        """Take an unbanked cluster out of the compiled core into :attr:`clusters` (its
        content turned out banked), in its place in the order of touches."""
        held = self._unbanked.held(cid)  # a store that keeps signals: now the index's
        taken = self._unbanked.take(cid)
        assert taken is not None
        if held:
            self.content.add_signals(cid, held)
        seq, first, last, made, times, _, event_ids, waiting, emerging, met, allowed = taken
        pending: dict[str, list[ShareEvent]] = {}
        for post, ev in waiting:
            pending.setdefault(post, []).append(ev)
        names = self._severity_names
        st = ClusterState(
            cid,
            first,
            cascade=Cascade.from_made(made),
            velocity=Velocity.from_times(times, self.horizon_ms),
            last_ms=last,
            event_ids=event_ids,
            pending=pending,
            emerging=emerging,
            emerging_met={names[s]: t for s, t in met} if met else None,
            allowed_by=set(allowed),
            seq=seq,
        )
        self._live_events += len(event_ids)
        clusters = self.clusters
        clusters[cid] = st
        for later in [k for k, other in clusters.items() if other.seq > seq]:
            clusters.move_to_end(later)
        return st

    def expect_bank(self, update: BankUpdate, watermark_ms: int) -> None:
        """Note a timed bank change received and held until the watermark passes it (streaming),
        and send the retroactive firings it makes certain already.

        Every change noted must later be given to :meth:`change_bank`. While an
        add to the allow-list waits, no firing at or after its time goes out
        early for the clusters it matches. A bank add at ``T`` relabels an
        unbanked cluster at ``T`` (when no other change for it waits before
        ``T``), so a rule its applied shares meet at ``T`` fires there in
        replay, in episode 1 (an unbanked cluster never had one), if the
        cluster is still live at ``T``: more events only add to the counts
        and to its life. Those firings go out now, as :class:`EarlyAlert`.
        """
        ts, e = update.ts_ms, update.entry
        if ts is None:
            return
        near = self.near(e.signal_type, e.signal)
        for cid, _ in near:
            self._bank_pending.setdefault(cid, []).append((ts, e.bank == ALLOW_BANK))
        if e.bank == ALLOW_BANK or update.op != "add" or ts <= watermark_ms:
            return
        for cid, d in near:
            st = self.clusters.get(cid)
            if st is None and cid in self._unbanked:
                st = self._state(cid)
            if st is None or st.banked or st.allowed or ts >= st.last_ms + self.idle_ms:
                continue
            if min(self._bank_pending[cid]) < (ts, False):
                continue  # another change for it comes first
            match = MatchInfo(e.bank, e.signal_type, e.signal, d, e.label)
            ahead = Lookahead(st.first_seen_ms, match)
            sent = self._sent_early.get(cid, ())
            for rule in self.policy.rules:
                sev = rule.severity
                if st.velocity.count(rule.window_ms, ts) >= rule.shares and (
                    alert_id(cid, st.episode + 1, sev) not in sent
                ):
                    self._send_early(cid, st, ahead, sev, st.episode + 1, ts, watermark_ms)

    def _relabel(self, st: ClusterState, match: MatchInfo) -> None:
        """An unbanked cluster turns out to hold banked content: from now on it is banked."""
        st.banked = True
        st.match = match
        self.stats.relabelled += 1
        if self.predictor_factory is not None:
            st.predictor = p = self.predictor_factory()
            g = _graph(st).graph
            for _, data in sorted(g.nodes(data=True), key=lambda n: n[1]["ts_ms"]):
                t = st.since_first_s(data["ts_ms"])
                t = t if t > 0.0 else 0.0  # as :meth:`_counted` gives it
                p.add(t, None, original=data["level"] == 0)

    def _resolve(self, st: ClusterState, ts: int, reason: str) -> None:
        """End the open episode at ``ts``: every severity it fired, resolved; the cooldown."""
        fired = sorted(st.fired, key=severity_rank)
        self.outbox.alerts.extend(self._alerts(st, fired, "resolved", ts, reason))
        for sev in fired:
            self.stats.alerts[(sev, "resolved")] += 1
        st.active = False
        st.fired.clear()
        st.resolve_due_ms = None
        st.resolve_queued_ms = None
        st.cooldown_until_ms = ts + self.policy.cooldown_ms
        st.takedown_severity = None

    # -- early firing (see the module doc) ------------------------------------

    def expect(self, item: Routed) -> None:
        """Note an event received and held until the watermark passes it (streaming).

        Every item noted must later be given to :meth:`apply` (each copy, once).
        """
        self.expect_many((item,))

    def expect_many(self, items: Iterable[Routed]) -> None:
        """:meth:`expect` each of ``items``, in their order: a worker notes each batch's held
        banked events in one call (a held event's noting was four Python calls)."""
        ahead_of, clusters = self._ahead, self.clusters
        for item in items:
            cid = item.cluster_id
            # Routed.banked's test, read here: the property is a Python call an item
            if not cid.startswith(BANKED_PREFIX):
                continue  # never alerts
            ev = item.event
            ahead = ahead_of.get(cid)
            if ahead is None:
                ahead = ahead_of[cid] = Lookahead(ev.ts_ms, item.match)
            else:
                if ev.ts_ms < ahead.first_ms:
                    ahead.first_ms = ev.ts_ms
                if ahead.match is None:
                    ahead.match = item.match
            ahead.held += 1
            if ev.type == "takedown":
                continue
            st = clusters.get(cid)
            if st is None:
                ahead.judge(ev, _NO_POSTS)
            elif ev.event_id not in st.event_ids:  # else a copy of an applied event
                # the cascade's node table read directly (NetworkX's ``in``: two Python
                # calls a test)
                ahead.judge(ev, st.cascade.graph._node)

    def _rejudge(self, cid: str) -> None:
        old = self._ahead[cid]
        new = self._ahead[cid] = Lookahead(old.first_ms, old.match)
        new.held = old.held
        for ev in old.events():  # its cluster is gone: nothing of it applied
            new.judge(ev, _NO_POSTS)

    def fire_early(self, cluster_ids: Iterable[str], watermark_ms: int) -> None:
        """Send now the velocity firings that the events seen make certain (see the module doc).

        ``watermark_ms``: every event up to it has been applied (and
        :meth:`advance` has been given it). Only ``cluster_ids`` are looked at
        (those that received events): a held event is what can make a firing
        certain. The alerts go to :attr:`outbox` as :class:`EarlyAlert`.
        """
        ahead_of, clusters, rules = self._ahead, self.clusters, self.policy.rules
        for cid in cluster_ids:
            ahead = ahead_of.get(cid)
            if ahead is None:
                continue
            held = len(ahead.times) - ahead.start
            if not held:
                continue
            # :meth:`_fire_early`'s bound on each rule, settled before the call: no window
            # holds more shares than the cluster's velocity keeps and the held ones (most
            # clusters given events are under every rule left: 82% of the calls at a
            # worker's density)
            st = clusters.get(cid)
            most = held + (st.velocity.held() if st is not None else 0)
            fired = st.fired if st is not None and st.active else ()
            for rule in rules:
                if most >= rule.shares and rule.severity not in fired:
                    self._fire_early(cid, ahead, watermark_ms)
                    break

    def _fire_early(self, cid: str, ahead: Lookahead, wm: int) -> None:
        policy = self.policy
        st = self.clusters.get(cid)
        if st is not None and st.allowed:
            return
        v = st.velocity if st is not None else None
        low = policy.lowest
        start = wm + 1
        if st is not None and st.active:  # 1. escalation of the open episode
            episode, fired = st.episode, st.fired
            below = v.below_from(low.shares, low.window_ms) if v is not None else None
            if below is None:
                return
            until = below + policy.resolve_after_ms
        else:  # 2. opening the next one
            if self._allowances is None:
                return
            episode, fired = (st.episode if st is not None else 0) + 1, []
            until = wm + policy.resolve_after_ms
            if st is not None:
                start = max(start, st.cooldown_until_ms)
                until = min(until, st.last_ms + self.idle_ms)
                waiting = sum(len(kids) for kids in st.pending.values())
                for span, allowance in self._allowances:
                    if st.velocity.count(span, wm - low.window_ms) + waiting > allowance:
                        return
        silenced = [t for t, allow in self._bank_pending.get(cid, ()) if allow]
        if silenced:  # a false positive waits: nothing at or after it is certain
            until = min(until, min(silenced))
        times, first = ahead.times, ahead.start
        lo, hi = bisect_left(times, start, first), bisect_left(times, until, first)
        if lo >= hi:
            return
        sent = self._sent_early.get(cid, ())
        # an upper bound on any count of applied shares in a window ending after wm
        latest = max(wm, v.latest_ms if v is not None and v.latest_ms is not None else wm)
        for rule in policy.rules:
            sev, w, n = rule.severity, rule.window_ms, rule.shares
            if sev in fired:
                continue
            applied_max = v.count(w + latest - wm, latest) if v is not None else 0
            if applied_max + len(ahead) < n or alert_id(cid, episode, sev) in sent:
                continue
            for i in range(lo, hi):
                t = times[i]
                if i + 1 < hi and times[i + 1] == t:
                    continue  # count at the last share of that instant
                c = i + 1 - bisect_right(times, t - w, first, i + 1)
                if v is not None:
                    c += v.count(w, t)
                if c >= n:
                    self._send_early(cid, st, ahead, sev, episode, t, wm)
                    break

    def _send_early(
        self,
        cid: str,
        st: ClusterState | None,
        ahead: Lookahead,
        sev: Severity,
        episode: int,
        tau: int,
        wm: int,
    ) -> None:
        aid = alert_id(cid, episode, sev)
        self._sent_early.setdefault(cid, set()).add(aid)
        v = st.velocity if st is not None else None

        def count(window: int, t: int) -> int:
            return ahead.count(window, t) + (v.count(window, t) if v is not None else 0)

        rates = [count(w, tau) * MINUTE_MS / w for w in WINDOWS_MS]
        acceleration = float(count(MINUTE_MS, tau) - count(MINUTE_MS, tau - MINUTE_MS))
        first = ahead.first_ms
        with self._as_seen(st, ahead, tau) as c:
            if c is not None:
                prediction = st.prediction if st is not None else None
                cascade = _figures(c, rates, acceleration, prediction)
                top = c.top_spreaders(self.top_n)
        if c is not None:
            spreaders = tuple((self.pseudonymize(u), n) for u, n in top)
            first = min(first, st.first_seen_ms) if st is not None else first
            match = (st.match if st is not None else None) or ahead.match
        else:
            cascade = CascadeFigures(
                velocity_1m=rates[0],
                velocity_5m=rates[1],
                velocity_15m=rates[2],
                acceleration=acceleration,
            )
            spreaders, match = (), ahead.match
        self.outbox.alerts.append(
            EarlyAlert(
                alert_id=aid,
                status="firing",
                severity=sev,
                ts_ms=tau,
                cluster_id=cid,
                first_seen_ms=first,
                episode=episode,
                match=match,
                cascade=cascade,
                top_spreaders=spreaders,
                links=self.policy.links.render(cid, sev, aid),
                reason="velocity",
                as_of_ms=wm,
            )
        )
        self.stats.alerts[(sev, "firing")] += 1

    @contextmanager
    def _as_seen(
        self, st: ClusterState | None, ahead: Lookahead, tau: int
    ) -> Iterator[Cascade | None]:
        """The cascade with the held posts replay will count up to ``tau`` added, for the
        ``with`` block's reading: what an early alert's graph figures and spreaders say
        (early firings are rare, at most one per rule and episode). A graph bigger than
        :data:`AS_SEEN_MAX_POSTS` keeps its applied figures (``None`` when nothing of the
        cluster is applied either).

        A what-if: the held posts are added to the applied graph itself and taken out again
        as the block ends, however it ends (:meth:`~graphs.cascade.Cascade.rewind`). A copy
        of the graph cost about 8 us a post, up to the limit: the worker's event loop held
        that long, more often as clusters grow.
        """
        if st is not None and not st.banked:  # banked from tau (retroaction): built afresh
            _add_held(st.cascade, ahead, tau)
            yield st.cascade
            return
        applied = _graph(st) if st is not None else None
        if applied is None:
            c = Cascade()
            _add_held(c, ahead, tau)
            yield c if c.size else None
            return
        if applied.size > AS_SEEN_MAX_POSTS:
            yield applied
            return
        mark = applied.mark()
        try:
            _add_held(applied, ahead, tau)
            yield applied
        finally:
            applied.rewind(mark)

    def held(self, cluster_id: str) -> tuple[list[ShareEvent], MatchInfo | None]:
        """The posts received for a banked cluster and not applied yet (waiting for the
        watermark), in ``(ts, event_id)`` order, and the match they came with: what an early
        alert counted before its cluster's state had them (the cascade view shows them)."""
        ahead = self._ahead.get(cluster_id)
        if ahead is None:
            return [], None
        return ahead.events(), ahead.match

    # -- figures ----------------------------------------------------------

    def _read_forecast(self, st: ClusterState, now: int) -> Callable[[], Prediction | None]:
        """The forecast of ``st`` at ``now``, its state read now (the policy's on its
        schedule, an alert's of a small cluster): one piece, so that both read at the same
        time for the same instant."""
        assert st.predictor is not None
        return st.predictor.read(st.since_first_s(now))

    def figures(self, st: ClusterState, now: int) -> CascadeFigures:
        """What an alert says of its cascade at ``now``.

        The forecast is the one the policy last read (every ``predict_every_ms``
        of event time); a cluster too small for the ``[predicted]`` rule is not
        forecast as it grows (that is most clusters: a forecast costs far more
        than applying an event), so its alert gets one made now.
        """
        c, v = _graph(st), st.velocity
        prediction = st.prediction
        rule = self.policy.predicted
        if st.predictor is not None and rule is not None and c.size < rule.min_observed:
            prediction = self._read_forecast(st, now)()
        rates = [v.rate(w, now) for w in WINDOWS_MS]
        return _figures(c, rates, v.acceleration(now), prediction)

    def _alert(self, st: ClusterState, sev: Severity, status: str, now: int, reason: str) -> Alert:
        return self._alerts(st, (sev,), status, now, reason)[0]

    def _alerts(
        self, st: ClusterState, sevs: Sequence[Severity], status: str, now: int, reason: str
    ) -> list[Alert]:
        """An alert a severity in ``sevs``, of ``st`` at ``now``: the figures and spreaders,
        the same for each, computed once (an episode's resolution, its alerts restored)."""
        if not sevs:
            return []
        cascade = self.figures(st, now)
        spreaders = tuple(
            (self.pseudonymize(user), n) for user, n in _graph(st).top_spreaders(self.top_n)
        )
        out = []
        for sev in sevs:
            aid = alert_id(st.cluster_id, st.episode, sev)
            out.append(
                Alert(
                    alert_id=aid,
                    status="firing" if status == "firing" else "resolved",
                    severity=sev,
                    ts_ms=now,
                    cluster_id=st.cluster_id,
                    first_seen_ms=st.first_seen_ms,
                    episode=st.episode,
                    match=st.match,
                    cascade=cascade,
                    top_spreaders=spreaders,
                    links=self.policy.links.render(st.cluster_id, sev, aid),
                    reason=reason,
                )
            )
        return out

    def summary(self, st: ClusterState, now: int) -> ClusterSummary:
        return ClusterSummary(
            cluster_id=st.cluster_id,
            bank=st.match.bank if st.match else None,
            velocity_5m=st.velocity.rate(WINDOWS_MS[1], now),
            size=st.cascade.size,
            live=st.cascade.live,
            first_seen_ms=st.first_seen_ms,
            last_ms=st.last_ms,
        )

    def fastest(self, n: int, now_ms: int | None = None) -> list[ClusterSummary]:
        """The ``n`` banked clusters with the highest 5-minute velocity, fastest first."""
        now = self.stats.watermark_ms if now_ms is None else now_ms
        rows = [self.summary(st, now) for st in self.clusters.values() if st.banked]
        rows.sort(key=lambda r: (-r.velocity_5m, -r.size, r.cluster_id))
        return rows[:n]

    def firing_alerts(self, now_ms: int) -> list[Alert]:
        """The firing alert of every severity of every open episode, as of ``now_ms``.

        Why: the alerts that keep an episode alive outside the worker (in
        Alertmanager, and ``viralwatch_alerts_active``) are held by the
        process that sent them. A worker that takes a partition over rebuilds
        this detector from the changelog and re-announces these, so they do
        not end when their sender died or lost the partition. The ids are the
        ones the alerts fired with (cluster, episode, severity); the figures
        are as of ``now_ms``; ``reason`` is ``"restored"`` (why each severity
        fired is not kept). Nothing is added to :attr:`outbox`: these are not
        new alerts, and the alerts topic must not get them again.

        >>> from streams.alerts import MatchInfo
        >>> from streams.events import ShareEvent
        >>> from streams.router import Routed
        >>> det = Detector(AlertPolicy.default(), Stats(), pseudonymizer=Pseudonymizer(b"k"))
        >>> match = MatchInfo("ncii", "pdq", "ab" * 32, 0)
        >>> t0 = 1_767_225_600_000
        >>> det.apply(Routed(ShareEvent("e0", "upload", t0, "p0", "u0"), "b-1", match))
        >>> for i in range(1, 30):   # 29 reshares in half a minute: over 25 in 5 minutes
        ...     ev = ShareEvent(f"e{i}", "share", t0 + i * 1000, f"p{i}", f"u{i}", "p0")
        ...     det.apply(Routed(ev, "b-1", match))
        >>> [fired] = [a for a in det.drain().alerts if a.status == "firing"]
        >>> [again] = det.firing_alerts(t0 + 60_000)
        >>> (again.alert_id, again.severity, again.status) == (fired.alert_id, "warning", "firing")
        True
        >>> det.advance(t0 + 3_600_000)        # velocity gone for resolve_after: resolved
        >>> det.firing_alerts(t0 + 3_600_000)
        []
        """
        return [
            alert
            for st in self.clusters.values()
            if st.active
            for alert in self._alerts(st, st.fired, "firing", now_ms, "restored")
        ]


class LoopHost:
    """What a compiled loop (``_core.ReplayLoop``, ``_core.ClusterLoop``: the detector's side
    in ``rust/python/src/detect.rs``) calls on the object that drives it (replay's
    ``Pipeline``, a streaming ``ClusterPartition``): the released items that are the
    detector's Python side, its limits, and what the compiled store did, in batches."""

    detector: Detector
    #: whether the host's class overrides :meth:`_decided` (replay's takes the outbox as it
    #: comes); where it does not (a worker's partition) the no-op is not called for each
    #: released item (20,724 calls at a worker's density)
    _decides: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._decides = cls._decided is not LoopHost._decided

    def _apply_one(self, item: Routed | BankUpdate) -> tuple[int, int]:
        """A released item for the detector's Python side: a banked cluster's event, a bank
        change, an unbanked event at a time that changes the banked side."""
        detector = self.detector
        if isinstance(item, BankUpdate):
            detector.change_bank(item)
        else:
            detector.apply(item)
        if self._decides:
            self._decided()
        return detector.limits()

    def _limits(self) -> tuple[int, int]:
        return self.detector.limits()

    def _settle(
        self,
        evicted: ClusterIds,
        rejected: list[ShareEvent],
        crossings: list[tuple[str, int, int, int, int, int]],
        held: int,
        counts: UnbankedCounts,
    ) -> None:
        """What the loop did since it last said: the unbanked store's work, its counters
        (``held``: reshares it held for their parent, replay's router's)."""
        self.detector.settle_unbanked(evicted, rejected, crossings, counts)
        self._decided(held)

    def _decided(self, held: int | None = None) -> None:
        """The detector may have decided something (its outbox); after a settlement the loop
        says how many reshares it held meanwhile (``held``): a host that takes them as
        they come does so here."""
