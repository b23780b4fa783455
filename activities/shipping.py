"""Carrier calls: create and cancel shipments over HTTP with idempotency keys."""

from __future__ import annotations

import httpx
from temporalio import activity

from activities.http import post_idempotent, rejected
from core.domain import CancelShipment, CreateShipment, Shipment


class ShippingActivities:
    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/") + "/v1"

    @activity.defn(name="create_shipment")
    async def create_shipment(self, request: CreateShipment) -> Shipment:
        response = await post_idempotent(
            self._http,
            f"{self._base}/shipments",
            json={
                "order_id": str(request.order_id),
                "shipping_address": request.shipping_address.model_dump(mode="json"),
                "items": [{"sku": line.sku, "quantity": line.quantity} for line in request.lines],
            },
            idempotency_key=request.idempotency_key,
        )
        if response.status_code >= 400:
            raise rejected(response, "shipment")
        return Shipment(tracking_number=response.json()["tracking_number"])

    @activity.defn(name="cancel_shipment")
    async def cancel_shipment(self, request: CancelShipment) -> None:
        response = await post_idempotent(
            self._http,
            f"{self._base}/shipments/{request.tracking_number}/cancel",
            json={},
            idempotency_key=request.idempotency_key,
        )
        if response.status_code >= 400:
            raise rejected(response, "shipment cancellation")
