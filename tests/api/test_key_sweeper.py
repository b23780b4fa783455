"""The gateway's own sweep of expired Idempotency-Key records: it runs on its own when an interval
is set and not at all with 0, takes its turn through the advisory lock, and counts every outcome on
/metrics. (What a sweep deletes and keeps: tests/db/test_key_sweeper.py.)"""

from __future__ import annotations

from datetime import timedelta

import httpx
import structlog.testing
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select

from api.app import create_app
from core.db.engine import create_engine
from core.db.idempotency import SWEEP_LOCK_KEY
from core.key_sweeper import KeySweeper
from core.metrics import GatewayMetrics
from devstack.processes import free_port
from tests.db.test_key_sweeper import add_keys, keys_of, sweep
from tests.harness import random_ref, wait_for


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
    }


async def test_the_gateway_sweeps_on_its_own_and_counts_it(engine, settings):
    customer = random_ref("periodic")
    await add_keys(engine, customer, 5, expires_in=-timedelta(days=1))
    app = create_app(settings.model_copy(update={"idempotency_sweep_interval_s": 0.05}), engine=engine)
    async with LifespanManager(app):
        assert isinstance(app.state.key_sweeper, KeySweeper)
        await wait_for(lambda: _gone(engine, customer), what="the gateway's sweeper to delete the expired keys")

        async def swept():
            return samples(app.state.metrics).get(("orders_idempotency_key_sweeps_total", (("outcome", "swept"),)))

        await wait_for(swept, what="a counted sweep")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            exposed = (await http.get("/metrics")).text
    values = samples(app.state.metrics)
    assert values[("orders_idempotency_keys_swept_total", ())] >= 5
    assert values[("orders_idempotency_key_sweep_last_success_timestamp_seconds", ())] > 0
    for name in ("orders_idempotency_keys_swept_total", 'orders_idempotency_key_sweeps_total{outcome="skipped"}'):
        assert name in exposed


async def _gone(engine, customer) -> bool:
    return not await keys_of(engine, customer)


async def test_interval_zero_runs_no_sweeper(engine, settings):
    customer = random_ref("off")
    await add_keys(engine, customer, 1, expires_in=-timedelta(days=1))
    app = create_app(settings.model_copy(update={"idempotency_sweep_interval_s": 0}), engine=engine)
    async with LifespanManager(app):
        assert app.state.key_sweeper is None
    assert await keys_of(engine, customer) != set()
    await sweep(engine)  # leave nothing expired behind for the next test


async def test_a_sweep_that_finds_the_lock_taken_is_counted_as_skipped(engine, settings):
    metrics = GatewayMetrics()
    sweeper = KeySweeper(engine, settings, metrics.key_sweeps)
    async with engine.connect() as holder:
        assert await holder.scalar(select(func.pg_try_advisory_lock(SWEEP_LOCK_KEY)))
        try:
            result = await sweeper.sweep_once()
        finally:
            await holder.scalar(select(func.pg_advisory_unlock(SWEEP_LOCK_KEY)))
            await holder.commit()
    assert result is not None and not result.ran
    values = samples(metrics)
    assert values[("orders_idempotency_key_sweeps_total", (("outcome", "skipped"),))] == 1
    assert values[("orders_idempotency_key_sweeps_total", (("outcome", "swept"),))] == 0


async def test_a_sweep_without_the_database_is_logged_and_counted_as_failed(settings):
    metrics = GatewayMetrics()
    dead = create_engine(settings, url=f"postgresql+asyncpg://orders@127.0.0.1:{free_port()}/orders")
    try:
        result = await KeySweeper(dead, settings, metrics.key_sweeps).sweep_once()
    finally:
        await dead.dispose()
    assert result is None
    assert samples(metrics)[("orders_idempotency_key_sweeps_total", (("outcome", "failed"),))] == 1


async def test_a_sweep_is_logged_with_how_many_and_how_long(engine, settings):
    customer = random_ref("logged")
    await add_keys(engine, customer, 3, expires_in=-timedelta(days=1))
    with structlog.testing.capture_logs() as logs:
        result = await KeySweeper(engine, settings).sweep_once()
    assert result is not None and result.ran and await keys_of(engine, customer) == set()
    [entry] = [entry for entry in logs if entry["event"] == "idempotency keys swept"]
    assert entry["log_level"] == "info" and entry["deleted"] == result.deleted >= 3
    assert entry["batches"] == result.batches and entry["duration_ms"] >= 0 and entry["more"] is False
