"""The load generator behind `orders bench` and `orders chaos`: drives the public HTTP API only.

Each simulated order is one coroutine: submit with an Idempotency-Key (retried with the same key
after 429/503 + Retry-After or a dropped connection, as a well-behaved client would), then, by its
kind, cancel it, or wait for review and approve it with an operator token, and follow the order
until it ends: by default with the gateway's long-poll (``GET /v1/orders/{id}?wait=...&until=...``,
answered when the order reaches a status the client acts on or ends), or, with
``poll_interval_s``, by reading it at that interval as clients did before. Open loop (``rate``): orders start on a fixed schedule whatever the platform does.
Closed loop (``concurrency``): that many orders in flight, a new one when one ends.

Every HTTP call is recorded (start, route, status, latency); every order's outcome and its
server-side timestamps (created, shipped, ended) are kept, so latencies from submit to an end
state come from the platform's own clock rather than from polling granularity.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlparse

import httpx

from core.config import Settings
from core.open_files import OTHER_OPEN_FILES, raise_open_files_limit
from core.tokens import mint_token

TERMINAL = {"completed", "cancelled", "rejected", "failed"}
POOLS = 50  # connection pools, callers hashed onto them
CONNECTIONS_PER_POOL = 40
# Long-polls park a connection for their whole wait: one per following caller, so their pools are
# larger (a spike leaves well over a thousand callers waiting on their orders at once).
WAIT_CONNECTIONS_PER_POOL = 200
ADDRESS = {
    "name": "Bench Customer",
    "line1": "Unter den Linden 1",
    "line2": None,
    "city": "Berlin",
    "postal_code": "10117",
    "country": "DE",
}
ROUTE_SUBMIT = "POST /v1/orders"
ROUTE_GET = "GET /v1/orders/{id}"
ROUTE_CANCEL = "POST /v1/orders/{id}/cancel"
ROUTE_REVIEW = "POST /v1/orders/{id}/review"
ROUTE_LIST = "GET /v1/orders"
ROUTE_AMEND = "POST /v1/orders/{id}/amend"


def require_loopback(url: str) -> str:
    """The load generator only ever targets this machine: refuse any other host."""
    host = urlparse(url).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise ValueError(f"refusing to send load to {host!r}: only 127.0.0.1 is allowed")
    return url.rstrip("/")


@dataclass
class Mix:
    """Shares of order kinds (the rest are plain happy orders with tok_ok)."""

    decline: float = 0.05  # tok_decline: rejected/payment_declined
    cancel: float = 0.05  # cancelled by the customer right after submitting (or 409 if already shipped)
    expensive: float = 0.05  # at or above the review threshold, approved by an operator
    reads: int = 1  # extra reads per order (a GET of the order and a list of the customer's orders)
    split: float = 0.1  # lines only two different warehouses hold: one shipment from each
    partial: float = 0.05  # asks for a SKU out of stock too: amended to what was reserved

    def pick(self, rng: random.Random) -> str:
        roll = rng.random()
        for kind, share in (
            ("decline", self.decline),
            ("cancel", self.cancel),
            ("expensive", self.expensive),
            ("split", self.split),
            ("partial", self.partial),
        ):
            if roll < share:
                return kind
            roll -= share
        return "ok"


@dataclass
class Catalogue:
    cheap_sku: str
    expensive_sku: str
    # Multi-warehouse kinds (a platform found over its API has none: those orders fall back to ok).
    split_skus: tuple[str, str] | None = None  # each held by one warehouse only, different ones
    scarce_sku: str | None = None  # never in stock: an order asking for it is only partly available
    # Stock per (warehouse, SKU) when the run began, for the invariant checker.
    warehouse_stock: dict[tuple[str, str], int] = field(default_factory=dict)
    # Plain orders of more than one line (`orders bench --sweep`): one line of each of the first
    # ``lines_per_order`` of ``plain_skus`` (an order names each SKU once).
    plain_skus: tuple[str, ...] = ()
    lines_per_order: int = 1

    def lines(self, kind: str, rng: random.Random) -> list[dict]:
        """The items of an order of ``kind``."""
        if kind == "expensive":
            return [{"sku": self.expensive_sku, "quantity": 1}]
        if kind == "split" and self.split_skus is not None:
            return [{"sku": sku, "quantity": rng.randint(1, 2)} for sku in self.split_skus]
        if kind == "partial" and self.scarce_sku is not None:
            return [
                {"sku": self.cheap_sku, "quantity": rng.randint(1, 3)},
                {"sku": self.scarce_sku, "quantity": rng.randint(1, 2)},
            ]
        if self.lines_per_order > 1:
            if len(self.plain_skus) < self.lines_per_order:
                raise ValueError(
                    f"{self.lines_per_order} lines per order need as many SKUs, the catalogue has {len(self.plain_skus)}"
                )
            return [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in self.plain_skus[: self.lines_per_order]]
        return [{"sku": self.cheap_sku, "quantity": rng.randint(1, 3)}]


@dataclass
class Sample:
    at: float  # seconds since the run began
    route: str
    status: int  # 0: no answer (connection error or client timeout)
    latency_s: float
    retry_after: bool = False
    error: str | None = None  # for status 0: what went wrong (ReadTimeout, ConnectError, "deadline: answer", ...)


@dataclass
class OrderOutcome:
    kind: str
    key: str
    customer: str
    submitted_at: float  # seconds since the run began (first attempt)
    order_id: str | None = None
    accepted_at: float | None = None
    ended_at: float | None = None  # when the poller saw the end state
    status: str | None = None
    failure_reason: str | None = None
    server_latency_s: float | None = None  # created_at -> end state, platform clock
    shipped_latency_s: float | None = None  # created_at -> shipped, platform clock
    last_status: str | None = None  # as last read, for reporting orders that never ended
    amended: bool = False  # the customer kept what was available after awaiting_customer


class RequestPhase:
    """Where a request is, from httpcore's trace events, so that a missed deadline says whose
    clock it was on: ``pool`` (still waiting for one of the generator's own connections),
    ``connect`` (TCP handshake: a full listen queue drops SYNs, retransmitted after 1, 3, 7 s...)
    or ``answer`` (sent; waiting in the gateway's socket or in the gateway)."""

    __slots__ = ("where",)

    def __init__(self) -> None:
        self.where = "pool"

    async def trace(self, event: str, info: dict) -> None:
        if event == "connection.connect_tcp.started":
            self.where = "connect"
        elif event == "http11.send_request_headers.started":
            self.where = "answer"


@dataclass
class LoadResult:
    started: float  # time.time() of the start
    duration_s: float  # the load phase
    drain_s: float | None  # from the end of the load phase until every accepted order ended
    samples: list[Sample] = field(default_factory=list)
    orders: list[OrderOutcome] = field(default_factory=list)
    # How late the generator's own event loop woke up at worst: when this is seconds, its
    # latencies and "no answer"s are partly its own doing, not the gateway's.
    max_loop_lag_s: float = 0.0
    clients: str = ""  # how the simulated clients follow their orders

    @property
    def accepted(self) -> list[OrderOutcome]:
        return [o for o in self.orders if o.order_id is not None]

    @property
    def ended(self) -> list[OrderOutcome]:
        return [o for o in self.orders if o.status in TERMINAL]


class LoadGenerator:
    def __init__(
        self,
        base_url: str,
        settings: Settings,
        catalogue: Catalogue,
        *,
        mix: Mix | None = None,
        customers: int = 500,
        seed: int = 1,
        request_timeout_s: float = 15.0,
        poll_interval_s: float | None = None,
        wait_s: int = 20,
        submit_patience_s: float = 60.0,
        status_line: Callable[[str], None] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.base_url = require_loopback(base_url)
        self.catalogue = catalogue
        self.mix = mix or Mix()
        self.rng = random.Random(seed)
        self.run_id = run_id or uuid.uuid4().hex[:6]
        # Many customers: per-caller rate limits see a realistic spread, not one hot caller.
        self.customers = [f"bench-{self.run_id}-{n}" for n in range(customers)]
        self._tokens = {c: mint_token(settings, c, "customer", ttl_s=24 * 3600) for c in self.customers}
        self._operator = mint_token(settings, f"bench-operator-{self.run_id}", "operator", ttl_s=24 * 3600)
        self.request_timeout_s = request_timeout_s
        # A caller whose order is refused (503/429 with Retry-After, or no answer) retries it with the
        # same key for this long, then gives up on placing it, as a shopper at a checkout would.
        self.submit_patience_s = submit_patience_s
        # Long-poll for up to wait_s per read, unless a poll interval asks for the old polling.
        self.poll_interval_s = 1.0 if poll_interval_s is None and not wait_s else poll_interval_s
        self.wait_s = wait_s if self.poll_interval_s is None else 0
        self._status_line = status_line
        self._t0 = time.monotonic()
        self.result = LoadResult(started=time.time(), duration_s=0.0, drain_s=None)
        self._pools: list[httpx.AsyncClient] = []
        self._wait_pools: list[httpx.AsyncClient] = []
        self._stop_submitting = asyncio.Event()
        self._give_up_at = float("inf")

    # --- driving ------------------------------------------------------------------------------

    async def run(
        self,
        *,
        duration_s: float,
        rate: float | None = None,
        concurrency: int | None = None,
        max_orders: int | None = None,
        drain_timeout_s: float = 120.0,
        extra: Callable[[], object] | None = None,
    ) -> LoadResult:
        """Run the load phase for ``duration_s`` (or ``max_orders``), then wait for accepted orders to end."""
        if (rate is None) == (concurrency is None):
            raise ValueError("give exactly one of rate (open loop) or concurrency (closed loop)")
        # Connections are not the bottleneck on purpose: a pool that runs out queues requests in the
        # client, where no load shedding can see them. Real callers arrive on their own connections,
        # so callers are spread over many small pools: the bookkeeping of one httpx pool grows with
        # its connections for every request.
        # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout: otherwise
        # the server may close one just as a request goes out on it (a "server disconnected" error).
        limits = httpx.Limits(
            max_connections=CONNECTIONS_PER_POOL, max_keepalive_connections=CONNECTIONS_PER_POOL, keepalive_expiry=2.0
        )
        async with AsyncExitStack() as pools:
            self._pools = [
                await pools.enter_async_context(
                    httpx.AsyncClient(base_url=self.base_url, timeout=self.request_timeout_s, limits=limits)
                )
                for _ in range(POOLS)
            ]
            # httpx's own timeouts are per phase; a long-poll's read may take its whole wait.
            wait_timeout = httpx.Timeout(self.request_timeout_s, read=self.wait_s + self.request_timeout_s)
            wait_limits = httpx.Limits(
                max_connections=WAIT_CONNECTIONS_PER_POOL,
                max_keepalive_connections=WAIT_CONNECTIONS_PER_POOL,
                keepalive_expiry=2.0,
            )
            if self.wait_s:
                raise_open_files_limit(
                    POOLS * (CONNECTIONS_PER_POOL + WAIT_CONNECTIONS_PER_POOL) + OTHER_OPEN_FILES,
                    what="the bench's connection pools",
                )
            self._wait_pools = [
                await pools.enter_async_context(
                    httpx.AsyncClient(base_url=self.base_url, timeout=wait_timeout, limits=wait_limits)
                )
                for _ in range(POOLS if self.wait_s else 0)
            ]
            self._t0 = time.monotonic()
            self.result = LoadResult(
                started=time.time(),
                duration_s=0.0,
                drain_s=None,
                clients=f"long-poll, wait {self.wait_s} s"
                if self.wait_s
                else f"polling every {self.poll_interval_s:g} s",
            )
            status = asyncio.create_task(self._print_status())
            lag = asyncio.create_task(self._watch_loop_lag())
            extra_task = asyncio.ensure_future(extra()) if extra is not None else None
            tasks: set[asyncio.Task] = set()
            budget = max_orders if max_orders is not None else 10**9
            load_end = self._t0 + duration_s
            self._give_up_at = load_end + drain_timeout_s
            try:
                if rate is not None:
                    n = 0
                    while time.monotonic() < load_end and n < budget:
                        due = self._t0 + n / rate
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                        if len(tasks) < 20_000:  # bound memory even when the platform stalls
                            task = asyncio.create_task(self._one_order())
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                        n += 1
                else:
                    started = 0

                    async def loop() -> None:
                        nonlocal started
                        while time.monotonic() < load_end and started < budget:
                            started += 1
                            await self._one_order()

                    tasks.update(asyncio.create_task(loop()) for _ in range(concurrency or 1))
                    # Until the end of the load phase, or sooner when max_orders were placed and ended.
                    await asyncio.wait(set(tasks), timeout=max(0.0, load_end - time.monotonic()))
                self.result.duration_s = time.monotonic() - self._t0
                self._stop_submitting.set()
                drain_started = time.monotonic()
                if tasks:
                    await asyncio.wait(tasks, timeout=max(1.0, self._give_up_at - time.monotonic()))
                if all(o.status in TERMINAL for o in self.result.accepted):
                    self.result.drain_s = time.monotonic() - drain_started
            finally:
                for task in list(tasks):
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if extra_task is not None:
                    await extra_task
                status.cancel()
                lag.cancel()
                await asyncio.gather(status, lag, return_exceptions=True)
                self._emit(self._line(final=True))
        return self.result

    # --- one order ------------------------------------------------------------------------------

    async def _one_order(self) -> None:
        kind = self.mix.pick(self.rng)
        if (kind == "split" and self.catalogue.split_skus is None) or (
            kind == "partial" and self.catalogue.scarce_sku is None
        ):
            kind = "ok"  # a catalogue found over the API has no multi-warehouse SKUs of this run
        customer = self.rng.choice(self.customers)
        outcome = OrderOutcome(kind=kind, key=uuid.uuid4().hex, customer=customer, submitted_at=self._now())
        self.result.orders.append(outcome)
        body = {
            "items": self.catalogue.lines(kind, self.rng),
            "shipping_address": ADDRESS,
            "payment_token": "tok_decline" if kind == "decline" else "tok_ok",
        }
        headers = {**self._auth(customer), "Idempotency-Key": outcome.key}
        response = await self._call_retrying(
            ROUTE_SUBMIT, "POST", "/v1/orders", patience_s=self.submit_patience_s, json=body, headers=headers
        )
        if response is None or response.status_code not in (200, 202):
            return
        view = response.json()
        outcome.order_id, outcome.accepted_at = view["id"], self._now()
        path = f"/v1/orders/{outcome.order_id}"
        if kind == "cancel":
            await asyncio.sleep(self.rng.uniform(0.0, 0.2))
            await self._call_retrying(
                ROUTE_CANCEL, "POST", f"{path}/cancel", json={"reason": "bench"}, headers=self._auth(customer)
            )
        for _ in range(self.mix.reads):
            await self._call(ROUTE_LIST, "GET", "/v1/orders", params={"limit": 10}, headers=self._auth(customer))
        approved = amend_asked = False
        interval = self.poll_interval_s or 0.0
        await asyncio.sleep(interval)
        while self._now_mono() < self._give_up_at:
            if self.wait_s:
                # Woken when the order ends or waits for what this client does (approve, amend).
                until = sorted(
                    TERMINAL
                    | (set() if approved else {"awaiting_review"})
                    | (set() if amend_asked else {"awaiting_customer"})
                )
                wait = int(min(self.wait_s, max(1.0, self._give_up_at - self._now_mono())))
                response = await self._call(
                    ROUTE_GET,
                    "GET",
                    path,
                    params={"wait": wait, "until": until},
                    headers=self._auth(customer),
                    deadline_s=wait + self.request_timeout_s,
                )
            else:
                response = await self._call(ROUTE_GET, "GET", path, headers=self._auth(customer))
            if response is not None and response.status_code == 200:
                view = response.json()
                outcome.last_status = view["status"]
                if view["status"] in TERMINAL:
                    self._record_end(outcome, view)
                    return
                if view["status"] == "awaiting_review" and not approved:
                    answer = await self._call_retrying(
                        ROUTE_REVIEW,
                        "POST",
                        f"{path}/review",
                        json={"decision": "approve", "note": "bench"},
                        headers={"Authorization": f"Bearer {self._operator}"},
                    )
                    approved = answer is not None and answer.status_code in (200, 409)
                    if approved:
                        continue
                if view["status"] == "awaiting_customer" and not amend_asked:
                    amend_asked = True
                    answer = await self._call_retrying(
                        ROUTE_AMEND,
                        "POST",
                        f"{path}/amend",
                        json={"items": available_items(view)},
                        headers=self._auth(customer),
                    )
                    outcome.amended = answer is not None and answer.status_code in (200, 202)
                    if outcome.amended:
                        continue
            shed = response is None or response.status_code in (429, 503)
            await asyncio.sleep(max(self._retry_delay(response), interval) if shed else interval)

    def _record_end(self, outcome: OrderOutcome, view: dict) -> None:
        outcome.status, outcome.failure_reason, outcome.ended_at = (
            view["status"],
            view.get("failure_reason"),
            self._now(),
        )
        created = _parse_time(view["created_at"])
        ended = next((_parse_time(h["at"]) for h in view["history"] if h["status"] == view["status"]), None)
        shipped = next((_parse_time(h["at"]) for h in view["history"] if h["status"] == "shipped"), None)
        if ended is not None:
            outcome.server_latency_s = (ended - created).total_seconds()
        if shipped is not None:
            outcome.shipped_latency_s = (shipped - created).total_seconds()

    # --- HTTP -----------------------------------------------------------------------------------

    def _auth(self, customer: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._tokens[customer]}"}

    async def _call(
        self, route: str, method: str, path: str, *, deadline_s: float | None = None, **kwargs
    ) -> httpx.Response | None:
        """One request within ``deadline_s`` (default the request timeout; a long-poll's is its wait
        plus that). Long-polls go over pools of their own: a connection parked for its wait must not
        keep another request of the same pool waiting for a connection."""
        assert self._pools, "run() opens the connection pools"
        caller = (kwargs.get("headers") or {}).get("Authorization", "")
        pools = self._wait_pools if deadline_s is not None else self._pools
        http = pools[hash(caller) % len(pools)]
        started = time.monotonic()
        phase = RequestPhase()
        try:
            # One deadline for the whole request (httpx's timeouts are per phase: pool, connect,
            # write and each read could take that long in turn).
            async with asyncio.timeout(deadline_s or self.request_timeout_s):
                response = await http.request(method, path, extensions={"trace": phase.trace}, **kwargs)
        except (httpx.HTTPError, TimeoutError) as error:
            kind = f"deadline: {phase.where}" if isinstance(error, TimeoutError) else type(error).__name__
            self.result.samples.append(Sample(started - self._t0, route, 0, time.monotonic() - started, error=kind))
            return None
        self.result.samples.append(
            Sample(
                started - self._t0,
                route,
                response.status_code,
                time.monotonic() - started,
                "Retry-After" in response.headers,
            )
        )
        return response

    async def _call_retrying(
        self, route: str, method: str, path: str, *, patience_s: float | None = None, **kwargs
    ) -> httpx.Response | None:
        """Retry 429/503 (after Retry-After) and dropped connections with the same request, until the
        run gives up, or the caller does (``patience_s`` after its first attempt)."""
        first = self._now_mono()
        while True:
            response = await self._call(route, method, path, **kwargs)
            if response is not None and response.status_code not in (429, 503):
                return response
            delay = self._retry_delay(response)
            if self._now_mono() + 0.5 > self._give_up_at:
                return response
            if patience_s is not None and self._now_mono() + delay > first + patience_s:
                return response  # the caller gives up: this order was not placed
            if (
                route == ROUTE_SUBMIT
                and self._stop_submitting.is_set()
                and response is not None
                and response.status_code == 429
            ):
                return response  # over the limit after the load phase: this order simply was not placed
            await asyncio.sleep(delay)

    def _retry_delay(self, response: httpx.Response | None) -> float:
        """Never sooner than Retry-After (it is a minimum; values past a minute are taken as one),
        plus jitter so shed callers do not come back in one herd; 0.5 s after a dropped connection."""
        if response is None:
            return 0.5 * self.rng.uniform(1.0, 1.5)
        try:
            wait = min(float(response.headers.get("Retry-After", "1")), 60.0)
        except ValueError:
            wait = 1.0
        return wait * self.rng.uniform(1.0, 1.5)

    # --- status ---------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _now_mono(self) -> float:
        return time.monotonic()

    def _line(self, final: bool = False) -> str:
        now = self._now()
        recent = [s for s in self.result.samples if s.route == ROUTE_SUBMIT and s.at >= now - 1.0]
        lat = sorted(s.latency_s for s in recent)
        p99 = f"{lat[int(0.99 * (len(lat) - 1))] * 1000:.0f}ms" if lat else "-"
        accepted = sum(1 for o in self.result.orders if o.order_id is not None)
        ended = sum(1 for o in self.result.orders if o.status in TERMINAL)
        errors = sum(1 for s in self.result.samples if s.status == 0 or s.status >= 500)
        limited = sum(1 for s in self.result.samples if s.status == 429)
        return (
            f"t={now:5.0f}s submitted={len(self.result.orders)} accepted={accepted} ended={ended} "
            f"in_flight={accepted - ended} submit_p99(1s)={p99} 429={limited} 5xx/none={errors}"
            + (" (done)" if final else "")
        )

    def _emit(self, line: str) -> None:
        if self._status_line is not None:
            self._status_line(line)

    async def _watch_loop_lag(self, tick_s: float = 0.1) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(tick_s)
            self.result.max_loop_lag_s = max(self.result.max_loop_lag_s, time.monotonic() - before - tick_s)

    async def _print_status(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._emit(self._line())


def status_printer(stream=None) -> Callable[[str], None]:
    """One status line a second: rewritten in place on a terminal, one line each otherwise."""
    stream = stream or sys.stderr
    tty = stream.isatty()

    def emit(line: str) -> None:
        if tty:
            stream.write("\r\x1b[2K" + line + ("\n" if line.endswith("(done)") else ""))
        else:
            stream.write(line + "\n")
        stream.flush()

    return emit


def available_items(view: dict) -> list[dict]:
    """What a customer keeps when only part of the order is available: each line less what the
    order's ``unavailable`` says is missing, lines with nothing left dropped."""
    missing: dict[str, int] = {}
    for line in view.get("unavailable") or []:
        missing[line["sku"]] = missing.get(line["sku"], 0) + line["quantity"]
    kept = [{"sku": line["sku"], "quantity": line["quantity"] - missing.get(line["sku"], 0)} for line in view["items"]]
    return [line for line in kept if line["quantity"] > 0]


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
