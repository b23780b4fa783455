"""Observability, end to end: a gateway (`orders api`) and a worker (`orders worker`) in their own
processes, as deployed, writing JSON logs; the worker serves the SDK's Prometheus endpoint.

* One order's log lines can be followed by its id across the gateway, the workflow and the activities.
* Replaying the order's history writes no workflow log line (workflow.logger is replay-safe).
* /metrics on the gateway and the worker's metrics port are scraped for the RED, SDK and business
  metrics the dashboard and the alert rules use.
* One trace, read from the SDK's in-memory exporter, goes from the HTTP request to the activities.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.worker import Replayer

from activities.http import provider_client
from api.app import create_app
from api.observability import instrument_tracing
from core.domain import ORDER_WORKFLOW, order_workflow_id
from core.temporal import data_converter
from core.tracing import client_interceptors
from devstack.processes import ManagedProcess, free_port
from tests.harness import ROOT, random_ref, settings_env, start_worker, wait_for
from tests.integration.conftest import auth
from tests.support import new_sku
from workers.main import build_workers
from workers.registry import WORKFLOWS

ADDRESS = {
    "name": "Ada Lovelace",
    "line1": "Unter den Linden 1",
    "line2": None,
    "city": "Berlin",
    "postal_code": "10117",
    "country": "DE",
}


def order_body(sku: str, *, token: str = "tok_ok", postal_code: str = "10117") -> dict:
    return {
        "items": [{"sku": sku, "quantity": 1}],
        "shipping_address": {**ADDRESS, "postal_code": postal_code},
        "payment_token": token,
    }


def json_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


class Stack:
    def __init__(self, settings, api_log: Path, worker_log: Path, api_url: str, metrics_url: str) -> None:
        self.settings, self.api_log, self.worker_log = settings, api_log, worker_log
        self.api_url, self.metrics_url = api_url, metrics_url


@pytest.fixture(scope="module")
async def stack(it_settings, gateway, sandbox, tmp_path_factory):
    """Its own task queue, gateway process and worker process (with a metrics port), so the logs and
    metrics read here belong to this module's orders. The session gateway still receives the
    sandbox carrier's delivery webhooks and signals the workflows."""
    logs = tmp_path_factory.mktemp("obs-logs")
    settings = it_settings.model_copy(
        update={
            "task_queue": f"obs-{uuid.uuid4().hex[:8]}",
            "api_port": free_port(),
            "worker_metrics_port": free_port(),
            "worker_metrics_host": "127.0.0.1",
            "environment": "test",
            "log_json": True,
        }
    )
    worker = await asyncio.to_thread(start_worker, settings, logs)
    api_url = f"http://127.0.0.1:{settings.api_port}"
    api = ManagedProcess(
        "api",
        [sys.executable, "-m", "cli.main", "api"],
        settings_env(settings),
        logs / "api.log",
        cwd=ROOT,
        ready_url=f"{api_url}/healthz",
        ready_timeout=30,
    )
    await asyncio.to_thread(api.start)
    await asyncio.to_thread(api.wait_ready)
    yield Stack(
        settings,
        logs / "api.log",
        logs / "worker.log",
        api_url,
        f"http://127.0.0.1:{settings.worker_metrics_port}/metrics",
    )
    await asyncio.to_thread(api.stop)
    await asyncio.to_thread(worker.stop)


async def submit_and_wait(stack: Stack, token, engine, body: dict, statuses: set[str]) -> dict:
    customer = token(random_ref("obs"))
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        response = await http.post(
            "/v1/orders",
            json=body,
            headers={**auth(customer), "Idempotency-Key": uuid.uuid4().hex, "X-Request-ID": f"req-{uuid.uuid4().hex}"},
        )
        assert response.status_code == 202, response.text
        order_id = response.json()["id"]

        async def settled():
            current = (await http.get(f"/v1/orders/{order_id}", headers=auth(customer))).json()
            return current if current.get("status") in statuses else None

        view = await wait_for(settled, timeout=60, interval=0.3, what=f"order in {statuses}")
    return {"order_id": order_id, "request_id": response.headers["x-request-id"], "view": view}


@pytest.fixture(scope="module")
async def completed_order(stack, engine, it_settings):
    from core.tokens import mint_token

    sku = await new_sku(engine)
    return await submit_and_wait(
        stack,
        lambda sub: mint_token(it_settings, sub, "customer", ttl_s=600),
        engine,
        order_body(sku, token="tok_flaky"),
        {"completed"},
    )


async def test_one_order_can_be_followed_by_its_id_across_gateway_workflow_and_activities(stack, completed_order):
    order_id, request_id = completed_order["order_id"], completed_order["request_id"]

    async def worker_logged_completion():
        lines = [line for line in json_lines(stack.worker_log) if line.get("order_id") == order_id]
        return lines if any(line.get("order_status") == "completed" for line in lines) else None

    worker_lines = await wait_for(worker_logged_completion, timeout=10, what="the worker's log of the order")
    gateway_lines = [line for line in json_lines(stack.api_log) if line.get("order_id") == order_id]

    # Gateway: the submission, with its request id, and the reads that followed.
    submitted = [line for line in gateway_lines if line.get("route") == "/v1/orders" and line.get("method") == "POST"]
    assert submitted and submitted[0]["request_id"] == request_id and submitted[0]["status"] == 202
    assert any(line["event"] == "order accepted" and line.get("request_id") == request_id for line in gateway_lines)
    assert all(line.get("process") == "api" for line in gateway_lines)

    # Workflow: one line per transition, with the workflow's ids, written by workflow.logger.
    workflow_lines = [line for line in worker_lines if line.get("logger") == "temporalio.workflow"]
    statuses = [line["order_status"] for line in workflow_lines if "order_status" in line]
    assert statuses == ["stock_reserved", "payment_authorized", "shipped", "completed"]
    for line in workflow_lines:
        assert line["workflow_id"] == order_workflow_id(order_id)
        assert line["run_id"] and line["workflow_type"] == ORDER_WORKFLOW
        assert "({" not in line["event"]  # the SDK's context dict is rendered as keys, not in the text

    # Activities: type and attempt on every line; tok_flaky fails twice before it authorizes.
    activity_lines = [line for line in worker_lines if line.get("activity_type")]
    assert {
        "reserve_stock",
        "authorize_payment",
        "create_shipment",
        "capture_payment",
        "project_order",  # the `shipped` projection commits the stock too (order-lean-history)
    } <= {line["activity_type"] for line in activity_lines}
    # One line per attempt from the platform's interceptor (the SDK adds its own warning per failure).
    authorize = [
        line
        for line in activity_lines
        if line["activity_type"] == "authorize_payment" and line["logger"] == "orders.activity"
    ]
    assert any(line["logger"] == "temporalio.activity" and line["attempt"] == 1 for line in activity_lines)
    assert [(line["attempt"], line["event"]) for line in authorize] == [
        (1, "activity failed"),
        (2, "activity failed"),
        (3, "activity completed"),
    ]
    assert all(line["workflow_id"] == order_workflow_id(order_id) and line["run_id"] for line in activity_lines)


async def test_replaying_an_order_logs_nothing_and_keeps_the_workflow_deterministic(
    stack, completed_order, temporal_client, it_settings
):
    history = await temporal_client.get_workflow_handle(order_workflow_id(completed_order["order_id"])).fetch_history()
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    workflow_logger = logging.getLogger("temporalio.workflow")
    handler, level = Capture(), workflow_logger.level
    workflow_logger.addHandler(handler)
    workflow_logger.setLevel(logging.DEBUG)
    try:
        await Replayer(workflows=list(WORKFLOWS), data_converter=data_converter(it_settings)).replay_workflow(history)
    finally:
        workflow_logger.removeHandler(handler)
        workflow_logger.setLevel(level)
    assert records == []


def samples(exposition: str, name: str) -> dict[str, float]:
    """{label set: value} of one metric in a Prometheus text exposition."""
    found = {}
    for line in exposition.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, value = line.rsplit(" ", 1)
            found[series[len(name) :]] = float(value)
    return found


async def test_worker_metrics_endpoint_serves_sdk_and_business_metrics(stack, completed_order, engine, it_settings):
    from core.tokens import mint_token

    # A second order whose payment is declined: it is rejected and its stock released.
    sku = await new_sku(engine)
    await submit_and_wait(
        stack,
        lambda sub: mint_token(it_settings, sub, "customer", ttl_s=600),
        engine,
        order_body(sku, token="tok_decline"),
        {"rejected"},
    )
    async with httpx.AsyncClient(timeout=10) as http:

        async def scraped():
            text = (await http.get(stack.metrics_url)).text
            return text if samples(text, "orders_compensations_total") else None

        text = await wait_for(scraped, timeout=15, what="compensation metrics on the worker")

    # The SDK's own metrics.
    assert samples(text, "temporal_workflow_completed_total")
    assert samples(text, "temporal_activity_execution_latency_count")
    # Business metrics.
    terminal = samples(text, "orders_terminal_total")
    assert any('status="completed"' in s and 'reason="none"' in s for s in terminal)
    assert any('status="rejected"' in s and 'reason="payment_declined"' in s for s in terminal)
    shipped = samples(text, "orders_received_to_shipped_seconds_count")
    assert sum(shipped.values()) >= 1
    assert samples(text, "orders_time_to_terminal_seconds_bucket")
    compensations = samples(text, "orders_compensations_total")
    assert any('step="release stock"' in s for s in compensations)
    retries = samples(text, "orders_payment_retries_total")
    assert sum(v for s, v in retries.items() if 'activity_type="authorize_payment"' in s) >= 2
    calls = samples(text, "orders_provider_calls_total")
    for outcome in ("ok", "error", "rejected"):  # approved; tok_flaky's 503s; the decline
        assert any(f'outcome="{outcome}"' in s and 'activity_type="authorize_payment"' in s for s in calls), outcome


async def test_gateway_metrics_endpoint_serves_red_and_read_model_metrics(stack, completed_order):
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as http:
        await http.get("/v1/orders/not-a-uuid")  # answered 4xx, counted under its route template
        await http.get("/no/such/path")
        text = (await http.get("/metrics")).text
    requests = samples(text, "orders_http_requests_total")
    assert any('method="POST"' in s and 'route="/v1/orders"' in s and 'status="202"' in s for s in requests)
    assert any('route="/v1/orders/{order_id}"' in s for s in requests)
    assert any('route="unmatched"' in s and 'status="404"' in s for s in requests)
    assert not any("/no/such/path" in s for s in requests)
    assert samples(text, "orders_http_request_duration_seconds_bucket")
    stuck = samples(text, "orders_stuck")
    assert not samples(text, "orders_read_model_scrape_failures_total").get("", 0), stack.api_log.read_text()[-3000:]
    assert stuck and all(value == 0 for value in stuck.values())
    assert 'status="awaiting_review"' in "".join(samples(text, "orders_open"))


async def test_one_trace_goes_from_the_http_request_to_the_activities(
    it_settings, temporal_client, engine, sandbox, token
):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("orders-test")
    settings = it_settings.model_copy(update={"task_queue": f"trace-{uuid.uuid4().hex[:8]}"})
    # The platform's client, with the platform's interceptors bound to the test's tracer.
    client = Client(**{**temporal_client.config(), "interceptors": client_interceptors(tracer)})
    app = create_app(settings, client=client)
    instrument_tracing(app, provider)

    sku = await new_sku(engine)
    customer = token(random_ref("trace"))
    async with provider_client(settings) as provider_http:
        workers = build_workers(client, settings, engine, provider_http)
        async with (
            LifespanManager(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http,
        ):
            for worker in workers:
                await worker.__aenter__()
            try:
                response = await http.post(
                    "/v1/orders", json=order_body(sku), headers={**auth(customer), "Idempotency-Key": uuid.uuid4().hex}
                )
                assert response.status_code == 202, response.text
                order_id = response.json()["id"]

                def shipped():
                    names = {span.name for span in exporter.get_finished_spans()}
                    return names if "RunActivity:create_shipment" in names else None

                async def poll():
                    return shipped()

                await wait_for(poll, timeout=30, what="the create_shipment activity span")
            finally:
                for worker in reversed(workers):
                    await worker.__aexit__(None, None, None)
    await client.get_workflow_handle(order_workflow_id(order_id)).terminate("trace test done")

    spans = exporter.get_finished_spans()
    server = [span for span in spans if span.kind.name == "SERVER" and span.name.startswith("POST /v1/orders")]
    assert len(server) == 1
    trace_id = server[0].context.trace_id
    in_trace = {span.name for span in spans if span.context.trace_id == trace_id}
    assert f"StartWorkflow:{ORDER_WORKFLOW}" in in_trace
    assert f"RunWorkflow:{ORDER_WORKFLOW}" in in_trace
    for activity in ("reserve_stock", "authorize_payment", "create_shipment"):
        assert f"StartActivity:{activity}" in in_trace and f"RunActivity:{activity}" in in_trace
