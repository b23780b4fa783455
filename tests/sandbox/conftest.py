"""Fixtures of the sandbox tests: a throwaway PostgreSQL database and a webhook receiver.

The database is created for the session on the suite's PostgreSQL and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI

from core.config import Settings
from sandbox.app import create_app

# How long tok_slow's first attempt sleeps after recording; long enough that a retry on a loaded
# machine still lands inside it.
SLOW_DELAY_S = 1.5


@pytest.fixture(scope="session")
async def sandbox_database_url(database) -> AsyncIterator[str]:
    """A throwaway database of its own, on the suite's PostgreSQL server (embedded by default)."""
    from tests.harness import create_database, drop_database

    name = f"sandbox_test_{secrets.token_hex(6)}"
    await create_database(database.admin_dsn, name)
    try:
        yield f"postgresql+asyncpg://postgres@{database.host}:{database.port}/{name}"
    finally:
        await drop_database(database.admin_dsn, name)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that records carrier webhooks.

    ``answers[tracking_number]`` lists statuses to answer, one per request, before answering 200.
    """

    url: str = ""
    received: list[Received] = field(default_factory=list)
    answers: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_tracking(self, tracking_number: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if tracking_number.encode() in r.body]

    async def wait_for(self, tracking_number: str, count: int, timeout_s: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.for_tracking(tracking_number)
            if len(got) >= count:
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"{tracking_number}: {len(self.for_tracking(tracking_number))} of {count} webhooks")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status = 200
        with self.lock:
            self.received.append(Received(headers, body))
            for tracking_number, statuses in self.answers.items():
                if tracking_number.encode() in body and statuses:
                    status = statuses.pop(0)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    receiver.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/carrier/events"
    server = uvicorn.Server(uvicorn.Config(receiver, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "webhook receiver did not start"
        time.sleep(0.02)
    try:
        yield receiver
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


@pytest.fixture
def settings(sandbox_database_url: str, webhook_receiver: WebhookReceiver) -> Settings:
    return Settings(
        _env_file=None,
        environment="test",
        database_url=sandbox_database_url,
        sandbox_auto_deliver=False,
        sandbox_slow_delay_s=SLOW_DELAY_S,
        sandbox_delivery_delay_s=0.6,
        sandbox_carrier_webhook_url=webhook_receiver.url,
        sandbox_error_rate=0.0,
        sandbox_timeout_rate=0.0,
        sandbox_latency_ms=0,
    )


@asynccontextmanager
async def _running_sandbox(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings, delivery_poll_interval_s=0.05)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            yield app, client


@pytest.fixture
def running_sandbox() -> Callable[[Settings], AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]:
    """``async with running_sandbox(settings) as (app, client)``: the app with its lifespan
    running, and a client talking to it in process (tests that need their own settings)."""
    return _running_sandbox


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with _running_sandbox(settings) as (_, http):
        yield http
