"""Overload and outages: Temporal or PostgreSQL unreachable -> 503 with Retry-After, bounded in time."""

from __future__ import annotations

import asyncio
import time
import uuid

from sqlalchemy import func, select

from core.db.engine import create_engine
from core.db.migrate import upgrade_async
from core.db.tables import idempotency_keys, orders
from devstack.postgres import EmbeddedPostgres
from devstack.processes import free_port
from tests.api.conftest import assert_problem
from tests.support import ADDRESS, new_sku


def _assert_503(response) -> None:
    assert_problem(response, 503)
    assert int(response.headers["retry-after"]) >= 1


async def test_temporal_unreachable_is_a_quick_503_and_leaves_no_claim(gateway_client, bearer, engine):
    sku = await new_sku(engine)
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    body = {
        "items": [{"sku": sku, "quantity": 1}],
        "shipping_address": ADDRESS.model_dump(mode="json"),
        "payment_token": "tok_ok",
    }
    async with gateway_client() as http:  # its Temporal client points at a closed port
        started = time.monotonic()
        response = await http.post("/v1/orders", json=body, headers={**bearer(customer), "Idempotency-Key": "k-1"})
        assert time.monotonic() - started < 5
        _assert_503(response)
        # Reads never need Temporal.
        assert (await http.get("/v1/orders", headers=bearer(customer))).status_code == 200
    async with engine.connect() as conn:
        claims = await conn.scalar(
            select(func.count()).select_from(idempotency_keys).where(idempotency_keys.c.customer_id == customer)
        )
        rows = await conn.scalar(select(func.count()).select_from(orders).where(orders.c.customer_id == customer))
    assert (claims, rows) == (0, 0)  # the retry starts over instead of finding a half-made order


async def test_database_stopped_is_503_never_500_and_never_hangs(gateway_client, bearer, settings, tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg", port=free_port(), fast=True)
    await asyncio.to_thread(server.start)
    try:
        await asyncio.to_thread(server.ensure_database, "orders")
        await upgrade_async(server.url("orders"))
        db_settings = settings.model_copy(update={"database_url": server.url("orders"), "database_timeout_s": 2.0})
        own_engine = create_engine(db_settings)
        try:
            async with gateway_client(db_engine=own_engine, database_timeout_s=2.0) as http:
                alice = bearer()
                assert (await http.get("/v1/orders", headers=alice)).status_code == 200
                await asyncio.to_thread(server.stop, "immediate")
                body = {
                    "items": [{"sku": "ANY", "quantity": 1}],
                    "shipping_address": ADDRESS.model_dump(mode="json"),
                    "payment_token": "tok_ok",
                }
                for method, path, kwargs in (
                    ("GET", "/v1/orders", {}),
                    ("GET", f"/v1/orders/{uuid.uuid4()}", {}),
                    ("GET", "/v1/products", {}),
                    ("POST", "/v1/orders", {"json": body, "headers": {"Idempotency-Key": "db-down"}}),
                ):
                    headers = {**alice, **kwargs.pop("headers", {})}
                    started = time.monotonic()
                    response = await http.request(method, path, headers=headers, **kwargs)
                    assert time.monotonic() - started < 10, (method, path)
                    _assert_503(response)
                readiness = await http.get("/readyz")
                assert readiness.status_code == 503 and readiness.json()["checks"]["database"].startswith("unavailable")
        finally:
            await own_engine.dispose()
    finally:
        await asyncio.to_thread(server.stop)


def _slow_route(app, gate: asyncio.Event, entered: list, finished: list) -> None:
    """A route that holds its request until ``gate`` opens (stands in for a slow dependency)."""

    async def slow() -> dict:
        entered.append(time.monotonic())
        await gate.wait()
        finished.append(time.monotonic())
        return {"ok": True}

    app.add_api_route("/v1/slow", slow, methods=["GET"])


async def test_more_requests_than_the_in_flight_limit_are_shed_at_once_with_retry_after(gateway_client, bearer):
    gate, entered, finished = asyncio.Event(), [], []
    async with gateway_client(
        api_max_in_flight=2, app_hook=lambda app: _slow_route(app, gate, entered, finished)
    ) as http:
        held = [asyncio.create_task(http.get("/v1/slow")) for _ in range(2)]
        while len(entered) < 2:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        shed = await http.get("/v1/orders", headers=bearer())
        assert time.monotonic() - started < 2  # refused at the door, not queued
        body = assert_problem(shed, 503)
        assert body["type"].endswith("/overloaded")
        assert shed.headers["retry-after"] == "1"
        assert len(shed.headers.get_list("x-request-id")) == 1
        assert (await http.get("/healthz")).status_code == 200  # liveness is never shed
        # Counted under the route it was meant for, though it never reached the router.
        assert (
            'orders_http_requests_total{method="GET",route="/v1/orders",status="503"} 1.0'
            in (await http.get("/metrics")).text
        )
        # The longer the overload lasts, the longer shed callers are asked to stay away (1 + shed //
        # served over the last seconds: 2 served, then 2, 3, 4 shed).
        later = [await http.get("/v1/orders", headers=bearer()) for _ in range(3)]
        assert [r.status_code for r in later] == [503] * 3
        assert [r.headers["retry-after"] for r in later] == ["2", "2", "3"]
        gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await http.get("/v1/orders", headers=bearer())).status_code == 200  # slots freed


async def test_a_request_past_the_timeout_gets_503_and_its_handler_still_finishes(gateway_client, bearer):
    gate, entered, finished = asyncio.Event(), [], []
    async with gateway_client(
        api_max_in_flight=1, api_request_timeout_s=0.3, app_hook=lambda app: _slow_route(app, gate, entered, finished)
    ) as http:
        started = time.monotonic()
        response = await http.get("/v1/slow")
        assert time.monotonic() - started < 5
        body = assert_problem(response, 503)
        assert body["type"].endswith("/timeout") and "Idempotency-Key" in body["detail"]
        assert int(response.headers["retry-after"]) >= 1
        # Not cancelled: the handler keeps its slot until it really ends, so the gateway is still full.
        assert entered and not finished
        assert_problem(await http.get("/v1/orders", headers=bearer()), 503)
        gate.set()
        while not finished:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert (await http.get("/v1/orders", headers=bearer())).status_code == 200


def test_load_shedding_settings_refuse_nonsense():
    import pytest
    from pydantic import ValidationError

    from core.config import Settings

    for bad in ({"api_max_in_flight": 0}, {"api_request_timeout_s": 0}):
        with pytest.raises(ValidationError):
            Settings(**bad)


async def test_a_gateway_whose_event_loop_runs_late_sheds_new_requests_until_it_catches_up(gateway_client, bearer):
    def add_blocking_route(app):
        async def hog() -> dict:
            time.sleep(0.6)  # CPU starvation, as on an overloaded shared host: nothing else runs meanwhile
            return {"ok": True}

        app.add_api_route("/v1/hog", hog, methods=["GET"])

    async with gateway_client(api_max_event_loop_lag_s=0.3, app_hook=add_blocking_route) as http:
        alice = bearer()
        assert (await http.get("/v1/orders", headers=alice)).status_code == 200  # starts the lag ticker
        assert (await http.get("/v1/hog")).status_code == 200  # the loop stood still for 0.6 s
        await asyncio.sleep(0.01)  # the ticker wakes up (late) before the next request is read
        shed = await http.get("/v1/orders", headers=alice)
        body = assert_problem(shed, 503)
        assert body["type"].endswith("/overloaded") and "behind" in body["detail"]
        assert shed.headers["retry-after"] == "1"
        lag = next(
            line
            for line in (await http.get("/metrics")).text.splitlines()
            if line.startswith("orders_gateway_event_loop_lag_seconds ")
        )
        assert float(lag.split()[1]) >= 0  # exported for dashboards (its value is the latest tick's)
        await asyncio.sleep(0.35)  # a few punctual ticks
        assert (await http.get("/v1/orders", headers=alice)).status_code == 200
