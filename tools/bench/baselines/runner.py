"""Run each baseline on a started :class:`bench.stack.BenchStack`: start its child process, wait
until it is ready, drive it in a closed loop for a while, stop it, and return its figures."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from temporalio.client import Client

from bench.baselines.bare_engine import BareInput, drive
from bench.loadgen import ADDRESS, Catalogue
from bench.measure.load import ms, percentile
from bench.measure.resources import cpu_per_unit, own_cpu_seconds, tree_cpu_seconds
from bench.stack import ROOT, BenchStack
from core.config import settings_env
from devstack.processes import ManagedProcess, free_port
from devstack.readiness import ACTIVITY, WORKFLOW, worker_polls


async def bare_engine_baseline(
    stack: BenchStack, client: Client, shape: dict, *, concurrency: int, duration: float
) -> dict:
    """Baseline (a): workflows of ``shape`` (mean counts per order; defaults where empty) on a
    task queue of their own; completed/s, latency and CPU per workflow."""
    assert stack.settings is not None and stack.temporal is not None
    queue = f"bare-{uuid.uuid4().hex[:6]}"
    worker = ManagedProcess(
        "bare-worker",
        [
            sys.executable,
            "-m",
            "bench.baselines.bare_engine",
            "--address",
            stack.temporal.address,
            "--task-queue",
            queue,
        ],
        settings_env(stack.settings),
        stack.logs / "bare-worker.log",
        cwd=ROOT,
        ready_check=worker_polls(stack.settings, {queue: (WORKFLOW, ACTIVITY)}, pid=lambda: worker.pid),
        ready_timeout=30,
    )
    await asyncio.to_thread(worker.start)
    try:
        await asyncio.to_thread(worker.wait_ready)
        bare = BareInput(
            activities=round(shape.get("activities", 5)),
            local_activities=round(shape.get("local_activities", 5)),
            signals=round(shape.get("signals", 3)),
            upserts=round(shape.get("upserts", 0)),
        )

        def cpu() -> dict[str, float]:
            return {
                "temporal": tree_cpu_seconds(stack.temporal.pid),
                "bare worker": tree_cpu_seconds(worker.pid),
                "load generator": own_cpu_seconds(),
            }

        before, began = cpu(), time.monotonic()
        figures = await drive(client, queue, bare, concurrency=concurrency, duration_s=duration)
        usage = cpu_per_unit(before, cpu(), figures["completed"], time.monotonic() - began)
        return {"shape": asdict(bare), "concurrency": concurrency, **figures, "cpu": usage}
    finally:
        await asyncio.to_thread(worker.stop)


async def direct_baseline(stack: BenchStack, catalogue: Catalogue, *, concurrency: int, duration: float) -> dict:
    """Baseline (b): orders of the cheap SKU through the direct handler; completed/s and latency."""
    assert stack.settings is not None
    port = free_port()
    process = ManagedProcess(
        "direct",
        [sys.executable, "-m", "bench.baselines.direct_handler", "--port", str(port)],
        settings_env(stack.settings),
        stack.logs / "direct.log",
        cwd=ROOT,
        ready_url=f"http://127.0.0.1:{port}/docs",
        ready_timeout=30,
    )
    await asyncio.to_thread(process.start)
    latencies: list[float] = []
    statuses: Counter = Counter()
    try:
        await asyncio.to_thread(process.wait_ready)
        end = time.monotonic() + duration
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            async def loop() -> None:
                while time.monotonic() < end:
                    started = time.monotonic()
                    try:
                        response = await http.post(
                            "/direct/orders",
                            json={"sku": catalogue.cheap_sku, "quantity": 1, "shipping_address": ADDRESS},
                        )
                        statuses[response.status_code] += 1
                        if response.status_code == 201:
                            latencies.append(time.monotonic() - started)
                    except httpx.HTTPError:
                        statuses["no answer"] += 1

            began = time.monotonic()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            elapsed = time.monotonic() - began
    finally:
        await asyncio.to_thread(process.stop)
    return {
        "concurrency": concurrency,
        "completed": len(latencies),
        "elapsed_s": round(elapsed, 2),
        "completed_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": {"p50": ms(percentile(latencies, 0.5)), "p99": ms(percentile(latencies, 0.99))},
        "http_statuses": {str(k): v for k, v in statuses.items()},
    }


#: What `orders bench` says, in one line, when baseline (c) cannot run.
DBOS_MISSING = (
    "DBOS is not installed: baseline (c) skipped; install it with "
    "`pip install 'orders-tools[dbos]'` (in a checkout: `.venv/bin/pip install -e './tools[dbos]'`)"
)


def dbos_installed() -> bool:
    return importlib.util.find_spec("dbos") is not None


def dbos_system_database_url(database_url: str) -> str:
    """DBOS's system database: ``<the platform's database>_dbos`` on the same server (DBOS creates
    it on first launch), as the plain ``postgresql://`` URL its driver (psycopg) takes."""
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme="postgresql", path=f"{parts.path}_dbos"))


@asynccontextmanager
async def dbos_app(stack: BenchStack) -> AsyncIterator[tuple[ManagedProcess, str]]:
    """The DBOS application of baseline (c) running on the stack's PostgreSQL, with the sandbox's
    carrier webhook pointed at it; on leaving, it is stopped and the sandbox posts to the gateway
    again. Yields the process and the URL it listens at."""
    assert stack.settings is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess(
        "dbos",
        [
            sys.executable,
            "-m",
            "bench.baselines.dbos_flow",
            "--port",
            str(port),
            "--system-database-url",
            dbos_system_database_url(stack.settings.database_url or ""),
        ],
        settings_env(stack.settings),
        stack.logs / "dbos.log",
        cwd=ROOT,
        ready_url=f"{url}/healthz",
        ready_timeout=60,
    )
    await asyncio.to_thread(process.start)
    try:
        await asyncio.to_thread(process.wait_ready)
        await asyncio.to_thread(stack.restart_sandbox, sandbox_carrier_webhook_url=f"{url}/dbos/carrier/events")
        yield process, url
    finally:
        await asyncio.to_thread(process.stop)
        await asyncio.to_thread(stack.restart_sandbox)


async def dbos_baseline(stack: BenchStack, catalogue: Catalogue, *, concurrency: int, duration: float) -> dict:
    """Baseline (c): orders of the cheap SKU through the same flow on DBOS, each submitted (202) and
    then awaited to its end (``completed`` after the carrier's ``delivered`` webhook); completed/s,
    latency and CPU per completed order (the DBOS application, PostgreSQL, and apart the sandbox and
    the load generator)."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    outcomes: Counter = Counter()
    async with dbos_app(stack) as (process, url):

        def cpu() -> dict[str, float]:
            assert process.pid is not None and stack.sandbox is not None and stack.sandbox.pid is not None
            found = {"dbos app": tree_cpu_seconds(process.pid), "sandbox": tree_cpu_seconds(stack.sandbox.pid)}
            if stack.postgres is not None and stack.postgres.pid:
                found["postgres"] = tree_cpu_seconds(stack.postgres.pid)
            found["load generator"] = own_cpu_seconds()
            return found

        run = uuid.uuid4().hex[:8]
        counter = 0
        end = time.monotonic() + duration
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:

            async def loop() -> None:
                nonlocal counter
                while time.monotonic() < end:
                    counter += 1
                    started = time.monotonic()
                    try:
                        response = await http.post(
                            "/dbos/orders",
                            json={"sku": catalogue.cheap_sku, "quantity": 1, "shipping_address": ADDRESS},
                            headers={"Idempotency-Key": f"bench-{run}-{counter}"},
                        )
                        statuses[response.status_code] += 1
                        if response.status_code != 202:
                            continue
                        order_id = response.json()["id"]
                        ended = await http.get(f"/dbos/orders/{order_id}/result")
                        status = ended.json().get("status") if ended.status_code == 200 else f"HTTP {ended.status_code}"
                        outcomes[status] += 1
                        if status == "completed":
                            latencies.append(time.monotonic() - started)
                    except httpx.HTTPError:
                        statuses["no answer"] += 1

            # The idle rate first (DBOS's background threads and the sandbox poll the databases),
            # taken off the run's count so that what is left is the orders' own transactions.
            database_url = stack.settings.database_url or ""
            # Counters reach pg_stat_database up to a second late: let what ran before (the
            # platform's own run) land first, or its last commits count as idle ones.
            await asyncio.sleep(STATS_FLUSH_S)
            idle_from, idle_began = await database_commits(database_url), time.monotonic()
            await asyncio.sleep(IDLE_SAMPLE_S)
            commits_before, idle_s = await database_commits(database_url), time.monotonic() - idle_began
            idle = {name: (count - idle_from.get(name, 0)) / idle_s for name, count in commits_before.items()}
            before, began = cpu(), time.monotonic()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            elapsed = time.monotonic() - began
            usage = cpu_per_unit(before, cpu(), len(latencies), elapsed)
            await asyncio.sleep(STATS_FLUSH_S)
            counted_s = time.monotonic() - began
            commits = {
                name: count - commits_before.get(name, 0) - idle.get(name, 0.0) * counted_s
                for name, count in (await database_commits(database_url)).items()
            }
    return {
        "concurrency": concurrency,
        "completed": len(latencies),
        "elapsed_s": round(elapsed, 2),
        "completed_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": {"p50": ms(percentile(latencies, 0.5)), "p99": ms(percentile(latencies, 0.99))},
        "http_statuses": {str(k): v for k, v in statuses.items()},
        "outcomes": dict(outcomes),
        "cpu": usage,
        # Transactions PostgreSQL counted in each database meanwhile, less the idle rate, per
        # completed order (the orders database holds the sandbox's tables too).
        "transactions_per_order": {
            # A negative rest means the idle rate was not steady: no figure rather than a wrong one.
            name: round(count / len(latencies), 1) if latencies and count >= 0 else None
            for name, count in commits.items()
        },
        "idle_transactions_per_s": {name: round(rate, 1) for name, rate in idle.items()},
    }


#: PostgreSQL backends report their counters to pg_stat_database at most once a second.
STATS_FLUSH_S = 1.5
#: Seconds of an idle DBOS application (and sandbox) whose transactions give the background rate.
IDLE_SAMPLE_S = 3.0


async def database_commits(database_url: str) -> dict[str, int]:
    """Committed transactions so far in the platform's database and in DBOS's system database."""
    platform = urlsplit(database_url).path.lstrip("/")
    names = {platform: "orders database", f"{platform}_dbos": "DBOS system database"}
    conn = await asyncpg.connect(urlunsplit(urlsplit(database_url)._replace(scheme="postgresql")))
    try:
        rows = await conn.fetch(
            "SELECT datname, xact_commit FROM pg_stat_database WHERE datname = ANY($1::text[])", list(names)
        )
    finally:
        await conn.close()
    return {names[row["datname"]]: row["xact_commit"] for row in rows}
