"""`orders keys sweep` against the real PostgreSQL: the dry-run count, a sweep in batches with its
progress and summary, and one-line errors (a sweep already running, bad options, no database)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import func, select

from core.config import settings_env
from core.db.idempotency import SWEEP_LOCK_KEY
from devstack.processes import free_port
from tests.db.test_key_sweeper import add_keys, keys_of
from tests.harness import ROOT, random_ref


async def orders(settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**settings_env(settings), "PATH": "/usr/bin:/bin", **env}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli.main", "keys", "sweep", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("orders: error: "), result.stderr
    return result.stderr


async def test_dry_run_counts_and_deletes_nothing(engine, settings):
    customer = random_ref("dry")
    expired = await add_keys(engine, customer, 4, expires_in=-timedelta(days=1))
    await add_keys(engine, customer, 1, expires_in=timedelta(hours=1), prefix="live")

    result = await orders(settings, "--dry-run")

    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count >= len(expired)
    assert "would be deleted (dry run: nothing deleted)" in result.stdout
    assert len(await keys_of(engine, customer)) == 5


async def test_sweep_goes_in_batches_with_progress_and_a_summary(engine, settings):
    customer = random_ref("cli")
    await add_keys(engine, customer, 25, expires_in=-timedelta(days=1))
    live = await add_keys(engine, customer, 1, expires_in=timedelta(hours=1), prefix="live")

    result = await orders(settings, "--batch-size", "2")

    assert result.returncode == 0, result.stderr
    assert await keys_of(engine, customer) == set(live)
    # 25 records in batches of 2 take at least 13 batches: one progress line at the 10th.
    assert result.stderr.splitlines()[0] == "... 20 deleted in 10 batches"
    deleted, batches = int(result.stdout.split()[0]), int(result.stdout.split(" in ")[1].split()[0])
    assert deleted >= 25 and batches >= 13 and "batches of at most 2" in result.stdout
    assert "more may remain" not in result.stdout


async def test_max_batches_stops_early_and_says_so(engine, settings):
    customer = random_ref("cli-max")
    await add_keys(engine, customer, 5, expires_in=-timedelta(days=1))

    result = await orders(settings, "--batch-size", "2", "--max-batches", "1")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("2 Idempotency-Key records") and "more may remain: run it again" in result.stdout
    await orders(settings)  # leave nothing expired behind


async def test_a_sweep_already_running_is_a_one_line_error_and_nothing_is_deleted(engine, settings):
    customer = random_ref("cli-busy")
    await add_keys(engine, customer, 2, expires_in=-timedelta(days=1))
    async with engine.connect() as holder:
        assert await holder.scalar(select(func.pg_try_advisory_lock(SWEEP_LOCK_KEY)))
        try:
            result = await orders(settings)
        finally:
            await holder.scalar(select(func.pg_advisory_unlock(SWEEP_LOCK_KEY)))
            await holder.commit()
    assert "another sweep is running" in one_line_error(result)
    assert len(await keys_of(engine, customer)) == 2
    assert (await orders(settings)).returncode == 0
    assert await keys_of(engine, customer) == set()


async def test_bad_options_and_no_database_are_one_line_errors(settings):
    assert "--batch-size must be at least 1" in one_line_error(await orders(settings, "--batch-size", "0"))
    assert "--max-batches must be at least 1" in one_line_error(await orders(settings, "--max-batches", "0"))
    unreachable = f"postgresql+asyncpg://orders@127.0.0.1:{free_port()}/orders"
    assert "database error" in one_line_error(await orders(settings, ORDERS_DATABASE_URL=unreachable))
    missing = await orders(settings, "--dry-run", ORDERS_DATABASE_URL="", ORDERS_DATA_DIR="/nonexistent")
    assert "ORDERS_DATABASE_URL is not set" in one_line_error(missing)
