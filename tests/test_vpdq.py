"""vPDQ signals, the video bank's exact indexed search, and video uploads in events."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest
from eventgen import flip, pdq_hex
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.banks import BankConfig, BankEntry, HashBanks, brute_force_match
from streams.events import REJECT_REASONS, Content, Rejection, ShareEvent, parse_event
from streams.router import Router, low_quality
from streams.stats import Stats
from streams.videobank import VideoBank, brute_force_frame, brute_force_videos
from streams.vpdq import (
    REASONS,
    VideoScore,
    VpdqError,
    VpdqFrame,
    canonical_vpdq,
    compare,
    format_vpdq,
    parse_vpdq,
    usable_hashes,
)


def video(hashes: list[str], quality: int = 100) -> tuple[VpdqFrame, ...]:
    return tuple(VpdqFrame(h, quality, float(i)) for i, h in enumerate(hashes))


# ---------------------------------------------------------------- the text form


def test_text_form_is_python_threatexchanges_to_the_byte() -> None:
    """json.dumps of f"{hex},{quality},{timestamp:.3}" strings, as vpdq_util.vpdq_to_json."""
    h = "a1" * 32
    frames = [VpdqFrame(h, 100, 0.0), VpdqFrame(h, 87, 1.0), VpdqFrame(h, 3, 123.4)]
    expected = f'["{h},100,0.0", "{h},87,1.0", "{h},3,1.23e+02"]'
    assert format_vpdq(frames) == expected
    assert parse_vpdq(expected) == (*frames[:2], VpdqFrame(h, 3, 123.0))
    assert format_vpdq(parse_vpdq(expected)) == expected  # the canonical text is a fixed point


def test_canonical_text_lowercases_and_reformats() -> None:
    h = "AB" * 32
    text = json.dumps([f"{h}, 90 ,0.0334"], separators=(",", ":"))
    assert canonical_vpdq(text) == f'["{h.lower()},90,0.0334"]'
    # the same frames as a list give the same text
    assert canonical_vpdq([f"{h},90,0.0334"]) == canonical_vpdq(text)


@pytest.mark.parametrize(
    ("signal", "reason"),
    [
        ("not json", "bad_vpdq"),
        ('{"0": {"quality": 100}}', "bad_vpdq"),
        ("[1]", "bad_vpdq"),
        ('["' + "a" * 64 + ',100"]', "bad_vpdq"),
        ('["' + "a" * 64 + ',100,1.0,x"]', "bad_vpdq"),
        ('["' + "a" * 63 + ',100,1.0"]', "bad_vpdq_hash"),
        ('["' + "g" * 64 + ',100,1.0"]', "bad_vpdq_hash"),
        ('["' + "a" * 64 + ',101,1.0"]', "bad_vpdq_quality"),
        ('["' + "a" * 64 + ',-1,1.0"]', "bad_vpdq_quality"),
        ('["' + "a" * 64 + ',9.5,1.0"]', "bad_vpdq_quality"),
        ('["' + "a" * 64 + ',50,x"]', "bad_vpdq_timestamp"),
        ('["' + "a" * 64 + ',50,-1"]', "bad_vpdq_timestamp"),
        ('["' + "a" * 64 + ',50,nan"]', "bad_vpdq_timestamp"),
        ('["' + "a" * 64 + ',50,inf"]', "bad_vpdq_timestamp"),
        ("[]", "vpdq_empty"),
    ],
)
def test_each_malformation_has_its_reason(signal: str, reason: str) -> None:
    with pytest.raises(VpdqError) as caught:
        parse_vpdq(signal)
    assert caught.value.reason == reason
    assert reason in REASONS


def test_a_signal_over_the_frame_limit_is_refused() -> None:
    frames = ["a" * 64 + f",100,{i}.0" for i in range(11)]
    assert len(parse_vpdq(frames, max_frames=11)) == 11
    with pytest.raises(VpdqError) as caught:
        parse_vpdq(frames, max_frames=10)
    assert caught.value.reason == "vpdq_too_long"


def test_usable_hashes_filter_quality_then_drop_repeats() -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    frames = [VpdqFrame(a, 49, 0), VpdqFrame(b, 50, 1), VpdqFrame(b, 90, 2), VpdqFrame(a, 60, 3)]
    frames.append(VpdqFrame(c, 100, 4))
    assert usable_hashes(frames) == [b, a, c]


def test_compare_follows_the_readme_pseudocode() -> None:
    rng = random.Random(1)
    q = [pdq_hex(rng) for _ in range(10)]
    # the banked video holds 8 of the query's frames (a few bits off) and 12 others
    banked = [flip(h, 10, rng) for h in q[:8]] + [pdq_hex(rng) for _ in range(12)]
    s = compare(q, banked, 31)
    assert s == VideoScore(80.0, 40.0, 10, 20)
    assert s.passes(80.0, 0.0) and not s.passes(80.1, 0.0) and not s.passes(80.0, 41.0)
    assert compare(q, banked, 9).query_match_pct == 0.0


# ---------------------------------------------------------------- the indexed search is exact


def planted_bank(seed: int) -> tuple[list[BankEntry], list[tuple[VpdqFrame, ...]], list[str]]:
    """Banked videos and queries near the rule's edges: distances around the
    threshold, query shares around 80%, shared frames, low-quality frames, banks
    with other thresholds and percentages."""
    rng = random.Random(seed)
    banks = ["ncii", "strict", "loose"]
    entries: list[BankEntry] = []
    sources: list[list[str]] = []
    common = [pdq_hex(rng) for _ in range(3)]  # frames many videos share (a logo card)
    for n in range(60):
        k = rng.randint(3, 25)
        hashes = [pdq_hex(rng) for _ in range(k)]
        if rng.random() < 0.3:
            hashes[rng.randrange(k)] = rng.choice(common)
        if sources and rng.random() < 0.15:  # a near copy of another banked video
            hashes = [flip(h, rng.randint(0, 12), rng) for h in rng.choice(sources)]
        sources.append(hashes)
        frames = [
            VpdqFrame(h, rng.choice((100, 100, 100, 70, 49, 10)), float(i))
            for i, h in enumerate(hashes)
        ]
        for bank in rng.sample(banks, rng.randint(1, 2)):
            entries.append(BankEntry(bank, "vpdq", format_vpdq(frames), f"case-{n}"))
    queries = []
    for _ in range(80):
        src = rng.choice(sources)
        keep = [h for h in src if rng.random() < rng.choice((1.0, 0.85, 0.6))]
        near = [flip(h, rng.choice((0, 5, 15, 24, 28, 31, 32, 35, 40)), rng) for h in keep]
        extra = [pdq_hex(rng) for _ in range(rng.choice((0, 0, 1, 3, 10)))]
        if rng.random() < 0.2:
            extra.append(rng.choice(common))
        hashes = near + extra
        rng.shuffle(hashes)
        if not hashes:
            hashes = [pdq_hex(rng)]
        queries.append(
            tuple(
                VpdqFrame(h, rng.choice((100, 100, 90, 55, 40)), float(i))
                for i, h in enumerate(hashes)
            )
        )
    images = [flip(h, rng.choice((0, 20, 31, 32, 45)), rng) for h in rng.sample(common, 2)]
    images += [flip(rng.choice(rng.choice(sources)), rng.randint(0, 40), rng) for _ in range(30)]
    return entries, queries, images


CONFIGS = {
    "ncii": BankConfig("ncii"),
    "strict": BankConfig("strict", pdq_threshold=16, vpdq_query_match_pct=90.0),
    "loose": BankConfig(
        "loose", pdq_threshold=40, vpdq_query_match_pct=50.0, vpdq_compared_match_pct=30.0
    ),
}


def config(bank: str) -> BankConfig:
    return CONFIGS.get(bank) or BankConfig(bank)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_indexed_lookup_gives_brute_forces_matches(seed: int) -> None:
    entries, queries, images = planted_bank(seed)
    bank = VideoBank(config)
    assert bank.add_many(entries) == len(entries)
    matched = 0
    for q in queries:
        got = bank.lookup(q)
        assert got == brute_force_videos(entries, q, config)
        matched += bool(got)
    for pdq in images:
        assert bank.lookup_frame(pdq) == brute_force_frame(entries, pdq, config)
    # the planted bank exercises both answers
    assert 10 < matched < len(queries)


def test_lookup_stays_exact_through_withdrawals_and_re_adds() -> None:
    entries, queries, _ = planted_bank(4)
    bank = VideoBank(config)
    for e in entries:  # one at a time, as live bank updates come
        bank.add_many([e])
    rng = random.Random(4)
    gone = rng.sample(entries, len(entries) // 3)
    for e in gone:
        assert bank.withdraw(e.bank, e.signal)
        assert not bank.withdraw(e.bank, e.signal)
    live = [e for e in entries if e not in gone]
    assert sorted(bank.entries(), key=repr) == sorted(live, key=repr)
    for q in queries:
        assert bank.lookup(q) == brute_force_videos(live, q, config)
    bank.add_many(gone[:5])
    live += gone[:5]
    for q in queries:
        assert bank.lookup(q) == brute_force_videos(live, q, config)


@settings(max_examples=60, deadline=None)
@given(
    n_frames=st.integers(1, 12),
    bits=st.lists(st.integers(0, 48), min_size=1, max_size=12),
    extra=st.integers(0, 6),
    threshold=st.integers(0, 63),
    q_pct=st.floats(0, 100),
    c_pct=st.floats(0, 100),
    seed=st.integers(0, 2**32),
)
def test_property_index_equals_brute_force(
    n_frames: int,
    bits: list[int],
    extra: int,
    threshold: int,
    q_pct: float,
    c_pct: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    cfg = BankConfig("b", threshold, vpdq_query_match_pct=q_pct, vpdq_compared_match_pct=c_pct)
    banked = [pdq_hex(rng) for _ in range(n_frames)]
    entries = [BankEntry("b", "vpdq", format_vpdq(video(banked)))]
    entries.append(BankEntry("b", "vpdq", format_vpdq(video([pdq_hex(rng)]))))
    query = video([flip(banked[i % n_frames], b, rng) for i, b in enumerate(bits)])
    query += video([pdq_hex(rng) for _ in range(extra)])
    bank = VideoBank(lambda _: cfg)
    bank.add_many(entries)
    assert bank.lookup(query) == brute_force_videos(entries, query, lambda _: cfg)


def test_a_video_with_no_usable_frame_matches_nothing() -> None:
    rng = random.Random(5)
    hashes = [pdq_hex(rng) for _ in range(5)]
    bank = VideoBank(BankConfig)
    bank.add_many([BankEntry("ncii", "vpdq", format_vpdq(video(hashes)))])
    assert bank.lookup(video(hashes))
    assert bank.lookup(video(hashes, quality=49)) == []  # the query's frames are too flat
    flat = VideoBank(BankConfig)
    flat.add_many([BankEntry("ncii", "vpdq", format_vpdq(video(hashes, quality=10)))])
    assert flat.frames == 0 and flat.lookup(video(hashes)) == []


def test_a_disabled_bank_and_settings_changes_take_effect_at_once() -> None:
    rng = random.Random(6)
    hashes = [pdq_hex(rng) for _ in range(10)]
    banks = HashBanks()
    banks.add(BankEntry("ncii", "vpdq", format_vpdq(video(hashes))))
    half = Content(vpdq=video(hashes[:5] + [pdq_hex(rng) for _ in range(5)]))
    assert banks.match(half) is None  # 50% of the query's frames: under 80%
    banks.configure(BankConfig("ncii", vpdq_query_match_pct=50.0))
    m = banks.match(half)
    assert m is not None and m.kind == "vpdq" and m.video is not None
    assert (m.video.query_match_pct, m.video.compared_match_pct) == (50.0, 50.0)
    banks.configure(BankConfig("ncii", vpdq_query_match_pct=50.0, vpdq_compared_match_pct=60.0))
    assert banks.match(half) is None
    banks.configure(BankConfig("ncii", enabled=False))
    assert banks.match(Content(vpdq=video(hashes))) is None


# ---------------------------------------------------------------- HashBanks and the router


def test_hash_banks_match_videos_and_images_as_brute_force_does() -> None:
    entries, queries, images = planted_bank(7)
    rng = random.Random(7)
    image_entries = [BankEntry("ncii", "pdq", pdq_hex(rng)) for _ in range(20)]
    md5 = BankEntry("internal", "md5", "ab" * 16)
    everything = [*entries, *image_entries, md5]
    banks = HashBanks(CONFIGS.values())
    banks.add_many(everything)
    assert len(banks) == len(everything)
    contents = [Content(vpdq=q) for q in queries]
    contents += [Content(pdq=p, pdq_quality=90) for p in images]
    contents += [Content(pdq=flip(e.signal, 5, rng)) for e in image_entries[:5]]
    contents += [Content(md5="ab" * 16, vpdq=queries[0]), Content(pdq=images[0], pdq_quality=20)]
    got = banks.match_many(contents)
    assert got == [brute_force_match(everything, c, CONFIGS.values()) for c in contents]
    kinds = {m.kind for m in got if m is not None}
    assert kinds == {"md5", "pdq", "vpdq", "video_frame"}
    assert got[-2] is not None and got[-2].kind == "md5"  # MD5 equality comes first
    assert got[-1] is None  # a flat image is not compared with frames either


def test_video_upload_joins_the_banked_videos_cluster_with_its_percentages() -> None:
    rng = random.Random(8)
    hashes = [pdq_hex(rng) for _ in range(20)]
    entry = BankEntry("ncii", "vpdq", format_vpdq(video(hashes)), "case-1")
    banks = HashBanks()
    banks.add(entry)
    router = Router(banks, Stats())
    reencoded = video([flip(h, 12, rng) for h in hashes[2:18]])  # trimmed, re-encoded

    def upload(post: str, content: Content) -> ShareEvent:
        return ShareEvent(f"e-{post}", "upload", 1_767_225_600_000, post, "u", content=content)

    routed, screenshot, other, flat = router.classify_batch(
        [
            upload("p1", Content(vpdq=reencoded)),
            upload("p2", Content(pdq=flip(hashes[7], 9, rng), pdq_quality=95)),
            upload("p3", Content(vpdq=video([pdq_hex(rng) for _ in range(5)]))),
            upload("p4", Content(vpdq=video(hashes, quality=5))),
        ]
    )
    assert routed is not None and routed.cluster_id == entry.cluster_id
    assert routed.match is not None
    d = routed.match.to_dict()
    assert (d["kind"], d["query_match_pct"], d["compared_match_pct"]) == ("vpdq", 100.0, 80.0)
    assert 0 < d["distance"] <= 31 and d["label"] == "case-1"
    assert screenshot is not None and screenshot.cluster_id == entry.cluster_id
    assert screenshot.match is not None and screenshot.match.kind == "video_frame"
    # no bank knows them: the index of unbanked content clusters them (u-...)
    assert other is None and flat is None
    assert low_quality(Content(vpdq=video(hashes, quality=5)))  # no usable frame
    # nothing is counted where an upload is classified: where it is applied new, once
    assert router.stats.low_quality == 0
    assert router.stats.unmatched_uploads == 0 and not router.stats.matched


def test_bank_csv_and_updates_carry_video_entries() -> None:
    from streams.banks import parse_bank_csv
    from streams.stages import BankUpdate

    rng = random.Random(9)
    signal = format_vpdq(video([pdq_hex(rng) for _ in range(3)]))
    quoted = signal.replace('"', '""')
    entries = parse_bank_csv(f'signal_type,signal,bank\nvpdq,"{quoted}",ncii\n')
    assert entries == [BankEntry("ncii", "vpdq", signal)]
    with pytest.raises(ValueError, match=r"<bank>:2: .*64 hex"):
        parse_bank_csv('signal_type,signal,bank\nvpdq,"[""ab,100,0.0""]",ncii\n')
    key, value = BankUpdate("add", entries[0]).record()
    update = BankUpdate.parse(key, value)
    assert update.entry == entries[0]
    banks = HashBanks()
    assert update.apply(banks) and len(banks) == 1
    assert BankUpdate.parse(key, None).apply(banks) and len(banks) == 0


# ---------------------------------------------------------------- video uploads in events


def upload_line(content: object) -> bytes:
    return orjson.dumps(
        {
            "event_id": "e1",
            "type": "upload",
            "ts": 1_767_225_600_000,
            "post_id": "p1",
            "user_id": "u1",
            "content": content,
        }
    )


def test_an_upload_may_carry_a_video_signal() -> None:
    frames = ["ab" * 32 + ",100,0.0", "cd" * 32 + ",77,1.0"]
    ev = parse_event(upload_line({"vpdq": frames}))
    assert isinstance(ev, ShareEvent) and ev.content is not None
    assert ev.content.vpdq == parse_vpdq(frames)
    assert parse_event(ev.to_json()) == ev  # canonical bytes read back to the same event
    assert orjson.loads(ev.to_json())["content"]["vpdq"] == frames


@pytest.mark.parametrize(
    ("vpdq", "reason"),
    [
        ("[]", "bad_vpdq"),  # the signal as text inside JSON: a list is expected
        ({"0": 1}, "bad_vpdq"),
        ([1, 2], "bad_vpdq"),
        (["ab,1,0"], "bad_vpdq_hash"),
        (["ab" * 32 + ",200,0"], "bad_vpdq_quality"),
        (["ab" * 32 + ",20,-5"], "bad_vpdq_timestamp"),
        ([], "vpdq_empty"),
        (["ab" * 32 + ",20,0"] * 3601, "vpdq_too_long"),
    ],
)
def test_a_malformed_video_signal_is_rejected_with_its_reason(vpdq: object, reason: str) -> None:
    out = parse_event(upload_line({"vpdq": vpdq}))
    assert isinstance(out, Rejection)
    assert out.reason == reason and reason in REJECT_REASONS
    assert "content.vpdq" in out.detail


def test_an_hour_of_frames_fits_in_an_event() -> None:
    frames = [f"{'ab' * 32},100,{i}.0" for i in range(3600)]
    ev = parse_event(upload_line({"vpdq": frames, "md5": "cd" * 16}))
    assert isinstance(ev, ShareEvent) and ev.content is not None
    assert ev.content.vpdq is not None and len(ev.content.vpdq) == 3600


# ---------------------------------------------------------------- simulated video traffic


def test_simulated_video_cascades_alert_as_one_cluster_each_with_their_re_encodes() -> None:
    from streams.alerts import Pseudonymizer
    from streams.pipeline import Pipeline
    from streams.policy import AlertPolicy
    from streams.simulate import Scenario, simulate

    base = Scenario(seed=5, minutes=20, background_per_minute=60, quiet_banked=3)
    plain = simulate(base)
    sc = Scenario(
        **{**base.__dict__, "video_banked": 2, "video_fraction": 0.1, "extra_video_entries": 50}
    )
    sim = simulate(sc)
    # asking for videos changes contents, not the traffic's shape
    assert len(sim.lines) == len(plain.lines)
    videos = [c for c in sim.truth["cascades"] if c["video"]]
    assert len(videos) == 2 and all(c["entry"]["signal_type"] == "vpdq" for c in videos)
    assert sum(e.signal_type == "vpdq" for e in sim.bank) == 52
    uploads = [orjson.loads(x) for x in sim.lines if b'"vpdq"' in x and b'"upload"' in x]
    assert len(uploads) > 20
    banks = HashBanks()
    banks.add_many(sim.bank)
    pipe = Pipeline(banks, AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"k"))
    for line in sim.lines:
        pipe.feed(line)
    d = pipe.finish()
    by_post = {u["post_id"]: u for u in uploads}
    for c in videos:
        # every upload of the cascade, the banked file and its re-encodes, joins its cluster
        posts = set(c["root_post_ids"]) | {n["post_id"] for n in c["near_duplicates"]}
        assert c["near_duplicates"], c["name"]
        for post in posts:
            ev = parse_event(orjson.dumps(by_post[post]))
            assert isinstance(ev, ShareEvent) and ev.content is not None
            m = banks.match(ev.content)
            assert m is not None and m.entry.cluster_id == c["cluster_id"], post
        roots = max(a.cascade.roots for a in d.alerts if a.cluster_id == c["cluster_id"])
        assert roots > len(c["root_post_ids"])  # re-encodes were counted in the cascade
        fired = {a.severity for a in d.alerts if a.cluster_id == c["cluster_id"]}
        assert c["expected_severity"] in fired
        matches = [a.match for a in d.alerts if a.cluster_id == c["cluster_id"]]
        assert all(m is not None and m.kind == "vpdq" for m in matches)


# ---------------------------------------------------------------- per-bank settings


def test_bank_settings_file_sets_each_banks_rule() -> None:
    from streams.bank_settings import parse_bank_settings

    configs = parse_bank_settings(
        "[banks.ncii]\nvpdq_query_match_pct = 50\nvpdq_compared_match_pct = 20.5\n"
        "[banks.partner]\npdq_threshold = 16\nenabled = false\n"
    )
    assert configs == [
        BankConfig("ncii", vpdq_query_match_pct=50, vpdq_compared_match_pct=20.5),
        BankConfig("partner", pdq_threshold=16, enabled=False),
    ]
    for bad, why in [
        ("[banks.a]\nthreshold = 3\n", "unknown key 'threshold'"),
        ("[banks.a]\npdq_threshold = 31.5\n", "pdq_threshold has the wrong type"),
        ("[banks.a]\nenabled = 1\n", "enabled has the wrong type"),
        ("[banks.a]\nvpdq_query_match_pct = true\n", "wrong type"),
        ("[banks.a]\nvpdq_query_match_pct = 120\n", "0..100"),
        ("[banks.a]\npdq_threshold = 200\n", "0..128"),
        ("[other]\nx = 1\n", "unknown table 'other'"),
        ("banks = 3\n", "must be tables"),
        ("[banks\n", "not TOML"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_bank_settings(bad, "b.toml")


def test_bank_settings_reach_bank_match_and_the_worker(tmp_path: Path) -> None:
    from test_hashing import viralwatch

    from streams.settings import Settings

    rng = random.Random(10)
    hashes = [pdq_hex(rng) for _ in range(10)]
    bank = tmp_path / "bank.csv"
    signal = format_vpdq(video(hashes)).replace('"', '""')
    bank.write_text(f'signal_type,signal,bank\nvpdq,"{signal}",ncii\n')
    query = [str(f) for f in video(hashes[:6] + [pdq_hex(rng) for _ in range(4)])]
    queries = tmp_path / "q.jsonl"
    queries.write_bytes(orjson.dumps({"file": "clip.mp4", "vpdq": query}) + b"\n")
    r = viralwatch("bank", "match", "--bank", str(bank), str(queries))
    assert r.returncode == 0 and r.stdout == b""  # 60% of the query's frames: under 80%
    settings = tmp_path / "banks.toml"
    settings.write_text("[banks.ncii]\nvpdq_query_match_pct = 60\n")
    r = viralwatch(
        "bank", "match", "--bank", str(bank), "--bank-settings", str(settings), str(queries)
    )
    assert r.returncode == 0, r.stderr
    row = orjson.loads(r.stdout)
    assert (row["query"], row["kind"], row["query_match_pct"]) == ("clip.mp4", "vpdq", 60.0)
    settings.write_text("[banks.ncii]\nvpdq_query_match_pct = 160\n")
    r = viralwatch(
        "bank", "match", "--bank", str(bank), "--bank-settings", str(settings), str(queries)
    )
    assert r.returncode == 2 and b"cannot read bank settings" in r.stderr
    env = {"VIRALWATCH_BANK_SETTINGS": str(settings)}
    assert Settings.from_env(env).bank_settings_file == settings
