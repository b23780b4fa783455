"""Multi-warehouse orders on the time-skipping server with the real activities: PostgreSQL stock per
warehouse and the sandbox providers over HTTP (multicapture, partial refunds, per-parcel events)."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio.client import WorkflowHandle, WorkflowUpdateStage

from core.domain import (
    SIGNAL_CARRIER_EVENT,
    UPDATE_AMEND,
    UPDATE_CANCEL,
    UPDATE_REVIEW,
    AmendLine,
    AmendRequest,
    CancelRequest,
    CarrierEventKind,
    CarrierEventSignal,
    FailureReason,
    OrderInput,
    OrderLine,
    OrderStatus,
    OrderView,
    ReviewDecision,
    ReviewRequest,
    ShipmentStatus,
)
from tests.harness import wait_for
from tests.support import ledger, new_warehouses, order_input, reservation_states, stock_by_warehouse, stocked_sku
from tests.workflow.test_order_workflow import reach, start, view_of


def two_skus(mug: str, lamp: str, *, mugs: int = 2, **overrides) -> OrderInput:
    """``mugs`` mugs at 1 250 and one lamp at 4 000."""
    order = order_input(mug, quantity=mugs, price=1_250, **overrides)
    lines = [*order.lines, OrderLine(sku=lamp, quantity=1, unit_price=4_000)]
    return order.model_copy(update={"lines": lines, "total": mugs * 1_250 + 4_000})


async def event(handle: WorkflowHandle, tracking: str | None, kind: CarrierEventKind) -> None:
    assert tracking is not None
    await handle.signal(
        SIGNAL_CARRIER_EVENT, CarrierEventSignal(tracking_number=tracking, event=kind, occurred_at=datetime.now(UTC))
    )


async def all_shipped(handle: WorkflowHandle) -> OrderView:
    """The order once every shipment that will leave has its tracking number."""

    async def shipped() -> OrderView | None:
        view = await view_of(handle)
        pending = [s for s in view.shipments if s.status == ShipmentStatus.PENDING]
        return view if view.status == OrderStatus.SHIPPED and not pending else None

    return await wait_for(shipped, timeout=30, what="every shipment shipped")


def money(payments: dict) -> tuple[list[int], list[int]]:
    moves = payments["money_movements"]
    return [m["amount"] for m in moves if m["kind"] == "capture"], [m["amount"] for m in moves if m["kind"] == "refund"]


async def test_an_order_split_over_two_warehouses_is_captured_and_deducted_per_shipment(
    ts_env, run_workers, task_queue, engine, sandbox
):
    first, second = await new_warehouses(engine, 2)
    mug, lamp = await stocked_sku(engine, {first: 5}), await stocked_sku(engine, {second: 3})
    order = two_skus(mug, lamp)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        shipped = await all_shipped(handle)
        assert [(s.warehouse_id, s.amount) for s in shipped.shipments] == [(first, 2_500), (second, 4_000)]
        assert shipped.tracking_number == shipped.shipments[0].tracking_number
        assert shipped.shipments[0].tracking_number != shipped.shipments[1].tracking_number
        for shipment in shipped.shipments:
            await event(handle, shipment.tracking_number, CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert (final.status, final.failure_reason) == (OrderStatus.COMPLETED, None)
    assert await stock_by_warehouse(engine, mug) == {first: (3, 0)}
    assert await stock_by_warehouse(engine, lamp) == {second: (2, 0)}
    payments = await ledger(sandbox, order.order_id)
    [authorization] = payments["authorizations"]
    assert (authorization["status"], authorization["captured_amount"]) == ("captured", 6_500)
    assert money(payments) == ([2_500, 4_000], [])


async def test_a_partly_available_order_amended_keeps_and_charges_only_what_is_kept(
    ts_env, run_workers, task_queue, engine, sandbox
):
    first, second = await new_warehouses(engine, 2)
    mug, lamp = await stocked_sku(engine, {first: 1}), await stocked_sku(engine, {second: 2})
    order = two_skus(mug, lamp, mugs=3)  # two mugs missing
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        waiting = await reach(handle, OrderStatus.AWAITING_CUSTOMER)
        assert [(u.sku, u.quantity) for u in waiting.unavailable] == [(mug, 2)]
        assert await stock_by_warehouse(engine, mug) == {first: (1, 1)}
        amended = await handle.execute_update(
            UPDATE_AMEND, AmendRequest(lines=[AmendLine(sku=lamp, quantity=1)]), result_type=OrderView
        )
        assert amended.total == 4_000 and [line.sku for line in amended.items] == [lamp]
        shipped = await all_shipped(handle)
        await event(handle, shipped.tracking_number, CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert (final.status, final.total) == (OrderStatus.COMPLETED, 4_000)
    assert [(s.warehouse_id, s.amount) for s in final.shipments] == [(second, 4_000)]
    assert await stock_by_warehouse(engine, mug) == {first: (1, 0)}  # the dropped mug went back
    assert await stock_by_warehouse(engine, lamp) == {second: (1, 0)}
    payments = await ledger(sandbox, order.order_id)
    assert [a["amount"] for a in payments["authorizations"]] == [4_000]
    assert money(payments) == ([4_000], [])


async def test_a_partly_available_order_without_an_answer_is_cancelled_and_releases_everything(
    ts_env, run_workers, task_queue, engine, sandbox
):
    first, second = await new_warehouses(engine, 2)
    mug, lamp = await stocked_sku(engine, {first: 1, second: 1}), await stocked_sku(engine, {second: 1})
    order = two_skus(mug, lamp, mugs=3)
    async with run_workers():
        final = await (await start(ts_env, task_queue, order)).result()  # the 24 hours pass at once
    assert (final.status, final.failure_reason) == (OrderStatus.CANCELLED, FailureReason.CUSTOMER_TIMEOUT)
    assert await stock_by_warehouse(engine, mug) == {first: (1, 0), second: (1, 0)}
    assert await stock_by_warehouse(engine, lamp) == {second: (1, 0)}
    assert set((await reservation_states(engine, order.order_id)).values()) == {"released"}
    assert (await ledger(sandbox, order.order_id))["authorizations"] == []


async def test_one_of_two_shipments_lost_is_refunded_for_its_part_only(
    ts_env, run_workers, task_queue, engine, sandbox
):
    first, second = await new_warehouses(engine, 2)
    mug, lamp = await stocked_sku(engine, {first: 5}), await stocked_sku(engine, {second: 3})
    order = two_skus(mug, lamp)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        shipped = await all_shipped(handle)
        await event(handle, shipped.shipments[1].tracking_number, CarrierEventKind.LOST)
        await event(handle, shipped.shipments[0].tracking_number, CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert (final.status, final.failure_reason) == (OrderStatus.COMPLETED, None)
    assert [(r.amount, r.shipment_id) for r in final.refunds] == [(4_000, "S2")]
    payments = await ledger(sandbox, order.order_id)
    assert money(payments) == ([2_500, 4_000], [4_000])  # captures - refunds = what was delivered
    assert await stock_by_warehouse(engine, lamp) == {second: (2, 0)}  # the lost lamp left all the same


async def test_a_cancel_naming_a_pending_shipment_releases_its_stock_and_never_charges_it(
    ts_env, run_workers, task_queue, engine, sandbox
):
    first, second = await new_warehouses(engine, 2)
    mug, lamp = await stocked_sku(engine, {first: 5}), await stocked_sku(engine, {second: 3})
    order = two_skus(mug, lamp, review_threshold=1_000)
    async with run_workers():
        handle = await start(ts_env, task_queue, order)
        await reach(handle, OrderStatus.AWAITING_REVIEW)
        cancel = await handle.start_update(
            UPDATE_CANCEL,
            CancelRequest(reason="no lamp after all", shipments=["S2"]),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=OrderView,
        )
        await handle.execute_update(UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.APPROVE, reviewer="op"))
        answered = await cancel.result()
        assert [s.status for s in answered.shipments][1] == ShipmentStatus.CANCELLED
        shipped = await all_shipped(handle)
        await event(handle, shipped.tracking_number, CarrierEventKind.DELIVERED)
        final = await handle.result()
    assert (final.status, [s.status for s in final.shipments]) == (
        OrderStatus.COMPLETED,
        [ShipmentStatus.DELIVERED, ShipmentStatus.CANCELLED],
    )
    assert await stock_by_warehouse(engine, lamp) == {second: (3, 0)}
    assert await stock_by_warehouse(engine, mug) == {first: (3, 0)}
    payments = await ledger(sandbox, order.order_id)
    [authorization] = payments["authorizations"]
    # Authorized for the whole order; only the mug's part captured, the rest released.
    assert (authorization["amount"], authorization["status"], authorization["captured_amount"]) == (
        6_500,
        "captured",
        2_500,
    )
    assert money(payments) == ([2_500], [])


async def test_a_cancel_racing_the_first_shipment_undoes_everything(ts_env, run_workers, task_queue, engine, sandbox):
    """The cancel arrives while the first parcel is being created (no shipping worker has taken the
    task yet): it wins, the parcel made meanwhile is cancelled at the carrier, nothing is charged."""
    first, second = await new_warehouses(engine, 2)
    mug, lamp = await stocked_sku(engine, {first: 5}), await stocked_sku(engine, {second: 3})
    order = two_skus(mug, lamp)
    async with run_workers("orchestration", "inventory", "payments"):
        handle = await start(ts_env, task_queue, order)
        await reach(handle, OrderStatus.PAYMENT_AUTHORIZED)
        cancel = await handle.start_update(
            UPDATE_CANCEL,
            CancelRequest(reason="changed my mind"),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=OrderView,
        )
        async with run_workers("shipping"):  # now the shipment is created, then undone
            answered = await cancel.result()
            final = await handle.result()
    assert (final.status, final.failure_reason) == (OrderStatus.CANCELLED, FailureReason.CANCELLED_BY_CUSTOMER)
    assert answered.status == OrderStatus.CANCELLED
    assert money(await ledger(sandbox, order.order_id)) == ([], [])
    assert await stock_by_warehouse(engine, mug) == {first: (5, 0)}
    assert await stock_by_warehouse(engine, lamp) == {second: (3, 0)}
