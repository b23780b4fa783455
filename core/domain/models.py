"""Order domain models: statuses, failure reasons, workflow and activity payloads, the order view.

Money is always integer minor units with an ISO 4217 currency.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.domain.countries import ISO_3166_ALPHA2


class OrderStatus(StrEnum):
    RECEIVED = "received"
    STOCK_RESERVED = "stock_reserved"
    AWAITING_REVIEW = "awaiting_review"
    # Part of the order could not be reserved: the customer amends (keeps what is available) or cancels.
    AWAITING_CUSTOMER = "awaiting_customer"
    PAYMENT_AUTHORIZED = "payment_authorized"
    SHIPPED = "shipped"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_cancellable(self) -> bool:
        return self in CANCELLABLE_STATUSES


TERMINAL_STATUSES = frozenset({OrderStatus.COMPLETED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.FAILED})
CANCELLABLE_STATUSES = frozenset(
    {
        OrderStatus.RECEIVED,
        OrderStatus.STOCK_RESERVED,
        OrderStatus.AWAITING_CUSTOMER,
        OrderStatus.AWAITING_REVIEW,
        OrderStatus.PAYMENT_AUTHORIZED,
    }
)


class FailureReason(StrEnum):
    OUT_OF_STOCK = "out_of_stock"
    PAYMENT_DECLINED = "payment_declined"
    PAYMENT_UNAVAILABLE = "payment_unavailable"
    REVIEW_REJECTED = "review_rejected"
    REVIEW_TIMEOUT = "review_timeout"
    CARRIER_UNAVAILABLE = "carrier_unavailable"
    LOST_IN_TRANSIT = "lost_in_transit"
    CANCELLED_BY_CUSTOMER = "cancelled_by_customer"
    CUSTOMER_TIMEOUT = "customer_timeout"  # no amend or cancel while awaiting the customer


class ShipmentStatus(StrEnum):
    PENDING = "pending"  # planned (stock reserved in its warehouse), not yet handed to the carrier
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    LOST = "lost"  # reported lost, or not delivered by the deadline: its part is refunded
    CANCELLED = "cancelled"  # never shipped: its stock released, its part not charged


class ReviewDecision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class CarrierEventKind(StrEnum):
    PICKED_UP = "picked_up"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"
    LOST = "lost"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Address(_Model):
    name: str = Field(min_length=1, max_length=200)
    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(min_length=2, max_length=2, description="ISO 3166-1 alpha-2 code", examples=["DE"])

    @field_validator("country")
    @classmethod
    def _iso_country(cls, value: str) -> str:
        if value not in ISO_3166_ALPHA2:
            raise ValueError("must be an ISO 3166-1 alpha-2 country code in upper case, e.g. DE")
        return value


class OrderLine(_Model):
    sku: str
    quantity: int
    unit_price: int  # minor units, snapshot of the catalogue price at submission


class StatusChange(_Model):
    status: OrderStatus
    at: datetime
    note: str | None = None


class CarrierEvent(_Model):
    event: CarrierEventKind
    occurred_at: datetime
    # Which parcel it is about (an order may ship several); None on views of older orders.
    tracking_number: str | None = None


class ReviewRecord(_Model):
    decision: ReviewDecision
    note: str | None = None
    reviewer: str
    at: datetime


# --- workflow input and messages -------------------------------------------------------------


class OrderInput(_Model):
    """The single input of the order workflow. Add fields with defaults; never remove or reorder."""

    order_id: uuid.UUID
    customer_id: str
    lines: list[OrderLine]
    currency: str
    total: int
    shipping_address: Address
    payment_token: str
    created_at: datetime
    review_threshold: int
    review_timeout_s: float
    delivery_deadline_s: float
    # How long an order waits in awaiting_customer for an amend or a cancel (then customer_timeout).
    customer_response_timeout_s: float = 24 * 3600


class AmendLine(_Model):
    sku: str
    quantity: int


class AmendRequest(_Model):
    """The order's lines as the customer keeps them: each SKU of the order at most once, quantities
    no larger than what was reserved for it; dropped SKUs are left out. Prices stay those of order time."""

    lines: list[AmendLine]
    requested_by: str | None = None


class CancelRequest(_Model):
    reason: str | None = None
    requested_by: str | None = None
    # Only these shipments (their ids), for an order some of whose shipments already left; None: the
    # whole order, refused once anything has shipped.
    shipments: list[str] | None = None


class ReviewRequest(_Model):
    decision: ReviewDecision
    note: str | None = None
    reviewer: str


class AddressChangeRequest(_Model):
    shipping_address: Address


class CarrierEventSignal(_Model):
    tracking_number: str
    event: CarrierEventKind
    occurred_at: datetime


class UnavailableLine(_Model):
    """``quantity`` units of ``sku`` the order wants that no warehouse could reserve."""

    sku: str
    quantity: int


class ShipmentView(_Model):
    """One fulfilment: the items one warehouse ships, their share of the total, and its parcel."""

    id: str
    warehouse_id: str
    items: list[OrderLine]
    amount: int  # minor units: what is captured when it ships, refunded if it is lost
    status: ShipmentStatus = ShipmentStatus.PENDING
    tracking_number: str | None = None
    delivered_at: datetime | None = None


class RefundRecord(_Model):
    amount: int
    reason: str  # e.g. lost_in_transit, cancelled_by_customer
    shipment_id: str | None = None
    at: datetime


class OrderView(_Model):
    """The whole order as the workflow knows it (its state, in its history); also what the read
    model stores. The API publishes its own response model, mapped from this one."""

    id: uuid.UUID
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
    # Multi-warehouse fulfilment (fields with defaults: views of older orders stay valid).
    shipments: list[ShipmentView] = []
    refunds: list[RefundRecord] = []
    unavailable: list[UnavailableLine] = []  # what could not be reserved, while awaiting the customer
    customer_deadline: datetime | None = None  # when an order awaiting the customer is cancelled

    @classmethod
    def received(
        cls,
        *,
        order_id: uuid.UUID,
        customer_id: str,
        items: list[OrderLine],
        total: int,
        currency: str,
        shipping_address: Address,
        at: datetime,
    ) -> OrderView:
        """A just-accepted order: status ``received``, one history entry, created and updated ``at``.

        The one place the first view is built, by the gateway (the body of the 202 and the first
        read-model row) and by the workflow (its initial state), so both start from the same view.
        Pure: the time is an argument, so the workflow passes its input's ``created_at``.
        """
        return cls(
            id=order_id,
            customer_id=customer_id,
            status=OrderStatus.RECEIVED,
            items=items,
            total=total,
            currency=currency,
            shipping_address=shipping_address,
            history=[StatusChange(status=OrderStatus.RECEIVED, at=at)],
            created_at=at,
            updated_at=at,
        )


# --- activity inputs and results ---------------------------------------------------------------


class StockRequest(_Model):
    order_id: uuid.UUID
    lines: list[OrderLine]
    # False: all or nothing (OutOfStock when any unit is missing). True: reserve what is available
    # and report the rest in StockAllocation.unavailable (the customer decides).
    allow_partial: bool = False


class ReduceReservation(_Model):
    """Keep only ``keep`` (sku -> units) of an order's reservation, releasing the rest (SKUs left
    out are released entirely); the least preferred warehouses give back first."""

    order_id: uuid.UUID
    keep: dict[str, int]


class StockRelease(_Model):
    order_id: uuid.UUID
    # None settles every warehouse of the order; a warehouse id settles only that shipment's part.
    warehouse_id: str | None = None


class AuthorizePayment(_Model):
    order_id: uuid.UUID
    amount: int
    currency: str
    payment_token: str
    idempotency_key: str


class PaymentAuthorization(_Model):
    authorization_id: str
    status: str


class PaymentAction(_Model):
    """Capture, void or refund of one authorization."""

    order_id: uuid.UUID
    authorization_id: str
    amount: int
    currency: str
    idempotency_key: str
    # Capture only: False leaves the authorization open for the captures of later shipments (the
    # provider's final_capture); a final capture releases whatever stays uncaptured.
    final_capture: bool = True


class VoidUnknownAuthorization(_Model):
    """Void an authorization whose outcome is unknown (the authorize call never answered)."""

    order_id: uuid.UUID
    amount: int
    currency: str
    payment_token: str
    authorize_idempotency_key: str
    idempotency_key: str


class CreateShipment(_Model):
    order_id: uuid.UUID
    shipping_address: Address
    lines: list[OrderLine]
    idempotency_key: str
    warehouse_id: str | None = None  # where the parcel leaves from (None: orders before warehouses)


class Shipment(_Model):
    tracking_number: str


class CancelShipment(_Model):
    order_id: uuid.UUID
    tracking_number: str
    idempotency_key: str


class ProjectOrder(_Model):
    """One transition to write into the read model; ``seq`` makes the write idempotent and ordered."""

    seq: int
    view: OrderView
    # Stock of a shipment that just left, deducted in the same database transaction as this
    # transition (PATCH_LEAN_HISTORY): the read model says `shipped` exactly when the goods are gone.
    commit_stock: StockRelease | None = None


# --- stock per warehouse -----------------------------------------------------------------------


class AllocationLine(_Model):
    """``quantity`` units of ``sku`` reserved in (and later shipped from) ``warehouse_id``."""

    warehouse_id: str
    sku: str
    quantity: int


class StockAllocation(_Model):
    """Where an order's stock is reserved: one line per (warehouse, sku), most preferred warehouse
    first, and what could not be reserved. Each warehouse in ``lines`` is one shipment."""

    lines: list[AllocationLine] = []
    unavailable: list[UnavailableLine] = []

    @property
    def complete(self) -> bool:
        return not self.unavailable

    @property
    def warehouses(self) -> list[str]:
        """The warehouses that ship something, in the order of ``lines`` (most preferred first)."""
        return list(dict.fromkeys(line.warehouse_id for line in self.lines))

    def lines_of(self, warehouse_id: str) -> list[AllocationLine]:
        return [line for line in self.lines if line.warehouse_id == warehouse_id]
