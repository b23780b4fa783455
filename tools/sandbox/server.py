"""Run the sandbox providers with uvicorn (the CLI calls :func:`run`)."""

from __future__ import annotations

import uvicorn

from core.config import Settings
from sandbox.app import create_app


def run(settings: Settings) -> None:
    """Serve on ``settings.sandbox_host:settings.sandbox_port`` until SIGINT/SIGTERM."""
    # log_config=None: keep the logging pipeline the caller configured.
    uvicorn.run(
        create_app(settings),
        host=settings.sandbox_host,
        port=settings.sandbox_port,
        log_config=None,
        lifespan="on",
    )
