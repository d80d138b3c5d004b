"""Shared test set-up: make tests/ importable for small helpers (eventgen), and the one
Apache Kafka node the integration modules share.

Apache Kafka is started once for the session (``_kafka``) rather than once a module: a
start is two JVMs (the storage format, then the node), and nine modules used to start
their own. Their tests never needed a fresh node: each takes its own topic prefix and
application id (``kafka_helpers.names``), so they never see each other's records or
consumer groups, and none restarts or stops the shared node (the tests that do start
their own). ``broker`` checks, for each module, that the node still runs, so a module
after one that broke it fails saying why rather than timing out.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from kafka_helpers import require_kafka  # noqa: E402  (needs tests/ on the path)

from streams.runtime.kafka_server import KafkaBroker, start_kafka  # noqa: E402


@pytest.fixture(scope="session")
def _kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Apache Kafka on free loopback ports for the session, stopped by PID after."""
    require_kafka()
    data = tmp_path_factory.mktemp("kafka")
    b = start_kafka(data=data / "data", log_path=data / "kafka.log")
    try:
        yield b
    finally:
        b.stop(remove=True)


@pytest.fixture(scope="module")
def broker(_kafka: KafkaBroker) -> KafkaBroker:
    """The session's Apache Kafka, for a module whose tests take their own topics; fails
    with the node's last words if an earlier module left it dead."""
    failed = _kafka.failure()
    if failed is not None:
        pytest.fail(f"the session's Apache Kafka {failed}")
    return _kafka
