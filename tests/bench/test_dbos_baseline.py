"""Baseline (c) of `orders bench`, the order flow on DBOS, on a throw-away bench stack of its own:
a short closed-loop run whose orders must really have happened (one capture each at the sandbox,
stock deducted, parcels delivered, workflows ended in DBOS's system database), then its refusals,
its idempotency and its webhook checks, and the sandbox posting to the gateway again afterwards.

Runs where the ``dbos`` extra of orders-tools is installed (`make install` installs it). No timing
is asserted: the figures are printed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import asyncpg
import httpx
import pytest
from sqlalchemy import select

pytest.importorskip("dbos", reason="the dbos extra of orders-tools is not installed: pip install -e './tools[dbos]'")

from bench.baselines.dbos_flow import CUSTOMER
from bench.baselines.runner import dbos_app, dbos_baseline, dbos_system_database_url
from bench.loadgen import ADDRESS
from bench.run import BENCH_STOCK, CHEAP_PRICE, prepare_catalogue
from bench.stack import BenchStack, StackOptions
from core.db.engine import create_engine
from core.db.tables import DEFAULT_WAREHOUSE, order_events, orders, stock_reservations, warehouse_stock
from core.domain import provider_key
from core.tokens import mint_token
from core.webhooks import SIGNATURE_HEADER, sign_webhook
from sandbox.tables import shipments


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    """One stack for the module (each test has SKUs of its own, so neither sees the other's orders)."""
    stack = BenchStack(StackOptions(data_dir=tmp_path_factory.mktemp("dbos") / "stack"))
    await asyncio.to_thread(stack.start)
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


async def _ledger(stack: BenchStack) -> dict:
    assert stack.settings is not None
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"{stack.settings.payment_base_url.rstrip('/')}/v1/ledger")
        response.raise_for_status()
        return response.json()


async def _dbos_statuses(stack: BenchStack, order_ids: list[str]) -> Counter:
    assert stack.settings is not None
    conn = await asyncpg.connect(dbos_system_database_url(stack.settings.database_url))
    try:
        rows = await conn.fetch(
            "SELECT status FROM dbos.workflow_status WHERE workflow_uuid = ANY($1::text[])", order_ids
        )
    finally:
        await conn.close()
    return Counter(row["status"] for row in rows)


@pytest.mark.timeout(300)
async def test_dbos_baseline_orders_really_complete_with_one_capture_and_stock_deducted(stack):
    assert stack.settings is not None
    engine = create_engine(stack.settings, pool_size=2)
    try:
        catalogue, _ = await prepare_catalogue(engine, stack.settings, uuid.uuid4().hex[:6])
        figures = await dbos_baseline(stack, catalogue, concurrency=4, duration=5)
        print(figures)
        n = figures["completed"]
        assert n >= 4, figures
        assert figures["outcomes"] == {"completed": n} and figures["http_statuses"] == {"202": n}
        assert figures["transactions_per_order"]["DBOS system database"] > 0
        assert figures["cpu"]["cpu_ms_per_unit"]["dbos app"] > 0 and figures["cpu"]["cpu_ms_per_unit"]["postgres"] > 0

        async with engine.connect() as conn:
            mine = (orders.c.customer_id == CUSTOMER) & (orders.c.view["items"][0]["sku"].astext == catalogue.cheap_sku)
            rows = (await conn.execute(select(orders).where(mine))).mappings().all()
            ids = [row["id"] for row in rows]
            events = (
                await conn.execute(
                    select(order_events.c.order_id, order_events.c.status).where(order_events.c.order_id.in_(ids))
                )
            ).all()
            stock = (
                await conn.execute(
                    select(warehouse_stock.c.on_hand, warehouse_stock.c.reserved).where(
                        warehouse_stock.c.sku == catalogue.cheap_sku,
                        warehouse_stock.c.warehouse_id == DEFAULT_WAREHOUSE,
                    )
                )
            ).one()
            reservations = (
                (await conn.execute(select(stock_reservations).where(stock_reservations.c.order_id.in_(ids))))
                .mappings()
                .all()
            )
            parcels = (
                await conn.execute(
                    select(shipments.c.order_id, shipments.c.status).where(
                        shipments.c.order_id.in_([str(i) for i in ids])
                    )
                )
            ).all()
    finally:
        await engine.dispose()

    # The read model: every order the driver saw complete, and only those, went the whole way.
    assert len(rows) == n
    for row in rows:
        assert row["status"] == "completed" and row["seq"] == 5 and row["tracking_number"], row
        assert [e["event"] for e in row["view"]["carrier_events"]] == ["delivered"]
    path = ["received", "stock_reserved", "payment_authorized", "shipped", "completed"]
    assert Counter(status for _, status in events) == Counter({status: n for status in path})

    # The sandbox: one authorization and exactly one capture of the order's total per order, under
    # the platform's own idempotency keys; each parcel delivered.
    ledger = await _ledger(stack)
    keys = {str(i) for i in ids}
    authorizations = [a for a in ledger["authorizations"] if a["order_id"] in keys]
    assert Counter(a["order_id"] for a in authorizations) == Counter({key: 1 for key in keys})
    assert all(a["idempotency_key"] == provider_key(a["order_id"], "authorize") for a in authorizations)
    by_auth = {a["id"]: a["order_id"] for a in authorizations}
    moves = [m for m in ledger["money_movements"] if m["authorization_id"] in by_auth]
    assert sorted((by_auth[m["authorization_id"]], m["kind"], m["amount"]) for m in moves) == sorted(
        (key, "capture", CHEAP_PRICE) for key in keys
    )
    assert all(m["idempotency_key"] == provider_key(by_auth[m["authorization_id"]], "capture") for m in moves)
    assert sorted(parcels) == sorted((key, "delivered") for key in keys)

    # The stock: one unit deducted per completed order, nothing left reserved.
    assert (stock.on_hand, stock.reserved) == (BENCH_STOCK - n, 0)
    assert sorted((r["order_id"], r["state"], r["quantity"]) for r in reservations) == sorted(
        (i, "committed", 1) for i in ids
    )

    # DBOS's own record: every workflow ended successfully.
    assert await _dbos_statuses(stack, list(keys)) == Counter({"SUCCESS": n})


@pytest.mark.timeout(300)
async def test_dbos_flow_refuses_like_the_platform_and_hands_the_webhook_back(stack):
    assert stack.settings is not None
    settings = stack.settings
    engine = create_engine(settings, pool_size=2)
    try:
        catalogue, _ = await prepare_catalogue(engine, settings, uuid.uuid4().hex[:6])
        async with dbos_app(stack) as (_, url), httpx.AsyncClient(base_url=url, timeout=60) as http:

            async def order(key: str, sku: str, token: str = "tok_ok", address: dict = ADDRESS) -> tuple[str, str]:
                body = {"sku": sku, "quantity": 1, "shipping_address": address, "payment_token": token}
                placed = await http.post("/dbos/orders", json=body, headers={"Idempotency-Key": key})
                assert placed.status_code == 202, placed.text
                order_id = placed.json()["id"]
                ended = await http.get(f"/dbos/orders/{order_id}/result")
                assert ended.status_code == 200, ended.text
                return order_id, ended.json()["status"]

            declined, declined_status = await order("decline-1", catalogue.cheap_sku, "tok_decline")
            scarce, scarce_status = await order("scarce-1", catalogue.scarce_sku)
            first, first_status = await order("twice-1", catalogue.cheap_sku)
            again, again_status = await order("twice-1", catalogue.cheap_sku)  # the same Idempotency-Key
            lost, lost_status = await order("lost-1", catalogue.cheap_sku, address={**ADDRESS, "postal_code": "99998"})

            # The webhook: a wrong signature is refused, an unknown parcel is 404 (the sandbox retries).
            raw = json.dumps(
                {"tracking_number": "TRKNOPE", "event": "delivered", "occurred_at": "2026-01-01T00:00:00Z"}
            )
            wrong = await http.post(
                "/dbos/carrier/events",
                content=raw,
                headers={SIGNATURE_HEADER: sign_webhook("not-the-secret", raw.encode(), int(time.time()))},
            )
            unknown = await http.post(
                "/dbos/carrier/events",
                content=raw,
                headers={
                    SIGNATURE_HEADER: sign_webhook(settings.carrier_webhook_secret, raw.encode(), int(time.time()))
                },
            )

        assert (declined_status, scarce_status, first_status, lost_status) == (
            "rejected",
            "rejected",
            "completed",
            "failed",
        )
        assert (again, again_status) == (first, "completed")
        assert (wrong.status_code, unknown.status_code) == (401, 404)

        async with engine.connect() as conn:
            views = dict(
                (
                    await conn.execute(
                        select(orders.c.id, orders.c.view).where(
                            orders.c.id.in_([uuid.UUID(i) for i in (declined, scarce, first, lost)])
                        )
                    )
                ).all()
            )
            held = dict(
                (
                    await conn.execute(
                        select(stock_reservations.c.order_id, stock_reservations.c.state).where(
                            stock_reservations.c.order_id.in_([uuid.UUID(declined), uuid.UUID(first)])
                        )
                    )
                ).all()
            )
        assert {str(k): v["failure_reason"] for k, v in views.items()} == {
            declined: "payment_declined",
            scarce: "out_of_stock",
            first: None,
            lost: "lost_in_transit",
        }
        assert held == {uuid.UUID(declined): "released", uuid.UUID(first): "committed"}
        ledger = await _ledger(stack)
        mine = {
            a["id"]: a["order_id"] for a in ledger["authorizations"] if a["order_id"] in {declined, scarce, first, lost}
        }
        # A decline leaves no authorization at the provider; out of stock never reached it.
        assert sorted(mine.values()) == sorted([first, lost])
        moved = sorted(
            (mine[m["authorization_id"]], m["kind"], m["amount"])
            for m in ledger["money_movements"]
            if m["authorization_id"] in mine
        )
        # One capture of the completed order; the lost parcel's capture refunded in full.
        assert moved == sorted(
            [(first, "capture", CHEAP_PRICE), (lost, "capture", CHEAP_PRICE), (lost, "refund", CHEAP_PRICE)]
        )
        assert await _dbos_statuses(stack, [declined, scarce, first, lost]) == Counter({"SUCCESS": 4})

        # The sandbox posts to the gateway again: a platform order is delivered and completes.
        token = mint_token(settings, "after-dbos", "customer")
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as api:
            placed = await api.post(
                "/v1/orders",
                json={
                    "items": [{"sku": catalogue.cheap_sku, "quantity": 1}],
                    "shipping_address": ADDRESS,
                    "payment_token": "tok_ok",
                },
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
            )
            assert placed.status_code == 202, placed.text
            status, deadline = None, time.monotonic() + 60
            while status != "completed" and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                read = await api.get(f"/v1/orders/{placed.json()['id']}", headers={"Authorization": f"Bearer {token}"})
                status = read.json()["status"]
            assert status == "completed"
    finally:
        await engine.dispose()
