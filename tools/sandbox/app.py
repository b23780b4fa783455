"""Composition root of the sandbox providers: one FastAPI app for the payment gateway and carrier."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import Settings
from core.db.engine import create_engine
from sandbox import carrier, faults, payments
from sandbox.delivery import DeliveryLoop
from sandbox.errors import install_error_handlers
from sandbox.faults import FaultConfig, FaultInjector
from sandbox.idempotency import IdempotencyStore
from sandbox.tables import metadata


async def create_tables(engine: AsyncEngine) -> None:
    """Create the ``sandbox_*`` tables if missing; safe when several processes start at once."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('sandbox.create_tables'))"))
        await conn.run_sync(metadata.create_all)


def create_app(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    delivery_poll_interval_s: float = 0.2,
    delivery_max_idle_s: float = 2.0,
    rng: random.Random | None = None,
) -> FastAPI:
    """The sandbox app. Nothing connects until the lifespan starts.

    The lifespan creates the engine from ``settings.effective_sandbox_database_url`` unless one is
    given (a given engine is not disposed), creates the tables, and runs the delivery loop.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None
        db = engine or create_engine(settings, url=settings.effective_sandbox_database_url)
        try:
            await create_tables(db)
            app.state.engine = db
            app.state.idempotency = IdempotencyStore(db)
            delivery = DeliveryLoop(
                db, settings, poll_interval_s=delivery_poll_interval_s, max_idle_s=delivery_max_idle_s
            )
            app.state.delivery = delivery
            await delivery.start()
            try:
                yield
            finally:
                await delivery.stop()
        finally:
            if owned:
                await db.dispose()

    app = FastAPI(title="Sandbox providers", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.faults = FaultInjector(FaultConfig.from_settings(settings), rng)
    install_error_handlers(app)
    app.include_router(payments.router)
    app.include_router(carrier.router)
    app.include_router(faults.router)

    @app.get("/healthz", tags=["sandbox controls"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
