"""A worker given the bundled broker's address (``viralwatch broker`` prints it) knows it.

The bundled broker (Tansu) gives no idempotent producer and says a partition's end one
batch short; a worker applies its workarounds when ``Settings.local_broker`` is set,
which ``--embedded-broker`` does. Given ``viralwatch broker``'s address instead, as
"A broker to run against" in the README suggests, a worker asked Tansu for a producer
id and ended at its start in a Faust traceback (``InitProducerIdRequest``:
``UnknownError``). It now asks the broker its cluster id first; Apache Kafka is not
taken for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka_helpers import require_broker, require_kafka

from streams.runtime.broker import start_local_broker
from streams.runtime.kafka_server import start_kafka
from streams.runtime.worker import prepare
from streams.settings import Settings

pytestmark = pytest.mark.integration


def test_a_worker_given_the_bundled_broker_s_address_applies_its_workarounds(
    tmp_path: Path,
) -> None:
    require_broker()
    with start_local_broker(log_path=tmp_path / "broker.log") as broker:
        said: list[str] = []
        settings, started, shares = prepare(
            Settings(broker=broker.url, partitions=2, data_dir=tmp_path), said.append
        )
        assert started is None and shares == 2
        assert settings.local_broker, "a worker on Tansu without its workarounds"
        assert said == [
            f"the broker at {broker.url} is the bundled one (Tansu, cluster id tansu_cluster): "
            "its workarounds are on, as with VIRALWATCH_LOCAL_BROKER=1"
        ]
        # told already (VIRALWATCH_LOCAL_BROKER=1, --embedded-broker): nothing more said
        said.clear()
        again, _, _ = prepare(settings, said.append)
        assert again.local_broker and said == []


def test_apache_kafka_is_not_taken_for_the_bundled_broker(tmp_path: Path) -> None:
    require_kafka()
    with start_kafka(data=tmp_path / "kafka") as broker:
        said: list[str] = []
        settings, _, _ = prepare(
            Settings(broker=broker.url, partitions=2, data_dir=tmp_path), said.append
        )
        assert not settings.local_broker and said == []
