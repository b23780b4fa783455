"""Record golden histories: run every path of the order workflow for real and save each history.

    .venv/bin/python scripts/record_golden_histories.py tests/golden/<date>-<slug>
    .venv/bin/python scripts/record_golden_histories.py --cost /tmp/histories

``--cost`` runs the paths that need no time skipping on a real Temporal dev server instead (the
time-skipping server adds workflow tasks of its own) and prints the Temporal actions and history
events of each, counted as `orders bench` counts them (bench.measure.temporal.count_actions).

Real runs: an embedded PostgreSQL, the sandbox providers over HTTP, the real activities and the
time-skipping test server (so the 24 h review timeout passes at once), with the platform's data
converter, so the histories hold ciphertext made with the development codec key — exactly what a
production history looks like. The test suite replays every folder under tests/golden/ against the
current workflow code (tests/unit/test_golden_replay.py); record a new folder after each workflow
change and keep the old folders as long as histories of that version may still be running.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.client import WorkflowHandle  # noqa: E402
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from activities.http import provider_client  # noqa: E402
from bench.measure.temporal import count_actions  # noqa: E402
from core.db.engine import create_engine  # noqa: E402
from core.db.migrate import upgrade_async  # noqa: E402
from core.domain import (  # noqa: E402
    ORDER_WORKFLOW,
    QUERY_ORDER,
    SIGNAL_CARRIER_EVENT,
    UPDATE_AMEND,
    UPDATE_CANCEL,
    UPDATE_REVIEW,
    AmendLine,
    AmendRequest,
    CancelRequest,
    CarrierEventKind,
    CarrierEventSignal,
    OrderInput,
    OrderLine,
    OrderStatus,
    OrderView,
    ReviewDecision,
    ReviewRequest,
    ShipmentStatus,
    order_workflow_id,
)
from core.search_attributes import ensure_search_attributes  # noqa: E402
from core.temporal import data_converter  # noqa: E402
from devstack.binaries import temporal_cli_path, temporal_test_server_path  # noqa: E402
from devstack.postgres import EmbeddedPostgres  # noqa: E402
from devstack.processes import free_port  # noqa: E402
from tests.harness import Database, create_database, start_sandbox, test_settings, wait_for  # noqa: E402
from tests.support import new_sku, new_warehouses, order_input, stocked_sku  # noqa: E402
from workers.main import build_workers  # noqa: E402

Scenario = Callable[[WorkflowEnvironment, str, object], Awaitable[WorkflowHandle]]


async def _start(env: WorkflowEnvironment, queue: str, order: OrderInput) -> WorkflowHandle:
    return await env.client.start_workflow(
        ORDER_WORKFLOW,
        order,
        id=order_workflow_id(order.order_id),
        task_queue=queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=OrderView,
    )


# Seconds before the first query of an order. A query that reaches the workflow while its first task
# runs local activities makes the SDK close that task early, one more workflow task in the history;
# `--cost` waits so as to count what a client that reads the read model causes.
first_query_delay_s = 0.0


async def _reach(handle: WorkflowHandle, status: OrderStatus) -> OrderView:
    await asyncio.sleep(first_query_delay_s)

    async def reached():
        view = await handle.query(QUERY_ORDER, result_type=OrderView)
        return view if view.status == status else None

    return await wait_for(reached, timeout=60, what=f"status {status}")


async def _settled(handle: WorkflowHandle) -> None:
    """Wait until no activity is pending (the captures are done): the order waits for its parcels.
    A carrier's event comes days after the shipment, so that is the history worth keeping; one sent
    while the capture is in flight lands before the delivery deadline's timer exists."""

    async def idle():
        return not (await handle.describe()).raw_description.pending_activities

    await wait_for(idle, timeout=60, what="no pending activity")


async def _deliver(handle: WorkflowHandle, event: CarrierEventKind) -> None:
    shipped = await _reach(handle, OrderStatus.SHIPPED)
    await _settled(handle)
    await handle.signal(
        SIGNAL_CARRIER_EVENT,
        CarrierEventSignal(tracking_number=shipped.tracking_number, event=event, occurred_at=datetime.now(UTC)),
    )


async def happy(env, queue, engine):
    handle = await _start(env, queue, order_input(await new_sku(engine), quantity=2, price=1_250))
    await _deliver(handle, CarrierEventKind.DELIVERED)
    return handle


async def out_of_stock(env, queue, engine):
    # None anywhere: since split shipments a partly available order waits for the customer instead.
    return await _start(env, queue, order_input(await new_sku(engine, on_hand=0), quantity=2))


async def decline(env, queue, engine):
    return await _start(env, queue, order_input(await new_sku(engine), token="tok_decline"))


async def review_approve(env, queue, engine):
    sku = await new_sku(engine, price=300_000)
    handle = await _start(env, queue, order_input(sku, price=300_000, review_threshold=100_000))
    await _reach(handle, OrderStatus.AWAITING_REVIEW)
    await handle.execute_update(UPDATE_REVIEW, ReviewRequest(decision=ReviewDecision.APPROVE, reviewer="op"))
    await _deliver(handle, CarrierEventKind.DELIVERED)
    return handle


async def review_timeout(env, queue, engine):
    sku = await new_sku(engine, price=300_000)
    return await _start(env, queue, order_input(sku, price=300_000, review_threshold=100_000))


async def cancel(env, queue, engine):
    sku = await new_sku(engine, price=300_000)
    handle = await _start(env, queue, order_input(sku, price=300_000, review_threshold=100_000))
    await _reach(handle, OrderStatus.AWAITING_REVIEW)
    await handle.execute_update(UPDATE_CANCEL, CancelRequest(reason="changed my mind"))
    return handle


async def lost_parcel(env, queue, engine):
    handle = await _start(env, queue, order_input(await new_sku(engine), price=990))
    await _deliver(handle, CarrierEventKind.LOST)
    return handle


async def _two_warehouse_order(engine, *, mugs_in_first: int = 5, mugs: int = 2, **overrides) -> OrderInput:
    """Mugs in the first warehouse, a lamp in the second: one shipment from each."""
    first, second = await new_warehouses(engine, 2)
    mug, lamp = await stocked_sku(engine, {first: mugs_in_first}), await stocked_sku(engine, {second: 3})
    order = order_input(mug, quantity=mugs, price=1_250, **overrides)
    lines = [*order.lines, OrderLine(sku=lamp, quantity=1, unit_price=4_000)]
    return order.model_copy(update={"lines": lines, "total": mugs * 1_250 + 4_000})


async def _deliver_each(handle: WorkflowHandle, *events: CarrierEventKind) -> None:
    """Once every shipment has left, send each its event (in the order of the shipments)."""

    async def all_left():
        view = await handle.query(QUERY_ORDER, result_type=OrderView)
        left = view.status == OrderStatus.SHIPPED
        return view if left and all(s.status != ShipmentStatus.PENDING for s in view.shipments) else None

    view = await wait_for(all_left, timeout=60, what="every shipment shipped")
    await _settled(handle)
    for shipment, event in zip(view.shipments, events, strict=True):
        await handle.signal(
            SIGNAL_CARRIER_EVENT,
            CarrierEventSignal(tracking_number=shipment.tracking_number, event=event, occurred_at=datetime.now(UTC)),
        )


async def split(env, queue, engine):
    handle = await _start(env, queue, await _two_warehouse_order(engine))
    await _deliver_each(handle, CarrierEventKind.DELIVERED, CarrierEventKind.DELIVERED)
    return handle


async def amended(env, queue, engine):
    order = await _two_warehouse_order(engine, mugs_in_first=1, mugs=2)
    handle = await _start(env, queue, order)
    await _reach(handle, OrderStatus.AWAITING_CUSTOMER)
    kept = [AmendLine(sku=line.sku, quantity=1) for line in order.lines]
    await handle.execute_update(UPDATE_AMEND, AmendRequest(lines=kept))
    await _deliver_each(handle, CarrierEventKind.DELIVERED, CarrierEventKind.DELIVERED)
    return handle


async def customer_timeout(env, queue, engine):
    return await _start(env, queue, await _two_warehouse_order(engine, mugs_in_first=1, mugs=2))


async def partly_lost(env, queue, engine):
    handle = await _start(env, queue, await _two_warehouse_order(engine))
    await _deliver_each(handle, CarrierEventKind.DELIVERED, CarrierEventKind.LOST)
    return handle


SCENARIOS: dict[str, Scenario] = {
    "happy": happy,
    "out_of_stock": out_of_stock,
    "decline": decline,
    "review_approve": review_approve,
    "review_timeout": review_timeout,
    "cancel": cancel,
    "lost_parcel": lost_parcel,
    # Multi-warehouse fulfilment (PATCH_SPLIT_SHIPMENTS).
    "split": split,
    "amended": amended,
    "customer_timeout": customer_timeout,
    "partly_lost": partly_lost,
}


# Paths whose timers only a time-skipping server passes at once.
NEEDS_TIME_SKIPPING = {"review_timeout", "customer_timeout"}


async def _server(settings, cost: bool) -> WorkflowEnvironment:
    if cost:
        return await WorkflowEnvironment.start_local(
            data_converter=data_converter(settings), dev_server_existing_path=str(temporal_cli_path())
        )
    return await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(settings),
        test_server_existing_path=str(temporal_test_server_path()),
    )


async def record(target: Path, *, cost: bool = False) -> None:
    global first_query_delay_s
    first_query_delay_s = 1.0 if cost else 0.0
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        tmp_path = Path(tmp)
        postgres = EmbeddedPostgres(tmp_path / "pg", port=free_port(), fast=True)
        postgres.start()
        sandbox = None
        try:
            name = "orders_golden"
            await create_database(postgres.dsn("postgres"), name)
            database = Database(postgres.dsn("postgres"), name, postgres.host, postgres.port, postgres)
            await upgrade_async(database.url)
            settings = test_settings(database.url)
            sandbox = start_sandbox(settings, tmp_path)
            engine = create_engine(settings)
            env = await _server(settings, cost)
            try:
                await ensure_search_attributes(env.client, "default")
                async with provider_client(settings) as http, AsyncExitStack() as stack:
                    queue = f"golden-{uuid.uuid4().hex[:8]}"
                    for worker in build_workers(env.client, settings, engine, http, task_queue=queue):
                        await stack.enter_async_context(worker)
                    for scenario, run in SCENARIOS.items():
                        if cost and scenario in NEEDS_TIME_SKIPPING:
                            continue
                        handle = await run(env, queue, engine)
                        final = await handle.result()
                        history = await handle.fetch_history()
                        (target / f"{scenario}.json").write_text(history.to_json())
                        outcome = f"{final.status.value}/{final.failure_reason and final.failure_reason.value}"
                        if cost:
                            c = count_actions(history.events)
                            print(
                                f"{scenario:17} {outcome:30} actions {c['actions']:3}  events {c['history_events']:3}"
                                f"  (activities {c['activities']}, local {c['local_activities']} in"
                                f" {c['local_activity_batches']} tasks, timers {c['timers']}, signals {c['signals']},"
                                f" updates {c['updates']}, upserts {c['upserts']}, workflow tasks {c['workflow_tasks']})",
                                flush=True,
                            )
                        else:
                            print(f"{scenario:17} {outcome}  {len(history.events)} events", flush=True)
            finally:
                await env.shutdown()
                await engine.dispose()
        finally:
            if sandbox is not None:
                sandbox.stop()
            postgres.stop()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    cost = arguments[:1] == ["--cost"]
    if cost:
        arguments = arguments[1:]
    if len(arguments) != 1:
        sys.exit(__doc__)
    asyncio.run(record(Path(arguments[0]), cost=cost))
