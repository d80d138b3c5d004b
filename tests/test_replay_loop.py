"""Replay's compiled loop (``_core.ReplayLoop``, ``rust/python/src/replay.rs``): the same
decisions whatever the batches the input comes in (timed bank changes and videos among the
events), and any bytes give rejections or events, never an exception."""

from __future__ import annotations

import itertools
import os
import random
from functools import cache
from typing import Any

from golden import replay_outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.alerts import Pseudonymizer
from streams.banks import ALLOW_BANK, BankEntry, BankUpdate, HashBanks
from streams.events import ShareEvent, parse_event
from streams.pipeline import Pipeline
from streams.policy import AlertPolicy
from streams.simulate import Scenario, simulate

EXAMPLES = int(os.environ.get("VIRALWATCH_FUZZ_EXAMPLES", "8"))
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
