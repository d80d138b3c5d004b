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

import heapq
import sys
from collections.abc import Callable, Iterable
from typing import Final

from streams.alerts import Pseudonymizer
from streams.banks import BankUpdate, HashBanks
from streams.detector import Decisions, Detector, Predictor, apply_in_order
from streams.emerging import EmergingClusters, IndexRequests
from streams.events import Rejection, ShareEvent, parse_event, parse_events
from streams.forecast import predictor_factory as forecast_factory
from streams.policy import AlertPolicy
from streams.reorder import ReorderBuffer
from streams.router import Routed, Router, due_uploads
from streams.stats import Stats

#: Each banked cluster's final size is forecast with the calibrated model
#: (``graphs.prediction``); pass ``predictor_factory=None`` to switch it off.
DEFAULT_PREDICTOR: Final = forecast_factory("best")
#: Lines to hand :meth:`Pipeline.feed_many` at once when nothing watches alerts live.
FEED_CHUNK: Final = 1024
#: How often (in event time) held orphans are checked for expiry.
_EXPIRE_EVERY_MS = 10_000


def is_bank_update(raw: bytes) -> bool:
    """Whether an input line is a bank update (an object with ``op``, no ``event_id``): replay
    takes timed bank changes in its input, beside the share events.

    >>> is_bank_update(b'{"op":"add","bank":"b","signal_type":"md5","signal":"..."}')
    True
    >>> is_bank_update(b'{"event_id":"e1","op":"add"}'), is_bank_update(b"{oops")
    (False, False)
    """
    return b'"op"' in raw and b'"event_id"' not in raw


class Pipeline:
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
        emerging = EmergingClusters(idle_ms=idle_ms)
        # this router holds the index, as the streaming index's owner does: unbanked uploads
        # are deferred to it, and clustered in event-time order (see _release)
        self.router = Router(
            banks,
            self.stats,
            hold_ms=hold_ms,
            emerging=emerging,
            index_requests=IndexRequests(emerging),
        )
        self.detector = Detector(
            policy,
            self.stats,
            pseudonymizer=pseudonymizer,
            idle_ms=idle_ms,
            predictor_factory=predictor_factory,
        )
        self.lateness_ms = lateness_ms
        self.buffer: ReorderBuffer[Routed | BankUpdate] = ReorderBuffer()
        self.max_ts_ms = -1
        #: unbanked uploads waiting for the watermark (by event id), and their (ts, id) heap
        self._unbanked: dict[str, ShareEvent] = {}
        self._unbanked_order: list[tuple[int, str]] = []
        self._expired_at = -1
        self._out = Decisions()

    def reject(self, rejection: Rejection) -> None:
        self.stats.rejected[rejection.reason] += 1
        self._out.rejections.append(rejection)

    def feed(self, raw: bytes) -> None:
        """Take one input record (a JSON line): a share event, or a bank update."""
        if is_bank_update(raw):
            self.feed_bank_update(raw)
            return
        parsed = parse_event(raw)
        if isinstance(parsed, Rejection):
            self.reject(parsed)
            return
        self.feed_event(parsed)

    def feed_many(self, raws: Iterable[bytes]) -> None:
        """Take several input records: what :meth:`feed` on each gives, with their uploads
        matched in one index search (see :meth:`Router.prefetch`)."""
        lines: list[bytes] = []
        for raw in raws:
            if is_bank_update(raw):  # the banks change here: match what came before first
                self._feed_parsed(parse_events(lines))
                lines = []
                self.feed_bank_update(raw)
            else:
                lines.append(raw)
        self._feed_parsed(parse_events(lines))

    def _feed_parsed(self, parsed: list[ShareEvent | Rejection]) -> None:
        if not parsed:
            return
        self.router.prefetch(
            [p.content for p in parsed if isinstance(p, ShareEvent) and p.content is not None]
        )
        try:
            for p in parsed:
                if isinstance(p, Rejection):
                    self.reject(p)
                else:
                    self.feed_event(p)
        finally:
            self.router.drop_prefetched()

    def feed_event(self, event: ShareEvent) -> None:
        router = self.router
        self._push(router.route(event))
        if router.deferred:  # unbanked: it waits for the watermark (see _release)
            for ev in router.deferred:
                if ev.event_id in self._unbanked:  # waits once, as at the index's owner
                    self.stats.duplicates += 1
                    continue
                self._unbanked[ev.event_id] = ev
                heapq.heappush(self._unbanked_order, (ev.ts_ms, ev.event_id))
            router.deferred = []
        if event.ts_ms > self.max_ts_ms:
            self.max_ts_ms = event.ts_ms
            watermark = self.max_ts_ms - self.lateness_ms
            self._release(watermark)
            if watermark - self._expired_at >= _EXPIRE_EVERY_MS:
                self._expired_at = watermark
                for rejection in router.expire(watermark):
                    self.reject(rejection)
        elif event.ts_ms <= self.buffer.released_ms:
            # later than the allowed lateness: apply now rather than drop it
            self._release(self.buffer.released_ms)

    def _push(self, results: Iterable[Routed | Rejection]) -> None:
        for item in results:
            if isinstance(item, Rejection):
                self.reject(item)
            else:
                self.buffer.push(item.event.ts_ms, item.event.event_id, item)

    def _release(self, watermark_ms: int) -> None:
        """Cluster the unbanked uploads the watermark has passed, in ``(ts, event_id)`` order
        (their reshares, held for them, come out too), then apply all it has passed."""
        waiting = self._unbanked_order
        if waiting and waiting[0][0] <= watermark_ms:
            due = due_uploads(waiting, self._unbanked, watermark_ms)
            for ev in due:
                del self._unbanked[ev.event_id]
            self._push(self.router.cluster_unbanked(due))
        # most events move the watermark past one or two records, many past none
        if self.buffer.next_ms <= watermark_ms:
            self._apply(self.buffer.release(watermark_ms))

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
        self.buffer.push(update.ts_ms, update.order_key, update)
        if update.ts_ms <= self.buffer.released_ms:
            self._apply(self.buffer.release(self.buffer.released_ms))

    def _apply(self, items: Iterable[Routed | BankUpdate]) -> None:
        detector = self.detector
        apply_in_order(detector, items)
        if detector.outbox:
            self._merge(detector.drain())

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

    def finish(self) -> Decisions:
        """End of input: apply everything still held, let time run out, and drain.

        Reshares still waiting for a parent at the end are rejected as
        ``orphan_expired``: the input is over, so the parent will not come.
        """
        self._release(sys.maxsize)  # the unbanked uploads still waiting: clustered, in order
        self._apply(self.buffer.drain())
        if self.max_ts_ms >= 0:
            end = self.max_ts_ms + self.router.hold_ms + 1
            for rejection in self.router.expire(end):
                self.reject(rejection)
            self.detector.advance(self.max_ts_ms + self.detector.idle_ms + 1)
            self._merge(self.detector.drain())
        return self.drain()
