"""`orders sandbox`: the sandbox payment gateway and carrier as one HTTP server."""

from __future__ import annotations

import argparse


def cmd_sandbox(args: argparse.Namespace) -> int:
    from cli.main import _require_database, _settings
    from core.logging import configure_logging
    from sandbox.server import run

    settings = _settings()
    _require_database(settings, settings.effective_sandbox_database_url)
    configure_logging(settings, process="sandbox")
    run(settings)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from cli.main import add_data_dir_option

    sandbox = subparsers.add_parser("sandbox", help="run the sandbox payment gateway and carrier")
    add_data_dir_option(sandbox)
    sandbox.set_defaults(func=cmd_sandbox)
