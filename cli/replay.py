"""`orders replay` and `orders history export`: check histories against the current workflow code.

    orders replay                       # every failed/terminated order workflow of the last 7 days
    orders replay order-<id> ...        # these workflows
    orders replay --query "OrderStatus='failed'"
    orders replay --file tests/golden/  # exported JSON histories (files or folders)
    orders history export order-<id> --out histories/

Each workflow is reported as ok or NONDETERMINISTIC (with the mismatch); the exit code is 1 if any
is not ok. Histories hold ciphertext; the codec keys from settings decrypt them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    replay = sub.add_parser("replay", help="replay workflow histories against the current code (nondeterminism check)")
    replay.add_argument(
        "workflow_ids", nargs="*", metavar="WORKFLOW_ID", help="order-<id> (default: a visibility query)"
    )
    replay.add_argument(
        "--query", help="visibility query (default: failed or terminated order workflows of the last --days)"
    )
    replay.add_argument("--days", type=int, default=7, help="window of the default query (default 7)")
    replay.add_argument(
        "--file", action="append", type=Path, default=[], help="exported JSON history, or a folder of them (repeatable)"
    )
    replay.add_argument("--limit", type=int, default=None, help="at most this many workflows from the query")
    replay.set_defaults(func=cmd_replay)

    history = sub.add_parser("history", help="workflow histories")
    history_sub = history.add_subparsers(dest="history_command", required=True, metavar="TASK")
    export = history_sub.add_parser(
        "export", help="save histories as JSON (for `orders replay --file` and golden tests)"
    )
    export.add_argument("workflow_ids", nargs="*", metavar="WORKFLOW_ID")
    export.add_argument("--query", help="export every workflow matching this visibility query")
    export.add_argument("--limit", type=int, default=None)
    export.add_argument("--out", type=Path, default=Path("histories"), help="folder (default ./histories)")
    export.set_defaults(func=cmd_history_export)


def _history_files(paths: list[Path]) -> list[Path]:
    from cli.main import CliError

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(path.rglob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise CliError(f"no such history file or folder: {path}")
    if not files:
        raise CliError("no JSON history files found")
    return files


def cmd_replay(args: argparse.Namespace) -> int:
    from cli.main import CliError, _settings
    from workers.replay import (
        ReplayOutcome,
        default_failed_query,
        histories_by_ids,
        histories_by_query,
        load_history_file,
        replay,
    )

    settings = _settings()
    if args.file and (args.workflow_ids or args.query):
        raise CliError("give either --file or workflow ids/--query, not both")
    started = time.monotonic()
    counter = {"n": 0}

    def progress(outcome: ReplayOutcome) -> None:
        counter["n"] += 1
        verdict = "ok" if outcome.ok else ("NONDETERMINISTIC" if outcome.nondeterministic else "FAILED")
        line = f"[{counter['n']}] {verdict:16} {outcome.workflow_id}"
        if outcome.run_id:
            line += f" (run {outcome.run_id})"
        print(line, flush=True)
        if not outcome.ok:
            print(f"    {outcome.detail}", flush=True)

    async def run() -> list[ReplayOutcome]:
        if args.file:
            try:
                histories = [load_history_file(path) for path in _history_files(args.file)]
            except ValueError as error:
                raise CliError(str(error)) from None
            print(f"replaying {len(histories)} history file(s)", flush=True)
            return await replay(settings, histories, progress)
        client = await _client(settings)
        if args.workflow_ids:
            print(f"replaying {len(args.workflow_ids)} workflow(s)", flush=True)
            return await replay(settings, histories_by_ids(client, args.workflow_ids), progress)
        query = args.query or default_failed_query(args.days)
        print(f"replaying workflows matching: {query}", flush=True)
        return await replay(settings, histories_by_query(client, query, args.limit), progress)

    outcomes = _run(run())
    bad = [o for o in outcomes if not o.ok]
    print(
        f"replayed {len(outcomes)} workflow(s) in {time.monotonic() - started:.1f}s: "
        f"{len(outcomes) - len(bad)} ok, {len(bad)} not ok",
        flush=True,
    )
    return 1 if bad else 0


def cmd_history_export(args: argparse.Namespace) -> int:
    from cli.main import CliError, _settings
    from workers.replay import histories_by_ids, histories_by_query

    settings = _settings()
    if not args.workflow_ids and not args.query:
        raise CliError("name workflow ids or give --query")

    async def run() -> int:
        client = await _client(settings)
        source = (
            histories_by_ids(client, args.workflow_ids)
            if args.workflow_ids
            else histories_by_query(client, args.query, args.limit)
        )
        args.out.mkdir(parents=True, exist_ok=True)
        count = 0
        async for history in source:
            target = args.out / f"{history.workflow_id}.json"
            target.write_text(history.to_json())
            count += 1
            print(f"[{count}] {target} ({len(history.events)} events)", flush=True)
        return count

    count = _run(run())
    if not count:
        raise CliError("no workflow matched")
    print(f"exported {count} history(ies) to {args.out}")
    return 0


async def _client(settings):
    from cli.main import CliError
    from core.temporal import connect_client

    try:
        return await connect_client(settings)
    except RuntimeError as error:  # the bridge's connection failure
        raise CliError(f"cannot reach Temporal at {settings.temporal_address}: {error}".replace("\n", " ")) from None


def _run(coroutine):
    """Run a command's coroutine; Temporal RPC failures become one-line errors."""
    from temporalio.service import RPCError

    from cli.main import CliError

    async def settled():
        try:
            return await coroutine
        finally:
            # Drop the client while the loop still runs: otherwise the SDK's Rust threads may touch
            # it during interpreter shutdown and the process aborts after its work is done.
            gc.collect()
            await asyncio.sleep(0.05)

    try:
        return asyncio.run(settled())
    except RPCError as error:
        if error.status.name == "NOT_FOUND":
            raise CliError(f"not found: {error.message}") from None
        raise CliError(
            f"Temporal refused the request ({error.status.name}): {error.message}".replace("\n", " ")
        ) from None
