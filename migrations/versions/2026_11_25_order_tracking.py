"""Carrier tracking events the gateway records beside the projected view.

``picked_up`` and ``in_transit`` change nothing the order workflow decides on, so the gateway no
longer signals them to it (two Temporal actions and workflow tasks per order); it keeps them in
``orders.tracking`` (event -> time), a column the workflow's projections never write, and reads
merge them into the order's ``carrier_events``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 20:15:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "orders",
        sa.Column(
            "tracking", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_column("orders", "tracking")
