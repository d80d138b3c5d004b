"""``viralwatch demo``: the whole streaming pipeline on one laptop, in one command.

It starts the bundled Kafka-compatible broker (unless one is configured),
a worker process, and simulated traffic sent at a chosen speed of event
time, and prints each alert as the worker sends it, under a live line of
progress (events/s sent, clusters held by the worker, alerts). Everything
it started is stopped, by PID, when the traffic is over or on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live
from rich.text import Text

from streams.alerts import raised_bracket
from streams.events import Rejection, parse_event
from streams.settings import Settings
from streams.simulate import Scenario, write_scenario
from streams.sinks.oncall import Pacer

SEVERITY_STYLE = {"warning": "yellow", "high": "bold red", "critical": "bold white on red"}


@dataclass
class Progress:
    """What the live line shows; updated by the sender and the reader threads."""

    sent: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    recent: list[tuple[float, int]] = field(default_factory=list)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: int = 0
    done_sending: bool = False
    failed: str | None = None

    def rate(self) -> float:
        now = time.monotonic()
        self.recent = [(t, n) for t, n in self.recent if now - t < 3.0]
        self.recent.append((now, self.sent))
        t0, n0 = self.recent[0]
        return (self.sent - n0) / (now - t0) if now > t0 else 0.0

    def line(self) -> Text:
        w = self.workers.values()
        clusters = sum(d.get("clusters", 0) for d in w)
        applied = sum(d.get("applied", 0) for d in w)
        text = Text()
        text.append(f"events sent {self.sent:,}/{self.total:,} ", style="bold")
        text.append(f"({self.rate():,.0f}/s)  ")
        text.append(f"applied {applied:,}  clusters {clusters:,}  ")
        text.append(f"alerts {self.alerts}", style="bold red" if self.alerts else "")
        if self.done_sending:
            text.append("  (traffic over: waiting for the last alerts)", style="dim")
        return text


def describe(alert: dict[str, Any]) -> Text:
    """One alert as one line of the console; a banked video's says how it matched, and a
    forecast raised to the alert's size says so (it was made from fewer posts: an early
    firing's, ``provisional``, from the posts applied while the size counts those held).

    >>> describe({"severity": "high", "status": "firing", "ts": "2026-01-01T00:05:22.000Z",
    ...     "cluster_id": "b-1", "alert_id": "vw-1", "match": {"bank": "ncii", "kind": "vpdq"},
    ...     "cascade": {"size": 100, "live": 99, "depth": 6, "velocity_per_min": {"5m": 20.0}}
    ... }).plain[18:]
    'firing   b-1  bank ncii (vpdq) size 100 live 99 depth 6 20.0/min over 5m  [vw-1]'
    >>> describe({"severity": "high", "status": "firing", "ts": "2026-01-01T00:10:14.000Z",
    ...     "cluster_id": "b-2", "alert_id": "vw-2", "match": {"bank": "ncii"}, "provisional": True,
    ...     "cascade": {"size": 100, "live": 100, "depth": 4, "velocity_per_min": {"5m": 20.0},
    ...                 "predicted_final_size": {"size": 100.0, "raised_to_size": ["size"]}}
    ... }).plain[42:]
    'size 100 live 100 depth 4 20.0/min over 5m  predicted 100 (at least its size)  [vw-2]'
    """
    sev, status = alert["severity"], alert["status"]
    c = alert["cascade"]
    match = alert.get("match") or {}
    pred = c.get("predicted_final_size") or {}
    line = Text()
    line.append(f"{alert['ts'][11:19]} ", style="dim")
    line.append(f"{sev.upper():8} ", style=SEVERITY_STYLE.get(sev, ""))
    line.append(f"{status:8} ", style="green" if status == "resolved" else "bold")
    line.append(f"{alert['cluster_id']}  bank {match.get('bank', '?')} ")
    if match.get("kind"):  # a banked video, matched by vPDQ or by one of its frames
        line.append(f"({match['kind']}) ", style="magenta")
    line.append(
        f"size {c['size']} live {c['live']} depth {c['depth']} "
        f"{c['velocity_per_min']['5m']:.1f}/min over 5m"
    )
    if pred.get("size") is not None:
        line.append(f"  predicted {pred['size']:,.0f}")
        line.append(raised_bracket(pred.get("raised_to_size", ()), shown=["size"]), style="dim")
    line.append(f"  [{alert['alert_id']}]", style="dim")
    return line


def _event_times(path: Path) -> Iterator[tuple[bytes, int | None]]:
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            parsed = parse_event(line)
            yield line, None if isinstance(parsed, Rejection) else parsed.ts_ms


def run_demo(
    settings: Settings,
    *,
    scenario: Scenario,
    speed: float,
    console: Console | None = None,
    linger_s: float = 8.0,
) -> int:
    """Run the demo; return the number of alerts seen."""
    console = console or Console(stderr=False)
    tag = uuid.uuid4().hex[:6]
    settings = settings.with_(
        topic_prefix=f"{settings.topic_prefix}demo-{tag}.", app_id=f"viralwatch-demo-{tag}"
    )
    with scratch(console) as workdir:
        return _run(settings, scenario, speed, linger_s, console, workdir)


@contextlib.contextmanager
def scratch(console: Console) -> Iterator[Path]:
    """The demo's folder (its traffic, bank, worker log and state): removed when the demo
    ends or is interrupted, kept when it fails, its worker's log then being what says why.
    Every run left its folder behind (7.6 MB for the default 30 minutes).

    >>> import io
    >>> with scratch(Console(file=io.StringIO())) as kept:
    ...     pass
    >>> kept.exists()
    False
    >>> out = io.StringIO()
    >>> try:
    ...     with scratch(Console(file=out)) as kept:
    ...         raise RuntimeError("the worker exited (status 1)")
    ... except RuntimeError:
    ...     pass
    >>> kept.exists(), str(kept) in out.getvalue().replace("\\n", "")
    (True, True)
    >>> import shutil; shutil.rmtree(kept)
    """
    import shutil

    workdir = Path(tempfile.mkdtemp(prefix="viralwatch-demo-"))
    try:
        yield workdir
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"[dim]the demo's files, its worker's log among them: {workdir}[/]")
        raise
    shutil.rmtree(workdir, ignore_errors=True)


def _run(
    settings: Settings,
    scenario: Scenario,
    speed: float,
    linger_s: float,
    console: Console,
    workdir: Path,
) -> int:
    """:func:`run_demo` in ``workdir``."""
    from streams.runtime.worker import prepare

    events_path, bank_path = workdir / "events.jsonl", workdir / "bank.csv"
    console.print(f"[dim]simulating {scenario.minutes} minutes of traffic into {workdir}...[/]")
    truth = write_scenario(scenario, events_path, bank_path)
    total = int(truth["lines"])
    settings = settings.with_(
        bank_files=(bank_path,), data_dir=workdir / "data", embedded_broker=True
    )
    settings, broker, _ = prepare(settings, lambda m: console.print(f"[cyan]{m}[/]"))
    worker: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    progress = Progress(total=total)
    try:
        worker = _start_worker(settings, workdir / "worker.log")
        console.print(
            f"[cyan]worker pid {worker.pid} started (log {workdir / 'worker.log'}); sending "
            f"{total:,} events at {speed:g}x event time[/]"
        )
        reader = threading.Thread(
            target=_read_outputs, args=(settings, progress, console, stop), daemon=True
        )
        reader.start()
        with Live(progress.line(), console=console, refresh_per_second=4) as live:
            sender = threading.Thread(
                target=_send, args=(settings, events_path, speed, progress, stop), daemon=True
            )
            sender.start()
            while sender.is_alive():
                live.update(progress.line())
                time.sleep(0.25)
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited (status {worker.returncode})")
                failed = broker.failure() if broker is not None else None
                if failed is not None:  # its lines: the worker would only say it is gone
                    raise RuntimeError(f"the bundled Kafka broker {failed}")
            if progress.failed is not None:
                raise RuntimeError(f"sending the traffic failed: {progress.failed}")
            progress.done_sending = True
            end = time.monotonic() + linger_s
            while time.monotonic() < end:
                live.update(progress.line())
                time.sleep(0.25)
        console.print()
        console.print(
            f"[bold]done:[/] {progress.sent:,} events sent, {progress.alerts} alerts "
            f"(topics {settings.topic('*')}, broker {settings.broker})"
        )
        return progress.alerts
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return progress.alerts
    finally:
        stop.set()
        if worker is not None:
            _stop(worker)
        if broker is not None:
            broker.stop()


def _start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.with_(log_level="WARNING").to_env()}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.runtime"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _send(
    settings: Settings, path: Path, speed: float, progress: Progress, stop: threading.Event
) -> None:
    from streams.runtime.produce import Deliveries, make_producer

    producer: Any = make_producer(settings, linger_ms=2)
    deliveries = Deliveries()
    pacer = Pacer(speed)
    topic = settings.topic("shares")
    try:
        for line, ts in _event_times(path):
            if stop.is_set():
                return
            if ts is not None:
                pacer.wait(ts)
            deliveries.track(producer.send(topic, value=line))
            progress.sent += 1
        producer.flush()
        deliveries.check(progress.sent)
    except Exception as exc:  # the demo's main thread reports it and stops
        progress.failed = f"{type(exc).__name__}: {exc}"
    finally:
        producer.close()


def _read_outputs(
    settings: Settings, progress: Progress, console: Console, stop: threading.Event
) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        **settings.security.kafka_python_config(),
    )
    wanted = [settings.topic("alerts"), settings.topic("stats")]
    tps = [TopicPartition(t, p) for t in wanted for p in consumer.partitions_for_topic(t) or ()]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    try:
        while not stop.is_set():
            for tp, records in consumer.poll(timeout_ms=200).items():
                for rec in records:
                    data = orjson.loads(rec.value)
                    if tp.topic == settings.topic("stats"):
                        progress.workers[data["worker"]] = data
                    else:
                        progress.alerts += 1
                        console.print(describe(data))
    finally:
        consumer.close()
