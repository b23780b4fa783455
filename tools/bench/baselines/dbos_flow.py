"""Baseline (c) of `orders bench`: the same order flow as a durable workflow on DBOS (workflows
checkpointed in PostgreSQL by a library inside the application process; no separate server).

The work is the platform's: the same stock reservation functions and read-model writer on the same
PostgreSQL, the same provider HTTP client and idempotency keys against the same sandbox, and the
carrier's ``delivered`` webhook as the event the order waits for. Only the orchestration differs:
each step's outcome is checkpointed in DBOS's system database (a database of its own on the same
server) instead of a Temporal history, and the webhook reaches the waiting workflow with
``DBOS.send`` / ``DBOS.recv`` instead of a signal.

Happy path: received (written by the submit handler) -> reserve stock -> authorize -> create the
shipment -> capture -> commit the stock -> wait for ``delivered`` -> completed, projected to the
read model at each transition as the platform's workflow does. A business refusal (out of stock,
a decline, a refused shipment) releases what was held (void, release) and ends the order rejected
or failed, a lost parcel is refunded; a step whose retries run out ends the workflow in error without compensating (a
baseline of the happy path, not a second platform: no review, cancel, amend or split shipments).

``python -m bench.baselines.dbos_flow --port 8400 --system-database-url postgresql://...`` with the
platform's ``ORDERS_`` environment; needs the ``dbos`` extra of orders-tools.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from dbos import DBOS, DBOSConfig, SetWorkflowID
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from activities.http import provider_client
from activities.payment import PaymentActivities
from activities.shipping import ShippingActivities
from activities.stock import StockActivities
from core.config import Settings, get_settings
from core.db.catalog import Catalog
from core.db.engine import create_engine
from core.db.read_model import OrderReadModel
from core.domain import (
    ERR_PAYMENT_DECLINED,
    Address,
    AuthorizePayment,
    CarrierEvent,
    CarrierEventKind,
    CreateShipment,
    FailureReason,
    OrderLine,
    OrderStatus,
    OrderView,
    PaymentAction,
    StatusChange,
    StockRelease,
    StockRequest,
    provider_key,
)
from core.webhooks import SIGNATURE_HEADER, WebhookSignatureError, verify_webhook

TOPIC_CARRIER = "carrier"
TRACKING_ONLY = {CarrierEventKind.PICKED_UP, CarrierEventKind.IN_TRANSIT}
CUSTOMER = "dbos-baseline"
NAMESPACE = uuid.UUID("6f1c2d0e-5b7a-4c39-9a51-0d4b8e2f7c11")  # order id = uuid5(customer + Idempotency-Key)


class _Deps:
    """What the steps use, set when the application starts (steps are module functions: DBOS
    registers them by name, and a recovered workflow calls them again after a restart)."""

    settings: Settings
    read_model: OrderReadModel
    stock: StockActivities
    payment: PaymentActivities
    shipping: ShippingActivities


deps = _Deps()


def _retryable(error: BaseException) -> bool:
    """Business answers (a decline, out of stock, a refusal) are final; anything else is retried."""
    return not (isinstance(error, ApplicationError) and error.non_retryable)


def _refusal(error: ApplicationError) -> dict[str, Any]:
    return {"refused": error.type or "refused", "message": str(error)}


_STEP = dict(retries_allowed=True, interval_seconds=0.5, max_attempts=5, backoff_rate=2.0, should_retry=_retryable)


@DBOS.step(name="reserve_stock", **_STEP)
async def reserve_stock(order_id: uuid.UUID, lines: list[OrderLine]) -> dict[str, Any]:
    try:
        await deps.stock.reserve_stock(StockRequest(order_id=order_id, lines=lines))
    except ApplicationError as error:
        if error.non_retryable:
            return _refusal(error)
        raise
    return {}


@DBOS.step(name="authorize_payment", **_STEP)
async def authorize_payment(request: AuthorizePayment) -> dict[str, Any]:
    try:
        authorization = await deps.payment.authorize_payment(request)
    except ApplicationError as error:
        if error.non_retryable:
            return _refusal(error)
        raise
    return {"authorization_id": authorization.authorization_id}


@DBOS.step(name="create_shipment", **_STEP)
async def create_shipment(request: CreateShipment) -> dict[str, Any]:
    try:
        shipment = await deps.shipping.create_shipment(request)
    except ApplicationError as error:
        if error.non_retryable:
            return _refusal(error)
        raise
    return {"tracking_number": shipment.tracking_number}


@DBOS.step(name="capture_payment", **_STEP)
async def capture_payment(request: PaymentAction) -> None:
    await deps.payment.capture_payment(request)


@DBOS.step(name="void_payment", **_STEP)
async def void_payment(request: PaymentAction) -> None:
    await deps.payment.void_payment(request)


@DBOS.step(name="refund_payment", **_STEP)
async def refund_payment(request: PaymentAction) -> None:
    await deps.payment.refund_payment(request)


@DBOS.step(name="commit_stock", **_STEP)
async def commit_stock(order_id: uuid.UUID) -> None:
    await deps.stock.commit_stock(StockRelease(order_id=order_id))


@DBOS.step(name="release_stock", **_STEP)
async def release_stock(order_id: uuid.UUID) -> None:
    await deps.stock.release_stock(StockRelease(order_id=order_id))


@DBOS.step(name="project_order", **_STEP)
async def project_order(seq: int, view: OrderView) -> None:
    await deps.read_model.project(seq, view)


class _Order:
    """The workflow's view and its projection (seq 1 is the submit handler's ``received`` row)."""

    def __init__(self, view: OrderView) -> None:
        self.view = view
        self.seq = 1

    async def transition(
        self, status: OrderStatus, *, reason: FailureReason | None = None, note: str | None = None
    ) -> None:
        now = datetime.now(UTC)
        self.view.status, self.view.failure_reason, self.view.updated_at = status, reason, now
        self.view.history.append(StatusChange(status=status, at=now, note=note))
        self.seq += 1
        await project_order(self.seq, self.view)


@DBOS.workflow(name="dbos_order")
async def order_workflow(view: OrderView, payment_token: str) -> str:
    """One order from ``received`` to ``completed`` (or failed / rejected); its final status."""
    order = _Order(view)
    order_id, total, currency = view.id, view.total, view.currency

    refused = await reserve_stock(order_id, view.items)
    if refused:
        await order.transition(OrderStatus.REJECTED, reason=FailureReason.OUT_OF_STOCK, note=refused["message"])
        return order.view.status.value
    await order.transition(OrderStatus.STOCK_RESERVED)

    authorized = await authorize_payment(
        AuthorizePayment(
            order_id=order_id,
            amount=total,
            currency=currency,
            payment_token=payment_token,
            idempotency_key=provider_key(order_id, "authorize"),
        )
    )
    if "refused" in authorized:
        await release_stock(order_id)
        declined = authorized["refused"] == ERR_PAYMENT_DECLINED
        await order.transition(
            OrderStatus.REJECTED if declined else OrderStatus.FAILED,
            reason=FailureReason.PAYMENT_DECLINED if declined else FailureReason.PAYMENT_UNAVAILABLE,
            note=authorized["message"],
        )
        return order.view.status.value
    await order.transition(OrderStatus.PAYMENT_AUTHORIZED)

    def payment(action: str) -> PaymentAction:
        return PaymentAction(
            order_id=order_id,
            authorization_id=authorized["authorization_id"],
            amount=total,
            currency=currency,
            idempotency_key=provider_key(order_id, action),
        )

    shipped = await create_shipment(
        CreateShipment(
            order_id=order_id,
            shipping_address=view.shipping_address,
            lines=view.items,
            idempotency_key=provider_key(order_id, "ship"),
        )
    )
    if "refused" in shipped:
        await void_payment(payment("void"))
        await release_stock(order_id)
        await order.transition(OrderStatus.FAILED, reason=FailureReason.CARRIER_UNAVAILABLE, note=shipped["message"])
        return order.view.status.value
    order.view.tracking_number = shipped["tracking_number"]
    await order.transition(OrderStatus.SHIPPED)  # the tracking number is now findable by the webhook
    await capture_payment(payment("capture"))
    await commit_stock(order_id)

    event = await DBOS.recv_async(TOPIC_CARRIER, timeout_seconds=deps.settings.delivery_deadline_s)
    if event is None or event["event"] != CarrierEventKind.DELIVERED.value:
        note = "no delivery by the deadline" if event is None else "carrier reported the parcel lost"
        await refund_payment(payment("refund"))  # the goods left and never arrived: the money goes back
        await order.transition(OrderStatus.FAILED, reason=FailureReason.LOST_IN_TRANSIT, note=note)
        return order.view.status.value
    order.view.carrier_events.append(
        CarrierEvent(event=event["event"], occurred_at=event["occurred_at"], tracking_number=event["tracking_number"])
    )
    await order.transition(OrderStatus.COMPLETED)
    return order.view.status.value


class DbosOrder(BaseModel):
    sku: str
    quantity: int = 1
    shipping_address: Address
    payment_token: str = "tok_ok"


def dbos_config(system_database_url: str) -> DBOSConfig:
    """DBOS's defaults (system database pool and all), local only: no Conductor, no OTLP export
    (nothing leaves the machine)."""
    return {
        "name": "orders-dbos-baseline",
        "system_database_url": system_database_url,
        "enable_otlp": False,
        "log_level": "WARNING",
        "application_version": "bench",
        "executor_id": "bench",
    }


def create_app(settings: Settings, system_database_url: str) -> FastAPI:
    handles: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = create_engine(settings)
        async with provider_client(settings) as http:
            deps.settings = settings
            deps.read_model = OrderReadModel(engine)
            deps.stock = StockActivities(engine)
            deps.payment = PaymentActivities(http, settings.payment_base_url)
            deps.shipping = ShippingActivities(http, settings.carrier_base_url)
            app.state.catalog = Catalog(engine)
            app.state.engine = engine
            DBOS(config=dbos_config(system_database_url))
            DBOS.launch()  # recovers this executor's unfinished workflows, then serves
            try:
                yield
            finally:
                DBOS.destroy()
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/dbos/orders", status_code=202)
    async def place(body: DbosOrder, idempotency_key: str = Header(alias="Idempotency-Key", max_length=200)) -> dict:
        order_id = uuid.uuid5(NAMESPACE, f"{CUSTOMER}/{idempotency_key}")
        price, currency = (await app.state.catalog.prices([body.sku]))[body.sku]
        lines = [OrderLine(sku=body.sku, quantity=body.quantity, unit_price=price)]
        view = OrderView.received(
            order_id=order_id,
            customer_id=CUSTOMER,
            items=lines,
            total=price * body.quantity,
            currency=currency,
            shipping_address=body.shipping_address,
            at=datetime.now(UTC),
        )
        async with app.state.engine.begin() as conn:
            await OrderReadModel.insert_received(conn, view)
        # The workflow id is the order id: a repeated submission finds the workflow already there.
        with SetWorkflowID(str(order_id)):
            handles[str(order_id)] = await DBOS.start_workflow_async(order_workflow, view, body.payment_token)
        return {"id": str(order_id), "status": OrderStatus.RECEIVED.value}

    @app.get("/dbos/orders/{order_id}/result")
    async def result(order_id: str) -> dict:
        """Wait for the order's workflow to end; its final status."""
        handle = handles.pop(order_id, None) or await DBOS.retrieve_workflow_async(order_id)
        return {"id": order_id, "status": await handle.get_result()}

    @app.post("/dbos/carrier/events", status_code=202)
    async def carrier_event(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            verify_webhook(
                settings.carrier_webhook_secret,
                raw,
                request.headers.get(SIGNATURE_HEADER),
                time.time(),
                settings.carrier_webhook_tolerance_s,
            )
        except WebhookSignatureError as error:
            return JSONResponse({"detail": str(error)}, status_code=401)
        event = json.loads(raw)
        kind = CarrierEventKind(event["event"])
        if kind in TRACKING_ONLY:
            at = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
            record = CarrierEvent(event=kind, occurred_at=at, tracking_number=event["tracking_number"])
            found = await deps.read_model.record_tracking(event["tracking_number"], record) is not None
        else:
            view = await deps.read_model.find_by_tracking_number(event["tracking_number"])
            found = view is not None
            if view is not None and not view.status.is_terminal:
                await DBOS.send_async(
                    str(view.id), event, TOPIC_CARRIER, idempotency_key=f"{event['tracking_number']}:{kind.value}"
                )
        if not found:
            return JSONResponse({"detail": "unknown tracking number"}, status_code=404)
        return JSONResponse({"status": "accepted"}, status_code=202)

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--system-database-url", required=True, help="postgresql://... of DBOS's system database")
    args = parser.parse_args()
    # Nothing of a DBOS Cloud / Conductor environment may reach this process: it stays offline.
    for name in [name for name in os.environ if name.startswith("DBOS_")]:
        del os.environ[name]
    logging.getLogger("dbos").setLevel(logging.WARNING)
    app = create_app(get_settings(), args.system_database_url)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
