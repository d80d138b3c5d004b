"""The alert policy: when a spreading cluster deserves on-call's attention.

Read from TOML (``streams/policy.toml`` holds the documented defaults):
velocity rules per severity, a prediction rule, a cooldown between episodes,
how long velocity must stay low before an episode resolves, and the link
templates put on every alert.

>>> p = AlertPolicy.default()
>>> [(r.severity, r.shares, r.window_ms) for r in p.rules]
[('warning', 25, 300000), ('high', 100, 300000), ('critical', 500, 900000)]
>>> p.severity_for({300000: 120, 900000: 130})
'high'
>>> [r.severity for r in p.met({300000: 120, 900000: 130})]
['warning', 'high']
>>> parse_duration("90s"), parse_duration("2h"), parse_duration(1500)
(90000, 7200000, 1500)
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from graphs.prediction import DEFAULT_HORIZON_S
from streams.alerts import SEVERITIES, Severity, parse_duration, severity_rank

DEFAULT_POLICY: Final = Path(__file__).with_name("policy.toml")


@dataclass(frozen=True, slots=True)
class VelocityRule:
    """Fire ``severity`` at ``shares`` or more within ``window_ms`` of event time."""

    severity: Severity
    shares: int
    window_ms: int


@dataclass(frozen=True, slots=True)
class PredictionRule:
    """Fire ``severity`` when the predicted final size passes ``size``, its lower bound ``low``.

    A forecast from a handful of posts is an extrapolation of noise (one
    reshare by a large account, seconds after the upload, "predicts" tens of
    thousands), so the rule waits until the cluster has ``min_observed``
    posts.

    The sizes are predicted for ``horizon_s`` after the cluster was first
    seen (7 days by default, the span the shipped model was trained on):
    "will pass 10,000 reshares within 7 days".

    >>> rule = PredictionRule("critical", size=10_000, low=2_000, min_observed=50)
    >>> rule.fires(45_000, 22_000, observed=2), rule.fires(12_000, 2_500, observed=80)
    (False, True)
    >>> rule.horizon_s / 86_400
    7.0
    """

    severity: Severity
    size: float
    low: float
    min_observed: int = 50
    horizon_s: float = DEFAULT_HORIZON_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.horizon_s) and self.horizon_s > 0):
            raise ValueError(f"the prediction horizon must be positive, got {self.horizon_s!r}")

    def fires(self, size: float, low: float, observed: int) -> bool:
        return observed >= self.min_observed and size > self.size and low > self.low


@dataclass(frozen=True, slots=True)
class Links:
    """Templates for the runbook, dashboard and cascade links on each alert."""

    runbook: str = ""
    dashboard: str = ""
    cascade: str = ""

    def render(self, cluster_id: str, severity: str, alert_id: str) -> tuple[tuple[str, str], ...]:
        values = {"cluster_id": cluster_id, "severity": severity, "alert_id": alert_id}
        return tuple(
            (name, template.format_map(values))
            for name, template in (
                ("runbook", self.runbook),
                ("dashboard", self.dashboard),
                ("cascade", self.cascade),
            )
            if template
        )


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """The whole policy; build it with :meth:`from_toml` or :meth:`default`."""

    rules: tuple[VelocityRule, ...]
    predicted: PredictionRule | None = None
    cooldown_ms: int = 600_000
    resolve_after_ms: int = 600_000
    links: Links = Links()
    #: The lowest severity whose firing requests takedowns of every live post of the
    #: cluster (``None``: never; a person reviews first). ``high`` unless set.
    takedown: Severity | None = "high"

    def __post_init__(self) -> None:
        if not self.rules:
            raise ValueError("a policy needs at least one velocity rule")
        if self.takedown is not None and self.takedown not in SEVERITIES:
            raise ValueError(f"takedown must be a severity or none, not {self.takedown!r}")
        ranks = [severity_rank(r.severity) for r in self.rules]
        if ranks != sorted(ranks) or len(set(ranks)) != len(ranks):
            raise ValueError("velocity rules must be one per severity, lowest severity first")
        # A higher severity that is met whenever a lower one is (a window as long or
        # longer, no more shares) would make the lower severity never fire on its own.
        for i, low in enumerate(self.rules):
            for high in self.rules[i + 1 :]:
                if high.window_ms >= low.window_ms and high.shares <= low.shares:
                    raise ValueError(
                        f"rules out of order: {high.severity} ({high.shares} in "
                        f"{high.window_ms} ms) is met whenever {low.severity} ({low.shares} "
                        f"in {low.window_ms} ms) is"
                    )

    def requests_takedown(self, severity: str) -> bool:
        """Whether a firing at ``severity`` requests takedowns.

        >>> p = AlertPolicy.default()
        >>> p.requests_takedown("warning"), p.requests_takedown("critical")
        (False, True)
        >>> rules = [{"severity": "high", "shares": 9, "window": "1m"}]
        >>> AlertPolicy.from_dict({"rule": rules, "takedown": "none"}).requests_takedown("high")
        False
        """
        t = self.takedown
        return t is not None and severity_rank(severity) >= severity_rank(t)

    @property
    def lowest(self) -> VelocityRule:
        return self.rules[0]

    @property
    def windows_ms(self) -> tuple[int, ...]:
        return tuple(sorted({r.window_ms for r in self.rules}))

    def severity_for(self, counts: Mapping[int, int]) -> Severity | None:
        """The highest severity whose rule the counts (window ms -> shares) meet."""
        best: Severity | None = None
        for rule in self.rules:
            if counts.get(rule.window_ms, 0) >= rule.shares:
                best = rule.severity
        return best

    def met(self, counts: Mapping[int, int]) -> tuple[VelocityRule, ...]:
        """Every rule the counts (window ms -> shares) meet, lowest severity first.

        The detector fires each of them the first time it is met in an
        episode, whatever else fired before: a rule met is never skipped
        because a higher one was met at the same time, so whether an alert id
        exists never depends on the order in which events were seen (which is
        what lets the streaming worker send a firing before the watermark;
        see :mod:`streams.detector`).

        >>> p = AlertPolicy.default()
        >>> [r.severity for r in p.met({300000: 120, 900000: 130})]
        ['warning', 'high']
        >>> [r.severity for r in p.met({300000: 30, 900000: 600})]
        ['warning', 'critical']
        """
        return tuple(r for r in self.rules if counts.get(r.window_ms, 0) >= r.shares)

    @property
    def opening_allowances(self) -> tuple[tuple[int, int], ...] | None:
        """What each rule may count from before the lowest one's window, for an early opening.

        A streaming worker may announce the opening of an episode before the
        watermark reaches it only if the episode, however the events still
        to come open it, cannot resolve before the share it announces. An
        episode opened at ``t`` resolves ``resolve_after`` after the
        ``shares``-th latest share of the lowest rule leaves that rule's
        window. A rule ``H`` met at ``t`` counts ``n_H`` shares over its
        window; if no more than ``n_H - n_L`` of them are older than the
        lowest rule's window ending at the watermark, at least ``n_L`` are
        newer, and the episode lasts past ``watermark + resolve_after``.

        So, per rule whose window is longer than the lowest's, ``(span,
        allowance)``: the shares the worker has already applied in the
        ``span`` ms before the lowest rule's window ending at the watermark
        must be at most ``allowance``. A rule with a window no longer than the
        lowest's cannot reach further back, but must not need fewer shares
        (else an episode it opens may resolve at once): ``None`` when one
        does, and no episode is ever opened early.

        >>> AlertPolicy.default().opening_allowances   # critical: 475 of 500 may be older
        ((600000, 475),)
        >>> low = VelocityRule("warning", 25, 300000)
        >>> AlertPolicy((low, VelocityRule("high", 20, 60000))).opening_allowances is None
        True
        """
        low = self.lowest
        out = []
        for rule in self.rules[1:]:
            if rule.shares < low.shares:
                return None
            if rule.window_ms > low.window_ms:
                out.append((rule.window_ms - low.window_ms, rule.shares - low.shares))
        return tuple(out)

    @classmethod
    def default(cls) -> AlertPolicy:
        return cls.from_toml(DEFAULT_POLICY)

    @classmethod
    def from_toml(cls, path: str | Path) -> AlertPolicy:
        """Load a policy file; raises ``OSError`` or ``ValueError`` with a one-line reason."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p}: not valid TOML: {exc}") from None
        try:
            return cls.from_dict(data)
        except KeyError as exc:
            raise ValueError(f"{p}: missing key {exc}") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{p}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertPolicy:
        rules = []
        for raw in data.get("rule", []):
            sev = raw["severity"]
            if sev not in SEVERITIES:
                raise ValueError(f"unknown severity {sev!r}")
            shares = raw["shares"]
            if isinstance(shares, bool) or not isinstance(shares, int):
                raise ValueError(f"rule shares must be an integer, not {shares!r}")
            if shares < 1:
                raise ValueError("rule shares must be at least 1")
            window = parse_duration(raw["window"])
            if window <= 0:
                raise ValueError("rule window must be positive")
            rules.append(VelocityRule(sev, shares, window))
        rules.sort(key=lambda r: severity_rank(r.severity))
        predicted = None
        if "predicted" in data:
            raw = data["predicted"]
            if raw["severity"] not in SEVERITIES:
                raise ValueError(f"unknown severity {raw['severity']!r}")
            predicted = PredictionRule(
                raw["severity"],
                float(raw["size"]),
                float(raw["low"]),
                int(raw.get("min_observed", 50)),
                parse_duration(raw.get("horizon", "7d")) / 1000.0,
            )
        links = data.get("links", {})
        if not isinstance(links, Mapping):
            raise ValueError("links must be a table")
        link_templates = Links(
            runbook=str(links.get("runbook", "")),
            dashboard=str(links.get("dashboard", "")),
            cascade=str(links.get("cascade", "")),
        )
        try:  # a bad template must fail here, not when the first alert is rendered
            link_templates.render("cluster", "warning", "alert")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"a link template has a bad placeholder ({exc!r}); "
                "use {cluster_id}, {severity}, {alert_id}"
            ) from None
        takedown = data.get("takedown", "high")
        if takedown not in (*SEVERITIES, "none"):
            raise ValueError(f"takedown must be one of {', '.join(SEVERITIES)} or none")
        return cls(
            rules=tuple(rules),
            takedown=None if takedown == "none" else takedown,
            predicted=predicted,
            cooldown_ms=parse_duration(data.get("cooldown", "10m")),
            resolve_after_ms=parse_duration(data.get("resolve_after", "10m")),
            links=link_templates,
        )


def load_policy(path: Path | None) -> AlertPolicy:
    """The policy of the TOML file ``path`` (``None``: the default one): what ``replay`` and
    a worker alert by. One ``ValueError`` whatever went wrong, saying it is the policy's
    file and why (a worker said a missing one as ``[Errno 2] No such file or directory``).

    >>> load_policy(Path("/nowhere/policy.toml"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: cannot read policy /nowhere/policy.toml: [Errno 2] No such file or directory: ...
    """
    try:
        return AlertPolicy.from_toml(path) if path else AlertPolicy.default()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read policy {path}: {exc}") from None
