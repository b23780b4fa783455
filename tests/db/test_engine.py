"""The engine never hands out a pooled connection the server has closed (what pool_pre_ping did)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from core.db import engine as engine_module
from core.db.engine import create_engine
from devstack.postgres import EmbeddedPostgres
from devstack.processes import free_port
from tests.harness import test_settings as settings_for


async def backend_pid(engine) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT pg_backend_pid()"))


async def test_a_restarted_server_costs_no_failed_query(tmp_path):
    server = EmbeddedPostgres(tmp_path / "data", port=free_port(), fast=True)
    server.start()
    engine = create_engine(settings_for(server.url("postgres")))
    try:
        before = await backend_pid(engine)  # now pooled
        await asyncio.to_thread(server.stop, "immediate")
        await asyncio.to_thread(server.start)
        # The pooled connection is dead; the checkout replaces it instead of failing the query.
        assert await backend_pid(engine) != before
    finally:
        await engine.dispose()
        server.stop()


async def test_a_terminated_backend_is_replaced_and_an_idle_connection_pinged(engine, monkeypatch):
    async with engine.connect() as killer:
        async with engine.connect() as victim:
            pid = await victim.scalar(text("SELECT pg_backend_pid()"))
        # The victim is back in the pool; its backend goes away under it.
        await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    await asyncio.sleep(0.2)  # the event loop reads the closed socket
    for _ in range(3):  # whichever pooled connection comes out, none is the terminated one
        assert await backend_pid(engine) != pid

    pings = []
    monkeypatch.setattr(engine_module, "IDLE_PING_AFTER_S", 0.0)
    real_ping = type(await _dbapi_connection(engine)).ping
    monkeypatch.setattr(type(await _dbapi_connection(engine)), "ping", lambda self: pings.append(1) or real_ping(self))
    await backend_pid(engine)
    assert pings, "a connection idle past IDLE_PING_AFTER_S is pinged before use"


async def _dbapi_connection(engine):
    async with engine.connect() as conn:
        return (await conn.get_raw_connection()).dbapi_connection
