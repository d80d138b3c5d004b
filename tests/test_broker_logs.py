"""A broker's failure is said from its own part of its log: a log path is appended to by
every start (a data folder started again, a port retried), and an earlier start's failure
there is not this one's (``log_since``). Programs stand in for Apache Kafka here, so the
failures are made to order; ``test_broker_errors.py`` makes real brokers fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.runtime.broker import BrokerError, free_ports
from streams.runtime.kafka_server import KafkaBroker, wait_kafka_ready

#: what an earlier start of the same data folder left in the log
EARLIER = (
    "[t] ERROR an earlier start's failure\n"
    'Exception in thread "main" java.lang.RuntimeException: the earlier one\n'
    "\tat k.A.a(A.java:9)\n"
)


def node(tmp_path: Path, program: str) -> KafkaBroker:
    """A program standing in for a Kafka node, writing to a log an earlier start wrote."""
    log = tmp_path / "kafka.log"
    log.write_text(EARLIER)
    start = log.stat().st_size
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", program], stdout=out, stderr=out)
    port, controller = free_ports(2)
    return KafkaBroker(
        "127.0.0.1", port, controller, tmp_path, proc.pid, log, _process=proc, _log_from=start
    )


def test_a_node_that_exits_says_its_own_failure_not_an_earlier_starts(tmp_path: Path) -> None:
    broker = node(tmp_path, "print('[t] INFO this start, then gone')")
    assert broker._process is not None
    broker._process.wait()
    with pytest.raises(BrokerError) as exc:
        wait_kafka_ready(broker, 5)
    assert str(exc.value) == "Apache Kafka exited (status 0): [t] INFO this start, then gone"


def test_a_node_never_ready_says_its_own_log_not_an_earlier_starts(tmp_path: Path) -> None:
    broker = node(tmp_path, "import time; print('[t] INFO waiting', flush=True); time.sleep(60)")
    try:
        with pytest.raises(BrokerError) as exc:
            wait_kafka_ready(broker, 3)
    finally:
        broker.stop(timeout=5, remove=False)
    assert str(exc.value) == (
        "Apache Kafka was not ready within 3s (did not accept connections): [t] INFO waiting"
    )
