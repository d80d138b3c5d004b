"""The layering of DESIGN.md, checked by reading every module's imports.

- graphs/ is pure: no Kafka, Faust, Prometheus, HTTP, CLI libraries, and nothing from streams.
- the pure core (streams/*.py but the adapters named below) imports no Kafka client, Faust,
  Prometheus, HTTP or CLI library, nor the runtime or the on-call outputs.
- only streams/runtime/ imports Faust (or its runtime, mode) and aiokafka; only
  streams/runtime/faust_adapter.py reaches into them (their private attributes).
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


#: Modules of streams/ (outside streams/runtime/) that are adapters, not the pure core: the
#: command line and the demo (tools), the HTTP server, the metrics exporter, the settings
#: (which read the environment), and the on-call outputs (streams/sinks/).
ADAPTERS = {"cli.py", "demo.py", "web.py", "metrics.py", "settings.py", "app.py"}
CORE = [p for p in modules("streams") if p.parent == ROOT / "streams" and p.name not in ADAPTERS]


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_pure_core_imports_no_adapter(path: Path) -> None:
    bad = {
        m
        for m in imports(path)
        if m.split(".")[0] in IMPURE - {"streams"}
        or m.startswith(("streams.runtime", "streams.sinks", "streams.metrics", "streams.web"))
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("streams"), ids=lambda p: p.name)
def test_only_the_runtime_imports_faust_and_aiokafka(path: Path) -> None:
    if path.parent == ROOT / "streams" / "runtime":
        return
    bad = {m for m in imports(path) if m.split(".")[0] in {"faust", "mode", "aiokafka"}}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("streams"), ids=lambda p: p.name)
def test_only_the_adapter_reaches_into_faust_and_aiokafka(path: Path) -> None:
    """``consumer._client``, ``_create_worker_consumer``... appear in faust_adapter.py alone."""
    if path.name == "faust_adapter.py":
        return
    text = path.read_text(encoding="utf-8")
    for private in ("._client", "._subscription", "._fetch_max_wait_ms", "_highwaters("):
        assert private not in text, f"{path.name} uses {private}"


@pytest.mark.parametrize("path", modules("streams") + modules("graphs"), ids=lambda p: p.name)
def test_nothing_imports_the_command_line(path: Path) -> None:
    if path.name == "cli.py":
        return
    assert "streams.cli" not in imports(path)


def test_the_layers_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import faust\nfrom prometheus_client import Counter\n")
    assert {"faust", "prometheus_client"} <= imports(bad)
