"""Load shedding: a gateway under more load than it can serve answers fast with 503 + Retry-After
instead of queueing requests until callers time out.

Three limits per gateway process, all plain ASGI:

* ``ORDERS_API_MAX_IN_FLIGHT`` requests are handled at once; one more is refused at the door
  (503, ``overloaded``) before any route, database or Temporal work is done for it.
* ``ORDERS_API_MAX_EVENT_LOOP_LAG_S``: while the event loop runs that late, new requests are refused
  the same way. A gateway starved of CPU (a spike on a shared host) may never reach the in-flight
  cap, yet every request waits in line before it is even read; a cheap 503 lets the loop catch up.
  The lag is measured by a ticker that runs only while requests are in flight.
* ``ORDERS_API_REQUEST_TIMEOUT_S``: a request that has no answer by then gets 503 (``timeout``).
  The handler is *not* cancelled: a submission past its idempotency claim runs on to its workflow
  start, so nothing is left half done; its late answer is dropped, and the caller's retry with
  the same Idempotency-Key gets the order. Its in-flight slot is freed only when it really ends,
  so detached handlers still count against the limit.

A request that waits on purpose (a long-poll, ``GET /v1/orders/{id}?wait=``) is *parked* while it
waits: it holds no database connection and costs nothing but a timer, so it is not counted in
flight then (a few hundred clients waiting on their orders must not shed everyone else), and its
request timeout counts only the time it is not parked (the route bounds the wait itself). The route parks with
``async with scope["state"]["parked"](wait_s):``; the number of waiters is bounded where they wait
(``ORDERS_API_MAX_WAITERS``). The time spent parked is added up in ``scope["state"]["parked_s"]``
so the request metrics can leave it out of the gateway's latency.

How long a shed caller is told to stay away (``Retry-After``) follows the overload
(:class:`RetryAfterPacer`): ``1 + shed // served`` seconds over the last few seconds, up to
``ORDERS_API_MAX_RETRY_AFTER_S``. A fixed second brings every shed caller back at once: under a
spike the retries alone then exceed what the gateway serves, and it spends its CPU refusing the
same callers again while answers queue in its sockets past their callers' deadlines.

New orders are also refused at the door, 503 ``backlogged``, while the workers keep new orders
waiting longer than ``ORDERS_API_MAX_START_DELAY_S`` (api/backlog.py).

Health, readiness and metrics endpoints are exempt: an orchestrator must see an overloaded gateway
as alive (and a load balancer reads ``/readyz``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from contextlib import asynccontextmanager

import structlog

from api.backlog import Refusal
from api.middleware import send_problem

log = structlog.get_logger(__name__)

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
SUBMIT_PATH = "/v1/orders"


class RetryAfterPacer:
    """The Retry-After for a shed request, from what this gateway shed and served lately.

    Callers shed within the last ``window_s`` seconds come back after Retry-After; for the load they
    bring back to match what the gateway serves, ``shed / retry_after`` must not exceed ``served``
    per second: hence ``1 + shed // served`` (one shed per served: 2 s; none served: one second
    per shed one), never below ``min_s`` nor above ``max_s``. When the overload passes the window
    empties and the answer is ``min_s`` again."""

    def __init__(
        self, *, min_s: int = 1, max_s: int = 30, window_s: int = 5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 1 <= min_s <= max_s:
            raise ValueError("need 1 <= min_s <= max_s")
        self.min_s, self.max_s, self.window_s = min_s, max_s, window_s
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, served, shed], oldest first

    def _bucket(self) -> list[int]:
        now = int(self._clock())
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != now:
            self._buckets.append([now, 0, 0])
        return self._buckets[-1]

    def served(self) -> None:
        self._bucket()[1] += 1

    def shed(self) -> str:
        """Count one shed request and return its Retry-After value."""
        self._bucket()[2] += 1
        served = sum(bucket[1] for bucket in self._buckets)
        shed = sum(bucket[2] for bucket in self._buckets)
        seconds = 1 + shed // max(served, 1)
        return str(min(self.max_s, max(self.min_s, seconds)))


class LoadShedding:
    TICK_S = 0.1

    def __init__(
        self,
        app,
        *,
        max_in_flight: int,
        request_timeout_s: float,
        max_loop_lag_s: float = 1.0,
        retry_after_s: float = 1.0,
        max_retry_after_s: float = 30.0,
        admission: Callable[[], Refusal | None] | None = None,
        on_lag=None,
    ) -> None:
        """``admission``: asked for every submission (POST /v1/orders); a Refusal answers it 503
        ``backlogged`` at the door (api/backlog.py)."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be positive")
        self.app = app
        self.max_in_flight = max_in_flight
        self.request_timeout_s = request_timeout_s
        minimum = max(1, math.ceil(retry_after_s))
        self.pacer = RetryAfterPacer(min_s=minimum, max_s=max(minimum, math.ceil(max_retry_after_s)))
        self.max_loop_lag_s = max_loop_lag_s
        self._admission = admission
        self.loop_lag_s = 0.0  # the latest measured lateness of the event loop
        self._on_lag = on_lag  # callback(seconds), e.g. a metrics gauge
        self._ticker: asyncio.Task | None = None
        self.in_flight = 0
        self.parked = 0  # requests waiting on purpose, not counted in flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            return await self.app(scope, receive, send)
        request_id = scope.get("state", {}).get("request_id", "")
        self._watch_loop_lag()
        if self._admission is not None and scope["method"] == "POST" and scope["path"].rstrip("/") == SUBMIT_PATH:
            refusal = self._admission()
            if refusal is not None:
                self.pacer.shed()  # counted with the rest of what is refused
                return await send_problem(
                    send,
                    503,
                    "Backlogged",
                    refusal.detail,
                    request_id,
                    scope["path"],
                    "backlogged",
                    headers=[(b"retry-after", str(refusal.retry_after_s).encode())],
                    id_header=False,
                )
        if self.in_flight >= self.max_in_flight or self.loop_lag_s > self.max_loop_lag_s:
            why = (
                f"the gateway is handling {self.max_in_flight} requests"
                if self.in_flight >= self.max_in_flight
                else f"the gateway is {self.loop_lag_s:.1f} s behind"
            )
            retry_after = self.pacer.shed()
            return await send_problem(
                send,
                503,
                "Overloaded",
                f"{why}; retry after {retry_after} s",
                request_id,
                scope["path"],
                "overloaded",
                headers=[(b"retry-after", retry_after.encode())],
                id_header=False,
            )
        self.pacer.served()

        started = False
        detached = False

        async def guarded_send(message):
            nonlocal started
            if detached:
                return  # the caller already has its 503
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        def release(task: asyncio.Future) -> None:
            self.in_flight -= 1
            if detached and not task.cancelled() and task.exception() is not None:
                log.error("detached request failed after its 503", path=scope["path"], exc_info=task.exception())

        loop = asyncio.get_running_loop()
        began = loop.time()
        parked_since: float | None = None
        unparked = asyncio.Event()
        state = scope.setdefault("state", {})

        @asynccontextmanager
        async def parked(_wait_s: float):
            # The route bounds its own wait; while parked the request timeout's clock stops.
            nonlocal parked_since
            self.in_flight -= 1
            self.parked += 1
            parked_since = since = loop.time()
            unparked.clear()
            try:
                yield
            finally:
                self.in_flight += 1
                self.parked -= 1
                state["parked_s"] = state.get("parked_s", 0.0) + loop.time() - since
                parked_since = None
                unparked.set()

        state["parked"] = parked
        self.in_flight += 1
        handler = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        handler.add_done_callback(release)
        while True:
            if parked_since is not None:
                resumed = asyncio.ensure_future(unparked.wait())
                done, _ = await asyncio.wait({handler, resumed}, return_when=asyncio.FIRST_COMPLETED)
                resumed.cancel()
            else:
                # The request's own time: everything but its parked time.
                active_deadline = began + self.request_timeout_s + state.get("parked_s", 0.0)
                if loop.time() >= active_deadline:
                    break
                done, _ = await asyncio.wait({handler}, timeout=active_deadline - loop.time())
            if handler in done:
                return handler.result()  # re-raises the handler's error for the outer middleware
        if started:
            # The answer is already streaming; it is not ours to replace. Wait for it.
            return await handler
        detached = True
        retry_after = self.pacer.shed()
        log.warning(
            "request timed out; answered 503, handler continues", path=scope["path"], timeout_s=self.request_timeout_s
        )
        await send_problem(
            send,
            503,
            "Request timed out",
            f"no answer within {self.request_timeout_s:g} s; retry after {retry_after} s "
            "(a submission is safe to retry with the same Idempotency-Key)",
            request_id,
            scope["path"],
            "timeout",
            headers=[(b"retry-after", retry_after.encode())],
            id_header=False,
        )

    def _watch_loop_lag(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="gateway-loop-lag")

    async def _tick(self) -> None:
        """Measure how late a short sleep wakes up; stop after a second without requests."""
        loop = asyncio.get_running_loop()
        idle_ticks = 0
        while idle_ticks < 10:
            before = loop.time()
            await asyncio.sleep(self.TICK_S)
            self.loop_lag_s = max(0.0, loop.time() - before - self.TICK_S)
            if self._on_lag is not None:
                self._on_lag(self.loop_lag_s)
            idle_ticks = idle_ticks + 1 if self.in_flight == 0 else 0
        self.loop_lag_s = 0.0
