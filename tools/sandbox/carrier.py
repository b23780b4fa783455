"""Sandbox parcel carrier (``/carrier/v1``).

Magic postal codes of the shipping address:

- ``99999``: the carrier is unavailable; creating the shipment always answers 503 (never stored,
  so every retry fails the same way).
- ``99998``: the parcel gets lost; its events end with ``lost`` instead of ``delivered``.

With ``sandbox_auto_deliver`` a created shipment schedules ``picked_up``, ``in_transit`` and
``delivered`` (or ``lost``) over ``sandbox_delivery_delay_s``; :mod:`sandbox.delivery` sends them.
A cancelled shipment sends no further events; a delivered or lost one cannot be cancelled (409).
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy import Interval, RowMapping, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sandbox.deps import EngineDep, IdempotencyKey, SettingsDep, StoreDep
from sandbox.errors import SandboxError, TransientError
from sandbox.faults import inject_faults
from sandbox.idempotency import Attempt, Outcome
from sandbox.tables import shipment_events as events
from sandbox.tables import shipments

UNAVAILABLE_POSTAL_CODE = "99999"
LOST_POSTAL_CODE = "99998"
FINAL_EVENTS = {"delivered", "lost"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Address(_Body):
    name: str = Field(min_length=1, max_length=200)
    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(None, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(min_length=2, max_length=2)


class Item(_Body):
    sku: str = Field(min_length=1, max_length=100)
    quantity: StrictInt = Field(gt=0)


class CreateShipmentRequest(_Body):
    order_id: str = Field(min_length=1, max_length=200)
    shipping_address: Address
    items: list[Item] = Field(min_length=1, max_length=1000)


class EmptyRequest(_Body):
    pass


router = APIRouter(prefix="/carrier/v1", tags=["sandbox carrier"], dependencies=[Depends(inject_faults)])


def event_plan(delay_s: float, lost: bool) -> list[tuple[str, float]]:
    """(event, seconds after creation): spread evenly, the last one at ``delay_s``."""
    names = ["picked_up", "in_transit", "lost" if lost else "delivered"]
    return [(name, delay_s * (index + 1) / len(names)) for index, name in enumerate(names)]


@router.post("/shipments", status_code=201)
async def create_shipment(
    body: CreateShipmentRequest, key: IdempotencyKey, store: StoreDep, settings: SettingsDep, request: Request
) -> JSONResponse:
    async def handler(conn: AsyncConnection, attempt: Attempt) -> Outcome:
        postal_code = body.shipping_address.postal_code.strip()
        if postal_code == UNAVAILABLE_POSTAL_CODE:
            raise TransientError(503, "carrier_unavailable", "The carrier is temporarily unavailable.")
        lost = postal_code == LOST_POSTAL_CODE
        tracking_number = f"TRK{secrets.token_hex(8).upper()}"
        await conn.execute(
            insert(shipments).values(
                tracking_number=tracking_number,
                idempotency_key=attempt.key,
                order_id=body.order_id,
                shipping_address=body.shipping_address.model_dump(mode="json"),
                items=[item.model_dump(mode="json") for item in body.items],
                status="created",
                lost=lost,
            )
        )
        if settings.sandbox_auto_deliver:
            due = [
                {
                    "tracking_number": tracking_number,
                    "seq": seq,
                    "event": name,
                    "occurred_at": func.now() + literal(timedelta(seconds=offset), Interval),
                    "next_event_at": func.now() + literal(timedelta(seconds=offset), Interval),
                }
                for seq, (name, offset) in enumerate(event_plan(settings.sandbox_delivery_delay_s, lost), start=1)
            ]
            await conn.execute(insert(events).values(due))
        return Outcome(201, {"tracking_number": tracking_number, "status": "created"})

    response = await store.execute(
        scope="carrier.create_shipment", key=key, request=body.model_dump(mode="json"), handler=handler
    )
    delivery = getattr(request.app.state, "delivery", None)
    if delivery is not None and response.status_code == 201:
        delivery.notify()  # committed: the sender's idle workers sleep until the first one is due
    return response


@router.post("/shipments/{tracking_number}/cancel")
async def cancel_shipment(
    tracking_number: str, key: IdempotencyKey, store: StoreDep, body: EmptyRequest | None = None
) -> JSONResponse:
    async def handler(conn: AsyncConnection, _: Attempt) -> Outcome:
        # Locking the shipment waits for an event being sent right now, so the answer is final.
        shipment = (
            (
                await conn.execute(
                    select(shipments).where(shipments.c.tracking_number == tracking_number).with_for_update()
                )
            )
            .mappings()
            .first()
        )
        if shipment is None:
            raise SandboxError(404, "shipment_not_found", f"No shipment {tracking_number}.")
        if shipment["status"] in FINAL_EVENTS:
            raise SandboxError(409, f"already_{shipment['status']}", f"The shipment is already {shipment['status']}.")
        if shipment["status"] != "cancelled":
            await conn.execute(
                update(shipments).where(shipments.c.tracking_number == tracking_number).values(status="cancelled")
            )
            await conn.execute(
                update(events)
                .where(events.c.tracking_number == tracking_number, events.c.state == "pending")
                .values(state="cancelled")
            )
        return Outcome(200, {"tracking_number": tracking_number, "status": "cancelled"})

    return await store.execute(
        scope="carrier.cancel_shipment", key=key, request={"tracking_number": tracking_number}, handler=handler
    )


def _shipment_view(shipment: RowMapping, event_rows: list[RowMapping]) -> dict[str, Any]:
    return {
        "tracking_number": shipment["tracking_number"],
        "order_id": shipment["order_id"],
        "status": shipment["status"],
        "shipping_address": shipment["shipping_address"],
        "items": shipment["items"],
        "created_at": shipment["created_at"].isoformat(),
        "events": [
            {
                "event": row["event"],
                "occurred_at": row["occurred_at"].isoformat(),
                "delivery_state": row["state"],
                "attempts": row["attempts"],
                "sent_at": row["sent_at"].isoformat() if row["sent_at"] else None,
                "last_error": row["last_error"],
            }
            for row in event_rows
        ],
    }


@router.get("/shipments/{tracking_number}")
async def get_shipment(tracking_number: str, engine: EngineDep) -> dict[str, Any]:
    async with engine.connect() as conn:
        shipment = (
            (await conn.execute(select(shipments).where(shipments.c.tracking_number == tracking_number)))
            .mappings()
            .first()
        )
        if shipment is None:
            raise SandboxError(404, "shipment_not_found", f"No shipment {tracking_number}.")
        event_rows = (
            (
                await conn.execute(
                    select(events).where(events.c.tracking_number == tracking_number).order_by(events.c.seq)
                )
            )
            .mappings()
            .all()
        )
    return _shipment_view(shipment, list(event_rows))
