"""Bring back an order whose workflow failed, was terminated or timed out: reset it to its last
completed workflow task, so a new run replays the history and carries on with the current code.

Safe because every step can run twice: reservations are one row per (order, SKU), and the provider
calls reuse the idempotency keys derived from the order id (they are recomputed identically on
replay). Refused with a one-line reason where a reset would not be safe or not mean anything.
"""

from __future__ import annotations

import uuid

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from core.config import Settings
from core.domain import OrderView, order_workflow_id
from workers.replay import replay

RETRYABLE = {
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
    WorkflowExecutionStatus.CANCELED,
}


class RetryRefused(Exception):
    """Why this order cannot be retried; one line, safe to print."""


async def retry_order(client: Client, settings: Settings, order_id: uuid.UUID, *, reason: str = "orders retry") -> str:
    """Reset the order's workflow; returns the new run id. Raises RetryRefused."""
    workflow_id = order_workflow_id(order_id)
    handle = client.get_workflow_handle(workflow_id, result_type=OrderView)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise RetryRefused(f"order {order_id} has no workflow in namespace {client.namespace}") from None
        raise
    status = description.status
    if status == WorkflowExecutionStatus.RUNNING:
        raise RetryRefused(
            f"order {order_id} is still running; nothing to retry (a workflow stuck on a bug resumes by itself once fixed code is deployed)"
        )
    if status == WorkflowExecutionStatus.COMPLETED:
        view = await handle.result()
        outcome = view.status.value + (f"/{view.failure_reason.value}" if view.failure_reason else "")
        raise RetryRefused(
            f"order {order_id} ended as {outcome}, a business outcome whose compensations already ran; place a new order instead"
        )
    if status not in RETRYABLE:
        raise RetryRefused(
            f"order {order_id} is {status.name.lower() if status else 'unknown'}; only failed, terminated, timed-out or cancelled workflows can be retried"
        )

    history = await handle.fetch_history()
    [replayed] = await replay(settings, [history])
    if not replayed.ok:
        raise RetryRefused(
            f"order {order_id}'s history does not replay against this code ({replayed.detail}); deploy code that replays it first"
        )
    completed = [e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
    if not completed:
        raise RetryRefused(f"order {order_id} never completed a workflow task; start it again instead")
    response = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=description.run_id),
            reason=reason,
            workflow_task_finish_event_id=completed[-1],
            request_id=str(uuid.uuid4()),
        )
    )
    return response.run_id
