"""Share events: every bad input becomes a Rejection with a machine-readable reason."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_ID_LEN,
    REJECT_REASONS,
    Content,
    Rejection,
    ShareEvent,
    parse_event,
    parse_ts,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PDQ = "f" * 64
MD5 = "0123456789abcdef" * 2

PROPS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def upload(**over: object) -> dict[str, object]:
    ev: dict[str, object] = {
        "event_id": "e1",
        "type": "upload",
        "ts": T0,
        "post_id": "p1",
        "user_id": "u1",
        "followers": 10,
        "content": {"pdq": PDQ, "pdq_quality": 90, "md5": MD5},
    }
    ev.update(over)
    return ev


def share(**over: object) -> dict[str, object]:
    ev: dict[str, object] = {
        "event_id": "e2",
        "type": "share",
        "ts": T0 + 1000,
        "post_id": "p2",
        "parent_post_id": "p1",
        "user_id": "u2",
    }
    ev.update(over)
    return ev


def without(ev: dict[str, object], key: str) -> dict[str, object]:
    return {k: v for k, v in ev.items() if k != key}


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def rejected(raw: bytes | str) -> Rejection:
    out = parse_event(raw)
    assert isinstance(out, Rejection), out
    assert out.reason in REJECT_REASONS
    assert out.detail and "\n" not in out.detail
    return out


def accepted(raw: bytes | str) -> ShareEvent:
    out = parse_event(raw)
    assert isinstance(out, ShareEvent), out
    return out


# ---------------------------------------------------------------- good events


def test_upload_parses_into_typed_frozen_record() -> None:
    ev = accepted(enc(upload()))
    assert ev == ShareEvent(
        event_id="e1",
        type="upload",
        ts_ms=T0,
        post_id="p1",
        user_id="u1",
        parent_post_id=None,
        followers=10,
        content=Content(pdq=PDQ, pdq_quality=90, md5=MD5),
    )
    with pytest.raises(AttributeError):
        ev.post_id = "other"  # type: ignore[misc]


def test_share_and_takedown_parse() -> None:
    ev = accepted(enc(share()))
    assert (ev.type, ev.parent_post_id, ev.content) == ("share", "p1", None)
    td = accepted(
        enc({"event_id": "e3", "type": "takedown", "ts": T0, "post_id": "p1", "user_id": "mod"})
    )
    assert (td.type, td.parent_post_id, td.content) == ("takedown", None, None)


def test_upload_ignores_parent_and_share_ignores_content() -> None:
    # an upload is a root by definition; a reshare inherits its parent's content
    assert accepted(enc(upload(parent_post_id="p0"))).parent_post_id is None
    assert accepted(enc(share(content={"md5": MD5}))).content is None


def test_hashes_are_normalised_to_lowercase_and_one_hash_is_enough() -> None:
    ev = accepted(enc(upload(content={"md5": MD5.upper()})))
    assert ev.content == Content(md5=MD5)
    ev = accepted(enc(upload(content={"pdq": PDQ.upper(), "pdq_quality": 0})))
    assert ev.content == Content(pdq=PDQ, pdq_quality=0)


def test_integer_ids_are_read_as_text() -> None:
    ev = accepted(enc(share(event_id=7, post_id=42, parent_post_id=41, user_id=9)))
    assert (ev.event_id, ev.post_id, ev.parent_post_id, ev.user_id) == ("7", "42", "41", "9")


def test_str_input_is_accepted_like_bytes() -> None:
    line = enc(share())
    assert parse_event(line.decode()) == parse_event(line)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T00:00:00z", T0),
        ("2026-01-01T00:00:00+00:00", T0),
        ("2026-01-01T01:00:00+01:00", T0),
        ("2025-12-31T19:30:00-04:30", T0),
        ("2026-01-01T00:00:00.250Z", T0 + 250),
        ("2026-01-01T00:00:01.5+00:00", T0 + 1500),
        ("2026-01-01 00:00:00Z", T0),  # RFC 3339 allows a space for the T
        (T0, T0),
        (T0 + 999, T0 + 999),
        (str(T0), T0),
    ],
)
def test_ts_accepts_rfc3339_and_epoch_ms(text: object, ms: int) -> None:
    assert parse_ts(text) == ms
    assert accepted(enc(share(ts=text))).ts_ms == ms


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30), timezones=st.just(None)
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
@PROPS
def test_rfc3339_with_any_offset_gives_the_same_instant(naive: datetime, offset_min: int) -> None:
    naive = naive.replace(microsecond=naive.microsecond // 1000 * 1000)
    tz = timezone(timedelta(minutes=offset_min))
    aware = naive.replace(tzinfo=tz)
    expect = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parse_ts(aware.isoformat()) == expect
    assert parse_ts(aware.astimezone(UTC).isoformat().replace("+00:00", "Z")) == expect


# ---------------------------------------------------------------- bad events


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # not JSON at all
        (b"", "not_json"),
        (b"   ", "not_json"),
        (b"not json", "not_json"),
        (b'{"event_id": "e1"', "not_json"),
        (b"{'event_id': 'e1'}", "not_json"),
        (b"NaN", "not_json"),
        (b'{"ts": NaN}', "not_json"),
        (b'{"ts": Infinity}', "not_json"),
        (b'{"ts": 1e999}', "not_json"),
        (b"[" * 5000 + b"]" * 5000, "not_json"),  # nested past the parser's depth limit
        # JSON, but not an object
        (b"null", "not_object"),
        (b"[]", "not_object"),
        (b"[{}]", "not_object"),
        (b'"upload"', "not_object"),
        (b"42", "not_object"),
        (b"true", "not_object"),
        # not UTF-8
        (b'{"event_id": "\xff\xfe"}', "not_utf8"),
        (b"\xc3\x28", "not_utf8"),
        (b'{"event_id": "\xed\xa0\x80"}', "not_utf8"),  # an encoded lone surrogate
    ],
)
def test_unparseable_input(raw: bytes, reason: str) -> None:
    out = rejected(raw)
    assert out.reason == reason
    assert out.raw == raw
    assert out.event_id is None


def test_lone_surrogate_in_str_input_is_not_utf8() -> None:
    assert rejected('{"event_id": "\ud800"}').reason == "not_utf8"


BAD_FIELDS = [
    # missing ids and fields
    (without(upload(), "event_id"), "missing_field"),
    (without(upload(), "type"), "missing_field"),
    (without(upload(), "ts"), "missing_field"),
    (without(upload(), "post_id"), "missing_field"),
    (without(upload(), "user_id"), "missing_field"),
    (upload(post_id=None), "missing_field"),
    (upload(ts=None), "missing_field"),
    ({}, "missing_field"),
    # wrong types and bad ids
    (upload(event_id=""), "bad_id"),
    (upload(post_id=["p1"]), "bad_id"),
    (upload(user_id={"id": "u1"}), "bad_id"),
    (upload(user_id=1.5), "bad_id"),
    (upload(event_id=True), "bad_id"),
    (upload(post_id="a\nb"), "bad_id"),
    (upload(post_id="x" * (MAX_ID_LEN + 1)), "bad_id"),
    (share(parent_post_id=[]), "bad_id"),
    (share(parent_post_id=""), "bad_id"),
    # unknown type
    (upload(type="reshare"), "unknown_type"),
    (upload(type="UPLOAD"), "unknown_type"),
    (upload(type=1), "unknown_type"),
    (upload(type=["upload"]), "unknown_type"),
    (upload(type={"upload": 1}), "unknown_type"),
    # bad ts
    (upload(ts="yesterday"), "bad_ts"),
    (upload(ts=""), "bad_ts"),
    (upload(ts="2026-01-01T00:00:00"), "bad_ts"),  # no offset: ambiguous instant
    (upload(ts="2026-13-01T00:00:00Z"), "bad_ts"),
    (upload(ts=T0 // 1000), "bad_ts"),  # epoch seconds: a unit mistake
    (upload(ts=T0 * 1000), "bad_ts"),  # epoch microseconds
    (upload(ts=-1), "bad_ts"),
    (upload(ts=True), "bad_ts"),
    (upload(ts=False), "bad_ts"),
    (upload(ts=[T0]), "bad_ts"),
    (upload(ts={"ms": T0}), "bad_ts"),
    (upload(ts="1" * 41), "bad_ts"),
    (upload(ts="²"), "bad_ts"),
    (upload(ts=1e300), "bad_ts"),
    # followers
    (upload(followers=-1), "bad_followers"),
    (upload(followers="10"), "bad_followers"),
    (upload(followers=1.5), "bad_followers"),
    (upload(followers=True), "bad_followers"),
    (upload(followers=2**53), "bad_followers"),
    # content
    (without(upload(), "content"), "missing_content"),
    (upload(content=None), "missing_content"),
    (upload(content="f" * 64), "bad_content"),
    (upload(content=[PDQ]), "bad_content"),
    (upload(content={}), "bad_content"),
    (upload(content={"pdq_quality": 90}), "bad_content"),
    (upload(content={"pdq": 123}), "bad_content"),
    (upload(content={"pdq": [[["f" * 64]]]}), "bad_content"),
    (upload(content={"md5": {"hex": MD5}}), "bad_content"),
    (upload(content={"pdq": "g" * 64}), "bad_hex"),
    (upload(content={"pdq": "0x" + "f" * 62}), "bad_hex"),
    (upload(content={"md5": "z" * 32}), "bad_hex"),
    (upload(content={"md5": "é" * 32}), "bad_hex"),
    (upload(content={"pdq": "f" * 63}), "bad_hash_length"),
    (upload(content={"pdq": "f" * 65}), "bad_hash_length"),
    (upload(content={"pdq": ""}), "bad_hash_length"),
    (upload(content={"md5": "a" * 64}), "bad_hash_length"),
    (upload(content={"md5": "a" * 31}), "bad_hash_length"),
    (upload(content={"pdq": PDQ, "pdq_quality": 101}), "bad_quality"),
    (upload(content={"pdq": PDQ, "pdq_quality": -1}), "bad_quality"),
    (upload(content={"pdq": PDQ, "pdq_quality": 50.5}), "bad_quality"),
    (upload(content={"pdq": PDQ, "pdq_quality": True}), "bad_quality"),
    (upload(content={"pdq": PDQ, "pdq_quality": "90"}), "bad_quality"),
    # reshares
    (without(share(), "parent_post_id"), "missing_parent"),
    (share(parent_post_id=None), "missing_parent"),
    (share(post_id="p1", parent_post_id="p1"), "self_reshare"),
    (share(post_id=5, parent_post_id="5"), "self_reshare"),
]


@pytest.mark.parametrize(("obj", "reason"), BAD_FIELDS)
def test_malformed_event_is_rejected_with_its_reason(obj: dict[str, object], reason: str) -> None:
    raw = enc(obj)
    out = rejected(raw)
    assert out.reason == reason, out.detail
    assert out.raw == raw
    eid = obj.get("event_id")
    assert out.event_id == (eid if isinstance(eid, str) else None)


def test_rejection_detail_names_the_field() -> None:
    assert "post_id" in rejected(enc(without(upload(), "post_id"))).detail
    assert "pdq" in rejected(enc(upload(content={"pdq": "f" * 63}))).detail
    assert "followers" in rejected(enc(upload(followers=-3))).detail


def test_ten_megabyte_line_is_too_large_and_raw_is_capped() -> None:
    raw = enc(upload(user_id="u" * (10 * 1024 * 1024)))
    assert len(raw) > 10 * 1024 * 1024
    out = rejected(raw)
    assert out.reason == "too_large"
    assert out.raw == raw[:MAX_EVENT_BYTES]
    assert len(out.to_dict()["raw"]) <= MAX_EVENT_BYTES
    assert len(rejected(b"\xff" * (10 * 1024 * 1024)).raw) == MAX_EVENT_BYTES


def test_line_at_the_size_limit_is_parsed_and_one_byte_more_is_not() -> None:
    base = enc(upload(pad=""))
    line = enc(upload(pad="x" * (MAX_EVENT_BYTES - len(base))))
    assert len(line) == MAX_EVENT_BYTES
    assert isinstance(parse_event(line), ShareEvent)
    assert rejected(line + b" ").reason == "too_large"


def test_rejection_to_dict_is_json_even_for_binary_raw() -> None:
    out = rejected(b'{"a": "\xff"}')
    d = orjson.loads(orjson.dumps(out.to_dict()))
    assert d["reason"] == "not_utf8" and d["event_id"] is None and "\ufffd" in d["raw"]


def test_good_events_around_a_bad_one_still_parse() -> None:
    lines = [enc(upload()), b"\x00garbage", enc(share())]
    out = [parse_event(x) for x in lines]
    assert [type(o).__name__ for o in out] == ["ShareEvent", "Rejection", "ShareEvent"]


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "obj",
    [
        upload(),
        upload(content={"md5": MD5}, followers=None),
        upload(content={"pdq": PDQ}),
        share(),
        share(followers=0, ts="2026-01-01T00:00:01.234Z"),
        {"event_id": "t", "type": "takedown", "ts": T0, "post_id": "p1", "user_id": "m"},
    ],
)
def test_to_json_round_trips(obj: dict[str, object]) -> None:
    ev = accepted(enc(obj))
    again = accepted(ev.to_json())
    assert again == ev
    assert again.to_json() == ev.to_json()


def test_to_json_is_canonical() -> None:
    a = accepted(enc(upload()))
    b = accepted(enc(dict(reversed(list(upload(ts="2026-01-01T00:00:00Z").items())))))
    assert a == b and a.to_json() == b.to_json()
    assert orjson.loads(a.to_json())["ts"] == T0


# ---------------------------------------------------------------- properties

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

ids = st.one_of(
    st.text(min_size=1, max_size=12),
    st.sampled_from(["p1", "p2", "u1", "e1"]),
    st.integers(min_value=-5, max_value=10**6),
)
hexish = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF", min_size=30, max_size=66),
    st.just(PDQ),
    st.just(MD5),
    st.text(max_size=70),
)
timestamps = st.one_of(
    st.integers(min_value=T0 - 10**12, max_value=T0 + 10**12),
    st.integers(),
    st.floats(),
    st.text(max_size=40),
    st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat()),
)
contents = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "pdq": hexish | JSON_VALUES,
            "md5": hexish | JSON_VALUES,
            "pdq_quality": st.integers(min_value=-5, max_value=105) | JSON_VALUES,
        },
    ),
    JSON_VALUES,
)
EVENT_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "event_id": ids | JSON_VALUES,
        "type": st.sampled_from([*EVENT_TYPES, "bogus"]) | JSON_VALUES,
        "ts": timestamps | JSON_VALUES,
        "post_id": ids | JSON_VALUES,
        "parent_post_id": ids | JSON_VALUES,
        "user_id": ids | JSON_VALUES,
        "followers": st.integers(min_value=-5, max_value=2**60) | JSON_VALUES,
        "content": contents,
        "extra": JSON_VALUES,
    },
)


def check_outcome(raw: bytes | str, out: ShareEvent | Rejection) -> None:
    """What parse_event promises for any input: a valid record or a well-formed refusal."""
    if isinstance(out, Rejection):
        assert out.reason in REJECT_REASONS
        assert isinstance(out.detail, str) and out.detail
        assert len(out.raw) <= MAX_EVENT_BYTES
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        assert out.raw == data[:MAX_EVENT_BYTES]
        assert out.event_id is None or isinstance(out.event_id, str)
        orjson.dumps(out.to_dict())
        return
    assert isinstance(out, ShareEvent)
    assert out.type in EVENT_TYPES
    assert 946_684_800_000 <= out.ts_ms < 4_102_444_800_000
    for value in (out.event_id, out.post_id, out.user_id):
        assert isinstance(value, str) and 0 < len(value) <= MAX_ID_LEN
    if out.type == "share":
        assert out.parent_post_id is not None and out.parent_post_id != out.post_id
    else:
        assert out.parent_post_id is None
    if out.type == "upload":
        assert out.content is not None and (out.content.pdq or out.content.md5)
        assert out.content.pdq is None or len(out.content.pdq) == 64
        assert out.content.md5 is None or len(out.content.md5) == 32
    else:
        assert out.content is None
    assert parse_event(out.to_json()) == out


@given(st.binary(max_size=300))
@PROPS
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check_outcome(raw, parse_event(raw))


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=100))
@PROPS
def test_arbitrary_text_never_raises(raw: str) -> None:
    check_outcome(raw, parse_event(raw))


@given(JSON_VALUES)
@PROPS
def test_arbitrary_json_never_raises(value: object) -> None:
    raw = json.dumps(value).encode()  # stdlib: also writes NaN, Infinity and huge integers
    check_outcome(raw, parse_event(raw))


@given(EVENT_LIKE)
@PROPS
def test_event_like_dicts_never_raise(obj: dict[str, object]) -> None:
    raw = json.dumps(obj).encode()
    check_outcome(raw, parse_event(raw))


@given(EVENT_LIKE, st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=4))
@PROPS
def test_corrupted_event_bytes_never_raise(obj: dict[str, object], at: int, junk: bytes) -> None:
    raw = json.dumps(obj).encode()
    at = min(at, len(raw))
    raw = raw[:at] + junk + raw[at + len(junk) :]
    check_outcome(raw, parse_event(raw))


@given(
    kind=st.sampled_from(EVENT_TYPES),
    ts=st.integers(min_value=946_684_800_000, max_value=4_102_444_799_999),
    post=st.text(min_size=1, max_size=MAX_ID_LEN).filter(str.isprintable),
    parent=st.text(min_size=1, max_size=20).filter(str.isprintable),
    user=st.text(min_size=1, max_size=20).filter(str.isprintable),
    followers=st.none() | st.integers(min_value=0, max_value=2**53 - 1),
    pdq=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    quality=st.none() | st.integers(min_value=0, max_value=100),
)
@PROPS
def test_valid_events_are_accepted_and_round_trip(
    kind: str,
    ts: int,
    post: str,
    parent: str,
    user: str,
    followers: int | None,
    pdq: str | None,
    quality: int | None,
) -> None:
    obj: dict[str, object] = {
        "event_id": f"e-{post}",
        "type": kind,
        "ts": ts,
        "post_id": post,
        "user_id": user,
    }
    if followers is not None:
        obj["followers"] = followers
    if kind == "share":
        obj["parent_post_id"] = parent
    if kind == "upload":
        obj["content"] = {"pdq": pdq, "pdq_quality": quality, "md5": MD5}
    out = parse_event(json.dumps(obj).encode())
    if kind == "share" and parent == post:
        assert isinstance(out, Rejection) and out.reason == "self_reshare"
        return
    assert isinstance(out, ShareEvent), out
    assert (out.ts_ms, out.post_id, out.user_id, out.followers) == (ts, post, user, followers)
    if kind == "upload":
        assert out.content == Content(pdq=pdq, pdq_quality=quality, md5=MD5)
    check_outcome(json.dumps(obj).encode(), out)


def test_nan_and_infinite_float_ts_are_bad_ts() -> None:
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            parse_ts(value)
