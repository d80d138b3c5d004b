"""The detector's per-cluster final-size predictor: graphs.prediction behind alerts' types.

The detector keeps one :class:`ClusterPredictor` per banked cluster, adds
each post as it applies it (event time, seconds since the cluster was first
seen) and asks for a forecast every few seconds of event time. The answer
is an :class:`streams.alerts.Prediction`, which alerts carry as
``cascade.predicted_final_size`` and the policy's ``[predicted]`` rule reads.

Examples
--------
>>> p = ClusterPredictor()
>>> p.add(0.0, 800, original=True)
>>> p.predict(60.0) is None  # nothing to say before the first reshare
True
>>> for i in range(1, 121):
...     p.add(i * 5.0, 150)
>>> pred = p.predict(600.0)
>>> pred.model, pred.low <= pred.size <= pred.high
('best', True)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from graphs.prediction import (
    DEFAULT_CONFIG,
    IncrementalPredictor,
    Model,
    PredictorConfig,
    StateRead,
)
from streams.alerts import Prediction


class ClusterPredictor:
    """One cluster's incremental predictor (see :class:`graphs.prediction.IncrementalPredictor`).

    ``followers=None`` means unknown (the network average is assumed, not
    zero, which would hide the post from the estimate). Uploads are
    ``original=True``: they expose their followers but are not reshares.
    """

    __slots__ = ("_inner",)

    def __init__(self, config: PredictorConfig = DEFAULT_CONFIG) -> None:
        self._inner = IncrementalPredictor(config)

    @property
    def observed(self) -> int:
        return self._inner.observed

    def add(self, t_s: float, followers: int | None = None, *, original: bool = False) -> None:
        self._inner.add(t_s, followers, original=original)

    def predict(self, now_s: float) -> Prediction | None:
        """The forecast at ``now_s``, or None before the first reshare."""
        return self.read(now_s)()

    def read(self, now_s: float) -> LaterPrediction:
        """The forecast at ``now_s``, its state read now and its figures computed when first
        called for (:meth:`graphs.prediction.IncrementalPredictor.read`): the detector
        reads the state on the policy's schedule, and computes only what is read.

        >>> p = ClusterPredictor()
        >>> p.add(0.0, 800, original=True)
        >>> for i in range(1, 121):
        ...     p.add(i * 5.0, 150)
        >>> later = p.read(600.0)
        >>> p.add(601.0, 90_000)
        >>> later() == later() != p.predict(601.0)
        True
        """
        inner = self._inner
        return LaterPrediction(inner.read(now_s) if inner.observed else None, inner.config)


class LaterPrediction:
    """A forecast read from a predictor's state, computed when first called, then kept."""

    __slots__ = ("_config", "_done", "_read")

    def __init__(self, read: StateRead | None, config: PredictorConfig) -> None:
        self._read = read  # None once computed, or before the first reshare
        self._config = config
        self._done: Prediction | None = None

    def __call__(self) -> Prediction | None:
        read = self._read
        if read is not None:
            f = read.predict()
            cfg = self._config
            self._done = Prediction(f.size, f.low, f.high, cfg.model, cfg.horizon_s)
            self._read = None
        return self._done

    def at_most(self, *, rough: bool = False) -> tuple[float, float] | None:
        """Upper bounds on the forecast's size and low, not computing it
        (:meth:`graphs.prediction.StateRead.growth_bound`); ``None``: none here (computed
        already, nothing to forecast, another model): call it.

        >>> p = ClusterPredictor()
        >>> p.add(0.0, 800, original=True)
        >>> for i in range(1, 121):
        ...     p.add(i * 5.0, 150)
        >>> later = p.read(600.0)
        >>> size, low = later.at_most()
        >>> f = later()
        >>> f.size <= size and f.low <= low, later.at_most()
        (True, None)

        ``rough=True``: the bounds from the sums the read holds, no loop over its buckets
        (:meth:`graphs.prediction.StateRead.growth_bound`); higher, so a caller asks them
        first and the others only where they do not settle its question.
        """
        read = self._read
        return None if read is None else read.growth_bound(rough=rough)


@dataclass(frozen=True, slots=True)
class PredictorFactory:
    """What ``Detector(predictor_factory=...)`` takes: a new predictor per cluster.

    The detector sets the horizon from the policy's ``[predicted] horizon``
    (:meth:`at_horizon`), so that one setting says what every alert's
    prediction means.

    >>> make = predictor_factory("seismic")
    >>> make() is not make(), make.at_horizon(3600.0).config.horizon_s
    (True, 3600.0)
    """

    config: PredictorConfig = DEFAULT_CONFIG

    def __call__(self) -> ClusterPredictor:
        return ClusterPredictor(self.config)

    def at_horizon(self, horizon_s: float) -> PredictorFactory:
        return PredictorFactory(replace(self.config, horizon_s=horizon_s))


def predictor_factory(model: Model = "best") -> PredictorFactory:
    """A :class:`PredictorFactory` for ``model`` with the shipped parameters."""
    return PredictorFactory(PredictorConfig(model=model))
