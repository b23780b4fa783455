"""Stock reservations in PostgreSQL, per warehouse.

Every method is idempotent: the reservation rows of an order (one per warehouse and SKU) carry a
state that moves ``reserved -> released`` or ``reserved -> committed`` once, and the stock counters
only move together with such a state change in the same transaction. Overselling is impossible by
construction: the rows a plan is made from are locked while it is applied, every UPDATE is
conditional on what is available, and the table's CHECK constraints back both up.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import and_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from core.db.tables import stock_reservations, warehouse_stock, warehouses
from core.domain import (
    ERR_OUT_OF_STOCK,
    AllocationLine,
    ReduceReservation,
    StockAllocation,
    StockRelease,
    StockRequest,
    UnavailableLine,
    allocate,
)


class StockActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @activity.defn(name="reserve_stock")
    async def reserve_stock(self, request: StockRequest) -> StockAllocation:
        """Reserve the order's lines in the warehouses the allocation rule picks
        (core.domain.allocation) and return where each unit is held.

        Without ``allow_partial`` it is all or nothing: when any unit is missing nothing is reserved
        and a non-retryable OutOfStock is raised. With it, what is available is reserved and the
        rest comes back in ``unavailable``. A retry returns the allocation the first attempt recorded.
        """
        now = datetime.now(UTC)
        wanted: dict[str, int] = defaultdict(int)
        for line in request.lines:
            wanted[line.sku] += line.quantity
        async with self._engine.begin() as conn:
            recorded = await _recorded_allocation(conn, request, wanted)
            if recorded is not None:
                return recorded  # a previous attempt already reserved (or settled) this order
            # Every candidate row locked in one consistent order (warehouse, sku): concurrent orders
            # never deadlock, and nobody changes what the plan is made from until we commit.
            rows = (
                await conn.execute(
                    select(
                        warehouse_stock.c.warehouse_id,
                        warehouse_stock.c.sku,
                        (warehouse_stock.c.on_hand - warehouse_stock.c.reserved).label("available"),
                        warehouses.c.preference,
                    )
                    .join(warehouses, warehouses.c.id == warehouse_stock.c.warehouse_id)
                    .where(warehouse_stock.c.sku.in_(sorted(wanted)))
                    .order_by(warehouse_stock.c.warehouse_id, warehouse_stock.c.sku)
                    .with_for_update(of=warehouse_stock)
                )
            ).all()
            preference = sorted({(row.preference, row.warehouse_id) for row in rows})
            plan = allocate(
                wanted,
                {(row.warehouse_id, row.sku): row.available for row in rows},
                [warehouse_id for _, warehouse_id in preference],
            )
            if plan.unavailable and not request.allow_partial:
                missing = [line.sku for line in plan.unavailable]
                raise ApplicationError(
                    f"not enough stock for {', '.join(missing)}",
                    {"skus": missing},
                    type=ERR_OUT_OF_STOCK,
                    non_retryable=True,
                    category=ApplicationErrorCategory.BENIGN,  # a business answer, not an incident
                )
            for part in sorted(plan.lines, key=lambda part: (part.warehouse_id, part.sku)):
                result = await conn.execute(
                    update(warehouse_stock)
                    .where(
                        and_(
                            warehouse_stock.c.warehouse_id == part.warehouse_id,
                            warehouse_stock.c.sku == part.sku,
                            warehouse_stock.c.on_hand - warehouse_stock.c.reserved >= part.quantity,
                        )
                    )
                    .values(reserved=warehouse_stock.c.reserved + part.quantity)
                )
                if result.rowcount != 1:
                    # Cannot happen while the rows are locked; if it does, roll back and let the
                    # retry plan again rather than reserve part of a plan.
                    raise RuntimeError(f"stock of {part.sku} in {part.warehouse_id} changed under its lock")
            if plan.lines:
                # A concurrent attempt of the same order makes this INSERT fail on the primary key;
                # the whole transaction (stock counters included) rolls back and the retry sees the rows.
                await conn.execute(
                    insert(stock_reservations),
                    [
                        {
                            "order_id": request.order_id,
                            "warehouse_id": part.warehouse_id,
                            "sku": part.sku,
                            "quantity": part.quantity,
                            "state": "reserved",
                            "created_at": now,
                            "updated_at": now,
                        }
                        for part in plan.lines
                    ],
                )
            return plan

    @activity.defn(name="release_stock")
    async def release_stock(self, request: StockRelease) -> None:
        """Give back whatever this order (or its part in ``warehouse_id``) still holds reserved.
        Safe to call when nothing is reserved."""
        await self._settle(request, new_state="released", deduct_on_hand=False)

    @activity.defn(name="commit_stock")
    async def commit_stock(self, request: StockRelease) -> None:
        """Turn the order's reservations (or its part in ``warehouse_id``) into a deduction of
        on_hand: the goods left the warehouse."""
        await self._settle(request, new_state="committed", deduct_on_hand=True)

    @activity.defn(name="reduce_reservation")
    async def reduce_reservation(self, request: ReduceReservation) -> StockAllocation:
        """Cut the order's reservation down to ``keep`` (what the customer kept when amending) and
        return what stays reserved, in the rule's order.

        Surplus units go back from the least preferred warehouse first, so what stays is what the
        preferred warehouses hold and the order keeps as few shipments as it can. Idempotent: a
        retry finds nothing above ``keep`` and changes nothing.
        """
        now = datetime.now(UTC)
        r = stock_reservations
        async with self._engine.begin() as conn:
            # Locked in (warehouse, sku) order, like every other writer of these rows.
            rows = (
                await conn.execute(
                    select(r.c.warehouse_id, r.c.sku, r.c.quantity, warehouses.c.preference)
                    .join(warehouses, warehouses.c.id == r.c.warehouse_id)
                    .where(and_(r.c.order_id == request.order_id, r.c.state == "reserved"))
                    .order_by(r.c.warehouse_id, r.c.sku)
                    .with_for_update(of=r)
                )
            ).all()
            held: dict[str, int] = defaultdict(int)
            for row in rows:
                held[row.sku] += row.quantity
            surplus = {sku: quantity - request.keep.get(sku, 0) for sku, quantity in held.items()}
            giving_back: list[tuple[str, str, int, int]] = []  # (warehouse, sku, released, left)
            for row in sorted(rows, key=lambda row: (-row.preference, row.sku)):
                take = min(row.quantity, max(surplus[row.sku], 0))
                if take:
                    surplus[row.sku] -= take
                    giving_back.append((row.warehouse_id, row.sku, take, row.quantity - take))
            for warehouse_id, sku, released, left in sorted(giving_back):
                mine = and_(r.c.order_id == request.order_id, r.c.warehouse_id == warehouse_id, r.c.sku == sku)
                # A row given back whole keeps its quantity and says released, as release_stock leaves it.
                values = {"quantity": left} if left else {"state": "released"}
                await conn.execute(update(r).where(mine).values(**values, updated_at=now))
                await conn.execute(
                    update(warehouse_stock)
                    .where(and_(warehouse_stock.c.warehouse_id == warehouse_id, warehouse_stock.c.sku == sku))
                    .values(reserved=warehouse_stock.c.reserved - released)
                )
            kept = (
                await conn.execute(
                    select(r.c.warehouse_id, r.c.sku, r.c.quantity)
                    .join(warehouses, warehouses.c.id == r.c.warehouse_id)
                    .where(and_(r.c.order_id == request.order_id, r.c.state == "reserved"))
                    .order_by(warehouses.c.preference, r.c.sku)
                )
            ).all()
        return StockAllocation(
            lines=[AllocationLine(warehouse_id=row.warehouse_id, sku=row.sku, quantity=row.quantity) for row in kept]
        )

    async def _settle(self, request: StockRelease, *, new_state: str, deduct_on_hand: bool) -> None:
        async with self._engine.begin() as conn:
            await settle_stock(conn, request, new_state=new_state, deduct_on_hand=deduct_on_hand)


async def commit_stock_in(conn: AsyncConnection, request: StockRelease) -> None:
    """:meth:`StockActivities.commit_stock` inside the caller's transaction (the projection of
    `shipped` commits the shipment's stock with it)."""
    await settle_stock(conn, request, new_state="committed", deduct_on_hand=True)


async def settle_stock(conn: AsyncConnection, request: StockRelease, *, new_state: str, deduct_on_hand: bool) -> None:
    now = datetime.now(UTC)
    conditions = [stock_reservations.c.order_id == request.order_id, stock_reservations.c.state == "reserved"]
    if request.warehouse_id is not None:
        conditions.append(stock_reservations.c.warehouse_id == request.warehouse_id)
    settled = (
        await conn.execute(
            update(stock_reservations)
            .where(and_(*conditions))
            .values(state=new_state, updated_at=now)
            .returning(stock_reservations.c.warehouse_id, stock_reservations.c.sku, stock_reservations.c.quantity)
        )
    ).all()
    # Same (warehouse, sku) order as reserve_stock's locks: no deadlock between the two.
    for warehouse_id, sku, quantity in sorted(settled):
        values = {"reserved": warehouse_stock.c.reserved - quantity}
        if deduct_on_hand:
            values["on_hand"] = warehouse_stock.c.on_hand - quantity
        await conn.execute(
            update(warehouse_stock)
            .where(and_(warehouse_stock.c.warehouse_id == warehouse_id, warehouse_stock.c.sku == sku))
            .values(**values)
        )


async def _recorded_allocation(
    conn: AsyncConnection, request: StockRequest, wanted: dict[str, int]
) -> StockAllocation | None:
    """The allocation an earlier attempt recorded, in the rule's order, or None when there is none."""
    rows = (
        await conn.execute(
            select(stock_reservations.c.warehouse_id, stock_reservations.c.sku, stock_reservations.c.quantity)
            .join(warehouses, warehouses.c.id == stock_reservations.c.warehouse_id)
            .where(stock_reservations.c.order_id == request.order_id)
            .order_by(warehouses.c.preference, stock_reservations.c.sku)
        )
    ).all()
    if not rows:
        return None
    held: dict[str, int] = defaultdict(int)
    for row in rows:
        held[row.sku] += row.quantity
    return StockAllocation(
        lines=[AllocationLine(warehouse_id=row.warehouse_id, sku=row.sku, quantity=row.quantity) for row in rows],
        unavailable=[
            UnavailableLine(sku=sku, quantity=wanted[sku] - held[sku])
            for sku in sorted(wanted)
            if wanted[sku] > held[sku]
        ],
    )
