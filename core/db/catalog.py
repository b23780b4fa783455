"""Catalogue reads and the demo seed (products and their stock per warehouse)."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.engine import single_statement
from core.db.tables import DEFAULT_WAREHOUSE, products, warehouse_stock, warehouses


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    unit_price: int
    currency: str
    on_hand: int  # over all warehouses
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


# sku, name, unit price (minor units), on hand in total. One scarce SKU, one that triggers review.
DEMO_CATALOG: list[tuple[str, str, int, int]] = [
    ("TSHIRT-BLK-M", "T-shirt, black, M", 1_999, 10_000),
    ("MUG-WHT", "Mug, white", 1_250, 10_000),
    ("SOCKS-3PK", "Socks, pack of 3", 899, 10_000),
    ("POSTER-A2", "Poster, A2", 1_500, 10_000),
    ("LAMP-LTD", "Limited edition lamp (scarce)", 8_900, 10),
    ("WATCH-GOLD", "Gold watch (expensive, needs review)", 250_000, 100),
]
# id, name, preference (lower is preferred).
DEMO_WAREHOUSES: list[tuple[str, str, int]] = [
    (DEFAULT_WAREHOUSE, "Main warehouse", 10),
    ("WH-BER", "Berlin", 20),
    ("WH-HAM", "Hamburg", 30),
]
# How each demo SKU's total is spread, with overlaps, so that the rule has choices to make:
# MUG-WHT + POSTER-A2 ship together from WH-HAM alone (fewest shipments beats preference),
# TSHIRT-BLK-M + SOCKS-3PK from WH-BER, 8 lamps only split over WH-MAIN and WH-HAM.
DEMO_STOCK: dict[str, dict[str, int]] = {
    "TSHIRT-BLK-M": {DEFAULT_WAREHOUSE: 6_000, "WH-BER": 4_000},
    "MUG-WHT": {DEFAULT_WAREHOUSE: 5_000, "WH-BER": 3_000, "WH-HAM": 2_000},
    "SOCKS-3PK": {"WH-BER": 6_000, "WH-HAM": 4_000},
    "POSTER-A2": {"WH-HAM": 10_000},
    "LAMP-LTD": {DEFAULT_WAREHOUSE: 6, "WH-HAM": 4},
    "WATCH-GOLD": {DEFAULT_WAREHOUSE: 100},
}
DEMO_CURRENCY = "EUR"


class Catalog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list(self) -> list[Product]:
        """Every stocked product with its stock summed over all warehouses."""
        totals = (
            select(
                warehouse_stock.c.sku,
                func.sum(warehouse_stock.c.on_hand).label("on_hand"),
                func.sum(warehouse_stock.c.reserved).label("reserved"),
            )
            .group_by(warehouse_stock.c.sku)
            .subquery()
        )
        query = (
            select(products, totals.c.on_hand, totals.c.reserved)
            .join(totals, totals.c.sku == products.c.sku)
            .order_by(products.c.sku)
        )
        async with single_statement(self._engine) as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            Product(r["sku"], r["name"], r["unit_price"], r["currency"], int(r["on_hand"]), int(r["reserved"]))
            for r in rows
        ]

    async def prices(self, skus: builtins.list[str]) -> dict[str, tuple[int, str]]:
        """Unit price and currency of each known SKU among ``skus``."""
        async with single_statement(self._engine) as conn:
            rows = (
                await conn.execute(
                    select(products.c.sku, products.c.unit_price, products.c.currency).where(products.c.sku.in_(skus))
                )
            ).all()
        return {sku: (price, currency) for sku, price, currency in rows}


async def upsert_products(
    engine: AsyncEngine,
    items: list[tuple[str, str, int, int]],
    currency: str = DEMO_CURRENCY,
    *,
    stock: dict[str, dict[str, int]] | None = None,
) -> None:
    """Create products that do not exist yet with their initial stock; existing ones (and their
    stock) are left alone. A product's stock goes to the default warehouse (created by the
    migrations), or is spread as ``stock[sku]`` (warehouse -> on hand) says; those warehouses must
    exist."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        created = set(
            (
                await conn.execute(
                    insert(products)
                    .values(
                        [
                            {"sku": s, "name": n, "unit_price": p, "currency": currency, "created_at": now}
                            for s, n, p, _ in items
                        ]
                    )
                    .on_conflict_do_nothing()
                    .returning(products.c.sku)
                )
            ).scalars()
        )
        rows = [
            {"warehouse_id": warehouse_id, "sku": sku, "on_hand": on_hand, "reserved": 0}
            for sku, _, _, total in items
            if sku in created
            for warehouse_id, on_hand in sorted(((stock or {}).get(sku) or {DEFAULT_WAREHOUSE: total}).items())
        ]
        if rows:
            await conn.execute(insert(warehouse_stock).values(rows).on_conflict_do_nothing())


async def seed_demo_catalog(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(warehouses)
            .values([{"id": i, "name": n, "preference": p} for i, n, p in DEMO_WAREHOUSES])
            .on_conflict_do_nothing()
        )
    await upsert_products(engine, DEMO_CATALOG, stock=DEMO_STOCK)
