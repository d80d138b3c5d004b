"""``bench/bench_pipeline.py`` leaves nothing running or on disk when it ends or is
interrupted: its workers run in their own sessions (a Ctrl-C does not reach them), and
a run's Kafka data is gigabytes."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest
from kafka_helpers import require_kafka

ROOT = Path(__file__).resolve().parents[1]

# a worker that takes a SIGTERM as a slow shutdown would (it ignores it)
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(1, flush=True); time.sleep(120)"
)


def bench_pipeline() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_pipeline", ROOT / "bench" / "bench_pipeline.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


def stubborn() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # its handler is set
    return proc


def test_workers_that_ignore_sigterm_are_killed_after_the_grace() -> None:
    bp = bench_pipeline()
    procs = [stubborn(), stubborn()]
    started = time.monotonic()
    bp.stop_workers(procs, grace_s=0.5)
    # one grace for all, not one each
    assert time.monotonic() - started < 5
    assert all(p.poll() is not None for p in procs)


def test_a_ctrl_c_while_waiting_kills_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    bp = bench_pipeline()
    procs = [stubborn(), stubborn()]
    wait = subprocess.Popen.wait

    def interrupted(self: subprocess.Popen[bytes], timeout: float | None = None) -> int:
        if timeout is not None:  # the graceful wait: as if Ctrl-C came now
            raise KeyboardInterrupt
        return wait(self)

    monkeypatch.setattr(subprocess.Popen, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bp.stop_workers(procs, grace_s=60)
    monkeypatch.undo()
    assert all(p.poll() is not None for p in procs)


def test_a_runs_data_folders_are_removed_and_its_logs_kept(tmp_path: Path) -> None:
    bp = bench_pipeline()
    for name in ("kafka/log/shares-0", "data/worker"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "00000.log").write_bytes(b"x" * 100)
    (tmp_path / "kafka.log").write_text("broker log")
    (tmp_path / "stats-t0-1.jsonl").write_text("{}\n")
    bp.remove_data(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kafka.log", "stats-t0-1.jsonl"]


SIGNALLED = """
import asyncio, os, signal, sys
sys.path.insert(0, "bench")
from bench_pipeline import STOP
STOP.install()
try:
    with STOP.spawning():
        os.kill(os.getpid(), signal.SIGTERM)
        print("held until the process is recorded", flush=True)
except KeyboardInterrupt:
    print("then raised", flush=True)

async def writing():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(60)
    finally:
        print("the main task unwound", flush=True)

try:
    asyncio.run(writing())
except KeyboardInterrupt:
    print("raised after", STOP.received, flush=True)
"""


def test_sigterm_and_an_inherited_ignored_sigint_end_a_run_as_a_ctrl_c_does() -> None:
    """A script's background job starts with SIGINT ignored, and SIGTERM's default ends
    Python without a ``finally``: after ``STOP.install()`` either one is a Ctrl-C (inside
    ``asyncio.run`` the main task is cancelled and unwinds first), and while a process is
    started one is held until it is recorded."""
    for sig in ("INT", "TERM"):
        script = SIGNALLED.replace("SIGTERM", f"SIG{sig}")
        done = subprocess.run(
            ["sh", "-c", f"trap '' INT; exec {sys.executable} -c '{script}'"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stdout.splitlines() == [
            "held until the process is recorded",
            "then raised",
            "the main task unwound",
            "raised after " + str(["SIGTERM"] * 2 if sig == "TERM" else ["SIGINT"]),
        ], done.stdout + done.stderr


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("how", "args", "mark", "after_s", "said"),
    [
        # a script's background job starts with SIGINT ignored: a `kill -INT` did nothing
        # while the events were written, and the run went on
        (
            "SIGINT, started with SIGINT ignored",
            ["--skip", "latency", "--events", "60000", "--repeats", "50", "--workers", "1"],
            "run 1: writing 60,000 events",
            0.2,
            "stopped by SIGINT (run 1: writing 60,000 events)",
        ),
        # SIGTERM's default ended the benchmark at once, its broker and workers left running
        (
            "SIGTERM",
            ["--skip", "throughput", "--seconds", "600", "--repeats", "1"],
            "latency: 2000 events/s for 600s",
            1.0,
            "stopped by SIGTERM (the latency run)",
        ),
    ],
)
def test_a_signal_stops_the_benchmark_its_broker_and_workers(
    how: str, args: list[str], mark: str, after_s: float, said: str
) -> None:
    """The benchmark for real, on Apache Kafka, stopped by a signal in the middle of a phase
    that would last minutes: it exits within seconds, says why, and leaves no process it
    started (the broker's and the workers' pids, from its log) and no Kafka or worker data."""
    require_kafka()
    command = [sys.executable, str(ROOT / "bench" / "bench_pipeline.py"), *args]
    if "ignored" in how:  # as `python ... &` in a script: the ignored SIGINT is inherited
        command = ["sh", "-c", "trap '' INT; exec \"$@\"", "sh", *command]
    sig = signal.SIGINT if how.startswith("SIGINT") else signal.SIGTERM
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if mark in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pids: list[int] = []
    work: Path | None = None
    try:
        assert seen.wait(300), "the phase never began:\n" + "".join(lines[-30:])
        time.sleep(after_s)
        assert proc.poll() is None, "".join(lines[-30:])
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=90)
        took = time.monotonic() - sent
        reader.join(10)
        text = "".join(lines)
        found = re.search(r"broker \S+ \(pid (\d+)\); work (\S+);", text)
        assert found, text[-3000:]
        work = Path(found[2])
        pids = [int(found[1])]
        for started in re.findall(r"worker\(s\) started, pids ([\d, ]+)", text):
            pids += [int(x) for x in started.split(", ")]
        assert len(pids) >= (2 if sig == signal.SIGTERM else 1), text[-3000:]
        assert proc.returncode == 128 + sig, text[-3000:]
        assert said in text and "every worker stopped" in text, text[-3000:]
        assert took < 60, f"{took:.0f} s from the signal to the exit"
        assert [pid for pid in pids if running(pid)] == []
        assert not (work / "kafka").exists() and not (work / "data").exists()
        assert (work / "kafka.log").exists()  # the logs stay
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def test_the_sampler_tells_a_busy_process_from_an_idle_one() -> None:
    """CPU and run-queue wait as the benchmark reads them: a spinning process uses about
    its span in CPU or waits for one (the cores may be shared), a sleeping one neither."""
    bench = bench_pipeline()
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    nap = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)  # both started
        samplers = [bench.CpuSampler([spin.pid], 0.05), bench.CpuSampler([nap.pid], 0.05)]
        # the CPU alone (the broker's and the benchmark's: their waits are not reported)
        cpu_only = bench.CpuSampler([spin.pid], 0.05, waits=False)
        for s in [*samplers, cpu_only]:
            s.start()
        start = time.time()
        time.sleep(1.0)
        end = time.time()
        for s in [*samplers, cpu_only]:
            s.stopped.set()
            s.join()
        (busy_cpu, busy_wait), (idle_cpu, idle_wait) = (
            [(s.at(end, f) - s.at(start, f)) / (end - start) for f in (1, 2)] for s in samplers
        )
        assert cpu_only.at(end) - cpu_only.at(start) > 0.05 * (end - start)
        # the spinning process has one thread: its main thread's CPU is all of its CPU
        spun, main = (samplers[0].at(end, f) - samplers[0].at(start, f) for f in (1, 3))
        assert main > 0.0 and abs(spun - main) <= 0.05, (spun, main)
        assert cpu_only.at(end, 2) == 0.0 and cpu_only.peak_mb == {}
        assert busy_cpu > 0.05, busy_cpu  # it ran, however loaded the cores
        if Path(f"/proc/{spin.pid}/schedstat").exists():  # the kernel counts waits
            assert busy_cpu + busy_wait > 0.6, (busy_cpu, busy_wait)
        assert idle_cpu + idle_wait < 0.1, (idle_cpu, idle_wait)
        assert bench.run_queue_s(spin.pid) >= 0.0
        assert bench.run_queue_s(2**22 + 7) == 0.0  # no such process
    finally:
        for p in (spin, nap):
            p.kill()
            p.wait()


def test_the_machine_sampler_counts_every_cores_time_busy_or_idle() -> None:
    """The machine's cores over a span, as ``/proc/stat`` counts them: busy and idle add up
    to the cores times the span, and a spinning process is among the busy time."""
    bench = bench_pipeline()
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        machine, process = bench.MachineSampler(0.05), bench.CpuSampler([spin.pid], 0.05)
        for s in (machine, process):
            s.start()
        start = time.time()
        time.sleep(1.0)
        end = time.time()
        for s in (machine, process):
            s.stopped.set()
            s.join()
        busy, idle = (machine.at(end, f) - machine.at(start, f) for f in (1, 2))
        cores = os.cpu_count() or 1
        # the kernel's ticks and the samples' interpolation: a tenth of a core either way
        assert abs(busy + idle - cores * (end - start)) < 0.1 * cores + 0.1, (busy, idle)
        assert busy >= 0.9 * (process.at(end) - process.at(start)) - 0.05, busy
    finally:
        spin.kill()
        spin.wait()


def test_where_the_cores_went_adds_the_parts_per_event_and_the_ceiling() -> None:
    """2 cores for 10 s over 1,000,000 events are 20 us an event: the workers' 12 and the
    broker's 3 leave 2,000,000 / 15 events/s were both cores busy with them all along."""
    bench = bench_pipeline()
    c = bench.where_the_cores_went(10.0, 1_000_000, 2, 12.0, 3.0, 0.5, (17.0, 3.0))
    assert c["span_us"] == 20.0
    assert c["others_us"] == 1.5  # 17 us busy, less 12 + 3 + 0.5
    assert c["idle_us"] == 3.0
    assert c["ceiling_events_per_s"] == 133_333
    assert sum(c[k] for k in ("workers_us", "broker_us", "bench_us", "others_us", "idle_us")) == 20
    assert "133,333 events/s" in bench.cores_line(c, 2)
    # one worker at 10 us an event makes 100,000 events/s on its core: 1.33x at most
    one = bench.where_the_cores_went(10.0, 1_000_000, 2, 10.0, 2.0, 0.5, (13.0, 7.0))
    assert round(bench.ceiling_scaling(c, one), 2) == 1.33


def test_paused_share_counts_the_records_in_which_reading_stopped() -> None:
    bench = bench_pipeline()
    rows = [
        {"read": 0, "backlogged": [0], "paused": [0]},  # before reading: not counted
        {"read": 10, "backlogged": [0, 1], "paused": [0, 1]},  # stopped
        {"read": 20, "backlogged": [0, 1], "paused": [1]},  # one ahead: still reading
        {"read": 20, "backlogged": [1], "paused": [0, 1]},  # stopped
        {"read": 30, "backlogged": [], "paused": []},  # read to the end: not counted
    ]
    assert bench.paused_share(rows) == 2 / 3
    assert bench.paused_share([]) == 0.0


def test_the_index_owner_is_the_worker_whose_report_holds_resolve_partition_0() -> None:
    """A worker's name ends with its pid: the benchmark marks that process's CPU."""
    bench = bench_pipeline()
    reports = {
        "vm:12": {"partitions": {"resolve": [1, 3], "shares": [0, 1]}},
        "vm:13": {"partitions": {"resolve": [0, 2], "shares": [2, 3]}},
        "vm:14": {},  # no partitions reported
    }
    assert bench.index_owners(reports) == {"13"}
    assert bench.index_owners({}) == set()


def test_a_profile_is_summed_up_by_stage_its_waits_apart() -> None:
    """``--profile``'s summary: each busy sample under the innermost stage its stack holds
    (detection handed over in-process by resolve is detection; resolve's own work and a
    send of it, resolve's and the Kafka client's), an import's wherever it is, samples
    that wait (an event loop's poll, the GIL) not busy, and lines that are no stack
    skipped."""
    bench = bench_pipeline()
    raw = [
        "main (w.py:1);Topology.resolve_received (t.py:2);Topology.detect (t.py:3);x (c) 5",
        "main (w.py:1);Topology.detect (t.py:3);search (core) 2",
        "main (w.py:1);Topology.resolve_received (t.py:2);handle (core) 6",
        "main (w.py:1);Topology.resolve_received (t.py:2);send (aiokafka/producer.py:3) 2",
        "main (w.py:1);Topology.resolve_received (t.py:2);pthread_cond_wait (libc) 4",
        "main (w.py:1);SharesReader.poll (r.py:1);_find_and_load (<frozen>:1) 3",
        "main (w.py:1);send (/v/lib/aiokafka/conn.py:9) 1",
        "main (w.py:1);select (s.py:4);epoll_wait (libc) 9",
        "thread (t.py:1);misc (m.py:5) 1",
        "",
        "not a stack",
    ]
    assert bench.profile_summary(raw) == {
        "idle": 13,
        "busy": 20,
        "detect": 7,
        "resolve": 6,
        "imports": 3,
        "kafka client": 3,
        "other": 1,
    }


def test_profile_without_py_spy_fails_at_its_flag_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--profile`` with no py-spy beside the interpreter or on ``PATH`` is a usage error
    naming what to install, given before a broker or the traffic is started (it was a
    traceback from ``subprocess`` once the workers were up)."""
    bench = bench_pipeline()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bench.py_spy() is None
    monkeypatch.setattr(sys, "argv", ["bench_pipeline.py", "--profile", str(tmp_path / "p")])
    with pytest.raises(SystemExit) as stopped:
        bench.main()
    assert stopped.value.code == 2
    out = capsys.readouterr()
    assert "--profile needs py-spy: pip install -e '.[bench]'" in out.err
    assert "kafka broker" not in out.err + out.out
    assert not (tmp_path / "p").exists()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "py-spy").touch()
    assert bench.py_spy() == str(tmp_path / "bin" / "py-spy")
