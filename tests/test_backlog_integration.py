"""A backlog on Apache Kafka, read by one worker and by two: backpressure, never loss.

Every event is on the ``shares`` topic before a worker starts, so the reader can
take tens of thousands of records a second, far more than the stages after it
hold at once. Reshares wait for their parents in a bounded store
(``VIRALWATCH_MAX_HELD``, lowered here so that a small backlog finds the bound);
reading must slow down when it fills, never refuse a valid reshare
(``orphan_overflow``). Before the reader held back (``shares_reader.held_back``),
one worker refused thousands of this backlog's reshares in its first seconds and
its alerts were not ``replay``'s.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka_helpers import (
    TopicReader,
    WorkerProcess,
    broker,
    latest_stats,
    produce_lines,
    worker_env,
    workers,
)
from test_streaming_integration import IN_TIME, Expected, assert_exactly_once, setup, wait_done

from streams.runtime.broker import RunningBroker
from streams.simulate import Scenario, simulate, write_bank

pytestmark = pytest.mark.integration
__all__ = ["broker"]  # the module-scoped fixture, imported for pytest

#: About 150,000 events over 30 minutes of event time, every one in time.
SCALE = 5.0
#: Reshares held per worker, a tenth of the default (2,500 per resolve partition): about
#: twice what the allowed lateness keeps waiting at once in this backlog.
MAX_HELD = 10_000


@pytest.fixture(scope="module")
def backlog(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], Path, Expected]:
    sim = simulate(Scenario(seed=11, **{**IN_TIME, "background_per_minute": 300.0}, scale=SCALE))
    bank_path = tmp_path_factory.mktemp("backlog") / "bank.csv"
    write_bank(sim.bank, bank_path)
    return sim.lines, bank_path, Expected(sim.lines, sim.bank)


def refused(procs: tuple[WorkerProcess, ...], stats: TopicReader) -> dict[str, int]:
    """Each worker's reshares refused for a full held store, as its last stats record says."""
    return {
        w: d.get("stats", {}).get("rejected", {}).get("orphan_overflow", 0)
        for w, d in latest_stats(stats.records).items()
    }


@pytest.mark.parametrize("n", [1, 2])
def test_a_backlog_is_read_with_backpressure_and_nothing_refused(
    broker: RunningBroker, tmp_path: Path, backlog: tuple[list[bytes], Path, Expected], n: int
) -> None:
    lines, bank_path, expected = backlog
    assert len(lines) > 100_000 and len(expected.alerts) >= 10
    s = setup(broker, tmp_path, bank_path)
    produce_lines(broker, s.topic("shares"), lines, keying="post")
    env = worker_env(s, VIRALWATCH_MAX_HELD=str(MAX_HELD))
    procs = tuple(WorkerProcess(env, tmp_path / f"worker-{i}.log") for i in range(n))
    started = time.monotonic()
    with workers(*procs):
        alerts, actions = wait_done(broker, s, expected, procs, timeout=150.0)
        stats = TopicReader(broker, s.topic("stats"))
        stats.until(lambda r: len(latest_stats(r)) >= n, 20, "every worker's stats")
        overflow = refused(procs, stats)
        stats.close()
    took = time.monotonic() - started
    assert not any(overflow.values()), f"reshares refused: {overflow} ({took:.0f} s)"
    assert_exactly_once(alerts, expected.alerts, "alerts")
    assert_exactly_once(actions, expected.actions, "takedown requests")
