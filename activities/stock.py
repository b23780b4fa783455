"""Stock reservations in PostgreSQL.

Every method is idempotent: the reservation rows of an order (one per SKU) carry a state that moves
``reserved -> released`` or ``reserved -> committed`` once, and the stock counters only move together
with such a state change in the same transaction. Overselling is impossible by construction: the
conditional UPDATE only reserves what is available and the table's CHECK constraints back it up.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import and_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from core.db.tables import stock, stock_reservations
from core.domain import ERR_OUT_OF_STOCK, StockRelease, StockRequest


class StockActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @activity.defn(name="reserve_stock")
    async def reserve_stock(self, request: StockRequest) -> None:
        """Reserve every line of the order at once, or nothing (raises non-retryable OutOfStock)."""
        now = datetime.now(UTC)
        wanted: dict[str, int] = {}
        for line in request.lines:
            wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
        async with self._engine.begin() as conn:
            existing = (
                await conn.execute(
                    select(stock_reservations.c.sku).where(stock_reservations.c.order_id == request.order_id)
                )
            ).all()
            if existing:
                return  # a previous attempt already reserved (or settled) this order
            missing: list[str] = []
            # Sorted SKU order: concurrent orders lock stock rows in the same order, so no deadlocks.
            for sku in sorted(wanted):
                result = await conn.execute(
                    update(stock)
                    .where(and_(stock.c.sku == sku, stock.c.on_hand - stock.c.reserved >= wanted[sku]))
                    .values(reserved=stock.c.reserved + wanted[sku])
                )
                if result.rowcount != 1:
                    missing.append(sku)
            if missing:
                await conn.rollback()
                raise ApplicationError(
                    f"not enough stock for {', '.join(missing)}",
                    {"skus": missing},
                    type=ERR_OUT_OF_STOCK,
                    non_retryable=True,
                    category=ApplicationErrorCategory.BENIGN,  # a business answer, not an incident
                )
            # A concurrent attempt of the same order makes this INSERT fail on the primary key; the
            # whole transaction (stock counters included) rolls back and the retry sees the rows.
            await conn.execute(
                insert(stock_reservations),
                [
                    {
                        "order_id": request.order_id,
                        "sku": sku,
                        "quantity": quantity,
                        "state": "reserved",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for sku, quantity in sorted(wanted.items())
                ],
            )

    @activity.defn(name="release_stock")
    async def release_stock(self, request: StockRelease) -> None:
        """Give back whatever this order still holds reserved. Safe to call when nothing is reserved."""
        await self._settle(request, new_state="released", deduct_on_hand=False)

    @activity.defn(name="commit_stock")
    async def commit_stock(self, request: StockRelease) -> None:
        """Turn the order's reservations into a deduction of on_hand (the goods left the warehouse)."""
        await self._settle(request, new_state="committed", deduct_on_hand=True)

    async def _settle(self, request: StockRelease, *, new_state: str, deduct_on_hand: bool) -> None:
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            settled = (
                await conn.execute(
                    update(stock_reservations)
                    .where(
                        and_(
                            stock_reservations.c.order_id == request.order_id,
                            stock_reservations.c.state == "reserved",
                        )
                    )
                    .values(state=new_state, updated_at=now)
                    .returning(stock_reservations.c.sku, stock_reservations.c.quantity)
                )
            ).all()
            for sku, quantity in sorted(settled):
                values = {"reserved": stock.c.reserved - quantity}
                if deduct_on_hand:
                    values["on_hand"] = stock.c.on_hand - quantity
                await conn.execute(update(stock).where(stock.c.sku == sku).values(**values))
