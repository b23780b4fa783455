"""Sandbox providers against a real PostgreSQL: idempotency, payment rules, carrier, webhooks, faults."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import text

from core.config import Settings
from core.webhooks import verify_webhook
from tests.sandbox.conftest import SLOW_DELAY_S

pytestmark = pytest.mark.asyncio

AUTHORIZE = "/payments/v1/authorizations"


def ref(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def authorize_body(token: str = "tok_ok", amount: int = 1500, order_id: str | None = None) -> dict[str, Any]:
    return {"order_id": order_id or ref("order"), "amount": amount, "currency": "EUR", "payment_token": token}


def address(postal_code: str = "75001") -> dict[str, Any]:
    return {
        "name": "Ada Lovelace",
        "line1": "1 Rue de Rivoli",
        "line2": None,
        "city": "Paris",
        "postal_code": postal_code,
        "country": "FR",
    }


def shipment_body(postal_code: str = "75001") -> dict[str, Any]:
    return {
        "order_id": ref("order"),
        "shipping_address": address(postal_code),
        "items": [{"sku": "SKU-1", "quantity": 2}],
    }


async def post(client: httpx.AsyncClient, url: str, body: dict[str, Any] | None, key: str | None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post(url, json=body, headers=headers)


async def ledger(client: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    response = await client.get("/payments/v1/ledger", params={"order_id": order_id})
    assert response.status_code == 200
    return response.json()


async def until_authorization_recorded(client: httpx.AsyncClient, order_id: str) -> None:
    """Wait for the slow first attempt's commit: a retry before it is (rightly) a 409 in-progress."""
    for _ in range(500):
        if (await ledger(client, order_id))["authorizations"]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the first attempt never recorded its authorization")


async def authorized(client: httpx.AsyncClient, amount: int = 1500) -> str:
    response = await post(client, AUTHORIZE, authorize_body(amount=amount), ref("auth"))
    assert response.status_code == 201
    return response.json()["id"]


# --- authorize -----------------------------------------------------------------------------------


async def test_authorize_approves(client: httpx.AsyncClient) -> None:
    body = authorize_body()
    response = await post(client, AUTHORIZE, body, ref("key"))
    assert response.status_code == 201
    data = response.json()
    assert data["id"].startswith("auth_")
    assert data | {"id": "x"} == {
        "id": "x",
        "status": "authorized",
        "amount": 1500,
        "currency": "EUR",
        "order_id": body["order_id"],
    }
    assert "Idempotent-Replayed" not in response.headers


async def test_missing_key_is_400_and_unknown_token_is_400(client: httpx.AsyncClient) -> None:
    missing = await post(client, AUTHORIZE, authorize_body(), None)
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_idempotency_key"
    unknown = await post(client, AUTHORIZE, authorize_body("tok_what"), ref("key"))
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "invalid_token"


async def test_validation_errors_use_the_error_shape_and_are_not_stored(client: httpx.AsyncClient) -> None:
    key = ref("key")
    bad = await post(client, AUTHORIZE, {**authorize_body(), "amount": -1}, key)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_request"
    assert (await post(client, AUTHORIZE, authorize_body(), key)).status_code == 201
    assert (await client.get("/nowhere")).json()["error"]["code"] == "not_found"


async def test_decline_is_stored_and_replayed(client: httpx.AsyncClient) -> None:
    body, key = authorize_body("tok_decline"), ref("key")
    first = await post(client, AUTHORIZE, body, key)
    assert first.status_code == 402
    assert first.json()["error"]["code"] == "card_declined"
    replay = await post(client, AUTHORIZE, body, key)
    assert replay.status_code == 402
    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert (await ledger(client, body["order_id"]))["authorizations"] == []


async def test_flaky_fails_twice_then_authorizes_once(client: httpx.AsyncClient) -> None:
    body, key = authorize_body("tok_flaky"), ref("key")
    for _ in range(2):
        failed = await post(client, AUTHORIZE, body, key)
        assert failed.status_code == 503
        assert failed.headers["Retry-After"] == "1"
    ok = await post(client, AUTHORIZE, body, key)
    assert ok.status_code == 201
    replay = await post(client, AUTHORIZE, body, key)
    assert replay.json() == ok.json() and replay.headers["Idempotent-Replayed"] == "true"
    assert [a["id"] for a in (await ledger(client, body["order_id"]))["authorizations"]] == [ok.json()["id"]]


async def test_slow_first_attempt_is_recorded_and_the_retry_replays_it(client: httpx.AsyncClient) -> None:
    body, key = authorize_body("tok_slow"), ref("key")
    started = time.monotonic()
    first = asyncio.create_task(post(client, AUTHORIZE, body, key))
    # The client "times out" while the provider sleeps after recording the authorization; waiting
    # for the record (not a fixed 0.2 s) keeps a loaded machine from turning this into a 409 race.
    await until_authorization_recorded(client, body["order_id"])
    retry = await post(client, AUTHORIZE, body, key)
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert not first.done()
    original = await first
    assert original.status_code == 201 and original.json() == retry.json()
    assert time.monotonic() - started >= SLOW_DELAY_S
    assert len((await ledger(client, body["order_id"]))["authorizations"]) == 1


async def test_slow_first_attempt_whose_client_gave_up_still_counts(client: httpx.AsyncClient) -> None:
    body, key = authorize_body("tok_slow"), ref("key")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(post(client, AUTHORIZE, body, key), timeout=0.2)
    await until_authorization_recorded(client, body["order_id"])
    retry = await post(client, AUTHORIZE, body, key)
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    assert len((await ledger(client, body["order_id"]))["authorizations"]) == 1


async def test_same_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    body, key = authorize_body(), ref("key")
    assert (await post(client, AUTHORIZE, body, key)).status_code == 201
    other = await post(client, AUTHORIZE, {**body, "amount": body["amount"] + 1}, key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


async def test_fifty_concurrent_requests_with_one_key_authorize_once(client: httpx.AsyncClient) -> None:
    body, key = authorize_body(), ref("key")
    responses = await asyncio.gather(*(post(client, AUTHORIZE, body, key) for _ in range(50)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}, statuses
    busy = [r for r in responses if r.status_code == 409]
    assert all(r.headers["Retry-After"] == "1" for r in busy)
    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(created) == 1
    assert [a["id"] for a in (await ledger(client, body["order_id"]))["authorizations"]] == list(created)


# --- capture, void, refund -----------------------------------------------------------------------


async def test_capture_rules_and_replay_moves_money_once(client: httpx.AsyncClient) -> None:
    auth_id = await authorized(client, amount=1000)
    url = f"{AUTHORIZE}/{auth_id}/capture"
    assert (await post(client, url, {"amount": 1001}, ref("cap"))).status_code == 422
    key = ref("cap")
    captured = await post(client, url, {"amount": 1000}, key)
    assert captured.status_code == 200
    assert captured.json() == {"id": auth_id, "status": "captured", "captured_amount": 1000}
    replay = await post(client, url, {"amount": 1000}, key)
    assert replay.json() == captured.json() and replay.headers["Idempotent-Replayed"] == "true"
    again = await post(client, url, {"amount": 1000}, ref("cap"))
    assert again.status_code == 409
    auth = (await client.get(f"{AUTHORIZE}/{auth_id}")).json()
    moves = (await ledger(client, auth["order_id"]))["money_movements"]
    assert moves == [{"authorization_id": auth_id, "kind": "capture", "amount": 1000, "idempotency_key": key}]


async def test_void_rules(client: httpx.AsyncClient) -> None:
    auth_id = await authorized(client)
    voided = await post(client, f"{AUTHORIZE}/{auth_id}/void", {}, ref("void"))
    assert voided.status_code == 200 and voided.json()["status"] == "voided"
    again = await post(client, f"{AUTHORIZE}/{auth_id}/void", None, ref("void"))
    assert again.status_code == 200 and again.json()["status"] == "voided"
    capture = await post(client, f"{AUTHORIZE}/{auth_id}/capture", {"amount": 1}, ref("cap"))
    assert capture.status_code == 409

    captured_id = await authorized(client)
    assert (await post(client, f"{AUTHORIZE}/{captured_id}/capture", {"amount": 1500}, ref("cap"))).status_code == 200
    refused = await post(client, f"{AUTHORIZE}/{captured_id}/void", {}, ref("void"))
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "already_captured"


async def test_refund_rules(client: httpx.AsyncClient) -> None:
    auth_id = await authorized(client, amount=1000)
    refund_url = f"{AUTHORIZE}/{auth_id}/refund"
    assert (await post(client, refund_url, {"amount": 1}, ref("ref"))).status_code == 409  # not captured
    assert (await post(client, f"{AUTHORIZE}/{auth_id}/capture", {"amount": 800}, ref("cap"))).status_code == 200
    assert (await post(client, refund_url, {"amount": 801}, ref("ref"))).status_code == 422
    first = await post(client, refund_url, {"amount": 300}, ref("ref"))
    assert first.status_code == 200
    assert first.json() | {} == {"id": auth_id, "status": "refunded", "captured_amount": 800, "refunded_amount": 300}
    second = await post(client, refund_url, {"amount": 500}, ref("ref"))
    assert second.json()["refunded_amount"] == 800
    assert (await post(client, refund_url, {"amount": 1}, ref("ref"))).status_code == 422
    auth = (await client.get(f"{AUTHORIZE}/{auth_id}")).json()
    moves = (await ledger(client, auth["order_id"]))["money_movements"]
    captured = sum(m["amount"] for m in moves if m["kind"] == "capture")
    refunded = sum(m["amount"] for m in moves if m["kind"] == "refund")
    assert (captured, refunded) == (800, 800)


async def test_unknown_authorization_is_404(client: httpx.AsyncClient) -> None:
    response = await post(client, f"{AUTHORIZE}/auth_nope/capture", {"amount": 1}, ref("cap"))
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"code", "message"}
    assert (await client.get(f"{AUTHORIZE}/auth_nope")).status_code == 404


async def test_void_by_key(client: httpx.AsyncClient) -> None:
    auth_key = ref("auth")
    body = authorize_body()
    assert (await post(client, AUTHORIZE, body, auth_key)).status_code == 201
    voided = await post(client, f"{AUTHORIZE}/void-by-key", {"authorization_key": auth_key}, ref("vbk"))
    assert voided.status_code == 200 and voided.json()["status"] == "voided"
    assert (await ledger(client, body["order_id"]))["authorizations"][0]["status"] == "voided"
    missing = await post(client, f"{AUTHORIZE}/void-by-key", {"authorization_key": ref("never")}, ref("vbk"))
    assert missing.status_code == 200 and missing.json() == {"status": "not_found"}


async def test_void_by_key_respects_an_authorization_in_flight(settings: Settings, running_sandbox: Any) -> None:
    async with running_sandbox(settings) as (app, client):
        # An authorize whose holder is still working: its claim is 'running' with a live lease.
        auth_key = ref("auth")
        claim = {"scope": "payments.authorize", "key": auth_key, "hash": "0" * 64}
        async with app.state.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO sandbox_idempotency_keys (scope, key, request_hash, state, attempts, locked_until)"
                    " VALUES (:scope, :key, :hash, 'running', 1, now() + interval '1 minute')"
                ),
                claim,
            )
        busy = await post(client, f"{AUTHORIZE}/void-by-key", {"authorization_key": auth_key}, ref("vbk"))
        assert busy.status_code == 409 and busy.headers["Retry-After"] == "1"

        # Its holder died: once the lease expired, "not_found" is final and fences the late holder.
        async with app.state.engine.begin() as conn:
            await conn.execute(
                text("UPDATE sandbox_idempotency_keys SET locked_until = now() - interval '1 second' WHERE key = :key"),
                claim,
            )
        missing = await post(client, f"{AUTHORIZE}/void-by-key", {"authorization_key": auth_key}, ref("vbk"))
        assert missing.json() == {"status": "not_found"}
        async with app.state.engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT state, attempts FROM sandbox_idempotency_keys WHERE key = :key"), claim)
            ).one()
        assert (row.state, row.attempts) == ("released", 2)


# --- carrier -------------------------------------------------------------------------------------


async def test_carrier_create_get_cancel(client: httpx.AsyncClient) -> None:
    body, key = shipment_body(), ref("ship")
    created = await post(client, "/carrier/v1/shipments", body, key)
    assert created.status_code == 201
    tracking = created.json()["tracking_number"]
    assert tracking.startswith("TRK") and tracking[3:] == tracking[3:].upper()
    assert created.json()["status"] == "created"
    replay = await post(client, "/carrier/v1/shipments", body, key)
    assert replay.json() == created.json() and replay.headers["Idempotent-Replayed"] == "true"
    assert (await post(client, "/carrier/v1/shipments", shipment_body(), key)).status_code == 422

    shipment = (await client.get(f"/carrier/v1/shipments/{tracking}")).json()
    assert shipment["order_id"] == body["order_id"] and shipment["events"] == []
    cancelled = await post(client, f"/carrier/v1/shipments/{tracking}/cancel", {}, ref("cancel"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await client.get(f"/carrier/v1/shipments/{tracking}")).json()["status"] == "cancelled"
    assert (await client.get("/carrier/v1/shipments/TRKNOPE")).status_code == 404


async def test_carrier_unavailable_postcode_is_503_and_never_stored(client: httpx.AsyncClient) -> None:
    body, key = shipment_body("99999"), ref("ship")
    for _ in range(3):
        response = await post(client, "/carrier/v1/shipments", body, key)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "carrier_unavailable"
        assert "Idempotent-Replayed" not in response.headers


# --- delivery webhooks ---------------------------------------------------------------------------


def assert_signed(settings: Settings, received: Any) -> dict[str, Any]:
    verify_webhook(
        settings.carrier_webhook_secret,
        received.body,
        received.headers["carrier-signature"],
        now=time.time(),
        tolerance_s=settings.carrier_webhook_tolerance_s,
    )
    scheme, token = received.headers["authorization"].split(" ")
    assert scheme == "Bearer"
    claims = jwt.decode(
        token,
        settings.jwt_secret,
        algorithms=["HS256"],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    assert claims["sub"] == "sandbox-carrier" and claims["role"] == "carrier"
    assert claims["exp"] - claims["iat"] == 300
    return json.loads(received.body)


async def test_delivery_posts_signed_events_in_order(
    settings: Settings, webhook_receiver: Any, running_sandbox: Any
) -> None:
    settings = settings.model_copy(update={"sandbox_auto_deliver": True})
    async with running_sandbox(settings) as (_, client):
        delivered = (await post(client, "/carrier/v1/shipments", shipment_body(), ref("ship"))).json()[
            "tracking_number"
        ]
        lost = (await post(client, "/carrier/v1/shipments", shipment_body("99998"), ref("ship"))).json()[
            "tracking_number"
        ]
        for tracking, last in ((delivered, "delivered"), (lost, "lost")):
            payloads = [assert_signed(settings, r) for r in await webhook_receiver.wait_for(tracking, 3)]
            assert [p["event"] for p in payloads] == ["picked_up", "in_transit", last]
            assert all(p["tracking_number"] == tracking and p["occurred_at"].endswith("Z") for p in payloads)
        await asyncio.sleep(0.1)
        shipment = (await client.get(f"/carrier/v1/shipments/{delivered}")).json()
        assert shipment["status"] == "delivered"
        assert [e["delivery_state"] for e in shipment["events"]] == ["sent"] * 3
        refused = await post(client, f"/carrier/v1/shipments/{delivered}/cancel", {}, ref("cancel"))
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "already_delivered"


async def test_cancelled_shipment_sends_no_events(
    settings: Settings, webhook_receiver: Any, running_sandbox: Any
) -> None:
    settings = settings.model_copy(update={"sandbox_auto_deliver": True, "sandbox_delivery_delay_s": 0.9})
    async with running_sandbox(settings) as (_, client):
        tracking = (await post(client, "/carrier/v1/shipments", shipment_body(), ref("ship"))).json()["tracking_number"]
        assert (await post(client, f"/carrier/v1/shipments/{tracking}/cancel", {}, ref("cancel"))).status_code == 200
        await asyncio.sleep(1.3)
        assert webhook_receiver.for_tracking(tracking) == []
        events = (await client.get(f"/carrier/v1/shipments/{tracking}")).json()["events"]
        assert [e["delivery_state"] for e in events] == ["cancelled"] * 3


async def test_failed_deliveries_are_retried_and_4xx_given_up(
    settings: Settings, webhook_receiver: Any, running_sandbox: Any
) -> None:
    settings = settings.model_copy(update={"sandbox_auto_deliver": True, "sandbox_delivery_delay_s": 0.3})
    async with running_sandbox(settings) as (_, client):
        retried = (await post(client, "/carrier/v1/shipments", shipment_body(), ref("ship"))).json()["tracking_number"]
        rejected = (await post(client, "/carrier/v1/shipments", shipment_body(), ref("ship"))).json()["tracking_number"]
        webhook_receiver.answers[retried] = [503, 429]
        webhook_receiver.answers[rejected] = [400]
        got = await webhook_receiver.wait_for(retried, 5)
        assert [json.loads(r.body)["event"] for r in got] == ["picked_up"] * 3 + ["in_transit", "delivered"]
        await webhook_receiver.wait_for(rejected, 3)
        await asyncio.sleep(0.1)
        events = (await client.get(f"/carrier/v1/shipments/{rejected}")).json()["events"]
        assert [e["delivery_state"] for e in events] == ["failed", "sent", "sent"]
        assert events[0]["last_error"].startswith("HTTP 400")


async def _idle_sandbox(settings: Settings, max_idle_s: float):
    """The sandbox app with its delivery loop started, sleeping up to ``max_idle_s`` when idle."""
    from contextlib import asynccontextmanager

    from sandbox.app import create_app

    @asynccontextmanager
    async def running():
        app = create_app(settings, delivery_poll_interval_s=0.05, delivery_max_idle_s=max_idle_s)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox") as client:
                yield app, client

    return running()


async def test_an_idle_sender_wakes_for_a_new_shipment(settings: Settings, webhook_receiver: Any) -> None:
    """Idle workers sleep until the next event is due; a shipment stored by this process wakes them
    (without it they would sleep the whole 30 s and these events would arrive late)."""
    settings = settings.model_copy(update={"sandbox_auto_deliver": True, "sandbox_delivery_delay_s": 0.6})
    async with await _idle_sandbox(settings, max_idle_s=30.0) as (_, client):
        await asyncio.sleep(0.5)  # every worker has found nothing due and gone to sleep
        started = time.monotonic()
        tracking = (await post(client, "/carrier/v1/shipments", shipment_body(), ref("ship"))).json()["tracking_number"]
        got = await webhook_receiver.wait_for(tracking, 3, timeout_s=10)
        assert [json.loads(r.body)["event"] for r in got] == ["picked_up", "in_transit", "delivered"]
        assert time.monotonic() - started < 10


async def test_an_idle_sender_does_not_poll_its_table(settings: Settings, webhook_receiver: Any) -> None:
    """With nothing to send, four workers ask the database a few times per max_idle_s, not every
    poll interval (this used to be 4 x 20 queries a second at a 0.05 s poll interval)."""
    from sqlalchemy import event

    async with await _idle_sandbox(settings, max_idle_s=2.0) as (app, _):
        await asyncio.sleep(0.3)
        statements: list[str] = []

        def listener(conn, cursor, statement, *rest) -> None:
            statements.append(statement)

        event.listen(app.state.engine.sync_engine, "before_cursor_execute", listener)
        try:
            await asyncio.sleep(1.5)
        finally:
            event.remove(app.state.engine.sync_engine, "before_cursor_execute", listener)
    selects = [s for s in statements if "sandbox_shipment_events" in s]
    assert len(selects) <= 16, len(selects)


# --- faults --------------------------------------------------------------------------------------


async def test_error_rate_one_answers_503_and_records_nothing(client: httpx.AsyncClient) -> None:
    assert (await client.put("/sandbox/v1/faults", json={"error_rate": 1.0})).status_code == 200
    assert (await client.get("/sandbox/v1/faults")).json()["error_rate"] == 1.0
    body, key = authorize_body(), ref("key")
    failed = await post(client, AUTHORIZE, body, key)
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "1"
    ship = await post(client, "/carrier/v1/shipments", shipment_body(), ref("ship"))
    assert ship.status_code == 503
    assert (await client.get("/healthz")).status_code == 200
    assert (await ledger(client, body["order_id"]))["authorizations"] == []

    assert (await client.put("/sandbox/v1/faults", json={})).status_code == 200
    fresh = await post(client, AUTHORIZE, body, key)
    assert fresh.status_code == 201 and "Idempotent-Replayed" not in fresh.headers


async def test_timeout_fault_answers_504_after_hanging(client: httpx.AsyncClient) -> None:
    await client.put("/sandbox/v1/faults", json={"timeout_rate": 1.0, "timeout_s": 0.2})
    started = time.monotonic()
    response = await post(client, AUTHORIZE, authorize_body(), ref("key"))
    assert response.status_code == 504 and time.monotonic() - started >= 0.2


async def test_bench_reads_the_busiest_second_of_provider_calls_from_the_ledger(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The spike report's evidence that workers kept to their caps comes from this ledger query."""
    from bench.measure.providers import provider_call_peaks

    since = time.time() - 1
    auth_ids = [await authorized(client) for _ in range(3)]
    assert (await post(client, f"{AUTHORIZE}/{auth_ids[0]}/capture", {"amount": 1500}, ref("cap"))).status_code == 200
    assert (await post(client, "/carrier/v1/shipments", shipment_body(), ref("ship"))).status_code == 201
    peaks = await provider_call_peaks(
        settings.model_copy(update={"payments_max_per_second": 7}), since, time.time() + 1
    )
    assert peaks["payments"]["total"] >= 4 and 1 <= peaks["payments"]["peak_per_s"] <= peaks["payments"]["total"]
    assert peaks["shipping"]["total"] >= 1
    assert peaks["payments"]["cap_per_s"] == 7
    later = await provider_call_peaks(settings, time.time() + 60, time.time() + 61)
    assert later["payments"] == {
        "peak_per_s": 0,
        "peak_5s_per_s": 0,
        "total": 0,
        "cap_per_s": settings.payments_max_per_second,
    }
    assert 0 < peaks["payments"]["peak_5s_per_s"] <= peaks["payments"]["peak_per_s"]


# --- several partial captures of one authorization (multicapture) -----------------------------------


async def test_partial_captures_add_up_to_the_authorized_amount_once(client: httpx.AsyncClient) -> None:
    auth_id = await authorized(client, amount=1000)
    url = f"{AUTHORIZE}/{auth_id}/capture"
    key = ref("cap")
    first = await post(client, url, {"amount": 300, "final_capture": False}, key)
    assert first.json() == {"id": auth_id, "status": "partly_captured", "captured_amount": 300}
    replay = await post(client, url, {"amount": 300, "final_capture": False}, key)
    assert replay.json() == first.json() and replay.headers["Idempotent-Replayed"] == "true"
    too_much = await post(client, url, {"amount": 701, "final_capture": False}, ref("cap"))
    assert too_much.status_code == 422 and too_much.json()["error"]["code"] == "amount_too_large"
    rest = await post(client, url, {"amount": 700, "final_capture": False}, ref("cap"))
    assert rest.json() == {"id": auth_id, "status": "captured", "captured_amount": 1000}  # all of it: closed
    assert (await post(client, url, {"amount": 1}, ref("cap"))).status_code == 409
    auth = (await client.get(f"{AUTHORIZE}/{auth_id}")).json()
    moves = (await ledger(client, auth["order_id"]))["money_movements"]
    assert [(m["kind"], m["amount"]) for m in moves] == [("capture", 300), ("capture", 700)]


async def test_a_final_capture_closes_the_authorization_and_releases_the_rest(client: httpx.AsyncClient) -> None:
    auth_id = await authorized(client, amount=1000)
    url = f"{AUTHORIZE}/{auth_id}/capture"
    assert (await post(client, url, {"amount": 200, "final_capture": False}, ref("cap"))).status_code == 200
    final = await post(client, url, {"amount": 300}, ref("cap"))  # final_capture defaults to true
    assert final.json() == {"id": auth_id, "status": "captured", "captured_amount": 500}
    assert (await post(client, url, {"amount": 100, "final_capture": False}, ref("cap"))).status_code == 409
    assert (await post(client, f"{AUTHORIZE}/{auth_id}/void", {}, ref("void"))).status_code == 409


async def test_a_void_after_partial_captures_releases_only_the_uncaptured_rest(client: httpx.AsyncClient) -> None:
    auth_id = await authorized(client, amount=1000)
    url = f"{AUTHORIZE}/{auth_id}/capture"
    assert (await post(client, url, {"amount": 400, "final_capture": False}, ref("cap"))).status_code == 200
    voided = await post(client, f"{AUTHORIZE}/{auth_id}/void", {}, ref("void"))
    assert voided.status_code == 200 and voided.json()["status"] == "captured"
    assert (await post(client, url, {"amount": 100, "final_capture": False}, ref("cap"))).status_code == 409
    auth = (await client.get(f"{AUTHORIZE}/{auth_id}")).json()
    assert (auth["status"], auth["captured_amount"]) == ("captured", 400)


async def test_refunds_of_partial_captures_stop_at_what_was_captured(client: httpx.AsyncClient) -> None:
    auth_id = await authorized(client, amount=1000)
    capture_url, refund_url = f"{AUTHORIZE}/{auth_id}/capture", f"{AUTHORIZE}/{auth_id}/refund"
    assert (await post(client, capture_url, {"amount": 600, "final_capture": False}, ref("cap"))).status_code == 200
    assert (await post(client, refund_url, {"amount": 601}, ref("ref"))).status_code == 422
    refunded = await post(client, refund_url, {"amount": 600}, ref("ref"))
    # Still open: the other shipment's capture may follow, and may be refunded in turn.
    assert refunded.json()["status"] == "partly_captured" and refunded.json()["refunded_amount"] == 600
    closed = await post(client, capture_url, {"amount": 400}, ref("cap"))
    assert closed.json() == {"id": auth_id, "status": "captured", "captured_amount": 1000}
    second = await post(client, refund_url, {"amount": 400}, ref("ref"))
    assert second.json()["status"] == "refunded" and second.json()["refunded_amount"] == 1000
