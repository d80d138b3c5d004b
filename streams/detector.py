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

Episodes. A banked cluster whose velocity meets a rule *fires* at that rule's
severity and opens an episode; crossing a higher rule escalates (a new
alert at the higher severity; lower ones stay firing until the episode
ends). The episode is *resolved* (every severity it fired, resolved) once
velocity has stayed under the lowest rule for ``resolve_after``. The time of
resolution is computed from event times alone (the moment the last
qualifying share left the window, plus ``resolve_after``), so it does not
depend on when a worker happens to check. A new episode may not open within
``cooldown`` of the last one's end.

Unbanked clusters never alert: crossing a rule counts them as *emerging*
(:attr:`Stats.emerging`) and queues them on :attr:`Detector.emerging` for
human review.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from graphs.cascade import Cascade, PostSet
from graphs.velocity import MINUTE_MS, WINDOWS_MS, Velocity
from streams.alerts import (
    Alert,
    CascadeFigures,
    MatchInfo,
    Prediction,
    Pseudonymizer,
    Severity,
    TakedownRequest,
    alert_id,
    severity_rank,
)
from streams.events import Rejection, ShareEvent
from streams.policy import AlertPolicy
from streams.router import Routed
from streams.stats import Stats


class Predictor(Protocol):
    """Incremental final-size prediction for one cascade (see ``graphs.prediction``)."""

    def add(self, t_s: float, followers: int | None = None, *, original: bool = False) -> None: ...

    def predict(self, now_s: float) -> Prediction | None: ...


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


@dataclass
class ClusterState:
    """One cluster: its cascade, velocity, and where its alert episode stands."""

    cluster_id: str
    first_seen_ms: int
    #: the reshare forest of a banked cluster; an unbanked one (never alerts) keeps posts only
    cascade: Cascade | PostSet = field(default_factory=Cascade)
    velocity: Velocity = field(default_factory=Velocity)
    match: MatchInfo | None = None
    last_ms: int = 0
    event_ids: set[str] = field(default_factory=set)
    # children (and takedowns) of posts that are not in the cascade yet
    pending: dict[str, list[ShareEvent]] = field(default_factory=dict)
    episode: int = 0
    active: bool = False
    fired: list[Severity] = field(default_factory=list)
    resolve_due_ms: int | None = None
    cooldown_until_ms: int = 0
    takedown_severity: Severity | None = None
    takedown_alert: str = ""
    emerging: bool = False
    predictor: Predictor | None = None
    prediction: Prediction | None = None
    predicted_at_ms: int = -1

    @property
    def banked(self) -> bool:
        return self.cluster_id.startswith("b-")


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
    ) -> None:
        longest = max(policy.windows_ms)
        if idle_ms < longest + policy.resolve_after_ms:
            raise ValueError("idle_ms must outlast the longest window plus resolve_after")
        self.policy = policy
        self._windows = policy.windows_ms  # computed once: read on every event
        self._fewest = min(rule.shares for rule in policy.rules)
        self.stats = stats
        self.pseudonymize = pseudonymizer
        self.idle_ms = idle_ms
        self.top_n = top_spreaders
        self.predictor_factory = predictor_factory
        self.predict_every_ms = predict_every_ms
        self.horizon_ms = max(longest, max(WINDOWS_MS)) + 5 * MINUTE_MS
        self.clusters: OrderedDict[str, ClusterState] = OrderedDict()
        self._due: list[tuple[int, str]] = []
        self.emerging: deque[ClusterSummary] = deque(maxlen=review_queue)
        self.outbox = Decisions()

    # -- input ------------------------------------------------------------

    def apply(self, item: Routed) -> None:
        """Apply one routed event. Idempotent: an event id seen before changes nothing."""
        ev = item.event
        self.advance(ev.ts_ms)
        st = self.clusters.get(item.cluster_id)
        if st is None:
            banked = item.banked
            st = ClusterState(
                item.cluster_id,
                ev.ts_ms,
                cascade=Cascade() if banked else PostSet(),
                velocity=Velocity(self.horizon_ms),
            )
            if banked and self.predictor_factory is not None:
                st.predictor = self.predictor_factory()
            self.clusters[item.cluster_id] = st
            self.stats.clusters_created += 1
            self.stats.clusters_active = len(self.clusters)
        else:
            self.clusters.move_to_end(item.cluster_id)
        if ev.event_id in st.event_ids:
            self.stats.duplicates += 1
            return
        st.event_ids.add(ev.event_id)
        self.stats.events[ev.type] += 1
        if st.match is None and item.match is not None:
            st.match = item.match
        st.first_seen_ms = min(st.first_seen_ms, ev.ts_ms)
        if ev.ts_ms < st.last_ms:
            self.stats.late += 1
        st.last_ms = max(st.last_ms, ev.ts_ms)
        if ev.type == "takedown":
            if not st.cascade.take_down(ev.post_id) and ev.post_id not in st.cascade:
                st.pending.setdefault(ev.post_id, []).append(ev)
            return
        self._add_post(st, ev)
        self._evaluate(st, st.last_ms)

    def _add_post(self, st: ClusterState, ev: ShareEvent) -> None:
        if ev.post_id in st.cascade:
            self.outbox.rejections.append(
                Rejection(
                    "duplicate_post",
                    f"post {ev.post_id!r} was already added by another event",
                    ev.to_json(),
                    ev.event_id,
                )
            )
            return
        if ev.type == "share":
            assert ev.parent_post_id is not None
            if ev.parent_post_id not in st.cascade:
                # its parent is later in event time (clocks disagree): attach when it comes
                st.pending.setdefault(ev.parent_post_id, []).append(ev)
                return
            st.cascade.add_reshare(
                ev.post_id, parent=ev.parent_post_id, user=ev.user_id, ts_ms=ev.ts_ms
            )
        else:
            st.cascade.add_root(ev.post_id, user=ev.user_id, ts_ms=ev.ts_ms)
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
            st.predictor.add(
                max(0.0, (ev.ts_ms - st.first_seen_ms) / 1000),
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
        sev: Severity | None = None
        if len(st.velocity) >= self._fewest:  # else no window holds enough (most clusters)
            counts = {w: st.velocity.count(w, now) for w in self._windows}
            sev = self.policy.severity_for(counts)
        reason = "velocity"
        rule = self.policy.predicted
        if (
            st.predictor is not None
            and rule is not None
            and st.cascade.size >= rule.min_observed  # a smaller one cannot fire it: see figures
            and (now - st.predicted_at_ms >= self.predict_every_ms)
        ):
            st.prediction = p = self._forecast(st, now)
            st.predicted_at_ms = now
            if (
                p is not None
                and rule.fires(p.size, p.low, st.cascade.size)
                and severity_rank(rule.severity) > severity_rank(sev or "")
            ):
                sev, reason = rule.severity, "predicted"
        if sev is None:
            self._schedule_resolve(st, now)
            return
        if not st.banked:
            if not st.emerging:
                st.emerging = True
                self.stats.emerging += 1
                self.emerging.append(self.summary(st, now))
            return
        top = st.fired[-1] if st.fired else None
        if severity_rank(sev) > severity_rank(top or ""):
            if not st.active:
                if now < st.cooldown_until_ms:
                    return
                st.episode += 1
                st.active = True
            st.fired.append(sev)
            alert = self._alert(st, sev, "firing", now, reason)
            self.outbox.alerts.append(alert)
            self.stats.alerts[(sev, "firing")] += 1
            if severity_rank(sev) >= severity_rank("high") and st.takedown_severity is None:
                st.takedown_severity = sev
                st.takedown_alert = alert.alert_id
                self.outbox.actions.extend(
                    TakedownRequest.for_post(st.cluster_id, post, now, sev, alert.alert_id)
                    for post in st.cascade.live_posts()
                )
        self._schedule_resolve(st, now)

    def _schedule_resolve(self, st: ClusterState, now: int) -> None:
        if not st.active:
            return
        low = self.policy.lowest
        below = st.velocity.below_from(low.shares, low.window_ms)
        due = (below if below is not None else now) + self.policy.resolve_after_ms
        if due != st.resolve_due_ms:
            st.resolve_due_ms = due
            heapq.heappush(self._due, (due, st.cluster_id))

    def advance(self, now_ms: int) -> None:
        """Let event time pass to ``now_ms``: resolve episodes that are due, evict idle clusters."""
        while self._due and self._due[0][0] <= now_ms:
            due, cid = heapq.heappop(self._due)
            st = self.clusters.get(cid)
            if st is None or not st.active or st.resolve_due_ms != due:
                continue  # superseded by a later schedule
            for sev in st.fired:
                self.outbox.alerts.append(self._alert(st, sev, "resolved", due, "velocity"))
                self.stats.alerts[(sev, "resolved")] += 1
            st.active = False
            st.fired.clear()
            st.resolve_due_ms = None
            st.cooldown_until_ms = due + self.policy.cooldown_ms
            st.takedown_severity = None
        cut = now_ms - self.idle_ms
        while self.clusters:
            cid, st = next(iter(self.clusters.items()))
            if st.last_ms > cut or st.active:
                break
            del self.clusters[cid]
            self.outbox.evicted_posts.extend(st.cascade.posts())
            self.stats.clusters_evicted += 1
        self.stats.clusters_active = len(self.clusters)
        self.stats.watermark_ms = max(self.stats.watermark_ms, now_ms)

    def drain(self) -> Decisions:
        """Take the decisions made since the last drain."""
        out, self.outbox = self.outbox, Decisions()
        return out

    # -- figures ----------------------------------------------------------

    def _forecast(self, st: ClusterState, now: int) -> Prediction | None:
        assert st.predictor is not None
        return st.predictor.predict((now - st.first_seen_ms) / 1000)

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
            prediction = self._forecast(st, now)
        return CascadeFigures(
            size=c.size,
            live=c.live,
            roots=c.roots,
            unique_users=c.unique_users,
            depth=c.depth,
            breadth=c.breadth,
            structural_virality=c.structural_virality(),
            velocity_1m=v.rate(WINDOWS_MS[0], now),
            velocity_5m=v.rate(WINDOWS_MS[1], now),
            velocity_15m=v.rate(WINDOWS_MS[2], now),
            acceleration=v.acceleration(now),
            predicted_final_size=prediction,
        )

    def _alert(self, st: ClusterState, sev: Severity, status: str, now: int, reason: str) -> Alert:
        aid = alert_id(st.cluster_id, st.episode, sev)
        return Alert(
            alert_id=aid,
            status="firing" if status == "firing" else "resolved",
            severity=sev,
            ts_ms=now,
            cluster_id=st.cluster_id,
            first_seen_ms=st.first_seen_ms,
            episode=st.episode,
            match=st.match,
            cascade=self.figures(st, now),
            top_spreaders=tuple(
                (self.pseudonymize(user), n) for user, n in _graph(st).top_spreaders(self.top_n)
            ),
            links=self.policy.links.render(st.cluster_id, sev, aid),
            reason=reason,
        )

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
            self._alert(st, sev, "firing", now_ms, "restored")
            for st in self.clusters.values()
            if st.active
            for sev in st.fired
        ]
