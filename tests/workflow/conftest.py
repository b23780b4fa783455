"""Workflow tests: the time-skipping test server (timers pass without waiting), real activities
against PostgreSQL and the sandbox providers over HTTP, and a fresh task queue per test."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from temporalio.api.workflowservice.v1 import ListOpenWorkflowExecutionsRequest
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.http import provider_client
from core.search_attributes import ensure_search_attributes
from core.temporal import data_converter
from devstack.binaries import temporal_test_server_path
from workers.main import build_workers


@pytest.fixture(scope="session")
async def ts_env(settings):
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(settings),
        test_server_existing_path=str(temporal_test_server_path()),
    )
    # The test server rejects upserts of unregistered search attributes, as a real cluster does.
    await ensure_search_attributes(env.client, env.client.namespace)
    yield env
    await env.shutdown()


@pytest.fixture(autouse=True)
async def no_workflow_outlives_its_test(request):
    """Terminate what a test left running on the shared time-skipping server. A workflow left
    waiting with no worker (a test that stops at a refused update, say) stalls time skipping for the
    tests after it once its timer fires: its workflow task is never taken."""
    yield
    if "ts_env" not in request.fixturenames:
        return
    client = request.getfixturevalue("ts_env").client
    response = await client.workflow_service.list_open_workflow_executions(
        ListOpenWorkflowExecutionsRequest(namespace=client.namespace, maximum_page_size=1000)
    )
    for execution in response.executions:
        handle = client.get_workflow_handle(execution.execution.workflow_id, run_id=execution.execution.run_id)
        try:
            await handle.terminate(reason="the test that started it has ended")
        except RPCError:
            pass  # ended meanwhile


@pytest.fixture(scope="session")
async def provider_http(settings):
    async with provider_client(settings) as http:
        yield http


@pytest.fixture
def task_queue() -> str:
    return f"wf-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def run_workers(ts_env, settings, engine, provider_http, sandbox, task_queue):
    """``async with run_workers("orchestration", "inventory"): ...`` runs the chosen queues (default all)."""

    @asynccontextmanager
    async def _run(*concerns: str):
        workers = build_workers(
            ts_env.client, settings, engine, provider_http, concerns=concerns or None, task_queue=task_queue
        )
        async with AsyncExitStack() as stack:
            for worker in workers:
                await stack.enter_async_context(worker)
            yield workers

    return _run


@pytest.fixture
def sandbox_http(sandbox):
    return httpx.AsyncClient(base_url=sandbox, timeout=10)
