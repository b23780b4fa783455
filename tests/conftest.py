"""Session-wide real servers. Each test uses its own SKUs, customers and task queue instead of teardown."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cli.main import stop_on_sigterm
from core.db.engine import create_engine
from core.db.migrate import upgrade_async
from devstack.postgres import EmbeddedPostgres
from devstack.processes import free_port
from tests.harness import (
    Database,
    admin_dsn_from_env,
    create_database,
    drop_database,
    start_sandbox,
    test_settings,
)


def pytest_configure(config) -> None:
    # A run stopped with SIGTERM (a CI timeout, `timeout make test`) tears its servers down as
    # Ctrl-C does, instead of leaving PostgreSQL, Temporal and chaos stacks running.
    stop_on_sigterm()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parents[1] / "artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """The embedded PostgreSQL (or none, when ORDERS_TEST_DATABASE_ADMIN_URL names a server)."""
    if admin_dsn_from_env():
        yield None
        return
    data = tmp_path_factory.mktemp("pg") / "data"
    server = EmbeddedPostgres(data, port=free_port(), fast=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def database(postgres_server) -> Database:
    name = f"orders_test_{uuid.uuid4().hex[:8]}"
    if postgres_server is not None:
        admin = postgres_server.dsn("postgres")
        host, port = postgres_server.host, postgres_server.port
    else:
        admin = admin_dsn_from_env()
        from urllib.parse import urlparse

        parsed = urlparse(admin)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 5432
    await create_database(admin, name)
    db = Database(admin_dsn=admin, name=name, host=host, port=port, embedded=postgres_server)
    await upgrade_async(db.url)
    yield db
    await drop_database(admin, name)


@pytest.fixture(scope="session")
def settings(database: Database):
    return test_settings(database.url)


@pytest.fixture(scope="session")
async def engine(settings) -> AsyncEngine:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sandbox(settings, tmp_path_factory):
    """The sandbox payment gateway and carrier, a real HTTP server in its own process."""
    process = start_sandbox(settings, tmp_path_factory.mktemp("sandbox-logs"))
    yield f"http://127.0.0.1:{settings.sandbox_port}"
    process.stop()
