"""What runs where: the workflows and activities of each task queue, shared by the worker, the tests
and replay, so they can never disagree."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.payment import PaymentActivities
from activities.projection import ProjectionActivities
from activities.shipping import ShippingActivities
from activities.stock import StockActivities
from core.config import Settings
from workflows.order import OrderWorkflow

WORKFLOWS: Sequence[type] = (OrderWorkflow,)


@dataclass
class QueueSpec:
    """One worker: its task queue, workflows, activities and throttles."""

    task_queue: str
    workflows: Sequence[type]
    activities: Sequence[Callable]
    max_activities_per_second: float | None = None


def queue_specs(
    settings: Settings, engine: AsyncEngine, http: httpx.AsyncClient, task_queue: str | None = None
) -> dict[str, QueueSpec]:
    """Every queue of the platform, keyed by concern (orchestration, inventory, payments, shipping)."""
    base = task_queue or settings.task_queue
    stock = StockActivities(engine)
    payment = PaymentActivities(http, settings.payment_base_url)
    shipping = ShippingActivities(http, settings.carrier_base_url)
    projection = ProjectionActivities(engine, region=settings.region)
    return {
        # The order workflow runs its stock work as local activities (PATCH_LEAN_HISTORY; the
        # projection of `shipped` commits the stock), so its worker holds them too; the inventory
        # queue still serves runs started before.
        "orchestration": QueueSpec(
            base,
            WORKFLOWS,
            [projection.project_order, stock.reserve_stock, stock.release_stock, stock.reduce_reservation],
        ),
        "inventory": QueueSpec(
            f"{base}-inventory",
            (),
            [stock.reserve_stock, stock.release_stock, stock.commit_stock, stock.reduce_reservation],
        ),
        "payments": QueueSpec(
            f"{base}-payments",
            (),
            [
                payment.authorize_payment,
                payment.capture_payment,
                payment.void_payment,
                payment.refund_payment,
                payment.void_unknown_authorization,
            ],
            settings.payments_max_per_second,
        ),
        "shipping": QueueSpec(
            f"{base}-shipping",
            (),
            [shipping.create_shipment, shipping.cancel_shipment],
            settings.shipping_max_per_second,
        ),
    }
