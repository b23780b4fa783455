"""Payment provider calls (authorize, capture, void, refund) over HTTP with idempotency keys."""

from __future__ import annotations

import httpx
from temporalio import activity

from activities.http import post_idempotent, rejected
from core.domain import (
    ERR_PAYMENT_DECLINED,
    AuthorizePayment,
    PaymentAction,
    PaymentAuthorization,
    VoidUnknownAuthorization,
)


class PaymentActivities:
    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/") + "/v1"

    @activity.defn(name="authorize_payment")
    async def authorize_payment(self, request: AuthorizePayment) -> PaymentAuthorization:
        """Authorize the order total; a decline raises non-retryable PaymentDeclined."""
        response = await post_idempotent(
            self._http,
            f"{self._base}/authorizations",
            json={
                "order_id": str(request.order_id),
                "amount": request.amount,
                "currency": request.currency,
                "payment_token": request.payment_token,
            },
            idempotency_key=request.idempotency_key,
        )
        if response.status_code == 402:
            raise rejected(response, "payment", error_type=ERR_PAYMENT_DECLINED)
        if response.status_code >= 400:
            raise rejected(response, "payment authorization")
        body = response.json()
        return PaymentAuthorization(authorization_id=body["id"], status=body["status"])

    @activity.defn(name="capture_payment")
    async def capture_payment(self, request: PaymentAction) -> None:
        # Only a partial capture says so: a final one sends the same body as before multicapture.
        body: dict = (
            {"amount": request.amount} if request.final_capture else {"amount": request.amount, "final_capture": False}
        )
        await self._act(request, "capture", body)

    @activity.defn(name="void_payment")
    async def void_payment(self, request: PaymentAction) -> None:
        await self._act(request, "void", {})

    @activity.defn(name="refund_payment")
    async def refund_payment(self, request: PaymentAction) -> None:
        await self._act(request, "refund", {"amount": request.amount})

    @activity.defn(name="void_unknown_authorization")
    async def void_unknown_authorization(self, request: VoidUnknownAuthorization) -> str:
        """Void whatever the authorize call with that key may have created; 'not_found' if nothing."""
        response = await post_idempotent(
            self._http,
            f"{self._base}/authorizations/void-by-key",
            json={"authorization_key": request.authorize_idempotency_key},
            idempotency_key=request.idempotency_key,
        )
        if response.status_code >= 400:
            raise rejected(response, "void")
        return str(response.json()["status"])

    async def _act(self, request: PaymentAction, action: str, body: dict) -> None:
        response = await post_idempotent(
            self._http,
            f"{self._base}/authorizations/{request.authorization_id}/{action}",
            json=body,
            idempotency_key=request.idempotency_key,
        )
        if response.status_code >= 400:
            raise rejected(response, action)
