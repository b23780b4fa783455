"""Stock per warehouse: ``warehouses``, ``warehouse_stock`` and a warehouse on every reservation.

The single stock pool of before becomes the default warehouse ``WH-MAIN``: every ``stock`` row
moves into ``warehouse_stock`` for it, and reservations of orders in flight are backfilled with it,
so releasing or committing them after the upgrade settles the same counters. The downgrade sums
each SKU's stock over all warehouses back into ``stock`` and folds reservations of one
(order, sku) held in several warehouses into one row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DEFAULT_WAREHOUSE = "WH-MAIN"


def upgrade() -> None:
    op.create_table(
        "warehouses",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("preference", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_warehouses")),
        sa.UniqueConstraint("preference", name=op.f("uq_warehouses_preference")),
    )
    op.execute(
        sa.text("INSERT INTO warehouses (id, name, preference) VALUES (:id, 'Main warehouse', 10)").bindparams(
            id=DEFAULT_WAREHOUSE
        )
    )
    op.create_table(
        "warehouse_stock",
        sa.Column("warehouse_id", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint("on_hand >= 0", name=op.f("ck_warehouse_stock_on_hand_not_negative")),
        sa.CheckConstraint("reserved <= on_hand", name=op.f("ck_warehouse_stock_reserved_within_on_hand")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_warehouse_stock_reserved_not_negative")),
        sa.ForeignKeyConstraint(["sku"], ["products.sku"], name=op.f("fk_warehouse_stock_sku_products")),
        sa.ForeignKeyConstraint(
            ["warehouse_id"], ["warehouses.id"], name=op.f("fk_warehouse_stock_warehouse_id_warehouses")
        ),
        sa.PrimaryKeyConstraint("warehouse_id", "sku", name=op.f("pk_warehouse_stock")),
    )
    op.create_index("ix_warehouse_stock_sku", "warehouse_stock", ["sku"], unique=False)
    op.execute(
        sa.text(
            "INSERT INTO warehouse_stock (warehouse_id, sku, on_hand, reserved) "
            "SELECT :id, sku, on_hand, reserved FROM stock"
        ).bindparams(id=DEFAULT_WAREHOUSE)
    )
    op.drop_table("stock")

    op.add_column("stock_reservations", sa.Column("warehouse_id", sa.String(length=32), nullable=True))
    op.execute(sa.text("UPDATE stock_reservations SET warehouse_id = :id").bindparams(id=DEFAULT_WAREHOUSE))
    op.alter_column("stock_reservations", "warehouse_id", nullable=False)
    op.create_foreign_key(
        op.f("fk_stock_reservations_warehouse_id_warehouses"),
        "stock_reservations",
        "warehouses",
        ["warehouse_id"],
        ["id"],
    )
    op.drop_constraint("pk_stock_reservations", "stock_reservations", type_="primary")
    op.create_primary_key("pk_stock_reservations", "stock_reservations", ["order_id", "warehouse_id", "sku"])


def downgrade() -> None:
    op.create_table(
        "stock",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint("on_hand >= 0", name=op.f("ck_stock_on_hand_not_negative")),
        sa.CheckConstraint("reserved <= on_hand", name=op.f("ck_stock_reserved_within_on_hand")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_stock_reserved_not_negative")),
        sa.ForeignKeyConstraint(["sku"], ["products.sku"], name=op.f("fk_stock_sku_products")),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_stock")),
    )
    op.execute(
        "INSERT INTO stock (sku, on_hand, reserved) "
        "SELECT sku, SUM(on_hand), SUM(reserved) FROM warehouse_stock GROUP BY sku"
    )

    # One row per (order, sku) again. A split line's parts share their state unless one shipment
    # of it was settled alone; then the open part wins (its units stay held, and releasable) and the
    # row keeps that part's quantity, so `stock.reserved` still equals the open reservations.
    op.execute(
        """
        CREATE TEMPORARY TABLE folded_reservations AS
        WITH folded AS (
            SELECT order_id, sku,
                   CASE WHEN bool_or(state = 'reserved') THEN 'reserved'
                        WHEN bool_or(state = 'committed') THEN 'committed'
                        ELSE 'released' END AS state,
                   MIN(created_at) AS created_at, MAX(updated_at) AS updated_at
            FROM stock_reservations GROUP BY order_id, sku
        )
        SELECT f.order_id, f.sku, f.state, SUM(r.quantity) AS quantity, f.created_at, f.updated_at
        FROM folded f
        JOIN stock_reservations r ON r.order_id = f.order_id AND r.sku = f.sku AND r.state = f.state
        GROUP BY f.order_id, f.sku, f.state, f.created_at, f.updated_at
        """
    )
    op.execute("DELETE FROM stock_reservations")
    op.drop_constraint("pk_stock_reservations", "stock_reservations", type_="primary")
    op.drop_constraint(op.f("fk_stock_reservations_warehouse_id_warehouses"), "stock_reservations", type_="foreignkey")
    op.drop_column("stock_reservations", "warehouse_id")
    op.create_primary_key("pk_stock_reservations", "stock_reservations", ["order_id", "sku"])
    op.execute(
        "INSERT INTO stock_reservations (order_id, sku, quantity, state, created_at, updated_at) "
        "SELECT order_id, sku, quantity, state, created_at, updated_at FROM folded_reservations"
    )
    op.execute("DROP TABLE folded_reservations")

    op.drop_index("ix_warehouse_stock_sku", table_name="warehouse_stock")
    op.drop_table("warehouse_stock")
    op.drop_table("warehouses")
