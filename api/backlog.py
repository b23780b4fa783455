"""Admission control for new orders: how long the workers keep new orders waiting.

An accepted order whose workflow the workers cannot start for minutes helps nobody: the caller
has a 202 and nothing happens, and every such order adds to the backlog the platform must drain
before it catches up (its status reads, its cancel attempts, its workflow's cache slot). The
signal is Temporal's own: the approximate age of the oldest workflow task waiting on the orders'
task queue (``DescribeTaskQueue`` with ``report_stats``; sticky tasks of orders already running are
not on it, so it is the wait of orders not yet started by any worker). While it is above
``ORDERS_API_MAX_START_DELAY_S`` the gateway answers submissions 503 ``backlogged`` with Retry-After
at the door (api/overload.py: no token check, no body, no database, so refusing costs next to
nothing while it is busiest), and accepts again as soon as the workers catch up. A refused retry of
an order accepted earlier is safe: its order exists and runs, and the same Idempotency-Key after
Retry-After answers it. One check per gateway process every ``ORDERS_API_BACKLOG_CHECK_S``; when
Temporal cannot be asked, nothing is refused on this ground (the submission then finds out itself).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.service import RPCError

from core.config import Settings
from core.domain import DependencyUnavailable
from core.temporal import TemporalConnection

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Refusal:
    """Why submissions are refused now, and when to come back."""

    age_s: float
    limit_s: float
    retry_after_s: int

    @property
    def detail(self) -> str:
        return (
            f"the platform is behind: new orders wait {self.age_s:.0f} s for a worker (limit {self.limit_s:g} s); "
            f"nothing was done now. Retry after {self.retry_after_s} s with the same Idempotency-Key (an order "
            "already accepted under it is safe and is answered then)"
        )


class StartBacklog:
    """The age of the orders' workflow-task backlog, re-read in the background (see the module)."""

    def __init__(self, settings: Settings, *, on_age: Callable[[float | None], None] | None = None) -> None:
        """``on_age``: told every age read (None: unknown), e.g. a metrics gauge. Nothing is read
        before :meth:`connect`."""
        self._settings = settings
        self._temporal: TemporalConnection | None = None
        self._on_age = on_age
        self.age_s: float | None = None  # None: not known (not checked yet, or Temporal unreachable)
        self.count = 0  # workflow tasks waiting (approximate)
        self.dispatch_rate = 0.0  # workflow tasks handed to workers per second lately
        self._task: asyncio.Task | None = None
        self._refusing = False

    @property
    def enabled(self) -> bool:
        return self._settings.api_max_start_delay_s > 0

    def connect(self, temporal: TemporalConnection) -> None:
        """Check through ``temporal`` from now on, in the background (when enabled)."""
        self._temporal = temporal
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="start-backlog")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def refusal(self) -> Refusal | None:
        """The error to answer a new order with now, or None to accept it."""
        limit = self._settings.api_max_start_delay_s
        age = self.age_s
        if not self.enabled or age is None or age <= limit:
            return None
        # Come back when the workers have worked off what is queued ahead now (its count at their
        # current pace: a refused caller retrying sooner would only be refused again, and such
        # retries alone would load the gateway), and not before the age is under the limit.
        cap = self._settings.api_max_retry_after_s
        drain_s = self.count / self.dispatch_rate if self.dispatch_rate > 0 else cap
        retry_after = min(cap, math.ceil(max(age - limit, drain_s, 1.0)))
        return Refusal(age, limit, retry_after)

    async def check(self) -> float | None:
        """Read the backlog's age now (and keep it in :attr:`age_s`)."""
        settings = self._settings
        if self._temporal is None:
            return None
        try:
            client = await self._temporal.client()
            response = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(name=settings.task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                    report_stats=True,
                ),
                timeout=timedelta(seconds=settings.temporal_rpc_timeout_s),
            )
        except (DependencyUnavailable, RPCError, RuntimeError, TimeoutError) as error:
            if self.age_s is not None:
                log.warning("cannot read the workers' backlog; not refusing orders on it", error=str(error))
            self._report(None)
            return None
        backlog = response.stats
        self.count = backlog.approximate_backlog_count
        self.dispatch_rate = backlog.tasks_dispatch_rate
        age_s = backlog.approximate_backlog_age.ToTimedelta().total_seconds() if self.count else 0.0
        self._report(age_s)
        refusing = self.refusal() is not None
        if refusing != self._refusing:
            self._refusing = refusing
            log.warning(
                "refusing new orders: the workers are behind" if refusing else "accepting new orders again",
                backlog_age_s=round(age_s, 1),
                backlog_count=self.count,
                dispatch_per_s=round(self.dispatch_rate, 1),
                max_start_delay_s=settings.api_max_start_delay_s,
            )
        return age_s

    def _report(self, age_s: float | None) -> None:
        self.age_s = age_s
        if self._on_age is not None:
            self._on_age(age_s)

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._settings.api_backlog_check_s)
