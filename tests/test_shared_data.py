"""The reference data's folder: ``VIRALWATCH_SHARED`` over the folder beside the repository,
found by one helper for every test that reads it."""

from __future__ import annotations

from pathlib import Path

from shared_data import ROOT, VARIABLE, shared_folder

TESTS = Path(__file__).resolve().parent


def test_the_variable_names_the_folder_over_the_one_beside_the_repository(
    tmp_path: Path,
) -> None:
    assert shared_folder({}) == ROOT.parent / "shared"
    assert shared_folder({VARIABLE: ""}) == ROOT.parent / "shared"
    assert shared_folder({VARIABLE: str(tmp_path / "x" / "..")}) == tmp_path.resolve()


def test_no_test_looks_for_the_data_by_itself() -> None:
    """A test that computed ``../shared`` on its own would skip in a worktree whatever the
    variable says."""
    own = [
        path.name
        for path in sorted(TESTS.glob("*.py"))
        if path.name not in {"shared_data.py", "test_shared_data.py"}
        and '/ "shared"' in path.read_text()
    ]
    assert own == []
