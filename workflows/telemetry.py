"""Business metrics and log lines of the order workflow, replay-safe.

``workflow.metric_meter()`` and ``workflow.logger`` both do nothing while a history is replayed, so a
worker that rebuilds an order's state (after a restart or a cache eviction) neither counts it again
nor repeats its log lines. The metric names match ``core.metrics`` (the dashboard's contract); they
are spelled here because workflow code imports only the standard library, temporalio and core.domain.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from core.domain import FailureReason, OrderInput, OrderStatus

ORDERS_TERMINAL = "orders_terminal"
ORDERS_RECEIVED_TO_SHIPPED = "orders_received_to_shipped_seconds"
ORDERS_TIME_TO_TERMINAL = "orders_time_to_terminal_seconds"
ORDERS_COMPENSATIONS = "orders_compensations"


def status_changed(order: OrderInput, status: OrderStatus, reason: FailureReason | None) -> None:
    """Log the transition and count terminal outcomes and the received-to-shipped lead time."""
    workflow.logger.info(
        "order %s",
        status.value,
        extra={"order_status": status.value, "failure_reason": reason.value if reason else None},
    )
    meter = workflow.metric_meter()
    if status == OrderStatus.SHIPPED:
        meter.create_histogram_timedelta(
            ORDERS_RECEIVED_TO_SHIPPED, "time from order received to shipment created", "s"
        ).record(workflow.now() - order.created_at)
    if status.is_terminal:
        meter.create_counter(ORDERS_TERMINAL, "orders that reached a terminal status").add(
            1, {"status": status.value, "reason": reason.value if reason else "none"}
        )
        meter.create_histogram_timedelta(
            ORDERS_TIME_TO_TERMINAL, "time from order received to its terminal status", "s"
        ).record(workflow.now() - order.created_at, {"status": status.value})


def compensating(step: str) -> None:
    workflow.logger.info("compensating: %s", step, extra={"compensation": step})
    workflow.metric_meter().create_counter(ORDERS_COMPENSATIONS, "compensation steps run").add(1, {"step": step})
