"""The incremental predictor: equal to the batch computation, cheap, calibrated, measured."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shared_data import SHARED, needs

from graphs.prediction import (
    DEFAULT_CALIBRATION,
    DEFAULT_CONFIG,
    Calibration,
    Features,
    Forecast,
    IncrementalPredictor,
    Model,
    PredictorConfig,
    fit_calibration,
    forecast,
)
from graphs.seismic import predict_at

CASCADES = SHARED / "data" / "cascades"
needs_shared = needs(CASCADES / "casflow-weibo-sample.txt", "the real cascades")


def synthetic(seed: int, n: int = 3000, scale: float = 900.0) -> tuple[np.ndarray, np.ndarray]:
    """A heavy-tailed cascade: the original at 0, reshares thinning out as a power law."""
    rng = np.random.default_rng(seed)
    t = np.sort(scale * (rng.uniform(0, 1, n) ** (-1 / 0.6) - 1))
    followers = np.rint(rng.lognormal(4.5, 1.5, n + 1))
    return np.concatenate([[0.0], t]), followers


def replay(times: np.ndarray, followers: np.ndarray, config: PredictorConfig, at: list[float]):  # type: ignore[no-untyped-def]
    pred = IncrementalPredictor(config)
    out = {}
    i = 0
    for t in at:
        while i < times.size and times[i] <= t:
            pred.add(float(times[i]), int(followers[i]), original=i == 0)
            i += 1
        out[t] = pred.features(t), pred.predict(t, "seismic"), pred.buckets
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_equals_batch_on_synthetic_cascades(seed: int) -> None:
    times, followers = synthetic(seed)
    at = [120.0, 600.0, 1800.0, 3600.0, 7200.0, 21_600.0, 86_400.0, 5 * 86_400.0]
    for t, (feat, fc, _) in replay(times, followers, DEFAULT_CONFIG, at).items():
        ref = predict_at(times, followers, t)
        assert feat.observed == ref.observed
        assert feat.infectiousness == pytest.approx(ref.infectiousness, rel=1e-3), t
        if math.isfinite(ref.predicted):
            assert fc.size == pytest.approx(ref.predicted, rel=1e-3), t
        else:
            assert math.isinf(fc.size)


@needs_shared
def test_incremental_equals_batch_on_the_tweet_all_week() -> None:
    rows = np.loadtxt(CASCADES / "seismic-tweet.csv", delimiter=",", skiprows=1)
    times, followers = rows[:, 0], rows[:, 1]
    at = [float(t) for t in np.geomspace(300, 604_800, 40)]
    worst = 0.0
    for t, (feat, fc, buckets) in replay(times, followers, DEFAULT_CONFIG, at).items():
        ref = predict_at(times, followers, t)
        worst = max(worst, abs(feat.infectiousness / ref.infectiousness - 1))
        worst = max(worst, abs(fc.size / ref.predicted - 1))
        assert buckets <= 1000  # never the 15,563 posts
    assert worst < 5e-4


def test_state_stays_small_for_a_long_hot_cascade() -> None:
    # 200,000 reshares over 30 days: the state holds buckets, not posts
    rng = np.random.default_rng(9)
    times = np.sort(rng.uniform(0, 30 * 86_400, 200_000))
    pred = IncrementalPredictor()
    pred.add(0.0, 10_000, original=True)
    for t in times:
        pred.add(float(t), 100)
    pred.predict(30 * 86_400.0)
    assert pred.observed == 200_000
    # at most (7200 + 2 * 300) / 10 + 32 narrow buckets, and merged ones growing with log(age)
    assert pred.buckets < 1000


def test_arrival_order_within_the_recent_window_does_not_matter() -> None:
    times, followers = synthetic(4, n=2000)
    now = 5000.0
    keep = times <= now
    times, followers = times[keep], followers[keep]
    rng = np.random.default_rng(0)
    jitter = times[1:] + rng.uniform(0, 120, times.size - 1)  # arrival order, shuffled by 2 min
    order = np.concatenate([[0], 1 + np.argsort(jitter)])
    a, b = IncrementalPredictor(), IncrementalPredictor()
    for i in range(times.size):
        a.add(times[i], followers[i], original=i == 0)
        j = order[i]
        b.add(times[j], followers[j], original=j == 0)
    fa, fb = a.features(now), b.features(now)
    assert fa.infectiousness == pytest.approx(fb.infectiousness, rel=1e-12)
    assert fa.offspring == pytest.approx(fb.offspring, rel=1e-12)


def test_a_very_late_post_lands_in_the_old_buckets() -> None:
    times, followers = synthetic(5, n=3000)
    now = 40_000.0
    times, followers = times[times <= now], followers[times <= now]
    late = int(np.argmin(np.abs(times - 2000.0)))  # arrives last, ~38,000 s late
    pred = IncrementalPredictor()
    for i in [*(i for i in range(times.size) if i != late), late]:
        pred.add(times[i], followers[i], original=i == 0)
    ref = predict_at(times, followers, now)
    assert pred.features(now).infectiousness == pytest.approx(ref.infectiousness, rel=1e-3)


@pytest.mark.parametrize("model", ["best", "amplified"])
def test_learned_forecasts_are_finite_ordered_and_stop_at_the_horizon(model: Model) -> None:
    times, followers = synthetic(6)
    cfg = PredictorConfig(horizon_s=86_400.0)
    out = replay(times, followers, cfg, [600.0, 3600.0, 7200.0, 86_400.0, 200_000.0])
    for t, (feat, _, _) in out.items():
        f = forecast(feat, model, cfg)
        assert isinstance(f, Forecast) and len(f) == 4
        assert math.isfinite(f.high)
        assert feat.observed <= f.low <= f.size <= f.high
        if t >= 86_400.0:
            assert f.size == feat.observed  # nothing more before the horizon


@pytest.mark.parametrize("seed", [4, 5])
def test_a_forecast_without_the_interval_is_the_full_features_forecast(seed: int) -> None:
    """Only ``seismic`` reads ``p_low`` / ``p_up``: every other model's forecast, whose
    features leave them out, is the one of the full features to the bit, at every age and
    model; ``seismic``'s still reads them (its band moves with them)."""
    times, followers = synthetic(seed, n=800)
    pred = IncrementalPredictor(PredictorConfig(horizon_s=86_400.0))
    i, seen = 0, 0
    for t in [30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 40_000.0, 86_400.0, 200_000.0]:
        while i < times.size and times[i] <= t:
            pred.add(float(times[i]), int(followers[i]), original=i == 0)
            i += 1
        read = pred.read(t)
        full = read.features()
        for model in ("best", "rich", "amplified", "seismic"):
            assert read.predict(model) == forecast(full, model, pred.config), (t, model)
        bare = read.features(interval=False)
        if full.infectiousness > 0:
            seen += 1
            assert full.p_low < bare.p_low == bare.infectiousness == bare.p_up < full.p_up
    assert seen >= 5


def test_unknown_followers_count_as_the_network_average() -> None:
    a, b = IncrementalPredictor(), IncrementalPredictor()
    for i, t in enumerate([0.0, 30.0, 50.0, 90.0, 200.0, 260.0, 400.0]):
        a.add(t, None, original=i == 0)
        b.add(t, 100, original=i == 0)
    assert a.predict(600.0) == b.predict(600.0)


def test_before_any_reshare_the_forecast_is_the_observed_count() -> None:
    p = IncrementalPredictor()
    assert p.predict(10.0).size == 0.0
    p.add(0.0, 1000, original=True)
    f = p.predict(60.0, "seismic")
    assert (f.size, f.infectiousness) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("t", "followers"), [(math.nan, 1), (math.inf, 1), (1.0, -1), (1.0, math.nan)]
)
def test_bad_posts_are_refused(t: float, followers: float) -> None:
    with pytest.raises(ValueError):
        IncrementalPredictor().add(t, followers)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PredictorConfig(model="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PredictorConfig(bucket_s=0)
    with pytest.raises(ValueError):
        Calibration(0, 0, 10, 5, (1.0,), (0.0,), (0.0,))
    with pytest.raises(ValueError):
        fit_calibration([])


def test_fit_recovers_a_known_amplification_through_noise() -> None:
    rng = np.random.default_rng(3)
    cascades = []
    for _ in range(40):
        n0, off = rng.uniform(10, 1000), rng.uniform(5, 500)
        rows = []
        for age in (1800.0, 3600.0, 7200.0, 21_600.0):
            amp = math.exp(0.7 - 0.3 * math.log(age / 3600))
            final = (n0 + amp * off) * math.exp(rng.normal(0, 0.05))
            rows.append((Features(age, int(n0), 0.01, 0, 0, 0, off, off), round(final)))
        cascades.append(rows)
    cal = fit_calibration(cascades)
    assert cal.log_amp == pytest.approx(0.7, abs=0.05)
    assert cal.log_amp_slope == pytest.approx(-0.3, abs=0.05)
    lo, hi = cal.band(3600.0)
    assert lo < 0 < hi


@needs_shared
def test_shipped_calibration_is_what_the_data_give() -> None:
    from streams.evaluate import fit_all, read_path

    res = read_path(CASCADES / "casflow-weibo-sample.txt") + read_path(
        CASCADES / "seismic-tweet.csv"
    )
    assert not res.rejected
    fitted = fit_all(res.cascades)
    assert fitted.cascades == DEFAULT_CALIBRATION.cascades == 31
    assert fitted.log_amp == pytest.approx(DEFAULT_CALIBRATION.log_amp, abs=1e-3)
    assert fitted.log_amp_slope == pytest.approx(DEFAULT_CALIBRATION.log_amp_slope, abs=1e-3)
    assert fitted.ages_s == DEFAULT_CALIBRATION.ages_s
    np.testing.assert_allclose(fitted.q_low, DEFAULT_CALIBRATION.q_low, atol=1e-4)
    np.testing.assert_allclose(fitted.q_high, DEFAULT_CALIBRATION.q_high, atol=1e-4)


@needs_shared
@pytest.mark.slow
def test_amplified_beats_seismic_on_weibo_at_every_time_leave_one_out() -> None:
    # the Weibo sample has no follower counts: SEISMIC assumes n_star for all
    from streams.evaluate import evaluate, read_path, summarize

    res = read_path(CASCADES / "casflow-weibo-sample.txt") + read_path(
        CASCADES / "seismic-tweet.csv"
    )
    summary = summarize(evaluate(res.cascades, (3600.0, 7200.0, 21_600.0), split="loo"))
    for t in ("3600", "7200", "21600"):
        seismic, amp = summary["mdape"]["seismic"][t], summary["mdape"]["amplified"][t]
        seismic = math.inf if seismic == "inf" else seismic
        assert amp < 0.25 and amp < seismic / 2, (t, amp, seismic)
    # and it pages on no small cascade, where SEISMIC without followers pages on most
    assert summary["alert"]["amplified"]["small_alerted"] == 0
