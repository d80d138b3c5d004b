"""Free loopback ports for the brokers a test or a benchmark starts.

Two calls to ``free_port`` may return the same port (the kernel can hand out
again the one just closed): Apache Kafka given one port for its clients and
its controller refuses to format its data folder, which failed CI once.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from kafka_helpers import require_kafka

from streams.runtime import kafka_server
from streams.runtime.broker import BrokerError, free_port, free_ports


def test_free_ports_are_distinct_bindable_and_avoid_what_is_named() -> None:
    taken = free_port()
    for _ in range(50):
        ports = free_ports(4, besides=[taken])
        assert len(set(ports)) == 4
        assert taken not in ports
    for port in free_ports(3):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.integration
def test_kafka_given_one_port_twice_says_why_it_refuses(tmp_path: Path) -> None:
    """The error names Kafka's own reason, not the last lines of a Java stack."""
    require_kafka()
    port = free_port()
    (tmp_path / "data").mkdir()
    with pytest.raises(BrokerError, match="two listeners on the same port"):
        kafka_server._launch(
            "127.0.0.1", port, port, tmp_path / "data", tmp_path / "kafka.log", {}, 60.0
        )
