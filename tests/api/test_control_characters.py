"""Text PostgreSQL cannot store (NUL, unpaired surrogates) and control characters are bad input:
422 naming the field (401 for a token's subject), never 503 "database is unavailable", which
well-behaved clients retry forever and which pages whoever watches the database.

Each case gets past every other check (a known SKU, a valid token) so that, without the
validation, the value reaches PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fastapi import Request
from sqlalchemy import func, select

from core.db.catalog import upsert_products
from core.db.tables import idempotency_keys, orders
from core.order_service import Caller
from core.webhooks import sign_webhook
from tests.api.conftest import assert_problem, hs_token

ADDRESS = {
    "name": "Ada",
    "line1": "Street 1",
    "line2": "Floor 2",
    "city": "Berlin",
    "postal_code": "10117",
    "country": "DE",
}
NUL = "\u0000"


@pytest.fixture
async def sku(engine) -> str:
    """A product of this test only, so an order gets past pricing to the database writes."""
    sku = f"TXT-{uuid.uuid4().hex[:8].upper()}"
    await upsert_products(engine, [(sku, "Text test product", 500, 10)])
    return sku


def _errors_at(problem: dict, loc: list[str]) -> list[dict]:
    return [e for e in problem.get("errors") or [] if e["loc"] == loc]


def _assert_names_the_field(response, loc: list[str]) -> None:
    problem = assert_problem(response, 422)
    errors = _errors_at(problem, loc)
    assert errors, problem
    assert "NUL (\\u0000) or control characters" in errors[0]["msg"], errors


async def _stored_for(engine, customer: str) -> tuple[int, int]:
    async with engine.connect() as conn:
        order_rows = (await conn.execute(select(func.count()).where(orders.c.customer_id == customer))).scalar_one()
        key_rows = (
            await conn.execute(select(func.count()).where(idempotency_keys.c.customer_id == customer))
        ).scalar_one()
    return order_rows, key_rows


@pytest.mark.parametrize("field", ["name", "line1", "line2", "city", "postal_code"])
@pytest.mark.parametrize("bad", [f"Ada{NUL}Lovelace", "Ada\x1b[31mLovelace", "Ada\nLovelace"], ids=["nul", "esc", "lf"])
async def test_control_character_in_an_address_field_is_422_naming_it_and_nothing_is_stored(
    field, bad, sku, gateway_client, bearer, engine
):
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    body = {
        "items": [{"sku": sku, "quantity": 1}],
        "shipping_address": {**ADDRESS, field: bad},
        "payment_token": "tok_ok",
    }
    async with gateway_client() as http:
        headers = {**bearer(customer), "Idempotency-Key": uuid.uuid4().hex}
        first = await http.post("/v1/orders", json=body, headers=headers)
        again = await http.post("/v1/orders", json=body, headers=headers)  # a retry is refused the same way
    _assert_names_the_field(first, ["body", "shipping_address", field])
    _assert_names_the_field(again, ["body", "shipping_address", field])
    assert await _stored_for(engine, customer) == (0, 0)


async def test_actions_on_an_order_refuse_nul_in_their_text(gateway_client, bearer):
    order_path = f"/v1/orders/{uuid.uuid4()}"
    async with gateway_client() as http:
        cancel = await http.post(f"{order_path}/cancel", json={"reason": f"changed{NUL}mind"}, headers=bearer())
        review = await http.post(
            f"{order_path}/review",
            json={"decision": "approve", "note": f"looks{NUL}fine"},
            headers=bearer(role="operator"),
        )
        address = await http.put(
            f"{order_path}/shipping-address", json={**ADDRESS, "line1": f"Street{NUL}1"}, headers=bearer()
        )
        # Notes may span lines; only NUL and the other control characters are refused there.
        multiline = await http.post(f"{order_path}/cancel", json={"reason": "changed\r\n\tmy mind"}, headers=bearer())
    _assert_names_the_field(cancel, ["body", "reason"])
    _assert_names_the_field(review, ["body", "note"])
    _assert_names_the_field(address, ["body", "line1"])
    assert_problem(multiline, 404)  # validated, then looked for: no such order


@pytest.mark.parametrize("param", ["customer_id", "cursor"])
async def test_list_query_parameters_refuse_nul(param, gateway_client, bearer):
    async with gateway_client() as http:
        response = await http.get("/v1/orders", params={param: f"alice{NUL}"}, headers=bearer(role="operator"))
    _assert_names_the_field(response, ["query", param])


async def test_carrier_event_refuses_nul_in_the_tracking_number(gateway_client, bearer, settings):
    body = json.dumps({"tracking_number": f"TRK{NUL}1", "event": "picked_up", "occurred_at": "2025-01-02T09:30:00Z"})
    raw = body.encode()
    headers = {
        **bearer("carrier-1", "carrier"),
        "Content-Type": "application/json",
        "Carrier-Signature": sign_webhook(settings.carrier_webhook_secret, raw, int(time.time())),
    }
    async with gateway_client() as http:
        response = await http.post("/v1/carrier/events", content=raw, headers=headers)
    _assert_names_the_field(response, ["body", "tracking_number"])


@pytest.mark.parametrize("sub", [f"al{NUL}ice", "al\ud800ice", "al\x1bice"], ids=["nul", "surrogate", "esc"])
async def test_a_token_subject_postgresql_cannot_hold_is_401_saying_why(sub, gateway_client, settings):
    token = hs_token(settings, sub=sub)
    async with gateway_client() as http:
        response = await http.get("/v1/orders", headers={"Authorization": f"Bearer {token}"})
    problem = assert_problem(response, 401)
    assert "subject (sub)" in problem["detail"] and "NUL" in problem["detail"], problem
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("sub", [f"alice{NUL}", "alice\ud800"], ids=["nul", "surrogate"])
async def test_a_value_the_database_refuses_is_422_not_503(sub, gateway_client, bearer):
    """The backstop behind validation: PostgreSQL (or its driver) refusing a value, here a customer
    id that skipped validation, is the request's fault and no retry fixes it: never an outage."""

    async def unvalidated(request: Request):
        page = await request.app.state.service.list(
            Caller(subject=sub, role="customer"), limit=1, cursor=None, status=None, customer_id=None
        )
        return {"items": len(page.items)}

    async with gateway_client(app_hook=lambda app: app.add_api_route("/v1/unvalidated", unvalidated)) as http:
        response = await http.get("/v1/unvalidated", headers=bearer())
    problem = assert_problem(response, 422)
    assert problem["type"].endswith("/unstorable-value") and "NUL" in problem["detail"], problem
    assert "retry-after" not in response.headers


def test_single_line_fields_accept_any_printable_text():
    from api.schemas import ShippingAddress

    address = ShippingAddress.model_validate({**ADDRESS, "name": "Zoë Ñúñez-東京 🚚", "line2": None})
    assert address.to_domain().name == "Zoë Ñúñez-東京 🚚"
