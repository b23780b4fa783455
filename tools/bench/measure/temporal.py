"""Temporal's cost of an order, counted from workflow histories."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.client import Client

from core.domain import order_workflow_id

LOCAL_ACTIVITY_MARKER = "core_local_activity"  # the marker name of the Core-based SDKs


def count_actions(events) -> dict[str, int]:
    """Temporal actions and history events of one workflow, counted from its history.

    Actions, as Temporal Cloud bills them (approximately): the workflow start (1), every activity
    scheduled plus every retry attempt, one per workflow task that ran local activities (Cloud
    counts the local activities of one workflow task as one action), every timer started, signal
    received, update accepted, search-attribute upsert and properties modification. Patch markers
    are not local activities, and upserts of only ``TemporalChangeVersion`` (written by the SDK for
    ``workflow.patched``) are exempt, as Cloud documents: neither is counted.
    """
    types = Counter(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events)
    retries = sum(
        max(0, e.activity_task_started_event_attributes.attempt - 1)
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    )
    local = [
        e.marker_recorded_event_attributes
        for e in events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    ]
    local_batches = len({marker.workflow_task_completed_event_id for marker in local})
    upserts = sum(
        1
        for e in events
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
        and set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
        != {"TemporalChangeVersion"}
    )
    actions = (
        1
        + types["ACTIVITY_TASK_SCHEDULED"]
        + retries
        + local_batches
        + types["TIMER_STARTED"]
        + types["WORKFLOW_EXECUTION_SIGNALED"]
        + types["WORKFLOW_EXECUTION_UPDATE_ACCEPTED"]
        + upserts
        + types["WORKFLOW_PROPERTIES_MODIFIED"]
    )
    return {
        "actions": actions,
        "history_events": len(events),
        "activities": types["ACTIVITY_TASK_SCHEDULED"],
        "activity_retries": retries,
        "local_activities": len(local),
        "local_activity_batches": local_batches,
        "timers": types["TIMER_STARTED"],
        "signals": types["WORKFLOW_EXECUTION_SIGNALED"],
        "updates": types["WORKFLOW_EXECUTION_UPDATE_ACCEPTED"],
        "upserts": upserts,
        "workflow_tasks": types["WORKFLOW_TASK_COMPLETED"],
    }


def history_bytes(events) -> int:
    """The size of a history as the server hands it out: the serialized ``History`` message of its
    events (payloads as stored, i.e. encrypted by the codec), what a capacity estimate of Temporal's
    persistence starts from (the server's own rows add indexes and per-event overhead)."""
    return History(events=list(events)).ByteSize()


async def temporal_cost(client: Client, order_ids: list[str], sample: int) -> dict[str, Any]:
    """Mean actions, history events and history bytes per completed order, from a sample of histories."""
    chosen = order_ids[:sample]
    counts = []
    for order_id in chosen:
        history = await client.get_workflow_handle(order_workflow_id(order_id)).fetch_history()
        counts.append(count_actions(history.events) | {"history_bytes": history_bytes(history.events)})
    if not counts:
        return {"sampled": 0}
    return {"sampled": len(counts), **{key: round(statistics.mean(c[key] for c in counts), 2) for key in counts[0]}}
