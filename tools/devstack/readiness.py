"""Is a worker ready? Ask Temporal whether it polls every task queue it serves.

A worker is ready when the server has seen it poll, not when it says so in its log: a log line can
be reworded, filtered by the log level or written before the last poller started. Temporal lists
the pollers of a task queue (``DescribeTaskQueue``) with the identity of each and when it last
polled; the SDK's default identity is ``<pid>@<hostname>``, so a probe given the worker's process
id knows its pollers from those of other workers, or of a killed one the server still lists (it
forgets a poller only five minutes after its last poll).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

from core.config import Settings
from core.domain import ACTIVITY_CONCERNS, activity_task_queue
from core.temporal import connect_client

WORKFLOW = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
ACTIVITY = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
#: A poll waits up to a minute for a task, so a poller that is still polling was seen within one.
RECENT = timedelta(minutes=1)

#: Task queue name -> the kinds of task a worker polls on it.
TaskQueues = Mapping[str, Sequence[int]]


def platform_task_queues(task_queue: str) -> dict[str, tuple[int, ...]]:
    """The task queues `orders worker` serves (workers/registry.py): the workflows and the
    projection activity on ``task_queue``, each concern's activities on its own queue."""
    return {
        task_queue: (WORKFLOW, ACTIVITY),
        **{activity_task_queue(task_queue, concern): (ACTIVITY,) for concern in ACTIVITY_CONCERNS},
    }


def sdk_identity(pid: int) -> str:
    """The identity the Temporal SDK gives the workers of process ``pid`` unless told otherwise."""
    return f"{pid}@{socket.gethostname()}"


async def unpolled(client: Client, task_queues: TaskQueues, *, identity: str | None = None) -> list[str]:
    """The task queues (``name/kind``) that no poller, or none with ``identity``, polled within
    :data:`RECENT`; empty when the worker is ready."""
    now = datetime.now(UTC)
    missing = []
    for name, kinds in task_queues.items():
        for kind in kinds:
            described = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace, task_queue=TaskQueue(name=name), task_queue_type=kind
                )
            )
            if not any(
                (identity is None or poller.identity == identity)
                and now - poller.last_access_time.ToDatetime(tzinfo=UTC) < RECENT
                for poller in described.pollers
            ):
                missing.append(f"{name}/{TaskQueueType.Name(kind).removeprefix('TASK_QUEUE_TYPE_').lower()}")
    return missing


def worker_polls(
    settings: Settings,
    task_queues: TaskQueues,
    *,
    pid: Callable[[], int | None] | None = None,
    interval_s: float = 0.25,
) -> Callable[[], bool]:
    """A ``ready_check`` for :class:`devstack.processes.ManagedProcess`: True once the Temporal
    server of ``settings`` has seen the worker poll every one of ``task_queues``.

    ``pid`` returns the worker's process id once it has started (e.g. ``lambda: process.pid``);
    without it any poller counts. The check is synchronous and runs an event loop of its own, so it
    must be called where none runs: ``wait_ready`` in a plain thread, or via ``asyncio.to_thread``.
    It asks at most every ``interval_s`` seconds, sleeping in between.
    """
    last_asked = 0.0

    async def ask() -> bool:
        process_id = pid() if pid is not None else None
        if pid is not None and process_id is None:
            return False
        try:
            client = await connect_client(settings)
            identity = sdk_identity(process_id) if process_id is not None else None
            return not await unpolled(client, task_queues, identity=identity)
        except (RPCError, RuntimeError):  # the server is not (yet) answering: not ready
            return False

    def check() -> bool:
        nonlocal last_asked
        time.sleep(max(0.0, last_asked + interval_s - time.monotonic()))
        last_asked = time.monotonic()
        return asyncio.run(ask())

    return check
