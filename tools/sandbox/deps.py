"""Dependencies of the sandbox routes: what the lifespan put on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import Settings
from sandbox.idempotency import IdempotencyStore


def _engine(request: Request) -> AsyncEngine:
    return request.app.state.engine


def _store(request: Request) -> IdempotencyStore:
    return request.app.state.idempotency


def _settings(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[AsyncEngine, Depends(_engine)]
StoreDep = Annotated[IdempotencyStore, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]


def _idempotency_key(idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> str | None:
    # Optional here so that a missing key is our 400, not a validation 422.
    return idempotency_key


IdempotencyKey = Annotated[str | None, Depends(_idempotency_key)]
