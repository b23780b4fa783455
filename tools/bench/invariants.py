"""The invariant checker: what every test run, chaos run and load run proves afterwards.

1. Every accepted order has a workflow that reached a terminal state, or waits legitimately
   (awaiting review, or shipped and waiting for the carrier), and the read model agrees with it.
2. Provider captures minus refunds equal what was delivered: per order with shipments the amounts
   of its delivered shipments (each shipment captured and refunded for exactly its amount, only
   once it left, refunded only if lost); for older single-parcel orders the totals of completed
   orders (refunded lost parcels netting to zero). No idempotency key moved money twice.
3. Per (warehouse, SKU): reserved equals the sum of open reservations there, on_hand never
   negative; when the initial stock is known, initial = on_hand + committed (shipped) quantities,
   per SKU over all warehouses and per (warehouse, SKU) when given that way.
4. Failed, rejected and cancelled orders hold no reservations.
5. One order per (customer, Idempotency-Key).

It reads the read model and stock tables, asks Temporal for each workflow, and reads the payment
provider's ledger over HTTP. It never changes anything.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from core.db.tables import idempotency_keys, orders, stock_reservations, warehouse_stock
from core.domain import QUERY_ORDER, FailureReason, OrderStatus, OrderView, ShipmentStatus, order_workflow_id

LEGITIMATE_WAITS = {OrderStatus.AWAITING_REVIEW, OrderStatus.SHIPPED}
ENDED_WITHOUT_GOODS = {OrderStatus.FAILED, OrderStatus.REJECTED, OrderStatus.CANCELLED}
SHIPMENT_LEFT = {ShipmentStatus.SHIPPED, ShipmentStatus.DELIVERED, ShipmentStatus.LOST}


@dataclass
class Check:
    name: str
    ok: bool
    checked: int
    problems: list[str] = field(default_factory=list)


@dataclass
class InvariantReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"{'invariant'.ljust(width)}  result  checked  first problems"]
        for c in self.checks:
            lines.append(
                f"{c.name.ljust(width)}  {'ok' if c.ok else 'FAIL':6}  {c.checked:7}  {'; '.join(c.problems[:3])}"
            )
        return "\n".join(lines)


class InvariantChecker:
    def __init__(self, engine: AsyncEngine, client: Client, payments_base_url: str) -> None:
        self._engine = engine
        self._client = client
        self._payments = payments_base_url.rstrip("/") + "/v1"

    async def check(
        self,
        order_ids: Iterable[uuid.UUID] | None = None,
        *,
        initial_stock: dict[str, int] | None = None,
        initial_warehouse_stock: dict[tuple[str, str], int] | None = None,
        allow_waiting: bool = True,
    ) -> InvariantReport:
        """Check the orders in ``order_ids`` (default: every order in the read model).
        ``initial_stock`` is on hand per SKU over all warehouses when the run began,
        ``initial_warehouse_stock`` the same per (warehouse, SKU)."""
        views = await self._views(order_ids)
        checks = [
            await self._workflows_terminal_and_projected(views, allow_waiting),
            await self._money(views),
            await self._stock(views, initial_stock, initial_warehouse_stock),
            await self._no_reservations_after_failure(views),
            await self._one_order_per_key(views),
        ]
        return InvariantReport(checks)

    async def _views(self, order_ids: Iterable[uuid.UUID] | None) -> dict[uuid.UUID, OrderView]:
        query = select(orders.c.id, orders.c.view)
        if order_ids is not None:
            query = query.where(orders.c.id.in_(list(order_ids)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {row.id: OrderView.model_validate(row.view) for row in rows}

    async def _workflows_terminal_and_projected(self, views: dict[uuid.UUID, OrderView], allow_waiting: bool) -> Check:
        problems: list[str] = []
        semaphore = asyncio.Semaphore(20)

        async def one(order_id: uuid.UUID, view: OrderView) -> None:
            async with semaphore:
                handle = self._client.get_workflow_handle(order_workflow_id(order_id), result_type=OrderView)
                try:
                    description = await handle.describe()
                except RPCError as error:
                    problems.append(f"{order_id}: no workflow ({error.status.name})")
                    return
                if description.status == WorkflowExecutionStatus.COMPLETED:
                    final = await handle.result()
                    if final.status != view.status or final.failure_reason != view.failure_reason:
                        problems.append(
                            f"{order_id}: workflow ended {final.status.value}, read model says {view.status.value}"
                        )
                elif description.status == WorkflowExecutionStatus.RUNNING:
                    live = await handle.query(QUERY_ORDER, result_type=OrderView)
                    if not (allow_waiting and live.status in LEGITIMATE_WAITS):
                        problems.append(f"{order_id}: still running in {live.status.value}")
                    elif live.status != view.status:
                        problems.append(
                            f"{order_id}: workflow in {live.status.value}, read model says {view.status.value}"
                        )
                else:
                    problems.append(
                        f"{order_id}: workflow {description.status.name if description.status else 'unknown'}"
                    )

        await asyncio.gather(*(one(order_id, view) for order_id, view in views.items()))
        return Check("1 accepted orders end (or wait) and the read model agrees", not problems, len(views), problems)

    async def _ledger(self) -> dict:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.get(f"{self._payments}/ledger")
            response.raise_for_status()
            return response.json()

    async def _money(self, views: dict[uuid.UUID, OrderView]) -> Check:
        ledger = await self._ledger()
        problems: list[str] = []
        in_scope = {str(order_id) for order_id in views}
        authorizations = [a for a in ledger["authorizations"] if a["order_id"] in in_scope]
        auth_order = {a["id"]: a["order_id"] for a in authorizations}
        moved_keys = Counter(
            m["idempotency_key"] for m in ledger["money_movements"] if m["authorization_id"] in auth_order
        )
        problems += [f"key {key} moved money {count} times" for key, count in moved_keys.items() if count > 1]
        per_order = Counter(a["order_id"] for a in authorizations)
        problems += [f"order {order} has {count} authorizations" for order, count in per_order.items() if count > 1]

        net_by_order: dict[str, int] = defaultdict(int)
        moves_by_order: dict[str, list[dict]] = defaultdict(list)
        for movement in ledger["money_movements"]:
            order = auth_order.get(movement["authorization_id"])
            if order is not None:
                net_by_order[order] += movement["amount"] if movement["kind"] == "capture" else -movement["amount"]
                moves_by_order[order].append(movement)
        expected_total = 0
        for order_id, view in views.items():
            key = str(order_id)
            net = net_by_order.get(key, 0)
            if view.shipments:
                expected = self._split_expected(view, net)
                problems += self._per_shipment_moves(view, moves_by_order.get(key, []))
            elif view.status == OrderStatus.COMPLETED:
                expected = view.total
            elif view.status == OrderStatus.SHIPPED:
                expected = net  # capture may still be in flight; checked when it ends
            else:
                expected = 0  # never charged, voided, or refunded (lost parcels)
            expected_total += expected
            if net != expected:
                problems.append(f"order {key} ({view.status.value}): provider net {net}, expected {expected}")
        captured = sum(net_by_order.values())
        if captured != expected_total:
            problems.append(f"captured minus refunded {captured} != completed totals {expected_total}")
        return Check(
            "2 captures - refunds = delivered shipments (completed totals); one charge per key",
            not problems,
            len(authorizations),
            problems,
        )

    @staticmethod
    def _split_expected(view: OrderView, net: int) -> int:
        """What an order with shipments may have kept: the amounts of its delivered shipments. While
        it is still shipped, a capture or a lost shipment's refund may be in flight, so anything
        between nothing and every shipment that left passes until it ends."""
        delivered = sum(s.amount for s in view.shipments if s.status == ShipmentStatus.DELIVERED)
        if view.status != OrderStatus.SHIPPED:
            return delivered
        left = sum(s.amount for s in view.shipments if s.status in SHIPMENT_LEFT)
        return net if 0 <= net <= left else delivered

    @staticmethod
    def _per_shipment_moves(view: OrderView, movements: list[dict]) -> list[str]:
        """Each shipment's capture and refund move exactly its amount, and only for a shipment that
        left (a refund only for a lost one): a capture of a pending or cancelled shipment, or of
        one the order does not have, is money taken for goods that never went out."""
        shipments = {s.id: s for s in view.shipments}
        problems = []
        for movement in movements:
            operation = movement["idempotency_key"].removeprefix(f"order-{view.id}-")
            kind, _, shipment_id = operation.partition("-")
            if kind not in ("capture", "refund"):
                problems.append(f"order {view.id}: {movement['kind']} under unknown key {movement['idempotency_key']}")
                continue
            shipment = shipments.get(shipment_id)
            allowed = SHIPMENT_LEFT if kind == "capture" else {ShipmentStatus.LOST}
            if shipment is None or shipment.status not in allowed or movement["kind"] != kind:
                state = shipment.status.value if shipment else "unknown"
                problems.append(f"order {view.id}: {movement['kind']} for {state} shipment {shipment_id or '?'}")
            elif movement["amount"] != shipment.amount:
                problems.append(
                    f"order {view.id}: {kind} of {movement['amount']} for shipment {shipment_id} of {shipment.amount}"
                )
        return problems

    async def _stock(
        self,
        views: dict[uuid.UUID, OrderView],
        initial_stock: dict[str, int] | None,
        initial_warehouse_stock: dict[tuple[str, str], int] | None,
    ) -> Check:
        skus = (
            {line.sku for view in views.values() for line in view.items}
            | set(initial_stock or {})
            | {sku for _, sku in initial_warehouse_stock or {}}
        )
        problems: list[str] = []
        ws, sr = warehouse_stock, stock_reservations
        async with self._engine.connect() as conn:
            counters = {
                (row.warehouse_id, row.sku): (row.on_hand, row.reserved)
                for row in await conn.execute(
                    select(ws.c.warehouse_id, ws.c.sku, ws.c.on_hand, ws.c.reserved).where(ws.c.sku.in_(skus))
                )
            }
            sums: defaultdict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"reserved": 0, "committed": 0})
            for row in await conn.execute(
                select(sr.c.warehouse_id, sr.c.sku, sr.c.state, func.sum(sr.c.quantity))
                .where(sr.c.sku.in_(skus))
                .group_by(sr.c.warehouse_id, sr.c.sku, sr.c.state)
            ):
                if row[2] in ("reserved", "committed"):
                    sums[(row[0], row[1])][row[2]] = int(row[3])
        places = sorted(set(counters) | set(sums) | set(initial_warehouse_stock or {}))
        totals: defaultdict[str, int] = defaultdict(int)
        for place in places:
            warehouse, sku = place
            on_hand, reserved = counters.get(place, (0, 0))
            totals[sku] += on_hand + sums[place]["committed"]
            if on_hand < 0 or reserved < 0 or reserved > on_hand:
                problems.append(f"{sku}@{warehouse}: on_hand {on_hand}, reserved {reserved}")
            if reserved != sums[place]["reserved"]:
                problems.append(
                    f"{sku}@{warehouse}: reserved {reserved} but open reservations sum to {sums[place]['reserved']}"
                )
            if initial_warehouse_stock and place in initial_warehouse_stock:
                if initial_warehouse_stock[place] != on_hand + sums[place]["committed"]:
                    problems.append(
                        f"{sku}@{warehouse}: initial {initial_warehouse_stock[place]} != on_hand {on_hand}"
                        f" + shipped {sums[place]['committed']}"
                    )
        for sku, initial in sorted((initial_stock or {}).items()):
            if initial != totals[sku]:
                problems.append(f"{sku}: initial {initial} != on_hand + shipped {totals[sku]} over all warehouses")
        return Check(
            "3 stock balances per warehouse: initial = on_hand + shipped; reserved = open reservations",
            not problems,
            len(places),
            problems,
        )

    async def _no_reservations_after_failure(self, views: dict[uuid.UUID, OrderView]) -> Check:
        ended = [
            order_id
            for order_id, view in views.items()
            if view.status in ENDED_WITHOUT_GOODS and view.failure_reason != FailureReason.LOST_IN_TRANSIT
        ]
        async with self._engine.connect() as conn:
            holding = (
                await conn.execute(
                    select(stock_reservations.c.order_id, stock_reservations.c.sku).where(
                        stock_reservations.c.order_id.in_(ended), stock_reservations.c.state != "released"
                    )
                )
            ).all()
        problems = [f"order {row.order_id} still holds {row.sku}" for row in holding]
        return Check("4 failed/rejected/cancelled orders hold no stock", not problems, len(ended), problems)

    async def _one_order_per_key(self, views: dict[uuid.UUID, OrderView]) -> Check:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(idempotency_keys.c.customer_id, idempotency_keys.c.key, idempotency_keys.c.order_id).where(
                        idempotency_keys.c.order_id.in_(list(views))
                    )
                )
            ).all()
        problems = []
        per_order = Counter(row.order_id for row in rows)
        problems += [f"order {order} claimed by {count} keys" for order, count in per_order.items() if count > 1]
        problems += [
            f"key of order {row.order_id} belongs to {row.customer_id}, order to {views[row.order_id].customer_id}"
            for row in rows
            if views[row.order_id].customer_id != row.customer_id
        ]
        return Check("5 one order per (customer, Idempotency-Key)", not problems, len(rows), problems)
