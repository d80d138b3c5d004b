"""The layering of DESIGN.md, checked by reading every module's imports.

- graphs/ is pure: no Kafka, Faust, Prometheus, HTTP, CLI libraries, and nothing from streams.
- only streams/app.py imports Faust (or its runtime, mode).
- nothing imports the command line (streams.cli).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPURE = {
    "faust",
    "mode",
    "aiokafka",
    "kafka",
    "prometheus_client",
    "aiohttp",
    "typer",
    "rich",
    "urllib",
    "http",
    "socket",
    "requests",
    "streams",
    "subprocess",
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("graphs"), ids=lambda p: p.name)
def test_graphs_is_pure(path: Path) -> None:
    bad = {m for m in imports(path) if m.split(".")[0] in IMPURE}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("streams"), ids=lambda p: p.name)
def test_only_the_app_module_imports_faust(path: Path) -> None:
    if path.relative_to(ROOT).as_posix() == "streams/app.py":
        return
    bad = {m for m in imports(path) if m.split(".")[0] in {"faust", "mode"}}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("streams") + modules("graphs"), ids=lambda p: p.name)
def test_nothing_imports_the_command_line(path: Path) -> None:
    if path.name == "cli.py":
        return
    assert "streams.cli" not in imports(path)


def test_the_layers_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import faust\nfrom prometheus_client import Counter\n")
    assert {"faust", "prometheus_client"} <= imports(bad)
