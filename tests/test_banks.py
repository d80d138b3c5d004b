"""Hash banks: loading, matching rules, changes while running, the cache, `bank match`."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from eventgen import flip, pdq_hex
from hypothesis import given, settings
from hypothesis import strategies as st
from programs import viralwatch
from shared_data import SHARED, absent

from streams.banks import (
    BankConfig,
    BankEntry,
    HashBanks,
    Match,
    brute_force_match,
    hamming,
    load_bank_csv,
    parse_bank_csv,
)
from streams.events import Content
from streams.pdqindex import brute_force
from streams.stats import Stats

PDQ_DATA = SHARED / "data" / "pdq"
NO_DATA = absent(PDQ_DATA, "PDQ reference data")


def pdq(signal: str, bank: str = "ncii", label: str | None = None) -> BankEntry:
    return BankEntry(bank, "pdq", signal, label)


# ---------------------------------------------------------------- matching rules


def test_md5_equality_outranks_any_pdq_distance() -> None:
    banks = HashBanks()
    banks.add(pdq("a" * 64, "zz"))
    banks.add(BankEntry("zz", "md5", "b" * 32))
    m = banks.match(Content(pdq="a" * 64, pdq_quality=100, md5="b" * 32))
    assert m is not None and (m.entry.signal_type, m.distance) == ("md5", 0)


def test_ties_go_to_the_nearest_then_bank_name_then_signal() -> None:
    base = "0" * 64
    one = "0" * 63 + "1"  # 1 bit away
    two = "0" * 63 + "3"  # 2 bits away
    banks = HashBanks()
    for e in (pdq(two, "a"), pdq(one, "z"), pdq(one, "m")):
        banks.add(e)
    m = banks.match(Content(pdq=base))
    assert m == Match(pdq(one, "m"), 1)
    other = "0" * 62 + "10"  # also 1 bit away from base, larger hex than `one`
    banks.add(pdq(other, "m"))
    assert banks.match(Content(pdq=base)) == Match(pdq(one, "m"), 1)
    assert [(m.entry.bank, m.entry.signal, m.distance) for m in banks.lookup_pdq(base)] == [
        ("m", one, 1),
        ("m", other, 1),
        ("z", one, 1),
        ("a", two, 2),
    ]


def test_each_bank_has_its_own_threshold_and_can_be_disabled() -> None:
    rng = random.Random(1)
    h = pdq_hex(rng)
    q = flip(h, 20, rng)
    banks = HashBanks([BankConfig("strict", pdq_threshold=10), BankConfig("wide", 40)])
    banks.add(pdq(h, "strict"))
    assert banks.match(Content(pdq=q)) is None
    banks.add(pdq(flip(h, 5, rng), "wide"))
    m = banks.match(Content(pdq=q))
    assert m is not None and m.entry.bank == "wide"
    banks.configure(BankConfig("wide", 40, enabled=False))
    assert banks.match(Content(pdq=q)) is None
    banks.configure(BankConfig("strict", 31))
    m = banks.match(Content(pdq=q))
    assert m is not None and (m.entry.bank, m.distance) == ("strict", 20)
    with pytest.raises(ValueError):
        BankConfig("x", pdq_threshold=129)


def test_low_quality_pdq_is_not_a_signal() -> None:
    banks = HashBanks()
    banks.add(pdq("c" * 64))
    assert banks.match(Content(pdq="c" * 64, pdq_quality=49)) is None
    assert banks.match(Content(pdq="c" * 64, pdq_quality=50)) is not None
    assert banks.match(Content(pdq="c" * 64)) is not None  # no quality given: usable
    assert banks.match(Content()) is None


def test_uppercase_signals_are_normalised() -> None:
    banks = HashBanks()
    assert banks.add(BankEntry("b", "md5", "AB" * 16))
    assert not banks.add(BankEntry("b", "md5", "ab" * 16))
    assert banks.lookup_md5("AB" * 16)[0].entry.signal == "ab" * 16
    banks.add(pdq("F" * 64))
    assert banks.lookup_pdq("f" * 64)[0].entry.signal == "f" * 64


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 120),
    thresholds=st.lists(st.integers(0, 48), min_size=1, max_size=3),
    disabled=st.booleans(),
)
def test_match_equals_brute_force_for_planted_near_duplicates(
    seed: int, n: int, thresholds: list[int], disabled: bool
) -> None:
    rng = random.Random(seed)
    names = [f"bank{i}" for i in range(len(thresholds))]
    configs = [BankConfig(nm, t) for nm, t in zip(names, thresholds, strict=True)]
    if disabled:
        configs[0] = BankConfig(names[0], thresholds[0], enabled=False)
    signals = [pdq_hex(rng) for _ in range(n)]
    entries = [pdq(rng.choice(signals), rng.choice(names)) for _ in range(n)]
    entries += [
        BankEntry(rng.choice(names), "md5", f"{rng.getrandbits(128):032x}") for _ in range(5)
    ]
    banks = HashBanks(configs)
    banks.add_many(entries[: n // 2])
    for e in entries[n // 2 :]:
        banks.add(e)
    contents = [Content(pdq=flip(rng.choice(signals), d, rng)) for d in range(41)]
    contents += [Content(pdq=pdq_hex(rng), md5=entries[-1].signal), Content(pdq=pdq_hex(rng))]
    expected = [brute_force_match(banks.entries(), c, configs) for c in contents]
    assert [banks.match(c) for c in contents] == expected
    assert HashBanks(configs, cache_size=0).match_many(contents) == [None] * len(contents)
    fresh = HashBanks(configs)
    fresh.add_many(entries)
    assert fresh.match_many(contents) == expected


# ---------------------------------------------------------------- changes and the cache


def test_withdrawal_stops_matching_at_once_even_when_cached() -> None:
    stats = Stats()
    banks = HashBanks(stats=stats)
    h = "d" * 64
    banks.add(pdq(h, "a"))
    banks.add(pdq(h, "b"))
    up = Content(pdq=h, pdq_quality=90)
    assert banks.match(up) == Match(pdq(h, "a"), 0)
    assert banks.match(up) == Match(pdq(h, "a"), 0)
    assert (stats.lookups, stats.cache_hits) == (1, 1)
    assert banks.withdraw("a", "pdq", h)
    assert banks.match(up) == Match(pdq(h, "b"), 0)  # the other bank still holds it
    assert banks.withdraw("b", "PDQ", h.upper())
    assert banks.match(up) is None
    assert (stats.lookups, stats.cache_hits) == (3, 1)
    assert not banks.withdraw("b", "pdq", h)  # unknown: harmless
    assert not banks.withdraw("b", "sha1", h)
    assert not banks.withdraw("b", "md5", "not hex")
    assert len(banks) == 0 and list(banks.entries()) == []


def test_the_screens_md5_keys_are_the_md5_tables_keys_through_adds_and_withdrawals() -> None:
    """The screen asks its compiled copy of the MD5 table's keys (``TextSet``), which must
    say what the table says after every change: a key goes with its last bank, not its
    first, and keys ``int(_, 16)`` reads that are not plain hex digits (a ``0x`` prefix, an
    underscore, another script's digits) are keys too, asked by their exact text."""
    banks = HashBanks()
    rng = random.Random(5)
    odd = ["0x" + "ab" * 15, "a_" + "b" * 30, "\u0663" * 32, "c" * 32]
    signals = odd + ["".join(rng.choice("0123456789abcdef") for _ in range(32)) for _ in range(20)]
    held: dict[tuple[str, str], None] = {}
    for step in range(400):
        signal, bank = rng.choice(signals), rng.choice("ab")
        if rng.random() < 0.6:
            banks.add(BankEntry(bank, "md5", signal.upper() if step % 7 == 0 else signal))
            held[bank, signal.lower()] = None
        else:
            banks.withdraw(bank, "md5", signal)
            held.pop((bank, signal.lower()), None)
        keys = banks.screen()[0]
        want = {s for _, s in held}
        assert len(keys) == len(want)
        for s in signals:
            assert (s.lower() in keys) == (s.lower() in want) == (banks.lookup_md5(s) != [])


def test_an_add_after_a_cached_miss_matches_at_once() -> None:
    stats = Stats()
    banks = HashBanks(stats=stats)
    up = Content(md5="e" * 32)
    assert banks.match(up) is None
    assert banks.match(up) is None
    assert stats.cache_hits == 1
    banks.add(BankEntry("ncii", "md5", "e" * 32))
    assert banks.match(up) == Match(BankEntry("ncii", "md5", "e" * 32), 0)
    assert banks.withdraw("ncii", "md5", "e" * 32)
    assert banks.match(up) is None


def test_match_many_counts_like_match_and_the_cache_is_bounded() -> None:
    stats = Stats()
    banks = HashBanks(stats=stats, cache_size=2)
    banks.add(pdq("1" * 64))
    ups = [Content(pdq="1" * 64), Content(pdq="2" * 64), Content(pdq="1" * 64), Content()]
    got = banks.match_many(ups)
    assert [m is not None for m in got] == [True, False, True, False]
    assert (stats.lookups, stats.cache_hits) == (2, 1)
    banks.match_many([Content(pdq="3" * 64)])  # evicts "1" * 64, the least recently used
    banks.match(Content(pdq="1" * 64))
    assert (stats.lookups, stats.cache_hits) == (4, 1)


def test_add_reports_new_entries_and_updates_labels() -> None:
    banks = HashBanks()
    assert banks.add(pdq("5" * 64, label="old"))
    assert not banks.add(pdq("5" * 64, label="new"))
    assert [e.label for e in banks.entries()] == ["new"]
    assert banks.add_many([pdq("5" * 64), pdq("6" * 64), pdq("6" * 64, "other")]) == 2
    assert len(banks) == 3
    with pytest.raises(ValueError):
        banks.add(pdq("xyz"))


# ---------------------------------------------------------------- CSV


def test_csv_loads_and_names_the_first_bad_line(tmp_path: Path) -> None:
    text = f"signal_type,signal,bank,label\npdq,{'a' * 64},ncii,case-1\nMD5,{'B' * 32},ncii,\n"
    entries = parse_bank_csv(text)
    assert entries == [pdq("a" * 64, "ncii", "case-1"), BankEntry("ncii", "md5", "b" * 32)]
    bad_rows = {
        "sha1": "sha1,abc,ncii",
        "length": f"pdq,{'a' * 63},ncii",
        "hex": f"md5,{'g' * 32},ncii",
        "bank": f"md5,{'a' * 32},",
    }
    for name, row in bad_rows.items():
        with pytest.raises(ValueError, match=r"^x\.csv:3: "):
            parse_bank_csv(f"signal_type,signal,bank\nmd5,{'a' * 32},ok\n{row}\n", "x.csv")
        assert name
    with pytest.raises(ValueError, match="header"):
        parse_bank_csv("hash,bank\n")
    with pytest.raises(ValueError, match="header"):
        parse_bank_csv("")
    with pytest.raises(OSError):
        load_bank_csv(tmp_path / "missing.csv")
    path = tmp_path / "bank.csv"
    path.write_text(text)
    assert load_bank_csv(path) == entries


# ---------------------------------------------------------------- the reference data


def reference_rows() -> list[dict[str, str]]:
    import csv

    with (PDQ_DATA / "expected.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def image_hashes() -> dict[str, tuple[str, int]]:
    if not PDQ_DATA.is_dir():
        pytest.skip(NO_DATA)
    from streams.hashing import FileHashes, hash_file

    out = {}
    for row in reference_rows():
        rec = hash_file(PDQ_DATA / "images" / row["file"])
        assert isinstance(rec, FileHashes), rec
        out[row["file"]] = (rec.pdq, rec.quality)
    return out


def test_needles_against_haystack_give_exactly_the_250_brute_force_pairs() -> None:
    if not PDQ_DATA.is_dir():
        pytest.skip(NO_DATA)
    needles = (PDQ_DATA / "needles.txt").read_text().split()
    haystack = (PDQ_DATA / "haystack.txt").read_text().split()
    banks = HashBanks()
    banks.add_many(pdq(h, "hay") for h in haystack)
    got = {(n, m.entry.signal, m.distance) for n in needles for m in banks.lookup_pdq(n)}
    batched = banks.lookup_pdq_many(needles)
    pairs = {(n, h, hamming(n, h)) for n in needles for h in set(haystack) if hamming(n, h) <= 31}
    assert len(pairs) == 250
    assert got == pairs
    flat = {
        (n, m.entry.signal, m.distance) for n, ms in zip(needles, batched, strict=True) for m in ms
    }
    assert flat == pairs
    assert sum(map(len, brute_force(haystack, needles, 31))) == 250


def test_bridge_edits_match_the_original(image_hashes: dict[str, tuple[str, int]]) -> None:
    banks = HashBanks()
    orig, _ = image_hashes["bridge-mods-aaa-orig.jpg"]
    banks.add(pdq(orig, "ncii", "bridge"))
    edits = [f for f in image_hashes if f.startswith("bridge-mods-") and "orig" not in f]
    assert len(edits) == 11
    for f in edits:
        h, quality = image_hashes[f]
        m = banks.match(Content(pdq=h, pdq_quality=quality))
        assert m is not None and m.distance <= 31, f


def test_rotations_and_flips_do_not_match_each_other(
    image_hashes: dict[str, tuple[str, int]],
) -> None:
    dih = sorted(f for f in image_hashes if f.startswith("dih-"))
    assert len(dih) == 8
    banks = HashBanks()
    for f in dih:
        banks.add(pdq(image_hashes[f][0], "dih", f))
    for f in dih:
        h, q = image_hashes[f]
        assert [m.entry.label for m in banks.lookup_pdq(h)] == [f]
        assert banks.match(Content(pdq=h, pdq_quality=q)) == Match(pdq(h, "dih", f), 0)
        for g in dih:
            if g != f:
                assert hamming(h, image_hashes[g][0]) > 31


def test_low_quality_images_are_refused_as_signals(
    image_hashes: dict[str, tuple[str, int]],
) -> None:
    low = {f: hq for f, hq in image_hashes.items() if hq[1] < 50}
    assert {"labelme-q0003.jpg", "labelme-q0004.jpg", "misc-small.jpg", "pytx-I16.png"} <= set(low)
    banks = HashBanks()
    banks.add_many(pdq(h) for h, _ in low.values())
    for h, quality in low.values():
        assert banks.match(Content(pdq=h, pdq_quality=quality)) is None
        assert banks.match(Content(pdq=h)) is not None  # the same hash, quality unknown


# ---------------------------------------------------------------- the command


def test_bank_match_prints_one_line_per_match(tmp_path: Path) -> None:
    rng = random.Random(2)
    a, b = pdq_hex(rng), pdq_hex(rng)
    md5 = "f" * 32
    bank1 = tmp_path / "one.csv"
    bank1.write_text(f"signal_type,signal,bank\npdq,{a},ncii\nmd5,{md5},ncii\n")
    bank2 = tmp_path / "two.csv"
    bank2.write_text(f"signal_type,signal,bank,label\npdq,{a},partner,x\npdq,{b},partner,y\n")
    near = flip(a, 9, rng)
    queries = tmp_path / "q.txt"
    queries.write_text(f"# queries\n{near}\n\n{md5.upper()}\n{pdq_hex(rng)}\n")
    r = viralwatch("bank", "match", "--bank", str(bank1), "--bank", str(bank2), str(queries))
    assert r.returncode == 0, r.stderr
    rows = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert rows == [
        {"query": near, "bank": "ncii", "signal_type": "pdq", "signal": a, "distance": 9},
        {"query": near, "bank": "partner", "signal_type": "pdq", "signal": a, "distance": 9},
        {"query": md5, "bank": "ncii", "signal_type": "md5", "signal": md5, "distance": 0},
    ]


def test_bank_match_errors(tmp_path: Path) -> None:
    bank = tmp_path / "bank.csv"
    bank.write_text(f"signal_type,signal,bank\npdq,{'a' * 64},ncii\n")
    queries = tmp_path / "q.txt"
    queries.write_text(f"not a hash\n{'a' * 64}\n")
    r = viralwatch("bank", "match", "--bank", str(bank), str(queries))
    assert r.returncode == 1
    assert b"q.txt:1: not a PDQ or MD5 hash" in r.stderr
    assert len(r.stdout.splitlines()) == 1  # the good line still matched
    r = viralwatch("bank", "match", "--bank", str(tmp_path / "nope.csv"), str(queries))
    assert r.returncode == 2
    assert r.stderr.decode().count("\n") == 1 and b"cannot read bank" in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("signal_type,signal,bank\nsha1,abc,ncii\n")
    r = viralwatch("bank", "match", "--bank", str(bad), str(queries))
    assert r.returncode == 2 and b"bad.csv:2:" in r.stderr
    r = viralwatch("bank", "match", "--bank", str(bank), str(tmp_path / "none.txt"))
    assert r.returncode == 2 and b"cannot read" in r.stderr


def test_bank_match_reference_needles(tmp_path: Path) -> None:
    if not PDQ_DATA.is_dir():
        pytest.skip(NO_DATA)
    bank = tmp_path / "hay.csv"
    haystack = (PDQ_DATA / "haystack.txt").read_text().split()
    bank.write_text("signal_type,signal,bank\n" + "".join(f"pdq,{h},hay\n" for h in haystack))
    r = viralwatch("bank", "match", "--bank", str(bank), str(PDQ_DATA / "needles.txt"))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 250


def test_a_bad_entry_stops_a_load_but_what_came_before_matches() -> None:
    banks = HashBanks()
    with pytest.raises(ValueError):
        banks.add_many([pdq("7" * 64), pdq("nope"), pdq("8" * 64)])
    assert banks.match(Content(pdq="7" * 64)) == Match(pdq("7" * 64), 0)
    assert len(banks) == 1
