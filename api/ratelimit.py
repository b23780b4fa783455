"""Per-caller rate limits (the ``limits`` library, async API) with the IETF RateLimit headers.

Every request under ``/v1/`` belongs to one route class, each with its own budget from settings:

* ``submit``  — writes: ``POST /v1/orders`` and the actions on an order (cancel, amend, review, address);
* ``webhook`` — ``POST /v1/carrier/events``;
* ``read``    — every other ``/v1/`` request.

The budget is counted per authenticated caller (the token's subject) and, only for requests
without a valid token, per client IP. ``X-Forwarded-For`` is believed only when the peer is one of
``ORDERS_TRUSTED_PROXIES``. Every response of a limited route carries
``RateLimit-Policy: "<class>";q=<quota>;w=<window s>`` and ``RateLimit: "<class>";r=<left>;t=<s>``;
over the budget the answer is 429 with ``Retry-After`` (never earlier than ``t``).

The strategy is the sliding-window counter: two counters per caller and class, the previous
window's weighted by how much of it still overlaps. It approximates a moving window closely and costs
O(1) per caller; the moving window's in-memory storage keeps a list of every hit and, on each expiry
pass, hops to a thread once per caller key — a fifth of the gateway's CPU under load (py-spy, see
docs/performance.md).

A rate-limit storage that is unreachable or slower than ``ORDERS_RATE_LIMIT_TIMEOUT_S`` fails
open: the request goes through without the headers and a warning is logged. Limits protect the
platform; they must not become the reason it refuses orders.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import time

import structlog
from limits import RateLimitItem, parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from core.config import Settings
from core.tokens import InvalidToken, SigningKeysUnavailable

log = structlog.get_logger(__name__)

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
KEY_PREFIX = "orders-ratelimit"
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def route_class(method: str, path: str) -> str | None:
    """The budget a request counts against, or None for unlimited paths (health, docs)."""
    if not path.startswith("/v1/"):
        return None
    if path.rstrip("/") == "/v1/carrier/events":
        return "webhook"
    if path.startswith("/v1/orders") and method in _WRITE_METHODS:
        return "submit"
    return "read"


def storage_uri(configured: str) -> str:
    """``memory://`` / ``redis://…`` from settings as the async storage URI of ``limits``."""
    return configured if configured.startswith("async+") else f"async+{configured}"


class _Proxies:
    def __init__(self, entries: list[str]) -> None:
        self._networks = [ipaddress.ip_network(entry, strict=False) for entry in entries]

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


def client_ip(scope, proxies: _Proxies) -> str:
    """The peer's address; behind trusted proxies, the nearest X-Forwarded-For hop they did not add."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    if not proxies.trusted(peer):
        return peer
    forwarded = [value for name, value in scope["headers"] if name == b"x-forwarded-for"]
    hops = [hop.strip() for value in forwarded for hop in value.decode("latin-1").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not proxies.trusted(hop):
            return hop
    return peer


class RateLimits:
    """ASGI middleware. Also verifies the bearer token once and leaves the claims in
    ``scope["state"]["claims"]`` (None when missing or invalid) for the auth dependency."""

    def __init__(self, app, *, settings: Settings) -> None:
        self.app = app
        self._settings = settings
        self._items: dict[str, RateLimitItem] = {
            "submit": parse(settings.rate_limit_submit),
            "read": parse(settings.rate_limit_read),
            "webhook": parse(settings.rate_limit_webhook),
        }
        self._policies = {name: f'"{name}";q={item.amount};w={item.get_expiry()}' for name, item in self._items.items()}
        self._proxies = _Proxies(settings.trusted_proxies)
        self._limiter: SlidingWindowCounterRateLimiter | None = None

    def _get_limiter(self) -> SlidingWindowCounterRateLimiter:
        # Built on first use: the storage belongs to the running event loop.
        if self._limiter is None:
            uri = storage_uri(self._settings.rate_limit_storage)
            options: dict = {}
            if "redis" in uri:
                timeout = self._settings.rate_limit_timeout_s
                options = dict(
                    implementation="redispy",
                    key_prefix=KEY_PREFIX,
                    wrap_exceptions=True,
                    socket_connect_timeout=timeout,
                    socket_timeout=timeout,
                )
            self._limiter = SlidingWindowCounterRateLimiter(storage_from_string(uri, **options))
        return self._limiter

    async def _caller_key(self, scope) -> str:
        state = scope.setdefault("state", {})
        state["claims"] = None
        token = _bearer_token(scope)
        if token is not None:
            verifier = scope["app"].state.verifier
            try:
                claims = await verifier.verify(token)
            except (InvalidToken, SigningKeysUnavailable):
                claims = None  # the route's auth dependency answers 401/503 with the details
            if claims is not None:
                state["claims"] = claims
                return f"sub:{claims.subject}"
        return f"ip:{client_ip(scope, self._proxies)}"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        name = route_class(scope["method"], scope["path"])
        if name is None:
            return await self.app(scope, receive, send)
        item = self._items[name]
        caller = await self._caller_key(scope)
        try:
            # Only a remote storage gets the deadline: in memory, a slow answer means a busy event
            # loop, not an unreachable storage, and must not switch the limits off.
            timeout = (
                None
                if self._settings.rate_limit_storage.startswith(("memory", "async+memory"))
                else self._settings.rate_limit_timeout_s
            )
            allowed, stats = await asyncio.wait_for(self._hit(item, name, caller), timeout)
        except (TimeoutError, StorageError, OSError) as error:
            log.warning("rate-limit storage unavailable; request let through", route_class=name, error=repr(error))
            return await self.app(scope, receive, send)

        reset_s = max(1, math.ceil(stats.reset_time - time.time()))
        headers = [
            (b"ratelimit-policy", self._policies[name].encode()),
            (b"ratelimit", f'"{name}";r={stats.remaining};t={reset_s}'.encode()),
        ]
        if not allowed:
            return await _send_quota_exceeded(scope, send, headers, reset_s, item, name)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _hit(self, item: RateLimitItem, name: str, caller: str):
        limiter = self._get_limiter()
        allowed = await limiter.hit(item, name, caller)
        stats = await limiter.get_window_stats(item, name, caller)
        return allowed, stats


def _bearer_token(scope) -> str | None:
    for header, value in scope["headers"]:
        if header == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


async def _send_quota_exceeded(scope, send, headers, retry_after_s: int, item: RateLimitItem, name: str) -> None:
    body = json.dumps(
        {
            "type": QUOTA_EXCEEDED,
            "title": "Too many requests",
            "status": 429,
            "detail": f"at most {item.amount} {name} requests per {item.get_expiry()} s; retry after {retry_after_s} s",
            "instance": scope["path"],
            "request_id": scope.get("state", {}).get("request_id"),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after_s).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
