"""Migrations are reversible and match the table definitions exactly."""

from __future__ import annotations

import asyncio
import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from core.db.migrate import downgrade, upgrade
from core.db.tables import metadata
from tests.harness import create_database, drop_database


async def test_upgrade_downgrade_upgrade_leaves_no_drift(database):
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    await create_database(database.admin_dsn, name)
    url = f"postgresql+asyncpg://postgres@{database.host}:{database.port}/{name}"
    engine = create_async_engine(url)
    try:
        await asyncio.to_thread(upgrade, url)
        await asyncio.to_thread(downgrade, url, "base")
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        assert tables == ["alembic_version"]
        await asyncio.to_thread(upgrade, url)
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
        assert diff == []
    finally:
        await engine.dispose()
        await drop_database(database.admin_dsn, name)


async def test_stock_moves_into_the_default_warehouse_and_back(database):
    """0002 -> head with stock and reservations of an order in flight, then back again."""
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    await create_database(database.admin_dsn, name)
    url = f"postgresql+asyncpg://postgres@{database.host}:{database.port}/{name}"
    engine = create_async_engine(url)
    in_flight, shipped = uuid.uuid4(), uuid.uuid4()
    try:
        await asyncio.to_thread(upgrade, url, "0002")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO products (sku, name, unit_price, currency, created_at) VALUES "
                    "('MUG', 'mug', 100, 'EUR', now()), ('LAMP', 'lamp', 900, 'EUR', now())"
                )
            )
            await conn.execute(text("INSERT INTO stock (sku, on_hand, reserved) VALUES ('MUG', 10, 3), ('LAMP', 4, 0)"))
            await conn.execute(
                text(
                    "INSERT INTO stock_reservations (order_id, sku, quantity, state, created_at, updated_at) VALUES "
                    "(:a, 'MUG', 3, 'reserved', now(), now()), (:b, 'LAMP', 1, 'committed', now(), now())"
                ),
                {"a": in_flight, "b": shipped},
            )

        await asyncio.to_thread(upgrade, url)
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT id FROM warehouses"))).scalars().all() == ["WH-MAIN"]
            assert sorted(
                (await conn.execute(text("SELECT warehouse_id, sku, on_hand, reserved FROM warehouse_stock"))).all()
            ) == [("WH-MAIN", "LAMP", 4, 0), ("WH-MAIN", "MUG", 10, 3)]
            assert sorted(
                (await conn.execute(text("SELECT order_id, warehouse_id, sku, state FROM stock_reservations"))).all(),
                key=str,
            ) == sorted([(in_flight, "WH-MAIN", "MUG", "reserved"), (shipped, "WH-MAIN", "LAMP", "committed")], key=str)
            # The order in flight can still be released against the migrated counters.
            await conn.execute(
                text(
                    "UPDATE warehouse_stock SET reserved = reserved - 3 WHERE warehouse_id = 'WH-MAIN' AND sku = 'MUG'"
                )
            )
            await conn.execute(
                text("UPDATE stock_reservations SET state = 'released' WHERE order_id = :a"), {"a": in_flight}
            )
            # A second warehouse and an order split over both, which the downgrade must fold.
            await conn.execute(text("INSERT INTO warehouses (id, name, preference) VALUES ('WH-BER', 'Berlin', 20)"))
            await conn.execute(
                text(
                    "INSERT INTO warehouse_stock (warehouse_id, sku, on_hand, reserved) VALUES ('WH-BER', 'MUG', 5, 2)"
                )
            )
            await conn.execute(
                text("UPDATE warehouse_stock SET reserved = 4 WHERE warehouse_id = 'WH-MAIN' AND sku = 'MUG'")
            )
            split = uuid.uuid4()
            await conn.execute(
                text(
                    "INSERT INTO stock_reservations (order_id, warehouse_id, sku, quantity, state, created_at, updated_at)"
                    " VALUES (:o, 'WH-MAIN', 'MUG', 4, 'reserved', now(), now()),"
                    " (:o, 'WH-BER', 'MUG', 2, 'reserved', now(), now())"
                ),
                {"o": split},
            )

        await asyncio.to_thread(downgrade, url, "0002")
        async with engine.connect() as conn:
            assert sorted((await conn.execute(text("SELECT sku, on_hand, reserved FROM stock"))).all()) == [
                ("LAMP", 4, 0),
                ("MUG", 15, 6),
            ]
            rows = (await conn.execute(text("SELECT order_id, sku, quantity, state FROM stock_reservations"))).all()
            assert sorted(rows, key=str) == sorted(
                [(in_flight, "MUG", 3, "released"), (shipped, "LAMP", 1, "committed"), (split, "MUG", 6, "reserved")],
                key=str,
            )
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            assert "warehouses" not in tables and "warehouse_stock" not in tables
    finally:
        await engine.dispose()
        await drop_database(database.admin_dsn, name)


async def test_order_shipments_comes_and_goes_without_touching_orders(database):
    """0003 -> head: every tracking number of an order findable; back to 0003: orders intact."""
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    await create_database(database.admin_dsn, name)
    url = f"postgresql+asyncpg://postgres@{database.host}:{database.port}/{name}"
    engine = create_async_engine(url)
    order_id = uuid.uuid4()
    try:
        await asyncio.to_thread(upgrade, url, "0003")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO orders (id, customer_id, status, total, currency, tracking_number, view, seq,"
                    " created_at, updated_at) VALUES (:id, 'c', 'shipped', 100, 'EUR', 'TRK-1', '{}', 4, now(), now())"
                ),
                {"id": order_id},
            )
        await asyncio.to_thread(upgrade, url)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO order_shipments (tracking_number, order_id, shipment_id) VALUES"
                    " ('TRK-1', :id, 'WH-A'), ('TRK-2', :id, 'WH-B')"
                ),
                {"id": order_id},
            )
            found = await conn.execute(text("SELECT order_id FROM order_shipments WHERE tracking_number = 'TRK-2'"))
            assert found.scalar_one() == order_id
        await asyncio.to_thread(downgrade, url, "0003")
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            assert "order_shipments" not in tables
            assert (await conn.execute(text("SELECT tracking_number FROM orders"))).scalars().all() == ["TRK-1"]
        await asyncio.to_thread(upgrade, url)
        async with engine.begin() as conn:
            # Deleting an order takes its tracking numbers with it.
            await conn.execute(
                text("INSERT INTO order_shipments (tracking_number, order_id, shipment_id) VALUES ('TRK-3', :id, 'x')"),
                {"id": order_id},
            )
            await conn.execute(text("DELETE FROM orders WHERE id = :id"), {"id": order_id})
            assert (await conn.execute(text("SELECT count(*) FROM order_shipments"))).scalar_one() == 0
    finally:
        await engine.dispose()
        await drop_database(database.admin_dsn, name)
