"""Stage 2's outputs: each alert and takedown request sent once per id, and the on-call hooks.

Alerts and takedown requests are sent to the ``alerts`` and ``actions``
topics, each record keyed by the alert's dedupe key or the action id, to the
partition of the clusters partition that decided it; those topics are the
changelogs of the ``alerts-sent`` and ``actions-sent`` tables, so a
restarted worker recovers the set of what was already sent from the output
itself, and no id is sent twice even across a crash. An alert a partition's
new owner makes again (it rebuilt the state that made it) is not sent
again; it is re-announced to the on-call hooks, before the batch's new ones.

The worker notes an id in the table's store and writes the record itself
(``send``: straight into the Kafka client's batches, see
:meth:`streams.runtime.faust_adapter.Producer.write`), not through the
table's ``__setitem__``: Faust's way made a message, two futures and a
buffered hand-over of each record, a tenth of a one-worker backlog's CPU.
The record and the partition are what Faust wrote.

What a batch decided is staged (:meth:`Outputs.decided`) and handed on at
the checkpoint's first step (:meth:`Outputs.flush`, see
:mod:`streams.runtime.checkpoint`). Dead letters go at once (they are not
deduplicated and nothing reads them back).

>>> from streams.detector import Decisions
>>> alerts, actions, sent = {}, {}, []
>>> out = Outputs(alerts, actions, deadletter=print)
>>> out.on_alerts = sent.extend
>>> out.decided(0, Decisions(), again=[], watermark=0)
>>> out.flush(), sent, out.alerts_sent
(None, [], 0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from streams.alerts import Alert, TakedownRequest
from streams.detector import Decisions
from streams.stages import DeadLetter


@dataclass(frozen=True, slots=True)
class _Decided:
    partition: int
    decisions: Decisions
    again: list[Alert]
    watermark: int


class _Record(Protocol):
    def to_json(self) -> bytes: ...


_R = TypeVar("_R", bound=_Record)


def _alert_key(alert: Alert) -> str:
    return alert.dedupe_key


def _action_key(action: TakedownRequest) -> str:
    return action.action_id


def _once(
    records: Iterable[_R],
    key_of: Callable[[_R], str],
    noted: MutableMapping[bytes, bytes],
    topic: str,
    d: _Decided,
    send: Callable[[str, int, bytes, bytes], None] | None,
) -> tuple[list[_R], list[_R]]:
    """The records not in ``noted`` (the table's store), each noted with its record and sent
    (``send``) to ``d``'s partition of ``topic``; and those made before, by whoever held
    this state (never sent twice): alerts and takedown requests alike."""
    new: list[_R] = []
    before: list[_R] = []
    for r in records:
        key = key_of(r).encode()
        if key not in noted:
            noted[key] = value = r.to_json()
            if send is not None:
                send(topic, d.partition, key, value)
            new.append(r)
        else:
            before.append(r)
    return new, before


class Outputs:
    """The ``alerts-sent`` and ``actions-sent`` tables, dead letters, and the on-call hooks."""

    def __init__(
        self,
        alerts: MutableMapping[bytes, bytes],
        actions: MutableMapping[bytes, bytes],
        *,
        deadletter: Callable[[DeadLetter], None],
        send: Callable[[str, int, bytes, bytes], None] | None = None,
    ) -> None:
        #: what was sent: alert dedupe keys and action ids (the tables' stores), each
        #: with its record
        self.alerts = alerts
        self.actions = actions
        self._deadletter = deadletter
        #: sends a record (``"alerts"`` or ``"actions"``, the clusters partition, key,
        #: value) after it is noted above; none in process (the tables are the output)
        self.send = send
        #: new alerts (sent once each); alerts made again by a new owner (re-announced);
        #: the clusters of partitions given up (their new owner re-announces them)
        self.on_alerts: Callable[[list[Alert]], None] | None = None
        self.on_reannounce: Callable[[list[Alert]], None] | None = None
        self.on_release: Callable[[Callable[[str], bool]], None] | None = None
        #: every new alert with its clusters partition and that partition's watermark
        #: when it was decided (the in-process runner notes when each alert came out)
        self.on_sent: Callable[[int, int, list[Alert]], None] | None = None
        #: every alert written or re-announced and every takedown request written (the
        #: cascade views keep them for the cluster's page)
        self.on_written: Callable[[list[Alert], list[TakedownRequest]], None] | None = None
        self._staged: list[_Decided] = []
        self.alerts_sent = 0
        self.actions_sent = 0
        self.deadlettered = 0

    def decided(
        self, partition: int, decisions: Decisions, again: list[Alert], watermark: int
    ) -> None:
        """Stage what a clusters partition's batch decided (``again``: alerts rebuilt with a
        partition taken over, known to have been sent by whoever held it)."""
        self._staged.append(_Decided(partition, decisions, again, watermark))
        self.deadletter(DeadLetter(r, "detect") for r in decisions.rejections)

    def deadletter(self, letters: Iterable[DeadLetter]) -> None:
        for letter in letters:
            self.deadlettered += 1
            self._deadletter(letter)

    def flush(self) -> None:
        """Write what was staged, in order: each alert and action once per id."""
        staged, self._staged = self._staged, []
        sent_alerts, sent_actions, send = self.alerts, self.actions, self.send
        for d in staged:
            alerts, actions = d.decisions.alerts, d.decisions.actions
            # most batches decide nothing: no call then (a flush's instructions as before)
            sent, again = (
                _once(alerts, _alert_key, sent_alerts, "alerts", d, send) if alerts else ([], [])
            )
            written = (
                _once(actions, _action_key, sent_actions, "actions", d, send)[0] if actions else []
            )
            self.actions_sent += len(written)
            self.alerts_sent += len(sent)
            again += d.again
            if self.on_written is not None and (sent or again or written):
                self.on_written(sent + again, written)
            if again and self.on_reannounce is not None:
                self.on_reannounce(again)  # first: they were made before this batch's new ones
            if sent and self.on_sent is not None:
                self.on_sent(d.partition, d.watermark, sent)
            if sent and self.on_alerts is not None:
                self.on_alerts(sent)

    def release(self, lost: Callable[[str], bool]) -> None:
        """Clusters (``lost(cluster_id)``) went to another process with their partitions."""
        if self.on_release is not None:
            self.on_release(lost)
