"""`orders bench`: measured throughput, latency and Temporal cost per order, against three baselines.

By default it starts its own platform in a temporary folder (PostgreSQL, Temporal dev server with
file persistence, sandbox, worker(s), API — all child processes, see :mod:`bench.stack`), drives the
public HTTP API with a realistic mix (:mod:`bench.loadgen`), then, on the same servers:

* (a) the bare engine: a workflow with the same number of activities, local activities and signals
  as an average completed order, doing no I/O (:mod:`bench.baselines.bare_engine`);
* (b) the direct implementation: one FastAPI handler doing the same stock, payment and shipping
  calls in line (:mod:`bench.baselines.direct_handler`);
* (c) a peer engine: the same order flow as a durable workflow on DBOS, checkpointed in the same
  PostgreSQL, waiting for the carrier's webhook like an order (:mod:`bench.baselines.dbos_flow`;
  needs ``orders-tools[dbos]``, skipped with a one-line message without it).

``--url http://127.0.0.1:8000`` drives a running `orders dev` instead (no baselines then).
Temporal actions per completed order are counted from the histories of a sample of completed
workflows; the counting is documented in :func:`bench.measure.temporal.count_actions`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from cli.main import CliError

# The rest of the bench is imported when it runs: every `orders` command loads this module.


def run_bench(args: argparse.Namespace) -> dict:
    """Run the benchmark described by ``args``; returns the report (also printed / written)."""
    from bench import run

    if args.url:
        return asyncio.run(run.against_url(args))
    from bench.stack import StackOptions

    options = StackOptions(
        workers=args.workers,
        settings=_parse_pairs(args.set, "--set"),
        temporal_dynamic_config=_parse_pairs(args.temporal_config, "--temporal-config"),
        keep_data=args.keep_data,
        database_server_url=getattr(args, "database_url", None),  # not among add_load_options
    )
    return run.on_own_stack(args, options)


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.loadgen import require_loopback
    from bench.report import format_report, write_chart
    from bench.run import say

    if args.rate is None and args.concurrency is None:
        args.concurrency = 32
    if args.url and args.database_url:
        raise CliError("--database-url is for the bench's own stack; with --url the running stack's database is used")
    for url in filter(None, (args.url, args.database_url)):
        try:
            require_loopback(url)
        except ValueError as error:
            raise CliError(str(error)) from error
    if args.duration > 3600 or args.max_orders > 1_000_000:
        raise CliError("a bench run is bounded: --duration <= 3600 s and --max-orders <= 1000000")
    if not 0.05 <= args.poll_interval <= 60:
        raise CliError("--poll-interval must be between 0.05 and 60 seconds")
    report = run_bench(args)
    print(format_report(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        say(f"wrote {args.json}")
    chart = args.chart or (args.json.with_suffix(".png") if args.json else None)
    if chart:
        say(f"wrote {chart}" if write_chart(report, chart) else "matplotlib is not installed: no chart")
    bad = report.get("invariants", {}).get("ok") is False
    for name in ("platform", "half_rate", "spike"):
        if report.get(name) and (
            report[name]["summary"]["http_5xx_not_503_with_retry_after"] or report[name]["summary"]["orders_unfinished"]
        ):
            bad = True
    return 1 if bad else 0


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The load options of `orders bench` (the slow spike test builds its arguments with them too)."""
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument(
        "--max-orders", type=int, default=20_000, help="stop submitting after this many orders (default 20000)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=180.0, help="seconds to wait for accepted orders to end (default 180)"
    )
    parser.add_argument("--customers", type=int, default=500, help="distinct customer tokens (default 500)")
    parser.add_argument(
        "--decline", type=float, default=0.05, help="share of orders paid with tok_decline (default 0.05)"
    )
    parser.add_argument(
        "--cancel", type=float, default=0.05, help="share cancelled right after submitting (default 0.05)"
    )
    parser.add_argument(
        "--expensive",
        type=float,
        default=0.05,
        help="share at the review threshold, approved by an operator (default 0.05)",
    )
    parser.add_argument(
        "--split",
        type=float,
        default=0.1,
        help="share whose lines only two different warehouses hold: two shipments (default 0.1)",
    )
    parser.add_argument(
        "--partial",
        type=float,
        default=0.05,
        help="share asking for an out-of-stock SKU too, amended to what was reserved (default 0.05)",
    )
    parser.add_argument("--reads", type=int, default=1, help="extra list reads per order besides polling (default 1)")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between a client's status reads of its order until it ends (default 1; each read is a GET the gateway serves)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the embedded stack (default 1)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a setting of the embedded stack, e.g. --set worker_max_cached_workflows=2000",
    )
    parser.add_argument(
        "--temporal-config",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="dynamic config of the embedded Temporal server",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the embedded stack's temporary folder (logs)")


def register(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="measure throughput, latency and Temporal cost per order (starts its own stack unless --url)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "--url", default=None, help="drive a running `orders dev` at this 127.0.0.1 URL instead of an own stack"
    )
    load = bench.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, default=None, help="open loop: orders per second")
    load.add_argument("--concurrency", type=int, default=None, help="closed loop: orders in flight (default 32)")
    add_load_options(bench)
    bench.add_argument(
        "--database-url",
        default=None,
        metavar="postgresql://USER@127.0.0.1:5432",
        help="use this PostgreSQL server (a fresh database is created on it) instead of an embedded one",
    )
    bench.add_argument(
        "--no-baselines", dest="baselines", action="store_false", help="skip the bare-engine and direct baselines"
    )
    bench.add_argument(
        "--no-dbos",
        dest="dbos",
        action="store_false",
        help="skip baseline (c), the same flow on DBOS (skipped anyway when the dbos extra is not installed)",
    )
    bench.add_argument("--baseline-duration", type=float, default=20.0, help="seconds per baseline (default 20)")
    bench.add_argument(
        "--half-rate-check",
        action="store_true",
        help="then run open loop at half the measured rate (the latency target)",
    )
    bench.add_argument(
        "--spike", action="store_true", help="then 10x the sustainable rate for 30 s and report the drain time"
    )
    bench.add_argument("--spike-factor", type=float, default=10.0)
    bench.add_argument("--spike-duration", type=float, default=30.0)
    bench.add_argument(
        "--sustainable-rate", type=float, default=None, help="base of the spike (default: the measured ended/s)"
    )
    bench.add_argument(
        "--history-sample", type=int, default=20, help="completed workflows whose histories are counted (default 20)"
    )
    bench.add_argument("--json", type=Path, default=None, help="write the report as JSON (and a PNG chart next to it)")
    bench.add_argument("--chart", type=Path, default=None, help="write the chart here (default: next to --json)")
    bench.set_defaults(func=cmd_bench)


def _parse_pairs(pairs: list[str], what: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"{what} must look like KEY=VALUE, got {pair!r}")
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed
