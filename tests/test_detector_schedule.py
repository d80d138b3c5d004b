"""The banked clusters' resolve schedule: an entry queued an episode, moved on when it comes
up, against an entry pushed at every change of the due (as it was before)."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.alerts import MatchInfo, Pseudonymizer
from streams.detector import ClusterState, Detector
from streams.events import ShareEvent
from streams.policy import AlertPolicy
from streams.router import Routed
from streams.stats import Stats

T0 = 1_767_225_600_000
MATCH = MatchInfo("ncii", "pdq", "ab" * 32, 0)


class EagerDetector(Detector):
    """The schedule as it was: every change of an episode's due pushed, superseded entries
    dropped as they come up."""

    def _schedule_resolve(self, st: ClusterState, now: int) -> None:
        if not st.active:
            return
        due = self._resolve_due(st, now)
        if due != st.resolve_due_ms:
            st.resolve_due_ms = due
            heapq.heappush(self._due, (due, st.cluster_id))

    def _requeue(self, entry: tuple[int, str]) -> None:
        pass


def detector(cls: type[Detector]) -> Detector:
    return cls(AlertPolicy.default(), Stats(), pseudonymizer=Pseudonymizer(b"k"))


def items(bursts: list[tuple[int, int, int, int]]) -> list[Routed]:
    """Bursts of reshares (cluster, start in s, count, gap in ms) under one upload a cluster,
    in event time (a few a little late: the reorder buffer's lateness lets them through)."""
    out: list[tuple[int, int, ShareEvent]] = []
    roots: dict[int, str] = {}
    n = 0
    for cluster, start_s, count, gap_ms in bursts:
        t = T0 + start_s * 1000
        if cluster not in roots:
            roots[cluster] = root = f"p{cluster}-root"
            out.append((cluster, T0 - 1, ShareEvent(f"e{n}", "upload", T0 - 1, root, "u0")))
            n += 1
        for i in range(count):
            ts = t + i * gap_ms - (1500 if i % 7 == 3 else 0)
            ev = ShareEvent(f"e{n}", "share", ts, f"p{cluster}-{n}", f"u{n}", roots[cluster])
            out.append((cluster, ts, ev))
            n += 1
    out.sort(key=lambda c: (c[1], c[2].event_id))
    return [Routed(ev, f"b-{cluster}", MATCH) for cluster, _, ev in out]


bursts = st.lists(
    st.tuples(
        st.integers(0, 2),  # cluster
        st.integers(0, 4 * 3600),  # start, s after the first upload
        st.integers(1, 120),  # reshares
        st.sampled_from([200, 1000, 5000, 20_000]),  # between them, ms
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(bursts, st.integers(0, 6))
def test_the_queued_schedule_resolves_and_stops_as_a_push_a_change(
    plan: list[tuple[int, int, int, int]], after_h: int
) -> None:
    """The same alerts, takedown requests and counters, and after every event the same
    limits a compiled loop's run of unbanked events stops at."""
    lazy, eager = detector(Detector), detector(EagerDetector)
    for item in items(plan):
        for det in (lazy, eager):
            det.apply(item)
        assert lazy.limits() == eager.limits()
        a, b = lazy.drain(), eager.drain()
        assert repr(a) == repr(b)
    end = T0 + (4 + after_h) * 3_600_000
    for det in (lazy, eager):
        det.advance(end)
    assert lazy.limits() == eager.limits()
    assert repr(lazy.drain()) == repr(eager.drain())
    assert repr(lazy.stats) == repr(eager.stats)


def test_a_hot_clusters_schedule_is_one_entry() -> None:
    """A due that moves later at every event is not pushed each time: one entry an episode.
    Pushed at every change, a hot cluster's entries piled up under an earlier episode's
    due (here about one an event, 2,000), each taken off again later."""
    routed = items([(0, 0, 60, 1000), (1, 60, 2000, 100)])
    most = {}
    for cls in (Detector, EagerDetector):
        det = detector(cls)
        most[cls] = 0
        for item in routed:
            det.apply(item)
            det.limits()
            most[cls] = max(most[cls], len(det._due))
        assert det.drain().alerts
    assert most[Detector] <= 3 < 1000 < most[EagerDetector]
