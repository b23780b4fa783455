"""Baseline (a) of `orders bench`: a bare Temporal workflow with the same number of activities,
local activities, search-attribute upserts, timers and signals as an order, doing no I/O, on the same server.

It measures the engine's own limit on this machine, so the platform's throughput can be read as a
ratio of it. The worker runs in its own process, as the platform's does:
``python -m bench.baselines.bare_engine --address 127.0.0.1:7233 --task-queue bare`` with the platform's
``ORDERS_`` environment (its client factory, so the same data converter and codec).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.worker import Worker

BARE_WORKFLOW = "BareOrderShape"


@dataclass
class BareInput:
    activities: int = 5
    local_activities: int = 5
    signals: int = 3
    upserts: int = 0  # search-attribute upserts (OrderStatus), as the order workflow does per transition


@activity.defn(name="bare_noop")
async def bare_noop(step: int) -> int:
    return step


@workflow.defn(name=BARE_WORKFLOW)
class BareOrderShape:
    def __init__(self) -> None:
        self._signals = 0

    @workflow.run
    async def run(self, shape: BareInput) -> int:
        for step in range(max(shape.activities, shape.local_activities, shape.upserts)):
            if step < shape.upserts:
                workflow.upsert_search_attributes(
                    [SearchAttributeKey.for_keyword("OrderStatus").value_set(f"step-{step}")]
                )
            if step < shape.local_activities:
                await workflow.execute_local_activity(bare_noop, step, start_to_close_timeout=timedelta(seconds=10))
            if step < shape.activities:
                await workflow.execute_activity(bare_noop, step, start_to_close_timeout=timedelta(seconds=10))
        # Like an order waiting for the carrier: a condition with a deadline (one timer).
        await workflow.wait_condition(lambda: self._signals >= shape.signals, timeout=timedelta(hours=1))
        return self._signals

    @workflow.signal(name="bare_event")
    def event(self) -> None:
        self._signals += 1


async def drive(client: Client, task_queue: str, shape: BareInput, *, concurrency: int, duration_s: float) -> dict:
    """Closed loop: ``concurrency`` workflows in flight for ``duration_s``; completed/s and latency."""
    latencies: list[float] = []
    end = time.monotonic() + duration_s
    run = f"{time.time_ns():x}"
    counter = 0

    async def loop() -> None:
        nonlocal counter
        while time.monotonic() < end:
            counter += 1
            started = time.monotonic()
            handle = await client.start_workflow(
                BARE_WORKFLOW, shape, id=f"bare-{run}-{counter}", task_queue=task_queue
            )
            for _ in range(shape.signals):
                await handle.signal("bare_event")
            await handle.result()
            latencies.append(time.monotonic() - started)

    began = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    latencies.sort()

    def pick(q: float) -> float | None:
        return round(latencies[int(q * (len(latencies) - 1))] * 1000, 1) if latencies else None

    return {
        "completed": len(latencies),
        "elapsed_s": round(elapsed, 2),
        "completed_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": {"p50": pick(0.5), "p99": pick(0.99)},
    }


async def _serve(address: str, task_queue: str) -> None:
    # The platform's client factory: the same data converter (and payload codec) as the orders.
    from core.config import get_settings
    from core.temporal import connect_client
    from workers.main import cache_workflow_bytecode

    client = await connect_client(get_settings().model_copy(update={"temporal_address": address}))
    cache_workflow_bytecode([BareOrderShape])  # as the platform's worker does
    async with Worker(client, task_queue=task_queue, workflows=[BareOrderShape], activities=[bare_noop]):
        print("bare worker running", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", default="bare")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.address, args.task_queue))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
