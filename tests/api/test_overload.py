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
    body = {"items": [{"sku": sku, "quantity": 1}], "shipping_address": ADDRESS.model_dump(mode="json"), "payment_token": "tok_ok"}
    async with gateway_client() as http:  # its Temporal client points at a closed port
        started = time.monotonic()
        response = await http.post("/v1/orders", json=body, headers={**bearer(customer), "Idempotency-Key": "k-1"})
        assert time.monotonic() - started < 5
        _assert_503(response)
        # Reads never need Temporal.
        assert (await http.get("/v1/orders", headers=bearer(customer))).status_code == 200
    async with engine.connect() as conn:
        claims = await conn.scalar(select(func.count()).select_from(idempotency_keys).where(idempotency_keys.c.customer_id == customer))
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
                body = {"items": [{"sku": "ANY", "quantity": 1}], "shipping_address": ADDRESS.model_dump(mode="json"), "payment_token": "tok_ok"}
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
