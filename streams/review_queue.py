"""The review queue of emerging content, and the banks' page: frozen rows for the views.

Emerging content is what no bank knows yet and still spreads fast: for NCII
a new leak, not yet submitted to any bank by the person in it. The detector
queues a cluster the first time it crosses a velocity rule
(:attr:`streams.detector.Detector.emerging`); the queue page lists those
still held and still unbanked, *fastest and biggest first*, with their
hashes (the system never has the media), figures, first seen and root post
ids, for a reviewer to bank or dismiss.

Each worker lists the clusters of its own partitions (:func:`emerging_items`,
on the loop that owns them); the page on any worker merges every worker's
rows (:func:`rank`).

>>> from streams.detector import Detector, UnbankedCluster
>>> from streams.policy import AlertPolicy
>>> from streams.router import Routed
>>> from streams.events import ShareEvent
>>> from streams.alerts import Pseudonymizer
>>> from streams.stats import Stats
>>> det = Detector(AlertPolicy.default(), Stats(), pseudonymizer=Pseudonymizer(b"k"))
>>> det.apply(Routed(ShareEvent("e0", "upload", 0, "p0", "u0"), "u-1"))
>>> for i in range(1, 30):
...     det.apply(Routed(ShareEvent(f"e{i}", "share", i * 1000, f"p{i}", f"u{i}", "p0"), "u-1"))
>>> [item] = emerging_items(det, 30_000)
>>> item.cluster_id, item.size, item.velocity_5m
('u-1', 30, 6.0)
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from graphs.velocity import WINDOWS_MS
from streams.alerts import rfc3339, severity_rank
from streams.banks import HashBanks
from streams.detector import Detector, UnbankedCluster

#: How long "matches in the last hour" looks back (wall clock), and how often it is sampled.
MATCH_WINDOW_S: Final = 3600.0
MATCH_SAMPLE_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class EmergingItem:
    """One unbanked cluster that crossed a velocity rule, as the queue shows it."""

    cluster_id: str
    velocity_1m: float
    velocity_5m: float
    size: int
    live: int
    roots: int
    first_seen_ms: int
    last_ms: int
    hashes: tuple[tuple[str, str], ...] = ()
    root_posts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "velocity_per_min": {
                "1m": round(self.velocity_1m, 3),
                "5m": round(self.velocity_5m, 3),
            },
            "size": self.size,
            "live": self.live,
            "roots": self.roots,
            "first_seen": rfc3339(self.first_seen_ms),
            "last_event": rfc3339(self.last_ms),
            "hashes": [{"signal_type": k, "signal": s} for k, s in self.hashes],
            "root_posts": list(self.root_posts),
            "cascade": f"/cascade/{self.cluster_id}",
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmergingItem:
        """Read a row another worker sent (``ValueError``/``KeyError``/``TypeError`` if odd)."""
        from datetime import datetime

        def ms(text: str) -> int:
            return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)

        v = d["velocity_per_min"]
        return cls(
            cluster_id=str(d["cluster_id"]),
            velocity_1m=float(v["1m"]),
            velocity_5m=float(v["5m"]),
            size=int(d["size"]),
            live=int(d["live"]),
            roots=int(d["roots"]),
            first_seen_ms=ms(d["first_seen"]),
            last_ms=ms(d["last_event"]),
            hashes=tuple((str(h["signal_type"]), str(h["signal"])) for h in d["hashes"]),
            root_posts=tuple(str(p) for p in d["root_posts"]),
        )


def cluster_hashes(detector: Detector, cluster_id: str) -> tuple[tuple[str, str], ...]:
    """The signals of the content a cluster's uploads carried (the detector keeps them for
    every live cluster: a bank change is matched against them), sorted."""
    return tuple(sorted(detector.signals(cluster_id)))


def back_after_dismissal(met: Mapping[str, int] | None, dismissed_ms: int) -> bool:
    """Whether a cluster dismissed at ``dismissed_ms`` has since met a rule higher than any
    it had met by then (``met``: severity -> when its rule was first met): it grew past what
    the reviewer judged, so it is queued again.

    >>> met = {"warning": 100, "high": 500}
    >>> back_after_dismissal(met, 300), back_after_dismissal(met, 500)
    (True, False)
    >>> back_after_dismissal({"warning": 100}, 300), back_after_dismissal(None, 300)
    (False, False)
    """
    if not met:
        return False
    judged = max((severity_rank(s) for s, t in met.items() if t <= dismissed_ms), default=-1)
    return any(severity_rank(s) > judged for s, t in met.items() if t > dismissed_ms)


def emerging_items(
    detector: Detector,
    now_ms: int,
    dismissed_at: Callable[[str], int | None] = lambda cid: None,
) -> list[EmergingItem]:
    """This detector's review queue (call on the loop that owns it), fastest first: the
    clusters that crossed a velocity rule and are still unbanked, not on the allow-list, and
    not dismissed (or dismissed, then grown past a higher rule: :func:`back_after_dismissal`)."""
    out: list[EmergingItem] = []
    seen: set[str] = set()
    for summary in detector.emerging:
        cid = summary.cluster_id
        st = detector.cluster(cid)
        if cid in seen or not isinstance(st, UnbankedCluster) or st.allowed:
            continue  # evicted, banked since (retroaction), or on the allow-list
        at = dismissed_at(cid)
        if at is not None and not back_after_dismissal(st.emerging_met, at):
            continue
        seen.add(cid)
        now = max(now_ms, st.last_ms)
        roots = [post for post, parent, *_ in st.posts if parent is None]
        out.append(
            EmergingItem(
                cluster_id=cid,
                velocity_1m=st.rate(WINDOWS_MS[0], now),
                velocity_5m=st.rate(WINDOWS_MS[1], now),
                size=st.size,
                live=st.live,
                roots=st.roots,
                first_seen_ms=st.first_seen_ms,
                last_ms=st.last_ms,
                hashes=cluster_hashes(detector, cid),
                root_posts=tuple(roots),
            )
        )
    return rank(out)


def rank(items: Iterable[EmergingItem]) -> list[EmergingItem]:
    """Fastest (5-minute velocity), then biggest, first; one row per cluster.

    >>> a = EmergingItem("u-a", 1, 5, 10, 10, 1, 0, 0)
    >>> b = EmergingItem("u-b", 1, 9, 3, 3, 1, 0, 0)
    >>> [i.cluster_id for i in rank([a, b, a])]
    ['u-b', 'u-a']
    """
    best: dict[str, EmergingItem] = {}
    for item in items:
        old = best.get(item.cluster_id)
        if old is None or item.last_ms > old.last_ms:
            best[item.cluster_id] = item
    return sorted(best.values(), key=lambda i: (-i.velocity_5m, -i.size, i.cluster_id))


# -- banks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BankRow:
    """One bank as ``/banks`` shows it."""

    bank: str
    entries: int
    last_update_s: float | None
    matches_last_hour: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "bank": self.bank,
            "entries": self.entries,
            "last_update": None
            if self.last_update_s is None
            else rfc3339(round(self.last_update_s * 1000)),
            "matches_last_hour": self.matches_last_hour,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BankRow:
        from datetime import datetime

        last = d.get("last_update")
        return cls(
            bank=str(d["bank"]),
            entries=int(d["entries"]),
            last_update_s=None
            if last is None
            else datetime.fromisoformat(str(last).replace("Z", "+00:00")).timestamp(),
            matches_last_hour=int(d["matches_last_hour"]),
        )


def bank_rows(
    banks: HashBanks,
    matches_last_hour: Mapping[str, int],
    last_update_s: Mapping[str, float],
) -> list[BankRow]:
    """Each bank's entries, last update (when its latest update was written to the bank
    topic) and matches in the last hour. O(banks): the banks keep their sizes as they change.

    >>> from streams.banks import BankEntry
    >>> banks = HashBanks()
    >>> _ = banks.add(BankEntry("ncii", "md5", "a" * 32))
    >>> gone, ncii = bank_rows(banks, {"ncii": 3, "gone": 1}, {"ncii": 0.0})
    >>> (gone.entries, gone.matches_last_hour), ncii.to_dict()["last_update"], ncii.entries
    ((0, 1), '1970-01-01T00:00:00.000Z', 1)
    """
    sizes = banks.sizes()
    names = set(sizes) | set(matches_last_hour) | set(last_update_s)
    return [
        BankRow(
            bank=name,
            entries=sizes.get(name, 0),
            last_update_s=last_update_s.get(name),
            matches_last_hour=int(matches_last_hour.get(name, 0)),
        )
        for name in sorted(names)
    ]


def merge_bank_rows(rows: Iterable[BankRow]) -> list[BankRow]:
    """Rows of the same bank from several workers: entries as the newest says (every worker
    follows the whole bank topic), matches summed (each worker matches its own share).

    >>> a, b = BankRow("x", 2, 5.0, 1), BankRow("x", 3, 9.0, 4)
    >>> merge_bank_rows([a, b])
    [BankRow(bank='x', entries=3, last_update_s=9.0, matches_last_hour=5)]
    """
    out: dict[str, BankRow] = {}
    for r in rows:
        old = out.get(r.bank)
        if old is None:
            out[r.bank] = r
            continue
        newer = r if (r.last_update_s or 0) >= (old.last_update_s or 0) else old
        out[r.bank] = BankRow(
            r.bank,
            newer.entries,
            newer.last_update_s,
            old.matches_last_hour + r.matches_last_hour,
        )
    return [out[k] for k in sorted(out)]


class MatchHistory:
    """Matches per bank over the last hour, from samples of a cumulative counter.

    ``Stats.matched`` only grows; sampled every :data:`MATCH_SAMPLE_S`
    (wall clock, given as ``now``), the count over the window is the newest
    sample minus the oldest one inside the window.

    >>> h = MatchHistory(window_s=60, every_s=10)
    >>> h.sample({"ncii": 5}, now=0.0); h.sample({"ncii": 9}, now=30.0)
    >>> h.last_window(now=30.0)
    {'ncii': 4}
    >>> h.sample({"ncii": 12}, now=100.0)   # the sample at 0 is out of the window
    >>> h.last_window(now=100.0)
    {'ncii': 3}
    """

    def __init__(self, window_s: float = MATCH_WINDOW_S, every_s: float = MATCH_SAMPLE_S) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def sample(self, matched: Mapping[str, int], now: float) -> None:
        """Note the cumulative counts at ``now`` (call every ``every_s``)."""
        self._samples.append((now, dict(matched)))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def last_window(self, now: float) -> dict[str, int]:
        """Matches per bank in about ``(now - window, now]``: the newest sample minus the
        newest one at least a window old (or the oldest there is)."""
        if not self._samples:
            return {}
        times = [t for t, _ in self._samples]
        old = self._samples[max(0, bisect_right(times, now - self.window_s) - 1)][1]
        new = self._samples[-1][1]
        return {k: n - old.get(k, 0) for k, n in new.items() if n - old.get(k, 0) > 0}
