"""``viralwatch broker``: a broker in the foreground, as tests, benchmarks and operators run it.

It prints its ``kafka://127.0.0.1:PORT`` address once the broker really
serves requests, and SIGTERM stops it leaving nothing behind (no process,
no data folder of its own).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka_helpers import require_broker, require_kafka

from streams.runtime.broker import ensure_topics, free_port

pytestmark = pytest.mark.integration


def _start(*flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "broker", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize("kind", ["kafka", "bundled"])
def test_the_broker_command_serves_until_sigterm_and_leaves_nothing_behind(kind: str) -> None:
    if kind == "kafka":
        require_kafka()
    else:
        require_broker()
    port = free_port()
    proc = _start(*(["--kafka"] if kind == "kafka" else []), "--port", str(port))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # printed only once the broker is ready
        err = proc.stderr.read() if proc.stderr and not line else ""
        assert line == f"kafka://127.0.0.1:{port}", (line, err)
        children = _children(proc.pid)
        assert children, "the broker runs as a child of the command"
        counts = ensure_topics([f"127.0.0.1:{port}"], {"smoke": 3}, timeout=30)
        assert counts == {"smoke": 3}
        data = None
        if kind == "kafka":
            cmdline = Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")
            props = next(Path(a.decode()) for a in cmdline if a.endswith(b"server.properties"))
            data = props.parent
            assert data.is_dir()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(c) for c in children), "the broker outlived the command"
        if data is not None:
            assert not data.exists(), "the temporary data folder was left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--port", "0"], "--port 0"),
        (["--port", "70000"], "--port 70000"),
        (["--data", "/tmp"], "--data is for --kafka"),
        (["--kafka", "--data", "/etc/hostname"], "is not a folder"),
    ],
)
def test_bad_broker_flags_are_refused_with_a_reason(flags: list[str], reason: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "broker", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert reason in done.stderr and "Traceback" not in done.stderr


def test_a_kafka_that_never_becomes_ready_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A port another server listens on: the command says so before Kafka starts (once,
    Kafka was started and exited for the address in use; readiness alone would have taken
    the other server's answer for Kafka's)."""
    require_kafka()
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "broker", "--kafka", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=150,
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 120
    assert (
        f"Apache Kafka cannot listen at 127.0.0.1:{port}: another server already listens there"
        in done.stderr
    ), done.stderr
    assert "Traceback" not in done.stderr
