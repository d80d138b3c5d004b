"""The generic webhook sink: one signed JSON POST per alert, for chat and paging tools.

The body is ``{"text": <one-line summary>, "alert": <Alert.to_dict()>}``
with sorted keys: the ``text`` field lets chat tools' incoming webhooks show
it as is, and ``alert`` is the same record as on every other sink.

Headers:

- ``X-Viralwatch-Delivery``: the alert's dedupe key. A retry after a timeout
  may reach a receiver that already took the first attempt; receivers that
  must not act twice deduplicate on this key.
- ``X-Viralwatch-Timestamp`` and ``X-Viralwatch-Signature`` (when a secret is
  set, from ``VIRALWATCH_WEBHOOK_SECRET``): ``sha256=`` and the hex
  HMAC-SHA256 of ``"<timestamp>." + body``. Signing the timestamp lets the
  receiver refuse an old request replayed by someone who captured it
  (:func:`verify_signature`).

>>> sig = sign(b"s3cret", 1767225600, b'{"a":1}')
>>> sig.startswith("sha256=") and len(sig) == 71
True
>>> verify_signature(b"s3cret", b'{"a":1}', "1767225600", sig, now=1767225660)
True
>>> verify_signature(b"s3cret", b'{"a":2}', "1767225600", sig, now=1767225660)
False
>>> verify_signature(b"s3cret", b'{"a":1}', "1767225600", sig, now=1767229999)  # too old
False
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from streams.alerts import Alert
from streams.settings import parse_post_url
from streams.sinks.base import AlertSink, Outcome, summary

SECRET_ENV: Final = "VIRALWATCH_WEBHOOK_SECRET"
SIGNATURE_HEADER: Final = "X-Viralwatch-Signature"
TIMESTAMP_HEADER: Final = "X-Viralwatch-Timestamp"
DELIVERY_HEADER: Final = "X-Viralwatch-Delivery"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    now: float | None = None,
    tolerance: float = 300.0,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def secret_from_env(environ: dict[str, str] | None = None) -> bytes | None:
    """The signing secret from ``VIRALWATCH_WEBHOOK_SECRET``; ``None`` when unset or empty."""
    value = (os.environ if environ is None else environ).get(SECRET_ENV, "")
    return value.encode() if value else None


class WebhookSink(AlertSink):
    """POSTs each alert to ``url``, in order, signed when a secret is given.

    Parameters
    ----------
    url
        The receiver.
    secret
        The HMAC key (:func:`secret_from_env`); ``None`` sends unsigned.
    wall_clock
        Unix seconds, for the timestamp header.
    **kwargs
        Passed to :class:`~streams.sinks.base.AlertSink`.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: bytes | None = None,
        name: str = "webhook",
        wall_clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        parse_post_url("webhook", url)
        if secret is not None and not secret:
            raise ValueError("an empty webhook secret signs nothing; pass None for unsigned")
        self.url = url
        self._secret = secret
        self._wall = wall_clock

    @staticmethod
    def body(alert: Alert) -> bytes:
        """The canonical request body for ``alert``."""
        return orjson.dumps(
            {"text": summary(alert), "alert": alert.to_dict()}, option=orjson.OPT_SORT_KEYS
        )

    def _deliver(self, batch: list[Alert], now: float) -> Outcome:
        return self._each(batch, self._post_one)

    def _post_one(self, alert: Alert) -> None:
        body = self.body(alert)
        headers = {DELIVERY_HEADER: alert.dedupe_key}
        if self._secret is not None:
            ts = int(self._wall())
            headers[TIMESTAMP_HEADER] = str(ts)
            headers[SIGNATURE_HEADER] = sign(self._secret, ts, body)
        self._post(self.url, body, headers)
