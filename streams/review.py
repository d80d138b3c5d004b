"""Reviewer actions: what a person decided about content, as one record on one topic.

Every judgement a person makes (in the views, or an operator with
``viralwatch bank``) is a :class:`ReviewAction`, and every one of them is
written, once, to the ``audit`` topic (``settings.topic("audit")``), keyed by
the cluster it is about (or, for a bank change with no cluster, by
``bank/signal_type/signal``), so a cluster's actions stay in order on one
partition. The topic is both the audit trail (who, what, when, why, which
cluster, which hashes) and what workers read to show a cluster's actions
(:class:`ActionLog`) and to take a dismissal off the review queue.

The record (JSON, keys sorted, :meth:`ReviewAction.to_json`;
:meth:`ReviewAction.from_json` reads it back and refuses anything else
with ``ValueError``)::

    {"action_id": "ra-<20 hex>",      # stable: digest of every other field
     "kind": "bank" | "withdraw" | "dismiss" | "false_positive" | "reverse_false_positive",
     "reviewer": "alice",             # who: a reviewer's name, never a platform user id
     "reason": "confirmed NCII",     # why (required but for bank/withdraw)
     "ts": 1767225600000,             # when: epoch ms; the event time it takes effect at
     "time": "2026-01-01T00:00:00.000Z",  # the same, for people (not read back)
     "cluster_id": "u-0123456789abcdef" | null,
     "bank": "internal",              # the bank it concerns (see below)
     "signals": [{"signal_type": "pdq", "signal": "<64 hex>"}, ...]}

What each kind does (:meth:`ReviewAction.bank_changes`, published by
``streams.runtime.produce.publish_action`` on the ``bank`` topic *before* the
audit record, each change carrying the action's ``ts``):

- ``bank``: add the signals to ``bank`` (``internal`` by default). Every
  live cluster whose content matches is relabelled banked (retroaction).
- ``withdraw``: withdraw the signals from ``bank``.
- ``false_positive``: the signals go on the allow-list, the negative bank
  :data:`streams.banks.ALLOW_BANK`, which uploads are checked against before
  any bank; the cluster it names stops alerting and asking for takedowns.
  ``bank`` names the bank whose match was wrong (for the record).
- ``reverse_false_positive``: the signals leave the allow-list again.
- ``dismiss``: an emerging (unbanked) cluster is not harmful: no bank change;
  it leaves the review queue.

>>> a = ReviewAction("false_positive", reviewer="alice", reason="a sunset, not NCII",
...                  ts_ms=1767225600000, cluster_id="b-00112233445566ff",
...                  signals=(Signal("pdq", "AB" * 32),), bank="stopncii")
>>> a.signals[0].signal[:4], a.action_id.startswith("ra-")
('abab', True)
>>> [(u.op, u.entry.bank) for u in a.bank_changes()]
[('add', 'allowlist')]
>>> ReviewAction.from_json(a.to_json()) == a
True
>>> a.record()[0]
b'b-00112233445566ff'
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import orjson

from streams.alerts import rfc3339
from streams.banks import ALLOW_BANK, BankEntry, BankUpdate, SignalType, normalise_signal

ActionKind = Literal["bank", "withdraw", "dismiss", "false_positive", "reverse_false_positive"]
ACTION_KINDS: Final[tuple[str, ...]] = get_args(ActionKind)
#: The bank a reviewer's ``bank`` verdict adds to when none is named.
DEFAULT_REVIEW_BANK: Final = "internal"
#: The topic (after the prefix) the records travel on.
AUDIT_TOPIC: Final = "audit"
#: Longest reviewer name and reason kept (a reason is a sentence, not a report).
MAX_REVIEWER: Final = 200
MAX_REASON: Final = 2000
#: A cluster id: banked (``b-``) or unbanked (``u-``), 16 hex digits.
CLUSTER_ID: Final = re.compile(r"[bu]-[0-9a-f]{16}")
#: The year 10000: the first time RFC 3339 cannot write.
MAX_TS_MS: Final = 253_402_300_800_000
_NEEDS_REASON: Final = frozenset({"dismiss", "false_positive", "reverse_false_positive"})
_NEEDS_CLUSTER: Final = frozenset({"dismiss", "false_positive"})


@dataclass(frozen=True, slots=True)
class Signal:
    """One hash of a cluster's content (normalised: lowercase hex of the right length)."""

    signal_type: SignalType
    signal: str

    def __post_init__(self) -> None:
        kind, text = normalise_signal(self.signal_type, self.signal)
        object.__setattr__(self, "signal_type", kind)
        object.__setattr__(self, "signal", text)

    @classmethod
    def of(cls, body: Any) -> Signal:
        """A signal from its dict (``{"signal_type", "signal"}``); ``ValueError`` otherwise."""
        if not isinstance(body, dict):
            raise ValueError("a signal is an object with signal_type and signal")
        return cls(*normalise_signal(str(body.get("signal_type")), str(body.get("signal"))))

    def to_dict(self) -> dict[str, str]:
        return {"signal_type": self.signal_type, "signal": self.signal}


@dataclass(frozen=True, slots=True)
class ReviewAction:
    """One reviewer's (or operator's) action; validated when made (``ValueError``)."""

    kind: ActionKind
    reviewer: str
    reason: str
    ts_ms: int
    cluster_id: str | None = None
    signals: tuple[Signal, ...] = ()
    bank: str = DEFAULT_REVIEW_BANK

    def __post_init__(self) -> None:
        if self.kind not in ACTION_KINDS:
            raise ValueError(f"kind must be one of {', '.join(ACTION_KINDS)}, not {self.kind!r}")
        who = self.reviewer.strip() if isinstance(self.reviewer, str) else ""
        if not who or len(who) > MAX_REVIEWER:
            raise ValueError(f"reviewer must be a name of 1..{MAX_REVIEWER} characters")
        why = self.reason.strip() if isinstance(self.reason, str) else None
        if why is None or len(why) > MAX_REASON:
            raise ValueError(f"reason must be text of at most {MAX_REASON} characters")
        if self.kind in _NEEDS_REASON and not why:
            raise ValueError(f"a {self.kind} needs a reason")
        ts = self.ts_ms
        if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < MAX_TS_MS:
            raise ValueError("ts must be epoch milliseconds before the year 10000")
        if self.cluster_id is not None and not CLUSTER_ID.fullmatch(self.cluster_id):
            raise ValueError(f"not a cluster id: {self.cluster_id!r}")
        if self.kind in _NEEDS_CLUSTER and self.cluster_id is None:
            raise ValueError(f"a {self.kind} is about a cluster: cluster_id is required")
        if self.kind != "dismiss" and not self.signals:
            raise ValueError(f"a {self.kind} needs the signals (hashes) it concerns")
        if not all(isinstance(s, Signal) for s in self.signals):
            raise ValueError("signals must be Signal records")
        bank = self.bank.strip() if isinstance(self.bank, str) else ""
        if not bank or "/" in bank:
            raise ValueError("bank must be a non-empty name without '/'")
        if bank == ALLOW_BANK and self.kind in ("bank", "withdraw"):
            raise ValueError(f"{ALLOW_BANK} is the allow-list: use false_positive and its reverse")
        object.__setattr__(self, "reviewer", who)
        object.__setattr__(self, "reason", why)
        object.__setattr__(self, "bank", bank)
        object.__setattr__(self, "signals", tuple(dict.fromkeys(self.signals)))

    @property
    def action_id(self) -> str:
        """Stable id: the same action, published twice, is one action (consumers dedupe on it)."""
        body = orjson.dumps(self._fields(), option=orjson.OPT_SORT_KEYS)
        return "ra-" + hashlib.blake2b(body, digest_size=10).hexdigest()

    def _fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reviewer": self.reviewer,
            "reason": self.reason,
            "ts": self.ts_ms,
            "cluster_id": self.cluster_id,
            "bank": self.bank,
            "signals": [s.to_dict() for s in self.signals],
        }

    def to_dict(self) -> dict[str, Any]:
        out = self._fields()
        out["action_id"] = self.action_id
        out["time"] = rfc3339(self.ts_ms)
        return out

    def to_json(self) -> bytes:
        """The one encoding of the record (canonical: keys sorted)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    def record(self) -> tuple[bytes, bytes]:
        """Key and value for the ``audit`` topic (key: the cluster, else the first signal)."""
        if self.cluster_id is not None:
            key = self.cluster_id
        else:
            s = self.signals[0]
            key = f"{self.bank}/{s.signal_type}/{s.signal}"
        return key.encode(), self.to_json()

    @classmethod
    def from_dict(cls, body: Any) -> ReviewAction:
        """Read a record's dict; ``ValueError`` naming what is wrong."""
        if not isinstance(body, dict):
            raise ValueError("review action: not a JSON object")
        try:
            signals = body.get("signals") or []
            if not isinstance(signals, list):
                raise ValueError("signals must be a list")
            made = cls(
                kind=body.get("kind"),  # type: ignore[arg-type]  # validated in __post_init__
                reviewer=body.get("reviewer"),  # type: ignore[arg-type]
                reason=body.get("reason", ""),
                ts_ms=body.get("ts"),  # type: ignore[arg-type]
                cluster_id=body.get("cluster_id"),
                signals=tuple(map(Signal.of, signals)),
                bank=body.get("bank", DEFAULT_REVIEW_BANK),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"review action: {exc}") from None
        given = body.get("action_id")
        if given is not None and given != made.action_id:
            raise ValueError("review action: action_id does not match its fields")
        return made

    @classmethod
    def from_json(cls, raw: bytes | None) -> ReviewAction:
        """Read a record's bytes; ``ValueError`` when they are not one."""
        try:
            body = orjson.loads(raw or b"")
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"review action: not JSON: {exc}") from None
        return cls.from_dict(body)

    def bank_changes(self) -> list[BankUpdate]:
        """The bank changes this action makes, in order (none for ``dismiss``)."""
        if self.kind == "dismiss":
            return []
        op: Literal["add", "withdraw"] = (
            "withdraw" if self.kind in ("withdraw", "reverse_false_positive") else "add"
        )
        bank = ALLOW_BANK if self.kind.endswith("false_positive") else self.bank
        label = (
            f"{self.kind} by {self.reviewer}: {self.reason}"[:MAX_REASON] if op == "add" else None
        )
        return [
            BankUpdate(op, BankEntry(bank, s.signal_type, s.signal, label), self.ts_ms)
            for s in self.signals
        ]


class ActionLog:
    """The actions read from the ``audit`` topic, by cluster: what a cluster's page shows.

    Bounded (``max_clusters``, least recently acted on dropped first); an
    action seen twice (same ``action_id``) is kept once.

    >>> log = ActionLog()
    >>> d = ReviewAction("dismiss", "bob", "a meme", 1767225600000, "u-00112233445566ff")
    >>> log.add(d), log.add(d)
    (True, False)
    >>> [a.kind for a in log.for_cluster("u-00112233445566ff")]
    ['dismiss']
    >>> log.dismissed_at("u-00112233445566ff"), log.dismissed_at("u-0")
    (1767225600000, None)
    """

    def __init__(self, max_clusters: int = 100_000) -> None:
        self.max_clusters = max_clusters
        self._by_cluster: OrderedDict[str, list[ReviewAction]] = OrderedDict()
        self._seen: set[str] = set()

    def add(self, action: ReviewAction) -> bool:
        """Record ``action``; ``False`` when it was recorded already."""
        aid = action.action_id
        if aid in self._seen:
            return False
        self._seen.add(aid)
        key = action.cluster_id or ""
        actions = self._by_cluster.setdefault(key, [])
        actions.append(action)
        actions.sort(key=lambda a: (a.ts_ms, a.action_id))
        self._by_cluster.move_to_end(key)
        while len(self._by_cluster) > self.max_clusters:
            _, dropped = self._by_cluster.popitem(last=False)
            self._seen.difference_update(a.action_id for a in dropped)
        return True

    def add_many(self, actions: Iterable[ReviewAction]) -> int:
        return sum(self.add(a) for a in actions)

    def for_cluster(self, cluster_id: str) -> list[ReviewAction]:
        """The actions on ``cluster_id``, oldest first."""
        return list(self._by_cluster.get(cluster_id, ()))

    def dismissed_at(self, cluster_id: str) -> int | None:
        """When a reviewer last dismissed this (emerging) cluster (event time), if ever."""
        times = [a.ts_ms for a in self._by_cluster.get(cluster_id, ()) if a.kind == "dismiss"]
        return max(times) if times else None

    def __len__(self) -> int:
        return len(self._seen)
