"""Carrier webhook signatures (stdlib only)."""

from __future__ import annotations

import pytest

from core.webhooks import WebhookSignatureError, sign_webhook, verify_webhook


def test_signature_round_trip_and_rejections() -> None:
    body, now = b'{"event":"delivered"}', 1_700_000_000
    header = sign_webhook("secret", body, now)
    verify_webhook("secret", body, header, now=now + 10, tolerance_s=300)
    verify_webhook("secret", body, f"{header},v1=deadbeef", now=now, tolerance_s=300)
    for bad_body, bad_header, at in (
        (body + b" ", header, now),
        (body, header.replace("t=", "t=1"), now),
        (body, header, now + 301),
        (body, "garbage", now),
        (body, None, now),
    ):
        with pytest.raises(WebhookSignatureError):
            verify_webhook("secret", bad_body, bad_header, now=at, tolerance_s=300)
    with pytest.raises(ValueError):
        verify_webhook("other", body, header, now=now, tolerance_s=300)
