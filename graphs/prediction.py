"""Final-size prediction that updates as reshares arrive, and a calibrated model.

Four models share one incremental state:

- ``"seismic"``: SEISMIC (see :mod:`graphs.seismic`), computed from
  bucketed sums instead of the full history.
- ``"best"``: a log-linear law of the growth still to come,
  ``log((final + 1) / (observed + 1))``, normal around a linear function of
  three scale-free features of the state (SEISMIC's expected first
  generation before the horizon and the reshares in its estimation window,
  both per reshare seen, and the branching factor ``p * n_star``), with
  coefficients learned per age of the cascade (:class:`GrowthModel`, from
  638 real Twitter cascades; see ``DEFAULT_GROWTH``'s provenance). Those
  cascades all have at least 2,002 retweets, and a plain regression would
  learn that every cascade ends that large; the fit is by likelihood
  *truncated at that selection*, so the law is that of the cascades the
  sample was drawn from. The forecast is the law's median (given only that
  a cascade does not shrink), its 80% band the law's calibrated quantiles.
  It predicts the size at a stated horizon (7 days by default,
  ``PredictorConfig.horizon_s``) and never below what is already seen.
  :func:`forecast_given_selection` is the same law given that the final
  size passes a threshold (for evaluating on selected data, not for
  production).
- ``"rich"``: the same law and fit with eight more inputs, Cheng et al.'s
  (2014) early-growth features kept in O(1) state: the share of the
  reshares that came in the last 5 min, 15 min, 30 min, 1 h and 2 h, the
  time since the last reshare, the followers reached per reshare, the
  original poster's followers (``RICH_GROWTH``). Closer on the Twitter
  cascades, but it reads a 7-day law into those inputs whatever the
  horizon, and it pages more often (the README has the figures): an
  option, not the default.
- ``"amplified"``: the earlier ``best``: SEISMIC's first generation times a
  learned amplification ``exp(a + b * log(age / 1 h))`` in place of
  SEISMIC's ``1 / (1 - p * n_star)`` (:class:`Calibration`, fitted on 30
  Weibo cascades and one tweet). Kept as a baseline.

Why bucketed sums: what SEISMIC needs at time ``now`` is, for every post,
its followers times a kernel of its age. Posts of the same few seconds have
nearly the same age, so the state keeps per-bucket sums (count, followers,
followers x time) and evaluates the kernel once per bucket at the bucket's
follower-weighted mean time. Recent buckets are ``bucket_s`` wide (10 s).
Buckets older than the widest estimation window plus twice the kernel's
cutoff (2 h 10 min) are merged as they age, each spanning at most
``merge_ratio`` (5%) of its distance from the window, where the kernel is
smooth; a week-long cascade keeps under a thousand buckets, whatever its
size. Against the exact computation this errs by under 2 parts in 10^4 on
the real tweet cascade over its whole week (tested).

Cost: ``add`` is O(1) (a dict update and a sorted insert into a short list
of the latest post times), plus an amortised O(1) move of aged buckets.
``predict`` is O(buckets) NumPy work: at most ``(7200 + 600) / bucket_s``
recent buckets and some dozens of merged ones, independent of the number of
reshares (``bench/bench_prediction.py`` measures it).

Examples
--------
>>> pred = IncrementalPredictor()
>>> pred.add(0.0, 5000, original=True)
>>> for i in range(1, 301):
...     pred.add(i * 6.0, 200)
>>> f = pred.predict(1800.0)
>>> pred.observed, round(f.infectiousness, 6)
(300, 0.010991)
>>> f.low <= f.size <= f.high and f.size > 300
True
>>> pred.predict(1800.0, model="seismic").size
inf
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from graphs.growth import (
    DEFAULT_GROWTH,
    RECENT_WINDOWS_S,
    RICH_GROWTH,
    SEISMIC_INPUTS,
    GrowthModel,
    growth_inputs,
    truncated_quantile,
)
from graphs.seismic import (
    DEFAULT_KERNEL,
    MAX_WINDOW_S,
    MIN_COUNT,
    MIN_WINDOW_S,
    N_STAR,
    MemoryKernel,
    chi2_quantile,
)

__all__ = [
    "DEFAULT_CALIBRATION",
    "DEFAULT_CONFIG",
    "DEFAULT_HORIZON_S",
    "FIT_AGES_S",
    "GROWTH_AGES_S",
    "MODELS",
    "Calibration",
    "Features",
    "Forecast",
    "IncrementalPredictor",
    "Model",
    "PredictorConfig",
    "features_from_history",
    "fit_calibration",
    "forecast",
    "forecast_given_selection",
]

Model = Literal["seismic", "best", "rich", "amplified"]
MODELS: tuple[Model, ...] = ("seismic", "best", "rich", "amplified")

#: Size is predicted at this age of the cascade (seconds after its first post)
#: unless told otherwise: 7 days, the span the training data were observed over.
DEFAULT_HORIZON_S = 7 * 86_400.0
#: Ages at which training cascades are sampled: 15 min to 16 h, three per doubling.
FIT_AGES_S: tuple[float, ...] = tuple(900.0 * 2.0 ** (k / 3.0) for k in range(19))
#: Ages at which the ``best`` model is fitted: 56 s to 5.7 days, three per doubling.
#: It starts early because the ``[predicted]`` rule reads forecasts minutes after
#: an upload; coefficients of a later age would read a young cascade as a slow one.
GROWTH_AGES_S: tuple[float, ...] = tuple(900.0 * 2.0 ** (k / 3.0) for k in range(-12, 28))

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Calibration:
    """The learned part of the ``best`` model.

    ``amplification(age) = exp(log_amp + log_amp_slope * log(age / 3600))``,
    with ``age`` clamped to the ages trained on. ``q_low`` / ``q_high`` are
    quantiles of ``log((final + 1) / (predicted + 1))`` on the training
    cascades near each age of ``ages_s``.

    Examples
    --------
    >>> cal = Calibration(0.5, -0.5, 900.0, 57600.0, (3600.0,), (-0.2,), (0.3,))
    >>> round(cal.amplification(3600.0), 4), round(cal.amplification(14400.0), 4)
    (1.6487, 0.8244)
    >>> cal.band(100.0)
    (-0.2, 0.3)
    """

    log_amp: float
    log_amp_slope: float
    min_age_s: float
    max_age_s: float
    ages_s: tuple[float, ...]
    q_low: tuple[float, ...]
    q_high: tuple[float, ...]
    level: float = 0.8
    cascades: int = 0

    def __post_init__(self) -> None:
        if not (0.0 < self.min_age_s <= self.max_age_s):
            raise ValueError("need 0 < min_age_s <= max_age_s")
        n = len(self.ages_s)
        if n == 0 or len(self.q_low) != n or len(self.q_high) != n:
            raise ValueError("ages_s, q_low and q_high must be non-empty and of equal length")
        if list(self.ages_s) != sorted(self.ages_s):
            raise ValueError("ages_s must be increasing")

    def amplification(self, age_s: float) -> float:
        """How many reshares, in all, each expected direct reshare stands for."""
        age = min(max(age_s, self.min_age_s), self.max_age_s)
        return math.exp(self.log_amp + self.log_amp_slope * math.log(age / 3600.0))

    def band(self, age_s: float) -> tuple[float, float]:
        """Log-error quantiles at ``age_s`` (interpolated in log age, clamped)."""
        x = math.log(max(age_s, 1e-9))
        xs = [math.log(a) for a in self.ages_s]
        return (
            float(np.interp(x, xs, self.q_low)),
            float(np.interp(x, xs, self.q_high)),
        )


# Fitted by `viralwatch evaluate --show-calibration` on the 31 real cascades of
# ../shared/data/cascades (30 Weibo cascades, 24 h horizon; 1 tweet, 7 d horizon);
# tests/test_prediction.py checks that refitting gives it back.
DEFAULT_CALIBRATION = Calibration(
    log_amp=0.838,
    log_amp_slope=-0.224,
    min_age_s=900.0,
    max_age_s=57600.0,
    ages_s=(
        900.0,
        1133.929,
        1428.661,
        1800.0,
        2267.858,
        2857.322,
        3600.0,
        4535.716,
        5714.644,
        7200.0,
        9071.432,
        11429.288,
        14400.0,
        18142.863,
        22858.575,
        28800.0,
        36285.726,
        45717.15,
        57600.0,
    ),
    q_low=(
        -0.708456,
        -0.694503,
        -0.694503,
        -0.627607,
        -0.444143,
        -0.361743,
        -0.35069,
        -0.319263,
        -0.256622,
        -0.217294,
        -0.152746,
        -0.117697,
        -0.101354,
        -0.089181,
        -0.056266,
        -0.052481,
        -0.047331,
        -0.039503,
        -0.031541,
    ),
    q_high=(
        1.596905,
        1.592215,
        1.592215,
        1.412189,
        1.045751,
        0.684843,
        0.527272,
        0.458427,
        0.336675,
        0.246973,
        0.229376,
        0.200958,
        0.181118,
        0.176238,
        0.164873,
        0.161581,
        0.161642,
        0.131389,
        0.106961,
    ),
    level=0.8,
    cascades=31,
)


@dataclass(frozen=True, slots=True)
class PredictorConfig:
    """Everything about a predictor that is the same for every cluster.

    ``default_followers`` stands in for a post whose follower count is
    unknown; the network average ``n_star`` keeps SEISMIC's branching
    factor ``p * n_star`` meaningful.
    """

    model: Model = "best"
    growth: GrowthModel = DEFAULT_GROWTH
    rich: GrowthModel = RICH_GROWTH
    calibration: Calibration = DEFAULT_CALIBRATION
    n_star: float = N_STAR
    default_followers: float = N_STAR
    horizon_s: float = DEFAULT_HORIZON_S
    bucket_s: float = 10.0
    merge_ratio: float = 0.05
    kernel: MemoryKernel = field(default=DEFAULT_KERNEL)
    max_window_s: float = MAX_WINDOW_S
    min_window_s: float = MIN_WINDOW_S
    min_count: int = MIN_COUNT

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if not (self.n_star > 0 and self.default_followers >= 0 and self.horizon_s > 0):
            raise ValueError("need n_star > 0, default_followers >= 0, horizon_s > 0")
        if not (self.bucket_s > 0 and 0 < self.merge_ratio <= 1):
            raise ValueError("need bucket_s > 0 and 0 < merge_ratio <= 1")
        if self.min_count < 1 or not (0 < self.min_window_s <= self.max_window_s):
            raise ValueError("need min_count >= 1 and 0 < min_window_s <= max_window_s")

    @property
    def fine_horizon_s(self) -> float:
        """How far back buckets stay narrow: the widest window plus the kernel's cutoff."""
        return self.max_window_s + 2.0 * self.kernel.cutoff + 2.0 * self.bucket_s


DEFAULT_CONFIG = PredictorConfig()


class Forecast(NamedTuple):
    """A predicted final number of reshares with its interval, and the infectiousness."""

    size: float
    low: float
    high: float
    infectiousness: float


@dataclass(frozen=True, slots=True)
class Features:
    """What the state says about a cascade at one time; both models start from it."""

    age_s: float
    observed: int
    infectiousness: float
    p_low: float
    p_up: float
    #: Reshares in the estimation window (R's ``rt.num``).
    window_reshares: float
    #: Expected direct reshares still to come from the posts seen, at any time.
    offspring: float
    #: The same, before the horizon only.
    offspring_horizon: float
    #: Reshares in each of the last ``RECENT_WINDOWS_S`` (whole 10-s buckets: a
    #: window reaches back to the start of the bucket its start falls in). Empty:
    #: not known (the growth model then reads every window as holding them all).
    recent: tuple[float, ...] = ()
    #: Seconds since the latest reshare (since the first post before any).
    since_last_s: float = 0.0
    #: Followers of the reshares seen (unknown ones counted as the network average).
    followers_seen: float = 0.0
    #: Followers of the original posts (uploads) seen.
    original_followers: float = 0.0

    def inputs(self, n_star: float) -> tuple[float, ...]:
        """What the ``best`` model reads (:func:`graphs.growth.growth_inputs`)."""
        return growth_inputs(
            self.observed,
            self.offspring_horizon,
            self.window_reshares,
            self.infectiousness * n_star,
            self.recent,
            self.since_last_s,
            self.followers_seen,
            self.original_followers,
        )


def forecast(features: Features, model: Model, config: PredictorConfig) -> Forecast:
    """Turn features into a forecast with ``model``.

    Examples
    --------
    >>> f = Features(3600.0, 100, 0.005, 0.004, 0.006, 40.0, 50.0, 30.0)
    >>> forecast(f, "seismic", DEFAULT_CONFIG).size
    200.0
    >>> forecast(f, "seismic", DEFAULT_CONFIG).low
    166.66666666666669
    """
    n = float(features.observed)
    q = features.infectiousness
    if model == "seismic":
        if q <= 0.0:
            return Forecast(n, n, n, 0.0)

        def total(p: float) -> float:
            if p * config.n_star >= 1.0:
                return math.inf
            return n + features.offspring * (p / q) / (1.0 - p * config.n_star)

        return Forecast(total(q), total(features.p_low), total(features.p_up), q)
    if model == "best":
        return _grown(features, config, config.growth)
    if model == "rich":
        return _grown(features, config, config.rich)
    if model != "amplified":
        raise ValueError(f"unknown model {model!r}")
    cal = config.calibration
    size = n + cal.amplification(features.age_s) * features.offspring_horizon
    q_lo, q_hi = cal.band(features.age_s)
    low = max(n, min(size, (size + 1.0) * math.exp(q_lo) - 1.0))
    high = max(size, (size + 1.0) * math.exp(q_hi) - 1.0)
    return Forecast(size, low, high, q)


def _grown(
    features: Features, config: PredictorConfig, growth: GrowthModel, at_least: float = 0.0
) -> Forecast:
    """``best`` or ``rich``: the growth model's median and band, never below what is seen."""
    n = float(features.observed)
    if features.age_s >= config.horizon_s or n <= 0.0:
        # past the horizon nothing grows; with no reshare yet there is nothing to read
        # growth from
        return Forecast(n, n, n, features.infectiousness)
    x = features.inputs(config.n_star)
    lower = math.log((at_least + 1.0) / (n + 1.0)) if at_least > n else 0.0
    z, lo, hi = growth.quantiles(features.age_s, x, lower)
    return Forecast(
        (n + 1.0) * math.exp(z) - 1.0,
        (n + 1.0) * math.exp(lo) - 1.0,
        (n + 1.0) * math.exp(hi) - 1.0,
        features.infectiousness,
    )


def forecast_given_selection(
    features: Features, config: PredictorConfig, at_least: float, model: Model = "best"
) -> Forecast:
    """``model``'s forecast (``best`` or ``rich``) *given* that the cascade ends with ``at_least``.

    Not for production: a worker does not know that. It is what a sample
    chosen for size (the 638 Twitter cascades: at least 2,002 retweets)
    lets an evaluation report beside the production forecast, from the
    same parameters, labelled as such.

    >>> f = Features(3600.0, 300, 0.0003, 0.0002, 0.0004, 40.0, 50.0, 30.0)
    >>> plain = forecast(f, "best", DEFAULT_CONFIG)
    >>> given = forecast_given_selection(f, DEFAULT_CONFIG, 2002.0)
    >>> plain.size < 2002 <= given.low <= given.size <= given.high
    True
    """
    if model not in ("best", "rich"):
        raise ValueError(f"only best and rich are conditioned on a selection, not {model!r}")
    return _grown(features, config, config.growth if model == "best" else config.rich, at_least)


def features_from_history(
    share_time: Sequence[float] | FloatArray,
    degree: Sequence[float] | FloatArray,
    now_s: float,
    config: PredictorConfig = DEFAULT_CONFIG,
) -> Features:
    """The :class:`Features` computed from every post, the way R's SEISMIC would.

    What :class:`IncrementalPredictor` keeps in O(1) per post must equal
    this (tests/test_prediction.py checks it along whole cascades); it costs
    O(posts) per call, so a worker never runs it. ``share_time[0]`` is the
    original post, as in :func:`graphs.seismic.get_infectiousness`.

    Examples
    --------
    >>> f = features_from_history([0.0, 60.0, 120.0, 400.0], [50, 10, 10, 10], 900.0)
    >>> f.observed, round(f.infectiousness, 5), f.window_reshares
    (3, 0.05319, 3.0)
    """
    from graphs.seismic import get_infectiousness

    s = np.asarray(share_time, dtype=np.float64)
    d = np.asarray(degree, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s, d = s[order], d[order]
    seen = s <= now_s
    observed = int(np.count_nonzero(seen)) - 1
    age = float(now_s - s[0])
    est = get_infectiousness(
        s[seen],
        d[seen],
        [now_s],
        max_window=config.max_window_s,
        min_window=config.min_window_s,
        min_count=config.min_count,
        kernel=config.kernel,
    )
    q = float(est.infectiousness[0])
    early = _early_growth(s[seen], d[seen], now_s, config.bucket_s)
    if q <= 0.0:
        return Features(age, observed, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, *early)
    k = config.kernel
    ccdf_now = k.ccdf(now_s - s[seen])
    left = np.maximum(ccdf_now - k.ccdf(s[0] + config.horizon_s - s[seen]), 0.0)
    return Features(
        age,
        observed,
        q,
        float(est.p_low[0]),
        float(est.p_up[0]),
        float(est.rt_num[0]),
        q * float(np.sum(d[seen] * ccdf_now)),
        q * float(np.sum(d[seen] * left)),
        *early,
    )


def _early_growth(
    s: FloatArray, d: FloatArray, now_s: float, bucket_s: float
) -> tuple[tuple[float, ...], float, float, float]:
    """``recent``, ``since_last_s``, ``followers_seen``, ``original_followers`` from history.

    ``s[0]`` is the original post (the time origin of the buckets), the rest reshares.
    """
    t, f = s[1:] - s[0], d[1:]
    now = now_s - s[0]
    starts = [bucket_s * math.floor((now - w) / bucket_s) for w in RECENT_WINDOWS_S]
    recent = tuple(float(np.count_nonzero(t >= a)) for a in starts)
    since = now - (float(t.max()) if t.size else 0.0)
    return recent, since, float(np.sum(f)), float(d[0])


# posts kept beyond the min_count + 1 that R's widened window needs, so that a
# few posts at exactly `now` (excluded from the estimate) do not hide them
_SPARE_RECENT = 64
# narrow buckets leave for the merged list in batches of this many, so that the
# cached arrays are rebuilt every ~10 minutes of event time, not on every bucket
_FLUSH_SLACK = 60
# fields of a recent (narrow) bucket
_M, _N, _D, _DT, _ST = range(5)
# fields of a merged (old) bucket
_LO, _HI, _CM, _CN, _CD, _CDT, _CST = range(7)
# a merged bucket's columns that line up with a narrow one's (lo where it has m)
_OLD_COLUMNS = [_LO, _CN, _CD, _CDT, _CST]


def _kernel_terms(
    kernel: MemoryKernel, ages: FloatArray, until: FloatArray, slope: float, window: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``kernel.window_integral(ages, slope, window)``, ``kernel.ccdf(ages)`` and
    ``kernel.ccdf(until)``, the same numbers to the bit, in a quarter of the NumPy calls.

    Why: a forecast works on a few dozen buckets, where each NumPy call costs
    far more than its arithmetic, and the two kernel methods made about a
    hundred calls (five cases of the integral each computed whole, then
    ``np.select``). Here every element goes through the same operations in
    the same order (so the same rounding: element-wise arithmetic does not
    depend on what else is in the array), the like cases are stacked into one
    array each, one ``np.power`` serves all (the exponent is ``-theta``
    throughout), and each bucket's case is picked by where its age falls
    among the cases' bounds, as ``np.select`` picked the first that held.
    ``tests/test_prediction.py`` holds them to the two methods.
    """
    th, tau, c = kernel.theta, kernel.cutoff, kernel.c
    k = c * tau ** (1.0 + th) / ((th - 1.0) * th)
    m = len(ages)
    # the power-law antiderivative's arguments: ages, ages - window, tau (window_integral's
    # pw(a), pw(a - window), pw(tau)); then the ccdf's, at ages and at until
    lag = np.empty(3 * m)
    lag[:m] = ages
    np.subtract(ages, window, out=lag[m : 2 * m])
    lag[2 * m :] = tau
    xs = np.maximum(lag, 1e-300)
    t = np.maximum(np.concatenate((ages, until)), 0.0)
    power = np.power(np.concatenate((xs, np.maximum(t, tau))), -th)
    a3 = np.concatenate((ages, ages, ages))
    pw = k * power[: 3 * m] * (1.0 - th - slope * ((1.0 - th) * a3 + th * xs))
    tail = pw[:m] - pw[2 * m :]
    # lin(a, 0), lin(a, a - tau), lin(window, a - tau)
    u1 = a3.copy()
    u1[2 * m :] = window
    u2 = np.empty(3 * m)
    u2[:m] = 0.0
    np.subtract(ages, tau, out=u2[m : 2 * m])
    u2[2 * m :] = u2[m : 2 * m]
    lin = c * (u1 - u2) * (1.0 - slope * (u1 + u2) / 2.0)
    cases = np.empty((5, m))
    cases[0] = 0.0
    cases[1] = lin[:m]
    np.add(lin[m : 2 * m], tail, out=cases[2])
    np.add(lin[2 * m :], tail, out=cases[3])
    np.subtract(pw[:m], pw[m : 2 * m], out=cases[4])
    # np.select's order: the later case wins where two overlap (window < tau)
    if window >= tau:
        bounds, rows = [0.0, tau, window, window + tau], _ROWS_WIDE
    else:
        bounds, rows = [0.0, window, window + tau], _ROWS_NARROW
    pick = rows[np.array(bounds).searchsorted(ages, side="left")]
    integral = pick.choose(cases)
    tail_c = c * tau ** (1.0 + th) / th
    ccdf = np.where(t <= tau, 1.0 - c * t, tail_c * power[3 * m :])
    return integral, ccdf[:m], ccdf[m:]


# window_integral's case by how many of its bounds an age passes (0: none, 2-5: its cases)
_ROWS_WIDE = np.array([0, 1, 2, 3, 4])
_ROWS_NARROW = np.array([0, 1, 3, 4])
# np.sum's own reduction, without its Python wrapper
_total = np.add.reduce


class IncrementalPredictor:
    """Per-cascade state: add posts as they come, ask for a forecast at any time.

    ``add(t_s, followers)`` takes event times in seconds (any origin; the
    first post's time is the reference) in mostly increasing order: a late
    post is placed in the bucket of its time, however old. ``original=True``
    marks a post that is not a reshare (the upload): it exposes its
    followers but is not counted. ``predict(now_s)`` expects every post
    added to be at or before ``now_s``.

    State per cascade: a dict of recent 10-s buckets (5 floats each), a list
    of merged buckets (7 floats each, a few dozen), the last six post times.

    Examples
    --------
    >>> p = IncrementalPredictor(PredictorConfig(model="seismic"))
    >>> p.add(1_700_000_000.0, 1000, original=True)
    >>> p.add(1_700_000_060.0, 50)
    >>> p.observed, p.posts
    (1, 2)
    >>> p.predict(1_700_000_000.0 + 600).size >= 1
    True
    """

    __slots__ = (
        "_cfg",
        "_coarse",
        "_dirty",
        "_dt2_sum",
        "_dt_abs",
        "_dt_sum",
        "_fine",
        "_fine_buf",
        "_fine_limit",
        "_fine_rows",
        "_fine_table",
        "_floor_key",
        "_followers_seen",
        "_last_reshare",
        "_latest",
        "_least_key",
        "_old_columns",
        "_old_table",
        "_origin",
        "_original_followers",
        "_posts",
        "_recent",
        "_ref",
        "_reshares",
    )

    def __init__(self, config: PredictorConfig = DEFAULT_CONFIG) -> None:
        self._cfg = config
        self._ref: float | None = None
        self._origin = math.inf
        self._latest = -math.inf
        self._fine: dict[int, list[float]] = {}
        # narrow buckets held past this many: age them (the config's, kept: add reads it)
        self._fine_limit = config.fine_horizon_s / config.bucket_s + 2 * _FLUSH_SLACK
        self._floor_key: int | None = None
        # the least narrow bucket's key before the floor is set (no bucket leaves the
        # narrow ones before): what _age_buckets asks every read of a young cluster, kept
        # as posts come, where `min` over the buckets' keys cost ~150 instructions a bucket.
        # The first post's key is 0 (its time is the reference)
        self._least_key = 0
        # arrays of the buckets as last used by features(), patched where dirty: the
        # narrow ones' table is the head of a buffer with room to add rows in place
        self._fine_table: FloatArray | None = None
        self._fine_buf: FloatArray | None = None
        self._fine_rows: dict[int, int] = {}
        self._dirty: set[int] = set()
        self._old_table: FloatArray | None = None
        # the merged buckets' columns as a read copies them, and their upper ends (hi)
        self._old_columns: tuple[FloatArray, FloatArray] | None = None
        self._coarse: list[list[float]] = []
        # the latest posts' times, sorted: a read bisects them (their kind is not read:
        # the held count less every upload), floats comparing by one C compare where
        # (t, reshare) tuples went through the tuples' items
        self._recent: list[float] = []
        self._posts = 0
        self._reshares = 0
        self._last_reshare = -math.inf
        self._followers_seen = 0.0
        self._original_followers = 0.0
        # every post's followers times its time, that times the time again, and the first's
        # absolute values: the sums StateRead.rough_bound reads in O(1) (a post adds to them)
        self._dt_sum = 0.0
        self._dt2_sum = 0.0
        self._dt_abs = 0.0

    @property
    def config(self) -> PredictorConfig:
        return self._cfg

    @property
    def observed(self) -> int:
        """Reshares added so far (originals not counted)."""
        return self._reshares

    @property
    def posts(self) -> int:
        """Posts added so far, originals included."""
        return self._posts

    @property
    def origin_s(self) -> float:
        """Time of the earliest post added (``inf`` before any)."""
        return self._origin

    @property
    def buckets(self) -> int:
        """How many buckets the state holds (its memory, in units of ~5-7 floats)."""
        return len(self._fine) + len(self._coarse)

    def add(self, t_s: float, followers: float | None = None, *, original: bool = False) -> None:
        """Add one post at time ``t_s`` seen by ``followers`` (None: unknown).

        Called for every post of every banked cluster (the detector's one per-post
        forecast cost), so ``min``/``max`` are written as the comparison they make (the
        first of equals kept, as they keep it) and the config and tables read once.
        """
        t_abs = float(t_s)
        if not math.isfinite(t_abs):
            raise ValueError(f"post time must be finite, got {t_s!r}")
        cfg = self._cfg
        if followers is None:
            d = cfg.default_followers
        else:
            d = float(followers)
            if not (math.isfinite(d) and d >= 0.0):
                raise ValueError(f"followers must be a finite number >= 0, got {followers!r}")
        ref = self._ref
        if ref is None:
            ref = self._ref = t_abs
        t = t_abs - ref
        reshare = not original
        self._posts += 1
        self._reshares += reshare
        if t_abs < self._origin:
            self._origin = t_abs
        if t_abs > self._latest:
            self._latest = t_abs
        if reshare:
            if t_abs > self._last_reshare:
                self._last_reshare = t_abs
            self._followers_seen += d
        else:
            self._original_followers += d
        dt = d * t
        self._dt_sum += dt
        self._dt2_sum += dt * t
        self._dt_abs += abs(dt)
        recent = self._recent
        # posts come in time order as a rule: the place insort would find is the end when
        # the post is not below the last (insort's own test), and one float compared there
        # costs less than its binary search's
        if recent and t < recent[-1]:
            bisect.insort(recent, t)
        else:
            recent.append(t)
        if len(recent) > cfg.min_count + _SPARE_RECENT:
            del recent[0]
        key = math.floor(t / cfg.bucket_s)
        floor_key = self._floor_key
        if floor_key is not None and key < floor_key:
            self._add_old(t, d, reshare)
        else:
            if key < self._least_key:
                self._least_key = key
            fine = self._fine
            b = fine.get(key)
            if b is None:
                b = fine[key] = [0.0, 0.0, 0.0, 0.0, 0.0]
            b[_M] += 1.0
            b[_N] += reshare
            b[_D] += d
            b[_DT] += dt
            b[_ST] += t * reshare
            self._dirty.add(key)
            if len(fine) > self._fine_limit:
                self._age_buckets()

    def _add_old(self, t: float, d: float, reshare: bool) -> None:
        self._old_table = None
        for b in self._coarse:
            if b[_LO] <= t <= b[_HI]:
                break
        else:
            b = [t, t, 0.0, 0.0, 0.0, 0.0, 0.0]
            bisect.insort(self._coarse, b)
        b[_CM] += 1.0
        b[_CN] += reshare
        b[_CD] += d
        b[_CDT] += d * t
        b[_CST] += t * reshare

    def _age_buckets(self) -> None:
        """Move narrow buckets that left the fine horizon to the merged list, merge."""
        if self._ref is None:
            return
        width = self._cfg.bucket_s
        boundary = math.floor((self._latest - self._ref - self._cfg.fine_horizon_s) / width)
        last = self._floor_key
        if last is None:
            last = self._least_key  # min(self._fine): no key has left them yet
        if boundary < last + _FLUSH_SLACK:
            return
        self._floor_key = boundary
        old = sorted(k for k in self._fine if k < boundary)
        if not old:
            return
        self._fine_table = None
        self._old_table = None
        for k in old:
            m, n, d, dt, st = self._fine.pop(k)
            self._coarse.append([k * width, (k + 1) * width, m, n, d, dt, st])
        self._coarse.sort()
        now = self._latest - self._ref
        merged: list[list[float]] = []
        for b in self._coarse:
            if merged:
                prev = merged[-1]
                # the kernel bends on the scale of (age - window), not of age
                room = now - b[_HI] - self._cfg.max_window_s
                if b[_HI] - prev[_LO] <= self._cfg.merge_ratio * max(room, 0.0):
                    prev[_HI] = max(prev[_HI], b[_HI])
                    for i in range(_CM, _CST + 1):
                        prev[i] += b[i]
                    continue
            merged.append(b)
        self._coarse = merged

    def _arrays(self) -> _Columns:
        """Per bucket: lo, reshares, followers, followers x time, sum of reshare times (one
        new array of five rows, each row contiguous), and the merged buckets' upper ends (hi).

        The narrow buckets' table is kept between calls and only the buckets
        touched since are rewritten, so a prediction on a hot cascade costs
        NumPy work over the buckets plus Python work over the few new ones. What is
        computed from the columns (each bucket's hi and follower-weighted mean time) is
        left to :meth:`StateRead.features`: a read no decision computes never makes it.
        """
        width = self._cfg.bucket_s
        table = self._fine_table
        if table is None:
            keys = list(self._fine)
            self._fine_rows = {k: i for i, k in enumerate(keys)}
            table = np.array([self._fine[k] for k in keys], dtype=np.float64).reshape(-1, 5)
            table[:, _M] = np.array(keys, dtype=np.float64) * width  # column 0 holds lo
            self._fine_buf = table
        elif self._dirty:
            fresh: list[list[float]] = []
            for k in self._dirty:
                row = self._fine_rows.get(k)
                b = self._fine[k]
                if row is None:
                    self._fine_rows[k] = table.shape[0] + len(fresh)
                    fresh.append([k * width, b[_N], b[_D], b[_DT], b[_ST]])
                else:
                    table[row, 1:] = b[1:]
            if fresh:  # written in the buffer's room (twice the rows when it has none)
                used, end = table.shape[0], table.shape[0] + len(fresh)
                buf = self._fine_buf
                if buf is None or buf.shape[0] < end:
                    buf = self._fine_buf = np.empty((2 * end, 5))
                    buf[:used] = table
                buf[used:end] = fresh
                table = buf[:end]
        self._dirty.clear()
        self._fine_table = table
        if self._old_table is None:
            old = self._old_table = np.array(self._coarse, dtype=np.float64).reshape(-1, 7)
            # kept until the merged buckets change (a change makes a new table: this one
            # is never written, so a read may hold a view of it)
            self._old_columns = (old[:, _OLD_COLUMNS].T, old[:, _HI]) if old.shape[0] else None
        # one array of five rows (lo, n, d, dt, st), each row contiguous, made in one
        # call: the per-bucket figures are those of the two tables, in the same order
        old_columns = self._old_columns
        if old_columns is not None:
            cols = np.concatenate([table.T, old_columns[0]], axis=1)
            return _Columns(cols, old_columns[1])
        return _Columns(table.T.copy(), None)

    def features(self, now_s: float) -> Features:
        """The state's summary at ``now_s``: what both models are computed from."""
        return self.read(now_s).features()

    def read(self, now_s: float) -> StateRead:
        """What :meth:`features` at ``now_s`` reads of the state, read now; the figures
        computed from it when asked (:meth:`StateRead.features`), the same to the bit.

        Why: reading is what changes the state (buckets aged and merged as of the latest
        post, the cached table patched in the order of the buckets touched since), so a
        forecast's later bits depend on when earlier ones were read, and a reading must
        stay where it is; the NumPy work after it (most of a forecast's cost) need not
        run when nothing reads the figures (the detector: a forecast no decision of the
        policy reads, unless an alert then shows it).

        >>> p = IncrementalPredictor()
        >>> p.add(0.0, 500, original=True)
        >>> for i in range(1, 80):
        ...     p.add(i * 7.0, 120)
        >>> r = p.read(600.0)
        >>> p.add(601.0, 10_000)  # after the read: not in its figures
        >>> q = IncrementalPredictor()
        >>> q.add(0.0, 500, original=True)
        >>> for i in range(1, 80):
        ...     q.add(i * 7.0, 120)
        >>> r.features() == q.features(600.0)
        True
        """
        cfg = self._cfg
        if self._ref is None:
            return StateRead(cfg, None, 0.0, 0.0, 0, 0.0, (0.0, 0.0, 0.0), None, None)
        self._age_buckets()
        p = float(now_s) - self._ref
        age = float(now_s) - self._origin
        last = self._last_reshare if self._reshares else self._origin
        early = (float(now_s) - last, self._followers_seen, self._original_followers)
        # the latest posts before p (self._recent is sorted by time): R's window widened
        # back to min_count + 1 of them if it holds fewer than min_count
        recent_posts = self._recent
        before = bisect.bisect_left(recent_posts, p)
        window: float | None = None
        if before:
            # min(max(age / 2, min_window), max_window) as the compares the builtins make
            # (the first of equals kept), not two C calls that iterate their arguments
            half, lo, hi = age / 2.0, cfg.min_window_s, cfg.max_window_s
            window = lo if lo > half else half
            if hi < window:
                window = hi
            if before - bisect.bisect_left(recent_posts, p - window) < cfg.min_count:
                first = recent_posts[before - (cfg.min_count + 1) if before > cfg.min_count else 0]
                window = p - first
        sums = None
        if window is not None:
            # the posts held whose weight in the window's count is at least a half (the
            # window's later half) and whose bucket is a narrow one inside it, whole (its lo
            # at or after the window's start, before p): the count's low for rough_bound,
            # less the uploads among them (every one of them, at most)
            width = cfg.bucket_s
            edge, whole = p - window / 2.0, p - window + 2.0 * width
            if whole > edge:
                edge = whole
            if self._floor_key is not None:
                whole = (self._floor_key + 1.0) * width
                if whole > edge:
                    edge = whole
            held = bisect.bisect_left(recent_posts, p - 1e-3 * width)
            held -= bisect.bisect_left(recent_posts, edge)
            held -= self._posts - self._reshares
            sums = (
                self._followers_seen + self._original_followers,
                self._dt_sum,
                self._dt_abs,
                self._dt2_sum,
                self._latest - self._ref,
                float(held if held > 0 else 0),
            )
        return StateRead(
            cfg,
            self._arrays(),
            p,
            age,
            self._reshares,
            self._origin - self._ref,
            early,
            window,
            sums,
        )

    def predict(self, now_s: float, model: Model | None = None) -> Forecast:
        """Forecast the final number of reshares, as seen at ``now_s``."""
        return self.read(now_s).predict(model)


class _Columns(NamedTuple):
    """The buckets' columns as a forecast reads them (:meth:`IncrementalPredictor._arrays`)."""

    #: lo, n, d, dt, st: one row each, the narrow buckets first, then the merged ones
    cols: FloatArray
    #: the merged buckets' upper ends, their ``hi`` (a narrow one's is its lo plus the
    #: width); None: none
    old_hi: FloatArray | None


class StateRead:
    """An :class:`IncrementalPredictor`'s state as one forecast reads it
    (:meth:`IncrementalPredictor.read`): the buckets' columns (new arrays, not the
    state's; the merged buckets' upper ends, ``old_hi``, a view of the state's table of
    them, which is never written: a change makes a new one) and the few figures beside
    them, taken at the forecast's time. What it computes from them is what
    :meth:`IncrementalPredictor.features` gives, whenever it is asked, whatever was added
    to the state since.
    """

    __slots__ = (
        "_age",
        "_cfg",
        "_columns",
        "_early",
        "_origin",
        "_p",
        "_reshares",
        "_sums",
        "_window",
    )

    def __init__(
        self,
        cfg: PredictorConfig,
        columns: _Columns | None,
        p: float,
        age: float,
        reshares: int,
        origin: float,
        early: tuple[float, float, float],
        window: float | None,
        sums: tuple[float, float, float, float, float, float] | None,
    ) -> None:
        self._cfg = cfg
        #: the buckets' columns (None: no post yet)
        self._columns = columns
        #: the forecast's time and the first post's, from the state's reference
        self._p, self._origin = p, origin
        self._age = age
        self._reshares = reshares
        #: since the last reshare, followers of the reshares, of the originals (the
        #: recent counts are computed from the columns, with the rest)
        self._early = early
        #: the estimation window (None: no post before the forecast's time)
        self._window = window
        #: what :meth:`rough_bound` reads: the posts' followers, their sums of followers
        #: times time, of its absolute values and of followers times time squared (times
        #: from the state's reference), the latest post's time, and a low of the reshares
        #: in the window's later half (None: no window)
        self._sums = sums

    def predict(self, model: Model | None = None) -> Forecast:
        """The forecast of :meth:`features` with ``model`` (the config's unless given).

        Only ``seismic`` reads the infectiousness's interval (``p_low``, ``p_up``), so
        no other model has it computed (see :meth:`features`): the same forecast to the
        bit (``tests/test_prediction.py`` holds it to the full features').
        """
        model = model or self._cfg.model
        return forecast(self.features(interval=model == "seismic"), model, self._cfg)

    def features(self, *, interval: bool = True) -> Features:
        """The figures, as :meth:`IncrementalPredictor.features` computed them then.

        ``interval=False``: ``p_low`` and ``p_up`` are left at the infectiousness itself,
        not computed. Why: they are two chi-square quantiles (Newton steps on the
        incomplete gamma in Python, cached by count), a third of a forecast's time in a
        process that has not met the counts before (a replay of 300,000 events: 1,726
        forecasts, a few hundred counts), and ``best``, the detector's model, never reads
        them.

        >>> p = IncrementalPredictor()
        >>> p.add(0.0, 500, original=True)
        >>> for i in range(1, 80):
        ...     p.add(i * 7.0, 120)
        >>> full, bare = p.read(600.0).features(), p.read(600.0).features(interval=False)
        >>> full.p_low < full.infectiousness == bare.p_low == bare.p_up < full.p_up
        True
        >>> from dataclasses import replace
        >>> replace(bare, p_low=full.p_low, p_up=full.p_up) == full
        True
        """
        cfg = self._cfg
        if self._columns is None:
            return Features(0.0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p, age = self._p, self._age
        lo, n, d, _, _ = self._columns.cols
        width = cfg.bucket_s
        # reshare counts are whole numbers, so their sums are exact in any order
        starts = [width * math.floor((p - w) / width) for w in RECENT_WINDOWS_S]
        recent = tuple(((lo >= np.array(starts)[:, None]) @ n).tolist())
        early = (recent, *self._early)
        window = self._window
        if window is None:
            return Features(max(age, 0.0), self._reshares, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, *early)
        slope = 1.0 / window
        centre, weighted, count = self._in_window(window)
        ages = p - centre
        until = (self._origin + cfg.horizon_s) - centre
        integral, ccdf_now, ccdf_until = _kernel_terms(cfg.kernel, ages, until, slope, window)
        exposure = float(np.dot(d.copy(), integral))
        if weighted <= 0.0 or exposure <= 0.0:
            return Features(max(age, 0.0), self._reshares, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, *early)
        q = weighted / exposure
        p_low = p_up = q
        if interval:
            k = max(1, round(count))
            if k > 200:  # 3 significant digits: the interval moves < 1e-4, the quantile is cached
                k = round(k, 2 - len(str(k)) + 1)
            p_low = q * chi2_quantile(0.05, 2 * k) / (2 * k)
            p_up = q * chi2_quantile(0.95, 2 * k) / (2 * k)
        left = np.maximum(ccdf_now - ccdf_until, 0.0)
        seen = ages >= 0.0
        if not seen.all():  # a bucket after now (posts at or before now, as a rule)
            d, ccdf_now, left = d[seen], ccdf_now[seen], left[seen]
        offspring = q * float(_total(d * ccdf_now))
        offspring_h = q * float(_total(d * left))
        return Features(age, self._reshares, q, p_low, p_up, count, offspring, offspring_h, *early)

    def growth_bound(self, *, rough: bool = False) -> tuple[float, float] | None:
        """Upper bounds on the ``best`` forecast's size and band low (:meth:`predict`'s
        ``size`` and ``low``), without the kernel's terms; ``None`` where none is given
        here (another model, a growth law of other inputs, no post before the forecast's
        time, or no exposure to bound the infectiousness with).

        Why: the detector asks the ``[predicted]`` rule on a schedule, and the rule fires
        only past a size and a low in the thousands (``size > 10,000`` and ``low >
        2,000`` by default) that small clusters' forecasts are nowhere near (the
        benchmark's stream: 1,726 decisions, the largest low 515); the rule is monotone
        in both, so a bound under either threshold decides it without the forecast.

        ``rough=True``: the inputs' intervals from the sums the read holds, in O(1), not
        from the buckets (:meth:`_rough_inputs`): higher bounds, that settle nearly every
        decision of a young cluster for a few dozen float operations where the buckets'
        take about fifty NumPy calls; the detector asks them first.

        Why it is a bound. The law's ``mu`` is linear in its three inputs
        (:func:`graphs.growth.growth_inputs`), and each lies in an interval found
        here without the kernel's terms:

        - the window's share ``log1p(count / (n + 1))``: the count is computed as
          :meth:`features` computes it (:meth:`_in_window`), so it is between 0 (where
          the features have no infectiousness) and that exact value;
        - the branching ``log(q * n_star + 0.001)``: at least ``log(0.001)``; at most
          with ``q``'s upper bound. ``q`` is the weighted count over the exposure, the
          sum of each bucket's followers times the kernel's window integral at the
          bucket's age ``a``: ``int_0^min(a, w) phi(a - u) (1 - u / w) du`` over the
          window ``w``. The kernel ``phi`` is ``c`` up to its cutoff ``tau``, then
          falls: over the lags ``u`` from ``f = clip(a - tau, 0, w)`` to ``r = clip(a,
          0, w)`` it is ``c``, and over those before ``f`` at least ``phi(a)``, so the
          integral is at least ``c G(f, r) + phi(a) G(0, f)``, ``G(u1, u2) = (u2 - u1)
          (1 - (u1 + u2) / (2 w))`` (exactly the integral up to the cutoff; 0 for a
          bucket not yet reached). Their sum bounds the exposure below, and half of it
          is taken (an allowance for the rounding of both sums, far above it);
        - the first generation's share ``log1p(offspring_h / (n + 1))``: at least 0;
          ``offspring_h`` is ``q`` times the followers times the kernel's share still
          to come before the horizon, a share at most 1, so at most ``q``'s bound
          times all the followers.

        The largest ``mu`` over that box is at a corner
        (:meth:`graphs.growth.GrowthModel.law_at_most`); the truncated normal's
        quantiles do not decrease with ``mu`` (the normal family has a monotone
        likelihood ratio in its location, and truncation keeps it), so the forecast's
        median and low at that ``mu`` bound the forecast's. Rounding: ``mu`` is raised
        by 1e-9 (relative) and the quantiles by 1e-9 (in log growth), far above the
        rounding where the law's ``mu`` is at least ``-3 sigma``; below it, the computed
        quantile is noisy (``NormalDist.cdf`` goes through ``erf``, which loses digits
        deep in the tail: a few millionths of ``sigma`` at ``mu = -7 sigma``, up to 0.058
        ``sigma`` for a low quantile of 0.077 just before the tail rounds to 0 and the
        quantile with it), so the bound takes ``mu`` at least 0, where the median is 0.67
        ``sigma`` and a low quantile of 0.07 or more 0.088 ``sigma`` or more: over what
        any ``mu`` below gives, noise and all; a model's band lower than 0.07 is not
        bounded here (``tests/test_prediction_exact.py`` checks the quantiles on random
        draws, and holds the bound to the computed forecast).

        >>> p = IncrementalPredictor()
        >>> p.add(0.0, 500, original=True)
        >>> for i in range(1, 80):
        ...     p.add(i * 7.0, 120)
        >>> size, low = p.read(600.0).growth_bound()
        >>> f = p.predict(600.0)
        >>> f.size <= size < 10_000, f.low <= low < 2_000
        (True, True)
        >>> rough_size, rough_low = p.read(600.0).growth_bound(rough=True)
        >>> size <= rough_size, f.low <= low <= rough_low < 2_000
        (True, True)
        """
        cfg = self._cfg
        growth = cfg.growth
        window = self._window
        if (
            cfg.model != "best"
            or self._columns is None
            or window is None
            or len(growth.coef[0]) != SEISMIC_INPUTS + 1
            or self._age < 0.0
        ):
            return None
        n = float(self._reshares)
        if self._age >= cfg.horizon_s or n <= 0.0:
            return n, n  # what the forecast is there (_grown)
        signs = growth.signs_at(self._age)
        inputs = self._rough_inputs(window, n, signs) if rough else self._inputs(window, n, signs)
        if inputs is None:
            return None
        n1 = n + 1.0
        mu, sigma, p_lo, _ = growth.law(self._age, inputs)
        if p_lo < 0.07:  # a band too wide for the allowance below (the shipped: 0.077)
            return None
        mu += 1e-9 * (1.0 + abs(mu))
        mu = 0.0 if mu < 0.0 else mu  # max(mu, 0.0), no call
        z, lo = truncated_quantile(0.5, mu, sigma, 0.0), truncated_quantile(p_lo, mu, sigma, 0.0)
        grow = math.exp(1e-9)
        return n1 * math.exp(z) * grow - 1.0, n1 * math.exp(lo) * grow - 1.0

    def _inputs(
        self, window: float, n: float, signs: tuple[bool, ...]
    ) -> tuple[float, float, float] | None:
        """The corner's inputs of :meth:`growth_bound` from the buckets (the kernel's
        bounds a bucket; see there); ``None``: no exposure to bound ``q`` with."""
        cfg = self._cfg
        assert self._columns is not None
        centre, weighted, count = self._in_window(window)
        kernel = cfg.kernel
        tau, c = kernel.cutoff, kernel.c
        ages = self._p - centre
        # np.clip's values without its four layers of Python (they differ only in a zero's
        # sign: for an age of -0.0, `reached` is +0.0 where clip keeps -0.0; `flat` is
        # +0.0 there, so `least` and `most` come out +0.0 either way)
        flat = np.minimum(np.maximum(ages - tau, 0.0), window)
        reached = np.minimum(np.maximum(ages, 0.0), window)
        phi = c * (np.maximum(ages, tau) / tau) ** -(1.0 + kernel.theta)
        half = 0.5 / window
        most = c * (reached - flat) * (1.0 - (flat + reached) * half)
        rest = 1.0 - flat * half
        least = most + phi * flat * rest
        most += c * flat * rest
        _, _, d, _, _ = self._columns.cols
        exposure = 0.5 * float(np.dot(d, least))
        if not (exposure > 0.0 and weighted > 0.0):
            return None
        q_most = weighted / exposure
        q_least = weighted / (2.0 * float(np.dot(d, most)))
        n1 = n + 1.0
        total = float(_total(d))
        share = math.log1p(count / n1)
        # each input's low (high) is computed only where its coefficient makes the corner
        # take it (`law_at_most`): the other end would be thrown away. The first
        # generation's low (a power over the buckets) is the one that costs: its
        # coefficient is at least 0 at two decisions in three of a default replay's.
        fg, _, branching = signs
        if fg:
            first = math.log1p(q_most * (total * (1.0 + 1e-9)) / n1)
        else:
            # the share of reactions to come before the horizon: at least its span times
            # the kernel at the horizon (the kernel falls), less the ccdf's rounding
            span = cfg.horizon_s - self._age
            seen = ages >= 0.0
            after = c * (np.maximum(ages + span, tau) / tau) ** -(1.0 + kernel.theta)
            coming = 0.5 * float(np.dot(d[seen], after[seen])) * span - 1e-12 * total
            first = math.log1p(q_least * max(coming, 0.0) / n1)
        q = q_most if branching else q_least
        return first, share, math.log(q * cfg.n_star + 1e-3)

    def _rough_inputs(
        self, window: float, n: float, signs: tuple[bool, ...]
    ) -> tuple[float, float, float] | None:
        """The corner's inputs of :meth:`growth_bound` ``rough=True``: from the sums the
        read holds (``_sums``), no loop over the buckets; ``None``: no exposure to bound
        ``q`` with here (the buckets' bound may have one).

        Why each is a bound (the exposure is the sum over the buckets of the followers
        ``d`` times the kernel's window integral at the bucket's age ``a``, its
        follower-weighted mean time's; ``w`` the window, ``A`` the read's age, which no
        bucket's age passes; see :meth:`growth_bound` for the integral):

        - the exposure's low: the kernel falls, so over a bucket's lags it is at least
          ``phi(A)``, and the integral at least ``phi(A) G(0, min(a, w))``, which is at
          least ``phi(A) (a - a^2 / (2 w))`` at any ``a`` (the parabola's top is ``G``'s
          value ``w / 2`` at ``a = w``; under 0 where ``a < 0``, where the integral is 0).
          Summed over the buckets: ``sum d a = p D - DT`` exactly (``DT`` the posts' sum
          of followers times time), and ``sum d a^2`` at most the posts' own ``sum d (p -
          t)^2 = p^2 D - 2 p DT + DT2`` (a bucket's weighted mean is nearer p, squared,
          than its posts on average). Less a rounding allowance (1e-7 of the terms'
          magnitudes: sums of up to millions of posts), then halved as the buckets' is;
        - the exposure's high: the integral is at most ``c G(0, min(a, w)) <= c w / 2``,
          so the exposure at most ``c w D / 2``; twice that is taken;
        - the window's weighted count: at most ``n`` times the largest weight, ``1 + (t -
          p) / w`` at the latest post ``t`` (1 for posts at or before p); at least half
          the reshares held (``_recent``, the latest posts) in the window's later half
          whose narrow bucket the window holds whole (each weighs a half or more there),
          less the uploads; each less its rounding (1e-9 of ``n (1 + |p| / w)``). That
          low counts only where the exposure's low is over 0: where every post with
          followers is after the read, the forecast finds no exposure, and its ``q`` is 0;
        - the window's share between 0 and ``log1p(n / (n + 1))`` (the count is at most
          ``n``), the first generation's between 0 and ``q``'s high times ``D``.

        Where a cluster is young (the window up to half its age: every bucket's age at
        most ``2 w``) the parabola's low holds most of the exposure, and the margin of the
        shipped thresholds settles nearly every decision here (a default replay: 174 of
        176; ``tests/test_prediction_exact.py`` holds it to the forecast).
        """
        assert self._sums is not None
        cfg, kernel = self._cfg, self._cfg.kernel
        total, dt, dt_abs, dt2, latest, held = self._sums
        fg, up, branching = signs
        p, ap = self._p, abs(self._p)
        n1 = n + 1.0
        spent = 1e-9 * n * (1.0 + ap / window)
        half = 0.5 / window
        spread = p * p * total - 2.0 * p * dt + dt2
        slack = 1e-7 * (ap * total + dt_abs + (ap * ap * total + 2.0 * ap * dt_abs + dt2) * half)
        tau = kernel.cutoff
        # max(x, y) as its compare (`y if y > x else x`, the first of equals kept), no call
        age = self._age
        phi = kernel.c * ((tau if tau > age else age) / tau) ** -(1.0 + kernel.theta)
        exposure = 0.5 * phi * ((p * total - dt) - spread * half - slack)
        first = 0.0
        if fg or branching:
            if not exposure > 0.0:
                return None
            ahead = latest - p
            ahead = 0.0 if ahead < 0.0 else ahead
            q = (n * (1.0 + ahead / window) * (1.0 + 1e-9) + spent) / exposure
            if fg:
                first = math.log1p(q * (total * (1.0 + 1e-6)) / n1)
        if not branching:
            # q's low: 0 unless the exposure is known to be over 0 (where the forecast finds
            # none, every post with followers after the read, its q is 0, whatever the count)
            most = kernel.c * window * total
            held_q = 0.5 * held - spent
            held_q = 0.0 if held_q < 0.0 else held_q
            q = held_q / most if exposure > 0.0 and most > 0.0 else 0.0
        share = math.log1p(n / n1) if up else 0.0
        return first, share, math.log(q * cfg.n_star + 1e-3)

    def _in_window(self, window: float) -> tuple[FloatArray, float, float]:
        """Each bucket's follower-weighted mean time (``centre``), and the triangular
        window's weighted count of reshares and plain count, as :meth:`features` reads them
        (and :meth:`growth_bound`: one piece, so that both read the same numbers)."""
        assert self._columns is not None
        cols, old_hi = self._columns
        lo, n, d, dt, st = cols
        p = self._p
        hi = lo + self._cfg.bucket_s
        if old_hi is not None:
            hi[hi.shape[0] - old_hi.shape[0] :] = old_hi
        has = d > 0
        # a bucket of no followers takes its midpoint; where all have some (most reads),
        # the values the `where` would pick, with no midpoints computed
        centre = dt / d if has.all() else np.where(has, dt / np.where(has, d, 1.0), (lo + hi) / 2.0)
        slope = 1.0 / window
        start = p - window
        # triangular count of reshares in [start, p): exact for whole buckets; the
        # bucket cut by the window's start counts when its reshares' mean time is
        # inside (exact when they are all on one side; the weight there is ~0)
        inside = (lo >= start) & (lo < p)
        n_in = n[inside]
        weighted = float(_total(n_in + slope * (st[inside] - n_in * p)))
        total_in = _total(n_in)
        count = float(total_in)
        has = n > 0
        cut = (lo < start) & (hi > start) & has
        if cut.any():  # at most a bucket or two; none adds 0 (the sums are >= 0)
            cut &= st / np.where(has, n, 1.0) >= start
            n_cut = n[cut]
            weighted += float(_total(slope * (st[cut] - n_cut * start)))
            count = float(total_in + _total(n_cut))
        return centre, weighted, count


def fit_calibration(
    cascades: Sequence[Sequence[tuple[Features, int]]],
    *,
    level: float = 0.8,
    min_age_s: float = FIT_AGES_S[0],
    max_age_s: float = FIT_AGES_S[-1],
) -> Calibration:
    """Fit the ``best`` model on training cascades.

    ``cascades`` holds, per training cascade, ``(features, final)`` at the
    ages it was sampled (``FIT_AGES_S`` inside its horizon). Each cascade
    weighs the same. The amplification minimises the mean absolute log
    error (a median-seeking loss, since the figure of merit is the median
    error) by a grid search refined once; deterministic.

    Examples
    --------
    >>> f = lambda age, n, off: Features(age, n, 0.01, 0.0, 0.0, 0.0, off, off)
    >>> train = [[(f(3600.0, 10, 5.0), 20), (f(7200.0, 15, 5.0), 20)],
    ...          [(f(3600.0, 100, 50.0), 200), (f(7200.0, 150, 50.0), 200)]]
    >>> cal = fit_calibration(train)
    >>> round(cal.amplification(3600.0), 2), round(cal.amplification(7200.0), 2)
    (2.0, 1.0)
    """
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    rows = [
        (f.age_s, f.observed, f.offspring_horizon, final, len(c))
        for c in cascades
        for f, final in c
    ]
    if not rows:
        raise ValueError("no training samples")
    age, obs, off, fin, size = (np.array(x, dtype=np.float64) for x in zip(*rows, strict=True))
    weight = 1.0 / size
    x = np.log(np.clip(age, min_age_s, max_age_s) / 3600.0)
    target = np.log1p(fin)

    def losses(a_grid: FloatArray, b: float) -> FloatArray:
        amp = np.exp(a_grid[:, None] + b * x[None, :])
        err = np.abs(target[None, :] - np.log1p(obs[None, :] + amp * off[None, :]))
        return np.asarray(err @ weight, dtype=np.float64)

    def search(a_grid: FloatArray, b_grid: FloatArray) -> tuple[float, float]:
        table = np.stack([losses(a_grid, float(b)) for b in b_grid], axis=1)
        i, j = np.unravel_index(int(np.argmin(table)), table.shape)
        return float(a_grid[i]), float(b_grid[j])

    a0, b0 = search(np.linspace(-4.0, 4.0, 81), np.linspace(-2.0, 2.0, 41))
    a1, b1 = search(np.linspace(a0 - 0.1, a0 + 0.1, 21), np.linspace(b0 - 0.1, b0 + 0.1, 21))
    a1, b1 = search(np.linspace(a1 - 0.01, a1 + 0.01, 21), np.linspace(b1 - 0.01, b1 + 0.01, 21))
    pred = obs + np.exp(a1 + b1 * x) * off
    resid = target - np.log1p(pred)
    tail = (1.0 - level) / 2.0
    lows: list[float] = []
    highs: list[float] = []
    ages = tuple(sorted(set(FIT_AGES_S) | {min_age_s, max_age_s}))
    ages = tuple(a for a in ages if min_age_s <= a <= max_age_s)
    for a in ages:
        near = (age >= a / 2.0) & (age <= a * 2.0)
        r = resid[near] if np.any(near) else resid
        lows.append(round(float(np.quantile(r, tail)), 6))
        highs.append(round(float(np.quantile(r, 1.0 - tail)), 6))
    return Calibration(
        log_amp=round(a1, 6),
        log_amp_slope=round(b1, 6),
        min_age_s=min_age_s,
        max_age_s=max_age_s,
        ages_s=tuple(round(a, 3) for a in ages),
        q_low=tuple(lows),
        q_high=tuple(highs),
        level=level,
        cascades=len(cascades),
    )
