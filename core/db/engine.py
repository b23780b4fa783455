"""Engine factory. Called by composition roots only; nothing connects at import time."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.config import Settings


class DatabaseNotConfigured(RuntimeError):
    pass


def create_engine(settings: Settings, *, url: str | None = None, pool_size: int | None = None) -> AsyncEngine:
    """An asyncpg engine with bounded connect and statement timeouts, so callers never hang."""
    database_url = url or settings.database_url
    if not database_url:
        raise DatabaseNotConfigured(
            "ORDERS_DATABASE_URL is not set (run `orders dev`, which starts an embedded PostgreSQL)"
        )
    return create_async_engine(
        database_url,
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_timeout_s,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.database_timeout_s,
            "command_timeout": max(settings.database_timeout_s * 2, 10.0),
            "server_settings": {"application_name": "orders"},
        },
    )
