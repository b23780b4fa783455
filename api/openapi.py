"""The OpenAPI document: every response code documented with its schema and an example.

Routes declare their error codes with :func:`problems`; :func:`install_openapi` adds the shared
``Problem`` schema and fills in an example for every response that has none, so the contract that
schemathesis checks is complete by construction.
"""

from __future__ import annotations

import copy

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.ratelimit import QUOTA_EXCEEDED
from api.schemas import CarrierEventBody, Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_BASE = "https://orders.example/problems/"

_PROBLEM_DEFAULTS: dict[int, tuple[str, str, str]] = {
    # status: (description, slug or full type, detail of the example)
    400: (
        "Idempotency-Key missing or invalid",
        "idempotency-key-missing",
        "send an Idempotency-Key header with a unique value per order",
    ),
    401: (
        "Missing, malformed or expired bearer token (or a bad webhook signature)",
        "unauthorized",
        "the bearer token is invalid or expired",
    ),
    403: ("The token's role may not do this", "forbidden", "this action needs the role operator"),
    404: ("No such order (or not yours)", "not-found", "order 0b1c2d3e-0000-5000-8000-000000000000 not found"),
    409: (
        "The order's state does not allow this",
        "invalid-order-state",
        "order is shipped and can no longer be cancelled",
    ),
    413: ("Body larger than 64 KiB", "body-too-large", "the body may be at most 65536 bytes"),
    415: ("Body is not application/json", "unsupported-media-type", "send the body as application/json"),
    422: (
        "The request did not validate (see errors), unknown SKU, or Idempotency-Key reused with another body",
        "validation",
        "the request did not validate; see errors",
    ),
    429: (
        "Over the rate limit; retry after Retry-After",
        QUOTA_EXCEEDED,
        "at most 100 submit requests per 60 s; retry after 12 s",
    ),
    503: (
        "Overloaded, timed out, or Temporal, the database or the identity provider is unavailable; retry after Retry-After",
        "unavailable",
        "database is unavailable, retry later",
    ),
}
_TITLES = {
    400: "Idempotency-Key required",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    409: "Order state conflict",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    503: "Service unavailable",
}

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_RATELIMIT_HEADERS = {
    "RateLimit-Policy": {"description": 'the budget, e.g. `"submit";q=100;w=60`', "schema": {"type": "string"}},
    "RateLimit": {"description": 'what is left of it, e.g. `"submit";r=99;t=60`', "schema": {"type": "string"}},
}


def problem_example(status: int) -> dict:
    _, slug, detail = _PROBLEM_DEFAULTS[status]
    example = {
        "type": slug if slug.startswith("https://") else PROBLEM_BASE + slug,
        "title": _TITLES[status],
        "status": status,
        "detail": detail,
        "instance": "/v1/orders",
        "request_id": "7f9c2ba4e88f827d616045507605853e",
    }
    if status == 422:
        example["errors"] = [
            {
                "loc": ["body", "items", "0", "quantity"],
                "msg": "Input should be less than or equal to 1000",
                "type": "less_than_equal",
            }
        ]
    return example


def problems(*statuses: int, examples: dict[int, dict] | None = None, **descriptions: str) -> dict:
    """``responses=`` entries for error codes, as application/problem+json with an example.
    Override a description with ``_404="..."`` and fields of an example with
    ``examples={400: {"title": ..., "detail": ...}}``."""
    out = {}
    for status in statuses:
        example = {**problem_example(status), **(examples or {}).get(status, {})}
        entry = {
            "description": descriptions.get(f"_{status}", _PROBLEM_DEFAULTS[status][0]),
            "content": {"application/problem+json": {"schema": PROBLEM_REF, "example": example}},
        }
        if status in (429, 503):
            entry["headers"] = dict(_RETRY_AFTER)
        out[status] = entry
    return out


_ADDRESS = {
    "name": "Ada Lovelace",
    "line1": "Unter den Linden 1",
    "line2": None,
    "city": "Berlin",
    "postal_code": "10117",
    "country": "DE",
}
ORDER_EXAMPLE = {
    "id": "3f0a8a4e-5b8e-5c55-9a61-7f5f2f0f8a11",
    "customer_id": "alice",
    "status": "received",
    "failure_reason": None,
    "items": [{"sku": "MUG-WHT", "quantity": 2, "unit_price": 1299}],
    "total": 2598,
    "currency": "EUR",
    "shipping_address": _ADDRESS,
    "tracking_number": None,
    "history": [{"status": "received", "at": "2025-01-01T12:00:00Z", "note": None}],
    "created_at": "2025-01-01T12:00:00Z",
    "updated_at": "2025-01-01T12:00:00Z",
    "review": None,
    "carrier_events": [],
    "cancel_requested": False,
    "shipments": [],
    "refunds": [],
    "unavailable": [],
    "customer_deadline": None,
}
_SPLIT_ID = "5d6c1f2a-8e3b-5a47-b1c9-2e4f6a8b0c13"
# Two warehouses, two parcels: the first delivered, the second on its way. `tracking_number` is the
# first shipment's, as before split shipments.
SPLIT_ORDER_EXAMPLE = {
    **ORDER_EXAMPLE,
    "id": _SPLIT_ID,
    "status": "shipped",
    "items": [
        {"sku": "MUG-WHT", "quantity": 2, "unit_price": 1299},
        {"sku": "LAMP-BRS", "quantity": 1, "unit_price": 4900},
    ],
    "total": 7498,
    "tracking_number": "TRK-7Q2M4X9A",
    "history": [
        {"status": "received", "at": "2025-01-01T12:00:00Z", "note": None},
        {"status": "stock_reserved", "at": "2025-01-01T12:00:01Z", "note": "2 shipments: WH-MAIN, WH-BER"},
        {"status": "payment_authorized", "at": "2025-01-01T12:00:02Z", "note": None},
        {"status": "shipped", "at": "2025-01-01T12:00:03Z", "note": None},
    ],
    "updated_at": "2025-01-02T09:30:00Z",
    "carrier_events": [
        {"event": "picked_up", "occurred_at": "2025-01-01T15:00:00Z"},
        {"event": "in_transit", "occurred_at": "2025-01-01T18:00:00Z"},
        {"event": "delivered", "occurred_at": "2025-01-02T09:30:00Z"},
    ],
    "shipments": [
        {
            "id": "WH-MAIN",
            "warehouse": "WH-MAIN",
            "items": [{"sku": "MUG-WHT", "quantity": 2, "unit_price": 1299}],
            "amount": 2598,
            "status": "delivered",
            "tracking_number": "TRK-7Q2M4X9A",
            "delivered_at": "2025-01-02T09:30:00Z",
        },
        {
            "id": "WH-BER",
            "warehouse": "WH-BER",
            "items": [{"sku": "LAMP-BRS", "quantity": 1, "unit_price": 4900}],
            "amount": 4900,
            "status": "shipped",
            "tracking_number": "TRK-3K8P1C6D",
            "delivered_at": None,
        },
    ],
}
# Only part of it could be reserved: the customer amends (keeps 1 lamp) or cancels by the deadline.
AWAITING_CUSTOMER_EXAMPLE = {
    **ORDER_EXAMPLE,
    "id": "9a3e7c51-2b6d-5f08-8c4a-1d9e3b7f5a26",
    "status": "awaiting_customer",
    "items": [
        {"sku": "MUG-WHT", "quantity": 2, "unit_price": 1299},
        {"sku": "LAMP-BRS", "quantity": 3, "unit_price": 4900},
    ],
    "total": 17298,
    "history": [
        {"status": "received", "at": "2025-01-01T12:00:00Z", "note": None},
        {"status": "awaiting_customer", "at": "2025-01-01T12:00:01Z", "note": "unavailable: 2 x LAMP-BRS"},
    ],
    "updated_at": "2025-01-01T12:00:01Z",
    "unavailable": [{"sku": "LAMP-BRS", "quantity": 2}],
    "customer_deadline": "2025-01-02T12:00:01Z",
}
# The same order after `POST /amend {"items": [MUG-WHT x 2, LAMP-BRS x 1]}`: total recomputed.
AMENDED_ORDER_EXAMPLE = {
    **AWAITING_CUSTOMER_EXAMPLE,
    "status": "stock_reserved",
    "items": [
        {"sku": "MUG-WHT", "quantity": 2, "unit_price": 1299},
        {"sku": "LAMP-BRS", "quantity": 1, "unit_price": 4900},
    ],
    "total": 7498,
    "history": [
        {"status": "received", "at": "2025-01-01T12:00:00Z", "note": None},
        {"status": "awaiting_customer", "at": "2025-01-01T12:00:01Z", "note": "unavailable: 2 x LAMP-BRS"},
        {"status": "stock_reserved", "at": "2025-01-01T12:05:00Z", "note": "amended by alice"},
    ],
    "updated_at": "2025-01-01T12:05:00Z",
    "unavailable": [],
    "customer_deadline": None,
}
_EXAMPLES_BY_SCHEMA = {
    "OrderView": ORDER_EXAMPLE,
    "OrderList": {
        "items": [SPLIT_ORDER_EXAMPLE, AWAITING_CUSTOMER_EXAMPLE, ORDER_EXAMPLE],
        "next_cursor": "eyJ0IjoiMjAyNS0wMS0wMVQxMjowMDowMFoiLCJpZCI6IjNmMGEifQ",
    },
    "ProductList": {
        "items": [{"sku": "MUG-WHT", "name": "Mug, white", "unit_price": 1299, "currency": "EUR", "available": 42}],
        "next_cursor": None,
    },
    "WarehouseList": {
        "items": [
            {
                "id": "WH-MAIN",
                "name": "Main warehouse",
                "preference": 10,
                "stock": [{"sku": "MUG-WHT", "on_hand": 50, "reserved": 8, "available": 42}],
            }
        ]
    },
    "StockLevelOut": {"sku": "MUG-WHT", "on_hand": 50, "reserved": 8, "available": 42},
    "Accepted": {"status": "accepted"},
    "Health": {"status": "ok", "checks": {"database": "ok", "temporal": "ok"}},
    "Problem": problem_example(503),
}


# OpenAPI links: where an answer names an order, the operations on that order can follow with its
# id (clients and stateful testers such as schemathesis chain submit -> read -> cancel with them).
_ORDER_ID_IN = {"OrderView": "$response.body#/id", "OrderList": "$response.body#/items/0/id"}
_ORDER_PATH = "/v1/orders/{order_id}"


def _order_links(paths: dict, id_expression: str) -> dict:
    links = {}
    for path, operations in paths.items():
        if path == _ORDER_PATH or path.startswith(_ORDER_PATH + "/"):
            for method, operation in operations.items():
                pointer = path.replace("~", "~0").replace("/", "~1")
                links[operation["operationId"]] = {
                    "operationRef": f"#/paths/{pointer}/{method}",
                    "parameters": {"order_id": id_expression},
                    "description": f"{operation.get('summary', method.upper() + ' ' + path)}, for the order in this answer",
                }
    return links


def _schema_name(schema: dict) -> str | None:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else None


def _add_schema(schemas: dict, model) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault(model.__name__, schema)


def install_openapi(app: FastAPI) -> None:
    """Generate the document once, with the Problem schema and an example on every response."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, servers=app.servers
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (Problem, CarrierEventBody):  # referenced by hand, not through a route's model
            _add_schema(schemas, model)
        for path, operations in document.get("paths", {}).items():
            for _method, operation in operations.items():
                limited = path.startswith("/v1/")
                for status, response in operation.get("responses", {}).items():
                    if limited:
                        response.setdefault("headers", {}).update(copy.deepcopy(_RATELIMIT_HEADERS))
                    for media in response.get("content", {}).values():
                        name = _schema_name(media.get("schema", {}))
                        if "example" not in media and "examples" not in media and name in _EXAMPLES_BY_SCHEMA:
                            media["example"] = _EXAMPLES_BY_SCHEMA[name]
                        if name in _ORDER_ID_IN and str(status).startswith("2"):
                            response["links"] = _order_links(document["paths"], _ORDER_ID_IN[name])
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
