"""The alert policy: documented defaults, custom TOML files, and bad files refused clearly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.policy import (
    DEFAULT_POLICY,
    AlertPolicy,
    Links,
    PredictionRule,
    VelocityRule,
    parse_duration,
)

MIN = 60_000

RULES = """
[[rule]]
severity = "warning"
shares = 10
window = "1m"

[[rule]]
severity = "high"
shares = 40
window = "2m"
"""


def write(tmp_path: Path, text: str | bytes, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str | bytes) -> str:
    """Load a bad file; return the one-line reason, which names the file."""
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        AlertPolicy.from_toml(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    return msg


# ---------------------------------------------------------------- defaults


def test_defaults_match_the_documented_policy() -> None:
    p = AlertPolicy.default()
    assert p.rules == (
        VelocityRule("warning", 25, 5 * MIN),
        VelocityRule("high", 100, 5 * MIN),
        VelocityRule("critical", 500, 15 * MIN),
    )
    assert p.predicted == PredictionRule("critical", 10_000.0, 2_000.0)
    assert p.cooldown_ms == 10 * MIN
    assert p.resolve_after_ms == 10 * MIN
    assert p.lowest == VelocityRule("warning", 25, 5 * MIN)
    assert p.windows_ms == (5 * MIN, 15 * MIN)
    assert DEFAULT_POLICY.name == "policy.toml" and DEFAULT_POLICY.is_file()


def test_default_links_fill_in_the_cluster() -> None:
    links = dict(AlertPolicy.default().links.render("c-42", "high", "a-1"))
    assert set(links) == {"runbook", "dashboard", "cascade"}
    assert "c-42" in links["dashboard"] and "c-42" in links["cascade"]
    assert "high" in links["runbook"]
    assert all("{" not in v for v in links.values())


@pytest.mark.parametrize(
    ("counts", "severity"),
    [
        ({}, None),
        ({5 * MIN: 24, 15 * MIN: 499}, None),
        ({5 * MIN: 25}, "warning"),
        ({5 * MIN: 99, 15 * MIN: 499}, "warning"),
        ({5 * MIN: 100}, "high"),
        ({5 * MIN: 100, 15 * MIN: 499}, "high"),
        ({5 * MIN: 30, 15 * MIN: 500}, "critical"),
        ({15 * MIN: 500}, "critical"),  # the highest rule met wins
        ({5 * MIN: 10_000, 15 * MIN: 10_000}, "critical"),
        ({MIN: 10_000}, None),  # a window no rule reads
    ],
)
def test_default_thresholds(counts: dict[int, int], severity: str | None) -> None:
    assert AlertPolicy.default().severity_for(counts) == severity


@given(st.dictionaries(st.sampled_from([MIN, 5 * MIN, 15 * MIN]), st.integers(0, 1_000)))
@settings(max_examples=200, deadline=None)
def test_every_rule_met_is_listed_lowest_first(counts: dict[int, int]) -> None:
    """Each rule met fires in its episode (none skipped for a higher one): all are listed,
    in severity order, and the highest is what ``severity_for`` names."""
    p = AlertPolicy.default()
    met = p.met(counts)
    assert [r for r in p.rules if counts.get(r.window_ms, 0) >= r.shares] == list(met)
    assert (met[-1].severity if met else None) == p.severity_for(counts)


def test_opening_allowances() -> None:
    """How many of the shares a rule counts may be older than the lowest rule's window before
    an early opening is no longer certain (streams.detector): n_H - n_L, over the part of
    the rule's window before the lowest one's; none when a rule needs fewer than the lowest."""
    assert AlertPolicy.default().opening_allowances == ((10 * MIN, 475),)
    low = VelocityRule("warning", 10, MIN)
    assert AlertPolicy((low, VelocityRule("high", 40, 2 * MIN))).opening_allowances == ((MIN, 30),)
    assert AlertPolicy((low, VelocityRule("high", 40, MIN // 2))).opening_allowances == ()
    assert AlertPolicy((low, VelocityRule("high", 9, MIN // 2))).opening_allowances is None
    assert AlertPolicy((low,)).opening_allowances == ()


# ---------------------------------------------------------------- custom files


def test_custom_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'cooldown = "90s"\nresolve_after = 120000\n'
        + RULES
        + '\n[predicted]\nseverity = "high"\nsize = 500\nlow = 100.5\n'
        + '\n[links]\nrunbook = "https://rb/{severity}"\ncascade = "https://c/{cluster_id}/{alert_id}"\n',
    )
    p = AlertPolicy.from_toml(path)
    assert p.rules == (VelocityRule("warning", 10, MIN), VelocityRule("high", 40, 2 * MIN))
    assert p.predicted == PredictionRule("high", 500.0, 100.5)
    assert (p.cooldown_ms, p.resolve_after_ms) == (90_000, 120_000)
    assert p.links == Links(
        runbook="https://rb/{severity}", cascade="https://c/{cluster_id}/{alert_id}"
    )
    assert p.links.render("c1", "high", "a1") == (
        ("runbook", "https://rb/high"),
        ("cascade", "https://c/c1/a1"),
    )
    assert p.severity_for({MIN: 10, 2 * MIN: 39}) == "warning"
    assert p.severity_for({MIN: 10, 2 * MIN: 40}) == "high"
    assert AlertPolicy.from_toml(str(path)) == p


def test_minimal_file_takes_the_defaults_for_the_rest(tmp_path: Path) -> None:
    p = AlertPolicy.from_toml(
        write(tmp_path, '[[rule]]\nseverity = "high"\nshares = 3\nwindow = "10s"\n')
    )
    assert p.rules == (VelocityRule("high", 3, 10_000),)
    assert p.predicted is None
    assert (p.cooldown_ms, p.resolve_after_ms) == (10 * MIN, 10 * MIN)
    assert p.links == Links() and p.links.render("c", "high", "a") == ()


def test_rules_may_be_listed_in_any_order(tmp_path: Path) -> None:
    """The file's order does not matter: rules are kept lowest severity first."""
    reversed_rules = "\n".join(reversed(RULES.strip().split("\n\n")))
    p = AlertPolicy.from_toml(write(tmp_path, reversed_rules))
    assert [r.severity for r in p.rules] == ["warning", "high"]


def test_default_file_is_a_valid_custom_file(tmp_path: Path) -> None:
    copy = write(tmp_path, DEFAULT_POLICY.read_text(encoding="utf-8"))
    assert AlertPolicy.from_toml(copy) == AlertPolicy.default()


# ---------------------------------------------------------------- bad files


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        AlertPolicy.from_toml(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[rule]\nseverity = 1", "not valid TOML"),
        ("cooldown = ", "not valid TOML"),
        ('cooldown = "5m"\ncooldown = "6m"\n' + RULES, "not valid TOML"),
        (b"\xff\xfe[[rule]]", "not valid TOML"),
    ],
)
def test_bad_toml(tmp_path: Path, text: str | bytes, needle: str) -> None:
    assert needle in refused(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[rule]]\nseverity = "apocalyptic"\nshares = 1\nwindow = "1m"\n', "apocalyptic"),
        ('[[rule]]\nseverity = "Warning"\nshares = 1\nwindow = "1m"\n', "Warning"),
        ("[[rule]]\nseverity = 3\nshares = 1\nwindow = '1m'\n", "unknown severity"),
        (RULES + '\n[predicted]\nseverity = "extreme"\nsize = 1\nlow = 1\n', "extreme"),
    ],
)
def test_unknown_severity(tmp_path: Path, text: str | bytes, needle: str) -> None:
    assert needle in refused(tmp_path, text)


@pytest.mark.parametrize(
    "window",
    [
        '"soon"',
        '"5"',
        '"5 minutes"',
        '"-5m"',
        '"5M"',
        '"1e3ms"',
        "-1",
        "true",
        "inf",
        "nan",
        '"0s"',
        "0",
        "[5]",
    ],
)
def test_bad_duration(tmp_path: Path, window: str) -> None:
    refused(tmp_path, f'[[rule]]\nseverity = "warning"\nshares = 5\nwindow = {window}\n')


@pytest.mark.parametrize("key", ["cooldown", "resolve_after"])
@pytest.mark.parametrize("value", ['"later"', "-5", "inf", "nan", "false"])
def test_bad_top_level_duration(tmp_path: Path, key: str, value: object) -> None:
    refused(tmp_path, f"{key} = {value}\n" + RULES)


@pytest.mark.parametrize(
    ("rules", "needle"),
    [
        # a higher severity met whenever the lower one is: the lower could never fire alone
        ((("warning", 100, "5m"), ("high", 25, "5m")), "out of order"),
        ((("warning", 25, "5m"), ("high", 25, "5m")), "out of order"),
        ((("warning", 25, "5m"), ("critical", 20, "15m")), "out of order"),
        ((("warning", 25, "5m"), ("high", 100, "5m"), ("critical", 50, "15m")), "out of order"),
        # one rule per severity
        ((("warning", 25, "5m"), ("warning", 50, "5m")), "one per severity"),
    ],
)
def test_rules_out_of_order(
    tmp_path: Path, rules: tuple[tuple[str, int, str], ...], needle: str
) -> None:
    text = "".join(
        f'[[rule]]\nseverity = "{s}"\nshares = {n}\nwindow = "{w}"\n\n' for s, n, w in rules
    )
    assert needle in refused(tmp_path, text)


def test_a_higher_rule_on_a_shorter_window_may_need_fewer_shares(tmp_path: Path) -> None:
    # 30 in 1 minute is not implied by 100 in 15 minutes, nor the reverse: both can fire alone
    text = (
        '[[rule]]\nseverity = "warning"\nshares = 100\nwindow = "15m"\n'
        '[[rule]]\nseverity = "high"\nshares = 30\nwindow = "1m"\n'
    )
    p = AlertPolicy.from_toml(write(tmp_path, text))
    assert p.severity_for({15 * MIN: 100, MIN: 29}) == "warning"
    assert p.severity_for({15 * MIN: 40, MIN: 30}) == "high"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "at least one velocity rule"),
        ('cooldown = "5m"\n', "at least one velocity rule"),
        ("rule = []\n", "at least one velocity rule"),
        ('[[rule]]\nseverity = "warning"\nwindow = "1m"\n', "shares"),
        ('[[rule]]\nseverity = "warning"\nshares = 3\n', "window"),
        ('[[rule]]\nshares = 3\nwindow = "1m"\n', "severity"),
        ('[[rule]]\nseverity = "warning"\nshares = 0\nwindow = "1m"\n', "at least 1"),
        ('[[rule]]\nseverity = "warning"\nshares = -4\nwindow = "1m"\n', "at least 1"),
        ('[[rule]]\nseverity = "warning"\nshares = "many"\nwindow = "1m"\n', "integer"),
        ('[[rule]]\nseverity = "warning"\nshares = 2.5\nwindow = "1m"\n', "integer"),
        ('[[rule]]\nseverity = "warning"\nshares = true\nwindow = "1m"\n', "integer"),
        ('[[rule]]\nseverity = "warning"\nshares = inf\nwindow = "1m"\n', "integer"),
        ("rule = 5\n", ""),
        ('rule = ["warning"]\n', ""),
        ('[rule]\nseverity = "warning"\n', ""),
        (RULES + '\n[predicted]\nseverity = "high"\nsize = "big"\nlow = 1\n', ""),
        (RULES + '\n[predicted]\nseverity = "high"\nlow = 1\n', "size"),
        ('predicted = "yes"\n' + RULES, ""),
        (RULES.replace("[[rule]]", "links = 'x'\n[[rule]]", 1), "links must be a table"),
        (RULES + '\n[links]\nrunbook = "https://rb/{clusterid}"\n', "placeholder"),
        (RULES + '\n[links]\ndashboard = "https://d/{0}"\n', "placeholder"),
        (RULES + '\n[links]\ncascade = "https://c/{cluster_id"\n', "placeholder"),
    ],
)
def test_other_bad_files(tmp_path: Path, text: str | bytes, needle: str) -> None:
    assert needle in refused(tmp_path, text)


def test_policy_object_refuses_rules_out_of_severity_order() -> None:
    with pytest.raises(ValueError, match="lowest severity first"):
        AlertPolicy(
            rules=(VelocityRule("high", 100, 5 * MIN), VelocityRule("warning", 25, 5 * MIN))
        )
    with pytest.raises(ValueError, match="at least one"):
        AlertPolicy(rules=())


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("250ms", 250),
        ("90s", 90_000),
        ("5m", 300_000),
        ("1.5m", 90_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        (" 5 m ", 300_000),
        ("0s", 0),
        (1500, 1500),
        (0, 0),
        (2.9, 2),
    ],
)
def test_parse_duration(value: object, ms: int) -> None:
    assert parse_duration(value) == ms


@pytest.mark.parametrize(
    "value",
    [
        "",
        "5",
        "m",
        "5 minutes",
        "5min",
        "-5m",
        "+5m",
        "5M",
        "1e3ms",
        "5m5s",
        "five m",
        -1,
        -0.5,
        True,
        False,
        None,
        [5],
        {"m": 5},
        math.inf,
        -math.inf,
        math.nan,
    ],
)
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert "\n" not in str(info.value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", "d"]))
@settings(max_examples=200, deadline=None)
def test_parse_duration_units(n: int, unit: str) -> None:
    factor = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[unit]
    assert parse_duration(f"{n}{unit}") == n * factor
    assert parse_duration(n * factor) == n * factor
