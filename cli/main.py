"""`orders`: run the platform (dev, api, worker, sandbox), migrate, seed, and mint dev tokens.

Errors that a user can fix are printed as one line (``orders: error: ...``) with exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from importlib.metadata import entry_points

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
        create_app(settings),
        host=args.host or settings.api_host,
        port=port,
        log_config=None,
        access_log=False,
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


def _require_database(settings: Settings) -> None:
    if not settings.database_url:
        raise CliError("ORDERS_DATABASE_URL is not set; `orders dev` starts an embedded PostgreSQL and sets it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orders", description="Order processing platform")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    for module in PRODUCT_COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    _register_tool_commands(sub)
    return parser


# Operator commands that ship with the product; each module defines register(subparsers).
PRODUCT_COMMAND_MODULES: list[str] = [
    "cli.replay",  # orders replay, orders history export
    "cli.retry",  # orders retry ORDER_ID
    "cli.temporal_admin",  # orders temporal setup
]

#: Entry-point group through which the development tools (the `orders-tools` distribution in
#: tools/: dev stack, sandbox providers, bench and chaos) add their commands.
TOOL_COMMANDS_GROUP = "orders.commands"
#: What each tool command is, for the one-line error when the tools are not installed.
TOOL_COMMANDS = {
    "dev": "run the whole platform on embedded defaults",
    "sandbox": "run the sandbox payment gateway and carrier",
    "bench": "measure throughput, latency and cost per order",
    "chaos": "inject faults under load, then check the invariants",
}
TOOLS_MISSING = (
    "`orders {name}` comes with the development tools, which are not installed here: "
    "pip install -e ./tools (from a checkout; `make dev` and `make test` install them)"
)


def _register_tool_commands(sub: argparse._SubParsersAction) -> None:
    found = {entry.name: entry for entry in entry_points(group=TOOL_COMMANDS_GROUP)}
    for name, help_text in TOOL_COMMANDS.items():
        if name not in found:
            missing = sub.add_parser(name, help=f"{help_text} (development tools, not installed)", add_help=False)
            missing.set_defaults(func=_tools_missing(name), tools_missing=True)
    for _, entry in sorted(found.items()):
        entry.load()(sub)


def _tools_missing(name: str) -> Callable[[argparse.Namespace], int]:
    def refuse(args: argparse.Namespace) -> int:
        raise CliError(TOOLS_MISSING.format(name=name))

    return refuse


def stop_on_sigterm() -> None:
    """Make SIGTERM stop this process the way Ctrl-C does: raise KeyboardInterrupt in the main
    thread, so ``with``/``finally`` blocks and pytest's fixture finalizers stop what this process
    started. Python's default for SIGTERM is to die on the spot, which leaves children in their own
    sessions running; ``timeout`` and CI runners stop a command with SIGTERM. Processes that handle
    SIGTERM themselves (uvicorn, the worker, the ``orders dev`` supervisor) replace this handler."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "tools_missing", False):  # their options are not known here
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
