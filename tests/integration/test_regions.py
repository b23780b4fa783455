"""Two real regions on localhost (docs/regions.md): two embedded PostgreSQL servers replicating the
order read model to each other (logical replication, set up by `orders regions link`), two
gateways that forward to each other. Temporal is shared (one dev server, a task queue per region);
no workers are needed: what is checked is where orders are accepted and what reads see.

One scenario in steps, as the drill runs it, in short: a write for a customer homed in A arriving
at B lands in A only; A stops answering (its gateway replaced by a listener that never answers, its
replication to B cut): B refuses A's customers' writes with 503 + Retry-After within the client's
2 s timeout and writes nothing, serves their reads from its replica marked stale with the lag; after
the heal the lag returns to 0; a rehome sends A's customers' new orders to B.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import asyncpg
import httpx
import pytest
import uvicorn

from api.app import create_app
from core.config import settings_env
from core.db.catalog import upsert_products
from core.db.engine import create_engine
from core.db.migrate import upgrade_async
from core.db.regions import replica_lag_s, subscription_name
from core.domain import order_workflow_id
from core.regions import default_home
from core.tokens import mint_token
from devstack.postgres import LOGICAL_REPLICATION, EmbeddedPostgres
from devstack.processes import free_port
from tests import harness
from tests.harness import ROOT, random_ref, wait_for
from tests.integration.conftest import auth

BODY = {
    "shipping_address": {
        "name": "Ada Lovelace",
        "line1": "Unter den Linden 1",
        "line2": None,
        "city": "Berlin",
        "postal_code": "10117",
        "country": "DE",
    },
    "payment_token": "tok_ok",
}
# What a client of the drill waits at most for a write: the answer must come before it.
WRITE_CLIENT_TIMEOUT_S = 2.0


class Gateway:
    """A region's gateway served by uvicorn in this event loop, stoppable and startable again on
    its port; or, while ``hang()``, a listener on that port that accepts and never answers."""

    def __init__(self, settings, client) -> None:
        self.settings, self.client = settings, client
        self.url = f"http://127.0.0.1:{settings.api_port}"
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self._hole: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        app = create_app(self.settings, client=self.client)
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.settings.api_port, log_config=None, lifespan="on")
        )
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None

    async def hang(self) -> None:
        """Stop the gateway and take its port with a listener that never answers (a hung region)."""
        await self.stop()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._held.append(writer)
            await reader.read()  # until the peer gives up

        self._hole = await asyncio.start_server(hold, "127.0.0.1", self.settings.api_port)

    async def heal(self) -> None:
        if self._hole is not None:
            self._hole.close()
            for writer in self._held:
                writer.close()
            await self._hole.wait_closed()
            self._hole, self._held = None, []
        await self.start()


class Region:
    def __init__(self, name: str, postgres: EmbeddedPostgres, settings, engine, gateway: Gateway) -> None:
        self.name, self.postgres, self.settings, self.engine, self.gateway = name, postgres, settings, engine, gateway

    def orders_command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "regions", *args],
            env={"PATH": "/usr/bin:/bin", **settings_env(self.settings)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    async def fetch(self, sql: str, *args):
        conn = await asyncpg.connect(self.postgres.dsn())
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def regions(tmp_path_factory, temporal_server, temporal_client):
    ports = {"a": free_port(), "b": free_port()}
    servers = {}
    for name in ports:
        server = EmbeddedPostgres(
            tmp_path_factory.mktemp(f"region-{name}") / "pg",
            port=free_port(),
            fast=True,
            settings=LOGICAL_REPLICATION,
            trusted_networks=["10.77.0.0/24"],  # as the drill lets the peer's namespace in
        )
        await asyncio.to_thread(server.start)
        servers[name] = server
    built: dict[str, Region] = {}
    try:
        for name, server in servers.items():
            peer = "b" if name == "a" else "a"
            await asyncio.to_thread(server.ensure_database, "orders")
            await upgrade_async(server.url())
            settings = harness.test_settings(
                server.url(),
                api_port=ports[name],
                temporal_address=temporal_server.address,
                task_queue=f"it-region-{name}-{uuid.uuid4().hex[:6]}",
                region=name,
                region_peers={peer: f"http://127.0.0.1:{ports[peer]}"},
                region_peer_database_urls={peer: servers[peer].dsn()},
                # Margin under the client's 2 s on a shared test machine (the default is 1.5 s).
                region_forward_timeout_s=1.0,
                region_heartbeat_s=0.5,
            )
            engine = create_engine(settings)
            built[name] = Region(name, server, settings, engine, Gateway(settings, temporal_client))
        for region in built.values():
            linked = await asyncio.to_thread(region.orders_command, "link")
            assert linked.returncode == 0, linked.stderr
            await region.gateway.start()
        yield built
    finally:
        for region in built.values():
            await region.gateway.stop()
            await region.engine.dispose()
        for server in servers.values():
            await asyncio.to_thread(server.stop)


def customer_homed_in(region: str) -> str:
    while True:
        customer = random_ref("CUST").lower()
        if default_home(customer, ["a", "b"]) == region:
            return customer


async def test_two_regions_forward_refuse_serve_stale_and_heal(regions, temporal_client):
    a, b = regions["a"], regions["b"]
    sku = random_ref("SKU")
    for region in (a, b):  # each region its own catalogue and stock
        await upsert_products(region.engine, [(sku, "regional mug", 1_000, 50)])
    alice = customer_homed_in("a")
    bearer = auth(mint_token(a.settings, alice, "customer"))
    order = {**BODY, "items": [{"sku": sku, "quantity": 2}]}

    # 1. Alice (home A) orders through B: forwarded, accepted in A only.
    key = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=b.gateway.url, timeout=10) as via_b:
        accepted = await via_b.post("/v1/orders", json=order, headers={**bearer, "Idempotency-Key": key})
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["X-Region"] == "a"
    order_id = uuid.UUID(accepted.json()["id"])
    assert [tuple(r) for r in await a.fetch("SELECT region FROM orders WHERE id = $1", order_id)] == [("a",)]
    assert len(await a.fetch("SELECT 1 FROM idempotency_keys WHERE customer_id = $1", alice)) == 1
    assert await b.fetch("SELECT 1 FROM idempotency_keys WHERE customer_id = $1", alice) == []
    described = await temporal_client.get_workflow_handle(order_workflow_id(order_id)).describe()
    assert described.task_queue == a.settings.task_queue
    # The Idempotency-Key went through unchanged: asking A directly replays the same order.
    async with httpx.AsyncClient(base_url=a.gateway.url, timeout=10) as via_a:
        again = await via_a.post("/v1/orders", json=order, headers={**bearer, "Idempotency-Key": key})
    assert again.status_code == 202 and again.json()["id"] == str(order_id)
    assert again.headers["Idempotent-Replayed"] == "true"
    # A forwarded request never travels on: B is not Alice's home, so a hop that claims to come from
    # A (two directories disagreeing) is refused, not forwarded back, and nothing is written in B.
    async with httpx.AsyncClient(base_url=b.gateway.url, timeout=10) as via_b:
        looped = await via_b.post(
            "/v1/orders",
            json=order,
            headers={**bearer, "Idempotency-Key": uuid.uuid4().hex, "X-Orders-Forwarded-From": "a"},
        )
    assert looped.status_code == 503 and looped.json()["type"].endswith("/region-misdirected")
    assert "Retry-After" in looped.headers
    # ... and the row reaches B's replica.
    await wait_for(
        lambda: b.fetch("SELECT 1 FROM orders WHERE id = $1 AND region = 'a'", order_id),
        timeout=20,
        what="the order replicated to B",
    )

    # 2. A is cut off: its gateway hangs, replication from A to B stops.
    await a.gateway.hang()
    await b.fetch(f"ALTER SUBSCRIPTION {subscription_name('a', 'b')} DISABLE")
    try:
        async with httpx.AsyncClient(base_url=b.gateway.url, timeout=WRITE_CLIENT_TIMEOUT_S) as via_b:
            refused = await via_b.post(
                "/v1/orders", json=order, headers={**bearer, "Idempotency-Key": uuid.uuid4().hex}
            )
            cancel = await via_b.post(f"/v1/orders/{order_id}/cancel", json={}, headers=bearer)
        for answer in (refused, cancel):
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == str(b.settings.region_retry_after_s)
            assert answer.json()["type"].endswith("/region-unavailable")
        assert len(await b.fetch("SELECT 1 FROM orders WHERE customer_id = $1", alice)) == 1  # the replica only
        assert await b.fetch("SELECT 1 FROM idempotency_keys WHERE customer_id = $1", alice) == []

        await wait_for(lambda: _lag_at_least(b, "a", 1), timeout=10, what="B's replica of A to fall behind by a second")
        async with httpx.AsyncClient(base_url=b.gateway.url, timeout=10) as via_b:
            stale = await via_b.get(f"/v1/orders/{order_id}", headers=bearer)
            listed = await via_b.get("/v1/orders", headers=bearer)
        for answer in (stale, listed):
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-Read-Stale"] == "true"
            assert int(answer.headers["X-Read-Replica-Lag"]) >= 1
            assert answer.headers["X-Region"] == "b"
        assert stale.json()["id"] == str(order_id)
        assert [item["id"] for item in listed.json()["items"]] == [str(order_id)]

        # Bob (home B) is not affected.
        bob = customer_homed_in("b")
        async with httpx.AsyncClient(base_url=b.gateway.url, timeout=10) as via_b:
            local = await via_b.post(
                "/v1/orders",
                json=order,
                headers={**auth(mint_token(b.settings, bob, "customer")), "Idempotency-Key": uuid.uuid4().hex},
            )
        assert local.status_code == 202 and local.headers["X-Region"] == "b"
    finally:
        # 3. Heal.
        await b.fetch(f"ALTER SUBSCRIPTION {subscription_name('a', 'b')} ENABLE")
        await a.gateway.heal()

    await wait_for(lambda: _lag_is_zero(b, "a"), timeout=30, what="B's replica of A to catch up")
    async with httpx.AsyncClient(base_url=b.gateway.url, timeout=10) as via_b:
        fresh = await via_b.get(f"/v1/orders/{order_id}", headers=bearer)
    assert fresh.status_code == 200 and fresh.headers["X-Region"] == "a"
    assert "X-Read-Stale" not in fresh.headers
    rules = await b.fetch("SELECT address FROM pg_hba_file_rules WHERE address = '10.77.0.0'")
    assert len(rules) == 1  # trusted_networks reached pg_hba.conf
    status = await asyncio.to_thread(b.orders_command, "status", "--json")
    assert status.returncode == 0, status.stderr
    (peer,) = json.loads(status.stdout)["peers"]
    assert peer["peer"] == "a" and peer["enabled"] and peer["tables_ready"] and peer["lag_s"] == 0

    # A's gateway answers but its database does not: A's own 503 reaches the writer as it is, and a
    # read is better served from B's replica.
    await a.gateway.stop()
    unreachable = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/orders"
    broken = Gateway(a.settings.model_copy(update={"database_url": unreachable}), temporal_client)
    await broken.start()
    try:
        async with httpx.AsyncClient(base_url=b.gateway.url, timeout=10) as via_b:
            stale = await via_b.get(f"/v1/orders/{order_id}", headers=bearer)
            write = await via_b.post("/v1/orders", json=order, headers={**bearer, "Idempotency-Key": uuid.uuid4().hex})
        assert stale.status_code == 200 and stale.headers["X-Read-Stale"] == "true", stale.text
        assert write.status_code == 503 and write.json()["type"].endswith("/unavailable"), write.text
        assert "Retry-After" in write.headers and write.headers["X-Region"] == "a"
    finally:
        await broken.stop()
        await a.gateway.start()

    # 4. A lost for good: rehome its customers to B (in both directories), then undo.
    rehomed = await asyncio.to_thread(b.orders_command, "rehome", "--from", "a", "--to", "b", "--by", "test")
    assert rehomed.returncode == 0, rehomed.stdout + rehomed.stderr
    try:
        shown = await asyncio.to_thread(a.orders_command, "home", alice)
        assert shown.stdout.strip() == f"{alice}: home b (default rule: a, rehomed to b)", shown.stdout + shown.stderr
        async with httpx.AsyncClient(base_url=a.gateway.url, timeout=10) as via_a:
            moved = await via_a.post("/v1/orders", json=order, headers={**bearer, "Idempotency-Key": uuid.uuid4().hex})
            old_one = await via_a.get(f"/v1/orders/{order_id}", headers=bearer)
        assert moved.status_code == 202, moved.text
        assert moved.headers["X-Region"] == "b"  # new orders are written in B now
        assert [
            tuple(r) for r in await b.fetch("SELECT region FROM orders WHERE id = $1", uuid.UUID(moved.json()["id"]))
        ] == [("b",)]
        assert old_one.headers["X-Region"] == "a"  # the order accepted in A stays A's
    finally:
        undone = await asyncio.to_thread(b.orders_command, "rehome", "--from", "a", "--to", "a", "--by", "test")
        assert undone.returncode == 0, undone.stdout + undone.stderr


async def _lag_at_least(region: Region, peer: str, seconds: int) -> bool:
    lag = await replica_lag_s(region.engine, peer, region.settings.region_heartbeat_s)
    return lag is not None and lag >= seconds


async def _lag_is_zero(region: Region, peer: str) -> bool:
    return await replica_lag_s(region.engine, peer, region.settings.region_heartbeat_s) == 0
