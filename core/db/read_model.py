"""The order read model: every read and write of ``orders``, ``order_events`` and ``order_shipments``
(and the tracking events kept beside a row) goes through :class:`OrderReadModel`.

Three writers feed it: the gateway's ``received`` row, written in the same transaction as the
Idempotency-Key claim (:meth:`OrderReadModel.insert_received`); the workflow's projection at every
transition (:meth:`OrderReadModel.project`); and the tracking-only carrier events the gateway
records without a workflow (:meth:`OrderReadModel.record_tracking`). Reads are keyset-paginated.
The projection and the tracking writes NOTIFY waiting readers in their own transaction
(:mod:`core.db.order_changes`); a just-received order has no waiters yet.

An order with several shipments has a tracking number per shipment: the projection files each one
in ``order_shipments``, so a carrier event for any of them finds its order (orders from before split
shipments are found by ``orders.tracking_number``, the first shipment's).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Text,
    Uuid,
    and_,
    bindparam,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.db.engine import single_statement
from core.db.order_changes import NOTIFY_EXPRESSION, notify_clause, order_version
from core.db.tables import order_events, order_shipments, orders
from core.domain import CarrierEvent, OrderStatus, OrderView


def order_row(view: OrderView, seq: int, region: str = "") -> dict:
    """The ``orders`` row of a view at transition number ``seq``, written in ``region``."""
    return {
        "region": region,
        "id": view.id,
        "customer_id": view.customer_id,
        "status": view.status.value,
        "failure_reason": view.failure_reason.value if view.failure_reason else None,
        "total": view.total,
        "currency": view.currency,
        "tracking_number": view.tracking_number,
        "view": view.model_dump(mode="json"),
        "seq": seq,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }


def _event_rows(view: OrderView) -> list[dict]:
    """The ``order_events`` rows of a view: its history, numbered from 1."""
    return [
        {"order_id": view.id, "seq": index + 1, "status": change.status.value, "note": change.note, "at": change.at}
        for index, change in enumerate(view.history)
    ]


# The stored view as JSON text for the reads: pydantic validates it straight from the text, about
# twice as fast as the driver's json.loads followed by validating the dict.
_VIEW_TEXT = cast(orders.c.view, Text).label("view")


def with_tracking(view: dict | str, tracking: dict | None) -> OrderView:
    """The projected view (as stored: a dict, or its JSON text) plus the tracking-only carrier
    events the gateway recorded beside it (``orders.tracking``), in time order; an event the
    workflow itself has (older orders got every event as a signal) is not repeated."""
    order = OrderView.model_validate_json(view) if isinstance(view, str) else OrderView.model_validate(view)
    if tracking:
        known = {(event.event.value, event.tracking_number) for event in order.carrier_events}
        known |= {(event.event.value, None) for event in order.carrier_events}
        extra = []
        for key, at in tracking.items():
            # "<event>@<tracking number>" per parcel; a bare "<event>" from before orders had several.
            name, _, number = key.partition("@")
            if (name, number or None) not in known:
                extra.append(CarrierEvent(event=name, occurred_at=at, tracking_number=number or None))
        if extra:
            order.carrier_events = sorted([*order.carrier_events, *extra], key=lambda event: event.occurred_at)
    return order


def _shipment_rows(view: OrderView) -> list[dict]:
    """The ``order_shipments`` rows of a view: one per shipment that has a tracking number."""
    return [
        {"tracking_number": shipment.tracking_number, "order_id": view.id, "shipment_id": shipment.id}
        for shipment in view.shipments
        if shipment.tracking_number is not None
    ]


# Transition ``seq`` of an order in one statement: the ``orders`` upsert (only to a higher ``seq``),
# with the history entries and the shipments' tracking numbers inserted by data-modifying CTEs from
# JSON arrays. One fixed text, so it is compiled and prepared once per connection (a statement
# built per call with a variable number of VALUES rows is neither cached by SQLAlchemy nor by
# asyncpg), and one round trip in its own transaction instead of BEGIN, three writes and COMMIT.
# The foreign keys of the CTEs' rows are checked at the end of the statement, after the order row.
_PROJECT = text(
    """
    WITH projected_events AS (
        INSERT INTO order_events (order_id, seq, status, note, at)
        SELECT :id, e.seq, e.status, e.note, e.at
        FROM jsonb_to_recordset(:events) AS e(seq integer, status varchar, note text, at timestamptz)
        ON CONFLICT DO NOTHING
    ), projected_shipments AS (
        INSERT INTO order_shipments (tracking_number, order_id, shipment_id)
        SELECT s.tracking_number, :id, s.shipment_id
        FROM jsonb_to_recordset(:shipments) AS s(tracking_number varchar, shipment_id varchar)
        ON CONFLICT DO NOTHING
    )
    INSERT INTO orders (region, id, customer_id, status, failure_reason, total, currency, tracking_number, view,
                        seq, created_at, updated_at)
    VALUES (:region, :id, :customer_id, :status, :failure_reason, :total, :currency, :tracking_number, :view,
            :seq, :created_at, :updated_at)
    ON CONFLICT (id) DO UPDATE SET
        customer_id = excluded.customer_id, status = excluded.status, failure_reason = excluded.failure_reason,
        total = excluded.total, currency = excluded.currency, tracking_number = excluded.tracking_number,
        view = excluded.view, seq = excluded.seq, updated_at = excluded.updated_at
    WHERE orders.seq < excluded.seq
    RETURNING """
    # Waiting readers learn of the transition when it commits (no row: nothing changed); the
    # region is the one that accepted the order, never changed by a projection.
    + NOTIFY_EXPRESSION
).bindparams(
    bindparam("id", type_=Uuid),
    bindparam("total", type_=BigInteger),
    bindparam("view", type_=JSONB),
    bindparam("events", type_=JSONB),
    bindparam("shipments", type_=JSONB),
    bindparam("created_at", type_=DateTime(timezone=True)),
    bindparam("updated_at", type_=DateTime(timezone=True)),
)


def projection_parameters(seq: int, view: OrderView, region: str = "") -> dict:
    """The parameters of the projection statement for transition ``seq`` of ``view``."""
    events = [
        {"seq": index + 1, "status": change.status.value, "note": change.note, "at": change.at.isoformat()}
        for index, change in enumerate(view.history)
    ]
    shipments = [
        {"tracking_number": row["tracking_number"], "shipment_id": row["shipment_id"]} for row in _shipment_rows(view)
    ]
    return {**order_row(view, seq, region), "events": events, "shipments": shipments}


def _has_tracking_number(tracking_number: str) -> ColumnElement[bool]:
    """The order one of whose shipments has this tracking number. The shipment lookup is a scalar
    subquery (evaluated once), so both arms are index lookups."""
    shipment_order = (
        select(order_shipments.c.order_id).where(order_shipments.c.tracking_number == tracking_number).scalar_subquery()
    )
    return or_(orders.c.tracking_number == tracking_number, orders.c.id == shipment_order)


class InvalidCursor(ValueError):
    pass


def encode_cursor(created_at: datetime, order_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(order_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, order_id = json.loads(raw)
        return datetime.fromisoformat(created_at), uuid.UUID(order_id)
    except (ValueError, TypeError) as error:
        raise InvalidCursor("cursor is not one this API issued") from error


@dataclass(frozen=True)
class VersionedView:
    view: OrderView
    version: str  # changes whenever a read of the order would answer something else

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


@dataclass
class OrderPage:
    items: list[OrderView]
    next_cursor: str | None


class OrderReadModel:
    def __init__(self, engine: AsyncEngine, *, region: str = "") -> None:
        self._engine = engine
        self._region = region  # stamped on the rows this region inserts (docs/regions.md)

    def _own_rows(self) -> ColumnElement[bool]:
        """Orders this region accepted (or from before regions): a peer's replicated rows are read
        here, never acted on (carrier events go to the region that shipped)."""
        return orders.c.region.in_([self._region, ""])

    # --- writes -------------------------------------------------------------------------------

    @staticmethod
    async def insert_received(conn: AsyncConnection, view: OrderView, *, region: str = "") -> None:
        """Write a just-accepted order (seq 1) and its ``received`` event inside the caller's
        transaction, so the row commits together with the Idempotency-Key claim. A row that is
        already there (a retry, or a projection that got ahead) is left as it is."""
        await conn.execute(insert(orders).values(**order_row(view, seq=1, region=region)).on_conflict_do_nothing())
        await conn.execute(insert(order_events).values(_event_rows(view)).on_conflict_do_nothing())

    @staticmethod
    async def forget_received(conn: AsyncConnection, order_id: uuid.UUID) -> None:
        """Remove an order that was accepted but never started (its events go with it), unless a
        projection has already moved it past seq 1."""
        await conn.execute(orders.delete().where((orders.c.id == order_id) & (orders.c.seq == 1)))

    async def project(self, seq: int, view: OrderView) -> None:
        """Write transition number ``seq`` of an order. Idempotent and monotonic: the row only moves
        forward to a higher ``seq`` (a retried or late write never rolls it back), and history
        entries already written are kept."""
        async with single_statement(self._engine) as conn:
            # One statement in its own transaction (see _PROJECT): it commits or fails as a whole.
            await self.project_in(conn, seq, view)

    async def project_in(self, conn: AsyncConnection, seq: int, view: OrderView) -> None:
        """:meth:`project` inside the caller's transaction (or in its own, in autocommit)."""
        await conn.execute(_PROJECT, projection_parameters(seq, view, self._region))

    async def record_tracking(self, tracking_number: str, event: CarrierEvent) -> uuid.UUID | None:
        """Keep a tracking-only carrier event of the order with this tracking number, that of any of
        its shipments (the first time reported wins per parcel, so repeats change nothing); its id,
        or None for an unknown number."""
        key = f"{event.event.value}@{tracking_number}"
        first = func.jsonb_build_object(key, literal(event.occurred_at.isoformat()))
        async with single_statement(self._engine) as conn:
            return (
                await conn.execute(
                    update(orders)
                    .where(_has_tracking_number(tracking_number), self._own_rows())
                    .values(tracking=first.op("||", return_type=JSONB)(orders.c.tracking))
                    .returning(orders.c.id, notify_clause())
                )
            ).scalar()

    # --- reads --------------------------------------------------------------------------------

    async def get(self, order_id: uuid.UUID) -> OrderView | None:
        versioned = await self.get_versioned(order_id)
        return versioned.view if versioned is not None else None

    async def get_versioned(self, order_id: uuid.UUID) -> VersionedView | None:
        """The order and the version of this read (see :func:`core.db.order_changes.order_version`)."""
        async with single_statement(self._engine) as conn:
            row = (
                await conn.execute(select(_VIEW_TEXT, orders.c.tracking, orders.c.seq).where(orders.c.id == order_id))
            ).first()
        if row is None:
            return None
        return VersionedView(with_tracking(row.view, row.tracking), order_version(row.seq, row.tracking))

    async def find_by_tracking_number(self, tracking_number: str) -> OrderView | None:
        async with single_statement(self._engine) as conn:
            view = (
                await conn.execute(select(orders.c.view).where(_has_tracking_number(tracking_number), self._own_rows()))
            ).scalar_one_or_none()
        return OrderView.model_validate(view) if view is not None else None

    async def list(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        customer_id: str | None = None,
        status: OrderStatus | None = None,
    ) -> OrderPage:
        """Newest first; ``cursor`` continues after the last item of the previous page."""
        query = select(_VIEW_TEXT, orders.c.tracking, orders.c.created_at, orders.c.id)
        if customer_id is not None:
            query = query.where(orders.c.customer_id == customer_id)
        if status is not None:
            query = query.where(orders.c.status == status.value)
        if cursor:
            created_at, order_id = decode_cursor(cursor)
            query = query.where(
                or_(orders.c.created_at < created_at, and_(orders.c.created_at == created_at, orders.c.id < order_id))
            )
        query = query.order_by(orders.c.created_at.desc(), orders.c.id.desc()).limit(limit + 1)
        async with single_statement(self._engine) as conn:
            rows = (await conn.execute(query)).all()
        items = [with_tracking(row.view, row.tracking) for row in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
        return OrderPage(items, next_cursor)
