"""Worker readiness by asking a real Temporal dev server who polls, never by reading logs."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import uuid
from contextlib import AsyncExitStack

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from devstack.processes import ManagedProcess, ProcessStartError, free_port
from devstack.readiness import ACTIVITY, WORKFLOW, platform_task_queues, unpolled, worker_polls
from devstack.temporal import TemporalDevServer
from tests import harness
from tests.harness import wait_for


@workflow.defn(name="ReadinessProbe")
class ReadinessProbe:
    @workflow.run
    async def run(self) -> None:
        return None


@activity.defn(name="readiness_noop")
async def readiness_noop() -> None:
    return None


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    server = TemporalDevServer(None, port=free_port(), ui_port=None, log_dir=tmp_path_factory.mktemp("readiness"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def probe_settings(temporal):
    # The probe needs only Temporal; the database is never reached.
    return harness.test_settings("postgresql+asyncpg://postgres@127.0.0.1:1/unused", temporal_address=temporal.address)


def _worker(client: Client, task_queue: str, kinds) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ReadinessProbe] if WORKFLOW in kinds else [],
        activities=[readiness_noop],
        workflow_runner=UnsandboxedWorkflowRunner(),  # no workflow runs here; skip the sandbox's import check
    )


async def test_a_worker_is_ready_once_it_polls_every_queue_it_serves(temporal, probe_settings):
    base = f"ready-{uuid.uuid4().hex[:8]}"
    queues = platform_task_queues(base)
    assert queues == {
        base: (WORKFLOW, ACTIVITY),
        f"{base}-inventory": (ACTIVITY,),
        f"{base}-payments": (ACTIVITY,),
        f"{base}-shipping": (ACTIVITY,),
    }
    this_process = worker_polls(probe_settings, queues, pid=os.getpid)
    client = await Client.connect(temporal.address)

    # Nobody polls yet.
    assert len(await unpolled(client, queues)) == 5
    assert await asyncio.to_thread(this_process) is False

    async with AsyncExitStack() as workers:
        # Only the orchestration queue: the activity queues are still unserved.
        await workers.enter_async_context(_worker(client, base, queues[base]))
        await wait_for(
            lambda: _unpolled_is(
                client, queues, [f"{base}-{c}/activity" for c in ("inventory", "payments", "shipping")]
            ),
            what="the orchestration queue's pollers",
        )
        assert await asyncio.to_thread(this_process) is False

        for name, kinds in queues.items():
            if name != base:
                await workers.enter_async_context(_worker(client, name, kinds))
        await wait_for(lambda: asyncio.to_thread(this_process), what="the probe to see every queue polled")
        assert await unpolled(client, queues, identity=f"{os.getpid()}@x") != []  # identity is compared in full
        # Another process's probe does not take these pollers for its own.
        assert await asyncio.to_thread(worker_polls(probe_settings, queues, pid=lambda: os.getpid() + 1)) is False
        # Not started yet: no process id, not ready.
        assert await asyncio.to_thread(worker_polls(probe_settings, queues, pid=lambda: None)) is False


async def _unpolled_is(client: Client, queues, expected: list[str]) -> bool:
    return sorted(await unpolled(client, queues)) == sorted(expected)


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from temporalio import activity
    from temporalio.client import Client
    from temporalio.worker import Worker

    @activity.defn(name="readiness_noop")
    async def noop() -> None:
        return None

    async def main() -> None:
        client = await Client.connect(sys.argv[1])
        async with Worker(client, task_queue=sys.argv[2], activities=[noop]):
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_managed_process_waits_for_its_own_pollers(temporal, probe_settings, tmp_path):
    """The probe as a ManagedProcess ready_check: a child that polls is ready, one that does not
    times out with its output in the error."""
    queue = f"ready-child-{uuid.uuid4().hex[:8]}"
    queues = {queue: (ACTIVITY,)}
    worker = ManagedProcess(
        "probe-worker",
        [sys.executable, "-c", WORKER_SCRIPT, temporal.address, queue],
        log_path=tmp_path / "worker.log",
        ready_check=worker_polls(probe_settings, queues, pid=lambda: worker.pid),
        ready_timeout=30,
    )
    idle = ManagedProcess(
        "idle",
        [sys.executable, "-c", "import time; print('workers running', flush=True); time.sleep(60)"],
        log_path=tmp_path / "idle.log",
        ready_check=worker_polls(probe_settings, {f"{queue}-idle": (ACTIVITY,)}, pid=lambda: idle.pid),
        ready_timeout=3,
    )
    try:
        await asyncio.to_thread(worker.start)
        await asyncio.to_thread(worker.wait_ready)
        await asyncio.to_thread(idle.start)
        with pytest.raises(ProcessStartError, match="idle not ready"):
            await asyncio.to_thread(idle.wait_ready)  # its log says "workers running"; Temporal says no
    finally:
        await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(idle.stop)
