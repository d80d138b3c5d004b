"""Measure final-size prediction on real cascades: readers, evaluation loop, summary, plot.

Three input formats:

- ``twitter``: the SEISMIC paper's Twitter data (``RT<n>.txt``), one file
  per cascade: a first line ``<number of retweets> <start day>``, then one
  line per post, ``<seconds after the original> <followers>``, the original
  tweet first. The count must match the lines: a file that disagrees, or
  has any malformed line, is refused whole (its final size would be wrong),
  each bad line named with its file and line number. A directory is read
  file by file.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from graphs.growth import (
    DEFAULT_GROWTH,
    INPUTS,
    RICH_GROWTH,
    SCALE_FREE_INPUTS,
    SEISMIC_INPUTS,
    GrowthModel,
    fit_growth,
    kfold,
)
from graphs.prediction import (
    DEFAULT_CALIBRATION,
    FIT_AGES_S,
    GROWTH_AGES_S,
    MODELS,
    Calibration,
    Features,
    Forecast,
    IncrementalPredictor,
    PredictorConfig,
    fit_calibration,
    forecast,
    forecast_given_selection,
)
from graphs.seismic import N_STAR, predict_at
from graphs.tideh import predict_tideh
from streams import boosting
from streams.policy import AlertPolicy, PredictionRule

Format = Literal["twitter", "seismic", "casflow"]
Split = Literal["none", "loo", "2fold", "kfold"]
SPLITS: tuple[Split, ...] = ("none", "loo", "2fold", "kfold")
FORMATS: tuple[Format, ...] = ("twitter", "seismic", "casflow")

#: The horizon each format's data were collected over: what ``final`` means.
FORMAT_HORIZON_S: dict[str, float] = {
    "twitter": 7 * 86_400.0,
    "seismic": 7 * 86_400.0,
    "casflow": 86_400.0,
}

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
    #: When the original was posted, in days (the ``twitter`` format's first line; its
    #: fraction is the time of day TiDeH's daily cycle needs). None: not known.
    start_day: float | None = None

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


def read_twitter(
    text: str | Iterable[str],
    name: str,
    *,
    horizon_s: float | None = None,
    source: str | None = None,
) -> ReadResult:
    """Read one cascade in the ``twitter`` format (see the module docstring).

    Examples
    --------
    >>> c = read_twitter("2 0.5\\n0 900\\n12 40\\n30.5 7\\n", "RT1").cascades[0]
    >>> c.name, c.final, c.posts[2].t_s, c.posts[0].followers, c.start_day
    ('RT1', 2, 30.5, 900, 0.5)
    >>> for r in read_twitter("3 0.5\\n0 900\\n12 forty\\n", "RT2", source="d/RT2.txt").rejected:
    ...     print(r)
    d/RT2.txt:3: followers must be a whole number >= 0, got 'forty'
    d/RT2.txt: cascade refused: the first line says 3 retweets, the file has 0 readable
    """
    horizon = horizon_s or FORMAT_HORIZON_S["twitter"]
    where = source or name
    rejected: list[Rejected] = []
    posts: list[Post] = []
    declared: int | None = None
    start_day = 0.0
    for n, raw in _lines(text):
        fields = raw.split()
        if not fields:
            continue
        try:
            if declared is None:
                declared, start_day = _twitter_head(fields)
                continue
            posts.append(_twitter_row(fields, original=not posts))
        except ValueError as exc:
            rejected.append(Rejected(where, n, str(exc)))
            if declared is None:
                break
    why = None
    if declared is None:
        why = "no first line '<number of retweets> <start day>'"
    elif not posts or posts[0].t_s != 0.0:
        why = "the original tweet (the first post, at 0 s) is missing"
    elif rejected or len(posts) - 1 != declared:
        why = f"the first line says {declared} retweets, the file has {len(posts) - 1} readable"
    if why is not None:
        return ReadResult((), (*rejected, Rejected(where, 0, f"cascade refused: {why}")))
    ordered = (posts[0], *sorted(posts[1:], key=lambda p: p.t_s))
    return ReadResult((CascadeData(name, ordered, horizon, where, start_day),), ())


def _whole(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def _twitter_head(fields: list[str]) -> tuple[int, float]:
    day = _number(fields[1]) if len(fields) == 2 else None
    if len(fields) != 2 or not _whole(fields[0]) or day is None:
        raise ValueError(
            f"the first line must be '<number of retweets> <start day>', got {' '.join(fields)!r}"
        )
    return int(fields[0]), day


def _twitter_row(fields: list[str], *, original: bool) -> Post:
    if len(fields) != 2:
        raise ValueError(f"expected '<seconds> <followers>', got {len(fields)} fields")
    t = _number(fields[0])
    if t is None or t < 0:
        raise ValueError(f"time must be a number of seconds >= 0, got {fields[0]!r}")
    if not _whole(fields[1]):
        raise ValueError(f"followers must be a whole number >= 0, got {fields[1]!r}")
    return Post(t, int(fields[1]), original=original)


def detect_format(path: Path, head: str) -> Format:
    """``casflow`` for tab-separated lines, ``twitter`` for two numbers, else ``seismic``.

    >>> detect_format(Path("RT7.txt"), "2045 2.81946759259\\n0 3094580\\n")
    'twitter'
    >>> detect_format(Path("x.txt"), "0,300\\n")
    'seismic'
    """
    if path.suffix.lower() == ".csv":
        return "seismic"
    first = next((line for line in head.splitlines() if line.strip()), "")
    if "\t" in first:
        return "casflow"
    parts = first.split()
    if len(parts) == 2 and "," not in first and all(_number(p) is not None for p in parts):
        return "twitter"
    return "seismic"


def read_path(path: Path, fmt: str = "auto", *, horizon_s: float | None = None) -> ReadResult:
    """Read a file (or every file of a directory, by name) in ``fmt``.

    An unreadable file is one rejection, not an exception.
    """
    if path.is_dir():
        out = ReadResult()
        for child in sorted(p for p in path.iterdir() if p.is_file() and p.suffix != ".md"):
            out = out + read_path(child, fmt, horizon_s=horizon_s)
        return out
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return ReadResult((), (Rejected(str(path), 0, f"cannot read: {exc}"),))
    kind: str = detect_format(path, text[:4096]) if fmt == "auto" else fmt
    if kind == "seismic":
        return read_seismic(text, path.stem, horizon_s=horizon_s, source=str(path))
    if kind == "casflow":
        return read_casflow(text, str(path), horizon_s=horizon_s)
    if kind == "twitter":
        return read_twitter(text, path.stem, horizon_s=horizon_s, source=str(path))
    return ReadResult((), (Rejected(str(path), 0, f"unknown format {fmt!r}"),))


# -- evaluation ------------------------------------------------------------------

#: Models with a row per cascade and observation time. ``best`` is the
#: production forecast (fitted allowing for the training data's selection).
#: ``best|sel`` is the same model *given* the selection (the final size is at
#: least the data set's smallest cascade: 2,002 for the Twitter data), which
#: a worker cannot know. ``rich`` and ``rich|sel``: the same with Cheng et
#: al.'s early-growth inputs too (:data:`graphs.growth.RICH_GROWTH`).
#: ``sized|sel``: the same truncated law with the size itself among its
#: inputs (``log1p(observed)``, its square and products), fitted at the
#: observation times, given the selection: the size terms fit
#: the selected sample's law better, but before the selection they are
#: identified for small clusters only by the normal tail (the law promises
#: thousands to a cluster of 5), so it is a row, not a forecast. ``gbm`` and
#: ``gbm+hawkes`` are gradient boosting on early-growth features, without and
#: with the Hawkes figures (:mod:`streams.boosting`; they learn the selection; rows only when
#: scikit-learn is installed). ``log-linear`` is Szabo and Huberman's ``log
#: final = log observed + c(t)``; ``floor`` predicts ``max(observed, v(t))``
#: with ``v`` the one number that fits the training cascades best: it knows
#: nothing of the cascade, only what sizes the data set holds, and shows how
#: much of a score the data's selection alone gives. ``tideh``: Kobayashi and
#: Lambiotte's time-dependent Hawkes process with the paper's parameters, fitted
#: on each cascade's own history (:mod:`graphs.tideh`; out of fold by
#: construction).
ROW_MODELS: tuple[str, ...] = (
    "seismic",
    "tideh",
    "best",
    "rich",
    "best|sel",
    "rich|sel",
    "sized|sel",
    "gbm",
    "gbm+hawkes",
    "amplified",
    "log-linear",
    "floor",
    "observed",
)
#: Models that condition on the data set's selection (they may not be shipped).
GIVEN_SELECTION: tuple[str, ...] = (
    "best|sel",
    "rich|sel",
    "sized|sel",
    "gbm",
    "gbm+hawkes",
    "floor",
)
#: Models whose rows carry an interval (coverage is measured for these).
BANDED: tuple[str, ...] = (
    "seismic",
    "best",
    "rich",
    "best|sel",
    "rich|sel",
    "sized|sel",
    "amplified",
    "log-linear",
)


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

    @property
    def covered(self) -> bool:
        return self.low <= self.final <= self.high

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
    #: When each reshare came (seconds after the original), in order.
    reshare_s: tuple[float, ...] = ()

    def passes(self, size: float) -> float | None:
        """When the cascade first held more than ``size`` reshares (None: never)."""
        k = math.floor(size)
        return self.reshare_s[k] if 0 <= k < len(self.reshare_s) else None


@dataclass(frozen=True, slots=True)
class Fitted:
    """Every model's parameters fitted on one training set (the other folds)."""

    growth: GrowthModel
    calibration: Calibration
    #: per observation time: (c, q_low, q_high) of ``log((final+1)/(observed+1))``
    log_linear: dict[float, tuple[float, float, float]]
    #: per observation time: the floor ``v``
    floor: dict[float, float]
    trained_on: frozenset[str]
    #: per row model (``gbm``, ``gbm+hawkes``) and observation time (empty without sklearn)
    boosted: dict[str, dict[float, boosting.BoostedGrowth]] = field(default_factory=dict)
    #: the ``sized|sel`` row's law (every input, the size too), at the observation times
    sized: GrowthModel | None = None
    #: the ``rich`` model (None: the shipped one)
    rich: GrowthModel | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    at_seconds: tuple[float, ...]
    split: str
    rows: tuple[Row, ...]
    trajectories: tuple[Trajectory, ...]
    #: each cascade's fold (-1: predicted by the shipped parameters)
    fold_of: dict[str, int] = field(default_factory=dict)
    #: each fold's parameters and the cascades they were fitted on
    fitted: dict[int, Fitted] = field(default_factory=dict)
    folds: int = 0
    seed: int = 0


def _sample_times(c: CascadeData, at: Sequence[float], step_s: float) -> list[float]:
    """The grid: every ``step_s`` for a day, then hourly, to the horizon; the fit ages."""
    end = max(c.horizon_s, max(at))
    day = min(end, 86_400.0)
    grid = [*np.arange(step_s, day + step_s / 2, step_s)]
    grid += [*np.arange(day + 3600.0, end + 1.0, max(step_s, 3600.0))]
    fit_ages = [a for a in (*FIT_AGES_S, *GROWTH_AGES_S) if a <= c.horizon_s]
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


def _config(
    c: CascadeData,
    n_star: float,
    calibration: Calibration = DEFAULT_CALIBRATION,
    growth: GrowthModel = DEFAULT_GROWTH,
    rich: GrowthModel = RICH_GROWTH,
) -> PredictorConfig:
    return PredictorConfig(
        growth=growth,
        rich=rich,
        calibration=calibration,
        n_star=n_star,
        default_followers=n_star,
        horizon_s=c.horizon_s,
    )


Feats = dict[str, dict[float, tuple[Features, int]]]


def growth_samples(
    cascades: Sequence[CascadeData], feats: Feats, n_star: float
) -> list[tuple[int, float, tuple[float, ...], float, float]]:
    """The growth model's training samples: each cascade at each fit age before its horizon."""
    out = []
    for i, c in enumerate(cascades):
        for a in GROWTH_AGES_S:
            if a >= c.horizon_s:
                continue
            f, n = feats[c.name][a]
            out.append((i, a, f.inputs(n_star), float(n), float(c.final)))
    return out


def fit_growth_on(
    cascades: Sequence[CascadeData],
    feats: Feats,
    n_star: float = N_STAR,
    *,
    folds: int = 10,
    seed: int = 0,
    provenance: str = "",
    selected_at: float | None = None,
    inputs: int = SEISMIC_INPUTS,
) -> GrowthModel:
    """The ``best`` model fitted on ``cascades`` (features already computed).

    ``selected_at``: every cascade of the data set has at least this many
    reshares, by the data set's choice (default: the smallest of
    ``cascades``; a sample chosen for size is taken as chosen at its
    smallest cascade). ``inputs``: how many of ``INPUTS`` it reads
    (``SCALE_FREE_INPUTS``: the ``rich`` model).
    """
    horizon = max(c.horizon_s for c in cascades)
    return fit_growth(
        growth_samples(cascades, feats, n_star),
        GROWTH_AGES_S,
        selected_at=float(min(c.final for c in cascades) if selected_at is None else selected_at),
        folds=folds,
        seed=seed,
        horizon_s=horizon,
        provenance=provenance,
        inputs=inputs,
    )


def _fit(
    train: Sequence[CascadeData],
    feats: Feats,
    at: Sequence[float],
    n_star: float,
    seed: int,
    selected_at: float | None = None,
    boosted: bool = True,
) -> Fitted:
    """Fit every model on ``train`` and nothing else (``selected_at``: the data set's)."""
    growth = fit_growth_on(train, feats, n_star, seed=seed, selected_at=selected_at)
    rich = fit_growth_on(
        train, feats, n_star, seed=seed, selected_at=selected_at, inputs=SCALE_FREE_INPUTS
    )
    at_samples = [
        (i, t, feats[c.name][t][0].inputs(n_star), float(feats[c.name][t][1]), float(c.final))
        for i, c in enumerate(train)
        for t in at
        if t < c.horizon_s
    ]
    sized = None
    if len(train) >= 8:  # the ridge keeps 16 coefficients well posed, if not telling
        sized = fit_growth(
            at_samples,
            at,
            selected_at=growth.selected_at,
            seed=seed,
            horizon_s=growth.horizon_s,
            inputs=len(INPUTS),
        )
    calibration = fit_calibration(
        [[(feats[c.name][a][0], c.final) for a in FIT_AGES_S if a <= c.horizon_s] for c in train]
    )
    log_linear: dict[float, tuple[float, float, float]] = {}
    floor: dict[float, float] = {}
    for t in at:
        obs = np.array([feats[c.name][t][1] for c in train], dtype=np.float64)
        fin = np.array([c.final for c in train], dtype=np.float64)
        ratio = np.log1p(fin) - np.log1p(obs)
        c0 = float(np.median(ratio))
        resid = ratio - c0
        log_linear[t] = (c0, float(np.quantile(resid, 0.1)), float(np.quantile(resid, 0.9)))
        candidates = np.unique(np.quantile(fin, np.linspace(0.0, 1.0, 201)))
        errs = [float(np.median(np.abs(np.maximum(obs, v) - fin) / fin)) for v in candidates]
        floor[t] = float(candidates[int(np.argmin(errs))])
    trees: dict[str, dict[float, boosting.BoostedGrowth]] = {}
    if boosted and boosting.available():
        for model in ("gbm", "gbm+hawkes"):
            trees[model] = {}
            for t in at:
                x = np.array([_boost_inputs(c, feats, t, n_star, model) for c in train])
                obs = np.array([feats[c.name][t][1] for c in train], dtype=np.float64)
                y = np.log1p([c.final for c in train]) - np.log1p(obs)
                trees[model][t] = boosting.BoostedGrowth(seed).fit(x, y)
    trained_on = frozenset(c.name for c in train)
    return Fitted(growth, calibration, log_linear, floor, trained_on, trees, sized, rich)


def _boost_inputs(c: CascadeData, feats: Feats, t: float, n_star: float, model: str) -> list[float]:
    """The boosted rows' inputs for ``c`` at ``t`` (``gbm+hawkes``: the Hawkes figures too)."""
    f = [n_star if p.followers is None else p.followers for p in c.posts]
    x = boosting.early_growth([p.t_s for p in c.posts], f, t)
    if model == "gbm+hawkes":
        x += feats[c.name][t][0].inputs(n_star)[:3]
    return x


def _folds(cascades: Sequence[CascadeData], split: str, folds: int, seed: int) -> dict[str, int]:
    names = [c.name for c in cascades]
    if split == "loo":
        return {n: i for i, n in enumerate(names)}
    if split == "2fold":
        return {n: i % 2 for i, n in enumerate(names)}
    return dict(zip(names, kfold(len(names), folds, seed), strict=True))


def evaluate(
    cascades: Sequence[CascadeData],
    at_seconds: Sequence[float],
    *,
    split: str = "none",
    folds: int = 10,
    seed: int = 0,
    train: Sequence[CascadeData] | None = None,
    n_star: float = N_STAR,
    step_s: float = 300.0,
    boosted: bool = True,
) -> Evaluation:
    """Predict every cascade at every time with every model.

    ``split="kfold"``: the cascades are dealt into ``folds`` folds by a
    seeded shuffle; each fold is predicted by parameters fitted on the
    other folds only (the growth model's own conformal band comes from
    cross-fits *inside* those). ``"loo"``: one fold per cascade. ``"2fold"``:
    input order alternates between two halves. ``"none"``: the shipped
    parameters for all (the baselines that need fitting are left out).
    ``train``: every model fitted on those cascades, all of ``cascades``
    predicted (trained on one data set, tested on another). ``boosted``:
    the gradient-boosting rows too (when scikit-learn is installed; they
    take most of a small run's time).

    SEISMIC rows at the observation times are R's arithmetic on the full
    history (:func:`graphs.seismic.predict_at`); the trajectories along the
    time grid come from the incremental predictor, as in production.
    """
    if not cascades:
        raise ValueError("no cascades to evaluate")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    names = [c.name for c in cascades]
    if len(set(names)) != len(names):
        raise ValueError("cascade names must be unique")
    at = tuple(sorted(set(at_seconds)))
    everyone = [*cascades, *(train or ())]
    feats: Feats = {}
    for c in everyone:
        feats[c.name] = cascade_features(c, _sample_times(c, at, step_s), _config(c, n_star))
    fold_of: dict[str, int]
    fitted: dict[int, Fitted] = {}
    smallest = float(min(c.final for c in cascades))
    if train is not None:
        if not train or set(names) & {c.name for c in train}:
            raise ValueError("the training cascades must be others than those predicted")
        split = "train"
        fold_of = dict.fromkeys(names, 0)
        fitted[0] = _fit(train, feats, at, n_star, seed, boosted=boosted)
    elif split == "none":
        fold_of = dict.fromkeys(names, -1)
    else:
        fold_of = _folds(cascades, split, folds, seed)
        for k in sorted(set(fold_of.values())):
            rest = [c for c in cascades if fold_of[c.name] != k]
            # the selection is the data set's (documented), not the training folds' smallest
            fitted[k] = _fit(rest, feats, at, n_star, seed, selected_at=smallest, boosted=boosted)
    rows: list[Row] = []
    trajectories: list[Trajectory] = []
    for c in cascades:
        fit = fitted.get(fold_of[c.name])
        if fit is not None and c.name in fit.trained_on:
            raise ValueError(f"cascade {c.name} would be predicted by parameters fitted on it")
        cfg = _config(c, n_star)
        if fit is not None:
            cfg = _config(c, n_star, fit.calibration, fit.growth, fit.rich or RICH_GROWTH)
        times_ = np.array([p.t_s for p in c.posts])
        followers = np.array([n_star if p.followers is None else p.followers for p in c.posts])
        day_h = 24.0 * (c.start_day % 1.0) if c.start_day is not None else 0.0
        for t in at:
            s = predict_at(times_, followers, t, n_star=n_star)
            feat, n = feats[c.name][t]
            q = feat.infectiousness
            td = predict_tideh(times_, followers, t, c.horizon_s, start_h=day_h).size
            out = [
                ("seismic", s.infectiousness, s.predicted, s.low, s.high),
                ("tideh", q, td, td, td),
                *((m, q, *forecast(feat, m, cfg)[:3]) for m in ("best", "rich", "amplified")),
                ("observed", q, float(n), float(n), float(n)),
            ]
            if fit is not None:
                c0, lo, hi = fit.log_linear[t]
                ll = (n + 1.0) * math.exp(c0) - 1.0
                out.append(
                    (
                        "log-linear",
                        q,
                        ll,
                        max(n, (ll + 1) * math.exp(lo) - 1),
                        (ll + 1) * math.exp(hi) - 1,
                    )
                )
                v = max(float(n), fit.floor[t])
                out.append(("floor", q, v, v, v))
                for m, by_t in fit.boosted.items():
                    x = np.array([_boost_inputs(c, feats, t, n_star, m)])
                    b = float(by_t[t].predict(x, np.array([float(n)]))[0])
                    out.append((m, q, b, b, b))
            sel = cfg.growth.selected_at
            if 0 < sel <= smallest:  # the data evaluated were selected as the training data
                out.append(("best|sel", q, *forecast_given_selection(feat, cfg, sel)[:3]))
                rich_sel = forecast_given_selection(feat, cfg, sel, "rich")
                out.append(("rich|sel", q, *rich_sel[:3]))
                if fit is not None and fit.sized is not None:
                    sized = replace(cfg, growth=fit.sized)
                    out.append(("sized|sel", q, *forecast_given_selection(feat, sized, sel)[:3]))
            rows += [
                Row(c.name, t, s.observed if m == "seismic" else n, inf, p, lo_, hi_, c.final, m)
                for m, inf, p, lo_, hi_ in out
            ]
        grid = sorted(feats[c.name])
        along = [feats[c.name][t] for t in grid]
        trajectories.append(
            Trajectory(
                cascade=c.name,
                final=c.final,
                times_s=tuple(grid),
                observed=tuple(o for _, o in along),
                forecasts={m: tuple(forecast(f, m, cfg) for f, _ in along) for m in MODELS},
                reshare_s=tuple(p.t_s for p in c.posts if not p.original),
            )
        )
    order = {m: i for i, m in enumerate(ROW_MODELS)}
    rows.sort(key=lambda r: (order[r.model], names.index(r.cascade), r.obs_seconds))
    return Evaluation(at, split, tuple(rows), tuple(trajectories), fold_of, fitted, folds, seed)


# -- summary ---------------------------------------------------------------------


def default_rule() -> PredictionRule:
    rule = AlertPolicy.default().predicted
    return rule if rule is not None else PredictionRule("critical", 10_000.0, 2_000.0)


def rule_settings(rule: PredictionRule) -> tuple[PredictionRule, ...]:
    """The rule as configured, then with its other settings moved one step each way."""
    return (
        rule,
        replace(rule, size=rule.size / 2),
        replace(rule, size=rule.size * 2),
        replace(rule, low=0.0),
        replace(rule, low=rule.size / 2),
        # the band's low end above the size: ~90% sure, if the band is calibrated
        replace(rule, low=rule.size),
        replace(rule, min_observed=max(rule.min_observed * 10, 500)),
    )


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


def judge_rule(ev: Evaluation, rule: PredictionRule, model: str) -> dict[str, Any]:
    """The rule run on one model's forecasts along every trajectory.

    ``precision``: of the cascades it fired on, the share whose final size
    passed ``rule.size``. ``recall``: of those that passed it, the share it
    fired on at all; ``recall_ahead``: ... before they passed it.
    ``median_lead_hours``: how long before passing it fired (negative:
    after), over the passing cascades it fired on.
    """
    large = small_alerted = large_alerted = ahead = 0
    leads: list[float] = []
    shares: list[float] = []
    hours: list[float] = []
    for tr in ev.trajectories:
        hit = next(
            (i for i, f in enumerate(tr.forecasts[model]) if fires(rule, tr, i, f)),
            None,
        )
        passed = tr.passes(rule.size)
        if passed is not None:
            large += 1
        if hit is None:
            continue
        if passed is None:
            small_alerted += 1
            continue
        large_alerted += 1
        lead = (passed - tr.times_s[hit]) / 3600.0
        ahead += lead > 0
        leads.append(lead)
        shares.append(tr.observed[hit] / tr.final)
        hours.append(tr.times_s[hit] / 3600.0)
    fired = large_alerted + small_alerted
    return {
        "large": large,
        "large_alerted": large_alerted,
        "small": len(ev.trajectories) - large,
        "small_alerted": small_alerted,
        "precision": _num(large_alerted / fired, 3) if fired else None,
        "recall": _num(large_alerted / large, 3) if large else None,
        "recall_ahead": _num(ahead / large, 3) if large else None,
        "median_lead_hours": _num(_median(leads), 2),
        "median_share_of_final_at_alert": _num(_median(shares), 3),
        "median_hours_to_alert": _num(_median(hours), 2),
    }


def summarize(ev: Evaluation, rule: PredictionRule | None = None) -> dict[str, Any]:
    """Median absolute percentage error and coverage by time and model, per fold, the rule.

    ``rule`` is the alert policy's prediction rule (default: the default policy's).
    """
    if rule is None:
        rule = default_rule()
    finals = sorted(tr.final for tr in ev.trajectories)
    models = [m for m in ROW_MODELS if any(r.model == m for r in ev.rows)]
    out: dict[str, Any] = {
        "cascades": len(ev.trajectories),
        "split": ev.split,
        "final": {"min": finals[0], "median": _num(_median(finals)), "max": finals[-1]},
        "mdape": {},
        "coverage": {},
        "per_fold": {},
        "alert": {"rule": _rule_dict(rule)},
        "alert_settings": [],
    }
    if ev.split == "kfold":
        out["folds"], out["seed"] = ev.folds, ev.seed
    at_t: dict[tuple[str, float], list[Row]] = {}
    for r in ev.rows:
        at_t.setdefault((r.model, r.obs_seconds), []).append(r)
    for m in models:
        rows_ = {t: at_t.get((m, t), []) for t in ev.at_seconds}
        out["mdape"][m] = {str(int(t)): _num(_median([r.ape for r in rows_[t]]), 4) for t in rows_}
        if m in BANDED:
            out["coverage"][m] = {
                str(int(t)): _num(float(np.mean([r.covered for r in rows_[t]])), 3) for t in rows_
            }
    if ev.fitted and ev.split != "loo":
        for m in ("seismic", "best", "rich"):
            out["per_fold"][m] = {
                str(k): {
                    str(int(t)): _num(
                        _median([r.ape for r in at_t[(m, t)] if ev.fold_of[r.cascade] == k]),
                        4,
                    )
                    for t in ev.at_seconds
                }
                for k in sorted(ev.fitted)
            }
    for m in MODELS:
        out["alert"][m] = judge_rule(ev, rule, m)
    for setting in rule_settings(rule):
        judged: dict[str, Any] = {"rule": _rule_dict(setting)}
        judged.update({m: judge_rule(ev, setting, m) for m in MODELS})
        out["alert_settings"].append(judged)
    return out


def _rule_dict(rule: PredictionRule) -> dict[str, float]:
    return {"size": rule.size, "low": rule.low, "min_observed": rule.min_observed}


def render_summary(summary: dict[str, Any]) -> str:
    """The summary as small text tables."""
    times = list(summary["mdape"]["seismic"])
    fin = summary["final"]
    split = summary["split"]
    if split == "kfold":
        split += f" ({summary['folds']} folds, seed {summary['seed']})"
    lines = [
        f"{summary['cascades']} cascades, final sizes {fin['min']}..{fin['max']} "
        f"(median {fin['median']}), split: {split}",
        "final size: median absolute percentage error | share of final sizes inside the "
        "80% band (SEISMIC: its 90% one)",
        f"{'model':<12}" + "".join(f"{_label(float(t)):>18}" for t in times),
    ]
    for m, by_t in summary["mdape"].items():
        cov = summary["coverage"].get(m, {})
        cells = [f"{_pct(by_t[t])} | {_pct(cov[t]) if t in cov else '-':>6}" for t in times]
        lines.append(f"{m:<12}" + "".join(f"{c:>18}" for c in cells))
    if any(m in summary["mdape"] for m in GIVEN_SELECTION[:4]):
        lines.append(
            "(best|sel, rich|sel, sized|sel, gbm, gbm+hawkes, floor: know or learn that every "
            "cascade of the data set ends large; a worker cannot: best is the production "
            "forecast, rich its option)"
        )
    lines.append(
        "(observed: the count so far, as if the cascade stopped"
        + (
            "; floor: max(observed, one size learned from the training cascades), what the "
            "data set's sizes alone give)"
            if "floor" in summary["mdape"]
            else "; split none: best as shipped, amplified as shipped)"
        )
    )
    for m, by_fold in summary["per_fold"].items():
        per = ", ".join("/".join(_pct(v, 0) for v in by_t.values()) for by_t in by_fold.values())
        lines.append(f"{m} per fold ({'/'.join(_label(float(t)) for t in times)}): {per}")
    lines.append(
        "[predicted] rule, judged per cascade (fired when it would page; large: final size "
        "passes the rule's size)"
    )
    lines.append(
        f"{'rule':<30}{'model':<11}{'precision':>10}{'recall':>8}{'ahead':>8}"
        f"{'lead h':>8}{'fired small':>13}"
    )
    for s in summary["alert_settings"]:
        r = s["rule"]
        label = f"size>{r['size']:g} low>{r['low']:g} n>={r['min_observed']}"
        for m in MODELS:
            a = s[m]
            lines.append(
                f"{label:<30}{m:<11}{_pct(a['precision'], 0):>10}{_pct(a['recall'], 0):>8}"
                f"{_pct(a['recall_ahead'], 0):>8}{_h(a['median_lead_hours']):>8}"
                f"{a['small_alerted']:>6}/{a['small']:<6}"
            )
            label = ""
    lines.append(
        f"(of {summary['alert']['best']['large']} cascades that passed "
        f"{summary['alert']['rule']['size']:g}; ahead: fired before they passed it; "
        "lead h: median hours before)"
    )
    return "\n".join(lines)


def _label(t: float) -> str:
    return f"{t / 3600:g}h" if t % 3600 == 0 else f"{t:g}s"


def _pct(x: object, digits: int = 1) -> str:
    if x is None:
        return "-"
    if x == "inf":
        return "inf"
    return f"{100 * float(x):.{digits}f}%"  # type: ignore[arg-type]


def _h(x: object) -> str:
    return "-" if x is None else f"{float(x):.1f}"  # type: ignore[arg-type]


# -- plot ------------------------------------------------------------------------


def plot(ev: Evaluation, path: Path, cascade: str | None = None) -> str:
    """Write a PNG: predicted against final size at each observation time, with the bands.

    One panel per observation time: the ``best`` model's prediction of each
    cascade (a dot) and its 80% band (a bar), the same model given the data
    set's selection (orange, when evaluated), SEISMIC's prediction (grey),
    the diagonal where prediction equals outcome. Returns what was drawn.
    ``cascade`` limits the panels to that cascade's points.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if cascade is not None and cascade not in ev.fold_of:
        raise ValueError(f"no cascade {cascade!r} in this run")
    at = ev.at_seconds
    fig = Figure(figsize=(5.0 * len(at), 5.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(at), squeeze=False)[0]
    finals = [tr.final for tr in ev.trajectories]
    # the production forecast of a cascade still small is far below the final sizes
    shown = [r.predicted for r in ev.rows if r.model == "best" and r.obs_seconds in at]
    lo_all = max(min([*finals, *shown]) / 2, 1.0)
    hi_all = max(finals) * 3
    for ax, t in zip(axes, at, strict=True):
        pick = [
            r for r in ev.rows if r.obs_seconds == t and (cascade is None or r.cascade == cascade)
        ]
        best = [r for r in pick if r.model == "best"]
        given = [r for r in pick if r.model == "best|sel"]
        seis = [r for r in pick if r.model == "seismic" and math.isfinite(r.predicted)]
        fin = np.array([r.final for r in best], dtype=np.float64)
        pred = np.array([r.predicted for r in best])
        err = np.array(
            [np.clip(pred - [r.low for r in best], 0, None),
             np.clip(np.array([r.high for r in best]) - pred, 0, None)]
        )  # fmt: skip
        ax.errorbar(
            fin, pred, yerr=err, fmt="o", ms=2.5, color="tab:blue", ecolor="tab:blue",
            elinewidth=0.5, alpha=0.6, label="best, 80% band",
        )  # fmt: skip
        for dots, colour, label in (
            (given, "tab:orange", "best given the data set's selection"),
            (seis, "grey", "SEISMIC"),
        ):
            if dots:
                ax.scatter(
                    [r.final for r in dots],
                    [min(max(r.predicted, lo_all), hi_all) for r in dots],
                    s=5,
                    color=colour,
                    alpha=0.5,
                    label=label,
                    zorder=3,  # over the blue bars: the orange dots sit among them
                )
        ax.plot([lo_all, hi_all], [lo_all, hi_all], color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo_all, hi_all)
        ax.set_ylim(lo_all, hi_all)
        covered = float(np.mean([r.covered for r in best])) if best else math.nan
        ape = _median([r.ape for r in best])
        sape = _median([r.ape for r in pick if r.model == "seismic"])
        gape = (
            f", best given selection {100 * _median([r.ape for r in given]):.0f}%" if given else ""
        )
        ax.set_title(
            f"after {_label(t)}: best {100 * ape:.0f}% MdAPE, band covers "
            f"{100 * covered:.0f}%\nSEISMIC {100 * sape:.0f}%{gape}",
            fontsize=10,
        )
        ax.set_xlabel("final size (reshares at the horizon)")
        ax.set_ylabel("predicted final size")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{len(ev.trajectories)} cascades, split: {ev.split}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return cascade or f"{len(ev.trajectories)} cascades"


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
    """The ``amplified`` calibration fitted on all ``cascades`` (how the shipped one was made)."""
    training = []
    for c in cascades:
        ages = [a for a in FIT_AGES_S if a <= c.horizon_s]
        feats = cascade_features(c, ages, _config(c, n_star))
        training.append([(feats[a][0], c.final) for a in ages])
    return fit_calibration(training)


def fit_model(
    cascades: Sequence[CascadeData],
    n_star: float = N_STAR,
    *,
    folds: int = 10,
    seed: int = 0,
    provenance: str = "",
    inputs: int = SEISMIC_INPUTS,
) -> GrowthModel:
    """``best`` (or with ``inputs=SCALE_FREE_INPUTS``, ``rich``) fitted on all ``cascades``.

    How ``DEFAULT_GROWTH`` and ``RICH_GROWTH`` were made.
    """
    feats: Feats = {}
    for c in cascades:
        ages = [a for a in GROWTH_AGES_S if a < c.horizon_s]
        feats[c.name] = cascade_features(c, ages, _config(c, n_star))
    return fit_growth_on(
        cascades, feats, n_star, folds=folds, seed=seed, provenance=provenance, inputs=inputs
    )
