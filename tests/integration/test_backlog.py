"""Admission control (api/backlog.py) against the real dev server: while new orders wait too long
for a worker, submissions get 503 `backlogged` at the door and store nothing (a retry of an accepted
one too, safely: its order stays), and orders are accepted again once the backlog is gone."""

from __future__ import annotations

import uuid

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import PollWorkflowTaskQueueRequest

from api.app import create_app
from core.db.tables import idempotency_keys, orders
from core.domain import order_workflow_id
from tests.harness import random_ref, wait_for
from tests.integration.conftest import auth
from tests.integration.test_order_api import order_body
from tests.support import new_sku


async def test_new_orders_are_refused_while_the_workers_are_behind_and_accepted_again_after(
    it_settings, temporal_client, engine, token
):
    # A task queue no worker polls: the first order's workflow task waits there and ages.
    settings = it_settings.model_copy(
        update={
            "task_queue": f"behind-{uuid.uuid4().hex[:6]}",
            "api_max_start_delay_s": 1.0,
            "api_backlog_check_s": 0.2,
        }
    )
    sku = await new_sku(engine)
    customer = random_ref("backlog")
    headers = auth(token(customer))
    app = create_app(settings, engine=engine, client=temporal_client)
    started: list[str] = []
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http,
    ):

        async def submit(key: str) -> httpx.Response:
            return await http.post("/v1/orders", json=order_body(sku), headers={**headers, "Idempotency-Key": key})

        try:
            first = await submit("first")
            assert first.status_code == 202, first.text
            started.append(first.json()["id"])
            backlog = app.state.backlog
            # Temporal's queue statistics are refreshed every few seconds: wait for them to show it.
            await wait_for(
                lambda: _older_than(backlog, 1.0), timeout=30, interval=0.2, what="the backlog to age past 1 s"
            )

            refused = await submit("second")
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            body = refused.json()
            assert body["type"].endswith("/backlogged") and "Retry after" in body["detail"]
            assert 1 <= int(refused.headers["retry-after"]) <= settings.api_max_retry_after_s
            async with engine.connect() as conn:
                stored = await conn.scalar(
                    select(func.count())
                    .select_from(idempotency_keys)
                    .where(idempotency_keys.c.key == "second", idempotency_keys.c.customer_id == customer)
                )
                assert stored == 0  # nothing was done: the retry is a new submission
                assert (
                    await conn.scalar(select(func.count()).select_from(orders).where(orders.c.customer_id == customer))
                    == 1
                )

            gauge = next(
                line
                for line in (await http.get("/metrics")).text.splitlines()
                if line.startswith("orders_gateway_start_backlog_seconds ")
            )
            assert float(gauge.split()[1]) > 1.0  # what operators alert on
            retry = await submit("first")  # refused at the door too; its order is not touched
            assert retry.status_code == 503 and retry.json()["type"].endswith("/backlogged")

            # A worker takes the waiting task (here: one poll by hand): the backlog empties and
            # new orders are accepted again.
            task = await temporal_client.workflow_service.poll_workflow_task_queue(
                PollWorkflowTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(name=settings.task_queue),
                    identity="test-backlog",
                )
            )
            assert task.workflow_execution.workflow_id == order_workflow_id(started[0])
            # Ended, so that its task (started by hand, never completed) does not time out into a new one.
            await temporal_client.get_workflow_handle(order_workflow_id(started.pop(0))).terminate("test done")
            await wait_for(lambda: _caught_up(backlog), timeout=30, interval=0.2, what="the backlog to clear")
            again = await submit("second")
            assert again.status_code == 202, again.text
            started.append(again.json()["id"])
            replay = await submit("first")  # the first order's key answers it, once accepted again
            assert replay.status_code in (200, 202) and replay.json()["id"] == first.json()["id"]
        finally:
            for order_id in started:  # no worker will finish them
                await temporal_client.get_workflow_handle(order_workflow_id(order_id)).terminate("test done")


async def _older_than(backlog, seconds: float) -> bool:
    return (await backlog.check() or 0.0) > seconds


async def _caught_up(backlog) -> bool:
    return await backlog.check() == 0.0
