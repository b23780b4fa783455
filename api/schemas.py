"""Request and response bodies of the public API (kept apart from the domain and storage models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from core.domain import Address, CarrierEventKind, OrderView, ReviewDecision

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderItemIn(_Body):
    sku: Sku
    quantity: int = Field(ge=1, le=1000)


class OrderCreate(_Body):
    """A new order. Prices come from the catalogue; repeated SKU lines are rejected (merge them)."""

    items: list[OrderItemIn] = Field(min_length=1, max_length=100)
    shipping_address: Address
    payment_token: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [{"sku": "MUG-WHT", "quantity": 2}],
                    "shipping_address": {
                        "name": "Ada Lovelace",
                        "line1": "Unter den Linden 1",
                        "line2": None,
                        "city": "Berlin",
                        "postal_code": "10117",
                        "country": "DE",
                    },
                    "payment_token": "tok_ok",
                }
            ]
        },
    )


class CancelBody(_Body):
    reason: str | None = Field(default=None, max_length=500)


class ReviewBody(_Body):
    decision: ReviewDecision
    note: str | None = Field(default=None, max_length=500)


class CarrierEventBody(_Body):
    tracking_number: str = Field(min_length=1, max_length=64)
    event: CarrierEventKind
    occurred_at: datetime


class OrderList(BaseModel):
    items: list[OrderView]
    next_cursor: str | None


class ProductOut(BaseModel):
    sku: str
    name: str
    unit_price: int = Field(description="price in minor units of the currency")
    currency: str
    available: int = Field(description="on hand minus reserved")


class ProductList(BaseModel):
    items: list[ProductOut]
    next_cursor: str | None = None


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict] | None = None
