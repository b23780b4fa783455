"""The carrier's webhook: ``delivered`` and ``lost`` become signals to the order's workflow;
``picked_up`` and ``in_transit``, which the workflow decides nothing on, are recorded in the read
model only (two Temporal actions fewer per order; see core/order_service.py ``TRACKING_ONLY``).

Two proofs are required: a bearer token with the ``carrier`` role, and ``Carrier-Signature`` — an
HMAC-SHA256 over the raw body with a timestamp (:mod:`core.webhooks`), so a captured request cannot
be replayed after ``ORDERS_CARRIER_WEBHOOK_TOLERANCE_S``. The body is parsed only after the
signature over its exact bytes checked out. Repeated events are harmless: the workflow ignores an
event it already has, an ended order ignores everything, and the first time reported for a tracking
event is kept.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import Carrier, Service, SettingsDep
from api.errors import ApiProblem
from api.openapi import problems
from api.schemas import Accepted, CarrierEventBody
from core.domain import CarrierEventSignal
from core.webhooks import SIGNATURE_HEADER, WebhookSignatureError, verify_webhook

router = APIRouter(prefix="/v1/carrier", tags=["carrier"])

_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/CarrierEventBody"},
            "example": {"tracking_number": "TRK-1A2B3C4D", "event": "delivered", "occurred_at": "2025-01-02T09:30:00Z"},
        }
    },
}


@router.post(
    "/events",
    status_code=202,
    response_model=Accepted,
    summary="Carrier event (picked_up, in_transit, delivered, lost)",
    responses=problems(
        401,
        403,
        404,
        413,
        415,
        422,
        429,
        503,
        _401="Missing or invalid carrier token, or a missing, wrong or stale Carrier-Signature",
        _403="The token is not a carrier's",
        _404="Unknown tracking number",
    ),
    openapi_extra={"requestBody": _BODY},
)
async def carrier_event(
    request: Request,
    caller: Carrier,
    service: Service,
    settings: SettingsDep,
    signature: Annotated[
        str | None,
        Header(
            alias=SIGNATURE_HEADER,
            max_length=1024,
            description='`t=<unix seconds>,v1=<hex HMAC-SHA256 of "{t}.{raw body}">`',
        ),
    ] = None,
) -> Accepted:
    raw = await request.body()
    try:
        verify_webhook(
            settings.carrier_webhook_secret, raw, signature, time.time(), settings.carrier_webhook_tolerance_s
        )
    except WebhookSignatureError as error:
        raise ApiProblem(
            401,
            "Invalid signature",
            str(error),
            slug="invalid-signature",
            headers={"WWW-Authenticate": f'{SIGNATURE_HEADER} realm="orders"'},
        ) from None
    try:
        body = CarrierEventBody.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None
    await service.carrier_event(
        CarrierEventSignal(tracking_number=body.tracking_number, event=body.event, occurred_at=body.occurred_at)
    )
    return Accepted()
