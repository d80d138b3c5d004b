"""The compiled core is built and imported: ``streams._core`` is the crate in rust/.

A stale build (rust/ changed, the extension not rebuilt) fails here first:
rebuild with ``make core`` (or any make target).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from streams import _core

ROOT = Path(__file__).resolve().parents[1]


def test_the_extension_is_the_crate_in_rust() -> None:
    manifest = tomllib.loads((ROOT / "rust" / "Cargo.toml").read_text(encoding="utf-8"))
    assert _core.version() == manifest["workspace"]["package"]["version"]


def test_the_extension_is_built_in_place_for_the_editable_install() -> None:
    # the mixed layout: the module sits beside the Python sources it serves
    assert Path(_core.__file__).resolve().parent == ROOT / "streams"


def test_the_extension_is_newer_than_its_sources() -> None:
    built = Path(_core.__file__).stat().st_mtime
    sources = [
        p
        for p in (ROOT / "rust").rglob("*")
        if p.is_file()
        and "target" not in p.parts
        and (p.suffix == ".rs" or p.name.startswith("Cargo"))
    ]
    stale = [str(p.relative_to(ROOT)) for p in sources if p.stat().st_mtime > built]
    assert not stale, f"streams/_core is older than {stale}: rebuild it with `make core`"
