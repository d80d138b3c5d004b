"""Send a file of share events to the ``shares`` topic: for operators, demos and tests.

Each line of the file becomes one record, byte for byte (bad lines too: the
pipeline must dead-letter them, and this is how to check that it does).
Records are keyed as producers in the wild key them: not at all (the
default; the client spreads them over the partitions), by the post id, or by
the event id. ``rate`` paces the sending in records per second, for a
steady load.

>>> key_for(b'{"event_id":"e1","post_id":"p1"}', "post")
b'p1'
>>> key_for(b"not json", "post") is None
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import orjson

from streams.review import AUDIT_TOPIC, ReviewAction
from streams.settings import Settings

KEYINGS: Final = ("none", "post", "event")


def key_for(line: bytes, keying: str) -> bytes | None:
    """The record key for ``line`` under ``keying`` (``None``: unkeyed, or not readable)."""
    if keying == "none":
        return None
    field = "post_id" if keying == "post" else "event_id"
    try:
        value = orjson.loads(line).get(field)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return str(value).encode() if value is not None else None


def read_lines(source: IO[bytes]) -> Iterator[bytes]:
    """Non-blank lines without their line ending."""
    for line in source:
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield line


@dataclass(frozen=True)
class Produced:
    """What was sent."""

    records: int
    bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")


class NotDelivered(RuntimeError):
    """Records the broker did not acknowledge: they are not on the topic."""


class Deliveries:
    """Counts the sends that failed, so that no record is lost unnoticed.

    Why: kafka-python's ``flush`` waits for every send but raises for none; a
    record whose retries ran out (a partition without a leader for longer
    than the delivery timeout, say) fails only its own future. Each send's
    future is tracked here and :meth:`check` raises once the sends are
    flushed. A callback, not a list of futures: a file of millions of lines
    keeps no per-record object.

    >>> from kafka.future import Future
    >>> d = Deliveries()
    >>> ok, bad = Future(), Future()
    >>> _ = d.track(ok), d.track(bad)
    >>> _ = ok.success(None), bad.failure(TimeoutError("no leader"))
    >>> d.check(2)
    Traceback (most recent call last):
    ...
    streams.runtime.produce.NotDelivered: 1 of 2 records were not acknowledged by the broker \
(first: TimeoutError: no leader)
    """

    def __init__(self) -> None:
        self.failed = 0
        self.first: BaseException | None = None

    def track(self, future: object) -> object:
        """Watch ``future`` (what the client's ``send`` returned); returns it."""
        future.add_errback(self._failed)  # type: ignore[attr-defined]
        return future

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first is None:
            self.first = exc

    def check(self, sent: int) -> None:
        """Raise :class:`NotDelivered` if any tracked send failed (call after ``flush``)."""
        if self.failed:
            first = self.first
            raise NotDelivered(
                f"{self.failed} of {sent} records were not acknowledged by the broker "
                f"(first: {type(first).__name__}: {first})"
            )


def make_producer(settings: Settings, **overrides: object) -> object:
    """A kafka-python producer for the configured broker (acks from all replicas, batching).

    Retries are the client's default, bounded by time, not by count: a send
    is retried until ``delivery_timeout_ms`` (two minutes) has passed, as the
    Kafka clients advise. A count of five let a record fail within half a
    second when a fresh topic's partitions had no leader yet
    (``NotLeaderForPartitionError``). The client's idempotence, on by default
    with ``acks="all"``, keeps the retried records in order and unrepeated.
    """
    from kafka import KafkaProducer

    config: dict[str, object] = dict(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=64 * 1024,
        max_request_size=2 * 1024 * 1024,
    )
    config.update(settings.security.kafka_python_config())
    config.update(overrides)
    return KafkaProducer(**config)


def produce(
    lines: Iterable[bytes],
    settings: Settings,
    *,
    topic: str | None = None,
    keying: str = "none",
    rate: float | None = None,
    producer: object | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Produced:
    """Send ``lines`` to ``topic`` (default: the ``shares`` topic); wait until all are acknowledged.

    Raises ``ValueError`` for an unknown keying, :class:`NotDelivered` when
    any record was not acknowledged, and the client's errors
    (``kafka.errors.KafkaError``) when the broker refuses or cannot be reached.
    """
    if keying not in KEYINGS:
        raise ValueError(f"keying must be one of {', '.join(KEYINGS)}, not {keying!r}")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    own = producer is None
    prod = producer if producer is not None else make_producer(settings)
    name = topic or settings.topic("shares")
    sent = size = 0
    deliveries = Deliveries()
    start = time.monotonic()
    try:
        for line in lines:
            if rate is not None:
                due = start + sent / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            deliveries.track(prod.send(name, value=line, key=key_for(line, keying)))  # type: ignore[attr-defined]
            sent += 1
            size += len(line)
            if on_progress is not None and sent % 1000 == 0:
                on_progress(sent)
        prod.flush()  # type: ignore[attr-defined]
        deliveries.check(sent)
    finally:
        if own:
            prod.close()  # type: ignore[attr-defined]
    return Produced(sent, size, time.monotonic() - start)


def produce_file(path: Path, settings: Settings, **kwargs: object) -> Produced:
    """Send every line of the file at ``path`` (``-`` for stdin); see :func:`produce`."""
    import sys

    if str(path) == "-":
        return produce(read_lines(sys.stdin.buffer), settings, **kwargs)  # type: ignore[arg-type]
    with path.open("rb") as fh:
        return produce(read_lines(fh), settings, **kwargs)  # type: ignore[arg-type]


def publish_action(
    action: ReviewAction, settings: Settings, *, producer: object | None = None
) -> None:
    """Publish a reviewer's action: its bank changes on the ``bank`` topic, then the action on
    the ``audit`` topic; returns once the broker has acknowledged both.

    The bank changes go first, so a worker that reads the audit record has
    (or will have, the topics being read apart) the change it describes; a
    failure between the two leaves a bank change without its record, and
    publishing the same action again is harmless (bank updates are
    idempotent, audit readers dedupe on ``action_id``). Blocking (kafka-python):
    call it off the event loop (``loop.run_in_executor``). Raises the client's
    errors (``kafka.errors.KafkaError``) when the broker refuses or is unreachable.
    """
    own = producer is None
    prod = producer if producer is not None else make_producer(settings)
    deliveries = Deliveries()
    try:
        changes = action.bank_changes()
        for change in changes:
            key, value = change.record()
            deliveries.track(prod.send(settings.topic("bank"), key=key, value=value))  # type: ignore[attr-defined]
        prod.flush()  # type: ignore[attr-defined]
        deliveries.check(len(changes))
        key, value = action.record()
        deliveries.track(prod.send(settings.topic(AUDIT_TOPIC), key=key, value=value))  # type: ignore[attr-defined]
        prod.flush()  # type: ignore[attr-defined]
        deliveries.check(len(changes) + 1)
    finally:
        if own:
            prod.close()  # type: ignore[attr-defined]
