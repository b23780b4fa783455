"""`orders bench --sweep`: how the cost of an order grows with load and with its size.

One embedded stack is started once; then, one point after another, a closed loop of plain happy
orders (``--sweep-sizes`` lines each) at each concurrency of ``--sweep-levels`` for
``--sweep-point-duration`` seconds, drained before the next point. Per point: throughput, submit
and submit->completed latency, CPU per ended order of every process (the platform's own processes
apart from the sandbox providers and the load generator), the cores each process kept busy,
Temporal history bytes and read-model bytes per order. Then, per order size, where the throughput
curve bends and which resource the CPU figures say is saturated there.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
import uuid
from typing import Any

import psutil
from temporalio.client import Client

from bench.loadgen import ROUTE_SUBMIT, Catalogue, Mix
from bench.measure.load import summarize
from bench.measure.resources import cpu_per_unit
from bench.measure.storage import read_model_bytes
from bench.measure.temporal import temporal_cost
from bench.run import prepare_catalogue, run_load, say
from bench.stack import BenchStack, StackOptions
from core.db.engine import create_engine
from core.temporal import connect_client

#: The processes whose CPU is the platform's own; the sandbox providers stand in for outside
#: services and the load generator for the callers, so both are reported apart.
PLATFORM_PROCESSES = ("api", "temporal", "postgres")  # and every "worker-N"
DEFAULT_LEVELS = (8, 16, 32, 64, 128)
DEFAULT_SIZES = (1, 10, 50)
MAX_LINES = 100  # the API's limit per order
#: Seconds a point costs besides its load window in a healthy run (drain, histories, bytes), and
#: the stack's start: the basis of the expected duration printed before the first point.
POINT_OVERHEAD_S = 6.0
STACK_START_S = 15.0


def is_platform(process: str) -> bool:
    return process in PLATFORM_PROCESSES or process.startswith("worker")


def parse_levels(text: str, what: str, *, upper: int) -> tuple[int, ...]:
    """``"8,16,32"`` -> (8, 16, 32); ValueError naming ``what`` for anything else."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{what} must be whole numbers separated by commas, got {text!r}") from None
    if not values or any(not 1 <= v <= upper for v in values):
        raise ValueError(f"{what} must be between 1 and {upper}, got {text!r}")
    return tuple(sorted(set(values)))


def expected_seconds(levels: tuple[int, ...], sizes: tuple[int, ...], point_s: float) -> float:
    return STACK_START_S + len(levels) * len(sizes) * (point_s + POINT_OVERHEAD_S)


def longest_seconds(levels: tuple[int, ...], sizes: tuple[int, ...], point_s: float, drain_s: float) -> float:
    return STACK_START_S + len(levels) * len(sizes) * (point_s + drain_s + POINT_OVERHEAD_S)


def run_sweep(args: argparse.Namespace, options: StackOptions) -> dict:
    """Start one stack, run every point of the sweep on it, stop it; the report."""
    levels, sizes, point_s = args.sweep_levels, args.sweep_sizes, args.sweep_point_duration
    say(
        f"sweep: {len(levels) * len(sizes)} points (concurrency {', '.join(map(str, levels))} x "
        f"{', '.join(map(str, sizes))} lines per order), {point_s:g} s each: expect about "
        f"{expected_seconds(levels, sizes, point_s) / 60:.1f} min, at most "
        f"{longest_seconds(levels, sizes, point_s, args.drain_timeout) / 60:.1f} min"
    )
    with BenchStack(options, log=say) as stack:

        async def go() -> dict:
            assert stack.settings is not None
            # The bench's own engine (catalogue, bytes per order): patient on a busy machine.
            engine = create_engine(stack.settings.model_copy(update={"database_timeout_s": 30.0}), pool_size=2)
            try:
                catalogue, _ = await prepare_catalogue(
                    engine, stack.settings, uuid.uuid4().hex[:6], plain_skus=max(sizes)
                )
                client = await connect_client(stack.settings)
                return await sweep(args, stack, client, engine, catalogue)
            finally:
                await engine.dispose()

        return asyncio.run(go())


async def sweep(
    args: argparse.Namespace, stack: BenchStack, client: Client, engine, catalogue: Catalogue
) -> dict[str, Any]:
    """Every point, in order of size then concurrency; the report's ``sweep`` section."""
    assert stack.settings is not None
    points: list[dict[str, Any]] = []
    total = len(args.sweep_levels) * len(args.sweep_sizes)
    began = time.monotonic()
    # Plain happy orders only, so that every point measures one shape; the client behaviour
    # (status polls, list reads) is the bench's.
    mix = Mix(decline=0, cancel=0, expensive=0, split=0, partial=0, reads=args.reads)
    for size in args.sweep_sizes:
        sized = dataclasses.replace(catalogue, lines_per_order=size)
        for level in args.sweep_levels:
            say(
                f"point {len(points) + 1}/{total}: {size} line(s) per order, {level} in flight, {args.sweep_point_duration:g} s"
            )
            point = await _point(args, stack, client, engine, sized, mix, size, level)
            points.append(point)
            say(point_line(point) + f"  [{time.monotonic() - began:.0f} s into the sweep]")
    return {
        "mode": f"closed loop, plain orders, {args.sweep_point_duration:g} s per point",
        "levels": list(args.sweep_levels),
        "sizes": list(args.sweep_sizes),
        "cpus": os.cpu_count() or 0,
        "points": points,
        "bends": {str(size): find_bend([p for p in points if p["lines"] == size]) for size in args.sweep_sizes},
        "elapsed_s": round(time.monotonic() - began, 1),
    }


async def _point(
    args: argparse.Namespace,
    stack: BenchStack,
    client: Client,
    engine,
    catalogue: Catalogue,
    mix: Mix,
    size: int,
    level: int,
) -> dict[str, Any]:
    assert stack.settings is not None
    cpu_before = await asyncio.to_thread(stack.cpu_seconds)
    machine_before = psutil.cpu_times()
    started = time.monotonic()
    result = await run_load(
        stack.api_url,
        stack.settings,
        catalogue,
        args,
        concurrency=level,
        duration=args.sweep_point_duration,
        run_id=f"{uuid.uuid4().hex[:4]}-{size}-{level}",
        mix=mix,
    )
    elapsed = time.monotonic() - started
    cpu_after = await asyncio.to_thread(stack.cpu_seconds)
    machine = machine_busy(machine_before, psutil.cpu_times())
    summary = summarize(result)
    ended = len(result.ended)
    cpu = cpu_per_unit(cpu_before, cpu_after, ended, elapsed)
    per_process = cpu["cpu_ms_per_unit"]
    cores = {name: round(max(0.0, cpu_after[name] - cpu_before.get(name, 0.0)) / elapsed, 2) for name in cpu_after}
    completed = [o.order_id for o in result.ended if o.status == "completed" and o.order_id]
    history = await temporal_cost(client, completed, min(args.history_sample, 5))
    storage = await read_model_bytes(engine, completed[:200])
    submit = summary["latency_ms"].get(ROUTE_SUBMIT, {})
    return {
        "lines": size,
        "concurrency": level,
        "elapsed_s": round(elapsed, 1),
        "orders_ended": ended,
        "orders_unfinished": summary["orders_unfinished"],
        "http_5xx_not_503_with_retry_after": summary["http_5xx_not_503_with_retry_after"],
        "throughput_ended_per_s": summary["throughput_ended_per_s"],
        "submit_ms": {"p50": submit.get("p50"), "p99": submit.get("p99")},
        "submit_to_completed_ms": summary["submit_to_completed_ms"],
        "cpu_ms_per_order": per_process,
        "platform_cpu_ms_per_order": round(sum(v for k, v in per_process.items() if is_platform(k) and v), 1)
        if ended
        else None,
        "outside_cpu_ms_per_order": round(sum(v for k, v in per_process.items() if not is_platform(k) and v), 1)
        if ended
        else None,
        "cores_busy": dict(sorted(cores.items(), key=lambda kv: -kv[1])),
        "machine_busy": cpu["machine_busy"],
        # Every process on the machine, the bench's and anyone else's: on a shared machine the
        # difference is CPU the stack did not get.
        "machine_busy_all": machine,
        "temporal": history,
        "history_bytes_per_order": history.get("history_bytes"),
        "storage": storage,
        "read_model_row_bytes_per_order": storage.get("read_model_row_bytes_per_order"),
    }


def machine_busy(before, after) -> float:
    """Share of the machine's cores busy (not idle, not waiting for I/O) between two
    ``psutil.cpu_times()`` snapshots."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    return round(max(0.0, 1 - idle / total), 2) if total > 0 else 0.0


def point_line(p: dict[str, Any]) -> str:
    return (
        f"  {p['lines']:>3} lines x {p['concurrency']:>3}: {p['throughput_ended_per_s']:>6} ended/s, submit p50/p99 "
        f"{p['submit_ms']['p50']}/{p['submit_ms']['p99']} ms, ->completed p50/p99 "
        f"{p['submit_to_completed_ms']['p50']}/{p['submit_to_completed_ms']['p99']} ms, platform CPU "
        f"{p['platform_cpu_ms_per_order']} ms/order (+{p['outside_cpu_ms_per_order']} sandbox+generator), "
        f"busy {p['machine_busy']:.0%} (machine {p['machine_busy_all']:.0%}), history {p['history_bytes_per_order']} B, read model "
        f"{p['read_model_row_bytes_per_order']} B"
    )


# Thresholds of "the curve bends": doubling the load in flight raised throughput by less than this
# share while the submit->completed p99 (or the submit p99) grew by more than that factor.
FLAT_GAIN = 0.10
STEEP_P99 = 1.3
# A process at this many cores is saturated if it is one Python event loop (the gateway, a worker,
# the sandbox); the machine at this share of its cores is saturated as a whole.
ONE_CORE = 0.85
MACHINE_FULL = 0.85


def find_bend(series: list[dict[str, Any]]) -> dict[str, Any]:
    """Where throughput stops rising with the load in flight while the p99 climbs, and the
    saturated resource there, named from the cores each process kept busy."""
    ordered = sorted(series, key=lambda p: p["concurrency"])
    for before, point in zip(ordered, ordered[1:], strict=False):
        if not before["throughput_ended_per_s"]:
            continue
        gain = point["throughput_ended_per_s"] / before["throughput_ended_per_s"] - 1
        growth = max(
            _ratio(point["submit_to_completed_ms"]["p99"], before["submit_to_completed_ms"]["p99"]),
            _ratio(point["submit_ms"]["p99"], before["submit_ms"]["p99"]),
        )
        if gain < FLAT_GAIN and growth > STEEP_P99:
            return {
                "at_concurrency": point["concurrency"],
                "after_concurrency": before["concurrency"],
                "throughput_gain": round(gain, 3),
                "p99_growth": round(growth, 2),
                "saturated": saturated_resource(point),
                "text": (
                    f"from {before['concurrency']} to {point['concurrency']} in flight throughput "
                    f"{'rose only' if gain >= 0 else 'fell'} {gain:+.0%} ({before['throughput_ended_per_s']} -> "
                    f"{point['throughput_ended_per_s']} ended/s) while p99 grew {growth:.1f}x: "
                    + saturated_resource(point)
                ),
            }
    last = ordered[-1] if ordered else None
    return {
        "at_concurrency": None,
        "text": "no bend within the levels measured: throughput still rose with the load"
        + (f" (at {last['concurrency']} in flight: {saturated_resource(last)})" if last else ""),
    }


def saturated_resource(point: dict[str, Any]) -> str:
    """What the CPU figures of a point say is the bottleneck."""
    cpus = os.cpu_count() or 1
    cores = point["cores_busy"]
    busiest = ", ".join(f"{name} {value:.2f}" for name, value in list(cores.items())[:4])
    single = [name for name, value in cores.items() if value >= ONE_CORE and name not in ("temporal", "postgres")]
    if point["machine_busy"] is not None and point["machine_busy"] >= MACHINE_FULL:
        return (
            f"the machine's CPU is saturated ({point['machine_busy']:.0%} of {cpus} cores busy; cores per process: "
            f"{busiest}): more orders in flight only queue, and throughput is the inverse of CPU per order"
        )
    everyone = point.get("machine_busy_all") or 0.0
    if everyone >= MACHINE_FULL:
        return (
            f"the machine's CPU is saturated ({everyone:.0%} busy, of which the stack and generator "
            f"{point['machine_busy']:.0%}; cores per process: {busiest}): the rest is CPU not charged to "
            "those processes (the kernel's loopback networking and scheduling on their behalf, or other "
            "processes on the machine), so the stack's throughput here is bounded by the CPU it got"
        )
    if single:
        return (
            f"{single[0]} is at one core ({cores[single[0]]:.2f}; a Python process runs one event loop on "
            f"one core): it is the bottleneck though the machine is only {point['machine_busy']:.0%} busy"
        )
    return (
        f"no CPU is saturated (machine {point['machine_busy']:.0%} busy; cores per process: {busiest}): the "
        "limit is a queue or a pool (task slots, connection pools, the carrier's delivery delay), not CPU"
    )


def _ratio(after: float | None, before: float | None) -> float:
    if not after or not before:
        return 1.0
    return after / before


def format_sweep(section: dict[str, Any]) -> str:
    lines = [f"\n== sweep: {section['mode']} ({section['elapsed_s']} s) =="]
    lines.append(
        f"{'lines':>5} {'in flight':>9} {'ended/s':>8} {'submit p50/p99 ms':>18} {'->completed p50/p99 ms':>23} "
        f"{'platform CPU ms/order':>22} {'outside':>8} {'busy':>5} {'all':>5} {'history B':>10} {'read model B':>12}"
    )
    for p in section["points"]:
        # A point that did not drain spent CPU on orders it never counted: its per-order figures are overstated.
        flag = "*" if p["orders_unfinished"] else " "
        lines.append(
            f"{p['lines']:>5} {str(p['concurrency']) + flag:>9} {p['throughput_ended_per_s']:>8} "
            f"{str(p['submit_ms']['p50']) + ' / ' + str(p['submit_ms']['p99']):>18} "
            f"{str(p['submit_to_completed_ms']['p50']) + ' / ' + str(p['submit_to_completed_ms']['p99']):>23} "
            f"{p['platform_cpu_ms_per_order']!s:>22} {p['outside_cpu_ms_per_order']!s:>8} "
            f"{p['machine_busy']:>5.0%} {p['machine_busy_all']:>5.0%} {p['history_bytes_per_order']!s:>10} {p['read_model_row_bytes_per_order']!s:>12}"
        )
    lines.append(
        "platform CPU = gateway + workers + Temporal + PostgreSQL; outside = sandbox providers + load generator; "
        "busy = the stack and generator's share of the cores, all = every process on the machine. "
        "history B = serialized history per completed order (sampled); read model B = pg_column_size of the "
        "order's rows in orders + order_events + order_shipments (no indexes; on-disk figures in --json)."
    )
    if any(p["orders_unfinished"] for p in section["points"]):
        lines.append(
            "* orders still unfinished after --drain-timeout: CPU per order there counts work on orders that did not end"
        )
    for size, bend in section["bends"].items():
        lines.append(f"{size} line(s): {bend['text']}")
    return "\n".join(lines)


def write_sweep_chart(section: dict[str, Any], path) -> bool:
    """Six panels against the load in flight, one line per order size: throughput, submit
    latency, submit->completed latency, platform CPU per order, cores busy, bytes per order."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    (thr, sub, done), (cpu, busy, size_ax) = axes
    for size in section["sizes"]:
        series = sorted((p for p in section["points"] if p["lines"] == size), key=lambda p: p["concurrency"])
        if not series:
            continue
        x = [p["concurrency"] for p in series]
        label = f"{size} line{'s' if size > 1 else ''}"
        (line,) = thr.plot(x, [p["throughput_ended_per_s"] for p in series], "o-", label=label)
        color = line.get_color()
        sub.plot(x, [p["submit_ms"]["p50"] for p in series], "o--", color=color, label=f"{label} p50")
        sub.plot(x, [p["submit_ms"]["p99"] for p in series], "s-", color=color, label=f"{label} p99")
        done.plot(x, [_s(p["submit_to_completed_ms"]["p50"]) for p in series], "o--", color=color, label=f"{label} p50")
        done.plot(x, [_s(p["submit_to_completed_ms"]["p99"]) for p in series], "s-", color=color, label=f"{label} p99")
        # Points that did not drain are left out: their CPU per ended order counts orders that never ended.
        drained = [None if p["orders_unfinished"] else p for p in series]
        cpu.plot(
            x, [p and p["platform_cpu_ms_per_order"] for p in drained], "o-", color=color, label=f"{label} platform"
        )
        cpu.plot(
            x,
            [p and p["outside_cpu_ms_per_order"] for p in drained],
            "x:",
            color=color,
            label=f"{label} sandbox+generator",
        )
        busy.plot(x, [p["machine_busy"] for p in series], "o-", color=color, label=f"{label}: the stack")
        busy.plot(x, [p["machine_busy_all"] for p in series], "x:", color=color, label=f"{label}: every process")
        bend = section["bends"].get(str(size), {}).get("at_concurrency")
        if bend:
            thr.axvline(bend, color=color, linestyle=":", alpha=0.6)
    for ax, title, unit in (
        (thr, "throughput (dotted: where it bends)", "ended orders per second"),
        (sub, "POST /v1/orders latency", "ms"),
        (done, "submit -> completed (platform clock)", "seconds"),
        (cpu, "CPU per ended order (points that drained)", "ms"),
        (busy, "machine busy", f"share of {section['cpus']} cores"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(section["levels"], [str(v) for v in section["levels"]])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.set_xlabel("orders in flight (closed loop)")
        ax.legend(fontsize=7)
    # Bytes per order do not depend on the load: one bar pair per size, averaged over its points.
    sizes = section["sizes"]
    history = [_mean([p["history_bytes_per_order"] for p in section["points"] if p["lines"] == s]) for s in sizes]
    rows = [_mean([p["read_model_row_bytes_per_order"] for p in section["points"] if p["lines"] == s]) for s in sizes]
    positions = range(len(sizes))
    size_ax.bar([i - 0.2 for i in positions], [h / 1024 for h in history], width=0.4, label="Temporal history")
    size_ax.bar([i + 0.2 for i in positions], [r / 1024 for r in rows], width=0.4, label="read-model rows")
    size_ax.set_xticks(list(positions), [f"{s} line{'s' if s > 1 else ''}" for s in sizes])
    size_ax.set_title("bytes per completed order", fontsize=10)
    size_ax.set_ylabel("KiB")
    size_ax.legend(fontsize=7)
    fig.suptitle(f"orders bench --sweep: {section['mode']}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _s(value_ms: float | None) -> float | None:
    return None if value_ms is None else value_ms / 1000


def _mean(values: list[Any]) -> float:
    present = [v for v in values if v]
    return sum(present) / len(present) if present else 0.0
