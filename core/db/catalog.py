"""Catalogue reads and the demo seed."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.tables import products, stock


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    unit_price: int
    currency: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


# sku, name, unit price (minor units), on hand. One scarce SKU, one that triggers review.
DEMO_CATALOG: list[tuple[str, str, int, int]] = [
    ("TSHIRT-BLK-M", "T-shirt, black, M", 1_999, 10_000),
    ("MUG-WHT", "Mug, white", 1_250, 10_000),
    ("SOCKS-3PK", "Socks, pack of 3", 899, 10_000),
    ("POSTER-A2", "Poster, A2", 1_500, 10_000),
    ("LAMP-LTD", "Limited edition lamp (scarce)", 8_900, 10),
    ("WATCH-GOLD", "Gold watch (expensive, needs review)", 250_000, 100),
]
DEMO_CURRENCY = "EUR"


class Catalog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list(self) -> list[Product]:
        query = (
            select(products, stock.c.on_hand, stock.c.reserved)
            .join(stock, stock.c.sku == products.c.sku)
            .order_by(products.c.sku)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [Product(r["sku"], r["name"], r["unit_price"], r["currency"], r["on_hand"], r["reserved"]) for r in rows]

    async def prices(self, skus: builtins.list[str]) -> dict[str, tuple[int, str]]:
        """Unit price and currency of each known SKU among ``skus``."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(products.c.sku, products.c.unit_price, products.c.currency).where(products.c.sku.in_(skus))
                )
            ).all()
        return {sku: (price, currency) for sku, price, currency in rows}


async def upsert_products(
    engine: AsyncEngine, items: list[tuple[str, str, int, int]], currency: str = DEMO_CURRENCY
) -> None:
    """Create products that do not exist yet with their initial stock; existing ones are left alone."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(products)
            .values(
                [
                    {"sku": s, "name": n, "unit_price": p, "currency": currency, "created_at": now}
                    for s, n, p, _ in items
                ]
            )
            .on_conflict_do_nothing()
        )
        await conn.execute(
            insert(stock)
            .values([{"sku": s, "on_hand": q, "reserved": 0} for s, _, _, q in items])
            .on_conflict_do_nothing()
        )


async def seed_demo_catalog(engine: AsyncEngine) -> None:
    await upsert_products(engine, DEMO_CATALOG)
