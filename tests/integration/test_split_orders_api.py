"""Split shipments end to end through the public API: the gateway, the order workflow with its
split-shipments patch, a real worker, PostgreSQL and the sandbox carrier posting signed webhooks
for every parcel. Skipped until the workflow carries the patch (it lands from its own branch)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager

import workflows.order
from api.app import create_app
from tests.harness import random_ref, wait_for
from tests.integration.conftest import auth
from tests.integration.test_order_api import ADDRESS, final_state, submit
from tests.support import new_warehouses, stock_by_warehouse, stock_of, stocked_sku

pytestmark = pytest.mark.skipif(
    not hasattr(workflows.order, "PATCH_SPLIT_SHIPMENTS"),
    reason="the order workflow has no split-shipments patch yet (PATCH_SPLIT_SHIPMENTS)",
)

PRICE = 100  # stocked_sku's catalogue price


def body(*lines: tuple[str, int], **address) -> dict:
    return {
        "items": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
        "shipping_address": {**ADDRESS, **address},
        "payment_token": "tok_ok",
    }


async def status_of(api, bearer: str, order_id: str) -> dict:
    response = await api.get(f"/v1/orders/{order_id}", headers=auth(bearer))
    assert response.status_code == 200, response.text
    return response.json()


async def awaiting_customer(api, bearer: str, order_id: str) -> dict:
    async def waiting():
        view = await status_of(api, bearer, order_id)
        return view if view["status"] == "awaiting_customer" else None

    return await wait_for(waiting, timeout=30, interval=0.2, what=f"order {order_id} awaiting the customer")


async def test_an_order_split_over_two_warehouses_completes_with_two_tracking_numbers(api, token, engine, workers):
    near, far = await new_warehouses(engine, 2)
    mug, lamp = await stocked_sku(engine, {near: 5}), await stocked_sku(engine, {far: 5})
    alice = token(random_ref("alice"))
    response = await submit(api, alice, body((mug, 2), (lamp, 1)))
    assert response.status_code == 202, response.text
    final = await final_state(api, alice, response.json()["id"], timeout=120)

    assert final["status"] == "completed", final
    shipments = final["shipments"]
    assert sorted((s["warehouse"], s["status"]) for s in shipments) == sorted([(near, "delivered"), (far, "delivered")])
    numbers = [s["tracking_number"] for s in shipments]
    assert all(numbers) and len(set(numbers)) == 2
    assert final["tracking_number"] == numbers[0]  # the first shipment's, as before
    assert {s["warehouse"]: [(i["sku"], i["quantity"]) for i in s["items"]] for s in shipments} == {
        near: [(mug, 2)],
        far: [(lamp, 1)],
    }
    assert sum(s["amount"] for s in shipments) == final["total"] == 3 * PRICE
    assert all(s["delivered_at"] for s in shipments) and final["refunds"] == []
    assert await stock_by_warehouse(engine, mug) == {near: (3, 0)}
    assert await stock_by_warehouse(engine, lamp) == {far: (4, 0)}


async def test_a_partly_available_order_is_amended_and_completes(api, token, engine, workers):
    [warehouse] = await new_warehouses(engine, 1)
    mug, lamp = await stocked_sku(engine, {warehouse: 5}), await stocked_sku(engine, {warehouse: 1})
    bob = token(random_ref("bob"))
    order = (await submit(api, bob, body((mug, 2), (lamp, 3)))).json()
    waiting = await awaiting_customer(api, bob, order["id"])
    assert waiting["unavailable"] == [{"sku": lamp, "quantity": 2}] and waiting["customer_deadline"]
    path = f"/v1/orders/{order['id']}/amend"

    # Bad amends are refused, clearly, and change nothing.
    for bad, status in (
        ({"items": [{"sku": random_ref("SKU"), "quantity": 1}]}, 422),  # a line the order does not have
        ({"items": [{"sku": lamp, "quantity": 3}]}, 422),  # more than was reserved
        ({"items": []}, 422),
        ({"items": [{"sku": mug, "quantity": -1}]}, 422),
    ):
        refused = await api.post(path, json=bad, headers=auth(bob))
        assert refused.status_code == status, (bad, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
    assert (await status_of(api, bob, order["id"]))["status"] == "awaiting_customer"

    amended = await api.post(
        path, json={"items": [{"sku": mug, "quantity": 2}, {"sku": lamp, "quantity": 1}]}, headers=auth(bob)
    )
    assert amended.status_code == 200, amended.text
    assert amended.json()["total"] == 3 * PRICE
    late = await api.post(path, json={"items": [{"sku": mug, "quantity": 1}]}, headers=auth(bob))
    assert late.status_code == 409, late.text

    final = await final_state(api, bob, order["id"], timeout=120)
    assert final["status"] == "completed" and final["total"] == 3 * PRICE, final
    assert [(i["sku"], i["quantity"]) for i in final["items"]] == [(mug, 2), (lamp, 1)]
    assert await stock_of(engine, lamp) == (0, 0) and await stock_of(engine, mug) == (3, 0)


async def test_a_partly_available_order_is_cancelled_and_its_stock_released(api, token, engine, workers):
    [warehouse] = await new_warehouses(engine, 1)
    mug, lamp = await stocked_sku(engine, {warehouse: 5}), await stocked_sku(engine, {warehouse: 1})
    carol = token(random_ref("carol"))
    order = (await submit(api, carol, body((mug, 1), (lamp, 2)))).json()
    await awaiting_customer(api, carol, order["id"])
    cancelled = await api.post(
        f"/v1/orders/{order['id']}/cancel", json={"reason": "not without the lamps"}, headers=auth(carol)
    )
    assert cancelled.status_code == 200, cancelled.text
    final = await final_state(api, carol, order["id"])
    assert (final["status"], final["failure_reason"]) == ("cancelled", "cancelled_by_customer")
    assert await stock_of(engine, mug) == (5, 0) and await stock_of(engine, lamp) == (1, 0)


async def test_no_answer_from_the_customer_cancels_the_order(it_settings, temporal_client, token, engine, workers):
    """A gateway whose orders wait 2 s for the customer (the setting is snapshotted at submission)."""
    [warehouse] = await new_warehouses(engine, 1)
    lamp = await stocked_sku(engine, {warehouse: 1})
    dave = token(random_ref("dave"))
    settings = it_settings.model_copy(update={"customer_response_timeout_s": 2.0})
    async with impatient_gateway(settings, engine, temporal_client) as api:
        order = (await submit(api, dave, body((lamp, 2)))).json()
        await awaiting_customer(api, dave, order["id"])
        final = await final_state(api, dave, order["id"])
        assert (final["status"], final["failure_reason"]) == ("cancelled", "customer_timeout")
        late = await api.post(
            f"/v1/orders/{order['id']}/amend", json={"items": [{"sku": lamp, "quantity": 1}]}, headers=auth(dave)
        )
        assert late.status_code == 409, late.text
    assert await stock_of(engine, lamp) == (1, 0)


async def test_lost_parcels_are_refunded_per_shipment(api, token, engine, workers):
    near, far = await new_warehouses(engine, 2)
    mug, lamp = await stocked_sku(engine, {near: 5}), await stocked_sku(engine, {far: 5})
    erin = token(random_ref("erin"))
    # The sandbox carrier loses every parcel to this postal code.
    order = (await submit(api, erin, body((mug, 1), (lamp, 2), postal_code="99998"))).json()
    final = await final_state(api, erin, order["id"], timeout=120)
    assert (final["status"], final["failure_reason"]) == ("failed", "lost_in_transit"), final
    assert sorted(s["status"] for s in final["shipments"]) == ["lost", "lost"]
    refunded = {r["shipment"]: r["amount"] for r in final["refunds"]}
    assert refunded == {s["id"]: s["amount"] for s in final["shipments"]}
    assert sum(refunded.values()) == final["total"]


@asynccontextmanager
async def impatient_gateway(settings, engine, temporal_client):
    app = create_app(settings, engine=engine, client=temporal_client)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as http:
            yield http
