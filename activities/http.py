"""Turning provider HTTP answers into Temporal's retry semantics.

Timeouts, refused connections, 5xx, 429 and the provider's own 409 "request in progress" are
transient: the activity raises and Temporal retries with backoff. Every other 4xx is a business answer
and non-retryable.
"""

from __future__ import annotations

import httpx
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from core.config import Settings
from core.domain import ERR_PAYMENT_DECLINED, ERR_PROVIDER_REJECTED

TRANSIENT_STATUSES = {408, 409, 425, 429}


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
        # Plain exception: retryable, and the message says what the provider answered.
        raise RuntimeError(f"provider answered {response.status_code} for POST {url}")
    return response


def error_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", {}).get("code", "unknown"))
    except ValueError:
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
