"""How much more a cascade will grow: a log-linear model learned per age, with conformal bands.

The ``best`` predictor of :mod:`graphs.prediction` asks this module one
question: given what the incremental state says at age ``a`` (a few
numbers, :func:`growth_inputs`), what is ``log((final + 1) / (observed +
1))``, the growth still to come before the horizon, and how sure is that?

The answer is a linear function of the inputs whose coefficients depend on
the age (Szabo and Huberman's log-linear regression, 2010, with SEISMIC's
estimates as regressors, as in Mishra et al.'s feature-driven view, 2016).
Coefficients are fitted at a grid of ages by least absolute deviation (the
figure of merit is the median error) and interpolated in log age between
them. The 80% band is split-conformal: the 10% and 90% quantiles of the
*out-of-fold* log errors at each age, so it says what held-out cascades
did, not what the training set did.

The inputs are scale-free on purpose (ratios to the reshares seen, and the
branching factor): cascades in a training set chosen for being large
teach a model that is told the current size that every cascade ends large.

Pure: NumPy and the standard library; no files. The shipped parameters are
``DEFAULT_GROWTH``, written out by ``viralwatch evaluate --show-model``.

Examples
--------
>>> m = GrowthModel(ages_s=(3600.0, 7200.0), coef=((0.5, 1.0, 0.0, 0.0), (0.1, 1.0, 0.0, 0.0)),
...                 q_low=(-0.2, -0.1), q_high=(0.4, 0.2))
>>> round(m.log_growth(3600.0, (0.0, 0.0, 0.0)), 3), round(m.log_growth(1e9, (0.0, 0.0, 0.0)), 3)
(0.5, 0.1)
>>> m.band(5000.0)  # interpolated in log age
(-0.153, 0.305)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_GROWTH",
    "INPUTS",
    "GrowthModel",
    "fit_growth",
    "growth_inputs",
    "kfold",
    "lad",
]

FloatArray = NDArray[np.float64]

#: What each input is (the first coefficient is the intercept).
INPUTS: tuple[str, ...] = (
    "log1p(first generation before the horizon / (observed + 1))",
    "log1p(reshares in the estimation window / (observed + 1))",
    "log(p * n_star + 0.001)",
)


def growth_inputs(
    observed: float, offspring_horizon: float, window_reshares: float, branching: float
) -> tuple[float, float, float]:
    """The model's inputs from the incremental state's figures (see ``INPUTS``).

    >>> [round(x, 3) for x in growth_inputs(99, 100.0, 50.0, 0.5)]
    [0.693, 0.405, -0.691]
    """
    n1 = float(observed) + 1.0
    return (
        math.log1p(max(offspring_horizon, 0.0) / n1),
        math.log1p(max(window_reshares, 0.0) / n1),
        math.log(max(branching, 0.0) + 1e-3),
    )


def _interp_weights(ages: Sequence[float], age_s: float) -> tuple[int, int, float]:
    """Neighbouring grid ages of ``age_s`` and the weight of the upper one (log age)."""
    if age_s <= ages[0]:
        return 0, 0, 0.0
    if age_s >= ages[-1]:
        return len(ages) - 1, len(ages) - 1, 0.0
    j = bisect.bisect_right(ages, age_s)
    lo, hi = ages[j - 1], ages[j]
    return j - 1, j, (math.log(age_s) - math.log(lo)) / (math.log(hi) - math.log(lo))


@dataclass(frozen=True, slots=True)
class GrowthModel:
    """Coefficients and conformal quantiles per age, and where they came from.

    ``coef[i]`` is ``(intercept, *weights of INPUTS)`` at ``ages_s[i]``;
    ``q_low[i]`` / ``q_high[i]`` are the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of out-of-fold ``log((final + 1) /
    (predicted + 1))`` there. Outside the grid the nearest age's values hold.
    """

    ages_s: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]
    q_low: tuple[float, ...]
    q_high: tuple[float, ...]
    level: float = 0.8
    horizon_s: float = 7 * 86_400.0
    cascades: int = 0
    provenance: str = ""

    def __post_init__(self) -> None:
        n = len(self.ages_s)
        if n == 0 or not (len(self.coef) == len(self.q_low) == len(self.q_high) == n):
            raise ValueError("ages_s, coef, q_low and q_high must be non-empty, of equal length")
        if list(self.ages_s) != sorted(set(self.ages_s)) or self.ages_s[0] <= 0:
            raise ValueError("ages_s must be positive and increasing")
        if any(len(c) != len(INPUTS) + 1 for c in self.coef):
            raise ValueError(f"each coef needs {len(INPUTS) + 1} numbers")
        if not 0.0 < self.level < 1.0:
            raise ValueError("level must be in (0, 1)")

    def log_growth(self, age_s: float, inputs: Sequence[float]) -> float:
        """Predicted ``log((final + 1) / (observed + 1))`` at ``age_s``."""
        i, j, w = _interp_weights(self.ages_s, age_s)
        a, b = self.coef[i], self.coef[j]
        x = (1.0, *inputs)
        return sum(((1.0 - w) * ca + w * cb) * xi for ca, cb, xi in zip(a, b, x, strict=True))

    def predict(self, age_s: float, inputs: Sequence[float]) -> tuple[float, float, float]:
        """``log_growth`` and ``band`` in one look-up (what a worker calls per forecast)."""
        i, j, w = _interp_weights(self.ages_s, age_s)
        a, b = self.coef[i], self.coef[j]
        z = a[0] + w * (b[0] - a[0])
        for ca, cb, xi in zip(a[1:], b[1:], inputs, strict=True):
            z += (ca + w * (cb - ca)) * xi
        lo = self.q_low[i] + w * (self.q_low[j] - self.q_low[i])
        hi = self.q_high[i] + w * (self.q_high[j] - self.q_high[i])
        return z, lo, hi

    def band(self, age_s: float) -> tuple[float, float]:
        """Log-error quantiles at ``age_s`` (rounded to 3 decimals)."""
        i, j, w = _interp_weights(self.ages_s, age_s)
        lo = (1.0 - w) * self.q_low[i] + w * self.q_low[j]
        hi = (1.0 - w) * self.q_high[i] + w * self.q_high[j]
        return round(lo, 3), round(hi, 3)


def kfold(n: int, folds: int, seed: int) -> tuple[int, ...]:
    """Fold of each of ``n`` items: a seeded shuffle dealt round-robin (sizes differ by <= 1).

    >>> kfold(7, 3, seed=0)
    (2, 0, 0, 2, 1, 1, 0)
    >>> sorted(kfold(7, 3, seed=0)) == sorted(i % 3 for i in range(7))
    True
    """
    if folds < 2 or folds > max(n, 2):
        raise ValueError(f"need 2 <= folds <= {n} items, got {folds}")
    order = np.random.default_rng(seed).permutation(n)
    out = [0] * n
    for rank, i in enumerate(order):
        out[int(i)] = rank % folds
    return tuple(out)


def lad(x: FloatArray, y: FloatArray, iterations: int = 60, ridge: float = 0.003) -> FloatArray:
    """Least absolute deviation coefficients by iteratively reweighted least squares.

    Deterministic; residuals under 1e-3 weigh as 1e-3 (the L1 loss smoothed
    there). ``ridge`` (per sample) pulls every coefficient but the first
    (the intercept) towards 0: minutes after an upload the estimation
    window holds the whole cascade, an input is then nearly constant, and
    without it the fit trades huge opposite coefficients for noise.

    >>> xs = np.column_stack([np.ones(5), np.arange(5.0)])
    >>> [round(float(c), 2) + 0.0 for c in lad(xs, np.array([0.0, 1.0, 2.0, 30.0, 4.0]))]
    [0.0, 1.0]
    """
    n, p = x.shape
    pull = np.sqrt(ridge * n) * np.eye(p)[1:]
    w = np.ones_like(y)
    coef: FloatArray = np.zeros(p)
    for _ in range(iterations):
        sw = np.sqrt(w)
        a = np.vstack([x * sw[:, None], pull])
        b = np.concatenate([y * sw, np.zeros(p - 1)])
        coef = np.asarray(np.linalg.lstsq(a, b, rcond=None)[0], np.float64)
        w = 1.0 / np.maximum(np.abs(y - x @ coef), 1e-3)
    return coef


def _conformal(resid: FloatArray, level: float) -> tuple[float, float]:
    """Split-conformal quantiles with the finite-sample correction."""
    n = resid.size
    tail = (1.0 - level) / 2.0
    k_lo = max(math.floor(tail * (n + 1)) - 1, 0)
    k_hi = min(math.ceil((1.0 - tail) * (n + 1)) - 1, n - 1)
    s = np.sort(resid)
    return float(s[k_lo]), float(s[k_hi])


def fit_growth(
    samples: Sequence[tuple[int, float, Sequence[float], float, float]],
    ages_s: Sequence[float],
    *,
    level: float = 0.8,
    folds: int = 10,
    seed: int = 0,
    horizon_s: float = 7 * 86_400.0,
    provenance: str = "",
) -> GrowthModel:
    """Fit a :class:`GrowthModel` on ``(cascade, age_s, inputs, observed, final)`` samples.

    Samples are grouped by the grid age they were taken at (``ages_s``);
    each age gets its own least-absolute-deviation fit on every sample
    there, and its band from the errors of ``folds``-fold cross-fits over
    the *cascades* (seeded): a cascade's error is always measured by
    coefficients fitted without it.

    Examples
    --------
    >>> rng = np.random.default_rng(3)
    >>> rows = []
    >>> for c in range(200):
    ...     off = float(rng.uniform(0, 3))
    ...     obs = 100.0
    ...     final = (obs + 1) * math.exp(0.2 + 0.9 * math.log1p(off / 101) + rng.normal(0, 0.1)) - 1
    ...     rows.append((c, 3600.0, (math.log1p(off / 101), 0.0, 0.0), obs, final))
    >>> m = fit_growth(rows, [3600.0])
    >>> round(m.coef[0][0], 1), m.cascades, m.q_low[0] < 0 < m.q_high[0]
    (0.2, 200, True)
    """
    if not samples:
        raise ValueError("no training samples")
    grid = sorted(set(float(a) for a in ages_s))
    by_age: dict[float, list[tuple[int, Sequence[float], float, float]]] = {a: [] for a in grid}
    for cid, age, xs, obs, fin in samples:
        near = min(grid, key=lambda g: abs(math.log(g) - math.log(max(age, 1e-9))))
        if abs(near - age) > 1e-6 * near:
            raise ValueError(f"sample at age {age:g} s is not on the grid")
        by_age[near].append((cid, xs, obs, fin))
    ids = sorted({s[0] for s in samples})
    fold_of = dict(zip(ids, kfold(len(ids), min(folds, len(ids)), seed), strict=True))
    ages, coefs, lows, highs = [], [], [], []
    p = len(INPUTS) + 1
    for a in grid:
        rows = by_age[a]
        if len(rows) < 2 * p:
            continue
        x = np.array([(1.0, *r[1]) for r in rows], dtype=np.float64)
        y = np.log1p(np.array([r[3] for r in rows])) - np.log1p(np.array([r[2] for r in rows]))
        fold = np.array([fold_of[r[0]] for r in rows])
        resid = np.empty_like(y)
        for k in sorted(set(fold.tolist())):
            out = fold == k
            coef = lad(x[~out], y[~out]) if np.count_nonzero(~out) >= p else np.zeros(p)
            # the prediction is never below what is seen: growth below 0 is 0
            resid[out] = y[out] - np.maximum(x[out] @ coef, 0.0)
        lo, hi = _conformal(resid, level)
        ages.append(round(a, 3))
        coefs.append(tuple(round(float(c), 6) for c in lad(x, y)))
        lows.append(round(lo, 6))
        highs.append(round(hi, 6))
    if not ages:
        raise ValueError(
            f"too few training cascades for the growth model: {len(ids)}, "
            f"it needs {2 * p} at one age at least"
        )
    return GrowthModel(
        ages_s=tuple(ages),
        coef=tuple(coefs),
        q_low=tuple(lows),
        q_high=tuple(highs),
        level=level,
        horizon_s=horizon_s,
        cascades=len(ids),
        provenance=provenance,
    )


# Written by `viralwatch evaluate ../shared/data/cascades/twitter-seismic --show-model`;
# tests/test_growth.py checks that refitting gives it back.
DEFAULT_GROWTH = GrowthModel(
    ages_s=(
        56.25,
        70.871,
        89.291,
        112.5,
        141.741,
        178.583,
        225.0,
        283.482,
        357.165,
        450.0,
        566.964,
        714.33,
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
        72571.452,
        91434.301,
        115200.0,
        145142.905,
        182868.601,
        230400.0,
        290285.81,
        365737.202,
        460800.0,
    ),
    coef=(
        (7.016703, -0.397298, -3.334105, -0.205862),
        (6.97986, -0.401445, -3.828558, -0.193486),
        (7.606862, -0.736336, -3.820336, -0.156525),
        (8.107305, -1.068039, -3.859729, -0.111449),
        (8.038928, -1.221936, -3.892717, -0.094077),
        (7.258842, -0.872817, -4.558362, -0.104429),
        (7.346203, -0.996931, -4.907766, -0.09358),
        (6.897104, -0.714604, -5.590435, -0.106165),
        (2.927302, 0.637479, -3.444668, -0.14507),
        (1.009323, 0.578937, 0.127391, -0.088138),
        (0.556462, 0.277771, 2.309085, -0.113994),
        (0.511169, 0.060369, 3.012201, -0.136942),
        (0.216965, 0.229459, 3.213174, -0.156492),
        (0.232829, -0.079312, 3.639699, -0.17858),
        (0.124148, 0.010063, 3.531088, -0.186054),
        (-0.1071, 0.182407, 3.734587, -0.196881),
        (-0.102712, -0.166162, 4.252458, -0.212701),
        (-0.06276, -0.290176, 3.922525, -0.223125),
        (-0.046451, -0.139965, 3.195985, -0.216449),
        (-0.108886, -0.072213, 3.047875, -0.212052),
        (-0.216549, 0.326818, 2.687734, -0.185144),
        (-0.197244, -0.011421, 2.973829, -0.197458),
        (-0.195938, -0.013475, 2.808353, -0.183186),
        (-0.170245, -0.119432, 2.712562, -0.163297),
        (-0.192599, 0.109835, 2.40808, -0.137986),
        (-0.114869, 0.217141, 2.11327, -0.123664),
        (-0.073745, 0.314085, 2.317261, -0.099317),
        (-0.056862, 0.647834, 1.728283, -0.069813),
        (-0.000296, 0.560453, 1.64803, -0.050335),
        (0.061808, 0.447246, 1.724286, -0.020561),
        (0.051479, 0.539774, 1.312536, -0.011761),
        (0.041329, 0.567366, 1.905315, 0.000681),
        (0.017724, 0.78382, 1.780931, -0.000759),
        (0.050742, 0.670164, 1.040499, 0.00379),
        (0.05087, 0.576233, 0.746452, 0.005767),
        (0.02961, 0.642091, 0.672714, 0.003524),
        (0.028852, 0.535975, 0.271084, 0.003068),
        (0.024197, 0.622056, 0.202983, 0.003557),
        (0.014321, 0.565875, 0.140114, 0.002163),
        (0.008947, 0.448636, 0.084278, 0.001362),
    ),
    q_low=(
        -0.700554,
        -0.684869,
        -0.704126,
        -0.682085,
        -0.669021,
        -0.643806,
        -0.643391,
        -0.656139,
        -0.653648,
        -0.670898,
        -0.670315,
        -0.664509,
        -0.633918,
        -0.604644,
        -0.60229,
        -0.563811,
        -0.532712,
        -0.500661,
        -0.483038,
        -0.455019,
        -0.43088,
        -0.402217,
        -0.378096,
        -0.328075,
        -0.306478,
        -0.281227,
        -0.240622,
        -0.196555,
        -0.164414,
        -0.133501,
        -0.104115,
        -0.079695,
        -0.062729,
        -0.046683,
        -0.039506,
        -0.027546,
        -0.018066,
        -0.014405,
        -0.008317,
        -0.004151,
    ),
    q_high=(
        1.585179,
        1.703773,
        1.934234,
        2.051436,
        2.129312,
        2.366906,
        2.387509,
        2.28578,
        2.581708,
        2.586501,
        2.465814,
        2.434793,
        2.345746,
        2.095626,
        1.84519,
        1.673075,
        1.605023,
        1.503847,
        1.430867,
        1.299309,
        1.173532,
        0.988904,
        0.943588,
        0.849192,
        0.766786,
        0.702215,
        0.67686,
        0.615,
        0.507319,
        0.459092,
        0.370128,
        0.271284,
        0.225245,
        0.213348,
        0.18266,
        0.137514,
        0.103964,
        0.053541,
        0.029816,
        0.016229,
    ),
    level=0.8,
    horizon_s=604800.0,
    cascades=638,
    provenance=(
        "fitted 2026-12-03 by `viralwatch evaluate ../shared/data/cascades/twitter-seismic "
        "--show-model`: data: 638 Twitter retweet cascades (Oct-Nov 2011, a subset of the "
        "SEISMIC data, MIT licence), each observed 7 days, each with at least 2,002 retweets; "
        "coefficients: least absolute deviation on all 638 at each age; band: 10-fold "
        "cross-fits over the cascades (seed 0), split-conformal 80%"
    ),
)
