"""Idempotent submission and safe retries through the live gateway, with a real worker and sandbox:
replay, mismatch, a 50-request duplicate storm, key expiry, a gateway crash between accepting and
starting, and retried cancel/review/webhook calls."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select, update
from temporalio.service import RPCError

from api.app import create_app
from core.db.idempotency import sweep_expired_keys
from core.db.tables import idempotency_keys, orders
from core.domain import order_workflow_id
from core.order_service import OrderService
from core.temporal import TemporalConnection
from core.webhooks import sign_webhook
from tests.harness import random_ref, wait_for
from tests.integration.conftest import auth
from tests.integration.test_order_api import _status_is, final_state, order_body
from tests.support import ledger, new_sku


async def _orders_of(engine, customer: str) -> list[uuid.UUID]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(orders.c.id).where(orders.c.customer_id == customer))).scalars())


async def test_replay_and_mismatch(api, token, engine, workers):
    sku = await new_sku(engine)
    customer = random_ref("replay")
    alice = token(customer)
    body = order_body(sku)
    first = await api.post("/v1/orders", json=body, headers={**auth(alice), "Idempotency-Key": "order-1"})
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    # The draft's quoted form names the same key as the bare token.
    again = await api.post("/v1/orders", json=body, headers={**auth(alice), "Idempotency-Key": '"order-1"'})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() and again.headers["Location"] == first.headers["Location"]
    other = await api.post("/v1/orders", json=order_body(sku, 2), headers={**auth(alice), "Idempotency-Key": "order-1"})
    assert other.status_code == 422 and other.json()["type"].endswith("idempotency-key-reused")
    # Keys are scoped to the caller: the same key from someone else is a new order.
    bob = await api.post(
        "/v1/orders", json=body, headers={**auth(token(random_ref("bob"))), "Idempotency-Key": "order-1"}
    )
    assert bob.status_code == 202 and bob.json()["id"] != first.json()["id"]
    assert await _orders_of(engine, customer) == [uuid.UUID(first.json()["id"])]
    assert (await final_state(api, alice, first.json()["id"]))["status"] == "completed"
    # After completion the replay is still the first answer, byte for byte.
    late = await api.post("/v1/orders", json=body, headers={**auth(alice), "Idempotency-Key": "order-1"})
    assert late.status_code == 202 and late.json() == first.json() and late.headers["Idempotent-Replayed"] == "true"


async def test_requests_rejected_before_execution_do_not_consume_the_key(api, token, engine, workers):
    sku = await new_sku(engine)
    carol = token(random_ref("carol"))
    key = {"Idempotency-Key": "reuse-after-422"}
    unknown = await api.post("/v1/orders", json=order_body("NO-SUCH-SKU"), headers={**auth(carol), **key})
    invalid = await api.post("/v1/orders", json=order_body(sku, 0), headers={**auth(carol), **key})
    unauthenticated = await api.post(
        "/v1/orders", json=order_body(sku), headers={"Authorization": "Bearer forged", **key}
    )
    assert [unknown.status_code, invalid.status_code, unauthenticated.status_code] == [422, 422, 401]
    accepted = await api.post("/v1/orders", json=order_body(sku), headers={**auth(carol), **key})
    assert accepted.status_code == 202 and "Idempotent-Replayed" not in accepted.headers


async def test_fifty_concurrent_duplicates_make_one_order_one_workflow_one_charge(
    api, token, engine, workers, sandbox, temporal_client
):
    sku = await new_sku(engine, on_hand=100)
    customer = random_ref("storm")
    bearer = token(customer)
    body = order_body(sku, 3)
    responses = await asyncio.gather(
        *(
            api.post("/v1/orders", json=body, headers={**auth(bearer), "Idempotency-Key": "storm-key"})
            for _ in range(50)
        )
    )
    assert [r.status_code for r in responses] == [202] * 50, [r.text for r in responses if r.status_code != 202][:3]
    assert len({r.text for r in responses}) == 1  # every answer is the same body
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    order_id = responses[0].json()["id"]
    assert await _orders_of(engine, customer) == [uuid.UUID(order_id)]
    assert (await final_state(api, bearer, order_id))["status"] == "completed"
    runs = [w async for w in temporal_client.list_workflows(f"WorkflowId = '{order_workflow_id(order_id)}'")]
    assert len(runs) == 1
    charges = (await ledger(sandbox, uuid.UUID(order_id)))["authorizations"]
    assert len(charges) == 1 and charges[0]["captured_amount"] == 3 * 1_000


async def test_an_expired_key_is_new_again(api, token, engine, workers):
    sku = await new_sku(engine)
    customer = random_ref("expiry")
    dave = token(customer)
    body = order_body(sku)
    first = await api.post("/v1/orders", json=body, headers={**auth(dave), "Idempotency-Key": "monthly"})
    assert first.status_code == 202
    async with engine.begin() as conn:  # the retention period (24 h by default) has passed
        await conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.customer_id == customer)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    second = await api.post("/v1/orders", json=body, headers={**auth(dave), "Idempotency-Key": "monthly"})
    assert second.status_code == 202 and "Idempotent-Replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    for order in (first, second):
        assert (await final_state(api, dave, order.json()["id"]))["status"] == "completed"


async def test_a_key_whose_record_was_swept_is_a_new_order_that_runs(api, token, engine, workers):
    # Swept, the expired record no longer tells the claim that the key-derived id is taken: the
    # second order must still get its own id and workflow, not attach to the first one's.
    sku = await new_sku(engine)
    customer = random_ref("swept")
    frank = token(customer)
    body = order_body(sku)
    first = await api.post("/v1/orders", json=body, headers={**auth(frank), "Idempotency-Key": "weekly"})
    assert first.status_code == 202
    assert (await final_state(api, frank, first.json()["id"]))["status"] == "completed"
    async with engine.begin() as conn:
        await conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.customer_id == customer)
            .values(expires_at=datetime.now(UTC) - timedelta(days=1))
        )
    swept = await sweep_expired_keys(engine, grace=timedelta(0), batch_size=1000)
    assert swept.ran and swept.deleted >= 1
    async with engine.connect() as conn:
        left = await conn.scalar(
            select(func.count()).select_from(idempotency_keys).where(idempotency_keys.c.customer_id == customer)
        )
    assert left == 0

    second = await api.post("/v1/orders", json=body, headers={**auth(frank), "Idempotency-Key": "weekly"})

    assert second.status_code == 202 and "Idempotent-Replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert (await final_state(api, frank, second.json()["id"]))["status"] == "completed"
    assert set(await _orders_of(engine, customer)) == {uuid.UUID(first.json()["id"]), uuid.UUID(second.json()["id"])}


class _GatewayCrashed(BaseException):
    """Stands for the process dying: nothing after it runs, not even except-Exception handlers."""


class _CrashBeforeStart(OrderService):
    async def _start_workflow(self, view, payment_token):
        raise _GatewayCrashed()


async def test_a_crash_between_accepting_and_starting_is_healed_by_the_retry(
    api, token, engine, workers, it_settings, temporal_client
):
    sku = await new_sku(engine)
    customer = random_ref("crash")
    erin = token(customer)
    body = order_body(sku)
    app = create_app(it_settings, engine=engine, client=temporal_client)
    async with LifespanManager(app):
        app.state.service = _CrashBeforeStart(it_settings, engine, TemporalConnection(it_settings, temporal_client))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://crashing") as crashing:
            try:
                await crashing.post("/v1/orders", json=body, headers={**auth(erin), "Idempotency-Key": "crash-1"})
            except _GatewayCrashed:
                pass
    # The key is claimed and the order row exists, but no workflow was started.
    [order_id] = await _orders_of(engine, customer)
    try:
        await temporal_client.get_workflow_handle(order_workflow_id(order_id)).describe()
        raise AssertionError("a workflow exists although the gateway crashed before starting it")
    except RPCError:
        pass
    retry = await api.post("/v1/orders", json=body, headers={**auth(erin), "Idempotency-Key": "crash-1"})
    assert retry.status_code == 202 and retry.json()["id"] == str(order_id)
    assert (await final_state(api, erin, str(order_id)))["status"] == "completed"


async def test_cancel_and_review_are_safe_to_retry(api, token, engine, workers):
    sku = await new_sku(engine, price=300_000, on_hand=5)  # above the review threshold: waits for an operator
    frank = token(random_ref("frank"))
    operator = token("ops-retry", "operator")
    reviewed = (
        await api.post("/v1/orders", json=order_body(sku), headers={**auth(frank), "Idempotency-Key": "r"})
    ).json()
    cancelled = (
        await api.post("/v1/orders", json=order_body(sku), headers={**auth(frank), "Idempotency-Key": "c"})
    ).json()
    for order in (reviewed, cancelled):
        await wait_for(
            lambda order_id=order["id"]: _status_is(api, frank, order_id, "awaiting_review"),
            timeout=30,
            what="awaiting_review",
        )

    approvals = await asyncio.gather(
        *(
            api.post(f"/v1/orders/{reviewed['id']}/review", json={"decision": "approve"}, headers=auth(operator))
            for _ in range(3)
        )
    )
    assert [a.status_code for a in approvals] == [200] * 3
    assert {a.json()["review"]["decision"] for a in approvals} == {"approve"}
    cancels = await asyncio.gather(
        *(api.post(f"/v1/orders/{cancelled['id']}/cancel", json={}, headers=auth(frank)) for _ in range(3))
    )
    assert [c.status_code for c in cancels] == [200] * 3 and {c.json()["status"] for c in cancels} == {"cancelled"}

    final = await final_state(api, frank, reviewed["id"])
    assert final["status"] == "completed"
    # After the end, a repeated call answers from the read model with the same outcome.
    again = await api.post(f"/v1/orders/{reviewed['id']}/review", json={"decision": "approve"}, headers=auth(operator))
    assert again.status_code == 200 and again.json()["review"]["decision"] == "approve"
    again = await api.post(f"/v1/orders/{cancelled['id']}/cancel", json={}, headers=auth(frank))
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_repeated_carrier_events_are_harmless(api, token, engine, workers, it_settings):
    sku = await new_sku(engine)
    grace = token(random_ref("grace"))
    order = (await api.post("/v1/orders", json=order_body(sku), headers={**auth(grace), "Idempotency-Key": "w"})).json()
    final = await final_state(api, grace, order["id"])
    assert final["status"] == "completed" and final["tracking_number"]
    event = {
        "tracking_number": final["tracking_number"],
        "event": "delivered",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    raw = json.dumps(event).encode()
    headers = {
        **auth(token("carrier-x", "carrier")),
        "Content-Type": "application/json",
        "Carrier-Signature": sign_webhook(it_settings.carrier_webhook_secret, raw, int(time.time())),
    }
    for _ in range(2):
        assert (await api.post("/v1/carrier/events", content=raw, headers=headers)).status_code == 202
    # A tracking-only event again, reported later: the first report stays.
    again = json.dumps({**event, "event": "in_transit"}).encode()
    again_headers = {
        **headers,
        "Carrier-Signature": sign_webhook(it_settings.carrier_webhook_secret, again, int(time.time())),
    }
    assert (await api.post("/v1/carrier/events", content=again, headers=again_headers)).status_code == 202
    after = (await api.get(f"/v1/orders/{order['id']}", headers=auth(grace))).json()
    assert after["status"] == "completed" and after["carrier_events"] == final["carrier_events"]
    # A tracking event for a parcel nobody knows is 404 (the carrier retries it a few times).
    unknown = json.dumps({**event, "event": "picked_up", "tracking_number": "TRKNOPE"}).encode()
    unknown_headers = {
        **headers,
        "Carrier-Signature": sign_webhook(it_settings.carrier_webhook_secret, unknown, int(time.time())),
    }
    assert (await api.post("/v1/carrier/events", content=unknown, headers=unknown_headers)).status_code == 404
    async with engine.connect() as conn:
        assert (
            await conn.scalar(select(func.count()).select_from(orders).where(orders.c.id == uuid.UUID(order["id"])))
            == 1
        )


async def test_an_update_no_worker_accepts_in_time_is_a_503_never_a_false_200(engine, it_settings, temporal_client):
    """Seen in the long chaos run: a review whose start timed out (workers busy after a restart)
    was answered 200 from the read model, the operator believed it, and the order waited forever."""
    import pytest

    from core.domain import Address, DependencyUnavailable
    from core.order_service import Caller, NewOrder
    from tests.support import ADDRESS

    sku = await new_sku(engine, price=300_000, on_hand=1)
    # Its workflows go to a task queue that no worker polls: no update can ever be accepted.
    unattended = it_settings.model_copy(
        update={"task_queue": f"nobody-{uuid.uuid4().hex[:6]}", "temporal_rpc_timeout_s": 1.0}
    )
    service = OrderService(unattended, engine, TemporalConnection(unattended, temporal_client))
    customer = Caller(subject=random_ref("hugo"), role="customer")
    submitted = await service.submit(
        customer,
        "k-1",
        NewOrder(
            items=[(sku, 1)], shipping_address=Address.model_validate(ADDRESS.model_dump()), payment_token="tok_ok"
        ),
    )
    order_id = submitted.view.id
    try:
        started = time.monotonic()
        with pytest.raises(DependencyUnavailable):
            await service.review(Caller(subject="olga", role="operator"), order_id, "approve", None)
        with pytest.raises(DependencyUnavailable):
            await service.cancel(customer, order_id, "changed my mind")
        assert time.monotonic() - started < 20
    finally:
        await temporal_client.get_workflow_handle(order_workflow_id(order_id)).terminate("test done")
