"""Apache Kafka (KRaft, one node) on loopback, for tests, benchmarks, the stack test and operators.

Production runs against a Kafka cluster someone else operates. To test the
pipeline against the real thing (offsets, compaction, restarts, consumer
groups) the project assembles Apache Kafka's broker from Maven Central's jars
(``make kafka``: ``deploy/kafka/pom.xml`` copies the runtime classpath into
``.kafka/lib``, git-ignored) and starts it here: one process that is both
broker and controller, on two free loopback ports, with its data in a folder
of its own.

"Ready" is not "the port is open": the socket accepts before the broker is
unfenced and can lead partitions, so :func:`start_kafka` waits until a
metadata request names this broker. A broker that exits or never gets there
raises :class:`BrokerError` with the tail of its log, never a hang.

Stopping (:meth:`KafkaBroker.stop`) is SIGTERM (Kafka's shutdown hook closes
broker and controller cleanly), SIGKILL after a grace. With ``keep_data``
the data folder survives, and :meth:`KafkaBroker.restart` starts the same
broker again on the same ports and data: a broker-restart test.

>>> props = server_properties(port=9092, controller_port=9093, data=Path("/tmp/k"))
>>> props["listeners"], props["controller.quorum.voters"]
('PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093', '1@127.0.0.1:9093')
>>> len(new_cluster_id()), new_cluster_id()[0] != "-"
(22, True)
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from streams.runtime.broker import (
    BrokerError,
    Listening,
    accepts,
    free_ports,
    log_since,
    log_tail,
    refuse_listened,
    why_it_exited,
)

#: Where ``make kafka`` puts the broker's classpath (next to ``streams/`` in a checkout).
DEFAULT_KAFKA_LIB: Final = Path(__file__).resolve().parents[2] / ".kafka" / "lib"
#: The broker takes a few seconds to start on 2 cores (JIT warm-up, KRaft election).
KAFKA_READY_TIMEOUT_S: Final = 90.0
#: A small, quick JVM: the tests run several brokers' worth of work on two cores.
JVM_OPTS: Final = (
    "-Xms128m",
    "-Xmx768m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)


def kafka_lib() -> Path:
    """The folder of Kafka's jars: ``VIRALWATCH_KAFKA_LIB``, else ``.kafka/lib`` of the checkout.

    Raises :class:`FileNotFoundError` saying how to build it when it is missing.
    """
    path = Path(os.environ.get("VIRALWATCH_KAFKA_LIB") or DEFAULT_KAFKA_LIB)
    if not any(path.glob("kafka_2.13-*.jar")):
        raise FileNotFoundError(
            f"Apache Kafka's jars are not in {path}: run `make kafka` "
            "(needs Java 17 and Maven; fetches from Maven Central)"
        )
    return path


def java() -> str:
    """The ``java`` program: ``$JAVA_HOME/bin/java``, else the PATH's."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise FileNotFoundError("Apache Kafka needs Java 17 or later: no `java` on the PATH")
    return found


def new_cluster_id() -> str:
    """A KRaft cluster id: a random 16-byte UUID in base64url, 22 characters, no leading '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def server_properties(
    *,
    port: int,
    controller_port: int,
    data: Path,
    host: str = "127.0.0.1",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The properties of a one-node KRaft broker+controller on ``host``, tuned for quick tests.

    Replication factors are 1 (one node), a consumer group's first rebalance
    does not wait, short sessions are allowed, and the log cleaner checks
    often (compacted changelogs shrink within a test when their segments are
    small). ``extra`` overrides any of them.
    """
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data / "log"),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "log.cleaner.dedupe.buffer.size": str(4 * 1024 * 1024),
        "log.cleaner.threads": "1",
        "log.cleaner.backoff.ms": "1000",
        "log.retention.check.interval.ms": "5000",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "delete.topic.enable": "true",
    }
    props.update(extra or {})
    return props


def _write_properties(path: Path, props: Mapping[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))


_LOG4J2: Final = """\
Configuration:
  status: warn
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
      - name: state.change.logger
        level: WARN
"""


@dataclass
class KafkaBroker(Listening):
    """A running Apache Kafka node; stop it with :meth:`stop` (or use it as a context manager)."""

    host: str
    port: int
    controller_port: int
    data: Path
    pid: int
    log_path: Path
    keep_data: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: Where this node's part of the log begins (a data folder started again appends).
    _log_from: int = field(default=0, repr=False)

    #: Apache Kafka needs none of the bundled broker's workarounds.
    local: bool = False

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """What this node has written to its log so far (:func:`log_since`)."""
        return log_since(self.log_path, self._log_from)

    def failure(self) -> str | None:
        """Why the node has failed, in one line (the last Java trace's exception and its
        causes: :func:`why_it_exited`), or ``None`` while it runs."""
        if self._process is None or self._process.poll() is None:
            return None
        return f"exited (status {self._process.returncode}): {why_it_exited(self.log())}"

    def stop(self, timeout: float = 30.0, *, remove: bool | None = None) -> None:
        """SIGTERM, SIGKILL after ``timeout``; remove the data unless kept. Idempotent.

        A Ctrl-C (any exception) during the grace kills the broker at once before it goes
        on up: the broker runs in its own session, and one left running holds its ports
        and data until someone kills it by hand.
        """
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=timeout)
            finally:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        if remove if remove is not None else not self.keep_data:
            shutil.rmtree(self.data, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown (the data folder stays for :meth:`restart`)."""
        if self.running():
            assert self._process is not None
            os.kill(self.pid, signal.SIGKILL)
            self._process.wait(timeout=10)

    def restart(self, ready_timeout: float = KAFKA_READY_TIMEOUT_S) -> KafkaBroker:
        """Stop (keeping the data) and start again on the same ports and data folder (its
        failures read from the new start's part of the log on)."""
        self.stop(remove=False)
        again = _launch(
            self.host,
            self.port,
            self.controller_port,
            self.data,
            self.log_path,
            self.extra,
            ready_timeout,
        )
        self.pid, self._process, self._log_from = again.pid, again._process, again._log_from
        return self

    def __enter__(self) -> KafkaBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_kafka(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    data: Path | None = None,
    log_path: Path | None = None,
    keep_data: bool = False,
    extra: Mapping[str, str] | None = None,
    ready_timeout: float = KAFKA_READY_TIMEOUT_S,
) -> KafkaBroker:
    """Start Apache Kafka on free loopback ports and return once it serves requests.

    ``data`` is the data folder (a new temporary one by default, removed by
    :meth:`KafkaBroker.stop` unless ``keep_data``); an existing formatted
    folder is started as it is (its topics and offsets survive). Raises
    :class:`BrokerError` (another server listens at ``port``; the broker
    exited, or was not ready in time, with its log's tail) or
    :class:`FileNotFoundError` (no Java, no jars).
    """
    java()
    kafka_lib()
    refuse_listened("Apache Kafka", host, port)  # another Kafka there would answer for it
    made = data is None
    folder = Path(tempfile.mkdtemp(prefix="viralwatch-kafka-")) if data is None else data
    folder.mkdir(parents=True, exist_ok=True)
    log = log_path or folder / "kafka.log"
    # the clients' port and the controller's must differ: Kafka refuses one port for both
    if port is None:
        port, controller_port = free_ports(2, host)
    else:
        (controller_port,) = free_ports(1, host, besides=[port])
    try:
        return _launch(
            host,
            port,
            controller_port,
            folder,
            log,
            dict(extra or {}),
            ready_timeout,
            keep_data=keep_data or not made,
        )
    except BaseException:
        if made and not keep_data:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _launch(
    host: str,
    port: int,
    controller_port: int,
    data: Path,
    log_path: Path,
    extra: Mapping[str, str],
    ready_timeout: float,
    *,
    keep_data: bool = True,
) -> KafkaBroker:
    props_path = data / "server.properties"
    if props_path.exists() and (data / "log" / "meta.properties").exists():
        # an existing node: same ports as before (the quorum voters name the controller's)
        old = dict(
            line.split("=", 1) for line in props_path.read_text().splitlines() if "=" in line
        )
        controller_port = int(old["controller.quorum.voters"].rpartition(":")[2])
    props = server_properties(
        port=port, controller_port=controller_port, data=data, host=host, extra=extra
    )
    _write_properties(props_path, props)
    (data / "log4j2.yaml").write_text(_LOG4J2)
    classpath = f"{kafka_lib()}/*"
    base = [
        java(),
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={data / 'log4j2.yaml'}",
        "-cp",
        classpath,
    ]
    if not (data / "log" / "meta.properties").exists():
        fmt = subprocess.run(
            [
                *base,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                new_cluster_id(),
                "-c",
                str(props_path),
            ],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if fmt.returncode != 0:
            said = why_it_exited(fmt.stderr or fmt.stdout)
            raise BrokerError(f"formatting Kafka's data folder failed: {said}")
    with log_path.open("ab") as log:
        log_from = log.tell()
        proc = subprocess.Popen(
            [*base, "kafka.Kafka", str(props_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal is ours to handle, not the JVM's
        )
    broker = KafkaBroker(
        host,
        port,
        controller_port,
        data,
        proc.pid,
        log_path,
        keep_data=keep_data,
        extra=dict(extra),
        _process=proc,
        _log_from=log_from,
    )
    try:
        wait_kafka_ready(broker, ready_timeout)
    except BaseException:
        broker.stop(remove=False)
        raise
    return broker


def wait_kafka_ready(broker: KafkaBroker, timeout: float) -> None:
    """Until a metadata request names the broker (it is unfenced); :class:`BrokerError` if never."""
    deadline = time.monotonic() + timeout
    last = "did not accept connections"
    while time.monotonic() < deadline:
        failed = broker.failure()
        if failed is not None:
            raise BrokerError(f"Apache Kafka {failed}")
        if accepts(broker.host, broker.port, timeout=0.2):
            problem = _metadata_problem(broker.bootstrap)
            if problem is None:
                return
            last = problem
        time.sleep(0.2)
    said = log_tail(broker.log())
    raise BrokerError(
        f"Apache Kafka was not ready within {timeout:g}s ({last})" + (f": {said}" if said else "")
    )


def _metadata_problem(bootstrap: str) -> str | None:
    """``None`` when the broker lists itself in a metadata answer, else why not."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=[bootstrap], request_timeout_ms=3000)
    except (KafkaError, OSError, ValueError) as exc:
        return f"no answer: {exc}"
    try:
        brokers = admin.describe_cluster().get("brokers") or []
        return None if brokers else "no broker registered yet"
    except (KafkaError, OSError, ValueError) as exc:
        return f"metadata failed: {exc}"
    finally:
        admin.close()
