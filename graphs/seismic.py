"""SEISMIC: final-size prediction of a reshare cascade (Zhao et al., KDD 2015).

A faithful port of the reference R package ``seismic`` (``memory.pdf``,
``memory.ccdf``, ``linear.kernel``, ``power.kernel``,
``integral.memory.kernel``, ``get.infectiousness``, ``pred.cascade``), so
that the numbers the paper's authors publish can be reproduced here and
used as the baseline that other models must beat.

The model: every post ``i`` (at time ``s_i``, seen by ``d_i`` followers)
makes reshares at rate ``p(t) * d_i * phi(t - s_i)``, where ``phi`` is the
human reaction-time density (constant for 5 minutes, then a power law) and
``p(t)`` the cascade's infectiousness. ``p`` is estimated from the reshares
in a triangular window that ends at the prediction time; the final size is
the observed count plus the expected offspring of what has been seen,
amplified by ``1 / (1 - p * n_star)`` for the generations to come (infinite
when the cascade is supercritical, ``p * n_star >= 1``).

Times are seconds relative to the original post (the first row of the R
package's data), sizes count reshares (the original post is not counted).

Examples
--------
A tiny cascade: the original post at 0 s with 1,000 followers, then a
reshare every 20 s for the first 10 minutes.

>>> import numpy as np
>>> times = np.concatenate([[0.0], np.arange(1.0, 31.0) * 20.0])
>>> followers = np.full(times.size, 100.0)
>>> followers[0] = 1000.0
>>> est = get_infectiousness(times, followers, [600.0])
>>> round(float(est.infectiousness[0]), 5)
0.02732
>>> pred = pred_cascade([600.0], est.infectiousness, times, followers, n_star=100)
>>> float(pred[0])  # p * n_star > 1: supercritical
inf
>>> float(pred_cascade([600.0], est.infectiousness, times, followers, n_star=30)[0]) > 30
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "C0",
    "CUTOFF_S",
    "DEFAULT_KERNEL",
    "MAX_WINDOW_S",
    "MIN_COUNT",
    "MIN_WINDOW_S",
    "N_STAR",
    "THETA",
    "Infectiousness",
    "MemoryKernel",
    "SeismicPrediction",
    "chi2_quantile",
    "get_infectiousness",
    "integral_memory_kernel",
    "pred_cascade",
    "predict_at",
]

#: Power-law exponent of the reaction-time density (R: ``theta``), fitted by the
#: authors on Twitter.
THETA = 0.2314843
#: Seconds during which the reaction-time density is constant (R: ``cutoff``).
CUTOFF_S = 300.0
#: The constant density before the cutoff (R: ``c``); with it the density
#: integrates to one.
C0 = 0.0006265725
#: Average number of followers of a future resharer (R: ``n.star`` default).
N_STAR = 100.0
#: Span of the triangular estimation window: ``prediction time / 2`` clamped to
#: [MIN_WINDOW_S, MAX_WINDOW_S] (R: ``max.window``, ``min.window``).
MAX_WINDOW_S = 7200.0
MIN_WINDOW_S = 300.0
#: Fewest reshares in the window before it widens to the last ones (R: ``min.count``).
MIN_COUNT = 5

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class MemoryKernel:
    """The human reaction-time density ``phi``: constant, then a power law.

    ``phi(t) = c`` for ``t < cutoff`` and ``c * (t / cutoff) ** -(1 + theta)``
    after it. The defaults are the R package's, measured on Twitter.

    Examples
    --------
    >>> k = MemoryKernel()
    >>> round(float(k.pdf(10.0)), 10), round(float(k.ccdf(0.0)), 6)
    (0.0006265725, 1.0)
    >>> round(float(k.ccdf(3600.0)), 4)  # share of reactions still to come after 1 h
    0.4568
    """

    theta: float = THETA
    cutoff: float = CUTOFF_S
    c: float = C0

    def __post_init__(self) -> None:
        if not (0.0 < self.theta < 1.0):
            raise ValueError(f"theta must be in (0, 1), got {self.theta}")
        if not (self.cutoff > 0.0 and self.c > 0.0):
            raise ValueError("cutoff and c must be positive")

    def pdf(self, t: ArrayLike) -> FloatArray:
        """Density at ``t`` seconds after the post (R: ``memory.pdf``)."""
        x = np.asarray(t, dtype=np.float64)
        safe = np.maximum(x, self.cutoff)
        return np.where(
            x < self.cutoff, self.c, self.c * np.power(safe / self.cutoff, -(1.0 + self.theta))
        )

    def ccdf(self, t: ArrayLike) -> FloatArray:
        """Probability that a reaction comes later than ``t`` (R: ``memory.ccdf``)."""
        x = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
        tail = self.c * self.cutoff ** (1.0 + self.theta) / self.theta
        safe = np.maximum(x, self.cutoff)
        return np.where(x <= self.cutoff, 1.0 - self.c * x, tail * np.power(safe, -self.theta))

    def window_integral(self, age: ArrayLike, slope: float, window: float) -> FloatArray:
        """Integral of ``phi(t - s)`` times the triangular window ending now.

        ``age`` is ``now - s`` for each post; the window weighs time ``t`` by
        ``slope * (t - now) + 1`` over ``[now - window, now]``. This is R's
        ``integral.memory.kernel`` written in terms of ages, which is the same
        arithmetic without R's cancellation of large absolute times. Its five
        cases overlap when ``window < cutoff`` (only very early on); as in R,
        the later case wins.
        """
        a = np.asarray(age, dtype=np.float64)
        th, tau, c = self.theta, self.cutoff, self.c
        k = c * tau ** (1.0 + th) / ((th - 1.0) * th)

        def lin(u1: FloatArray | float, u2: FloatArray | float) -> FloatArray:
            # integral over lags u2..u1 (u = now - t) of c * (1 - slope * u)
            return np.asarray(c * (u1 - u2) * (1.0 - slope * (u1 + u2) / 2.0), dtype=np.float64)

        def pw(x: FloatArray) -> FloatArray:
            # antiderivative of the power-law part in x = t - s
            xs = np.maximum(x, 1e-300)
            return np.asarray(
                k * np.power(xs, -th) * (1.0 - th - slope * ((1.0 - th) * a + th * xs)),
                dtype=np.float64,
            )

        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            case2 = lin(a, 0.0)
            tail = pw(a) - pw(np.full_like(a, tau))
            case3 = lin(a, a - tau) + tail
            case4 = lin(np.full_like(a, window), a - tau) + tail
            case5 = pw(a) - pw(a - window)
        conds = [
            a > window + tau,
            (a > window) & (a <= window + tau),
            (a > tau) & (a <= window),
            (a > 0.0) & (a <= tau),
        ]
        return np.asarray(np.select(conds, [case5, case4, case3, case2], 0.0), dtype=np.float64)


DEFAULT_KERNEL = MemoryKernel()


def integral_memory_kernel(
    p_time: float,
    share_time: ArrayLike,
    slope: float,
    window: float,
    kernel: MemoryKernel = DEFAULT_KERNEL,
) -> FloatArray:
    """R's ``integral.memory.kernel``: one entry per post, for one prediction time.

    Examples
    --------
    >>> v = integral_memory_kernel(1000.0, [0.0, 900.0, 1000.0], 1 / 500, 500.0)
    >>> [round(float(x), 6) for x in v]
    [0.045931, 0.056392, 0.0]
    """
    s = np.asarray(share_time, dtype=np.float64)
    return kernel.window_integral(p_time - s, slope, window)


@lru_cache(maxsize=4096)
def _gamma_quantile(q: float, shape: float) -> float:
    """Quantile of Gamma(shape, 1): Newton on the regularised incomplete gamma."""
    if not (0.0 < q < 1.0) or shape <= 0.0:
        raise ValueError(f"need 0 < q < 1 and shape > 0, got q={q}, shape={shape}")
    # Wilson-Hilferty start, then safeguarded Newton steps.
    z = NormalDist().inv_cdf(q)
    h = 1.0 / (9.0 * shape)
    x = max(shape * (1.0 - h + z * math.sqrt(h)) ** 3, 1e-8)
    lo, hi = 0.0, math.inf
    log_norm = math.lgamma(shape)
    for _ in range(100):
        f = _gamma_p(shape, x) - q
        if f > 0:
            hi = x
        else:
            lo = x
        dens = math.exp((shape - 1.0) * math.log(x) - x - log_norm)
        step = f / dens if dens > 0 else math.inf
        nxt = x - step
        if not (lo < nxt < hi):
            nxt = (lo + hi) / 2.0 if math.isfinite(hi) else 2.0 * x
        if abs(nxt - x) <= 1e-13 * max(x, 1.0):
            return nxt
        x = nxt
    return x


def _gamma_p(a: float, x: float) -> float:
    """Regularised lower incomplete gamma P(a, x) (series or continued fraction)."""
    if x <= 0.0:
        return 0.0
    log_pre = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        n = a
        for _ in range(100_000):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return min(1.0, total * math.exp(log_pre))
    # Lentz's continued fraction for Q(a, x)
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return max(0.0, 1.0 - math.exp(log_pre) * h)


def chi2_quantile(q: float, df: float) -> float:
    """R's ``qchisq(q, df)``, with the standard library only.

    Examples
    --------
    >>> round(chi2_quantile(0.95, 2), 6), round(-2 * math.log(0.05), 6)
    (5.991465, 5.991465)
    >>> round(chi2_quantile(0.05, 20), 4)
    10.8508

    Each (q, df) is computed once, when first met (``_gamma_quantile`` keeps 4,096): a
    forecast reads two, and a fresh worker's first forecasts meet the 400 of up to 200
    reshares in about 20 ms of CPU in all, once in its life (a table of them did not earn
    its 426 lines). A plain float whatever ``df`` is (a NumPy count first in the cache gave
    NumPy floats to every later caller).
    """
    return 2.0 * _gamma_quantile(float(q), float(df) / 2.0)


@dataclass(frozen=True, slots=True)
class Infectiousness:
    """What ``get.infectiousness`` returns: estimates and a 90% interval per time."""

    infectiousness: FloatArray
    p_up: FloatArray
    p_low: FloatArray
    #: Reshares inside each estimation window (the interval's degrees of freedom / 2).
    rt_num: NDArray[np.int64]


def _window(p: float, max_window: float, min_window: float) -> float:
    return min(max(p / 2.0, min_window), max_window)


def get_infectiousness(
    share_time: ArrayLike,
    degree: ArrayLike,
    p_time: ArrayLike,
    max_window: float = MAX_WINDOW_S,
    min_window: float = MIN_WINDOW_S,
    min_count: int = MIN_COUNT,
    kernel: MemoryKernel = DEFAULT_KERNEL,
) -> Infectiousness:
    """Estimate the infectiousness at each time of ``p_time`` (R: ``get.infectiousness``).

    ``share_time[0]`` (after sorting) is the original post: it exposes its
    followers but is not counted as a reshare. Each time is estimated on its
    own (R's grid only repeats the computation), with a triangular window of
    span ``p/2`` clamped to ``[min_window, max_window]``, widened to the last
    ``min_count + 1`` posts when it holds fewer than ``min_count``.

    One deliberate difference: R sorts ``share.time`` but not ``degree``; here
    both are sorted together. For sorted input (the R package's data and
    every example) the results are identical.

    Examples
    --------
    >>> est = get_infectiousness([0, 60, 120, 400], [50, 10, 10, 10], [300.0, 900.0])
    >>> [round(float(x), 5) for x in est.infectiousness]
    [0.09388, 0.05319]
    >>> [int(x) for x in est.rt_num]
    [2, 3]
    """
    s = np.asarray(share_time, dtype=np.float64)
    d = np.asarray(degree, dtype=np.float64)
    p_arr = np.atleast_1d(np.asarray(p_time, dtype=np.float64))
    if s.ndim != 1 or s.shape != d.shape or s.size == 0:
        raise ValueError("share_time and degree must be non-empty 1-D arrays of equal length")
    if min_count < 1 or not (0.0 < min_window <= max_window):
        raise ValueError("need min_count >= 1 and 0 < min_window <= max_window")
    order = np.argsort(s, kind="stable")
    s, d = s[order], d[order]
    reshares = s[1:]
    inf = np.zeros(p_arr.size)
    up = np.zeros(p_arr.size)
    low = np.zeros(p_arr.size)
    nums = np.zeros(p_arr.size, dtype=np.int64)
    for j, p in enumerate(p_arr):
        window = _window(float(p), max_window, min_window)
        before = int(np.searchsorted(s, p, side="left"))  # posts with s < p
        in_window = before - int(np.searchsorted(s, p - window, side="left"))
        if in_window < min_count:
            if before == 0:
                continue  # R yields NA here; nothing to estimate from
            first = s[max(before - min_count, 1) - 1]
            window = float(p - first)
        slope = 1.0 / window
        integral = float(np.sum(d * kernel.window_integral(p - s, slope, window)))
        tri = reshares[(reshares >= p - window) & (reshares < p)]
        weighted = float(np.sum(slope * (tri - p) + 1.0))
        rt_num = int(tri.size)
        nums[j] = rt_num
        if weighted == 0.0:
            continue
        inf[j] = weighted / integral
        low[j] = inf[j] * chi2_quantile(0.05, 2 * rt_num) / (2 * rt_num)
        up[j] = inf[j] * chi2_quantile(0.95, 2 * rt_num) / (2 * rt_num)
    return Infectiousness(infectiousness=inf, p_up=up, p_low=low, rt_num=nums)


def pred_cascade(
    p_time: ArrayLike,
    infectiousness: ArrayLike,
    share_time: ArrayLike,
    degree: ArrayLike,
    n_star: float | Sequence[float] = N_STAR,
    kernel: MemoryKernel = DEFAULT_KERNEL,
) -> FloatArray:
    """Predicted final number of reshares at each time (R: ``pred.cascade``).

    ``observed + p * sum(d_i * ccdf(t - s_i)) / (1 - p * n_star)``, infinite
    when ``p > 1 / n_star``. ``observed`` counts the posts up to ``t`` minus
    the original.

    Examples
    --------
    >>> round(float(pred_cascade([100.0], [0.001], [0.0, 50.0], [1000, 10])[0]), 4)
    2.0523
    """
    p_arr = np.atleast_1d(np.asarray(p_time, dtype=np.float64))
    q_arr = np.atleast_1d(np.asarray(infectiousness, dtype=np.float64))
    s = np.asarray(share_time, dtype=np.float64)
    d = np.asarray(degree, dtype=np.float64)
    stars = np.broadcast_to(np.asarray(n_star, dtype=np.float64), p_arr.shape)
    if q_arr.shape != p_arr.shape or s.shape != d.shape:
        raise ValueError("infectiousness must match p_time, degree must match share_time")
    out = np.zeros(p_arr.size)
    for i, (p, q, ns) in enumerate(zip(p_arr, q_arr, stars, strict=True)):
        now = s <= p
        rt0 = float(np.count_nonzero(now) - 1)
        rt1 = float(np.sum(d[now] * q * kernel.ccdf(p - s[now])))
        if q > 1.0 / ns or q * ns == 1.0:
            out[i] = math.inf
        else:
            out[i] = rt0 + rt1 / (1.0 - q * ns)
    return out


@dataclass(frozen=True, slots=True)
class SeismicPrediction:
    """SEISMIC at one observation time, with the interval R's estimate implies."""

    obs_seconds: float
    observed: int
    infectiousness: float
    predicted: float
    low: float
    high: float


def predict_at(
    share_time: ArrayLike,
    degree: ArrayLike,
    obs_seconds: float,
    n_star: float = N_STAR,
    kernel: MemoryKernel = DEFAULT_KERNEL,
) -> SeismicPrediction:
    """``get.infectiousness`` then ``pred.cascade`` at one time, plus the interval.

    The interval plugs R's 90% bounds on the infectiousness (``p.low``,
    ``p.up``) into ``pred.cascade``; ``high`` is infinite when ``p.up``
    makes the cascade supercritical.

    Examples
    --------
    >>> r = predict_at([0, 60, 120, 400, 800], [50, 10, 10, 10, 10], 900.0, n_star=5)
    >>> r.observed, round(r.infectiousness, 5), round(r.predicted, 2), round(r.low, 2), r.high
    (4, 0.12066, 22.55, 7.17, inf)
    """
    s = np.asarray(share_time, dtype=np.float64)
    d = np.asarray(degree, dtype=np.float64)
    est = get_infectiousness(s, d, [obs_seconds], kernel=kernel)
    q = float(est.infectiousness[0])
    bounds = pred_cascade(
        [obs_seconds] * 3,
        [q, float(est.p_low[0]), float(est.p_up[0])],
        s,
        d,
        n_star,
        kernel,
    )
    return SeismicPrediction(
        obs_seconds=float(obs_seconds),
        observed=int(np.count_nonzero(s <= obs_seconds) - 1),
        infectiousness=q,
        predicted=float(bounds[0]),
        low=float(bounds[1]),
        high=float(bounds[2]),
    )
