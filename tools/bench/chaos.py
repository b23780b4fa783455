"""`orders chaos`: inject faults while a bench runs, then prove that nothing was lost.

On its own throw-away stack (:mod:`bench.stack`), an open-loop load (:mod:`bench.loadgen`) runs while a
schedule injects, once each: the payment provider failing 20 % of calls (5xx or hanging past the
activity timeout), a storm of duplicate submissions with one Idempotency-Key, kill -9 of a worker
mid-activity (and a new one started), a stop and restart of the Temporal server on its SQLite file,
and an immediate stop and restart of PostgreSQL. Afterwards every accepted order must end and the
invariant checker must hold, and the gateway must never have answered a 5xx other than 503 with
Retry-After. It prints a table of the faults injected and the invariants checked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import ADDRESS, Catalogue, LoadGenerator, Mix, status_printer

ALL_FAULTS = ("provider", "duplicates", "worker", "temporal", "postgres")


def _say(message: str) -> None:
    print(f"orders chaos: {message}", file=sys.stderr, flush=True)


@dataclass
class FaultRecord:
    fault: str
    at_s: float
    took_s: float
    detail: str
    ok: bool = True


@dataclass
class ChaosReport:
    faults: list[FaultRecord] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, ok, detail)
    summary: dict[str, Any] = field(default_factory=dict)
    diagnosis: list[str] = field(default_factory=list)  # what unfinished orders wait on

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks) and all(f.ok for f in self.faults)

    def table(self) -> str:
        lines = [f"{'fault injected':34} {'at s':>6} {'took s':>7}  result", "-" * 90]
        for f in self.faults:
            lines.append(f"{f.fault:34} {f.at_s:6.1f} {f.took_s:7.1f}  {'ok' if f.ok else 'FAIL'}: {f.detail}")
        lines += ["", f"{'invariant checked':60} result  detail", "-" * 90]
        for name, ok, detail in self.checks:
            lines.append(f"{name:60} {'ok' if ok else 'FAIL':6}  {detail}")
        if self.diagnosis:
            lines += ["", "unfinished orders, as Temporal describes them:", *self.diagnosis]
        return "\n".join(lines)


@dataclass
class ChaosPlan:
    rate: float = 2.0  # orders per second (open loop)
    duration_s: float = 24.0
    faults: tuple[str, ...] = ALL_FAULTS
    provider_error_rate: float = 0.1
    provider_timeout_rate: float = 0.1
    provider_timeout_s: float = 6.0  # longer than the 5 s start-to-close of authorize/create shipment
    provider_latency_ms: int = 100  # so that activities are in flight when the worker dies
    temporal_down_s: float = 2.0
    temporal_kill: bool = False
    postgres_down_s: float = 3.0
    postgres_mode: str = "immediate"
    worker_kills: int = 1
    storm_size: int = 50
    drain_timeout_s: float = 180.0


async def _duplicate_storm(generator: LoadGenerator, catalogue: Catalogue, size: int) -> tuple[bool, str, list[str]]:
    """``size`` concurrent POSTs with one key and body: one order; the same key with another body: 422."""
    import httpx

    customer = generator.customers[0]
    key = f"storm-{uuid.uuid4().hex}"
    body = {
        "items": [{"sku": catalogue.cheap_sku, "quantity": 1}],
        "shipping_address": ADDRESS,
        "payment_token": "tok_ok",
    }
    headers = {**generator._auth(customer), "Idempotency-Key": key}
    async with httpx.AsyncClient(base_url=generator.base_url, timeout=30) as http:

        async def post(payload: dict) -> httpx.Response | None:
            for _ in range(20):  # a client retries 503/409 after Retry-After with the same key
                try:
                    response = await http.post("/v1/orders", json=payload, headers=headers)
                except httpx.HTTPError:
                    await asyncio.sleep(0.5)
                    continue
                if response.status_code not in (409, 429, 503):
                    return response
                await asyncio.sleep(min(float(response.headers.get("Retry-After", "1")), 5))
            return None

        answers = await asyncio.gather(*(post(body) for _ in range(size)))
        other = await post({**body, "items": [{"sku": catalogue.cheap_sku, "quantity": 2}]})
    statuses = sorted({a.status_code if a is not None else 0 for a in answers})
    ids = {a.json()["id"] for a in answers if a is not None and a.status_code in (200, 202)}
    ok = len(ids) == 1 and statuses in ([202], [200, 202]) and other is not None and other.status_code == 422
    detail = f"{size} POSTs -> statuses {statuses}, {len(ids)} order(s); other body -> {other.status_code if other is not None else 'no answer'}"
    return ok, detail, sorted(ids)


async def run_chaos(stack, plan: ChaosPlan, *, status_line=None) -> ChaosReport:
    """Run the load with the fault schedule on ``stack`` (a started :class:`bench.stack.BenchStack`)."""
    from bench.measure.load import summarize
    from bench.run import check_invariants, prepare_catalogue
    from core.db.engine import create_engine
    from core.temporal import connect_client

    report = ChaosReport()
    settings = stack.settings
    engine = create_engine(settings, pool_size=2)
    try:
        catalogue, initial_stock = await prepare_catalogue(engine, settings, uuid.uuid4().hex[:6])
    finally:
        await engine.dispose()
    generator = LoadGenerator(
        stack.api_url, settings, catalogue, mix=Mix(), customers=100, seed=7, status_line=status_line
    )
    storm_ids: list[str] = []
    began = time.monotonic()

    async def inject(name: str, action, detail: str) -> None:
        start = time.monotonic()
        try:
            extra = await action()
            report.faults.append(FaultRecord(name, start - began, time.monotonic() - start, extra or detail))
        except Exception as error:
            report.faults.append(
                FaultRecord(name, start - began, time.monotonic() - start, f"{detail}: {error!r}", ok=False)
            )

    async def schedule() -> None:
        # Spread the faults over the load phase; each one waits for the previous to finish.
        slots = [f for f in plan.faults if f != "provider"]
        step = plan.duration_s / (len(slots) + 2)
        if "provider" in plan.faults:

            async def provider_on():
                await asyncio.to_thread(
                    stack.set_faults,
                    error_rate=plan.provider_error_rate,
                    timeout_rate=plan.provider_timeout_rate,
                    timeout_s=plan.provider_timeout_s,
                    latency_ms=plan.provider_latency_ms,
                )

            await inject(
                "payment/carrier provider faults on",
                provider_on,
                f"{plan.provider_error_rate:.0%} 503, {plan.provider_timeout_rate:.0%} hang {plan.provider_timeout_s:g}s, +{plan.provider_latency_ms} ms",
            )
        for index, fault in enumerate(slots):
            await asyncio.sleep(max(0.0, began + step * (index + 1) - time.monotonic()))
            if fault == "duplicates":

                async def storm():
                    ok, detail, ids = await _duplicate_storm(generator, catalogue, plan.storm_size)
                    storm_ids.extend(ids)
                    if not ok:
                        raise AssertionError(detail)
                    return detail

                await inject("duplicate submission storm", storm, "")
            elif fault == "worker":
                for _ in range(plan.worker_kills):

                    async def kill_worker():
                        await asyncio.to_thread(stack.kill_worker, 0)
                        await asyncio.to_thread(stack.start_worker)

                    await inject(
                        "worker kill -9 mid-activity, new worker",
                        kill_worker,
                        "SIGKILL of the worker process group, a new worker started",
                    )
            elif fault == "temporal":
                verb = "kill -9" if plan.temporal_kill else "stop"
                await inject(
                    f"Temporal server {verb} + restart",
                    lambda: asyncio.to_thread(stack.restart_temporal, plan.temporal_down_s, kill=plan.temporal_kill),
                    f"{verb}, down {plan.temporal_down_s:g} s, same SQLite file",
                )
            elif fault == "postgres":
                await inject(
                    f"PostgreSQL {plan.postgres_mode} stop + restart",
                    lambda: asyncio.to_thread(stack.restart_postgres, plan.postgres_down_s, mode=plan.postgres_mode),
                    f"{plan.postgres_mode}, down {plan.postgres_down_s:g} s, synchronous_commit=on",
                )
        await asyncio.sleep(max(0.0, began + plan.duration_s - time.monotonic()))
        if "provider" in plan.faults:

            async def provider_off():
                await asyncio.to_thread(stack.set_faults)

            await inject("provider faults off", provider_off, "end of the load phase")

    result = await generator.run(
        duration_s=plan.duration_s, rate=plan.rate, drain_timeout_s=plan.drain_timeout_s, extra=schedule
    )
    summary = summarize(result)
    report.summary = summary
    accepted = [o.order_id for o in result.accepted] + storm_ids

    unfinished = [
        o.order_id for o in result.accepted if o.status not in {"completed", "cancelled", "rejected", "failed"}
    ]
    report.checks.append(
        (
            "every accepted order reached an end state (seen through the API)",
            not unfinished,
            f"{len(result.accepted)} accepted, {len(unfinished)} unfinished {unfinished[:3]}",
        )
    )
    bad = summary["http_5xx_not_503_with_retry_after"]
    report.checks.append(("6 no 5xx except 503 with Retry-After", bad == 0, f"statuses {summary['http_statuses']}"))

    client = await connect_client(settings)
    if unfinished:
        # While the servers still run: what each unfinished order waits on, from Temporal itself.
        report.diagnosis = await diagnose_unfinished(client, unfinished[:10])
    missing = await _missing_from_read_model(settings, accepted)
    report.checks.append(
        (
            "no lost 202: every accepted order is in the read model",
            not missing,
            f"{len(accepted)} checked, missing {missing[:3]}",
        )
    )
    invariants = await check_invariants(settings, client, accepted, initial_stock, catalogue.warehouse_stock)
    for check in invariants.checks:
        report.checks.append(
            (
                check.name,
                check.ok,
                f"{check.checked} checked" + (f"; {'; '.join(check.problems[:2])}" if check.problems else ""),
            )
        )
    report.summary["faults"] = [f.__dict__ for f in report.faults]
    return report


async def diagnose_unfinished(client, order_ids: list[str]) -> list[str]:
    """One line per order: workflow status, history length, and each pending activity's state,
    attempt, schedule/start times and last failure (what an operator would read in the UI)."""
    from core.domain import order_workflow_id

    lines = []
    for order_id in order_ids:
        workflow_id = order_workflow_id(uuid.UUID(order_id))
        try:
            described = await client.get_workflow_handle(workflow_id).describe()
        except Exception as error:
            lines.append(f"  {workflow_id}: describe failed: {error}")
            continue
        raw = described.raw_description
        pending = []
        for activity in raw.pending_activities:
            failure = activity.last_failure.message[:80] if activity.HasField("last_failure") else "-"
            pending.append(
                f"{activity.activity_type.name} state={activity.State.Name(activity.state)} attempt={activity.attempt} "
                f"scheduled={activity.scheduled_time.ToDatetime():%H:%M:%S} "
                f"last_started={activity.last_started_time.ToDatetime():%H:%M:%S} "
                f"expires={activity.expiration_time.ToDatetime():%H:%M:%S} last_failure={failure!r}"
            )
        lines.append(
            f"  {workflow_id}: {described.status.name if described.status else '?'}, {described.history_length} events, "
            f"pending activities: {'; '.join(pending) or 'none'}"
        )
    return lines


async def _missing_from_read_model(settings, order_ids: list[str]) -> list[str]:
    from sqlalchemy import select

    from core.db.engine import create_engine
    from core.db.tables import orders

    engine = create_engine(settings, pool_size=2)
    try:
        async with engine.connect() as conn:
            found = {
                str(row.id)
                for row in await conn.execute(
                    select(orders.c.id).where(orders.c.id.in_([uuid.UUID(i) for i in order_ids]))
                )
            }
    finally:
        await engine.dispose()
    return [i for i in order_ids if i not in found]


def cmd_chaos(args: argparse.Namespace) -> int:
    from bench.stack import BenchStack, StackOptions
    from cli.main import CliError

    unknown = set(args.faults) - set(ALL_FAULTS)
    if unknown:
        raise CliError(f"unknown fault(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL_FAULTS)}")
    plan = ChaosPlan(
        rate=args.rate,
        duration_s=args.duration,
        faults=tuple(args.faults),
        temporal_kill=args.temporal_kill,
        postgres_mode=args.postgres_mode,
        worker_kills=args.worker_kills,
        drain_timeout_s=args.drain_timeout,
    )
    with BenchStack(StackOptions(workers=args.workers, keep_data=args.keep_data), log=_say) as stack:
        report = asyncio.run(run_chaos(stack, plan, status_line=status_printer()))
    print(report.table(), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "ok": report.ok,
                    "faults": [f.__dict__ for f in report.faults],
                    "checks": report.checks,
                    "summary": report.summary,
                    "diagnosis": report.diagnosis,
                },
                indent=2,
                default=str,
            )
        )
    print(f"\nchaos run {'passed' if report.ok else 'FAILED'}", flush=True)
    return 0 if report.ok else 1


def register(subparsers) -> None:
    chaos = subparsers.add_parser(
        "chaos",
        help="inject faults while a bench runs on an own stack, then check the invariants",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chaos.add_argument("--rate", type=float, default=3.0, help="orders per second during the run (default 3)")
    chaos.add_argument("--duration", type=float, default=40.0, help="seconds of load with faults (default 40)")
    chaos.add_argument(
        "--faults",
        nargs="+",
        default=list(ALL_FAULTS),
        metavar="FAULT",
        help=f"which faults, in order (default: {' '.join(ALL_FAULTS)})",
    )
    chaos.add_argument(
        "--temporal-kill", action="store_true", help="SIGKILL the Temporal server instead of stopping it"
    )
    chaos.add_argument(
        "--postgres-mode",
        choices=["immediate", "fast", "kill"],
        default="immediate",
        help="how PostgreSQL goes down (default immediate)",
    )
    chaos.add_argument("--worker-kills", type=int, default=1)
    chaos.add_argument("--workers", type=int, default=1)
    chaos.add_argument("--drain-timeout", type=float, default=180.0)
    chaos.add_argument("--keep-data", action="store_true", help="keep the stack's temporary folder (logs)")
    chaos.add_argument("--json", type=Path, default=None)
    chaos.set_defaults(func=cmd_chaos)
