"""The long-poll read (`GET /v1/orders/{id}?wait=...`) against real PostgreSQL: woken by the read
model's own NOTIFY on a real projection write, by the periodic re-check when a change comes without
one, at the timeout with 304, at shutdown at once; BOLA, bad input, the waiter bound, and a parked
waiter's place in load shedding. (Woken by a real workflow transition: tests/integration/test_long_poll_api.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
import uvicorn
from sqlalchemy import update

from api.app import create_app, release_waiters
from api.server import GatewayServer
from core.db.read_model import OrderReadModel
from core.db.tables import orders
from core.domain import OrderLine, OrderStatus, OrderView, StatusChange
from devstack.processes import free_port
from tests.api.conftest import assert_problem
from tests.support import ADDRESS, now


def _received(customer: str) -> OrderView:
    return OrderView.received(
        order_id=uuid.uuid4(),
        customer_id=customer,
        items=[OrderLine(sku="MUG-WHT", quantity=1, unit_price=1299)],
        total=1299,
        currency="EUR",
        shipping_address=ADDRESS,
        at=now(),
    )


def _moved(view: OrderView, status: OrderStatus) -> OrderView:
    """The view one transition later, as the workflow's projection writes it."""
    moved = view.model_copy(deep=True)
    moved.status, moved.updated_at = status, view.updated_at + timedelta(seconds=1)
    moved.history.append(StatusChange(status=status, at=moved.updated_at))
    return moved


async def _stored(engine, view: OrderView) -> OrderView:
    await OrderReadModel(engine).project(len(view.history), view)
    return view


async def _parked(http, count: int = 1) -> None:
    """Until ``count`` requests wait in the app (so a change made next happens during the wait)."""
    changes = http.app.state.order_changes
    for _ in range(400):
        if changes.waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{changes.waiting} waiting, expected {count}")


async def test_a_plain_read_carries_an_etag_and_if_none_match_gets_304(gateway_client, engine, bearer):
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client() as http:
        first = await http.get(f"/v1/orders/{view.id}", headers=bearer(customer))
        assert first.status_code == 200 and first.json()["status"] == "received"
        etag = first.headers["ETag"]
        again = await http.get(f"/v1/orders/{view.id}", headers={**bearer(customer), "If-None-Match": etag})
        assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
        other = await http.get(f"/v1/orders/{view.id}", headers={**bearer(customer), "If-None-Match": '"0.0"'})
        assert other.status_code == 200 and other.headers["ETag"] == etag


async def test_the_wait_ends_on_a_projection_write_with_the_new_state(gateway_client, engine, bearer):
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client() as http:
        etag = (await http.get(f"/v1/orders/{view.id}", headers=bearer(customer))).headers["ETag"]
        started = time.monotonic()
        waiting = asyncio.create_task(
            http.get(f"/v1/orders/{view.id}?wait=25", headers={**bearer(customer), "If-None-Match": etag})
        )
        await _parked(http)
        await _stored(engine, _moved(view, OrderStatus.STOCK_RESERVED))
        answer = await asyncio.wait_for(waiting, 20)
        # Woken by the NOTIFY of the write, not by the end of the 25 s wait.
        assert time.monotonic() - started < 20
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "stock_reserved"
        assert answer.headers["ETag"] not in (etag, None)
        assert http.app.state.order_changes.waiters == 0


async def test_the_wait_ends_at_the_timeout_with_304_and_the_same_etag(gateway_client, engine, bearer):
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client() as http:
        etag = (await http.get(f"/v1/orders/{view.id}", headers=bearer(customer))).headers["ETag"]
        started = time.monotonic()
        answer = await http.get(f"/v1/orders/{view.id}?wait=1", headers={**bearer(customer), "If-None-Match": etag})
        assert time.monotonic() - started >= 1.0  # it did wait
        assert (answer.status_code, answer.content, answer.headers["ETag"]) == (304, b"", etag)
        # The wait was the caller's choice: the gateway's latency histogram leaves it out.
        exposition = (await http.get("/metrics")).text
        total = next(
            float(line.rsplit(" ", 1)[1])
            for line in exposition.splitlines()
            if line.startswith("orders_http_request_duration_seconds_sum")
            and 'method="GET"' in line
            and 'route="/v1/orders/{order_id}"' in line
        )
        assert total < 1.0, total


async def test_until_waits_through_other_changes_for_the_named_status(gateway_client, engine, bearer):
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client() as http:
        waiting = asyncio.create_task(
            http.get(f"/v1/orders/{view.id}?wait=25&until=completed&until=failed", headers=bearer(customer))
        )
        await _parked(http)
        reserved = await _stored(engine, _moved(view, OrderStatus.STOCK_RESERVED))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # a change, but not to a status it waits for
        await _stored(engine, _moved(reserved, OrderStatus.FAILED))
        answer = await asyncio.wait_for(waiting, 20)
        assert answer.status_code == 200 and answer.json()["status"] == "failed"
        # Already in a named status: no wait at all.
        now = await http.get(f"/v1/orders/{view.id}?wait=25&until=failed", headers=bearer(customer))
        assert now.status_code == 200 and now.json()["status"] == "failed"


async def test_a_change_without_notification_is_found_by_the_recheck(gateway_client, engine, bearer):
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client(api_wait_recheck_s=0.2) as http:
        etag = (await http.get(f"/v1/orders/{view.id}", headers=bearer(customer))).headers["ETag"]
        waiting = asyncio.create_task(
            http.get(f"/v1/orders/{view.id}?wait=25", headers={**bearer(customer), "If-None-Match": etag})
        )
        await _parked(http)
        # A write that sends no NOTIFY (as if the notification were lost).
        moved = _moved(view, OrderStatus.STOCK_RESERVED)
        async with engine.begin() as conn:
            await conn.execute(
                update(orders)
                .where(orders.c.id == view.id)
                .values(seq=2, status="stock_reserved", view=moved.model_dump(mode="json"))
            )
        answer = await asyncio.wait_for(waiting, 20)
        assert answer.status_code == 200 and answer.json()["status"] == "stock_reserved"


async def test_another_customers_order_is_404_and_nothing_waits(gateway_client, engine, bearer):
    view = await _stored(engine, _received(f"lp-{uuid.uuid4().hex[:8]}"))
    async with gateway_client() as http:
        for query in ("?wait=5", "?wait=5&until=completed"):
            answer = await http.get(
                f"/v1/orders/{view.id}{query}", headers={**bearer("mallory"), "If-None-Match": '"1.0"'}
            )
            assert_problem(answer, 404)
        assert_problem(await http.get(f"/v1/orders/{uuid.uuid4()}?wait=5&until=failed", headers=bearer("mallory")), 404)
        assert http.app.state.order_changes.waiters == 0


@pytest.mark.parametrize("query", ["wait=31", "wait=-1", "wait=1.5", "wait=soon", "wait=5&until=lost"])
async def test_a_bad_wait_is_422(gateway_client, engine, bearer, query):
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client() as http:
        body = assert_problem(await http.get(f"/v1/orders/{view.id}?{query}", headers=bearer(customer)), 422)
        assert body["errors"] and body["errors"][0]["loc"][0] == "query"


async def test_beyond_the_waiter_bound_503_with_retry_after(gateway_client, engine, bearer):
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client(api_max_waiters=1) as http:
        etag = (await http.get(f"/v1/orders/{view.id}", headers=bearer(customer))).headers["ETag"]
        headers = {**bearer(customer), "If-None-Match": etag}
        first = asyncio.create_task(http.get(f"/v1/orders/{view.id}?wait=25", headers=headers))
        await _parked(http)
        second = await http.get(f"/v1/orders/{view.id}?wait=25", headers=headers)
        body = assert_problem(second, 503)
        assert body["type"].endswith("/too-many-waiters") and int(second.headers["Retry-After"]) >= 1
        # Reads without a wait still go through.
        assert (await http.get(f"/v1/orders/{view.id}", headers=headers)).status_code == 304
        await _stored(engine, _moved(view, OrderStatus.STOCK_RESERVED))
        assert (await asyncio.wait_for(first, 20)).status_code == 200


async def test_parked_waiters_are_not_work_in_flight(gateway_client, engine, bearer):
    """With room for one request in flight and a 1 s request timeout, three parked waiters shed
    nobody, are not cut off by the timeout, and answer 304 after their 2 s."""
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client(api_max_in_flight=1, api_request_timeout_s=1.0) as http:
        headers = {**bearer(customer)}
        headers["If-None-Match"] = (await http.get(f"/v1/orders/{view.id}", headers=headers)).headers["ETag"]
        waiters = []
        for n in range(1, 4):  # one at a time: while it reads the order, a waiter is in flight
            waiters.append(asyncio.create_task(http.get(f"/v1/orders/{view.id}?wait=2", headers=headers)))
            await _parked(http, n)
        plain = await http.get(f"/v1/orders/{view.id}", headers=bearer(customer))
        assert plain.status_code == 200, plain.text
        answers = await asyncio.gather(*waiters)
        assert [a.status_code for a in answers] == [304, 304, 304], [a.text for a in answers]


async def test_release_answers_every_waiter_at_once(gateway_client, engine, bearer):
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client() as http:
        headers = {**bearer(customer)}
        headers["If-None-Match"] = (await http.get(f"/v1/orders/{view.id}", headers=headers)).headers["ETag"]
        waiting = asyncio.create_task(http.get(f"/v1/orders/{view.id}?wait=30", headers=headers))
        await _parked(http)
        release_waiters(http.app)
        answer = await asyncio.wait_for(waiting, 10)
        assert answer.status_code == 304
        # Later waits do not park either while the gateway shuts down.
        later = await asyncio.wait_for(http.get(f"/v1/orders/{view.id}?wait=30", headers=headers), 10)
        assert later.status_code == 304


async def test_server_shutdown_releases_waiters_before_draining(settings, engine, bearer, unreachable_temporal):
    """`orders api`'s server: a SIGTERM-style exit answers a parked long-poll at once instead of
    holding the shutdown for the wait (or cutting the request off at the grace period)."""
    import httpx

    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    port = free_port()
    app = create_app(settings.model_copy(update={"temporal_address": unreachable_temporal}), engine=engine)
    server = GatewayServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=25), app
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=40) as http:
        headers = {**bearer(customer)}
        headers["If-None-Match"] = (await http.get(f"/v1/orders/{view.id}", headers=headers)).headers["ETag"]
        waiting = asyncio.create_task(http.get(f"/v1/orders/{view.id}?wait=30", headers=headers))
        for _ in range(400):
            if app.state.order_changes.waiting:
                break
            await asyncio.sleep(0.01)
        server.should_exit = True
        answer = await asyncio.wait_for(waiting, 10)
        assert answer.status_code == 304
    await asyncio.wait_for(serving, 10)


async def test_a_lost_listening_connection_is_replaced(gateway_client, engine, bearer):
    """PostgreSQL drops the LISTEN connection (a restart, an admin's pg_terminate_backend): the
    gateway connects again and notifications wake waiters as before."""
    from sqlalchemy import text

    customer = f"lp-{uuid.uuid4().hex[:8]}"
    view = await _stored(engine, _received(customer))
    async with gateway_client(api_wait_recheck_s=0.2) as http:
        changes = http.app.state.order_changes

        async def listener_pid() -> int | None:
            for _ in range(200):
                if changes.listening:
                    return changes._listener.get_server_pid()
                await asyncio.sleep(0.05)
            return None

        first = await listener_pid()
        assert first is not None
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        for _ in range(200):
            second = await listener_pid()
            if second not in (None, first):
                break
            await asyncio.sleep(0.05)
        assert second not in (None, first)

        etag = (await http.get(f"/v1/orders/{view.id}", headers=bearer(customer))).headers["ETag"]
        waiting = asyncio.create_task(
            http.get(f"/v1/orders/{view.id}?wait=25", headers={**bearer(customer), "If-None-Match": etag})
        )
        await _parked(http)
        await _stored(engine, _moved(view, OrderStatus.STOCK_RESERVED))
        answer = await asyncio.wait_for(waiting, 20)
        assert answer.status_code == 200 and answer.json()["status"] == "stock_reserved"
