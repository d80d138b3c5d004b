"""`viralwatch replay` as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import json
import random
import re
import shlex
import sys
from pathlib import Path

import orjson
import pytest
from eventgen import T0, Traffic, pdq_hex
from programs import viralwatch


def write_case(tmp: Path) -> tuple[Path, Path]:
    t, rng = Traffic(), random.Random(21)
    pdq = pdq_hex(rng)
    root = t.upload(T0, pdq=pdq)
    t.burst(root, T0 + 1000, 150, 1000)
    events = tmp / "events.jsonl"
    events.write_bytes(b"\n".join([*t.lines()[:70], b"not json", b"", *t.lines()[70:]]) + b"\n")
    bank = tmp / "bank.csv"
    bank.write_text(f"signal_type,signal,bank,label\npdq,{pdq},ncii,case-9\n")
    return events, bank


def test_replay_writes_alerts_and_a_summary(tmp_path: Path) -> None:
    events, bank = write_case(tmp_path)
    r = viralwatch("replay", str(events), "--bank", str(bank))
    assert r.returncode == 0, r.stderr
    alerts = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert [(a["severity"], a["status"]) for a in alerts] == [
        ("warning", "firing"),
        ("high", "firing"),
        ("warning", "resolved"),
        ("high", "resolved"),
    ]
    err = r.stderr.decode()
    assert "rejected: 1 {'not_json': 1}" in err
    assert "alerts: 4" in err


def test_replay_is_byte_identical_across_runs(tmp_path: Path) -> None:
    events, bank = write_case(tmp_path)
    outs = []
    for i in range(2):
        out = tmp_path / f"alerts{i}.jsonl"
        r = viralwatch(
            "replay",
            str(events),
            "--bank",
            str(bank),
            "--out",
            str(out),
            env={"PYTHONHASHSEED": str(i + 1)},
        )
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] and outs[0] == outs[1]


def test_replay_writes_takedowns_and_dead_letters(tmp_path: Path) -> None:
    events, bank = write_case(tmp_path)
    actions, dead = tmp_path / "actions.jsonl", tmp_path / "dead.jsonl"
    r = viralwatch(
        "replay",
        str(events),
        "--bank",
        str(bank),
        "--out",
        str(tmp_path / "a"),
        "--actions-out",
        str(actions),
        "--deadletter-out",
        str(dead),
    )
    assert r.returncode == 0, r.stderr
    assert len(actions.read_bytes().splitlines()) == 151
    [rejected] = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert rejected["reason"] == "not_json" and rejected["raw"] == "not json"


def test_unreadable_input_exits_2_with_one_line(tmp_path: Path) -> None:
    _, bank = write_case(tmp_path)
    r = viralwatch("replay", str(tmp_path / "missing.jsonl"), "--bank", str(bank))
    assert r.returncode == 2
    assert r.stderr.decode().strip().count("\n") == 0
    assert "missing.jsonl" in r.stderr.decode()


def test_bad_bank_and_bad_policy_exit_2(tmp_path: Path) -> None:
    events, _ = write_case(tmp_path)
    bad_bank = tmp_path / "bad.csv"
    bad_bank.write_text("signal_type,signal,bank\npdq,xyz,ncii\n")
    r = viralwatch("replay", str(events), "--bank", str(bad_bank))
    assert r.returncode == 2 and b"bad.csv:2" in r.stderr
    bad_policy = tmp_path / "p.toml"
    bad_policy.write_text('[[rule]]\nseverity = "apocalyptic"\nshares = 1\nwindow = "1m"\n')
    r = viralwatch("replay", str(events), "--policy", str(bad_policy))
    assert r.returncode == 2 and b"apocalyptic" in r.stderr


def test_a_custom_policy_changes_the_thresholds(tmp_path: Path) -> None:
    events, bank = write_case(tmp_path)
    policy = tmp_path / "p.toml"
    policy.write_text(
        'resolve_after = "1m"\n[[rule]]\nseverity = "high"\nshares = 10\nwindow = "1m"\n'
    )
    r = viralwatch("replay", str(events), "--bank", str(bank), "--policy", str(policy))
    assert r.returncode == 0, r.stderr
    first = orjson.loads(r.stdout.splitlines()[0])
    assert first["severity"] == "high" and first["cascade"]["size"] == 10


@pytest.mark.slow  # (the README's 30,987 events simulated and replayed: 5-15 s)
def test_the_readmes_replay_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    """The README's "Replay a file" is a new user's first run: its commands, run as
    written (``/tmp/sim`` here a temporary folder), print the README's lines, and the first
    alert is the one it shows (its spreaders cut to the two shown). Both had drifted unseen
    from what the code prints (the upload counts, the alert's predicted size)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Replay a file", 1)[1].split("\n## ", 1)[0]
    console = section.split("```console\n", 1)[1].split("```", 1)[0]
    shown = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert shown is not None
    folder = str(tmp_path)
    said, expected = [], []
    for line in console.splitlines():
        if line.startswith("$ "):
            args = shlex.split(line[2:].replace("/tmp/sim", folder), comments=True)
            assert args[0] == "viralwatch", line
            run = viralwatch(*args[1:], env={"VIRALWATCH_PSEUDONYM_KEY": ""})
            assert run.returncode == 0, run.stderr
            said += (run.stdout + run.stderr).decode().splitlines()
        else:
            expected.append(line.replace("/tmp/sim", folder))
    assert said == expected
    first = orjson.loads((tmp_path / "alerts.jsonl").read_bytes().splitlines()[0])
    alert = json.loads(shown.group(1))
    assert len(first["top_spreaders"]) > len(alert["top_spreaders"]) == 2
    first["top_spreaders"] = first["top_spreaders"][:2]
    assert first == alert


def test_the_readme_says_where_the_viralwatch_command_comes_from() -> None:
    """A new user's first ``$ viralwatch simulate`` after ``make demo`` answered "command
    not found": the README never said the command is ``.venv/bin/viralwatch``. It says so
    before the first command, naming a make target that installs it, and that is where
    the setup puts it."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    intro = readme.split("## Replay a file", 1)[1].split("```console", 1)[0]
    assert "`viralwatch` is `.venv/bin/viralwatch`" in intro, intro
    assert "`. .venv/bin/activate`" in intro and "`make .venv/.installed`" in intro, intro
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^VENV \?= \.venv$", makefile, re.M)
    assert re.search(r"^\$\(VENV\)/\.installed:", makefile, re.M)
    assert 'viralwatch = "streams.cli:main"' in (root / "pyproject.toml").read_text()
    assert (Path(sys.executable).parent / "viralwatch").is_file()  # this setup's, beside python
