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
        assert report["workarounds"] == {
            "end_offset_probes": 0,
            "short_fetch_wait": False,
            "times_written": 0,
            "times_read_back": 0,
            "times_dropped": 0,
        }


def test_a_shares_partition_is_idle_only_once_read_to_its_log_end(broker: KafkaBroker) -> None:
    """The worker's ``shares`` reader on Apache Kafka: a partition silent for the idle time
    is idle only if the fetcher's last answer for it, no older than that, found it read to
    its end (Kafka Streams' rule). Records written to a partition the fetcher has not asked
    for since (here paused: as a reader does with one ahead of the others, or a leader that
    does not answer) keep it busy, where wall-clock silence alone called it idle, and the
    others' event time could run past them."""
    import asyncio

    from aiokafka import TopicPartition
    from kafka_helpers import create_topics, names, produce_in_order, settings_for

    from streams.runtime.checkpoint import Checkpoint
    from streams.runtime.shares_reader import SharesReader
    from streams.stages import Ingest

    idle_s = 1.0
    prefix, app_id = names()
    s = settings_for(broker, prefix, app_id, partitions=2, partition_idle_s=idle_s)
    create_topics(s)
    topic = s.topic("shares")

    def line(i: int, partition: int) -> bytes:
        return (
            f'{{"event_id":"e{partition}-{i}","type":"upload","ts":{1_800_000_000_000 + i},'
            f'"post_id":"p{partition}-{i}","user_id":"u","content":{{"md5":"{i:032x}"}}}}'
        ).encode()

    class Front:
        """The part of the topology the reader drives: stage 1a and its clock."""

        def __init__(self) -> None:
            self.ingest = Ingest(2, idle_s, topic=topic, log_end=True)
            self.walls = Ingest(2, idle_s, topic=topic)  # wall-clock silence alone, beside it
            self.detectors: dict[int, Any] = {}  # nothing waits for a watermark here

        def held_fill(self) -> float:
            return 0.0  # nor in a held store: the reader reads whole batches

        def ingest_records(self, runs: Any, now: float) -> int:
            self.walls.handle_records(runs, now)
            return self.ingest.handle_records(runs, now).events

    for p in (0, 1):
        produce_in_order(broker, topic, [line(i, p) for i in range(5)], partition=p)
    front = Front()
    reader = SharesReader(s, front, Checkpoint(sinks=[], logs=[]))  # type: ignore[arg-type]

    async def scenario() -> None:
        consumer = reader.make_consumer()
        await consumer.start()
        reader.consumer = consumer
        consumer.subscribe([topic])
        try:

            async def poll_for(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    await reader.poll(100)
                    now = time.monotonic()
                    for clock in (front.ingest.clock, front.walls.clock):
                        clock.assign(reader.owned(), now)
                    reader.touch_backlogged(now)

            deadline = time.monotonic() + 30
            while reader.read < 10:
                assert time.monotonic() < deadline, f"read {reader.read} of 10"
                await poll_for(0.2)
            await poll_for(idle_s + 0.5)  # silent, and the long polls find both at their end
            now = time.monotonic()
            assert front.ingest.clock.marks(now) == {
                0: (1_800_000_000_004, True),
                1: (1_800_000_000_004, True),
            }
            tp1 = TopicPartition(topic, 1)
            consumer.pause(tp1)
            await poll_for(1.5)  # what was in flight for it is answered (a long poll: 0.5 s)
            produce_in_order(broker, topic, [line(i, 1) for i in range(5, 8)], partition=1)
            await poll_for(idle_s + 0.5)
            now = time.monotonic()
            # partition 1's records wait unread: busy, though silent (0 is read to its end)
            assert front.ingest.clock.marks(now) == {
                0: (1_800_000_000_004, True),
                1: (1_800_000_000_004, False),
            }
            assert front.walls.clock.marks(now)[1] == (1_800_000_000_004, True)  # as before
            consumer.resume(tp1)
            await poll_for(0.5)
            assert reader.read == 13
            await poll_for(idle_s + 0.5)  # read to its end again: idle once silent
            assert front.ingest.clock.marks(time.monotonic())[1] == (1_800_000_000_007, True)
        finally:
            reader.consumer = None
            await consumer.stop()

    asyncio.run(scenario())
