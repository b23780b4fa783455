"""Log context and activity telemetry for Temporal code, so one order can be followed by its id.

Every log line written while an order is handled carries the same keys, whichever process wrote it:

=============  ==========================================================================
``order_id``   the order (gateway: from the route or the ``Location`` header; Temporal code:
               derived from the workflow id ``order-<uuid>``)
``request_id`` the gateway request (``X-Request-ID``)
``workflow_id`` / ``run_id`` / ``workflow_type``  the workflow execution
``activity_type`` / ``attempt``  the activity and its attempt number
=============  ==========================================================================

* Activities: :class:`ActivityTelemetryInterceptor` binds the activity's context into structlog's
  contextvars for the duration of each attempt (so any ``structlog`` call inside it carries them),
  writes one line per finished attempt, and counts provider calls and payment retries on the SDK's
  metric meter.
* Workflows log with ``workflow.logger``, which writes nothing while a history is replayed; its
  records carry the workflow's details as ``extra``, which :func:`temporal_log_context` lifts into
  the same keys.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

import structlog
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from core.domain import order_id_from_workflow_id
from core.metrics import ORDERS_PAYMENT_RETRIES, ORDERS_PROVIDER_CALLS

log = structlog.get_logger("orders.activity")

# Activities that call an outside provider; their outcomes feed the provider error ratio SLO.
PROVIDER_ACTIVITIES = frozenset(
    {
        "authorize_payment",
        "capture_payment",
        "void_payment",
        "refund_payment",
        "void_unknown_authorization",
        "create_shipment",
        "cancel_shipment",
    }
)
PAYMENT_ACTIVITIES = frozenset(name for name in PROVIDER_ACTIVITIES if "payment" in name or "authoriz" in name)

# Fields passed as ``extra=`` by our workflow code, rendered as top-level keys.
WORKFLOW_EXTRA_FIELDS = ("order_status", "failure_reason", "compensation")


def order_id_of(workflow_id: str | None) -> str | None:
    """The order id of an order workflow's id; None for any other workflow."""
    try:
        return str(order_id_from_workflow_id(workflow_id)) if workflow_id else None
    except ValueError:
        return None


def _context_from_workflow(details: dict[str, Any]) -> dict[str, Any]:
    context = {
        "workflow_id": details.get("workflow_id"),
        "run_id": details.get("run_id"),
        "workflow_type": details.get("workflow_type"),
        "task_queue": details.get("task_queue"),
    }
    order_id = order_id_of(details.get("workflow_id"))
    if order_id:
        context["order_id"] = order_id
    return context


def _context_from_activity(details: dict[str, Any]) -> dict[str, Any]:
    context = {
        "workflow_id": details.get("workflow_id"),
        "run_id": details.get("workflow_run_id"),
        "activity_type": details.get("activity_type"),
        "activity_id": details.get("activity_id"),
        "attempt": details.get("attempt"),
        "task_queue": details.get("task_queue"),
    }
    order_id = order_id_of(details.get("workflow_id"))
    if order_id:
        context["order_id"] = order_id
    return context


def temporal_log_context(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: turn the ``extra`` that ``workflow.logger`` / ``activity.logger`` attach
    to standard-library records into the platform's log keys (existing keys win)."""
    record = event_dict.get("_record")
    if record is None:
        return event_dict
    details = getattr(record, "temporal_workflow", None)
    if isinstance(details, dict):
        for key, value in _context_from_workflow(details).items():
            event_dict.setdefault(key, value)
    details = getattr(record, "temporal_activity", None)
    if isinstance(details, dict):
        for key, value in _context_from_activity(details).items():
            event_dict.setdefault(key, value)
    for key in WORKFLOW_EXTRA_FIELDS:
        if hasattr(record, key):
            event_dict.setdefault(key, getattr(record, key))
    return event_dict


def quiet_temporal_log_messages() -> None:
    """The SDK appends its context dict to every message; our processor renders it as keys instead."""
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    if isinstance(error, ApplicationError) and error.non_retryable:
        return "rejected"  # a definitive business answer (a decline, a refused request)
    return "error"  # timeouts, 5xx, 429, refused connections: retried, and counted against the provider


class _ActivityTelemetry(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        context = _context_from_activity(
            {
                "workflow_id": info.workflow_id,
                "workflow_run_id": info.workflow_run_id,
                "activity_type": info.activity_type,
                "activity_id": info.activity_id,
                "attempt": info.attempt,
                "task_queue": info.task_queue,
            }
        )
        meter = activity.metric_meter()
        if info.activity_type in PAYMENT_ACTIVITIES and info.attempt > 1:
            meter.create_counter(ORDERS_PAYMENT_RETRIES, "payment provider calls retried").add(
                1, {"activity_type": info.activity_type}
            )
        started = time.perf_counter()
        error: BaseException | None = None
        with structlog.contextvars.bound_contextvars(**context):
            try:
                return await super().execute_activity(input)
            except BaseException as raised:
                error = raised
                raise
            finally:
                elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
                outcome = _outcome(error)
                if info.activity_type in PROVIDER_ACTIVITIES:
                    meter.create_counter(ORDERS_PROVIDER_CALLS, "provider calls by outcome").add(
                        1, {"activity_type": info.activity_type, "outcome": outcome}
                    )
                if error is None:
                    log.info("activity completed", duration_ms=elapsed_ms)
                else:
                    benign = isinstance(error, ApplicationError) and error.category == ApplicationErrorCategory.BENIGN
                    (log.info if benign else log.warning)(
                        "activity failed",
                        duration_ms=elapsed_ms,
                        outcome=outcome,
                        error=f"{type(error).__name__}: {error}",
                    )


class ActivityTelemetryInterceptor(Interceptor):
    """Worker interceptor: log context, one line per attempt, provider and retry metrics."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityTelemetry(next)


def worker_interceptors() -> list[Interceptor]:
    """Interceptors every worker gets (tracing comes with the client, see core.tracing)."""
    return [ActivityTelemetryInterceptor()]
