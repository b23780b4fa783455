"""The drill's load: orders for customers of both regions, sent through both entry points.

Open loop: orders start on a fixed schedule whatever the platform does, each one a coroutine that
submits (with an Idempotency-Key; after a 503 + Retry-After it tries again with the same key, as a
well-behaved client does, until the load phase ends), then reads the order until it ends. Each
request goes to one of the entry points that are *up*: the drill takes region A's entry out while
A is cut off, as a global load balancer does once A fails its health checks (the drill does not
measure that failover: it measures what the surviving region answers).

Every request is recorded with the customer's home region, the entry point, status, latency and
the staleness headers of a replica read, against the drill's own monotonic clock.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import asdict, dataclass, field

import httpx

from bench.loadgen import ADDRESS, TERMINAL
from core.config import Settings
from core.tokens import mint_token

SUBMIT, READ = "submit", "read"
# Response headers of a read served by a replica (docs/regions.md).
STALE_HEADER = "X-Read-Stale"
LAG_HEADER = "X-Read-Replica-Lag"
REGION_HEADER = "X-Region"  # the region that served the answer


@dataclass
class Call:
    at: float  # seconds on the drill's clock
    home: str  # the customer's home region
    entry: str  # the region whose gateway got the request
    op: str  # submit | read
    status: int  # 0: no answer within the client's timeout, or no connection
    latency_s: float
    retry_after: str | None = None
    stale: bool = False
    lag_s: float | None = None
    served_by: str | None = None
    error: str | None = None


@dataclass
class Order:
    key: str
    customer: str
    home: str
    started_at: float
    order_id: str | None = None
    accepted_at: float | None = None
    accepted_via: str | None = None  # the entry point
    region: str | None = None  # the region that accepted it (X-Region; its home without one)
    status: str | None = None
    phase: str = ""


@dataclass
class LoadRecord:
    calls: list[Call] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"calls": [asdict(c) for c in self.calls], "orders": [asdict(o) for o in self.orders]}


class DrillLoad:
    """Orders for ``customers[region]`` through the gateways in ``entries`` (region -> URL)."""

    def __init__(
        self,
        entries: dict[str, str],
        customers: dict[str, list[str]],
        settings: Settings,
        skus: list[str],
        *,
        clock,
        seed: int = 13,
        request_timeout_s: float = 5.0,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.entries = dict(entries)
        self.up = set(entries)
        self.customers = customers
        self.skus = skus
        self.clock = clock
        self.rng = random.Random(seed)
        self.request_timeout_s = request_timeout_s
        self.poll_interval_s = poll_interval_s
        self.record = LoadRecord()
        self.phase = ""
        self._tokens = {
            c: mint_token(settings, c, "customer", ttl_s=3600) for region in customers for c in customers[region]
        }
        self._clients = {
            region: httpx.AsyncClient(base_url=url, timeout=request_timeout_s) for region, url in entries.items()
        }
        self._submitting = True
        self._tasks: set[asyncio.Task] = set()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    # --- driving --------------------------------------------------------------------------------

    async def run(self, *, rate: float, until: asyncio.Event, max_orders: int) -> None:
        """Start ``rate`` orders a second (alternating home regions) until ``until`` is set or
        ``max_orders`` have started."""
        started = self.clock()
        n = 0
        while not until.is_set() and n < max_orders:
            due = started + n / rate
            try:
                await asyncio.wait_for(until.wait(), timeout=max(0.0, due - self.clock()))
                break
            except TimeoutError:
                pass
            home = ("a", "b")[n % 2]
            self._spawn(self.order(home, self.rng.choice(self.customers[home])))
            n += 1
        self._submitting = False

    def _spawn(self, work) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float) -> None:
        """Wait for every order coroutine (reads until the order ends) for up to ``timeout_s``."""
        deadline = self.clock() + timeout_s
        while self._tasks and self.clock() < deadline:  # orders accepted meanwhile add readers
            await asyncio.wait(set(self._tasks), timeout=deadline - self.clock())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def order(
        self, home: str, customer: str, *, retry_for_s: float | None = None, entry: str | None = None
    ) -> Order:
        """Place one order; once accepted, a task reads it until it ends (or the drain gives up).
        After a 429/503 it tries again after Retry-After with the same key: while the load runs, or
        for ``retry_for_s`` seconds when given. ``entry`` forces the entry point of the submit."""
        retry_until = None if retry_for_s is None else self.clock() + retry_for_s
        order = Order(key=uuid.uuid4().hex, customer=customer, home=home, started_at=self.clock(), phase=self.phase)
        self.record.orders.append(order)
        body = {
            "items": [{"sku": self.rng.choice(self.skus), "quantity": self.rng.randint(1, 3)}],
            "shipping_address": ADDRESS,
            "payment_token": "tok_ok",
        }
        headers = {**self._auth(customer), "Idempotency-Key": order.key}
        while True:
            via = entry or self._entry()
            response = await self._call(home, via, SUBMIT, "POST", "/v1/orders", json=body, headers=headers)
            if response is not None and response.status_code in (200, 201, 202):
                view = response.json()
                order.order_id, order.accepted_at, order.accepted_via = view["id"], self.clock(), via
                order.region = response.headers.get(REGION_HEADER, home)
                order.status = view.get("status")
                break
            retrying = self._submitting if retry_until is None else self.clock() < retry_until
            if not retrying or response is None or response.status_code not in (429, 503):
                return order
            await asyncio.sleep(_retry_after(response))
        self._spawn(self._follow(order))
        return order

    async def _follow(self, order: Order) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            via = self._entry()
            response = await self._call(
                order.home, via, READ, "GET", f"/v1/orders/{order.order_id}", headers=self._auth(order.customer)
            )
            if response is not None and response.status_code == 200:
                order.status = response.json()["status"]
                if order.status in TERMINAL:
                    return

    # --- HTTP -----------------------------------------------------------------------------------

    def _entry(self) -> str:
        return self.rng.choice(sorted(self.up))

    def _auth(self, customer: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._tokens[customer]}"}

    async def _call(self, home: str, entry: str, op: str, method: str, path: str, **kwargs) -> httpx.Response | None:
        started = self.clock()
        try:
            async with asyncio.timeout(self.request_timeout_s):
                response = await self._clients[entry].request(method, path, **kwargs)
        except (httpx.HTTPError, TimeoutError) as error:
            self.record.calls.append(
                Call(started, home, entry, op, 0, self.clock() - started, error=type(error).__name__)
            )
            return None
        lag = response.headers.get(LAG_HEADER)
        self.record.calls.append(
            Call(
                started,
                home,
                entry,
                op,
                response.status_code,
                self.clock() - started,
                retry_after=response.headers.get("Retry-After"),
                stale=STALE_HEADER in response.headers,
                lag_s=_float(lag),
                served_by=response.headers.get(REGION_HEADER),
            )
        )
        return response


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("Retry-After", "1")), 5.0)
    except ValueError:
        return 1.0


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def monotonic_clock(t0: float | None = None):
    start = time.monotonic() if t0 is None else t0
    return lambda: time.monotonic() - start
