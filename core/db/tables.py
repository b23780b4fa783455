"""Tables of the platform. Alembic migrations are generated from (and checked against) this metadata."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

# Conventional constraint names, so migrations can refer to them (also used by the sandbox's tables).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

products = Table(
    "products",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("unit_price > 0", name="unit_price_positive"),
)

# Default warehouse: where the migration put the single stock pool of before, and where
# `upsert_products` stocks new products unless told otherwise.
DEFAULT_WAREHOUSE = "WH-MAIN"

warehouses = Table(
    "warehouses",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    # Lower is preferred; unique so that the allocation rule never has to break a tie.
    Column("preference", Integer, nullable=False, unique=True),
)

warehouse_stock = Table(
    "warehouse_stock",
    metadata,
    Column("warehouse_id", String(32), ForeignKey("warehouses.id"), nullable=False),
    Column("sku", String(64), ForeignKey("products.sku"), nullable=False),
    Column("on_hand", Integer, nullable=False),
    Column("reserved", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("warehouse_id", "sku"),
    # The database itself refuses to oversell: these hold under any concurrency.
    CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
    CheckConstraint("reserved >= 0", name="reserved_not_negative"),
    CheckConstraint("reserved <= on_hand", name="reserved_within_on_hand"),
    # Reservation looks up every warehouse holding the order's SKUs.
    Index("ix_warehouse_stock_sku", "sku"),
)

# One row per (order, warehouse, sku); `state` moves reserved -> released | committed exactly once,
# which is what makes reserve/release/commit safe to run twice.
stock_reservations = Table(
    "stock_reservations",
    metadata,
    Column("order_id", Uuid, nullable=False),
    Column("warehouse_id", String(32), ForeignKey("warehouses.id"), nullable=False),
    Column("sku", String(64), ForeignKey("products.sku"), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("order_id", "warehouse_id", "sku"),
    CheckConstraint("quantity > 0", name="quantity_positive"),
    CheckConstraint("state IN ('reserved', 'released', 'committed')", name="state_known"),
)

# Read model of orders, projected by the workflow at every transition (monotonic by `seq`).
orders = Table(
    "orders",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("customer_id", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("failure_reason", String(64)),
    Column("total", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("tracking_number", String(64), unique=True),
    Column("view", JSONB, nullable=False),
    # Tracking-only carrier events (event -> occurred_at), written by the gateway, never by projections.
    Column("tracking", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("seq", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The region that accepted the order, where its workflow runs; '' before regions (docs/regions.md).
    # (id, region) is the replica identity, so a publication may filter on the region.
    Column("region", String(32), nullable=False, server_default=""),
    UniqueConstraint("id", "region"),
    Index("ix_orders_customer_created", "customer_id", "created_at", "id"),
    Index("ix_orders_status_created", "status", "created_at", "id"),
    Index("ix_orders_created", "created_at", "id"),
)

# Every tracking number of an order's shipments -> the order (carrier webhooks name a tracking number).
# Written by the projection whenever a view with shipments is projected; orders from before split
# shipments are found by `orders.tracking_number` only.
order_shipments = Table(
    "order_shipments",
    metadata,
    Column("tracking_number", String(64), primary_key=True),
    Column("order_id", Uuid, ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
    Column("shipment_id", String(128), nullable=False),
    Index("ix_order_shipments_order_id", "order_id"),
)

order_events = Table(
    "order_events",
    metadata,
    Column("order_id", Uuid, ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("note", Text),
    Column("at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("order_id", "seq"),
)

# Idempotency-Key records of the gateway, scoped to (caller, route, key).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("customer_id", String(255), nullable=False),
    Column("route", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("order_id", Uuid, nullable=False),
    Column("response_status", Integer),
    Column("response_body", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("customer_id", "route", "key"),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)

# The home-region directory (docs/regions.md): operator overrides of the default rule, one per customer.
customer_homes = Table(
    "customer_homes",
    metadata,
    Column("customer_id", String(255), primary_key=True),
    Column("region", String(32), nullable=False),
    Column("changed_by", String(255), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)

# A region lost for good: its customers' new orders go to `served_by` (`orders regions rehome`).
region_redirects = Table(
    "region_redirects",
    metadata,
    Column("region", String(32), primary_key=True),
    Column("served_by", String(32), nullable=False),
    Column("changed_by", String(255), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("region <> served_by", name="not_to_itself"),
)

# One row per region, stamped by its gateway and replicated: the age of a peer's row is the lag.
region_heartbeats = Table(
    "region_heartbeats",
    metadata,
    Column("region", String(32), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)
