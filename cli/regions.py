"""`orders regions ...`: replication between regions and the home-region directory (docs/regions.md).

Tools add subcommands (the drill) through the entry-point group :data:`REGIONS_COMMANDS_GROUP`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import TypeVar

T = TypeVar("T")

#: Entry points that receive the subparsers of `orders regions` (callable ``register(subparsers)``).
REGIONS_COMMANDS_GROUP = "orders.regions.commands"


def register(sub: argparse._SubParsersAction) -> None:
    regions = sub.add_parser("regions", help="regions: replication, home directory, rehoming")
    regions_sub = regions.add_subparsers(dest="regions_command", required=True, metavar="TASK")

    link = regions_sub.add_parser("link", help="replicate the peers' orders into this region (idempotent)")
    link.set_defaults(func=cmd_link)
    unlink = regions_sub.add_parser("unlink", help="stop replicating the peers' orders into this region")
    unlink.set_defaults(func=cmd_unlink)
    status = regions_sub.add_parser("status", help="replication from each peer: worker, positions, lag")
    status.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    status.set_defaults(func=cmd_status)

    home = regions_sub.add_parser("home", help="show (or pin, with --set) a customer's home region")
    home.add_argument("customer", metavar="CUSTOMER", help="the customer id (the token's subject)")
    home.add_argument("--set", dest="region", default=None, help="pin the customer to this region")
    home.add_argument("--by", default=None, help="who changes it (default: the OS user)")
    home.set_defaults(func=cmd_home)

    rehome = regions_sub.add_parser(
        "rehome", help="send the new orders of a lost region's customers to another region (--to = --from undoes it)"
    )
    rehome.add_argument("--from", dest="lost", required=True, metavar="REGION")
    rehome.add_argument("--to", dest="to", required=True, metavar="REGION")
    rehome.add_argument("--by", default=None, help="who changes it (default: the OS user)")
    rehome.set_defaults(func=cmd_rehome)

    for entry in entry_points(group=REGIONS_COMMANDS_GROUP):
        entry.load()(regions_sub)


def _multi_region_settings():
    from cli.main import CliError, _require_database, _settings

    settings = _settings()
    _require_database(settings)
    if not settings.multi_region:
        raise CliError("this region has no peers: set ORDERS_REGION and ORDERS_REGION_PEERS (docs/regions.md)")
    return settings


def _peer_dsns(settings) -> dict[str, str]:
    from cli.main import CliError

    missing = sorted(set(settings.region_peers) - set(settings.region_peer_database_urls))
    if missing:
        raise CliError(f"ORDERS_REGION_PEER_DATABASE_URLS has no DSN for {', '.join(missing)}")
    return dict(settings.region_peer_database_urls)


def _run(work: Awaitable[T]) -> T:
    import asyncpg

    from cli.main import CliError

    try:
        return asyncio.run(work)  # type: ignore[arg-type]  # a coroutine, as asyncio.run wants
    except (OSError, asyncpg.PostgresError) as error:
        raise CliError(f"database: {error}".replace("\n", " ")) from None


def cmd_link(args: argparse.Namespace) -> int:
    from core.db.regions import libpq_dsn, link

    settings = _multi_region_settings()
    for line in _run(link(libpq_dsn(settings.database_url), settings.region, _peer_dsns(settings))):
        print(line)
    return 0


def cmd_unlink(args: argparse.Namespace) -> int:
    from core.db.regions import libpq_dsn, unlink

    settings = _multi_region_settings()
    for line in _run(unlink(libpq_dsn(settings.database_url), settings.region, _peer_dsns(settings))):
        print(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from core.db.regions import libpq_dsn, subscription_status

    settings = _multi_region_settings()
    rows = _run(
        subscription_status(
            libpq_dsn(settings.database_url), settings.region, list(settings.region_peers), settings.region_heartbeat_s
        )
    )
    if args.json:
        print(json.dumps({"region": settings.region, "peers": [row.as_json() for row in rows]}))
        return 0
    print(f"{'peer':<12} {'subscription':<28} {'enabled':<8} {'worker':<8} {'copied':<7} {'lag_s':>6}")
    for row in rows:
        worker = str(row.worker_pid) if row.worker_pid else "-"
        lag = "?" if row.lag_s is None else str(row.lag_s)
        enabled = "yes" if row.enabled else ("no" if row.exists else "missing")
        copied = "yes" if row.tables_ready else "no"
        print(f"{row.peer:<12} {row.subscription:<28} {enabled:<8} {worker:<8} {copied:<7} {lag:>6}")
    return 0


def _known_region(settings, name: str) -> str:
    from cli.main import CliError

    if name not in settings.regions:
        raise CliError(f"unknown region {name!r}; the regions are {', '.join(settings.regions)}")
    return name


async def _each_region(settings, change: Callable[..., Awaitable[None]]) -> tuple[list[str], list[str]]:
    """Apply a directory change in this region and every peer; (regions done, regions not reached)."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError, OperationalError

    from core.db.engine import create_engine
    from core.db.regions import RegionDirectory

    targets = {settings.region: settings.database_url}
    for peer, dsn in settings.region_peer_database_urls.items():
        targets[peer] = "postgresql+asyncpg://" + dsn.partition("://")[2]
    budget = settings.database_timeout_s * 2

    async def apply(region: str, url: str) -> bool:
        engine = create_engine(settings, url=url, pool_size=1)
        try:
            await asyncio.wait_for(change(RegionDirectory(engine)), budget)
            return True
        except (OSError, TimeoutError, OperationalError, DBAPIError, asyncpg.PostgresError):
            return False
        finally:
            # Closing a connection to a region that is cut off can wait on the network too.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(engine.dispose(), budget)

    # Every region at once: an unreachable one costs its budget once, not once per region before it.
    regions = sorted(targets)
    reached = await asyncio.gather(*(apply(region, targets[region]) for region in regions))
    done = [region for region, ok in zip(regions, reached, strict=True) if ok]
    missed = [region for region, ok in zip(regions, reached, strict=True) if not ok]
    missed += sorted(set(settings.region_peers) - set(targets))
    return done, missed


def _report(done: list[str], missed: list[str]) -> int:
    print(f"directory updated in: {', '.join(done) or 'none'}")
    if missed:
        print(
            f"NOT updated in: {', '.join(missed)} — run the same command again once they are reachable, "
            "before they serve requests"
        )
        return 1
    return 0


def cmd_home(args: argparse.Namespace) -> int:
    from core.db.engine import create_engine
    from core.db.regions import RegionDirectory
    from core.regions import default_home, resolve_home

    settings = _multi_region_settings()
    customer = args.customer
    if args.region is not None:
        region = _known_region(settings, args.region)
        by = args.by or getpass.getuser()
        done, missed = asyncio.run(_each_region(settings, lambda d: d.pin(customer, region, by)))
        return _report(done, missed)

    async def show():
        engine = create_engine(settings, pool_size=1)
        try:
            return await RegionDirectory(engine).entry(customer)
        finally:
            await engine.dispose()

    entry = _run(show())
    home = resolve_home(customer, settings.regions, entry.pinned, entry.redirects)
    rule = f"pinned to {entry.pinned}" if entry.pinned else f"default rule: {default_home(customer, settings.regions)}"
    moved = f", rehomed to {home}" if home != (entry.pinned or default_home(customer, settings.regions)) else ""
    print(f"{customer}: home {home} ({rule}{moved})")
    return 0


def cmd_rehome(args: argparse.Namespace) -> int:
    settings = _multi_region_settings()
    lost, to = _known_region(settings, args.lost), _known_region(settings, args.to)
    by = args.by or getpass.getuser()
    done, missed = asyncio.run(_each_region(settings, lambda d: d.rehome(lost, to, by)))
    if to == lost:
        print(f"rehome of {lost} undone: its customers' new orders go to {lost} again")
    else:
        print(
            f"new orders of {lost}'s customers go to {to}; orders already accepted in {lost} stay there "
            f"and wait for {lost}"
        )
    return _report(done, missed)
