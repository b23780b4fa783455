"""Errors and input limits (OWASP API3/API4): problem+json everywhere, bounded bodies and lists."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.api.conftest import assert_problem

ADDRESS = {"name": "Ada", "line1": "Street 1", "line2": None, "city": "Berlin", "postal_code": "10117", "country": "DE"}


def order(items=None, **extra) -> dict:
    return {
        "items": items or [{"sku": "MUG-WHT", "quantity": 1}],
        "shipping_address": ADDRESS,
        "payment_token": "tok_ok",
        **extra,
    }


def _locs(body: dict) -> list[list[str]]:
    return [e["loc"] for e in body["errors"]]


@pytest.mark.parametrize(
    "body, loc",
    [
        (order(status="completed"), ["body", "status"]),
        (order(total=1), ["body", "total"]),
        (order(customer_id="bob"), ["body", "customer_id"]),
        (order([{"sku": "A", "quantity": 0}]), ["body", "items", "0", "quantity"]),
        (order([{"sku": "A", "quantity": 1001}]), ["body", "items", "0", "quantity"]),
        (order([{"sku": "A", "quantity": 1, "unit_price": 1}]), ["body", "items", "0", "unit_price"]),
        (order([{"sku": f"S{i}", "quantity": 1} for i in range(101)]), ["body", "items"]),
        ({**order(), "items": []}, ["body", "items"]),
        (order([{"sku": "x" * 65, "quantity": 1}]), ["body", "items", "0", "sku"]),
        ({**order(), "shipping_address": {**ADDRESS, "country": "XX"}}, ["body", "shipping_address", "country"]),
        ({**order(), "shipping_address": {**ADDRESS, "country": "de"}}, ["body", "shipping_address", "country"]),
        ({**order(), "shipping_address": {**ADDRESS, "name": "n" * 201}}, ["body", "shipping_address", "name"]),
        ({**order(), "payment_token": "t" * 65}, ["body", "payment_token"]),
    ],
    ids=[
        "status",
        "total",
        "customer_id",
        "qty0",
        "qty1001",
        "unit_price",
        "101-lines",
        "no-lines",
        "long-sku",
        "country-XX",
        "country-lower",
        "long-name",
        "long-token",
    ],
)
async def test_invalid_orders_get_422_naming_the_field(body, loc, gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.post("/v1/orders", json=body, headers={**bearer(), "Idempotency-Key": uuid.uuid4().hex})
    problem = assert_problem(response, 422)
    assert loc in _locs(problem), problem


async def test_repeated_sku_lines_are_rejected_not_merged(gateway_client, bearer):
    async with gateway_client() as http:
        body = order([{"sku": "MUG-WHT", "quantity": 1}, {"sku": "MUG-WHT", "quantity": 2}])
        response = await http.post("/v1/orders", json=body, headers={**bearer(), "Idempotency-Key": "rep"})
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["type"] == "repeated_sku"


async def test_unknown_sku_is_422_naming_it(gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.post(
            "/v1/orders",
            json=order([{"sku": "NO-SUCH-SKU-X1", "quantity": 1}]),
            headers={**bearer(), "Idempotency-Key": "u"},
        )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["sku"] == "NO-SUCH-SKU-X1"


@pytest.mark.parametrize("raw", [None, "", '"half', 'half"', '""', "with space", "é", "k" * 256])
async def test_idempotency_key_missing_or_invalid_is_400(raw, gateway_client, bearer):
    headers = bearer() if raw is None else {**bearer(), "Idempotency-Key": raw}
    async with gateway_client() as http:
        if raw == "é":  # not encodable as an ASCII header by httpx: send the raw bytes
            headers = [(k.encode(), v.encode()) for k, v in bearer().items()] + [(b"Idempotency-Key", "é".encode())]
        response = await http.post("/v1/orders", json=order(), headers=headers)
    assert_problem(response, 400)


async def test_bodies_over_64_kib_are_413_even_streamed_and_100k_lines_never_parsed(gateway_client, bearer):
    huge = json.dumps(order([{"sku": f"S{i}", "quantity": 1} for i in range(100_000)])).encode()
    assert len(huge) > 64 * 1024

    async def chunks():
        for start in range(0, len(huge), 8192):
            yield huge[start : start + 8192]

    async with gateway_client() as http:
        headers = {**bearer(), "Idempotency-Key": "big", "Content-Type": "application/json"}
        assert_problem(await http.post("/v1/orders", content=huge, headers=headers), 413)
        assert_problem(await http.post("/v1/orders", content=chunks(), headers=headers), 413)  # no Content-Length


async def test_wrong_content_type_is_415(gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.post(
            "/v1/orders",
            content=b"items=1",
            headers={**bearer(), "Idempotency-Key": "ct", "Content-Type": "application/x-www-form-urlencoded"},
        )
    assert_problem(response, 415)


async def test_malformed_json_and_absurd_query_values_are_422(gateway_client, bearer):
    async with gateway_client() as http:
        broken = await http.post(
            "/v1/orders",
            content=b'{"items": [',
            headers={**bearer(), "Idempotency-Key": "j", "Content-Type": "application/json"},
        )
        assert_problem(broken, 422)
        for params in ({"limit": 10**9}, {"limit": 0}, {"status": "nonsense"}, {"cursor": "not-a-cursor"}):
            assert_problem(await http.get("/v1/orders", params=params, headers=bearer()), 422)
        assert_problem(await http.get("/v1/orders/not-a-uuid", headers=bearer()), 422)


async def test_request_id_is_accepted_or_assigned_and_404_405_are_problems(gateway_client, bearer):
    async with gateway_client() as http:
        mine = await http.get("/v1/orders", headers={**bearer(), "X-Request-ID": "client-chosen.id-1"})
        assert mine.headers["x-request-id"] == "client-chosen.id-1"
        junk = await http.get("/v1/orders", headers={**bearer(), "X-Request-ID": "bad id\twith\x01junk"})
        assert junk.headers["x-request-id"] != "bad id\twith\x01junk" and len(junk.headers["x-request-id"]) == 32
        assert_problem(await http.get("/v1/nothing-here", headers=bearer()), 404)
        assert_problem(await http.delete("/v1/orders", headers=bearer()), 405)


async def test_unexpected_errors_are_500_problems_without_internals(gateway_client, bearer):
    async def boom():
        raise RuntimeError("secret internals: password=hunter2")

    async with gateway_client(app_hook=lambda app: app.add_api_route("/v1/boom", boom)) as http:
        response = await http.get("/v1/boom", headers={**bearer(), "X-Request-ID": "trace-me"})
    problem = assert_problem(response, 500)
    assert problem["request_id"] == "trace-me" and "hunter2" not in response.text and "Traceback" not in response.text


async def test_a_body_that_is_not_utf8_is_422_like_broken_json(gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.post(
            f"/v1/orders/{uuid.uuid4()}/cancel",
            content=b'{"reason": "\xff\xfe"}',
            headers={**bearer(), "Content-Type": "application/json"},
        )
    problem = assert_problem(response, 422)
    assert problem["errors"] == [{"loc": ["body"], "msg": "the body is not UTF-8 encoded JSON", "type": "json_invalid"}]
