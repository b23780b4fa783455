"""Run the workers: one Temporal worker per task queue in this process (or a chosen subset).

SIGTERM/SIGINT stop polling and let in-flight activities finish within the graceful timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import py_compile
import signal
from collections.abc import Iterable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities.http import provider_client
from core.config import Settings
from core.db.engine import create_engine
from core.observability import worker_interceptors
from core.temporal import connect_client
from core.tracing import configure_tracing
from workers.registry import queue_specs

log = structlog.get_logger(__name__)


def worker_tuning(settings: Settings) -> dict:
    """Worker options set in the settings (task slots, pollers, sticky cache); the rest stay the SDK's."""
    options = {
        "max_concurrent_workflow_tasks": settings.worker_max_concurrent_workflow_tasks,
        "max_concurrent_activities": settings.worker_max_concurrent_activities,
        "max_concurrent_local_activities": settings.worker_max_concurrent_local_activities,
        "max_cached_workflows": settings.worker_max_cached_workflows,
        "max_concurrent_workflow_task_polls": settings.worker_workflow_task_pollers,
        "max_concurrent_activity_task_polls": settings.worker_activity_task_pollers,
    }
    return {name: value for name, value in options.items() if value is not None}


def cache_workflow_bytecode(workflow_classes: Iterable[type]) -> None:
    """Write the bytecode of each workflow's module once.

    The workflow sandbox executes a workflow's module afresh for every workflow instance it
    creates (each start, each cache eviction). Python reads cached bytecode for that, but never
    writes it under PYTHONDONTWRITEBYTECODE=1 (as on the machines this is developed on) or in a
    checkout nobody imported from yet, and then compiles the source every time, a cost that shows
    in a busy worker's profile (docs/performance.md). A read-only install is fine: the image
    compiles its bytecode at build time.

    The modules beside it in its package are compiled too: a ``from workflows import policies``
    inside the sandbox loads ``workflows.policies`` afresh as well (the package is reloaded with
    the workflow module, and a from-list import bypasses the sandbox's pass-through).
    """
    for cls in workflow_classes:
        try:
            module = Path(inspect.getfile(cls))
            for source in sorted({module, *module.parent.glob("*.py")}):
                py_compile.compile(str(source), doraise=True)
        except (OSError, TypeError, py_compile.PyCompileError) as error:
            log.debug("workflow bytecode not cached", workflow=cls.__name__, error=str(error))


def build_workers(
    client: Client,
    settings: Settings,
    engine,
    http,
    *,
    concerns: Iterable[str] | None = None,
    task_queue: str | None = None,
) -> list[Worker]:
    specs = queue_specs(settings, engine, http, task_queue)
    chosen = list(concerns) if concerns else list(specs)
    unknown = set(chosen) - set(specs)
    if unknown:
        raise ValueError(f"unknown queue(s) {', '.join(sorted(unknown))}; choose from {', '.join(specs)}")
    workers = []
    for concern in chosen:
        spec = specs[concern]
        cache_workflow_bytecode(spec.workflows)
        workers.append(
            Worker(
                client,
                task_queue=spec.task_queue,
                workflows=list(spec.workflows),
                activities=list(spec.activities),
                max_task_queue_activities_per_second=spec.max_activities_per_second,
                graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_s),
                interceptors=worker_interceptors(),
                **worker_tuning(settings),
            )
        )
    return workers


async def run_workers(settings: Settings, concerns: Iterable[str] | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        http = await stack.enter_async_context(provider_client(settings))
        configure_tracing(settings, process="worker")
        client = await connect_client(settings, for_worker=True)
        workers = build_workers(client, settings, engine, http, concerns=concerns)
        for worker in workers:
            await stack.enter_async_context(worker)
        log.info(
            "workers running", task_queues=[w.task_queue for w in workers], metrics_port=settings.worker_metrics_port
        )
        await stop.wait()
        log.info("shutting down workers, letting in-flight activities finish")
    log.info("workers stopped")
