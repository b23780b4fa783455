"""The gateway's telemetry, installed by ``create_app`` with one call: RED metrics per route template
and ``/metrics``, one access-log line per request (request id, order id), and OpenTelemetry spans
for every request (continued into the workflow by the Temporal client's tracing interceptor)."""

from __future__ import annotations

import time

import structlog
from fastapi import FastAPI
from opentelemetry.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from core.config import Settings
from core.metrics import GatewayMetrics
from core.tracing import configure_tracing

log = structlog.get_logger("orders.access")


def _route_template(scope, routes) -> str:
    route = scope.get("route")
    if route is None:
        # Answered before routing (guards, rate limits): find the route the request was meant for.
        route = next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)
    # Unmatched paths share one label: raw paths would let any caller create time series.
    return getattr(route, "path", None) or "unmatched"


def _order_id(scope, headers: list[tuple[bytes, bytes]]) -> str | None:
    order_id = scope.get("path_params", {}).get("order_id")
    if order_id:
        return str(order_id)
    for name, value in headers:
        if name.lower() == b"location" and value.startswith(b"/v1/orders/"):
            return value.decode("latin-1").removeprefix("/v1/orders/").split("/")[0]
    return None


class RequestMetrics:
    """Outermost ASGI middleware: counts every answer (also the guards' 413/415), times it, and
    writes one access-log line carrying the request id and, where there is one, the order id."""

    def __init__(
        self, app, *, metrics: GatewayMetrics, routes=(), skip_paths: frozenset[str] = frozenset({"/metrics"})
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.skip_paths = skip_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # an exception that escapes everything is answered 500 by the server
        response_headers: list[tuple[bytes, bytes]] = []

        async def observe(message):
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers", []))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            # A long-poll's wait is the caller's choice, not the gateway's latency (api/overload.py).
            elapsed = time.perf_counter() - started - scope.get("state", {}).get("parked_s", 0.0)
            route = _route_template(scope, self.routes)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.duration.labels(scope["method"], route).observe(elapsed)
            request_id = next((v.decode("latin-1") for k, v in response_headers if k.lower() == b"x-request-id"), None)
            fields = {
                "method": scope["method"],
                "route": route,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 1),
                "request_id": request_id,
            }
            order_id = _order_id(scope, response_headers)
            if order_id:
                fields["order_id"] = order_id
            (log.warning if status >= 500 else log.info)("request handled", **fields)


def metrics_endpoint(metrics: GatewayMetrics):
    async def endpoint(request: Request) -> Response:
        state = request.app.state
        if getattr(state, "engine", None) is not None:
            await metrics.refresh_read_model(state.engine, state.settings)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return endpoint


def instrument_tracing(app: FastAPI, tracer_provider: TracerProvider | None = None) -> None:
    """Server spans for every request (the global tracer provider unless one is given)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider, excluded_urls="healthz,readyz,metrics")


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Call after every other middleware is added: request metrics must be the outermost layer so
    the guards' own answers (413, 415, 429) are counted too."""
    metrics = GatewayMetrics()
    app.state.metrics = metrics
    if settings.metrics_enabled:
        app.add_api_route("/metrics", metrics_endpoint(metrics), include_in_schema=False, methods=["GET"])
    configure_tracing(settings, process="api")
    if settings.otlp_endpoint:
        instrument_tracing(app)
    app.add_middleware(RequestMetrics, metrics=metrics, routes=_endpoint_routes(app.router.routes))


def _endpoint_routes(routes) -> list:
    """The routes that carry a path template, with included routers opened up: since FastAPI 0.16x
    ``app.router.routes`` holds one wrapper per included router, and matching a request answered
    before routing (shed, rate limited, too large) against the wrapper finds no template."""
    found = []
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None and not hasattr(route, "path"):
            found.extend(_endpoint_routes(inner))
        else:
            found.append(route)
    return found
