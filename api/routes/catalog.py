"""The product catalogue with live availability."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import CallerDep
from api.openapi import problems
from api.schemas import ProductList, ProductOut
from core.db.catalog import Catalog
from core.domain import DependencyUnavailable
from core.order_service import DB_ERRORS

router = APIRouter(prefix="/v1/products", tags=["catalog"])


@router.get("", response_model=ProductList, summary="List products", responses=problems(401, 429, 503))
async def list_products(request: Request, caller: CallerDep) -> ProductList:
    try:
        products = await Catalog(request.app.state.engine).list()
    except DB_ERRORS as error:
        raise DependencyUnavailable("database") from error
    return ProductList(
        items=[
            ProductOut(sku=p.sku, name=p.name, unit_price=p.unit_price, currency=p.currency, available=p.available)
            for p in products
        ]
    )
