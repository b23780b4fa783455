"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Temporal and the database are reachable",
    responses={503: {"model": Health}},
)
async def readyz(request: Request):
    settings = request.app.state.settings
    checks: dict[str, str] = {}

    async def database() -> None:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def temporal() -> None:
        client = await request.app.state.temporal.client()
        await client.service_client.check_health()

    for name, probe in (("database", database), ("temporal", temporal)):
        try:
            await asyncio.wait_for(probe(), timeout=settings.database_timeout_s)
            checks[name] = "ok"
        except Exception as error:
            checks[name] = f"unavailable: {type(error).__name__}"
    ready = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(
        body.model_dump(), status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "2"}
    )
