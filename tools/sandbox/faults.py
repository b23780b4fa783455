"""Fault injection for chaos runs: latency, 503s and hung requests, changeable at run time.

Faults hit the payment and carrier routes before anything is read or written, so an injected
failure never leaves a trace (no idempotency claim, no money, no shipment). Latency applies to
every provider request; errors and timeouts only to mutating (POST) ones.
"""

from __future__ import annotations

import asyncio
import random

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from core.config import Settings
from sandbox.errors import TransientError


class FaultConfig(BaseModel):
    """Body of ``GET/PUT /sandbox/v1/faults``; omitted fields mean "no such fault"."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    timeout_rate: float = Field(0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(0, ge=0, le=600_000)
    # How long a "timed out" request hangs before answering 504.
    timeout_s: float = Field(30.0, ge=0.0, le=600.0)

    @classmethod
    def from_settings(cls, settings: Settings) -> FaultConfig:
        return cls(
            error_rate=settings.sandbox_error_rate,
            timeout_rate=settings.sandbox_timeout_rate,
            latency_ms=settings.sandbox_latency_ms,
        )


class FaultInjector:
    """Holds the current fault configuration and applies it to one request."""

    def __init__(self, config: FaultConfig, rng: random.Random | None = None):
        self.config = config
        self._rng = rng or random.Random()

    async def apply(self, *, mutating: bool) -> None:
        config = self.config
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        if not mutating:
            return
        roll = self._rng.random()
        if roll < config.error_rate:
            raise TransientError(503, "injected_fault", "The sandbox injected a temporary failure.")
        if roll < config.error_rate + config.timeout_rate:
            await asyncio.sleep(config.timeout_s)
            raise TransientError(504, "injected_timeout", "The sandbox injected a timeout.")


async def inject_faults(request: Request) -> None:
    """Router dependency of the provider routes."""
    injector: FaultInjector = request.app.state.faults
    await injector.apply(mutating=request.method not in {"GET", "HEAD", "OPTIONS"})


router = APIRouter(prefix="/sandbox/v1", tags=["sandbox controls"])


@router.get("/faults")
async def get_faults(request: Request) -> FaultConfig:
    return request.app.state.faults.config


@router.put("/faults")
async def put_faults(config: FaultConfig, request: Request) -> FaultConfig:
    request.app.state.faults.config = config
    return config
