"""What ``viralwatch produce`` and a reviewer's action do when the broker refuses a record.

The client's ``flush`` raises for nothing: these tests hand ``produce`` and
``publish_action`` a producer whose sends fail as kafka-python's do (its own
``Future``), and check that the failure is said, not swallowed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka.errors import NotLeaderForPartitionError
from kafka.future import Future

from streams.review import ReviewAction, Signal
from streams.runtime.produce import NotDelivered, produce, publish_action
from streams.settings import Settings


class Producer:
    """Sends that succeed or fail as ``fails`` says, settled at ``flush`` as the client's are."""

    def __init__(self, fails: Callable[[str, bytes], bool]) -> None:
        self.fails = fails
        self.pending: list[tuple[Future, bool]] = []
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> Future:
        future = Future()
        bad = self.fails(topic, value)
        self.pending.append((future, bad))
        if not bad:
            self.sent.append((topic, value))
        return future

    def flush(self) -> None:
        for future, bad in self.pending:
            if bad:
                future.failure(NotLeaderForPartitionError())
            else:
                future.success(None)
        self.pending.clear()

    def close(self) -> None:
        pass


SETTINGS = Settings.from_env({}, broker="kafka://127.0.0.1:9")


def test_a_record_the_broker_refused_fails_produce_with_the_count() -> None:
    lines = [b'{"n":%d}' % i for i in range(10)]
    prod = Producer(lambda _topic, value: value in (b'{"n":3}', b'{"n":7}'))
    with pytest.raises(NotDelivered, match=r"2 of 10 records .*NotLeaderForPartitionError"):
        produce(lines, SETTINGS, producer=prod)
    assert len(prod.sent) == 8


def test_all_acknowledged_produce_reports_what_it_sent() -> None:
    lines = [b'{"n":%d}' % i for i in range(10)]
    prod = Producer(lambda _topic, _value: False)
    done = produce(lines, SETTINGS, producer=prod)
    assert (done.records, done.bytes) == (10, sum(map(len, lines)))


def test_an_action_whose_bank_change_failed_publishes_no_audit_record() -> None:
    action = ReviewAction(
        "bank",
        "alice",
        "confirmed",
        1_767_225_600_000,
        "u-00112233445566ff",
        (Signal("pdq", "ab" * 32),),
    )
    bank = SETTINGS.topic("bank")
    prod = Producer(lambda topic, _value: topic == bank)
    with pytest.raises(NotDelivered, match="1 of 1 records"):
        publish_action(action, SETTINGS, producer=prod)
    assert prod.sent == []
