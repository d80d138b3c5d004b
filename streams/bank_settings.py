"""Per-bank settings from a TOML file: each bank's PDQ threshold and vPDQ percentages.

Banks differ: a partner's bank of confirmed NCII may match at HMA's distance
of 31, a bank of lower confidence only at 16; a bank of full clips may ask
that a matching upload cover most of the banked video too (vPDQ's compared
percentage). One table per bank, every key optional (the defaults are
:class:`streams.banks.BankConfig`'s: 31, enabled, 80% of the query's frames,
0% of the banked video's)::

    [banks.ncii]
    pdq_threshold = 31            # images, and video frames (vPDQ's distance)
    vpdq_query_match_pct = 80     # share of the upload's usable frames that must match
    vpdq_compared_match_pct = 0   # share of the banked video's usable frames that must match

    [banks.partner]
    pdq_threshold = 16
    enabled = false

>>> [c.pdq_threshold for c in parse_bank_settings('[banks.a]\\npdq_threshold = 16\\n')]
[16]
>>> try:
...     parse_bank_settings('[banks.a]\\nthreshold = 16\\n')
... except ValueError as exc:
...     print(str(exc)[:55])
<bank settings>: bank a: unknown key 'threshold' (known
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

from streams.banks import BankConfig, HashBanks, load_bank_csv

KEYS: Final = tuple(sorted(f.name for f in fields(BankConfig) if f.name != "name"))


def parse_bank_settings(text: str, source: str = "<bank settings>") -> list[BankConfig]:
    """The banks' settings in a TOML text; ``ValueError`` naming the source and the bank."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not TOML: {exc}") from None
    extra = set(doc) - {"banks"}
    if extra:
        raise ValueError(f"{source}: unknown table {sorted(extra)[0]!r} (only [banks.NAME])")
    banks = doc.get("banks", {})
    if not isinstance(banks, dict):
        raise ValueError(f"{source}: banks must be tables [banks.NAME]")
    out = []
    for name, table in banks.items():
        if not isinstance(table, dict):
            raise ValueError(f"{source}: banks.{name} must be a table")
        out.append(_config(name, table, source))
    return out


def _config(name: str, table: dict[str, Any], source: str) -> BankConfig:
    for key, value in table.items():
        if key not in KEYS:
            raise ValueError(
                f"{source}: bank {name}: unknown key {key!r} (known: {', '.join(KEYS)})"
            )
        want = bool if key == "enabled" else int if key == "pdq_threshold" else (int, float)
        if isinstance(value, bool) != (want is bool) or not isinstance(value, want):
            raise ValueError(f"{source}: bank {name}: {key} has the wrong type")
    try:
        return BankConfig(name, **table)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_bank_settings(path: str | Path) -> list[BankConfig]:
    """Read a bank settings file; ``OSError`` or ``ValueError`` with a one-line reason."""
    p = Path(path)
    return parse_bank_settings(p.read_text(encoding="utf-8"), str(p))


def load_banks(paths: Iterable[Path], settings: Path | None = None) -> HashBanks:
    """The banks of the CSV files ``paths`` with the per-bank ``settings``: what ``replay``,
    ``bank match`` and a worker start from. One ``ValueError`` whatever went wrong, saying
    which file (the settings, or which bank) and why: a worker said a missing bank file as
    ``[Errno 2] No such file or directory: 'x.csv'``, not that it was a bank.

    >>> load_banks([Path("/nowhere/ncii.csv")])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: cannot read bank /nowhere/ncii.csv: [Errno 2] No such file or directory: ...
    """
    try:
        configs = load_bank_settings(settings) if settings else []
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read bank settings {settings}: {exc}") from None
    banks = HashBanks(configs)
    for path in paths:
        try:
            entries = load_bank_csv(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read bank {path}: {exc}") from None
        banks.add_many(entries)
    return banks
