"""Real servers for the test suite: embedded PostgreSQL, the sandbox providers over HTTP, the Temporal
dev server and the time-skipping test server. Nothing here is a mock.

``ORDERS_TEST_DATABASE_ADMIN_URL`` (e.g. postgresql://postgres@127.0.0.1:5432/postgres) runs the
suite against an existing PostgreSQL instead of the embedded one.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from core.config import Settings, settings_env
from devstack.postgres import EmbeddedPostgres
from devstack.processes import ManagedProcess, free_port
from devstack.readiness import platform_task_queues, worker_polls

ROOT = Path(__file__).resolve().parents[1]


def random_ref(prefix: str) -> str:
    """A unique reference per test (cosmicpython's random_refs): no teardown needed."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}".upper()


@dataclass
class Database:
    admin_dsn: str  # postgresql://... of the maintenance database
    name: str
    host: str
    port: int
    embedded: EmbeddedPostgres | None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{self.name}"


async def create_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def start_worker(settings: Settings, log_dir: Path) -> ManagedProcess:
    """`orders worker` as a child process, ready once Temporal has seen it poll every task queue."""
    process = ManagedProcess(
        "worker",
        [sys.executable, "-m", "cli.main", "worker"],
        settings_env(settings),
        log_dir / "worker.log",
        cwd=ROOT,
        ready_check=worker_polls(settings, platform_task_queues(settings.task_queue), pid=lambda: process.pid),
        ready_timeout=30,
    )
    process.start()
    process.wait_ready()
    return process


def start_sandbox(settings: Settings, log_dir: Path) -> ManagedProcess:
    env = settings_env(settings)
    process = ManagedProcess(
        "sandbox",
        [sys.executable, "-m", "cli.main", "sandbox"],
        env,
        log_dir / "sandbox.log",
        cwd=ROOT,
        ready_url=f"http://127.0.0.1:{settings.sandbox_port}/healthz",
        ready_timeout=30,
    )
    process.start()
    process.wait_ready()
    return process


def test_settings(database_url: str, **overrides) -> Settings:
    sandbox_port = overrides.pop("sandbox_port", None) or free_port()
    api_port = overrides.pop("api_port", None) or free_port()
    values = dict(
        environment="test",
        database_url=database_url,
        sandbox_port=sandbox_port,
        api_port=api_port,
        payment_base_url=f"http://127.0.0.1:{sandbox_port}/payments",
        carrier_base_url=f"http://127.0.0.1:{sandbox_port}/carrier",
        sandbox_carrier_webhook_url=f"http://127.0.0.1:{api_port}/v1/carrier/events",
        sandbox_delivery_delay_s=1.0,
        sandbox_slow_delay_s=6.0,
        log_json=True,
        # Load tests submit hundreds of orders as one customer; rate-limit tests set their own budgets.
        rate_limit_submit="100000/minute",
        rate_limit_read="100000/minute",
        rate_limit_webhook="100000/minute",
        # The gateways of a test session share one database: tests that sweep start their own.
        idempotency_sweep_interval_s=0,
        # Tests park orders on queues no worker polls on purpose; admission control has its own tests.
        api_max_start_delay_s=0,
    )
    values.update(overrides)
    return Settings(**values)


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll an async predicate until it returns a truthy value; fail clearly on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def admin_dsn_from_env() -> str | None:
    return os.environ.get("ORDERS_TEST_DATABASE_ADMIN_URL")
