"""The invariant checker over a realistic mix of orders, and proof that it catches violations."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select, update

from bench.invariants import InvariantChecker
from core.db.engine import create_engine
from core.db.read_model import order_row
from core.db.tables import DEFAULT_WAREHOUSE, orders, stock_reservations, warehouse_stock
from core.domain import OrderStatus, OrderView
from sandbox.tables import money_movements
from tests.harness import random_ref, wait_for
from tests.integration.test_order_api import final_state, order_body, submit
from tests.support import new_sku, new_warehouses, stock_by_warehouse, stocked_sku


async def test_a_mixed_run_keeps_every_invariant(api, token, engine, workers, temporal_client, it_settings):
    plenty = await new_sku(engine, price=1_000, on_hand=50)
    scarce = await new_sku(engine, price=500, on_hand=2)
    customer = token(random_ref("mix"))
    bodies = (
        [order_body(plenty, 2) for _ in range(4)]
        + [order_body(plenty, 1, token="tok_decline"), order_body(plenty, 1, token="tok_flaky")]
        + [order_body(plenty, 1, postal_code="99998")]  # lost parcel: refunded
        + [order_body(scarce, 1) for _ in range(4)]  # two of them run out of stock
    )
    key = uuid.uuid4().hex
    duplicate = await submit(api, customer, bodies[0], key=key)
    replay = await submit(api, customer, bodies[0], key=key)
    assert replay.json()["id"] == duplicate.json()["id"] and replay.headers["Idempotent-Replayed"] == "true"
    responses = [duplicate] + list(await asyncio.gather(*(submit(api, customer, body) for body in bodies[1:])))
    ids = [r.json()["id"] for r in responses]
    finals = [await final_state(api, customer, order_id) for order_id in ids]
    outcomes = sorted((f["status"], f["failure_reason"]) for f in finals)
    assert outcomes.count(("completed", None)) == 7
    assert ("rejected", "payment_declined") in outcomes and ("failed", "lost_in_transit") in outcomes
    assert outcomes.count(("rejected", "out_of_stock")) == 2

    checker = InvariantChecker(engine, temporal_client, it_settings.payment_base_url)
    report = await checker.check([uuid.UUID(i) for i in ids], initial_stock={plenty: 50, scarce: 2})
    assert report.ok, report.table()


async def test_the_checker_catches_a_leaked_reservation_and_a_lost_order(
    api, token, engine, workers, temporal_client, it_settings
):
    sku = await new_sku(engine, on_hand=5)
    customer = token(random_ref("leak"))
    order_id = (await submit(api, customer, order_body(sku, token="tok_decline"))).json()["id"]
    assert (await final_state(api, customer, order_id))["status"] == "rejected"
    checker = InvariantChecker(engine, temporal_client, it_settings.payment_base_url)
    assert (await checker.check([uuid.UUID(order_id)], initial_stock={sku: 5})).ok

    # Violate invariants 3 and 4: a rejected order that still holds stock.
    leaked = uuid.UUID(order_id)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            update(stock_reservations)
            .where(stock_reservations.c.order_id == leaked)
            .values(state="reserved", updated_at=now)
        )
        await conn.execute(_in_default(sku).values(reserved=warehouse_stock.c.reserved + 1))
    report = await checker.check([leaked], initial_stock={sku: 5})
    failed = {check.name[0] for check in report.checks if not check.ok}
    assert failed == {"4"} and "still holds" in report.table()
    report = await checker.check([leaked], initial_stock={sku: 4})
    assert {check.name[0] for check in report.checks if not check.ok} == {"3", "4"}

    # Invariant 1: an order row whose workflow never started.
    ghost = uuid.uuid4()
    async with engine.connect() as conn:
        stored = (await conn.execute(select(orders.c.view).where(orders.c.id == leaked))).scalar_one()
    view = OrderView.model_validate(stored).model_copy(
        update={"id": ghost, "status": OrderStatus.RECEIVED, "failure_reason": None}
    )
    async with engine.begin() as conn:
        await conn.execute(insert(orders).values(**order_row(view, 1)))
    try:
        report = await checker.check([ghost])
        assert not report.checks[0].ok and "no workflow" in report.checks[0].problems[0]
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                update(stock_reservations).where(stock_reservations.c.order_id == leaked).values(state="released")
            )
            await conn.execute(_in_default(sku).values(reserved=warehouse_stock.c.reserved - 1))
            await conn.execute(delete(orders).where(orders.c.id == ghost))
    await wait_for(lambda: _ok(checker, leaked, sku), timeout=5, what="invariants restored")


async def _ok(checker, order_id, sku):
    return (await checker.check([order_id], initial_stock={sku: 5})).ok


def _in_default(sku: str):
    return update(warehouse_stock).where(
        warehouse_stock.c.warehouse_id == DEFAULT_WAREHOUSE, warehouse_stock.c.sku == sku
    )


async def test_an_order_split_over_two_warehouses_ships_from_both_and_balances_per_warehouse(
    api, token, engine, workers, temporal_client, it_settings
):
    first, second = await new_warehouses(engine, 2)
    sku = await stocked_sku(engine, {first: 2, second: 1})
    customer = token(random_ref("split"))
    order_id = (await submit(api, customer, order_body(sku, 3))).json()["id"]
    assert (await final_state(api, customer, order_id))["status"] == "completed"
    assert await stock_by_warehouse(engine, sku) == {first: (0, 0), second: (0, 0)}

    checker = InvariantChecker(engine, temporal_client, it_settings.payment_base_url)
    initial = {(first, sku): 2, (second, sku): 1}
    report = await checker.check([uuid.UUID(order_id)], initial_stock={sku: 3}, initial_warehouse_stock=initial)
    assert report.ok, report.table()
    # The total balances, but one warehouse's does not: only the per-warehouse check sees it.
    report = await checker.check(
        [uuid.UUID(order_id)], initial_stock={sku: 3}, initial_warehouse_stock={(first, sku): 3, (second, sku): 0}
    )
    assert [check.name[0] for check in report.checks if not check.ok] == ["3"]
    assert f"{sku}@{first}" in report.table()


async def test_split_orders_balance_per_shipment_and_a_forged_capture_or_missing_refund_is_caught(
    api, token, engine, workers, temporal_client, it_settings
):
    first, second = await new_warehouses(engine, 2)
    delivered_sku = await stocked_sku(engine, {first: 1, second: 1})
    lost_sku = await stocked_sku(engine, {first: 1, second: 1})
    customer = token(random_ref("splitmoney"))
    delivered = (await submit(api, customer, order_body(delivered_sku, 2))).json()["id"]
    lost = (await submit(api, customer, order_body(lost_sku, 2, postal_code="99998"))).json()["id"]
    assert (await final_state(api, customer, delivered))["status"] == "completed"
    final = await final_state(api, customer, lost)
    assert (final["status"], final["failure_reason"]) == ("failed", "lost_in_transit")
    ids = [uuid.UUID(delivered), uuid.UUID(lost)]
    checker = InvariantChecker(engine, temporal_client, it_settings.payment_base_url)
    report = await checker.check(ids)
    assert report.ok, report.table()

    sandbox_engine = create_engine(it_settings, url=it_settings.effective_sandbox_database_url)
    mm = money_movements
    try:
        async with sandbox_engine.connect() as conn:
            moves = (
                await conn.execute(select(mm).where(mm.c.idempotency_key.like(f"order-{delivered}-capture-%")))
            ).all()
            refund = (await conn.execute(select(mm).where(mm.c.idempotency_key == f"order-{lost}-refund-S2"))).one()
        assert len(moves) == 2  # one capture per shipment

        # A capture beyond the shipments: the net no longer equals what was delivered.
        forged = {**moves[0]._asdict(), "idempotency_key": f"order-{delivered}-capture-S3"}
        forged.pop("id", None)
        forged.pop("created_at", None)
        async with sandbox_engine.begin() as conn:
            await conn.execute(insert(mm).values(**forged))
        try:
            report = await checker.check(ids)
            assert [check.name[0] for check in report.checks if not check.ok] == ["2"]
            assert f"order {delivered} (completed)" in report.table() and "unknown shipment S3" in report.table()
        finally:
            async with sandbox_engine.begin() as conn:
                await conn.execute(delete(mm).where(mm.c.idempotency_key == forged["idempotency_key"]))

        # A lost shipment never refunded: the customer paid for a parcel that never arrived.
        async with sandbox_engine.begin() as conn:
            await conn.execute(delete(mm).where(mm.c.idempotency_key == refund.idempotency_key))
        try:
            report = await checker.check(ids)
            assert [check.name[0] for check in report.checks if not check.ok] == ["2"]
            assert f"order {lost} (failed): provider net {refund.amount}, expected 0" in report.table()
        finally:
            restored = refund._asdict()
            restored.pop("id", None)
            async with sandbox_engine.begin() as conn:
                await conn.execute(insert(mm).values(**restored))
        assert (await checker.check(ids)).ok
    finally:
        await sandbox_engine.dispose()
