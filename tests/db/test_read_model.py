"""The read model's writers, against real PostgreSQL: the gateway's `received` row inside its own
transaction, the workflow's projections (idempotent, monotonic by seq) and tracking-only events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select

from core.db.read_model import OrderReadModel, with_tracking
from core.db.tables import order_events, order_shipments, orders
from core.domain import (
    CarrierEvent,
    CarrierEventKind,
    OrderLine,
    OrderStatus,
    OrderView,
    ShipmentStatus,
    ShipmentView,
    StatusChange,
)
from tests.harness import random_ref
from tests.support import ADDRESS

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CUSTOMER_PREFIX = "rm-"


@pytest.fixture(autouse=True)
async def remove_written_orders(engine):
    """These orders never reach an end and are dated in the past: left in the session's shared
    database they would count as stuck in the gateway's metrics (tests/integration/test_observability)."""
    yield
    async with engine.begin() as conn:
        ids = select(orders.c.id).where(orders.c.customer_id.startswith(CUSTOMER_PREFIX))
        await conn.execute(delete(order_events).where(order_events.c.order_id.in_(ids)))
        await conn.execute(delete(orders).where(orders.c.customer_id.startswith(CUSTOMER_PREFIX)))


def received() -> OrderView:
    return OrderView.received(
        order_id=uuid.uuid4(),
        customer_id=random_ref("rm").lower(),
        items=[OrderLine(sku="MUG-WHT", quantity=1, unit_price=1299)],
        total=1299,
        currency="EUR",
        shipping_address=ADDRESS,
        at=T0,
    )


def advanced(view: OrderView, *statuses: OrderStatus) -> OrderView:
    later = view.model_copy(deep=True)
    for minutes, status in enumerate(statuses, start=1):
        later.status, later.updated_at = status, T0 + timedelta(minutes=minutes)
        later.history.append(StatusChange(status=status, at=later.updated_at))
    return later


async def stored(engine, order_id: uuid.UUID) -> tuple[tuple[int | None, str | None], list[tuple[int, str]]]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(orders.c.seq, orders.c.status).where(orders.c.id == order_id))).first()
        events = (
            await conn.execute(
                select(order_events.c.seq, order_events.c.status)
                .where(order_events.c.order_id == order_id)
                .order_by(order_events.c.seq)
            )
        ).all()
    return (row.seq, row.status) if row else (None, None), [tuple(event) for event in events]


async def test_the_received_row_commits_or_rolls_back_with_the_callers_transaction(engine):
    read_model, view = OrderReadModel(engine), received()

    class Abort(Exception):
        pass

    try:
        async with engine.begin() as conn:
            await read_model.insert_received(conn, view)
            raise Abort
    except Abort:
        pass
    assert await stored(engine, view.id) == ((None, None), [])

    async with engine.begin() as conn:
        await read_model.insert_received(conn, view)
        await read_model.insert_received(conn, view)  # a retry changes nothing
    assert await stored(engine, view.id) == ((1, "received"), [(1, "received")])
    assert await read_model.get(view.id) == view


async def test_projections_only_move_forward_and_keep_the_history(engine):
    read_model, view = OrderReadModel(engine), received()
    async with engine.begin() as conn:
        await read_model.insert_received(conn, view)
    reserved = advanced(view, OrderStatus.STOCK_RESERVED)
    authorized = advanced(view, OrderStatus.STOCK_RESERVED, OrderStatus.PAYMENT_AUTHORIZED)

    await read_model.project(3, authorized)
    await read_model.project(2, reserved)  # late: a retried local activity
    await read_model.project(3, authorized)  # repeated
    async with engine.begin() as conn:
        await read_model.insert_received(conn, view)  # the gateway's retry after the workflow moved on
    assert await stored(engine, view.id) == (
        (3, "payment_authorized"),
        [(1, "received"), (2, "stock_reserved"), (3, "payment_authorized")],
    )
    assert await read_model.get(view.id) == authorized

    # Forgetting an unstarted submission never removes an order a workflow has projected.
    async with engine.begin() as conn:
        await read_model.forget_received(conn, view.id)
    assert (await stored(engine, view.id))[0] == (3, "payment_authorized")


async def test_forgetting_an_unstarted_submission_removes_its_row_and_events(engine):
    read_model, view = OrderReadModel(engine), received()
    async with engine.begin() as conn:
        await read_model.insert_received(conn, view)
    async with engine.begin() as conn:
        await read_model.forget_received(conn, view.id)
    assert await stored(engine, view.id) == ((None, None), [])


async def test_tracking_events_sit_beside_the_projection_and_survive_it(engine):
    read_model, view = OrderReadModel(engine), received()
    tracking_number = random_ref("TRK")
    shipped = advanced(view, OrderStatus.STOCK_RESERVED, OrderStatus.PAYMENT_AUTHORIZED, OrderStatus.SHIPPED)
    shipped.tracking_number = tracking_number
    picked_up = CarrierEvent(event=CarrierEventKind.PICKED_UP, occurred_at=T0 + timedelta(hours=1))

    assert await read_model.record_tracking(tracking_number, picked_up) is None  # nobody has it yet
    await read_model.project(4, shipped)
    assert await read_model.record_tracking(tracking_number, picked_up) == view.id
    later = picked_up.model_copy(update={"occurred_at": T0 + timedelta(hours=5)})
    assert await read_model.record_tracking(tracking_number, later) == view.id  # the first report wins
    await read_model.project(5, advanced(shipped, OrderStatus.COMPLETED))
    # Read back with the parcel it is about (an order may ship several).
    assert (await read_model.get(view.id)).carrier_events == [
        picked_up.model_copy(update={"tracking_number": tracking_number})
    ]
    assert await read_model.find_by_tracking_number(tracking_number) == advanced(shipped, OrderStatus.COMPLETED)


def split(view: OrderView, *tracking_numbers: str) -> OrderView:
    """``view`` shipped as one parcel per tracking number (one shipment per warehouse)."""
    shipped = advanced(view, OrderStatus.STOCK_RESERVED, OrderStatus.PAYMENT_AUTHORIZED, OrderStatus.SHIPPED)
    shipped.shipments = [
        ShipmentView(
            id=f"WH-{n}",
            warehouse_id=f"WH-{n}",
            items=view.items,
            amount=view.total,
            status=ShipmentStatus.SHIPPED,
            tracking_number=number,
        )
        for n, number in enumerate(tracking_numbers)
    ]
    shipped.tracking_number = tracking_numbers[0]
    return shipped


async def test_every_shipments_tracking_number_finds_its_order(engine):
    read_model, view = OrderReadModel(engine), received()
    first, second = random_ref("TRK"), random_ref("TRK")
    await read_model.project(1, view)
    assert await read_model.find_by_tracking_number(second) is None
    await read_model.project(4, split(view, first, second))
    await read_model.project(4, split(view, first, second))  # a retried projection changes nothing

    for number in (first, second):
        found = await read_model.find_by_tracking_number(number)
        assert found is not None and found.id == view.id, number
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(order_shipments.c.tracking_number, order_shipments.c.shipment_id).where(
                    order_shipments.c.order_id == view.id
                )
            )
        ).all()
    assert sorted(rows) == sorted([(first, "WH-0"), (second, "WH-1")])

    # Tracking-only events of the second parcel are kept on its order too; unknown numbers are not.
    picked_up = CarrierEvent(event=CarrierEventKind.PICKED_UP, occurred_at=T0 + timedelta(hours=1))
    assert await read_model.record_tracking(second, picked_up) == view.id
    assert await read_model.record_tracking(random_ref("TRK"), picked_up) is None
    stored_view = await read_model.get(view.id)
    assert stored_view is not None
    assert [event.event for event in stored_view.carrier_events] == [CarrierEventKind.PICKED_UP]


async def test_an_order_from_before_split_shipments_is_found_by_its_one_tracking_number(engine):
    read_model, view = OrderReadModel(engine), received()
    number = random_ref("TRK")
    shipped = advanced(view, OrderStatus.STOCK_RESERVED, OrderStatus.PAYMENT_AUTHORIZED, OrderStatus.SHIPPED)
    shipped.tracking_number = number  # no shipments on the view: the workflow before split shipments
    await read_model.project(4, shipped)
    found = await read_model.find_by_tracking_number(number)
    assert found is not None and found.id == view.id
    in_transit = CarrierEvent(event=CarrierEventKind.IN_TRANSIT, occurred_at=T0 + timedelta(hours=2))
    assert await read_model.record_tracking(number, in_transit) == view.id
    async with engine.connect() as conn:
        count = (
            await conn.execute(
                select(func.count()).select_from(order_shipments).where(order_shipments.c.order_id == view.id)
            )
        ).scalar_one()
    assert count == 0


def test_tracking_events_stored_before_orders_had_several_parcels_still_read():
    view = received()
    at = (T0 + timedelta(hours=1)).isoformat()
    legacy = with_tracking(view.model_dump(mode="json"), {"picked_up": at, "in_transit@TRK-2": at})
    assert [(e.event, e.tracking_number) for e in legacy.carrier_events] == [
        (CarrierEventKind.PICKED_UP, None),
        (CarrierEventKind.IN_TRANSIT, "TRK-2"),
    ]


async def test_a_peer_regions_replicated_order_is_read_here_but_never_acted_on(engine):
    """A row another region wrote (replicated here) keeps its region; carrier events for its parcels
    are that region's, so this region neither finds it by tracking number nor records on it."""
    peer, here = OrderReadModel(engine, region="b"), OrderReadModel(engine, region="a")
    view = advanced(received(), OrderStatus.SHIPPED)
    view.tracking_number = random_ref("TRK")
    await peer.project(2, view)  # as the replication applies B's row
    async with engine.connect() as conn:
        assert (await conn.execute(select(orders.c.region).where(orders.c.id == view.id))).scalar_one() == "b"
    assert (await here.get(view.id)) is not None
    assert await here.find_by_tracking_number(view.tracking_number) is None
    event = CarrierEvent(event=CarrierEventKind.IN_TRANSIT, occurred_at=T0, tracking_number=view.tracking_number)
    assert await here.record_tracking(view.tracking_number, event) is None
    assert (await peer.find_by_tracking_number(view.tracking_number)) is not None
    # A later projection in B never moves the row to another region.
    await OrderReadModel(engine, region="c").project(3, advanced(view, OrderStatus.COMPLETED))
    async with engine.connect() as conn:
        assert (await conn.execute(select(orders.c.region).where(orders.c.id == view.id))).scalar_one() == "b"
