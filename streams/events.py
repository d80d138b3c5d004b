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

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import orjson

from streams.vpdq import REASONS as VPDQ_REASONS
from streams.vpdq import VpdqError, VpdqFrame, parse_vpdq

EventType = Literal["upload", "share", "takedown"]
EVENT_TYPES: Final = ("upload", "share", "takedown")

#: Largest input line accepted. A share event is a few hundred bytes, a video
#: upload's vPDQ up to 3,600 frames of about 78 bytes (an hour at one frame a
#: second: 280 KB); a line far over this is a broken or hostile producer, and
#: parsing it would cost memory for nothing.
MAX_EVENT_BYTES: Final = 320 * 1024
#: Longest id accepted (event, post, user ids).
MAX_ID_LEN: Final = 256

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

_HEX = re.compile(r"[0-9a-f]*")
# 2000-01-01 .. 2100-01-01: an epoch outside this is a unit mistake (seconds,
# microseconds) rather than a real event time.
_TS_MIN_MS: Final = 946_684_800_000
_TS_MAX_MS: Final = 4_102_444_800_000


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


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


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


def _id(obj: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if type(value) is str and 0 < len(value) <= MAX_ID_LEN and value.isprintable():
        return value  # the common case, first: every event has three or four ids
    if value is None:
        if required:
            raise _Reject("missing_field", f"{key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Reject("bad_id", f"{key} must be a string")
    text = str(value)
    if not text or len(text) > MAX_ID_LEN or not text.isprintable():
        raise _Reject("bad_id", f"{key} must be 1..{MAX_ID_LEN} printable characters")
    return text


def _hex(value: object, key: str, length: int) -> str:
    if not isinstance(value, str):
        raise _Reject("bad_content", f"content.{key} must be a hex string")
    text = value.strip().lower()
    if not _HEX.fullmatch(text):
        raise _Reject("bad_hex", f"content.{key} is not hexadecimal")
    if len(text) != length:
        raise _Reject(
            "bad_hash_length", f"content.{key} must be {length} hex digits, not {len(text)}"
        )
    return text


def _content(value: object) -> Content:
    if not isinstance(value, dict):
        raise _Reject("bad_content", "content must be an object")
    pdq = md5 = None
    quality = None
    if value.get("pdq") is not None:
        pdq = _hex(value["pdq"], "pdq", 64)
    if value.get("md5") is not None:
        md5 = _hex(value["md5"], "md5", 32)
    q = value.get("pdq_quality")
    if q is not None:
        if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= 100:
            raise _Reject("bad_quality", "content.pdq_quality must be an integer 0..100")
        quality = q
    vpdq = None
    if value.get("vpdq") is not None:
        if not isinstance(value["vpdq"], list):
            raise _Reject("bad_vpdq", "content.vpdq must be a list of 'pdqhex,quality,timestamp'")
        try:
            vpdq = parse_vpdq(value["vpdq"])
        except VpdqError as exc:
            raise _Reject(exc.reason, f"content.vpdq: {exc.detail}") from None
    if pdq is None and md5 is None and vpdq is None:
        raise _Reject("bad_content", "content carries none of pdq, md5, vpdq")
    return Content(pdq=pdq, pdq_quality=quality, md5=md5, vpdq=vpdq)


def _event(obj: object) -> ShareEvent:
    if not isinstance(obj, dict):
        raise _Reject("not_object", "an event must be a JSON object")
    event_id = _id(obj, "event_id")
    kind = obj.get("type")
    if kind is None:
        raise _Reject("missing_field", "type is missing")
    if kind not in EVENT_TYPES:
        raise _Reject("unknown_type", f"type must be one of {', '.join(EVENT_TYPES)}")
    ts = obj.get("ts")
    if type(ts) is int and _TS_MIN_MS <= ts < _TS_MAX_MS:
        ts_ms = ts  # the common case (and every event a stage wrote), first
    elif ts is None:
        raise _Reject("missing_field", "ts is missing")
    else:
        try:
            ts_ms = parse_ts(ts)
        except ValueError as exc:
            raise _Reject("bad_ts", str(exc)) from None
    post_id = _id(obj, "post_id")
    user_id = _id(obj, "user_id")
    parent = _id(obj, "parent_post_id", required=False)
    followers = obj.get("followers")
    if followers is not None and (
        isinstance(followers, bool) or not isinstance(followers, int) or not 0 <= followers < 2**53
    ):
        raise _Reject("bad_followers", "followers must be a non-negative integer")
    content = None
    if kind == "upload":
        if obj.get("content") is None:
            raise _Reject("missing_content", "an upload must carry content")
        content = _content(obj["content"])
        parent = None  # an upload is a root by definition
    elif kind == "share":
        if parent is None:
            raise _Reject("missing_parent", "a share must name its parent_post_id")
        if parent == post_id:
            raise _Reject("self_reshare", "a post cannot reshare itself")
    assert event_id is not None and post_id is not None and user_id is not None
    return ShareEvent(
        event_id=event_id,
        type=kind,
        ts_ms=ts_ms,
        post_id=post_id,
        user_id=user_id,
        parent_post_id=parent if kind == "share" else None,
        followers=followers,
        content=content,
    )


def event_from_dict(obj: object, raw: bytes = b"") -> ShareEvent | Rejection:
    """Validate a decoded JSON value as a share event; never raises on bad input.

    The one decoder of a share event: :func:`parse_event` uses it for input
    lines, and the stages for the events they send each other
    (:mod:`streams.wire`), so a record the pipeline wrote is held to the same
    rules as one a producer wrote. ``raw`` is what a rejection keeps.

    >>> event_from_dict({"event_id": "e", "type": "share", "ts": 1767225600000,
    ...                  "post_id": "p2", "parent_post_id": "p1", "user_id": "u"}).post_id
    'p2'
    >>> event_from_dict(["not", "an", "object"]).reason
    'not_object'
    """
    try:
        return _event(obj)
    except _Reject as exc:
        eid = obj.get("event_id") if isinstance(obj, dict) else None
        return Rejection(exc.reason, exc.detail, raw, eid if isinstance(eid, str) else None)


def parse_event(raw: bytes | str) -> ShareEvent | Rejection:
    """Parse and validate one input record; never raises on bad input."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    keep = data[:MAX_EVENT_BYTES]
    if len(data) > MAX_EVENT_BYTES:
        return Rejection("too_large", f"event is {len(data)} bytes, over {MAX_EVENT_BYTES}", keep)
    try:
        obj = orjson.loads(data)  # orjson validates UTF-8 itself: decode only to say why
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return Rejection("not_utf8", "event is not valid UTF-8", keep)
        return Rejection("not_json", f"not JSON: {str(exc)[:120]}", keep)
    return event_from_dict(obj, keep)
