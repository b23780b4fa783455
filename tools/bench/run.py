"""One `orders bench` run: the load phases on a platform, what is measured around each, the
invariant check and the baselines; the result is the report (a JSON-ready dict).

The platform is either a throw-away :class:`bench.stack.BenchStack` (:func:`on_own_stack`) or a
running `orders dev` (:func:`against_url`, no baselines then).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import asdict
from typing import Any

import httpx
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from bench.baselines.runner import (
    DBOS_MISSING,
    bare_engine_baseline,
    dbos_baseline,
    dbos_installed,
    direct_baseline,
)
from bench.invariants import InvariantChecker, InvariantReport
from bench.loadgen import Catalogue, LoadGenerator, LoadResult, Mix, require_loopback, status_printer
from bench.measure.gateway import gateway_answer_times, subtract
from bench.measure.kernel import kernel_tcp_counters, subtract_counters
from bench.measure.load import summarize, timeline
from bench.measure.providers import provider_call_peaks
from bench.measure.resources import cpu_per_unit, engine_cpu_ms, own_cpu_ms
from bench.measure.temporal import temporal_cost
from bench.stack import BenchStack, StackOptions
from core.config import Settings, get_settings
from core.db.catalog import upsert_products
from core.db.engine import create_engine
from core.db.tables import DEFAULT_WAREHOUSE, warehouses
from core.temporal import connect_client
from core.tokens import mint_token

CHEAP_PRICE = 1_999
BENCH_STOCK = 10_000_000


def say(message: str) -> None:
    print(f"orders bench: {message}", file=sys.stderr, flush=True)


# --- the platform -----------------------------------------------------------------------------------


def on_own_stack(args: argparse.Namespace, options: StackOptions) -> dict:
    """Start a stack with ``options``, measure it, stop it; the report."""
    with BenchStack(options, log=say) as stack:

        async def go() -> dict:
            assert stack.settings is not None
            engine = create_engine(stack.settings, pool_size=2)
            try:
                catalogue, initial = await prepare_catalogue(engine, stack.settings, uuid.uuid4().hex[:6])
            finally:
                await engine.dispose()
            client = await connect_client(stack.settings)
            return await measure(args, stack, stack.api_url, stack.settings, client, catalogue, initial)

        return asyncio.run(go())


async def against_url(args: argparse.Namespace) -> dict:
    """Measure the running platform at ``args.url`` (this machine only); the report."""
    url = require_loopback(args.url)
    settings = get_settings()
    if not settings.database_url:
        settings = settings.model_copy(update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:5433/orders"})
    catalogue = await catalogue_from_api(url, mint_token(settings, "bench-catalogue", "customer"))
    client: Client | None
    try:
        client = await connect_client(settings)
    except Exception as error:
        say(f"cannot reach Temporal at {settings.temporal_address} ({error}); no history figures or invariants")
        client = None
    return await measure(args, None, url, settings, client, catalogue, None)


async def prepare_catalogue(
    engine: AsyncEngine, settings: Settings, run_id: str, plain_skus: int = 1
) -> tuple[Catalogue, dict[str, int]]:
    """The SKUs of this run, in the default warehouse unless said otherwise: a cheap one and one at
    the review threshold with plenty of stock; two held by one warehouse each (the default one and
    a second warehouse of this run), so an order of both ships twice; and one never in stock, so an
    order asking for it is only partly available (whatever the run's length, it never runs dry).
    With ``plain_skus`` > 1, that many cheap SKUs in all (the cheap one first), for orders of as
    many lines."""
    cheap, expensive = f"BENCH-{run_id}-MUG", f"BENCH-{run_id}-SOFA"
    near, far, scarce = f"BENCH-{run_id}-LAMP", f"BENCH-{run_id}-RUG", f"BENCH-{run_id}-VASE"
    second = f"BENCH-{run_id}-WH2"
    async with engine.begin() as conn:
        last = (await conn.execute(select(func.coalesce(func.max(warehouses.c.preference), 0)))).scalar_one()
        await conn.execute(insert(warehouses).values(id=second, name=f"bench {run_id}", preference=last + 1))
    spread = {
        cheap: {DEFAULT_WAREHOUSE: BENCH_STOCK},
        expensive: {DEFAULT_WAREHOUSE: BENCH_STOCK},
        near: {DEFAULT_WAREHOUSE: BENCH_STOCK},
        far: {second: BENCH_STOCK},
        scarce: {DEFAULT_WAREHOUSE: 0},
    }
    plain = [cheap] + [f"BENCH-{run_id}-P{n:02d}" for n in range(1, plain_skus)]
    spread |= {sku: {DEFAULT_WAREHOUSE: BENCH_STOCK} for sku in plain[1:]}
    await upsert_products(
        engine,
        [
            (cheap, "bench mug", CHEAP_PRICE, BENCH_STOCK),
            (expensive, "bench sofa", settings.review_threshold_minor, BENCH_STOCK),
            (near, "bench lamp", CHEAP_PRICE, BENCH_STOCK),
            (far, "bench rug", CHEAP_PRICE, BENCH_STOCK),
            (scarce, "bench vase", CHEAP_PRICE, 0),
            *[(sku, f"bench item {sku[-3:]}", CHEAP_PRICE, BENCH_STOCK) for sku in plain[1:]],
        ],
        stock=spread,
    )
    per_place = {(warehouse, sku): qty for sku, places in spread.items() for warehouse, qty in places.items()}
    catalogue = Catalogue(
        cheap,
        expensive,
        split_skus=(near, far),
        scarce_sku=scarce,
        warehouse_stock=per_place,
        plain_skus=tuple(plain),
    )
    return catalogue, {sku: sum(places.values()) for sku, places in spread.items()}


async def catalogue_from_api(url: str, token: str) -> Catalogue:
    """The cheapest and the dearest product a running platform sells."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get("/v1/products", headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        body = response.json()
    products = body["items"] if isinstance(body, dict) else body
    ordered = sorted(products, key=lambda p: p["price"] if "price" in p else p.get("unit_price", 0))
    return Catalogue(ordered[0]["sku"], ordered[-1]["sku"])


async def check_invariants(
    settings: Settings,
    client: Client,
    order_ids: list[str],
    initial_stock: dict[str, int] | None,
    initial_warehouse_stock: dict[tuple[str, str], int] | None = None,
) -> InvariantReport:
    engine = create_engine(settings, pool_size=5)
    try:
        checker = InvariantChecker(engine, client, settings.payment_base_url)
        return await checker.check(
            [uuid.UUID(i) for i in order_ids],
            initial_stock=initial_stock,
            initial_warehouse_stock=initial_warehouse_stock or None,
        )
    finally:
        await engine.dispose()


async def run_load(
    url: str,
    settings: Settings,
    catalogue: Catalogue,
    args: argparse.Namespace,
    *,
    rate: float | None = None,
    concurrency: int | None = None,
    duration: float | None = None,
    run_id: str | None = None,
    extra=None,
    mix: Mix | None = None,
    max_orders: int | None = None,
) -> LoadResult:
    """One load phase with the mix (unless ``mix`` is given) and client behaviour of ``args``."""
    generator = LoadGenerator(
        url,
        settings,
        catalogue,
        mix=mix
        or Mix(
            decline=args.decline,
            cancel=args.cancel,
            expensive=args.expensive,
            reads=args.reads,
            split=args.split,
            partial=args.partial,
        ),
        customers=args.customers,
        seed=args.seed,
        poll_interval_s=args.poll_interval,
        wait_s=args.wait,
        submit_patience_s=args.submit_patience,
        status_line=status_printer(),
        run_id=run_id,
    )
    return await generator.run(
        duration_s=duration or args.duration,
        rate=rate,
        concurrency=concurrency,
        max_orders=max_orders or args.max_orders,
        drain_timeout_s=args.drain_timeout,
        extra=extra,
    )


# --- the phases -------------------------------------------------------------------------------------


async def measure(
    args: argparse.Namespace,
    stack: BenchStack | None,
    url: str,
    settings: Settings,
    client: Client | None,
    catalogue: Catalogue,
    initial_stock: dict[str, int] | None,
) -> dict:
    """The main load phase, then (as ``args`` ask) half rate, spike, invariants and baselines."""
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "cpus": os.cpu_count() or 0,
    }
    run_id = uuid.uuid4().hex[:6]
    if stack is not None:
        report["stack"] = {
            "workers": len(stack.workers),
            "settings": dict(stack.options.settings),
            "temporal_dynamic_config": dict(stack.options.temporal_dynamic_config),
        }

    result = await _platform(args, stack, url, settings, catalogue, run_id, report)
    summary = report["platform"]["summary"]
    accepted_ids = [o.order_id for o in result.accepted]
    completed_ids = [o.order_id for o in result.ended if o.status == "completed"]
    report["temporal_per_completed_order"] = (
        await temporal_cost(client, completed_ids, args.history_sample) if client else {"sampled": 0}
    )
    report["temporal_per_kind"] = {
        kind: await temporal_cost(client, ids, args.history_sample) if client else {"sampled": 0}
        for kind, ids in completed_by_kind(result).items()
    }

    if args.half_rate_check and summary["throughput_ended_per_s"] > 0:
        half = round(summary["throughput_ended_per_s"] / 2, 2)
        say(f"half the measured rate: open loop at {half}/s")
        half_result = await run_load(url, settings, catalogue, args, rate=half, run_id=run_id + "h")
        report["half_rate"] = {
            "mode": f"open loop {half}/s (half of {summary['throughput_ended_per_s']}/s) for {args.duration:.0f} s",
            "summary": summarize(half_result),
            "timeline": timeline(half_result),
        }
        accepted_ids += [o.order_id for o in half_result.accepted]

    if args.spike:
        spike_result = await _spike(args, stack, url, settings, catalogue, run_id, summary, report)
        accepted_ids += [o.order_id for o in spike_result.accepted]

    if client is not None and settings.database_url:
        say(f"checking invariants over {len(accepted_ids)} accepted orders")
        invariants = await check_invariants(
            settings, client, accepted_ids, initial_stock, catalogue.warehouse_stock if initial_stock else None
        )
        report["invariants"] = {
            "ok": invariants.ok,
            "table": invariants.table(),
            "checks": [asdict(c) | {"problems": c.problems[:10]} for c in invariants.checks],
        }

    if stack is not None and client is not None and args.baselines:
        await _baselines(args, stack, client, catalogue, report)
    return report


def completed_by_kind(result: LoadResult) -> dict[str, list[str]]:
    """Completed orders per fulfilment kind: ``single`` (plain orders, one shipment), ``split`` (two
    warehouses, two shipments) and ``amended`` (partly available, kept what was reserved)."""
    kinds: dict[str, list[str]] = {"single": [], "split": [], "amended": []}
    for order in result.ended:
        if order.status != "completed" or order.order_id is None:
            continue
        if order.kind == "ok":
            kinds["single"].append(order.order_id)
        elif order.kind == "split":
            kinds["split"].append(order.order_id)
        elif order.kind == "partial" and order.amended:
            kinds["amended"].append(order.order_id)
    return kinds


async def _platform(
    args: argparse.Namespace,
    stack: BenchStack | None,
    url: str,
    settings: Settings,
    catalogue: Catalogue,
    run_id: str,
    report: dict[str, Any],
) -> LoadResult:
    """The main load phase (open or closed loop), with CPU, memory and provider calls around it."""
    if args.rate is not None:
        mode, kwargs = f"open loop {args.rate}/s for {args.duration:.0f} s", {"rate": args.rate}
    else:
        mode, kwargs = (
            f"closed loop, concurrency {args.concurrency}, {args.duration:.0f} s",
            {"concurrency": args.concurrency},
        )
    rss: dict[str, Any] = {}
    samples: list[dict] = []
    if stack is not None:
        rss["start"] = stack.rss_mb()

    async def sample_rss() -> None:
        if stack is None:
            return
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            await asyncio.sleep(min(10.0, max(0.1, end - time.monotonic())))
            samples.append({"t": round(time.monotonic() - began, 1), **(await asyncio.to_thread(stack.rss_mb))})

    began = time.monotonic()
    cpu_before = await asyncio.to_thread(stack.cpu_seconds) if stack is not None else None
    result = await run_load(url, settings, catalogue, args, run_id=run_id, extra=sample_rss, **kwargs)
    report["platform"] = {"mode": mode, "summary": summarize(result), "timeline": timeline(result)}
    if stack is not None and cpu_before is not None:
        report["platform"]["cpu"] = cpu_per_unit(
            cpu_before, await asyncio.to_thread(stack.cpu_seconds), len(result.ended), time.monotonic() - began
        )
    if settings.database_url:
        report["platform"]["provider_calls"] = await provider_call_peaks(settings, result.started, time.time())
    if stack is not None:
        rss["end"] = stack.rss_mb()
        rss["samples"] = samples
        report["rss_mb"] = rss
    return result


async def _spike(
    args: argparse.Namespace,
    stack: BenchStack | None,
    url: str,
    settings: Settings,
    catalogue: Catalogue,
    run_id: str,
    summary: dict[str, Any],
    report: dict[str, Any],
) -> LoadResult:
    """An open loop at ``--spike-factor`` times the sustainable rate, with the gateway's and the
    kernel's view of it."""
    sustainable = args.sustainable_rate or summary["throughput_ended_per_s"]
    spike_rate = round(sustainable * args.spike_factor, 1)
    say(f"spike: {spike_rate}/s ({args.spike_factor:g}x {sustainable}/s) for {args.spike_duration:.0f} s, then drain")
    gateway_before = await gateway_answer_times(url)
    kernel_before = kernel_tcp_counters()
    if stack is not None:
        # The load generator stands for callers on other machines: it must not be starved by the
        # stack it overloads, or it cannot offer the spike at all.
        await asyncio.to_thread(stack.set_priority, 5)
    try:
        result = await run_load(
            url, settings, catalogue, args, rate=spike_rate, duration=args.spike_duration, run_id=run_id + "s"
        )
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.set_priority, 0)
    report["spike"] = {
        "mode": f"open loop {spike_rate}/s ({args.spike_factor:g}x {sustainable}/s) for {args.spike_duration:.0f} s",
        "summary": summarize(result),
        "timeline": timeline(result),
    }
    report["spike"]["gateway"] = subtract(await gateway_answer_times(url), gateway_before)
    report["spike"]["kernel_tcp"] = subtract_counters(kernel_tcp_counters(), kernel_before)
    if settings.database_url:
        report["spike"]["provider_calls"] = await provider_call_peaks(settings, result.started, time.time())
    return result


async def _baselines(
    args: argparse.Namespace, stack: BenchStack, client: Client, catalogue: Catalogue, report: dict[str, Any]
) -> None:
    """Both baselines at the platform's concurrency, and the platform's throughput as a ratio of each."""
    cost = report["temporal_per_completed_order"]
    concurrency = args.concurrency or max(8, int((args.rate or 10) * 2))
    base_duration = min(args.duration, args.baseline_duration)
    say(f"baseline (a): bare engine, concurrency {concurrency}, {base_duration:.0f} s")
    bare = await bare_engine_baseline(
        stack, client, cost if cost.get("sampled") else {}, concurrency=concurrency, duration=base_duration
    )
    say(f"baseline (b): direct handler, concurrency {concurrency}, {base_duration:.0f} s")
    direct = await direct_baseline(stack, catalogue, concurrency=concurrency, duration=base_duration)
    report["baselines"] = {"bare_engine": bare, "direct": direct}
    if not getattr(args, "dbos", True):
        report["baselines"]["dbos"] = {"skipped": "--no-dbos"}
    elif dbos_installed():
        say(f"baseline (c): the same flow on DBOS, concurrency {concurrency}, {base_duration:.0f} s")
        report["baselines"]["dbos"] = await dbos_baseline(
            stack, catalogue, concurrency=concurrency, duration=base_duration
        )
    else:
        say(DBOS_MISSING)
        report["baselines"]["dbos"] = {"skipped": DBOS_MISSING}
    if args.rate is not None:
        report["ratios"] = {
            "note": "open loop: throughput is the offered rate; run closed loop (--concurrency) for ratios"
        }
        return
    platform = report["platform"]["summary"]["throughput_ended_per_s"]
    report["ratios"] = {
        "platform/bare_engine (ended orders per s / workflows per s)": round(platform / bare["completed_per_s"], 2)
        if bare["completed_per_s"]
        else None,
        "platform/direct (ended orders per s / orders per s)": round(platform / direct["completed_per_s"], 2)
        if direct["completed_per_s"]
        else None,
    }
    own = own_cpu_ms(report["platform"].get("cpu"))
    engine = engine_cpu_ms(bare.get("cpu") or {})
    if own and engine:
        # Issue 12's target: at most 1.4 x the bare engine's CPU per workflow (a ratio >= 0.7).
        report["ratios"][f"platform-own CPU per ended order / bare-engine CPU per workflow ({own} / {engine} ms)"] = (
            round(own / engine, 2)
        )
    dbos = report["baselines"]["dbos"]
    if "skipped" not in dbos:
        dbos_own = own_cpu_ms(dbos.get("cpu"))
        report["ratios"]["platform/dbos (ended orders per s / completed orders per s)"] = (
            round(platform / dbos["completed_per_s"], 2) if dbos["completed_per_s"] else None
        )
        report["ratios"]["platform/dbos own CPU per order (ms per ended order / ms per completed order)"] = (
            round(own / dbos_own, 2) if own and dbos_own else None
        )
