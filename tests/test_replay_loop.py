"""Replay's compiled loop (``_core.ReplayLoop``, ``rust/python/src/replay.rs``): the same
decisions whatever the batches the input comes in (timed bank changes and videos among the
events), and any bytes give rejections or events, never an exception."""

from __future__ import annotations

import itertools
import os
import random
from functools import cache
from typing import Any

import orjson
from golden import replay_outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams._core import bank_updates
from streams.alerts import Pseudonymizer
from streams.banks import ALLOW_BANK, BankConfig, BankEntry, BankUpdate, HashBanks
from streams.events import ShareEvent, parse_event
from streams.pipeline import Pipeline, is_bank_update
from streams.policy import AlertPolicy
from streams.router import Router, low_quality
from streams.simulate import Scenario, simulate
from streams.stats import Stats

EXAMPLES = int(os.environ.get("VIRALWATCH_FUZZ_EXAMPLES", "8"))
T0 = 1_767_225_600_000
SOME = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def traffic() -> tuple[list[bytes], list[BankEntry]]:
    """Six minutes of simulated traffic (banked cascades, unbanked background, late, orphan,
    duplicate and malformed lines, a few videos) with timed bank changes in it: adds that
    relabel live unbanked clusters (retroaction), and an allow-list add of a banked hash
    (a false positive), each two minutes of event time after the upload it concerns."""
    sim = simulate(Scenario(seed=3, minutes=6, video_banked=1, video_fraction=0.05))
    lines = list(sim.lines)
    banked = {e.signal for e in sim.bank}
    uploads = [
        ev
        for ev in map(parse_event, lines)
        if isinstance(ev, ShareEvent) and ev.content is not None and ev.content.pdq is not None
    ]
    unbanked = [ev for ev in uploads if ev.content and ev.content.pdq not in banked]
    allow = next(ev for ev in uploads if ev.content and ev.content.pdq in banked)
    changes = [(ev, "ncii") for ev in random.Random(3).sample(unbanked, 4)] + [(allow, ALLOW_BANK)]
    for ev, bank in changes:
        assert ev.content is not None and ev.content.pdq is not None
        ts = ev.ts_ms + 120_000
        update = BankUpdate("add", BankEntry(bank, "pdq", ev.content.pdq), ts)
        at = next(
            (
                i
                for i, line in enumerate(lines)
                if (p := parse_event(line)) is not None
                and isinstance(p, ShareEvent)
                and p.ts_ms >= ts
            ),
            len(lines),
        )
        lines.insert(at, update.record()[1])
    return lines, list(sim.bank)


@cache
def one_batch() -> dict[str, Any]:
    lines, bank = traffic()
    return replay_outcome(lines, bank, chunk_size=lambda: len(lines))


@SOME
@given(st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=30))
def test_any_batches_give_the_decisions_of_one_batch(sizes: list[int]) -> None:
    lines, bank = traffic()
    whole = one_batch()
    assert whole["alerts"] and whole["stats"]["relabelled"]  # something to compare
    cycle = itertools.cycle(sizes)
    assert replay_outcome(lines, bank, chunk_size=lambda: next(cycle)) == whole


def test_one_line_at_a_time_gives_the_decisions_of_one_batch() -> None:
    lines, bank = traffic()
    assert replay_outcome(lines, bank, chunk_size=lambda: 1) == one_batch()


_LINES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.sampled_from(
        [
            b'{"event_id":"e","type":"share","ts":1767225600000,"post_id":"p",'
            b'"parent_post_id":"p","user_id":"u"}',
            b'{"event_id":"e","type":"takedown","ts":1767225600000,"post_id":"x","user_id":"u"}',
            b'{"op":"add","bank":"b","signal_type":"pdq","signal":"' + b"f" * 64 + b'","ts":1}',
            b'{"op":"add"}',
        ]
    ),
)


@SOME
@given(st.lists(_LINES, max_size=40), st.randoms(use_true_random=False))
def test_any_bytes_give_rejections_or_decisions_never_an_exception(
    noise: list[bytes], rnd: random.Random
) -> None:
    lines, bank = traffic()
    mixed = lines[:300] + noise
    rnd.shuffle(mixed)
    banks = HashBanks()
    banks.add_many(bank)
    pipe = Pipeline(banks, AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"k"))
    i = 0
    while i < len(mixed):
        n = rnd.randint(1, 50)
        pipe.feed_many(mixed[i : i + n])
        i += n
    out = pipe.finish()
    refused = sum(1 for line in noise if not isinstance(parse_event(line), ShareEvent))
    assert len(out.rejections) >= refused - sum(1 for line in noise if b'"op"' in line)
    assert pipe.held == 0


_MARKS = st.sampled_from([b'"op"', b'"event_id"', b'"op', b'op"', b'"', b"op", b"\\"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=6) | _MARKS, max_size=12).map(b"".join), max_size=20))
def test_the_batch_s_bank_updates_are_the_lines_that_hold_op_and_no_event_id(
    lines: list[bytes],
) -> None:
    """The compiled check replay cuts each batch at, against its rule written out here."""
    expected = [i for i, raw in enumerate(lines) if b'"op"' in raw and b'"event_id"' not in raw]
    assert bank_updates(lines) == expected
    assert bank_updates([bytearray(raw) for raw in lines]) == expected
    assert [is_bank_update(raw) for raw in lines] == [i in expected for i in range(len(lines))]


_HEX = "0123456789abcdef"


def _near(pdq: str, rnd: random.Random, bits: int) -> str:
    """``pdq`` with ``bits`` random bits flipped."""
    n = int(pdq, 16)
    for b in rnd.sample(range(256), bits):
        n ^= 1 << b
    return f"{n:064x}"


@SOME
@given(st.randoms(use_true_random=False))
def test_the_loop_asks_python_about_every_upload_a_bank_entry_may_match(
    rnd: random.Random,
) -> None:
    """The loop screens a batch's uploads against the banks itself (``HashBanks.screen``)
    and asks Python (``Router.classify_batch``) only about those an entry may match: every
    other upload matches nothing (nor the allow-list, timed adds or not), and the counters
    are those of asking about every upload."""
    pool_md5 = ["".join(rnd.choice(_HEX) for _ in range(32)) for _ in range(6)]
    pool_pdq = ["".join(rnd.choice(_HEX) for _ in range(64)) for _ in range(6)]
    configs = [BankConfig("tight", pdq_threshold=rnd.choice([0, 8, 31]))]
    if rnd.random() < 0.3:
        configs.append(BankConfig("off", enabled=False))
    banks = HashBanks(configs)
    for bank in ("tight", "off", "ncii", ALLOW_BANK):
        for kind, pool in (("md5", pool_md5), ("pdq", pool_pdq)):
            for signal in rnd.sample(pool, rnd.randint(0, 2)):
                since = rnd.choice([None, T0 + rnd.randint(0, 60_000)])
                banks.add(BankEntry(bank, kind, signal), since_ms=since)  # type: ignore[arg-type]
    lines = []
    for i in range(rnd.randint(1, 60)):
        content: dict[str, object] = {}
        if rnd.random() < 0.7:
            content["md5"] = (
                rnd.choice(pool_md5) if rnd.random() < 0.4 else rnd.choice(pool_md5)[::-1]
            )
        if rnd.random() < 0.7 or not content:
            content["pdq"] = _near(rnd.choice(pool_pdq), rnd, rnd.choice([0, 4, 20, 40, 128]))
            if rnd.random() < 0.5:
                content["pdq_quality"] = rnd.choice([0, 49, 50, 100])
        event = {
            "event_id": f"e{i}",
            "type": "upload",
            "ts": T0 + rnd.randint(0, 60_000),
            "post_id": f"p{i}",
            "user_id": "u",
            "content": content,
        }
        lines.append(orjson.dumps(event))

    asked: list[str] = []

    class Watched(Pipeline):
        def _classify(self, uploads: list[ShareEvent]) -> Any:
            asked.extend(ev.event_id for ev in uploads)
            return super()._classify(uploads)

    pipe = Watched(banks, AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"k"))
    pipe.feed_many(lines)
    pipe.finish()
    answers = Router(banks, Stats()).classify_batch(
        [ev for ev in map(parse_event, lines) if isinstance(ev, ShareEvent)]
    )
    unmatched = low = allowed = 0
    for line, routed in zip(lines, answers, strict=True):
        ev = parse_event(line)
        assert isinstance(ev, ShareEvent)
        if ev.event_id not in asked:
            assert routed is None, (ev, routed)
        if routed is None or routed.match is None:  # each upload once (ids differ)
            assert ev.content is not None
            unmatched += 1
            low += low_quality(ev.content)
            allowed += routed is not None and routed.cluster_id.startswith("a-")
    # the counters are those of asking about every upload, each counted once where applied
    s = pipe.stats
    assert (s.unmatched_uploads, s.low_quality, s.allowed) == (unmatched, low, allowed)


_ID = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
    min_size=1,
    max_size=8,
)


@SOME
@given(st.lists(st.tuples(_ID, _ID, _ID, st.sampled_from(["share", "takedown"])), max_size=20))
def test_an_event_the_loop_held_is_handed_to_python_as_the_parser_reads_it(
    events: list[tuple[str, str, str, str]],
) -> None:
    """The loop parses its lines itself and keeps their events compiled; those it hands
    back (here reshares and takedowns whose post never comes, expired) are the records
    ``parse_event`` makes of the same lines, any text in their ids."""
    lines = []
    for i, (post, user, parent, kind) in enumerate(events):
        record = {"event_id": f"e{i}", "type": kind, "ts": T0 + i, "post_id": "p-" + post}
        record["user_id"] = user
        if kind == "share":
            record["parent_post_id"] = "never-" + parent
        lines.append(orjson.dumps(record))
    pipe = Pipeline(HashBanks(), AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"k"))
    pipe.feed_many(lines)
    out = pipe.finish()
    expired = {r.event_id: r.raw for r in out.rejections if r.reason == "orphan_expired"}
    parsed = [p for p in map(parse_event, lines) if isinstance(p, ShareEvent)]
    assert expired == {p.event_id: p.to_json() for p in parsed}
