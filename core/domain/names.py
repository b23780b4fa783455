"""Names shared by the gateway, the workers, the CLI and the tests."""

from __future__ import annotations

import uuid

ORDER_WORKFLOW = "OrderWorkflow"

# Workflow updates, signals and queries.
UPDATE_CANCEL = "cancel"
UPDATE_REVIEW = "review"
UPDATE_SHIPPING_ADDRESS = "change_shipping_address"
UPDATE_AMEND = "amend"
SIGNAL_CARRIER_EVENT = "carrier_event"
QUERY_ORDER = "order"

# Error types raised by activities and update validators (ApplicationError.type).
ERR_OUT_OF_STOCK = "OutOfStock"
ERR_PAYMENT_DECLINED = "PaymentDeclined"
ERR_PROVIDER_REJECTED = "ProviderRejected"  # any other 4xx from a provider
ERR_INVALID_STATE = "InvalidOrderState"
# A request that can never be right for this order (the gateway answers 422, not 409): an amend
# naming a line the order lacks or more than was reserved, a cancel naming a shipment it lacks.
ERR_INVALID_AMEND = "InvalidAmend"
ERR_INVALID_CANCEL = "InvalidCancel"

# Namespace of the UUIDv5 that turns (customer, Idempotency-Key) into an order id.
ORDER_ID_NAMESPACE = uuid.UUID("8d1c64c8-6f57-4c55-9f0e-7f8b2d0e4a11")


def order_workflow_id(order_id: uuid.UUID | str) -> str:
    """The one workflow id of an order: ``order-<uuid>``."""
    return f"order-{order_id}"


def order_id_from_workflow_id(workflow_id: str) -> uuid.UUID:
    if not workflow_id.startswith("order-"):
        raise ValueError(f"not an order workflow id: {workflow_id!r}")
    return uuid.UUID(workflow_id.removeprefix("order-"))


def order_id_for_key(customer_id: str, idempotency_key: str) -> uuid.UUID:
    """Deterministic order id, so every duplicate of a submission lands on the same workflow."""
    return uuid.uuid5(ORDER_ID_NAMESPACE, f"{customer_id}\x1f{idempotency_key}")


ACTIVITY_CONCERNS = ("inventory", "payments", "shipping")


def activity_task_queue(workflow_task_queue: str, concern: str) -> str:
    """Task queue of one concern's activities, derived from the orchestration queue."""
    if concern not in ACTIVITY_CONCERNS:
        raise ValueError(f"unknown activity concern {concern!r}")
    return f"{workflow_task_queue}-{concern}"


def provider_key(order_id: uuid.UUID | str, operation: str) -> str:
    """Idempotency key sent to a provider for one operation of one order (e.g. ``authorize``)."""
    return f"order-{order_id}-{operation}"
