"""Share events: the input record, parsed once and validated once.

Everything after :func:`parse_event` works on frozen :class:`ShareEvent`
values, never on raw dicts. Bad input does not raise: it becomes a
:class:`Rejection` with a machine-readable ``reason`` (one of
:data:`REJECT_REASONS`), so one broken producer cannot stop the pipeline and
every dropped line is counted and can be dead-lettered with its bytes.

>>> ev = parse_event(b'{"event_id":"e1","type":"upload","ts":"2026-01-01T00:00:00Z",'
...     b'"post_id":"p1","user_id":"u1","content":{"md5":"' + b"a" * 32 + b'"}}')
>>> ev.type, ev.ts_ms, ev.content.md5[:4]
('upload', 1767225600000, 'aaaa')
>>> parse_event(b"not json").reason
'not_json'
>>> parse_event(b'{"event_id":"e2","type":"share","ts":1767225600000,'
...     b'"post_id":"p2","parent_post_id":"p2","user_id":"u1"}').reason
'self_reshare'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal

import orjson

from streams import _core
from streams.vpdq import REASONS as VPDQ_REASONS
from streams.vpdq import VpdqError, VpdqFrame, parse_vpdq

EventType = Literal["upload", "share", "takedown"]
EVENT_TYPES: Final = ("upload", "share", "takedown")

#: Largest input line accepted. A share event is a few hundred bytes, a video
#: upload's vPDQ up to 3,600 frames of about 78 bytes (an hour at one frame a
#: second: 280 KB); a line far over this is a broken or hostile producer, and
#: parsing it would cost memory for nothing.
MAX_EVENT_BYTES: Final = _core.MAX_EVENT_BYTES
#: Longest id accepted (event, post, user ids).
MAX_ID_LEN: Final = _core.MAX_ID_LEN

REJECT_REASONS: Final = (
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "unknown_type",
    "bad_id",
    "bad_ts",
    "bad_followers",
    "bad_content",
    "bad_hex",
    "bad_hash_length",
    "bad_quality",
    "missing_content",
    *VPDQ_REASONS,
    "missing_parent",
    "self_reshare",
    "cycle",
    "duplicate_post",
    "orphan_expired",
    "orphan_overflow",
    "too_late",
)

# 2000-01-01 .. 2100-01-01: an epoch outside this is a unit mistake (seconds,
# microseconds) rather than a real event time.
_TS_MIN_MS: Final = _core.TS_MIN_MS
_TS_MAX_MS: Final = _core.TS_MAX_MS


@dataclass(frozen=True, slots=True)
class Content:
    """The hashes an upload carries. ``pdq`` is 64 lowercase hex, ``md5`` 32.

    A video carries ``vpdq``, its frames (:mod:`streams.vpdq`; on the wire the
    signal's list of ``"pdqhex,quality,timestamp"`` strings).
    """

    pdq: str | None = None
    pdq_quality: int | None = None
    md5: str | None = None
    vpdq: tuple[VpdqFrame, ...] | None = None


@dataclass(frozen=True, slots=True)
class ShareEvent:
    """One validated share event. ``ts_ms`` is event time in epoch milliseconds."""

    event_id: str
    type: EventType
    ts_ms: int
    post_id: str
    user_id: str
    parent_post_id: str | None = None
    followers: int | None = None
    content: Content | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (``ts`` in epoch ms); :func:`parse_event` reads it back."""
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type,
            "ts": self.ts_ms,
            "post_id": self.post_id,
            "user_id": self.user_id,
        }
        if self.parent_post_id is not None:
            out["parent_post_id"] = self.parent_post_id
        if self.followers is not None:
            out["followers"] = self.followers
        if self.content is not None:
            c: dict[str, Any] = {}
            if self.content.pdq is not None:
                c["pdq"] = self.content.pdq
            if self.content.pdq_quality is not None:
                c["pdq_quality"] = self.content.pdq_quality
            if self.content.md5 is not None:
                c["md5"] = self.content.md5
            if self.content.vpdq is not None:
                c["vpdq"] = [str(f) for f in self.content.vpdq]
            out["content"] = c
        return out

    def to_json(self) -> bytes:
        """Canonical bytes: the same event always gives the same bytes."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Input that was refused, with why, and as much of its bytes as is safe to keep.

    ``raw`` keeps at most :data:`MAX_EVENT_BYTES` of the original, so a
    dead-letter record of a 10 MB line stays small.
    """

    reason: str
    detail: str
    raw: bytes = b""
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "detail": self.detail,
            "event_id": self.event_id,
            "raw": self.raw.decode("utf-8", "replace"),
        }


def parse_ts(value: object) -> int:
    """Event time as epoch milliseconds, from RFC 3339 text or epoch milliseconds.

    >>> parse_ts("2026-01-01T00:00:01.5+00:00")
    1767225601500
    >>> parse_ts(1767225601500)
    1767225601500
    >>> parse_ts("yesterday")
    Traceback (most recent call last):
    ValueError: ts is not RFC 3339: 'yesterday'
    """
    if isinstance(value, bool):
        raise ValueError("ts must be RFC 3339 text or epoch milliseconds, not a boolean")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("ts is not a finite number")
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 40:
            raise ValueError(f"ts is not RFC 3339: {value[:40]!r}")
        if text.isdigit():
            ms = int(text)
        else:
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"ts is not RFC 3339: {value[:40]!r}") from None
            if dt.tzinfo is None:
                raise ValueError(f"ts has no time zone offset: {value[:40]!r}")
            ms = round(dt.timestamp() * 1000)
    else:
        raise ValueError(
            f"ts must be RFC 3339 text or epoch milliseconds, not {type(value).__name__}"
        )
    if not _TS_MIN_MS <= ms < _TS_MAX_MS:
        raise ValueError(f"ts {ms} is outside 2000..2100 in epoch milliseconds")
    return ms


def _video(item: tuple[Any, ...], raw: bytes) -> ShareEvent | Rejection:
    """A video's upload, as the core leaves it: its frames are read by :mod:`streams.vpdq`,
    the one reader of the signal."""
    event_id, kind, ts_ms, post_id, user_id, parent, followers, hashes = item
    pdq, quality, md5, vpdq_json, named = hashes
    try:
        vpdq = parse_vpdq(orjson.loads(vpdq_json))
    except VpdqError as exc:
        detail = f"content.vpdq: {exc.detail}"
        return Rejection(exc.reason, detail, raw[:MAX_EVENT_BYTES], named)
    return ShareEvent(
        event_id=event_id,
        type=kind,
        ts_ms=ts_ms,
        post_id=post_id,
        user_id=user_id,
        parent_post_id=parent,
        followers=followers,
        content=Content(pdq=pdq, pdq_quality=quality, md5=md5, vpdq=vpdq),
    )


def parse_events(raws: Sequence[bytes]) -> list[ShareEvent | Rejection]:
    """Parse and validate a batch of input records, in order; never raises on bad input.

    The compiled core (``streams._core``) reads and judges every line and
    builds its record; a rejection keeps at most :data:`MAX_EVENT_BYTES` of
    its line.

    >>> [getattr(p, "reason", "ok") for p in parse_events([b"{}", b"[]", bytes([255])])]
    ['missing_field', 'not_object', 'not_utf8']
    """
    records, videos = _core.parse_events(raws, parse_ts, ShareEvent, Content, Rejection)
    for i in videos:
        records[i] = _video(records[i], bytes(raws[i]))
    return records


# what the compiled loops make Python records of events with, where Python acts on them
_core.set_event_types(ShareEvent, Content, Rejection, parse_ts, _video)


def event_from_dict(obj: object, raw: bytes = b"") -> ShareEvent | Rejection:
    """Validate a decoded JSON value as a share event; never raises on bad input.

    The one decoder of a share event: :func:`parse_event` uses it for input
    lines, and the stages for the events they send each other
    (:mod:`streams.wire`), so a record the pipeline wrote is held to the same
    rules as one a producer wrote. ``raw`` is what a rejection keeps. The
    value is written back as JSON for the compiled core: a value JSON cannot
    hold (a set, an integer over 64 bits) is ``not_json``.

    >>> event_from_dict({"event_id": "e", "type": "share", "ts": 1767225600000,
    ...                  "post_id": "p2", "parent_post_id": "p1", "user_id": "u"}).post_id
    'p2'
    >>> event_from_dict(["not", "an", "object"]).reason
    'not_object'
    """
    try:
        data = orjson.dumps(obj)
    except TypeError as exc:
        return Rejection("not_json", f"not JSON: {str(exc)[:120]}", raw[:MAX_EVENT_BYTES])
    (parsed,) = parse_events([data])
    if isinstance(parsed, Rejection):
        return replace(parsed, raw=raw[:MAX_EVENT_BYTES])
    return parsed


def parse_event(raw: bytes | str) -> ShareEvent | Rejection:
    """Parse and validate one input record; never raises on bad input.

    A batch goes faster through :func:`parse_events`.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    (parsed,) = parse_events([data])
    return parsed
