"""The gateway's side of amend and of cancelling named shipments, on the real dev server.

The order workflow's answers are its contract: validators refuse with ERR_INVALID_STATE (not now:
409), ERR_INVALID_AMEND or ERR_INVALID_CANCEL (never right for this order: 422), with a message
naming what is wrong. ``StandInOrder`` keeps that contract under the order workflow's name on a
task queue of its own, so these tests pin the gateway's mapping, update ids and request bodies
whatever the order workflow's branch does; the real workflow's paths through the public API are in
test_split_orders_api.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import delete
from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from core.db.read_model import OrderReadModel
from core.db.tables import order_events, orders
from core.domain import (
    ERR_INVALID_AMEND,
    ERR_INVALID_CANCEL,
    ERR_INVALID_STATE,
    ORDER_WORKFLOW,
    UPDATE_AMEND,
    UPDATE_CANCEL,
    AmendRequest,
    CancelRequest,
    FailureReason,
    OrderLine,
    OrderStatus,
    OrderView,
    ShipmentStatus,
    ShipmentView,
    StatusChange,
    UnavailableLine,
    order_id_from_workflow_id,
    order_workflow_id,
)
from tests.harness import random_ref, wait_for
from tests.integration.conftest import auth
from tests.integration.test_order_api import _status_is, order_body, submit
from tests.support import ADDRESS, new_sku, now

MUG, LAMP = (
    OrderLine(sku="MUG-WHT", quantity=2, unit_price=1299),
    OrderLine(sku="LAMP-BRS", quantity=3, unit_price=4900),
)


@workflow.defn(name=ORDER_WORKFLOW)
class StandInOrder:
    # The view from the start: an update may arrive in the workflow's first task, before run().
    @workflow.init
    def __init__(self, view: OrderView) -> None:
        self.view = view
        self._done = False

    @workflow.run
    async def run(self, view: OrderView) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.signal(name="finish")
    def finish(self) -> None:
        self._done = True

    def _moved(self, status: OrderStatus, note: str | None = None) -> OrderView:
        self.view.status, self.view.updated_at = status, workflow.now()
        self.view.history.append(StatusChange(status=status, at=self.view.updated_at, note=note))
        return self.view

    @workflow.update(name=UPDATE_AMEND)
    def amend(self, request: AmendRequest) -> OrderView:
        kept = {line.sku: line.quantity for line in request.lines}
        view = self.view
        view.items = [line.model_copy(update={"quantity": kept[line.sku]}) for line in view.items if line.sku in kept]
        view.total = sum(line.quantity * line.unit_price for line in view.items)
        view.unavailable, view.customer_deadline = [], None
        return self._moved(OrderStatus.STOCK_RESERVED, f"amended by {request.requested_by}")

    @amend.validator
    def _amend_allowed(self, request: AmendRequest) -> None:
        view = self.view
        if view.status != OrderStatus.AWAITING_CUSTOMER:
            raise ApplicationError(f"order is {view.status.value}, not awaiting the customer", type=ERR_INVALID_STATE)
        missing = {line.sku: line.quantity for line in view.unavailable}
        reserved = {line.sku: line.quantity - missing.get(line.sku, 0) for line in view.items}
        for line in request.lines:
            if line.sku not in reserved:
                raise ApplicationError(f"{line.sku} is not a line of this order", type=ERR_INVALID_AMEND)
            if line.quantity > reserved[line.sku]:
                raise ApplicationError(
                    f"{line.sku}: at most {reserved[line.sku]} unit(s) were reserved, {line.quantity} asked",
                    type=ERR_INVALID_AMEND,
                )

    @workflow.update(name=UPDATE_CANCEL)
    def cancel(self, request: CancelRequest) -> OrderView:
        if request.shipments is None:
            self.view.failure_reason = FailureReason.CANCELLED_BY_CUSTOMER
            return self._moved(OrderStatus.CANCELLED, request.reason)
        for shipment in self.view.shipments:
            if shipment.id in request.shipments:
                shipment.status = ShipmentStatus.CANCELLED
        return self.view

    @cancel.validator
    def _cancel_allowed(self, request: CancelRequest) -> None:
        shipments = {shipment.id: shipment for shipment in self.view.shipments}
        named = list(shipments) if request.shipments is None else request.shipments
        unknown = [name for name in named if name not in shipments]
        if unknown:
            raise ApplicationError(f"no such shipment: {', '.join(unknown)}", type=ERR_INVALID_CANCEL)
        left = [name for name in named if shipments[name].status != ShipmentStatus.PENDING]
        if left:
            raise ApplicationError(
                f"shipments already handed to the carrier cannot be cancelled: {', '.join(left)}",
                type=ERR_INVALID_STATE,
            )


@pytest.fixture
async def stand_in(temporal_client, engine):
    """``await stand_in(view)``: the view in the read model and its stand-in workflow running."""
    task_queue = f"stand-in-{uuid.uuid4().hex[:8]}"
    started = []

    async def start(view: OrderView) -> None:
        await OrderReadModel(engine).project(len(view.history), view)
        started.append(
            await temporal_client.start_workflow(
                StandInOrder.run, view, id=order_workflow_id(view.id), task_queue=task_queue
            )
        )

    async with Worker(
        temporal_client, task_queue=task_queue, workflows=[StandInOrder], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        yield start
        # Leave nothing behind for later tests in the session (an operator's fuzzing run lists every
        # order): each stand-in ends while its worker still runs, and its read-model row goes.
        for handle in started:
            await handle.signal(StandInOrder.finish)
            await handle.result()
    async with engine.begin() as conn:
        ids = [order_id_from_workflow_id(handle.id) for handle in started]
        await conn.execute(delete(order_events).where(order_events.c.order_id.in_(ids)))
        await conn.execute(delete(orders).where(orders.c.id.in_(ids)))


def waiting_view(customer: str) -> OrderView:
    t0 = now()
    view = OrderView.received(
        order_id=uuid.uuid4(),
        customer_id=customer,
        items=[MUG, LAMP],
        total=2 * 1299 + 3 * 4900,
        currency="EUR",
        shipping_address=ADDRESS,
        at=t0,
    )
    view.status = OrderStatus.AWAITING_CUSTOMER
    view.history.append(StatusChange(status=OrderStatus.AWAITING_CUSTOMER, at=t0))
    view.unavailable = [UnavailableLine(sku="LAMP-BRS", quantity=2)]
    view.customer_deadline = t0 + timedelta(days=1)
    return view


def amend(*items) -> dict:
    return {"items": [{"sku": sku, "quantity": quantity} for sku, quantity in items]}


async def test_amend_refusals_are_mapped_and_an_amend_counts_once(api, token, stand_in):
    customer = random_ref("amender").lower()
    bearer = auth(token(customer))
    view = waiting_view(customer)
    await stand_in(view)
    path = f"/v1/orders/{view.id}/amend"

    unknown = await api.post(path, json=amend(("DESK-OAK", 1)), headers=bearer)
    assert unknown.status_code == 422, unknown.text
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["type"].endswith("/invalid-amend")
    assert unknown.json()["detail"] == "DESK-OAK is not a line of this order"
    too_many = await api.post(path, json=amend(("LAMP-BRS", 3)), headers=bearer)
    assert too_many.status_code == 422
    assert too_many.json()["detail"] == "LAMP-BRS: at most 1 unit(s) were reserved, 3 asked"

    amended = await api.post(path, json=amend(("MUG-WHT", 2), ("LAMP-BRS", 1)), headers=bearer)
    assert amended.status_code == 200, amended.text
    body = amended.json()
    assert body["status"] == "stock_reserved" and body["total"] == 2 * 1299 + 4900
    assert [(i["sku"], i["quantity"]) for i in body["items"]] == [("MUG-WHT", 2), ("LAMP-BRS", 1)]
    assert body["history"][-1]["note"] == f"amended by {customer}"
    assert body["unavailable"] == [] and body["customer_deadline"] is None

    # A retry (same lines, in any order) is the same update: answered, not refused as not awaiting.
    again = await api.post(path, json=amend(("LAMP-BRS", 1), ("MUG-WHT", 2)), headers=bearer)
    assert again.status_code == 200, again.text
    assert again.json()["history"] == body["history"]
    # Another amend is a new request, which the order no longer takes.
    other = await api.post(path, json=amend(("MUG-WHT", 1)), headers=bearer)
    assert other.status_code == 409, other.text
    assert other.json()["detail"] == "order is stock_reserved, not awaiting the customer"

    # Another customer does not even see the order.
    stranger = await api.post(path, json=amend(("MUG-WHT", 1)), headers=auth(token(random_ref("stranger"))))
    assert stranger.status_code == 404


async def test_cancelling_named_shipments(api, token, stand_in):
    customer = random_ref("canceller").lower()
    bearer = auth(token(customer))
    view = waiting_view(customer)
    view.status, view.unavailable, view.customer_deadline = OrderStatus.SHIPPED, [], None
    view.shipments = [
        ShipmentView(
            id="s-main",
            warehouse_id="WH-MAIN",
            items=[MUG],
            amount=2598,
            status=ShipmentStatus.SHIPPED,
            tracking_number=random_ref("TRK"),
        ),
        ShipmentView(id="s-ber", warehouse_id="WH-BER", items=[LAMP], amount=14700),
    ]
    await stand_in(view)
    path = f"/v1/orders/{view.id}/cancel"

    whole = await api.post(path, json={"reason": "too slow"}, headers=bearer)
    assert whole.status_code == 409, whole.text
    assert whole.json()["detail"] == "shipments already handed to the carrier cannot be cancelled: s-main"
    left = await api.post(path, json={"shipments": ["s-main", "s-ber"]}, headers=bearer)
    assert left.status_code == 409 and "s-main" in left.json()["detail"]
    unknown = await api.post(path, json={"shipments": ["s-nope"]}, headers=bearer)
    assert unknown.status_code == 422 and unknown.json()["type"].endswith("/invalid-cancel")
    assert unknown.json()["detail"] == "no such shipment: s-nope"

    cancelled = await api.post(path, json={"shipments": ["s-ber", "s-ber"]}, headers=bearer)
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert [(s["id"], s["status"]) for s in body["shipments"]] == [("s-main", "shipped"), ("s-ber", "cancelled")]
    assert body["status"] == "shipped" and body["cancel_requested"] is False


async def test_amending_a_running_order_that_is_not_awaiting_the_customer_is_409(api, token, engine, workers):
    """The order workflow itself (whichever version the worker runs) refuses; nothing changes."""
    sku = await new_sku(engine, price=200_000, on_hand=3)  # over the review threshold: parks
    customer = token(random_ref("reviewed"))
    order = (await submit(api, customer, order_body(sku))).json()
    await wait_for(lambda: _status_is(api, customer, order["id"], "awaiting_review"), timeout=30, what="review")
    refused = await api.post(f"/v1/orders/{order['id']}/amend", json=amend((sku, 1)), headers=auth(customer))
    assert refused.status_code == 409, refused.text
    # Never the worker's internals (a workflow without the update lists the handlers it has).
    assert "handler" not in refused.json()["detail"]
    assert refused.headers["content-type"] == "application/problem+json"
    assert await _status_is(api, customer, order["id"], "awaiting_review")
    await api.post(f"/v1/orders/{order['id']}/cancel", json={}, headers=auth(customer))
