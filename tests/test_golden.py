"""The pipeline still decides what it decided before the compiled core: byte for byte.

``tests/golden/*.json`` were recorded from the pure-Python code (issue 17)
before any of it moved to Rust; see :mod:`golden` for what each holds and how
to look at a difference (``python tests/golden.py NAME``). The million-event
stream takes minutes: ``make golden`` checks it (with every other), outside
``make test``'s time budget.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from golden import STREAMS, Stream, golden_path, replay_outcome

from streams.events import Rejection, parse_event
from streams.simulate import simulate, three_cascades_scenario


def _param(stream: Stream) -> Any:
    return pytest.param(stream, id=stream.name, marks=[pytest.mark.slow])


@pytest.mark.parametrize("stream", [_param(s) for s in STREAMS if not s.heavy])
def test_outcome_is_the_recorded_one(stream: Stream) -> None:
    want = orjson.loads(golden_path(stream.name).read_bytes())
    got = stream.outcome()
    assert got["lines"] == want["lines"]
    for key in sorted(want):
        assert got[key] == want[key], f"{stream.name}: {key} differs"


def test_a_changed_decision_is_caught() -> None:
    # the same stream less one line: a counter and the rejections' digest move
    sim = simulate(three_cascades_scenario(7))
    want = orjson.loads(golden_path("three_cascades").read_bytes())
    bad = [i for i, line in enumerate(sim.lines) if parse_event(line).__class__ is Rejection]
    assert bad, "the stream plants malformed lines"
    lines = sim.lines[: bad[0]] + sim.lines[bad[0] + 1 :]
    got = replay_outcome(lines, sim.bank)
    assert got["rejections_sha256"] != want["rejections_sha256"]
    assert got["stats"] != want["stats"]
