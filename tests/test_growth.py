"""The ``best`` model: O(1) updates equal the batch computation, folds never leak, shipped fit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from graphs.growth import DEFAULT_GROWTH, GrowthModel, fit_growth, growth_inputs, kfold
from graphs.prediction import (
    DEFAULT_CONFIG,
    IncrementalPredictor,
    PredictorConfig,
    features_from_history,
    forecast,
    forecast_given_selection,
)
from streams import evaluate as ev

SHARED = Path(__file__).resolve().parents[2] / "shared"
TWITTER = SHARED / "data" / "cascades" / "twitter-seismic"
needs_twitter = pytest.mark.skipif(
    not TWITTER.is_dir(), reason="../shared/data/cascades/twitter-seismic is absent"
)


def synthetic(seed: int, n: int = 3000, scale: float = 900.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.sort(scale * (rng.uniform(0, 1, n) ** (-1 / 0.6) - 1))
    followers = np.rint(rng.lognormal(4.5, 1.5, n + 1))
    return np.concatenate([[0.0], t]), followers


# -- O(1) per post, equal to the batch computation -----------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_best_forecast_equals_the_batch_one(seed: int) -> None:
    times, followers = synthetic(seed)
    at = [300.0, 900.0, 1800.0, 3600.0, 7200.0, 21_600.0, 86_400.0, 3 * 86_400.0, 6.9 * 86_400.0]
    pred = IncrementalPredictor(DEFAULT_CONFIG)
    i = 0
    for t in at:
        while i < times.size and times[i] <= t:
            pred.add(float(times[i]), float(followers[i]), original=i == 0)  # one post: O(1)
            i += 1
        inc = pred.features(t)
        batch = features_from_history(times, followers, t, DEFAULT_CONFIG)
        assert inc.observed == batch.observed
        # a 10-s bucket cut by the window's start counts whole or not at all
        assert abs(inc.window_reshares - batch.window_reshares) <= 1, t
        for name in ("infectiousness", "offspring", "offspring_horizon"):
            assert getattr(inc, name) == pytest.approx(getattr(batch, name), rel=1e-3), (t, name)
        a, b = forecast(inc, "best", DEFAULT_CONFIG), forecast(batch, "best", DEFAULT_CONFIG)
        for x, y in zip(a, b, strict=True):
            assert x == pytest.approx(y, rel=1e-3), t
        assert pred.buckets < 1000  # the state holds buckets, not posts


def test_best_is_never_below_what_is_seen_and_is_ordered() -> None:
    times, followers = synthetic(7)
    for t in (60.0, 600.0, 3600.0, 86_400.0, 8 * 86_400.0):
        f = forecast(features_from_history(times, followers, t), "best", DEFAULT_CONFIG)
        seen = int(np.count_nonzero(times <= t)) - 1
        assert seen <= f.low <= f.size <= f.high and math.isfinite(f.high), t
    # past the horizon there is nothing more to come
    late = forecast(features_from_history(times, followers, 8 * 86_400.0), "best", DEFAULT_CONFIG)
    assert late.size == late.low == late.high == np.count_nonzero(times <= 8 * 86_400.0) - 1


# -- folds ----------------------------------------------------------------------------


def test_kfold_is_seeded_balanced_and_covers_everything() -> None:
    a = kfold(638, 10, seed=0)
    assert a == kfold(638, 10, seed=0) and a != kfold(638, 10, seed=1)
    sizes = np.bincount(a)
    assert len(sizes) == 10 and sizes.max() - sizes.min() <= 1 and sizes.sum() == 638
    with pytest.raises(ValueError):
        kfold(5, 1, seed=0)
    with pytest.raises(ValueError):
        kfold(5, 6, seed=0)


def toy(name: str, n: int, spacing: float) -> ev.CascadeData:
    posts = [ev.Post(0.0, 1000, original=True)]
    posts += [ev.Post(i * spacing, 100 + (7 * i) % 50) for i in range(1, n + 1)]
    return ev.CascadeData(name, tuple(posts), 86_400.0, "toy")


def test_kfold_evaluation_never_fits_a_cascade_on_itself() -> None:
    cascades = [toy(f"c{i}", 30 + 15 * i, 20.0 + 7 * i) for i in range(12)]
    out = ev.evaluate(cascades, (3600.0, 7200.0), split="kfold", folds=4, seed=3, step_s=3600.0)
    names = {c.name for c in cascades}
    assert set(out.fold_of) == names and set(out.fitted) == {0, 1, 2, 3}
    for name, k in out.fold_of.items():
        trained = out.fitted[k].trained_on
        assert name not in trained  # never fitted on itself
        # and fitted on every cascade of the other folds
        assert trained == {n for n, j in out.fold_of.items() if j != k}
        assert out.fitted[k].growth.cascades == len(trained)
        # the boosted baselines too are fitted per fold (scikit-learn: a dev extra)
        assert set(out.fitted[k].boosted) == {"gbm", "gbm+hawkes"}
        # the selection is the data set's: its smallest cascade, whichever fold holds it
        assert out.fitted[k].growth.selected_at == min(c.final for c in cascades)
    # every model's row for every cascade and time, and a summary per fold
    assert len(out.rows) == len(cascades) * 2 * len(ev.ROW_MODELS)  # sklearn: a dev extra
    s = ev.summarize(out)
    assert set(s["per_fold"]["best"]) == {"0", "1", "2", "3"}


def test_a_fold_fitted_on_its_own_cascades_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cascades = [toy(f"c{i}", 30 + 15 * i, 20.0 + 7 * i) for i in range(12)]
    real = ev._fit

    def leaky(train, feats, at, n_star, seed, **kw):  # type: ignore[no-untyped-def]
        return real(cascades, feats, at, n_star, seed, **kw)  # everyone, the held-out fold too

    monkeypatch.setattr(ev, "_fit", leaky)
    with pytest.raises(ValueError, match="fitted on it"):
        ev.evaluate(cascades, (3600.0,), split="kfold", folds=3, step_s=3600.0, boosted=False)


def test_training_on_one_set_and_testing_on_another() -> None:
    train = [toy(f"t{i}", 40 + 10 * i, 30.0) for i in range(8)]
    test = [toy(f"x{i}", 50 + 5 * i, 25.0) for i in range(3)]
    out = ev.evaluate(test, (3600.0,), train=train, step_s=3600.0, boosted=False)
    assert out.split == "train" and out.fitted[0].trained_on == {c.name for c in train}
    with pytest.raises(ValueError, match="others"):
        ev.evaluate(test, (3600.0,), train=test, step_s=3600.0)


# -- the model ------------------------------------------------------------------------


def selected_population(seed: int, at_least: float = 2002.0) -> list[tuple]:  # type: ignore[type-arg]
    """Cascades from a known law of growth, kept only when they end with ``at_least``."""
    rng = np.random.default_rng(seed)
    rows = []
    truth = (0.3, 0.8, 0.5, 0.05)
    c = 0
    while c < 500:
        obs = float(np.exp(rng.uniform(np.log(200), np.log(4000))))
        x = (float(rng.uniform(0, 2)), float(rng.uniform(0, 1)), float(rng.normal(-1, 0.5)))
        mu = truth[0] + sum(w * xi for w, xi in zip(truth[1:], x, strict=True))
        y = mu + float(rng.normal(0, 0.6))
        if y < 0:
            continue  # a cascade does not shrink: the law is truncated at 0
        final = (obs + 1.0) * math.exp(y) - 1.0
        if final < at_least:
            continue  # not in the data set
        rows += [(c, age, x, obs, final) for age in (3600.0, 7200.0)]
        c += 1
    return rows


def test_truncated_fit_recovers_the_law_before_the_selection() -> None:
    rows = selected_population(11)
    truth = (0.3, 0.8, 0.5, 0.05)
    m = fit_growth(rows, (3600.0, 7200.0), selected_at=2002.0, seed=1)
    np.testing.assert_allclose(m.coef[0], truth, atol=0.15)
    assert m.sigma[0] == pytest.approx(0.6, abs=0.08)
    # a fit that ignores the selection learns that small cascades grow a lot
    plain = fit_growth(rows, (3600.0, 7200.0), seed=1)
    assert plain.coef[0][0] > truth[0] + 0.3
    # the band given the selection holds 75-85% of the (selected) outcomes
    inside = []
    for _, age, x, obs, final in rows:
        lower = math.log((2002.0 + 1) / (obs + 1))
        _, lo, hi = m.quantiles(age, x, lower)
        inside.append(lo <= math.log((final + 1) / (obs + 1)) <= hi)
    assert 0.75 <= float(np.mean(inside)) <= 0.85


def test_production_forecast_is_lower_than_the_selected_one_for_small_clusters() -> None:
    rows = selected_population(5)
    m = fit_growth(rows, (3600.0, 7200.0), selected_at=2002.0, seed=1)
    cfg = PredictorConfig(growth=m)
    f = features_from_history(*synthetic(4, n=300), 3600.0, cfg)
    plain, given = forecast(f, "best", cfg), forecast_given_selection(f, cfg, 2002.0)
    assert f.observed <= plain.low <= plain.size <= plain.high < 2002.0
    assert 2002.0 <= given.low <= given.size <= given.high


def test_growth_model_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        GrowthModel((3600.0, 1800.0), ((0, 0, 0, 0),) * 2, (1, 1), (0.1, 0.1), (0.9, 0.9))
    with pytest.raises(ValueError):
        GrowthModel((3600.0,), ((0, 0),), (1,), (0.1,), (0.9,))
    with pytest.raises(ValueError, match="sigma"):
        GrowthModel((3600.0,), ((0, 0, 0, 0),), (0,), (0.1,), (0.9,))
    with pytest.raises(ValueError, match="p_low"):
        GrowthModel((3600.0,), ((0, 0, 0, 0),), (1,), (0.6,), (0.9,))
    with pytest.raises(ValueError):
        fit_growth([], (3600.0,))
    with pytest.raises(ValueError, match="not on the grid"):
        fit_growth([(0, 1000.0, (0.0, 0.0, 0.0), 1.0, 2.0)] * 20, (3600.0,))


def test_growth_inputs_are_scale_free() -> None:
    # ten times the cascade, ten times everything: the same inputs
    assert growth_inputs(999, 500.0, 200.0, 0.4) == pytest.approx(
        growth_inputs(9999, 5000.0 + 4.5, 2000.0 + 1.8, 0.4), rel=1e-3
    )


@needs_twitter
@pytest.mark.slow
def test_shipped_model_is_what_the_twitter_data_give() -> None:
    res = ev.read_path(TWITTER)
    assert not res.rejected and len(res.cascades) == DEFAULT_GROWTH.cascades == 638
    fitted = ev.fit_model(res.cascades)
    assert fitted.ages_s == DEFAULT_GROWTH.ages_s
    np.testing.assert_allclose(fitted.coef, DEFAULT_GROWTH.coef, atol=1e-4)
    np.testing.assert_allclose(fitted.sigma, DEFAULT_GROWTH.sigma, atol=1e-4)
    # a band's ends are order statistics of cross-fitted transforms: a cross-fit whose optimum
    # moves in its last digits (another BLAS) can move one by a step of ~1e-3
    np.testing.assert_allclose(fitted.p_low, DEFAULT_GROWTH.p_low, atol=2e-3)
    np.testing.assert_allclose(fitted.p_high, DEFAULT_GROWTH.p_high, atol=2e-3)
    assert fitted.selected_at == DEFAULT_GROWTH.selected_at == 2002
    assert "638 Twitter retweet cascades" in DEFAULT_GROWTH.provenance
    assert PredictorConfig().growth is DEFAULT_GROWTH
