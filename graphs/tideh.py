"""TiDeH, the time-dependent Hawkes process of Kobayashi and Lambiotte (ICWSM 2016), per cascade.

A baseline row of ``viralwatch evaluate``, never a worker's forecast: it is
fitted on each cascade's own history at the observation time (so it is out
of fold by construction) and costs O(posts x steps) per forecast.

The model: a post ``j`` seen by ``d_j`` followers brings reshares at rate
``p(t) * d_j * phi(t - t_j)``, with ``phi`` Zhao et al.'s reaction-time
density (SEISMIC's: constant for 5 min, then a power law of exponent
``-(1 + 0.242)``, here normalised to 1) and an infectiousness that follows
the day and fades:

    p(t) = p0 * (1 - r0 * sin(2 pi ((t + t0) / 24 h + phi0))) * exp(-t / tau_m)

``t0`` is the time of day the original was posted. ``r0 = 0.424``,
``phi0 = 0.125`` (days) and ``tau_m = 2`` days are the paper's values, trained
on SEISMIC's Twitter data (the authors' code's defaults); only ``p0`` is
fitted per cascade, as in their training loop: estimates of the
instantaneous infectiousness over sliding windows (4 h wide, 1 h apart; a
single window as wide as the observation when that is shorter than 4 h, an
adaptation: the paper observes 6 h or more) are fitted by least squares.
The expected reshares still to come solve the self-consistent (Volterra)
equation of the paper, integrated by the trapezoid rule in steps of 0.1 h
up to the horizon, with the authors' cap on the mean followers
(``1 / (p0 * (1 + r0))``) that keeps the process from bursting.

Examples
--------
>>> t = [0.0, *(60.0 * i for i in range(1, 121))]  # a reshare a minute for 2 h
>>> d = [1000.0] + [100.0] * 120
>>> f = predict_tideh(t, d, 7200.0, 86_400.0)
>>> f.observed, round(f.p0, 4), round(f.size)  # per follower-hour; 113 more in the day
(120, 0.0286, 233)
>>> predict_tideh([0.0], [50.0], 3600.0, 86_400.0).size  # nothing to read a rate from
0.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from graphs.seismic import MemoryKernel

__all__ = ["PAPER", "TidehForecast", "TidehParams", "predict_tideh"]

FloatArray = NDArray[np.float64]
_H = 3600.0


@dataclass(frozen=True, slots=True)
class TidehParams:
    """The shared parameters (the paper's, in hours) and the numerical settings."""

    r0: float = 0.424
    phi0_days: float = 0.125
    tau_m_h: float = 48.0
    period_h: float = 24.0
    theta: float = 0.242
    cutoff_h: float = 5.0 / 60.0
    window_h: float = 4.0
    stride_h: float = 1.0
    dt_h: float = 0.1

    def __post_init__(self) -> None:
        if not (0.0 <= self.r0 < 1.0 and self.tau_m_h > 0 and self.period_h > 0):
            raise ValueError("need 0 <= r0 < 1, tau_m_h > 0 and period_h > 0")
        if not (self.window_h > 0 and self.stride_h > 0 and self.dt_h > 0):
            raise ValueError("window_h, stride_h and dt_h must be positive")

    @property
    def kernel(self) -> MemoryKernel:
        """Zhao et al.'s reaction-time density, in hours, integrating to 1."""
        return MemoryKernel(self.theta, self.cutoff_h, 1.0 / (self.cutoff_h * (1 + 1 / self.theta)))

    def shape(self, t_h: FloatArray, start_h: float) -> FloatArray:
        """``p(t) / p0``: the day's cycle and the fading."""
        phase = 2.0 * math.pi * ((t_h + start_h) / self.period_h + self.phi0_days)
        return np.asarray((1.0 - self.r0 * np.sin(phase)) * np.exp(-t_h / self.tau_m_h))


PAPER = TidehParams()


@dataclass(frozen=True, slots=True)
class TidehForecast:
    """Reshares by the horizon (``size``), those seen, and the fitted ``p0`` (per hour)."""

    size: float
    observed: int
    p0: float


def _fit_p0(t: FloatArray, d: FloatArray, obs_h: float, start_h: float, prm: TidehParams) -> float:
    """Least-squares ``p0`` from windowed estimates of the infectiousness (the paper's)."""
    k = prm.kernel
    width = min(prm.window_h, obs_h)
    starts = np.arange(0.0, obs_h - width + prm.stride_h / 2.0, prm.stride_h)
    est, mid = [], []
    for a in starts:
        b = a + width
        inside = t < b
        count = int(np.count_nonzero((t[1:] > a) & (t[1:] <= b)))
        exposure = float(np.sum(d[inside] * (k.ccdf(a - t[inside]) - k.ccdf(b - t[inside]))))
        if exposure > 0.0:
            est.append(count / exposure)
            mid.append(a + width / 2.0)
    if not est:
        return 0.0
    g = prm.shape(np.array(mid), start_h)
    return max(float(np.dot(g, est) / np.dot(g, g)), 0.0)


def _bins(t: FloatArray, d: FloatArray, obs_h: float) -> tuple[FloatArray, FloatArray]:
    """Posts summed per 10 s (per minute when over an hour old), at their follower-weighted time.

    The forecast evaluates the kernel at lags of at least ``now - t``, where
    it is smooth on those scales: the sums change it by under 1e-3 (tested).
    """
    width = np.where(obs_h - t > 1.0, 60.0, 10.0) / _H
    key = np.floor(t / width) * width
    edges, which = np.unique(key, return_inverse=True)
    weight = np.bincount(which, weights=d)
    mass = np.bincount(which, weights=d * t)
    wide = np.bincount(which, weights=width) / np.bincount(which)
    centre = np.where(weight > 0, mass / np.where(weight > 0, weight, 1.0), edges + wide / 2)
    return np.asarray(centre, np.float64), np.asarray(weight, np.float64)


def predict_tideh(
    times_s: Sequence[float] | FloatArray,
    followers: Sequence[float] | FloatArray,
    obs_s: float,
    horizon_s: float,
    *,
    start_h: float = 0.0,
    params: TidehParams = PAPER,
) -> TidehForecast:
    """TiDeH's forecast of the reshares by ``horizon_s``, from the posts up to ``obs_s``.

    ``times_s[0]`` is the original post (seconds from it), the rest its
    reshares; ``start_h``: the hour of the day the original was posted.
    """
    t_all = np.asarray(times_s, dtype=np.float64) / _H
    d_all = np.asarray(followers, dtype=np.float64)
    obs_h, end_h = obs_s / _H, horizon_s / _H
    seen = t_all <= obs_h
    t, d = t_all[seen], d_all[seen]
    n = int(t.size - 1)
    if n <= 0 or obs_h <= 0.0 or end_h <= obs_h:
        return TidehForecast(float(max(n, 0)), max(n, 0), 0.0)
    p0 = _fit_p0(t, d, obs_h, start_h, params)
    if p0 <= 0.0:
        return TidehForecast(float(n), n, 0.0)
    prm, k = params, params.kernel
    mean_d = min(float(np.mean(d[1:])), 1.0 / (p0 * (1.0 + prm.r0)))
    steps = np.arange(obs_h, end_h, prm.dt_h)
    p_t = p0 * prm.shape(steps, start_h)
    # direct reshares of the posts seen, per hour, at each step (posts summed per bin)
    centre, weight = _bins(t, d, obs_h)
    drive = np.concatenate(
        [
            k.pdf(steps[i : i + 256, None] - centre[None, :]) @ weight
            for i in range(0, steps.size, 256)
        ]
    )
    drive *= p_t
    alpha = mean_d * p_t * prm.dt_h
    phi0 = float(k.pdf(0.0))
    lag = k.pdf(prm.dt_h * np.arange(steps.size))  # phi(i dt)
    rate = np.empty(steps.size)
    rate[0] = drive[0]
    for i in range(1, steps.size):
        # trapezoid over earlier steps: half weight at the first, the current one solved for
        inner = lag[i] * rate[0] / 2.0 + float(np.dot(lag[i - 1 : 0 : -1], rate[1:i]))
        rate[i] = (drive[i] + alpha[i] * inner) / (1.0 - alpha[i] * phi0 / 2.0)
    return TidehForecast(n + prm.dt_h * float(rate.sum()), n, p0)
