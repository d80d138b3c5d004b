"""The alert record: what on-call sees, on every sink, in one shape.

An alert's id is stable: the same cluster, episode and severity always give
the same ``alert_id``, so a redelivered event or a restarted worker never
makes a second alert, and sinks deduplicate on :attr:`Alert.dedupe_key`
(the id and the status: a resolution is the same alert, resolved).

>>> a = Alert(alert_id=alert_id("b-1", 1, "high"), status="firing", severity="high",
...           ts_ms=1767225600000, cluster_id="b-1", first_seen_ms=1767225500000)
>>> a.dedupe_key == a.alert_id + ":firing"
True
>>> a.to_dict()["ts"]
'2026-01-01T00:00:00.000Z'
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from streams._core import takedown_request

Severity = Literal["warning", "high", "critical"]
SEVERITIES: Final = ("warning", "high", "critical")
Status = Literal["firing", "resolved"]


def severity_rank(severity: str) -> int:
    """Order of severities: ``warning`` < ``high`` < ``critical``; -1 for none."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def alert_id(cluster_id: str, episode: int, severity: str) -> str:
    """The stable id of a cluster's alert at one severity in one episode.

    >>> alert_id("b-1", 1, "warning") == alert_id("b-1", 1, "warning")
    True
    >>> alert_id("b-1", 1, "warning") != alert_id("b-1", 2, "warning")
    True
    """
    digest = hashlib.blake2b(f"{cluster_id}\x00{episode}\x00{severity}".encode(), digest_size=10)
    return f"vw-{digest.hexdigest()}"


#: Below this many epoch milliseconds (year 2109) the float ``ts_ms / 1000`` is within half
#: a microsecond of the instant, so datetime's text has its exact milliseconds: the text
#: of the whole second, kept, and the milliseconds written is the same text.
_EXACT_MS: Final = 1 << 42
_day: tuple[int, str] = (-1, "")  # one tuple, replaced whole: a thread sees one or the other


def rfc3339(ts_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC text with milliseconds.

    The text of the last day asked is kept and the time of day written by
    arithmetic (Unix time has no leap seconds: a day is 86,400 s): datetime's
    formatting was most of writing a takedown request, and a backlog's
    takedown requests seldom come in runs of the same second (keeping the
    last second's text, as before, still left ``strftime`` at about half a
    percent of a one-worker run). Outside ``[0, 2**42)`` (and for a ``bool``)
    it is datetime's text, as before (``tests/test_alert_records.py`` holds
    the two the same).

    >>> rfc3339(0), rfc3339(1_767_225_600_123), rfc3339(-1)
    ('1970-01-01T00:00:00.000Z', '2026-01-01T00:00:00.123Z', '1969-12-31T23:59:59.999Z')
    """
    global _day
    if type(ts_ms) is int and 0 <= ts_ms < _EXACT_MS:
        day, ms = divmod(ts_ms, 86_400_000)
        kept, text = _day
        if kept != day:
            text = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%dT")
            _day = (day, text)
        second, ms = divmod(ms, 1000)
        minute, second = divmod(second, 60)
        hour, minute = divmod(minute, 60)
        return f"{text}{hour:02d}:{minute:02d}:{second:02d}.{ms:03d}Z"
    return _rfc3339_any(ts_ms)


def _rfc3339_any(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Pseudonymizer:
    """Keyed pseudonyms for user ids, so alerts name spreaders without naming users.

    The key comes from the environment (``VIRALWATCH_PSEUDONYM_KEY``) in
    production: with it, an investigator holding the key can recompute a
    user's pseudonym; without it, nobody can reverse one.

    >>> p = Pseudonymizer(b"k")
    >>> p("alice") == p("alice") and p("alice") != p("bob")
    True
    >>> p("alice").startswith("u-")
    True
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonym key must not be empty")
        self._key = key

    def __call__(self, user_id: str) -> str:
        mac = hmac.new(self._key, user_id.encode("utf-8"), hashlib.sha256)
        return "u-" + mac.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class MatchInfo:
    """The bank entry that a cluster matched, and how closely.

    ``kind`` says how, when it is not plain from ``signal_type``: ``vpdq`` (a
    video by vPDQ's rule, with its query and compared-video percentages) or
    ``video_frame`` (an image that matched one frame of a banked video).
    Written only then, so an image or file match keeps its record as it was.
    """

    bank: str
    signal_type: str
    signal: str
    distance: int
    label: str | None = None
    kind: str | None = None
    query_match_pct: float | None = None
    compared_match_pct: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bank": self.bank,
            "signal_type": self.signal_type,
            "signal": self.signal,
            "distance": self.distance,
        }
        if self.label is not None:
            out["label"] = self.label
        if self.kind is not None:
            out["kind"] = self.kind
        if self.query_match_pct is not None:
            out["query_match_pct"] = self.query_match_pct
        if self.compared_match_pct is not None:
            out["compared_match_pct"] = self.compared_match_pct
        return out


@dataclass(frozen=True, slots=True)
class Prediction:
    """A predicted cascade size at a horizon, with an interval (``high`` may be ``inf``).

    ``horizon_s`` says when the size is predicted for: seconds after the
    cluster was first seen (the policy's ``[predicted] horizon``, 7 days by
    default). Alerts carry it as ``"horizon"`` in the policy's duration
    syntax, so that nobody reads the size as "by tonight".

    >>> Prediction(4326.74, 2130.0, 21367.9, "best", 604_800.0).to_dict()
    {'size': 4326.7, 'low': 2130.0, 'high': 21367.9, 'model': 'best', 'horizon': '7d'}

    ``raised``: the figures :meth:`at_least` raised to the size an alert states
    (written as ``"raised_to_size"``, only when there are some).
    """

    size: float
    low: float
    high: float
    model: str = "seismic"
    horizon_s: float | None = None
    raised: tuple[str, ...] = ()

    def at_least(self, size: int) -> Prediction:
        """This forecast with its size, low and high each raised to ``size`` where below it.

        An alert states a cascade's size and the forecast last made, which may be older
        (the policy forecasts on its schedule; a worker's early firing counts posts held
        that no forecast has seen yet): "predicted final reach" below what is already
        there reads as wrong to whoever is paged, and is. The record says which figures
        were raised.

        >>> p = Prediction(78.4, 61.0, 140.2, "best", 604_800.0).at_least(100)
        >>> p.size, p.low, p.high, p.to_dict()["raised_to_size"]
        (100.0, 100.0, 140.2, ['size', 'low'])
        >>> p.at_least(90) is p
        True
        """
        raised = tuple(
            name
            for name, value in (("size", self.size), ("low", self.low), ("high", self.high))
            if value < size
        )
        if not raised:
            return self
        floor = float(size)
        return Prediction(
            max(self.size, floor),
            max(self.low, floor),
            max(self.high, floor),
            self.model,
            self.horizon_s,
            tuple(dict.fromkeys((*self.raised, *raised))),
        )

    @property
    def note(self) -> str:
        """What a reader of these figures must know when some were raised (:func:`raised_note`)."""
        return raised_note(self.raised)

    @property
    def bracket(self) -> str:
        """:attr:`note` as the views append it after the figures (:func:`raised_bracket`)."""
        return raised_bracket(self.raised)

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | str | None:
            if x != x:
                return None
            if x == float("inf"):
                return "inf"
            return round(x, 1)

        out: dict[str, Any] = {
            "size": num(self.size),
            "low": num(self.low),
            "high": num(self.high),
            "model": self.model,
        }
        if self.horizon_s is not None:
            out["horizon"] = duration_text(self.horizon_s)
        if self.raised:
            out["raised_to_size"] = list(self.raised)
        return out


def raised_note(raised: Iterable[str], shown: Iterable[str] = ("size", "low", "high")) -> str:
    """How every view words a forecast :meth:`Prediction.at_least` raised ("" if none was).

    "predicted 100" beside a size of 100 reads as a forecast that the cluster has
    stopped; it is a forecast made from fewer posts that said less than is already
    there, so read it as "at least this many", no more. The alert's page, the
    investigation views, the Alertmanager ``figures`` annotation and ``make demo``'s
    console say it in these words (``raised_to_size`` in the record says which figures),
    of the figures they show (``shown``: the console shows no band, so nothing of its low).

    >>> raised_note(["size", "low"]), raised_note(["low"]), raised_note([])
    ('at least its size', 'low end raised to its size', '')
    >>> raised_note(["low"], shown=["size"])
    ''
    """
    said = set(raised) & set(shown)
    if "size" in said:
        return "at least its size"
    return "low end raised to its size" if "low" in said else ""


def raised_bracket(raised: Iterable[str], shown: Iterable[str] = ("size", "low", "high")) -> str:
    """:func:`raised_note` as every view appends it after the forecast's figures: in
    brackets after a space, or nothing. One place for the Alertmanager ``figures``
    annotation, the cascade page and ``make demo``'s console (each built the bracket).

    >>> raised_bracket(["size"]), raised_bracket([]), raised_bracket(["low"], shown=["size"])
    (' (at least its size)', '', '')
    """
    note = raised_note(raised, shown)
    return f" ({note})" if note else ""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(value: object) -> int:
    """A duration in milliseconds from ``"90s"``, ``"5m"``, ``"1h"`` or a number of ms."""
    if isinstance(value, bool):
        raise ValueError("a duration is text like '5m' or a number of milliseconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be finite, not {value!r}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return int(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    raise ValueError(f"not a duration: {value!r} (use e.g. '90s', '5m', '1h')")


def duration_text(seconds: float) -> str:
    """``"7d"``, ``"36h"``, ``"90m"`` or ``"45s"``: the largest unit that divides it.

    >>> duration_text(604_800), duration_text(129_600), duration_text(5_400), duration_text(45.5)
    ('7d', '36h', '90m', '45.5s')
    """
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class CascadeFigures:
    """A cluster's cascade at one moment of event time."""

    size: int = 0
    live: int = 0
    roots: int = 0
    unique_users: int = 0
    depth: int = 0
    breadth: int = 0
    structural_virality: float = 0.0
    velocity_1m: float = 0.0
    velocity_5m: float = 0.0
    velocity_15m: float = 0.0
    acceleration: float = 0.0
    predicted_final_size: Prediction | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "size": self.size,
            "live": self.live,
            "roots": self.roots,
            "unique_users": self.unique_users,
            "depth": self.depth,
            "breadth": self.breadth,
            "structural_virality": round(self.structural_virality, 4),
            "velocity_per_min": {
                "1m": round(self.velocity_1m, 3),
                "5m": round(self.velocity_5m, 3),
                "15m": round(self.velocity_15m, 3),
            },
            "acceleration": round(self.acceleration, 3),
        }
        if self.predicted_final_size is not None:
            out["predicted_final_size"] = self.predicted_final_size.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: firing or resolved, at one severity, for one cluster and episode."""

    alert_id: str
    status: Status
    severity: Severity
    ts_ms: int
    cluster_id: str
    first_seen_ms: int
    episode: int = 1
    match: MatchInfo | None = None
    cascade: CascadeFigures = field(default_factory=CascadeFigures)
    top_spreaders: tuple[tuple[str, int], ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    @property
    def dedupe_key(self) -> str:
        """What sinks deduplicate on: the same alert in the same status is sent once."""
        return f"{self.alert_id}:{self.status}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "status": self.status,
            "severity": self.severity,
            "ts": rfc3339(self.ts_ms),
            "cluster_id": self.cluster_id,
            "episode": self.episode,
            "reason": self.reason,
            "match": self.match.to_dict() if self.match else None,
            "cascade": self.cascade.to_dict(),
            "first_seen": rfc3339(self.first_seen_ms),
            "top_spreaders": [{"user": u, "reshares": n} for u, n in self.top_spreaders],
            "links": dict(self.links),
        }

    def to_json(self) -> bytes:
        """Canonical bytes: the same alert always serialises the same way."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    @staticmethod
    def from_json(raw: bytes | None) -> Alert:
        """An alert back from its JSON (a record of the ``alerts`` topic); ``ValueError``
        saying what is wrong if it is not one. ``from_json(a.to_json()).to_json() ==
        a.to_json()`` for every alert (figures are rounded once, as written).

        >>> a = Alert("vw-1", "firing", "high", 1767225600000, "b-1", 1767225500000)
        >>> Alert.from_json(a.to_json()) == a
        True
        >>> Alert.from_json(b'{"alert_id": "vw-1"}')
        Traceback (most recent call last):
        ...
        ValueError: not an alert: missing 'status'
        """
        try:
            d = orjson.loads(raw or b"")
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not an alert: not JSON ({exc})") from None
        if not isinstance(d, dict):
            raise ValueError("not an alert: not a JSON object")
        try:
            return _alert(d)
        except KeyError as exc:
            raise ValueError(f"not an alert: missing {exc}") from None
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ValueError(f"not an alert: {exc}") from None


@dataclass(frozen=True, slots=True)
class EarlyAlert(Alert):
    """A firing sent before the watermark reached it, because it is certain (see streams.detector).

    Its id and status are those replay gives; its figures are as of what had
    been seen, so its JSON says so: ``"provisional": true``, and ``"as_of"``,
    the event time up to which every event had been applied (the graph
    figures are of those and the posts held up to ``ts``; velocity and
    acceleration count every share seen, at ``ts``). An alert sent when the
    watermark reaches it has neither key.

    >>> a = EarlyAlert(alert_id="vw-1", status="firing", severity="warning",
    ...                ts_ms=1767225660000, cluster_id="b-1", first_seen_ms=1767225600000,
    ...                as_of_ms=1767225600000)
    >>> d = a.to_dict()
    >>> d["provisional"], d["as_of"], d["ts"]
    (True, '2026-01-01T00:00:00.000Z', '2026-01-01T00:01:00.000Z')
    """

    as_of_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = Alert.to_dict(self)  # not super(): slotted dataclasses are rebuilt classes
        out["provisional"] = True
        out["as_of"] = rfc3339(self.as_of_ms)
        return out


def _ms(text: object) -> int:
    """Epoch milliseconds from :func:`rfc3339`'s text."""
    if not isinstance(text, str) or not text.endswith("Z"):
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}")
    when = datetime.strptime(text[:-1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    return round(when.timestamp() * 1000)


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, not {value!r}")
    return value


def _num(value: object) -> float:
    """A figure as :meth:`Prediction.to_dict` writes it (``"inf"``; ``None`` for NaN)."""
    if value is None:
        return math.nan
    if value == "inf":
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _alert(d: dict[str, Any]) -> Alert:
    status, severity = d["status"], d["severity"]
    if status not in ("firing", "resolved"):
        raise ValueError(f"unknown status {status!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    m = d["match"]
    match = None
    if m is not None:
        match = MatchInfo(
            bank=_str(m["bank"], "match.bank"),
            signal_type=_str(m["signal_type"], "match.signal_type"),
            signal=_str(m["signal"], "match.signal"),
            distance=int(m["distance"]),
            label=m.get("label"),
            kind=m.get("kind"),
            query_match_pct=m.get("query_match_pct"),
            compared_match_pct=m.get("compared_match_pct"),
        )
    c = d["cascade"]
    v = c["velocity_per_min"]
    p = c.get("predicted_final_size")
    prediction = None
    if p is not None:
        horizon = p.get("horizon")
        prediction = Prediction(
            size=_num(p["size"]),
            low=_num(p["low"]),
            high=_num(p["high"]),
            model=_str(p["model"], "model"),
            horizon_s=None if horizon is None else parse_duration(horizon) / 1000,
            raised=tuple(_str(r, "raised_to_size") for r in p.get("raised_to_size", ())),
        )
    cascade = CascadeFigures(
        size=int(c["size"]),
        live=int(c["live"]),
        roots=int(c["roots"]),
        unique_users=int(c["unique_users"]),
        depth=int(c["depth"]),
        breadth=int(c["breadth"]),
        structural_virality=float(c["structural_virality"]),
        velocity_1m=float(v["1m"]),
        velocity_5m=float(v["5m"]),
        velocity_15m=float(v["15m"]),
        acceleration=float(c["acceleration"]),
        predicted_final_size=prediction,
    )
    fields: dict[str, Any] = dict(
        alert_id=_str(d["alert_id"], "alert_id"),
        status=status,
        severity=severity,
        ts_ms=_ms(d["ts"]),
        cluster_id=_str(d["cluster_id"], "cluster_id"),
        first_seen_ms=_ms(d["first_seen"]),
        episode=int(d["episode"]),
        match=match,
        cascade=cascade,
        top_spreaders=tuple(
            (_str(t["user"], "user"), int(t["reshares"])) for t in d["top_spreaders"]
        ),
        links=tuple((_str(k, "link"), _str(u, "link")) for k, u in d["links"].items()),
        reason=_str(d["reason"], "reason"),
    )
    if d.get("provisional") is True:
        return EarlyAlert(**fields, as_of_ms=_ms(d["as_of"]))
    return Alert(**fields)


@dataclass(frozen=True, slots=True)
class TakedownRequest:
    """A request to take one live post of a cluster down, sent once the cluster reached ``high``.

    ``action_id`` is stable (cluster and post), so a redelivered event never
    asks twice for the same post.
    """

    action_id: str
    cluster_id: str
    post_id: str
    ts_ms: int
    severity: Severity
    alert_id: str

    @classmethod
    def for_post(
        cls, cluster_id: str, post_id: str, ts_ms: int, severity: Severity, alert: str
    ) -> TakedownRequest:
        """The request for ``post_id``: its id ``"td-"`` and the hex of the 10-byte BLAKE2b of
        ``f"{cluster_id}\x00{post_id}"``'s UTF-8. Made in the compiled core (the hash and
        the fields set there, without ``__init__``): a cluster past its takedown severity
        asks one a post, and in Python each cost about 15,000 instructions."""
        return takedown_request(cls, cluster_id, post_id, ts_ms, severity, alert)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "action": "takedown",
            "cluster_id": self.cluster_id,
            "post_id": self.post_id,
            "ts": rfc3339(self.ts_ms),
            "severity": self.severity,
            "alert_id": self.alert_id,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)
