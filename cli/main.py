"""`orders`: run the platform (dev, api, worker, sandbox), migrate, seed, and mint dev tokens.

Errors that a user can fix are printed as one line (``orders: error: ...``) with exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from core.config import Settings, get_settings


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as error:  # pydantic ValidationError: show it plainly
        raise CliError(f"invalid settings: {error}".replace("\n", " ")) from error


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from core.logging import configure_logging

    settings = _settings()
    _require_database(settings)
    configure_logging(settings, process="api")
    port = args.port or settings.api_port
    uvicorn.run(
        create_app(settings), host=args.host or settings.api_host, port=port, log_config=None, access_log=False,
        timeout_graceful_shutdown=settings.api_shutdown_grace_s,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from core.logging import configure_logging
    from workers.main import run_workers

    settings = _settings()
    _require_database(settings)
    configure_logging(settings, process="worker")
    asyncio.run(run_workers(settings, args.queue or None))
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from core.logging import configure_logging
    from sandbox.server import run

    settings = _settings()
    if not settings.effective_sandbox_database_url:
        raise CliError("ORDERS_DATABASE_URL (or ORDERS_SANDBOX_DATABASE_URL) must be set for the sandbox")
    configure_logging(settings, process="sandbox")
    run(settings)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from core.db.migrate import upgrade

    settings = _settings()
    _require_database(settings)
    upgrade(settings.database_url, args.revision)
    print(f"database migrated to {args.revision}")
    return 0


def cmd_db_seed(args: argparse.Namespace) -> int:
    from core.db.catalog import seed_demo_catalog
    from core.db.engine import create_engine

    settings = _settings()
    _require_database(settings)

    async def seed() -> None:
        engine = create_engine(settings)
        try:
            await seed_demo_catalog(engine)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    print("demo catalogue seeded")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from core.tokens import mint_token

    try:
        print(mint_token(_settings(), args.sub, args.role, ttl_s=args.ttl))
    except ValueError as error:
        raise CliError(str(error)) from error
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from cli.dev import run_dev

    return run_dev(args, _settings())


def _require_database(settings: Settings) -> None:
    if not settings.database_url:
        raise CliError("ORDERS_DATABASE_URL is not set; `orders dev` starts an embedded PostgreSQL and sets it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orders", description="Order processing platform")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="run the whole platform on embedded defaults (Ctrl-C stops it)")
    dev.add_argument("--api-port", type=int, default=8000)
    dev.add_argument("--temporal-port", type=int, default=7233)
    dev.add_argument("--ui-port", type=int, default=8233)
    dev.add_argument("--sandbox-port", type=int, default=8100)
    dev.add_argument("--postgres-port", type=int, default=5433)
    dev.add_argument("--data-dir", type=Path, default=None, help="where data is kept (default .data)")
    dev.add_argument("--no-worker", action="store_true", help="start everything but the worker")
    dev.set_defaults(func=cmd_dev)

    api = sub.add_parser("api", help="run the HTTP gateway")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run the Temporal workers")
    worker.add_argument(
        "--queue",
        action="append",
        choices=["orchestration", "inventory", "payments", "shipping"],
        help="run only these queues (repeatable; default all)",
    )
    worker.set_defaults(func=cmd_worker)

    sandbox = sub.add_parser("sandbox", help="run the sandbox payment gateway and carrier")
    sandbox.set_defaults(func=cmd_sandbox)

    db = sub.add_parser("db", help="database tasks")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="TASK")
    upgrade = db_sub.add_parser("upgrade", help="apply migrations")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(func=cmd_db_upgrade)
    seed = db_sub.add_parser("seed", help="load the demo catalogue (existing products are kept)")
    seed.set_defaults(func=cmd_db_seed)

    token = sub.add_parser("token", help="print a development bearer token")
    token.add_argument("--sub", required=True, help="subject: the customer id, operator or carrier name")
    token.add_argument("--role", choices=["customer", "operator", "carrier"], default="customer")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.set_defaults(func=cmd_token)

    # Further command groups live in their own modules, each with `register(subparsers)`.
    import importlib

    for module in EXTRA_COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


# Modules that add subcommands (e.g. "cli.replay"); each defines register(subparsers).
EXTRA_COMMAND_MODULES: list[str] = [
    "cli.bench",  # orders bench: load, latency, Temporal cost, baselines
    "cli.chaos",  # orders chaos: faults while a bench runs, then the invariants
    "cli.replay",  # orders replay, orders history export
    "cli.retry",  # orders retry ORDER_ID
    "cli.temporal_admin",  # orders temporal setup
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from devstack.processes import stop_on_sigterm

    stop_on_sigterm()  # `timeout orders bench ...` must stop the stack it started, as Ctrl-C does
    try:
        return args.func(args)
    except CliError as error:
        print(f"orders: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m cli.main` runs this file as __main__; go through the importable module so that
    # the CliError raised by command modules (imported from cli.main) is the one caught here.
    from cli.main import main as _main

    sys.exit(_main())
