"""reduce_reservation on real PostgreSQL: an amended order keeps only what the customer kept, the
surplus goes back from the least preferred warehouse first, and a retry changes nothing."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from activities.stock import StockActivities
from core.db.tables import stock_reservations
from core.domain import OrderLine, ReduceReservation, StockAllocation, StockRelease, StockRequest
from tests.support import new_warehouses, stock_by_warehouse, stocked_sku


def parts(allocation: StockAllocation) -> set[tuple[str, str, int]]:
    """The allocation's lines; their order (warehouse preference, then SKU) is checked through
    ``warehouses`` since the test SKUs' names are random."""
    return {(line.warehouse_id, line.sku, line.quantity) for line in allocation.lines}


async def rows_of(engine, order_id: uuid.UUID) -> set[tuple[str, str, int, str]]:
    r = stock_reservations
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(r.c.warehouse_id, r.c.sku, r.c.quantity, r.c.state).where(r.c.order_id == order_id)
        )
        return {tuple(row) for row in rows}


async def partly_reserved(engine):
    """An order for 6 mugs (4 in the first warehouse, 1 in the second: 1 missing) and 2 lamps."""
    first, second = await new_warehouses(engine, 2)
    mug = await stocked_sku(engine, {first: 4, second: 1})
    lamp = await stocked_sku(engine, {second: 2})
    stock = StockActivities(engine)
    order_id = uuid.uuid4()
    lines = [OrderLine(sku=mug, quantity=6, unit_price=100), OrderLine(sku=lamp, quantity=2, unit_price=500)]
    allocation = await stock.reserve_stock(StockRequest(order_id=order_id, lines=lines, allow_partial=True))
    assert parts(allocation) == {(first, mug, 4), (second, lamp, 2), (second, mug, 1)}
    return stock, order_id, first, second, mug, lamp


async def test_the_surplus_goes_back_from_the_least_preferred_warehouse_first(engine):
    stock, order_id, first, second, mug, lamp = await partly_reserved(engine)

    kept = await stock.reduce_reservation(ReduceReservation(order_id=order_id, keep={mug: 4, lamp: 1}))

    assert parts(kept) == {(first, mug, 4), (second, lamp, 1)} and kept.complete
    assert kept.warehouses == [first, second]
    assert await stock_by_warehouse(engine, mug) == {first: (4, 4), second: (1, 0)}
    assert await stock_by_warehouse(engine, lamp) == {second: (2, 1)}
    assert await rows_of(engine, order_id) == {
        (first, mug, 4, "reserved"),
        (second, mug, 1, "released"),
        (second, lamp, 1, "reserved"),
    }


async def test_a_retry_changes_nothing_and_the_rest_settles_per_warehouse(engine):
    stock, order_id, first, second, mug, lamp = await partly_reserved(engine)
    request = ReduceReservation(order_id=order_id, keep={mug: 3})  # lamps dropped, one mug less

    once = await stock.reduce_reservation(request)
    twice = await stock.reduce_reservation(request)

    assert parts(once) == parts(twice) == {(first, mug, 3)}
    assert await stock_by_warehouse(engine, mug) == {first: (4, 3), second: (1, 0)}
    assert await stock_by_warehouse(engine, lamp) == {second: (2, 0)}
    # Committing what is left deducts only the kept units.
    await stock.commit_stock(StockRelease(order_id=order_id, warehouse_id=first))
    assert await stock_by_warehouse(engine, mug) == {first: (1, 0), second: (1, 0)}
    assert await stock_by_warehouse(engine, lamp) == {second: (2, 0)}


async def test_keeping_everything_reserved_changes_nothing(engine):
    stock, order_id, first, second, mug, lamp = await partly_reserved(engine)

    kept = await stock.reduce_reservation(ReduceReservation(order_id=order_id, keep={mug: 5, lamp: 2}))

    assert parts(kept) == {(first, mug, 4), (second, lamp, 2), (second, mug, 1)}
    assert kept.warehouses == [first, second]
    assert await stock_by_warehouse(engine, mug) == {first: (4, 4), second: (1, 1)}
    await stock.release_stock(StockRelease(order_id=order_id))
    assert await stock_by_warehouse(engine, mug) == {first: (4, 0), second: (1, 0)}
    assert await stock_by_warehouse(engine, lamp) == {second: (2, 0)}
