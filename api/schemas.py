"""Request and response bodies of the public API (kept apart from the domain and storage models).

The order's response models mirror the domain's view field for field today, but they are the API's
own: the domain view is the workflow's state (in its history) and the read model's JSON, and it may
change without the public contract changing, or the other way round. Each is named like the OpenAPI
component clients generated their code from, which is also the name of its domain counterpart;
inside ``api`` the domain's are spelled ``domain.X``. A route answers ``OrderView.of(view)``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from core import domain
from core.domain import Address, CarrierEventKind, FailureReason, OrderStatus, ReviewDecision, ShipmentStatus, Text
from core.domain.countries import ISO_3166_ALPHA2

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
# Free text of requests: no NUL (PostgreSQL cannot store it) and no control characters.
Note = Annotated[str, Text(max_length=500, multiline=True)]
CustomerId = Annotated[str, Text(max_length=255)]
Cursor = Annotated[str, Text(max_length=200)]
ShipmentId = Annotated[str, Text(min_length=1, max_length=128)]
_COUNTRY_CODES: list[JsonValue] = [*sorted(ISO_3166_ALPHA2)]  # documented as an enum: generated clients list them


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShippingAddress(Address):
    """A shipping address as clients send it: the domain's address, each line a single line of text."""

    name: Annotated[str, Text(min_length=1, max_length=200)]
    line1: Annotated[str, Text(min_length=1, max_length=200)]
    line2: Annotated[str, Text(max_length=200)] | None = None
    city: Annotated[str, Text(min_length=1, max_length=100)]
    postal_code: Annotated[str, Text(min_length=1, max_length=20)]
    country: str = Field(
        min_length=2,
        max_length=2,
        description="ISO 3166-1 alpha-2 code",
        examples=["DE"],
        json_schema_extra={"enum": _COUNTRY_CODES},
    )

    def to_domain(self) -> Address:
        return Address(**self.model_dump())


class OrderItemIn(_Body):
    sku: Sku
    quantity: int = Field(ge=1, le=1000)


class OrderCreate(_Body):
    """A new order. Prices come from the catalogue; repeated SKU lines are rejected (merge them)."""

    items: list[OrderItemIn] = Field(min_length=1, max_length=100)
    shipping_address: ShippingAddress
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
    reason: Note | None = None
    shipments: list[ShipmentId] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="ids of the shipments to cancel (those not yet handed to the carrier); "
        "leave out to cancel the whole order, which is refused once any shipment has left",
    )


class AmendBody(_Body):
    """The lines an order awaiting the customer keeps: each SKU of the order at most once, no more
    units than were reserved for it (see the order's ``unavailable``); SKUs left out are dropped.
    Prices stay those of order time; the total is recomputed from them."""

    items: list[OrderItemIn] = Field(min_length=1, max_length=100)

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"items": [{"sku": "MUG-WHT", "quantity": 1}]}]}
    )


class ReviewBody(_Body):
    decision: ReviewDecision
    note: Note | None = None


class CarrierEventBody(_Body):
    tracking_number: Annotated[str, Text(min_length=1, max_length=64)]
    event: CarrierEventKind
    occurred_at: datetime


class _Public(BaseModel):
    # Built from the domain's objects by attribute, so only the fields declared here are published;
    # extra="forbid" keeps ``additionalProperties: false`` in the published schema.
    model_config = ConfigDict(extra="forbid", from_attributes=True)


class OrderLine(_Public):
    sku: str
    quantity: int
    unit_price: int


class StatusChange(_Public):
    status: OrderStatus
    at: datetime
    note: str | None = None


class CarrierEvent(_Public):
    event: CarrierEventKind
    occurred_at: datetime
    # The parcel the event is about (an order split across warehouses ships several); null on
    # events recorded before orders had several parcels.
    tracking_number: str | None = None


class ReviewRecord(_Public):
    decision: ReviewDecision
    note: str | None = None
    reviewer: str
    at: datetime


class ShipmentView(_Public):
    """One fulfilment of an order: what one warehouse ships, as its own parcel."""

    id: str
    # The domain says warehouse_id; the public name is the issue's, and both are read (the response
    # is validated again from its own dump).
    warehouse: str = Field(
        validation_alias=AliasChoices("warehouse", "warehouse_id"), description="id of the warehouse it ships from"
    )
    items: list[OrderLine]
    amount: int = Field(description="its part of the total, minor units: captured when it ships, refunded if lost")
    status: ShipmentStatus
    tracking_number: str | None = None
    delivered_at: datetime | None = None


class RefundRecord(_Public):
    """Money given back: a lost shipment's part, or what was cancelled after capture."""

    amount: int = Field(description="minor units of the order's currency")
    reason: str
    shipment: str | None = Field(
        default=None,
        validation_alias=AliasChoices("shipment", "shipment_id"),
        description="id of the shipment refunded, if the refund is for one",
    )
    at: datetime


class UnavailableLine(_Public):
    sku: str
    quantity: int = Field(description="units no warehouse could reserve")


class OrderView(_Public):
    """An order: its lines and total, where it is, how it got there, and where it ships.

    ``shipments`` lists one shipment per warehouse the order ships from; ``tracking_number`` is the
    first shipment's (clients from before split shipments keep working). While the order is
    ``awaiting_customer``, ``unavailable`` says what could not be reserved and ``customer_deadline``
    when the order is cancelled (``customer_timeout``) unless amended or cancelled before.
    """

    id: UUID
    customer_id: str
    status: OrderStatus
    failure_reason: FailureReason | None = None
    items: list[OrderLine]
    total: int
    currency: str
    shipping_address: Address
    tracking_number: str | None = None
    history: list[StatusChange]
    created_at: datetime
    updated_at: datetime
    review: ReviewRecord | None = None
    carrier_events: list[CarrierEvent] = []
    cancel_requested: bool = False
    shipments: list[ShipmentView] = []
    refunds: list[RefundRecord] = []
    unavailable: list[UnavailableLine] = []
    customer_deadline: datetime | None = None

    @classmethod
    def of(cls, view: domain.OrderView) -> OrderView:
        """The public body of the domain's view of an order."""
        return cls.model_validate(view, from_attributes=True)


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


# --- warehouses (operators) --------------------------------------------------------------------

WarehouseId = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class StockLevelOut(BaseModel):
    sku: str
    on_hand: int = Field(description="units in the warehouse, reserved ones included")
    reserved: int = Field(description="units held for orders that have not shipped")
    available: int = Field(description="on hand minus reserved")


class WarehouseOut(BaseModel):
    id: str
    name: str
    preference: int = Field(description="lower is preferred when the allocation rule has a choice")
    stock: list[StockLevelOut]


class WarehouseList(BaseModel):
    items: list[WarehouseOut]


class StockLevelIn(_Body):
    on_hand: int = Field(ge=0, le=1_000_000_000, description="units in the warehouse; at least what is reserved")
