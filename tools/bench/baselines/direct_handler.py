"""Baseline (b) of `orders bench`: the same work without an orchestrator.

One FastAPI handler reserves stock, authorizes, creates the shipment, captures and deducts the
stock in line, against the same PostgreSQL and sandbox, with the platform's own activity classes
(called as plain methods) and pooled connections. No durability: a crash mid-way leaves whatever
was done. The gap to the platform is the cost of durability.
``python -m bench.baselines.direct_handler --port 8300`` with the platform's ``ORDERS_`` environment.
"""

from __future__ import annotations

import argparse
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert

from activities.http import provider_client
from activities.payment import PaymentActivities
from activities.shipping import ShippingActivities
from activities.stock import StockActivities
from core.config import Settings, get_settings
from core.db.catalog import Catalog
from core.db.engine import create_engine
from core.db.read_model import order_row
from core.db.tables import orders
from core.domain import (
    Address,
    AuthorizePayment,
    CreateShipment,
    OrderLine,
    OrderStatus,
    OrderView,
    PaymentAction,
    StatusChange,
    StockRelease,
    StockRequest,
    provider_key,
)


class DirectOrder(BaseModel):
    sku: str
    quantity: int = 1
    shipping_address: Address
    payment_token: str = "tok_ok"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = create_engine(settings)
        async with provider_client(settings) as http:
            app.state.engine = engine
            app.state.catalog = Catalog(engine)
            app.state.stock = StockActivities(engine)
            app.state.payment = PaymentActivities(http, settings.payment_base_url)
            app.state.shipping = ShippingActivities(http, settings.carrier_base_url)
            yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/direct/orders", status_code=201)
    async def place(body: DirectOrder) -> dict:
        state = app.state
        order_id = uuid.uuid4()
        price, currency = (await state.catalog.prices([body.sku]))[body.sku]
        lines = [OrderLine(sku=body.sku, quantity=body.quantity, unit_price=price)]
        total = price * body.quantity
        await state.stock.reserve_stock(StockRequest(order_id=order_id, lines=lines))
        authorization = await state.payment.authorize_payment(
            AuthorizePayment(
                order_id=order_id,
                amount=total,
                currency=currency,
                payment_token=body.payment_token,
                idempotency_key=provider_key(order_id, "authorize"),
            )
        )
        shipment = await state.shipping.create_shipment(
            CreateShipment(
                order_id=order_id,
                shipping_address=body.shipping_address,
                lines=lines,
                idempotency_key=provider_key(order_id, "ship"),
            )
        )
        action = dict(
            order_id=order_id, authorization_id=authorization.authorization_id, amount=total, currency=currency
        )
        await state.payment.capture_payment(PaymentAction(**action, idempotency_key=provider_key(order_id, "capture")))
        await state.stock.commit_stock(StockRelease(order_id=order_id))
        now = datetime.now(UTC)
        view = OrderView(
            id=order_id,
            customer_id="direct-baseline",
            status=OrderStatus.SHIPPED,
            items=lines,
            total=total,
            currency=currency,
            shipping_address=body.shipping_address,
            history=[StatusChange(status=OrderStatus.SHIPPED, at=now)],
            created_at=now,
            updated_at=now,
            tracking_number=shipment.tracking_number,
        )
        async with state.engine.begin() as conn:
            await conn.execute(insert(orders).values(**order_row(view, seq=1)))
        return {"id": str(order_id), "tracking_number": shipment.tracking_number}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(get_settings()), host="127.0.0.1", port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
