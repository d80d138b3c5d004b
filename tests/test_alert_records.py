"""The alert record on the wire: what the ``alerts`` topic holds decodes back to the alert.

Readers of the topic (the webhook delivery, a platform's own consumer) get
typed records, not dicts: :meth:`Alert.from_json` is the one decoder, and it
gives back the very bytes it was given, for every alert the pipeline makes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_streaming_stages import IN_TIME, bank_of, local_run, replay_alerts

from streams.alerts import (
    SEVERITIES,
    Alert,
    CascadeFigures,
    EarlyAlert,
    MatchInfo,
    Prediction,
    Severity,
    TakedownRequest,
    rfc3339,
)
from streams.simulate import Scenario, simulate


def test_every_alert_of_a_replay_and_of_a_streamed_run_decodes_to_its_own_bytes() -> None:
    sim = simulate(Scenario(seed=3, minutes=60, **IN_TIME))  # type: ignore[arg-type]
    expected, _ = replay_alerts(sim.lines, bank_of(sim.bank))
    run = local_run(sim, seed=1)
    records = [*expected, *run.alerts.values()]
    assert expected and run.early, "the traffic must make alerts, some of them sent early"
    for raw in records:
        alert = Alert.from_json(raw)
        assert alert.to_json() == raw
        assert isinstance(alert, EarlyAlert) == (b'"provisional":true' in raw)
    predicted = [Alert.from_json(r).cascade.predicted_final_size for r in expected]
    assert any(p is not None and p.horizon_s for p in predicted)


finite = st.floats(min_value=0, max_value=1e9, allow_nan=False)
ts = st.integers(min_value=0, max_value=4_102_444_800_000)  # to 2100
text = st.text(max_size=20)
predictions = st.builds(
    Prediction,
    size=finite | st.just(math.inf),
    low=finite,
    high=finite | st.just(math.inf),
    model=text,
    horizon_s=st.none() | st.sampled_from([45.0, 5_400.0, 86_400.0, 604_800.0]),
)
matches = st.builds(
    MatchInfo,
    bank=text,
    signal_type=st.sampled_from(["pdq", "md5", "vpdq"]),
    signal=text,
    distance=st.integers(0, 256),
    label=st.none() | text,
    kind=st.none() | st.sampled_from(["vpdq", "video_frame"]),
    query_match_pct=st.none() | st.floats(0, 100),
    compared_match_pct=st.none() | st.floats(0, 100),
)
figures = st.builds(
    CascadeFigures,
    size=st.integers(0, 10**7),
    live=st.integers(0, 10**7),
    roots=st.integers(0, 10**5),
    unique_users=st.integers(0, 10**7),
    depth=st.integers(0, 10**4),
    breadth=st.integers(0, 10**6),
    structural_virality=finite,
    velocity_1m=finite,
    velocity_5m=finite,
    velocity_15m=finite,
    acceleration=st.floats(-1e6, 1e6),
    predicted_final_size=st.none() | predictions,
)
common = dict(
    alert_id=text,
    status=st.sampled_from(["firing", "resolved"]),
    severity=st.sampled_from(SEVERITIES),
    ts_ms=ts,
    cluster_id=text,
    first_seen_ms=ts,
    episode=st.integers(1, 10**6),
    match=st.none() | matches,
    cascade=figures,
    top_spreaders=st.lists(st.tuples(text, st.integers(0, 10**6)), max_size=3).map(tuple),
    links=st.dictionaries(text, text, max_size=2).map(lambda d: tuple(d.items())),
    reason=text,
)
alerts = st.builds(Alert, **common) | st.builds(EarlyAlert, **common, as_of_ms=ts)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(alerts)
def test_any_alert_round_trips_once_its_figures_are_rounded_as_written(alert: Alert) -> None:
    raw = alert.to_json()
    assert Alert.from_json(raw).to_json() == raw


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "not JSON"),
        (b"{oops", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"alert_id": "vw-1"}', "missing 'status'"),
        (b"null", "not a JSON object"),
    ],
)
def test_what_is_not_an_alert_is_refused_with_the_reason(raw: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Alert.from_json(raw)


@settings(max_examples=300)
@given(alerts, st.data())
def test_a_damaged_alert_is_refused_with_a_value_error_never_another_exception(
    alert: Alert, data: st.DataObject
) -> None:
    """Whatever field is broken, and however: a ValueError (a dead letter), not a crash."""
    d = orjson.loads(alert.to_json())
    path = [data.draw(st.sampled_from(sorted(d)))]
    node = d
    while isinstance(node[path[-1]], dict) and node[path[-1]] and data.draw(st.booleans()):
        node = node[path[-1]]
        path.append(data.draw(st.sampled_from(sorted(node))))
    # integers JSON carries here: orjson writes none over 64 bits (the test's own dumps raised)
    ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
    node[path[-1]] = data.draw(st.none() | ints | st.text(max_size=5) | st.lists(ints, max_size=2))
    try:
        decoded = Alert.from_json(orjson.dumps(d))
    except ValueError as err:
        assert str(err).startswith("not an alert")
    else:
        assert isinstance(decoded, Alert)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.integers(-(10**13), 10**14), st.integers(0, 1 << 42)), max_size=8))
def test_rfc3339_is_datetime_s_text_whatever_second_it_kept(stamps: list[int]) -> None:
    """The kept second's text never leaks into another's, in or out of the exact range."""
    from streams.alerts import _rfc3339_any

    for ts in [*stamps, *(t + 1 for t in stamps), *(t + 1000 for t in stamps)]:
        assert rfc3339(ts) == _rfc3339_any(ts), ts


def test_rfc3339_at_the_edges_of_its_exact_range() -> None:
    from streams.alerts import _rfc3339_any

    for ts in (0, 1, 999, 1000, (1 << 42) - 1, 1 << 42, 1_767_225_599_999, 1_767_225_600_000):
        assert rfc3339(ts) == _rfc3339_any(ts), ts


TEXTS = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200)


@settings(max_examples=400, deadline=None)
@given(TEXTS, TEXTS, st.integers(0, 1 << 42), st.sampled_from(SEVERITIES), TEXTS)
def test_a_takedown_request_is_the_one_python_made_with_hashlib(
    cluster_id: str, post_id: str, ts_ms: int, severity: Severity, alert_id: str
) -> None:
    """``TakedownRequest.for_post``, made in the compiled core (the hash and the fields set
    there), is the record Python made: ``hashlib``'s 10-byte BLAKE2b of the ids' UTF-8 in
    its id (any text, across the 128-byte block), every field equal and of its type."""
    digest = hashlib.blake2b(f"{cluster_id}\x00{post_id}".encode(), digest_size=10)
    want = TakedownRequest(
        f"td-{digest.hexdigest()}", cluster_id, post_id, ts_ms, severity, alert_id
    )
    got = TakedownRequest.for_post(cluster_id, post_id, ts_ms, severity, alert_id)
    assert type(got) is TakedownRequest
    assert got == want and hash(got) == hash(want) and repr(got) == repr(want)
    assert got.to_dict() == want.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.post_id = "p"  # type: ignore[misc]


def test_a_takedown_requests_ids_with_a_lone_surrogate_fail_as_encode_failed() -> None:
    """An id that has no UTF-8 is refused as ``str.encode`` refused it (never a record)."""
    with pytest.raises(UnicodeEncodeError):
        TakedownRequest.for_post("b-1", "p\ud800", 0, "high", "a")
