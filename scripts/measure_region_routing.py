"""What region routing costs a read: GET /v1/orders/{id} answered by

* ``single``    — a single-region gateway (no routing middleware: the platform as before regions);
* ``home``      — region A's gateway for a customer homed in A (two directory queries, no hop);
* ``forwarded`` — region B's gateway for the same customer (directory queries, then one HTTP hop to A).

Everything runs in this process (two embedded PostgreSQL servers, three uvicorn servers, the
client), so CPU time per request covers client and servers alike and compares the three on equal
terms; wall-clock medians are printed too but are noisy on a shared machine. No Temporal: reads
are answered from the read model.

    .venv/bin/python scripts/measure_region_routing.py [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import uvicorn

from api.app import create_app
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import upgrade_async
from core.db.read_model import OrderReadModel
from core.domain import OrderLine, OrderView
from core.logging import configure_logging
from core.regions import default_home
from core.tokens import mint_token
from devstack.postgres import EmbeddedPostgres
from devstack.processes import free_port


async def serve(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task]:
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.api_port, log_config=None)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    return server, task


async def measure(url: str, path: str, headers: dict, requests: int) -> tuple[float, float, float]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(20):  # warm-up: pools, connections
            assert (await client.get(path, headers=headers)).status_code == 200
        latencies = []
        cpu0 = time.process_time()
        for _ in range(requests):
            t0 = time.perf_counter()
            response = await client.get(path, headers=headers)
            latencies.append(time.perf_counter() - t0)
            assert response.status_code == 200, response.text
        cpu = (time.process_time() - cpu0) / requests
    latencies.sort()
    return statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99) - 1] * 1000, cpu * 1000


async def main(requests: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="region-routing-"))
    servers = {name: EmbeddedPostgres(root / name, port=free_port(), fast=True) for name in ("a", "b")}
    for server in servers.values():
        server.start()
        server.ensure_database("orders")
        await upgrade_async(server.url())
    ports = {name: free_port() for name in ("a", "b", "single")}
    base = dict(environment="test", log_level="WARNING", log_json=True, rate_limit_read="1000000/minute")

    def region(name: str, peer: str) -> Settings:
        return Settings(
            **base,
            database_url=servers[name].url(),
            api_port=ports[name],
            region=name,
            region_peers={peer: f"http://127.0.0.1:{ports[peer]}"},
        )

    settings = {
        "a": region("a", "b"),
        "b": region("b", "a"),
        "single": Settings(**base, database_url=servers["a"].url(), api_port=ports["single"]),
    }
    configure_logging(settings["a"], process="measure")
    customer = next(c for c in (f"customer-{n}" for n in range(100)) if default_home(c, ["a", "b"]) == "a")
    view = OrderView.received(
        order_id=uuid.uuid4(),
        customer_id=customer,
        items=[OrderLine(sku="MUG-WHT", quantity=1, unit_price=1299)],
        total=1299,
        currency="EUR",
        shipping_address={
            "name": "Ada Lovelace",
            "line1": "Unter den Linden 1",
            "line2": None,
            "city": "Berlin",
            "postal_code": "10117",
            "country": "DE",
        },
        at=datetime.now(UTC),
    )
    engine = create_engine(settings["a"])
    await OrderReadModel(engine, region="a").project(1, view)
    await engine.dispose()
    running = [await serve(s) for s in settings.values()]
    headers = {"Authorization": f"Bearer {mint_token(settings['a'], customer, 'customer')}"}
    path = f"/v1/orders/{view.id}"
    try:
        print(f"GET {path}, {requests} sequential requests each (client and servers in one process)")
        print(f"{'variant':<10} {'median ms':>10} {'p99 ms':>8} {'CPU ms/request':>15}")
        rows = {}
        for name, port in (("single", ports["single"]), ("home", ports["a"]), ("forwarded", ports["b"])):
            rows[name] = await measure(f"http://127.0.0.1:{port}", path, headers, requests)
            median, p99, cpu = rows[name]
            print(f"{name:<10} {median:>10.2f} {p99:>8.2f} {cpu:>15.2f}")
        print(
            f"ratios to single (CPU): home {rows['home'][2] / rows['single'][2]:.2f}, "
            f"forwarded {rows['forwarded'][2] / rows['single'][2]:.2f}"
        )
    finally:
        for server, task in running:
            server.should_exit = True
            await task
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    asyncio.run(main(parser.parse_args().requests))
