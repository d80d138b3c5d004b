"""Hash banks: named sets of known-harmful hashes, and matching uploads against them.

A bank entry is a signal (a PDQ or MD5 hash) in a named bank. Banks come
from CSV files (``signal_type,signal,bank[,label]``) and change while the
pipeline runs: StopNCII adds hashes and withdraws them, and a withdrawn hash
must stop matching at once.

Which entry an upload matches, when several do (the rule that decides which
cluster it joins): an MD5 equality first (distance 0, an exact file copy),
then the PDQ entry at the smallest Hamming distance; ties broken by bank
name, then by the signal's hex, so the answer never depends on load order.

>>> banks = HashBanks()
>>> banks.add(BankEntry("stopncii", "md5", "0" * 32))
True
>>> m = banks.match(Content(md5="0" * 32))
>>> (m.entry.bank, m.distance)
('stopncii', 0)
>>> banks.withdraw("stopncii", "md5", "0" * 32)
True
>>> banks.match(Content(md5="0" * 32)) is None
True
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from streams.events import Content

SignalType = Literal["pdq", "md5"]
SIGNAL_TYPES: Final = ("pdq", "md5")
SIGNAL_HEX_LEN: Final = {"pdq": 64, "md5": 32}
#: PDQ hashes under this quality are too flat to be a match signal (Meta's
#: guidance; HMA and StopNCII use the same cut).
MIN_PDQ_QUALITY: Final = 50
#: HMA's default PDQ threshold.
DEFAULT_PDQ_THRESHOLD: Final = 31


@dataclass(frozen=True, slots=True)
class BankEntry:
    """One banked signal."""

    bank: str
    signal_type: SignalType
    signal: str
    label: str | None = None

    @property
    def cluster_id(self) -> str:
        """The id of the content cluster that uploads matching this entry join.

        Stable across processes and runs (a keyed digest of bank, type and signal).
        """
        digest = hashlib.blake2b(
            f"{self.bank}\x00{self.signal_type}\x00{self.signal}".encode(), digest_size=8
        ).hexdigest()
        return f"b-{digest}"


@dataclass(frozen=True, slots=True)
class Match:
    """An upload matched ``entry`` at Hamming ``distance`` (0 for MD5)."""

    entry: BankEntry
    distance: int


@dataclass(frozen=True, slots=True)
class BankConfig:
    """Per-bank settings: its PDQ threshold and whether it matches at all."""

    name: str
    pdq_threshold: int = DEFAULT_PDQ_THRESHOLD
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.pdq_threshold <= 128:
            raise ValueError(f"bank {self.name}: pdq_threshold must be 0..128")


def normalise_signal(signal_type: str, signal: str) -> tuple[SignalType, str]:
    """Validate a signal and give it in canonical lowercase form; raises ``ValueError``.

    >>> normalise_signal("MD5", "AB" * 16)
    ('md5', 'abababababababababababababababab')
    """
    kind = signal_type.strip().lower()
    if kind not in SIGNAL_TYPES:
        raise ValueError(f"signal_type must be pdq or md5, not {signal_type!r}")
    text = signal.strip().lower()
    if len(text) != SIGNAL_HEX_LEN[kind]:
        raise ValueError(f"a {kind} signal is {SIGNAL_HEX_LEN[kind]} hex digits, not {len(text)}")
    try:
        int(text, 16)
    except ValueError:
        raise ValueError(f"{kind} signal is not hexadecimal: {text!r}") from None
    return kind, text  # type: ignore[return-value]


def hamming(a: str, b: str) -> int:
    """Hamming distance between two equal-length hex hashes.

    >>> hamming("f" * 64, "f" * 63 + "0")
    4
    """
    return (int(a, 16) ^ int(b, 16)).bit_count()


class HashBanks:
    """All banks, taking adds and withdrawals while the pipeline runs.

    This is a brute-force scan. It is the reference the fast index is tested
    against, and it is what runs until the index replaces its internals.
    """

    def __init__(self, configs: Iterable[BankConfig] = ()) -> None:
        self._configs: dict[str, BankConfig] = {c.name: c for c in configs}
        self._md5: dict[str, set[BankEntry]] = {}
        self._pdq: dict[int, set[BankEntry]] = {}

    def config(self, bank: str) -> BankConfig:
        return self._configs.get(bank) or BankConfig(bank)

    def configure(self, config: BankConfig) -> None:
        self._configs[config.name] = config

    def add(self, entry: BankEntry) -> bool:
        """Add an entry; ``False`` when it was there already."""
        kind, signal = normalise_signal(entry.signal_type, entry.signal)
        if (kind, signal) != (entry.signal_type, entry.signal):
            entry = BankEntry(entry.bank, kind, signal, entry.label)
        if kind == "md5":
            group = self._md5.setdefault(signal, set())
        else:
            group = self._pdq.setdefault(int(signal, 16), set())
        before = len(group)
        group = {e for e in group if (e.bank, e.signal) != (entry.bank, entry.signal)} | {entry}
        if kind == "md5":
            self._md5[signal] = group
        else:
            self._pdq[int(signal, 16)] = group
        return len(group) > before

    def withdraw(self, bank: str, signal_type: str, signal: str) -> bool:
        """Withdraw a signal from one bank; harmless (``False``) when it is not there."""
        try:
            kind, text = normalise_signal(signal_type, signal)
        except ValueError:
            return False
        table: dict[str, set[BankEntry]] | dict[int, set[BankEntry]]
        key: str | int = text if kind == "md5" else int(text, 16)
        table = self._md5 if kind == "md5" else self._pdq
        group = table.get(key)  # type: ignore[call-overload]
        if not group:
            return False
        kept = {e for e in group if e.bank != bank}
        if len(kept) == len(group):
            return False
        if kept:
            table[key] = kept  # type: ignore[index]
        else:
            del table[key]  # type: ignore[arg-type]
        return True

    def __len__(self) -> int:
        return sum(len(g) for g in self._md5.values()) + sum(len(g) for g in self._pdq.values())

    def entries(self) -> Iterator[BankEntry]:
        for group in self._md5.values():
            yield from group
        for pgroup in self._pdq.values():
            yield from pgroup

    def _enabled(self, entry: BankEntry) -> bool:
        return self.config(entry.bank).enabled

    def lookup_pdq(self, pdq: str) -> list[Match]:
        """Every enabled entry within its bank's threshold of ``pdq``, best first."""
        q = int(pdq, 16)
        found = []
        for value, group in self._pdq.items():
            d = (value ^ q).bit_count()
            for entry in group:
                cfg = self.config(entry.bank)
                if cfg.enabled and d <= cfg.pdq_threshold:
                    found.append(Match(entry, d))
        return sorted(found, key=_rank)

    def lookup_md5(self, md5: str) -> list[Match]:
        return sorted(
            (Match(e, 0) for e in self._md5.get(md5, ()) if self._enabled(e)), key=_rank
        )

    def match(self, content: Content) -> Match | None:
        """The one entry this content matches, by the rule in the module docstring."""
        if content.md5 is not None:
            exact = self.lookup_md5(content.md5)
            if exact:
                return exact[0]
        if content.pdq is not None and pdq_usable(content):
            found = self.lookup_pdq(content.pdq)
            if found:
                return found[0]
        return None


def pdq_usable(content: Content) -> bool:
    """Whether the PDQ hash of this content may be used as a match signal.

    A hash without a quality score is taken as usable (banks and partners
    often send hashes alone); one under :data:`MIN_PDQ_QUALITY` is not.
    """
    return content.pdq is not None and (
        content.pdq_quality is None or content.pdq_quality >= MIN_PDQ_QUALITY
    )


def _rank(m: Match) -> tuple[int, str, str]:
    return (m.distance, m.entry.bank, m.entry.signal)


def parse_bank_csv(text: str, source: str = "<bank>") -> list[BankEntry]:
    """Bank entries from CSV text with header ``signal_type,signal,bank[,label]``.

    Raises ``ValueError`` naming the source and line of the first bad row.

    >>> parse_bank_csv("signal_type,signal,bank\\nmd5," + "a" * 32 + ",demo\\n")[0].bank
    'demo'
    """
    reader = csv.DictReader(io.StringIO(text))
    need = {"signal_type", "signal", "bank"}
    if reader.fieldnames is None or not need <= {f.strip() for f in reader.fieldnames}:
        raise ValueError(f"{source}: header must have signal_type,signal,bank[,label]")
    entries = []
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        line = reader.line_num
        try:
            kind, signal = normalise_signal(row.get("signal_type", ""), row.get("signal", ""))
        except ValueError as exc:
            raise ValueError(f"{source}:{line}: {exc}") from None
        bank = row.get("bank", "")
        if not bank:
            raise ValueError(f"{source}:{line}: bank is empty")
        entries.append(BankEntry(bank, kind, signal, row.get("label") or None))
    return entries


def load_bank_csv(path: str | Path) -> list[BankEntry]:
    """Read a bank CSV file; raises ``OSError`` or ``ValueError`` with a one-line reason."""
    p = Path(path)
    return parse_bank_csv(p.read_text(encoding="utf-8"), str(p))
