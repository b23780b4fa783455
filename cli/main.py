"""`orders`: run the platform (dev, api, worker, sandbox), migrate, seed, and mint dev tokens.

Errors that a user can fix are printed as one line (``orders: error: ...``) with exit code 2.

A component started next to a running ``orders dev`` (``orders worker`` in a second terminal) takes
the stack's settings from the file that ``orders dev`` keeps in its data folder (:data:`STACK_FILE`),
unless ``ORDERS_DATABASE_URL`` is set; settings given in the environment or ``.env`` always win.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import importlib
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from core.config import Settings, get_settings


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


#: What a running `orders dev` leaves in its data folder: the settings it gives its processes, as
#: shell-quoted ``ORDERS_*=value`` lines (``set -a; . .data/stack.env`` loads them into a shell).
#: It holds an exclusive flock on the file while it runs, so a file nobody locks is a stopped stack's
#: (the kernel drops the lock however the process ends). tools/devstack/dev.py writes it.
STACK_FILE = "stack.env"


@dataclass
class StackFile:
    path: Path
    running: bool
    values: dict[str, str]
    owner_pid: int | None


def read_stack_file(data_dir: Path) -> StackFile | None:
    """The stack file in ``data_dir``, or None when there is none."""
    path = data_dir.absolute() / STACK_FILE
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}") from error
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            running = False
        except BlockingIOError:
            running = True
        text = handle.read().decode("utf-8", "replace")
    owner = re.search(r"\(pid (\d+)\)", text)
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("ORDERS_") and not line.startswith("#"):
            words = shlex.split(value)
            values[key] = words[0] if words else ""
    return StackFile(path, running, values, int(owner.group(1)) if owner else None)


def _settings(*, discover: bool = True) -> Settings:
    """The settings of this process; with ``discover``, completed from a running `orders dev`
    when ORDERS_DATABASE_URL is not set (see :data:`STACK_FILE`)."""
    settings = _read_settings()
    if discover and "database_url" not in settings.model_fields_set:
        stack = read_stack_file(settings.data_dir)
        if stack is not None and stack.running:
            for key, value in stack.values.items():
                if key.removeprefix("ORDERS_").lower() not in settings.model_fields_set:
                    os.environ[key] = value  # here rather than in Settings: children inherit them too
            get_settings.cache_clear()
            settings = _read_settings()
    return settings


def _read_settings() -> Settings:
    try:
        return get_settings()
    except Exception as error:  # pydantic ValidationError: show it plainly
        raise CliError(f"invalid settings: {error}".replace("\n", " ")) from error


def add_data_dir_option(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``: where to find a running `orders dev` (it sets ORDERS_DATA_DIR for this process)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data folder of the `orders dev` to join when ORDERS_DATABASE_URL is not set (default .data)",
    )


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.server import GatewayServer
    from core.logging import configure_logging
    from core.open_files import OTHER_OPEN_FILES, raise_open_files_limit

    settings = _settings()
    _require_database(settings)
    configure_logging(settings, process="api")
    raise_open_files_limit(settings.api_max_waiters + OTHER_OPEN_FILES)  # a socket per waiting request
    port = args.port or settings.api_port
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host or settings.api_host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.api_shutdown_grace_s,
    )
    GatewayServer(config, app).run()
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


def _require_database(settings: Settings, url: str | None = None) -> None:
    """A one-line error when there is no database to use: no ORDERS_DATABASE_URL and no running
    `orders dev` found in the data folder."""
    if settings.database_url if url is None else url:
        return
    folder = settings.data_dir.absolute()
    stack = read_stack_file(folder)
    if stack is None:
        raise CliError(
            f"ORDERS_DATABASE_URL is not set and no `orders dev` is running with its data in {folder}: "
            "start `orders dev` (or point --data-dir at its data folder), or set ORDERS_DATABASE_URL"
        )
    if not stack.running:
        owner = f", pid {stack.owner_pid}," if stack.owner_pid else ""
        raise CliError(
            f"the stack at {folder} is not running (its `orders dev`{owner} has stopped): "
            "start `orders dev` again, or set ORDERS_DATABASE_URL"
        )
    raise CliError(f"ORDERS_DATABASE_URL is empty: unset it to join the `orders dev` running on {folder}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orders", description="Order processing platform")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = sub.add_parser("api", help="run the HTTP gateway")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    add_data_dir_option(api)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run the Temporal workers")
    worker.add_argument(
        "--queue",
        action="append",
        choices=["orchestration", "inventory", "payments", "shipping"],
        help="run only these queues (repeatable; default all)",
    )
    add_data_dir_option(worker)
    worker.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database tasks")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="TASK")
    upgrade = db_sub.add_parser("upgrade", help="apply migrations")
    upgrade.add_argument("revision", nargs="?", default="head")
    add_data_dir_option(upgrade)
    upgrade.set_defaults(func=cmd_db_upgrade)
    seed = db_sub.add_parser("seed", help="load the demo catalogue (existing products are kept)")
    add_data_dir_option(seed)
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
    "cli.keys",  # orders keys sweep
    "cli.regions",  # orders regions link|unlink|status|home|rehome
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
    if getattr(args, "data_dir", None) is not None:
        os.environ["ORDERS_DATA_DIR"] = str(args.data_dir.absolute())
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
