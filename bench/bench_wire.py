"""What a record between stages costs through Kafka: encode and decode, per event.

A worker hands most envelopes to its own partitions in memory (nothing is
encoded); what goes through the ``resolve`` and ``clusters`` topics is
encoded once and decoded once per hop (:mod:`streams.wire`), and a
replacement worker decodes its whole cluster log. Decoding validates every
event with the event parser itself, so its peer, timed in the same run on
the same events, is:

- ``parse``: :func:`streams.events.parse_event` of the event's JSON line
  (JSON plus validation: what ingest pays once per input line);
- ``*_py``: the same records read by the Python reader (``Envelope.read_in_python``,
  ``streams.wire.routed_log_in_python``), which read them all before the compiled
  reader and now reads what it leaves (a record that is not the stages').

Timed on CPU time (``time.process_time``, the machine is shared), the
collector off, interleaved runs, medians.

    python bench/bench_wire.py                  # a few seconds
    python bench/bench_wire.py --events 50000 --repeats 9 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_core import alternated_us  # noqa: E402

from streams.alerts import MatchInfo  # noqa: E402
from streams.events import ShareEvent, parse_event  # noqa: E402
from streams.router import Routed  # noqa: E402
from streams.simulate import Scenario, simulate  # noqa: E402
from streams.stages import Envelope  # noqa: E402
from streams.wire import (  # noqa: E402
    ToRoute,
    decode_routed_log,
    encode,
    routed_log_in_python,
)

PER_ENVELOPE = 500


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="one JSON line only")
    args = ap.parse_args()

    sim = simulate(Scenario(seed=11))
    parsed = (parse_event(line) for line in sim.lines)
    events = [e for e in parsed if isinstance(e, ShareEvent)][: args.events]
    lines = [e.to_json() for e in events]
    match = MatchInfo("ncii", "pdq", "ab" * 32, 3)
    routed = [Routed(e, "b-x", match if e.type == "upload" else None) for e in events]
    chunks = [routed[i : i + PER_ENVELOPE] for i in range(0, len(routed), PER_ENVELOPE)]
    to_route = [ToRoute(e) for e in events]
    to_route_chunks = [
        to_route[i : i + PER_ENVELOPE] for i in range(0, len(to_route), PER_ENVELOPE)
    ]
    routed_raw = [Envelope(list(c)).pack() for c in chunks]
    to_route_raw = [Envelope(list(c)).pack() for c in to_route_chunks]
    logs = [encode(c) for c in chunks]  # a cluster-log entry: the routed events of a batch

    runs: dict[str, Callable[[], object]] = {
        "parse": lambda: [parse_event(line) for line in lines],
        "encode_routed": lambda: [Envelope(list(c)).pack() for c in chunks],
        "encode_to_route": lambda: [Envelope(list(c)).pack() for c in to_route_chunks],
        "decode_routed": lambda: [Envelope.unpack(raw) for raw in routed_raw],
        "decode_to_route": lambda: [Envelope.unpack(raw) for raw in to_route_raw],
        "restore_cluster_log": lambda: [decode_routed_log(raw) for raw in logs],
        # the Python reader, left what the core does not read (and what read all before it)
        "decode_routed_py": lambda: [Envelope.read_in_python(raw) for raw in routed_raw],
        "decode_to_route_py": lambda: [Envelope.read_in_python(raw) for raw in to_route_raw],
        "restore_cluster_log_py": lambda: [routed_log_in_python(raw) for raw in logs],
    }
    us = {k: round(v, 3) for k, v in alternated_us(runs, args.repeats, len(events)).items()}
    out = {
        "events": len(events),
        "repeats": args.repeats,
        # what an event costs on the wire, each form (the resolve topic's, the clusters')
        "bytes_per_event": {
            "to_route": round(sum(map(len, to_route_raw)) / len(events), 1),
            "routed": round(sum(map(len, routed_raw)) / len(events), 1),
        },
        "us_per_event": us,
        "ratio_to_parse": {name: round(v / us["parse"], 3) for name, v in us.items()},
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{len(events)} events, {args.repeats} runs, CPU time, medians (us per event)")
    sizes = out["bytes_per_event"]
    print(f"  bytes an event: to route {sizes['to_route']}, routed {sizes['routed']}")
    for name, v in us.items():
        print(f"  {name:<20} {v:8.3f}   {out['ratio_to_parse'][name]:.2f} x parse")


if __name__ == "__main__":
    main()
