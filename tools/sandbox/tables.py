"""Tables of the sandbox providers.

They live in their own ``MetaData`` and are created with ``create_all`` at start-up, not by the
platform's migrations: the sandbox stands in for a third party whose storage is not ours.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
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
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from core.db.tables import NAMING_CONVENTION

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# One row per (scope, Idempotency-Key): claimed as 'running', then 'done' with the stored answer,
# or 'released' after a transient failure so that a retry may run the request again.
idempotency_keys = Table(
    "sandbox_idempotency_keys",
    metadata,
    Column("scope", String(100), nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("locked_until", DateTime(timezone=True)),
    Column("status_code", Integer),
    Column("response_body", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("completed_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("scope", "key"),
    CheckConstraint("state IN ('running', 'done', 'released')", name="state"),
)

authorizations = Table(
    "sandbox_authorizations",
    metadata,
    Column("id", String(40), primary_key=True),
    # The authorize call's Idempotency-Key; unique so two racing attempts cannot both authorize.
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("order_id", String(200), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),
    Column("captured_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("refunded_amount", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("captured_amount <= amount", name="captured_within_amount"),
    CheckConstraint("refunded_amount <= captured_amount", name="refunded_within_captured"),
)

money_movements = Table(
    "sandbox_money_movements",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "authorization_id",
        String(40),
        ForeignKey("sandbox_authorizations.id"),
        nullable=False,
        index=True,
    ),
    Column("kind", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("kind IN ('capture', 'refund')", name="kind"),
    CheckConstraint("amount > 0", name="amount_positive"),
)
# A key moves money at most once, whatever the idempotency layer does.
Index("uq_sandbox_money_movements_kind_key", money_movements.c.kind, money_movements.c.idempotency_key, unique=True)

shipments = Table(
    "sandbox_shipments",
    metadata,
    Column("tracking_number", String(40), primary_key=True),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("order_id", String(200), nullable=False, index=True),
    Column("shipping_address", JSONB, nullable=False),
    Column("items", JSONB, nullable=False),
    Column("status", String(16), nullable=False),
    Column("lost", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Outbox of webhook deliveries: one row per event, due at next_event_at (moved on on each retry).
shipment_events = Table(
    "sandbox_shipment_events",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "tracking_number",
        String(40),
        ForeignKey("sandbox_shipments.tracking_number"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),
    Column("event", String(16), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("next_event_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Column("sent_at", DateTime(timezone=True)),
    CheckConstraint("state IN ('pending', 'sent', 'failed', 'cancelled')", name="state"),
)
Index(
    "ix_sandbox_shipment_events_due",
    shipment_events.c.next_event_at,
    postgresql_where=shipment_events.c.state == "pending",
)
Index("uq_sandbox_shipment_events_tracking_seq", shipment_events.c.tracking_number, shipment_events.c.seq, unique=True)
