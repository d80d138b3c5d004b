"""How much more a cascade will grow: a truncated log-normal model learned per age.

The ``best`` predictor of :mod:`graphs.prediction` asks this module one
question: given what the incremental state says at age ``a`` (a few
numbers, :func:`growth_inputs`), how is ``y = log((final + 1) / (observed
+ 1))``, the growth still to come before the horizon, distributed?

The answer is a normal law of mean ``x . coef(a)`` and spread ``sigma(a)``
(Szabo and Huberman's log-linear regression, 2010, with SEISMIC's
estimates as regressors, as in Mishra et al.'s feature-driven view, 2016),
truncated below at 0: a cascade never shrinks. Coefficients are fitted at
a grid of ages and interpolated in log age between them.

**Why truncated, and where.** Training data are chosen for being large
(the 638 Twitter cascades all have at least 2,002 retweets). A cascade of
300 at one hour is in such a sample only because it went on to 2,002: a
plain regression learns from it that small cascades grow a lot, and would
promise thousands to every small cluster of a real stream. So the fit is
by *truncated* likelihood: each training cascade's density is divided by
the chance, under the model, that it would have passed the selection
(``y >= log((selected_at + 1) / (observed + 1))``). The coefficients then
describe the cascades the sample was drawn from, not the sample; that is
what a worker uses (:meth:`GrowthModel.quantiles` with ``lower=0``). The
same model *given* the selection (``lower`` at the selection threshold) is
what an evaluation on the selected data may report beside it, labelled as
such.

The 80% band is calibrated in probability: the out-of-fold probability
integral transforms of the training cascades under the selected law give
its two quantiles (split-conformal), so a band reads "the model's
``p_low`` to ``p_high`` quantiles", which held-out cascades fell between
80% of the time.

Pure: NumPy, SciPy's special functions and optimiser (fitting only), the
standard library; no files. A forecast needs only the standard library.
The shipped parameters are ``DEFAULT_GROWTH``, written out by ``viralwatch
evaluate --show-model``.

Examples
--------
>>> m = GrowthModel(ages_s=(3600.0, 7200.0), coef=((0.5, 1.0, 0.0, 0.0), (0.1, 1.0, 0.0, 0.0)),
...                 sigma=(0.5, 0.5), p_low=(0.1, 0.1), p_high=(0.9, 0.9))
>>> [round(v, 3) for v in m.quantiles(3600.0, (0.0, 0.0, 0.0))]  # median, band
[0.6, 0.151, 1.189]
>>> [round(v, 3) for v in m.quantiles(3600.0, (0.0, 0.0, 0.0), lower=1.0)]  # given y >= 1
[1.205, 1.034, 1.574]
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_GROWTH",
    "INPUTS",
    "GrowthModel",
    "fit_growth",
    "fit_truncated",
    "growth_inputs",
    "kfold",
    "truncated_quantile",
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


_STD = NormalDist()


def truncated_quantile(p: float, mu: float, sigma: float, lower: float) -> float:
    """The ``p`` quantile of a normal law ``(mu, sigma)`` truncated below at ``lower``.

    Through the upper tail (``sf``), so a law far below ``lower`` still
    gives a finite answer, just above ``lower``.

    >>> round(truncated_quantile(0.5, 0.0, 1.0, -50.0), 6)  # no truncation: the median
    0.0
    >>> round(truncated_quantile(0.5, 0.0, 1.0, 0.0), 4)  # the half-normal's median
    0.6745
    >>> 8.0 < truncated_quantile(0.5, 0.0, 1.0, 8.0) < 8.2, truncated_quantile(0.5, 0.0, 1.0, 40.0)
    (True, 40.0)
    """
    tail = _STD.cdf(-(lower - mu) / sigma) * (1.0 - p)
    if not tail > 1e-300:
        return lower
    return max(lower, mu - sigma * _STD.inv_cdf(tail))


@dataclass(frozen=True, slots=True)
class GrowthModel:
    """Coefficients, spread and calibrated band per age, and where they came from.

    ``coef[i]`` is ``(intercept, *weights of INPUTS)`` at ``ages_s[i]`` and
    ``sigma[i]`` the spread there, of the law of ``y = log((final + 1) /
    (observed + 1))`` before truncation. The band is the law's ``p_low[i]``
    to ``p_high[i]`` quantiles (calibrated to hold ``level`` of held-out
    outcomes). ``selected_at``: the training cascades were all at least
    this large, and the fit allowed for it (0: no selection). Outside the
    grid the nearest age's values hold.
    """

    ages_s: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]
    sigma: tuple[float, ...]
    p_low: tuple[float, ...]
    p_high: tuple[float, ...]
    level: float = 0.8
    horizon_s: float = 7 * 86_400.0
    selected_at: float = 0.0
    cascades: int = 0
    provenance: str = ""

    def __post_init__(self) -> None:
        n = len(self.ages_s)
        if n == 0 or not (
            len(self.coef) == len(self.sigma) == len(self.p_low) == len(self.p_high) == n
        ):
            raise ValueError(
                "ages_s, coef, sigma, p_low and p_high must be non-empty, equal length"
            )
        if list(self.ages_s) != sorted(set(self.ages_s)) or self.ages_s[0] <= 0:
            raise ValueError("ages_s must be positive and increasing")
        if any(len(c) != len(INPUTS) + 1 for c in self.coef):
            raise ValueError(f"each coef needs {len(INPUTS) + 1} numbers")
        if any(not s > 0 for s in self.sigma):
            raise ValueError("sigma must be positive")
        if any(
            not 0.0 < lo < 0.5 < hi < 1.0 for lo, hi in zip(self.p_low, self.p_high, strict=True)
        ):
            raise ValueError("need 0 < p_low < 0.5 < p_high < 1")
        if not 0.0 < self.level < 1.0:
            raise ValueError("level must be in (0, 1)")
        if self.selected_at < 0:
            raise ValueError("selected_at must be >= 0")

    def law(self, age_s: float, inputs: Sequence[float]) -> tuple[float, float, float, float]:
        """``(mu, sigma, p_low, p_high)`` at ``age_s``, interpolated in log age."""
        i, j, w = _interp_weights(self.ages_s, age_s)
        a, b = self.coef[i], self.coef[j]
        mu = a[0] + w * (b[0] - a[0])
        for ca, cb, xi in zip(a[1:], b[1:], inputs, strict=True):
            mu += (ca + w * (cb - ca)) * xi
        sigma = self.sigma[i] + w * (self.sigma[j] - self.sigma[i])
        lo = self.p_low[i] + w * (self.p_low[j] - self.p_low[i])
        hi = self.p_high[i] + w * (self.p_high[j] - self.p_high[i])
        return mu, sigma, lo, hi

    def quantiles(
        self, age_s: float, inputs: Sequence[float], lower: float = 0.0
    ) -> tuple[float, float, float]:
        """Median, band low and band high of ``y``, given ``y >= lower`` (what a worker calls).

        ``lower=0``: a cascade does not shrink, and nothing else is known
        (the production forecast). ``lower=log((S + 1) / (observed + 1))``:
        the cascade is known to end with at least ``S`` reshares.
        """
        mu, sigma, p_lo, p_hi = self.law(age_s, inputs)
        lower = max(lower, 0.0)
        return (
            truncated_quantile(0.5, mu, sigma, lower),
            truncated_quantile(p_lo, mu, sigma, lower),
            truncated_quantile(p_hi, mu, sigma, lower),
        )

    def log_growth(self, age_s: float, inputs: Sequence[float]) -> float:
        """Median of ``y`` at ``age_s``, with nothing known but ``y >= 0``."""
        return self.quantiles(age_s, inputs)[0]


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


#: The spread of log growth is kept between these (a fit cannot make it 0 or endless).
_LOG_S = (math.log(0.005), math.log(10.0))


def fit_truncated(
    x: FloatArray,
    y: FloatArray,
    lower: FloatArray,
    ridge: float = 0.001,
    start: tuple[FloatArray, float] | None = None,
) -> tuple[FloatArray, float]:
    """Coefficients and spread of ``y ~ normal(x @ coef, sigma)`` truncated below at ``lower``.

    Maximum likelihood: each sample's density is divided by the chance of
    ``y >= lower`` under the model, so a sample chosen for ``y >= lower``
    teaches the law *before* the choice (BFGS with the exact gradient;
    deterministic). ``ridge`` (per sample) pulls every coefficient but the
    first (the intercept) towards 0: minutes after an upload an input is
    nearly constant, and without it the fit trades huge opposite
    coefficients for noise. ``start``: where to begin (default: least squares).

    >>> rng = np.random.default_rng(0)
    >>> x = np.column_stack([np.ones(4000), rng.uniform(0, 2, 4000)])
    >>> y = x @ [-1.0, 1.0] + rng.normal(0, 0.5, 4000)
    >>> keep = y >= 0.5  # a sample chosen for being large
    >>> coef, s = fit_truncated(x[keep], y[keep], np.full(keep.sum(), 0.5), ridge=0.0)
    >>> [round(float(c), 1) for c in coef], round(s, 1)  # the law before the choice
    ([-0.9, 0.9], 0.5)
    >>> plain = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
    >>> [round(float(c), 1) for c in plain]  # what a plain fit of the chosen sample learns
    [0.4, 0.3]
    """
    from scipy.optimize import minimize
    from scipy.special import log_ndtr

    n, p = x.shape
    pull = ridge * n
    if start is None:
        first = np.asarray(np.linalg.lstsq(x, y, rcond=None)[0], np.float64)
        start = first, float(np.std(y - x @ first))
    log_pdf_c = 0.5 * math.log(2.0 * math.pi)

    def loss(theta: FloatArray) -> tuple[float, FloatArray]:
        coef, log_s = theta[:p], min(max(float(theta[p]), _LOG_S[0]), _LOG_S[1])
        s = math.exp(log_s)
        mu = x @ coef
        z = (y - mu) / s
        w = (lower - mu) / s
        log_sf = log_ndtr(-w)
        mills = np.exp(-0.5 * w * w - log_pdf_c - log_sf)  # pdf(w) / sf(w)
        value = float(np.sum(log_s + 0.5 * z * z + log_sf)) + pull * float(coef[1:] @ coef[1:])
        g_mu = (mills - z) / s
        grad = np.empty(p + 1)
        grad[:p] = x.T @ g_mu
        grad[1:p] += 2.0 * pull * coef[1:]
        inside = _LOG_S[0] < float(theta[p]) < _LOG_S[1]
        grad[p] = float(np.sum(1.0 - z * z + mills * w)) if inside else 0.0
        return value, grad

    theta0 = np.concatenate([start[0], [math.log(max(start[1], 0.05))]])
    res = minimize(loss, theta0, jac=True, method="BFGS")
    theta = np.asarray(res.x, np.float64)
    return theta[:p], math.exp(min(max(float(theta[p]), _LOG_S[0]), _LOG_S[1]))


def _pit(x: FloatArray, y: FloatArray, lower: FloatArray, coef: FloatArray, s: float) -> FloatArray:
    """Where each ``y`` falls in its law truncated at ``lower`` (uniform if the model holds)."""
    from scipy.special import log_ndtr

    mu = x @ coef
    z = np.maximum((y - mu) / s, (lower - mu) / s)
    return np.asarray(1.0 - np.exp(log_ndtr(-z) - log_ndtr(-(lower - mu) / s)), np.float64)


def _conformal(scores: FloatArray, level: float) -> tuple[float, float]:
    """Split-conformal quantiles with the finite-sample correction."""
    n = scores.size
    tail = (1.0 - level) / 2.0
    k_lo = max(math.floor(tail * (n + 1)) - 1, 0)
    k_hi = min(math.ceil((1.0 - tail) * (n + 1)) - 1, n - 1)
    s = np.sort(scores)
    return float(s[k_lo]), float(s[k_hi])


def fit_growth(
    samples: Sequence[tuple[int, float, Sequence[float], float, float]],
    ages_s: Sequence[float],
    *,
    selected_at: float = 0.0,
    level: float = 0.8,
    folds: int = 10,
    seed: int = 0,
    horizon_s: float = 7 * 86_400.0,
    provenance: str = "",
) -> GrowthModel:
    """Fit a :class:`GrowthModel` on ``(cascade, age_s, inputs, observed, final)`` samples.

    Samples are grouped by the grid age they were taken at (``ages_s``);
    each age gets its own truncated fit: a sample's ``y`` is known to be
    at least ``log((selected_at + 1) / (observed + 1))`` (and at least 0).
    The band comes from ``folds``-fold cross-fits over the *cascades*
    (seeded): a cascade's probability transform is always measured by
    coefficients fitted without it.

    Examples
    --------
    >>> rng = np.random.default_rng(3)
    >>> rows = []
    >>> for c in range(300):
    ...     off = float(rng.uniform(0, 3))
    ...     y = max(0.2 + 0.9 * math.log1p(off / 101) + rng.normal(0, 0.1), 0.0)
    ...     x = (math.log1p(off / 101), 0.0, 0.0)
    ...     rows.append((c, 3600.0, x, 100.0, 101 * math.exp(y) - 1))
    >>> m = fit_growth(rows, [3600.0])
    >>> round(m.coef[0][0], 1), round(m.sigma[0], 1), m.cascades, m.p_low[0] < 0.5 < m.p_high[0]
    (0.2, 0.1, 300, True)
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
    ages, coefs, sigmas, lows, highs = [], [], [], [], []
    p = len(INPUTS) + 1
    for a in grid:
        rows = by_age[a]
        if len(rows) < 2 * p:
            continue
        x = np.array([(1.0, *r[1]) for r in rows], dtype=np.float64)
        seen = np.array([r[2] for r in rows])
        y = np.log1p(np.array([r[3] for r in rows])) - np.log1p(seen)
        lower = np.maximum(np.log1p(selected_at) - np.log1p(seen), 0.0)
        fold = np.array([fold_of[r[0]] for r in rows])
        coef, s = fit_truncated(x, y, lower)
        pit = np.empty_like(y)
        for k in sorted(set(fold.tolist())):
            out = fold == k
            # started from the fit on all: the same optimum, reached in fewer steps
            c_k, s_k = fit_truncated(x[~out], y[~out], lower[~out], start=(coef, s))
            pit[out] = _pit(x[out], y[out], lower[out], c_k, s_k)
        lo, hi = _conformal(pit, level)
        ages.append(round(a, 3))
        coefs.append(tuple(round(float(c), 6) for c in coef))
        sigmas.append(round(s, 6))
        lows.append(round(min(max(lo, 1e-4), 0.4999), 6))
        highs.append(round(max(min(hi, 1.0 - 1e-4), 0.5001), 6))
    if not ages:
        raise ValueError(
            f"too few training cascades for the growth model: {len(ids)}, "
            f"it needs {2 * p} at one age at least"
        )
    return GrowthModel(
        ages_s=tuple(ages),
        coef=tuple(coefs),
        sigma=tuple(sigmas),
        p_low=tuple(lows),
        p_high=tuple(highs),
        level=level,
        horizon_s=horizon_s,
        selected_at=float(selected_at),
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
        (5.211615, -0.860104, -0.998244, -0.309142),
        (5.385333, -1.055119, -1.24557, -0.273971),
        (5.999636, -1.418172, -1.417507, -0.214901),
        (5.962179, -1.629261, -1.597772, -0.215073),
        (5.902478, -1.903927, -1.610722, -0.21408),
        (3.640178, -1.521827, -1.673167, -0.328406),
        (3.725534, -1.822313, -1.796174, -0.346611),
        (1.803714, -1.423325, -1.802225, -0.425969),
        (-2.762951, -0.041162, -0.831103, -0.5509),
        (-4.109974, 0.267012, 0.01564, -0.468369),
        (-4.552357, 0.732092, 0.513488, -0.49268),
        (-4.680368, 1.077988, 0.635485, -0.488233),
        (-4.496536, 1.097293, 0.921206, -0.435683),
        (-4.537019, 1.062105, 1.009891, -0.452079),
        (-4.386296, 1.714403, 1.222695, -0.373044),
        (-4.111148, 2.13127, 1.576527, -0.361725),
        (-3.886535, 1.641007, 2.209338, -0.380977),
        (-3.928116, 1.342745, 2.364032, -0.428044),
        (-3.666734, 1.869874, 2.595224, -0.37407),
        (-3.383541, 1.812954, 3.11272, -0.374442),
        (-2.878926, 1.324339, 3.715252, -0.302111),
        (-2.781038, 1.786266, 3.852562, -0.291859),
        (-2.738228, 1.680402, 3.991849, -0.285916),
        (-2.60137, 1.677897, 4.064205, -0.254843),
        (-2.541605, 1.961951, 3.601629, -0.210824),
        (-2.60453, 2.013402, 3.177618, -0.184414),
        (-2.390592, 1.807696, 3.456079, -0.12161),
        (-3.258633, 2.445244, 2.177348, 0.000878),
        (-2.970465, 2.930564, 1.979722, 0.23256),
        (-1.03001, 2.578079, 2.87895, 0.236321),
        (-1.196762, 2.547829, 3.044204, 0.232734),
        (-1.564703, 1.978729, 1.736398, 0.727578),
        (-1.201406, 3.300121, 2.54335, 0.229921),
        (-5.577911, 0.62195, 0.397679, 1.487951),
        (-2.934824, 0.747669, 0.282108, 1.818369),
        (-2.839184, 0.742181, 0.299481, 1.480936),
        (-2.459851, 0.6889, 0.31564, 1.574967),
        (-1.949539, 0.523284, 0.157276, 1.517823),
        (-1.252677, 0.587759, 0.161596, 1.497731),
        (-1.885436, 0.343683, 0.108378, 1.30957),
    ),
    sigma=(
        1.005518,
        1.060018,
        1.090537,
        1.124378,
        1.15087,
        1.308386,
        1.289956,
        1.380445,
        1.596325,
        1.680119,
        1.62493,
        1.580928,
        1.546422,
        1.534043,
        1.437648,
        1.305081,
        1.271077,
        1.269962,
        1.15774,
        1.057368,
        0.98147,
        0.876581,
        0.851564,
        0.802779,
        0.780673,
        0.825263,
        0.802162,
        0.95921,
        0.935594,
        0.567243,
        0.560191,
        0.715685,
        0.451106,
        1.013944,
        0.826433,
        0.6718,
        0.609456,
        0.483822,
        0.362056,
        0.271287,
    ),
    p_low=(
        0.079344,
        0.079534,
        0.076959,
        0.078435,
        0.079832,
        0.084146,
        0.084574,
        0.083915,
        0.084193,
        0.084593,
        0.084651,
        0.087101,
        0.087548,
        0.088197,
        0.091049,
        0.092057,
        0.092747,
        0.094066,
        0.093379,
        0.095684,
        0.096074,
        0.101122,
        0.108178,
        0.114347,
        0.11542,
        0.115815,
        0.125135,
        0.128324,
        0.137017,
        0.147112,
        0.14748,
        0.151056,
        0.157368,
        0.144865,
        0.141307,
        0.1302,
        0.128634,
        0.116825,
        0.116911,
        0.093289,
    ),
    p_high=(
        0.885841,
        0.896895,
        0.904643,
        0.904675,
        0.905649,
        0.905913,
        0.906641,
        0.909761,
        0.91021,
        0.913068,
        0.911486,
        0.908457,
        0.904938,
        0.901111,
        0.894622,
        0.89499,
        0.88988,
        0.887582,
        0.893682,
        0.890139,
        0.883682,
        0.890623,
        0.889846,
        0.89154,
        0.884462,
        0.885918,
        0.878755,
        0.87199,
        0.870428,
        0.873496,
        0.872164,
        0.871461,
        0.862938,
        0.874889,
        0.898935,
        0.876065,
        0.886772,
        0.876207,
        0.85022,
        0.833633,
    ),
    level=0.8,
    horizon_s=604800.0,
    selected_at=2002.0,
    cascades=638,
    provenance=(
        "fitted 2026-12-03 by `viralwatch evaluate ../shared/data/cascades/twitter-seismic "
        "--show-model`: data: 638 Twitter retweet cascades (Oct-Nov 2011, a subset of the "
        "SEISMIC data, MIT licence), each observed 7 days, each with at least 2,002 retweets; "
        "coefficients and spread: normal likelihood truncated at that selection (final >= "
        "2,002) on all 638 at each age; band: 10-fold cross-fits over the cascades (seed 0), "
        "split-conformal 80% on the probability transforms"
    ),
)
