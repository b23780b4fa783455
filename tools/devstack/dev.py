"""`orders dev`: the whole platform on embedded defaults, in the foreground; Ctrl-C stops all of it.

Data (PostgreSQL cluster, Temporal's SQLite file, logs) lives in the data folder, so running it
again resumes with the same orders. ``ORDERS_DATABASE_URL`` / ``ORDERS_TEMPORAL_ADDRESS`` in the
environment switch to external servers instead of the embedded ones.

While it runs, the settings it gives its processes are in ``<data folder>/stack.env``
(:data:`cli.main.STACK_FILE`), so that ``orders worker`` & co. started in another terminal join it.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from core.config import Settings
from core.search_attributes import SEARCH_ATTRIBUTES


def _say(message: str) -> None:
    print(f"orders dev: {message}", flush=True)


def publish_stack(path: Path, values: Mapping[str, str]) -> IO[str]:
    """Write the stack's settings to ``path`` (atomically: readers never see half a file) and hold
    an exclusive lock on it, which tells readers the stack runs; close the returned file (after
    :func:`withdraw_stack`) when the stack stops."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    handle = os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(
            f"# The settings of the `orders dev` (pid {os.getpid()}) that runs on this data folder, for\n"
            "# the `orders` commands started next to it; removed when it stops. In a shell: set -a; . this-file\n"
        )
        for key, value in sorted(values.items()):
            handle.write(f"{key}={shlex.quote(value)}\n")
        handle.flush()
        os.replace(partial, path)
    except BaseException:
        handle.close()
        partial.unlink(missing_ok=True)
        raise
    return handle


def withdraw_stack(path: Path, handle: IO[str]) -> None:
    """Remove the file :func:`publish_stack` wrote (unless another stack replaced it), then unlock."""
    try:
        if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            path.unlink()
    except FileNotFoundError:
        pass
    handle.close()


def _orders_command() -> str:
    """How to call `orders` from here (``.venv/bin/orders`` in a checkout)."""
    orders = Path(sys.executable).parent / "orders"
    try:
        return str(orders.relative_to(Path.cwd()))
    except ValueError:
        return str(orders)


def run_dev(args: argparse.Namespace, settings: Settings) -> int:
    from cli.main import STACK_FILE, CliError, read_stack_file
    from devstack.postgres import LOGICAL_REPLICATION, EmbeddedPostgres
    from devstack.processes import ManagedProcess, Supervisor, port_is_open
    from devstack.temporal import TemporalDevServer
    from devstack.watchdog import ensure_watchdog

    data_dir = (args.data_dir or settings.data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    other = read_stack_file(data_dir)
    if other is not None and other.running:
        raise CliError(
            f"an `orders dev` (pid {other.owner_pid}) already runs on {data_dir}: "
            "join it (`orders worker`, `orders api`...) or give this one another --data-dir"
        )
    ensure_watchdog()  # stops what an `orders dev` killed outright left running, before the port checks
    for name, port in (("api", args.api_port), ("sandbox", args.sandbox_port)):
        if port_is_open("127.0.0.1", port):
            raise CliError(
                f"port {port} for the {name} is already in use (is another `orders dev` running? use --{name}-port)"
            )

    postgres = temporal = published = None
    started = time.monotonic()
    try:
        database_url = os.environ.get("ORDERS_DATABASE_URL")
        if database_url:
            _say("using PostgreSQL from ORDERS_DATABASE_URL")
        else:
            _say(f"starting embedded PostgreSQL on 127.0.0.1:{args.postgres_port} (data in {data_dir / 'postgres'})")
            postgres = EmbeddedPostgres(
                data_dir / "postgres",
                port=args.postgres_port,
                log_path=logs / "postgres.log",
                settings=LOGICAL_REPLICATION if args.logical_replication else None,
            )
            postgres.start()
            postgres.ensure_database("orders")
            database_url = postgres.url("orders")

        _say("applying migrations and seeding the demo catalogue")
        from core.db.catalog import seed_demo_catalog
        from core.db.engine import create_engine
        from core.db.migrate import upgrade

        upgrade(database_url)

        async def seed() -> None:
            engine = create_engine(settings, url=database_url, pool_size=1)
            try:
                await seed_demo_catalog(engine)
            finally:
                await engine.dispose()

        asyncio.run(seed())

        temporal_address = os.environ.get("ORDERS_TEMPORAL_ADDRESS")
        ui_url = None
        if temporal_address:
            _say(f"using Temporal at {temporal_address}")
        else:
            _say(
                f"starting Temporal dev server on 127.0.0.1:{args.temporal_port} (history in {data_dir / 'temporal.db'})"
            )
            temporal = TemporalDevServer(
                data_dir / "temporal.db",
                port=args.temporal_port,
                ui_port=args.ui_port,
                namespace=settings.temporal_namespace,
                search_attributes=SEARCH_ATTRIBUTES,
                # The UI (in the browser) decrypts payloads through the gateway's codec endpoint.
                ui_codec_endpoint=f"http://127.0.0.1:{args.api_port}/codec",
                log_dir=logs,
            )
            temporal.start()
            temporal_address = temporal.address
            ui_url = temporal.ui_url

        api_url = f"http://127.0.0.1:{args.api_port}"
        sandbox_url = f"http://127.0.0.1:{args.sandbox_port}"
        env = {
            "ORDERS_DATABASE_URL": database_url,
            "ORDERS_TEMPORAL_ADDRESS": temporal_address,
            "ORDERS_API_PORT": str(args.api_port),
            "ORDERS_PUBLIC_BASE_URL": api_url,
            "ORDERS_SANDBOX_PORT": str(args.sandbox_port),
            "ORDERS_PAYMENT_BASE_URL": f"{sandbox_url}/payments",
            "ORDERS_CARRIER_BASE_URL": f"{sandbox_url}/carrier",
            "ORDERS_SANDBOX_CARRIER_WEBHOOK_URL": f"{api_url}/v1/carrier/events",
            "ORDERS_CODEC_CORS_ORIGINS": json.dumps(
                [f"http://127.0.0.1:{args.ui_port}", f"http://localhost:{args.ui_port}"]
            ),
        }
        # What a second worker (or API...) started by hand needs: the same as ours, ORDERS_* that
        # this command was given included.
        stack_values = {
            **{key: value for key, value in os.environ.items() if key.startswith("ORDERS_")},
            **env,
            "ORDERS_DATA_DIR": str(data_dir),
        }
        env["PYTHONUNBUFFERED"] = "1"
        if sys.stdout.isatty():
            env.setdefault("ORDERS_LOG_JSON", "false")  # children write to a pipe; keep the console readable
        orders = [sys.executable, "-m", "cli.main"]
        processes = [
            ManagedProcess(
                "sandbox",
                [*orders, "sandbox"],
                env,
                logs / "sandbox.log",
                output="tee",
                ready_url=f"{sandbox_url}/healthz",
            ),
        ]
        if not args.no_worker:
            processes.append(ManagedProcess("worker", [*orders, "worker"], env, logs / "worker.log", output="tee"))
        processes.append(
            ManagedProcess("api", [*orders, "api"], env, logs / "api.log", output="tee", ready_url=f"{api_url}/healthz")
        )

        supervisor = Supervisor(processes, log=_say)

        def banner() -> None:
            nonlocal published
            published = publish_stack(data_dir / STACK_FILE, stack_values)
            # --data-dir is an option of the component's own command, so it comes after it.
            join = f"{_orders_command()} worker" + (
                "" if data_dir == Path(".data").absolute() else f" --data-dir {data_dir}"
            )
            _say(f"ready in {time.monotonic() - started:.1f}s")
            print(
                "\n"
                f"  API            {api_url}  (docs: {api_url}/docs)\n"
                f"  Temporal UI    {ui_url or 'external server'}\n"
                f"  Temporal       {temporal_address}\n"
                f"  Sandbox        {sandbox_url}/docs\n"
                f"  PostgreSQL     {database_url}\n"
                f"  Logs           {logs}\n"
                f"  Settings       {data_dir / STACK_FILE}\n"
                "\n"
                f"  Another worker:  {join}   (in another terminal; it finds this stack)\n"
                "  Try it:  TOKEN=$(.venv/bin/orders token --sub alice)\n"
                f'           curl -s -H "Authorization: Bearer $TOKEN" {api_url}/v1/products\n'
                "\n  Ctrl-C stops everything.\n",
                flush=True,
            )

        return supervisor.run(install_signal_handlers=True, on_ready=banner)
    finally:
        if published is not None:
            withdraw_stack(data_dir / STACK_FILE, published)
        if temporal is not None:
            _say("stopping Temporal")
            temporal.stop()
        if postgres is not None:
            _say("stopping PostgreSQL")
            postgres.stop()


def cmd_dev(args: argparse.Namespace) -> int:
    from cli.main import _settings

    return run_dev(args, _settings(discover=False))


def register(subparsers: argparse._SubParsersAction) -> None:
    dev = subparsers.add_parser("dev", help="run the whole platform on embedded defaults (Ctrl-C stops it)")
    dev.add_argument("--api-port", type=int, default=8000)
    dev.add_argument("--temporal-port", type=int, default=7233)
    dev.add_argument("--ui-port", type=int, default=8233)
    dev.add_argument("--sandbox-port", type=int, default=8100)
    dev.add_argument("--postgres-port", type=int, default=5433)
    dev.add_argument("--data-dir", type=Path, default=None, help="where data is kept (default .data)")
    dev.add_argument("--no-worker", action="store_true", help="start everything but the worker")
    dev.add_argument(
        "--logical-replication",
        action="store_true",
        help="run PostgreSQL with wal_level=logical (a region that `orders regions link` can replicate; docs/regions.md)",
    )
    dev.set_defaults(func=cmd_dev)
