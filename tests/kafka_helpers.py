"""Kafka test helpers: workers as processes, topic readers, the bundled broker per module.

Integration tests run on Apache Kafka (the ``broker`` fixture of ``conftest.py``: built
by ``make kafka`` from Maven Central's jars, started once for the session on free
loopback ports: each start is two JVMs, the storage format and the node).
The bundled broker (``tansu``) keeps a smoke test: it is the demo's zero-install default.

Every test gets its own topic prefix and application id (:func:`names`), so
tests sharing a broker never see each other's records or consumer groups.
Workers run as real processes (``python -m streams.runtime``, configured by
``VIRALWATCH_*`` variables, the way an operator runs them), are stopped or
killed by their PID, and write their log to the test's temporary directory;
a failure quotes the log's tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.runtime.broker import LocalBroker, RunningBroker, start_local_broker, tansu_binary
from streams.runtime.kafka_server import java, kafka_lib
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def require_broker() -> None:
    try:
        tansu_binary()
    except FileNotFoundError as exc:
        pytest.skip(f"the bundled Kafka-compatible broker is not available: {exc}")


def require_kafka() -> None:
    """Skip without Apache Kafka, saying why; in CI (``CI`` set) that is a failure: ``make
    test`` builds it, so a missing broker there is a broken set-up, not a reason to skip."""
    try:
        java()
        kafka_lib()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Apache Kafka is not available in CI: {exc}")
        pytest.skip(f"Apache Kafka is not available: {exc}")


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The bundled broker on a free loopback port for the test module, stopped by PID after."""
    require_broker()
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    b = start_local_broker(log_path=log)
    try:
        yield b
    finally:
        b.stop()


def names() -> tuple[str, str]:
    """A fresh topic prefix and application id."""
    tag = uuid.uuid4().hex[:10]
    return f"t{tag}.", f"app-{tag}"


def settings_for(broker: RunningBroker, prefix: str, app_id: str, **extra: Any) -> Settings:
    return Settings.from_env(
        {},
        broker=broker.url,
        topic_prefix=prefix,
        app_id=app_id,
        local_broker=broker.local,
        **extra,
    )


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that configures a worker process like ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRALWATCH_")}
    env.update(settings.with_(log_level="INFO").to_env(), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    """A worker running as its own process; stop it with :meth:`stop` or :meth:`kill`."""

    env: dict[str, str]
    log_path: Path
    argv: list[str] = field(default_factory=lambda: [sys.executable, "-m", "streams.runtime"])
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no goodbye, no commit, no flush."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit status."""
        if self.proc is None:
            return None
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


@contextlib.contextmanager
def workers(*procs: WorkerProcess) -> Iterator[tuple[WorkerProcess, ...]]:
    """Start the workers; stop every one still running at the end (even on failure)."""
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()


class TopicReader:
    """Reads every partition of a topic from the start, without a consumer group."""

    def __init__(self, broker: RunningBroker, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        deadline = time.monotonic() + 30
        parts = self.consumer.partitions_for_topic(topic)
        while not parts:
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} does not exist")
            time.sleep(0.2)
            self.consumer.poll(timeout_ms=50)
            parts = self.consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list[Any] = []

    def poll(self, timeout: float = 0.2) -> list[Any]:
        got = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=10_000)
        new = [r for batch in got.values() for r in batch]
        self.records.extend(new)
        return new

    def until(
        self,
        done: Callable[[list[Any]], bool],
        timeout: float,
        what: str = "",
        on_timeout: Callable[[], str] | None = None,
    ) -> list[Any]:
        """Poll until ``done(records)``; fail saying ``what`` (and ``on_timeout()``) if never."""
        deadline = time.monotonic() + timeout
        while not done(self.records):
            if time.monotonic() > deadline:
                extra = on_timeout() if on_timeout else ""
                pytest.fail(
                    f"timed out after {timeout:g}s waiting for {what or self.topic}\n{extra}"
                )
            self.poll()
        return self.records

    def values(self) -> list[bytes]:
        return [r.value for r in self.records]

    def close(self) -> None:
        self.consumer.close()


def latest_stats(records: list[Any]) -> dict[str, dict[str, Any]]:
    """The newest stats record of each worker."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        d = orjson.loads(r.value)
        out[d["worker"]] = d
    return out


def stats_lines(records: list[Any], now: float | None = None) -> str:
    """Each worker's newest stats record, in a line a timed-out test can print: how old it
    is, the partitions held, each clusters partition's watermark, what waits."""
    now = time.time() if now is None else now
    out = []
    for worker, d in sorted(latest_stats(records).items()):
        fields = {
            "age_s": round(now - d["time"], 1),
            "partitions": d.get("partitions"),
            "watermarks": d.get("watermarks"),
            "pending": d.get("pending"),
            "held": d.get("held"),
            "producer_queued": d.get("producer_queued"),
            "skipped": d.get("skipped"),
            "seeks": d.get("seeks"),
            "stalled": d.get("stalled"),
            "progress": d.get("progress"),
            "waits": d.get("waits"),
        }
        out.append(f"stats of {worker}: {orjson.dumps(fields).decode()}")
    return "\n".join(out) or "(no stats record)"


def produce_lines(
    broker: RunningBroker,
    topic: str,
    lines: list[bytes],
    rate: float | None = None,
    keying: str = "none",
) -> None:
    from streams.runtime.produce import produce

    settings = Settings.from_env({}, broker=broker.url)
    produce(lines, settings, topic=topic, rate=rate, keying=keying)


def produce_in_order(
    broker: RunningBroker, topic: str, lines: list[bytes], partition: int = 0
) -> None:
    """Send ``lines`` to one partition of ``topic``, in this order.

    Why: a partition no reader has seen a record from for a while is *idle*
    and does not hold the watermark back (``streams.watermarks``). Lines
    spread over several partitions are read in whatever order the workers
    poll them, so a line whose partition happens to be read last can be late
    (the others moved the watermark past it) and miss the cluster it would
    start. On one partition they are read in order, so none is late, and the
    stream must give what ``replay`` gives.
    """
    from streams.runtime.produce import make_producer

    prod: Any = make_producer(Settings.from_env({}, broker=broker.url))
    try:
        for line in lines:
            prod.send(topic, value=line, partition=partition)
        prod.flush()
    finally:
        prod.close()


def create_topics(settings: Settings) -> None:
    """Create the pipeline's topics up front, as a deployment does (no auto-created topics)."""
    from streams.runtime.broker import ensure_topics
    from streams.settings import TOPICS

    ensure_topics(settings.bootstrap, {settings.topic(t): settings.partitions for t in TOPICS})
