"""Before/after CPU per request of the gateway's read routes, in one process, interleaved.

On a shared machine the end-to-end `orders bench --read-path` figures move with the neighbours'
load; this runs the real gateway app (``api.app.create_app``, every middleware, INFO JSON logs to
/dev/null) in-process against a real embedded PostgreSQL seeded through the projection writer, and
alternates the code before and after a read-path change in rounds, so both see the same machine.
CPU is this process's (the app plus the in-process ASGI client, the same for both); PostgreSQL's
own CPU is not in it.

    .venv/bin/python scripts/read_path_ab.py [--rounds 5] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from api.app import create_app  # noqa: E402
from api.openapi import SPLIT_ORDER_EXAMPLE  # noqa: E402
from api.schemas import OrderView as PublicView  # noqa: E402
from bench.reads import copy_view  # noqa: E402
from core.config import Settings  # noqa: E402
from core.db import read_model  # noqa: E402
from core.db.engine import create_engine  # noqa: E402
from core.db.migrate import upgrade_async  # noqa: E402
from core.domain import OrderView  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from core.tokens import mint_token  # noqa: E402
from devstack.postgres import EmbeddedPostgres  # noqa: E402
from devstack.processes import free_port  # noqa: E402


@contextlib.asynccontextmanager
async def _reading_before(self):
    """The read connection before the change: the driver's implicit transaction around the read."""
    async with self._engine.connect() as conn:
        yield conn


async def _get_dict(self, order_id):
    """The read before "validate the view from its JSON text": the driver decodes the JSONB."""
    async with self._reading() as conn:
        row = (
            await conn.execute(
                read_model.select(read_model.orders.c.view, read_model.orders.c.tracking).where(
                    read_model.orders.c.id == order_id
                )
            )
        ).first()
    return read_model.with_tracking(row.view, row.tracking) if row is not None else None


async def _list_dict(self, *, limit, cursor=None, customer_id=None, status=None):
    """The list before "validate the view from its JSON text" (the script reads no cursor, no status)."""
    o = read_model.orders
    query = read_model.select(o.c.view, o.c.tracking, o.c.created_at, o.c.id)
    if customer_id is not None:
        query = query.where(o.c.customer_id == customer_id)
    query = query.order_by(o.c.created_at.desc(), o.c.id.desc()).limit(limit + 1)
    async with self._reading() as conn:
        rows = (await conn.execute(query)).all()
    items = [read_model.with_tracking(row.view, row.tracking) for row in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return read_model.OrderPage(items, read_model.encode_cursor(last.created_at, last.id) if last else None)


async def _ping_bare(self):
    """A candidate, not in the product: the pool's pre-ping without SQLAlchemy's BEGIN/ROLLBACK
    around it (which it adds for pgbouncer's transaction mode)."""
    await self._connection.fetchrow(";")


# name -> {(class, attribute): replacement}; attributes not named keep the code as it is.
VARIANTS = {
    "0 before": {
        (read_model.OrderReadModel, "_reading"): _reading_before,
        (read_model.OrderReadModel, "get"): _get_dict,
        (read_model.OrderReadModel, "list"): _list_dict,
    },
    "1 autocommit": {(read_model.OrderReadModel, "get"): _get_dict, (read_model.OrderReadModel, "list"): _list_dict},
    "2 autocommit + JSON text": {},
    "3 (candidate) + ping without a transaction": {(AsyncAdapt_asyncpg_connection, "_async_ping"): _ping_bare},
}


def template() -> OrderView:
    """A shipped order split over two warehouses (the API's own example), as the domain has it."""
    public = PublicView.model_validate(SPLIT_ORDER_EXAMPLE).model_dump(mode="json")
    for shipment in public["shipments"]:
        shipment["warehouse_id"] = shipment.pop("warehouse")
    for refund in public["refunds"]:
        refund["shipment_id"] = refund.pop("shipment")
    return OrderView.model_validate(public)


async def main(args: argparse.Namespace, out) -> None:
    data = Path(tempfile.mkdtemp(prefix="read-ab-"))
    server = EmbeddedPostgres(data / "pg", port=free_port(), fast=True)
    server.start()
    try:
        server.ensure_database("orders")
        url = server.url("orders")
        await upgrade_async(url)
        settings = Settings(
            environment="test",
            database_url=url,
            rate_limit_read="1000000/minute",
            rate_limit_submit="1000000/minute",
            log_json=True,
            log_level="INFO",
            # Measuring CPU per request, not shedding: a busy shared machine must not turn reads into 503s.
            api_max_event_loop_lag_s=60.0,
            api_request_timeout_s=60.0,
        )
        configure_logging(settings, process="api")  # to stdout: /dev/null while measuring (see __main__)
        engine = create_engine(settings, pool_size=4)
        model = read_model.OrderReadModel(engine)
        base = template()
        customers = [f"ab-{n}" for n in range(20)]
        owned = []
        now = datetime.now(UTC)
        for n in range(1000):
            view = copy_view(base, uuid.uuid4(), customers[n % 20], now - timedelta(seconds=1000 - n), f"-{n}")
            await model.project(len(view.history) + 1, view)
            owned.append((customers[n % 20], str(view.id)))
        await engine.dispose()
        tokens = {c: mint_token(settings, c, "customer", ttl_s=3600) for c in customers}
        app = create_app(settings)
        original = {key: getattr(*key) for v in VARIANTS.values() for key in v}
        results: dict[tuple[str, str], list[float]] = {}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                for round_ in range(-1, args.rounds):  # round -1 warms up and is not counted
                    order = list(VARIANTS.items())
                    for variant, patches in order if round_ % 2 == 0 else order[::-1]:
                        for key, fn in original.items():
                            setattr(*key, patches.get(key, fn))
                        for route in ("GET one", "GET list"):
                            cpu = await _drive(http, tokens, owned, route, args.requests)
                            if round_ >= 0:
                                results.setdefault((variant, route), []).append(cpu)
                    print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        for (variant, route), values in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            line = f"{route:9} {variant:40} median {statistics.median(values):6.3f} ms CPU/request"
            print(line + f" (rounds: {', '.join(f'{v:.3f}' for v in values)})", file=out)
        print(json.dumps({f"{v} | {r}": statistics.median(x) for (v, r), x in results.items()}), file=out)
    finally:
        server.stop()


async def _drive(http: httpx.AsyncClient, tokens, owned, route: str, requests: int) -> float:
    """``requests`` reads, 8 at a time; this process's CPU ms per request."""
    gate = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        customer, order_id = owned[(n * 7919) % len(owned)]
        path = "/v1/orders" if route == "GET list" else f"/v1/orders/{order_id}"
        async with gate:
            response = await http.get(path, headers={"Authorization": f"Bearer {tokens[customer]}"})
        assert response.status_code == 200, response.text

    started = time.process_time()
    await asyncio.gather(*(one(n) for n in range(requests)))
    return 1000 * (time.process_time() - started) / requests


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400)
    arguments = parser.parse_args()
    # The gateway logs a JSON line per request to stdout, as it does in production; the figures go
    # to stderr.
    real_stdout = sys.stdout
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        asyncio.run(main(arguments, real_stdout))
