"""Where the tests find the project's reference data (PDQ's reference images and hashes,
the real cascades): the folder ``VIRALWATCH_SHARED`` names, else ``shared`` beside the
repository, where CI and a plain clone beside it have it. A git worktree
(``/work/wt/<name>/main``) has no such neighbour: without the variable its shared-data tests
skip, and their reason says how to run them.

The data stays out of the repository (it is the project's, not the code's)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the variable that says where the reference data is, over the folder beside the repository
VARIABLE = "VIRALWATCH_SHARED"


def shared_folder(env: Mapping[str, str] = os.environ) -> Path:
    """The reference data's folder: ``env[VARIABLE]`` if set and not empty, else
    ``shared`` beside the repository (whether it exists or not)."""
    given = env.get(VARIABLE)
    return Path(given).expanduser().resolve() if given else ROOT.parent / "shared"


SHARED = shared_folder()


def absent(path: Path, what: str) -> str:
    """A skip's reason: ``what`` is not at ``path``, and how to say where it is."""
    return (
        f"{what} not found at {path} (the project's reference data, absent in a fresh "
        f"clone: set {VARIABLE} to the folder that holds data/, e.g. in a git worktree)"
    )


def needs(path: Path, what: str) -> pytest.MarkDecorator:
    """Skips a test when ``path`` (below :data:`SHARED`) does not exist."""
    return pytest.mark.skipif(not path.exists(), reason=absent(path, what))
