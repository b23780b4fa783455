"""Bytes an order leaves behind in PostgreSQL: its read-model rows, and the tables on disk."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

#: The read model (core.db.read_model) and, apart, the other rows every order adds.
READ_MODEL_TABLES = ("orders", "order_events", "order_shipments")
OTHER_PER_ORDER_TABLES = ("idempotency_keys", "stock_reservations")


async def read_model_bytes(engine: AsyncEngine, order_ids: list[str]) -> dict[str, Any]:
    """Mean bytes per order of these orders' rows, by table: ``pg_column_size`` of each whole row
    (the row's values as stored: the JSONB view compressed when PostgreSQL compressed it; no tuple
    header, no page overhead, no index), summed over the order's rows in each table. Also the
    tables with their indexes and TOAST on disk (``pg_total_relation_size``) divided by every order
    in the database: what the design's capacity estimate multiplies, free space included."""
    ids = [uuid.UUID(i) for i in order_ids]
    if not ids:
        return {"orders": 0}
    rows: dict[str, float] = {}
    async with engine.connect() as conn:
        for table, key in (
            ("orders", "id"),
            ("order_events", "order_id"),
            ("order_shipments", "order_id"),
            ("idempotency_keys", "order_id"),
            ("stock_reservations", "order_id"),
        ):
            total = (
                await conn.execute(
                    text(f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table} AS t WHERE t.{key} = ANY(:ids)"),
                    {"ids": ids},
                )
            ).scalar_one()
            rows[table] = round(int(total) / len(ids), 1)
        everything = (await conn.execute(text("SELECT count(*) FROM orders"))).scalar_one()
        on_disk = {}
        for table in READ_MODEL_TABLES + OTHER_PER_ORDER_TABLES:
            size = (
                await conn.execute(text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": table})
            ).scalar_one()
            on_disk[table] = round(int(size) / max(1, int(everything)), 1)
    return {
        "orders": len(ids),
        "row_bytes_per_order": rows,
        "read_model_row_bytes_per_order": round(sum(rows[t] for t in READ_MODEL_TABLES), 1),
        "orders_in_database": int(everything),
        "on_disk_bytes_per_order": on_disk,
        "read_model_on_disk_bytes_per_order": round(sum(on_disk[t] for t in READ_MODEL_TABLES), 1),
    }
