"""Timeouts and retry policies, one named set per kind of call, with the non-retryable errors spelled out.

Start-to-close timeouts are short and honest: a crashed worker is only noticed when they expire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio.common import RetryPolicy

from core.domain import ERR_OUT_OF_STOCK, ERR_PAYMENT_DECLINED, ERR_PROVIDER_REJECTED


@dataclass(frozen=True)
class CallPolicy:
    start_to_close: timedelta
    schedule_to_close: timedelta
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def options(self) -> dict:
        return {
            "start_to_close_timeout": self.start_to_close,
            "schedule_to_close_timeout": self.schedule_to_close,
            "retry_policy": self.retry,
        }


# Database work (reserve/release/commit stock): retried through a database outage of minutes.
STOCK = CallPolicy(
    start_to_close=timedelta(seconds=10),
    schedule_to_close=timedelta(hours=1),
    retry=RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
        non_retryable_error_types=[ERR_OUT_OF_STOCK],
    ),
)

# Authorization: the first attempt may be slow; after a few minutes of provider failure we give up
# and compensate (the order fails with payment_unavailable) rather than keep stock reserved forever.
AUTHORIZE = CallPolicy(
    start_to_close=timedelta(seconds=5),
    schedule_to_close=timedelta(minutes=5),
    retry=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=20),
        non_retryable_error_types=[ERR_PAYMENT_DECLINED, ERR_PROVIDER_REJECTED],
    ),
)

# Money movements after the decision (capture, void, refund) and other compensations must
# eventually happen: they retry for a day, with bounded backoff.
SETTLEMENT = CallPolicy(
    start_to_close=timedelta(seconds=10),
    schedule_to_close=timedelta(days=1),
    retry=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
        non_retryable_error_types=[ERR_PROVIDER_REJECTED],
    ),
)

# Shipment creation: a carrier that stays down this long fails the order (carrier_unavailable).
CREATE_SHIPMENT = CallPolicy(
    start_to_close=timedelta(seconds=5),
    schedule_to_close=timedelta(minutes=2),
    retry=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=5,
        non_retryable_error_types=[ERR_PROVIDER_REJECTED],
    ),
)

# Read-model projection (local activity): cheap, idempotent, retried through database outages.
PROJECTION = CallPolicy(
    start_to_close=timedelta(seconds=10),
    schedule_to_close=timedelta(hours=1),
    retry=RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
    ),
)

# Stock work as a local activity on the order's worker (lean runs, PATCH_LEAN_HISTORY): the same
# limits as STOCK. Its retries stay inside the worker (every backoff is under the SDK's default
# local_retry_threshold of one minute), so a database outage costs workflow-task heartbeats in the
# history, as the projection's retries already do, and no timer actions; the projection that follows
# waits for the same database anyway. Out of stock is an answer, not a fault: never retried.
LOCAL_STOCK = CallPolicy(
    start_to_close=STOCK.start_to_close,
    schedule_to_close=STOCK.schedule_to_close,
    retry=STOCK.retry,
)
