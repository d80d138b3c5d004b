"""A worker given a broker's address: the bundled broker's is known, one nothing answers at
is said in one line.

The bundled broker (Tansu) gives no idempotent producer and says a partition's end one
batch short; a worker applies its workarounds when ``Settings.local_broker`` is set,
which ``--embedded-broker`` does. Given ``viralwatch broker``'s address instead, as
"A broker to run against" in the README suggests, a worker asked Tansu for a producer
id and ended at its start in a Faust traceback (``InitProducerIdRequest``:
``UnknownError``). It now asks the broker its cluster id first; Apache Kafka is not
taken for it.

Given an address nothing answers at, a worker waited out the Kafka client's bootstrap
timeout and ended in its traceback (``KafkaTimeoutError``, exit status 1); then it said
the broker and the client's error in one line, exit status 2, still after about 40 s; it
now says so once its start's wait for the broker is over (``Settings.broker_wait_s``, 5 s
unless ``--broker-wait`` or ``VIRALWATCH_BROKER_WAIT`` says otherwise: a broker on
Kubernetes can take longer to come up beside the pods), and a broker that comes up within
that wait is used.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kafka_helpers import names, require_broker
from programs import free_port, viralwatch

from streams.runtime.broker import start_local_broker
from streams.runtime.kafka_server import KafkaBroker
from streams.runtime.worker import prepare
from streams.settings import Settings

pytestmark = pytest.mark.integration

#: The start's wait for the broker when nothing sets it.
BROKER_WAIT_S = Settings().broker_wait_s


def said_in_one_line(r: subprocess.CompletedProcess[bytes]) -> str:
    """The last line a command that refused to go on said (exit status 2, no traceback)."""
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


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


def test_apache_kafka_is_not_taken_for_the_bundled_broker(
    tmp_path: Path, broker: KafkaBroker
) -> None:
    """On the session's Apache Kafka (``conftest.broker``), with topics of its own."""
    prefix, app_id = names()
    said: list[str] = []
    settings, _, _ = prepare(
        Settings(
            broker=broker.url, topic_prefix=prefix, app_id=app_id, partitions=2, data_dir=tmp_path
        ),
        said.append,
    )
    assert not settings.local_broker and said == []


def test_a_broker_nothing_answers_at_is_said_in_one_line_within_seconds(tmp_path: Path) -> None:
    """The worker's start waits BROKER_WAIT_S for the broker, not the Kafka client's
    bootstrap timeout (about 40 s: the worker ended after it)."""
    port = free_port()
    url = f"kafka://127.0.0.1:{port}"
    started = time.monotonic()
    r = viralwatch(
        "worker", "--broker", url, timeout=240, env={"VIRALWATCH_DATA_DIR": str(tmp_path)}
    )
    took = time.monotonic() - started
    assert said_in_one_line(r) == (
        f"viralwatch: no Kafka broker answers at 127.0.0.1:{port} (waited {BROKER_WAIT_S:g}s)"
    )
    assert took < BROKER_WAIT_S + 20, took  # the command's own start included (a few s)


def test_a_broker_that_comes_up_within_the_start_s_wait_is_used(tmp_path: Path) -> None:
    """Nothing listens at the port when the worker's start begins; the bundled broker
    starts there half a second later, within BROKER_WAIT_S: the start goes on and makes the
    topics (a worker started beside its broker, as in a compose file)."""
    require_broker()
    port = free_port()
    settings = Settings(broker=f"kafka://127.0.0.1:{port}", partitions=2, data_dir=tmp_path)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        said: list[str] = []
        prepared = pool.submit(prepare, settings, said.append)
        time.sleep(0.5)
        assert not prepared.done()
        with start_local_broker(port=port, log_path=tmp_path / "broker.log"):
            ready, started, shares = prepared.result(timeout=120)
    assert started is None and shares == 2 and ready.local_broker


@pytest.mark.parametrize(
    ("command", "how"),
    [
        ("produce", "flag"),
        ("worker", "variable"),
        ("bank list", "flag"),
        ("bank add", "variable"),
    ],
)
def test_the_wait_for_the_broker_is_a_setting(tmp_path: Path, command: str, how: str) -> None:
    """A deployer whose broker comes up slower (or who wants a failing start said sooner)
    sets the wait: ``--broker-wait 1s`` or ``VIRALWATCH_BROKER_WAIT=1``; nothing listens at
    the port, and the one line says the wait it was given. ``bank add`` and ``bank list``
    waited out the Kafka client's bootstrap timeout (about 40 s) and said
    "KafkaTimeoutError: KafkaTimeoutError: Unable to bootstrap": they wait as a worker does."""
    port = free_port()
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "share"}\n')
    args = [*command.split(), *([str(events)] if command == "produce" else [])]
    if command == "bank add":  # it waited out the Kafka client's bootstrap (about 40 s)
        args += ["--by", "oncall", "ab" * 32]
    args += ["--broker", f"kafka://127.0.0.1:{port}"]
    env = {"VIRALWATCH_DATA_DIR": str(tmp_path)}
    if how == "flag":
        args += ["--broker-wait", "1s"]
    else:
        env["VIRALWATCH_BROKER_WAIT"] = "1"
    r = viralwatch(*args, timeout=240, env=env)
    assert said_in_one_line(r) == (
        f"viralwatch: no Kafka broker answers at 127.0.0.1:{port} (waited 1s)"
    )


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan", "0ms"])
def test_a_bad_wait_for_the_broker_is_refused_in_one_line(tmp_path: Path, value: str) -> None:
    """A wait that is no duration, or never ends, or none at all: exit status 2 and one line
    naming the flag or the variable, before any broker is asked."""
    port = free_port()
    for args, env, named in (
        (["--broker-wait", value], {}, "--broker-wait"),
        ([], {"VIRALWATCH_BROKER_WAIT": value}, "VIRALWATCH_BROKER_WAIT"),
    ):
        r = viralwatch(
            "worker",
            "--broker",
            f"kafka://127.0.0.1:{port}",
            *args,
            timeout=120,
            env={"VIRALWATCH_DATA_DIR": str(tmp_path), **env},
        )
        line = said_in_one_line(r)
        assert r.stderr.decode().strip() == line  # the one line: nothing before it
        assert line.startswith(f"viralwatch: {named}: "), line
        assert repr(value) in line and "no Kafka broker" not in line, line


def test_a_probe_during_the_wait_for_the_broker_says_what_the_start_waits_for(
    tmp_path: Path,
) -> None:
    """With the wait a minute long (deploy/k8s), ``/readyz`` answered ``"assigned":
    "waiting: starting"`` for that minute: it names the broker and the wait now, and
    ``/livez`` answers alive meanwhile (a long wait never gets a pod killed)."""
    port, http = free_port(), free_port()
    started = subprocess.Popen(
        [
            *(sys.executable, "-m", "streams.cli", "worker"),
            *("--broker", f"kafka://127.0.0.1:{port}", "--broker-wait", "60s"),
            *("--http-port", str(http)),
        ],
        env={**os.environ, "VIRALWATCH_DATA_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, said = time.monotonic() + 40, None
        while said is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=5)
            except urllib.error.HTTPError as answer:  # 503: not ready
                said = json.loads(answer.read())["conditions"]
            except OSError:
                time.sleep(0.2)  # not listening yet
        assert said is not None, "the worker's HTTP port never answered"
        assert said["assigned"] == (
            f"waiting: starting: waiting up to 60s for the broker at kafka://127.0.0.1:{port} "
            "to accept a connection, then the topics"
        ), said
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/livez", timeout=5) as alive:
            assert alive.status == 200
    finally:
        started.terminate()
        started.wait(timeout=60)
