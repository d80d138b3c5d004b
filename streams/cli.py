"""The ``viralwatch`` command. Nothing imports this module; it imports the rest.

Exit codes: 0 when the work was done (bad input lines are counted, not
fatal), 1 when some inputs could not be processed (e.g. a file that is not an
image for ``hash``), 2 for unusable arguments or unreadable files, with a
one-line reason on stderr.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TypeVar, get_args

import orjson
import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: The word ``--help`` shows for a value of each type (typer 0.2x shows the Python
#: annotation instead: ``<str>``, ``<list[Path]>``).
TYPE_LABELS: Final[dict[object, str]] = {
    str: "TEXT",
    int: "INTEGER",
    float: "NUMBER",
    Path: "PATH",
    bool: "BOOLEAN",
}


def type_label(param: Any) -> str | None:
    """What ``--help`` shows beside a flag or an argument, for a user to read.

    The flag's own word where it has one (``--http-port PORT``); nothing beside a flag that
    takes no value (``--json``: typer 0.2x showed ``<bool>`` there, as if ``--json true``
    were asked for); otherwise its type's word (:data:`TYPE_LABELS`; a list's, that of its
    items: ``--bank PATH``, repeated), or the choices (``a|b``).
    """
    if getattr(param, "metavar", None) is not None and param.param_type_name == "option":
        return str(param.metavar)
    if getattr(param, "is_flag", False):
        return None
    desc = param.type_descriptor
    if desc.is_choice and desc.choices:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices)
    annotation = desc.annotation
    if desc.is_list:
        (annotation,) = get_args(annotation)
    return TYPE_LABELS.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())


class _ReadableOption(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        return type_label(self)


class _ReadableArgument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return type_label(self)


def readable_params(params: list[Any]) -> list[Any]:
    """The parameters, labelled by :func:`type_label` in ``--help`` (typer builds its own
    classes for them: these are the same, with that label)."""
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = _ReadableOption
        elif type(param) is TyperArgument:
            param.__class__ = _ReadableArgument
    return params


class ReadableCommand(TyperCommand):
    """A command whose ``--help`` labels each value with :func:`type_label`."""

    def get_params(self, ctx: Any) -> list[Any]:
        return readable_params(super().get_params(ctx))


class ReadableGroup(TyperGroup):
    """A group whose ``--help`` labels its own flags as :class:`ReadableCommand` does."""

    def get_params(self, ctx: Any) -> list[Any]:
        return readable_params(super().get_params(ctx))


class ReadableTyper(typer.Typer):
    """A Typer whose commands are :class:`ReadableCommand` and which is a
    :class:`ReadableGroup`, unless told otherwise: the class said once, not on every
    command (a command added without it would label its values ``<str>`` again)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", ReadableGroup)
        super().__init__(**kwargs)

    def command(  # type: ignore[override]
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[F], F]:
        made: Callable[[F], F] = super().command(name, cls=cls or ReadableCommand, **kwargs)
        return made


app = ReadableTyper(
    add_completion=False,
    no_args_is_help=True,
    help="viralwatch: see known-harmful content spreading, within seconds.",
    pretty_exceptions_enable=False,
)

#: A key that makes pseudonyms reproducible in demos and tests. Production
#: sets VIRALWATCH_PSEUDONYM_KEY; the command says so when it is missing.
_DEV_PSEUDONYM_KEY = b"viralwatch-development-key-not-secret"


def fail(message: str) -> NoReturn:
    """Print a one-line reason and exit 2."""
    typer.echo(f"viralwatch: {message}", err=True)
    raise typer.Exit(2)


def pseudonymizer_from_env() -> object:
    from streams.alerts import Pseudonymizer

    key = os.environ.get("VIRALWATCH_PSEUDONYM_KEY", "")
    if not key:
        typer.echo(
            "viralwatch: VIRALWATCH_PSEUDONYM_KEY is not set; pseudonyms use a development key",
            err=True,
        )
        return Pseudonymizer(_DEV_PSEUDONYM_KEY)
    return Pseudonymizer(key.encode())


#: The option naming a per-bank settings file (replay, bank match, worker).
BankSettingsOpt = Annotated[
    Path | None,
    typer.Option(
        "--bank-settings",
        help="per-bank settings TOML: PDQ threshold, vPDQ match percentages, enabled",
    ),
]


def load_banks(paths: list[Path], settings: Path | None = None) -> object:
    from streams.bank_settings import load_banks as load

    try:
        return load(paths, settings)
    except ValueError as exc:
        fail(str(exc))


def load_policy(path: Path | None) -> object:
    from streams.policy import load_policy as load

    try:
        return load(path)
    except ValueError as exc:
        fail(str(exc))


def open_lines(path: Path):  # type: ignore[no-untyped-def]
    if str(path) == "-":
        return sys.stdin.buffer
    try:
        return path.open("rb")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")


def with_progress(source: Iterable[bytes], path: Path) -> Iterator[bytes]:
    """Yield the lines of ``source``, with a progress bar on stderr when it is a terminal.

    Long replays (millions of events) take minutes; a person watching wants to
    know how far along it is. Pipes and CI logs get no bar.
    """
    try:
        total = path.stat().st_size if str(path) != "-" else None
    except OSError:
        total = None
    if total is None or not sys.stderr.isatty():
        yield from source
        return
    from rich.progress import BarColumn, Progress, TransferSpeedColumn

    done = 0
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        "[progress.percentage]{task.percentage:>3.0f}%",
        TransferSpeedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(f"replaying {path.name}", total=total)
        for n, line in enumerate(source):
            done += len(line)
            if n % 4096 == 0:
                bar.update(task, completed=done)
            yield line


def print_summary(stats: object, alerts: int) -> None:
    from streams.stats import Stats

    assert isinstance(stats, Stats)
    s = stats.summary()
    read = sum(s["events"].values()) + sum(s["rejected"].values()) + s["duplicates"]
    lines = [
        f"events read: {read}  applied: {sum(s['events'].values())} "
        f"{s['events']}  duplicates: {s['duplicates']}",
        f"rejected: {sum(s['rejected'].values())} {s['rejected']}",
        f"uploads matched: {s['matched']}  unmatched: {s['unmatched_uploads']}  "
        f"low-quality pdq: {s['low_quality']}",
        f"clusters: {s['clusters']}  evicted: {s['clusters_evicted']}  "
        f"emerging (unbanked, fast): {s['emerging']}  reshares held: {s['held']}  "
        f"late: {s['late']}",
        f"alerts: {alerts} {s['alerts']}",
    ]
    for line in lines:
        typer.echo(line, err=True)


@app.command()
def replay(
    events: Annotated[Path, typer.Argument(help="JSON lines of share events ('-' for stdin)")],
    bank: Annotated[list[Path], typer.Option("--bank", help="bank CSV; repeat for more")] = [],  # noqa: B006
    policy: Annotated[Path | None, typer.Option(help="alert policy TOML")] = None,
    bank_settings: BankSettingsOpt = None,
    out: Annotated[Path | None, typer.Option(help="write alerts here (default stdout)")] = None,
    actions_out: Annotated[
        Path | None, typer.Option("--actions-out", help="write takedown requests here")
    ] = None,
    deadletter_out: Annotated[
        Path | None, typer.Option("--deadletter-out", help="write rejected input here")
    ] = None,
    lateness: Annotated[
        str, typer.Option(metavar="DURATION", help="allowed lateness of event time")
    ] = "60s",
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="serve /metrics here (0: any free port)")
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", metavar="HOST", help="interface for /metrics")
    ] = "127.0.0.1",
    alertmanager: Annotated[
        str | None, typer.Option(metavar="URL", help="post alerts to this Alertmanager (base URL)")
    ] = None,
    webhook: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="POST alerts here (signed with VIRALWATCH_WEBHOOK_SECRET if set)"
        ),
    ] = None,
    speed: Annotated[
        float, typer.Option(help="replay at this many times event time (0: as fast as possible)")
    ] = 0.0,
    hold: Annotated[
        float, typer.Option(help="seconds to keep serving metrics and sinks after the end")
    ] = 0.0,
) -> None:
    """Run the detection core over a file of events; alerts as JSON lines, same input same bytes."""
    from streams.alerts import parse_duration
    from streams.detector import Decisions
    from streams.pipeline import FEED_CHUNK, Pipeline
    from streams.sinks.oncall import OnCall, Pacer
    from streams.sinks.webhook import secret_from_env

    try:
        lateness_ms = parse_duration(lateness)
    except ValueError as exc:
        fail(str(exc))
    banks = load_banks(bank, bank_settings)
    pol = load_policy(policy)
    source = open_lines(events)
    pipe = Pipeline(banks, pol, pseudonymizer=pseudonymizer_from_env(), lateness_ms=lateness_ms)  # type: ignore[arg-type]
    if not (speed >= 0 and hold >= 0):  # (nan too: it was taken as 0)
        fail(f"--speed {speed:g} and --hold {hold:g}: numbers, 0 or more")
    oncall = None
    if metrics_port is not None or alertmanager or webhook:
        try:
            oncall = OnCall(
                pipe.stats,
                fastest=pipe.detector.fastest,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
                alertmanager=alertmanager,
                webhook=webhook,
                webhook_secret=secret_from_env(),
            )
        except (OSError, ValueError) as exc:
            fail(f"cannot start the on-call outputs: {exc}")
        if oncall.metrics_url:
            typer.echo(f"viralwatch: metrics at {oncall.metrics_url}", err=True)
        banks.on_lookups = oncall.metrics.observe_lookups  # type: ignore[attr-defined]
    pacer = Pacer(speed) if speed > 0 else None
    # Live outputs see each alert as it is made; the files get them all at the end.
    streamed = Decisions()
    live = oncall is not None or pacer is not None
    chunk: list[bytes] = []
    try:
        for line in with_progress(source, events):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            if not live:  # nothing watches alerts as they come: match uploads in batches
                chunk.append(line)
                if len(chunk) >= FEED_CHUNK:
                    pipe.feed_many(chunk)
                    chunk = []
                continue
            pipe.feed(line)
            made = pipe.drain()
            streamed.alerts.extend(made.alerts)
            streamed.actions.extend(made.actions)
            streamed.rejections.extend(made.rejections)
            if oncall is not None:
                oncall.emit(made.alerts)
            if pacer is not None and pipe.max_ts_ms >= 0:
                pacer.wait(pipe.max_ts_ms)
    except OSError as exc:
        fail(f"cannot read {events}: {exc}")
    pipe.feed_many(chunk)
    last = pipe.finish()
    if oncall is not None:
        oncall.emit(last.alerts)
    decisions = Decisions(
        alerts=streamed.alerts + last.alerts,
        actions=streamed.actions + last.actions,
        rejections=streamed.rejections + last.rejections,
    )
    write_jsonl(out, (a.to_json() for a in decisions.alerts))
    if actions_out:
        write_jsonl(actions_out, (a.to_json() for a in decisions.actions))
    if deadletter_out:
        write_jsonl(
            deadletter_out,
            (orjson.dumps(r.to_dict(), option=orjson.OPT_SORT_KEYS) for r in decisions.rejections),
        )
    print_summary(pipe.stats, len(decisions.alerts))
    if oncall is not None:
        oncall.hold(hold)
        undelivered = oncall.close()
        if undelivered:
            typer.echo(f"viralwatch: {undelivered} alert(s) could not be delivered", err=True)
            raise typer.Exit(1)


def write_jsonl(path: Path | None, rows: object) -> None:
    data = b"".join(row + b"\n" for row in rows)  # type: ignore[attr-defined]
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        path.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="write the events (JSON lines) here")],
    bank_out: Annotated[
        Path | None, typer.Option("--bank-out", help="bank CSV (default: OUT with .bank.csv)")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed: the same seed gives the same bytes")] = 7,
    minutes: Annotated[int, typer.Option(help="minutes of event time", min=1)] = 30,
    scale: Annotated[
        float, typer.Option(help="multiply the traffic (35 gives about 1M events)", min=0.01)
    ] = 1.0,
    videos: Annotated[
        int,
        typer.Option(
            help="fast banked cascades that are videos (vPDQ-banked, re-uploaded as re-encodes)",
            min=0,
        ),
    ] = 0,
    video_fraction: Annotated[
        float, typer.Option(help="share of background uploads that are videos", min=0, max=1)
    ] = 0.0,
    video_entries: Annotated[
        int, typer.Option(help="more banked videos, beside the planted ones", min=0)
    ] = 0,
) -> None:
    """Write realistic synthetic share traffic and the bank it implies."""
    from streams.simulate import Scenario, write_scenario

    bank_path = bank_out or out.with_suffix(".bank.csv")
    try:
        scenario = Scenario(
            seed=seed,
            minutes=minutes,
            scale=scale,
            video_banked=videos,
            video_fraction=video_fraction,
            extra_video_entries=video_entries,
        )
    except ValueError as exc:
        fail(str(exc))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        bank_path.parent.mkdir(parents=True, exist_ok=True)
        truth = write_scenario(scenario, out, bank_path)
    except OSError as exc:  # which file: the events', the bank's, or a folder on the way
        why = "a file, not a folder" if isinstance(exc, FileExistsError) else exc.strerror
        fail(f"cannot write {exc.filename or out}: {why or exc}")
    typer.echo(f"wrote {truth['lines']} events to {out} and the bank to {bank_path}", err=True)


@app.command("hash")
def hash_(
    files: Annotated[list[Path], typer.Argument(help="image or video files to hash")],
    seconds_per_hash: Annotated[
        float,
        typer.Option(help="video: seconds between hashed frames (vPDQ's default 1)", min=0.001),
    ] = 1.0,
    max_frames: Annotated[
        int, typer.Option(help="video: stop after hashing this many frames", min=1)
    ] = 3600,
    time_limit: Annotated[
        float, typer.Option(help="video: stop after this many seconds on one file", min=0.1)
    ] = 900.0,
    progress: Annotated[
        bool | None,
        typer.Option(help="progress bar on stderr (default: when stderr is a terminal)"),
    ] = None,
) -> None:
    """Hash media files: one JSON line per file, decided by content, not by name.

    Every file: {"file", "md5"}. An image adds "pdq" and "quality"; a video
    (MP4, MOV, 3GP, WebM, MKV, AVI: whatever FFmpeg reads) adds "vpdq", its
    vPDQ signal (python-threatexchange's list of "pdqhex,quality,timestamp"),
    "frames" and "fps"; a video cut short by a limit adds "truncated". A file
    that is neither gives {"file", "md5", "error"} on stderr, the rest are
    still hashed, and the exit code is 1.
    """
    from streams.hashing import HashError, hash_file
    from streams.videohash import VideoLimits

    try:
        limits = VideoLimits(max_frames=max_frames, max_seconds=time_limit)
    except ValueError as exc:
        fail(str(exc))
    show = sys.stderr.isatty() if progress is None else progress
    failed = 0
    with HashProgress(len(files), show) as bar:
        for path in files:
            rec = hash_file(
                path, seconds_per_hash=seconds_per_hash, limits=limits, progress=bar.on_video
            )
            bar.done(path)
            line = orjson.dumps(rec.to_dict()).decode()
            if isinstance(rec, HashError):
                failed += 1
                typer.echo(line, err=True)
            else:
                typer.echo(line)
                truncated = rec.to_dict().get("truncated")
                if truncated:
                    typer.echo(f"viralwatch: {path}: {truncated}", err=True)
    if failed:
        raise typer.Exit(1)


class HashProgress:
    """A progress bar on stderr for ``hash``: files done, and the seconds of the video at hand."""

    def __init__(self, files: int, show: bool) -> None:
        self.files = files
        self.show = show
        self._bar: object | None = None

    def __enter__(self) -> HashProgress:
        if self.show:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TimeElapsedColumn

            bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                "{task.completed:.0f}/{task.total:.0f}",
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            bar.start()
            self._all = bar.add_task("files", total=self.files)
            self._video = bar.add_task("video s", total=None, visible=False)
            self._bar = bar
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()  # type: ignore[attr-defined]

    def on_video(self, seconds: float, duration: float | None) -> None:
        if self._bar is not None:
            self._bar.update(  # type: ignore[attr-defined]
                self._video, completed=seconds, total=duration, visible=True
            )

    def done(self, path: Path) -> None:
        if self._bar is not None:
            self._bar.update(self._video, completed=0, visible=False)  # type: ignore[attr-defined]
            self._bar.advance(self._all)  # type: ignore[attr-defined]


bank_app = ReadableTyper(no_args_is_help=True, help="Work with hash banks.")
app.add_typer(bank_app, name="bank")


@bank_app.command("match")
def bank_match(
    hashes: Annotated[
        Path,
        typer.Argument(
            help="queries, one a line: a PDQ or MD5 hash, a vPDQ signal (a JSON list), "
            "or a line of `viralwatch hash` ('-': stdin)"
        ),
    ],
    bank: Annotated[list[Path], typer.Option("--bank", help="bank CSV; repeat for more")],
    bank_settings: BankSettingsOpt = None,
) -> None:
    """Match hashes against banks: one JSON line per match within its bank's rule.

    Lines: {"query", "bank", "signal_type", "signal", "distance"}, best first
    for each query; a match of a banked video adds "kind": "vpdq" (a video, by
    vPDQ's rule, with its "query_match_pct" and "compared_match_pct") or
    "video_frame" (an image that matched one of its frames). A vPDQ or `hash` line's query is its
    file name or line number. Blank lines and lines starting with # are
    skipped; a line that is none of these is reported on stderr and makes the
    exit code 1.
    """
    from streams.banks import HashBanks, Match, normalise_signal
    from streams.vpdq import parse_vpdq

    banks = load_banks(bank, bank_settings)
    assert isinstance(banks, HashBanks)
    source = open_lines(hashes)
    queries: list[tuple[str, str, object]] = []  # (kind, query name, the hash or frames)
    bad = 0
    try:
        for n, raw in enumerate(source, 1):
            text = raw.decode("utf-8", "replace").strip()
            if not text or text.startswith("#"):
                continue
            try:
                if text.startswith("{"):
                    rec = orjson.loads(text)
                    name = str(rec.get("file") or f"line {n}") if isinstance(rec, dict) else ""
                    if not isinstance(rec, dict) or not ({"vpdq", "pdq", "md5"} & set(rec)):
                        raise ValueError("a JSON object without vpdq, pdq or md5")
                    for kind in ("vpdq", "pdq", "md5"):
                        if rec.get(kind):
                            value = parse_vpdq(rec[kind]) if kind == "vpdq" else rec[kind]
                            if kind != "vpdq":
                                value = normalise_signal(kind, str(value))[1]
                            queries.append((kind, name, value))
                            break
                elif text.startswith("["):
                    queries.append(("vpdq", f"line {n}", parse_vpdq(text)))
                else:
                    kind = {64: "pdq", 32: "md5"}.get(len(text), "pdq")
                    signal = normalise_signal(kind, text)[1]
                    queries.append((kind, signal, signal))
            except (ValueError, orjson.JSONDecodeError) as exc:
                bad += 1
                typer.echo(
                    f"viralwatch: {hashes}:{n}: not a PDQ or MD5 hash nor a vPDQ signal ({exc})",
                    err=True,
                )
    except OSError as exc:
        fail(f"cannot read {hashes}: {exc.strerror or exc}")
    pdq = [str(q) for kind, _, q in queries if kind == "pdq"]
    found = dict(zip(pdq, banks.lookup_pdq_many(pdq), strict=True))
    out = sys.stdout.buffer
    for kind, name, q in queries:
        matches: list[Match]
        if kind == "pdq":
            matches = found[str(q)] + banks.lookup_video_frame(str(q))
        elif kind == "vpdq":
            matches = banks.lookup_vpdq(q)  # type: ignore[arg-type]
        else:
            matches = banks.lookup_md5(str(q))
        for m in matches:
            row = {
                "query": name,
                "bank": m.entry.bank,
                "signal_type": m.entry.signal_type,
                "signal": m.entry.signal,
                "distance": m.distance,
            }
            if m.entry.signal_type == "vpdq":
                row["kind"] = m.kind
            if m.video is not None:
                row["query_match_pct"] = round(m.video.query_match_pct, 2)
                row["compared_match_pct"] = round(m.video.compared_match_pct, 2)
            out.write(orjson.dumps(row) + b"\n")
    out.flush()
    if bad:
        raise typer.Exit(1)


def _bank_change(
    kind: str,
    bank: str,
    signals: list[str],
    reviewer: str,
    reason: str,
    broker: str | None,
    topic_prefix: str | None,
    broker_wait: str | None,
) -> None:
    """Publish a bank change as a reviewer action (bank topic, then audit topic)."""
    import time

    from streams.review import ReviewAction, Signal
    from streams.runtime.produce import publish_action
    from streams.settings import Settings

    try:
        parsed = tuple(
            Signal({64: "pdq", 32: "md5"}.get(len(x.strip()), "vpdq"), x)  # type: ignore[arg-type]
            for x in signals
        )
        action = ReviewAction(
            kind,  # type: ignore[arg-type]
            reviewer=reviewer,
            reason=reason,
            ts_ms=int(time.time() * 1000),
            signals=parsed,
            bank=bank,
        )
    except ValueError as exc:
        fail(str(exc))
    settings = broker_settings(broker, topic_prefix, broker_wait)
    assert isinstance(settings, Settings)
    try:
        publish_action(action, settings)
    except Exception as exc:  # the Kafka client's errors: say them in one line
        fail(client_error(exc))
    sys.stdout.buffer.write(action.to_json() + b"\n")


SignalsArg = Annotated[
    list[str], typer.Argument(help="PDQ (64 hex), MD5 (32 hex) or vPDQ (a video's frames) hashes")
]
ByOpt = Annotated[str, typer.Option("--by", help="who makes the change (recorded in audit)")]
WhyOpt = Annotated[str, typer.Option("--reason", help="why (recorded in audit)")]


BankOpt = Annotated[str, typer.Option("--bank", help="bank name")]


def _change_command(kind: str, doc: str) -> Callable[..., None]:
    def command(
        signals: SignalsArg,
        by: ByOpt,
        bank: BankOpt = "internal",
        reason: WhyOpt = "",
        broker: BrokerOpt = None,
        broker_wait: BrokerWaitOpt = None,
        topic_prefix: PrefixOpt = None,
    ) -> None:
        _bank_change(kind, bank, signals, by, reason, broker, topic_prefix, broker_wait)

    command.__doc__ = doc
    return command


bank_app.command("add")(
    _change_command(
        "bank",
        """Add hashes to a bank, through the bank topic; the action is printed as JSON.

        Every worker matches them from now on, and live clusters of that content are
        banked at once (retroaction). The action (who, why, when) goes to the audit topic.""",
    )
)
bank_app.command("unallow")(
    _change_command(
        "reverse_false_positive",
        """Reverse a false positive: take hashes off the allow-list (recorded in audit).

        Uploads of that content match its bank again from now on.""",
    )
)
bank_app.command("withdraw")(
    _change_command(
        "withdraw",
        """Withdraw hashes from a bank, through the bank topic (recorded in audit).

        To stop a wrong match from alerting, mark the cluster a false positive instead.""",
    )
)


@bank_app.command("list")
def bank_list(
    bank: Annotated[str | None, typer.Option("--bank", help="only this bank")] = None,
    broker: BrokerOpt = None,
    broker_wait: BrokerWaitOpt = None,
    topic_prefix: PrefixOpt = None,
) -> None:
    """The banks as the bank topic holds them now: one JSON line per entry.

    Each line is {"bank", "signal_type", "signal", "label"} (the allow-list is the bank
    "allowlist"); then the sizes on stderr."""
    from streams.runtime.bank_follower import read_banks
    from streams.settings import Settings

    settings = broker_settings(broker, topic_prefix, broker_wait)
    assert isinstance(settings, Settings)
    try:
        banks, bad = read_banks(settings)
    except Exception as exc:  # the Kafka client's errors: say them in one line
        fail(client_error(exc))
    out = sys.stdout.buffer
    for e in sorted(banks.entries(), key=lambda e: (e.bank, e.signal_type, e.signal)):
        if bank is None or e.bank == bank:
            row = {"bank": e.bank, "signal_type": e.signal_type, "signal": e.signal}
            out.write(orjson.dumps({**row, "label": e.label}) + b"\n")
    out.flush()
    sizes = ", ".join(f"{name}: {n}" for name, n in banks.sizes().items()) or "empty"
    typer.echo(f"viralwatch: {sizes}" + (f" ({bad} unreadable records)" if bad else ""), err=True)


@app.command("evaluate")
def evaluate_cmd(
    files: Annotated[list[Path], typer.Argument(help="cascade files or directories of them")],
    format_: Annotated[
        str, typer.Option("--format", help="twitter | seismic | casflow | auto (by content)")
    ] = "auto",
    at: Annotated[str, typer.Option(help="observation times after the original post")] = (
        "1h,2h,6h"
    ),
    model: Annotated[
        str,
        typer.Option(
            help="rows for this model: seismic, tideh, best, best|sel, sized|sel, gbm, ..."
        ),
    ] = "best",
    split: Annotated[
        str,
        typer.Option(
            help="none (shipped parameters) | kfold (--folds, --seed) | loo (leave-one-out) | 2fold"
        ),
    ] = "none",
    folds: Annotated[int, typer.Option(help="folds of --split kfold")] = 10,
    seed: Annotated[int, typer.Option(help="seed of the folds' shuffle")] = 0,
    train: Annotated[
        list[Path] | None,
        typer.Option(help="fit every model on these cascades instead, predict FILES"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, then a summary")] = False,
    plot: Annotated[Path | None, typer.Option(help="write a PNG here")] = None,
    plot_cascade: Annotated[
        str | None, typer.Option("--plot-cascade", help="draw this cascade only")
    ] = None,
    horizon: Annotated[
        str | None,
        typer.Option(help="what final means (default: twitter, seismic 7d; casflow 24h)"),
    ] = None,
    step: Annotated[
        str, typer.Option(help="grid for the alert policy (hourly after a day)")
    ] = "5m",
    alert_size: Annotated[
        float | None,
        typer.Option(
            "--alert-size",
            help="the prediction rule: fire when the predicted final size passes this "
            "(default: the policy's)",
        ),
    ] = None,
    alert_low: Annotated[
        float | None,
        typer.Option(
            "--alert-low",
            help="the prediction rule: and when the band's low end passes this "
            "(default: the policy's)",
        ),
    ] = None,
    show_calibration: Annotated[
        bool,
        typer.Option("--show-calibration", help="print the amplified calibration fitted on FILES"),
    ] = False,
    show_model: Annotated[
        bool,
        typer.Option("--show-model", help="print the best and rich models fitted on FILES"),
    ] = False,
) -> None:
    """Predict final cascade sizes on real cascades and measure the error.

    One line per cascade and observation time: {"cascade", "obs_seconds",
    "observed", "infectiousness", "predicted", "low", "high", "final",
    "model"}; then, per model and observation time, the median absolute
    percentage error and the share of final sizes inside the band, per fold,
    and what the policy's prediction rule would have done (precision,
    recall, lead time). Unreadable lines are reported on stderr; a cascade
    refused whole makes the exit code 1.
    """
    from graphs.growth import SCALE_FREE_INPUTS, SEISMIC_INPUTS
    from streams import evaluate as ev

    if format_ not in (*ev.FORMATS, "auto") or model not in ev.ROW_MODELS:
        fail(
            "--format must be twitter, seismic, casflow or auto; "
            f"--model one of {', '.join(ev.ROW_MODELS)}"
        )
    if split not in ev.SPLITS:
        fail(f"--split must be one of {', '.join(ev.SPLITS)}")
    import math

    for flag, value, least in (("--alert-size", alert_size, 1.0), ("--alert-low", alert_low, 0.0)):
        if value is not None and not (math.isfinite(value) and value >= least):
            fail(f"{flag} {value:g}: a number of posts, at least {least:g}")  # (nan: a traceback)
    try:
        times = ev.parse_times(at)
        grid = ev.parse_seconds(step)
        horizon_s = ev.parse_seconds(horizon) if horizon else None
    except ValueError as exc:
        fail(str(exc))

    def read(paths: list[Path]) -> ev.ReadResult:
        out = ev.ReadResult()
        for path in paths:
            out = out + ev.read_path(path, format_, horizon_s=horizon_s)
        for bad in out.rejected:
            typer.echo(f"viralwatch: {bad}", err=True)
        return out

    got = read(files)
    if not got.cascades:
        fail("no cascade could be read")
    trained = read(train) if train else None
    if trained is not None and not trained.cascades:
        fail("no training cascade could be read")
    if show_calibration:
        typer.echo(repr(ev.fit_all(got.cascades)))
        return
    if show_model:
        when = time.strftime("%Y-%m-%d", time.gmtime())
        where = ", ".join(str(p) for p in files)
        provenance = (
            f"fitted {when} by `viralwatch evaluate {where} --show-model` on "
            f"{len(got.cascades)} cascades, band from {folds}-fold cross-fits (seed {seed})"
        )
        for name, inputs in (
            ("DEFAULT_GROWTH", SEISMIC_INPUTS),
            ("RICH_GROWTH", SCALE_FREE_INPUTS),
        ):
            fitted = ev.fit_model(
                got.cascades, folds=folds, seed=seed, provenance=provenance, inputs=inputs
            )
            typer.echo(f"{name} = {fitted!r}")
        return
    rule = ev.default_rule()
    alert = dataclasses.replace(
        rule,
        size=alert_size if alert_size is not None else rule.size,
        low=alert_low if alert_low is not None else rule.low,
    )
    try:
        result = ev.evaluate(
            got.cascades,
            times,
            split=split,
            folds=folds,
            seed=seed,
            train=trained.cascades if trained is not None else None,
            step_s=grid,
        )
    except ValueError as exc:
        fail(str(exc))
    summary = ev.summarize(result, alert)
    summary["rejected"] = len(got.rejected)
    rows = [r for r in result.rows if r.model == model]
    if as_json:
        out = sys.stdout.buffer
        for r in rows:
            out.write(orjson.dumps(r.to_dict()) + b"\n")
        out.write(orjson.dumps({"summary": summary}) + b"\n")
        out.flush()
    else:
        if len(rows) <= 60:
            typer.echo(ev.render_rows(rows))
        typer.echo(ev.render_summary(summary))
    if plot is not None:
        try:
            drawn = ev.plot(result, plot, plot_cascade)
        except ValueError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot write {plot}: {exc.strerror or exc}")
        typer.echo(f"viralwatch: plot of {drawn} in {plot}", err=True)
    if any(bad.line == 0 for bad in got.rejected):
        raise typer.Exit(1)


# -- streaming: worker, produce, demo (the code: streams.runtime, streams.demo) --------


def streaming_settings(**flags: object) -> object:
    """Settings from VIRALWATCH_* and the flags given; a bad value exits 2 with the reason."""
    from streams.alerts import parse_duration
    from streams.settings import Settings

    try:
        if isinstance(flags.get("lateness_ms"), str):
            flags["lateness_ms"] = parse_duration(flags["lateness_ms"])
        return Settings.from_env(None, **flags)
    except ValueError as exc:
        fail(str(exc))


def flag_value(flag: str, text: str | None, parse: Callable[[str], T]) -> T | None:
    """A flag's value parsed as its variable is (``None`` if not given); a bad one exits 2.

    Typer's own type errors come in a box over several lines; these say it in one.
    """
    if text is None:
        return None
    try:
        return parse(text.strip())
    except ValueError as exc:
        fail(f"{flag}: {exc}")


def client_error(exc: BaseException) -> str:
    """The Kafka client's error in one line: its kind once (kafka-python's text starts with
    it already: "KafkaTimeoutError: KafkaTimeoutError: Unable to bootstrap" was said).

    >>> class KafkaTimeoutError(Exception): ...
    >>> client_error(KafkaTimeoutError("KafkaTimeoutError: Unable to bootstrap from [...]"))
    'KafkaTimeoutError: Unable to bootstrap from [...]'
    >>> client_error(KafkaTimeoutError("Unable to bootstrap from [...]"))
    'KafkaTimeoutError: Unable to bootstrap from [...]'
    """
    said, kind = str(exc), type(exc).__name__
    return said if said.startswith(kind) else f"{kind}: {said}"


def broker_settings(broker: str | None, topic_prefix: str | None, wait: str | None) -> object:
    """The settings of a command that only talks to the broker (``bank add``, ``bank list``):
    none configured, or none answering within the wait, said in one line, exit status 2,
    within seconds (they waited out the Kafka client's bootstrap timeout, about 40 s)."""
    from streams.runtime.broker import wait_reachable
    from streams.settings import Settings, positive_seconds

    settings = streaming_settings(
        broker=broker,
        topic_prefix=topic_prefix,
        broker_wait_s=flag_value("--broker-wait", wait, positive_seconds),
    )
    assert isinstance(settings, Settings)
    if settings.broker is None:
        fail("no broker: give --broker kafka://HOST:PORT or set VIRALWATCH_BROKER")
    try:
        wait_reachable(settings.bootstrap, settings.broker_wait_s)
    except ConnectionError as exc:
        fail(str(exc))
    return settings


BrokerOpt = Annotated[
    str | None,
    typer.Option(metavar="URL", help="kafka://HOST:PORT (default VIRALWATCH_BROKER)"),
]
BrokerWaitOpt = Annotated[
    str | None,
    typer.Option(
        "--broker-wait",
        metavar="SECONDS",
        help="how long the start waits for the broker to accept a connection before it "
        "says none answers, exit status 2: '90s', '2m' or seconds (default "
        "VIRALWATCH_BROKER_WAIT, else 5s)",
    ),
]
PrefixOpt = Annotated[
    str | None, typer.Option("--topic-prefix", help="topic name prefix (default viralwatch.)")
]
PartitionsOpt = Annotated[
    int | None, typer.Option(help="partitions of the topics created (default 4)", min=1)
]


@app.command()
def worker(
    broker: BrokerOpt = None,
    broker_wait: BrokerWaitOpt = None,
    bank: Annotated[list[Path], typer.Option("--bank", help="bank CSV; repeat for more")] = [],  # noqa: B006
    policy: Annotated[Path | None, typer.Option(help="alert policy TOML")] = None,
    bank_settings: BankSettingsOpt = None,
    topic_prefix: PrefixOpt = None,
    partitions: PartitionsOpt = None,
    app_id: Annotated[str | None, typer.Option("--app-id", help="consumer group id")] = None,
    lateness: Annotated[
        str | None, typer.Option(metavar="DURATION", help="allowed lateness (default 60s)")
    ] = None,
    http_port: Annotated[
        str | None,
        typer.Option(
            "--http-port",
            metavar="PORT",
            help="serve /metrics, /livez, /readyz and the views (/cascade/<id>, /emerging, "
            "/banks) on this port (0: any free port; default VIRALWATCH_HTTP_PORT, else none)",
        ),
    ] = None,
    http_host: Annotated[
        str | None,
        typer.Option(
            "--http-host",
            metavar="HOST",
            help="interface of the HTTP port (default VIRALWATCH_HTTP_HOST, else 127.0.0.1)",
        ),
    ] = None,
    metrics_port: Annotated[
        str | None, typer.Option("--metrics-port", hidden=True, help="deprecated: --http-port")
    ] = None,
    alertmanager: Annotated[
        str | None, typer.Option(metavar="URL", help="post alerts to Alertmanager")
    ] = None,
    webhook: Annotated[
        str | None, typer.Option(metavar="URL", help="POST alerts to this URL")
    ] = None,
    wire_version: Annotated[
        str | None,
        typer.Option(
            "--wire-version",
            metavar="N",
            help="the wire version written on the resolve and clusters topics: 1 while "
            "workers of a release before version 2 run (a rolling update's first step; "
            "default VIRALWATCH_WIRE_VERSION, else the latest)",
        ),
    ] = None,
    embedded_broker: Annotated[
        bool,
        typer.Option(
            "--embedded-broker",
            help="with no broker configured, start the bundled in-memory one (demo, laptop; "
            "never production: it loses everything when the worker stops)",
        ),
    ] = False,
) -> None:
    """Run a streaming worker: shares topic in; alerts, takedowns, dead letters out.

    Refuses to start with no broker configured, unless told --embedded-broker.
    """
    from streams.settings import Settings, parse_host, parse_port, positive_seconds
    from streams.wire import WireVersion

    port = flag_value("--http-port", http_port, parse_port)
    if metrics_port is not None:
        old = flag_value("--metrics-port", metrics_port, parse_port)
        if port is not None and port != old:
            fail(f"--metrics-port {old} (deprecated) disagrees with --http-port {port}")
        typer.echo("viralwatch: --metrics-port is deprecated: use --http-port", err=True)
        port = old
    settings = streaming_settings(
        http_port=port,
        http_host=flag_value("--http-host", http_host, parse_host),
        broker=broker,
        broker_wait_s=flag_value("--broker-wait", broker_wait, positive_seconds),
        bank_files=tuple(bank) or None,
        policy_file=policy,
        bank_settings_file=bank_settings,
        topic_prefix=topic_prefix,
        partitions=partitions,
        app_id=app_id,
        lateness_ms=lateness,
        alertmanager_url=alertmanager,
        webhook_url=webhook,
        embedded_broker=embedded_broker or None,
        wire_version=flag_value("--wire-version", wire_version, WireVersion.parse),
    )
    assert isinstance(settings, Settings)
    # Faust and the runtime (about a second of imports) only once the flags are read: a
    # bad flag or variable is said at once.
    from streams.runtime.worker import run_worker

    try:
        run_worker(settings)
    except (OSError, ValueError, RuntimeError, ConnectionError) as exc:
        fail(str(exc))


@app.command()
def produce(
    events: Annotated[Path, typer.Argument(help="JSON lines of share events ('-' for stdin)")],
    broker: BrokerOpt = None,
    broker_wait: BrokerWaitOpt = None,
    topic_prefix: PrefixOpt = None,
    partitions: PartitionsOpt = None,
    key: Annotated[str, typer.Option(help="record key: none, post or event")] = "none",
    rate: Annotated[
        float | None, typer.Option(help="events per second (default: all at once)")
    ] = None,
) -> None:
    """Send a file of events to the shares topic, one record per line (bad lines too)."""
    from streams.runtime.produce import KEYINGS, produce_file
    from streams.runtime.worker import prepare
    from streams.settings import Settings, positive_seconds

    # the arguments first: a bad one was said only after the broker was reached and the
    # topics made (or, with no broker there, as the client's bootstrap timeout)
    if str(events) != "-" and not events.is_file():
        fail(f"cannot read {events}: {'not a file' if events.exists() else 'no such file'}")
    if key not in KEYINGS:
        fail(f"--key {key!r}: one of {', '.join(KEYINGS)}")
    if rate is not None and not rate > 0:
        fail(f"--rate {rate:g}: events per second, more than 0")
    settings = streaming_settings(
        broker=broker,
        broker_wait_s=flag_value("--broker-wait", broker_wait, positive_seconds),
        topic_prefix=topic_prefix,
        partitions=partitions,
    )
    assert isinstance(settings, Settings)
    if settings.broker is None:
        fail("no broker: give --broker kafka://HOST:PORT or set VIRALWATCH_BROKER")
    try:
        settings, _, _ = prepare(settings, lambda m: typer.echo(f"viralwatch: {m}", err=True))
        done = produce_file(events, settings, keying=key, rate=rate)
    except (OSError, ValueError, RuntimeError, ConnectionError) as exc:
        fail(str(exc))
    except Exception as exc:  # the Kafka client's errors: say them in one line
        fail(client_error(exc))
    typer.echo(
        f"viralwatch: sent {done.records} events ({done.bytes:,} bytes) to "
        f"{settings.topic('shares')} in {done.seconds:.2f}s ({done.rate:,.0f}/s)",
        err=True,
    )


@app.command()
def broker(
    kafka: Annotated[
        bool,
        typer.Option(
            "--kafka",
            help="run Apache Kafka (built by `make kafka`) instead of the bundled broker",
        ),
    ] = False,
    port: Annotated[
        int | None, typer.Option(help="loopback port to listen on (default: a free one)")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Apache Kafka's data folder (kept; default: a temporary one, removed)"),
    ] = None,
) -> None:
    """Run a broker in the foreground on 127.0.0.1 until SIGTERM or Ctrl-C.

    Prints one line, ``kafka://127.0.0.1:PORT``, once the broker serves
    requests; tests, benchmarks and operators start brokers the same way.
    """
    import signal
    import threading

    from streams.runtime.broker import BrokerError, RunningBroker, start_local_broker
    from streams.runtime.kafka_server import start_kafka

    if port is not None and not 0 < port < 65536:
        fail(f"--port {port}: a port is 1..65535")
    if data is not None and not kafka:
        fail("--data is for --kafka (the bundled broker keeps everything in memory)")
    if data is not None and data.exists() and not data.is_dir():
        fail(f"--data {data} is not a folder")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    running: RunningBroker
    try:
        # (the bundled broker's log, read for a panic, is in a folder of its own, removed
        # when it stops: it may end with status 0 after one, or run on)
        running = start_kafka(port=port, data=data) if kafka else start_local_broker(port=port)
    except (BrokerError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
    try:
        typer.echo(running.url)
        kind = "Apache Kafka" if kafka else "the bundled broker (memory storage)"
        typer.echo(f"viralwatch: {kind} ready, pid {running.pid}; Ctrl-C stops it", err=True)
        while not stop.wait(0.5):
            failed = running.failure()
            if failed is not None:
                fail(f"the broker (pid {running.pid}) {failed}")
    finally:
        running.stop()


@app.command()
def demo(
    broker: BrokerOpt = None,
    minutes: Annotated[int, typer.Option(help="minutes of simulated event time", min=1)] = 30,
    speed: Annotated[float, typer.Option(help="event-time seconds per second", min=1)] = 60.0,
    seed: Annotated[int, typer.Option(help="random seed of the simulated traffic")] = 7,
    videos: Annotated[
        bool, typer.Option(help="some uploads are videos (one fast cascade is a banked video)")
    ] = True,
) -> None:
    """Start a broker, a worker and simulated traffic; print alerts as they fire."""
    from streams.demo import run_demo
    from streams.settings import Settings
    from streams.simulate import Scenario

    settings = streaming_settings(broker=broker)
    assert isinstance(settings, Settings)
    scenario = Scenario(seed=seed, minutes=minutes)
    if videos:
        scenario = Scenario(
            seed=seed,
            minutes=minutes,
            video_banked=1,
            video_fraction=0.05,
            extra_video_entries=100,
        )
    try:
        run_demo(settings, scenario=scenario, speed=speed)
    except (OSError, ValueError, RuntimeError, ConnectionError) as exc:
        fail(str(exc))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
