"""`orders keys sweep`: delete expired Idempotency-Key records now, in batches (the gateways also
do it on their own every ORDERS_IDEMPOTENCY_SWEEP_INTERVAL_S), or count them with ``--dry-run``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import timedelta

#: A progress line every this many batches (the summary line always comes at the end).
PROGRESS_EVERY = 10


def register(sub: argparse._SubParsersAction) -> None:
    from cli.main import add_data_dir_option

    keys = sub.add_parser("keys", help="Idempotency-Key records")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="TASK")
    sweep = keys_sub.add_parser(
        "sweep", help="delete expired Idempotency-Key records now (the gateways also sweep on their own)"
    )
    sweep.add_argument("--dry-run", action="store_true", help="only count the records a sweep would delete")
    sweep.add_argument(
        "--batch-size", type=int, default=None, help="records per batch (default ORDERS_IDEMPOTENCY_SWEEP_BATCH_SIZE)"
    )
    sweep.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (default: all)")
    add_data_dir_option(sweep)
    sweep.set_defaults(func=cmd_keys_sweep)


def cmd_keys_sweep(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from cli.main import CliError, _require_database, _settings
    from core.db.engine import create_engine
    from core.db.idempotency import SweepResult, count_expired_keys, sweep_expired_keys

    settings = _settings()
    batch_size = settings.idempotency_sweep_batch_size if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    if args.max_batches is not None and args.max_batches < 1:
        raise CliError("--max-batches must be at least 1")
    _require_database(settings)
    grace = timedelta(seconds=settings.idempotency_sweep_grace_s)
    expired = f"expired more than {settings.idempotency_sweep_grace_s:g} s ago"

    async def progress(count: int, so_far: SweepResult) -> None:
        if so_far.batches % PROGRESS_EVERY == 0:
            print(f"... {so_far.deleted} deleted in {so_far.batches} batches", file=sys.stderr, flush=True)

    async def run() -> int | SweepResult:
        # An operator's count over a large backlog may take longer than the request path's statement
        # timeout allows (ORDERS_DATABASE_TIMEOUT_S, doubled, at least 10 s).
        engine = create_engine(
            settings.model_copy(update={"database_timeout_s": max(settings.database_timeout_s, 30.0)}), pool_size=1
        )
        try:
            if args.dry_run:
                return await count_expired_keys(engine, grace=grace)
            return await sweep_expired_keys(
                engine, grace=grace, batch_size=batch_size, max_batches=args.max_batches, on_batch=progress
            )
        finally:
            await engine.dispose()

    started = time.perf_counter()
    try:
        outcome = asyncio.run(run())
    except (OSError, SQLAlchemyError) as error:
        cause = getattr(error, "orig", None) or error
        reason = (str(cause).strip().splitlines() or ["no details"])[0]
        raise CliError(f"database error: {type(cause).__name__}: {reason}") from None
    elapsed = time.perf_counter() - started
    if isinstance(outcome, int):
        print(f"{outcome} Idempotency-Key records {expired} would be deleted (dry run: nothing deleted)")
        return 0
    if not outcome.ran:
        raise CliError(
            "another sweep is running (a gateway's sweeper or another `orders keys sweep`): "
            "nothing deleted; try again later"
        )
    left = "; more may remain: run it again" if outcome.more else ""
    print(
        f"{outcome.deleted} Idempotency-Key records {expired} deleted in {outcome.batches} batches "
        f"of at most {batch_size} ({elapsed:.1f} s){left}"
    )
    return 0
