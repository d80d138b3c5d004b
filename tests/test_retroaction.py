"""Judge and act in the core: near-duplicate re-uploads of unbanked content form one cluster;
a bank change relabels the live clusters it matches (retroaction) and a false positive
silences them; replay and the streaming topology give the same alert ids for the same input,
bank updates included."""

from __future__ import annotations

import random

import orjson
import pytest
from eventgen import T0, Traffic, flip, pdq_hex
from hypothesis import given, settings
from hypothesis import strategies as st
from test_streaming_stages import assert_replay_alert_records

from streams.alerts import Pseudonymizer
from streams.banks import ALLOW_BANK, BankEntry, BankUpdate, HashBanks, hamming
from streams.emerging import ContentIndex, EmergingClusters, unbanked_cluster_id
from streams.events import Content, ShareEvent, parse_event
from streams.pdqindex import brute_force
from streams.pipeline import Pipeline
from streams.policy import AlertPolicy
from streams.review import ReviewAction, Signal
from streams.runtime.local_run import LocalRun
from streams.settings import DEV_PSEUDONYM_KEY
from streams.stages import Envelope, ResolvePartition, merge_resolved, partition_for
from streams.stats import Stats
from streams.wire import ToRoute, Unbanked, records

MIN, SEC = 60_000, 1_000


def bank_line(op: str, bank: str, pdq: str, ts: int) -> bytes:
    return BankUpdate(op, BankEntry(bank, "pdq", pdq), ts).record()[1]  # type: ignore[arg-type]


def leak(rng: random.Random, shares: int = 60) -> tuple[Traffic, str, str, list[str]]:
    """Two near-duplicate uploads (20 bits apart) of unbanked content a minute apart, each
    reshared ``shares // 2`` times over the next four minutes; an unrelated upload too."""
    t = Traffic(rng)
    original = pdq_hex(rng)
    edit = flip(original, 20, rng)
    # two posts on one resolve partition at 1, 3 and 4 partitions (see the topology test)
    a = t.upload(T0, pdq=original, md5="a" * 32, post="leak0")
    b = t.upload(T0 + MIN, pdq=edit, md5="b" * 32, post="leak14")
    t.upload(T0 + MIN, pdq=pdq_hex(rng), md5="c" * 32)
    posts = t.burst(a, T0 + 2 * SEC, shares // 2, 8 * SEC) + t.burst(
        b, T0 + MIN + 2 * SEC, shares // 2, 8 * SEC
    )
    return t, original, edit, posts


def replay(lines: list[bytes], banks: HashBanks | None = None) -> Pipeline:
    pipe = Pipeline(
        banks if banks is not None else HashBanks(),
        AlertPolicy.default(),
        pseudonymizer=Pseudonymizer(DEV_PSEUDONYM_KEY),
        predictor_factory=None,
    )
    for line in sorted(lines, key=lambda x: orjson.loads(x).get("ts", T0 * 2)):
        pipe.feed(line)
    return pipe


def fed(lines: list[bytes]) -> Pipeline:
    """Replay of ``lines`` in the order given (``replay`` sorts them by time)."""
    pipe = Pipeline(
        HashBanks(), AlertPolicy.default(), pseudonymizer=Pseudonymizer(DEV_PSEUDONYM_KEY)
    )
    for line in lines:
        pipe.feed(line)
    return pipe


def streamed(lines: list[bytes], **run: object) -> LocalRun:
    """The streaming topology (in memory, :class:`LocalRun`) on ``lines``."""
    local = LocalRun(
        HashBanks(),
        AlertPolicy.default(),
        Pseudonymizer(DEV_PSEUDONYM_KEY),
        **run,  # type: ignore[arg-type]
    )
    return local.run(lines)


def alerts(decisions_alerts: list[object]) -> list[dict[str, object]]:
    return [orjson.loads(a.to_json()) for a in decisions_alerts]  # type: ignore[attr-defined]


# -- emerging content ----------------------------------------------------------------


def test_near_duplicate_reuploads_and_their_reshares_are_one_cluster() -> None:
    t, original, _edit, _ = leak(random.Random(3))
    pipe = replay(t.lines())
    own = unbanked_cluster_id(Content(pdq=original, pdq_quality=90, md5="a" * 32))
    clusters = set(pipe.router.post_clusters.values())
    pipe.release_held()
    cluster = pipe.detector.cluster(own)
    assert cluster is not None and cluster.size == 62  # both uploads, every reshare
    pipe.finish()
    assert own in clusters and len(clusters) == 2  # the leak, and the unrelated upload
    assert pipe.stats.emerging == 1 and pipe.router.emerging.joined == 1
    [queued] = pipe.detector.emerging  # queued once, when it crossed the lowest rule
    assert queued.cluster_id == own and queued.size == 25


def test_an_idle_unbanked_cluster_leaves_the_index_and_content_starts_afresh() -> None:
    rng = random.Random(5)
    h = pdq_hex(rng)
    clusters = EmergingClusters(idle_ms=10 * MIN)
    first = clusters.assign(Content(pdq=h, pdq_quality=90), T0)
    clusters.touch(first, T0 + 5 * MIN)  # a reshare keeps it alive
    assert clusters.expire(T0 + 14 * MIN) == []
    again = clusters.assign(Content(pdq=flip(h, 10, rng), pdq_quality=90), T0 + 14 * MIN)
    assert again == first and clusters.expire(T0 + 25 * MIN) == [first]
    assert len(clusters.index) == 0 and clusters.index.clusters == 0
    other = clusters.assign(Content(pdq=flip(h, 10, rng), pdq_quality=90), T0 + 26 * MIN)
    assert other != first  # its own content's cluster: the old one is gone


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40))
def test_an_upload_joins_the_nearest_live_cluster_as_a_scan_would(seed: int, n: int) -> None:
    rng = random.Random(seed)
    bases = [pdq_hex(rng) for _ in range(4)]
    hashes = [flip(rng.choice(bases), rng.randint(0, 40), rng) for _ in range(n)]
    clusters = EmergingClusters()
    held: dict[str, str] = {}  # every hash so far -> its cluster
    for h in hashes:
        got = clusters.assign(Content(pdq=h, pdq_quality=90), T0)
        near = [(d, held[x]) for x, d in brute_force(list(held), [h], 31)[0]]
        assert got == (min(near)[1] if near else unbanked_cluster_id(Content(pdq=h)))
        held[h] = got


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_assignment_through_index_merges_and_evictions_is_a_scans(seed: int) -> None:
    """Enough hashes that the compiled index merges its tail into its tables mid-stream (and
    evictions between batches): two indexes agree, and the clusters are a scan's all along."""
    rng = random.Random(seed)
    bases = [pdq_hex(rng) for _ in range(30)]
    hashes = [flip(rng.choice(bases), rng.randint(0, 45), rng) for _ in range(1_300)]
    first, second = EmergingClusters(), EmergingClusters()
    held: dict[str, str] = {}  # every live hash -> its cluster
    i = 0
    while i < len(hashes):
        batch = [Content(pdq=h, pdq_quality=90) for h in hashes[i : i + rng.randint(1, 400)]]
        for c in batch:
            got = first.assign(c, T0)
            assert got == second.assign(c, T0)
            h = c.pdq or ""
            near = [(hamming(h, x), cid) for x, cid in held.items() if hamming(h, x) <= 31]
            assert got == (min(near)[1] if near else unbanked_cluster_id(c))  # a scan's
            held[h] = got
        i += len(batch)
        if rng.random() < 0.3:  # evictions between batches
            live = sorted(second.snapshot())
            for cid in rng.sample(live, min(3, len(live))):
                first.fold({}, [cid])  # evicted, as a log read back says
                second.fold({}, [cid])
                assert cid not in first.index and cid not in second.index
                held = {x: c for x, c in held.items() if c != cid}


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_an_index_without_tables_answers_as_one_with_them(seed: int) -> None:
    """A worker's clusters partition keeps its index without the PDQ tables (a search
    scans): past the tail's merge into the tables, through drops and the compaction they
    bring, it answers every search as an index with the tables does, in less memory."""
    rng = random.Random(seed)
    bases = [pdq_hex(rng) for _ in range(40)]
    hashes = list(
        dict.fromkeys(flip(rng.choice(bases), rng.randint(0, 45), rng) for _ in range(3_000))
    )
    tables, scan = ContentIndex(), ContentIndex(scan=True)
    for i, h in enumerate(hashes):
        for idx in (tables, scan):
            idx.add_signals(f"u-{i % 2_500}", [("pdq", h), ("md5", h[:32])])
    assert scan._held.nbytes < tables._held.nbytes
    for i in rng.sample(range(2_500), 2_000):  # past a quarter dead: the rows are compacted
        assert tables.drop(f"u-{i}") and scan.drop(f"u-{i}")
    assert scan.clusters == tables.clusters == 500 and len(scan) == len(tables)
    for h in rng.sample(hashes, 60):
        q = flip(h, rng.choice([0, 10, 31, 32, 50]), rng)
        assert scan.near("pdq", q, 31) == tables.near("pdq", q, 31)
        assert scan.near("md5", h[:32], 31) == tables.near("md5", h[:32], 31)


def signal_pool(seed: int, pdqs: int) -> list[tuple[str, str]]:
    """PDQ hashes near three bases (the same, 5, 31, 32 and 40 bits off) and four MD5s."""
    rng = random.Random(seed)
    bases = [pdq_hex(rng) for _ in range(3)]
    pool = [
        ("pdq", flip(rng.choice(bases), rng.choice([0, 5, 31, 32, 40]), rng)) for _ in range(pdqs)
    ]
    return pool + [("md5", f"{rng.getrandbits(128):032x}") for _ in range(4)]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 11), st.integers(0, 10**6)), max_size=80),
)
def test_the_content_index_answers_as_a_model_of_holders_and_a_scan(
    seed: int, ops: list[tuple[bool, int, int]]
) -> None:
    """Clusters take shared and near signals (at 31 and 32 bits too) and are dropped: what
    each holds, and what a search finds, are a plain model's (holders by signal, a scan)."""
    pool = signal_pool(seed, 12)
    idx = ContentIndex()
    model: dict[str, list[str]] = {}  # cluster -> its signals, in order
    for add, c, k in ops:
        cid = f"u-{c}"
        if add:
            signals = [pool[(k + j) % len(pool)] for j in range(k % 3 + 1)]
            own = model.setdefault(cid, [])
            fresh = [t for t in dict.fromkeys(t for _, t in signals) if t not in own]
            assert idx.add_signals(cid, signals) == fresh
            own += fresh
        else:
            assert idx.drop(cid) == (model.pop(cid, None) is not None)
        assert idx.clusters == len(model) and (cid in idx) == (cid in model)
        assert idx.held(cid) == model.get(cid, [])
    assert len(idx) == len({t for own in model.values() for t in own})
    for kind, text in pool:
        expected: dict[str, int] = {}
        for cid, own in model.items():
            ds = [hamming(text, t) for t in own if len(t) == len(text) == 64]
            ds += [0 for t in own if kind == "md5" and t == text]
            if ds and min(ds) <= 31:
                expected[cid] = min(ds)
        assert idx.near(kind, text.upper(), 31) == sorted(
            expected.items(), key=lambda cd: (cd[1], cd[0])
        )


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(
        st.tuples(st.integers(0, 1), st.booleans(), st.integers(0, 7), st.integers(0, 10**6)),
        max_size=120,
    ),
)
def test_two_views_of_one_index_answer_as_two_indexes(
    seed: int, ops: list[tuple[int, bool, int, int]]
) -> None:
    """Replay's router and detector share one index (each a view): whatever either adds and
    drops (the same clusters, at other times, or others), each view's answers (what a
    cluster holds, who holds a signal, a search, what a drop frees) are those of an index
    of its own (the owner's in the order it took them; the detector's, which reads them as
    a set, as a set), and the index holds each signal once and forgets what neither holds."""
    pool = signal_pool(seed, 10)
    router = ContentIndex()
    shared = [router, router.shared_view()]
    alone = [ContentIndex(), ContentIndex()]
    for view, add, c, k in ops:
        cid = f"{'ub'[c % 2]}-{c}"
        if add:
            signals = [pool[(k + j) % len(pool)] for j in range(k % 3 + 1)]
            assert shared[view].add_signals(cid, signals) == alone[view].add_signals(cid, signals)
        else:
            freed = shared[view]._held.drop(cid, view)
            alone_freed = alone[view]._held.drop(cid)
            assert (freed is None) == (alone_freed is None)
            assert sorted(freed or []) == sorted(alone_freed or [])
        for v in (0, 1):
            assert shared[v].clusters == alone[v].clusters
            assert (cid in shared[v]) == (cid in alone[v])
            held = shared[v].held(cid)
            assert (held if v == 0 else sorted(held)) == (
                alone[v].held(cid) if v == 0 else sorted(alone[v].held(cid))
            )
    for v in (0, 1):
        for kind, text in pool:
            assert shared[v].near(kind, text, 31) == alone[v].near(kind, text, 31)
            assert shared[v]._held.holders(text, v) == alone[v]._held.holders(text)
    # one copy of each signal either holds, none that neither holds
    assert len(router) == len({t for idx in alone for c in _clusters(idx) for t in idx.held(c)})
    for v in (0, 1):
        for c in _clusters(alone[v]):
            assert shared[v].drop(c) and alone[v].drop(c)
    assert len(router) == 0 and router.clusters == 0 and shared[1].clusters == 0


def _clusters(idx: ContentIndex) -> list[str]:
    """The live clusters of a test's index (their ids are ``u-<n>`` or ``b-<n>``, n < 8)."""
    return [f"{p}-{c}" for c in range(8) for p in "ub" if f"{p}-{c}" in idx]


def test_a_bad_signal_changes_nothing() -> None:
    idx = ContentIndex()
    with pytest.raises(ValueError):
        idx.add_signals("u-1", [("md5", "a" * 32), ("pdq", "z" * 64)])
    assert "u-1" not in idx and len(idx) == 0
    assert idx.near("md5", "a" * 32, 31) == [] and idx.near("pdq", "nonsense", 31) == []


def test_the_content_index_finds_md5_first_then_the_nearest_pdq() -> None:
    idx = ContentIndex()
    rng = random.Random(9)
    h = pdq_hex(rng)
    idx.add("u-near", Content(pdq=flip(h, 3, rng), pdq_quality=90))
    idx.add("u-file", Content(pdq=flip(h, 30, rng), pdq_quality=90, md5="e" * 32))
    assert idx.find(Content(pdq=h, pdq_quality=90, md5="e" * 32), 31) == "u-file"
    assert idx.find(Content(pdq=h, pdq_quality=90), 31) == "u-near"
    assert idx.find(Content(pdq=h, pdq_quality=10), 31) is None  # too flat to be a signal
    assert hamming(h, flip(h, 3, rng)) == 3


# -- retroaction ---------------------------------------------------------------------


def test_banking_the_content_makes_the_live_cluster_alert_at_the_bank_time() -> None:
    rng = random.Random(3)
    t, original, _, _ = leak(rng)
    bank_at = T0 + 4 * MIN
    lines = [*t.lines(), bank_line("add", "internal", flip(original, 5, rng), bank_at)]
    pipe = replay(lines)
    decisions = pipe.finish()
    own = unbanked_cluster_id(Content(pdq=original, md5="a" * 32))
    firing = [a for a in alerts(decisions.alerts) if a["status"] == "firing"]
    assert [(a["cluster_id"], a["severity"], a["ts"]) for a in firing] == [
        (own, "warning", "2026-01-01T00:04:00.000Z")
    ]
    [a] = firing
    assert a["match"]["bank"] == "internal" and a["match"]["distance"] == 5
    assert a["cascade"]["size"] >= 25 and a["cascade"]["roots"] == 2  # the graph, built
    assert pipe.stats.relabelled == 1


def test_a_relabelled_cluster_takes_its_later_events_and_the_store_starts_none() -> None:
    """Once taken out of the compiled store, an unbanked cluster is the detector's: each of
    its events after the take goes there (the core asks the dict only for clusters it has
    handed out, ``UnbankedClusters.take``), none starts a cluster of that id in the store."""
    rng = random.Random(3)
    t, original, _, _ = leak(rng)
    bank_at = T0 + 4 * MIN
    pipe = replay([*t.lines(), bank_line("add", "internal", flip(original, 5, rng), bank_at)])
    own = unbanked_cluster_id(Content(pdq=original, md5="a" * 32))
    later = Traffic(random.Random(5))
    later.share(bank_at + 2 * MIN, "leak0")
    later.upload(bank_at + 4 * MIN, pdq=pdq_hex(rng), md5="d" * 32)  # moves the watermark
    for i, e in enumerate(later.events):
        e["event_id"], e["post_id"] = f"later-e{i}", f"later-p{i}"
    for line in later.lines():
        pipe.feed(line)
    st = pipe.detector.clusters[own]
    assert pipe.stats.relabelled == 1 and st.banked
    assert len(st.event_ids) == 2 + 60 + 1 and st.last_ms == bank_at + 2 * MIN
    assert pipe.detector.unbanked_store.summary(own) is None


def test_a_bank_add_with_no_time_changes_matching_only() -> None:
    rng = random.Random(3)
    t, original, _, _ = leak(rng)
    untimed = BankUpdate("add", BankEntry("internal", "pdq", original)).record()[1]
    decisions = replay([*t.lines(), untimed]).finish()
    assert not decisions.alerts


def test_a_false_positive_silences_the_cluster_and_its_content_matches_nothing() -> None:
    """Its open episode resolved at the verdict's time, no takedown requested after it."""
    rng = random.Random(4)
    t = Traffic(rng)
    h = pdq_hex(rng)
    banks = HashBanks()
    banks.add(BankEntry("stopncii", "pdq", h))
    root = t.upload(T0, pdq=h)
    t.burst(root, T0 + SEC, 120, 2 * SEC)  # 120 reshares in 4 minutes: warning, then high
    fp_at = T0 + 5 * MIN
    t.burst(root, fp_at + SEC, 60, 2 * SEC)  # it goes on spreading after the verdict
    t.upload(fp_at + 3 * MIN, pdq=flip(h, 4, rng), post="again")
    verdict = ReviewAction(
        "false_positive",
        "alice",
        "a landscape photo",
        fp_at,
        cluster_id="b-00112233445566ff",
        signals=(Signal("pdq", h),),
        bank="stopncii",
    )
    [change] = verdict.bank_changes()
    pipe = replay([*t.lines(), change.record()[1]], banks)
    again = pipe.router.post_clusters["again"]
    decisions = pipe.finish()
    got = [(a["severity"], a["status"], a["reason"], a["ts"]) for a in alerts(decisions.alerts)]
    assert got == [
        ("warning", "firing", "velocity", "2026-01-01T00:00:47.000Z"),  # the 25th post
        ("high", "firing", "velocity", "2026-01-01T00:03:17.000Z"),  # the 100th
        ("warning", "resolved", "false_positive", "2026-01-01T00:05:00.000Z"),
        ("high", "resolved", "false_positive", "2026-01-01T00:05:00.000Z"),
    ]
    assert decisions.actions and max(a.ts_ms for a in decisions.actions) < fp_at
    assert again.startswith("a-") and pipe.stats.allowed == 1  # the re-upload matches nothing
    # reversed: the content matches its bank again
    assert banks.allowed(Content(pdq=h, pdq_quality=90))
    reverse = ReviewAction(
        "reverse_false_positive",
        "bob",
        "it is NCII after all",
        fp_at + 9 * MIN,
        signals=(Signal("pdq", h),),
    )
    for c in reverse.bank_changes():
        pipe.feed(c.record()[1])
    assert not banks.allowed(Content(pdq=h, pdq_quality=90))
    m = banks.match(Content(pdq=h, pdq_quality=90))
    assert m is not None and m.entry.bank == "stopncii"


def test_takedowns_follow_the_policy(tmp_path: object) -> None:
    rng = random.Random(4)
    t = Traffic(rng)
    h = pdq_hex(rng)
    root = t.upload(T0, pdq=h)
    t.burst(root, T0 + SEC, 120, 2 * SEC)

    def takedowns(takedown: str) -> tuple[int, int | None]:
        """How many takedown requests, and the event time of the first."""
        raw = {
            "rule": [
                {"severity": "warning", "shares": 25, "window": "5m"},
                {"severity": "high", "shares": 100, "window": "5m"},
            ],
            "takedown": takedown,
        }
        banks = HashBanks()
        banks.add(BankEntry("stopncii", "pdq", h))
        pipe = Pipeline(banks, AlertPolicy.from_dict(raw), pseudonymizer=Pseudonymizer(b"k"))
        for line in t.lines():
            pipe.feed(line)
        actions = pipe.finish().actions
        return len(actions), min((a.ts_ms for a in actions), default=None)

    assert takedowns("none") == (0, None)
    assert takedowns("high") == (121, T0 + 197 * SEC)  # at the 100th post, then each one
    assert takedowns("warning") == (121, T0 + 47 * SEC)  # at the 25th
    with pytest.raises(ValueError, match="takedown must be"):
        AlertPolicy.from_dict(
            {"rule": [{"severity": "high", "shares": 1, "window": "1m"}], "takedown": "always"}
        )


# -- replay and the streaming topology ------------------------------------------------


@pytest.mark.parametrize(("seed", "partitions"), [(0, 4), (1, 3), (2, 1)])
def test_the_topology_gives_replays_alert_ids_with_bank_updates_in_the_input(
    seed: int, partitions: int
) -> None:
    rng = random.Random(3)
    t, original, _, _ = leak(rng, shares=120)
    late = t.burst(t.events[0]["post_id"], T0 + 6 * MIN, 40, 3 * SEC)  # type: ignore[arg-type]
    assert late
    lines = sorted(t.lines(), key=lambda x: orjson.loads(x)["ts"])
    bank = bank_line("add", "internal", original, T0 + 4 * MIN)
    fp = bank_line("add", ALLOW_BANK, original, T0 + 7 * MIN)
    # the updates come in the input about when they were made
    at = next(i for i, x in enumerate(lines) if orjson.loads(x)["ts"] >= T0 + 4 * MIN)
    at2 = next(i for i, x in enumerate(lines) if orjson.loads(x)["ts"] >= T0 + 7 * MIN)
    lines = [*lines[:at], bank, *lines[at:at2], fp, *lines[at2:]]
    pipe = fed(lines)
    expected = sorted(a.to_json() for a in pipe.finish().alerts if a.ts_ms <= pipe.max_ts_ms)
    kinds = {(d["severity"], d["status"], d["reason"]) for d in map(orjson.loads, expected)}
    assert ("warning", "firing", "velocity") in kinds
    assert ("warning", "resolved", "false_positive") in kinds
    run = streamed(lines, partitions=partitions, seed=seed)
    assert_replay_alert_records(list(run.alerts.values()), expected)


def test_a_retroactive_firing_the_applied_shares_prove_goes_out_before_the_watermark() -> None:
    """Streaming: the bank add at 4:00 waits for the watermark (here 3:00), but the shares
    applied already meet ``warning`` at 4:00, so its firing goes out at once, with the id
    the watermark path (and replay) gives it, and is not sent again when it gets there."""
    from streams.alerts import EarlyAlert
    from streams.detector import Detector
    from streams.events import ShareEvent, parse_events
    from streams.stages import Envelope, ResolvePartition
    from streams.stats import Stats
    from streams.wire import ToRoute

    rng = random.Random(3)
    t, original, _, _ = leak(rng)
    stats = Stats()
    resolver = ResolvePartition(
        0,
        partitions=1,
        sources=1,
        banks=HashBanks(),
        stats=stats,
        lateness_ms=0,
        hold_ms=1_800_000,
        max_held=100_000,
    )
    det = Detector(AlertPolicy.default(), stats, pseudonymizer=Pseudonymizer(b"k"))
    events = [e for e in parse_events(list(t.lines())) if isinstance(e, ShareEvent)]
    end = (max(e.ts_ms for e in events) + 1, False)  # every input passed: all clustered
    batch = resolver.handle([Envelope([ToRoute(e) for e in events], {0: end})])
    routed = records(batch.clusters[0])
    routed.sort(key=lambda r: (r.event.ts_ms, r.event.event_id))
    wm, bank_at = T0 + 3 * MIN, T0 + 4 * MIN
    before = [r for r in routed if r.event.ts_ms <= wm]
    for r in before:
        det.apply(r)
    det.advance(wm)
    update = BankUpdate("add", BankEntry("internal", "pdq", original), bank_at)
    det.expect_bank(update, wm)
    [early] = det.drain().alerts
    assert isinstance(early, EarlyAlert) and early.ts_ms == bank_at and early.episode == 1
    assert early.match is not None and early.match.bank == "internal"
    for r in routed[len(before) :]:
        det.apply(r)
    det.change_bank(update)  # the watermark gets there: the same firing, not sent again
    assert det.drain().alerts == [] and stats.alerts[("warning", "firing")] == 1
    replayed = replay([*t.lines(), bank_line("add", "internal", original, bank_at)]).finish()
    assert [a.alert_id for a in replayed.alerts if a.status == "firing"] == [early.alert_id]


def test_a_timed_video_bank_update_changes_matching_and_relabels_nothing() -> None:
    """Live clusters are searched by MD5 and PDQ only: a video entry (vPDQ) added with a time
    is taken (and matches later uploads of the video), and no live cluster is relabelled."""
    from streams.vpdq import VpdqFrame, format_vpdq

    rng = random.Random(3)
    t, _, _, _ = leak(rng)
    frames = format_vpdq(tuple(VpdqFrame(pdq_hex(rng), 100, float(i)) for i in range(3)))
    update = BankUpdate("add", BankEntry("internal", "vpdq", frames), T0 + 4 * MIN)
    pipe = replay([*t.lines(), update.record()[1]])
    decisions = pipe.finish()
    assert not decisions.alerts and not decisions.rejections and pipe.stats.relabelled == 0
    assert len(pipe.router.banks) == 1


# -- one owner for the index of unbanked content --------------------------------------


def posts_on(partition: int, partitions: int, prefix: str) -> str:
    return next(
        f"{prefix}{i}"
        for i in range(1000)
        if partition_for(f"{prefix}{i}", partitions) == partition
    )


def two_workers_leak(rng: random.Random) -> tuple[list[bytes], str, str]:
    """A leak re-uploaded twenty minutes later as a near-duplicate (20 bits), the two
    uploads' posts on different resolve partitions (neither the index's owner), unrelated
    unbanked uploads and reshares between them, and the original banked (timed) while the
    re-upload spreads. Returns the lines in event-time order, and the two posts."""
    t = Traffic(rng)
    original = pdq_hex(rng)
    a = t.upload(T0, pdq=original, md5="a" * 32, post=posts_on(1, 4, "leak"))
    b_post = posts_on(2, 4, "again")
    t.burst(a, T0 + 2 * SEC, 40, 6 * SEC)
    for i in range(30):  # other content, none near the leak
        other = t.upload(T0 + 5 * MIN + i * 20 * SEC, pdq=pdq_hex(rng), md5=f"{i:032x}")
        t.burst(other, T0 + 5 * MIN + i * 20 * SEC + SEC, 4, 30 * SEC)
    b = t.upload(T0 + 20 * MIN, pdq=flip(original, 20, rng), md5="b" * 32, post=b_post)
    t.burst(b, T0 + 20 * MIN + 2 * SEC, 60, 4 * SEC)
    lines = sorted(t.lines(), key=lambda x: orjson.loads(x)["ts"])
    bank = bank_line("add", "internal", original, T0 + 23 * MIN)
    at = next(i for i, x in enumerate(lines) if orjson.loads(x)["ts"] >= T0 + 23 * MIN)
    return [*lines[:at], bank, *lines[at:]], a, b


@pytest.mark.parametrize(
    ("seed", "restarts", "local_peers"),
    [(0, 1, False), (1, 1, False), (2, 1, False), (3, 2, True), (5, 1, True), (4, 2, True)],
)
def test_near_duplicates_routed_by_other_partitions_and_after_a_restart_join_one_cluster(
    seed: int, restarts: int, local_peers: bool
) -> None:
    """The index of unbanked content has one owner (resolve partition 0), whose log keeps
    it: a near-duplicate routed by another partition, after the process was replaced, still
    joins the leak's cluster, and banking it gives replay's alerts (ids carry the cluster).

    (Seeds 0 and 1 with one restart once ended with a watermark short of the end: a new
    reader did not know the event times read before the last commit. Fixed by committing
    them with the offsets, see SourceClock.resume.)"""
    lines, _, _ = two_workers_leak(random.Random(seed))
    pipe = fed(lines)
    assert pipe.router.emerging.joined == 1
    expected = sorted(a.to_json() for a in pipe.finish().alerts if a.ts_ms <= pipe.max_ts_ms)
    leak_cluster = unbanked_cluster_id(Content(md5="a" * 32))
    assert expected and {orjson.loads(a)["cluster_id"] for a in expected} == {leak_cluster}
    run = streamed(lines, partitions=4, seed=seed, restarts=restarts, local_peers=local_peers)
    assert sum(run.stats.events.values()) == len(lines) - 1  # every event applied
    assert_replay_alert_records(list(run.alerts.values()), expected)
    assert run.stats.late == 0 and run.stats.emerging == 1


def test_the_index_owner_waits_for_its_peers_and_its_log_gives_the_index_back() -> None:
    """Partition 0 holds the index: an unbanked upload routed elsewhere comes to it (with the
    sender's progress and input watermark); its own progress is at most the input watermark
    heard from each peer, so no clusters partition passes an upload still on its way to it;
    folding its log gives the same index."""
    owner, other = resolver_of(0), resolver_of(1)
    post = posts_on(1, 2, "x")
    up = {"event_id": "e1", "type": "upload", "ts": T0, "post_id": post, "user_id": "u"}
    up["content"] = {"pdq": "f" * 64, "pdq_quality": 90}
    share = {"event_id": "e2", "type": "share", "ts": T0 + SEC, "post_id": "s1"}
    share |= {"parent_post_id": post, "user_id": "v"}
    env = Envelope([ToRoute(parse_ok(up)), ToRoute(parse_ok(share))], {0: (T0 + MIN, False)})
    sent = other.handle([env])
    assert not sent.clusters[0] and not sent.clusters[1] and other.held == 1  # waits
    [batch] = merge_resolved([sent])[1][0].items  # compiled (an ``EvBatch``)
    [ask] = records([batch])
    assert isinstance(ask, Unbanked) and ask.event.post_id == post
    mine = owner.handle([Envelope([], {0: (T0 + 2 * MIN, False)})])
    assert owner.progress < T0  # it has not heard from partition 1 yet
    answer = owner.handle([merge_resolved([sent])[1][0]])
    [routed] = [x for k in answer.clusters for x in records(k)]
    assert routed.cluster_id == unbanked_cluster_id(Content(pdq="f" * 64, pdq_quality=90))
    # not its peer's progress (held by the reshare): its input watermark, heard with the
    # upload: what it sends comes after it
    assert other.progress == T0 + SEC - 1 and owner.progress == T0 + MIN
    back = other.handle([merge_resolved([answer])[1][1]])
    assert [x.event.event_id for k in back.clusters for x in records(k)] == [
        "e2"
    ] and other.held == 0
    again = resolver_of(0)
    again.restore([d for d in (mine.delta, answer.delta) if d is not None])
    near = {"pdq": "f" * 60 + "0" * 4, "pdq_quality": 90}
    assert again.index is not None and again.index.assign(Content(**near), T0 + 3 * MIN) == (
        routed.cluster_id
    )
    assert again.peers == owner.peers  # what it heard comes back too
    snap = resolver_of(0)
    snap.restore(owner.snapshot())
    assert snap.index is not None and snap.index.snapshot() == owner.index.snapshot()  # type: ignore[union-attr]


def test_the_index_owner_clusters_on_its_peers_input_watermark_not_their_held_progress() -> None:
    """Reshares waiting for unbanked uploads' clusters hold their partition's progress back
    to just before them. Were the owner to wait for that progress, it would cluster one
    upload per round trip (cluster, register, release, progress) and event time would fall
    behind a busy stream, one short step at a time (a worker reading a backlog had its
    watermark half an hour behind what it had read). It waits for the partitions' input
    watermark instead: an upload before it still to come would be late anyway."""
    owner, other = resolver_of(0), resolver_of(1)
    items = []
    for i in range(3):  # an upload, and a reshare of it a second later, every 10 s
        post = posts_on(1, 2, f"u{i}")
        up = {"event_id": f"e{i}", "type": "upload", "ts": T0 + i * 10 * SEC, "post_id": post}
        up |= {"user_id": "u", "content": {"md5": f"{i:032x}"}}
        share = {"event_id": f"s{i}", "type": "share", "ts": T0 + i * 10 * SEC + SEC}
        share |= {"post_id": f"r{i}", "parent_post_id": post, "user_id": "v"}
        items += [ToRoute(parse_ok(up)), ToRoute(parse_ok(share))]
    sent = other.handle([Envelope(items, {0: (T0 + MIN, False)})])
    assert other.held == 3 and other.progress < T0 + SEC  # held back by the first reshare
    to_owner = merge_resolved([sent])[1][0]
    assert to_owner.inputs == {1: T0 + MIN}
    owner.handle([Envelope([], {0: (T0 + MIN, False)})])
    answer = owner.handle([to_owner])
    clustered = sorted(x.event.event_id for k in answer.clusters for x in records(k))
    assert clustered == ["e0", "e1", "e2"]  # all three in one round, not one
    back = other.handle([merge_resolved([answer])[1][1]])
    assert sorted(x.event.event_id for k in back.clusters for x in records(k)) == ["s0", "s1", "s2"]
    assert other.held == 0 and other.progress == T0 + MIN


def test_the_index_owner_s_progress_never_passes_an_upload_it_has_not_clustered() -> None:
    """A worker that takes the owner over knows its peers' progress (its log keeps it) but
    not their input watermarks, until they send them again (at the latest with the next
    reminder). Meanwhile it clusters nothing, and its progress must stay before the
    uploads it holds: their clusters and registrations go out before the progress that
    covers them, or a clusters partition would apply the reshares without them (a
    retroactive alert on Kafka once counted two roots of three)."""
    owner, other = resolver_of(0), resolver_of(1)
    post = posts_on(1, 2, "late-owner")
    up = {"event_id": "e1", "type": "upload", "ts": T0, "post_id": post, "user_id": "u"}
    up["content"] = {"md5": "c" * 32}
    sent = other.handle([Envelope([ToRoute(parse_ok(up))], {0: (T0 + MIN, False)})])
    to_owner = merge_resolved([sent])[1][0]
    heard_once = Envelope(to_owner.items, progress=to_owner.progress)  # no input watermark
    owner.handle([Envelope([], {0: (T0 + MIN, False)})])
    waiting = owner.handle([heard_once])
    assert not [x for k in waiting.clusters for x in records(k)]  # not clustered: inputs unknown
    assert owner.progress < T0  # and not passed either
    again = owner.handle([Envelope([], inputs={1: T0 + MIN})])
    assert [x.event.event_id for k in again.clusters for x in records(k)] == ["e1"]
    assert owner.progress == T0 + MIN


def test_orphans_waiting_at_a_peer_stop_holding_progress_in_one_exchange_with_the_owner() -> None:
    """Reshares whose parents never come wait at their partition until every other has
    progressed past them. The index's owner's progress was its peers' at most, so a peer
    waiting for the owner's waited for its own, held by the first of the reshares: each
    exchange let one reshare go (a chain of five took five round trips, each a hop between
    workers; the clusters' watermark follows). The owner's progress is bounded by its
    peers' input watermarks (every upload it could still be sent is after them): one
    exchange lets them all go, and nothing the owner sends later is for a post before it."""
    owner, other = resolver_of(0), resolver_of(1)
    items = []
    for i in range(5):  # five reshares of posts no partition ever sees, a second apart
        share = {"event_id": f"s{i}", "type": "share", "ts": T0 + (i + 1) * SEC}
        share |= {"post_id": f"r{i}", "parent_post_id": posts_on(1, 2, f"gone{i}-")}
        items.append(ToRoute(parse_ok(share | {"user_id": "v"})))
    sent = other.handle([Envelope(items, {0: (T0 + MIN, False)})])
    assert other.held == 5 and other.progress == T0 + SEC - 1
    owner.handle([Envelope([], {0: (T0 + MIN, False)})])
    exchanges = 0
    while other.progress < T0 + MIN and exchanges < 10:
        exchanges += 1
        answer = owner.handle([merge_resolved([sent])[1][0]])
        sent = other.handle([merge_resolved([answer])[1][1]])
    assert exchanges == 1 and other.progress == T0 + MIN
    assert owner.progress == T0 + MIN  # its peer's input watermark, not its held progress
    assert other.held == 5  # still held (they expire with the hold), holding nothing back


def resolver_of(partition: int) -> ResolvePartition:
    return ResolvePartition(
        partition,
        partitions=2,
        sources=1,
        banks=HashBanks(),
        stats=Stats(),
        lateness_ms=0,
        hold_ms=600_000,
        max_held=100,
    )


def parse_ok(d: dict[str, object]) -> ShareEvent:
    ev = parse_event(orjson.dumps(d))
    assert isinstance(ev, ShareEvent)
    return ev


def video(rng: random.Random, frames: int = 12) -> list[str]:
    return [f"{pdq_hex(rng)},100,{i}.0" for i in range(frames)]


@pytest.mark.parametrize(("seed", "restarts"), [(2, 0), (3, 1)])
def test_near_duplicate_videos_of_unbanked_content_join_one_cluster(
    seed: int, restarts: int
) -> None:
    """A leaked video re-uploaded re-encoded (every frame 10 bits off, two frames dropped)
    by a post on another resolve partition joins the first upload's cluster, by vPDQ's rule
    (a bank's defaults), in replay and in the streaming topology, a restart or not; an
    unrelated video does not."""
    rng = random.Random(seed)
    t = Traffic(rng)
    frames = video(rng)
    again = [f"{flip(f.split(',')[0], 10, rng)},100,{i}.0" for i, f in enumerate(frames[2:])]
    a = t.upload(T0, vpdq=frames, post=posts_on(1, 4, "v"))
    t.burst(a, T0 + SEC, 20, 5 * SEC)
    for i in range(20):  # other content between them
        other = t.upload(T0 + 2 * MIN + i * 10 * SEC, vpdq=video(rng, 4))
        t.burst(other, T0 + 2 * MIN + i * 10 * SEC + SEC, 3, 20 * SEC)
    b = t.upload(T0 + 10 * MIN, vpdq=again, post=posts_on(2, 4, "w"))
    t.burst(b, T0 + 10 * MIN + SEC, 20, 5 * SEC)
    lines = sorted(t.lines(), key=lambda x: orjson.loads(x)["ts"])
    pipe = replay(lines)
    assert pipe.router.emerging.joined == 1 and pipe.stats.clusters_created == 21
    run = streamed(lines, partitions=4, seed=seed, restarts=restarts, predictor_factory=None)
    assert sum(run.stats.events.values()) == len(lines)  # every event applied
    assert run.stats.clusters_created == 21


def out_of_order_leak(rng: random.Random) -> tuple[list[bytes], str, str]:
    """A leak whose near-duplicate (an edit, 20 bits off) was uploaded 20 s *before* it but
    comes *after* it in the input, the two lines side by side (one ``shares`` partition, as a
    producer batching them sends them), each reshared; the original banked (timed) while
    both spread. Returns the lines and the two uploads' contents' cluster ids."""
    t = Traffic(rng)
    original = pdq_hex(rng)
    a = t.upload(T0 + 20 * SEC, pdq=original, md5="a" * 32, post="orig")
    b = t.upload(T0, pdq=flip(original, 20, rng), md5="b" * 32, post="edit")
    first, rest = t.lines(), []
    t.events.clear()
    t.burst(b, T0 + 2 * SEC, 40, 3 * SEC)
    t.burst(a, T0 + 22 * SEC, 40, 3 * SEC)
    for i in range(6):  # other content, none near the leak
        other = t.upload(T0 + i * 30 * SEC, pdq=pdq_hex(rng), md5=f"{i:032x}")
        t.burst(other, T0 + i * 30 * SEC + SEC, 3, 20 * SEC)
    rest = sorted(t.lines(), key=lambda x: orjson.loads(x)["ts"])
    bank = bank_line("add", "internal", original, T0 + 2 * MIN)
    at = next(i for i, x in enumerate(rest) if orjson.loads(x)["ts"] >= T0 + 2 * MIN)
    lines = [*first, *rest[:at], bank, *rest[at:]]
    ids = (unbanked_cluster_id(Content(md5=m * 32)) for m in "ab")
    return lines, *ids  # type: ignore[return-value]


@pytest.mark.parametrize(("seed", "partitions"), [(0, 4), (1, 4), (2, 3), (3, 4), (4, 2)])
def test_near_duplicates_out_of_order_in_one_partition_cluster_as_replay_clusters_them(
    seed: int, partitions: int
) -> None:
    """Replay and the stream cluster unbanked uploads in event-time order once their
    watermark has passed them, so out-of-order near-duplicates within the allowed lateness
    form the same cluster, started by the earlier upload, whatever the read order: the same
    review queue, and after the bank add the same alert ids (ids carry the cluster)."""
    lines, orig_cluster, edit_cluster = out_of_order_leak(random.Random(seed))
    pipe = fed(lines)
    decisions = pipe.finish()
    expected = sorted(a.to_json() for a in decisions.alerts if a.ts_ms <= pipe.max_ts_ms)
    # the edit came first in event time: it starts the cluster, the original joins it
    assert {orjson.loads(a)["cluster_id"] for a in expected} == {edit_cluster} != {orig_cluster}
    assert pipe.router.emerging.joined == 1 and pipe.stats.late == 0
    queue = [(s.cluster_id, s.size, s.first_seen_ms) for s in pipe.detector.emerging]
    assert [q[0] for q in queue] == [edit_cluster]
    run = streamed(lines, partitions=partitions, seed=seed)
    assert sum(run.stats.events.values()) == len(lines) - 1  # every event applied
    assert_replay_alert_records(list(run.alerts.values()), expected)
    assert run.topology is not None
    stream_queue = [
        (s.cluster_id, s.size, s.first_seen_ms)
        for d in run.topology.detectors.values()
        for s in d.detector.emerging
    ]
    assert stream_queue == queue and run.stats.late == 0
