"""Gradient-boosting baselines for final size: early-growth features, and Hawkes figures too.

Two rows of ``viralwatch evaluate``, never a production model:

- ``gbm``: gradient-boosted trees (least absolute deviation) on early-growth
  features of the posts seen so far, as in Cheng et al., "Can cascades be
  predicted?" (WWW 2014) and the size-based regressions before it
  (Szabo and Huberman 2010): the size, the share of it that came in the
  last 5 min to 2 h, the time since the last reshare, the followers
  reached, the original poster's followers.
- ``gbm+hawkes``: the same plus the three Hawkes (SEISMIC) figures the
  ``best`` model reads, the feature-driven Hawkes of Mishra, Rizoiu and
  Xie (CIKM 2016).

Both learn ``log((final + 1) / (observed + 1))`` from the training
cascades *as they are*: fitted on a sample chosen for size, with the size
among their inputs, they learn the selection (a cascade of 300 in the
sample is one that reached 2,002), so they estimate the final size *given*
that selection, like ``best|sel``, not what a real stream's small cluster
will do. That is why neither is shipped; they show what the field's
methods reach on these data.

scikit-learn is needed (the ``dev`` and ``bench`` extras); without it
:func:`available` is false and ``evaluate`` leaves the rows out, saying so.
The features are computed from the whole history (evaluation only): the
worker's forecast does not call this module.

Examples
--------
>>> x = early_growth([0.0, 10.0, 20.0, 3000.0], [500, 10, 20, 30], 3600.0)
>>> [round(v, 3) for v in x[:3]], len(x) == len(EARLY_GROWTH)
([1.386, -1.386, -0.693], True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib.util import find_spec

import numpy as np
from numpy.typing import NDArray

__all__ = ["EARLY_GROWTH", "BoostedGrowth", "available", "early_growth"]

#: The ``gbm`` row's inputs, in order.
EARLY_GROWTH: tuple[str, ...] = (
    "log1p(observed)",
    *(
        f"log1p(reshares in the last {w}) - log1p(observed)"
        for w in ("5m", "15m", "30m", "1h", "2h")
    ),
    "log1p(seconds since the last reshare)",
    "log1p(followers of the reshares seen)",
    "log1p(followers of the original poster)",
    "log1p(followers of the reshares of the last hour)",
)
_WINDOWS_S = (300.0, 900.0, 1800.0, 3600.0, 7200.0)


def available() -> bool:
    """Whether scikit-learn is installed (the rows need it)."""
    return find_spec("sklearn") is not None


def early_growth(times_s: Sequence[float], followers: Sequence[float], now_s: float) -> list[float]:
    """The ``EARLY_GROWTH`` inputs at ``now_s`` (the original post first, times from it)."""
    t = np.asarray(times_s[1:], dtype=np.float64)
    f = np.asarray(followers[1:], dtype=np.float64)
    seen = t <= now_s
    n = int(np.count_nonzero(seen))
    ln = math.log1p(n)
    out = [ln]
    out += [math.log1p(int(np.count_nonzero(seen & (t > now_s - w)))) - ln for w in _WINDOWS_S]
    last = float(t[seen].max()) if n else 0.0
    out.append(math.log1p(max(now_s - last, 0.0)))
    out.append(math.log1p(float(f[seen].sum())))
    out.append(math.log1p(float(followers[0])))
    out.append(math.log1p(float(f[seen & (t > now_s - 3600.0)].sum())))
    return out


class BoostedGrowth:
    """One gradient-boosted regression of ``log((final + 1) / (observed + 1))``.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(0, 1, (200, 2))
    >>> y = 2 * x[:, 0] + rng.normal(0, 0.05, 200)
    >>> m = BoostedGrowth(seed=0).fit(x, y)
    >>> size = m.predict(np.array([[0.9, 0.5]]), np.array([99.0]))[0]
    >>> bool(450 < size < 800)  # 100 * e^1.8 - 1
    True
    """

    def __init__(self, seed: int = 0) -> None:
        from sklearn.ensemble import GradientBoostingRegressor

        self._model = GradientBoostingRegressor(
            loss="absolute_error",
            n_estimators=300,
            max_depth=3,
            learning_rate=0.03,
            subsample=0.8,
            random_state=seed,
        )

    def fit(self, x: NDArray[np.float64], log_growth: NDArray[np.float64]) -> BoostedGrowth:
        self._model.fit(x, log_growth)
        return self

    def predict(self, x: NDArray[np.float64], observed: NDArray[np.float64]) -> NDArray[np.float64]:
        """Final sizes, never below ``observed``."""
        z = np.maximum(np.asarray(self._model.predict(x), dtype=np.float64), 0.0)
        return np.asarray((observed + 1.0) * np.exp(z) - 1.0, dtype=np.float64)
