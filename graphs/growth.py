"""How much more a cascade will grow: a truncated log-normal model learned per age.

The ``best`` predictor of :mod:`graphs.prediction` asks this module one
question: given what the incremental state says at age ``a`` (the first
numbers of :func:`growth_inputs`: ``best`` reads SEISMIC's three, ``rich``
eleven), how is ``y = log((final + 1) / (observed + 1))``, the growth still
to come before the horizon, distributed?

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
>>> zero = (0.0,) * len(INPUTS)
>>> m = GrowthModel(ages_s=(3600.0, 7200.0), coef=((0.5, *zero), (0.1, *zero)),
...                 sigma=(0.5, 0.5), p_low=(0.1, 0.1), p_high=(0.9, 0.9))
>>> [round(v, 3) for v in m.quantiles(3600.0, zero)]  # median, band
[0.6, 0.151, 1.189]
>>> [round(v, 3) for v in m.quantiles(3600.0, zero, lower=1.0)]  # given y >= 1
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
    "RECENT_WINDOWS_S",
    "RICH_GROWTH",
    "SCALE_FREE_INPUTS",
    "SEISMIC_INPUTS",
    "GrowthModel",
    "fit_growth",
    "fit_truncated",
    "growth_inputs",
    "kfold",
    "truncated_quantile",
]

FloatArray = NDArray[np.float64]

#: Windows of the recent-reshare counts the model reads (5 min to 2 h).
RECENT_WINDOWS_S: tuple[float, ...] = (300.0, 900.0, 1800.0, 3600.0, 7200.0)

#: What each input is (the first coefficient is the intercept). The first three
#: are SEISMIC's figures, scale-free; then Cheng et al.'s (2014) early-growth
#: features kept in O(1) state: how much of the cascade came in each recent
#: window, how long since the last reshare, the followers reached; then the
#: size itself and its products with the first two (the growth still to come
#: does not scale with size: without these the law is wrong at both ends).
INPUTS: tuple[str, ...] = (
    "log1p(first generation before the horizon / (observed + 1))",
    "log1p(reshares in the estimation window / (observed + 1))",
    "log(p * n_star + 0.001)",
    *(
        f"log1p(reshares in the last {round(w / 60)} min) - log1p(observed)"
        for w in RECENT_WINDOWS_S
    ),
    "log1p(seconds since the last reshare)",
    "log1p(followers of the reshares seen / (observed + 1))",
    "log1p(followers of the original posts)",
    "log1p(observed)",
    "log1p(observed) ** 2",
    "log1p(observed) * input 1",
    "log1p(observed) * input 2",
)
#: How many of ``INPUTS`` the shipped ``best`` model reads: SEISMIC's three.
SEISMIC_INPUTS = 3
#: How many the ``rich`` model reads: all but the size terms. Fitted on cascades
#: chosen for size, a law in the size itself is identified, for small clusters,
#: only by its normal tail (every training cascade of 20 reshares at 1 h went on
#: to 2,002); with the size terms, a truncated fit promised thousands to a cluster
#: of 5. Ratios carry the large cascades' law down to small ones instead.
SCALE_FREE_INPUTS = 11


def growth_inputs(
    observed: float,
    offspring_horizon: float,
    window_reshares: float,
    branching: float,
    recent: Sequence[float] = (),
    since_last_s: float = 0.0,
    followers_seen: float = 0.0,
    original_followers: float = 0.0,
) -> tuple[float, ...]:
    """The model's inputs from the incremental state's figures (see ``INPUTS``).

    ``recent``: reshares in each of ``RECENT_WINDOWS_S`` (empty: unknown,
    read as all of them).

    >>> [round(x, 3) for x in growth_inputs(99, 100.0, 50.0, 0.5)[:3]]
    [0.693, 0.405, -0.691]
    >>> x = growth_inputs(99, 100.0, 50.0, 0.5, (9, 19, 49, 99, 99), 30.0, 9900.0, 800.0)
    >>> len(x) == len(INPUTS), [round(v, 3) for v in x[3:8]], round(x[-4], 3)
    (True, [-2.303, -1.609, -0.693, 0.0, 0.0], 4.605)
    """
    n1 = float(observed) + 1.0
    ln = math.log(n1)
    first = math.log1p(max(offspring_horizon, 0.0) / n1)
    window = math.log1p(max(window_reshares, 0.0) / n1)
    shares = [math.log1p(max(r, 0.0)) - ln for r in recent] if recent else []
    shares += [0.0] * (len(RECENT_WINDOWS_S) - len(shares))
    return (
        first,
        window,
        math.log(max(branching, 0.0) + 1e-3),
        *shares,
        math.log1p(max(since_last_s, 0.0)),
        math.log1p(max(followers_seen, 0.0) / n1),
        math.log1p(max(original_followers, 0.0)),
        ln,
        ln * ln,
        ln * first,
        ln * window,
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
    q = mu - sigma * _STD.inv_cdf(tail)
    return q if q > lower else lower  # max(lower, q) as its compare: no call


@dataclass(frozen=True, slots=True)
class GrowthModel:
    """Coefficients, spread and calibrated band per age, and where they came from.

    ``coef[i]`` is ``(intercept, *weights of the first INPUTS)`` at ``ages_s[i]`` and
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
        k = len(self.coef[0])
        if not 2 <= k <= len(INPUTS) + 1 or any(len(c) != k for c in self.coef):
            raise ValueError(f"each coef needs the same 2 to {len(INPUTS) + 1} numbers")
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
        for ca, cb, xi in zip(a[1:], b[1:], inputs[: len(a) - 1], strict=True):
            mu += (ca + w * (cb - ca)) * xi
        sigma = self.sigma[i] + w * (self.sigma[j] - self.sigma[i])
        lo = self.p_low[i] + w * (self.p_low[j] - self.p_low[i])
        hi = self.p_high[i] + w * (self.p_high[j] - self.p_high[i])
        return mu, sigma, lo, hi

    def law_at_most(
        self, age_s: float, lows: Sequence[float], highs: Sequence[float]
    ) -> tuple[float, float, float, float]:
        """:meth:`law` at the inputs, each between ``lows[k]`` and ``highs[k]``, that give
        the largest ``mu``: one input per coefficient but the intercept.

        Why: ``mu`` is linear in the inputs, so its largest value over that box is at the
        corner where each input is at its high if its coefficient (interpolated at
        ``age_s`` as :meth:`law` interpolates it) is at least 0, else at its low; a bound
        on the forecast needs no more than bounds on its inputs.

        >>> g = GrowthModel((900.0,), ((1.0, 2.0, -3.0),), (1.0,), (0.1,), (0.9,))
        >>> g.law_at_most(900.0, (0.0, 0.0), (1.0, 1.0))[0]  # 1 + 2 * 1 - 3 * 0
        3.0
        """
        corner = [
            high if up else low
            for up, low, high in zip(self.signs_at(age_s), lows, highs, strict=True)
        ]
        return self.law(age_s, corner)

    def signs_at(self, age_s: float) -> tuple[bool, ...]:
        """Whether each input's coefficient (not the intercept's), interpolated at ``age_s``
        as :meth:`law` interpolates it, is at least 0: the corner :meth:`law_at_most`
        takes, known before the inputs' bounds are (a caller computes only the end of
        each that the corner takes).

        >>> GrowthModel((900.0,), ((1.0, 2.0, -3.0),), (1.0,), (0.1,), (0.9,)).signs_at(900.0)
        (True, False)
        """
        i, j, w = _interp_weights(self.ages_s, age_s)
        a, b = self.coef[i], self.coef[j]
        return tuple(ca + w * (cb - ca) >= 0.0 for ca, cb in zip(a[1:], b[1:], strict=True))

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


#: Fewest samples an age is fitted on. Fewer than the coefficients is allowed: the
#: ridge keeps the fit well posed (the real data give hundreds per age).
_MIN_SAMPLES = 8

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
    inputs: int = SEISMIC_INPUTS,
) -> GrowthModel:
    """Fit a :class:`GrowthModel` on ``(cascade, age_s, inputs, observed, final)`` samples.

    Samples are grouped by the grid age they were taken at (``ages_s``);
    each age gets its own truncated fit: a sample's ``y`` is known to be
    at least ``log((selected_at + 1) / (observed + 1))`` (and at least 0).
    The band comes from ``folds``-fold cross-fits over the *cascades*
    (seeded): a cascade's probability transform is always measured by
    coefficients fitted without it. ``inputs``: how many of ``INPUTS`` the
    model reads (the first ones; ``len(INPUTS)``: the size terms too).

    Examples
    --------
    >>> rng = np.random.default_rng(3)
    >>> rows = []
    >>> for c in range(300):
    ...     off = float(rng.uniform(0, 3))
    ...     y = max(0.2 + 0.9 * math.log1p(off / 101) + rng.normal(0, 0.1), 0.0)
    ...     x = (math.log1p(off / 101),) + (0.0,) * (len(INPUTS) - 1)
    ...     rows.append((c, 3600.0, x, 100.0, 101 * math.exp(y) - 1))
    >>> m = fit_growth(rows, [3600.0])
    >>> round(m.coef[0][0], 1), round(m.sigma[0], 1), m.cascades, m.p_low[0] < 0.5 < m.p_high[0]
    (0.2, 0.1, 300, True)
    """
    if not samples:
        raise ValueError("no training samples")
    grid = sorted(set(float(a) for a in ages_s))
    by_age: dict[float, list[tuple[int, Sequence[float], float, float]]] = {a: [] for a in grid}
    if not 1 <= inputs <= len(INPUTS):
        raise ValueError(f"inputs must be 1 to {len(INPUTS)}, got {inputs}")
    for cid, age, xs, obs, fin in samples:
        if len(xs) != len(INPUTS):
            raise ValueError(f"a sample needs {len(INPUTS)} inputs, got {len(xs)}")
        near = min(grid, key=lambda g: abs(math.log(g) - math.log(max(age, 1e-9))))
        if abs(near - age) > 1e-6 * near:
            raise ValueError(f"sample at age {age:g} s is not on the grid")
        by_age[near].append((cid, xs, obs, fin))
    ids = sorted({s[0] for s in samples})
    fold_of = dict(zip(ids, kfold(len(ids), min(folds, len(ids)), seed), strict=True))
    ages, coefs, sigmas, lows, highs = [], [], [], [], []
    for a in grid:
        rows = by_age[a]
        if len(rows) < _MIN_SAMPLES:
            continue
        x = np.array([(1.0, *r[1][:inputs]) for r in rows], dtype=np.float64)
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
            f"it needs {_MIN_SAMPLES} at one age at least"
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


# The ``rich`` model: the same data and fit, with Cheng et al.'s early-growth inputs too.
# Written by `viralwatch evaluate ../shared/data/cascades/twitter-seismic --show-model`;
# tests/test_growth.py checks that refitting gives it back.
RICH_GROWTH = GrowthModel(
    ages_s=DEFAULT_GROWTH.ages_s,  # the same grid
    coef=(
        (
            5.032768,
            -1.28713,
            -1.067305,
            -0.178698,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.266498,
            0.277746,
            0.011019,
        ),
        (
            5.524572,
            -1.877543,
            -1.437588,
            -0.102216,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.217137,
            0.378845,
            0.028635,
        ),
        (
            5.673161,
            -2.176087,
            -1.785846,
            0.003252,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.371238,
            0.409523,
            0.048234,
        ),
        (
            5.391409,
            -1.953383,
            -1.918157,
            -0.059684,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.406115,
            0.346949,
            -0.007469,
        ),
        (
            5.55577,
            -1.928871,
            -1.897284,
            -0.119492,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.369107,
            0.336964,
            -0.078364,
        ),
        (
            3.920463,
            -0.91321,
            -1.968516,
            -0.300696,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.419206,
            0.237852,
            -0.147545,
        ),
        (
            4.742278,
            -1.134276,
            -2.039548,
            -0.294443,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.332872,
            0.202287,
            -0.165735,
        ),
        (
            3.116922,
            -0.34484,
            -2.060761,
            -0.405978,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.412775,
            0.076799,
            -0.159042,
        ),
        (
            2.547615,
            0.84024,
            -1.211537,
            -0.519727,
            1.003785,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.329297,
            -0.079419,
            -0.235287,
        ),
        (
            3.501931,
            -0.031076,
            -0.367915,
            -0.488191,
            1.582832,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.161875,
            -0.119834,
            -0.216981,
        ),
        (
            2.993898,
            -0.100531,
            0.147188,
            -0.374195,
            1.908393,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.410442,
            -0.036466,
            -0.145481,
        ),
        (
            3.929138,
            -0.515692,
            -0.028528,
            -0.382512,
            2.071773,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.241755,
            -0.016942,
            -0.107364,
        ),
        (
            4.924571,
            -1.384785,
            0.163445,
            -0.342498,
            2.380608,
            -0.0,
            -0.0,
            -0.0,
            -0.0,
            0.145822,
            0.062825,
            -0.062595,
        ),
        (
            4.314717,
            -1.31028,
            0.427758,
            -0.338372,
            2.196803,
            -0.340288,
            0.0,
            0.0,
            0.0,
            0.22339,
            0.082347,
            -0.044414,
        ),
        (
            3.883193,
            -0.562009,
            -0.001731,
            -0.369287,
            2.105258,
            -0.178731,
            -0.0,
            -0.0,
            -0.0,
            0.115842,
            0.016378,
            -0.015195,
        ),
        (
            4.902416,
            -0.801398,
            0.080231,
            -0.342618,
            1.832739,
            0.041076,
            -0.0,
            -0.0,
            -0.0,
            0.161796,
            -0.012172,
            -0.029944,
        ),
        (
            5.022207,
            -1.246653,
            0.17374,
            -0.357963,
            1.311058,
            0.979288,
            -0.606131,
            0.0,
            0.0,
            0.128203,
            -0.045598,
            -0.000447,
        ),
        (
            4.628555,
            -1.605142,
            0.23799,
            -0.381759,
            1.031437,
            0.843659,
            0.182782,
            -0.0,
            -0.0,
            0.145949,
            -0.002989,
            0.013361,
        ),
        (
            5.52447,
            -1.188097,
            -0.178042,
            -0.390998,
            1.53036,
            -0.10053,
            0.351919,
            0.0,
            0.0,
            0.027975,
            -0.055372,
            0.004507,
        ),
        (
            4.923113,
            -1.114124,
            -0.064971,
            -0.445861,
            0.693936,
            0.52919,
            0.440412,
            0.304851,
            0.0,
            0.048725,
            -0.14455,
            0.018006,
        ),
        (
            5.663933,
            -0.569272,
            0.125675,
            -0.450949,
            1.277858,
            -0.40662,
            0.811975,
            0.040672,
            0.0,
            -0.069857,
            -0.142683,
            -0.005594,
        ),
        (
            5.251548,
            -1.089524,
            0.126311,
            -0.450558,
            0.675157,
            0.290736,
            0.398777,
            0.342608,
            -0.0,
            0.00243,
            -0.186728,
            0.030226,
        ),
        (
            5.530511,
            -0.943319,
            0.19762,
            -0.432675,
            0.927264,
            -0.118919,
            0.126077,
            0.778997,
            -0.282421,
            0.018868,
            -0.182081,
            0.011413,
        ),
        (
            4.501333,
            -0.967217,
            0.647253,
            -0.448323,
            0.329123,
            0.396461,
            0.429064,
            0.06275,
            0.235698,
            0.074373,
            -0.170884,
            0.005453,
        ),
        (
            4.507026,
            -0.041043,
            -0.529782,
            -0.473795,
            0.568373,
            -0.16666,
            0.338937,
            -0.216942,
            0.843162,
            0.062373,
            -0.201347,
            -0.036548,
        ),
        (
            5.334034,
            -0.529819,
            -0.910517,
            -0.428297,
            0.73197,
            0.071679,
            -0.111639,
            0.265402,
            0.186188,
            0.068496,
            -0.115158,
            -0.054715,
        ),
        (
            5.590311,
            -0.645944,
            -0.815755,
            -0.504235,
            0.392752,
            0.282026,
            0.181646,
            -0.313518,
            0.630085,
            -0.04392,
            -0.197143,
            -0.069738,
        ),
        (
            4.53807,
            -0.489677,
            -1.291267,
            -0.591004,
            0.044612,
            0.031639,
            0.578332,
            0.01488,
            0.588201,
            0.01676,
            -0.150139,
            -0.097025,
        ),
        (
            5.691448,
            -1.009295,
            -1.802728,
            -0.244448,
            0.17395,
            0.713846,
            0.415424,
            -0.285583,
            0.246388,
            0.096581,
            -0.077739,
            -0.02982,
        ),
        (
            2.110756,
            -0.976235,
            0.025813,
            0.050118,
            0.020381,
            0.36358,
            0.051413,
            0.363422,
            0.058865,
            0.042453,
            0.176016,
            -0.006708,
        ),
        (
            1.741229,
            -1.07213,
            -0.700858,
            0.223703,
            0.270532,
            0.033079,
            -0.220638,
            0.814758,
            -0.097686,
            -0.015715,
            0.302121,
            -0.020272,
        ),
        (
            2.561396,
            -0.996644,
            -0.445184,
            0.237372,
            -0.019671,
            0.357781,
            0.135158,
            -0.261317,
            0.790096,
            0.06995,
            0.209413,
            -0.031428,
        ),
        (
            1.806238,
            -1.061533,
            -0.599535,
            0.097559,
            0.131846,
            -0.107814,
            0.191507,
            0.10732,
            0.559657,
            -0.023076,
            0.211181,
            0.001261,
        ),
        (
            1.061151,
            -0.384061,
            -0.501006,
            0.074806,
            -0.066691,
            0.139107,
            0.180707,
            -0.255595,
            0.990853,
            -0.095323,
            0.366403,
            -0.06898,
        ),
        (
            0.487172,
            -0.651134,
            -0.51585,
            0.758367,
            0.423944,
            -0.313887,
            0.361336,
            -0.057394,
            0.533331,
            -0.070095,
            0.712847,
            -0.040021,
        ),
        (
            1.877497,
            -1.226643,
            -1.395706,
            0.084938,
            0.123521,
            -0.198203,
            0.090971,
            -0.115606,
            0.576115,
            0.002498,
            0.07691,
            -0.025593,
        ),
        (
            0.644585,
            -0.839326,
            -0.912855,
            0.267893,
            -0.020033,
            0.088551,
            0.038248,
            0.387256,
            0.120139,
            0.062446,
            0.376656,
            -0.025158,
        ),
        (
            2.702666,
            -0.415586,
            -0.294036,
            0.332602,
            -0.072033,
            0.00808,
            0.261662,
            0.170591,
            0.333988,
            -0.051813,
            0.2986,
            -0.043772,
        ),
        (
            2.247364,
            -0.594672,
            -0.331522,
            0.16533,
            0.080949,
            -0.127553,
            0.014696,
            -0.193525,
            0.675716,
            -0.084485,
            0.085591,
            -0.021751,
        ),
        (
            -0.262534,
            -0.785758,
            -0.477175,
            0.236127,
            0.077919,
            0.017013,
            -0.612356,
            0.325572,
            0.366083,
            -0.152691,
            0.414016,
            -0.082348,
        ),
    ),
    sigma=(
        0.958857,
        1.016351,
        0.989792,
        1.001209,
        0.998317,
        1.038111,
        1.001056,
        1.042112,
        1.05849,
        1.175734,
        1.035642,
        1.015745,
        0.985566,
        0.964047,
        1.05562,
        0.921853,
        0.896288,
        0.901115,
        0.854778,
        0.84386,
        0.860856,
        0.767742,
        0.701977,
        0.700181,
        0.671525,
        0.586099,
        0.641674,
        0.706206,
        0.61006,
        0.576757,
        0.587521,
        0.516158,
        0.477126,
        0.60666,
        0.576802,
        0.253877,
        0.300951,
        0.269252,
        0.178534,
        0.135029,
    ),
    p_low=(
        0.078455,
        0.075827,
        0.072074,
        0.072771,
        0.075317,
        0.075105,
        0.075333,
        0.074372,
        0.074779,
        0.073285,
        0.0738,
        0.074816,
        0.074507,
        0.076261,
        0.077895,
        0.075931,
        0.080913,
        0.082744,
        0.090721,
        0.093485,
        0.101129,
        0.106816,
        0.10172,
        0.124274,
        0.116124,
        0.128788,
        0.140679,
        0.12718,
        0.153006,
        0.172929,
        0.164344,
        0.18576,
        0.192966,
        0.166109,
        0.154275,
        0.160976,
        0.13583,
        0.13601,
        0.141418,
        0.115385,
    ),
    p_high=(
        0.901849,
        0.903881,
        0.902519,
        0.902771,
        0.906188,
        0.915914,
        0.914999,
        0.914098,
        0.922861,
        0.919006,
        0.91837,
        0.911095,
        0.914751,
        0.909648,
        0.896059,
        0.898121,
        0.899458,
        0.898537,
        0.892826,
        0.884596,
        0.880164,
        0.894892,
        0.891329,
        0.901981,
        0.88951,
        0.880155,
        0.855193,
        0.858693,
        0.877714,
        0.86136,
        0.860115,
        0.849721,
        0.863103,
        0.862724,
        0.870711,
        0.878431,
        0.884754,
        0.849515,
        0.855543,
        0.872575,
    ),
    level=0.8,
    horizon_s=604800.0,
    selected_at=2002.0,
    cascades=638,
    provenance=(
        "fitted 2026-12-03 by `viralwatch evaluate ../shared/data/cascades/twitter-seismic "
        "--show-model`: data: 638 Twitter retweet cascades (Oct-Nov 2011, a subset of the "
        "SEISMIC data, MIT licence), each observed 7 days, each with at least 2,002 retweets; "
        "inputs: the first 11 of INPUTS (SCALE_FREE_INPUTS); coefficients and spread: "
        "normal likelihood truncated at that selection (final >= 2,002) on all 638 at each "
        "age; band: 10-fold cross-fits over the cascades (seed 0), split-conformal 80% on "
        "the probability transforms"
    ),
)
