"""The forecast's figures are the NumPy computation they replaced, to the bit.

``IncrementalPredictor.features`` computes the kernel's three terms in one
stacked pass (``_kernel_terms``) and the bucket columns in one array; the
forecasts alerts carry must not move by a rounding. The oracle below is
the computation as it was (``MemoryKernel.window_integral`` and ``ccdf``,
one NumPy call per step), over the same bucket tables, compared by ``repr``
(so that ``-0.0``, ``inf`` and ``nan`` count too).
"""

from __future__ import annotations

import math
import sys
from types import FrameType

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from graphs import prediction as gp
from graphs.growth import RECENT_WINDOWS_S
from graphs.prediction import Features, IncrementalPredictor
from graphs.seismic import DEFAULT_KERNEL, MemoryKernel, chi2_quantile


def _old_arrays(pred: IncrementalPredictor) -> list[np.ndarray]:
    """The bucket columns as ``_arrays`` assembled them (after it updated its tables)."""
    pred._arrays()
    table, old = pred._fine_table, pred._old_table
    assert table is not None and old is not None
    width = pred.config.bucket_s
    lo = np.concatenate([table[:, 0], old[:, 0]])
    hi = np.concatenate([table[:, 0] + width, old[:, 1]])
    n = np.concatenate([table[:, 1], old[:, 3]])
    d = np.concatenate([table[:, 2], old[:, 4]])
    dt = np.concatenate([table[:, 3], old[:, 5]])
    s = np.concatenate([table[:, 4], old[:, 6]])
    centre = np.where(d > 0, dt / np.where(d > 0, d, 1.0), (lo + hi) / 2.0)
    return [lo, hi, n, d, centre, s]


def old_features(pred: IncrementalPredictor, now_s: float) -> Features:
    """``IncrementalPredictor.features`` as it was before the stacked kernel terms."""
    cfg = pred.config
    if pred._ref is None:
        return Features(0.0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    pred._age_buckets()
    p = float(now_s) - pred._ref
    age = float(now_s) - pred._origin
    lo, hi, n, d, centre, s = _old_arrays(pred)
    width = cfg.bucket_s
    recent = tuple(
        float(np.sum(n[lo >= width * math.floor((p - w) / width)])) for w in RECENT_WINDOWS_S
    )
    last = pred._last_reshare if pred._reshares else pred._origin
    early = (recent, float(now_s) - last, pred._followers_seen, pred._original_followers)
    empty = Features(max(age, 0.0), pred._reshares, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, *early)
    before = [e for e in pred._recent if e < p]
    if not before:
        return empty
    window = min(max(age / 2.0, cfg.min_window_s), cfg.max_window_s)
    if sum(1 for e in before if e >= p - window) < cfg.min_count:
        first = before[-(cfg.min_count + 1)] if len(before) > cfg.min_count else before[0]
        window = p - first
    slope = 1.0 / window
    start = p - window
    ages = p - centre
    exposure = float(np.dot(d, cfg.kernel.window_integral(ages, slope, window)))
    inside = (lo >= start) & (lo < p)
    mean_t = s / np.where(n > 0, n, 1.0)
    cut = (lo < start) & (hi > start) & (n > 0) & (mean_t >= start)
    weighted = float(np.sum(n[inside] + slope * (s[inside] - n[inside] * p)))
    weighted += float(np.sum(slope * (s[cut] - n[cut] * start)))
    count = float(np.sum(n[inside]) + np.sum(n[cut]))
    if weighted <= 0.0 or exposure <= 0.0:
        return empty
    q = weighted / exposure
    k = max(1, round(count))
    if k > 200:
        k = round(k, 2 - len(str(k)) + 1)
    p_low = q * chi2_quantile(0.05, 2 * k) / (2 * k)
    p_up = q * chi2_quantile(0.95, 2 * k) / (2 * k)
    seen = ages >= 0.0
    ccdf_now = cfg.kernel.ccdf(ages)
    offspring = q * float(np.sum(d[seen] * ccdf_now[seen]))
    until = (pred._origin - pred._ref + cfg.horizon_s) - centre
    left = np.maximum(ccdf_now - cfg.kernel.ccdf(until), 0.0)
    offspring_h = q * float(np.sum(d[seen] * left[seen]))
    return Features(age, pred._reshares, q, p_low, p_up, count, offspring, offspring_h, *early)


finite = st.floats(-5e5, 5e5, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    ages=st.lists(finite, min_size=1, max_size=150),
    window=st.one_of(st.floats(1e-3, 2e4), st.sampled_from([300.0, 3600.0, 7200.0])),
    horizon=st.floats(-1e5, 1e6),
    theta=st.floats(0.05, 0.95),
)
def test_kernel_terms_are_the_kernels_methods_to_the_bit(
    ages: list[float], window: float, horizon: float, theta: float
) -> None:
    """Any ages (before, inside and past every case's bounds), any window, either side of
    the cutoff, any kernel: the same three arrays, element by element."""
    for kernel in (DEFAULT_KERNEL, MemoryKernel(theta=theta)):
        a = np.array(ages)
        until = horizon - a
        got = gp._kernel_terms(kernel, a, until, 1.0 / window, window)
        want = (
            kernel.window_integral(a, 1.0 / window, window),
            kernel.ccdf(a),
            kernel.ccdf(until),
        )
        for g, w in zip(got, want, strict=True):
            assert repr(g.tolist()) == repr(w.tolist())


def _same(a: Features, b: Features) -> bool:
    return repr(a) == repr(b)


post = st.tuples(
    st.floats(-30.0, 600.0),  # seconds after the previous post (some late)
    st.one_of(st.none(), st.integers(0, 10**7), st.floats(0.0, 1e6)),
    st.booleans(),  # an upload (original)
    st.one_of(st.none(), st.sampled_from([0.0, 0.5, 7.0, 60.0, 900.0, 9000.0])),  # forecast
)


@settings(max_examples=200, deadline=None)
@given(start=st.floats(-1e9, 2e9), posts=st.lists(post, min_size=1, max_size=400))
def test_features_are_the_old_computation_to_the_bit(
    start: float, posts: list[tuple[float, int | float | None, bool, float | None]]
) -> None:
    """Two predictors fed the same posts, one read by the old code and one by the new, at
    every forecast time of the sequence and after: the same figures. A state read at a
    forecast time (``IncrementalPredictor.read``) gives them when computed then, and when
    computed again at the end, after every later post and read (the detector computes
    only the forecasts something reads)."""
    new, old = IncrementalPredictor(), IncrementalPredictor()
    reads = []
    t = start
    for gap, followers, original, ask in posts:
        t += gap
        new.add(t, followers, original=original)
        old.add(t, followers, original=original)
        if ask is not None:
            reads.append((new.read(t + ask), old_features(old, t + ask)))
            assert _same(reads[-1][0].features(), reads[-1][1])
    for later in (0.0, 5.0, 3600.0, 86400.0):
        assert _same(new.features(t + later), old_features(old, t + later))
    for read, then in reads:
        assert _same(read.features(), then)
        assert repr(read.predict()) == repr(gp.forecast(then, "best", old.config))


def test_features_match_on_a_long_cascade_with_merged_buckets() -> None:
    """A week of a thinning cascade (so buckets are merged), asked every few minutes."""
    rng = np.random.default_rng(7)
    times = np.sort(600.0 * (rng.uniform(0, 1, 4000) ** (-1 / 0.6) - 1))
    times = times[times < 7 * 86400]
    followers = np.rint(rng.lognormal(4.5, 1.5, len(times)))
    new, old = IncrementalPredictor(), IncrementalPredictor()
    for pred in (new, old):
        pred.add(0.0, 5000, original=True)
    asked = 0
    next_ask = 0.0
    for t, f in zip(times.tolist(), followers.tolist(), strict=True):
        new.add(t, f)
        old.add(t, f)
        if t >= next_ask:
            assert _same(new.features(t), old_features(old, t))
            next_ask = t + 300.0
            asked += 1
    assert asked > 50 and new.buckets > 0 and old._coarse


viral = st.tuples(
    st.floats(0.0, 120.0),  # seconds after the previous post (a burst, or a lull)
    st.one_of(st.none(), st.integers(0, 10**8)),
    st.booleans(),  # an upload (original)
    st.one_of(st.none(), st.sampled_from([0.0, 3.0, 60.0, 3600.0, 86400.0, 7e5])),  # forecast
)


def _reads(
    posts: list[tuple[float, int | float | None, bool, float | None]],
    horizon: float,
    burst: int,
    later: tuple[float, ...],
) -> list[gp.StateRead]:
    """A predictor fed ``posts`` (each ``gap`` after the last; ``burst`` reshares 2 s apart
    after the first: a hot cascade), read where a post asks (``ask`` after it) and
    ``later`` after the last: the states the growth bound's tests hold it at."""
    pred = IncrementalPredictor(gp.PredictorConfig(horizon_s=horizon))
    reads = []
    t = 0.0
    for i, (gap, followers, original, ask) in enumerate(posts):
        t += gap
        pred.add(t, followers, original=original)
        if i == 0:
            for k in range(burst):  # a hot cascade: reshares 2 s apart
                pred.add(t + 2.0 * (k + 1), 5_000)
            t += 2.0 * burst
        if ask is not None:
            reads.append(pred.read(t + ask))
    return reads + [pred.read(t + x) for x in later]


@settings(max_examples=300, deadline=None)
@given(
    posts=st.lists(st.one_of(post, viral), min_size=1, max_size=400),
    horizon=st.sampled_from([3600.0, 86400.0, 7 * 86400.0]),
    burst=st.integers(0, 3000),
)
def test_the_growth_bound_is_never_under_the_forecast(
    posts: list[tuple[float, int | float | None, bool, float | None]], horizon: float, burst: int
) -> None:
    """``StateRead.growth_bound`` against the forecast computed from the same read: its
    size and low never under the forecast's, at any time, horizon and state (small,
    late posts, followers by the hundred million, a burst of thousands a few seconds
    apart: forecasts past the ``[predicted]`` rule's 10,000), so a decision it settles
    is the one the forecast would make. The same for the rough bound (``rough=True``: from
    the sums the read holds, no loop over the buckets)."""
    for read in _reads(posts, horizon, burst, (0.0, 30.0, 3600.0, 86400.0)):
        f = read.predict()
        for rough in (False, True):
            bound = read.growth_bound(rough=rough)
            if bound is not None:
                assert f.size <= bound[0] and f.low <= bound[1], (rough, f, bound)


def test_the_growth_bound_settles_small_cascades_and_not_hot_ones() -> None:
    """What the bound is for: a cluster of a hundred reshares is settled under the
    ``[predicted]`` rule's thresholds (size 10,000, low 2,000), a hot one of thousands a
    minute is not (its forecast fires the rule, and is computed); both by the rough bound
    too."""
    small, hot = IncrementalPredictor(), IncrementalPredictor()
    for pred, n, gap, followers in ((small, 100, 6.0, 150), (hot, 6000, 0.25, 20_000)):
        pred.add(0.0, 5000, original=True)
        for i in range(1, n + 1):
            pred.add(i * gap, followers)
    f = hot.predict(1600.0)
    assert f.size > 10_000 and f.low > 2_000  # the rule fires on it
    for rough in (False, True):
        size, low = small.read(700.0).growth_bound(rough=rough) or (math.inf, math.inf)
        assert size < 10_000 and low < 2_000
        size, low = hot.read(1600.0).growth_bound(rough=rough) or (math.inf, math.inf)
        assert size >= f.size and low >= f.low


def test_the_rough_bound_takes_no_count_where_the_forecast_finds_no_exposure() -> None:
    """Reshares of no followers before the read, the only followers after it: the forecast
    finds no exposure, so its infectiousness is 0 (not the count over the exposure), and
    the branching input is at its floor; a count taken there would bound ``q`` from below
    at more than 0 and the forecast's ``mu`` from above at less than its own (found by
    hand: 14,345 against the forecast's 14,828)."""
    pred = IncrementalPredictor()
    pred.add(0.0, 0, original=True)
    for i in range(1, 60):
        pred.add(i * 4.0, 0)
    pred.add(1000.0, 10**8)
    read = pred.read(250.0)
    f = read.predict()
    assert f.size > 10_000 and f.low > 2_000  # the rule would fire on it
    size, low = read.growth_bound(rough=True) or (math.inf, math.inf)
    assert size >= f.size and low >= f.low


@settings(max_examples=2000, deadline=None)
@given(
    p=st.one_of(st.floats(0.07, 0.5), st.just(0.5)),
    sigma=st.floats(0.005, 10.0),
    mu=st.floats(-60.0, 60.0),
    below=st.one_of(st.floats(0.0, 1e-6), st.floats(0.0, 50.0)),
)
def test_the_truncated_quantile_at_the_bounds_mu_is_over_any_below_it(
    p: float, sigma: float, mu: float, below: float
) -> None:
    """The bound's step from ``mu`` to the quantiles (``growth_bound``): a ``mu`` at most the
    bound's gives a computed quantile at most the bound's, rounding and the tail's noise
    in ``NormalDist.cdf`` included (the bound takes ``mu`` at least 0, and a band's low
    quantile at least 0.07)."""
    from graphs.growth import truncated_quantile

    top = max(mu + 1e-9 * (1.0 + abs(mu)), 0.0)
    assert (
        truncated_quantile(p, mu - below, sigma, 0.0)
        <= truncated_quantile(p, top, sigma, 0.0) + 1e-9
    )


def _old_in_window(read: gp.StateRead, window: float) -> tuple[np.ndarray, float, float]:
    """``StateRead._in_window`` as it was (every bucket's midpoint computed, ``count``'s
    sum taken twice)."""
    assert read._columns is not None
    cols, old_hi = read._columns
    lo, n, d, dt, s = cols
    p = read._p
    hi = lo + read._cfg.bucket_s
    if old_hi is not None:
        hi[hi.shape[0] - old_hi.shape[0] :] = old_hi
    has = d > 0
    centre = np.where(has, dt / np.where(has, d, 1.0), (lo + hi) / 2.0)
    slope = 1.0 / window
    start = p - window
    inside = (lo >= start) & (lo < p)
    n_in = n[inside]
    weighted = float(gp._total(n_in + slope * (s[inside] - n_in * p)))
    count = float(gp._total(n_in))
    has = n > 0
    cut = (lo < start) & (hi > start) & has
    if cut.any():
        cut &= s / np.where(has, n, 1.0) >= start
        n_cut = n[cut]
        weighted += float(gp._total(slope * (s[cut] - n_cut * start)))
        count = float(gp._total(n_in) + gp._total(n_cut))
    return centre, weighted, count


def _old_growth_bound(read: gp.StateRead) -> tuple[float, float] | None:
    """``StateRead.growth_bound`` as it was (twenty-second session): both ends of every
    input computed, ``np.clip``, the corner taken by ``law_at_most``."""
    from graphs.growth import SEISMIC_INPUTS, truncated_quantile

    cfg = read._cfg
    growth = cfg.growth
    window = read._window
    if (
        cfg.model != "best"
        or read._columns is None
        or window is None
        or len(growth.coef[0]) != SEISMIC_INPUTS + 1
        or read._age < 0.0
    ):
        return None
    n = float(read._reshares)
    if read._age >= cfg.horizon_s or n <= 0.0:
        return n, n
    centre, weighted, count = _old_in_window(read, window)
    kernel = cfg.kernel
    tau = kernel.cutoff
    ages = read._p - centre
    flat, reached = np.clip(ages - tau, 0.0, window), np.clip(ages, 0.0, window)
    phi = kernel.c * (np.maximum(ages, tau) / tau) ** -(1.0 + kernel.theta)
    half = 0.5 / window
    most = kernel.c * (reached - flat) * (1.0 - (flat + reached) * half)
    least = most + phi * flat * (1.0 - flat * half)
    most += kernel.c * flat * (1.0 - flat * half)
    _, _, d, _, _ = read._columns.cols
    exposure = 0.5 * float(np.dot(d, least))
    if not (exposure > 0.0 and weighted > 0.0):
        return None
    q_most = weighted / exposure
    q_least = weighted / (2.0 * float(np.dot(d, most)))
    n1 = n + 1.0
    span = cfg.horizon_s - read._age
    seen = ages >= 0.0
    after = kernel.c * (np.maximum(ages + span, tau) / tau) ** -(1.0 + kernel.theta)
    coming = 0.5 * float(np.dot(d[seen], after[seen])) * span - 1e-12 * float(gp._total(d))
    followers = float(gp._total(d)) * (1.0 + 1e-9)
    share = math.log1p(count / n1)
    lows = (
        math.log1p(q_least * max(coming, 0.0) / n1),
        share,
        math.log(q_least * cfg.n_star + 1e-3),
    )
    highs = (
        math.log1p(q_most * followers / n1),
        share,
        math.log(q_most * cfg.n_star + 1e-3),
    )
    mu, sigma, p_lo, _ = growth.law_at_most(read._age, lows, highs)
    if p_lo < 0.07:
        return None
    mu = max(mu + 1e-9 * (1.0 + abs(mu)), 0.0)
    z, lo = truncated_quantile(0.5, mu, sigma, 0.0), truncated_quantile(p_lo, mu, sigma, 0.0)
    grow = math.exp(1e-9)
    return n1 * math.exp(z) * grow - 1.0, n1 * math.exp(lo) * grow - 1.0


@settings(max_examples=300, deadline=None)
@given(
    posts=st.lists(st.one_of(post, viral), min_size=1, max_size=300),
    horizon=st.sampled_from([3600.0, 86400.0, 7 * 86400.0]),
    burst=st.integers(0, 2000),
)
def test_the_growth_bound_is_what_it_was_to_the_bit(
    posts: list[tuple[float, int | float | None, bool, float | None]], horizon: float, burst: int
) -> None:
    """``StateRead.growth_bound`` computes only the end of each input that the corner takes
    (the first generation's low, a power over the buckets, where its coefficient is
    negative), without ``np.clip``'s wrappers, and ``_in_window`` a bucket's midpoint only
    where it has no followers: the same bound, and the same window figures, by ``repr``,
    as the computation they replaced (kept above), at any time, horizon and state."""
    for read in _reads(posts, horizon, burst, (0.0, 30.0, 400.0, 3600.0, 86400.0)):
        assert repr(read.growth_bound()) == repr(_old_growth_bound(read))
        if read._window is not None and read._columns is not None:
            centre, weighted, count = read._in_window(read._window)
            old_centre, old_weighted, old_count = _old_in_window(read, read._window)
            assert repr((centre.tolist(), weighted, count)) == repr(
                (old_centre.tolist(), old_weighted, old_count)
            )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, -0.0, 5.0, 12.5, -3.0, 1e6])
            | st.floats(-1e4, 1e4, allow_nan=False),
            st.none() | st.integers(0, 10**6),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_add_keeps_the_running_figures_min_and_max_keep(
    posts: list[tuple[float, int | None, bool]],
) -> None:
    """``add``'s comparisons in place of ``min``/``max`` keep what they kept, to the bit
    (``repr``: the first of ``0.0`` and ``-0.0`` is kept, as ``min`` and ``max`` keep it),
    and its sums are the sums of its posts in their order."""
    pred = IncrementalPredictor()
    origin, latest, last = math.inf, -math.inf, -math.inf
    dt_sum = dt2_sum = dt_abs = 0.0
    ref = posts[0][0]
    for t_s, followers, original in posts:
        pred.add(t_s, followers, original=original)
        d = pred.config.default_followers if followers is None else float(followers)
        origin, latest = min(origin, t_s), max(latest, t_s)
        if not original:
            last = max(last, t_s)
        dt = d * (t_s - ref)
        dt_sum += dt
        dt2_sum += dt * (t_s - ref)
        dt_abs += abs(dt)
    got = (pred._origin, pred._latest, pred._last_reshare, pred._dt_sum, pred._dt2_sum)
    assert repr(got) == repr((origin, latest, last, dt_sum, dt2_sum))
    assert repr(pred._dt_abs) == repr(dt_abs)


@settings(max_examples=60, deadline=None)
@given(
    posts=st.lists(st.one_of(post, viral), min_size=1, max_size=120),
    horizon=st.sampled_from([3600.0, 86400.0]),
    burst=st.integers(0, 600),
)
def test_a_read_and_its_bounds_call_no_builtin_min_or_max(
    posts: list[tuple[float, int | float | None, bool, float | None]], horizon: float, burst: int
) -> None:
    """The detector reads a forecast's state and asks its bounds on the policy's schedule:
    the window, the held count, the rough bound's kernel and counts and the truncated
    quantile are compares (``max(a, b)`` is ``b if b > a else a``, as the builtin decides
    it), not the builtins' C calls that iterate their arguments; a young cluster's least
    narrow bucket is kept, not found by ``min`` over the buckets."""
    calls: list[str] = []
    mine = {"read", "_age_buckets", "growth_bound", "_rough_inputs", "truncated_quantile"}

    def note(frame: FrameType, event: str, arg: object) -> None:
        name = getattr(arg, "__name__", "")
        if event == "c_call" and name in ("min", "max") and frame.f_code.co_name in mine:
            calls.append(f"{name} in {frame.f_code.co_name}")

    sys.setprofile(note)
    try:
        for read in _reads(posts, horizon, burst, (0.0, 30.0, 3600.0)):
            read.growth_bound(rough=True)
            read.growth_bound()
    finally:
        sys.setprofile(None)
    assert calls == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-900.0, 4000.0), st.booleans()),
        min_size=1,
        max_size=200,
    )
)
def test_the_least_narrow_key_kept_is_the_least_of_the_buckets(
    posts: list[tuple[float, bool]],
) -> None:
    """Before the merged buckets' floor is set, the least narrow key the predictor keeps
    (late posts among them) is ``min`` of its narrow buckets' keys, which it replaced."""
    pred = IncrementalPredictor()
    for t, original in posts:
        pred.add(t, 100, original=original)
        if pred._floor_key is None:
            assert pred._least_key == min(pred._fine)
        pred.read(t + 1.0)
