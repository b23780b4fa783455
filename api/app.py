"""The gateway's composition root: ``create_app(settings)`` wires the engine, the Temporal client
and the routes. Nothing connects at import time."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api.backlog import StartBacklog
from api.errors import install_error_handlers
from api.middleware import RequestGuards
from api.observability import install_observability
from api.openapi import install_openapi
from api.overload import LoadShedding
from api.ratelimit import RateLimits
from api.regions import RegionRouting, heartbeat_loop, peer_client
from api.routes import carrier, catalog, codec, health, orders, warehouses
from core.config import Settings
from core.db.engine import create_engine
from core.db.order_changes import OrderChanges
from core.key_sweeper import KeySweeper
from core.order_service import OrderService
from core.temporal import TemporalConnection
from core.tokens import TokenVerifier

DESCRIPTION = """
Submit orders and follow them through stock, payment and shipping.

* Authenticate with `Authorization: Bearer <JWT>` (`orders token --sub alice --role customer`).
* `POST /v1/orders` needs an `Idempotency-Key` header; retries with the same key and body return
  the same order (`Idempotent-Replayed: true`), a different body with the same key gets 422.
  Keys are kept for 24 hours; after that a key is new again.
* Money is in integer minor units of the currency (`1999` EUR = 19.99 EUR).
* Errors are `application/problem+json` (RFC 9457) and carry the request id (`X-Request-ID`).
* Follow an order without polling: `GET /v1/orders/{id}?wait=25` with `If-None-Match: <its ETag>`
  answers as soon as the order changes (or `&until=completed&until=failed...`: once it reaches one
  of those statuses), else after the wait with 304 Not Modified.
"""


def release_waiters(app: FastAPI) -> None:
    """Answer every long-poll of this app now (its server is shutting down)."""
    changes = getattr(app.state, "order_changes", None)
    if changes is not None:
        changes.release()


def create_app(settings: Settings, *, engine: AsyncEngine | None = None, client: Client | None = None) -> FastAPI:
    """The gateway. ``engine`` and ``client`` (already connected) are for callers that own them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own_engine = engine is None
        app.state.engine = engine or create_engine(settings)
        # Connected on first use: the gateway starts (and /readyz says 503) while Temporal is down.
        app.state.temporal = TemporalConnection(settings, client)
        app.state.order_changes = OrderChanges(
            app.state.engine,
            max_waiters=settings.api_max_waiters,
            recheck_s=settings.api_wait_recheck_s,
            connect_timeout_s=settings.database_timeout_s,
        )
        app.state.order_changes.start()
        app.state.backlog.connect(app.state.temporal)
        app.state.service = OrderService(settings, app.state.engine, app.state.temporal, app.state.order_changes)
        stop_sweeping = asyncio.Event()
        sweeping = app.state.key_sweeper = None
        if settings.idempotency_sweep_interval_s > 0:
            app.state.key_sweeper = KeySweeper(app.state.engine, settings, app.state.metrics.key_sweeps)
            sweeping = asyncio.create_task(app.state.key_sweeper.run(stop_sweeping), name="idempotency-key-sweeper")
        heartbeats = None
        if settings.multi_region:
            app.state.peer_client = peer_client(settings)
            heartbeats = asyncio.create_task(heartbeat_loop(app.state.engine, settings), name="region-heartbeat")
        try:
            yield
        finally:
            if heartbeats is not None:
                heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeats
                await app.state.peer_client.aclose()
            if sweeping is not None:
                # The sweep stops between batches; a batch is one short statement.
                stop_sweeping.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sweeping), timeout=settings.database_timeout_s)
                sweeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeping
            await app.state.order_changes.close()
            await app.state.backlog.close()
            if own_engine:
                await app.state.engine.dispose()

    app = FastAPI(
        title="Orders API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.verifier = TokenVerifier(settings)
    # Checking once the lifespan has a Temporal connection; its age is a gauge on /metrics.
    app.state.backlog = StartBacklog(
        settings, on_age=lambda age: app.state.metrics.start_backlog.set(-1 if age is None else age)
    )
    install_error_handlers(app)
    install_openapi(app)
    for router in (orders.router, catalog.router, warehouses.router, carrier.router, health.router, codec.router):
        app.include_router(router)
    if settings.multi_region:
        # Inside the rate limiter, which leaves the verified token's claims for it (docs/regions.md).
        app.add_middleware(RegionRouting, settings=settings)
    app.add_middleware(RateLimits, settings=settings)  # inside RequestGuards: 429s carry the request id
    # Before the rate limiter (shedding costs nothing), inside RequestGuards (503s carry the id).
    app.add_middleware(
        LoadShedding,
        max_in_flight=settings.api_max_in_flight,
        request_timeout_s=settings.api_request_timeout_s,
        max_loop_lag_s=settings.api_max_event_loop_lag_s,
        max_retry_after_s=settings.api_max_retry_after_s,
        admission=app.state.backlog.refusal,
        on_lag=lambda lag: app.state.metrics.loop_lag.set(lag),
    )
    app.add_middleware(RequestGuards, max_body_bytes=settings.max_body_bytes)
    install_observability(app, settings)  # outermost: counts every answer, also the guards'
    return app
