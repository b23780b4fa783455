"""The stuck-order gauge's query: statuses that wait on people count as stuck only past their own
deadline (awaiting_review: the review timeout; awaiting_customer: the customer response timeout)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete

from core.db.read_model import OrderReadModel
from core.db.tables import order_events, orders
from core.domain import OrderLine, OrderStatus, OrderView, StatusChange
from core.metrics import open_orders
from tests.harness import random_ref
from tests.support import ADDRESS


def waiting_since(status: OrderStatus, at: datetime) -> OrderView:
    view = OrderView.received(
        order_id=uuid.uuid4(),
        customer_id=random_ref("stuck").lower(),
        items=[OrderLine(sku="MUG-WHT", quantity=1, unit_price=1299)],
        total=1299,
        currency="EUR",
        shipping_address=ADDRESS,
        at=at,
    )
    view.status = status
    view.history.append(StatusChange(status=status, at=at))
    return view


async def stuck(engine, settings, status: OrderStatus) -> int:
    return {row_status: count for row_status, _, count in await open_orders(engine, settings)}.get(status.value, 0)


async def test_awaiting_the_customer_is_stuck_only_past_the_customer_response_timeout(engine, settings):
    patient = settings.model_copy(
        update={"stuck_order_after_s": 60, "customer_response_timeout_s": 3 * 24 * 3600, "review_timeout_s": 60}
    )
    impatient = patient.model_copy(update={"customer_response_timeout_s": 24 * 3600})
    status = OrderStatus.AWAITING_CUSTOMER
    before = {name: await stuck(engine, s, status) for name, s in (("patient", patient), ("impatient", impatient))}

    # Waiting for two days: within a 3-day answer window, but a day past a 1-day one. (The review
    # timeout, 60 s here, must not be what decides.)
    view = waiting_since(status, datetime.now(UTC) - timedelta(days=2))
    await OrderReadModel(engine).project(2, view)
    try:
        assert await stuck(engine, patient, status) == before["patient"]
        assert await stuck(engine, impatient, status) == before["impatient"] + 1
    finally:  # stuck by the default settings too: it must not stay in the session's shared database
        async with engine.begin() as conn:
            await conn.execute(delete(order_events).where(order_events.c.order_id == view.id))
            await conn.execute(delete(orders).where(orders.c.id == view.id))
