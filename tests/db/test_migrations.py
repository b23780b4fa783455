"""Migrations are reversible and match the table definitions exactly."""

from __future__ import annotations

import asyncio
import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from core.db.migrate import downgrade, upgrade
from core.db.tables import metadata
from tests.harness import create_database, drop_database


async def test_upgrade_downgrade_upgrade_leaves_no_drift(database):
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    await create_database(database.admin_dsn, name)
    url = f"postgresql+asyncpg://postgres@{database.host}:{database.port}/{name}"
    engine = create_async_engine(url)
    try:
        await asyncio.to_thread(upgrade, url)
        await asyncio.to_thread(downgrade, url, "base")
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        assert tables == ["alembic_version"]
        await asyncio.to_thread(upgrade, url)
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
        assert diff == []
    finally:
        await engine.dispose()
        await drop_database(database.admin_dsn, name)
