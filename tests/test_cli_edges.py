"""The command line's edges, as a user meets them: a bad flag or path says which and why,
in one line, with exit status 2, before anything is started or sent; every flag says
what it is in ``--help``."""

from __future__ import annotations

from pathlib import Path

from programs import viralwatch


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
