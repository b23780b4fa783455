"""Prometheus metrics: the gateway's RED metrics and ``/metrics``, and the worker's SDK runtime endpoint.

Two sources, two endpoints:

* The gateway counts requests, errors and durations per route template with ``prometheus_client``
  and serves them on ``/metrics`` (scraped per replica; the middleware is in ``api/observability.py``).
* Workers expose the Temporal SDK runtime's own Prometheus endpoint (``ORDERS_WORKER_METRICS_PORT``):
  the SDK's ``temporal_*`` metrics plus the platform's business metrics, which are emitted through
  Temporal's metric meters (``workflow.metric_meter()`` does nothing during replay, so a replayed
  history never counts an order twice).

Metric names are the contract of the dashboard (``deploy/grafana``) and the alert rules
(``deploy/prometheus/alerts.yml``); the tests scrape them by these names.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import ARRAY, DateTime, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from core.config import Settings
from core.domain import OrderStatus

log = structlog.get_logger(__name__)

# Business metrics (emitted on workers through Temporal's meters; names as Prometheus shows them).
ORDERS_TERMINAL = "orders_terminal"  # counter {status, reason}
ORDERS_RECEIVED_TO_SHIPPED = "orders_received_to_shipped_seconds"  # histogram
ORDERS_TIME_TO_TERMINAL = "orders_time_to_terminal_seconds"  # histogram {status}
ORDERS_COMPENSATIONS = "orders_compensations"  # counter {step}
ORDERS_PROVIDER_CALLS = "orders_provider_calls"  # counter {activity_type, outcome: ok|rejected|error}
ORDERS_PAYMENT_RETRIES = "orders_payment_retries"  # counter {activity_type}: attempts after the first

# Seconds; submission latency SLOs sit around 0.25-1 s, order lead times around seconds to hours.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
LEAD_TIME_BUCKETS = [1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600]


# --- workers: the SDK runtime --------------------------------------------------------------------


@lru_cache
def _prometheus_runtime(bind_address: str) -> Runtime:
    # One runtime per process and address: it owns the HTTP listener, which can be bound once.
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=bind_address,
                counters_total_suffix=True,
                durations_as_seconds=True,
                histogram_bucket_overrides={
                    ORDERS_RECEIVED_TO_SHIPPED: LEAD_TIME_BUCKETS,
                    ORDERS_TIME_TO_TERMINAL: LEAD_TIME_BUCKETS,
                },
            ),
        )
    )


def worker_runtime(settings: Settings) -> Runtime | None:
    """The Temporal runtime serving Prometheus metrics on ``worker_metrics_port``; None when unset
    (the SDK's default runtime, no endpoint)."""
    if settings.worker_metrics_port is None:
        return None
    return _prometheus_runtime(f"{settings.worker_metrics_host}:{settings.worker_metrics_port}")


# --- gateway: RED metrics ------------------------------------------------------------------------


class GatewayMetrics:
    """The gateway's request metrics, in a registry of their own (one per app, so tests can build
    several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "orders_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "orders_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )

        self.loop_lag = Gauge(
            "orders_gateway_event_loop_lag_seconds",
            "How late the gateway's event loop last woke up while serving requests (load shedding starts at ORDERS_API_MAX_EVENT_LOOP_LAG_S)",
            registry=self.registry,
        )

        self.start_backlog = Gauge(
            "orders_gateway_start_backlog_seconds",
            "How long the oldest order no worker has started yet has waited, from Temporal's task-queue "
            "statistics (new orders are refused beyond ORDERS_API_MAX_START_DELAY_S); -1 while unknown",
            registry=self.registry,
        )
        self.start_backlog.set(-1)

        self.open_orders = Gauge(
            "orders_open",
            "Orders not yet in a terminal status, from the read model",
            ["status"],
            registry=self.registry,
        )
        self.stuck_orders = Gauge(
            "orders_stuck",
            "Non-terminal orders that have not moved past their deadline (ORDERS_STUCK_ORDER_AFTER_S)",
            ["status"],
            registry=self.registry,
        )
        self.refresh_failures = Counter(
            "orders_read_model_scrape_failures", "Scrapes whose read-model query failed", registry=self.registry
        )
        self.key_sweeps = KeySweepMetrics(self.registry)

    async def refresh_read_model(self, engine: AsyncEngine, settings: Settings, *, timeout_s: float = 2.0) -> None:
        """Update the open/stuck gauges from the read model. Every replica reports the same numbers:
        aggregate them with max(), not sum()."""
        try:
            rows = await asyncio.wait_for(open_orders(engine, settings), timeout=timeout_s)
        except Exception as error:
            self.refresh_failures.inc()
            log.warning("read-model metrics not refreshed", error=f"{type(error).__name__}: {error}")
            return
        self.open_orders.clear()
        self.stuck_orders.clear()
        for status in OrderStatus:
            if not status.is_terminal:
                self.open_orders.labels(status.value).set(0)
                self.stuck_orders.labels(status.value).set(0)
        for row_status, count, stuck in rows:
            self.open_orders.labels(row_status).set(count)
            self.stuck_orders.labels(row_status).set(stuck)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class KeySweepMetrics:
    """The Idempotency-Key sweeper's metrics (core/key_sweeper.py). Only the replica that held the
    lock counts deletions, so sum() over replicas is the total; the last-success time is max()."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "orders_idempotency_key_sweeps",
            "Sweeps of expired Idempotency-Key records by outcome: swept, skipped (another replica "
            "held the lock) or failed",
            ["outcome"],
            registry=registry,
        )
        self.deleted = Counter(
            "orders_idempotency_keys_swept", "Expired Idempotency-Key records deleted", registry=registry
        )
        self.last_success = Gauge(
            "orders_idempotency_key_sweep_last_success_timestamp_seconds",
            "When this replica last finished a sweep (Unix time)",
            registry=registry,
        )
        for outcome in ("swept", "skipped", "failed"):
            self.runs.labels(outcome)


_OPEN_ORDERS = text(
    """
    SELECT status,
           count(*) AS open,
           count(*) FILTER (WHERE updated_at < CASE status
               WHEN 'awaiting_review' THEN :review_cutoff
               WHEN 'awaiting_customer' THEN :customer_cutoff
               WHEN 'shipped' THEN :delivery_cutoff
               ELSE :cutoff END) AS stuck
    FROM orders
    WHERE status <> ALL(:terminal)
      -- This region's orders only: a peer's replicated ones are its own to report (and look stuck
      -- here while it is cut off). '' = written before regions.
      AND region IN (:region, '')
    GROUP BY status
    """
).bindparams(
    bindparam("cutoff", type_=DateTime(timezone=True)),
    bindparam("review_cutoff", type_=DateTime(timezone=True)),
    bindparam("customer_cutoff", type_=DateTime(timezone=True)),
    bindparam("delivery_cutoff", type_=DateTime(timezone=True)),
    bindparam("terminal", type_=ARRAY(String)),
    bindparam("region", type_=String),
)


async def open_orders(engine: AsyncEngine, settings: Settings) -> list[tuple[str, int, int]]:
    """(status, open, stuck) for every non-terminal status that has orders."""
    now = datetime.now(UTC)
    grace = timedelta(seconds=settings.stuck_order_after_s)
    async with engine.connect() as conn:
        result = await conn.execute(
            _OPEN_ORDERS,
            {
                "cutoff": now - grace,
                "review_cutoff": now - grace - timedelta(seconds=settings.review_timeout_s),
                # Waiting for the customer's answer is normal until the response timeout cancels it.
                "customer_cutoff": now - grace - timedelta(seconds=settings.customer_response_timeout_s),
                "delivery_cutoff": now - grace - timedelta(seconds=settings.delivery_deadline_s),
                "terminal": [status.value for status in OrderStatus if status.is_terminal],
                "region": settings.region,
            },
        )
        return [(row.status, row.open, row.stuck) for row in result]
