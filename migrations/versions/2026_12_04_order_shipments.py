"""Every tracking number of an order: ``order_shipments`` (tracking number -> order, shipment).

An order split over several warehouses ships several parcels, each with its own tracking number,
and a carrier webhook names only that number. ``orders.tracking_number`` keeps the first shipment's
(and is all that orders from before split shipments have); the projection files every shipment's
number here. Nothing to backfill: existing orders have at most one parcel, already findable by
``orders.tracking_number``. The downgrade drops the table: the first shipment of each order stays
findable, later ones no longer are.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "order_shipments",
        sa.Column("tracking_number", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("shipment_id", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_order_shipments_order_id_orders"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tracking_number", name=op.f("pk_order_shipments")),
    )
    op.create_index("ix_order_shipments_order_id", "order_shipments", ["order_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_order_shipments_order_id", table_name="order_shipments")
    op.drop_table("order_shipments")
