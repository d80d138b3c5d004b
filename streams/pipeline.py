"""The whole detection core in one process: raw lines in, decisions out.

This is what ``viralwatch replay`` runs, what the unit tests drive, and the
reference the streaming worker is checked against: parse -> route (match,
resolve clusters, hold orphans) -> reorder by event time -> detect.

The watermark is the latest event time seen minus the allowed lateness:
records are applied once the watermark has passed them, in ``(ts,
event_id)`` order, so the output does not depend on how the input was
interleaved within that lateness. A record later than that is still applied
(never dropped), and counted as ``late``. Uploads no bank knows are
clustered (:mod:`streams.emerging`) in that order too, once the watermark
has passed them and before what it passed is applied, as the index's owner
in a streaming worker clusters them: near-duplicates out of order in the
input give the stream's clusters, the earlier upload starting the cluster.

The loop itself (route, defer, reorder, the watermark's steps, the unbanked
clusters' events) is compiled (``_core.ReplayLoop``, ``rust/python/src/replay.rs``):
Python is called for what it owns (banked clusters' events and bank changes,
rejections, videos, what the unbanked store did, in batches).

Replay sends each alert when it applies the event that makes it. A streaming
worker sends some firings before its watermark reaches them, when the events
it has seen prove them (:meth:`Detector.fire_early`): with the ids and
statuses this pipeline gives, which is what the tests check it against.

>>> from streams.banks import HashBanks
>>> p = Pipeline(HashBanks(), AlertPolicy.default(), pseudonymizer=Pseudonymizer(b"k"))
>>> p.feed(b"{oops")
>>> p.finish().rejections[0].reason
'not_json'
>>> p.stats.rejected["not_json"]
1
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Final

from streams._core import ReplayLoop, bank_updates, evict_unbanked
from streams.alerts import Pseudonymizer
from streams.banks import MIN_PDQ_QUALITY, BankUpdate, HashBanks
from streams.detector import Decisions, Detector, LoopHost, Predictor
from streams.emerging import EmergingClusters
from streams.events import Rejection, ShareEvent
from streams.forecast import predictor_factory as forecast_factory
from streams.policy import AlertPolicy
from streams.router import Routed, Router, RoutingHost
from streams.stats import Stats

#: Each banked cluster's final size is forecast with the calibrated model
#: (``graphs.prediction``); pass ``predictor_factory=None`` to switch it off.
DEFAULT_PREDICTOR: Final = forecast_factory("best")
#: Lines to hand :meth:`Pipeline.feed_many` at once when nothing watches alerts live.
FEED_CHUNK: Final = 1024


def is_bank_update(raw: bytes) -> bool:
    """Whether an input line is a bank update (an object with ``op``, no ``event_id``): replay
    takes timed bank changes in its input, beside the share events.

    >>> is_bank_update(b'{"op":"add","bank":"b","signal_type":"md5","signal":"..."}')
    True
    >>> is_bank_update(b'{"event_id":"e1","op":"add"}'), is_bank_update(b"{oops")
    (False, False)
    """
    return bool(bank_updates((raw,)))


class Pipeline(LoopHost, RoutingHost):
    """Parse, route, reorder and detect; collect the decisions."""

    def __init__(
        self,
        banks: HashBanks,
        policy: AlertPolicy,
        *,
        pseudonymizer: Pseudonymizer,
        lateness_ms: int = 60_000,
        hold_ms: int = 1_800_000,
        idle_ms: int = 3_600_000,
        predictor_factory: Callable[[], Predictor] | None = DEFAULT_PREDICTOR,
        stats: Stats | None = None,
    ) -> None:
        self.stats = stats if stats is not None else Stats()
        emerging = EmergingClusters(idle_ms=idle_ms, log_changes=False)  # nothing logs it
        # this router holds the index, as the streaming index's owner does: unbanked uploads
        # are deferred to it, and clustered in event-time order (see the module doc)
        self.router = Router(
            banks,
            self.stats,
            hold_ms=hold_ms,
            emerging=emerging,
        )
        self.detector = Detector(
            policy,
            self.stats,
            pseudonymizer=pseudonymizer,
            idle_ms=idle_ms,
            predictor_factory=predictor_factory,
            # one index of content for both: the detector's clusters are a view of it
            content=emerging.index.shared_view(),
        )
        self.lateness_ms = lateness_ms
        #: the compiled loop: the reorder buffer, the unbanked uploads waiting for the
        #: watermark, the watermark itself
        self.loop = ReplayLoop(
            self.router.post_clusters,
            emerging.idle_clusters,
            self.detector.unbanked_store,
            self.detector.content.held_signals,
            self.detector.clusters,
            Routed,
            Rejection,
            lateness_ms,
            self.router.max_held,
            MIN_PDQ_QUALITY,
        )
        detector = self.detector
        detector.evict_with(
            partial(
                evict_unbanked,
                detector.unbanked_store,
                self.router.post_clusters,
                detector.content.held_signals,
                view=detector.content.view,
            )
        )
        self._out = Decisions()

    @property
    def max_ts_ms(self) -> int:
        """The latest event time fed (``-1``: none yet)."""
        return self.loop.max_ts_ms

    @property
    def held(self) -> int:
        """Records held for the watermark."""
        return len(self.loop)

    def reject(self, rejection: Rejection) -> None:
        self.stats.rejected[rejection.reason] += 1
        self._out.rejections.append(rejection)

    def feed(self, raw: bytes) -> None:
        """Take one input record (a JSON line): a share event, or a bank update."""
        self.feed_many([raw])

    def feed_many(self, raws: Iterable[bytes]) -> None:
        """Take several input records: cut at each bank update (the banks change there),
        each part parsed and fed to the compiled loop in one call."""
        batch = raws if isinstance(raws, list) else list(raws)
        start = 0
        for i in bank_updates(batch):  # none in most batches
            self._feed_lines(batch[start:i])  # the banks change here: match what came before
            self.feed_bank_update(batch[i])
            start = i + 1
        self._feed_lines(batch[start:] if start else batch)

    def _feed_lines(self, lines: list[bytes]) -> None:
        if lines:
            # parsed by the loop (a Python record made of an event only where Python acts
            # on it); the banks do not change within a batch: it screens its uploads first
            self.loop.feed(self, lines, self.router.banks.screen())

    def feed_bank_update(self, raw: bytes) -> None:
        """Take a bank update (a ``bank`` topic record's value, see :class:`BankUpdate`).

        The banks change at once, for the uploads that come after it in the
        input (the order a worker's bank follower and its routers see them in,
        as near as a file can say). With an event time (``ts``) it also goes
        through the reorder buffer to the detector, which applies it to the
        live clusters at that time (retroaction, false positives), in event-time
        order with the events, exactly as a streaming worker's clusters stage
        does; a bad one is dead-lettered (``bad_bank_update``).
        """
        try:
            update = BankUpdate.parse(None, raw)
        except ValueError as exc:
            self.reject(Rejection("bad_bank_update", str(exc), raw))
            return
        update.apply(self.router.banks)
        if update.ts_ms is None:
            return
        self.loop.push_bank(self, update, update.ts_ms, update.order_key)

    # -- what the compiled loop calls (see rust/python/src/replay.rs) ----------------

    def _decided(self, held: int | None = None) -> None:
        if held is not None:  # the loop's settlement (LoopHost._settle)
            self.stats.held += held
            self.stats.orphans_held = self.router.held
        outbox = self.detector.outbox
        if outbox:  # taken in place: under a takedown every post makes a decision
            self._merge(outbox)
            outbox.clear()

    def _expire(self, watermark_ms: int) -> None:
        for rejection in self.router.expire(watermark_ms):
            self.reject(rejection)

    def _refused(self, target: str, event: ShareEvent, reason: str, held: int) -> None:
        for rejection in self.router.refused(target, event, (reason, held)):
            self.reject(rejection)

    def _assign_video(self, event: ShareEvent) -> str:
        assert event.content is not None
        return self.router.emerging.assign(event.content, event.ts_ms)

    def _merge(self, decisions: Decisions) -> None:
        out = self._out
        out.alerts.extend(decisions.alerts)
        out.actions.extend(decisions.actions)
        for rejection in decisions.rejections:
            self.reject(rejection)
        if decisions.evicted_posts:
            self.router.forget(decisions.evicted_posts)

    def drain(self) -> Decisions:
        """Decisions made so far (and not yet taken)."""
        out, self._out = self._out, Decisions()
        return out

    def release_held(self) -> None:
        """Apply everything held now, as the end of the input would (a test's shortcut)."""
        self.loop.finish(self)

    def finish(self) -> Decisions:
        """End of input: apply everything still held, let time run out, and drain.

        Reshares still waiting for a parent at the end are rejected as
        ``orphan_expired``: the input is over, so the parent will not come.
        """
        self.loop.finish(self)  # the unbanked uploads still waiting: clustered, in order
        if self.max_ts_ms >= 0:
            end = self.max_ts_ms + self.router.hold_ms + 1
            for rejection in self.router.expire(end):
                self.reject(rejection)
            self.detector.advance(self.max_ts_ms + self.detector.idle_ms + 1)
            self._merge(self.detector.drain())
        return self.drain()
