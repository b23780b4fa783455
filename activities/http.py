"""Turning provider HTTP answers into Temporal's retry semantics.

Timeouts, refused connections, 5xx, 429 and the provider's own 409 "request in progress" are
transient: the activity raises and Temporal retries with backoff, no sooner than a Retry-After the
provider sent. Every other 4xx is a business answer and non-retryable.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from core.config import Settings
from core.domain import ERR_PAYMENT_DECLINED, ERR_PROVIDER_REJECTED

TRANSIENT_STATUSES = {408, 409, 425, 429}
# A provider asking for a longer pause than this is retried after this long anyway: the activity's
# own schedule-to-close window decides when to give up, not one answer's header.
MAX_RETRY_AFTER_S = 60
# The type of a transient refusal that carried Retry-After (retryable: in no policy's non-retryable list).
ERR_PROVIDER_UNAVAILABLE = "ProviderUnavailable"


def provider_client(settings: Settings) -> httpx.AsyncClient:
    """One pooled client per worker process, with explicit timeouts on every phase."""
    timeout = httpx.Timeout(
        connect=settings.provider_connect_timeout_s,
        read=settings.provider_read_timeout_s,
        write=settings.provider_read_timeout_s,
        pool=settings.provider_connect_timeout_s,
    )
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=100))


async def post_idempotent(http: httpx.AsyncClient, url: str, *, json: dict, idempotency_key: str) -> httpx.Response:
    """POST with an Idempotency-Key; returns only definitive answers (2xx or business 4xx)."""
    response = await http.post(url, json=json, headers={"Idempotency-Key": idempotency_key})
    if response.status_code >= 500 or response.status_code in TRANSIENT_STATUSES:
        message = f"provider answered {response.status_code} for POST {url}"
        delay = retry_after(response)
        if delay is not None:
            # Retryable, but not sooner than the provider asked: retrying earlier only meets the
            # same refusal and spends the provider's rate budget.
            raise ApplicationError(message, type=ERR_PROVIDER_UNAVAILABLE, next_retry_delay=delay)
        # Plain exception: retryable with the policy's backoff, and the message says what the provider answered.
        raise RuntimeError(message)
    return response


def retry_after(response: httpx.Response) -> timedelta | None:
    """The answer's Retry-After in seconds (RFC 9110 delay-seconds), capped; None when absent or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    if not value.isdigit():
        return None
    return timedelta(seconds=min(int(value), MAX_RETRY_AFTER_S))


def error_code(response: httpx.Response) -> str:
    """The provider's error code from a body like {"error": {"code": ...}}; "unknown" for any other body.

    Never raises: a decline with an unexpected body must still be a decline, not a retryable crash."""
    try:
        body = response.json()
    except ValueError:
        return "unknown"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") is not None:
        return str(error["code"])
    return "unknown"


def rejected(response: httpx.Response, what: str, *, error_type: str = ERR_PROVIDER_REJECTED) -> ApplicationError:
    code = error_code(response)
    return ApplicationError(
        f"{what} refused by provider: {response.status_code} {code}",
        {"status": response.status_code, "code": code},
        type=error_type,
        non_retryable=True,
        # Declines are business answers, not incidents: keep them out of error logs and metrics.
        category=ApplicationErrorCategory.BENIGN
        if error_type == ERR_PAYMENT_DECLINED
        else ApplicationErrorCategory.UNSPECIFIED,
    )
