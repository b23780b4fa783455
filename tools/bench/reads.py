"""`orders bench --read-path`: the gateway's read routes on their own, open loop.

A stack is started; a few real orders run through the gateway and the workflow to their end, and
their read-model views are copied (new ids, customers, tracking numbers and times) through the real
projection writer (:meth:`core.db.read_model.OrderReadModel.project`) until the read model holds
``--read-seed`` orders. Then, for each rate of ``--read-rates``, an open loop of
``GET /v1/orders/{id}`` (each caller reads its own orders) and ``GET /v1/orders`` (the caller's
first page, the route's default ``limit``) against the one gateway process, for ``--read-duration``
seconds: requests per second answered, p50/p99 (from the time each request was due, so a queue in
the generator counts against the gateway as it would for real callers), and the gateway's CPU per
request (its CPU time over the requests it answered). With ``--read-profile PATH``, py-spy records
the gateway during the last rate and the functions it spent most time in are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import ROUTE_GET, ROUTE_LIST, Mix
from bench.measure.gateway import gateway_answer_times, subtract
from bench.measure.load import ms, percentile
from bench.measure.resources import own_cpu_seconds, tree_cpu_seconds
from bench.run import prepare_catalogue, run_load, say
from bench.stack import BenchStack, StackOptions
from core.db.engine import create_engine
from core.db.read_model import OrderReadModel
from core.domain import OrderView
from core.tokens import mint_token

TEMPLATE_ORDERS = 24  # real orders whose views are copied
CONNECTIONS = 64  # the generator's connections to the gateway (4 pools of 16)
GATEWAY_ROUTES = {ROUTE_GET: "GET /v1/orders/{order_id}", ROUTE_LIST: "GET /v1/orders"}


@dataclass
class ReadResult:
    rate: float
    duration_s: float
    sent: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)


def run_read_path(args: argparse.Namespace, options: StackOptions) -> dict:
    """Start a stack, seed its read model, drive each rate, stop it; the report's ``reads`` section."""
    say(
        f"read path: seed {args.read_seed} orders, then {', '.join(f'{r:g}/s' for r in args.read_rates)} for "
        f"{args.read_duration:g} s each: expect about "
        f"{(40 + args.read_seed / 400 + len(args.read_rates) * (args.read_duration + 3)) / 60:.1f} min"
    )
    with BenchStack(options, log=say) as stack:
        return asyncio.run(_read_path(args, stack))


async def _read_path(args: argparse.Namespace, stack: BenchStack) -> dict[str, Any]:
    settings = stack.settings
    assert settings is not None and stack.api is not None
    # The bench's own engine for seeding: patient, as a busy machine can take seconds to connect.
    engine = create_engine(settings.model_copy(update={"database_timeout_s": 30.0}), pool_size=8)
    try:
        catalogue, _ = await prepare_catalogue(engine, settings, uuid.uuid4().hex[:6])
        say(f"seeding: {TEMPLATE_ORDERS} real orders through the gateway")
        templates_run = await run_load(
            stack.api_url,
            settings,
            catalogue,
            args,
            concurrency=8,
            duration=120,
            run_id="tpl" + uuid.uuid4().hex[:4],
            mix=Mix(reads=0),
            max_orders=TEMPLATE_ORDERS,
        )
        read_model = OrderReadModel(engine)
        templates = [
            view
            for view in [await read_model.get(uuid.UUID(o.order_id)) for o in templates_run.ended if o.order_id]
            if view is not None
        ]
        if not templates:
            raise RuntimeError("no seed order ended: the stack cannot run orders (see --keep-data logs)")
        customers = [
            f"reader-{uuid.uuid4().hex[:6]}-{n}" for n in range(max(1, args.read_seed // args.read_per_customer))
        ]
        started = time.monotonic()
        owned = await seed(read_model, templates, customers, args.read_seed)
        say(f"seeded {args.read_seed} orders of {len(customers)} customers in {time.monotonic() - started:.1f} s")
    finally:
        await engine.dispose()

    tokens = {c: mint_token(settings, c, "customer", ttl_s=24 * 3600) for c in customers}
    rates: list[dict[str, Any]] = []
    api_pid = stack.api.pid
    postgres_pid = stack.postgres.pid if stack.postgres is not None else None
    for index, rate in enumerate(args.read_rates):
        profile = args.read_profile if args.read_profile and index == len(args.read_rates) - 1 else None
        say(f"rate {index + 1}/{len(args.read_rates)}: {rate:g} requests/s for {args.read_duration:g} s")
        before_metrics = await gateway_answer_times(stack.api_url)
        before_cpu = tree_cpu_seconds(api_pid)
        before_pg = tree_cpu_seconds(postgres_pid) if postgres_pid else 0.0
        before_generator = own_cpu_seconds()
        spy = _start_profile(api_pid, profile, args.read_duration) if profile else None
        result = await drive(stack.api_url, tokens, owned, rate, args.read_duration, args.read_list_share, args.seed)
        gateway_cpu = tree_cpu_seconds(api_pid) - before_cpu
        generator_cpu = own_cpu_seconds() - before_generator
        # PostgreSQL's backends and autovacuum workers come and go, and one that exits takes its CPU
        # time out of the tree's sum: a floor, and None when the sum went down.
        postgres_cpu = (tree_cpu_seconds(postgres_pid) - before_pg) if postgres_pid else None
        if postgres_cpu is not None and postgres_cpu < 0:
            postgres_cpu = None
        counted = subtract(await gateway_answer_times(stack.api_url), before_metrics)
        point = rate_figures(result, gateway_cpu, postgres_cpu, counted)
        # The generator shares the machine: near one core, it (not the gateway) limits the rate reached.
        point["generator_cores"] = round(generator_cpu / result.duration_s, 2) if result.duration_s else None
        if spy is not None:
            point["profile"] = _finish_profile(spy, profile)
        rates.append(point)
        say(rate_line(point))
    return {
        "mode": f"open loop, {args.read_list_share:.0%} list reads, {args.read_duration:g} s per rate, one gateway process",
        "seeded_orders": len(owned),
        "customers": len(customers),
        "template_orders": len(templates),
        "rates": rates,
    }


async def seed(
    read_model: OrderReadModel, templates: list[OrderView], customers: list[str], count: int
) -> list[tuple[str, str]]:
    """Copy ``templates`` into ``count`` orders of ``customers`` through the projection writer,
    newest last; the (customer, order id) of each."""
    now = datetime.now(UTC)
    owned: list[tuple[str, str]] = []
    gate = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        template = templates[n % len(templates)]
        customer = customers[n % len(customers)]
        view = copy_view(template, uuid.uuid4(), customer, now - timedelta(seconds=count - n), f"-{n}")
        async with gate:
            await read_model.project(len(view.history) + 1, view)
        owned.append((customer, str(view.id)))

    await asyncio.gather(*(one(n) for n in range(count)))
    return owned


def copy_view(template: OrderView, order_id: uuid.UUID, customer: str, created_at: datetime, suffix: str) -> OrderView:
    """The template's view as another order: its id (and the shipment ids made of it), customer,
    tracking numbers (unique in the read model) and times moved to ``created_at``."""
    body = json.dumps(template.model_dump(mode="json"))
    body = body.replace(str(template.id), str(order_id))
    body = body.replace(json.dumps(template.customer_id), json.dumps(customer))
    numbers = {template.tracking_number, *(s.tracking_number for s in template.shipments)} - {None}
    for number in numbers:
        body = body.replace(json.dumps(number), json.dumps(f"{number}{suffix}"))
    view = OrderView.model_validate_json(body)
    shift = created_at - template.created_at
    return view.model_copy(
        update={
            "created_at": created_at,
            "updated_at": view.updated_at + shift,
            "history": [change.model_copy(update={"at": change.at + shift}) for change in view.history],
        }
    )


async def drive(
    url: str,
    tokens: dict[str, str],
    owned: list[tuple[str, str]],
    rate: float,
    duration_s: float,
    list_share: float,
    seed: int,
) -> ReadResult:
    """An open loop of reads at ``rate`` per second for ``duration_s``; waits for the last answers."""
    rng = random.Random(seed)
    result = ReadResult(rate=rate, duration_s=duration_s)
    limits = httpx.Limits(max_connections=CONNECTIONS // 4, max_keepalive_connections=CONNECTIONS // 4)
    clients = [httpx.AsyncClient(base_url=url, timeout=15, limits=limits) for _ in range(4)]
    tasks: set[asyncio.Task] = set()

    async def one(due: float, route: str, path: str, token: str, http: httpx.AsyncClient) -> None:
        try:
            response = await http.get(path, headers={"Authorization": f"Bearer {token}"})
            status = response.status_code
        except httpx.HTTPError as error:
            result.errors[type(error).__name__] += 1
            status = 0
        result.statuses[str(status) if status else "no answer"] += 1
        if status:
            result.latencies.setdefault(route, []).append(time.monotonic() - due)

    t0 = time.monotonic()
    try:
        n = 0
        while (due := t0 + n / rate) < t0 + duration_s:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            customer, order_id = owned[rng.randrange(len(owned))]
            if rng.random() < list_share:
                route, path = ROUTE_LIST, "/v1/orders"
            else:
                route, path = ROUTE_GET, f"/v1/orders/{order_id}"
            task = asyncio.create_task(one(due, route, path, tokens[customer], clients[n % len(clients)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            result.sent += 1
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for http in clients:
            await http.aclose()
    result.duration_s = time.monotonic() - t0
    return result


def rate_figures(
    result: ReadResult, gateway_cpu_s: float, postgres_cpu_s: float | None, counted: dict[str, dict]
) -> dict[str, Any]:
    answered = sum(n for status, n in result.statuses.items() if status != "no answer")
    all_latencies = [v for values in result.latencies.values() for v in values]
    gateway_counted = {route: counted.get(name, {}).get("answered", 0) for route, name in GATEWAY_ROUTES.items()}
    return {
        "offered_per_s": result.rate,
        "duration_s": round(result.duration_s, 2),
        "sent": result.sent,
        "answered": answered,
        "answered_per_s": round(answered / result.duration_s, 1) if result.duration_s else None,
        "ok_per_s": round(result.statuses.get("200", 0) / result.duration_s, 1) if result.duration_s else None,
        "statuses": dict(sorted(result.statuses.items())),
        "errors": dict(result.errors),
        "latency_ms": {
            route: {"n": len(v), "p50": ms(percentile(v, 0.5)), "p99": ms(percentile(v, 0.99))}
            for route, v in sorted(result.latencies.items())
        }
        | {
            "all": {
                "n": len(all_latencies),
                "p50": ms(percentile(all_latencies, 0.5)),
                "p99": ms(percentile(all_latencies, 0.99)),
            }
        },
        "gateway_counted": gateway_counted,
        "gateway_cpu_s": round(gateway_cpu_s, 2),
        "gateway_cores": round(gateway_cpu_s / result.duration_s, 2) if result.duration_s else None,
        "gateway_cpu_ms_per_request": round(1000 * gateway_cpu_s / answered, 2) if answered else None,
        "postgres_cpu_ms_per_request": round(1000 * postgres_cpu_s / answered, 2)
        if answered and postgres_cpu_s is not None
        else None,
    }


def rate_line(p: dict[str, Any]) -> str:
    lat = p["latency_ms"]
    return (
        f"  offered {p['offered_per_s']:g}/s: answered {p['answered_per_s']}/s ({p['answered']}/{p['sent']}, "
        f"statuses {p['statuses']}), p50/p99 GET one {lat.get(ROUTE_GET, {}).get('p50')}/{lat.get(ROUTE_GET, {}).get('p99')} ms, "
        f"list {lat.get(ROUTE_LIST, {}).get('p50')}/{lat.get(ROUTE_LIST, {}).get('p99')} ms; gateway "
        f"{p['gateway_cpu_ms_per_request']} ms CPU per request ({p['gateway_cores']} cores), PostgreSQL "
        f"{p['postgres_cpu_ms_per_request']} ms; load generator {p.get('generator_cores')} cores"
    )


def format_reads(section: dict[str, Any]) -> str:
    lines = [
        f"\n== read path: {section['mode']}; {section['seeded_orders']} orders of {section['customers']} customers "
        f"(copies of {section['template_orders']} real ones) =="
    ]
    lines.append(
        f"{'offered/s':>9} {'answered/s':>10} {'sent':>6} {'answered':>8} {'GET one p50/p99 ms':>19} "
        f"{'list p50/p99 ms':>17} {'gateway CPU ms/req':>19} {'gateway cores':>13} {'PG ms/req':>9}"
    )
    for p in section["rates"]:
        one, page = p["latency_ms"].get(ROUTE_GET, {}), p["latency_ms"].get(ROUTE_LIST, {})
        lines.append(
            f"{p['offered_per_s']:>9g} {p['answered_per_s']!s:>10} {p['sent']:>6} {p['answered']:>8} "
            f"{str(one.get('p50')) + ' / ' + str(one.get('p99')):>19} {str(page.get('p50')) + ' / ' + str(page.get('p99')):>17} "
            f"{p['gateway_cpu_ms_per_request']!s:>19} {p['gateway_cores']!s:>13} {p['postgres_cpu_ms_per_request']!s:>9}"
        )
        if p.get("profile"):
            lines.append(
                f"py-spy profile of the gateway at {p['offered_per_s']:g}/s ({p['profile']['path']}), own time:"
            )
            lines += [f"  {share:5.1%}  {name}" for name, share in p["profile"]["top_self"]]
    return "\n".join(lines)


# --- profiling ---------------------------------------------------------------------------------------


def _start_profile(pid: int, path: Path, duration_s: float) -> subprocess.Popen | None:
    """py-spy recording ``pid`` for ``duration_s`` as collapsed stacks at ``path`` (the bench extra
    installs py-spy; without it, no profile and a message)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        say("py-spy is not installed (the bench extra has it): no profile")
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(duration_s))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(path),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish_profile(spy: subprocess.Popen, path: Path) -> dict[str, Any]:
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if spy.returncode != 0 or not path.exists():
        return {"path": str(path), "error": (err or b"").decode(errors="replace")[-500:], "top_self": []}
    return {"path": str(path), **summarize_profile(path.read_text())}


def summarize_profile(collapsed: str, top: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed stacks (``frame;frame;frame count`` per line): the share of samples
    in which each function was the innermost frame (own time), and each of our modules' share of
    samples anywhere on the stack (inclusive)."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[_frame_name(frames[-1])] += n
        for name in {_frame_name(f) for f in frames}:
            inclusive[name] += n
    if not total:
        return {"samples": 0, "top_self": [], "top_inclusive": []}
    return {
        "samples": total,
        "top_self": [(name, round(n / total, 4)) for name, n in own.most_common(top)],
        "top_inclusive": [(name, round(n / total, 4)) for name, n in inclusive.most_common(top * 2)],
    }


def _frame_name(frame: str) -> str:
    """``function (path/to/module.py:123)`` -> ``function (module.py)``: lines apart, one entry per function."""
    name, _, where = frame.partition(" (")
    module = where.rsplit(":", 1)[0]
    parts = Path(module).parts
    return f"{name} ({'/'.join(parts[-2:])})" if where else name
