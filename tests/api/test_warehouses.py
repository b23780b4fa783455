"""Operators list warehouses and set stock per warehouse; everyone else is refused."""

from __future__ import annotations

import uuid

import pytest

from activities.stock import StockActivities
from core.domain import OrderLine, StockRequest
from tests.api.conftest import assert_problem
from tests.support import new_warehouses, stock_by_warehouse, stocked_sku


async def test_operators_see_every_warehouse_with_its_stock(gateway_client, bearer, engine):
    first, second = await new_warehouses(engine, 2)
    sku = await stocked_sku(engine, {first: 5, second: 3})
    await StockActivities(engine).reserve_stock(
        StockRequest(order_id=uuid.uuid4(), lines=[OrderLine(sku=sku, quantity=2, unit_price=100)])
    )
    async with gateway_client() as http:
        response = await http.get("/v1/warehouses", headers=bearer(role="operator"))
    assert response.status_code == 200, response.text
    houses = {house["id"]: house for house in response.json()["items"]}
    assert "WH-MAIN" in houses
    assert houses[first]["preference"] < houses[second]["preference"]
    assert [s for s in houses[first]["stock"] if s["sku"] == sku] == [
        {"sku": sku, "on_hand": 5, "reserved": 2, "available": 3}
    ]
    assert [s for s in houses[second]["stock"] if s["sku"] == sku] == [
        {"sku": sku, "on_hand": 3, "reserved": 0, "available": 3}
    ]


async def test_an_operator_sets_on_hand_and_the_catalogue_shows_the_total(gateway_client, bearer, engine):
    first, second = await new_warehouses(engine, 2)
    sku = await stocked_sku(engine, {first: 5})
    operator = bearer(role="operator")
    async with gateway_client() as http:
        changed = await http.put(f"/v1/warehouses/{first}/stock/{sku}", json={"on_hand": 8}, headers=operator)
        added = await http.put(f"/v1/warehouses/{second}/stock/{sku}", json={"on_hand": 4}, headers=operator)
        products = await http.get("/v1/products", headers=bearer())
    assert changed.status_code == 200 and changed.json() == {"sku": sku, "on_hand": 8, "reserved": 0, "available": 8}
    assert added.status_code == 200 and added.json()["on_hand"] == 4  # stocked there for the first time
    assert await stock_by_warehouse(engine, sku) == {first: (8, 0), second: (4, 0)}
    assert [p["available"] for p in products.json()["items"] if p["sku"] == sku] == [12]


async def test_on_hand_below_reserved_is_a_conflict_naming_the_reserved_units(gateway_client, bearer, engine):
    (house,) = await new_warehouses(engine, 1)
    sku = await stocked_sku(engine, {house: 5})
    await StockActivities(engine).reserve_stock(
        StockRequest(order_id=uuid.uuid4(), lines=[OrderLine(sku=sku, quantity=3, unit_price=100)])
    )
    async with gateway_client() as http:
        refused = await http.put(
            f"/v1/warehouses/{house}/stock/{sku}", json={"on_hand": 2}, headers=bearer(role="operator")
        )
        exactly = await http.put(
            f"/v1/warehouses/{house}/stock/{sku}", json={"on_hand": 3}, headers=bearer(role="operator")
        )
    body = assert_problem(refused, 409)
    assert "3" in body["detail"] and body["type"].endswith("/stock-below-reserved")
    assert exactly.status_code == 200 and exactly.json()["available"] == 0
    assert await stock_by_warehouse(engine, sku) == {house: (3, 3)}


async def test_unknown_warehouse_or_sku_is_404_and_changes_nothing(gateway_client, bearer, engine):
    (house,) = await new_warehouses(engine, 1)
    sku = await stocked_sku(engine, {house: 5})
    operator = bearer(role="operator")
    async with gateway_client() as http:
        no_house = await http.put(f"/v1/warehouses/WH-NOWHERE/stock/{sku}", json={"on_hand": 1}, headers=operator)
        no_sku = await http.put(f"/v1/warehouses/{house}/stock/NO-SUCH-SKU", json={"on_hand": 1}, headers=operator)
    assert "WH-NOWHERE" in assert_problem(no_house, 404)["detail"]
    assert "NO-SUCH-SKU" in assert_problem(no_sku, 404)["detail"]
    assert await stock_by_warehouse(engine, sku) == {house: (5, 0)}


@pytest.mark.parametrize(
    "body",
    [{"on_hand": -1}, {"on_hand": 10**12}, {"on_hand": 1, "reserved": 0}, {"on_hand": "many"}, {}],
    ids=["negative", "absurd", "unknown-field", "not-a-number", "missing"],
)
async def test_bad_bodies_are_422(gateway_client, bearer, engine, body):
    (house,) = await new_warehouses(engine, 1)
    sku = await stocked_sku(engine, {house: 5})
    async with gateway_client() as http:
        response = await http.put(f"/v1/warehouses/{house}/stock/{sku}", json=body, headers=bearer(role="operator"))
    assert assert_problem(response, 422)["errors"]
    assert await stock_by_warehouse(engine, sku) == {house: (5, 0)}


@pytest.mark.parametrize("role", ["customer", "carrier"])
async def test_only_operators(gateway_client, bearer, engine, role):
    (house,) = await new_warehouses(engine, 1)
    sku = await stocked_sku(engine, {house: 5})
    async with gateway_client() as http:
        listed = await http.get("/v1/warehouses", headers=bearer(role=role))
        put = await http.put(f"/v1/warehouses/{house}/stock/{sku}", json={"on_hand": 0}, headers=bearer(role=role))
        anonymous = await http.put(f"/v1/warehouses/{house}/stock/{sku}", json={"on_hand": 0})
        anonymous_list = await http.get("/v1/warehouses")
    assert_problem(listed, 403)
    assert_problem(put, 403)
    assert_problem(anonymous, 401)
    assert_problem(anonymous_list, 401)
    assert await stock_by_warehouse(engine, sku) == {house: (5, 0)}


async def test_every_answer_is_documented(gateway_client):
    async with gateway_client() as http:
        document = (await http.get("/openapi.json")).json()
    put = document["paths"]["/v1/warehouses/{warehouse_id}/stock/{sku}"]["put"]["responses"]
    assert {"200", "401", "403", "404", "409", "422", "429", "503"} <= set(put)
    assert put["409"]["content"]["application/problem+json"]["example"]["status"] == 409
    listed = document["paths"]["/v1/warehouses"]["get"]["responses"]
    assert listed["200"]["content"]["application/json"]["example"]["items"][0]["id"] == "WH-MAIN"
