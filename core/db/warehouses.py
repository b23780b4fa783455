"""Warehouses and their stock, as operators see and change them (the gateway's only way in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.tables import products, warehouse_stock, warehouses
from core.domain import StockBelowReserved, UnknownStockLocation


@dataclass(frozen=True)
class StockLevel:
    sku: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True)
class Warehouse:
    id: str
    name: str
    preference: int
    stock: list[StockLevel] = field(default_factory=list)


class Warehouses:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list(self) -> list[Warehouse]:
        """Every warehouse, most preferred first, with its stock by SKU."""
        async with self._engine.connect() as conn:
            houses = (await conn.execute(select(warehouses).order_by(warehouses.c.preference))).all()
            levels = (
                await conn.execute(
                    select(warehouse_stock).order_by(warehouse_stock.c.warehouse_id, warehouse_stock.c.sku)
                )
            ).all()
        by_house: dict[str, list[StockLevel]] = {house.id: [] for house in houses}
        for level in levels:
            by_house[level.warehouse_id].append(StockLevel(level.sku, level.on_hand, level.reserved))
        return [Warehouse(house.id, house.name, house.preference, by_house[house.id]) for house in houses]

    async def set_on_hand(self, warehouse_id: str, sku: str, on_hand: int) -> StockLevel:
        """Set what ``warehouse_id`` has of ``sku`` (stocking it there if it was not). Raises
        UnknownStockLocation for an unknown warehouse or SKU and StockBelowReserved when orders hold
        more than ``on_hand`` reserved there; the stock is unchanged then."""
        async with self._engine.begin() as conn:
            if (await conn.execute(select(warehouses.c.id).where(warehouses.c.id == warehouse_id))).first() is None:
                raise UnknownStockLocation("warehouse", warehouse_id)
            if (await conn.execute(select(products.c.sku).where(products.c.sku == sku))).first() is None:
                raise UnknownStockLocation("SKU", sku)
            statement = insert(warehouse_stock).values(warehouse_id=warehouse_id, sku=sku, on_hand=on_hand, reserved=0)
            # Conditional on the row as it is once locked: a reservation committed meanwhile counts.
            row = (
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[warehouse_stock.c.warehouse_id, warehouse_stock.c.sku],
                        set_={"on_hand": statement.excluded.on_hand},
                        where=warehouse_stock.c.reserved <= statement.excluded.on_hand,
                    ).returning(warehouse_stock.c.on_hand, warehouse_stock.c.reserved)
                )
            ).first()
            if row is None:
                reserved = (
                    await conn.execute(
                        select(warehouse_stock.c.reserved).where(
                            and_(warehouse_stock.c.warehouse_id == warehouse_id, warehouse_stock.c.sku == sku)
                        )
                    )
                ).scalar_one()
                raise StockBelowReserved(warehouse_id, sku, on_hand, reserved)
        return StockLevel(sku, row.on_hand, row.reserved)
