"""Counters kept by the pure core, read by the replay summary and by the metrics exporter.

One object serves both: the core counts as it goes (plain integers, no
Prometheus import, no cost beyond a dict update), the command line prints
it, and ``streams.metrics`` exposes it at scrape time.

>>> s = Stats()
>>> s.rejected["not_json"] += 1
>>> s.summary()["rejected"]
{'not_json': 1}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeVar

K = TypeVar("K")


class Tally(Counter[K]):
    """A :class:`~collections.Counter` whose stores are :class:`dict`'s own, for counts
    added to on every event.

    Why: ``Counter`` defines ``__delitem__`` in Python (a missing key's ``del`` ignored),
    so CPython routes every store into a Counter, ``c[k] += 1`` among them, through a
    slot that looks ``__setitem__`` up and calls it: about 750 instructions more a store
    than a dict's. With dict's ``__delitem__`` back, the type's store slot is dict's
    own. A missing key's ``del`` raises, as a dict's does (nothing deletes from these
    counts); everything else is a Counter's, a missing key read as 0 included.

    >>> t = Tally[str]()
    >>> t["share"] += 1
    >>> t["share"], t["upload"], isinstance(t, Counter)
    (1, 0, True)
    """

    __delitem__ = dict.__delitem__  # type: ignore[assignment]  # dict's, not a Python method


@dataclass
class Stats:
    """What the core has seen and done; every field only grows, except the gauges."""

    events: Counter[str] = field(default_factory=Tally)  # consumed, by event type
    rejected: Counter[str] = field(default_factory=Tally)  # by reason
    duplicates: int = 0  # redelivered / repeated event ids, processed once
    # uploads matched, by bank, and those that matched none: counted where the detector
    # applies an upload (once by event id, so not again when a kill has it read again)
    matched: Counter[str] = field(default_factory=Tally)
    unmatched_uploads: int = 0
    allowed: int = 0  # uploads on the allow-list (a reviewer's false positive): match no bank
    low_quality: int = 0  # PDQ under the quality floor: not used as a signal
    lookups: int = 0  # bank index lookups (cache misses)
    cache_hits: int = 0
    late: int = 0  # applied late, within the allowed lateness
    held: int = 0  # reshares held until their parent came
    clusters_created: int = 0
    clusters_evicted: int = 0
    alerts: Counter[tuple[str, str]] = field(default_factory=Tally)  # (severity, status)
    emerging: int = 0  # unbanked clusters that crossed a velocity threshold
    relabelled: int = 0  # unbanked clusters banked later by a bank change (retroaction)
    log_compactions: int = 0  # state logs cut back to a snapshot (streaming worker)
    # gauges
    clusters_active: int = 0
    orphans_held: int = 0
    watermark_ms: int = 0
    log_bytes: int = 0  # bytes in the state logs of the partitions held (streaming worker)
    # clusters partitions held whose watermark stands still while events wait (worker)
    partitions_stalled: int = 0
    bank_entries: dict[str, int] = field(default_factory=dict)  # per bank, as last changed
    bank_updated_s: float = 0.0  # wall clock of the last bank update applied (Unix seconds)

    def summary(self) -> dict[str, Any]:
        """A plain, sorted dict for printing as JSON."""
        return {
            "events": dict(sorted(self.events.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "duplicates": self.duplicates,
            "matched": dict(sorted(self.matched.items())),
            "unmatched_uploads": self.unmatched_uploads,
            "allowed": self.allowed,
            "relabelled": self.relabelled,
            "low_quality": self.low_quality,
            "held": self.held,
            "late": self.late,
            "clusters": self.clusters_created,
            "clusters_evicted": self.clusters_evicted,
            "emerging": self.emerging,
            "alerts": {f"{sev}/{st}": n for (sev, st), n in sorted(self.alerts.items())},
        }
