"""Early firing: a crossing that the events seen already prove goes out before the watermark
reaches it, with the ids and statuses ``replay`` gives (the argument is in the module doc of
``streams.detector``).

Each case runs the streaming topology in one process (``LocalRun``: every stage, random
partitionings and interleavings) at an allowed lateness, and compares with ``replay`` of
the same lines at the same lateness."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime

import orjson
import pytest
from eventgen import T0, Traffic, pdq_hex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_detector import FixedForecast
from test_streaming_stages import assert_replay_alerts

from streams.alerts import Alert, EarlyAlert, MatchInfo, Prediction, Pseudonymizer, alert_id
from streams.banks import BankEntry, HashBanks
from streams.detector import Detector, Predictor
from streams.events import ShareEvent
from streams.pipeline import Pipeline
from streams.policy import AlertPolicy, VelocityRule
from streams.router import Routed
from streams.runtime.local_run import LocalRun
from streams.stats import Stats

SEC, MIN = 1000, 60_000
KEY = Pseudonymizer(b"early")

#: ``high`` needs 100 shares in one minute: a steady 40 a minute reaches ``critical``
#: (500 in 15 minutes) and never ``high``
SLOW_CRITICAL = AlertPolicy(
    (
        VelocityRule("warning", 25, 5 * MIN),
        VelocityRule("high", 100, MIN),
        VelocityRule("critical", 500, 15 * MIN),
    )
)
#: short windows, resolution and cooldown: many episodes in a short stream
TIGHT = AlertPolicy(
    (
        VelocityRule("warning", 5, MIN),
        VelocityRule("high", 12, MIN),
        VelocityRule("critical", 40, 4 * MIN),
    ),
    cooldown_ms=MIN,
    resolve_after_ms=2 * MIN,
)


def banks_of(*pdqs: str) -> HashBanks:
    banks = HashBanks()
    for pdq in pdqs:
        banks.add(BankEntry("ncii", "pdq", pdq, "case-1"))
    return banks


def replay(
    lines: list[bytes],
    banks: HashBanks,
    policy: AlertPolicy,
    lateness_ms: int,
    predictor_factory: Callable[[], Predictor] | None,
) -> tuple[list[bytes], list[bytes]]:
    """Replay's alerts (those up to the last event time, as far as a stream gets) and actions."""
    pipe = Pipeline(
        banks,
        policy,
        pseudonymizer=KEY,
        lateness_ms=lateness_ms,
        predictor_factory=predictor_factory,
    )
    for line in lines:
        pipe.feed(line)
    d = pipe.finish()
    alerts = sorted(a.to_json() for a in d.alerts if a.ts_ms <= pipe.max_ts_ms)
    actions: dict[str, bytes] = {}
    for action in d.actions:  # a post asked for again in a later episode: sent once
        actions.setdefault(action.action_id, action.to_json())
    return alerts, sorted(actions.values())


def stream_and_compare(
    lines: list[bytes],
    pdqs: list[str],
    policy: AlertPolicy,
    *,
    seed: int,
    partitions: int,
    keying: str = "none",
    lateness_ms: int = 60_000,
    predictor_factory: Callable[[], Predictor] | None = None,
    max_batch: int = 50,
    late_ok: bool = False,
) -> tuple[LocalRun, list[bytes]]:
    """Run the topology; assert its alerts are replay's (ids, statuses; bodies but early ones)."""
    expected, actions = replay(lines, banks_of(*pdqs), policy, lateness_ms, predictor_factory)
    run = LocalRun(
        banks_of(*pdqs),
        policy,
        KEY,
        partitions=partitions,
        lateness_ms=lateness_ms,
        seed=seed,
        max_batch=max_batch,
        predictor_factory=predictor_factory,
    ).run(lines, key=keying)
    if run.stats.late and late_ok:
        # an event applied after the watermark passed it: replay applied it in order, so
        # their decisions may differ whatever is sent early (outside the argument); the run
        # must only not crash
        return run, expected
    assert run.stats.late == 0
    assert_replay_alerts(run, expected)
    assert sorted(run.actions.values()) == actions  # takedowns wait for the watermark
    return run, expected


def firing(rows: list[bytes]) -> list[tuple[int, str, str]]:
    out = [orjson.loads(r) for r in rows]
    return sorted(
        (d["episode"], d["severity"], d["reason"]) for d in out if d["status"] == "firing"
    )


def early_severities(run: LocalRun) -> set[str]:
    return {orjson.loads(run.alerts[k])["severity"] for k in run.early}


RUNS = [(0, 1, "none"), (1, 3, "none"), (2, 4, "post"), (3, 6, "post")]


# -- a fast burst: the page goes out seconds after the share -----------------------------------


def fast_burst() -> tuple[list[bytes], list[str]]:
    t, rng = Traffic(), random.Random(1)
    pdq = pdq_hex(rng)
    root = t.upload(T0, pdq=pdq)
    t.burst(root, T0 + SEC, 400, 200)  # five a second: warning on the 25th, high on the 100th
    for i in range(300):  # unbanked background, so that event time goes on
        t.upload(T0 + i * 400, pdq=pdq_hex(rng))
    t.events.sort(key=lambda e: e["ts"])  # type: ignore[arg-type, return-value]
    return t.lines(), [pdq]


def test_a_fast_burst_is_paged_before_the_watermark_reaches_the_crossing_share() -> None:
    lines, pdqs = fast_burst()
    ts = [orjson.loads(x)["ts"] for x in lines]
    run, expected = stream_and_compare(lines, pdqs, AlertPolicy.default(), seed=3, partitions=1)
    assert firing(expected) == [(1, "high", "velocity"), (1, "warning", "velocity")]
    assert early_severities(run) == {"warning", "high"}
    for key in run.early:
        tau = _ms(orjson.loads(run.alerts[key])["ts"])
        read, watermark = run.emitted[key]
        # the watermark had not reached the crossing share, and the input read by then could
        # not have moved it there: nothing a minute (the lateness) past the share was read
        assert watermark < tau
        assert read < sum(t < tau + 60_000 for t in ts)
        # one partition, read in order: out within a few batches of its share (7.5 lines a
        # second here: 150 lines are 20 s of traffic, where the watermark needs 60)
        assert read - ts.index(tau) < 150


@pytest.mark.parametrize(("seed", "partitions", "keying"), RUNS)
def test_a_fast_burst_over_partitions(seed: int, partitions: int, keying: str) -> None:
    lines, pdqs = fast_burst()
    run, _ = stream_and_compare(
        lines, pdqs, AlertPolicy.default(), seed=seed, partitions=partitions, keying=keying
    )
    assert run.early
    assert all(run.emitted[k][1] < _ms(orjson.loads(run.alerts[k])["ts"]) for k in run.early)


def same_millisecond_burst() -> tuple[list[bytes], list[str]]:
    """The latency benchmark's start (``bench_pipeline.py``): a banked upload ("e2"), more
    events in the same millisecond, and a reshare of it there whose id sorts before its
    parent's ("e12" < "e2"), under which the whole burst grows."""
    t, rng = Traffic(), random.Random(4)
    pdq = pdq_hex(rng)
    root = t.upload(T0, pdq=pdq)
    for _ in range(4):
        t.upload(T0, pdq=pdq_hex(rng))
    mid = t.share(T0, root)
    t.burst(mid, T0 + SEC, 40, 200)
    for i in range(300):
        t.upload(T0 + i * 400, pdq=pdq_hex(rng))
    t.events.sort(key=lambda e: e["ts"])  # type: ignore[arg-type, return-value]
    return t.lines(), [pdq]


@pytest.mark.parametrize(("seed", "partitions", "keying"), RUNS)
def test_a_burst_under_a_reshare_sorted_before_its_parent_in_one_millisecond_fires_early(
    seed: int, partitions: int, keying: str
) -> None:
    """Replay applies the reshare before its parent (their event time is the same, and
    ``"e12" < "e2"``) and counts it when the parent comes, in that instant: the burst under
    it counts ahead, and the warning goes out early, not an allowed lateness later. One
    latency run in four sent its first cluster's ``critical`` at the watermark this way."""
    lines, pdqs = same_millisecond_burst()
    first = [orjson.loads(x) for x in lines[:6]]
    assert first[0]["event_id"] == "e2" and first[5]["parent_post_id"] == first[0]["post_id"]
    assert (first[5]["ts"], first[5]["event_id"]) < (first[0]["ts"], first[0]["event_id"])
    run, expected = stream_and_compare(
        lines, pdqs, AlertPolicy.default(), seed=seed, partitions=partitions, keying=keying
    )
    assert firing(expected) == [(1, "warning", "velocity")]
    assert early_severities(run) == {"warning"}
    [key] = run.early
    assert run.emitted[key][1] < _ms(orjson.loads(run.alerts[key])["ts"])


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# -- adversarial cases -----------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "partitions", "keying"), RUNS)
def test_a_slow_critical_with_no_high(seed: int, partitions: int, keying: str) -> None:
    """40 a minute for 16 minutes: critical (500 in 15 minutes) without high (100 in one):
    the old policy could not have said whether high would come first; this one fires each
    rule once, so critical is certain when met and goes out early."""
    t, rng = Traffic(), random.Random(2)
    pdq = pdq_hex(rng)
    root = t.upload(T0, pdq=pdq)
    t.burst(root, T0 + SEC, 640, 1500)
    run, expected = stream_and_compare(
        t.lines(), [pdq], SLOW_CRITICAL, seed=seed, partitions=partitions, keying=keying
    )
    assert firing(expected) == [(1, "critical", "velocity"), (1, "warning", "velocity")]
    assert "critical" in early_severities(run)  # (warning too, if the watermark was known)


def predicted_cluster(then_high: bool) -> tuple[list[bytes], str]:
    t, rng = Traffic(), random.Random(3)
    pdq = pdq_hex(rng)
    root = t.upload(T0, pdq=pdq)
    t.burst(root, T0 + SEC, 60, 20_000)  # 3 a minute: 60 posts, no velocity rule
    t.burst(root, T0 + 21 * MIN, 30, SEC)  # warning opens an episode
    if then_high:
        t.burst(root, T0 + 23 * MIN, 120, 500)  # and high, after the forecast's critical
    return t.lines(), pdq


@pytest.mark.parametrize("then_high", [False, True])
@pytest.mark.parametrize(("seed", "partitions", "keying"), RUNS)
def test_a_predicted_critical_escalates_and_skips_nothing(
    then_high: bool, seed: int, partitions: int, keying: str
) -> None:
    """The forecast alone opens nothing; once warning opened the episode, the [predicted]
    rule fires critical (on the watermark path), and high still fires when met after it."""
    lines, pdq = predicted_cluster(then_high)
    run, expected = stream_and_compare(
        lines,
        [pdq],
        AlertPolicy.default(),
        seed=seed,
        partitions=partitions,
        keying=keying,
        predictor_factory=lambda: FixedForecast(50_000, 20_000),
    )
    want = [(1, "critical", "predicted"), (1, "warning", "velocity")]
    if then_high:
        want.insert(1, (1, "high", "velocity"))
    assert firing(expected) == want
    assert "critical" not in early_severities(run)  # a forecast is never sent early


def two_bursts(second_at: int, count: int, every_ms: int) -> tuple[list[bytes], str]:
    """Burst one: 30 shares a second apart from T0 + 1 s (warning; its 25th latest post, at
    T0 + 6 s, leaves the 5-minute window at T0 + 5 m 6 s: resolved at T0 + 15 m 6 s, cooldown
    until T0 + 25 m 6 s). Burst two: ``count`` every ``every_ms`` from ``second_at``."""
    t, rng = Traffic(), random.Random(4)
    pdq = pdq_hex(rng)
    root = t.upload(T0, pdq=pdq)
    t.burst(root, T0 + SEC, 30, SEC)
    t.burst(root, second_at, count, every_ms)
    for i in range(0, 40 * 60, 2):  # unbanked background every two seconds
        t.upload(T0 + i * SEC, pdq=pdq_hex(rng))
    t.events.sort(key=lambda e: e["ts"])  # type: ignore[arg-type, return-value]
    return t.lines(), pdq


RESOLVED_AT = T0 + 15 * MIN + 6 * SEC
COOLDOWN_UNTIL = RESOLVED_AT + 10 * MIN


@pytest.mark.parametrize("offset_s", [-40, -10, 0, 3, 30])
@pytest.mark.parametrize(("seed", "partitions"), [(5, 1), (6, 4)])
def test_a_burst_at_the_end_of_the_cooldown(offset_s: int, seed: int, partitions: int) -> None:
    """The second burst meets warning around the moment the cooldown ends (its 25th share is
    24 s after its first): the episode opens at the first share past the cooldown, never
    before, whenever the shares that meet the rule came in."""
    lines, pdq = two_bursts(COOLDOWN_UNTIL + offset_s * SEC - 24 * SEC, 80, SEC)
    _run, expected = stream_and_compare(
        lines, [pdq], AlertPolicy.default(), seed=seed, partitions=partitions
    )
    assert firing(expected) == [(1, "warning", "velocity"), (2, "warning", "velocity")]


@pytest.mark.parametrize("offset_s", [-40, -5, -1, 0, 1, 5])
@pytest.mark.parametrize(("seed", "partitions"), [(7, 1), (8, 4)])
def test_escalation_near_the_resolve_due(offset_s: int, seed: int, partitions: int) -> None:
    """A burst to high starting around the moment the first episode resolves: before it,
    the episode escalates (each share keeps it open); after it, the cooldown holds it back."""
    lines, pdq = two_bursts(RESOLVED_AT + offset_s * SEC, 150, 250)
    _run, expected = stream_and_compare(
        lines, [pdq], AlertPolicy.default(), seed=seed, partitions=partitions
    )
    want = [(1, "warning", "velocity")]
    if offset_s < 0:
        want = [(1, "high", "velocity"), *want]
    assert firing(expected) == want


def reshares_older_than_their_parent() -> tuple[list[bytes], str]:
    """476 reshares stamped twelve minutes before the post they reshare: counted when it
    comes, with their own times. With 22 fresh shares and that post, critical (500 in 15
    minutes) is met at 13 min while warning (25 in 5) never is; the episode resolves at about
    17 min, and a burst at 17.5 min falls in its cooldown: no warning, in any episode."""
    t, rng = Traffic(), random.Random(9)
    pdq = pdq_hex(rng)
    root = t.upload(T0, pdq=pdq)
    parent = "late-parent"
    for i in range(476):
        t.share(T0 + MIN + i * 120, parent)
    for i in range(22):
        t.share(T0 + 12 * MIN + 30 * SEC + i * SEC, root)
    t.share(T0 + 13 * MIN, root, post=parent)
    t.burst(root, T0 + 17 * MIN + 30 * SEC, 30, SEC)
    for i in range(0, 30 * MIN, 20 * SEC):  # a trickle, so the cluster gets events as time goes
        t.share(T0 + 18 * MIN + i, root)
    for i in range(0, 50 * MIN, 2 * SEC):  # unbanked background
        t.upload(T0 + i, pdq=pdq_hex(rng))
    t.events.sort(key=lambda e: e["ts"])  # type: ignore[arg-type, return-value]
    return t.lines(), pdq


@pytest.mark.parametrize(("seed", "partitions"), [(0, 1), (1, 1), (2, 2), (3, 4)])
def test_a_rule_met_through_reshares_older_than_their_parent(seed: int, partitions: int) -> None:
    """The case that a "ladder-safe policy, cooldown over by the watermark minus the longest
    window" condition gets wrong (module doc of ``streams.detector``): the episode opens on
    critical alone and soon resolves. 15 minutes of allowed lateness, so nothing is late."""
    lines, pdq = reshares_older_than_their_parent()
    run, expected = stream_and_compare(
        lines,
        [pdq],
        AlertPolicy.default(),
        seed=seed,
        partitions=partitions,
        lateness_ms=15 * MIN,
        max_batch=5,  # small batches: the stream is asked often while the watermark moves
    )
    assert firing(expected) == [(1, "critical", "velocity")]
    assert not any(orjson.loads(r)["severity"] == "warning" for r in run.alerts.values())


# -- any traffic, any partitioning, any interleaving --------------------------------------------


Segment = tuple[int, int, int]  # shares, ms between them, pause before


def make_traffic(
    seed: int, clusters: list[tuple[int, list[Segment]]]
) -> tuple[list[bytes], list[str]]:
    """Banked clusters (a start offset, then segments of shares), some reshares stamped a
    little before their parent, takedowns, unbanked background so that event time goes on
    everywhere, and the lines a little out of order (within 20 s: none later than 60 s)."""
    rng = random.Random(seed)
    t = Traffic(rng=random.Random(rng.random()))
    pdqs = []
    for start, segments in clusters:
        pdq = pdq_hex(rng)
        pdqs.append(pdq)
        at = T0 + start
        posts = [t.upload(at, pdq=pdq)]
        for count, every_ms, pause_ms in segments:
            at += pause_ms
            for _ in range(count):
                at += every_ms
                parent = posts[rng.randrange(len(posts))]
                skew = rng.randrange(20 * SEC) if rng.random() < 0.05 else 0  # clocks disagree
                posts.append(t.share(at - skew, parent))
            if rng.random() < 0.3:
                t.takedown(at, posts[rng.randrange(len(posts))])
    end = max(int(e["ts"]) for e in t.events)  # type: ignore[call-overload]
    for ts in range(T0, end, 3 * SEC):
        t.upload(ts, pdq=pdq_hex(rng))
    jitter = {id(e): rng.randrange(20 * SEC) for e in t.events}
    t.events.sort(key=lambda e: int(e["ts"]) + jitter[id(e)])  # type: ignore[call-overload]
    return t.lines(), pdqs


def random_traffic(seed: int) -> tuple[list[bytes], list[str]]:
    """Up to three clusters of up to four segments, drawn evenly (hypothesis draws the seed:
    left to itself it favours small streams, where few episodes begin and end)."""
    rng = random.Random(seed)
    clusters = [
        (
            rng.randrange(5 * MIN),
            [
                (
                    rng.randrange(121),
                    rng.choice([100, 400, 1000, 2500, 8000]),
                    rng.randrange(20 * MIN),
                )
                for _ in range(rng.randint(1, 4))
            ],
        )
        for _ in range(rng.randint(1, 3))
    ]
    return make_traffic(rng.randrange(2**32), clusters)


PROPS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@given(
    st.integers(0, 2**32).map(random_traffic),
    st.sampled_from([AlertPolicy.default(), SLOW_CRITICAL, TIGHT]),
    st.integers(0, 10**6),
    st.integers(1, 6),
    st.sampled_from(["none", "post"]),
    st.integers(5, 80),
)
@PROPS
def test_any_interleaving_gives_replay_ids_and_statuses(
    stream: tuple[list[bytes], list[str]],
    policy: AlertPolicy,
    seed: int,
    partitions: int,
    keying: str,
    max_batch: int,
) -> None:
    lines, pdqs = stream
    stream_and_compare(
        lines,
        pdqs,
        policy,
        seed=seed,
        partitions=partitions,
        keying=keying,
        max_batch=max_batch,
        late_ok=True,  # a reshare stamped before its parent can come late to stage 2
    )


# -- the detector alone ------------------------------------------------------------------------


MATCH = MatchInfo("ncii", "md5", "a" * 32, 0)


def share(i: int, ts: int, parent: str = "p0", post: str | None = None) -> Routed:
    return Routed(ShareEvent(f"e{i}", "share", ts, post or f"p{i}", f"u{i}", parent), "b-1")


def upload(ts: int = T0) -> Routed:
    return Routed(ShareEvent("e0", "upload", ts, "p0", "u0"), "b-1", MATCH)


def detector(policy: AlertPolicy | None = None) -> Detector:
    return Detector(policy or AlertPolicy.default(), Stats(), pseudonymizer=KEY)


def test_an_early_alert_is_sent_once_and_counted_once() -> None:
    det = detector()
    items = [upload(), *(share(i, T0 + i * SEC) for i in range(1, 40))]
    for item in items:
        det.expect(item)
    det.fire_early(["b-1"], T0 - 1)
    det.fire_early(["b-1"], T0 - 1)  # asked again: nothing new
    [early] = det.drain().alerts
    assert isinstance(early, EarlyAlert) and early.alert_id == alert_id("b-1", 1, "warning")
    body = orjson.loads(early.to_json())
    assert body["provisional"] is True and body["as_of"] < body["ts"]
    assert body["cascade"]["velocity_per_min"]["5m"] == 5.0
    # nothing applied yet: the figures are of the posts held up to the crossing share
    assert body["cascade"]["size"] == 25 and body["cascade"]["roots"] == 1
    assert body["cascade"]["depth"] == 1 and body["top_spreaders"]
    assert body["match"]["bank"] == "ncii"
    for item in items:
        det.apply(item)
    assert det.drain().alerts == []
    assert det.clusters["b-1"].fired == ["warning"]
    assert det.stats.alerts[("warning", "firing")] == 1
    det.advance(T0 + 3_600_000)
    [resolved] = det.drain().alerts
    assert (resolved.alert_id, resolved.status) == (early.alert_id, "resolved")
    assert not isinstance(resolved, EarlyAlert) and b"provisional" not in resolved.to_json()


def test_a_reshare_older_than_its_parent_is_not_counted_ahead() -> None:
    """Replay counts it when the parent comes: it cannot make a crossing certain before."""
    det = detector()
    det.expect(upload())
    for i in range(1, 30):  # reshares of p-late, stamped before it
        det.expect(share(i, T0 + i * SEC, parent="p-late"))
    det.expect(share(99, T0 + 40 * SEC, post="p-late"))
    det.fire_early(["b-1"], T0 - 1)
    assert det.drain().alerts == []


def test_the_reshares_of_a_held_post_after_it_count() -> None:
    det = detector()
    det.expect(upload())
    det.expect(share(1, T0 + SEC, post="mid"))
    for i in range(2, 30):
        det.expect(share(i, T0 + i * SEC, parent="mid"))
    det.fire_early(["b-1"], T0 - 1)
    assert [a.severity for a in det.drain().alerts] == ["warning"]


def test_the_reshares_held_before_their_parent_count_when_it_comes() -> None:
    """Received before the post they reshare, they wait; the post held makes them counted
    (and what waited under them, in turn), each at its own time."""
    det = detector()
    det.expect(upload())
    for i in range(3, 30):
        det.expect(share(i, T0 + i * SEC, parent="mid" if i < 10 else "p3"))
    det.fire_early(["b-1"], T0 - 1)
    assert det.drain().alerts == []  # "mid" not seen: nothing under it is certain
    det.expect(share(1, T0 + SEC, post="mid"))
    det.fire_early(["b-1"], T0 - 1)
    [early] = det.drain().alerts
    assert (early.severity, early.ts_ms) == ("warning", T0 + 25 * SEC)  # upload, mid, 23 more


def test_reshares_of_the_same_millisecond_count_whatever_their_ids() -> None:
    """Of its parent's millisecond, a reshare is counted in that instant whichever event id
    sorts first, and so is what grows under it; one a millisecond older is not."""
    det = detector()
    det.expect(Routed(ShareEvent("e2", "upload", T0, "p0", "u0"), "b-1", MATCH))
    det.expect(share(12, T0, post="mid"))  # "e12" < "e2": applied first, counted with it
    for i in range(13, 40):
        det.expect(share(i, T0 + i * SEC, parent="mid"))
    det.fire_early(["b-1"], T0 - 1)
    [early] = det.drain().alerts
    assert (early.severity, early.ts_ms) == ("warning", T0 + 35 * SEC)
    assert orjson.loads(early.to_json())["cascade"]["size"] == 25  # the held tree, "mid" in it
    older = detector()
    older.expect(Routed(ShareEvent("e2", "upload", T0, "p0", "u0"), "b-1", MATCH))
    older.expect(share(12, T0 - 1, post="mid"))
    for i in range(13, 40):
        older.expect(share(i, T0 + i * SEC, parent="mid"))
    older.fire_early(["b-1"], T0 - 1)
    assert older.drain().alerts == []


@pytest.mark.parametrize(("older", "sent"), [(470, True), (476, False)])
def test_an_opening_is_sent_early_only_if_older_shares_cannot_open_it_alone(
    older: int, sent: bool
) -> None:
    """Shares applied in (wm - 15 m, wm - 5 m] count towards critical (500 in 15 minutes)
    after the watermark. With more than 500 - 25 of them, critical met with a few new ones
    opens an episode (warning not met) that resolves at once, and the warning the new shares
    meet belongs to the next: no opening is certain."""
    policy = AlertPolicy(AlertPolicy.default().rules, cooldown_ms=0, resolve_after_ms=MIN)
    det = Detector(policy, Stats(), pseudonymizer=KEY)
    wm = T0 + 15 * MIN
    det.apply(upload(T0 + MIN))
    for i in range(1, older):
        det.apply(share(i, T0 + MIN + i * 100))
    det.advance(wm)  # the warning episode these made has resolved
    det.drain()
    assert not det.clusters["b-1"].active
    for i in range(1, 30):
        det.expect(share(1000 + i, wm + i * SEC))
    det.fire_early(["b-1"], wm)
    assert [(a.severity, a.episode) for a in det.drain().alerts] == (
        [("warning", 2)] if sent else []
    )


def test_an_escalation_is_sent_early_only_before_the_resolve_due() -> None:
    det = detector()
    for item in [upload(), *(share(i, T0 + i * SEC) for i in range(1, 31))]:
        det.apply(item)
    det.drain()
    st_ = det.clusters["b-1"]
    due = st_.resolve_due_ms
    assert st_.active and due is not None
    late = [share(100 + i, due + i * 100) for i in range(120)]  # high, but after the due
    for item in late:
        det.expect(item)
    det.fire_early(["b-1"], due - 10 * SEC)
    assert det.drain().alerts == []
    det2 = detector()
    for item in [upload(), *(share(i, T0 + i * SEC) for i in range(1, 31))]:
        det2.apply(item)
    det2.drain()
    soon = [share(100 + i, due - 20 * SEC + i * 100) for i in range(120)]
    for item in soon:
        det2.expect(item)
    det2.fire_early(["b-1"], due - 30 * SEC)
    [high] = det2.drain().alerts
    assert (high.severity, high.episode) == ("high", 1) and high.ts_ms < due


def test_fire_early_costs_only_the_clusters_it_is_given() -> None:
    det = detector()
    for item in [upload(), *(share(i, T0 + i * SEC) for i in range(1, 40))]:
        det.expect(item)
    det.fire_early(["b-other"], T0 - 1)
    assert det.drain().alerts == []


def test_fire_early_asks_no_cluster_under_every_rule_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster whose shares kept and held are fewer than every rule not fired yet asks
    for: no window can reach one, and no rule of it is looked at (the bound settled before
    the call: 82% of the calls at a worker's density were under it)."""
    det = detector()
    asked: list[str] = []
    look = det._fire_early
    monkeypatch.setattr(det, "_fire_early", lambda cid, *a: (asked.append(cid), look(cid, *a)))
    items = [upload(), *(share(i, T0 + i * SEC) for i in range(1, 24))]  # 24 of 25
    for item in items:
        det.expect(item)
    det.fire_early(["b-1"], T0 - 1)
    assert asked == [] and det.drain().alerts == []
    det.expect(share(24, T0 + 24 * SEC))  # the 25th: warning's rule is reachable
    det.fire_early(["b-1"], T0 - 1)
    assert asked == ["b-1"] and [a.severity for a in det.drain().alerts] == ["warning"]
    for item in [*items, share(24, T0 + 24 * SEC)]:  # applied: warning's episode is open
        det.apply(item)
    for i in range(25, 30):
        det.expect(share(i, T0 + i * SEC))
    assert det.drain().alerts == [] and det.clusters["b-1"].fired == ["warning"]
    det.fire_early(["b-1"], T0 + 24 * SEC)  # 30 of high's 100 (warning fired): not asked
    assert asked == ["b-1"] and det.drain().alerts == []


def lookahead_state(det: Detector) -> dict[str, tuple[object, ...]]:
    """What the detector holds a cluster's events as: the count of items held, the counted
    times (sorted, one a counted post), the counted posts and the waiting reshares."""
    out: dict[str, tuple[object, ...]] = {}
    for cid, ahead in det._ahead.items():
        times = ahead.times[ahead.start :]
        assert times == sorted(p.ts_ms for p in ahead.posts.values())
        waiting = {k: [e.event_id for e in v] for k, v in ahead.waiting.items()}
        out[cid] = (ahead.held, times, sorted(ahead.posts), waiting)
    return out


@given(
    st.lists(
        st.tuples(
            st.integers(0, 30),  # the event (the same one twice: a copy)
            st.integers(0, 12),  # its post
            st.one_of(st.none(), st.integers(0, 12)),  # its parent (None: an upload)
            st.integers(0, 40),  # its time, in seconds
            st.sampled_from(["b-1", "b-2"]),
            st.booleans(),  # a takedown of the post instead
        ),
        max_size=60,
    ),
    st.integers(1, 9),
    st.integers(0, 2**32),
)
@PROPS
def test_a_batch_noted_at_once_is_noted_as_each_of_its_events(
    drawn: list[tuple[int, int, int | None, int, str, bool]], batch: int, seed: int
) -> None:
    """A worker notes a batch's held events in one call (``expect_many``), and the detector
    forgets an applied one in place as a rule: held, counted, waiting and sent early as
    ``expect`` one at a time and ``Lookahead.forget`` left them, through copies, second
    events of a post, reshares held before their parent and takedowns, with some events
    applied between the batches (in time order as a rule, some out of it)."""
    rng = random.Random(seed)
    made: dict[int, Routed] = {}
    for i, post, parent, ts_s, cid, takedown in drawn:
        if i in made:
            continue  # drawn again: a copy of the first
        ts = T0 + ts_s * SEC
        if takedown:
            ev = ShareEvent(f"e{i}", "takedown", ts, f"p{post}", f"u{i}")
        elif parent is None or post == 0:
            ev = ShareEvent(f"e{i}", "upload", ts, f"p{post}", f"u{i}")
        else:  # of a lower post, as a rule one held or applied (some before it in time)
            ev = ShareEvent(f"e{i}", "share", ts, f"p{post}", f"u{i}", f"p{parent % post}")
        made[i] = Routed(ev, cid, MATCH if ev.type == "upload" else None)
    items = [made[i] for i, *_ in drawn]
    one, many = detector(TIGHT), detector(TIGHT)
    held: list[Routed] = []
    wm = T0 - 1
    for at in range(0, len(items), batch):
        part = items[at : at + batch]
        for item in part:
            one.expect(item)
        many.expect_many(part)
        held += part
        held.sort(key=lambda r: (r.event.ts_ms, r.event.event_id))
        cut = rng.randrange(len(held) + 1)
        if rng.random() < 0.3:  # some of them, out of time order: not the first held
            applied = rng.sample(held, cut)
            held = [r for r in held if r not in applied]
        else:
            applied, held = held[:cut], held[cut:]
        for det in (one, many):
            for item in applied:
                det.apply(item)
        wm = max([wm, *(r.event.ts_ms for r in applied)])
        for det in (one, many):
            det.advance(wm)
        assert lookahead_state(many) == lookahead_state(one)
        one.fire_early(["b-1", "b-2"], wm)
        many.fire_early(["b-1", "b-2"], wm)
        assert repr(many.drain()) == repr(one.drain())


def small_clusters_warning() -> Alert:
    """A replay's warning of a small cluster (25 posts), its forecast (20 [15, 60]) made at
    the firing from fewer posts: raised to its size."""
    det = Detector(
        AlertPolicy.default(),
        Stats(),
        pseudonymizer=KEY,
        predictor_factory=lambda: FixedForecast(20.0, 15.0),
    )
    for item in [upload(), *(share(i, T0 + i * SEC) for i in range(1, 40))]:
        det.apply(item)
    [warning] = det.drain().alerts
    return warning


def test_an_alerts_forecast_is_never_below_the_size_it_states() -> None:
    """The forecast an alert carries was made from fewer posts than it counts (an early
    firing's, from the posts applied beside a size that counts those held; a small
    cluster's, made when it fired): a figure below the size is raised to it, and the record
    says which (``make demo`` showed a high alert of 100 posts, predicted 78)."""
    det = Detector(
        AlertPolicy.default(),
        Stats(),
        pseudonymizer=KEY,
        predictor_factory=lambda: FixedForecast(20.0, 15.0),  # high 60
    )
    # 70 posts applied slowly (no rule met; forecast on the policy's schedule), 40 held fast
    slow = [upload(), *(share(i, T0 + i * 20 * SEC) for i in range(1, 70))]
    for item in slow:
        det.apply(item)
    assert det.drain().alerts == []
    t = T0 + 70 * 20 * SEC
    held = [share(i, t + (i - 70) * SEC) for i in range(70, 110)]
    for item in held:
        det.expect(item)
    det.fire_early(["b-1"], t - 1)
    [early] = det.drain().alerts
    body = orjson.loads(early.to_json())
    size = body["cascade"]["size"]
    assert body["provisional"] is True and size > 70  # the held posts counted
    assert body["cascade"]["predicted_final_size"] == {
        "size": float(size),
        "low": float(size),
        "high": 60.0 if size <= 60 else float(size),
        "model": "fixed",
        "raised_to_size": ["size", "low", "high"] if size > 60 else ["size", "low"],
    }
    assert orjson.loads(type(early).from_json(early.to_json()).to_json()) == body
    # a replay's alert of a small cluster: its forecast made at the firing, from fewer posts
    warning = small_clusters_warning()
    cascade = orjson.loads(warning.to_json())["cascade"]
    assert cascade["size"] == 25 and cascade["predicted_final_size"] == {
        "size": 25.0,
        "low": 25.0,
        "high": 60.0,
        "model": "fixed",
        "raised_to_size": ["size", "low"],
    }


def test_a_raised_forecast_is_said_in_the_same_words_wherever_it_is_shown() -> None:
    """An on-call engineer reading "predicted 100" beside 100 posts must know it means "at
    least its size" (a forecast made from fewer posts), on Alertmanager's ``figures``
    annotation, the cascade page and ``make demo``'s console alike; a forecast nothing raised
    carries no such words, and one whose band's low end alone was raised says that."""
    from streams.demo import describe
    from streams.pages import _prediction
    from streams.sinks.base import figures

    warning = small_clusters_warning()
    p = warning.cascade.predicted_final_size
    assert p is not None and p.raised == ("size", "low")
    body = orjson.loads(warning.to_json())
    assert figures(warning).endswith(" predicted=25 [25, 60] (at least its size)")
    assert _prediction(p).startswith("25 (at least its size) <span")
    assert describe(body).plain.endswith(f"predicted 25 (at least its size)  [{warning.alert_id}]")
    # read back from its record (a webhook's receiver, the demo): the same words
    assert type(warning).from_json(warning.to_json()).cascade.predicted_final_size == p

    unraised = Prediction(900.0, 600.0, 2100.0, "best", 604_800.0)
    assert unraised.at_least(130) is unraised and unraised.note == ""
    assert (
        "(" not in _prediction(unraised)
        and "at least"
        not in describe(
            {**body, "cascade": {**body["cascade"], "predicted_final_size": unraised.to_dict()}}
        ).plain
    )
    low_only = Prediction(140.0, 61.0, 300.0, "best", 604_800.0).at_least(100)
    assert low_only.raised == ("low",) and low_only.note == "low end raised to its size"
    assert _prediction(low_only).startswith("140 (low end raised to its size) <span")
    # the console shows no band: nothing said of its low
    low_body = {**body["cascade"], "predicted_final_size": low_only.to_dict()}
    assert describe({**body, "cascade": low_body}).plain.endswith(
        f"predicted 140  [{warning.alert_id}]"
    )
