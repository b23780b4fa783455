"""Replay histories against the current workflow code (the SDK's Replayer) and fetch them.

Shared by `orders replay`, `orders history export`, `orders retry` and the golden-history tests, so
all of them judge compatibility with the same workflows and data converter as the worker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from core.config import Settings
from core.domain import ORDER_WORKFLOW
from core.temporal import data_converter
from workers.registry import WORKFLOWS


def default_failed_query(days: int = 7, now: datetime | None = None) -> str:
    """Visibility query of every failed or terminated order workflow closed in the last ``days`` days."""
    since = (now or datetime.now(UTC)) - timedelta(days=days)
    return (
        f"WorkflowType = '{ORDER_WORKFLOW}' AND ExecutionStatus IN ('Failed', 'Terminated') "
        f"AND CloseTime > '{since.strftime('%Y-%m-%dT%H:%M:%SZ')}'"
    )


@dataclass(frozen=True)
class ReplayOutcome:
    workflow_id: str
    run_id: str | None
    ok: bool
    detail: str | None = None  # the mismatch (or other replay error) when not ok

    @property
    def nondeterministic(self) -> bool:
        return not self.ok and self.detail is not None and "Nondeterminism" in self.detail


def replayer(settings: Settings) -> Replayer:
    return Replayer(workflows=list(WORKFLOWS), data_converter=data_converter(settings))


def load_history_file(path: Path) -> WorkflowHistory:
    """A history saved by `orders history export`, `temporal workflow show --output json` or the UI."""
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error.msg})") from None
    workflow_id = data.get("workflowId") or path.stem if isinstance(data, dict) else path.stem
    return WorkflowHistory.from_json(workflow_id, data)


async def replay(
    settings: Settings,
    histories: Iterable[WorkflowHistory] | AsyncIterator[WorkflowHistory],
    on_outcome: Callable[[ReplayOutcome], None] | None = None,
) -> list[ReplayOutcome]:
    """Replay each history; never raises for a history that does not replay (see ``ok``/``detail``)."""
    if not isinstance(histories, AsyncIterator):
        histories = _aiter(histories)
    outcomes: list[ReplayOutcome] = []
    async with replayer(settings).workflow_replay_iterator(histories) as results:
        async for result in results:
            history = result.history
            run_id = (
                history.events[0].workflow_execution_started_event_attributes.original_execution_run_id
                if history.events
                else None
            )
            failure = result.replay_failure
            outcome = ReplayOutcome(
                workflow_id=history.workflow_id,
                run_id=run_id or None,
                ok=failure is None,
                detail=None if failure is None else f"{type(failure).__name__}: {failure}".replace("\n", " "),
            )
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
    return outcomes


async def _aiter(items: Iterable[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for item in items:
        yield item


async def histories_by_query(client: Client, query: str, limit: int | None = None) -> AsyncIterator[WorkflowHistory]:
    async for history in client.list_workflows(query, limit=limit).map_histories():
        yield history


async def histories_by_ids(client: Client, workflow_ids: Iterable[str]) -> AsyncIterator[WorkflowHistory]:
    for workflow_id in workflow_ids:
        yield await client.get_workflow_handle(workflow_id).fetch_history()
