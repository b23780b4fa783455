"""`orders temporal setup`: prepare a Temporal namespace for the platform (idempotent).

Registers the order search attributes (core/search_attributes.py) through the operator service,
so it works on any cluster the settings point at (self-hosted; on Temporal Cloud add them with
`tcld namespace search-attributes add`, since Cloud has no operator AddSearchAttributes).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    temporal = sub.add_parser("temporal", help="Temporal namespace administration")
    temporal_sub = temporal.add_subparsers(dest="temporal_command", required=True, metavar="TASK")
    setup = temporal_sub.add_parser("setup", help="register the order search attributes (idempotent)")
    setup.set_defaults(func=cmd_setup)


def cmd_setup(args: argparse.Namespace) -> int:
    from cli.main import CliError, _settings
    from cli.replay import _client, _run
    from core.search_attributes import SEARCH_ATTRIBUTES, ensure_search_attributes

    settings = _settings()

    async def run() -> list[str]:
        client = await _client(settings)
        try:
            return await ensure_search_attributes(client, settings.temporal_namespace)
        except ValueError as error:
            raise CliError(str(error)) from None

    added = _run(run())
    where = f"namespace {settings.temporal_namespace} at {settings.temporal_address}"
    if added:
        print(f"registered search attributes {', '.join(added)} in {where}")
    else:
        print(f"search attributes {', '.join(SEARCH_ATTRIBUTES)} already registered in {where}")
    return 0
