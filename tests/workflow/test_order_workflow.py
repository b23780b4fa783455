"""The order workflow on the time-skipping server with real activities (PostgreSQL, sandbox over HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from core.db.read_model import OrderReadModel
from core.domain import (
    ORDER_WORKFLOW,
    QUERY_ORDER,
    SIGNAL_CARRIER_EVENT,
    UPDATE_CANCEL,
    UPDATE_REVIEW,
    UPDATE_SHIPPING_ADDRESS,
    Address,
    AddressChangeRequest,
    CancelRequest,
    CarrierEventKind,
    CarrierEventSignal,
    FailureReason,
    OrderInput,
    OrderStatus,
    OrderView,
    ReviewDecision,
    ReviewRequest,
    order_workflow_id,
)
from tests.harness import wait_for
from tests.support import ADDRESS, ledger, new_sku, order_input, reservation_states, stock_of


async def start(env, task_queue: str, order: OrderInput) -> WorkflowHandle:
    return await env.client.start_workflow(
        ORDER_WORKFLOW,
        order,
        id=order_workflow_id(order.order_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=OrderView,
    )


async def view_of(handle: WorkflowHandle) -> OrderView:
    return await handle.query(QUERY_ORDER, result_type=OrderView)


async def reach(handle: WorkflowHandle, status: OrderStatus, timeout: float = 30) -> OrderView:
    async def reached():
        view = await view_of(handle)
        return view if view.status == status else None

    return await wait_for(reached, timeout=timeout, what=f"status {status}")


async def deliver(handle: WorkflowHandle, view: OrderView, event=CarrierEventKind.DELIVERED) -> None:
    await handle.signal(
        SIGNAL_CARRIER_EVENT,
        CarrierEventSignal(tracking_number=view.tracking_number, event=event, occurred_at=datetime.now(UTC)),
    )


def statuses(view: OrderView) -> list[str]:
    return [change.status.value for change in view.history]


async def test_happy_path_completes_with_one_capture_and_stock_deducted(
    ts_env, run_workers, task_queue, engine, sandbox
):
    sku = await new_sku(engine, on_hand=5)
    order = order_input(sku, quantity=2, price=1_250)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        shipped = await reach(handle, OrderStatus.SHIPPED)
        assert shipped.tracking_number
        await deliver(handle, shipped)
        final = await handle.result()
    assert final.status == OrderStatus.COMPLETED and final.failure_reason is None
    assert statuses(final) == ["received", "stock_reserved", "payment_authorized", "shipped", "completed"]
    assert await stock_of(engine, sku) == (3, 0)
    assert await reservation_states(engine, order.order_id) == {sku: "committed"}
    payments = await ledger(sandbox, order.order_id)
    [authorization] = payments["authorizations"]
    assert authorization["status"] == "captured" and authorization["captured_amount"] == 2_500
    # The read model holds the same final state.
    projected = await OrderReadModel(engine).get(order.order_id)
    assert projected.status == OrderStatus.COMPLETED and statuses(projected) == statuses(final)


async def test_out_of_stock_is_rejected_and_reserves_nothing(ts_env, run_workers, task_queue, engine, sandbox):
    # None of it anywhere (with one unit it would be partly available: the customer decides).
    sku = await new_sku(engine, on_hand=0)
    order = order_input(sku, quantity=2)
    async with run_workers():
        final = await (await start(ts_env, task_queue, order)).result()
    assert (final.status, final.failure_reason) == (OrderStatus.REJECTED, FailureReason.OUT_OF_STOCK)
    assert await stock_of(engine, sku) == (0, 0)
    assert await reservation_states(engine, order.order_id) == {}
    assert (await ledger(sandbox, order.order_id))["authorizations"] == []


async def test_decline_is_rejected_and_stock_released(ts_env, run_workers, task_queue, engine, sandbox):
    sku = await new_sku(engine, on_hand=3)
    order = order_input(sku, token="tok_decline")
    async with run_workers():
        final = await (await start(ts_env, task_queue, order)).result()
    assert (final.status, final.failure_reason) == (OrderStatus.REJECTED, FailureReason.PAYMENT_DECLINED)
    assert await stock_of(engine, sku) == (3, 0)
    assert await reservation_states(engine, order.order_id) == {sku: "released"}
    assert all(a["status"] != "captured" for a in (await ledger(sandbox, order.order_id))["authorizations"])


@pytest.mark.parametrize("token", ["tok_flaky", "tok_slow"])
async def test_transient_provider_failures_recover_with_exactly_one_charge(
    ts_env, run_workers, task_queue, engine, sandbox, token
):
    sku = await new_sku(engine)
    order = order_input(sku, token=token, price=700)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        shipped = await reach(handle, OrderStatus.SHIPPED, timeout=60)
        await deliver(handle, shipped)
        final = await handle.result()
    assert final.status == OrderStatus.COMPLETED
    payments = await ledger(sandbox, order.order_id)
    assert len(payments["authorizations"]) == 1
    captures = [m for m in payments["money_movements"] if m["kind"] == "capture"]
    assert [m["amount"] for m in captures] == [700]


async def test_review_approve_then_completes(ts_env, run_workers, task_queue, engine):
    sku = await new_sku(engine, price=300_000)
    order = order_input(sku, price=300_000, review_threshold=100_000)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        reviewed = await handle.execute_update(
            UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.APPROVE, reviewer="op"), result_type=OrderView
        )
        assert reviewed.review.decision == ReviewDecision.APPROVE
        shipped = await reach(handle, OrderStatus.SHIPPED)
        await deliver(handle, shipped)
        final = await handle.result()
    assert final.status == OrderStatus.COMPLETED
    assert "awaiting_review" in statuses(final)


async def test_review_reject_releases_stock(ts_env, run_workers, task_queue, engine):
    sku = await new_sku(engine, price=300_000, on_hand=2)
    order = order_input(sku, price=300_000, review_threshold=100_000)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        await handle.execute_update(
            UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.REJECT, note="fraud", reviewer="op")
        )
        final = await handle.result()
    assert (final.status, final.failure_reason) == (OrderStatus.REJECTED, FailureReason.REVIEW_REJECTED)
    assert await stock_of(engine, sku) == (2, 0)


async def test_review_timeout_cancels_and_releases_stock(ts_env, run_workers, task_queue, engine):
    sku = await new_sku(engine, price=300_000, on_hand=2)
    order = order_input(sku, price=300_000, review_threshold=100_000)  # 24 h review timeout
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        final = await handle.result()  # time skipping: the 24 hours pass at once
    assert (final.status, final.failure_reason) == (OrderStatus.CANCELLED, FailureReason.REVIEW_TIMEOUT)
    assert await stock_of(engine, sku) == (2, 0)


async def test_review_is_refused_when_not_awaiting_review(ts_env, run_workers, task_queue, engine):
    sku = await new_sku(engine)
    order = order_input(sku)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        await reach(handle, OrderStatus.SHIPPED)
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.APPROVE, reviewer="op"))


async def test_cancel_while_awaiting_review(ts_env, run_workers, task_queue, engine, sandbox):
    sku = await new_sku(engine, price=300_000, on_hand=2)
    order = order_input(sku, price=300_000, review_threshold=100_000)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        cancelled = await handle.execute_update(
            UPDATE_CANCEL, CancelRequest(reason="changed my mind"), result_type=OrderView
        )
    assert (cancelled.status, cancelled.failure_reason) == (OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER)
    assert await stock_of(engine, sku) == (2, 0)
    assert (await ledger(sandbox, order.order_id))["authorizations"] == []


@pytest.mark.parametrize(
    ("parked_in", "running", "late"),
    [
        # The step after the parked status has no worker yet: cancel arrives mid-step. An order no
        # longer parks in `received`: its stock is reserved by a local activity of the order's own
        # worker, in its first workflow task (order-lean-history).
        (OrderStatus.STOCK_RESERVED, ("orchestration",), ("inventory", "payments", "shipping")),
        (OrderStatus.PAYMENT_AUTHORIZED, ("orchestration", "payments"), ("inventory", "shipping")),
    ],
)
async def test_cancel_in_each_state_before_shipping_compensates(
    ts_env, run_workers, task_queue, engine, sandbox, parked_in, running, late
):
    sku = await new_sku(engine, on_hand=4)
    order = order_input(sku, quantity=2)
    async with run_workers(*running):
        handle = await start(ts_env, task_queue, order)
        await reach(handle, parked_in)
        update = await handle.start_update(
            UPDATE_CANCEL, CancelRequest(reason="too slow"), wait_for_stage=2, result_type=OrderView
        )
        # The in-flight step finishes once its worker appears; then the compensations run.
        async with run_workers(*late):
            final = await update.result()
    assert (final.status, final.failure_reason) == (OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER)
    assert await stock_of(engine, sku) == (4, 0)
    assert set((await reservation_states(engine, order.order_id)).values()) <= {"released"}
    for authorization in (await ledger(sandbox, order.order_id))["authorizations"]:
        assert authorization["status"] == "voided"
    assert final.tracking_number is None or parked_in == OrderStatus.PAYMENT_AUTHORIZED


async def test_cancel_refused_after_shipping(ts_env, run_workers, task_queue, engine):
    sku = await new_sku(engine)
    async with run_workers():
        handle = await start(ts_env, task_queue, order_input(sku))
        shipped = await reach(handle, OrderStatus.SHIPPED)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(UPDATE_CANCEL, CancelRequest())
        assert "can no longer be cancelled" in str(refused.value.cause)
        await deliver(handle, shipped)
        assert (await handle.result()).status == OrderStatus.COMPLETED


async def test_address_change_before_shipping_is_used_for_the_shipment(
    ts_env, run_workers, task_queue, engine, sandbox_http
):
    sku = await new_sku(engine, price=300_000)
    order = order_input(sku, price=300_000, review_threshold=100_000)
    new_address = Address(name="Grace Hopper", line1="1 Navy Way", city="Arlington", postal_code="22201", country="US")
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        changed = await handle.execute_update(
            UPDATE_SHIPPING_ADDRESS, AddressChangeRequest(shipping_address=new_address), result_type=OrderView
        )
        assert changed.shipping_address == new_address
        await handle.execute_update(UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.APPROVE, reviewer="op"))
        shipped = await reach(handle, OrderStatus.SHIPPED)
        shipment = (await sandbox_http.get(f"/carrier/v1/shipments/{shipped.tracking_number}")).json()
        assert shipment["shipping_address"]["name"] == "Grace Hopper"
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(UPDATE_SHIPPING_ADDRESS, AddressChangeRequest(shipping_address=ADDRESS))
        await deliver(handle, shipped)
        await handle.result()


async def test_a_delivery_reported_before_the_workflow_knows_its_shipment_still_counts(
    ts_env, run_workers, task_queue, engine, sandbox_http
):
    """Seen in the long chaos run: a worker stalled after the shipment was created, the gateway
    signalled `delivered`, and the next worker handled that signal before the shipment's result.
    The old code dropped the event and the order waited for its delivery deadline."""
    from core.domain import provider_key

    sku = await new_sku(engine, on_hand=1)
    order = order_input(sku)
    async with run_workers("orchestration", "inventory", "payments"):  # nobody creates the shipment yet
        handle = await start(ts_env, task_queue, order)
        [shipment] = (await reach(handle, OrderStatus.PAYMENT_AUTHORIZED)).shipments
        # The carrier has the parcel (the same idempotent request the activity will make)...
        created = await sandbox_http.post(
            "/carrier/v1/shipments",
            json={
                "order_id": str(order.order_id),
                "shipping_address": order.shipping_address.model_dump(mode="json"),
                "items": [{"sku": line.sku, "quantity": line.quantity} for line in order.lines],
            },
            headers={"Idempotency-Key": provider_key(order.order_id, f"ship-{shipment.warehouse_id}")},
        )
        assert created.status_code == 201, created.text
        tracking = created.json()["tracking_number"]
        # ...and reports it delivered while the workflow still waits for the shipment's result.
        await handle.signal(
            SIGNAL_CARRIER_EVENT,
            CarrierEventSignal(
                tracking_number=tracking, event=CarrierEventKind.DELIVERED, occurred_at=datetime.now(UTC)
            ),
        )
        assert (await view_of(handle)).tracking_number is None
        async with run_workers("shipping"):
            final = await handle.result()  # time skips: had the event been dropped, the deadline would fail it
    assert final.status == OrderStatus.COMPLETED, (final.status, final.failure_reason)
    assert final.tracking_number == tracking and [e.event for e in final.carrier_events] == [CarrierEventKind.DELIVERED]


async def test_lost_parcel_is_refunded(ts_env, run_workers, task_queue, engine, sandbox):
    sku = await new_sku(engine, on_hand=3)
    order = order_input(sku, price=990)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        shipped = await reach(handle, OrderStatus.SHIPPED)
        await deliver(handle, shipped, CarrierEventKind.LOST)
        final = await handle.result()
    assert (final.status, final.failure_reason) == (OrderStatus.FAILED, FailureReason.LOST_IN_TRANSIT)
    [authorization] = (await ledger(sandbox, order.order_id))["authorizations"]
    assert authorization["captured_amount"] == 990 and authorization["refunded_amount"] == 990
    assert await stock_of(engine, sku) == (2, 0)  # the goods left the warehouse


async def test_no_delivery_by_the_deadline_is_refunded(ts_env, run_workers, task_queue, engine, sandbox):
    sku = await new_sku(engine)
    order = order_input(sku, price=500, delivery_deadline_s=3 * 24 * 3600)
    async with run_workers():
        final = await (await start(ts_env, task_queue, order)).result()  # the deadline passes at once
    assert (final.status, final.failure_reason) == (OrderStatus.FAILED, FailureReason.LOST_IN_TRANSIT)
    [authorization] = (await ledger(sandbox, order.order_id))["authorizations"]
    assert authorization["refunded_amount"] == 500


async def test_carrier_down_fails_the_order_after_compensation(ts_env, run_workers, task_queue, engine, sandbox):
    sku = await new_sku(engine, on_hand=2)
    unreachable = ADDRESS.model_copy(update={"postal_code": "99999"})  # the sandbox carrier always answers 503
    order = order_input(sku, address=unreachable)
    async with run_workers():
        final = await (await start(ts_env, task_queue, order)).result()
    assert (final.status, final.failure_reason) == (OrderStatus.FAILED, FailureReason.CARRIER_UNAVAILABLE)
    assert await stock_of(engine, sku) == (2, 0)
    [authorization] = (await ledger(sandbox, order.order_id))["authorizations"]
    assert authorization["status"] == "voided"


async def test_duplicate_start_attaches_to_the_running_order(ts_env, run_workers, task_queue, engine):
    sku = await new_sku(engine, price=300_000)
    order = order_input(sku, price=300_000, review_threshold=100_000)
    async with run_workers():
        first = await start(ts_env, task_queue, order)
        await reach(first, OrderStatus.AWAITING_REVIEW)
        second = await start(ts_env, task_queue, order)
        assert second.result_run_id == first.result_run_id
        await first.execute_update(UPDATE_CANCEL, CancelRequest())
        await first.result()
