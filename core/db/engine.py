"""Engine factory. Called by composition roots only; nothing connects at import time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from core.config import Settings

# A pooled connection idle longer than this is pinged before use (one round trip); one used more
# recently is only checked locally (see _discard_dead_connections).
IDLE_PING_AFTER_S = 10.0


class DatabaseNotConfigured(RuntimeError):
    pass


def create_engine(settings: Settings, *, url: str | None = None, pool_size: int | None = None) -> AsyncEngine:
    """An asyncpg engine with bounded connect and statement timeouts, so callers never hang.

    A pooled connection that the server has closed (PostgreSQL restarted, a backend terminated)
    is never handed out: it is replaced by a fresh one, as SQLAlchemy's ``pool_pre_ping`` would,
    without that option's three round trips (BEGIN, a ping, ROLLBACK) on every checkout."""
    database_url = url or settings.database_url
    if not database_url:
        raise DatabaseNotConfigured(
            "ORDERS_DATABASE_URL is not set (run `orders dev`, which starts an embedded PostgreSQL)"
        )
    engine = create_async_engine(
        database_url,
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_timeout_s,
        connect_args={
            "timeout": settings.database_timeout_s,
            "command_timeout": max(settings.database_timeout_s * 2, 10.0),
            "server_settings": {"application_name": "orders"},
        },
    )
    event.listen(engine.sync_engine, "checkin", _note_checkin)
    event.listen(engine.sync_engine, "checkout", _discard_dead_connections)
    return engine


@asynccontextmanager
async def single_statement(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for one statement that is its own transaction: no BEGIN and no COMMIT/ROLLBACK
    round trips around it (asyncpg's isolation level is set and reset on the client, without a
    round trip). A lone SELECT sees one snapshot either way; a lone write commits or fails whole."""
    async with engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


def _note_checkin(dbapi_connection, record) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _discard_dead_connections(dbapi_connection, record, _proxy) -> None:
    """Pool checkout: refuse a connection the server has closed, so the pool opens another.

    asyncpg notices a closed socket as soon as the event loop reads its end-of-file, which it does
    while the connection sits in the pool: a restart or a terminated backend is seen without a
    round trip. What cannot be seen locally (a peer gone without closing, a connection dropped by
    a middlebox after a long idle spell) is what the real ping is for, sent to connections idle
    longer than IDLE_PING_AFTER_S. Raising DisconnectionError makes the pool discard the connection
    and check out another (SQLAlchemy's documented custom pessimistic disconnect handling)."""
    if record.driver_connection.is_closed():
        raise exc.DisconnectionError("the database closed this pooled connection")
    idle_since = record.info.get("checked_in_at")
    if idle_since is not None and time.monotonic() - idle_since > IDLE_PING_AFTER_S:
        try:
            dbapi_connection.ping()
        except Exception as error:
            raise exc.DisconnectionError(f"the pooled connection failed its ping: {error}") from error
