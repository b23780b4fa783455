"""Stock activities on real PostgreSQL with several warehouses: the rule applied, split orders
reserved, released and committed per warehouse, retries, and concurrent orders that never oversell."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select
from temporalio.exceptions import ApplicationError

from activities.stock import StockActivities
from core.db.tables import stock_reservations, warehouse_stock
from core.domain import ERR_OUT_OF_STOCK, OrderLine, StockAllocation, StockRelease, StockRequest
from tests.harness import random_ref
from tests.support import new_warehouses, stock_by_warehouse, stocked_sku


def request(*lines: tuple[str, int], allow_partial: bool = False) -> StockRequest:
    return StockRequest(
        order_id=uuid.uuid4(),
        lines=[OrderLine(sku=sku, quantity=q, unit_price=100) for sku, q in lines],
        allow_partial=allow_partial,
    )


def parts(allocation: StockAllocation) -> list[tuple[str, str, int]]:
    return [(line.warehouse_id, line.sku, line.quantity) for line in allocation.lines]


async def reservation_rows(engine, order_id: uuid.UUID) -> set[tuple[str, str, int, str]]:
    r = stock_reservations
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(r.c.warehouse_id, r.c.sku, r.c.quantity, r.c.state).where(r.c.order_id == order_id)
        )
        return {tuple(row) for row in rows}


async def test_an_order_split_over_two_warehouses_reserves_releases_and_commits_in_both(engine):
    first, second = await new_warehouses(engine, 2)
    mug = await stocked_sku(engine, {first: 5})
    lamp = await stocked_sku(engine, {second: 3})
    stock = StockActivities(engine)

    released = request((mug, 2), (lamp, 1))
    allocation = await stock.reserve_stock(released)
    assert parts(allocation) == [(first, mug, 2), (second, lamp, 1)] and allocation.complete
    assert allocation.warehouses == [first, second]
    assert await stock_by_warehouse(engine, mug) == {first: (5, 2)}
    assert await stock_by_warehouse(engine, lamp) == {second: (3, 1)}
    await stock.release_stock(StockRelease(order_id=released.order_id))
    assert await stock_by_warehouse(engine, mug) == {first: (5, 0)}
    assert await stock_by_warehouse(engine, lamp) == {second: (3, 0)}
    assert {state for *_, state in await reservation_rows(engine, released.order_id)} == {"released"}

    # Committed shipment by shipment: each warehouse's part alone, then nothing is left to settle.
    shipped = request((mug, 2), (lamp, 1))
    await stock.reserve_stock(shipped)
    await stock.commit_stock(StockRelease(order_id=shipped.order_id, warehouse_id=second))
    assert await stock_by_warehouse(engine, lamp) == {second: (2, 0)}
    assert await stock_by_warehouse(engine, mug) == {first: (5, 2)}
    await stock.commit_stock(StockRelease(order_id=shipped.order_id, warehouse_id=first))
    await stock.commit_stock(StockRelease(order_id=shipped.order_id))  # repeated: changes nothing
    await stock.release_stock(StockRelease(order_id=shipped.order_id))  # too late: changes nothing
    assert await stock_by_warehouse(engine, mug) == {first: (3, 0)}
    assert await stock_by_warehouse(engine, lamp) == {second: (2, 0)}
    assert await reservation_rows(engine, shipped.order_id) == {
        (first, mug, 2, "committed"),
        (second, lamp, 1, "committed"),
    }


async def test_one_warehouse_with_everything_wins_over_the_preferred_one(engine):
    preferred, other = await new_warehouses(engine, 2)
    mug = await stocked_sku(engine, {preferred: 10, other: 10})
    poster = await stocked_sku(engine, {other: 10})
    allocation = await StockActivities(engine).reserve_stock(request((mug, 2), (poster, 1)))
    assert sorted(parts(allocation)) == sorted([(other, mug, 2), (other, poster, 1)])
    # With a choice between equals, the preferred warehouse ships.
    allocation = await StockActivities(engine).reserve_stock(request((mug, 2)))
    assert parts(allocation) == [(preferred, mug, 2)]


async def test_a_line_no_single_warehouse_has_is_split(engine):
    preferred, other = await new_warehouses(engine, 2)
    lamp = await stocked_sku(engine, {preferred: 6, other: 4})
    allocation = await StockActivities(engine).reserve_stock(request((lamp, 8)))
    assert parts(allocation) == [(preferred, lamp, 6), (other, lamp, 2)]
    assert await stock_by_warehouse(engine, lamp) == {preferred: (6, 6), other: (4, 2)}


async def test_out_of_stock_reserves_nothing_anywhere(engine):
    first, second = await new_warehouses(engine, 2)
    lamp = await stocked_sku(engine, {first: 2, second: 2})
    mug = await stocked_sku(engine, {first: 9})
    order = request((lamp, 5), (mug, 1))
    with pytest.raises(ApplicationError) as raised:
        await StockActivities(engine).reserve_stock(order)
    assert raised.value.type == ERR_OUT_OF_STOCK and raised.value.non_retryable
    assert raised.value.details == ({"skus": [lamp]},)
    assert await stock_by_warehouse(engine, lamp) == {first: (2, 0), second: (2, 0)}
    assert await stock_by_warehouse(engine, mug) == {first: (9, 0)}
    assert await reservation_rows(engine, order.order_id) == set()


async def test_an_unknown_sku_is_out_of_stock(engine):
    with pytest.raises(ApplicationError) as raised:
        await StockActivities(engine).reserve_stock(request((random_ref("NOPE"), 1)))
    assert raised.value.type == ERR_OUT_OF_STOCK


async def test_partial_reservation_reports_what_is_missing_and_a_retry_returns_the_same(engine):
    first, second = await new_warehouses(engine, 2)
    lamp = await stocked_sku(engine, {first: 2, second: 2})
    mug = await stocked_sku(engine, {second: 9})
    order = request((lamp, 5), (mug, 1), allow_partial=True)
    stock = StockActivities(engine)
    allocation = await stock.reserve_stock(order)
    assert parts(allocation)[:1] == [(first, lamp, 2)]
    assert sorted(parts(allocation)[1:]) == sorted([(second, lamp, 2), (second, mug, 1)])
    assert [(line.sku, line.quantity) for line in allocation.unavailable] == [(lamp, 1)]
    # More stock arrives; the retry still answers with what the first attempt recorded.
    async with engine.begin() as conn:
        await conn.execute(
            warehouse_stock.update().where(warehouse_stock.c.sku == lamp).values(on_hand=warehouse_stock.c.on_hand + 5)
        )
    assert await stock.reserve_stock(order) == allocation
    assert await stock_by_warehouse(engine, lamp) == {first: (7, 2), second: (7, 2)}


async def test_a_retried_reservation_moves_the_counters_once(engine):
    first, second = await new_warehouses(engine, 2)
    lamp = await stocked_sku(engine, {first: 3, second: 3})
    order = request((lamp, 4))
    stock = StockActivities(engine)
    first_answer = await stock.reserve_stock(order)
    assert await stock.reserve_stock(order) == first_answer
    assert await stock_by_warehouse(engine, lamp) == {first: (3, 3), second: (3, 1)}
    # Two attempts at once (a retry racing the original): one wins, the other fails or returns it.
    racing = request((lamp, 2))
    outcomes = await asyncio.gather(*(stock.reserve_stock(racing) for _ in range(2)), return_exceptions=True)
    answers = [o for o in outcomes if isinstance(o, StockAllocation)]
    assert answers and all(a == answers[0] for a in answers)
    assert await stock.reserve_stock(racing) == answers[0]
    assert await stock_by_warehouse(engine, lamp) == {first: (3, 3), second: (3, 3)}


@pytest.mark.parametrize(("spread", "quantity", "orders", "succeed"), [((7, 5), 1, 30, 12), ((3, 3), 2, 10, 3)])
async def test_concurrent_orders_never_oversell_either_warehouse(engine, spread, quantity, orders, succeed):
    first, second = await new_warehouses(engine, 2)
    sku = await stocked_sku(engine, {first: spread[0], second: spread[1]})
    stock = StockActivities(engine)
    outcomes = await asyncio.gather(
        *(stock.reserve_stock(request((sku, quantity))) for _ in range(orders)), return_exceptions=True
    )
    won = [o for o in outcomes if isinstance(o, StockAllocation)]
    lost = [o for o in outcomes if not isinstance(o, StockAllocation)]
    assert len(won) == succeed
    assert all(isinstance(o, ApplicationError) and o.type == ERR_OUT_OF_STOCK for o in lost), lost
    # Exactly the available total went, never more from either warehouse.
    assert await stock_by_warehouse(engine, sku) == {first: (spread[0], spread[0]), second: (spread[1], spread[1])}
    assert sum(line.quantity for a in won for line in a.lines) == sum(spread)
