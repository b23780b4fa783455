"""The periodic sweep of expired Idempotency-Key records, run inside every gateway replica.

Why the gateway (docs/operations.md, "Idempotency keys: retention and sweeping"): the keys are the
gateway's own records (it claims, replays and forgets them; the retention is its setting), every
deployment that accepts orders runs gateways, all replicas are alike, and they already serve
Prometheus metrics. The replicas take turns through a PostgreSQL advisory lock: at each tick the
first to get it sweeps, the others skip.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import Settings
from core.db.idempotency import SweepResult, sweep_expired_keys
from core.metrics import KeySweepMetrics

log = structlog.get_logger(__name__)


class KeySweeper:
    """Sweeps every ``idempotency_sweep_interval_s`` until stopped; failures are logged, counted and
    retried at the next tick (the records wait: nothing depends on their being gone)."""

    def __init__(self, engine: AsyncEngine, settings: Settings, metrics: KeySweepMetrics | None = None) -> None:
        self._engine = engine
        self._settings = settings
        self._metrics = metrics

    @property
    def interval_s(self) -> float:
        return self._settings.idempotency_sweep_interval_s

    async def sweep_once(self, stop: asyncio.Event | None = None) -> SweepResult | None:
        """One sweep of at most ``idempotency_sweep_max_batches`` batches; None when it failed."""
        settings = self._settings
        started = time.perf_counter()
        try:
            result = await sweep_expired_keys(
                self._engine,
                grace=timedelta(seconds=settings.idempotency_sweep_grace_s),
                batch_size=settings.idempotency_sweep_batch_size,
                max_batches=settings.idempotency_sweep_max_batches,
                stop=stop,
            )
        except Exception as error:
            self._count("failed")
            log.warning("idempotency key sweep failed", error=f"{type(error).__name__}: {error}".replace("\n", " "))
            return None
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        if not result.ran:
            self._count("skipped")
            log.debug("idempotency key sweep skipped: another process holds the sweep lock")
            return result
        self._count("swept")
        if self._metrics is not None:
            self._metrics.deleted.inc(result.deleted)
            self._metrics.last_success.set_to_current_time()
        log.info(
            "idempotency keys swept",
            deleted=result.deleted,
            batches=result.batches,
            more=result.more,
            duration_ms=duration_ms,
        )
        return result

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep on every tick until ``stop`` is set. The first tick comes after a random part of
        the interval, so replicas started together do not all ask for the lock at once."""
        delay = random.uniform(0, self.interval_s)
        while not await _stopped_within(stop, delay):
            await self.sweep_once(stop)
            delay = self.interval_s

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.runs.labels(outcome).inc()


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
