"""Reviewer actions: the record, its codec, the bank changes it implies, the allow-list."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.banks import ALLOW_BANK, BankEntry, BankUpdate, HashBanks, brute_force_match
from streams.events import Content
from streams.review import ACTION_KINDS, ActionLog, ReviewAction, Signal

T0 = 1_767_225_600_000
CID = "u-00112233445566ff"


def action(kind: str = "bank", **kw: object) -> ReviewAction:
    args: dict[str, object] = dict(
        reviewer="alice",
        reason="confirmed",
        ts_ms=T0,
        cluster_id=CID,
        signals=(Signal("pdq", "ab" * 32), Signal("md5", "cd" * 16)),
    )
    args.update(kw)
    return ReviewAction(kind, **args)  # type: ignore[arg-type]


hexes = st.text("0123456789abcdefABCDEF", min_size=64, max_size=64)


@given(
    kind=st.sampled_from(ACTION_KINDS),
    reviewer=st.text(min_size=1, max_size=50).filter(str.strip),
    reason=st.text(min_size=1, max_size=300).filter(str.strip),
    ts=st.integers(0, 253_402_300_799_999),
    pdqs=st.lists(hexes, min_size=1, max_size=3),
    bank=st.sampled_from(["internal", "stopncii", "partner-x"]),
)
def test_every_action_reads_back_equal_from_its_one_encoding(
    kind: str, reviewer: str, reason: str, ts: int, pdqs: list[str], bank: str
) -> None:
    a = ReviewAction(
        kind,  # type: ignore[arg-type]
        reviewer,
        reason,
        ts,
        CID,
        tuple(Signal("pdq", p) for p in pdqs),
        bank,
    )
    back = ReviewAction.from_json(a.record()[1])
    assert back == a and back.action_id == a.action_id
    assert orjson.loads(a.to_json())["action_id"] == a.action_id


def test_the_action_id_changes_with_any_field() -> None:
    ids = {
        action().action_id,
        action(reviewer="bob").action_id,
        action(reason="other").action_id,
        action(ts_ms=T0 + 1).action_id,
        action(bank="stopncii").action_id,
        action(signals=(Signal("pdq", "ab" * 32),)).action_id,
        action("withdraw").action_id,
    }
    assert len(ids) == 7


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{oops", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"kind": "nuke", "reviewer": "a", "ts": 1, "signals": []}', "kind must be"),
        (
            b'{"kind": "dismiss", "reviewer": " ", "ts": 1, "cluster_id": "u-00112233445566ff",'
            b' "reason": "x"}',
            "reviewer",
        ),
        (
            b'{"kind": "dismiss", "reviewer": "a", "ts": 1, "cluster_id": "u-00112233445566ff"}',
            "needs a reason",
        ),
        (b'{"kind": "dismiss", "reviewer": "a", "ts": 1, "reason": "x"}', "cluster_id is required"),
        (
            b'{"kind": "dismiss", "reviewer": "a", "ts": 1, "reason": "x", "cluster_id": "../x"}',
            "not a cluster id",
        ),
        (b'{"kind": "bank", "reviewer": "a", "ts": "now", "signals": []}', "ts must be"),
        (b'{"kind": "bank", "reviewer": "a", "ts": 1, "signals": []}', "needs the signals"),
        (
            b'{"kind": "bank", "reviewer": "a", "ts": 1, "signals": [{"signal_type": "pdq",'
            b' "signal": "zz"}]}',
            "pdq signal is 64",
        ),
        (b'{"kind": "bank", "reviewer": "a", "ts": 1, "signals": ["x"]}', "a signal is an object"),
        (
            b'{"kind": "bank", "reviewer": "a", "ts": 1, "bank": "allowlist", "signals":'
            b' [{"signal_type": "md5", "signal": "' + b"a" * 32 + b'"}]}',
            "allow-list",
        ),
    ],
)
def test_a_bad_record_is_refused_saying_why(body: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ReviewAction.from_json(body)


def test_a_forged_action_id_is_refused() -> None:
    d = orjson.loads(action().to_json())
    d["reviewer"] = "mallory"
    with pytest.raises(ValueError, match="action_id does not match"):
        ReviewAction.from_dict(d)


def test_each_kind_makes_its_bank_changes_at_its_time() -> None:
    def changes(a: ReviewAction) -> list[tuple[str, str, str, int]]:
        return [(c.op, c.entry.bank, c.entry.signal_type, c.ts_ms) for c in a.bank_changes()]

    assert changes(action("bank")) == [
        ("add", "internal", "pdq", T0),
        ("add", "internal", "md5", T0),
    ]
    assert changes(action("withdraw", bank="stopncii"))[0] == ("withdraw", "stopncii", "pdq", T0)
    assert changes(action("false_positive"))[1] == ("add", ALLOW_BANK, "md5", T0)
    assert changes(action("reverse_false_positive"))[0] == ("withdraw", ALLOW_BANK, "pdq", T0)
    assert changes(action("dismiss", signals=())) == []
    [first, _] = action("false_positive").bank_changes()
    assert first.entry.label == "false_positive by alice: confirmed"


def test_a_bank_change_survives_the_bank_topic_with_its_time() -> None:
    [change, _] = action("bank").bank_changes()
    key, value = change.record()
    back = BankUpdate.parse(key, value)
    assert (back.op, back.entry, back.ts_ms) == ("add", change.entry, T0)
    assert BankUpdate.parse(*BankUpdate("add", change.entry).record()).ts_ms is None
    with pytest.raises(ValueError, match="ts must be"):
        BankUpdate.parse(key, value.replace(b'"ts":', b'"ts":-'))


def test_the_action_log_shows_a_clusters_actions_in_time_order_and_stays_bounded() -> None:
    log = ActionLog(max_clusters=2)
    late, early = action(ts_ms=T0 + 5), action("dismiss", ts_ms=T0)
    assert log.add(late) and log.add(early) and not log.add(late)
    assert [a.kind for a in log.for_cluster(CID)] == ["dismiss", "bank"]
    assert log.dismissed_at(CID) == T0 and log.dismissed_at("u-ffffffffffffffff") is None
    log.add(action(cluster_id="u-1111111111111111"))
    log.add(action(cluster_id="u-2222222222222222"))
    assert log.for_cluster(CID) == [] and len(log) == 2


def test_a_dismissed_cluster_comes_back_only_past_a_higher_rule() -> None:
    """Dismissed once it met ``warning`` (25 shares in 5 min), it stays off the queue while it
    spreads at that pace, and comes back once it meets ``high`` (100 in 5 min)."""
    from streams.alerts import Pseudonymizer
    from streams.detector import Detector
    from streams.events import ShareEvent
    from streams.policy import AlertPolicy
    from streams.review_queue import emerging_items
    from streams.router import Routed
    from streams.stats import Stats

    det = Detector(AlertPolicy.default(), Stats(), pseudonymizer=Pseudonymizer(b"k"))
    up = ShareEvent("e0", "upload", T0, "p0", "alice", content=Content(md5="a" * 32))
    det.apply(Routed(up, CID))
    n, t = 0, T0

    def shares(count: int, every_ms: int) -> int:
        """``count`` reshares of the upload, one every ``every_ms``; the last one's time."""
        nonlocal n, t
        for _ in range(count):
            n, t = n + 1, t + every_ms
            det.apply(Routed(ShareEvent(f"e{n}", "share", t, f"p{n}", "u", "p0"), CID))
        return t

    def queued(at: int | None) -> list[str]:
        return [i.cluster_id for i in emerging_items(det, T0, lambda cid: at)]

    last = shares(30, 5_000)  # 30 in 2.5 min: warning's rule
    assert queued(None) == [CID]
    log = ActionLog()
    log.add(action("dismiss", ts_ms=last, signals=()))
    assert queued(log.dismissed_at(CID)) == []
    last = shares(40, 6_000)  # the same pace, for 4 more minutes: still judged
    assert queued(log.dismissed_at(CID)) == []
    last = shares(120, 1_000)  # 120 in 2 min: high's rule, met after the dismissal
    assert queued(log.dismissed_at(CID)) == [CID]
    log.add(action("dismiss", ts_ms=last, signals=()))  # dismissed again, at high: off
    assert queued(log.dismissed_at(CID)) == []


# ---------------------------------------------------------------- the allow-list


def test_content_on_the_allow_list_matches_no_bank_and_leaves_it_when_reversed() -> None:
    banks = HashBanks()
    banked = "f" * 60 + "0000"
    banks.add(BankEntry("stopncii", "pdq", banked))
    near = "f" * 56 + "0" * 8  # 4 bits from the banked hash
    content = Content(pdq=near, pdq_quality=90, md5="1" * 32)
    assert banks.match(content) is not None
    for change in action("false_positive", signals=(Signal("pdq", banked),)).bank_changes():
        BankUpdate(change.op, change.entry).apply(banks)
    assert banks.match(content) is None
    assert brute_force_match(banks.entries(), content) is None
    for change in action("reverse_false_positive", signals=(Signal("pdq", banked),)).bank_changes():
        BankUpdate(change.op, change.entry).apply(banks)
    m = banks.match(content)
    assert m is not None and m.entry.bank == "stopncii"


@given(seed=st.integers(0, 2**32 - 1))
def test_the_allow_list_is_checked_before_any_bank_as_a_scan_would(seed: int) -> None:
    rng = random.Random(seed)
    base = [f"{rng.getrandbits(256):064x}" for _ in range(6)]

    def near(h: str) -> str:
        v = int(h, 16)
        for bit in rng.sample(range(256), rng.randint(0, 40)):
            v ^= 1 << bit
        return f"{v:064x}"

    entries = [BankEntry(rng.choice(["a", "b"]), "pdq", near(h)) for h in base for _ in range(2)]
    entries += [BankEntry(ALLOW_BANK, "pdq", near(rng.choice(base))) for _ in range(3)]
    md5s = [f"{rng.getrandbits(128):032x}" for _ in range(3)]
    entries += [BankEntry("a", "md5", md5s[0]), BankEntry(ALLOW_BANK, "md5", md5s[1])]
    banks = HashBanks()
    banks.add_many(entries)
    contents = [
        Content(pdq=near(rng.choice(base)), pdq_quality=90, md5=rng.choice([*md5s, None]))
        for _ in range(40)
    ]
    assert banks.match_many(contents) == [brute_force_match(entries, c) for c in contents]
