"""Signatures of carrier webhooks (standard library only): the sandbox carrier signs, the gateway verifies.

Header: ``Carrier-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of f"{t}.{raw body}">``.
Several ``v1`` entries may be present (secret rotation); one matching is enough.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Carrier-Signature"


class WebhookSignatureError(ValueError):
    """The signature header is missing, malformed, stale or does not match the body."""


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Carrier-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def verify_webhook(secret: str, body: bytes, header: str | None, now: float, tolerance_s: float) -> None:
    """Return if ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``.

    Raises :class:`WebhookSignatureError` otherwise. ``body`` must be the raw bytes received.
    """
    if not header:
        raise WebhookSignatureError("missing signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookSignatureError("malformed signature header")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookSignatureError("malformed signature timestamp") from None
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookSignatureError("signature header needs t= and v1=")
    if abs(now - timestamp) > tolerance_s:
        raise WebhookSignatureError("signature timestamp outside the tolerance")
    expected = _digest(secret, body, timestamp)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookSignatureError("signature does not match")
