"""Type stubs of the compiled core (``rust/python``), built by maturin into ``streams._core``."""

from collections.abc import Callable, Sequence
from typing import Any

MAX_EVENT_BYTES: int
MAX_ID_LEN: int
TS_MIN_MS: int
TS_MAX_MS: int

def version() -> str:
    """The compiled core's version (its crate's)."""

def parse_events(
    lines: Sequence[bytes],
    parse_ts: Callable[[str], int],
    share_event: type[Any],
    content: type[Any],
    rejection: type[Any],
) -> tuple[list[Any], list[int]]:
    """Parse and validate a batch of lines: per line a ``share_event`` or a ``rejection``, or
    a video upload's event tuple (its frames for Python to read); and where those tuples are."""
