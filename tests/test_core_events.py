"""The compiled core's event parser, through the Python API: safe on any bytes, and
deterministic whatever the batches.

- no input makes it raise, crash or panic: any byte string gives a
  :class:`ShareEvent` or a :class:`Rejection` whose reason is one of
  :data:`REJECT_REASONS` (hypothesis over arbitrary bytes, over JSON of every
  shape, over nesting far past the limit);
- an accepted event reads back from its canonical bytes to itself;
- the same lines give the same records however they are cut into batches, and
  replay gives the recorded outcome (``tests/golden``) whatever its batch sizes;
- the timestamps read in Rust are the ones Python's reader gives.

``VIRALWATCH_FUZZ_EXAMPLES`` raises the number of examples (the README gives a
long run's counts).
"""

from __future__ import annotations

import gc
import os
import random
from datetime import UTC, datetime, timedelta, timezone

import orjson
from golden import FIELDS, golden_path, replay_outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import _core
from streams.events import (
    MAX_EVENT_BYTES,
    REJECT_REASONS,
    Content,
    Rejection,
    ShareEvent,
    parse_event,
    parse_events,
    parse_ts,
)
from streams.simulate import simulate, three_cascades_scenario

EXAMPLES = int(os.environ.get("VIRALWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80)
    | st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000)
    | st.sampled_from(
        ["upload", "share", "takedown", "2026-01-01T00:00:00Z", "f" * 64, "A" * 32, "1767225600000"]
    )
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["pdq", "md5", "pdq_quality", "vpdq", "x"]), inner)
    ),
    max_leaves=8,
)
_events = st.dictionaries(st.sampled_from([*FIELDS, "x"]), _values, max_size=9)


def _json(obj: object) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # an integer over 64 bits: orjson writes none
        return orjson.dumps(str(obj))


def check(results: list[ShareEvent | Rejection], lines: list[bytes]) -> None:
    assert len(results) == len(lines)
    for parsed, line in zip(results, lines, strict=True):
        if isinstance(parsed, Rejection):
            assert parsed.reason in REJECT_REASONS, parsed
            assert parsed.raw == line[:MAX_EVENT_BYTES]
            assert parsed.event_id is None or isinstance(parsed.event_id, str)
        else:
            assert isinstance(parsed, ShareEvent)
            assert parse_event(parsed.to_json()) == parsed  # canonical bytes read back


@FUZZ
@given(st.lists(st.binary(max_size=400), max_size=20))
def test_any_bytes_give_a_record_or_a_rejection(lines: list[bytes]) -> None:
    check(parse_events(lines), lines)


@FUZZ
@given(st.lists(_events.map(_json), max_size=20))
def test_json_of_any_shape_gives_a_record_or_a_rejection(lines: list[bytes]) -> None:
    check(parse_events(lines), lines)


@FUZZ
@given(st.lists(st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_any_text_gives_a_record_or_a_rejection(lines: list[bytes]) -> None:
    check(parse_events(lines), lines)


def test_nesting_far_past_the_limit_is_not_json_not_a_crash() -> None:
    deep = [
        b"[" * (MAX_EVENT_BYTES // 2) + b"]" * (MAX_EVENT_BYTES // 2),
        b'{"event_id":"e","x":' + b"[" * 200_000,
        b'{"content":{"vpdq":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        b"[" * 1025 + b"]" * 1025,
    ]
    results = parse_events(deep)
    assert [getattr(r, "reason", None) for r in results] == ["not_json"] * 4
    ok = parse_events([b"[" * 1024 + b"]" * 1024])[0]
    assert isinstance(ok, Rejection) and ok.reason == "not_object"  # deep, but JSON


def test_a_line_over_the_limit_is_refused_unread() -> None:
    (r,) = parse_events([b" " * (MAX_EVENT_BYTES + 1)])
    assert isinstance(r, Rejection) and r.reason == "too_large"
    assert len(r.raw) == MAX_EVENT_BYTES


def test_parsed_records_are_left_out_of_the_cyclic_collector() -> None:
    """A record of atoms cannot be in a cycle: the collector does not walk the one a line
    makes (as CPython leaves out a tuple of atoms); reference counting frees it."""
    line = (
        b'{"event_id":"e1","type":"upload","ts":1767225600000,"post_id":"p1",'
        b'"user_id":"u1","content":{"md5":"' + b"a" * 32 + b'"}}'
    )
    event, rejection = parse_events([line, b"{oops"])
    assert isinstance(event, ShareEvent) and isinstance(rejection, Rejection)
    assert event.content is not None
    for record in (event, event.content, rejection):
        assert not gc.is_tracked(record), record
    # a record Python makes is tracked as any other
    assert gc.is_tracked(ShareEvent("e", "share", 1, "p", "u", "q"))


def test_buffers_other_than_bytes_are_read_as_bytes() -> None:
    line = b'{"event_id":"e","type":"takedown","ts":1767225600000,"post_id":"p","user_id":"u"}'
    by_bytes = parse_events([line])
    assert parse_events([bytearray(line), memoryview(line)]) == by_bytes * 2
    assert isinstance(by_bytes[0], ShareEvent)


@FUZZ
@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30), st.randoms())
def test_batches_do_not_change_the_records(cuts: list[int], rnd: random.Random) -> None:
    lines = _SAMPLE
    whole = parse_events(lines)
    pieces: list[ShareEvent | Rejection] = []
    at = 0
    while at < len(lines):
        size = cuts[len(pieces) % len(cuts)] if rnd.random() < 0.9 else 1
        pieces.extend(parse_events(lines[at : at + size]))
        at += size
    assert pieces == whole


_SIM = simulate(three_cascades_scenario(7))
_SAMPLE = _SIM.lines[:400]


def test_replay_gives_the_recorded_outcome_whatever_its_batch_sizes() -> None:
    want = orjson.loads(golden_path("three_cascades").read_bytes())
    for seed in (1, 2):
        sizes = random.Random(seed)
        got = replay_outcome(
            _SIM.lines, _SIM.bank, chunk_size=lambda r=sizes: r.choice([1, 7, 300])
        )
        assert got == want


_INSTANTS = st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
)
_OFFSETS = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda m: timezone(timedelta(minutes=m))
)


@FUZZ
@given(_INSTANTS, _OFFSETS, st.sampled_from(["milliseconds", "seconds"]), st.booleans())
def test_timestamps_read_in_rust_are_pythons(
    when: datetime, tz: timezone, spec: str, zulu: bool
) -> None:
    aware = when.replace(tzinfo=tz)
    text = aware.isoformat(timespec=spec)
    if zulu:
        text = aware.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")
    line = orjson.dumps(
        {"event_id": "e", "type": "takedown", "ts": text, "post_id": "p", "user_id": "u"}
    )

    def declined(text: str) -> int:
        raise ValueError(f"Rust left {text!r} to Python")

    (item,), _ = _core.parse_events([line], declined, ShareEvent, Content, Rejection)
    assert item.ts_ms == parse_ts(text), item  # read in Rust
