"""Pure-gateway tests: the app in process (httpx.ASGITransport), real PostgreSQL, and a Temporal
address where nothing listens — these rules must hold before any workflow is involved.
Rules that need a running order use the integration fixtures (tests/integration/test_gateway_*)."""

from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager

from api.app import create_app
from core.config import Settings
from core.tokens import mint_token
from devstack.processes import free_port

PEER = ("203.0.113.7", 40000)


@pytest.fixture(scope="session")
def unreachable_temporal() -> str:
    """A Temporal address whose connections are refused."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def gateway_client(settings, engine, unreachable_temporal):
    """``async with gateway_client(**setting_overrides) as http:`` — a fresh app per use; without
    ``client=`` (a connected Temporal client) the app's Temporal is unreachable."""

    @asynccontextmanager
    async def make(*, client=None, peer=PEER, app_hook=None, db_engine=None, **overrides):
        app_settings = settings.model_copy(update={"temporal_address": unreachable_temporal, **overrides})
        app = create_app(app_settings, engine=db_engine or engine, client=client)
        if app_hook is not None:
            app_hook(app)
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app, client=peer)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as http:
                http.app = app
                yield http

    return make


@pytest.fixture
def bearer(settings):
    def _bearer(sub: str | None = None, role: str = "customer", ttl: int = 600) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {mint_token(settings, sub or f'cust-{uuid.uuid4().hex[:8]}', role, ttl_s=ttl)}"
        }

    return _bearer


def hs_token(
    settings: Settings, secret: str | None = None, algorithm: str = "HS256", headers: dict | None = None, **claims
) -> str:
    now = int(time.time())
    body = {
        "sub": "alice",
        "role": "customer",
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret or settings.jwt_secret, algorithm=algorithm, headers=headers)


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and "type" in body and "detail" in body
    assert body["request_id"] == response.headers["x-request-id"]
    return body
