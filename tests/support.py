"""Helpers shared by workflow and integration tests: catalogue set-up, order inputs, ledger reads."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.catalog import upsert_products
from core.db.tables import stock_reservations, warehouse_stock, warehouses
from core.domain import Address, OrderInput, OrderLine
from tests.harness import random_ref


def now() -> datetime:
    """The time to date read-model rows a test writes: a fixed date would count as a stuck order on
    the shared test database's /metrics once it is ORDERS_STUCK_ORDER_AFTER_S old
    (tests/integration/test_observability)."""
    return datetime.now(UTC).replace(microsecond=0)


ADDRESS = Address(name="Ada Lovelace", line1="Unter den Linden 1", city="Berlin", postal_code="10117", country="DE")


async def new_sku(engine: AsyncEngine, *, price: int = 1_000, on_hand: int = 100) -> str:
    sku = random_ref("SKU")
    await upsert_products(engine, [(sku, f"test product {sku}", price, on_hand)])
    return sku


async def new_warehouses(engine, count: int) -> list[str]:
    """Warehouses of this test, most preferred first (random preference bands: tests run side by side)."""
    base = random.randrange(1_000, 2**30, 1_000)
    ids = [random_ref("WH") for _ in range(count)]
    async with engine.begin() as conn:
        await conn.execute(
            insert(warehouses), [{"id": w, "name": f"test {w}", "preference": base + n} for n, w in enumerate(ids)]
        )
    return ids


async def stocked_sku(engine, spread: dict[str, int]) -> str:
    sku = random_ref("SKU")
    await upsert_products(engine, [(sku, f"test {sku}", 100, sum(spread.values()))], stock={sku: spread})
    return sku


def order_input(
    sku: str,
    *,
    quantity: int = 1,
    price: int = 1_000,
    token: str = "tok_ok",
    review_threshold: int = 10**9,
    address: Address = ADDRESS,
    review_timeout_s: float = 24 * 3600,
    delivery_deadline_s: float = 7 * 24 * 3600,
) -> OrderInput:
    return OrderInput(
        order_id=uuid.uuid4(),
        customer_id=random_ref("cust").lower(),
        lines=[OrderLine(sku=sku, quantity=quantity, unit_price=price)],
        currency="EUR",
        total=quantity * price,
        shipping_address=address,
        payment_token=token,
        created_at=datetime.now(UTC),
        review_threshold=review_threshold,
        review_timeout_s=review_timeout_s,
        delivery_deadline_s=delivery_deadline_s,
    )


async def stock_of(engine: AsyncEngine, sku: str) -> tuple[int, int]:
    """(on_hand, reserved) of ``sku`` summed over all warehouses."""
    ws = warehouse_stock
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(func.sum(ws.c.on_hand).label("on_hand"), func.sum(ws.c.reserved).label("reserved")).where(
                    ws.c.sku == sku
                )
            )
        ).one()
    return int(row.on_hand), int(row.reserved)


async def stock_by_warehouse(engine: AsyncEngine, sku: str) -> dict[str, tuple[int, int]]:
    """warehouse -> (on_hand, reserved) of ``sku``."""
    ws = warehouse_stock
    async with engine.connect() as conn:
        rows = (await conn.execute(select(ws.c.warehouse_id, ws.c.on_hand, ws.c.reserved).where(ws.c.sku == sku))).all()
    return {row.warehouse_id: (row.on_hand, row.reserved) for row in rows}


async def reservation_states(engine: AsyncEngine, order_id: uuid.UUID) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(stock_reservations.c.sku, stock_reservations.c.state).where(
                    stock_reservations.c.order_id == order_id
                )
            )
        ).all()
    return {sku: state for sku, state in rows}


async def ledger(sandbox_url: str, order_id: uuid.UUID | None = None) -> dict:
    params = {"order_id": str(order_id)} if order_id else None
    async with httpx.AsyncClient(base_url=sandbox_url, timeout=10) as http:
        response = await http.get("/payments/v1/ledger", params=params)
        response.raise_for_status()
        return response.json()
