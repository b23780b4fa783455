"""The gateway's HTTP server: uvicorn, releasing long-polls as soon as a shutdown begins.

uvicorn lets open requests finish (up to ``timeout_graceful_shutdown``) before the app's lifespan
ends; a long-poll parked for its wait would hold the shutdown that long, or be cut off. Releasing
the waiters first answers each with the order as it is, at once.

Every waiting request holds a socket: :func:`raise_open_files_limit` lifts the process's soft
open-files limit towards its hard limit so that ``ORDERS_API_MAX_WAITERS`` fit (many systems start
processes at a soft limit of 1024, where a busy gateway would fail to accept with EMFILE)."""

from __future__ import annotations

import resource
import socket

import structlog
import uvicorn
from fastapi import FastAPI

from api.app import release_waiters

log = structlog.get_logger(__name__)

# Sockets and files besides the waiters: in-flight requests, database and Temporal connections, logs.
OTHER_OPEN_FILES = 1024


def raise_open_files_limit(wanted: int, *, what: str = "ORDERS_API_MAX_WAITERS") -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` open files, never above the hard limit and never
    lower than it is (a warning names ``what`` to lower when the hard limit is too low); returns the
    (before, after) soft limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft, soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    else:
        target = soft
    if target < wanted:
        log.warning(
            f"open-files limit below what is needed; lower {what} or raise the hard limit",
            soft_limit=target,
            hard_limit=hard,
            needed=wanted,
        )
    return soft, target


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._gateway = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        release_waiters(self._gateway)
        await super().shutdown(sockets)
