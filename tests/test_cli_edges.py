"""The command line's edges, as a user meets them: a bad flag or path says which and why,
in one line, with exit status 2, before anything is started or sent; every flag says
what it is in ``--help``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from programs import viralwatch

from streams.cli import app


def _options(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    if hasattr(command, "commands"):  # a group: bank's, and the top one
        for name, sub in command.commands.items():
            yield from _options(sub, (*path, name))
        return
    for param in command.params:
        if not getattr(param, "hidden", False):
            yield " ".join(path), param


def test_every_flag_and_argument_has_a_help_text() -> None:
    """``--help`` is where an on-call engineer looks first: a flag shown with no words
    (evaluate's --alert-size and --alert-low were) leaves them to read the code."""
    params = list(_options(typer.main.get_command(app)))
    assert len(params) > 60  # every command's, bank's subcommands too
    bare = [f"{cmd} {p.name}" for cmd, p in params if not (getattr(p, "help", "") or "").strip()]
    assert bare == []


def test_the_worker_s_http_port_says_it_serves_the_views() -> None:
    """The port an alert's cascade link and a reviewer reach: ``--help`` named only
    /metrics and the probes, as if the views were somewhere else."""
    worker = {p.name: p for cmd, p in _options(typer.main.get_command(app)) if cmd == "worker"}
    assert "the views" in worker["http_port"].help
    for path in ("/metrics", "/livez", "/readyz", "/cascade/<id>", "/emerging", "/banks"):
        assert path in worker["http_port"].help, path


def test_every_command_s_summary_is_one_line() -> None:
    """The commands' list in ``--help`` shows a help's first paragraph with its line
    breaks as written: ``viralwatch bank --help`` broke four summaries mid-sentence."""
    import inspect

    def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
        for name, sub in getattr(command, "commands", {}).items():
            yield " ".join((*path, name)), sub
            yield from commands(sub, (*path, name))

    listed = list(commands(typer.main.get_command(app)))
    assert len(listed) > 12  # bank's subcommands too
    broken = [name for name, c in listed if "\n" in inspect.cleandoc(c.help or "").split("\n\n")[0]]
    assert broken == []


def _help_rows(path: str) -> dict[str, list[str]]:
    """``viralwatch PATH --help``'s parameter rows, by their first name: the row's columns."""
    from typer.testing import CliRunner

    got = CliRunner().invoke(app, [*path.split(), "--help"], env={"COLUMNS": "300"})
    assert got.exit_code == 0, got.output
    rows: dict[str, list[str]] = {}
    for line in got.output.splitlines():
        cells = [c for c in re.split(r"\s{2,}", line.strip("│ \n").lstrip("* ")) if c]
        if cells and re.fullmatch(r"(--)?[a-z][a-z0-9-]*(\.\.\.)?", cells[0]):
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_every_flag_s_help_shows_a_type_a_user_can_read() -> None:
    """typer 0.2x labels a value by its Python annotation (``--bank <list[Path]>``,
    ``--lateness <str>``) and a flag that takes no value with ``<bool>``, as if ``--json
    true`` were asked for: a value shows a word (``PATH``, ``INTEGER``, ``URL``,
    ``SECONDS``), a flag none, in every command's ``--help``."""
    params = list(_options(typer.main.get_command(app)))
    commands = sorted({cmd for cmd, _ in params})
    assert len(commands) > 12
    seen = 0
    for cmd in commands:
        rows = _help_rows(cmd)
        for param in [p for c, p in params if c == cmd]:
            key = param.opts[0] if param.param_type_name == "option" else param.name
            if key not in rows:  # an argument of several values: "files..."
                key += "..."
            cells = rows[key][len(param.secondary_opts) :]
            if getattr(param, "is_flag", False):  # nothing between the flag and its help
                assert cells[0].startswith((param.help or "")[:20]), (cmd, key, cells)
                continue
            label = cells[0]
            assert re.fullmatch(r"[A-Z][A-Z_|]*( \[[^\]]+\])?", label), (cmd, key, label)
            seen += 1
        assert rows["--help"] == ["Show this message and exit."], (cmd, rows["--help"])
    assert seen > 60
    worker = _help_rows("worker")
    assert worker["--bank"][0] == "PATH" and worker["--partitions"][0] == "INTEGER [x>=1]"
    assert worker["--broker-wait"][0] == "SECONDS" and worker["--broker"][0] == "URL"
    assert _help_rows("hash")["files..."][0] == "PATH"


def test_every_command_labels_its_values_without_being_told_to() -> None:
    """The readable labels are the groups' default (``cli.ReadableTyper``), said once: every
    command and group built is one of the readable classes, and so is a command added
    later without naming a class."""
    from streams.cli import ReadableCommand, ReadableGroup, ReadableTyper

    def walk(command: Any) -> Iterator[Any]:
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    built = list(walk(typer.main.get_command(app)))
    assert len(built) > 14
    for command in built:
        kind = ReadableGroup if hasattr(command, "commands") else ReadableCommand
        assert isinstance(command, kind), (command.name, type(command))
    extra = ReadableTyper()

    @extra.command()
    def one(n: int = 1) -> None:
        """One command."""

    @extra.command()
    def two(n: int = 2) -> None:
        """Another."""

    group = typer.main.get_command(extra)
    assert isinstance(group, ReadableGroup)
    assert all(isinstance(c, ReadableCommand) for c in group.commands.values())


def test_simulate_names_the_file_it_cannot_write(tmp_path: Path) -> None:
    a_file = tmp_path / "events.jsonl"
    a_file.write_text("{}\n")
    for args in (
        ["--out", str(a_file / "x.jsonl")],
        ["--out", str(tmp_path / "ok.jsonl"), "--bank-out", str(a_file / "b.csv")],
    ):
        r = viralwatch("simulate", *args, "--minutes", "1", timeout=60)
        err = r.stderr.decode().strip()
        assert r.returncode == 2, err
        assert err == f"viralwatch: cannot write {a_file}: a file, not a folder"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--key", "bogus"], "--key 'bogus': one of none, post, event"),
        (["--rate", "0"], "--rate 0: events per second, more than 0"),
        (["--rate", "-5"], "--rate -5: events per second, more than 0"),
    ],
)
def test_produce_refuses_a_bad_flag_before_reaching_the_broker(
    tmp_path: Path, args: list[str], said: str
) -> None:
    """Said at once, not after the topics were made on the broker (nor, with none there,
    as the client's bootstrap timeout: nothing listens on port 1)."""
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    r = viralwatch("produce", str(events), "--broker", "kafka://127.0.0.1:1", *args, timeout=60)
    assert r.returncode == 2
    assert r.stderr.decode().strip() == f"viralwatch: {said}"


def test_produce_says_why_it_cannot_read_its_file(tmp_path: Path) -> None:
    for path, why in ((tmp_path / "missing.jsonl", "no such file"), (tmp_path, "not a file")):
        r = viralwatch("produce", str(path), "--broker", "kafka://127.0.0.1:1", timeout=60)
        assert r.returncode == 2
        assert r.stderr.decode().strip() == f"viralwatch: cannot read {path}: {why}"


@pytest.mark.parametrize("flag", ["--webhook", "--alertmanager"])
def test_a_sink_url_no_post_could_reach_is_refused_at_once(tmp_path: Path, flag: str) -> None:
    """replay said a port that is no number as a traceback in each delivery round (and
    retried a URL with no host until its end); a worker said neither before its first
    alert. Now both refuse it in one line, the worker before it reaches the broker."""
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    for command in (["replay", str(events)], ["worker", "--broker", "kafka://127.0.0.1:1"]):
        r = viralwatch(*command, flag, "http://h:abc", timeout=60)
        err = r.stderr.decode().strip().splitlines()
        assert r.returncode == 2, err
        assert "Traceback" not in r.stderr.decode()
        assert err[-1].startswith("viralwatch: ") and "'http://h:abc'" in err[-1], err


@pytest.mark.parametrize(
    ("flag", "said"),
    [("--bank", "bank"), ("--policy", "policy"), ("--bank-settings", "bank settings")],
)
def test_the_worker_names_the_file_it_cannot_read(tmp_path: Path, flag: str, said: str) -> None:
    """As replay does, and before it reaches the broker (nothing listens on port 1): it said
    ``[Errno 2] No such file or directory: '...'``, not which setting named the file."""
    missing = tmp_path / "missing"
    for command in (["worker", "--broker", "kafka://127.0.0.1:1"], ["replay", "-"]):
        r = viralwatch(*command, flag, str(missing), timeout=60)
        assert r.returncode == 2
        last = r.stderr.decode().strip().splitlines()[-1]
        assert last.startswith(f"viralwatch: cannot read {said} {missing}: "), last


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--alert-size", "nan"], "--alert-size nan: a number of posts, at least 1"),
        (["--alert-size", "inf"], "--alert-size inf: a number of posts, at least 1"),
        (["--alert-low", "-1"], "--alert-low -1: a number of posts, at least 0"),
    ],
)
def test_evaluate_refuses_a_rule_no_forecast_can_meet(
    tmp_path: Path, args: list[str], said: str
) -> None:
    """Before anything is read or fitted: nan and inf were tracebacks (the report's table
    made an integer of them), a negative floor a rule that always passes."""
    r = viralwatch("evaluate", str(tmp_path / "none.csv"), *args, timeout=60)
    assert r.returncode == 2
    assert r.stderr.decode().strip() == f"viralwatch: {said}"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--speed", "-1"], "--speed -1 and --hold 0: numbers, 0 or more"),
        (["--speed", "nan"], "--speed nan and --hold 0: numbers, 0 or more"),
        (["--hold", "nan"], "--speed 0 and --hold nan: numbers, 0 or more"),
    ],
)
def test_replay_refuses_a_pace_that_is_no_number(args: list[str], said: str) -> None:
    """nan was taken as 0 (as fast as possible, no hold): a typo run as something else."""
    r = viralwatch("replay", "-", *args, timeout=60)
    assert r.returncode == 2
    assert r.stderr.decode().strip().splitlines()[-1] == f"viralwatch: {said}"
