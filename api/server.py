"""The gateway's HTTP server: uvicorn, releasing long-polls as soon as a shutdown begins.

uvicorn lets open requests finish (up to ``timeout_graceful_shutdown``) before the app's lifespan
ends; a long-poll parked for its wait would hold the shutdown that long, or be cut off. Releasing
the waiters first answers each with the order as it is, at once.

Every waiting request holds a socket: ``orders api`` raises its open-files limit to fit
``ORDERS_API_MAX_WAITERS`` first (core/open_files.py)."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from api.app import release_waiters


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._gateway = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        release_waiters(self._gateway)
        await super().shutdown(sockets)
