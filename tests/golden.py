"""Golden outputs: what the pipeline decides on fixed streams, recorded once, checked for ever.

The compiled core (issue 17) replaces the per-event Python code piece by
piece; each piece must give what the Python code gave, byte for byte. The
outputs of the Python code were recorded here before anything was switched
(``tests/golden/*.json``), and ``tests/test_golden.py`` checks the code
against them.

Two kinds of record:

- a *replay* outcome: a stream of input lines through
  :class:`streams.pipeline.Pipeline` as ``viralwatch replay`` feeds it; its
  alerts, actions and rejections (reason, event id, a digest of the kept
  bytes, and the detail: see :func:`rejection_key`), each as a SHA-256 of
  their canonical bytes in order, their counts, and the counters
  (:meth:`Stats.summary`);
- a *parse* outcome: what :func:`streams.events.parse_event` makes of every
  line of a corpus of hostile lines (simulated lines cut, flipped, with fields
  of every JSON type, odd Unicode, bad UTF-8): per block of lines, a SHA-256
  of each line's result, so a difference points at its block.

Streams are generated (the simulator, seeded), never downloaded or stored.

    python tests/golden.py            # check, say what differs (`make golden`)
    python tests/golden.py --write    # record anew (only for a decided change: say why)
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.alerts import Pseudonymizer  # noqa: E402
from streams.banks import BankEntry, HashBanks  # noqa: E402
from streams.events import Rejection, ShareEvent, parse_event  # noqa: E402
from streams.pipeline import FEED_CHUNK, Pipeline  # noqa: E402
from streams.policy import AlertPolicy  # noqa: E402
from streams.simulate import Scenario, simulate, three_cascades_scenario  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden"
#: Lines per digest of a parse corpus.
PARSE_BLOCK = 1000


def _sha(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(4, "big"))
        h.update(c)
    return h.hexdigest()


def rejection_key(r: Rejection) -> bytes:
    """A rejection's canonical bytes: reason, event id, what it keeps of the line, and detail.

    The detail of ``not_json`` is the JSON parser's own message (orjson's,
    then the compiled core's): only its reason is held fixed.
    """
    detail = "" if r.reason == "not_json" else r.detail
    return orjson.dumps(
        {
            "reason": r.reason,
            "event_id": r.event_id,
            "raw": hashlib.sha256(r.raw).hexdigest(),
            "detail": detail,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def replay_outcome(
    lines: Iterable[bytes],
    bank: list[BankEntry],
    chunk_size: Callable[[], int] = lambda: FEED_CHUNK,
) -> dict[str, Any]:
    """Feed ``lines`` as ``viralwatch replay`` does; the decisions' digests and the counters.

    ``chunk_size`` gives the size of each batch handed to ``feed_many`` (replay's by default).
    """
    banks = HashBanks()
    banks.add_many(bank)
    pipe = Pipeline(banks, AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"golden"))
    n = 0
    chunk: list[bytes] = []
    size = chunk_size()
    for line in lines:
        n += 1
        chunk.append(line)
        if len(chunk) >= size:
            pipe.feed_many(chunk)
            chunk = []
            size = chunk_size()
    pipe.feed_many(chunk)
    out = pipe.finish()
    return {
        "lines": n,
        "alerts": len(out.alerts),
        "actions": len(out.actions),
        "rejections": dict(sorted(Counter(r.reason for r in out.rejections).items())),
        "alerts_sha256": _sha(a.to_json() for a in out.alerts),
        "actions_sha256": _sha(a.to_json() for a in out.actions),
        "rejections_sha256": _sha(rejection_key(r) for r in out.rejections),
        "stats": pipe.stats.summary(),
    }


def parse_key(parsed: ShareEvent | Rejection) -> bytes:
    """One parse result's canonical bytes: the event's canonical JSON, or the rejection's key."""
    if isinstance(parsed, ShareEvent):
        return b"E" + parsed.to_json()
    return b"R" + rejection_key(parsed)


def parse_outcome(lines: list[bytes]) -> dict[str, Any]:
    """What :func:`parse_event` makes of each line, digested per block of lines."""
    results = [parse_event(line) for line in lines]
    reasons = Counter(r.reason if isinstance(r, Rejection) else "ok" for r in results)
    return {
        "lines": len(lines),
        "results": dict(sorted(reasons.items())),
        "blocks_sha256": [
            _sha(parse_key(r) for r in results[i : i + PARSE_BLOCK])
            for i in range(0, len(results), PARSE_BLOCK)
        ],
    }


# -- the hostile corpus -------------------------------------------------------------

_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    100,
    101,
    2**53,
    2**53 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    1.5,
    -0.0,
    1e20,
    1767225600000.7,
    "",
    " ",
    "x",
    "a" * 256,
    "a" * 257,
    "é" * 256,
    "é" * 257,
    "\u00a0",
    "tab\there",
    "new\nline",
    "\x7f",
    "\u200b",
    "\U0001f600",
    "\ue000",
    "\u0378",
    "12345",
    "٣٤",
    "upload",
    "share",
    "takedown",
    "UPLOAD",
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00.5Z",
    "2026-01-01T00:00:00.123456Z",
    "2026-01-01T00:00:00.1234567Z",
    "2026-01-01T00:00:00+05:30",
    "2026-01-01T00:00:00+0530",
    "2026-01-01T00:00:00-23:59",
    "2026-01-01 00:00:00Z",
    "2026-01-01t00:00:00z",
    "2026-01-01T00:00:00",
    "2026-02-29T00:00:00Z",
    "2028-02-29T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T23:59:60Z",
    "2026-01-01",
    "20260101T000000Z",
    " 2026-01-01T00:00:00Z ",
    "1767225600000",
    " 1767225600000",
    "1767225600000.0",
    "1999-12-31T23:59:59Z",
    "2100-01-01T00:00:00Z",
    "yesterday",
    "f" * 64,
    "F" * 64,
    " " + "f" * 64 + "\t",
    "\u3000" + "f" * 64,
    "\x1c" + "f" * 64,
    "g" * 64,
    "f" * 63,
    "f" * 65,
    "a" * 32,
    "A" * 32,
    "ａ" * 32,
    [],
    [1],
    ["x"],
    {},
    {"pdq": "f" * 64},
    {"md5": "a" * 32},
    {"pdq": "f" * 64, "pdq_quality": 100},
    {"pdq": "f" * 64, "pdq_quality": 101},
    {"pdq": "f" * 64, "pdq_quality": True},
    {"pdq": "f" * 64, "pdq_quality": 50.0},
    {"pdq": None, "md5": None},
    {"pdq": 5},
    {"md5": "zz"},
    {"vpdq": ["f" * 64 + ",100,0.0"]},
    {"vpdq": []},
    {"vpdq": "x"},
    {"vpdq": [1]},
    {"vpdq": ["f" * 64 + ",101,0.0"]},
    {"md5": "a" * 32, "vpdq": None},
]
FIELDS = [
    "event_id",
    "type",
    "ts",
    "post_id",
    "user_id",
    "parent_post_id",
    "followers",
    "content",
]
_BYTES = [
    b"",
    b"{",
    b"}",
    b"[]",
    b"null",
    b"1",
    b'"x"',
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b"\\ud800",
    b'"',
    b"\\",
    b"\x00",
    b" ",
    b"\n",
    b"NaN",
    b"1e400",
    b"01",
    b"-0",
    b"[" * 1024 + b"]" * 1024,
    b"[" * 1025 + b"]" * 1025,
]


def hostile_lines(seed: int = 3, n: int = 60_000) -> list[bytes]:
    """``n`` lines made from simulated ones: each valid, changed once or twice, or broken.

    Deterministic for a seed (``random.Random``, orjson's bytes).
    """
    rng = random.Random(seed)
    base = simulate(Scenario(seed=seed, minutes=10, background_per_minute=200)).lines
    objs: list[dict[str, Any]] = []
    for line in base:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            objs.append(obj)
    out: list[bytes] = []
    while len(out) < n:
        kind = rng.random()
        if kind < 0.25:  # as simulated (its malformed lines among them)
            out.append(rng.choice(base))
            continue
        obj = dict(rng.choice(objs))
        if kind < 0.7:  # fields of every type, missing, or added
            for _ in range(rng.randint(1, 2)):
                key = rng.choice(FIELDS)
                roll = rng.random()
                if roll < 0.15:
                    obj.pop(key, None)
                elif roll < 0.25 and isinstance(obj.get("content"), dict):
                    content = dict(obj["content"])
                    content[rng.choice(["pdq", "md5", "pdq_quality", "vpdq"])] = rng.choice(_VALUES)
                    obj["content"] = content
                else:
                    obj[key] = rng.choice(_VALUES)
            if rng.random() < 0.1:
                obj["parent_post_id"] = obj.get("post_id")
            out.append(orjson.dumps(obj))
            continue
        data = orjson.dumps(obj)
        if kind < 0.8:  # cut
            out.append(data[: rng.randrange(len(data) + 1)])
        elif kind < 0.9:  # bytes spliced in
            at = rng.randrange(len(data) + 1)
            out.append(data[:at] + rng.choice(_BYTES) + data[at:])
        elif kind < 0.95:  # a key twice: the last one counts
            key = rng.choice(FIELDS)
            extra = orjson.dumps({key: rng.choice(_VALUES)})[1:-1]
            out.append(data[:-1] + b"," + extra + b"}" if rng.random() < 0.5 else data)
        else:  # whitespace, escapes, another container
            roll = rng.random()
            if roll < 0.3:
                out.append(b" \t\r\n" + data + b" \n")
            elif roll < 0.6:
                out.append(data.replace(b'"', b'"\\u0020', 1) if rng.random() < 0.5 else data)
            else:
                out.append(b"[" + data + b"]")
    return out


# -- the streams --------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """A named stream and how to compute its outcome."""

    name: str
    outcome: Callable[[], dict[str, Any]]
    #: minutes, not seconds: checked by ``make golden``, not in ``make test``
    heavy: bool = False


def _replay_of(scenario: Scenario) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        sim = simulate(scenario)
        return replay_outcome(sim.lines, sim.bank)

    return run


def _replay_streamed(scenario: Scenario) -> Callable[[], dict[str, Any]]:
    """A stream too big to hold: lines generated as they are fed."""

    def run() -> dict[str, Any]:
        from streams.simulate import _Generator  # the bank is known before the first line

        gen = _Generator(scenario)
        bank = list(gen.bank)
        return replay_outcome(gen.lines(), bank)

    return run


#: A million events (1,007,183 lines): the default scenario at another seed, 33.5 times
#: the traffic.
MILLION = Scenario(seed=11, scale=33.5)

STREAMS: tuple[Stream, ...] = (
    Stream("default", _replay_of(Scenario())),
    Stream("three_cascades", _replay_of(three_cascades_scenario(7))),
    Stream("seed5_20min", _replay_of(Scenario(seed=5, minutes=20))),
    Stream(
        "seed1_small",
        _replay_of(Scenario(seed=1, minutes=6, background_per_minute=50, quiet_banked=4)),
    ),
    Stream(
        "seed3_small",
        _replay_of(Scenario(seed=3, minutes=8, background_per_minute=40, quiet_banked=2)),
    ),
    Stream(
        "videos",
        _replay_of(Scenario(seed=7, video_banked=1, video_fraction=0.1, extra_video_entries=1000)),
    ),
    Stream("hostile_parse", lambda: parse_outcome(hostile_lines())),
    Stream("million", _replay_streamed(MILLION), heavy=True),
)


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="record the outcomes anew")
    ap.add_argument("names", nargs="*", help="streams (default: all)")
    args = ap.parse_args()
    failed = False
    for stream in STREAMS:
        if args.names and stream.name not in args.names:
            continue
        got = stream.outcome()
        path = golden_path(stream.name)
        if args.write:
            GOLDEN.mkdir(exist_ok=True)
            path.write_bytes(orjson.dumps(got, option=orjson.OPT_INDENT_2) + b"\n")
            print(f"{stream.name}: recorded ({got['lines']} lines)")
            continue
        want = orjson.loads(path.read_bytes())
        same = got == want
        failed |= not same
        print(f"{stream.name}: {'same' if same else 'DIFFERENT'}")
        if not same:
            for key in sorted(set(got) | set(want)):
                if got.get(key) != want.get(key):
                    print(f"  {key}: got {got.get(key)!r:.300} want {want.get(key)!r:.300}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
