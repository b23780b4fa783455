"""`orders sandbox`: the sandbox payment gateway and carrier as one HTTP server."""

from __future__ import annotations

import argparse


def cmd_sandbox(args: argparse.Namespace) -> int:
    from cli.main import CliError, _settings
    from core.logging import configure_logging
    from sandbox.server import run

    settings = _settings()
    if not settings.effective_sandbox_database_url:
        raise CliError("ORDERS_DATABASE_URL (or ORDERS_SANDBOX_DATABASE_URL) must be set for the sandbox")
    configure_logging(settings, process="sandbox")
    run(settings)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    sandbox = subparsers.add_parser("sandbox", help="run the sandbox payment gateway and carrier")
    sandbox.set_defaults(func=cmd_sandbox)
