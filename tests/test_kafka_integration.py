"""What only Apache Kafka has: log compaction, a broker restart, none of the bundled broker's bugs.

The streaming tests of ``test_streaming_integration.py`` run on Apache Kafka
too; these need what the bundled broker cannot do (it keeps everything in
memory and never compacts):

- the state logs' changelog topics compacted by Kafka's log cleaner, and a
  replacement worker restoring from what the cleaner left;
- the broker stopped and started again on the same data folder in the middle
  of a stream: workers reconnect, nothing is lost, no alert is sent twice;
- none of the bundled broker's workarounds in use on Apache Kafka, while the
  bundled broker still needs them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_helpers import (
    TopicReader,
    WorkerProcess,
    broker,
    latest_stats,
    produce_lines,
    require_kafka,
    worker_env,
    workers,
)
from test_streaming_integration import (
    COMPACT_OFTEN,
    Expected,
    assert_exactly_once,
    scenario_files,
    setup,
    wait_done,
)

from streams.runtime.kafka_server import KafkaBroker, start_kafka

pytestmark = pytest.mark.integration
__all__ = ["broker"]  # the module-scoped fixture, imported for pytest

#: Changelog topics whose segments roll every 200 ms, cleaned as soon as there is
#: anything to clean, tombstones dropped at once: the cleaner runs within the test.
COMPACT_SOON = (
    "segment.ms=200,min.cleanable.dirty.ratio=0.001,min.compaction.lag.ms=0,"
    "delete.retention.ms=100,max.compaction.lag.ms=1000"
)


def changelog_topics(s: Any) -> list[str]:
    return list(s.state_log_changelogs())


def compaction_state(b: KafkaBroker, topics: list[str]) -> tuple[int, int]:
    """(records left, end offsets) over the topics' partitions: fewer left means cleaned."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=b.bootstrap, enable_auto_commit=False)
    try:
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))
        ]
        ends = consumer.end_offsets(tps)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        left = 0
        idle = 0
        while idle < 3:
            got = consumer.poll(timeout_ms=300, max_records=50_000)
            n = sum(len(v) for v in got.values())
            left += n
            idle = idle + 1 if n == 0 else 0
        return left, sum(ends.values())
    finally:
        consumer.close()


def test_a_replacement_restores_from_changelogs_the_log_cleaner_compacted(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    lines, bank, bank_path = scenario_files(tmp_path, background_per_minute=120.0)
    expected = Expected(lines, bank)
    s = setup(broker, tmp_path, bank_path).with_(
        log_compact_bytes=COMPACT_OFTEN, log_compact_garbage=0.0, changelog_config=COMPACT_SOON
    )  # compacted whatever the garbage: a short run evicts no cluster
    first = WorkerProcess(worker_env(s), tmp_path / "first.log")
    second = WorkerProcess(worker_env(s), tmp_path / "second.log")
    half = len(lines) // 2
    with workers(first):
        produce_lines(broker, s.topic("shares"), lines[:half])
        seen = TopicReader(broker, s.topic("alerts"))
        seen.until(lambda r: len(r) >= 1, 60, "a first alert", on_timeout=first.log_tail)
        seen.close()
        # the worker's snapshots delete old keys (tombstones); the cleaner drops them
        deadline = time.monotonic() + 90
        left, end = compaction_state(broker, changelog_topics(s))
        while left >= end and time.monotonic() < deadline:
            time.sleep(2)
            left, end = compaction_state(broker, changelog_topics(s))
        first.kill()
    assert end > 0 and left < end, (
        f"the log cleaner did not compact the changelogs ({left} of {end} records left)\n"
        + broker.log_path.read_text(errors="replace")[-2000:]
    )
    with workers(second):
        produce_lines(broker, s.topic("shares"), lines[half:])
        alerts, actions = wait_done(broker, s, expected, (second,), timeout=120)
    assert "restored" in second.log_tail(400)
    assert_exactly_once(alerts, expected.alerts, "alerts")
    assert_exactly_once(actions, expected.actions, "takedown requests")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own (it is restarted), data kept across the restart."""
    require_kafka()
    b = start_kafka(data=tmp_path / "kafka", log_path=tmp_path / "kafka.log", keep_data=True)
    try:
        yield b
    finally:
        b.stop(remove=True)


def test_the_broker_restarted_mid_stream_loses_nothing_and_repeats_nothing(
    own_broker: KafkaBroker, tmp_path: Path
) -> None:
    lines, bank, bank_path = scenario_files(tmp_path, background_per_minute=120.0)
    expected = Expected(lines, bank)
    s = setup(own_broker, tmp_path, bank_path)
    w = WorkerProcess(worker_env(s), tmp_path / "worker.log")
    half = len(lines) // 2
    with workers(w):
        produce_lines(own_broker, s.topic("shares"), lines[:half])
        seen = TopicReader(own_broker, s.topic("alerts"))
        seen.until(lambda r: len(r) >= 1, 60, "a first alert", on_timeout=w.log_tail)
        seen.close()
        old_pid = own_broker.pid
        own_broker.restart()  # SIGTERM, then the same ports and data folder
        assert own_broker.pid != old_pid
        produce_lines(own_broker, s.topic("shares"), lines[half:])
        alerts, actions = wait_done(own_broker, s, expected, (w,), timeout=150)
        assert w.alive(), "the worker must ride out a broker restart:\n" + w.log_tail()
    assert_exactly_once(alerts, expected.alerts, "alerts")
    assert_exactly_once(actions, expected.actions, "takedown requests")


def test_apache_kafka_needs_none_of_the_bundled_brokers_workarounds(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    """A replacement worker recovers its tables without probing end offsets, with the
    client's normal fetch wait (the bundled broker's paths stay off on Kafka)."""
    lines, bank, bank_path = scenario_files(tmp_path)
    expected = Expected(lines, bank)
    s = setup(broker, tmp_path, bank_path)
    assert not s.local_broker
    first = WorkerProcess(worker_env(s), tmp_path / "first.log")
    with workers(first):
        produce_lines(broker, s.topic("shares"), lines[: len(lines) // 2])
        seen = TopicReader(broker, s.topic("alerts"))
        seen.until(lambda r: len(r) >= 1, 60, "a first alert", on_timeout=first.log_tail)
        seen.close()
        first.kill()
    second = WorkerProcess(worker_env(s), tmp_path / "second.log")
    with workers(second):
        produce_lines(broker, s.topic("shares"), lines[len(lines) // 2 :])
        wait_done(broker, s, expected, (second,), timeout=120)
        stats = TopicReader(broker, s.topic("stats"))
        me = f":{second.pid}"
        stats.until(
            lambda r: any(w.endswith(me) for w in latest_stats(r)), 20, "the replacement's stats"
        )
        latest = latest_stats(stats.records)
        stats.close()
    assert "restored" in second.log_tail(400)
    assert any(w.endswith(me) for w in latest)
    for report in latest.values():
        assert report["workarounds"] == {"end_offset_probes": 0, "short_fetch_wait": False}
