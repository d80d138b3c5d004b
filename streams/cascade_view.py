"""What the cascade page shows of one cluster: a frozen snapshot, its JSON, its graph.

The cluster's state belongs to stage 2 and changes on the event loop with
every batch; the page is rendered on an HTTP thread. So the view is made in
two steps: on the loop, :func:`capture_cluster` copies what the page needs
into a frozen :class:`ClusterCapture` (plain tuples: about a millisecond per
thousand posts, the only time the stages wait); then, on the HTTP thread,
:func:`snapshot` turns it into a :class:`CascadeSnapshot`: user ids become
pseudonyms (as on alerts: never a user id in a view), the figures are
recomputed from the copied forest, the velocity series drawn from its times.
Everything a view says (HTML, JSON, GraphML) is made from that snapshot.

>>> from streams.detector import Detector
>>> from streams.policy import AlertPolicy
>>> from streams.router import Routed
>>> from streams.events import ShareEvent
>>> from streams.stats import Stats
>>> det = Detector(AlertPolicy.default(), Stats(), pseudonymizer=Pseudonymizer(b"k"))
>>> m = MatchInfo("ncii", "md5", "a" * 32, 0)
>>> det.apply(Routed(ShareEvent("e0", "upload", 0, "p0", "alice", followers=10), "b-1", m))
>>> det.apply(Routed(ShareEvent("e1", "share", 1000, "p1", "bob", "p0"), "b-1", m))
>>> cap = capture_cluster(det, "b-1", 1000)
>>> snap = snapshot(cap, Pseudonymizer(b"k"))
>>> snap.figures.size, [p.parent for p in snap.posts], snap.posts[0].user.startswith("u-")
(2, [None, 'p0'], True)
>>> "alice" in str(to_doc(snap)) or b"alice" in graphml(snap)
False
"""

from __future__ import annotations

import io
from bisect import bisect_right
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import networkx as nx
import orjson

from graphs.velocity import MINUTE_MS, WINDOWS_MS
from graphs.virality import forest_virality
from streams.alerts import (
    Alert,
    CascadeFigures,
    MatchInfo,
    Prediction,
    Pseudonymizer,
    TakedownRequest,
    rfc3339,
)
from streams.detector import ClusterState, Detector, UnbankedCluster

#: Points of the velocity-over-time series (one per ``span / SERIES_POINTS`` of event time).
SERIES_POINTS: Final = 120
#: Alerts and takedown requests kept per cluster for its page (the newest; all are counted).
KEPT_PER_CLUSTER: Final = 50
#: Clusters whose alerts and actions are kept for their pages (the least recently touched go).
KEPT_CLUSTERS: Final = 20_000


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One of a cluster's alerts as its page lists it: from the alert as it is sent, or from
    its JSON in the ``alerts-sent`` table (a worker that took the partition over).

    >>> a = Alert(alert_id="vw-1", status="firing", severity="high", ts_ms=60_000,
    ...           cluster_id="b-1", first_seen_ms=0)
    >>> AlertRow.from_json(a.to_json()) == AlertRow.of(a)
    True
    """

    alert_id: str
    cluster_id: str
    status: str
    severity: str
    ts_ms: int
    reason: str = ""
    size: int = 0
    provisional: bool = False

    @property
    def dedupe_key(self) -> str:
        return f"{self.alert_id}:{self.status}"

    @classmethod
    def of(cls, a: Alert) -> AlertRow:
        provisional = bool(a.to_dict().get("provisional")) if type(a) is not Alert else False
        return cls(
            a.alert_id,
            a.cluster_id,
            a.status,
            a.severity,
            a.ts_ms,
            a.reason,
            a.cascade.size,
            provisional,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> AlertRow:
        """``ValueError`` (or ``KeyError``/``TypeError``) when ``raw`` is not an alert's JSON."""
        d = orjson.loads(raw)
        when = datetime.fromisoformat(str(d["ts"]).replace("Z", "+00:00"))
        return cls(
            str(d["alert_id"]),
            str(d["cluster_id"]),
            str(d["status"]),
            str(d["severity"]),
            round(when.timestamp() * 1000),
            str(d.get("reason", "")),
            int(d.get("cascade", {}).get("size", 0)),
            bool(d.get("provisional", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "status": self.status,
            "severity": self.severity,
            "ts": rfc3339(self.ts_ms),
            "reason": self.reason,
            "size": self.size,
            "provisional": self.provisional,
        }


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """Where a cluster stands beside its posts: bank, episode, what was sent and decided."""

    #: matched a bank (from its first upload, or since a bank change relabelled it)
    banked: bool = True
    episode: int = 0
    active: bool = False
    fired: tuple[str, ...] = ()
    alerts: tuple[AlertRow, ...] = ()
    takedowns: int = 0
    recent_takedowns: tuple[TakedownRequest, ...] = ()
    hashes: tuple[tuple[str, str], ...] = ()
    reviews: tuple[dict[str, Any], ...] = ()
    #: of the posts, how many were received but not applied yet (held for the watermark)
    held: int = 0
    #: the allow-list entries its content matches (a reviewer's false positive): no alerts
    allowed_by: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterCapture:
    """A raw copy of one cluster, taken on the loop; user ids still in clear (never shown).

    ``posts`` are ``(post, parent, user, ts_ms, live, followers)`` in the
    order they were added (a parent always before its reshares; then the
    posts held for the watermark, see :func:`capture_cluster`).
    """

    cluster_id: str
    as_of_ms: int
    first_seen_ms: int
    last_ms: int
    match: MatchInfo | None
    posts: tuple[tuple[str, str | None, str, int, bool, int | None], ...]
    prediction: Prediction | None
    status: ClusterStatus = field(default_factory=lambda: ClusterStatus())


@dataclass(frozen=True, slots=True)
class PostView:
    """One post as a view shows it: the user as a pseudonym."""

    post_id: str
    parent: str | None
    user: str
    ts_ms: int
    live: bool
    followers: int | None = None


@dataclass(frozen=True, slots=True)
class CascadeSnapshot:
    """Everything the views say of one cluster at one moment of event time."""

    cluster_id: str
    as_of_ms: int
    first_seen_ms: int
    last_ms: int
    match: MatchInfo | None
    figures: CascadeFigures
    posts: tuple[PostView, ...]
    series: dict[str, tuple[float, ...]] = field(default_factory=dict)
    status: ClusterStatus = field(default_factory=lambda: ClusterStatus())
    top_spreaders: tuple[tuple[str, int], ...] = ()
    served_by: str = ""


class ClusterRecords:
    """The alerts and takedown requests sent for each cluster, for its page.

    Kept by the worker as it sends them (on the loop). Bounded: the newest
    :data:`KEPT_PER_CLUSTER` of each kind per cluster (takedowns all
    counted), for the :data:`KEPT_CLUSTERS` clusters touched last.

    >>> rec = ClusterRecords()
    >>> a = Alert(alert_id="vw-1", status="firing", severity="warning", ts_ms=0,
    ...           cluster_id="b-1", first_seen_ms=0)
    >>> rec.note([a, a], [])
    >>> [x.alert_id for x in rec.alerts("b-1")], rec.alerts("b-2")
    (['vw-1'], ())
    """

    def __init__(self, per_cluster: int = KEPT_PER_CLUSTER, clusters: int = KEPT_CLUSTERS) -> None:
        self.per_cluster = per_cluster
        self.max_clusters = clusters
        self._alerts: OrderedDict[str, deque[AlertRow]] = OrderedDict()
        self._actions: OrderedDict[str, tuple[int, deque[TakedownRequest]]] = OrderedDict()
        self._seen: set[str] = set()

    def note(self, alerts: Iterable[Alert | AlertRow], actions: Iterable[TakedownRequest]) -> None:
        """Record alerts and takedown requests sent (a repeat of one already noted is ignored)."""
        for alert in alerts:
            a = alert if isinstance(alert, AlertRow) else AlertRow.of(alert)
            key = a.dedupe_key
            if key in self._seen:
                continue
            self._seen.add(key)
            kept = self._touch(self._alerts, a.cluster_id, lambda: deque(maxlen=self.per_cluster))
            if kept.maxlen and len(kept) == kept.maxlen:
                self._seen.discard(kept[0].dedupe_key)
            kept.append(a)
        for t in actions:
            n, recent = self._touch(
                self._actions, t.cluster_id, lambda: (0, deque(maxlen=self.per_cluster))
            )
            recent.append(t)
            self._actions[t.cluster_id] = (n + 1, recent)

    def _touch(self, table: OrderedDict[str, Any], cid: str, new: Callable[[], Any]) -> Any:
        if cid not in table:
            table[cid] = new()
            while len(table) > self.max_clusters:
                _, old = table.popitem(last=False)
                if isinstance(old, deque):
                    self._seen.difference_update(a.dedupe_key for a in old)
        else:
            table.move_to_end(cid)
        return table[cid]

    def alerts(self, cluster_id: str) -> tuple[AlertRow, ...]:
        return tuple(self._alerts.get(cluster_id, ()))

    def restore(self, sent: Iterable[bytes], wanted: Callable[[str], bool]) -> int:
        """Note the alerts of a table of sent alerts (JSON values) whose cluster is ``wanted``:
        a worker that takes a partition over lists what its previous owner sent. Returns how
        many were read; a value that is not an alert is passed over."""
        rows = []
        for raw in sent:
            try:
                row = AlertRow.from_json(raw)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if wanted(row.cluster_id):
                rows.append(row)
        rows.sort(key=lambda r: (r.ts_ms, r.alert_id))
        self.note(rows, [])
        return len(rows)

    def takedowns(self, cluster_id: str) -> tuple[int, tuple[TakedownRequest, ...]]:
        n, recent = self._actions.get(cluster_id, (0, deque()))
        return n, tuple(recent)


def capture_cluster(
    detector: Detector,
    cluster_id: str,
    now_ms: int,
    records: ClusterRecords | None = None,
    hashes: Sequence[tuple[str, str]] = (),
    reviews: Sequence[dict[str, Any]] = (),
) -> ClusterCapture | None:
    """Copy one cluster of ``detector`` (call on the loop that owns it); ``None``: not here.

    The posts applied, then those received and still held for the watermark
    (a streaming worker applies events only once every input has passed
    them, but an early alert already counted them): a reshare held whose
    parent is not in the copy yet waits for it, as the detector's does.
    """
    found = detector.cluster(cluster_id)
    held, held_match = detector.held(cluster_id)
    if found is None and not held:
        return None
    posts: list[tuple[str, str | None, str, int, bool, int | None]] = []
    st = found if isinstance(found, ClusterState) else None
    if st is not None:
        g = st.cascade.graph
        pred = g.pred
        posts = [
            (n, next(iter(pred[n]), None), d["user"], d["ts_ms"], d["live"], d.get("followers"))
            for n, d in g.nodes(data=True)
        ]
    elif isinstance(found, UnbankedCluster):  # its posts with their parents, drawn all the same
        posts = [(p, parent, user, ts, live, None) for p, parent, user, ts, live in found.posts]
    if held:
        have = {p[0] for p in posts}
        waiting: dict[str, list[Any]] = {}
        for ev in held:
            stack = [ev]
            while stack:
                e = stack.pop()
                if e.post_id in have:
                    continue
                parent = e.parent_post_id
                if parent is not None and parent not in have:
                    waiting.setdefault(parent, []).append(e)
                    continue
                have.add(e.post_id)
                posts.append((e.post_id, parent, e.user_id, e.ts_ms, True, e.followers))
                stack.extend(waiting.pop(e.post_id, ()))
    last = max([found.last_ms if found is not None else 0, *(e.ts_ms for e in held)])
    first = min([*([found.first_seen_ms] if found is not None else []), *(e.ts_ms for e in held)])
    match = (found.match if found is not None else None) or held_match
    prediction = st.prediction if st is not None else None
    if st is not None and prediction is None and st.predictor is not None:
        prediction = st.predictor.predict(max(0.0, (max(now_ms, last) - first) / 1000))
    rec = records or ClusterRecords()
    n_takedowns, recent = rec.takedowns(cluster_id)
    if match is not None and not hashes:
        hashes = [(match.signal_type, match.signal)]
    return ClusterCapture(
        cluster_id=cluster_id,
        as_of_ms=max(now_ms, last),
        first_seen_ms=first,
        last_ms=last,
        match=match,
        posts=tuple(posts),
        prediction=prediction,
        status=ClusterStatus(
            banked=found.banked if found is not None else True,  # only banked ones hold posts
            episode=st.episode if st is not None else 0,
            active=st.active if st is not None else False,
            fired=tuple(st.fired) if st is not None else (),
            alerts=rec.alerts(cluster_id),
            takedowns=n_takedowns,
            recent_takedowns=recent,
            hashes=tuple(hashes),
            reviews=tuple(reviews),
            held=len(held),
            allowed_by=tuple(sorted(found.allowed_by)) if found is not None else (),
        ),
    )


def forest_figures(
    posts: Sequence[PostView], now_ms: int, prediction: Prediction | None = None, top_n: int = 5
) -> tuple[CascadeFigures, tuple[tuple[str, int], ...]]:
    """A cascade's figures (as an alert gives them) and its top spreaders, from its posts
    (parents before reshares). O(n), plain lists: no graph is built.

    >>> posts = [PostView("a", None, "u1", 0, True), PostView("b", "a", "u2", 30_000, True),
    ...          PostView("c", "a", "u3", 60_000, False)]
    >>> f, top = forest_figures(posts, 60_000)
    >>> (f.size, f.live, f.roots, f.unique_users, f.depth, f.breadth, f.velocity_1m), top
    ((3, 2, 1, 3, 1, 2, 2.0), (('u1', 2),))
    >>> forest_figures(posts, 60_000, Prediction(2.4, 1.0, 9.0))[0].predicted_final_size.to_dict()
    {'size': 3.0, 'low': 3.0, 'high': 9.0, 'model': 'seismic', 'raised_to_size': ['size', 'low']}
    """
    index = {p.post_id: i for i, p in enumerate(posts)}
    parents = [index.get(p.parent, -1) if p.parent is not None else -1 for p in posts]
    level = [0] * len(posts)
    per_level: Counter[int] = Counter()
    reshared: Counter[str] = Counter()
    for i, j in enumerate(parents):
        if j >= 0:
            level[i] = level[j] + 1
            reshared[posts[j].user] += 1
        per_level[level[i]] += 1
    times = sorted(p.ts_ms for p in posts)

    def count(window: int, t: int) -> int:
        return bisect_right(times, t) - bisect_right(times, t - window)

    rates = [count(w, now_ms) * MINUTE_MS / w for w in WINDOWS_MS]
    figures = CascadeFigures(
        size=len(posts),
        live=sum(1 for p in posts if p.live),
        roots=sum(1 for j in parents if j < 0),
        unique_users=len({p.user for p in posts}),
        depth=max(level, default=0),
        breadth=max(per_level.values(), default=0),
        structural_virality=forest_virality(parents),
        velocity_1m=rates[0],
        velocity_5m=rates[1],
        velocity_15m=rates[2],
        acceleration=float(count(MINUTE_MS, now_ms) - count(MINUTE_MS, now_ms - MINUTE_MS)),
        predicted_final_size=None if prediction is None else prediction.at_least(len(posts)),
    )
    top = tuple(sorted(reshared.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n])
    return figures, top


def snapshot(
    cap: ClusterCapture, pseudonymize: Pseudonymizer, served_by: str = "", top_n: int = 5
) -> CascadeSnapshot:
    """The view of a capture (off the loop): pseudonyms, figures, the velocity series."""
    names: dict[str, str] = {}

    def name(user: str) -> str:
        if not user:
            return ""
        out = names.get(user)
        if out is None:
            out = names[user] = pseudonymize(user)
        return out

    posts = tuple(
        PostView(post, parent, name(user), ts, live, followers)
        for post, parent, user, ts, live, followers in cap.posts
    )
    figures, spreaders = forest_figures(posts, cap.as_of_ms, cap.prediction, top_n)
    times = sorted(p.ts_ms for p in posts)
    return CascadeSnapshot(
        cluster_id=cap.cluster_id,
        as_of_ms=cap.as_of_ms,
        first_seen_ms=cap.first_seen_ms,
        last_ms=cap.last_ms,
        match=cap.match,
        figures=figures,
        posts=posts,
        series=velocity_series(times, cap.first_seen_ms, cap.as_of_ms),
        status=cap.status,
        top_spreaders=spreaders,
        served_by=served_by,
    )


def velocity_series(
    times: Sequence[int], start_ms: int, end_ms: int, points: int = SERIES_POINTS
) -> dict[str, tuple[float, ...]]:
    """Shares per minute over the last 1, 5 and 15 minutes, at ``points`` times up to ``end_ms``.

    ``times`` sorted. The series starts a minute before the first post, so
    the climb from nothing shows.

    >>> s = velocity_series([0, 30_000, 60_000], 0, 60_000, points=3)
    >>> s["t"], s["1m"]
    ((-60000.0, 0.0, 60000.0), (0.0, 1.0, 2.0))
    """
    start = start_ms - MINUTE_MS
    span = max(1, end_ms - start)
    ts = tuple(start + round(span * i / max(1, points - 1)) for i in range(points))
    out: dict[str, tuple[float, ...]] = {"t": tuple(float(t) for t in ts)}
    for label, w in zip(("1m", "5m", "15m"), WINDOWS_MS, strict=True):
        out[label] = tuple(
            (bisect_right(times, t) - bisect_right(times, t - w)) * MINUTE_MS / w for t in ts
        )
    return out


def to_doc(snap: CascadeSnapshot, base: str = "") -> dict[str, Any]:
    """The JSON form of a snapshot (``Accept: application/json``); ``base``: the view's path."""
    st = snap.status
    base = base or f"/cascade/{snap.cluster_id}"
    return {
        "cluster_id": snap.cluster_id,
        "banked": st.banked,
        "as_of": rfc3339(snap.as_of_ms),
        "first_seen": rfc3339(snap.first_seen_ms),
        "last_event": rfc3339(snap.last_ms),
        "match": snap.match.to_dict() if snap.match else None,
        "hashes": [{"signal_type": k, "signal": s} for k, s in st.hashes],
        "cascade": snap.figures.to_dict(),
        "top_spreaders": [{"user": u, "reshares": n} for u, n in snap.top_spreaders],
        "velocity_series": {
            "t": [rfc3339(int(t)) for t in snap.series.get("t", ())],
            **{k: [round(x, 3) for x in snap.series.get(k, ())] for k in ("1m", "5m", "15m")},
        },
        "episode": {
            "number": st.episode,
            "active": st.active,
            "fired": list(st.fired),
        },
        "alerts": [a.to_dict() for a in st.alerts],
        "takedowns": {
            "requested": st.takedowns,
            "recent": [t.to_dict() for t in st.recent_takedowns],
        },
        "reviews": list(st.reviews),
        "held_posts": st.held,
        "allowed_by": [{"signal_type": k, "signal": v} for k, v in st.allowed_by],
        "graph": {
            "json": f"{base}/graph.json",
            "graphml": f"{base}/graph.graphml",
        },
        "served_by": snap.served_by,
    }


def to_graph(snap: CascadeSnapshot) -> nx.DiGraph:
    """The reshare forest as a NetworkX graph: posts with pseudonymous users, parent -> reshare.

    >>> snap = CascadeSnapshot("b-1", 0, 0, 0, None, CascadeFigures(size=2),
    ...     (PostView("p0", None, "u-1", 0, True, 5), PostView("p1", "p0", "u-2", 9, False)))
    >>> g = to_graph(snap)
    >>> sorted(g.edges()), g.nodes["p1"]
    ([('p0', 'p1')], {'user': 'u-2', 'ts_ms': 9, 'live': False})
    """
    g = nx.DiGraph(cluster_id=snap.cluster_id, as_of=rfc3339(snap.as_of_ms))
    for p in snap.posts:
        # event time in epoch ms, as on the input (a time string each is slow to make)
        attrs: dict[str, Any] = {"user": p.user, "ts_ms": p.ts_ms, "live": p.live}
        if p.followers is not None:
            attrs["followers"] = p.followers
        g.add_node(p.post_id, **attrs)
        if p.parent is not None:
            g.add_edge(p.parent, p.post_id)
    return g


def graphml(snap: CascadeSnapshot) -> bytes:
    """The forest as GraphML (NetworkX's writer): ``nx.read_graphml`` reads it back."""
    out = io.BytesIO()
    nx.write_graphml(to_graph(snap), out)
    return out.getvalue()


def graph_json(snap: CascadeSnapshot) -> dict[str, Any]:
    """The forest as NetworkX's node-link JSON (``nx.node_link_graph`` reads it back)."""
    doc: dict[str, Any] = nx.node_link_data(to_graph(snap), edges="edges")
    return doc
