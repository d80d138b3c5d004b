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


def make_producer(settings: Settings, **overrides: object) -> object:
    """A kafka-python producer for the configured broker (acks from all replicas, batching)."""
    from kafka import KafkaProducer

    config: dict[str, object] = dict(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=64 * 1024,
        max_request_size=2 * 1024 * 1024,
        retries=5,
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

    Raises ``ValueError`` for an unknown keying, and the client's errors
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
    start = time.monotonic()
    try:
        for line in lines:
            if rate is not None:
                due = start + sent / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            prod.send(name, value=line, key=key_for(line, keying))  # type: ignore[attr-defined]
            sent += 1
            size += len(line)
            if on_progress is not None and sent % 1000 == 0:
                on_progress(sent)
        prod.flush()  # type: ignore[attr-defined]
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
    try:
        for change in action.bank_changes():
            key, value = change.record()
            prod.send(settings.topic("bank"), key=key, value=value)  # type: ignore[attr-defined]
        prod.flush()  # type: ignore[attr-defined]
        key, value = action.record()
        prod.send(settings.topic(AUDIT_TOPIC), key=key, value=value)  # type: ignore[attr-defined]
        prod.flush()  # type: ignore[attr-defined]
    finally:
        if own:
            prod.close()  # type: ignore[attr-defined]
