"""Orders: submit, read, list, cancel, amend, review, change the shipping address."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from api.deps import Customer, CustomerOrOperator, Operator, Service
from api.errors import ApiProblem
from api.openapi import AMENDED_ORDER_EXAMPLE, SPLIT_ORDER_EXAMPLE, problems
from api.schemas import (
    AmendBody,
    CancelBody,
    Cursor,
    CustomerId,
    OrderCreate,
    OrderList,
    OrderView,
    ReviewBody,
    ShippingAddress,
)
from core.domain import OrderStatus
from core.order_service import ActionOutcome, NewOrder

router = APIRouter(prefix="/v1/orders", tags=["orders"])

# A bare token (as Stripe's clients send) or the draft's structured-field string ("..."): 1-255
# visible ASCII characters; no double quote, and inside the quoted form no backslash either.
_BARE_KEY = re.compile(r"^[\x21\x23-\x7e]{1,255}$")
_QUOTED_KEY = re.compile(r'^"([\x21\x23-\x5b\x5d-\x7e]{1,255})"$')
# Documented by hand: the route reads the header as optional so that a missing or malformed key
# gets its own 400 problem, yet no order is accepted without one.
_IDEMPOTENCY_KEY_DOC = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": True,
            "description": "unique per order; retries reuse it",
            "schema": {
                "type": "string",
                "pattern": r'^(?:[\x21\x23-\x7e]{1,255}|"[\x21\x23-\x5b\x5d-\x7e]{1,255}")$',
                "maxLength": 257,
            },
            "example": "9f2c1e0a-4b7d-4c1e-8f3a-2d6b5e7c9a10",
        }
    ]
}
_READ = problems(401, 403, 422, 429, 503)
_ONE = problems(401, 403, 404, 422, 429, 503)
_ACTION = problems(401, 403, 404, 413, 415, 422, 429, 503)
_SUBMIT = problems(
    400,
    401,
    403,
    413,
    415,
    422,
    429,
    503,
    _403="Only customers submit orders",
    _422="Invalid body (see errors), unknown or repeated SKU, mixed currencies, or the Idempotency-Key reused with another body",
    _503="Overloaded, timed out, `backlogged` (the workers keep new orders waiting longer than "
    "`ORDERS_API_MAX_START_DELAY_S`: nothing was stored), or a dependency is unavailable; retry with the same "
    "Idempotency-Key after Retry-After, which grows with the overload",
)


def _example(description: str, example: dict) -> dict:
    return {"description": description, "content": {"application/json": {"example": example}}}


# Cancel, amend, review and address changes: 200 once the workflow has done it; 202 when it accepted
# the change but had not finished it within ORDERS_UPDATE_WAIT_S.
_PENDING: dict[int | str, dict] = {
    202: {
        "description": "Accepted by the order but not finished yet (e.g. compensations still running): the "
        "order as it is now; the change will happen. Follow it with `GET /v1/orders/{id}?wait=...`",
        "model": OrderView,
    }
}


def _answer(outcome: ActionOutcome, response: Response) -> OrderView:
    if not outcome.finished:
        response.status_code = 202
    return OrderView.of(outcome.view)


def parse_idempotency_key(raw: str | None) -> str:
    """Accept a bare token or the draft's quoted string form; 1-255 visible ASCII characters."""
    if raw is None:
        raise ApiProblem(
            400,
            "Idempotency-Key required",
            "send an Idempotency-Key header with a unique value per order",
            slug="idempotency-key-missing",
        )
    raw = raw.strip()
    if _BARE_KEY.match(raw):
        return raw
    match = _QUOTED_KEY.match(raw)
    if match is None:
        raise ApiProblem(
            400,
            "Invalid Idempotency-Key",
            "the key must be 1-255 visible ASCII characters",
            slug="idempotency-key-invalid",
        )
    return match.group(1)


def refuse_repeated_skus(skus: list[str]) -> None:
    """422 naming every SKU that appears on more than one line (lines are never merged silently)."""
    repeated = sorted({sku for sku in skus if skus.count(sku) > 1})
    if repeated:
        raise ApiProblem(
            422,
            "Repeated SKU",
            f"each SKU may appear once; merge the lines of {', '.join(repeated)}",
            slug="validation",
            errors=[
                {"loc": ["body", "items"], "msg": f"repeated SKU {sku}", "type": "repeated_sku"} for sku in repeated
            ],
        )


@router.post(
    "",
    status_code=202,
    response_model=OrderView,
    summary="Submit an order",
    responses={
        202: {"description": "Accepted (or, with `Idempotent-Replayed: true`, the first answer to this key again)"},
        **_SUBMIT,
    },
    openapi_extra=_IDEMPOTENCY_KEY_DOC,
)
async def submit_order(
    body: OrderCreate,
    caller: Customer,
    service: Service,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", include_in_schema=False)] = None,
) -> OrderView:
    key = parse_idempotency_key(idempotency_key)
    refuse_repeated_skus([item.sku for item in body.items])
    submission = await service.submit(
        caller,
        key,
        NewOrder([(i.sku, i.quantity) for i in body.items], body.shipping_address.to_domain(), body.payment_token),
    )
    response.headers["Location"] = f"/v1/orders/{submission.view.id}"
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return OrderView.of(submission.view)


@router.get("", response_model=OrderList, summary="List orders, newest first", responses=_READ)
async def list_orders(
    caller: CustomerOrOperator,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[Cursor | None, Query()] = None,
    status: OrderStatus | None = None,
    customer_id: Annotated[CustomerId | None, Query(description="operators only")] = None,
) -> OrderList:
    if customer_id is not None and not caller.is_operator:
        raise ApiProblem(403, "Forbidden", "only operators filter by customer", slug="forbidden")
    page = await service.list(caller, limit=limit, cursor=cursor, status=status, customer_id=customer_id)
    return OrderList(items=[OrderView.of(view) for view in page.items], next_cursor=page.next_cursor)


_ETAG_HEADER = {
    "ETag": {
        "description": "the order's version: send it back as `If-None-Match` to wait for the next change",
        "schema": {"type": "string", "example": '"4.0"'},
    }
}
_ETAGS = re.compile(r'(?:W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def parse_if_none_match(raw: str | None) -> set[str]:
    """The entity tags of an If-None-Match header (RFC 9110, weak comparison: ``W/`` ignored);
    ``{"*"}`` for the wildcard, empty for none or nothing readable."""
    if raw is None:
        return set()
    if raw.strip() == "*":
        return {"*"}
    return set(_ETAGS.findall(raw))


@router.get(
    "/{order_id}",
    response_model=OrderView,
    summary="Read an order, or wait for it to change",
    description="""Without `wait`, the order as it is now. Every answer carries an `ETag`; a request whose
`If-None-Match` names the current one gets `304 Not Modified` (no body).

**Long-poll, instead of polling every second.** With `wait` (seconds, at most 30) the request is held
until the order is *ready*, then answered at once:

* with `until` (one or more statuses, e.g. `until=completed&until=cancelled&until=rejected&until=failed`):
  when the order's status is one of them;
* otherwise with `If-None-Match`: when the order no longer matches that ETag (any change: a status,
  a shipment, a carrier event).

If it is not ready within `wait`, the answer is the order as it is then: `304` when it still
matches `If-None-Match`, else `200`. With neither `until` nor `If-None-Match` there is nothing to
wait for and the answer is immediate. The gateway may answer sooner than `wait` (its own cap, or
when it shuts down): always read the status of the answer, then ask again. A wait counts as one
read against the rate limit. Each gateway process holds a bounded number of waiting requests;
beyond it the answer is 503 with `Retry-After`.""",
    responses={
        200: {
            **_example("An order split over two warehouses", SPLIT_ORDER_EXAMPLE),
            "headers": _ETAG_HEADER,
        },
        304: {
            "description": "The order still matches `If-None-Match` (after the wait, if one was asked for)",
            "headers": _ETAG_HEADER,
        },
        **_ONE,
        **problems(
            422,
            _422="`wait` not a whole number of seconds from 0 to 30, an unknown status in `until`, or an invalid id",
        ),
        **problems(
            503,
            _503="This gateway holds its maximum of waiting requests, or the database is unavailable; retry after Retry-After",
        ),
    },
)
async def get_order(
    order_id: uuid.UUID,
    caller: CustomerOrOperator,
    service: Service,
    request: Request,
    response: Response,
    wait: Annotated[
        int, Query(ge=0, le=30, description="seconds to wait for the order to be ready (see above); 0: answer now")
    ] = 0,
    until: Annotated[
        list[OrderStatus] | None, Query(description="with `wait`: answer once the order has one of these statuses")
    ] = None,
    if_none_match: Annotated[
        str | None, Header(alias="If-None-Match", description="the ETag of the order as you last read it")
    ] = None,
):
    seen = parse_if_none_match(if_none_match)
    current = await service.watch(
        caller,
        order_id,
        wait_s=wait,
        seen=seen,
        until=frozenset(until or ()),
        parked=getattr(request.state, "parked", None),
    )
    if current.version in seen or "*" in seen:
        return Response(status_code=304, headers={"ETag": current.etag})
    response.headers["ETag"] = current.etag
    return OrderView.of(current.view)


@router.post(
    "/{order_id}/cancel",
    response_model=OrderView,
    description="Without `shipments`, the whole order (refused once any shipment has left). With "
    "`shipments`, only those (ids from the order's `shipments`), which must not have left yet.",
    summary="Cancel an order, or some of its shipments, before they ship",
    responses={
        **_PENDING,
        **_ACTION,
        **problems(422, _422="Invalid body (see errors), or a shipment id the order does not have"),
        **problems(
            409,
            _409="Already shipped or ended otherwise; with shipments left already, the detail names them",
            examples={
                409: {
                    "detail": "shipments already handed to the carrier cannot be cancelled: "
                    "3f0a8a4e-5b8e-5c55-9a61-7f5f2f0f8a11-WH-MAIN; cancel the pending ones by id",
                    "instance": "/v1/orders/3f0a8a4e-5b8e-5c55-9a61-7f5f2f0f8a11/cancel",
                }
            },
        ),
    },
)
async def cancel_order(
    order_id: uuid.UUID, body: CancelBody, caller: CustomerOrOperator, service: Service, response: Response
) -> OrderView:
    shipments = list(dict.fromkeys(body.shipments)) if body.shipments is not None else None
    return _answer(await service.cancel(caller, order_id, body.reason, shipments), response)


@router.post(
    "/{order_id}/amend",
    response_model=OrderView,
    summary="Keep what is available of an order awaiting the customer",
    description="Drop or reduce the lines that could not be reserved (see `unavailable`); the total is "
    "recomputed from the prices at order time. Retrying the same amend is safe.",
    responses={
        200: _example("The order with the lines kept, its total recomputed", AMENDED_ORDER_EXAMPLE),
        **_PENDING,
        **_ACTION,
        **problems(
            409,
            _409="Not awaiting the customer (already amended, cancelled, timed out, or never partly unavailable)",
            examples={
                409: {
                    "detail": "order is payment_authorized, not awaiting the customer",
                    "instance": "/v1/orders/3f0a8a4e-5b8e-5c55-9a61-7f5f2f0f8a11/amend",
                }
            },
        ),
        **problems(
            422,
            _422="Invalid body (see errors), a repeated SKU, or an amend the order refuses: an SKU it does not "
            "have or more units than were reserved (the detail names the line)",
            examples={
                422: {
                    "type": "https://orders.example/problems/invalid-amend",
                    "title": "Invalid amend",
                    "detail": "LAMP-BRS: at most 1 unit(s) were reserved, 3 asked",
                    "errors": None,
                    "instance": "/v1/orders/3f0a8a4e-5b8e-5c55-9a61-7f5f2f0f8a11/amend",
                }
            },
        ),
    },
)
async def amend_order(
    order_id: uuid.UUID, body: AmendBody, caller: CustomerOrOperator, service: Service, response: Response
) -> OrderView:
    refuse_repeated_skus([item.sku for item in body.items])
    lines = [(item.sku, item.quantity) for item in body.items]
    return _answer(await service.amend(caller, order_id, lines), response)


@router.put(
    "/{order_id}/shipping-address",
    response_model=OrderView,
    summary="Change the shipping address before shipping",
    responses={**_PENDING, **_ACTION, **problems(409, _409="Already shipping or ended")},
)
async def change_shipping_address(
    order_id: uuid.UUID, body: ShippingAddress, caller: CustomerOrOperator, service: Service, response: Response
) -> OrderView:
    return _answer(await service.change_shipping_address(caller, order_id, body.to_domain()), response)


@router.post(
    "/{order_id}/review",
    response_model=OrderView,
    summary="Approve or reject an order awaiting review (operators)",
    responses={**_PENDING, **_ACTION, **problems(409, _409="Not awaiting review (or decided otherwise)")},
)
async def review_order(
    order_id: uuid.UUID, body: ReviewBody, caller: Operator, service: Service, response: Response
) -> OrderView:
    return _answer(await service.review(caller, order_id, body.decision, body.note), response)
