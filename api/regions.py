"""Region routing in the gateway (docs/regions.md): a request for a customer homed elsewhere is
forwarded to the home region's gateway.

Plain ASGI middleware, inside the rate limiter (which verified the bearer token and left its
claims in the scope: the customer comes from the token, never from the request). Only order paths
are routed (:func:`core.regions.is_routed`); everything else, and requests without a valid token
(answered 401 locally), is served here. Where a routed request goes is decided by
:func:`core.regions.serving_region` from the directory in the local database.

Forwarding uses httpx: the request (body read first: at most ``ORDERS_MAX_BODY_BYTES``) goes out
with its headers unchanged (Authorization, Idempotency-Key, X-Request-ID...) plus the hop header
``X-Orders-Forwarded-From``; the answer is streamed back. The home gets
``ORDERS_REGION_FORWARD_CONNECT_TIMEOUT_S`` to accept the connection and
``ORDERS_REGION_FORWARD_TIMEOUT_S`` in all until its answer's headers arrive. When it does not:

* a write is answered 503 ``region-unavailable`` with Retry-After, and nothing is done locally
  (orders are accepted only in the home region: consistency over availability);
* a read is served from the local replica of the read model, with ``X-Read-Stale: true`` and
  ``X-Read-Replica-Lag: <seconds>`` (availability over freshness).

A forwarded request that reaches a region which does not consider itself the home (two
directories disagree, e.g. during a rehome) is refused with 503 ``region-misdirected`` rather than
forwarded again: no loops, and never an order accepted outside the home.
"""

from __future__ import annotations

import asyncio
import math
from urllib.parse import parse_qsl

import httpx
import structlog

from api.middleware import send_problem
from core.config import Settings
from core.db.regions import RegionDirectory, replica_lag_s
from core.order_service import DB_ERRORS
from core.regions import is_routed, is_write, order_id_in, resolve_home, serving_region

log = structlog.get_logger(__name__)

HOP_HEADER = b"x-orders-forwarded-from"
REGION_HEADER = b"x-region"
STALE_HEADER = b"x-read-stale"
LAG_HEADER = b"x-read-replica-lag"
# Not passed on in either direction: hop-by-hop headers (RFC 9110 7.6.1) and the ones each hop
# sets for itself (the local server's Date and Server, the local rate limiter's RateLimit headers).
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_NOT_RETURNED = _HOP_BY_HOP - {b"content-length"} | {
    b"date",
    b"server",
    b"ratelimit",
    b"ratelimit-policy",
    b"x-request-id",
}


class HomeUnreachable(Exception):
    """The home region did not answer in time (or not at all)."""


def forward_timeout(settings: Settings, wait_s: float = 0.0) -> httpx.Timeout:
    """The forward budget per phase; a long-poll's answer may take its ``wait_s`` on top."""
    return httpx.Timeout(
        connect=settings.region_forward_connect_timeout_s,
        read=settings.region_forward_timeout_s + wait_s,
        write=settings.region_forward_timeout_s,
        pool=settings.region_forward_connect_timeout_s,
    )


def peer_client(settings: Settings) -> httpx.AsyncClient:
    """The gateway's client for its peers (one per process, closed with the app)."""
    return httpx.AsyncClient(timeout=forward_timeout(settings), follow_redirects=False, trust_env=False)


class RegionRouting:
    def __init__(self, app, *, settings: Settings) -> None:
        self.app = app
        self._settings = settings
        self._local = settings.region

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        tagged = self._tagged(send, [(REGION_HEADER, self._local.encode())])
        claims = scope.get("state", {}).get("claims")
        if not is_routed(scope["path"]) or claims is None:
            return await self.app(scope, receive, tagged)
        write = is_write(scope["method"])
        request_id = scope.get("state", {}).get("request_id", "")
        try:
            target = await self._target(scope, claims, write)
        except DB_ERRORS:
            log.warning("region directory unavailable", path=scope["path"])
            return await self._problem(
                tagged, scope, 503, "Service unavailable", "database unavailable", "unavailable", request_id
            )
        if target == self._local:
            return await self.app(scope, receive, tagged)
        if _header(scope, HOP_HEADER) is not None:
            log.error(
                "misdirected forwarded request", path=scope["path"], home=target, sender=_header(scope, HOP_HEADER)
            )
            return await self._problem(
                tagged,
                scope,
                503,
                "Misdirected request",
                f"region {self._local} is not the home of this request (the directories disagree); "
                f"retry after {self._settings.region_retry_after_s} s",
                "region-misdirected",
                request_id,
            )
        try:
            return await self._forward(scope, receive, send, target)
        except HomeUnreachable as error:
            log.warning("home region unreachable", home=target, path=scope["path"], write=write, error=str(error))
        if write:
            return await self._problem(
                tagged,
                scope,
                503,
                "Home region unavailable",
                f"the home region {target} of this request does not answer; nothing was done. Retry after "
                f"{self._settings.region_retry_after_s} s (a submission is safe to retry with the same Idempotency-Key)",
                "region-unavailable",
                request_id,
            )
        lag = await self._lag(scope["app"].state.engine, target)
        stale = [(STALE_HEADER, b"true"), *([(LAG_HEADER, str(lag).encode())] if lag is not None else [])]
        return await self.app(scope, receive, self._tagged(send, [(REGION_HEADER, self._local.encode()), *stale]))

    async def _target(self, scope, claims, write: bool) -> str:
        customer = claims.subject if claims.role == "customer" else None
        entry, location = await RegionDirectory(scope["app"].state.engine).route_facts(
            customer, order_id_in(scope["path"])
        )
        home = None
        if entry is not None:
            home = resolve_home(claims.subject, self._settings.regions, entry.pinned, entry.redirects)
        return serving_region(
            local=self._local,
            role=claims.role,
            subject=claims.subject,
            write=write,
            home=home,
            order_region=location.region if location else None,
            order_customer=location.customer_id if location else None,
        )

    async def _forward(self, scope, receive, send, target: str) -> None:
        base = self._settings.region_peers.get(target)
        if base is None:
            raise HomeUnreachable(f"no gateway address for region {target!r}")
        body = await _read_body(receive)
        headers = [(name, value) for name, value in scope["headers"] if name not in _HOP_BY_HOP]
        headers = [(name, value) for name, value in headers if name not in {HOP_HEADER, b"x-request-id"}]
        headers.append((HOP_HEADER, self._local.encode()))
        request_id = scope.get("state", {}).get("request_id")
        if request_id:
            headers.append((b"x-request-id", request_id.encode()))  # one id across both regions' logs
        query = scope.get("query_string", b"")
        url = base.rstrip("/") + scope["path"] + (f"?{query.decode('latin-1')}" if query else "")
        client: httpx.AsyncClient = scope["app"].state.peer_client
        # A long-poll (GET ...?wait=N) is answered by the home after up to N seconds by design:
        # its budget is the forward budget plus that wait, not the forward budget alone.
        wait_s = _long_poll_wait(query, self._settings.api_max_wait_s)
        budget = self._settings.region_forward_timeout_s + wait_s
        request = client.build_request(
            scope["method"], url, headers=headers, content=body, timeout=forward_timeout(self._settings, wait_s)
        )
        try:
            async with asyncio.timeout(budget):
                response = await client.send(request, stream=True)
        except (httpx.TransportError, TimeoutError) as error:
            raise HomeUnreachable(repr(error)) from None
        try:
            if response.status_code in (502, 504) or (
                response.status_code == 503 and not is_write(scope["method"]) and _is_ours(response)
            ):
                # The home's gateway cannot serve it either (its database or Temporal is down): a
                # read is better served from the replica here; a write keeps the home's own 503.
                raise HomeUnreachable(f"home answered {response.status_code}")
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name, value) for name, value in response.headers.raw if name.lower() not in _NOT_RETURNED
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def _lag(self, engine, target: str) -> int | None:
        try:
            return await replica_lag_s(engine, target, self._settings.region_heartbeat_s)
        except DB_ERRORS:
            return None

    @staticmethod
    def _tagged(send, extra: list[tuple[bytes, bytes]]):
        async def send_tagged(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        return send_tagged

    async def _problem(self, send, scope, status, title, detail, slug, request_id) -> None:
        await send_problem(
            send,
            status,
            title,
            detail,
            request_id,
            scope["path"],
            slug,
            headers=[(b"retry-after", str(self._settings.region_retry_after_s).encode())],
            id_header=False,
        )


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _is_ours(response: httpx.Response) -> bool:
    """A 503 problem from the home's gateway itself (not, say, a load balancer's page)."""
    return response.headers.get("content-type", "").startswith("application/problem+json")


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def heartbeat_loop(engine, settings: Settings) -> None:
    """Stamp this region's heartbeat every ``ORDERS_REGION_HEARTBEAT_S`` until cancelled. A
    database that does not answer only delays the stamps: the peers then see the lag grow, which is
    what it is (their replica has nothing newer from here)."""
    from core.db.regions import stamp_heartbeat

    failing = False
    while True:
        try:
            await asyncio.wait_for(stamp_heartbeat(engine, settings.region), settings.database_timeout_s)
            failing = False
        except DB_ERRORS as error:
            if not failing:
                log.warning("region heartbeat not written", error=repr(error))
            failing = True
        await asyncio.sleep(settings.region_heartbeat_s)


def _long_poll_wait(query: bytes, longest: float) -> float:
    """The ``wait`` a long-poll asks for (bounded like the home bounds it; 0 when absent or not a
    number: the home answers a bad value at once with its own 422)."""
    for name, value in parse_qsl(query.decode("latin-1")):
        if name == "wait":
            try:
                wait = float(value)
            except ValueError:
                return 0.0
            return min(max(wait, 0.0), longest) if math.isfinite(wait) else 0.0
    return 0.0
