"""The ``best`` model: O(1) updates equal the batch computation, folds never leak, shipped fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shared_data import SHARED, needs

from graphs.growth import (
    DEFAULT_GROWTH,
    INPUTS,
    RECENT_WINDOWS_S,
    RICH_GROWTH,
    SCALE_FREE_INPUTS,
    GrowthModel,
    fit_growth,
    growth_inputs,
    kfold,
)
from graphs.prediction import (
    DEFAULT_CONFIG,
    IncrementalPredictor,
    PredictorConfig,
    features_from_history,
    forecast,
    forecast_given_selection,
)
from streams import evaluate as ev

TWITTER = SHARED / "data" / "cascades" / "twitter-seismic"
needs_twitter = needs(TWITTER, "the twitter-seismic cascades")


def synthetic(seed: int, n: int = 3000, scale: float = 900.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.sort(scale * (rng.uniform(0, 1, n) ** (-1 / 0.6) - 1))
    followers = np.rint(rng.lognormal(4.5, 1.5, n + 1))
    return np.concatenate([[0.0], t]), followers


# -- O(1) per post, equal to the batch computation -----------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_best_and_rich_forecasts_equal_the_batch_ones(seed: int) -> None:
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
        # the early-growth figures are kept exactly (counts in whole buckets, sums, a max)
        assert inc.recent == batch.recent and len(inc.recent) == len(RECENT_WINDOWS_S), t
        assert inc.since_last_s == batch.since_last_s, t
        assert inc.followers_seen == pytest.approx(batch.followers_seen, rel=1e-12), t
        assert inc.original_followers == batch.original_followers == followers[0]
        for model in ("best", "rich"):
            a, b = forecast(inc, model, DEFAULT_CONFIG), forecast(batch, model, DEFAULT_CONFIG)
            for x, y in zip(a, b, strict=True):
                assert x == pytest.approx(y, rel=1e-3), (t, model)
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


@pytest.mark.parametrize("model", ["best", "rich"])
def test_shipped_models_do_not_promise_thousands_to_a_small_cluster(model: str) -> None:
    # fitted on cascades that all reached 2,002; a cluster of 5 to 50 reshares at any
    # age is still forecast to stay in the hundreds (the truncated fit's whole point)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for n in (5, 20, 50):
            for age in (600.0, 3600.0, 7200.0, 21_600.0):
                t = np.concatenate([[0.0], np.sort(rng.uniform(0, age, n))])
                d = np.rint(rng.lognormal(4.5, 1.5, n + 1))
                f = forecast(features_from_history(t, d, age), model, DEFAULT_CONFIG)  # type: ignore[arg-type]
                assert n <= f.size < 1000 and f.high < 2002, (seed, n, age, f)


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
        padded = (*x, *(0.0,) * (len(INPUTS) - len(x)))  # the other inputs say nothing here
        rows += [(c, age, padded, obs, final) for age in (3600.0, 7200.0)]
        c += 1
    return rows


def test_truncated_fit_recovers_the_law_before_the_selection() -> None:
    rows = selected_population(11)
    truth = (0.3, 0.8, 0.5, 0.05)
    m = fit_growth(rows, (3600.0, 7200.0), selected_at=2002.0, seed=1)
    np.testing.assert_allclose(m.coef[0][:4], truth, atol=0.15)
    np.testing.assert_allclose(m.coef[0][4:], 0.0, atol=0.15)
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
    zero = (0.0,) * (len(INPUTS) + 1)
    with pytest.raises(ValueError):
        GrowthModel((3600.0, 1800.0), (zero,) * 2, (1, 1), (0.1, 0.1), (0.9, 0.9))
    with pytest.raises(ValueError, match="same 2 to 16 numbers"):
        GrowthModel((3600.0,), ((0,),), (1,), (0.1,), (0.9,))
    with pytest.raises(ValueError, match="same 2 to 16 numbers"):
        GrowthModel((1.0, 2.0), ((0, 0), (0, 0, 0)), (1, 1), (0.1, 0.1), (0.9, 0.9))
    with pytest.raises(ValueError, match="sigma"):
        GrowthModel((3600.0,), (zero,), (0,), (0.1,), (0.9,))
    with pytest.raises(ValueError, match="p_low"):
        GrowthModel((3600.0,), (zero,), (1,), (0.6,), (0.9,))
    with pytest.raises(ValueError):
        fit_growth([], (3600.0,))
    with pytest.raises(ValueError, match="not on the grid"):
        fit_growth([(0, 1000.0, zero[1:], 1.0, 2.0)] * 40, (3600.0,))


def test_growth_inputs_are_scale_free_but_the_size_itself() -> None:
    # ten times the cascade, ten times everything: the same inputs, but for the size terms
    small = growth_inputs(999, 500.0, 200.0, 0.4, (99, 199, 399, 699, 999), 30.0, 9e4, 500.0)
    big = growth_inputs(
        9999, 5004.5, 2001.8, 0.4, (999.9, 1999.9, 3999.9, 6999.9, 9999), 30.0, 9e5, 500.0
    )
    assert small[:11] == pytest.approx(big[:11], rel=1e-3, abs=1e-4)
    assert small[11] == pytest.approx(math.log(1000)) and big[11] == pytest.approx(math.log(10_000))
    assert len(small) == len(INPUTS)
    # windows not given read as holding the whole cascade
    assert growth_inputs(99, 1.0, 1.0, 0.1)[3:8] == (0.0,) * len(RECENT_WINDOWS_S)


def test_early_growth_figures_of_a_known_cascade() -> None:
    # the original at 0 (800 followers), reshares at 100 s, 3,000 s, 3,595 s and 3,598 s
    times = np.array([0.0, 100.0, 3000.0, 3595.0, 3598.0])
    followers = np.array([800.0, 10.0, 20.0, 30.0, 40.0])
    f = features_from_history(times, followers, 3600.0)
    # windows of 5 min, 15 min, 30 min, 1 h, 2 h, back to the start of their 10-s bucket
    assert f.recent == (2.0, 3.0, 3.0, 4.0, 4.0)
    assert (f.since_last_s, f.followers_seen, f.original_followers) == (2.0, 100.0, 800.0)
    pred = IncrementalPredictor()
    for t, d in zip(times[::-1], followers[::-1], strict=True):  # arrival order reversed
        pred.add(float(t), float(d), original=t == 0.0)
    inc = pred.features(3600.0)
    assert (inc.recent, inc.since_last_s, inc.followers_seen) == (f.recent, 2.0, 100.0)


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
    rich = ev.fit_model(res.cascades, inputs=SCALE_FREE_INPUTS)
    assert len(rich.coef[0]) == SCALE_FREE_INPUTS + 1 == len(RICH_GROWTH.coef[0])
    np.testing.assert_allclose(rich.coef, RICH_GROWTH.coef, atol=1e-4)
    np.testing.assert_allclose(rich.sigma, RICH_GROWTH.sigma, atol=1e-4)
    np.testing.assert_allclose(rich.p_low, RICH_GROWTH.p_low, atol=2e-3)
    np.testing.assert_allclose(rich.p_high, RICH_GROWTH.p_high, atol=2e-3)
    assert PredictorConfig().rich is RICH_GROWTH


def test_a_worker_can_run_the_rich_option() -> None:
    from streams.forecast import predictor_factory

    times, followers = synthetic(8, n=400)
    p = predictor_factory("rich")()
    for i, (t, d) in enumerate(zip(times, followers, strict=True)):
        if t <= 3600.0:
            p.add(float(t), int(d), original=i == 0)
    pred = p.predict(3600.0)
    assert pred is not None and pred.model == "rich" and pred.horizon_s == 7 * 86_400.0
    assert p.observed <= pred.low <= pred.size <= pred.high
