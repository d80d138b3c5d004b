"""TiDeH (the baseline row): its estimate and forecast against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from graphs.tideh import PAPER, TidehParams, _bins, predict_tideh


def test_a_flat_rate_and_no_offspring_give_the_kernel_s_closed_form() -> None:
    # an original seen by 1,000; reshares seen by nobody, so only the original drives
    # the rest: with a flat infectiousness, p0 = n / (1000 * F(1 h)) and what is left
    # to come is p0 * 1000 * (F(horizon) - F(1 h)) = n * (F(H) - F(1 h)) / F(1 h)
    prm = TidehParams(r0=0.0, tau_m_h=1e9, dt_h=0.01)
    rng = np.random.default_rng(0)
    t = np.concatenate([[0.0], np.sort(rng.uniform(0, 3600.0, 200))])
    d = np.concatenate([[1000.0], np.zeros(200)])
    f = predict_tideh(t, d, 3600.0, 86_400.0, params=prm)
    cdf = lambda h: 1.0 - float(prm.kernel.ccdf(h))  # noqa: E731
    assert f.p0 == pytest.approx(200 / (1000 * cdf(1.0)), rel=1e-9)
    assert f.size - 200 == pytest.approx(200 * (cdf(24.0) - cdf(1.0)) / cdf(1.0), rel=5e-3)


def test_reshares_that_are_seen_make_more_and_the_day_cycle_moves_it() -> None:
    rng = np.random.default_rng(1)
    t = np.concatenate([[0.0], np.sort(rng.uniform(0, 7200.0, 300))])
    quiet = np.concatenate([[500.0], np.full(300, 1.0)])
    loud = np.concatenate([[500.0], np.full(300, 400.0)])
    a = predict_tideh(t, quiet, 7200.0, 7 * 86_400.0)
    b = predict_tideh(t, loud, 7200.0, 7 * 86_400.0)
    assert 300 < a.size < b.size  # offspring of offspring
    # posted at another hour, the same history reads as another infectiousness
    c = predict_tideh(t, loud, 7200.0, 7 * 86_400.0, start_h=12.0)
    assert c.size != pytest.approx(b.size, rel=1e-3)


def test_posts_summed_per_bin_keep_the_kernel_sums() -> None:
    rng = np.random.default_rng(2)
    t = np.concatenate([[0.0], np.sort(rng.uniform(0, 6.0, 5000))])  # hours
    d = rng.lognormal(4.5, 1.5, t.size)
    centre, weight = _bins(t, d, 6.0)
    assert centre.size < 800 and weight.sum() == pytest.approx(d.sum())
    k = PAPER.kernel
    for s in (6.0, 6.1, 7.0, 30.0, 160.0):
        exact = float(np.dot(d, k.pdf(s - t)))
        assert float(np.dot(weight, k.pdf(s - centre))) == pytest.approx(exact, rel=1e-3), s


def test_nothing_to_read_and_bad_settings() -> None:
    assert predict_tideh([0.0, 10.0], [0.0, 0.0], 3600.0, 86_400.0).size == 1.0  # no exposure
    assert predict_tideh([0.0, 10.0], [5.0, 3.0], 86_400.0, 86_400.0).size == 1.0  # at the horizon
    with pytest.raises(ValueError):
        TidehParams(r0=1.5)
