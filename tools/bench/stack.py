"""A throw-away platform for `orders bench` and `orders chaos`: every server a child process in a
temporary data folder, with handles to crash and restart each of them.

The same pieces as `orders dev` (devstack's EmbeddedPostgres, TemporalDevServer and ManagedProcess),
but on free ports, with the knobs a measurement needs (worker count, dynamic config, settings
overrides), and PostgreSQL running with ``synchronous_commit=on`` so a crash loses no commit.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil

from bench.measure.resources import own_cpu_seconds, process_tree, tree_cpu_seconds, tree_rss_mb
from core.config import Settings, settings_env
from core.db.migrate import upgrade
from core.search_attributes import SEARCH_ATTRIBUTES
from devstack.postgres import EmbeddedPostgres
from devstack.processes import ManagedProcess, free_port
from devstack.readiness import platform_task_queues, worker_polls
from devstack.temporal import TemporalDevServer

ROOT = Path(__file__).resolve().parents[2]

# Settings every bench stack uses unless overridden: rate limits far above what 2 cores can drive
# (the bench measures the platform, not the limiter), a short carrier delivery delay so orders end
# within seconds, and machine-readable logs.
BENCH_DEFAULTS: dict[str, Any] = {
    "environment": "test",
    "rate_limit_submit": "1000000/minute",
    "rate_limit_read": "1000000/minute",
    "rate_limit_webhook": "1000000/minute",
    "sandbox_delivery_delay_s": 0.5,
    "log_json": True,
    "log_level": "INFO",  # the kept logs (--keep-data) say what each server did
}


@dataclass
class StackOptions:
    workers: int = 1
    settings: Mapping[str, Any] = field(default_factory=dict)  # Settings overrides
    temporal_dynamic_config: Mapping[str, Any] = field(default_factory=dict)
    data_dir: Path | None = None  # default: a fresh temporary folder, removed afterwards
    # An existing PostgreSQL server (e.g. postgresql://postgres@127.0.0.1:5432) instead of the
    # embedded one: a fresh database is created on it for this stack and left there afterwards.
    database_server_url: str | None = None
    keep_data: bool = False
    # The address every server listens on and is reached at: another one than loopback serves a
    # cell of `orders regions drill` inside its network namespace, reached from the others.
    host: str = "127.0.0.1"
    postgres_settings: Mapping[str, Any] = field(default_factory=dict)  # e.g. wal_level for replication
    # Networks (CIDR) whose clients PostgreSQL lets in without a password (a peer region subscribing).
    postgres_trusted_networks: Sequence[str] = ()
    # Fixed ports by server name (postgres, temporal, sandbox, api) instead of free ones: a cell in
    # a network namespace of its own, whose peers must know its addresses before it starts.
    ports: Mapping[str, int] = field(default_factory=dict)


class BenchStack:
    """PostgreSQL, Temporal, sandbox, worker(s) and the API as child processes.

    Use as a context manager (synchronous: call it from a thread when inside an event loop).
    """

    def __init__(self, options: StackOptions | None = None, log: Callable[[str], None] | None = None) -> None:
        self.options = options or StackOptions()
        self._log = log or (lambda message: None)
        self._own_dir = self.options.data_dir is None
        self.data_dir = (self.options.data_dir or Path(tempfile.mkdtemp(prefix="orders-bench-"))).absolute()
        self.logs = self.data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.host = self.options.host
        self.ports = {
            name: self.options.ports.get(name) or free_port(self.host)
            for name in ("postgres", "temporal", "sandbox", "api")
        }
        self.postgres = None
        self.temporal = None
        self.sandbox = None
        self.api = None
        self.workers: list = []
        self._worker_serial = 0
        self.settings: Settings | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> BenchStack:
        started = time.monotonic()
        if self.options.database_server_url:
            database_url = _fresh_database(self.options.database_server_url)
            self._log(f"using database {database_url}")
        else:
            self.postgres = EmbeddedPostgres(
                self.data_dir / "postgres",
                port=self.ports["postgres"],
                host=self.host,
                log_path=self.logs / "postgres.log",
                # Durable commits: a SIGKILLed server must not lose an accepted order. More connections
                # than the default 100: gateway, sandbox and each worker hold a pool of 20.
                settings={"synchronous_commit": "on", "max_connections": 200, **self.options.postgres_settings},
                trusted_networks=list(self.options.postgres_trusted_networks),
            )
            self.postgres.start()
            self.postgres.ensure_database("orders")
            database_url = self.postgres.url("orders")
        upgrade(database_url)
        self.temporal = TemporalDevServer(
            self.data_dir / "temporal.db",
            port=self.ports["temporal"],
            ui_port=None,
            # The dev server's own services reach each other on 127.0.0.1: away from loopback it
            # listens on every address of its (network namespace's) interfaces.
            ip=self.host if self.host == "127.0.0.1" else "0.0.0.0",
            search_attributes=SEARCH_ATTRIBUTES,
            log_dir=self.logs,
            dynamic_config=dict(self.options.temporal_dynamic_config),
        )
        self.temporal.start()
        api_url, sandbox_url = self.api_url, self.sandbox_url
        values = {
            **BENCH_DEFAULTS,
            "database_url": database_url,
            "temporal_address": f"{self.host}:{self.ports['temporal']}",
            "api_host": self.host,
            "api_port": self.ports["api"],
            "public_base_url": api_url,
            "sandbox_host": self.host,
            "sandbox_port": self.ports["sandbox"],
            "payment_base_url": f"{sandbox_url}/payments",
            "carrier_base_url": f"{sandbox_url}/carrier",
            "sandbox_carrier_webhook_url": f"{api_url}/v1/carrier/events",
            "data_dir": str(self.data_dir),
            **self.options.settings,
        }
        self.settings = Settings(**values)
        self.sandbox = self._process("sandbox", "sandbox", ready_url=f"{sandbox_url}/healthz")
        self.sandbox.start()
        self.sandbox.wait_ready()
        for _ in range(self.options.workers):
            self.start_worker()
        self.api = self._process("api", "api", ready_url=f"{api_url}/healthz")
        self.api.start()
        self.api.wait_ready()
        self._log(f"stack ready in {time.monotonic() - started:.1f}s (data in {self.data_dir})")
        return self

    def stop(self) -> None:
        for process in [self.api, *self.workers, self.sandbox]:
            if process is not None:
                process.stop(grace=10)
        self.workers = []
        if self.temporal is not None:
            self.temporal.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self._own_dir and not self.options.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> BenchStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- handles for chaos ------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.ports['api']}"

    @property
    def sandbox_url(self) -> str:
        return f"http://{self.host}:{self.ports['sandbox']}"

    def start_worker(self):
        """Start one more `orders worker`; it is ready once Temporal has seen it poll every queue."""
        assert self.settings is not None
        self._worker_serial += 1
        process = self._process(
            f"worker-{self._worker_serial}",
            "worker",
            ready_check=worker_polls(
                self.settings, platform_task_queues(self.settings.task_queue), pid=lambda: process.pid
            ),
        )
        process.start()
        process.wait_ready()
        self.workers.append(process)
        return process

    def kill_worker(self, index: int = 0) -> int | None:
        """SIGKILL one worker (no graceful shutdown: in-flight activities are lost mid-way)."""
        process = self.workers.pop(index)
        return process.kill()

    def restart_temporal(self, down_s: float = 0.0, *, kill: bool = False) -> None:
        """Stop (or SIGKILL) the Temporal server and start it again on the same SQLite file."""
        assert self.temporal is not None
        self.temporal.kill() if kill else self.temporal.stop()
        time.sleep(down_s)
        self.temporal.start()

    def restart_postgres(self, down_s: float = 0.0, *, mode: str = "immediate") -> None:
        """Stop PostgreSQL (``immediate`` = crash-like, or ``kill`` = SIGKILL) and start it again."""
        if self.postgres is None:
            raise RuntimeError("PostgreSQL is an outside server here (--database-url): not restarting it")
        self.postgres.kill() if mode == "kill" else self.postgres.stop(mode=mode)
        time.sleep(down_s)
        self.postgres.start()

    def restart_sandbox(self, **overrides: Any) -> None:
        """Stop the sandbox and start it again on the same port and database, with these settings
        changed (none: the stack's own), e.g. the carrier's webhook URL pointed at a baseline."""
        assert self.settings is not None and self.sandbox is not None
        self.sandbox.stop(grace=10)
        settings = self.settings.model_copy(update=overrides)
        self.sandbox = ManagedProcess(
            "sandbox",
            [sys.executable, "-m", "cli.main", "sandbox"],
            settings_env(settings),
            self.logs / "sandbox.log",
            cwd=ROOT,
            ready_timeout=60,
            ready_url=f"{self.sandbox_url}/healthz",
        )
        self.sandbox.start()
        self.sandbox.wait_ready()

    def set_faults(self, **faults: Any) -> dict:
        response = httpx.put(f"{self.sandbox_url}/sandbox/v1/faults", json=faults, timeout=10)
        response.raise_for_status()
        return response.json()

    def server_pids(self) -> dict[str, int]:
        """The process id of each running server, by name (api, sandbox, worker-N, temporal, postgres)."""
        named = {
            "api": self.api,
            "sandbox": self.sandbox,
            **{p.name: p for p in self.workers},
            "temporal": self.temporal,
            "postgres": self.postgres,
        }
        return {name: server.pid for name, server in named.items() if server is not None and server.pid}

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each server (MB), including its children (the Temporal CLI's server)."""
        return {name: tree_rss_mb(pid) for name, pid in self.server_pids().items()}

    def set_priority(self, niceness: int) -> None:
        """Run every server of the stack (with its children) at this niceness; 0 is normal. Only
        raising it needs no privileges, so going back to 0 may be refused and is then left be."""
        for pid in self.server_pids().values():
            for process in process_tree(pid):
                try:
                    process.nice(niceness)
                except psutil.Error:
                    pass

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each server, with its children, and by this
        process (the load generator; its children, the servers, are not counted in it)."""
        found = {name: tree_cpu_seconds(pid) for name, pid in self.server_pids().items()}
        found["load generator"] = own_cpu_seconds()
        return found

    # --- internals ------------------------------------------------------------------------------

    def _process(self, name: str, command: str, **ready):
        assert self.settings is not None
        return ManagedProcess(
            name,
            [sys.executable, "-m", "cli.main", command],
            settings_env(self.settings),
            self.logs / f"{name}.log",
            cwd=ROOT,
            ready_timeout=60,
            **ready,
        )


def _fresh_database(server_url: str) -> str:
    """Create ``orders_bench_<random>`` on the server at ``server_url``; its SQLAlchemy URL."""
    parts = urlsplit(server_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    name = f"orders_bench_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", path=f"/{name}"))
