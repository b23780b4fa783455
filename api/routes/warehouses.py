"""Warehouses and their stock (operators only)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import Operator
from api.errors import ApiProblem
from api.openapi import problems
from api.schemas import Sku, StockLevelIn, StockLevelOut, WarehouseId, WarehouseList, WarehouseOut
from core.db.warehouses import StockLevel, Warehouses
from core.domain import StockBelowReserved, UnknownStockLocation
from core.order_service import DB_ERRORS, database_error

router = APIRouter(prefix="/v1/warehouses", tags=["warehouses"])

_OPERATORS_ONLY = "Only operators see and change warehouse stock"
_PUT_EXAMPLES = {
    404: {
        "title": "Not found",
        "detail": "warehouse WH-NOWHERE not found",
        "instance": "/v1/warehouses/WH-NOWHERE/stock/MUG-WHT",
    },
    409: {
        "type": "https://orders.example/problems/stock-below-reserved",
        "title": "Stock below reserved",
        "detail": "WH-MAIN holds 3 of MUG-WHT reserved for orders; on_hand cannot be set to 2",
        "instance": "/v1/warehouses/WH-MAIN/stock/MUG-WHT",
    },
}


def _level(level: StockLevel) -> StockLevelOut:
    return StockLevelOut(sku=level.sku, on_hand=level.on_hand, reserved=level.reserved, available=level.available)


@router.get(
    "",
    response_model=WarehouseList,
    summary="List warehouses with their stock per SKU (operators)",
    responses=problems(401, 403, 429, 503, _403=_OPERATORS_ONLY),
)
async def list_warehouses(request: Request, caller: Operator) -> WarehouseList:
    try:
        houses = await Warehouses(request.app.state.engine).list()
    except DB_ERRORS as error:
        raise database_error(error) from error
    return WarehouseList(
        items=[
            WarehouseOut(id=h.id, name=h.name, preference=h.preference, stock=[_level(s) for s in h.stock])
            for h in houses
        ]
    )


@router.put(
    "/{warehouse_id}/stock/{sku}",
    response_model=StockLevelOut,
    summary="Set what a warehouse has on hand of a SKU (operators)",
    responses=problems(
        401,
        403,
        404,
        409,
        413,
        415,
        422,
        429,
        503,
        examples=_PUT_EXAMPLES,
        _403=_OPERATORS_ONLY,
        _404="No such warehouse or SKU",
        _409="Orders hold more than that reserved in this warehouse (the detail names how many)",
        _422="Invalid body (see errors): on_hand negative or above 1,000,000,000, or unknown fields",
    ),
)
async def set_stock(
    warehouse_id: WarehouseId, sku: Sku, body: StockLevelIn, request: Request, caller: Operator
) -> StockLevelOut:
    try:
        level = await Warehouses(request.app.state.engine).set_on_hand(warehouse_id, sku, body.on_hand)
    except UnknownStockLocation as error:
        raise ApiProblem(404, "Not found", str(error), slug="not-found") from None
    except StockBelowReserved as error:
        raise ApiProblem(409, "Stock below reserved", str(error), slug="stock-below-reserved") from None
    except DB_ERRORS as error:
        raise database_error(error) from error
    return _level(level)
