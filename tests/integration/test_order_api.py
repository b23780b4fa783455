"""The order lifecycle through the public API, on the dev server with a real worker and sandbox."""

from __future__ import annotations

import asyncio
import uuid

from core.domain import OrderStatus
from tests.harness import random_ref, wait_for
from tests.integration.conftest import auth
from tests.support import new_sku, stock_of

ADDRESS = {
    "name": "Ada Lovelace",
    "line1": "Unter den Linden 1",
    "line2": None,
    "city": "Berlin",
    "postal_code": "10117",
    "country": "DE",
}


def order_body(sku: str, quantity: int = 1, token: str = "tok_ok", **address) -> dict:
    return {
        "items": [{"sku": sku, "quantity": quantity}],
        "shipping_address": {**ADDRESS, **address},
        "payment_token": token,
    }


async def submit(api, bearer: str, body: dict, key: str | None = None):
    return await api.post("/v1/orders", json=body, headers={**auth(bearer), "Idempotency-Key": key or uuid.uuid4().hex})


async def submit_until_accepted(api, bearer: str, body: dict, attempts: int = 10):
    """What a well-behaved client does: on 503 (load shed) retry with the same key after Retry-After."""
    key = uuid.uuid4().hex
    for _ in range(attempts):
        response = await submit(api, bearer, body, key=key)
        if response.status_code != 503:
            return response
        await asyncio.sleep(float(response.headers["Retry-After"]))
    return response


async def final_state(api, bearer: str, order_id: str, timeout: float = 60) -> dict:
    last: dict = {}

    async def terminal():
        response = await api.get(f"/v1/orders/{order_id}", headers=auth(bearer))
        last["response"] = response.text
        if response.status_code == 503:  # shedding load: a client retries after Retry-After
            assert "Retry-After" in response.headers
            return None
        assert response.status_code == 200, response.text
        view = response.json()
        return view if OrderStatus(view["status"]).is_terminal else None

    try:
        return await wait_for(terminal, timeout=timeout, interval=0.2, what=f"order {order_id} to end")
    except AssertionError as error:
        raise AssertionError(f"{error}; last answer: {last.get('response')}") from None


async def test_order_posted_to_the_api_completes_by_itself(api, token, engine, workers, temporal_client):
    sku = await new_sku(engine, price=1_999, on_hand=10)
    alice = token(random_ref("alice"))
    response = await submit(api, alice, order_body(sku, 2))
    assert response.status_code == 202, response.text
    order = response.json()
    assert order["status"] == "received" and order["total"] == 3_998 and order["currency"] == "EUR"
    assert response.headers["Location"] == f"/v1/orders/{order['id']}"
    # The sandbox carrier posts picked_up / in_transit / delivered to the gateway's webhook.
    final = await final_state(api, alice, order["id"])
    assert final["status"] == "completed", final
    assert [h["status"] for h in final["history"]] == [
        "received",
        "stock_reserved",
        "payment_authorized",
        "shipped",
        "completed",
    ]
    # All three are in the order; only `delivered` went to the workflow (tracking-only events are
    # kept in the read model), so its history holds one signal.
    assert [e["event"] for e in final["carrier_events"]] == ["picked_up", "in_transit", "delivered"]
    history = await temporal_client.get_workflow_handle(f"order-{order['id']}").fetch_history()
    signals = [e for e in history.events if e.HasField("workflow_execution_signaled_event_attributes")]
    assert len(signals) == 1
    assert await stock_of(engine, sku) == (8, 0)


async def test_two_hundred_concurrent_orders_for_ten_units(api, token, engine, workers):
    sku = await new_sku(engine, on_hand=10)
    customer = token(random_ref("crowd"))
    responses = await asyncio.gather(*(submit_until_accepted(api, customer, order_body(sku)) for _ in range(200)))
    assert [r.status_code for r in responses] == [202] * 200
    assert len({r.json()["id"] for r in responses}) == 200
    finals = [await final_state(api, customer, r.json()["id"], timeout=180) for r in responses]
    got_stock = [f for f in finals if "stock_reserved" in [h["status"] for h in f["history"]]]
    assert len(got_stock) == 10
    assert sum(f["failure_reason"] == "out_of_stock" for f in finals) == 190
    on_hand, reserved = await stock_of(engine, sku)
    assert reserved == 0 and on_hand == 10 - sum(f["status"] == "completed" for f in finals) >= 0


async def test_reads_answer_from_the_read_model_while_no_worker_runs(api, token, engine, workers):
    sku = await new_sku(engine)
    bob = token(random_ref("bob"))
    await workers.stop()
    try:
        response = await submit(api, bob, order_body(sku))
        assert response.status_code == 202
        order_id = response.json()["id"]
        read = await asyncio.wait_for(api.get(f"/v1/orders/{order_id}", headers=auth(bob)), timeout=10)
        assert read.status_code == 200 and read.json()["status"] == "received"
        listed = await api.get("/v1/orders", headers=auth(bob))
        assert [o["id"] for o in listed.json()["items"]] == [order_id]
    finally:
        await workers.start()
    assert (await final_state(api, bob, order_id))["status"] == "completed"


async def test_cancel_via_api_and_409_after_shipping(api, token, engine, workers, it_settings):
    sku = await new_sku(engine, price=200_000, on_hand=3)  # at or above the review threshold: parks
    carol = token(random_ref("carol"))
    order = (await submit(api, carol, order_body(sku))).json()
    await wait_for(lambda: _status_is(api, carol, order["id"], "awaiting_review"), timeout=30, what="awaiting_review")
    cancelled = await api.post(
        f"/v1/orders/{order['id']}/cancel", json={"reason": "changed my mind"}, headers=auth(carol)
    )
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["failure_reason"]) == ("cancelled", "cancelled_by_customer")
    again = await api.post(f"/v1/orders/{order['id']}/cancel", json={}, headers=auth(carol))
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert await stock_of(engine, sku) == (3, 0)

    cheap = await new_sku(engine)
    shipped_order = (await submit(api, carol, order_body(cheap))).json()
    final = await final_state(api, carol, shipped_order["id"])
    refused = await api.post(f"/v1/orders/{shipped_order['id']}/cancel", json={}, headers=auth(carol))
    assert final["status"] == "completed" and refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"


async def test_review_and_address_change_via_api(api, token, engine, workers):
    sku = await new_sku(engine, price=150_000)
    dave = token(random_ref("dave"))
    operator = token("ops-1", "operator")
    order = (await submit(api, dave, order_body(sku))).json()
    await wait_for(lambda: _status_is(api, dave, order["id"], "awaiting_review"), timeout=30, what="awaiting_review")
    moved = await api.put(
        f"/v1/orders/{order['id']}/shipping-address",
        json={**ADDRESS, "city": "Hamburg", "postal_code": "20095"},
        headers=auth(dave),
    )
    assert moved.status_code == 200 and moved.json()["shipping_address"]["city"] == "Hamburg"
    forbidden = await api.post(f"/v1/orders/{order['id']}/review", json={"decision": "approve"}, headers=auth(dave))
    assert forbidden.status_code == 403
    approved = await api.post(
        f"/v1/orders/{order['id']}/review", json={"decision": "approve", "note": "ok"}, headers=auth(operator)
    )
    assert approved.status_code == 200 and approved.json()["review"]["decision"] == "approve"
    final = await final_state(api, dave, order["id"])
    assert final["status"] == "completed"
    late = await api.put(f"/v1/orders/{order['id']}/shipping-address", json=ADDRESS, headers=auth(dave))
    assert late.status_code == 409
    not_awaiting = await api.post(
        f"/v1/orders/{order['id']}/review", json={"decision": "reject"}, headers=auth(operator)
    )
    assert not_awaiting.status_code == 409


async def test_another_customers_order_is_not_found(api, token, engine, workers):
    sku = await new_sku(engine)
    erin, mallory = token(random_ref("erin")), token(random_ref("mallory"))
    order = (await submit(api, erin, order_body(sku))).json()
    for method, path, body in (
        ("GET", f"/v1/orders/{order['id']}", None),
        ("POST", f"/v1/orders/{order['id']}/cancel", {}),
        ("PUT", f"/v1/orders/{order['id']}/shipping-address", ADDRESS),
        ("GET", f"/v1/orders/{uuid.uuid4()}", None),
    ):
        response = await api.request(method, path, json=body, headers=auth(mallory))
        assert response.status_code == 404, (method, path, response.text)
    assert (await final_state(api, erin, order["id"]))["status"] == "completed"


async def _status_is(api, bearer, order_id, status):
    return (await api.get(f"/v1/orders/{order_id}", headers=auth(bearer))).json()["status"] == status
