"""The carrier's webhook: delivery events become signals to the order's workflow."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Carrier, Service
from api.schemas import Accepted, CarrierEventBody, Problem
from core.domain import CarrierEventSignal

router = APIRouter(prefix="/v1/carrier", tags=["carrier"])


@router.post(
    "/events",
    status_code=202,
    response_model=Accepted,
    summary="Carrier event (picked_up, in_transit, delivered, lost)",
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem, "description": "Unknown tracking number"}, 503: {"model": Problem}},
)
async def carrier_event(body: CarrierEventBody, caller: Carrier, service: Service) -> Accepted:
    await service.carrier_event(CarrierEventSignal(tracking_number=body.tracking_number, event=body.event, occurred_at=body.occurred_at))
    return Accepted()
