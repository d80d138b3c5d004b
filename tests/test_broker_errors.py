"""A broker that fails to start says why in one line: the exception that ended it and its
causes, never a Java stack's frames nor a Rust panic's backtrace (``why_it_exited``),
whether Kafka's format step refused a setting, the broker exited, or the bundled broker
did. Real failures: a setting Kafka refuses, a port another socket holds, a data folder
started with a node id it was not formatted for."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from kafka_helpers import require_broker, require_kafka

from streams.runtime import broker as broker_module
from streams.runtime.broker import BrokerError, start_local_broker
from streams.runtime.kafka_server import start_kafka

pytestmark = pytest.mark.integration

#: what a Java frame or a Rust backtrace looks like in a message
STACK = re.compile(r"\bat [\w$.]+\(|\.(java|scala):\d+|stack backtrace|\d+ more\b")


def said(exc: pytest.ExceptionInfo[BrokerError]) -> str:
    text = str(exc.value)
    assert not STACK.search(text), text
    assert "\n" not in text, text
    return text


def test_a_setting_kafka_refuses_is_named_by_the_format_step(tmp_path: Path) -> None:
    require_kafka()
    with pytest.raises(BrokerError) as exc:
        start_kafka(data=tmp_path / "k", extra={"num.network.threads": "0"}, ready_timeout=60)
    text = said(exc)
    assert text.startswith("formatting Kafka's data folder failed: "), text
    assert "Invalid value 0 for configuration num.network.threads" in text, text


def test_a_broker_that_exits_says_why_once_each_start(tmp_path: Path) -> None:
    """Its port held by another socket, then its data folder started with another node
    id: each time the exception that ended it (the log, appended to by both starts, once
    showed the first start's failure beside the second's)."""
    require_kafka()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: refused by Kafka's own bind
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError) as exc:
            start_kafka(port=port, data=tmp_path / "k", ready_timeout=120)
    text = said(exc)
    assert text.startswith("Apache Kafka exited (status 1): "), text
    assert f"failed to bind to 127.0.0.1:{port}: Address already in use" in text, text
    assert text.endswith("Caused by: java.net.BindException: Address already in use"), text

    # the folder is formatted: this start skips the format step, and the broker refuses
    with pytest.raises(BrokerError) as exc:
        start_kafka(data=tmp_path / "k", extra={"node.id": "2"}, ready_timeout=60)
    text = said(exc)
    assert text.startswith("Apache Kafka exited (status 1): "), text
    assert "the node id 2 must be included in the set of voters" in text, text
    assert "bind" not in text, text


def test_the_bundled_broker_that_exits_says_its_panic_not_its_backtrace(
    tmp_path: Path,
) -> None:
    require_broker()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: nothing accepts there
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError) as exc:
            start_local_broker(port=port, log_path=tmp_path / "broker.log")
    text = said(exc)
    # Tansu ends with status 0 after a panic in a runtime thread: a failure all the same
    assert text.startswith("the bundled Kafka broker panicked"), text
    assert "AddrInUse" in text and "panicked at" in text, text
    assert "\x1b[" not in text, text  # its log's colours are not the message's

    # the same log, appended to: the earlier start's panic is not this broker's
    with start_local_broker(log_path=tmp_path / "broker.log") as broker:
        assert broker.running()
        assert "panicked" not in broker.log()


def test_a_bundled_broker_that_panics_and_runs_on_is_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A panic in the log is a failure whatever the process does after it: a program that
    writes one and goes on running (never accepting) is stopped and said, at once, not
    after the readiness timeout."""
    program = tmp_path / "tansu"
    program.write_text(
        "#!/bin/sh\necho listening\n"
        "echo \"thread 'tokio-rt-worker' (7) panicked at broker.rs:139:18:\"\n"
        "echo 'called unwrap on an Err value: no storage'\nexec sleep 60\n"
    )
    program.chmod(0o755)
    monkeypatch.setattr(broker_module, "tansu_binary", lambda: program)
    began = time.monotonic()
    with pytest.raises(BrokerError) as exc:
        start_local_broker(log_path=tmp_path / "broker.log", ready_timeout=30, attempts=1)
    assert time.monotonic() - began < 10
    text = said(exc)
    assert text == (
        "the bundled Kafka broker panicked: listening | "
        "thread 'tokio-rt-worker' (7) panicked at broker.rs:139:18: | "
        "called unwrap on an Err value: no storage"
    ), text


def test_a_port_another_server_listens_on_is_refused_before_a_broker_starts(
    tmp_path: Path,
) -> None:
    """Readiness is "something answers there": a port another server listens on looked
    ready at once, while the broker itself exited for the address in use. Here the other
    server is the bundled broker itself, which answers Kafka's requests too."""
    require_broker()
    with start_local_broker(log_path=tmp_path / "first.log") as first:
        with pytest.raises(BrokerError) as exc:
            start_local_broker(port=first.port, log_path=tmp_path / "second.log")
        text = said(exc)
        assert text == (
            f"the bundled Kafka broker cannot listen at 127.0.0.1:{first.port}: "
            "another server already listens there"
        ), text
        assert not (tmp_path / "second.log").exists()  # refused before it started
        require_kafka()
        with pytest.raises(BrokerError) as exc:
            start_kafka(port=first.port, data=tmp_path / "kafka")
        assert said(exc).startswith(f"Apache Kafka cannot listen at 127.0.0.1:{first.port}: ")
        assert first.running()  # the broker there goes on
