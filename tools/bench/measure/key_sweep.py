"""What one batch of the Idempotency-Key sweeper costs on a big table, per batch size.

    python -m bench.measure.key_sweep --expired 200000 --live 200000

Starts an embedded PostgreSQL in a temporary folder, migrates it, fills ``idempotency_keys`` with
``--expired`` records expired a day ago and ``--live`` unexpired ones (in random order of expiry,
as real traffic leaves them), then sweeps with each batch size and prints the median and p90
wall time of one batch, rows per second, and the plan of one batch (EXPLAIN ANALYZE). Figures
from a shared machine are noisy: compare batch sizes within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from core.config import Settings
from core.db.engine import create_engine
from core.db.idempotency import _DELETE_BATCH, sweep_expired_keys
from core.db.migrate import upgrade_async
from devstack.postgres import EmbeddedPostgres
from devstack.processes import free_port

GRACE = timedelta(seconds=300)

FILL = text(
    """
    INSERT INTO idempotency_keys
        (customer_id, route, key, request_hash, order_id, response_status, response_body, created_at, expires_at)
    SELECT 'cust-' || (i % 50000), 'POST /v1/orders', :prefix || i, repeat('0', 64), gen_random_uuid(), 202,
           '{"id": "x", "status": "received"}'::jsonb, now() + :shift - interval '1 day' + random() * interval '1 hour',
           now() + :shift + random() * interval '1 hour'
    FROM generate_series(1, :rows) AS i
    """
)


async def measure(url: str, expired: int, live: int, batch_sizes: list[int]) -> None:
    engine = create_engine(Settings(database_url=url, database_timeout_s=120), pool_size=2)
    try:
        for size in batch_sizes:
            async with engine.begin() as conn:
                await conn.execute(text("TRUNCATE idempotency_keys"))
                await conn.execute(FILL, {"prefix": "old-", "rows": expired, "shift": timedelta(days=-2)})
                await conn.execute(FILL, {"prefix": "live-", "rows": live, "shift": timedelta(hours=1)})
            async with engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.execute(text("VACUUM ANALYZE idempotency_keys"))
            async with engine.begin() as conn:
                rows = await conn.execute(
                    text(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {_DELETE_BATCH.text}").bindparams(
                        *_DELETE_BATCH._bindparams.values()
                    ),
                    {"grace": GRACE, "batch_size": size},
                )
                plan = list(rows.scalars())
                await conn.rollback()
            times: list[float] = []
            lap = _lap(times)

            started = time.perf_counter()
            result = await sweep_expired_keys(engine, grace=GRACE, batch_size=size, on_batch=lap)
            elapsed = time.perf_counter() - started
            full = sorted(times[:-1]) or times
            print(
                f"batch {size:>5}: {result.deleted} deleted in {result.batches} batches, {elapsed:.2f} s, "
                f"{result.deleted / elapsed:,.0f} rows/s; one batch median {statistics.median(full) * 1000:.1f} ms, "
                f"p90 {full[int(len(full) * 0.9)] * 1000:.1f} ms"
            )
            print("  plan: " + "\n         ".join(plan))
    finally:
        await engine.dispose()


def _lap(times: list[float]):
    """An on_batch callback that appends the wall time since the previous call to ``times``."""
    last = time.perf_counter()

    async def lap(count: int, so_far) -> None:
        nonlocal last
        now = time.perf_counter()
        times.append(now - last)
        last = now

    return lap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expired", type=int, default=200_000)
    parser.add_argument("--live", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, action="append", help="repeatable (default 100, 1000, 5000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="key-sweep-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data", port=free_port(), fast=True)
        server.start()
        try:
            server.ensure_database("orders")
            asyncio.run(upgrade_async(server.url()))
            asyncio.run(measure(server.url(), args.expired, args.live, args.batch_size or [100, 1000, 5000]))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
