"""The simulator: deterministic, parseable, and what it says it planted is in the lines.

Every property is recomputed from the generated lines (parsed with the real
parser), not read back from the simulator's own bookkeeping, so a bug in the
``truth`` it reports shows up as a mismatch.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streams.banks import BankEntry, HashBanks, hamming, load_bank_csv
from streams.events import Rejection, ShareEvent, parse_event
from streams.simulate import (
    MALFORMED_KINDS,
    MINUTE_MS,
    Scenario,
    Simulation,
    iter_lines,
    peak_count,
    scenario_bank,
    severity_for,
    simulate,
    three_cascades,
    write_scenario,
    write_simulation,
)

FIVE_MIN = 5 * MINUTE_MS
FIFTEEN_MIN = 15 * MINUTE_MS


@dataclass
class Parsed:
    """The lines of a run, parsed the way the pipeline parses them."""

    events: list[tuple[int, ShareEvent]] = field(default_factory=list)  # first deliveries
    rejects: Counter[str] = field(default_factory=Counter)
    redelivered: int = 0
    posts: dict[str, ShareEvent] = field(default_factory=dict)
    children: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    first_line: dict[str, int] = field(default_factory=dict)  # post id -> line of its creation

    def subtree(self, roots: list[str]) -> list[ShareEvent]:
        out, stack = [], list(roots)
        while stack:
            pid = stack.pop()
            out.append(self.posts[pid])
            stack.extend(self.children.get(pid, ()))
        return out


def parse_all(sim: Simulation) -> Parsed:
    p = Parsed()
    seen: set[str] = set()
    for i, line in enumerate(sim.lines):
        ev = parse_event(line)
        if isinstance(ev, Rejection):
            p.rejects[ev.reason] += 1
            continue
        if ev.event_id in seen:
            p.redelivered += 1
            continue
        seen.add(ev.event_id)
        p.events.append((i, ev))
        if ev.type != "takedown":
            assert ev.post_id not in p.posts, f"post {ev.post_id} created twice"
            p.posts[ev.post_id] = ev
            p.first_line[ev.post_id] = i
            if ev.parent_post_id is not None:
                p.children[ev.parent_post_id].append(ev.post_id)
    return p


def root_of(p: Parsed, post_id: str) -> str | None:
    """The upload a post descends from; None for orphans and cycles."""
    seen = set()
    while True:
        ev = p.posts.get(post_id)
        if ev is None or post_id in seen:
            return None
        if ev.type == "upload":
            return post_id
        seen.add(post_id)
        assert ev.parent_post_id is not None
        post_id = ev.parent_post_id


def cascade_roots(p: Parsed, c: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Uploads carrying a planted cascade's content: exact copies, near-identical ones."""
    exact, near = [], []
    for pid, ev in p.posts.items():
        if ev.type != "upload" or ev.content is None:
            continue
        if ev.content.md5 == c["md5"]:
            assert ev.content.pdq == c["pdq"], "an exact copy carries both hashes"
            exact.append(pid)
        elif ev.content.pdq is not None and hamming(ev.content.pdq, c["pdq"]) <= 31:
            near.append(pid)
    return exact, near


def share_times(events: list[ShareEvent]) -> list[int]:
    return sorted(e.ts_ms for e in events if e.type == "share")


@pytest.fixture(scope="module")
def default() -> Simulation:
    return simulate(Scenario())


@pytest.fixture(scope="module")
def default_parsed(default: Simulation) -> Parsed:
    return parse_all(default)


@pytest.fixture(scope="module")
def three() -> Simulation:
    return three_cascades(seed=7)


@pytest.fixture(scope="module")
def three_parsed(three: Simulation) -> Parsed:
    return parse_all(three)


# ----- determinism ------------------------------------------------------------------


def test_same_scenario_gives_identical_bytes(default: Simulation) -> None:
    again = simulate(Scenario())
    assert again.lines == default.lines
    assert again.bank == default.bank
    assert json.dumps(again.truth, sort_keys=True) == json.dumps(default.truth, sort_keys=True)
    assert three_cascades(seed=7).lines == three_cascades(seed=7).lines


def test_different_seed_gives_different_traffic(three: Simulation) -> None:
    other = three_cascades(seed=8)
    assert other.lines != three.lines
    assert len(set(other.lines) & set(three.lines)) == 0
    assert {e.signal for e in other.bank}.isdisjoint({e.signal for e in three.bank})


def test_iter_lines_and_write_scenario_match_simulate(tmp_path: Path) -> None:
    sc = Scenario(seed=3, minutes=8, background_per_minute=40, quiet_banked=2)
    sim = simulate(sc)
    truth: dict[str, Any] = {}
    assert list(iter_lines(sc, truth)) == sim.lines
    assert truth == sim.truth
    write_simulation(sim, tmp_path / "a.jsonl", tmp_path / "a.csv")
    streamed = write_scenario(sc, tmp_path / "b.jsonl", tmp_path / "b.csv")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert streamed == sim.truth
    assert scenario_bank(sc) == sim.bank
    assert (tmp_path / "a.jsonl").read_bytes().count(b"\n") == len(sim.lines)


def test_truth_is_json(default: Simulation) -> None:
    assert json.loads(json.dumps(default.truth))["lines"] == len(default.lines)


# ----- size and bad input -----------------------------------------------------------


def test_default_scale_is_a_realistic_half_hour(default: Simulation) -> None:
    t = default.truth
    assert 20_000 <= len(default.lines) <= 60_000
    assert t["events"]["share"] > t["events"]["upload"] > t["events"]["takedown"] > 0
    assert sum(t["events"].values()) + t["duplicates"] + sum(t["malformed"].values()) == len(
        default.lines
    )


def test_every_line_parses_but_the_planted_malformed(
    default: Simulation, default_parsed: Parsed
) -> None:
    t = default.truth
    assert dict(default_parsed.rejects) == t["malformed"]
    assert set(t["malformed"]) == set(MALFORMED_KINDS)
    assert all(n == 2 for n in t["malformed"].values())
    assert default_parsed.redelivered == t["duplicates"] > 0
    kinds = Counter(ev.type for _, ev in default_parsed.events)
    assert dict(kinds) == t["events"]


def test_timestamps_mix_epoch_ms_and_rfc3339_with_offsets(default: Simulation) -> None:
    forms: Counter[str] = Counter()
    for line in default.lines[:3000]:
        try:
            ts = json.loads(line)["ts"]
        except (ValueError, KeyError):
            continue
        if isinstance(ts, int):
            forms["ms"] += 1
        elif ts.endswith("Z"):
            forms["utc"] += 1
        elif ts[-6] in "+-":
            forms["offset"] += 1
    assert forms["ms"] > forms["utc"] > forms["offset"] > 10


def test_every_share_follows_its_parent_in_event_time(default_parsed: Parsed) -> None:
    p = default_parsed
    checked = 0
    for pid, ev in p.posts.items():
        parent = p.posts.get(ev.parent_post_id or "")
        if ev.type == "share" and parent is not None and root_of(p, pid) is not None:
            assert ev.ts_ms > parent.ts_ms
            checked += 1
    assert checked > 15_000


def test_orphans_and_cycles_are_there(default: Simulation, default_parsed: Parsed) -> None:
    p = default_parsed
    unrooted = [pid for pid in p.posts if root_of(p, pid) is None]
    orphans = [pid for pid in unrooted if p.posts[pid].parent_post_id not in p.posts]
    assert len(orphans) == default.truth["orphans"] == 3
    assert len(unrooted) - len(orphans) == 2 * default.truth["cycles"] == 2


def test_late_events_and_reshares_before_their_parent(
    default: Simulation, default_parsed: Parsed
) -> None:
    t, p = default.truth, default_parsed
    before_parent = sum(
        1
        for pid, ev in p.posts.items()
        if ev.type == "share"
        and root_of(p, pid) is not None
        and p.first_line[pid] < p.first_line[ev.parent_post_id or ""]
    )
    assert before_parent == t["shares_before_parent"] > 20
    # How far behind the newest event time so far each line is.
    newest, behind = 0, []
    for _, ev in p.events:
        behind.append(newest - ev.ts_ms)
        newest = max(newest, ev.ts_ms)
    assert sum(b >= 30_000 for b in behind) > 0.5 * t["late"] > 50
    assert max(behind) < 25 * MINUTE_MS + 1
    # Only the planted very late events are more than a late event's 150 s
    # (plus a redelivery's 60 s) behind.
    assert sum(b > 210_000 for b in behind) <= t["very_late"] == 2


def test_takedowns_name_real_posts_and_stop_their_reshares(default_parsed: Parsed) -> None:
    p = default_parsed
    removed = {ev.post_id: ev.ts_ms for _, ev in p.events if ev.type == "takedown"}
    assert len(removed) > 100
    assert all(pid in p.posts and p.posts[pid].ts_ms <= ts for pid, ts in removed.items())
    for pid, ts in removed.items():
        assert all(p.posts[c].ts_ms < ts for c in p.children.get(pid, ()))


def test_pdq_quality_mostly_usable_some_not(default_parsed: Parsed) -> None:
    q = [
        ev.content.pdq_quality
        for _, ev in default_parsed.events
        if ev.content is not None and ev.content.pdq_quality is not None
    ]
    low = sum(x < 50 for x in q) / len(q)
    assert 0.03 < low < 0.2


# ----- the bank and the planted cascades ------------------------------------------


def test_bank_csv_round_trips(default: Simulation, tmp_path: Path) -> None:
    write_simulation(default, tmp_path / "e.jsonl", tmp_path / "bank.csv")
    text = (tmp_path / "bank.csv").read_text()
    assert text.splitlines()[0] == "signal_type,signal,bank,label"
    assert load_bank_csv(tmp_path / "bank.csv") == default.bank
    assert len(default.bank) == len({(e.bank, e.signal) for e in default.bank})
    banked = [c for c in default.truth["cascades"] if c["banked"]]
    for c in banked:
        entry = BankEntry(**c["entry"])
        assert entry in default.bank
        assert entry.cluster_id == c["cluster_id"]
    assert {e.signal_type for e in default.bank} == {"pdq", "md5"}


def test_bank_matches_exactly_the_planted_banked_content(
    default: Simulation, default_parsed: Parsed
) -> None:
    banks = HashBanks()
    for e in default.bank:
        banks.add(e)
    by_cluster = {c["cluster_id"]: c for c in default.truth["cascades"] if c["banked"]}
    matched: Counter[str] = Counter()
    for _, ev in default_parsed.events:
        if ev.type != "upload" or ev.content is None:
            continue
        m = banks.match(ev.content)
        if m is None:
            continue
        c = by_cluster[m.entry.cluster_id]  # nothing but planted banked content matches
        matched[c["name"]] += 1
        if ev.post_id in c["root_post_ids"]:
            assert m.distance == 0
        else:
            near = {n["post_id"]: n for n in c["near_duplicates"]}[ev.post_id]
            assert m.distance == near["bits"] <= 24
    assert set(matched) == {c["name"] for c in by_cluster.values()}


def test_planted_peaks_recomputed_from_the_lines(
    default: Simulation, default_parsed: Parsed
) -> None:
    p = default_parsed
    for c in default.truth["cascades"]:
        exact, near = cascade_roots(p, c)
        assert sorted(exact) == sorted(c["root_post_ids"])
        assert sorted(near) == sorted(n["post_id"] for n in c["near_duplicates"])
        ex = share_times(p.subtree(exact))
        every = share_times(p.subtree(exact + near))
        assert len(every) == c["shares"]
        assert peak_count(ex, FIVE_MIN) == c["peak_shares_5m_exact"]
        assert peak_count(ex, FIFTEEN_MIN) == c["peak_shares_15m_exact"]
        assert peak_count(every, FIVE_MIN) == c["peak_shares_5m"]
        assert peak_count(every, FIFTEEN_MIN) == c["peak_shares_15m"]
        want = severity_for(c["peak_shares_5m_exact"], c["peak_shares_15m_exact"])
        assert c["expected_severity"] == (want if c["banked"] else None)


def test_default_plants_every_severity_with_margins(default: Simulation) -> None:
    cascades = default.truth["cascades"]
    kinds = Counter(c["kind"] for c in cascades)
    assert kinds == {
        "critical": 1,
        "high": 2,
        "warning": 3,
        "slow": 1,
        "unbanked": 2,
        "quiet": 20,
    }
    for c in cascades:
        assert c["severity_robust"], c["name"]
        if c["kind"] in ("critical", "high", "warning"):
            assert c["expected_severity"] == c["kind"]
        else:
            assert c["expected_severity"] is None
        if c["kind"] == "critical":
            assert c["peak_shares_15m_exact"] > 500
            assert c["depth"] >= 8  # a deep reshare tree, not a star
        if c["kind"] in ("high", "unbanked"):
            assert c["peak_shares_5m_exact"] > 100
        if c["kind"] == "warning":
            assert c["peak_shares_5m_exact"] > 25 and c["peak_posts_5m"] < 100
        if c["kind"] in ("slow", "quiet"):
            assert c["peak_posts_5m"] < 25
    # One fast banked cascade is banked by MD5 (its PDQ too flat to use), the rest by PDQ.
    md5 = [c for c in cascades if c["banked"] and c["entry"]["signal_type"] == "md5"]
    assert len(md5) == 1 and md5[0]["kind"] in ("critical", "high", "warning")
    assert md5[0]["pdq_quality"] < 50 and md5[0]["near_duplicates"] == []


def test_unbanked_content_is_far_from_every_banked_pdq(default: Simulation) -> None:
    bank_pdqs = [e.signal for e in default.bank if e.signal_type == "pdq"]
    signals = {e.signal for e in default.bank}
    for c in default.truth["cascades"]:
        if c["banked"]:
            continue
        assert c["md5"] not in signals and c["pdq"] not in signals
        for pdq in [c["pdq"]] + [n["pdq"] for n in c["near_duplicates"]]:
            assert min(hamming(pdq, b) for b in bank_pdqs) > 60


def test_background_never_matches_the_bank(default: Simulation, default_parsed: Parsed) -> None:
    bank_pdqs = [int(e.signal, 16) for e in default.bank if e.signal_type == "pdq"]
    bank_md5 = {e.signal for e in default.bank if e.signal_type == "md5"}
    planted = {pid for c in default.truth["cascades"] for pid in c["root_post_ids"]}
    planted |= {n["post_id"] for c in default.truth["cascades"] for n in c["near_duplicates"]}
    uploads = [
        ev
        for _, ev in default_parsed.events
        if ev.type == "upload" and ev.post_id not in planted and ev.content is not None
    ]
    assert len(uploads) > 5_000
    for ev in uploads[::5]:
        assert ev.content is not None and ev.content.pdq is not None
        q = int(ev.content.pdq, 16)
        assert min((q ^ b).bit_count() for b in bank_pdqs) > 31
        assert ev.content.md5 not in bank_md5


# ----- realism ------------------------------------------------------------------------


def test_cascade_sizes_are_heavy_tailed(default: Simulation, default_parsed: Parsed) -> None:
    p = default_parsed
    sizes: Counter[str] = Counter()
    for pid in p.posts:
        root = root_of(p, pid)
        if root is not None:
            sizes[root] += 1
    counts = sorted(sizes.values(), reverse=True)
    n, total = len(counts), sum(counts)
    assert n > 5_000
    assert sum(s == 1 for s in counts) > 0.5 * n  # most uploads are never reshared
    assert counts[0] >= 400 and sum(s >= 100 for s in counts) >= 10
    # The top 1% of cascades hold a fifth of all posts or more.
    assert sum(counts[: n // 100]) > 0.2 * total
    # The simulator's own record of background sizes agrees in shape.
    bg = dict((s, k) for s, k in default.truth["background"]["sizes"])
    assert sum(bg.values()) == default.truth["background"]["cascades"]
    assert bg[1] > 0.5 * sum(bg.values())


def test_some_users_reshare_a_lot_and_followers_are_heavy_tailed(
    default_parsed: Parsed,
) -> None:
    activity = Counter(ev.user_id for _, ev in default_parsed.events if ev.type == "share")
    per_user = sorted(activity.values(), reverse=True)
    assert per_user[0] > 50 * per_user[len(per_user) // 2]
    followers = sorted(ev.followers for _, ev in default_parsed.events if ev.followers is not None)
    median, top = followers[len(followers) // 2], followers[int(len(followers) * 0.999)]
    assert 30 < median < 300 and top > 50 * median
    # Followers are optional in the input; some events leave them out.
    assert sum(ev.followers is None and ev.type == "share" for _, ev in default_parsed.events)


# ----- the acceptance run ---------------------------------------------------------------


def test_three_cascades_has_one_of_each(three: Simulation, three_parsed: Parsed) -> None:
    t = three.truth
    assert t["fast_banked"] == ["high-1"]
    assert t["fast_unbanked"] == ["unbanked-1"]
    assert t["slow_banked"] == ["slow-1"]
    assert dict(three_parsed.rejects) == t["malformed"]
    assert t["shares_before_parent"] > 0 and t["late"] > 0
    by_name = {c["name"]: c for c in t["cascades"]}
    p = three_parsed
    fast, slow, unbanked = by_name["high-1"], by_name["slow-1"], by_name["unbanked-1"]
    exact, _ = cascade_roots(p, fast)
    assert peak_count(share_times(p.subtree(exact)), FIVE_MIN) > 100
    exact, near = cascade_roots(p, unbanked)
    assert peak_count(share_times(p.subtree(exact)), FIVE_MIN) > 100
    # The slow cascade stays under 25 in every 5 minutes, even counting uploads
    # and near-identical copies, for the whole run.
    exact, near = cascade_roots(p, slow)
    posts = sorted(e.ts_ms for e in p.subtree(exact + near))
    assert peak_count(posts, FIVE_MIN) < 25
    assert posts[-1] - posts[0] > 25 * MINUTE_MS
    banked_signals = {e.signal for e in three.bank}
    assert fast["entry"]["signal"] in banked_signals and slow["entry"]["signal"] in banked_signals
    assert unbanked["pdq"] not in banked_signals and unbanked["md5"] not in banked_signals


@pytest.mark.parametrize("seed", range(6))
def test_three_cascades_margins_hold_for_any_seed(seed: int) -> None:
    cascades = three_cascades(seed=seed).truth["cascades"]
    assert [(c["kind"], c["expected_severity"]) for c in cascades] == [
        ("high", "high"),
        ("slow", None),
        ("unbanked", None),
    ]
    assert all(c["severity_robust"] for c in cascades)
    assert cascades[2]["peak_shares_5m_exact"] > 100


def test_scale_multiplies_the_mix() -> None:
    small = Scenario(seed=1, minutes=6, background_per_minute=50, quiet_banked=4)
    big = Scenario(**{**small.__dict__, "scale": 3.0})
    a, b = simulate(small), simulate(big)
    assert 2.2 < len(b.lines) / len(a.lines) < 4
    assert len(b.truth["cascades"]) == 3 * len(a.truth["cascades"])
    assert sum(b.truth["malformed"].values()) == 3 * sum(a.truth["malformed"].values())


@pytest.mark.parametrize(
    "bad",
    [
        {"minutes": 0},
        {"scale": 0},
        {"background_r": 1.0},
        {"late_fraction": 1.5},
        {"quiet_banked": -1},
        {"start_ms": 1_700_000_000},
        {"md5_banked": 9},
    ],
)
def test_scenario_refuses_bad_knobs(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Scenario(**bad)
