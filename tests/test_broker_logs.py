"""A broker's failure is said from its own part of its log: a log path is appended to by
every start (a data folder started again, a port retried), and an earlier start's failure
there is not this one's (``log_since``); a panic there is a failure whatever the bundled
broker does after it (``failure``). Programs stand in for the brokers here, so the
failures are made to order; ``test_broker_errors.py`` makes real brokers fail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import typer

from streams import cli
from streams.runtime import broker as broker_module
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


def test_the_broker_command_ends_on_a_panic_of_the_bundled_broker_that_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``viralwatch broker``'s wait: the bundled broker serves, then panics in a thread and
    runs on (Tansu ends with status 0 after such a panic, or may not end): the command
    says so and exits 2, the broker stopped, where it waited on before."""
    program = tmp_path / "tansu"
    program.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            """
            import socket, sys, time
            url = sys.argv[sys.argv.index("--listener-url") + 1]
            host, port = url.removeprefix("tcp://").rsplit(":", 1)
            server = socket.create_server((host, int(port)))  # accepts: ready
            print("listening", flush=True)
            time.sleep(1)
            print("thread 'tokio-rt-worker' (7) panicked at broker.rs:139:18:", flush=True)
            print("called unwrap on an Err value: no storage", flush=True)
            time.sleep(60)
            """
        )
    )
    program.chmod(0o755)
    monkeypatch.setattr(broker_module, "tansu_binary", lambda: program)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    began = time.monotonic()
    try:
        with pytest.raises(typer.Exit) as exc:
            cli.broker(kafka=False, port=None, data=None)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert exc.value.exit_code == 2
    assert time.monotonic() - began < 15
    out, err = capsys.readouterr()
    assert out.startswith("kafka://127.0.0.1:"), out  # it served first
    pid = int(err.split("ready, pid ")[1].split(";")[0])
    assert err.splitlines()[-1] == (
        f"viralwatch: the broker (pid {pid}) panicked: listening | "
        "thread 'tokio-rt-worker' (7) panicked at broker.rs:139:18: | "
        "called unwrap on an Err value: no storage"
    ), err
    with pytest.raises(ProcessLookupError):  # stopped (and reaped) by the command
        os.kill(pid, 0)
