"""SEISMIC as the R package computes it: kernels, estimator, prediction, the R reference."""

from __future__ import annotations

import csv
import math
from typing import Any

import numpy as np
import pytest
from shared_data import SHARED, needs

from graphs.prediction import IncrementalPredictor, PredictorConfig
from graphs.seismic import (
    C0,
    CUTOFF_S,
    THETA,
    MemoryKernel,
    chi2_quantile,
    get_infectiousness,
    integral_memory_kernel,
    pred_cascade,
    predict_at,
)

CASCADES = SHARED / "data" / "cascades"
needs_shared = needs(
    CASCADES / "seismic-tweet-reference.csv", "the SEISMIC R package's tweet and its R output"
)
K = MemoryKernel()


def load_tweet() -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(CASCADES / "seismic-tweet.csv", delimiter=",", skiprows=1)
    return rows[:, 0], rows[:, 1]


def reference() -> list[dict[str, str]]:
    with (CASCADES / "seismic-tweet-reference.csv").open() as fh:
        return list(csv.DictReader(fh))


# -- the R reference -------------------------------------------------------------


@needs_shared
def test_r_reference_reproduced_by_the_batch_port() -> None:
    times, followers = load_tweet()
    ref = reference()
    assert len(ref) == 3
    for row in ref:
        obs = float(row["obs_seconds"])
        got = predict_at(times, followers, obs, n_star=100)
        assert got.observed == int(row["observed"])
        assert got.infectiousness == pytest.approx(float(row["infectiousness"]), rel=1e-3)
        assert got.predicted == pytest.approx(float(row["seismic_pred"]), rel=1e-3)
        # in fact it is the same arithmetic: far tighter than the 0.1% asked
        assert got.predicted == pytest.approx(float(row["seismic_pred"]), rel=1e-9)


@needs_shared
def test_r_reference_reproduced_by_the_incremental_state() -> None:
    times, followers = load_tweet()
    pred = IncrementalPredictor(PredictorConfig(model="seismic"))
    i = 0
    for row in reference():
        obs = float(row["obs_seconds"])
        while i < times.size and times[i] <= obs:
            pred.add(times[i], int(followers[i]), original=i == 0)
            i += 1
        f = pred.predict(obs)
        assert pred.observed == int(row["observed"])
        assert f.infectiousness == pytest.approx(float(row["infectiousness"]), rel=1e-3)
        assert f.size == pytest.approx(float(row["seismic_pred"]), rel=1e-3)


@needs_shared
def test_the_estimate_does_not_depend_on_the_grid_it_is_asked_on() -> None:
    # R evaluates get.infectiousness on a grid; each time is computed on its own
    times, followers = load_tweet()
    grid = np.arange(0, 6 * 3600 + 1, 60.0)
    alone = get_infectiousness(times, followers, [3600.0]).infectiousness[0]
    on_grid = get_infectiousness(times, followers, grid).infectiousness[60]
    assert alone == on_grid


# -- kernels ---------------------------------------------------------------------


def test_memory_pdf_integrates_to_one() -> None:
    assert pytest.approx(1.0, abs=1e-6) == C0 * CUTOFF_S * (1 + 1 / THETA)
    t = np.concatenate([np.linspace(0, CUTOFF_S, 3001), np.geomspace(CUTOFF_S, 1e12, 200_001)[1:]])
    area = np.trapezoid(K.pdf(t), t)
    tail = float(K.ccdf(1e12))  # what lies beyond the grid
    assert area + tail == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("t", [10.0, 299.0, 300.0, 301.0, 3600.0, 86_400.0])
def test_ccdf_is_one_minus_the_integral_of_the_pdf(t: float) -> None:
    grid = np.unique(
        np.concatenate(
            [
                np.linspace(0, min(t, CUTOFF_S), 2001),
                np.geomspace(CUTOFF_S, max(t, CUTOFF_S), 20001),
            ]
        )
    )
    grid = grid[grid <= t]
    assert float(K.ccdf(t)) == pytest.approx(1 - np.trapezoid(K.pdf(grid), grid), abs=1e-6)


def test_kernel_is_continuous_at_the_cutoff_and_decreasing() -> None:
    eps = 1e-9
    assert float(K.pdf(CUTOFF_S - eps)) == pytest.approx(float(K.pdf(CUTOFF_S + eps)))
    assert float(K.ccdf(CUTOFF_S - eps)) == pytest.approx(float(K.ccdf(CUTOFF_S + eps)))
    c = K.ccdf(np.geomspace(1, 1e7, 200))
    assert np.all(np.diff(c) < 0) and float(K.ccdf(-5.0)) == 1.0


def r_integral_memory_kernel(p: float, s: np.ndarray, slope: float, w: float) -> np.ndarray:
    """R's integral.memory.kernel on absolute times, line by line (a test oracle)."""
    th, tau, c = THETA, CUTOFF_S, C0

    def lin(t1: Any, t2: Any, pt: Any, sl: Any) -> Any:
        return c * (t2 - pt * sl * t2 + sl * t2**2 / 2) - c * (t1 - pt * sl * t1 + sl * t1**2 / 2)

    def pw(t1: Any, t2: Any, pt: Any, st: Any, sl: Any) -> Any:
        k = c * tau ** (1 + th) / ((th - 1) * th)

        def f(t: Any) -> Any:
            return k * (t - st) ** (-th) * (st * sl - th + (th - 1) * pt * sl - th * sl * t + 1)

        return f(t2) - f(t1)

    out = np.full(s.size, np.nan)
    i1 = p <= s
    i2 = (p > s) & (p <= s + tau)
    i3 = (p > s + tau) & (p <= s + w)
    i4 = (p > s + w) & (p <= s + w + tau)
    i5 = p > s + w + tau
    with np.errstate(all="ignore"):
        out[i1] = 0
        out[i2] = lin(s[i2], p, p, slope)
        out[i3] = lin(s[i3], s[i3] + tau, p, slope) + pw(s[i3] + tau, p, p, s[i3], slope)
        out[i4] = lin(p - w, s[i4] + tau, p, slope) + pw(s[i4] + tau, p, p, s[i4], slope)
        out[i5] = pw(p - w, p, p, s[i5], slope)
    return out


@pytest.mark.parametrize("window", [120.0, 300.0, 1000.0, 7200.0])
def test_window_integral_is_rs_arithmetic(window: float) -> None:
    rng = np.random.default_rng(5)
    p = 20_000.0
    s = np.sort(rng.uniform(0, p + 100, 400))
    got = integral_memory_kernel(p, s, 1 / window, window)
    want = r_integral_memory_kernel(p, s, 1 / window, window)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("age", [50.0, 299.0, 450.0, 1500.0, 2100.0, 2399.0, 5000.0])
def test_window_integral_is_the_integral_it_says(age: float) -> None:
    window = 2000.0
    now = 10_000.0
    s = now - age
    t = np.linspace(max(s, now - window), now, 400_001)
    weight = 1 - (now - t) / window
    direct = np.trapezoid(K.pdf(t - s) * weight, t)
    assert float(K.window_integral(age, 1 / window, window)) == pytest.approx(direct, rel=1e-5)


# -- estimator and prediction ------------------------------------------------------


def test_chi2_quantile_known_values() -> None:
    assert chi2_quantile(0.05, 2) == pytest.approx(-2 * math.log(0.95), rel=1e-12)
    # df = 4: P(X <= x) = 1 - exp(-x/2) (1 + x/2)
    for q in (0.05, 0.5, 0.95):
        x = chi2_quantile(q, 4)
        assert 1 - math.exp(-x / 2) * (1 + x / 2) == pytest.approx(q, abs=1e-12)
    # large df: close to normal
    df = 30_000
    assert chi2_quantile(0.95, df) == pytest.approx(df + 1.644854 * math.sqrt(2 * df), rel=1e-4)
    with pytest.raises(ValueError):
        chi2_quantile(1.5, 3)


def test_chi2_quantile_is_the_same_float_for_an_int_float_or_numpy_count() -> None:
    """A forecast's count of reshares comes as an int, a float or a NumPy integer: each gives
    the computation's bits (not approximately) as a plain float, whichever came first to the
    cache."""
    import numpy as np

    from graphs.seismic import _gamma_quantile

    compute = _gamma_quantile.__wrapped__
    _gamma_quantile.cache_clear()  # the NumPy count first in the cache
    for k in (1, 2, 7, 200, 201, 1000):
        for q in (0.05, 0.95):
            want = 2.0 * compute(q, float(k))
            for df in (np.int64(2 * k), 2 * k, float(2 * k)):
                got = chi2_quantile(q, df)
                assert type(got) is float and got == want, (q, k, type(got))
    assert chi2_quantile(0.05, 3) == 2.0 * compute(0.05, 1.5)


def test_window_widens_to_the_last_posts_when_it_holds_too_few() -> None:
    # 3 reshares, long before now: the 300-s window is empty, so R's rule takes
    # the last min_count + 1 posts (all 4) and spans from the original to now
    s = np.array([0.0, 100.0, 200.0, 300.0])
    d = np.array([1000.0, 10.0, 10.0, 10.0])
    p = 400.0
    est = get_infectiousness(s, d, [p])
    w = p - 0.0
    num = np.sum(1 - (p - s[1:]) / w)
    den = np.sum(d * integral_memory_kernel(p, s, 1 / w, w))
    assert est.infectiousness[0] == pytest.approx(num / den, rel=1e-12)
    assert est.rt_num[0] == 3


def test_no_reshare_yet_gives_zero_and_the_observed_size() -> None:
    est = get_infectiousness([0.0], [500.0], [0.0, 60.0])
    assert list(est.infectiousness) == [0.0, 0.0]
    assert list(pred_cascade([60.0], [0.0], [0.0], [500.0])) == [0.0]


def test_supercritical_is_infinite_and_subcritical_finite() -> None:
    s, d = [0.0, 10.0, 20.0], [100.0, 100.0, 100.0]
    assert math.isinf(pred_cascade([60.0], [0.011], s, d, n_star=100)[0])
    assert math.isinf(pred_cascade([60.0], [0.01], s, d, n_star=100)[0])  # exactly critical
    assert math.isfinite(pred_cascade([60.0], [0.009], s, d, n_star=100)[0])
    # the amplification 1 / (1 - p n*) grows towards criticality
    a, b = (pred_cascade([60.0], [q], s, d, n_star=100)[0] for q in (0.005, 0.009))
    assert 2 < a < b


def test_input_order_does_not_matter() -> None:
    rng = np.random.default_rng(2)
    s = np.concatenate([[0.0], np.sort(rng.uniform(1, 5000, 300))])
    d = rng.integers(1, 5000, s.size).astype(float)
    perm = np.concatenate([[0], rng.permutation(np.arange(1, s.size))])
    a = predict_at(s, d, 3000.0)
    b = predict_at(s[perm], d[perm], 3000.0)
    assert a == b


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError):
        get_infectiousness([0.0, 1.0], [1.0], [10.0])
    with pytest.raises(ValueError):
        get_infectiousness([], [], [10.0])
    with pytest.raises(ValueError):
        MemoryKernel(theta=1.5)
    with pytest.raises(ValueError):
        pred_cascade([1.0, 2.0], [0.1], [0.0], [1.0])
