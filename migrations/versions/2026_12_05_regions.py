"""Regions: the region that wrote each order, the home-region directory and replication heartbeats.

* ``orders.region``: the region whose gateway accepted the order (its workflow lives there). ``''``
  for orders written before regions or by a single-region deployment; `orders regions link` stamps
  them with the region's name before the first publication. ``(id, region)`` is unique and the
  table's replica identity, so the publication's row filter (``region = '<this region>'``) may
  apply to updates and deletes too: each region publishes only the orders it wrote.
* ``customer_homes``: operator overrides of the default home rule (one row per customer).
* ``region_redirects``: a lost region's customers served by another one (`orders regions rehome`).
* ``region_heartbeats``: one row per region, stamped by its gateway; the peer's replicated row says
  how far behind the local replica is.

Nothing to backfill; the downgrade drops the directory (overrides and rehomes are lost) and the
column.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("region", sa.String(length=32), server_default="", nullable=False))
    op.create_unique_constraint(op.f("uq_orders_id_region"), "orders", ["id", "region"])
    op.execute("ALTER TABLE orders REPLICA IDENTITY USING INDEX uq_orders_id_region")
    op.create_table(
        "customer_homes",
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("changed_by", sa.String(length=255), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_homes")),
    )
    op.create_table(
        "region_redirects",
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("served_by", sa.String(length=32), nullable=False),
        sa.Column("changed_by", sa.String(length=255), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("region", name=op.f("pk_region_redirects")),
        sa.CheckConstraint("region <> served_by", name=op.f("ck_region_redirects_not_to_itself")),
    )
    op.create_table(
        "region_heartbeats",
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("region", name=op.f("pk_region_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("region_heartbeats")
    op.drop_table("region_redirects")
    op.drop_table("customer_homes")
    op.execute("ALTER TABLE orders REPLICA IDENTITY DEFAULT")
    op.drop_constraint(op.f("uq_orders_id_region"), "orders", type_="unique")
    op.drop_column("orders", "region")
