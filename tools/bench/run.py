"""`orders bench`: measured throughput, latency and Temporal cost per order, against two baselines.

By default it starts its own platform in a temporary folder (PostgreSQL, Temporal dev server with
file persistence, sandbox, worker(s), API — all child processes, see :mod:`bench.stack`), drives the
public HTTP API with a realistic mix (:mod:`bench.loadgen`), then, on the same servers:

* (a) the bare engine: a workflow with the same number of activities, local activities and signals
  as an average completed order, doing no I/O (:mod:`bench.bare_engine`);
* (b) the direct implementation: one FastAPI handler doing the same stock, payment and shipping
  calls in line (:mod:`bench.direct_baseline`).

``--url http://127.0.0.1:8000`` drives a running `orders dev` instead (no baselines then).
Temporal actions per completed order are counted from the histories of a sample of completed
workflows; the counting is documented in :func:`count_actions`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.loadgen import (
    ROUTE_SUBMIT,
    TERMINAL,
    Catalogue,
    LoadGenerator,
    LoadResult,
    Mix,
    require_loopback,
    status_printer,
)

CHEAP_PRICE = 1_999
LOCAL_ACTIVITY_MARKER = "core_local_activity"  # the marker name of the Core-based SDKs
BENCH_STOCK = 10_000_000


def _say(message: str) -> None:
    print(f"orders bench: {message}", file=sys.stderr, flush=True)


# --- figures ---------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def summarize(result: LoadResult) -> dict[str, Any]:
    """The figures of one load run (JSON-ready)."""
    duration = max(result.duration_s, 1e-9)
    accepted = result.accepted
    in_window = [o for o in result.ended if o.ended_at is not None and o.ended_at <= result.duration_s]
    routes: dict[str, list[float]] = {}
    for sample in result.samples:
        if sample.status:
            routes.setdefault(sample.route, []).append(sample.latency_s)
    outcomes = Counter(f"{o.status}/{o.failure_reason}" if o.failure_reason else o.status for o in result.ended)
    server = [o.server_latency_s for o in result.ended if o.status == "completed" and o.server_latency_s is not None]
    shipped = [o.shipped_latency_s for o in result.ended if o.shipped_latency_s is not None]
    statuses = Counter(str(s.status) if s.status else "no answer" for s in result.samples)
    bad_5xx = [s for s in result.samples if s.status >= 500 and not (s.status == 503 and s.retry_after)]
    return {
        "duration_s": round(result.duration_s, 2),
        "drain_s": None if result.drain_s is None else round(result.drain_s, 2),
        "orders_submitted": len(result.orders),
        "orders_accepted": len(accepted),
        "orders_ended": len(result.ended),
        "orders_unfinished": len(accepted) - len([o for o in accepted if o.status in TERMINAL]),
        "unfinished_by_last_status": dict(
            Counter(o.last_status or "never read" for o in accepted if o.status not in TERMINAL)
        ),
        "accepted_per_s": round(
            len([o for o in accepted if o.accepted_at is not None and o.accepted_at <= result.duration_s]) / duration, 2
        ),
        "ended_per_s": round(len(in_window) / duration, 2),
        "completed_per_s": round(len([o for o in in_window if o.status == "completed"]) / duration, 2),
        # All ended orders over the whole time until the last one ended (ramp-up and tail included):
        # the figure compared with the baselines, which are measured the same way.
        "throughput_ended_per_s": round(
            len(result.ended) / max([o.ended_at for o in result.ended if o.ended_at] or [1.0]), 2
        ),
        "outcomes": dict(outcomes.most_common()),
        "latency_ms": {
            route: {
                "n": len(v),
                "p50": ms(percentile(v, 0.5)),
                "p95": ms(percentile(v, 0.95)),
                "p99": ms(percentile(v, 0.99)),
            }
            for route, v in sorted(routes.items())
        },
        "submit_to_shipped_ms": {"p50": ms(percentile(shipped, 0.5)), "p99": ms(percentile(shipped, 0.99))},
        "submit_to_completed_ms": {"p50": ms(percentile(server, 0.5)), "p99": ms(percentile(server, 0.99))},
        "http_statuses": dict(sorted(statuses.items())),
        "http_5xx_not_503_with_retry_after": len(bad_5xx),
        "no_answer": statuses.get("no answer", 0),
        "no_answer_by_error": dict(Counter(s.error or "?" for s in result.samples if not s.status)),
        "submitted_per_s": round(len(result.orders) / duration, 2),  # the offered load the generator managed
        "generator_max_loop_lag_s": round(result.max_loop_lag_s, 2),
    }


def timeline(result: LoadResult) -> list[dict[str, Any]]:
    """Per second: orders accepted and ended, and submit latency percentiles."""
    seconds = int(max([result.duration_s] + [o.ended_at or 0 for o in result.orders])) + 1
    rows = [{"t": t, "accepted": 0, "ended": 0, "submit_ms": []} for t in range(seconds)]
    for o in result.orders:
        if o.accepted_at is not None and int(o.accepted_at) < seconds:
            rows[int(o.accepted_at)]["accepted"] += 1
        if o.ended_at is not None and int(o.ended_at) < seconds:
            rows[int(o.ended_at)]["ended"] += 1
    for s in result.samples:
        if s.route == ROUTE_SUBMIT and s.status and int(s.at) < seconds:
            rows[int(s.at)]["submit_ms"].append(s.latency_s * 1000)
    for row in rows:
        lat = row.pop("submit_ms")
        row["submit_p50_ms"] = round(percentile(lat, 0.5), 1) if lat else None
        row["submit_p99_ms"] = round(percentile(lat, 0.99), 1) if lat else None
    return rows


def count_actions(events) -> dict[str, int]:
    """Temporal actions and history events of one workflow, counted from its history.

    Actions, as Temporal Cloud bills them (approximately): the workflow start (1), every activity
    scheduled plus every retry attempt, one per workflow task that ran local activities (Cloud
    counts the local activities of one workflow task as one action), every timer started, signal
    received, update accepted, search-attribute upsert and properties modification. Patch markers
    are not local activities, and upserts of only ``TemporalChangeVersion`` (written by the SDK for
    ``workflow.patched``) are exempt, as Cloud documents: neither is counted.
    """
    from temporalio.api.enums.v1 import EventType

    types = Counter(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events)
    retries = sum(
        max(0, e.activity_task_started_event_attributes.attempt - 1)
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    )
    local = [
        e.marker_recorded_event_attributes
        for e in events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    ]
    local_batches = len({marker.workflow_task_completed_event_id for marker in local})
    upserts = sum(
        1
        for e in events
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
        and set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
        != {"TemporalChangeVersion"}
    )
    actions = (
        1
        + types["ACTIVITY_TASK_SCHEDULED"]
        + retries
        + local_batches
        + types["TIMER_STARTED"]
        + types["WORKFLOW_EXECUTION_SIGNALED"]
        + types["WORKFLOW_EXECUTION_UPDATE_ACCEPTED"]
        + upserts
        + types["WORKFLOW_PROPERTIES_MODIFIED"]
    )
    return {
        "actions": actions,
        "history_events": len(events),
        "activities": types["ACTIVITY_TASK_SCHEDULED"],
        "activity_retries": retries,
        "local_activities": len(local),
        "local_activity_batches": local_batches,
        "timers": types["TIMER_STARTED"],
        "signals": types["WORKFLOW_EXECUTION_SIGNALED"],
        "updates": types["WORKFLOW_EXECUTION_UPDATE_ACCEPTED"],
        "upserts": upserts,
        "workflow_tasks": types["WORKFLOW_TASK_COMPLETED"],
    }


async def temporal_cost(client, order_ids: list[str], sample: int) -> dict[str, Any]:
    """Mean actions and history events per completed order, from a sample of histories."""
    from core.domain import order_workflow_id

    chosen = order_ids[:sample]
    counts = []
    for order_id in chosen:
        history = await client.get_workflow_handle(order_workflow_id(order_id)).fetch_history()
        counts.append(count_actions(history.events))
    if not counts:
        return {"sampled": 0}
    return {"sampled": len(counts), **{key: round(statistics.mean(c[key] for c in counts), 2) for key in counts[0]}}


# --- the platform run --------------------------------------------------------------------------------


async def prepare_catalogue(engine, settings, run_id: str) -> tuple[Catalogue, dict[str, int]]:
    """Two SKUs of this run: a cheap one and one at the review threshold, with plenty of stock."""
    from core.db.catalog import upsert_products

    cheap, expensive = f"BENCH-{run_id}-MUG", f"BENCH-{run_id}-SOFA"
    await upsert_products(
        engine,
        [
            (cheap, "bench mug", CHEAP_PRICE, BENCH_STOCK),
            (expensive, "bench sofa", settings.review_threshold_minor, BENCH_STOCK),
        ],
    )
    return Catalogue(cheap, expensive), {cheap: BENCH_STOCK, expensive: BENCH_STOCK}


async def catalogue_from_api(url: str, token: str) -> Catalogue:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get("/v1/products", headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        body = response.json()
    products = body["items"] if isinstance(body, dict) else body
    ordered = sorted(products, key=lambda p: p["price"] if "price" in p else p.get("unit_price", 0))
    return Catalogue(ordered[0]["sku"], ordered[-1]["sku"])


async def check_invariants(settings, client, order_ids: list[str], initial_stock: dict[str, int] | None):
    from bench.invariants import InvariantChecker
    from core.db.engine import create_engine

    engine = create_engine(settings, pool_size=5)
    try:
        checker = InvariantChecker(engine, client, settings.payment_base_url)
        return await checker.check([uuid.UUID(i) for i in order_ids], initial_stock=initial_stock)
    finally:
        await engine.dispose()


async def run_load(
    url, settings, catalogue, args, *, rate=None, concurrency=None, duration=None, run_id=None, extra=None, quiet=False
) -> LoadResult:
    generator = LoadGenerator(
        url,
        settings,
        catalogue,
        mix=Mix(decline=args.decline, cancel=args.cancel, expensive=args.expensive, reads=args.reads),
        customers=args.customers,
        seed=args.seed,
        poll_interval_s=args.poll_interval,
        status_line=None if quiet else status_printer(),
        run_id=run_id,
    )
    return await generator.run(
        duration_s=duration or args.duration,
        rate=rate,
        concurrency=concurrency,
        max_orders=args.max_orders,
        drain_timeout_s=args.drain_timeout,
        extra=extra,
    )


async def gateway_answer_times(url: str) -> dict[str, dict[str, float]]:
    """The gateway's own view of how fast it answered, from its /metrics histogram: per route,
    requests answered and how many took longer than 15 s (the load generator's deadline). Take two snapshots and :func:`subtract`."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(f"{url}/metrics")).text
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "orders_http_request_duration_seconds":
            continue
        for sample in family.samples:
            route = f"{sample.labels.get('method')} {sample.labels.get('route')}"
            entry = found.setdefault(route, {"count": 0.0, "within_15s": 0.0, "buckets": {}})
            if sample.name.endswith("_count"):
                entry["count"] = sample.value
            elif sample.name.endswith("_bucket"):
                upper = float(sample.labels["le"])
                entry["buckets"][upper] = sample.value
                if upper == 15.0:
                    entry["within_15s"] = sample.value
    return found


def subtract(after: dict[str, dict], before: dict[str, dict]) -> dict[str, dict]:
    """Per route between two snapshots: requests answered, how many after 15 s, and the answer
    time's p50/p99 by the gateway's clock (the upper bound of the histogram bucket they fall in)."""
    out = {}
    for route, now in after.items():
        then = before.get(route, {"count": 0.0, "within_15s": 0.0})
        count = int(now["count"] - then["count"])
        if not count:
            continue
        out[route] = {"answered": count, "over_15s": count - int(now["within_15s"] - then["within_15s"])}
        buckets = now.get("buckets") or {}
        if buckets:
            earlier = then.get("buckets") or {}
            cumulative = sorted((upper, n - earlier.get(upper, 0.0)) for upper, n in buckets.items())
            for name, q in (("p50_s", 0.5), ("p99_s", 0.99)):
                out[route][name] = next((upper for upper, n in cumulative if n >= q * count), None)
    return out


#: Kernel TCP counters that tell where a request the gateway never saw could have waited: a full
#: listen (accept) queue drops the connection's SYN or final ACK, and the client retransmits its SYN
#: after 1, 3, 7 and 15 s, each retransmit a second or more lost before the gateway can read a byte.
KERNEL_TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPSynRetrans", "TCPTimeouts")


def kernel_tcp_counters(path: Path = Path("/proc/net/netstat")) -> dict[str, int] | None:
    """The machine's (network namespace's) TcpExt counters named in KERNEL_TCP_COUNTERS, or None
    where the kernel does not publish them (not Linux). Take two snapshots and :func:`subtract_counters`."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            return {name: int(table[name]) for name in KERNEL_TCP_COUNTERS if name in table}
    return None


def subtract_counters(after: dict[str, int] | None, before: dict[str, int] | None) -> dict[str, int] | None:
    if after is None or before is None:
        return None
    return {name: after[name] - before.get(name, 0) for name in after}


async def provider_call_peaks(settings, since: float, until: float, window_s: int = 5) -> dict[str, Any]:
    """Provider calls between two wall-clock times, read from the sandbox's own ledger
    (authorizations and money movements for payments, shipments for the carrier), next to the
    workers' configured caps: the busiest second, and the busiest ``window_s`` seconds as a rate.
    Temporal enforces a cap per task queue with a token bucket, so one second may burst above it;
    the windowed rate is the one to hold against the cap. Declined or failed calls leave no row,
    so this is a floor."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from core.db.engine import create_engine

    query = text(
        """
        SELECT kind, extract(epoch FROM second)::bigint AS second, count(*) AS n FROM (
            SELECT 'payments' AS kind, date_trunc('second', created_at) AS second FROM sandbox_authorizations WHERE created_at >= :a AND created_at < :b
            UNION ALL
            SELECT 'payments', date_trunc('second', created_at) FROM sandbox_money_movements WHERE created_at >= :a AND created_at < :b
            UNION ALL
            SELECT 'shipping', date_trunc('second', created_at) FROM sandbox_shipments WHERE created_at >= :a AND created_at < :b
        ) AS calls GROUP BY kind, second
        """
    )
    engine = create_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    query, {"a": datetime.fromtimestamp(since, UTC), "b": datetime.fromtimestamp(until, UTC)}
                )
            ).all()
    finally:
        await engine.dispose()
    per_second: dict[str, dict[int, int]] = {"payments": {}, "shipping": {}}
    for row in rows:
        per_second[row.kind][int(row.second)] = int(row.n)
    caps = {"payments": settings.payments_max_per_second, "shipping": settings.shipping_max_per_second}
    out = {}
    for kind, counts in per_second.items():
        windowed = max((sum(counts.get(t + k, 0) for k in range(window_s)) for t in counts), default=0) / window_s
        out[kind] = {
            "peak_per_s": max(counts.values(), default=0),
            f"peak_{window_s}s_per_s": round(windowed, 1),
            "total": sum(counts.values()),
            "cap_per_s": caps[kind],
        }
    return out


# --- baselines ----------------------------------------------------------------------------------------


async def bare_engine_baseline(stack, client, shape: dict, *, concurrency: int, duration: float) -> dict:
    from bench.bare_engine import BareInput, drive
    from core.config import settings_env
    from devstack.processes import ManagedProcess

    queue = f"bare-{uuid.uuid4().hex[:6]}"
    log_path = stack.logs / "bare-worker.log"
    worker = ManagedProcess(
        "bare-worker",
        [sys.executable, "-m", "bench.bare_engine", "--address", stack.temporal.address, "--task-queue", queue],
        settings_env(stack.settings),
        log_path,
        cwd=Path(__file__).resolve().parents[2],
        ready_check=lambda: log_path.exists() and "bare worker running" in log_path.read_text(errors="replace"),
        ready_timeout=30,
    )
    await asyncio.to_thread(worker.start)
    try:
        await asyncio.to_thread(worker.wait_ready)
        bare = BareInput(
            activities=round(shape.get("activities", 5)),
            local_activities=round(shape.get("local_activities", 5)),
            signals=round(shape.get("signals", 3)),
            upserts=round(shape.get("upserts", 0)),
        )
        from bench.stack import cpu_per_unit, own_cpu_seconds, tree_cpu_seconds

        def cpu() -> dict[str, float]:
            return {
                "temporal": tree_cpu_seconds(stack.temporal.pid),
                "bare worker": tree_cpu_seconds(worker.pid),
                "load generator": own_cpu_seconds(),
            }

        before, began = cpu(), time.monotonic()
        figures = await drive(client, queue, bare, concurrency=concurrency, duration_s=duration)
        usage = cpu_per_unit(before, cpu(), figures["completed"], time.monotonic() - began)
        return {"shape": asdict(bare), "concurrency": concurrency, **figures, "cpu": usage}
    finally:
        await asyncio.to_thread(worker.stop)


async def direct_baseline(stack, catalogue: Catalogue, *, concurrency: int, duration: float) -> dict:
    import httpx

    from bench.loadgen import ADDRESS
    from core.config import settings_env
    from devstack.processes import ManagedProcess, free_port

    port = free_port()
    process = ManagedProcess(
        "direct",
        [sys.executable, "-m", "bench.direct_baseline", "--port", str(port)],
        settings_env(stack.settings),
        stack.logs / "direct.log",
        cwd=Path(__file__).resolve().parents[2],
        ready_url=f"http://127.0.0.1:{port}/docs",
        ready_timeout=30,
    )
    await asyncio.to_thread(process.start)
    latencies: list[float] = []
    statuses: Counter = Counter()
    try:
        await asyncio.to_thread(process.wait_ready)
        end = time.monotonic() + duration
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            async def loop() -> None:
                while time.monotonic() < end:
                    started = time.monotonic()
                    try:
                        response = await http.post(
                            "/direct/orders",
                            json={"sku": catalogue.cheap_sku, "quantity": 1, "shipping_address": ADDRESS},
                        )
                        statuses[response.status_code] += 1
                        if response.status_code == 201:
                            latencies.append(time.monotonic() - started)
                    except httpx.HTTPError:
                        statuses["no answer"] += 1

            began = time.monotonic()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            elapsed = time.monotonic() - began
    finally:
        await asyncio.to_thread(process.stop)
    return {
        "concurrency": concurrency,
        "completed": len(latencies),
        "elapsed_s": round(elapsed, 2),
        "completed_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": {"p50": ms(percentile(latencies, 0.5)), "p99": ms(percentile(latencies, 0.99))},
        "http_statuses": {str(k): v for k, v in statuses.items()},
    }


# --- reporting -------------------------------------------------------------------------------------------


def format_report(report: dict) -> str:
    lines = []
    for name in ("platform", "half_rate", "spike"):
        run = report.get(name)
        if not run:
            continue
        s = run["summary"]
        lines.append(f"\n== {name}: {run['mode']} ==")
        lines.append(
            f"accepted/s {s['accepted_per_s']}  ended/s {s['ended_per_s']}  completed/s {s['completed_per_s']} (in the load window)  "
            f"throughput {s['throughput_ended_per_s']} ended orders/s (start to last end)  "
            f"accepted {s['orders_accepted']}/{s['orders_submitted']}  unfinished {s['orders_unfinished']} {s['unfinished_by_last_status'] or ''}  drain {s['drain_s']} s"
        )
        lines.append(f"{'route':28} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
        for route, lat in s["latency_ms"].items():
            lines.append(f"{route:28} {lat['n']:>6} {lat['p50']!s:>8} {lat['p95']!s:>8} {lat['p99']!s:>8}")
        lines.append(
            f"submit -> shipped   p50 {s['submit_to_shipped_ms']['p50']} ms  p99 {s['submit_to_shipped_ms']['p99']} ms"
        )
        lines.append(
            f"submit -> completed p50 {s['submit_to_completed_ms']['p50']} ms  p99 {s['submit_to_completed_ms']['p99']} ms (includes the carrier's delivery delay)"
        )
        lines.append(
            f"HTTP statuses {s['http_statuses']}  5xx other than 503+Retry-After: {s['http_5xx_not_503_with_retry_after']}"
            + (f"  no answer: {s['no_answer_by_error']}" if s.get("no_answer") else "")
        )
        lines.append(
            f"load generator: {s['submitted_per_s']} orders/s offered, its event loop {s['generator_max_loop_lag_s']} s late at worst"
        )
        lines.append(f"outcomes {s['outcomes']}")
        if run.get("cpu"):
            lines.append(_cpu_line("CPU per ended order", run["cpu"]))
        if run.get("gateway"):
            answered = sum(v["answered"] for v in run["gateway"].values())
            slow = sum(v["over_15s"] for v in run["gateway"].values())
            lines.append(
                f"the gateway's own clock (/metrics): {answered} requests answered, {slow} of them after more than 15 s; per route, p50 / p99 at most:"
            )
            for route, v in sorted(run["gateway"].items()):
                if "p99_s" in v:
                    lines.append(f"  {route:32} {v['answered']:>6}  {v['p50_s']:g} s / {v['p99_s']:g} s")
        if run.get("kernel_tcp") is not None:
            k = run["kernel_tcp"]
            lines.append(
                f"the kernel (whole machine) meanwhile: {k.get('ListenOverflows', 0)} listen-queue overflows, {k.get('ListenDrops', 0)} connection attempts dropped, "
                f"{k.get('TCPSynRetrans', 0)} SYN retransmissions, {k.get('TCPTimeouts', 0)} retransmission timeouts"
            )
        if run.get("provider_calls"):
            lines.append(
                "provider calls: "
                + ", ".join(
                    f"{kind} busiest 5 s {v['peak_5s_per_s']}/s, busiest second {v['peak_per_s']} (cap {v['cap_per_s']:g}/s, {v['total']} in all)"
                    for kind, v in run["provider_calls"].items()
                )
            )
    cost = report.get("temporal_per_completed_order")
    if cost and cost.get("sampled"):
        lines.append(
            f"\nTemporal per completed order (histories of {cost['sampled']}): actions {cost['actions']}, history events {cost['history_events']} "
            f"(activities {cost['activities']}, retries {cost['activity_retries']}, local activities {cost['local_activities']} in {cost['local_activity_batches']} tasks, "
            f"timers {cost['timers']}, signals {cost['signals']}, updates {cost['updates']}, upserts {cost['upserts']}, workflow tasks {cost['workflow_tasks']})"
        )
    base = report.get("baselines") or {}
    if base:
        lines.append("\n== baselines (same servers, same concurrency) ==")
        if "bare_engine" in base:
            b = base["bare_engine"]
            lines.append(
                f"bare engine {b['shape']}: {b['completed_per_s']} workflows/s, p50 {b['latency_ms']['p50']} ms, p99 {b['latency_ms']['p99']} ms"
            )
            if b.get("cpu"):
                lines.append(_cpu_line("CPU per bare workflow", b["cpu"]))
        if "direct" in base:
            d = base["direct"]
            lines.append(
                f"direct handler: {d['completed_per_s']} orders/s, p50 {d['latency_ms']['p50']} ms, p99 {d['latency_ms']['p99']} ms"
            )
        for key, value in (report.get("ratios") or {}).items():
            lines.append(f"{key}: {value}")
    rss = report.get("rss_mb")
    if rss:
        lines.append(f"\nRSS MB at start {rss.get('start')}\nRSS MB at end   {rss.get('end')}")
    inv = report.get("invariants")
    if inv:
        lines.append("\n" + inv["table"])
    return "\n".join(lines)


def _cpu_line(title: str, cpu: dict) -> str:
    parts = ", ".join(f"{name} {value}" for name, value in cpu["cpu_ms_per_unit"].items())
    return f"{title}: {cpu['cpu_ms_per_unit_total']} ms ({parts}); machine busy {cpu['machine_busy']:.0%}"


def write_chart(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say("matplotlib is not installed: no chart")
        return False
    runs = [(name, report[name]) for name in ("platform", "half_rate", "spike") if report.get(name)]
    fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 6), squeeze=False, sharex="col")
    for column, (name, run) in enumerate(runs):
        rows = run["timeline"]
        t = [r["t"] for r in rows]
        rate_ax, lat_ax = axes[0][column], axes[1][column]
        rate_ax.plot(t, [r["accepted"] for r in rows], label="accepted/s")
        rate_ax.plot(t, [r["ended"] for r in rows], label="ended/s")
        rate_ax.axvline(run["summary"]["duration_s"], color="grey", linestyle=":", label="load stops")
        rate_ax.set_title(f"{name}: {run['mode']}", fontsize=9)
        rate_ax.set_ylabel("orders per second")
        rate_ax.legend(fontsize=8)
        lat_ax.plot(t, [r["submit_p50_ms"] for r in rows], "o-", markersize=3, label="submit p50")
        lat_ax.plot(
            t,
            [r["submit_p99_ms"] for r in rows],
            "s-",
            markersize=3,
            label="submit p99 (by second the request started)",
        )
        lat_ax.set_ylabel("POST /v1/orders latency (ms)")
        lat_ax.set_xlabel("seconds")
        lat_ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# --- the command ---------------------------------------------------------------------------------------


def _parse_pairs(pairs: list[str], what: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            from cli.main import CliError

            raise CliError(f"{what} must look like KEY=VALUE, got {pair!r}")
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


async def _measure(
    args: argparse.Namespace, stack, url: str, settings, client, catalogue: Catalogue, initial_stock
) -> dict:
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:], "cpus": _cpus()}
    run_id = uuid.uuid4().hex[:6]
    rss: dict[str, Any] = {}
    if stack is not None:
        rss["start"] = stack.rss_mb()
        report["stack"] = {
            "workers": len(stack.workers),
            "settings": dict(stack.options.settings),
            "temporal_dynamic_config": dict(stack.options.temporal_dynamic_config),
        }

    if args.rate is not None:
        mode, kwargs = f"open loop {args.rate}/s for {args.duration:.0f} s", {"rate": args.rate}
    else:
        mode, kwargs = (
            f"closed loop, concurrency {args.concurrency}, {args.duration:.0f} s",
            {"concurrency": args.concurrency},
        )
    samples: list[dict] = []

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
    summary = summarize(result)
    report["platform"] = {"mode": mode, "summary": summary, "timeline": timeline(result)}
    if cpu_before is not None:
        from bench.stack import cpu_per_unit

        report["platform"]["cpu"] = cpu_per_unit(
            cpu_before, await asyncio.to_thread(stack.cpu_seconds), len(result.ended), time.monotonic() - began
        )
    if settings.database_url:
        report["platform"]["provider_calls"] = await provider_call_peaks(settings, result.started, time.time())
    accepted_ids = [o.order_id for o in result.accepted]
    completed_ids = [o.order_id for o in result.ended if o.status == "completed"]
    if stack is not None:
        rss["end"] = stack.rss_mb()
        rss["samples"] = samples
        report["rss_mb"] = rss

    report["temporal_per_completed_order"] = (
        await temporal_cost(client, completed_ids, args.history_sample) if client else {"sampled": 0}
    )

    if args.half_rate_check and summary["throughput_ended_per_s"] > 0:
        half = round(summary["throughput_ended_per_s"] / 2, 2)
        _say(f"half the measured rate: open loop at {half}/s")
        half_result = await run_load(url, settings, catalogue, args, rate=half, run_id=run_id + "h")
        report["half_rate"] = {
            "mode": f"open loop {half}/s (half of {summary['throughput_ended_per_s']}/s) for {args.duration:.0f} s",
            "summary": summarize(half_result),
            "timeline": timeline(half_result),
        }
        accepted_ids += [o.order_id for o in half_result.accepted]

    if args.spike:
        sustainable = args.sustainable_rate or summary["throughput_ended_per_s"]
        spike_rate = round(sustainable * args.spike_factor, 1)
        _say(
            f"spike: {spike_rate}/s ({args.spike_factor:g}x {sustainable}/s) for {args.spike_duration:.0f} s, then drain"
        )
        gateway_before = await gateway_answer_times(url)
        kernel_before = kernel_tcp_counters()
        if stack is not None:
            # The load generator stands for callers on other machines: on 2 shared cores it must
            # not be starved by the stack it overloads, or it cannot offer the spike at all.
            await asyncio.to_thread(stack.set_priority, 5)
        try:
            spike_result = await run_load(
                url, settings, catalogue, args, rate=spike_rate, duration=args.spike_duration, run_id=run_id + "s"
            )
        finally:
            if stack is not None:
                await asyncio.to_thread(stack.set_priority, 0)
        report["spike"] = {
            "mode": f"open loop {spike_rate}/s ({args.spike_factor:g}x {sustainable}/s) for {args.spike_duration:.0f} s",
            "summary": summarize(spike_result),
            "timeline": timeline(spike_result),
        }
        report["spike"]["gateway"] = subtract(await gateway_answer_times(url), gateway_before)
        report["spike"]["kernel_tcp"] = subtract_counters(kernel_tcp_counters(), kernel_before)
        if settings.database_url:
            report["spike"]["provider_calls"] = await provider_call_peaks(settings, spike_result.started, time.time())
        accepted_ids += [o.order_id for o in spike_result.accepted]

    if client is not None and settings.database_url:
        _say(f"checking invariants over {len(accepted_ids)} accepted orders")
        invariants = await check_invariants(settings, client, accepted_ids, initial_stock)
        report["invariants"] = {
            "ok": invariants.ok,
            "table": invariants.table(),
            "checks": [asdict(c) | {"problems": c.problems[:10]} for c in invariants.checks],
        }

    if stack is not None and args.baselines:
        cost = report["temporal_per_completed_order"]
        concurrency = args.concurrency or max(8, int((args.rate or 10) * 2))
        base_duration = min(args.duration, args.baseline_duration)
        _say(f"baseline (a): bare engine, concurrency {concurrency}, {base_duration:.0f} s")
        bare = await bare_engine_baseline(
            stack, client, cost if cost.get("sampled") else {}, concurrency=concurrency, duration=base_duration
        )
        _say(f"baseline (b): direct handler, concurrency {concurrency}, {base_duration:.0f} s")
        direct = await direct_baseline(stack, catalogue, concurrency=concurrency, duration=base_duration)
        report["baselines"] = {"bare_engine": bare, "direct": direct}
        if args.rate is None:
            platform = summary["throughput_ended_per_s"]
            report["ratios"] = {
                "platform/bare_engine (ended orders per s / workflows per s)": round(
                    platform / bare["completed_per_s"], 2
                )
                if bare["completed_per_s"]
                else None,
                "platform/direct (ended orders per s / orders per s)": round(platform / direct["completed_per_s"], 2)
                if direct["completed_per_s"]
                else None,
            }
        else:
            report["ratios"] = {
                "note": "open loop: throughput is the offered rate; run closed loop (--concurrency) for ratios"
            }
    return report


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


async def _run_against_url(args: argparse.Namespace) -> dict:
    from core.config import get_settings
    from core.temporal import connect_client
    from core.tokens import mint_token

    url = require_loopback(args.url)
    settings = get_settings()
    if not settings.database_url:
        settings = settings.model_copy(update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:5433/orders"})
    catalogue = await catalogue_from_api(url, mint_token(settings, "bench-catalogue", "customer"))
    try:
        client = await connect_client(settings)
    except Exception as error:
        _say(f"cannot reach Temporal at {settings.temporal_address} ({error}); no history figures or invariants")
        client = None
    return await _measure(args, None, url, settings, client, catalogue, None)


def run_bench(args: argparse.Namespace) -> dict:
    """Run the benchmark described by ``args``; returns the report (also printed / written)."""
    if args.url:
        return asyncio.run(_run_against_url(args))
    from bench.stack import BenchStack, StackOptions

    options = StackOptions(
        workers=args.workers,
        settings=_parse_pairs(args.set, "--set"),
        temporal_dynamic_config=_parse_pairs(args.temporal_config, "--temporal-config"),
        keep_data=args.keep_data,
        database_server_url=getattr(args, "database_url", None),  # not an option of `orders chaos`
    )
    with BenchStack(options, log=_say) as stack:

        async def go() -> dict:
            from core.db.engine import create_engine
            from core.temporal import connect_client

            engine = create_engine(stack.settings, pool_size=2)
            try:
                catalogue, initial = await prepare_catalogue(engine, stack.settings, uuid.uuid4().hex[:6])
            finally:
                await engine.dispose()
            client = await connect_client(stack.settings)
            return await _measure(args, stack, stack.api_url, stack.settings, client, catalogue, initial)

        return asyncio.run(go())


def cmd_bench(args: argparse.Namespace) -> int:
    from cli.main import CliError

    if args.rate is not None and args.concurrency is not None:
        raise CliError("give either --rate (open loop) or --concurrency (closed loop), not both")
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
        _say(f"wrote {args.json}")
    chart = args.chart or (args.json.with_suffix(".png") if args.json else None)
    if chart and write_chart(report, chart):
        _say(f"wrote {chart}")
    bad = report.get("invariants", {}).get("ok") is False
    for name in ("platform", "half_rate", "spike"):
        if report.get(name) and (
            report[name]["summary"]["http_5xx_not_503_with_retry_after"] or report[name]["summary"]["orders_unfinished"]
        ):
            bad = True
    return 1 if bad else 0


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `orders bench` and `orders chaos`."""
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
