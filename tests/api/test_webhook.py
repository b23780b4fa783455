"""Carrier webhook authenticity: carrier role plus an HMAC over the raw body, inside the time window."""

from __future__ import annotations

import json
import time

from core.webhooks import sign_webhook
from tests.api.conftest import assert_problem

EVENT = {"tracking_number": "TRK-NOT-KNOWN-1", "event": "delivered", "occurred_at": "2025-01-02T09:30:00Z"}


async def test_signature_is_required_fresh_and_over_the_exact_body(gateway_client, bearer, settings):
    carrier = {**bearer("carrier-1", "carrier"), "Content-Type": "application/json"}
    body = json.dumps(EVENT).encode()
    now = int(time.time())
    secret = settings.carrier_webhook_secret
    cases = {
        "missing": None,
        "garbage": "nonsense",
        "wrong secret": sign_webhook("another-secret", body, now),
        "stale (replayed after the window)": sign_webhook(secret, body, now - settings.carrier_webhook_tolerance_s - 5),
        "from the future": sign_webhook(secret, body, now + settings.carrier_webhook_tolerance_s + 5),
        "other body": sign_webhook(secret, body.replace(b"delivered", b"lost"), now),
    }
    async with gateway_client() as http:
        for name, signature in cases.items():
            headers = carrier if signature is None else {**carrier, "Carrier-Signature": signature}
            response = await http.post("/v1/carrier/events", content=body, headers=headers)
            assert_problem(response, 401)
            assert "www-authenticate" in response.headers, name
        # Whitespace changes the bytes: a signature is over what was sent, not over parsed JSON.
        spaced = json.dumps(EVENT, indent=2).encode()
        response = await http.post(
            "/v1/carrier/events",
            content=spaced,
            headers={**carrier, "Carrier-Signature": sign_webhook(secret, body, now)},
        )
        assert_problem(response, 401)
        # Properly signed, but nobody has this tracking number.
        response = await http.post(
            "/v1/carrier/events",
            content=body,
            headers={**carrier, "Carrier-Signature": sign_webhook(secret, body, now)},
        )
        assert_problem(response, 404)
        # Signed junk is still validated.
        junk = b'{"tracking_number": "", "event": "teleported"}'
        response = await http.post(
            "/v1/carrier/events",
            content=junk,
            headers={**carrier, "Carrier-Signature": sign_webhook(secret, junk, now)},
        )
        assert {tuple(e["loc"]) for e in assert_problem(response, 422)["errors"]} >= {
            ("body", "event"),
            ("body", "occurred_at"),
        }


async def test_only_carriers_may_post_events(gateway_client, bearer, settings):
    body = json.dumps(EVENT).encode()
    signature = sign_webhook(settings.carrier_webhook_secret, body, int(time.time()))
    async with gateway_client() as http:
        for role in ("customer", "operator"):
            response = await http.post(
                "/v1/carrier/events",
                content=body,
                headers={**bearer(role=role), "Carrier-Signature": signature, "Content-Type": "application/json"},
            )
            assert_problem(response, 403)
        assert_problem(
            await http.post(
                "/v1/carrier/events",
                content=body,
                headers={"Carrier-Signature": signature, "Content-Type": "application/json"},
            ),
            401,
        )
