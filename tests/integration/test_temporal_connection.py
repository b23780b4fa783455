"""The gateway's Temporal connection: made on first use, 503 while Temporal cannot be reached, kept
once made. Temporal "comes up" by a TCP forwarder to the dev server starting on the gateway's port."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
from asgi_lifespan import LifespanManager

from api.app import create_app
from core.domain import order_workflow_id
from devstack.processes import free_port
from tests.harness import random_ref
from tests.integration.conftest import auth
from tests.integration.test_order_api import order_body
from tests.support import new_sku


class Forwarder:
    """Forwards every TCP connection on ``port`` to ``target`` and counts them."""

    def __init__(self, port: int, target: str) -> None:
        self.port = port
        self._host, self._port = target.rsplit(":", 1)
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection(self._host, int(self._port))
        self._writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)


async def test_temporal_down_at_startup_is_503_then_one_connection_is_made_and_kept(
    it_settings, temporal_server, temporal_client, engine, token
):
    port = free_port()
    # Its workflows go to a task queue nobody polls: a 202 needs only the started workflow.
    settings = it_settings.model_copy(
        update={"temporal_address": f"127.0.0.1:{port}", "task_queue": f"nobody-{uuid.uuid4().hex[:6]}"}
    )
    sku = await new_sku(engine)
    bearer = auth(token(random_ref("conn")))
    app = create_app(settings, engine=engine)
    forwarder = Forwarder(port, temporal_server.address)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http,
    ):
        started = time.monotonic()
        down = await asyncio.gather(
            *(
                http.post("/v1/orders", json=order_body(sku), headers={**bearer, "Idempotency-Key": f"k-{n}"})
                for n in range(5)
            )
        )
        assert {r.status_code for r in down} == {503} and time.monotonic() - started < 5
        assert all(r.headers["content-type"] == "application/problem+json" for r in down)
        readiness = await http.get("/readyz")
        assert readiness.status_code == 503 and readiness.json()["checks"]["temporal"].startswith("unavailable")

        # Temporal comes up: the failed attempts were not kept, the next call connects.
        await forwarder.start()
        up: list[httpx.Response] = []
        try:
            up = await asyncio.gather(
                *(
                    http.post("/v1/orders", json=order_body(sku), headers={**bearer, "Idempotency-Key": f"k-{n}"})
                    for n in range(5)
                )
            )
            assert [r.status_code for r in up] == [202] * 5, [r.text for r in up]
            assert (await http.get("/readyz")).status_code == 200
            connection = app.state.temporal
            assert await connection.client() is await connection.client()
            # Concurrent first calls shared one attempt: one client, one connection.
            assert forwarder.connections == 1
        finally:
            await forwarder.stop()
            for response in up:  # no worker will ever finish them
                await temporal_client.get_workflow_handle(order_workflow_id(response.json()["id"])).terminate("done")
