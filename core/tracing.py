"""OpenTelemetry tracing: one trace from the HTTP request through the workflow to every activity.

* The Temporal client carries temporalio's ``TracingInterceptor``: starting a workflow injects the
  current span context into the workflow's headers, and workers (which inherit the client's
  interceptors) continue it in ``RunWorkflow`` / ``StartActivity`` / ``RunActivity`` spans. The
  workflow side of the interceptor creates no spans while a history is replayed.
* The gateway is instrumented with ``opentelemetry-instrumentation-fastapi`` (api/observability.py).
* Export is switched on by ``ORDERS_OTLP_ENDPOINT`` (OTLP over HTTP, e.g. ``http://collector:4318``):
  :func:`configure_tracing` installs the global tracer provider. Without it the interceptor uses the
  API's no-op tracer.
"""

from __future__ import annotations

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.contrib.opentelemetry import TracingInterceptor

from core.config import Settings

log = structlog.get_logger(__name__)

_configured = False


def build_tracer_provider(settings: Settings, *, process: str) -> TracerProvider | None:
    """A tracer provider exporting over OTLP/HTTP, or None when no endpoint is configured."""
    if not settings.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"{settings.service_name}-{process}"}))
    endpoint = settings.otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, headers=settings.otlp_headers or None))
    )
    return provider


def configure_tracing(settings: Settings, *, process: str) -> TracerProvider | None:
    """Install the global tracer provider once per process (composition roots call this)."""
    global _configured
    if _configured:
        return None
    provider = build_tracer_provider(settings, process=process)
    if provider is not None:
        trace.set_tracer_provider(provider)
        log.info("tracing exported over OTLP", endpoint=settings.otlp_endpoint)
    _configured = True
    return provider


def client_interceptors(tracer: trace.Tracer | None = None) -> list[ClientInterceptor]:
    """Interceptors of every Temporal client; workers built from the client inherit them.

    ``tracer`` defaults to the global provider's (resolved lazily, so configure_tracing may run later).
    """
    return [TracingInterceptor(tracer)]
