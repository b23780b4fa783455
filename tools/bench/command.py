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
import sys
from pathlib import Path
from typing import Any

from cli.main import CliError

# The rest of the bench is imported when it runs: every `orders` command loads this module.


def run_bench(args: argparse.Namespace) -> dict:
    """Run the benchmark described by ``args``; returns the report (also printed / written)."""
    from bench import run

    if args.url:
        return asyncio.run(run.against_url(args))
    return run.on_own_stack(args, _stack_options(args))


def _stack_options(args: argparse.Namespace):
    from bench.stack import StackOptions

    return StackOptions(
        workers=args.workers,
        settings=_parse_pairs(args.set, "--set"),
        temporal_dynamic_config=_parse_pairs(args.temporal_config, "--temporal-config"),
        keep_data=args.keep_data,
        database_server_url=getattr(args, "database_url", None),  # not among add_load_options
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """`orders bench --sweep`: the points on one own stack, then the text, --json and the chart."""
    from bench.run import say
    from bench.sweep import (
        DEFAULT_LEVELS,
        DEFAULT_SIZES,
        MAX_LINES,
        format_sweep,
        parse_levels,
        run_sweep,
        write_sweep_chart,
    )

    if args.url:
        raise CliError("--sweep starts its own stack: it cannot run against --url")
    try:
        args.sweep_levels = parse_levels(
            args.sweep_levels or ",".join(map(str, DEFAULT_LEVELS)), "--sweep-levels", upper=1000
        )
        args.sweep_sizes = parse_levels(
            args.sweep_sizes or ",".join(map(str, DEFAULT_SIZES)), "--sweep-sizes", upper=MAX_LINES
        )
    except ValueError as error:
        raise CliError(str(error)) from error
    if not 1 <= args.sweep_point_duration <= 600:
        raise CliError("--sweep-point-duration must be between 1 and 600 seconds")
    if len(args.sweep_levels) * len(args.sweep_sizes) > 60:
        raise CliError("a sweep is bounded: at most 60 points (levels x sizes)")
    section = run_sweep(args, _stack_options(args))
    report = {"argv": sys.argv[1:], "sweep": section}
    print(format_sweep(section), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        say(f"wrote {args.json}")
    chart = args.chart or (args.json.with_suffix(".png") if args.json else Path("bench-sweep.png"))
    say(f"wrote {chart}" if write_sweep_chart(section, chart) else "matplotlib is not installed: no chart")
    bad = any(p["http_5xx_not_503_with_retry_after"] or p["orders_unfinished"] for p in section["points"])
    return 1 if bad else 0


def cmd_read_path(args: argparse.Namespace) -> int:
    """`orders bench --read-path`: seed the read model, drive the read routes open loop, report."""
    from bench.reads import format_reads, run_read_path
    from bench.run import say
    from bench.sweep import parse_levels

    if args.url:
        raise CliError("--read-path starts its own stack: it cannot run against --url")
    try:
        args.read_rates = parse_levels(args.read_rates, "--read-rates", upper=100_000)
    except ValueError as error:
        raise CliError(str(error)) from error
    if not 1 <= args.read_duration <= 600:
        raise CliError("--read-duration must be between 1 and 600 seconds")
    if not 1 <= args.read_seed <= 1_000_000:
        raise CliError("--read-seed must be between 1 and 1000000 orders")
    if not 1 <= args.read_per_customer <= args.read_seed:
        raise CliError("--read-per-customer must be between 1 and --read-seed")
    if not 0 <= args.read_list_share <= 1:
        raise CliError("--read-list-share must be between 0 and 1")
    section = run_read_path(args, _stack_options(args))
    print(format_reads(section), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"argv": sys.argv[1:], "reads": section}, indent=2, default=str))
        say(f"wrote {args.json}")
    bad = any(p["statuses"].keys() - {"200"} for p in section["rates"])
    return 1 if bad else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.loadgen import require_loopback
    from bench.report import format_report, write_chart
    from bench.run import say

    if args.sweep and args.read_path:
        raise CliError("--sweep and --read-path are two different runs: give one")
    if args.sweep:
        return cmd_sweep(args)
    if args.read_path:
        return cmd_read_path(args)

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
    if args.poll_interval is not None and not 0.05 <= args.poll_interval <= 60:
        raise CliError("--poll-interval must be between 0.05 and 60 seconds")
    if not 1 <= args.wait <= 30:
        raise CliError("--wait must be between 1 and 30 seconds")
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
        "--wait",
        type=int,
        default=20,
        help="seconds a client's long-poll of its order may wait for it to end or need the client "
        "(GET /v1/orders/{id}?wait=...&until=...; default 20)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="instead of long-polling, read the order every this many seconds until it ends (clients "
        "before the long-poll: 1)",
    )
    parser.add_argument(
        "--submit-patience",
        type=float,
        default=60.0,
        help="seconds a client keeps retrying a refused submission (503/429 after Retry-After, or no "
        "answer) before it gives up on the order, which is then not placed (default 60)",
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
    sweep = bench.add_argument_group("sweep (how cost grows with load and order size; own stack only)")
    sweep.add_argument(
        "--sweep",
        action="store_true",
        help="instead of one load phase: closed loops of plain orders at each level x size, one after another on one stack",
    )
    sweep.add_argument(
        "--sweep-levels", default=None, metavar="N,N,...", help="orders in flight per point (default 8,16,32,64,128)"
    )
    sweep.add_argument(
        "--sweep-sizes", default=None, metavar="N,N,...", help="lines per order (default 1,10,50; at most 100)"
    )
    sweep.add_argument(
        "--sweep-point-duration",
        type=float,
        default=10.0,
        help="seconds of load per point (default 10), then it drains",
    )
    reads = bench.add_argument_group("read path (the gateway's read routes alone, open loop; own stack only)")
    reads.add_argument(
        "--read-path",
        action="store_true",
        help="instead of orders: seed the read model, then GET /v1/orders/{id} and GET /v1/orders at each rate",
    )
    reads.add_argument(
        "--read-rates",
        default="100,200,400",
        metavar="N,N,...",
        help="requests per second offered (default 100,200,400)",
    )
    reads.add_argument("--read-duration", type=float, default=15.0, help="seconds per rate (default 15)")
    reads.add_argument("--read-seed", type=int, default=5000, help="orders in the read model (default 5000)")
    reads.add_argument("--read-per-customer", type=int, default=50, help="orders per customer (default 50)")
    reads.add_argument("--read-list-share", type=float, default=0.2, help="share of list reads (default 0.2)")
    reads.add_argument(
        "--read-profile",
        type=Path,
        default=None,
        metavar="PATH",
        help="py-spy the gateway during the last rate; collapsed stacks to PATH, top functions printed",
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
