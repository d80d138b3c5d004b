"""End-to-end throughput and latency of the streaming pipeline, beside a plain aiokafka consumer.

Both run in the same process tree, on the same broker (Apache Kafka by
default, a new one for the run on free loopback ports, stopped by PID at the
end; ``--broker bundled`` for the bundled Tansu), against the same topic:

1. **Throughput.** ``--events`` simulated events (``viralwatch simulate``
   traffic, scaled) are written to a fresh ``shares`` topic. Then, one after
   the other, (a) a plain aiokafka consumer in a consumer group reads them
   all (``getmany``, touching each value: the ceiling of reading this topic
   on this machine), and (b) a worker process (``python -m streams.runtime``)
   takes them from ``shares`` to detector state (parsed, routed, reordered,
   applied). The worker's rate is events applied per second, timed from its
   reports on the ``stats`` topic: *end to end* from the first record read
   to the last event applied (the workers' own times of both, to the
   millisecond; the reports come a second apart), and *steady* between 10%
   and 90% applied (the reports' times: on a run of a few seconds that is a
   second's quantum, not a rate). CPU per event is each worker's and the
   broker's (on this machine the broker shares the cores), and the machine's
   cores over the span are split per event (``/proc/stat``): the workers', the
   broker's, this benchmark's own, other processes' and idle; ``every core
   busy`` is the rate were the cores busy all the span with the workers and
   the broker at their CPU an event, and ``every core busy`` against the first
   count the most the two-worker scaling could be at these CPUs an event
   (``2 W1 / (W2 + B2)``: 1.5x needs ``W2 + B2 <= 4/3 W1``). Repeated
   ``--repeats`` times (fresh topics each time); medians reported, and the
   two-worker scaling (issue 17's figure) as the median of the pairs. A run
   of 100,000 events lasts a few seconds, of which the start-up rebalance
   and the 2-s idle wait at the end are a large part: ``--events 1000000``
   says what a backlog costs.
2. **Latency.** A fresh worker, then ``--rate`` events/s for ``--seconds``
   seconds, each stamped with the wall clock as its event time: background
   uploads and reshares, and every 0.25 s a new banked cluster whose reshares
   cross the ``warning`` rule (25 in 5 minutes) within about 3 seconds. The
   latency of an alert is the time it is read from the ``alerts`` topic minus
   its ``ts`` (the event time of the reshare that crossed the rule: the
   moment it was sent). The plain consumer reads the same topic at the same
   time; its latency (event sent to event read) is the floor.

    python bench/bench_pipeline.py                       # about 4 minutes
    python bench/bench_pipeline.py --events 50000 --repeats 1 --seconds 30

A run's broker and worker data folders are removed at its end (its logs and
the workers' stats time lines stay in the work folder it names); a Ctrl-C, a
SIGTERM or a SIGHUP ends it the same way in any phase, the workers and the
broker stopped, none left running, and it says which signal stopped it, in
which phase (a second one cuts their grace short: killed at once). A
``kill -INT`` works on a run started in the background by a script too (such a
job starts with SIGINT ignored, which Python would keep).

The worker runs with the product's default settings (allowed lateness 60 s:
alerts must not wait for it); ``--lateness`` changes it for the latency run,
and the output says so. Results are printed as a table and one JSON line.

``--failover SECONDS``: the latency run has two workers, and one is killed
(``SIGKILL``, a crash) that many seconds into the traffic; the output says how
late the alerts that crossed after it went out, and when the last one delayed
by more than a second did (the survivor's takeover: the group's session
timeout, the rebalance, the tables restored, its backlog read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.banks import BankEntry  # noqa: E402
from streams.runtime.broker import RunningBroker, ensure_topics, start_local_broker  # noqa: E402
from streams.runtime.kafka_server import start_kafka  # noqa: E402
from streams.settings import ENV_VARS, TOPICS, Settings  # noqa: E402
from streams.simulate import Scenario, iter_lines, scenario_bank, write_bank  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Stop:
    """SIGINT, SIGTERM and SIGHUP end a run as a Ctrl-C does: a ``KeyboardInterrupt`` in
    the main thread, whatever it is doing, so that every ``finally`` stops what it started
    (the broker and the workers run in their own sessions: nothing else stops them) and
    the run's data is removed; then the run says which signal stopped it, and where.

    Python raises ``KeyboardInterrupt`` on SIGINT only if SIGINT was not ignored when it
    started, and a job that a non-interactive shell starts with ``&`` inherits SIGINT
    ignored: a ``kill -INT`` did nothing while the benchmark wrote its events (and it went
    on with the rest). SIGTERM's default ends the process at once, its broker and workers
    left running. So both are taken here: SIGINT is Python's own handler again, and
    SIGTERM (SIGHUP unless ``nohup`` ignores it) goes to whatever handles SIGINT: inside
    ``asyncio.run`` that is asyncio's, which cancels the main task (its ``finally`` blocks
    close the Kafka clients) and raises ``KeyboardInterrupt`` once it has unwound.

    A second signal while the run stops what it started cuts the graces short (the
    processes are killed at once, see :func:`stop_workers`). :meth:`spawning` holds a
    signal back while a process is started and recorded, so none is started unrecorded.
    """

    def __init__(self) -> None:
        #: the signals received, by name (SIGINT only while held back by :meth:`spawning`:
        #: elsewhere Python's handler takes it, and :meth:`name` says SIGINT for none)
        self.received: list[str] = []
        #: what the run is doing, said when a signal stops it
        self.phase = "starting"
        self._held: list[int] | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, self._on_signal)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            signal.signal(signal.SIGHUP, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received.append(signal.Signals(signum).name)
        if self._held is not None:
            self._held.append(signum)
            return
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # (the caller changed SIGINT's handler)
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Signals wait until the block ends: a process started and recorded, or neither."""
        held: list[int] = []
        before = signal.getsignal(signal.SIGINT)
        self._held = held
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, before)
            self._held = None
        if held:
            raise KeyboardInterrupt

    def name(self) -> str:
        return self.received[0] if self.received else "SIGINT"


STOP = Stop()


# -- set-up -------------------------------------------------------------------------


def fresh(broker: RunningBroker, partitions: int, **extra: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = Settings.from_env(
        {},
        broker=broker.url,
        topic_prefix=f"bench{tag}.",
        app_id=f"bench-{tag}",
        partitions=partitions,
        local_broker=broker.local,
        **extra,
    )
    ensure_topics(s.bootstrap, {s.topic(t): partitions for t in TOPICS})
    return s


def start_worker(
    s: Settings, bank: Path, log_path: Path, lateness_ms: int, changed: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A worker process as ``viralwatch worker`` runs it: the product's settings, but for
    ``lateness_ms`` and the ``--set`` variables (``changed``), which ``main`` reports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRALWATCH_")}
    worker = s.with_(
        bank_files=(bank,),
        lateness_ms=lateness_ms,
        data_dir=log_path.parent / "data",
        log_level="WARNING",
    )
    env.update(worker.to_env())
    env.update(changed or {})
    with log_path.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.runtime"],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_workers(procs: list[subprocess.Popen[bytes]], grace_s: float = 30.0) -> None:
    """SIGTERM every worker at once, wait up to ``grace_s`` for them all, then SIGKILL.

    Each worker runs in its own session (a Ctrl-C in the terminal is the
    benchmark's to handle), so a worker this leaves running keeps reading and
    writing until someone kills it by hand: a Ctrl-C (or any exception) while
    waiting kills the rest at once before it goes on up.
    """
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for p in live:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()


def start_workers(
    procs: list[subprocess.Popen[bytes]],
    logs: list[Path],
    s: Settings,
    bank: Path,
    lateness_ms: int,
    changed: dict[str, str],
    what: str,
) -> None:
    """A worker for each of ``logs`` (:func:`start_worker`), each added to ``procs`` as it
    starts, a signal held until it is (:meth:`Stop.spawning`), so that the caller's
    ``finally`` stops every worker started, none unrecorded; then their pids are said."""
    for log_path in logs:
        with STOP.spawning():
            procs.append(start_worker(s, bank, log_path, lateness_ms, changed))
    log(f"{what}: {len(logs)} worker(s) started, pids {', '.join(str(p.pid) for p in procs)}")


def remove_data(work: Path) -> None:
    """The broker's and the workers' data folders of a run (its logs and stats time lines
    stay): a million-event run leaves about 1.5 GB of Kafka segments, and the runs of a
    session filled the machine's disk (30 GB in /tmp, 250 runs)."""
    for name in ("kafka", "data"):
        shutil.rmtree(work / name, ignore_errors=True)


async def produce_all(s: Settings, lines: list[bytes]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=s.bootstrap, linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    t0 = time.monotonic()
    try:
        futures = [await producer.send(s.topic("shares"), line) for line in lines]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - t0


# -- throughput -------------------------------------------------------------------------


async def plain_consumer(s: Settings, n: int, group: str) -> float:
    """Events/s of a plain consumer that reads ``n`` records of the topic (group, getmany)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        s.topic("shares"),
        bootstrap_servers=s.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        enable_auto_commit=True,
    )
    await consumer.start()
    got = size = 0
    t0 = None
    try:
        while got < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                if t0 is None:
                    t0 = time.monotonic()
                for r in records:
                    size += len(r.value)
                got += len(records)
    finally:
        await consumer.stop()
    return n / (time.monotonic() - (t0 or time.monotonic()))


def stats_reader(s: Settings, from_start: bool = True) -> Any:
    """A kafka-python consumer of every partition of the workers' ``stats`` topic."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(s.topic("stats"), p) for p in c.partitions_for_topic(s.topic("stats"))]
    c.assign(tps)
    if from_start:
        c.seek_to_beginning(*tps)
    return c


def read_stats_until(
    s: Settings, total: int, timeout: float, keep: Path | None = None
) -> tuple[list[tuple[float, int, int]], dict[str, dict[str, Any]]]:
    """(wall time, records read, events in state) from the workers' stats, until all applied;
    and each worker's last report then.

    Each row sums every worker's latest report, and counts the events in the
    state of the partitions each holds (``applied``), so that events a worker
    rebuilds from a changelog after a rebalance are not counted twice. ``keep``: a file
    every report is written to, a JSON line each (the run's time line).
    """
    c = stats_reader(s)
    kept = keep.open("ab") if keep is not None else None
    rows: list[tuple[float, int, int]] = []
    latest: dict[str, tuple[int, int]] = {}
    last: dict[str, dict[str, Any]] = {}  # each worker's last report, said on a timeout
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=200).values():
                for r in batch:
                    d = orjson.loads(r.value)
                    if kept is not None:
                        kept.write(r.value + b"\n")
                    last[d["worker"]] = d
                    latest[d["worker"]] = (d["read"], d["applied"])
                    read, applied = (sum(x) for x in zip(*latest.values(), strict=True))
                    rows.append((d["time"], read, applied))
                    if applied >= total:
                        return rows, last
        said = ("read", "applied", "pending", "held", "skipped", "watermarks", "partitions")
        # events refused (a full held store: orphan_overflow) are never applied: say so
        where = {
            w: {k: d.get(k) for k in said} | {"rejected": d.get("stats", {}).get("rejected")}
            for w, d in last.items()
        }
        raise TimeoutError(
            f"the workers applied {rows[-1][2] if rows else 0} of {total} events; "
            f"their last reports: {orjson.dumps(where).decode()}"
        )
    finally:
        c.close()
        if kept is not None:
            kept.close()


def pipeline_span(
    rows: list[tuple[float, int, int]], total: int, reports: dict[str, dict[str, Any]] | None = None
) -> tuple[float, float, bool]:
    """Wall times of the first record read and of the last event applied, and whether they
    are the workers' own (to the millisecond) or the stats records' (a second apart).

    A worker's report says when its shares reader first read a record and when one of
    its clusters partitions last applied events (``first_read_at``, ``applied_at``;
    workers older than these fields do not): the span is the earliest of the one to
    the latest of the other, in the reports that made the total. Without them, the
    records' own times bound it, each up to a second late.
    """
    reports = reports or {}
    starts = [d.get("first_read_at") for d in reports.values()]
    ends = [d.get("applied_at") for d in reports.values()]
    if reports and all(x is not None for x in starts) and any(x is not None for x in ends):
        return min(x for x in starts if x), max(x for x in ends if x), True
    first_read = next(t for t, read, _ in rows if read > 0)
    # stats come every second: the time the last one was sent bounds the end
    done = next(t for t, _, applied in rows if applied >= total)
    return first_read, done, False


def pipeline_rates(
    rows: list[tuple[float, int, int]], total: int, reports: dict[str, dict[str, Any]] | None = None
) -> tuple[float, float]:
    """End-to-end and steady (10%..90% applied) events/s from the stats rows.

    Steady is read off the stats records, a second apart: on a run of a few seconds
    it is a second's quantum, not a rate (use ``--events`` of a million for it).
    """
    first_read, done, _ = pipeline_span(rows, total, reports)
    end_to_end = total / max(done - first_read, 1e-9)

    def when(fraction: float) -> tuple[float, int]:
        return next((t, a) for t, _, a in rows if a >= fraction * total)

    (t1, a1), (t2, a2) = when(0.1), when(0.9)
    steady = (a2 - a1) / (t2 - t1) if t2 > t1 else float("nan")
    return end_to_end, steady


class CpuSampler(threading.Thread):
    """CPU seconds used by some processes (``/proc``), sampled against wall time, and the
    seconds their threads waited for a CPU while ready to run (``schedstat``).

    Wall-clock rates on a shared 2-core machine vary from run to run; CPU
    per event says what the work costs, whoever else runs beside it. The wait says
    whether a run was short of CPU (other processes on the cores) or of work (its workers
    idle, waiting for each other): wall time = running + waiting for a CPU + idle, per
    thread. ``waits=False`` reads the CPU alone (no wait, no peak memory): a read of the
    broker's schedstat walks its 90-odd threads (1.8 ms of CPU, five times a second),
    which the benchmark would take from the two cores it measures, for figures it does
    not report.
    """

    def __init__(self, pids: list[int], every_s: float = 0.2, waits: bool = True) -> None:
        super().__init__(daemon=True)
        self.pids, self.every_s, self.waits = pids, every_s, waits
        #: (wall time, CPU s, s ready but waiting for a CPU, the main threads' CPU s)
        self.samples: list[tuple[float, float, float, float]] = []
        self.stopped = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")
        #: each process's CPU and wait when last read (one that ended keeps what it used)
        self.last: dict[int, tuple[float, float]] = {}
        #: each process's peak resident memory (MB, the kernel's ``VmHWM``) when last read
        self.peak_mb: dict[int, float] = {}
        #: each process's main thread's CPU when last read (a worker's event loop: the
        #: thread that bounds one worker's rate)
        self.main: dict[int, float] = {}

    def cpu_s(self) -> float:
        return self.read()[0]

    def read(self) -> tuple[float, float]:
        """CPU seconds and run-queue seconds of the processes so far (every thread)."""
        for pid in self.pids:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime
                if not self.waits:
                    self.last[pid] = (cpu, 0.0)
                    continue
                self.last[pid] = (cpu, run_queue_s(pid))
                self.peak_mb[pid] = peak_rss_mb(pid)
                main = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                self.main[pid] = (int(main[11]) + int(main[12])) / self.tick
        return sum(c for c, _ in self.last.values()), sum(w for _, w in self.last.values())

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.time(), *self.read(), sum(self.main.values())))
            self.stopped.wait(self.every_s)

    def at(self, t: float, field: int = 1) -> float:
        """CPU seconds used by wall time ``t`` (linear between samples); ``field=2``: the
        seconds waited for a CPU; ``field=3``: the main threads' CPU seconds."""
        before = [x for x in self.samples if x[0] <= t] or self.samples[:1]
        after = [x for x in self.samples if x[0] >= t] or self.samples[-1:]
        t0, c0 = before[-1][0], before[-1][field]
        t1, c1 = after[0][0], after[0][field]
        return c0 if t1 <= t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)


class MachineSampler(CpuSampler):
    """The whole machine's CPU (``/proc/stat``'s ``cpu`` line, every core), sampled as
    :class:`CpuSampler` samples processes: field 1 the seconds the cores were busy (user,
    nice, system, interrupts, steal), field 2 the seconds they were idle (idle, I/O wait).

    The broker, the workers and the benchmark share the machine's cores with whatever
    else runs: the busy seconds less theirs are the others', and the idle ones what the
    run left unused (its processes waiting for each other, not for a CPU).
    """

    def __init__(self, every_s: float = 0.2) -> None:
        super().__init__([], every_s)

    def read(self) -> tuple[float, float]:
        with contextlib.suppress(OSError, ValueError):
            ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
            busy = user + nice + system + irq + softirq + steal  # guest time is in user
            self.last[0] = (busy / self.tick, (idle + iowait) / self.tick)
        return self.last.get(0, (0.0, 0.0))


def where_the_cores_went(
    span_s: float,
    events: int,
    cores: int,
    workers_us: float,
    broker_us: float,
    bench_us: float,
    machine: tuple[float, float],
) -> dict[str, float]:
    """The machine's core-time of a run's span, per event (us): the workers', the broker's,
    the benchmark's own, everyone else's (the machine's busy time less those) and the
    cores' idle time; and the rate the run would reach were every core busy all the span
    with its workers and broker at this CPU an event (``ceiling_events_per_s``).

    ``machine`` is the cores' busy and idle seconds over the span (:class:`MachineSampler`).
    The parts add up to ``cores`` times the span (``span_us``), to the sampling's error.
    """
    busy_s, idle_s = machine
    per = 1e6 / max(events, 1)
    own = workers_us + broker_us + bench_us
    return {
        "span_us": round(cores * span_s * per, 3),
        "workers_us": round(workers_us, 3),
        "broker_us": round(broker_us, 3),
        "bench_us": round(bench_us, 3),
        "others_us": round(max(busy_s * per - own, 0.0), 3),
        "idle_us": round(idle_s * per, 3),
        "ceiling_events_per_s": round(cores * 1e6 / max(workers_us + broker_us, 1e-9)),
    }


def ceiling_scaling(c: dict[str, float], base: dict[str, float]) -> float:
    """The most a run's workers could reach against the first count's (``base``) at these
    CPUs an event (:func:`where_the_cores_went` of each): every core busy with the workers
    and the broker, against the first count's workers bound by their own CPU (one worker's
    main thread does 91-95% of its CPU: it is bound by one core, the broker beside it on the
    other). For two workers on two cores, 2 W1 / (W2 + B2): 1.5x needs W2 + B2 <= 4/3 W1.
    """
    return c["ceiling_events_per_s"] * base["workers_us"] / 1e6


def cores_line(c: dict[str, float], cores: int) -> str:
    """A run's :func:`where_the_cores_went`, said in a line."""
    return (
        f"the {cores} cores' span {c['span_us']:.1f} us an event: workers {c['workers_us']:.1f}, "
        f"broker {c['broker_us']:.1f}, this benchmark {c['bench_us']:.1f}, others "
        f"{c['others_us']:.1f}, idle {c['idle_us']:.1f}; every core busy with the workers and "
        f"the broker at this CPU an event: {c['ceiling_events_per_s']:,.0f} events/s"
    )


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of ``pid`` so far (MB): the ``VmHWM`` line of
    ``/proc/<pid>/status``; 0 where the kernel does not say."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_queue_s(pid: int) -> float:
    """Seconds the threads of ``pid`` have waited on a run queue, ready to run (the second
    field of ``/proc/<pid>/task/<tid>/schedstat``, ns); 0 where the kernel does not say."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def paused_share(rows: list[dict[str, Any]]) -> float:
    """The share of the workers' stats records, once reading began, in which the ``shares``
    reader read nothing although records were left: every partition with records unread
    held back (``paused``: its window, a full store, the bound on what waits for the
    watermark; some partition is nearly always held back for being ahead of the others,
    which alone does not stop the reading).

    >>> paused_share([{"read": 0, "backlogged": [0]}, {"read": 5, "backlogged": [0, 1],
    ...   "paused": [0, 1]}, {"read": 9, "backlogged": [0, 1], "paused": [1]}, {"read": 9}])
    0.5
    """
    busy = [r for r in rows if r.get("read") and r.get("backlogged")]
    stopped = sum(1 for r in busy if set(r["backlogged"]) <= set(r.get("paused", [])))
    return stopped / len(busy) if busy else 0.0


def most_pending(rows: list[dict[str, Any]]) -> list[int]:
    """The most events each worker's stats records had waiting for the watermark at once
    (``pending``: what ``VIRALWATCH_MAX_PENDING`` bounds), by the workers' ids.

    >>> most_pending([{"worker": "b", "pending": 7}, {"worker": "a", "pending": 3},
    ...   {"worker": "b", "pending": 9}, {"worker": "a"}])
    [3, 9]
    """
    most: dict[str, int] = {}
    for r in rows:
        w = str(r.get("worker"))
        most[w] = max(most.get(w, 0), r.get("pending", 0))
    return [most[w] for w in sorted(most)]


def stop_shares(reports: dict[str, dict[str, Any]], span: float) -> list[str]:
    """Each worker's reader standing still, as shares of the span, by the rule that held it
    (the last stats record's ``stopped_s``: ``shares_reader.stop_cause``), how many stops and
    their mean length, and the time its checkpoint commits took; by the workers' ids.

    >>> stop_shares({"7": {"stopped_s": {"heard": 5.0, "pending": 2.5},
    ...   "stops": {"heard": 100, "pending": 5}, "commit_s": 0.25}}, 10)
    ['heard 50% (100 stops, 50 ms) + pending 25% (5 stops, 500 ms), commits 2%']
    """
    out = []
    for _, d in sorted(reports.items()):
        stops = d.get("stops", {})
        parts = []
        for k, v in sorted(d.get("stopped_s", {}).items()):
            n = stops.get(k, 0)
            parts.append(f"{k} {v / span:.0%} ({n} stops, {v / max(n, 1) * 1000:.0f} ms)")
        out.append(f"{' + '.join(parts) or 'none'}, commits {d.get('commit_s', 0.0) / span:.0%}")
    return out


def hop_delays(rows: list[dict[str, Any]], stage: str = "resolve") -> tuple[float, float]:
    """The mean and the largest age (s) of the oldest record of a batch taken from an internal
    topic (``delay_s``, each stats record's since the one before), all workers: what a hop
    between two workers costs from the send to the agent's take.

    >>> hop_delays([{"delay_s": {"resolve": {"mean": 0.1, "max": 0.3, "batches": 3}}},
    ...   {"delay_s": {"resolve": {"mean": 0.2, "max": 0.2, "batches": 1}}}, {}])
    (0.125, 0.3)
    """
    n = total = top = 0.0
    for r in rows:
        d = r.get("delay_s", {}).get(stage)
        if d:
            n += d["batches"]
            total += d["mean"] * d["batches"]
            top = max(top, d["max"])
    return (total / n if n else 0.0, top)


#: Where a worker's busy samples go in ``--profile``'s summary: a sample counts under the
#: part of the innermost frame its stack holds of these (the stages' entries, the Kafka
#: client's code by its files: a stage's work handed over in-process is the next stage's,
#: not the caller's, and its sends are the client's); under ``imports`` first, wherever an
#: import is (a module loaded late is start-up, not the stage's work).
PROFILE_IMPORTS = "_find_and_load"
PROFILE_PARTS = (
    ("resolve", "Topology.resolve_received"),
    ("detect", "Topology.detect"),
    ("ingest", "SharesReader."),
    ("ingest", "Topology.ingest_records"),
    ("checkpoint", "Checkpoint."),
    ("kafka client", "aiokafka/"),
)
#: A sample whose innermost frames wait (an event loop's poll, a thread's condition, the
#: GIL): py-spy's ``--idle`` keeps them, the summary does not count them busy.
PROFILE_WAITS = frozenset(
    {"epoll_wait", "select_epoll_poll_impl", "pthread_cond_timedwait", "pthread_cond_wait"}
)


def profile_summary(raw: Iterable[str]) -> dict[str, int]:
    """Busy samples of a py-spy ``--format raw`` profile (one ``frame;frame;... count`` a
    stack), by :data:`PROFILE_PARTS` (``other``: none), with ``busy`` and ``idle``.

    >>> profile_summary([
    ...     "run (w.py:1);Topology.resolve_received (t.py:2);handle (core) 5",
    ...     "run (w.py:1);Topology.resolve_received (t.py:2);Topology.detect (t.py:3) 2",
    ...     "run (w.py:1);send (/x/aiokafka/conn.py:9) 1",
    ...     "run (w.py:1);select (s.py:4);epoll_wait (libc) 9",
    ...     "run (w.py:1);misc (m.py:5) 1",
    ... ])
    {'idle': 9, 'busy': 9, 'resolve': 5, 'detect': 2, 'kafka client': 1, 'other': 1}
    """
    out: dict[str, int] = {"idle": 0, "busy": 0}
    for line in raw:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        if any(f.split(" (", 1)[0] in PROFILE_WAITS for f in frames[-3:]):
            out["idle"] += n
            continue
        out["busy"] += n
        part = next(
            (name for f in reversed(frames) for name, mark in PROFILE_PARTS if mark in f), "other"
        )
        if any(PROFILE_IMPORTS in f for f in frames):
            part = "imports"
        out[part] = out.get(part, 0) + n
    return out


def py_spy() -> str | None:
    """The py-spy to profile with: the venv's (``pip install -e '.[bench]'``), else one on
    ``PATH``; None when there is none, so ``--profile`` fails at its flag, not after the
    broker and the traffic are up."""
    venv = Path(sys.executable).parent / "py-spy"
    return str(venv) if venv.exists() else shutil.which("py-spy")


def start_profiles(
    procs: list[subprocess.Popen[bytes]], out: Path
) -> list[subprocess.Popen[bytes]]:
    """``py-spy record --native --idle`` on each worker (100 samples a second, raw stacks to
    ``out``-PID.txt), each ending when its worker does. py-spy takes CPU on the same
    cores: a profiled run's rates and CPU are not a timed run's. A py-spy that gives up at
    once (a worker whose interpreter is not up yet) is started again, for up to 30 s."""
    record = [
        py_spy() or "py-spy",
        "record",
        "--native",
        "--idle",
        "--rate",
        "100",
        "--format",
        "raw",
    ]

    def attach(p: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        for _ in range(30):
            proc = subprocess.Popen(
                [*record, "--output", f"{out}-{p.pid}.txt", "--pid", str(p.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            if proc.returncode is None or p.poll() is not None:
                break
        return proc

    return [attach(p) for p in procs]


def index_owners(reports: dict[str, dict[str, Any]]) -> set[str]:
    """The pids of the workers whose last report holds resolve partition 0 (the content
    index's owner): a worker's name ends with its pid.

    >>> sorted(index_owners({"vm:12": {"partitions": {"resolve": [0, 2]}},
    ...                      "vm:13": {"partitions": {"resolve": [1, 3]}}, "vm:14": {}}))
    ['12']
    """
    return {
        name.rpartition(":")[2]
        for name, d in reports.items()
        if 0 in d.get("partitions", {}).get("resolve", [])
    }


def report_profiles(
    spies: list[subprocess.Popen[bytes]],
    procs: list[subprocess.Popen[bytes]],
    out: Path,
    reports: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Each worker's profile summed up (see :func:`profile_summary`), once py-spy has
    written it; the worker holding resolve partition 0 (the index's owner) is named so."""
    owner = index_owners(reports)
    summaries = []
    for spy, p in zip(spies, procs, strict=True):
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        path = Path(f"{out}-{p.pid}.txt")
        if not path.exists():
            log(f"profile of worker {p.pid}: py-spy wrote nothing (exit {spy.returncode})")
            continue
        summary = profile_summary(path.read_text().splitlines())
        busy = max(summary["busy"], 1)
        role = " (the index's owner)" if str(p.pid) in owner else ""
        parts = sorted(
            ((k, v) for k, v in summary.items() if k not in ("busy", "idle")), key=lambda kv: -kv[1]
        )
        log(
            f"profile of worker {p.pid}{role}: {summary['busy']:,} busy samples; "
            + ", ".join(f"{k} {v:,} ({v / busy:.0%})" for k, v in parts)
            + f"; stacks in {path}"
        )
        summaries.append({"pid": p.pid, "owner": bool(role), "samples": summary})
    return summaries


def _short_topic(topic: str, s: Settings) -> str:
    """A topic's name without the run's prefix (a table's changelog: without its app id).

    >>> s = Settings(topic_prefix="bench1.", app_id="bench-1")
    >>> _short_topic("bench1.actions", s), _short_topic("bench-1-cluster-log-changelog", s)
    ('actions', 'cluster-log-changelog')
    """
    for head in (s.topic_prefix, f"{s.app_id}-"):
        if topic.startswith(head):
            return topic[len(head) :]
    return topic


def throughput(broker: RunningBroker, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Per repeat: the plain consumer, then the pipeline with each of ``--workers`` worker counts.

    Every pipeline run reads a fresh copy of the same events: its own topics
    and consumer groups, all workers started at once.
    """
    scale = max(args.events / 30_000, 0.05)
    scenario = Scenario(seed=11, scale=scale)
    lines = list(iter_lines(scenario))[: args.events]
    bank = work / "bank.csv"
    write_bank(scenario_bank(scenario), bank)
    valid = _applied_by_replay(lines, scenario)
    plain: list[float] = []
    plain_cpu: list[float] = []  # us of CPU per event
    e2e: dict[int, list[float]] = {n: [] for n in args.workers}
    steady: dict[int, list[float]] = {n: [] for n in args.workers}
    cpu: dict[int, list[float]] = {n: [] for n in args.workers}
    broker_cpu: dict[int, list[float]] = {n: [] for n in args.workers}
    each_cpu: dict[int, list[list[float]]] = {n: [] for n in args.workers}
    # per run, the machine's cores over the span, per event (:func:`where_the_cores_went`)
    cores_went: dict[int, list[dict[str, float]]] = {n: [] for n in args.workers}
    # per run, each worker's CPU and run-queue wait as shares of the span (wall time)
    each_load: dict[int, list[list[list[float]]]] = {n: [] for n in args.workers}
    # per run, each worker's main thread's CPU as a share of the span
    each_main: dict[int, list[list[float]]] = {n: [] for n in args.workers}
    # per run, each worker's peak resident memory (MB)
    each_rss: dict[int, list[list[float]]] = {n: [] for n in args.workers}
    paused: dict[int, list[float]] = {n: [] for n in args.workers}
    # per run, the most events each worker had waiting for the watermark at once
    waiting: dict[int, list[list[int]]] = {n: [] for n in args.workers}
    stops: dict[int, list[list[str]]] = {n: [] for n in args.workers}
    hops: dict[int, list[tuple[float, float]]] = {n: [] for n in args.workers}
    reads: dict[int, list[float]] = {n: [] for n in args.workers}  # records read per event
    crossing: dict[int, list[dict[str, float]]] = {n: [] for n in args.workers}
    own_span: dict[int, list[bool]] = {n: [] for n in args.workers}
    # per run, whether each worker held the content index (resolve partition 0) at the end
    each_owner: dict[int, list[list[bool]]] = {n: [] for n in args.workers}
    # per run, each worker's busy samples by part (``--profile``)
    profiles: dict[int, list[list[dict[str, Any]]]] = {n: [] for n in args.workers}
    for i in range(args.repeats):
        for n in args.workers:
            s = fresh(broker, args.partitions)
            STOP.phase = f"run {i + 1}: writing {len(lines):,} events"
            log(STOP.phase)
            seconds = asyncio.run(produce_all(s, lines))
            log(f"run {i + 1}: {len(lines):,} events written in {seconds:.1f}s")
            if n == args.workers[0]:
                STOP.phase = f"run {i + 1}: the plain consumer"
                group = f"plain-{uuid.uuid4().hex}"
                used = time.process_time()
                plain.append(asyncio.run(plain_consumer(s, len(lines), group)))
                plain_cpu.append((time.process_time() - used) / len(lines) * 1e6)
                log(
                    f"run {i + 1}: plain aiokafka consumer {plain[-1]:,.0f} events/s, "
                    f"{plain_cpu[-1]:.1f} us CPU/event"
                )
            STOP.phase = f"run {i + 1}: the pipeline, {n} worker(s)"
            procs: list[subprocess.Popen[bytes]] = []
            samplers: list[CpuSampler] = []
            stacks = None if args.profile is None else args.profile / f"t{i}-{n}"
            spies: list[subprocess.Popen[bytes]] = []
            try:  # (a py-spy that cannot start, or a Ctrl-C, stops the workers started)
                logs = [work / f"worker-t{i}-{n}-{w}.log" for w in range(n)]
                start_workers(
                    procs, logs, s, bank, args.throughput_lateness, args.set, f"run {i + 1}"
                )
                samplers = [CpuSampler([p.pid]) for p in procs]
                # the broker's, the benchmark's own process (its stats reader, these
                # samplers) and the machine's cores: where the span's core-time went
                samplers += [
                    CpuSampler([broker.pid], waits=False),
                    CpuSampler([os.getpid()], waits=False),
                    MachineSampler(),
                ]
                for sampler in samplers:
                    sampler.start()
                if stacks is not None:
                    spies = start_profiles(procs, stacks)
                keep = work / f"stats-t{i}-{n}.jsonl"
                rows, reports = read_stats_until(s, valid, timeout=args.timeout, keep=keep)
            finally:
                for sampler in samplers:
                    sampler.stopped.set()
                    if sampler.is_alive():
                        sampler.join()
                stop_workers(procs)
                if sys.exc_info()[0] is not None:  # no profile to write: py-spy is done too
                    stop_workers(spies, grace_s=5.0)
            if stacks is not None:
                profiles[n].append(report_profiles(spies, procs, stacks, reports))
            a, b = pipeline_rates(rows, valid, reports)
            first_read, done, own = pipeline_span(rows, valid, reports)
            machine = samplers.pop()
            bench_us = (samplers[-1].at(done) - samplers[-1].at(first_read)) / valid * 1e6
            samplers.pop()
            used_us = [(x.at(done) - x.at(first_read)) / valid * 1e6 for x in samplers]
            span = max(done - first_read, 1e-9)
            loads = [
                [(x.at(done, f) - x.at(first_read, f)) / span for f in (1, 2)]
                for x in samplers[:-1]
            ]
            cores = os.cpu_count() or 1
            cores_went[n].append(
                where_the_cores_went(
                    span,
                    valid,
                    cores,
                    sum(used_us[:-1]),
                    used_us[-1],
                    bench_us,
                    (
                        machine.at(done) - machine.at(first_read),
                        machine.at(done, 2) - machine.at(first_read, 2),
                    ),
                )
            )
            each_load[n].append(loads)
            mains = [(x.at(done, 3) - x.at(first_read, 3)) / span for x in samplers[:-1]]
            each_main[n].append([round(m, 3) for m in mains])
            each_rss[n].append([round(sum(x.peak_mb.values())) for x in samplers[:-1]])
            owners = index_owners(reports)
            each_owner[n].append([str(p.pid) in owners for p in procs])
            records = [orjson.loads(r) for r in keep.read_bytes().split()]
            paused[n].append(paused_share(records))
            waiting[n].append(most_pending(records))
            stops[n].append(stop_shares(reports, span))
            hops[n].append(hop_delays(records))
            e2e[n].append(a)
            steady[n].append(b)
            cpu[n].append(sum(used_us[:-1]))
            each_cpu[n].append(used_us[:-1])
            broker_cpu[n].append(used_us[-1])
            own_span[n].append(own)
            reads[n].append(sum(d["read"] for d in reports.values()) / len(lines))
            crossed: dict[str, float] = {}
            for d in reports.values():
                for topic, k in d.get("sent", {}).items():
                    name = topic.removeprefix(s.topic_prefix)
                    crossed[f"{name} records"] = crossed.get(f"{name} records", 0) + k / valid
                for topic, k in d.get("sent_bytes", {}).items():
                    name = topic.removeprefix(s.topic_prefix)
                    crossed[f"{name} bytes"] = crossed.get(f"{name} bytes", 0) + k / valid
                # what went straight into the Kafka client's batches (the state logs among it)
                for field, unit in (("written", "records"), ("written_bytes", "bytes")):
                    for topic, k in d.get(field, {}).items():
                        name = f"{_short_topic(topic, s)} written {unit}"
                        crossed[name] = crossed.get(name, 0) + k / valid
            crossing[n].append(crossed)
            timed = "the workers' own times" if own else "the stats records' times"
            # each worker's CPU, the index's owner named (it is the one to balance)
            owned = zip(used_us[:-1], each_owner[n][-1], strict=True)
            each = [f"{x:.0f}" + " index" * o for x, o in owned]
            # when a tenth, half and nine tenths were applied (stats records, a second apart)
            marks = [next(t for t, _, x in rows if x >= f * valid) for f in (0.1, 0.5, 0.9)]
            line = " / ".join(f"{t - first_read:.1f}" for t in marks)
            log(
                f"run {i + 1}: pipeline, {n} worker(s): {a:,.0f} events/s e2e over "
                f"{done - first_read:.2f} s ({timed}; 10/50/90% applied at {line} s), "
                f"{b:,.0f} steady, {cpu[n][-1]:.0f} us CPU/event "
                f"({' + '.join(each)}), broker {used_us[-1]:.0f} us, "
                f"{reads[n][-1]:.2f} records read an event; sent an event: "
                + ", ".join(f"{k} {v:.3g}" for k, v in sorted(crossed.items()))
                + "; each worker's CPU / wait for a CPU, of the span: "
                + ", ".join(f"{c:.0%} / {w:.0%}" for c, w in loads)
                + " (the main thread: "
                + ", ".join(f"{m:.0%}" for m in mains)
                + ")"
                + "; peak RSS "
                + " / ".join(f"{m:.0f}" for m in each_rss[n][-1])
                + " MB; most events waiting for the watermark "
                + " / ".join(f"{k:,}" for k in waiting[n][-1])
                + f"; shares reader stopped in {paused[n][-1]:.0%} of stats records"
                + f" ({'; '.join(stops[n][-1])} of the span)"
                + "; resolve records' age when taken {:.0f} ms mean, {:.0f} at most".format(
                    *(x * 1000 for x in hops[n][-1])
                )
                + "; "
                + cores_line(cores_went[n][-1], cores)
            )
    ceiling = statistics.median(plain)
    base = args.workers[0]
    return {
        "events": len(lines),
        "valid_events": valid,
        "plain_events_per_s": ceiling,
        "plain_cpu_us_per_event": statistics.median(plain_cpu),
        "pipeline": {
            str(n): {
                "events_per_s": statistics.median(e2e[n]),
                "steady_events_per_s": statistics.median(steady[n]),
                "cpu_us_per_event": statistics.median(cpu[n]),
                "each_worker_cpu_us_per_event": each_cpu[n],
                # [CPU, ready but waiting for a CPU] as shares of the span, each worker
                "each_worker_cpu_and_wait": each_load[n],
                # each worker's main thread's CPU as a share of the span: near 1, the
                # worker is bound by that one core; below its CPU share, other threads run
                "each_worker_main_thread": each_main[n],
                # each worker's peak resident memory (MB)
                "each_worker_peak_rss_mb": each_rss[n],
                # whether each worker owned the content index (its CPU is the higher)
                "each_worker_index_owner": each_owner[n],
                "paused_share": paused[n],
                # the most events each worker had waiting for the watermark at once
                "most_pending": waiting[n],
                # each worker's reader stopped, by rule, as shares of the span
                "stopped": stops[n],
                # the resolve records' age when taken (s): mean, most
                "resolve_delay_s": hops[n],
                "broker_cpu_us_per_event": statistics.median(broker_cpu[n]),
                # per run, the machine's cores over the span, per event: the workers', the
                # broker's, the benchmark's, the others' and idle (us); the rate were both
                # cores busy all the span with this CPU an event (workers and broker)
                "cores_us_per_event": cores_went[n],
                "ceiling_events_per_s": statistics.median(
                    c["ceiling_events_per_s"] for c in cores_went[n]
                ),
                "records_read_per_event": statistics.median(reads[n]),
                "sent_per_event": crossing[n],
                "span_from_workers": all(own_span[n]),
                **({"profiles": profiles[n]} if args.profile is not None else {}),
                "ratio": statistics.median(e2e[n]) / ceiling,
                "steady_ratio": statistics.median(steady[n]) / ceiling,
                # this count's end-to-end rate over the first count's, pair by pair (the
                # same repeat, minutes apart): issue 17's "two workers >= 1.5x one"
                "scaling": statistics.median(x / y for x, y in zip(e2e[n], e2e[base], strict=True)),
                # the most that scaling could be at these CPUs an event, pair by pair
                "ceiling_scaling": statistics.median(
                    ceiling_scaling(c, b)
                    for c, b in zip(cores_went[n], cores_went[base], strict=True)
                ),
            }
            for n in args.workers
        },
        "repeats": args.repeats,
    }


def _applied_by_replay(lines: list[bytes], scenario: Scenario) -> int:
    """How many events ``replay`` applies to detector state (not bad lines, orphans, repeats)."""
    from streams.alerts import Pseudonymizer
    from streams.banks import HashBanks
    from streams.pipeline import Pipeline
    from streams.policy import AlertPolicy

    banks = HashBanks()
    for e in scenario_bank(scenario):
        banks.add(e)
    pipe = Pipeline(banks, AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"bench"))
    for line in lines:
        pipe.feed(line)
    pipe.finish()
    return sum(pipe.stats.events.values())


# -- latency ------------------------------------------------------------------------------


class LiveTraffic:
    """Events stamped with the wall clock: background traffic, and planted banked clusters.

    Each planted cluster is an upload of a banked hash followed by 30
    reshares, sent among the background at about 6% of the events, so it
    crosses the ``warning`` rule (25 in 5 minutes) a few seconds after it
    starts: one alert per planted cluster.
    """

    def __init__(self, banked: list[str], seed: int = 3) -> None:
        self.rng = random.Random(seed)
        self.banked = iter(banked)
        self.n = 0
        self.posts: list[str] = []
        self.clusters: list[tuple[str, int]] = []  # (root post, reshares still to send)

    def _id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def _event(self, now_ms: int, post: str, body: dict[str, Any]) -> bytes:
        self.posts.append(post)
        body.update(
            event_id=self._id("e"),
            ts=now_ms,
            post_id=post,
            user_id=f"u{self.rng.randrange(100_000)}",
            followers=self.rng.randrange(1, 5000),
        )
        return orjson.dumps(body)

    def plant(self, now_ms: int) -> bytes:
        root = self._id("p")
        self.clusters.append((root, 30))
        content = {"md5": next(self.banked)}
        return self._event(now_ms, root, {"type": "upload", "content": content})

    def next(self, now_ms: int) -> bytes:
        rng = self.rng
        post = self._id("p")
        if self.clusters and rng.random() < 0.06:
            root, left = self.clusters[0]
            if left <= 1:
                self.clusters.pop(0)
            else:
                self.clusters[0] = (root, left - 1)
            return self._event(now_ms, post, {"type": "share", "parent_post_id": root})
        if not self.posts or rng.random() < 0.3:
            md5 = hashlib.md5(rng.randbytes(16)).hexdigest()
            return self._event(now_ms, post, {"type": "upload", "content": {"md5": md5}})
        parent = rng.choice(self.posts[-2000:])
        return self._event(now_ms, post, {"type": "share", "parent_post_id": parent})


def latency(broker: RunningBroker, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    s = fresh(broker, args.partitions)
    plants = int(args.seconds / 0.25) + 1
    rng = random.Random(99)
    banked = [hashlib.md5(rng.randbytes(16)).hexdigest() for _ in range(plants)]
    bank = work / "bank-live.csv"
    write_bank([BankEntry("bench", "md5", m) for m in banked], bank)
    n = 1 if args.failover is None else 2
    STOP.phase = "the latency run"
    procs: list[subprocess.Popen[bytes]] = []
    cpu = CpuSampler([], every_s=1.0)
    killed: list[float] = []

    def crash() -> None:  # the first worker, as a crash ends it
        os.kill(procs[0].pid, signal.SIGKILL)
        killed.append(time.time())
        log(f"latency: worker pid {procs[0].pid} killed")

    try:
        logs = [work / f"worker-latency{w or ''}.log" for w in range(n)]
        start_workers(procs, logs, s, bank, args.lateness, args.set, "latency")
        cpu.pids = [proc.pid for proc in procs]
        _wait_ready(s, procs)
        log(f"latency: {args.rate:g} events/s for {args.seconds:g}s, lateness {args.lateness} ms")
        cpu.start()
        started = time.time()
        failover = None if args.failover is None else (args.failover, crash)
        alerts_at, plain_lat, achieved = asyncio.run(live(s, args, LiveTraffic(banked), failover))
        ended = time.time()
        worker = _last_stats(s)
    finally:
        cpu.stopped.set()
        stop_workers(procs)
    half = (started + ended) / 2
    # CPU per event sent, by half: a worker whose cost grows with its state shows it here
    # (wall-clock latency on a shared machine varies; CPU says what the work costs)
    cpu_halves = [
        (cpu.at(b) - cpu.at(a)) / max(1.0, achieved * (b - a)) * 1e6
        for a, b in ((started, half), (half, ended))
    ]
    timed = [(_ts_s(a), now - _ts_s(a)) for now, a in alerts_at if a["status"] == "firing"]
    # by why it fired, and whether it went out early (before the watermark) or at the watermark
    kinds: dict[str, list[float]] = {}
    for now, a in alerts_at:
        if a["status"] == "firing":
            kind = f"{a['reason']}/{'early' if a.get('provisional') else 'watermark'}"
            kinds.setdefault(kind, []).append(now - _ts_s(a))
    lat = sorted(x for _, x in timed)
    plain_sorted = sorted(x for _, x in plain_lat)
    # the firings that waited for the watermark (none should, in this traffic): which,
    # and when in the run their crossing was, to tell a start-up case from a steady one
    waited = [
        {
            "cluster_id": a["cluster_id"],
            "severity": a["severity"],
            "into_run_s": round(_ts_s(a) - started, 3),
            "latency_s": round(now - _ts_s(a), 3),
            "size": a["cascade"]["size"],
        }
        for now, a in alerts_at
        if a["status"] == "firing" and not a.get("provisional")
    ]
    if not lat:
        raise RuntimeError(f"no alerts; see {work / 'worker-latency.log'}")
    mid = min(t for t, _ in timed) + args.seconds / 2
    out: dict[str, Any] = {}
    if killed:
        # the alerts that crossed after the crash: how late; and when the last one delayed
        # more than a second went out (the takeover done, as far as alerts show it)
        k = killed[0]
        after = sorted((t - k, x) for t, x in timed if t >= k)
        delayed = [t + x for t, x in after if x > 1.0]
        lats = sorted(x for _, x in after)
        out["failover"] = {
            "killed_into_run_s": round(k - started, 3),
            "alerts_after": len(after),
            "p50_s": _pct(lats, 50),
            "max_s": lats[-1] if lats else float("nan"),
            "delayed_over_1s": len(delayed),
            "last_delayed_sent_after_kill_s": round(max(delayed), 3) if delayed else 0.0,
            # both workers, from the start to the crash: what the standbys cost
            "cpu_us_per_event_before_kill": round(
                (cpu.at(k) - cpu.at(started)) / max(1.0, achieved * (k - started)) * 1e6, 1
            ),
        }
    return out | {
        "rate_events_per_s": round(achieved),
        "seconds": args.seconds,
        "lateness_ms": args.lateness,
        "alerts": len(lat),
        "alert_p50_s": _pct(lat, 50),
        "alert_p99_s": _pct(lat, 99),
        "alert_max_s": lat[-1],
        "by_kind": {
            k: {"alerts": len(v), "p50_s": _pct(sorted(v), 50), "p99_s": _pct(sorted(v), 99)}
            for k, v in sorted(kinds.items())
        },
        "at_watermark": waited[:20],
        "worker_cpu_us_per_event": [round(x, 1) for x in cpu_halves],
        "plain_p50_s": _pct(plain_sorted, 50),
        "plain_p99_s": _pct(plain_sorted, 99),
        # state-log compactions during the run land on latency (a 60-s run may have none)
        "log_compactions": worker.get("compactions"),
        "log_bytes": worker.get("log_bytes"),
        # the local broker's fetches slow down as a partition's batches pile up
        # (see bench/bench_broker.py): the second half of a run is slower
        "halves": {
            "alert": [_p50_p99(timed, mid, first) for first in (True, False)],
            "plain": [_p50_p99(plain_lat, mid, first) for first in (True, False)],
        },
    }


async def live(
    s: Settings,
    args: argparse.Namespace,
    traffic: LiveTraffic,
    failover: tuple[float, Callable[[], None]] | None = None,
) -> tuple[list[tuple[float, dict[str, Any]]], list[tuple[float, float]], float]:
    """Send ``args.rate`` events/s for ``args.seconds`` while reading ``alerts`` and ``shares``.

    One event loop and aiokafka for all three, so that the harness takes as
    little of the machine's two cores as it can: the pipeline and the broker
    share them with it. (kafka-python, computing record CRCs in Python, took
    about 70% of a core here.) The producer lingers 5 ms, Kafka 4's default,
    so ``shares`` gets batches of a few records rather than one each.
    Returns the alerts with the time each was read, (event time, latency) of
    each event read by the plain consumer, and the rate achieved.
    ``failover``: ``(seconds, crash)``, called that many seconds into the traffic.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    alerts_at: list[tuple[float, dict[str, Any]]] = []
    plain_lat: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def read(topic: str, sink: Callable[[float, bytes], None]) -> None:
        c = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await c.start()
        try:
            deadline = time.monotonic() + 30
            while not c.partitions_for_topic(topic):  # metadata of a topic made moments ago
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topic {topic} has no partitions")
                await c._client.force_metadata_update()
                await asyncio.sleep(0.1)
            tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            while not stop.is_set():
                got = await c.getmany(timeout_ms=100)
                now = time.time()
                for records in got.values():
                    for r in records:
                        sink(now, r.value)
        finally:
            await c.stop()

    def on_alert(now: float, value: bytes) -> None:
        alerts_at.append((now, orjson.loads(value)))

    def on_share(now: float, value: bytes) -> None:
        ts = orjson.loads(value)["ts"] / 1000
        plain_lat.append((ts, now - ts))

    readers = [
        asyncio.create_task(read(s.topic("alerts"), on_alert)),
        asyncio.create_task(read(s.topic("shares"), on_share)),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=5, acks=1)
    await producer.start()
    try:
        start = time.monotonic()
        sent = 0
        next_plant = start
        while (elapsed := time.monotonic() - start) < args.seconds:
            if failover is not None and elapsed >= failover[0]:
                failover[1]()
                failover = None
            due = int(elapsed * args.rate)
            now_ms = int(time.time() * 1000)
            while sent < due:
                if time.monotonic() >= next_plant:
                    line = traffic.plant(now_ms)
                    next_plant += 0.25
                else:
                    line = traffic.next(now_ms)
                await producer.send(s.topic("shares"), line)
                sent += 1
            await asyncio.sleep(0.002)
        achieved = sent / (time.monotonic() - start)
        await producer.flush()
        await asyncio.sleep(max(3.0, args.lateness / 1000 + 3))
    finally:
        await producer.stop()
        stop.set()
        await asyncio.gather(*readers)
    return alerts_at, plain_lat, achieved


def _p50_p99(pairs: list[tuple[float, float]], mid: float, first: bool) -> list[float]:
    """p50 and p99 of the latencies of events before (or from) ``mid``."""
    values = sorted(x for t, x in pairs if (t < mid) == first)
    return [_pct(values, 50), _pct(values, 99)]


def _ts_s(alert: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(alert["ts"].replace("Z", "+00:00")).timestamp()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def _last_stats(s: Settings) -> dict[str, Any]:
    """The worker's latest summary on the ``stats`` topic."""
    c = stats_reader(s)
    latest: dict[str, Any] = {}
    try:
        while batches := c.poll(timeout_ms=500):
            for records in batches.values():
                for r in records:
                    d = orjson.loads(r.value)
                    if d.get("time", 0) >= latest.get("time", 0):
                        latest = d
    finally:
        c.close()
    return latest


def _wait_ready(s: Settings, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """Until every worker reports, on the stats topic, that its shares reader has partitions
    (their latest reports: two workers share them once the second has joined)."""
    c = stats_reader(s, from_start=False)
    deadline = time.monotonic() + timeout
    reading: dict[str, bool] = {}
    try:
        while time.monotonic() < deadline:
            if any(proc.poll() is not None for proc in procs):
                raise RuntimeError("a worker exited before it was ready")
            for batch in c.poll(timeout_ms=200).values():
                for r in batch:
                    d = orjson.loads(r.value)
                    reading[d["worker"]] = bool(d.get("partitions", {}).get("shares"))
            if sum(reading.values()) >= len(procs):
                time.sleep(2.0)  # the shares readers joined their group; let Faust's settle
                return
        raise TimeoutError("the workers never reported")
    finally:
        c.close()


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    default_lateness = Settings().lateness_ms
    ap.add_argument(
        "--lateness",
        type=int,
        default=default_lateness,
        help=f"ms, for the latency run (default: the product's, {default_lateness})",
    )
    ap.add_argument("--throughput-lateness", type=int, default=default_lateness)
    ap.add_argument(
        "--initial-rebalance-delay-ms",
        type=int,
        default=3000,
        help="the broker's group.initial.rebalance.delay.ms (default: Apache Kafka's and the "
        "deploy's, 3000: workers started together share the first assignment; the tests' 0: "
        "a group's first member is given every partition at once, and the second's join "
        "is a rebalance, which a two-worker run's start then pays)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a throughput run may take before it is called stalled",
    )
    ap.add_argument(
        "--broker",
        choices=("kafka", "bundled"),
        default="kafka",
        help="Apache Kafka (default; `make kafka` builds it) or the bundled broker",
    )
    ap.add_argument(
        "--workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2],
        help="worker processes for the throughput runs, comma-separated (default 1,2)",
    )
    ap.add_argument("--skip", choices=("throughput", "latency"), default=None)
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy (--native --idle) on each throughput run's workers, the stacks kept in "
        "DIR and each worker's busy samples summed up by stage (the index's owner named); "
        "py-spy shares the cores: a profiled run's rates and CPU are not a timed run's",
    )
    ap.add_argument(
        "--failover",
        type=float,
        default=None,
        metavar="SECONDS",
        help="latency run with two workers, one killed that many seconds into the traffic",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="VIRALWATCH_X=VALUE",
        help="a worker setting that differs from the product's default (reported loudly)",
    )
    args = ap.parse_args()
    changed: dict[str, str] = {}
    for item in args.set:
        var, sep, value = item.partition("=")
        if not sep or var not in ENV_VARS:
            ap.error(f"--set {item!r}: expected VIRALWATCH_X=VALUE with a known variable")
        changed[var] = value
    args.set = changed
    if args.profile is not None:
        if py_spy() is None:
            ap.error("--profile needs py-spy: pip install -e '.[bench]' (or py-spy on PATH)")
        args.profile.mkdir(parents=True, exist_ok=True)
        log(f"NOTE: each worker profiled by py-spy (stacks in {args.profile}): not a timed run")
    STOP.install()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    if args.lateness != Settings().lateness_ms:
        log(f"NOTE: the latency run's allowed lateness is {args.lateness} ms, not the default")
    for var, value in changed.items():
        log(f"NOTE: workers run with {var}={value}, not the default")
    if args.initial_rebalance_delay_ms != 3000:
        log(
            f"NOTE: the broker's group.initial.rebalance.delay.ms is "
            f"{args.initial_rebalance_delay_ms}, not Kafka's default (3000)"
        )
    out: dict[str, Any] = {"partitions": args.partitions, "broker": args.broker, "set": changed}
    broker: RunningBroker | None = None
    try:
        try:
            STOP.phase = f"starting the {args.broker} broker"
            if args.broker == "kafka":
                broker = start_kafka(
                    data=work / "kafka",
                    log_path=work / "kafka.log",
                    extra={
                        "group.initial.rebalance.delay.ms": str(args.initial_rebalance_delay_ms)
                    },
                )
            else:
                broker = start_local_broker(log_path=work / "broker.log")
            log(
                f"{args.broker} broker {broker.url} (pid {broker.pid}); work {work}; "
                f"{os.cpu_count()} CPUs"
            )
            if args.skip != "throughput":
                out["throughput"] = throughput(broker, args, work)
            if args.skip != "latency":
                out["latency"] = latency(broker, args, work)
        finally:
            try:
                if broker is not None:
                    broker.stop()
            finally:
                remove_data(work)
    except KeyboardInterrupt:
        name = STOP.name()
        stopped = f"the broker (pid {broker.pid}) and " if broker is not None else ""
        log(
            f"stopped by {name} ({STOP.phase}): {stopped}every worker stopped, the run's "
            f"data removed; its logs are in {work}"
        )
        raise SystemExit(128 + signal.Signals[name].value) from None
    if "throughput" in out:
        t = out["throughput"]
        print(
            f"throughput ({t['events']:,} events, {args.partitions} partitions, "
            f"median of {t['repeats']}):"
        )
        print(
            f"  plain aiokafka consumer   {t['plain_events_per_s']:>10,.0f} events/s  "
            f"({t['plain_cpu_us_per_event']:.1f} us CPU/event)"
        )
        for n, r in t["pipeline"].items():
            print(
                f"  pipeline, {n} worker(s), end to end {r['events_per_s']:>10,.0f} events/s  "
                f"({100 * r['ratio']:.1f}% of plain)"
            )
            print(
                f"  pipeline, {n} worker(s), steady     "
                f"{r['steady_events_per_s']:>10,.0f} events/s  "
                f"({100 * r['steady_ratio']:.1f}% of plain)"
            )
            print(
                f"  pipeline, {n} worker(s), CPU        {r['cpu_us_per_event']:>10,.0f} us/event"
                f"  ({r['cpu_us_per_event'] / t['plain_cpu_us_per_event']:.0f}x plain)"
            )
            broker_us = r["broker_cpu_us_per_event"]
            print(
                f"  pipeline, {n} worker(s), broker CPU {broker_us:>10,.0f} us/event"
                f"  ({r['records_read_per_event']:.2f} shares records read an event)"
            )
            print(
                f"  pipeline, {n} worker(s), every core busy {r['ceiling_events_per_s']:>7,.0f} "
                "events/s  (the cores' span at this CPU an event, workers and broker)"
            )
            if n != next(iter(t["pipeline"])):
                print(
                    f"  {n} workers against {next(iter(t['pipeline']))}, end to end   "
                    f"{r['scaling']:>10.2f}x  (median of the pairs; issue 17's figure)"
                )
                print(
                    f"  {n} workers against {next(iter(t['pipeline']))}, every core busy "
                    f"{r['ceiling_scaling']:>8.2f}x  (the most at these CPUs an event: "
                    "the workers and the broker on every core, one worker on its own)"
                )
    if "latency" in out:
        lat = out["latency"]
        print(
            f"latency at {lat['rate_events_per_s']:,} events/s for {lat['seconds']:g}s "
            f"(lateness {lat['lateness_ms']} ms, {lat['alerts']} alerts):"
        )
        print(
            f"  event -> alert            p50 {lat['alert_p50_s'] * 1000:7.0f} ms   "
            f"p99 {lat['alert_p99_s'] * 1000:7.0f} ms"
        )
        print(
            f"  event -> plain consumer   p50 {lat['plain_p50_s'] * 1000:7.0f} ms   "
            f"p99 {lat['plain_p99_s'] * 1000:7.0f} ms"
        )
        for kind, k in lat["by_kind"].items():
            print(
                f"  {kind:<24} {k['alerts']:>5} alerts  p50 {k['p50_s'] * 1000:7.0f} ms   "
                f"p99 {k['p99_s'] * 1000:7.0f} ms"
            )
        for w in lat["at_watermark"]:
            print(
                f"  at the watermark: {w['cluster_id']} {w['severity']}, crossed "
                f"{w['into_run_s']:.1f} s into the run, sent {w['latency_s']:.1f} s later"
            )
        a, b = lat["worker_cpu_us_per_event"]
        print(f"  worker CPU per event      first half {a:7.0f} us, second half {b:7.0f} us")
        if "failover" in lat:
            f = lat["failover"]
            print(
                f"  failover: a worker killed {f['killed_into_run_s']:.1f} s into the run "
                f"({f['cpu_us_per_event_before_kill']:.0f} us CPU/event before, both); "
                f"{f['alerts_after']} alerts crossed after, p50 {f['p50_s'] * 1000:.0f} ms, "
                f"max {f['max_s']:.1f} s; {f['delayed_over_1s']} over 1 s, the last out "
                f"{f['last_delayed_sent_after_kill_s']:.1f} s after the kill"
            )
        print(
            f"  state logs: {lat['log_compactions']} compactions during the run, "
            f"{(lat['log_bytes'] or 0) / 2**20:.1f} MiB at its end"
        )
        for name, (a, b) in lat["halves"].items():
            print(
                f"  {name:<6} p50 / p99, first half {a[0] * 1000:5.0f} / {a[1] * 1000:5.0f} ms, "
                f"second half {b[0] * 1000:5.0f} / {b[1] * 1000:5.0f} ms"
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
