"""Split shipments at the gateway, before any workflow is involved: amend and cancel bodies are
validated strictly, amends of orders one may not see or that have ended are refused, the public view
publishes shipments and refunds, and a carrier event for any shipment's tracking number finds its
order. (The workflow's own answers to amend and cancel: tests/integration/test_amend_api.py.)"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from core.db.read_model import OrderReadModel
from core.domain import (
    FailureReason,
    OrderLine,
    OrderStatus,
    OrderView,
    RefundRecord,
    ShipmentStatus,
    ShipmentView,
    StatusChange,
    UnavailableLine,
)
from core.webhooks import sign_webhook
from tests.api.conftest import assert_problem
from tests.harness import random_ref
from tests.support import ADDRESS, now

MUG, LAMP = (
    OrderLine(sku="MUG-WHT", quantity=2, unit_price=1299),
    OrderLine(sku="LAMP-BRS", quantity=1, unit_price=4900),
)


def _view(customer: str, status: OrderStatus, **fields) -> OrderView:
    t0 = now()
    view = OrderView.received(
        order_id=uuid.uuid4(),
        customer_id=customer,
        items=[MUG, LAMP],
        total=7498,
        currency="EUR",
        shipping_address=ADDRESS,
        at=t0,
    )
    if status != OrderStatus.RECEIVED:
        view.status, view.updated_at = status, t0 + timedelta(seconds=1)
        view.history.append(StatusChange(status=status, at=view.updated_at))
    for name, value in fields.items():
        setattr(view, name, value)
    return view


async def _stored(engine, view: OrderView) -> OrderView:
    await OrderReadModel(engine).project(len(view.history), view)
    return view


def _amend(*items) -> dict:
    return {"items": [{"sku": sku, "quantity": quantity} for sku, quantity in items]}


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"items": []}, ["body", "items"]),
        ({}, ["body", "items"]),
        (_amend(("MUG-WHT", 0)), ["body", "items", "0", "quantity"]),
        (_amend(("MUG-WHT", -1)), ["body", "items", "0", "quantity"]),
        (_amend(("MUG-WHT", 1001)), ["body", "items", "0", "quantity"]),
        (_amend(*[(f"S{n}", 1) for n in range(101)]), ["body", "items"]),
        ({**_amend(("MUG-WHT", 1)), "total": 1}, ["body", "total"]),
        ({"items": [{"sku": "MUG-WHT", "quantity": 1, "unit_price": 1}]}, ["body", "items", "0", "unit_price"]),
        (_amend(("bad sku!", 1)), ["body", "items", "0", "sku"]),
    ],
    ids=["no-lines", "no-items", "qty0", "negative", "qty1001", "101-lines", "unknown-field", "unit-price", "bad-sku"],
)
async def test_invalid_amends_get_422_naming_the_field(body, loc, gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.post(f"/v1/orders/{uuid.uuid4()}/amend", json=body, headers=bearer())
    problem = assert_problem(response, 422)
    assert loc in [error["loc"] for error in problem["errors"]], problem


async def test_an_amend_naming_a_sku_twice_is_422_naming_it(gateway_client, bearer, engine):
    view = await _stored(engine, _view("amend-dup", OrderStatus.AWAITING_CUSTOMER))
    async with gateway_client() as http:
        response = await http.post(
            f"/v1/orders/{view.id}/amend",
            json=_amend(("LAMP-BRS", 1), ("MUG-WHT", 1), ("LAMP-BRS", 1)),
            headers=bearer("amend-dup"),
        )
    problem = assert_problem(response, 422)
    assert "LAMP-BRS" in problem["detail"] and "MUG-WHT" not in problem["detail"]
    assert [(e["type"], e["msg"]) for e in problem["errors"]] == [("repeated_sku", "repeated SKU LAMP-BRS")]


async def test_another_customers_order_is_not_found_for_amend_and_cancel(gateway_client, bearer, engine):
    view = await _stored(engine, _view(random_ref("owner"), OrderStatus.AWAITING_CUSTOMER))
    async with gateway_client() as http:
        for path, body in (("amend", _amend(("MUG-WHT", 2))), ("cancel", {"shipments": ["WH-A"]})):
            response = await http.post(f"/v1/orders/{view.id}/{path}", json=body, headers=bearer("someone-else"))
            assert_problem(response, 404)
        # An operator may, and a carrier's token may not.
        response = await http.post(
            f"/v1/orders/{view.id}/amend", json=_amend(("MUG-WHT", 2)), headers=bearer("c", "carrier")
        )
        assert_problem(response, 403)


@pytest.mark.parametrize(
    "status, reason",
    [
        (OrderStatus.COMPLETED, None),
        (OrderStatus.CANCELLED, FailureReason.CUSTOMER_TIMEOUT),  # an amend after the deadline
        (OrderStatus.REJECTED, FailureReason.OUT_OF_STOCK),
    ],
)
async def test_an_amend_of_an_order_that_ended_is_409_and_changes_nothing(
    status, reason, gateway_client, bearer, engine
):
    customer = random_ref("late").lower()
    view = await _stored(engine, _view(customer, status, failure_reason=reason))
    async with gateway_client() as http:  # Temporal unreachable: the ended order is refused without it
        response = await http.post(f"/v1/orders/{view.id}/amend", json=_amend(("MUG-WHT", 2)), headers=bearer(customer))
        problem = assert_problem(response, 409)
        assert problem["detail"] == f"order is {status.value}, not awaiting the customer"
        after = (await http.get(f"/v1/orders/{view.id}", headers=bearer(customer))).json()
    assert after["status"] == status.value and after["total"] == 7498 and len(after["items"]) == 2


async def test_an_amend_that_matches_the_ended_order_is_its_retry_and_answers_it(gateway_client, bearer, engine):
    """The first attempt went through and the order has since ended: the retry gets the order, not 409."""
    customer = random_ref("retry").lower()
    view = _view(customer, OrderStatus.COMPLETED)
    view.items, view.total = [MUG], 2598
    await _stored(engine, view)
    async with gateway_client() as http:
        response = await http.post(f"/v1/orders/{view.id}/amend", json=_amend(("MUG-WHT", 2)), headers=bearer(customer))
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 2598


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"shipments": []}, ["body", "shipments"]),
        ({"shipments": [1]}, ["body", "shipments", "0"]),
        ({"shipments": [""]}, ["body", "shipments", "0"]),
        ({"shipments": ["WH\u0000A"]}, ["body", "shipments", "0"]),
        ({"shipments": [f"s{n}" for n in range(101)]}, ["body", "shipments"]),
        ({"shipments": "WH-A"}, ["body", "shipments"]),
        ({"shipment": ["WH-A"]}, ["body", "shipment"]),
    ],
    ids=["empty", "number", "blank", "nul", "101", "not-a-list", "misspelt"],
)
async def test_invalid_cancel_bodies_get_422_naming_the_field(body, loc, gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.post(f"/v1/orders/{uuid.uuid4()}/cancel", json=body, headers=bearer())
    problem = assert_problem(response, 422)
    assert loc in [error["loc"] for error in problem["errors"]], problem


async def test_a_cancel_of_shipments_of_an_ended_order_is_409(gateway_client, bearer, engine):
    customer = random_ref("cs").lower()
    view = await _stored(engine, _view(customer, OrderStatus.COMPLETED))
    async with gateway_client() as http:
        response = await http.post(
            f"/v1/orders/{view.id}/cancel", json={"shipments": ["WH-A"]}, headers=bearer(customer)
        )
    assert assert_problem(response, 409)["detail"] == "order is completed and can no longer be cancelled"


def _split_view(customer: str, first: str, second: str) -> OrderView:
    delivered = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)  # a field of the view, not when it was written
    return _view(
        customer,
        OrderStatus.COMPLETED,
        tracking_number=first,
        shipments=[
            ShipmentView(
                id="s-main",
                warehouse_id="WH-MAIN",
                items=[MUG],
                amount=2598,
                status=ShipmentStatus.DELIVERED,
                tracking_number=first,
                delivered_at=delivered,
            ),
            ShipmentView(
                id="s-ber",
                warehouse_id="WH-BER",
                items=[LAMP],
                amount=4900,
                status=ShipmentStatus.LOST,
                tracking_number=second,
            ),
        ],
        refunds=[RefundRecord(amount=4900, reason="lost_in_transit", shipment_id="s-ber", at=delivered)],
    )


async def test_the_public_view_publishes_shipments_refunds_and_what_is_unavailable(gateway_client, bearer, engine):
    customer = random_ref("pub").lower()
    first, second = random_ref("TRK"), random_ref("TRK")
    split = await _stored(engine, _split_view(customer, first, second))
    deadline = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    waiting = await _stored(
        engine,
        _view(
            customer,
            OrderStatus.AWAITING_CUSTOMER,
            unavailable=[UnavailableLine(sku="LAMP-BRS", quantity=1)],
            customer_deadline=deadline,
        ),
    )
    async with gateway_client() as http:
        body = (await http.get(f"/v1/orders/{split.id}", headers=bearer(customer))).json()
        other = (await http.get(f"/v1/orders/{waiting.id}", headers=bearer(customer))).json()
    assert body["tracking_number"] == first  # the first shipment's: clients from before keep working
    assert body["shipments"] == [
        {
            "id": "s-main",
            "warehouse": "WH-MAIN",
            "items": [{"sku": "MUG-WHT", "quantity": 2, "unit_price": 1299}],
            "amount": 2598,
            "status": "delivered",
            "tracking_number": first,
            "delivered_at": "2026-12-05T12:00:00Z",
        },
        {
            "id": "s-ber",
            "warehouse": "WH-BER",
            "items": [{"sku": "LAMP-BRS", "quantity": 1, "unit_price": 4900}],
            "amount": 4900,
            "status": "lost",
            "tracking_number": second,
            "delivered_at": None,
        },
    ]
    assert body["refunds"] == [
        {"amount": 4900, "reason": "lost_in_transit", "shipment": "s-ber", "at": "2026-12-05T12:00:00Z"}
    ]
    assert body["unavailable"] == [] and body["customer_deadline"] is None
    assert other["status"] == "awaiting_customer" and other["shipments"] == [] and other["refunds"] == []
    assert other["unavailable"] == [{"sku": "LAMP-BRS", "quantity": 1}]
    assert other["customer_deadline"] == "2026-12-05T12:00:00Z"


async def test_a_carrier_event_for_the_second_shipment_finds_its_order(gateway_client, bearer, engine, settings):
    customer = random_ref("hook").lower()
    first, second = random_ref("TRK"), random_ref("TRK")
    view = _split_view(customer, first, second)
    view.status = OrderStatus.SHIPPED
    await _stored(engine, view)
    carrier = {**bearer("carrier-1", "carrier"), "Content-Type": "application/json"}
    async with gateway_client() as http:
        # picked_up is recorded in the read model; delivered goes to the order's workflow, which is
        # unreachable here (503), so the order was found (an unknown number is 404 either way).
        for number, kind, expected in (
            (second, "picked_up", 202),
            (random_ref("TRK"), "picked_up", 404),
            (second, "delivered", 503),
            (random_ref("TRK"), "delivered", 404),
        ):
            event = {"tracking_number": number, "event": kind, "occurred_at": "2026-12-04T15:00:00Z"}
            raw = json.dumps(event).encode()
            signature = sign_webhook(settings.carrier_webhook_secret, raw, int(time.time()))
            response = await http.post(
                "/v1/carrier/events", content=raw, headers={**carrier, "Carrier-Signature": signature}
            )
            assert response.status_code == expected, response.text
        read = (await http.get(f"/v1/orders/{view.id}", headers=bearer(customer))).json()
    assert read["carrier_events"] == [
        {"event": "picked_up", "occurred_at": "2026-12-04T15:00:00Z", "tracking_number": second}
    ]
