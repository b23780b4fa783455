"""Integration tests: the Temporal dev server, PostgreSQL, the sandbox over HTTP, a worker and the
gateway served by uvicorn on a real port (the sandbox carrier posts its webhooks to it)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvicorn

from api.app import create_app
from core.search_attributes import SEARCH_ATTRIBUTES
from core.temporal import connect_client
from core.tokens import mint_token
from devstack.processes import free_port
from devstack.temporal import TemporalDevServer
from tests.harness import start_worker


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory):
    """A real dev server with file persistence (so tests may restart it)."""
    folder = tmp_path_factory.mktemp("temporal")
    server = TemporalDevServer(
        folder / "temporal.db", port=free_port(), ui_port=None, search_attributes=SEARCH_ATTRIBUTES, log_dir=folder
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def it_settings(settings, temporal_server):
    return settings.model_copy(update={"temporal_address": temporal_server.address, "task_queue": "it-orders"})


@pytest.fixture(scope="session")
async def temporal_client(it_settings):
    return await connect_client(it_settings)


class Workers:
    """`orders worker` in a child process; stop(), kill() and start() simulate outages and crashes."""

    def __init__(self, settings, log_dir) -> None:
        self._settings, self._log_dir = settings, log_dir
        self.process = None

    async def start(self) -> None:
        self.process = await asyncio.to_thread(start_worker, self._settings, self._log_dir)

    async def stop(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)
            self.process = None

    async def kill(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(self.process.kill)
            self.process = None


@pytest.fixture(scope="session")
async def workers(it_settings, sandbox, tmp_path_factory):
    running = Workers(it_settings, tmp_path_factory.mktemp("worker-logs"))
    await running.start()
    yield running
    await running.stop()


@pytest.fixture(scope="session")
async def gateway(it_settings, temporal_client):
    """The gateway on a real port, in this event loop, with its own connection pool (as in production,
    where it is a separate process from the workers)."""
    app = create_app(it_settings, client=temporal_client)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=it_settings.api_port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{it_settings.api_port}"
    server.should_exit = True
    await task


@pytest.fixture
def token(it_settings):
    def _token(sub: str, role: str = "customer", ttl: int = 600) -> str:
        return mint_token(it_settings, sub, role, ttl_s=ttl)

    return _token


@pytest.fixture
async def api(gateway):
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
