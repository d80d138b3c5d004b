"""Measure final-size prediction on real cascades: readers, evaluation loop, summary, plot.

Two input formats:

- ``seismic``: CSV ``relative_time_second,number_of_followers``, the
  original post first, a header line optional (the SEISMIC R package's
  data). One file is one cascade, named after the file.
- ``casflow``: one cascade per line,
  ``cascade_id<TAB>root_user<TAB>publish_epoch<TAB>count<TAB>paths``, paths
  separated by spaces, each ``u1/u2/.../uk:seconds`` (``uk`` reshared
  through ``u(k-1)``, ``seconds`` after the original). No follower counts:
  posts get the network average (``n_star``).

A bad line is reported with its file, line number and reason, and the rest
is read; nothing is dropped without a word. A cascade whose original post
(the first row of a ``seismic`` file) is unreadable is refused whole.

Sizes count reshares, as SEISMIC does: ``final`` is the number of reshares
at the end of the data, ``observed`` those at the observation time, the
original post not counted.

Examples
--------
>>> res = read_seismic("t,f\\n0,500\\n30,20\\n45,x\\n80,10\\n", "demo")
>>> [(c.name, c.final) for c in res.cascades]
[('demo', 2)]
>>> print(res.rejected[0])
demo:4: followers must be a whole number >= 0 or NA, got 'x'
>>> line = "7\\t1\\t1464739201\\t3\\t1:0 1/2:60 1/2/3:300"
>>> c = read_casflow(line, "weibo").cascades[0]
>>> c.name, c.final, c.posts[2].parent_id
('7', 2, '1/2')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from graphs.prediction import (
    DEFAULT_CALIBRATION,
    FIT_AGES_S,
    MODELS,
    Calibration,
    Features,
    Forecast,
    IncrementalPredictor,
    PredictorConfig,
    fit_calibration,
    forecast,
)
from graphs.seismic import N_STAR, predict_at
from streams.policy import AlertPolicy, PredictionRule

Format = Literal["seismic", "casflow"]
Split = Literal["none", "loo", "2fold"]
SPLITS: tuple[Split, ...] = ("none", "loo", "2fold")
FORMATS: tuple[Format, ...] = ("seismic", "casflow")

#: The horizon each format's data were collected over: what ``final`` means.
FORMAT_HORIZON_S: dict[str, float] = {"seismic": 7 * 86_400.0, "casflow": 86_400.0}

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def parse_seconds(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"30m"``, ``"2h"``, ``"7d"``.

    >>> parse_seconds("1h"), parse_seconds("90m"), parse_seconds("45")
    (3600.0, 5400.0, 45.0)
    """
    s = text.strip().lower()
    unit = _UNITS.get(s[-1:])
    number = s[:-1] if unit is not None else s
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. '3600', '90m', '1h', '7d')") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"a duration must be positive and finite, got {text!r}")
    return value


def parse_times(text: str) -> tuple[float, ...]:
    """Observation times from ``"1h,2h,6h"`` (sorted, without repeats).

    >>> parse_times("6h, 1h,2h,1h")
    (3600.0, 7200.0, 21600.0)
    """
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("no observation times given (use e.g. '1h,2h,6h')")
    return tuple(sorted({parse_seconds(p) for p in parts}))


# -- records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Post:
    """One post of a cascade: seconds after the original, followers (None: unknown)."""

    t_s: float
    followers: int | None
    original: bool = False
    post_id: str | None = None
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class CascadeData:
    """A cascade read from a file, posts in time order, the original first."""

    name: str
    posts: tuple[Post, ...]
    horizon_s: float
    source: str

    @property
    def final(self) -> int:
        """Reshares at the end of the data."""
        return sum(1 for p in self.posts if not p.original)

    def observed(self, obs_s: float) -> int:
        return sum(1 for p in self.posts if not p.original and p.t_s <= obs_s)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line (or a whole file, line 0) that could not be read, and why."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.source}:{self.line}: {self.reason}"
            if self.line
            else f"{self.source}: {self.reason}"
        )


@dataclass(frozen=True, slots=True)
class ReadResult:
    cascades: tuple[CascadeData, ...] = ()
    rejected: tuple[Rejected, ...] = ()

    def __add__(self, other: ReadResult) -> ReadResult:
        return ReadResult(self.cascades + other.cascades, self.rejected + other.rejected)


# -- readers ---------------------------------------------------------------------


def _lines(text: str | Iterable[str]) -> Iterable[tuple[int, str]]:
    src = text.splitlines() if isinstance(text, str) else text
    for n, line in enumerate(src, 1):
        yield n, line.rstrip("\r\n")


def _number(field_: str) -> float | None:
    try:
        v = float(field_)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_seismic(
    text: str | Iterable[str],
    name: str,
    *,
    horizon_s: float | None = None,
    source: str | None = None,
) -> ReadResult:
    """Read one cascade in the ``seismic`` CSV format (see the module docstring).

    Followers may be ``NA`` or empty (unknown). Rows need not be in time
    order; none may come before the original post.
    """
    horizon = horizon_s or FORMAT_HORIZON_S["seismic"]
    where = source or name
    rejected: list[Rejected] = []
    posts: list[Post] = []
    first_line = True
    for n, raw in _lines(text):
        line = raw.strip()
        if not line:
            continue
        fields = [f.strip().strip('"').strip() for f in line.split(",")]
        header, first_line = first_line and _number(fields[0]) is None, False
        if header and len(fields) == 2:
            continue
        try:
            post = _seismic_row(fields, original=not posts)
        except ValueError as exc:
            rejected.append(Rejected(where, n, str(exc)))
            if not posts:
                break  # without the original post there is no cascade
            continue
        if posts and post.t_s < posts[0].t_s:
            rejected.append(
                Rejected(
                    where, n, f"time {fields[0]} is before the original post ({posts[0].t_s:g})"
                )
            )
            continue
        posts.append(post)
    if not posts:
        why = "no data rows" if not rejected else "the first row (the original post) is unreadable"
        return ReadResult((), (*rejected, Rejected(where, 0, f"cascade refused: {why}")))
    origin = posts[0].t_s
    ordered = [posts[0], *sorted(posts[1:], key=lambda p: p.t_s)]
    rebased = tuple(Post(p.t_s - origin, p.followers, p.original) for p in ordered)
    return ReadResult((CascadeData(name, rebased, horizon, where),), tuple(rejected))


def _seismic_row(fields: list[str], *, original: bool) -> Post:
    if len(fields) != 2:
        raise ValueError(f"expected 2 comma-separated fields, got {len(fields)}")
    t = _number(fields[0])
    if t is None or t < 0:
        raise ValueError(f"time must be a number of seconds >= 0, got {fields[0]!r}")
    if fields[1] in ("", "NA"):
        return Post(t, None, original=original)
    f = _number(fields[1])
    if f is None or f < 0 or f != int(f):
        raise ValueError(f"followers must be a whole number >= 0 or NA, got {fields[1]!r}")
    return Post(t, int(f), original=original)


def read_casflow(
    text: str | Iterable[str], source: str, *, horizon_s: float | None = None
) -> ReadResult:
    """Read cascades in the ``casflow`` format, one per line (see the module docstring).

    A line is refused whole when any of its paths is malformed, when it has
    no root path (a single user at 0 s), or when ``count`` disagrees with the
    number of paths: a cascade with a hole would be measured wrong.
    """
    horizon = horizon_s or FORMAT_HORIZON_S["casflow"]
    cascades: list[CascadeData] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    for n, raw in _lines(text):
        if not raw.strip():
            continue
        try:
            cascade = _casflow_line(raw, source, horizon)
        except ValueError as exc:
            rejected.append(Rejected(source, n, str(exc)))
            continue
        if cascade.name in seen:
            rejected.append(Rejected(source, n, f"cascade {cascade.name!r} appears twice"))
            continue
        seen.add(cascade.name)
        cascades.append(cascade)
    return ReadResult(tuple(cascades), tuple(rejected))


def _casflow_line(raw: str, source: str, horizon: float) -> CascadeData:
    fields = raw.split("\t")
    if len(fields) != 5:
        raise ValueError(f"expected 5 tab-separated fields, got {len(fields)}")
    cid, root, epoch, count, paths = (f.strip() for f in fields)
    if not cid or not root:
        raise ValueError("empty cascade id or root user")
    if not epoch.isdigit():
        raise ValueError(f"publish_epoch must be whole seconds, got {epoch!r}")
    if not count.isdigit():
        raise ValueError(f"count must be a whole number, got {count!r}")
    tokens = paths.split()
    if len(tokens) != int(count):
        raise ValueError(f"count says {count} posts but there are {len(tokens)} paths")
    posts: list[Post] = []
    root_seen = False
    for i, tok in enumerate(tokens, 1):
        path, sep, sec = tok.rpartition(":")
        if not sep or not path or not sec.isdigit():
            raise ValueError(f"path {i} {tok[:40]!r} is not 'u1/.../uk:seconds'")
        users = path.split("/")
        if any(not u for u in users):
            raise ValueError(f"path {i} {tok[:40]!r} has an empty user")
        is_root = len(users) == 1
        if is_root:
            if root_seen or users[0] != root:
                raise ValueError(f"path {i} {tok[:40]!r}: a second root, or not the root user")
            root_seen = True
        parent = None if is_root else "/".join(users[:-1])
        posts.append(Post(float(sec), None, original=is_root, post_id=path, parent_id=parent))
    if not root_seen:
        raise ValueError(f"no root path ('{root}:0') among the {len(tokens)} paths")
    posts.sort(key=lambda p: (not p.original, p.t_s))
    if posts[0].t_s != 0.0:
        raise ValueError(f"the root path is at {posts[0].t_s:g} s, not 0")
    return CascadeData(cid, tuple(posts), horizon, source)


def detect_format(path: Path, head: str) -> Format:
    """``casflow`` for tab-separated lines, else ``seismic``."""
    if path.suffix.lower() == ".csv":
        return "seismic"
    first = next((line for line in head.splitlines() if line.strip()), "")
    return "casflow" if "\t" in first else "seismic"


def read_path(path: Path, fmt: str = "auto", *, horizon_s: float | None = None) -> ReadResult:
    """Read a file in ``fmt``; an unreadable file is one rejection, not an exception."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return ReadResult((), (Rejected(str(path), 0, f"cannot read: {exc}"),))
    kind: str = detect_format(path, text[:4096]) if fmt == "auto" else fmt
    if kind == "seismic":
        return read_seismic(text, path.stem, horizon_s=horizon_s, source=str(path))
    if kind == "casflow":
        return read_casflow(text, str(path), horizon_s=horizon_s)
    return ReadResult((), (Rejected(str(path), 0, f"unknown format {fmt!r}"),))


# -- evaluation ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One cascade at one observation time, by one model."""

    cascade: str
    obs_seconds: float
    observed: int
    infectiousness: float
    predicted: float
    low: float
    high: float
    final: int
    model: str

    @property
    def ape(self) -> float:
        """Absolute percentage error, as a fraction (``inf`` for an infinite prediction)."""
        if self.final == 0:
            return math.nan
        return abs(self.predicted - self.final) / self.final

    def to_dict(self) -> dict[str, Any]:
        return {
            "cascade": self.cascade,
            "obs_seconds": _num(self.obs_seconds),
            "observed": self.observed,
            "infectiousness": _num(self.infectiousness, 10),
            "predicted": _num(self.predicted),
            "low": _num(self.low),
            "high": _num(self.high),
            "final": self.final,
            "model": self.model,
        }


def _num(x: float, digits: int = 3) -> float | int | str | None:
    """JSON has no infinity: ``"inf"`` as in alerts; whole numbers stay whole."""
    if x != x:
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() and abs(x) < 2**53:
        return int(x)
    return round(float(x), digits)


@dataclass(frozen=True, slots=True)
class Trajectory:
    """One cascade's forecasts along a time grid (for the alert policy and the plot)."""

    cascade: str
    final: int
    times_s: tuple[float, ...]
    observed: tuple[int, ...]
    forecasts: dict[str, tuple[Forecast, ...]]


@dataclass(frozen=True, slots=True)
class Evaluation:
    at_seconds: tuple[float, ...]
    split: str
    rows: tuple[Row, ...]
    trajectories: tuple[Trajectory, ...]
    calibrations: dict[str, Calibration] = field(default_factory=dict)


def _sample_times(c: CascadeData, at: Sequence[float], step_s: float) -> list[float]:
    end = max(c.horizon_s, max(at))
    grid = list(np.arange(step_s, end + step_s, step_s))
    fit_ages = [a for a in FIT_AGES_S if a <= c.horizon_s]
    return sorted({float(t) for t in (*grid, *at, *fit_ages)})


def cascade_features(
    c: CascadeData, times_s: Sequence[float], config: PredictorConfig
) -> dict[float, tuple[Features, int]]:
    """Replay ``c`` through one incremental predictor; features and observed at each time."""
    pred = IncrementalPredictor(config)
    posts = sorted(c.posts, key=lambda p: p.t_s)
    out: dict[float, tuple[Features, int]] = {}
    i = 0
    for t in sorted(times_s):
        while i < len(posts) and posts[i].t_s <= t:
            p = posts[i]
            pred.add(p.t_s, p.followers, original=p.original)
            i += 1
        out[t] = (pred.features(t), pred.observed)
    return out


def _config(c: CascadeData, calibration: Calibration, n_star: float) -> PredictorConfig:
    return PredictorConfig(
        calibration=calibration, n_star=n_star, default_followers=n_star, horizon_s=c.horizon_s
    )


def evaluate(
    cascades: Sequence[CascadeData],
    at_seconds: Sequence[float],
    *,
    split: str = "none",
    calibration: Calibration = DEFAULT_CALIBRATION,
    n_star: float = N_STAR,
    step_s: float = 300.0,
) -> Evaluation:
    """Predict every cascade at every time with both models.

    ``split="loo"``: each cascade's ``best`` forecasts come from a
    calibration fitted on all the *other* cascades (leave-one-out), so no
    cascade is predicted by parameters fitted on itself. ``"2fold"``: the
    cascades in input order alternate between two halves, each predicted by
    a calibration fitted on the other half. ``"none"``: the given
    calibration for all.

    SEISMIC rows at the observation times are R's arithmetic on the full
    history (:func:`graphs.seismic.predict_at`); the trajectories along the
    time grid come from the incremental predictor, as in production.
    """
    if not cascades:
        raise ValueError("no cascades to evaluate")
    at = tuple(sorted(set(at_seconds)))
    feats: dict[str, dict[float, tuple[Features, int]]] = {}
    for c in cascades:
        times = _sample_times(c, at, step_s)
        feats[c.name] = cascade_features(c, times, _config(c, calibration, n_star))
    cals: dict[str, Calibration] = {}
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split != "none":
        training = {
            c.name: [(feats[c.name][a][0], c.final) for a in FIT_AGES_S if a <= c.horizon_s]
            for c in cascades
        }
        folds = len(cascades) if split == "loo" else 2
        fold = {c.name: i % folds for i, c in enumerate(cascades)}
        for k in range(folds):
            train = [training[c.name] for c in cascades if fold[c.name] != k]
            cal = fit_calibration(train) if train else calibration
            cals.update({c.name: cal for c in cascades if fold[c.name] == k})
    rows: list[Row] = []
    trajectories: list[Trajectory] = []
    for c in cascades:
        cfg = _config(c, cals.get(c.name, calibration), n_star)
        times_ = np.array([p.t_s for p in c.posts])
        followers = np.array([n_star if p.followers is None else p.followers for p in c.posts])
        for t in at:
            s = predict_at(times_, followers, t, n_star=n_star)
            rows.append(
                Row(
                    c.name,
                    t,
                    s.observed,
                    s.infectiousness,
                    s.predicted,
                    s.low,
                    s.high,
                    c.final,
                    "seismic",
                )
            )
            feat, observed = feats[c.name][t]
            f = forecast(feat, "best", cfg)
            rows.append(
                Row(c.name, t, observed, f.infectiousness, f.size, f.low, f.high, c.final, "best")
            )
        grid = sorted(feats[c.name])
        along = [feats[c.name][t] for t in grid]
        trajectories.append(
            Trajectory(
                cascade=c.name,
                final=c.final,
                times_s=tuple(grid),
                observed=tuple(o for _, o in along),
                forecasts={m: tuple(forecast(f, m, cfg) for f, _ in along) for m in MODELS},
            )
        )
    return Evaluation(at, split, tuple(rows), tuple(trajectories), cals)


# -- summary ---------------------------------------------------------------------


def default_rule() -> PredictionRule:
    rule = AlertPolicy.default().predicted
    return rule if rule is not None else PredictionRule("critical", 10_000.0, 2_000.0)


def fires(rule: PredictionRule, tr: Trajectory, i: int, f: Forecast) -> bool:
    """Whether the policy's rule fires on forecast ``i`` of a trajectory."""
    return rule.fires(f.size, f.low, tr.observed[i])


def _median(xs: Sequence[float]) -> float:
    vals = sorted(x for x in xs if x == x)
    if not vals:
        return math.nan
    mid = len(vals) // 2
    if len(vals) % 2:
        return vals[mid]
    a, b = vals[mid - 1], vals[mid]
    return a if a == b else (a + b) / 2.0


def summarize(ev: Evaluation, rule: PredictionRule | None = None) -> dict[str, Any]:
    """Median absolute percentage error by time and model, interval coverage, alert policy.

    ``rule`` is the alert policy's prediction rule (default: the default policy's).
    """
    if rule is None:
        rule = default_rule()
    out: dict[str, Any] = {
        "cascades": len(ev.trajectories),
        "split": ev.split,
        "mdape": {},
        "coverage": {},
        "alert": {"rule": {"size": rule.size, "low": rule.low, "min_observed": rule.min_observed}},
    }
    for m in MODELS:
        rows = [r for r in ev.rows if r.model == m]
        out["mdape"][m] = {
            str(int(t)): _num(_median([r.ape for r in rows if r.obs_seconds == t]), 4)
            for t in ev.at_seconds
        }
        out["coverage"][m] = {
            str(int(t)): _num(
                float(np.mean([r.low <= r.final <= r.high for r in rows if r.obs_seconds == t])), 3
            )
            for t in ev.at_seconds
        }
        if m == "best":
            # the no-growth baseline: what is seen now is all there will be
            out["mdape"]["observed"] = {
                str(int(t)): _num(
                    _median(
                        [
                            abs(r.observed - r.final) / r.final
                            for r in rows
                            if r.obs_seconds == t and r.final
                        ]
                    ),
                    4,
                )
                for t in ev.at_seconds
            }
        large = [tr for tr in ev.trajectories if tr.final > rule.size]
        small = [tr for tr in ev.trajectories if tr.final <= rule.size]
        shares: list[float] = []
        hours: list[float] = []
        for tr in large:
            hit = next((i for i, f in enumerate(tr.forecasts[m]) if fires(rule, tr, i, f)), None)
            if hit is not None:
                shares.append(tr.observed[hit] / tr.final)
                hours.append(tr.times_s[hit] / 3600.0)
        false = sum(
            1 for tr in small if any(fires(rule, tr, i, f) for i, f in enumerate(tr.forecasts[m]))
        )
        out["alert"][m] = {
            "large": len(large),
            "large_alerted": len(shares),
            "median_share_of_final_at_alert": _num(_median(shares), 3),
            "median_hours_to_alert": _num(_median(hours), 2),
            "small": len(small),
            "small_alerted": false,
        }
    return out


def render_summary(summary: dict[str, Any]) -> str:
    """The summary as a small text table."""
    times = list(summary["mdape"]["seismic"])
    head = "model     " + "".join(f"{_label(float(t)):>10}" for t in times)
    lines = [
        f"{summary['cascades']} cascades, split: {summary['split']}",
        "median absolute percentage error of the final size",
        head,
    ]
    for m in (*MODELS, "observed"):
        lines.append(f"{m:<10}" + "".join(f"{_pct(summary['mdape'][m][t]):>10}" for t in times))
    lines.append("(observed: the count so far, as if the cascade stopped now)")
    lines.append("share of cascades whose final size is inside the interval")
    for m in MODELS:
        lines.append(f"{m:<10}" + "".join(f"{_pct(summary['coverage'][m][t]):>10}" for t in times))
    rule = summary["alert"]["rule"]
    lines.append(f"alert rule: predicted > {rule['size']:g} and low > {rule['low']:g}")
    for m in MODELS:
        a = summary["alert"][m]
        lines.append(
            f"{m:<10}large cascades alerted {a['large_alerted']}/{a['large']}, "
            f"at {_pct(a['median_share_of_final_at_alert'])} of their final size "
            f"(median, {a['median_hours_to_alert']} h); "
            f"small cascades alerted {a['small_alerted']}/{a['small']}"
        )
    return "\n".join(lines)


def _label(t: float) -> str:
    return f"{t / 3600:g}h" if t % 3600 == 0 else f"{t:g}s"


def _pct(x: object) -> str:
    if x is None:
        return "-"
    if x == "inf":
        return "inf"
    return f"{100 * float(x):.1f}%"  # type: ignore[arg-type]


# -- plot ------------------------------------------------------------------------


def plot(ev: Evaluation, path: Path, cascade: str | None = None) -> str:
    """Write a PNG: one cascade's growth and prediction band, and error by time for all.

    Returns the name of the cascade drawn (default: the largest).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    trs = {tr.cascade: tr for tr in ev.trajectories}
    if cascade is None:
        cascade = max(ev.trajectories, key=lambda tr: tr.final).cascade
    if cascade not in trs:
        raise ValueError(f"no cascade {cascade!r} in this run")
    tr = trs[cascade]
    fig = Figure(figsize=(12, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    hours = np.array(tr.times_s) / 3600.0
    ax1.step(hours, tr.observed, where="post", color="black", label="observed reshares")
    best = tr.forecasts["best"]
    ax1.plot(hours, [f.size for f in best], color="tab:blue", label="best: predicted final")
    ax1.fill_between(
        hours,
        [f.low for f in best],
        [f.high for f in best],
        color="tab:blue",
        alpha=0.2,
        label="best: interval",
    )
    seis = [f.size if math.isfinite(f.size) else np.nan for f in tr.forecasts["seismic"]]
    ax1.plot(hours, seis, color="tab:orange", ls="--", label="SEISMIC (gaps: infinite)")
    ax1.axhline(tr.final, color="grey", ls=":", label=f"final ({tr.final})")
    ax1.set_yscale("log")
    ax1.set_xscale("log")
    ax1.set_xlabel("hours since the original post")
    ax1.set_ylabel("reshares")
    ax1.set_title(f"cascade {cascade}")
    ax1.legend(fontsize=8, loc="lower right")
    # error by observation time over the whole set, on the common grid
    grid = sorted(set.intersection(*(set(t.times_s) for t in ev.trajectories)))
    for m, colour in (("seismic", "tab:orange"), ("best", "tab:blue")):
        med = []
        for t in grid:
            errs = []
            for other in ev.trajectories:
                if other.final > 0:
                    f = other.forecasts[m][other.times_s.index(t)]
                    errs.append(abs(f.size - other.final) / other.final)
            med.append(_median(errs))
        ax2.plot(np.array(grid) / 3600.0, np.clip(med, 1e-3, 1e2), color=colour, label=m)
    for t in ev.at_seconds:
        ax2.axvline(t / 3600.0, color="grey", lw=0.5)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("observation time (hours)")
    ax2.set_ylabel("median absolute percentage error (top: infinite)")
    ax2.set_title(f"{len(ev.trajectories)} cascades, split: {ev.split}")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return cascade


def render_rows(rows: Sequence[Row]) -> str:
    """Rows as a fixed-width text table."""
    lines = [
        f"{'cascade':<16}{'obs':>6}{'observed':>10}{'predicted':>12}"
        f"{'low':>10}{'high':>10}{'final':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r.cascade[:16]:<16}{_label(r.obs_seconds):>6}{r.observed:>10}{r.predicted:>12.1f}"
            f"{r.low:>10.1f}{r.high:>10.1f}{r.final:>8}"
        )
    return "\n".join(lines)


def fit_all(
    cascades: Sequence[CascadeData],
    n_star: float = N_STAR,
) -> Calibration:
    """The calibration fitted on all ``cascades`` (how the shipped one was made)."""
    training = []
    for c in cascades:
        ages = [a for a in FIT_AGES_S if a <= c.horizon_s]
        feats = cascade_features(c, ages, _config(c, DEFAULT_CALIBRATION, n_star))
        training.append([(feats[a][0], c.final) for a in ages])
    return fit_calibration(training)
