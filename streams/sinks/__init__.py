"""Alert sinks: where alerts leave the worker for on-call's tools.

Every sink takes its HTTP transport as an argument (tests pass their own),
keeps a bounded queue keyed by :attr:`streams.alerts.Alert.dedupe_key`, and
delivers from a thread of its own, never from the event loop the stages
share, retrying with exponential backoff while its receiver is down: an
alert is delivered once, in order, counted in the backlog until it is, or
counted as dropped if the queue overflows. Alerts follow their partition
from worker to worker (:meth:`AlertSink.reannounce`, :meth:`AlertSink.release`).
"""

from streams.sinks.alertmanager import AlertmanagerSink
from streams.sinks.base import AlertSink, Backoff, HttpResponse, Transport, urllib_transport
from streams.sinks.webhook import WebhookSink, sign, verify_signature

__all__ = [
    "AlertSink",
    "AlertmanagerSink",
    "Backoff",
    "HttpResponse",
    "Transport",
    "WebhookSink",
    "sign",
    "urllib_transport",
    "verify_signature",
]
