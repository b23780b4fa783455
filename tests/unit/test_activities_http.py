"""The payment and shipping activities against a provider stand-in at the HTTP transport.

The providers are outside the system, so an ``httpx.MockTransport`` answers for them here (the sandbox
providers cover the same calls over real HTTP in the workflow and integration tests). The activities
run in the SDK's ``ActivityEnvironment``. What is checked is what ``activities/http.py`` promises: a
decline is a non-retryable PaymentDeclined, any other 4xx a non-retryable ProviderRejected, and 5xx,
408/409/425/429, timeouts and connection errors are retried; and that each call carries its
Idempotency-Key to the right path with the right body.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from activities.http import provider_client
from activities.payment import PaymentActivities
from activities.shipping import ShippingActivities
from core.config import Settings
from core.domain import (
    ERR_PAYMENT_DECLINED,
    ERR_PROVIDER_REJECTED,
    AuthorizePayment,
    CancelShipment,
    CreateShipment,
    OrderLine,
    PaymentAction,
    PaymentAuthorization,
    Shipment,
    VoidUnknownAuthorization,
)
from tests.support import ADDRESS
from workflows import policies
from workflows.policies import CallPolicy

PAYMENTS = "http://payments.test/payments/"  # a trailing slash, as a setting may have one
CARRIER = "http://carrier.test/carrier"
ORDER_ID = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
AUTH_ID = "auth_123"
TRACKING = "TRK-42"


class Provider:
    """The provider's side of the transport: answers every request with ``answer`` and records it."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    @property
    def request(self) -> httpx.Request:
        [only] = self.requests
        return only


def answering(status: int, body: Any = None, *, headers: dict[str, str] | None = None) -> Provider:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Provider(lambda _: httpx.Response(status, content=content, headers=headers))


def failing(error: type[httpx.TransportError]) -> Provider:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("the provider stand-in fails the transport", request=request)

    return Provider(fail)


def error_body(code: str) -> dict:
    """The providers' error shape (the sandbox's too): ``{"error": {"code", "message"}}``."""
    return {"error": {"code": code, "message": f"{code} (from the test provider)"}}


@dataclass(frozen=True)
class Call:
    """One provider operation: how to run its activity, where it posts, what it sends and returns."""

    name: str
    run: Callable[[httpx.AsyncClient], Awaitable[Any]]
    path: str
    key: str
    body: dict
    success: Any  # the provider's 2xx body
    result: Any  # what the activity returns for it
    policy: CallPolicy  # the retry policy the workflow calls it with


def payment(http: httpx.AsyncClient) -> PaymentActivities:
    return PaymentActivities(http, PAYMENTS)


def shipping(http: httpx.AsyncClient) -> ShippingActivities:
    return ShippingActivities(http, CARRIER)


def run(activity: Callable[..., Awaitable[Any]], request: Any) -> Awaitable[Any]:
    return ActivityEnvironment().run(activity, request)


def action(name: str) -> PaymentAction:
    return PaymentAction(
        order_id=ORDER_ID, authorization_id=AUTH_ID, amount=2_500, currency="EUR", idempotency_key=f"key-{name}"
    )


LINES = [OrderLine(sku="MUG-WHT", quantity=2, unit_price=1_250)]

CALLS = [
    Call(
        "authorize_payment",
        lambda http: run(
            payment(http).authorize_payment,
            AuthorizePayment(
                order_id=ORDER_ID, amount=2_500, currency="EUR", payment_token="tok_ok", idempotency_key="key-auth"
            ),
        ),
        "http://payments.test/payments/v1/authorizations",
        "key-auth",
        {"order_id": str(ORDER_ID), "amount": 2_500, "currency": "EUR", "payment_token": "tok_ok"},
        {"id": AUTH_ID, "status": "authorized", "amount": 2_500},
        PaymentAuthorization(authorization_id=AUTH_ID, status="authorized"),
        policies.AUTHORIZE,
    ),
    Call(
        "capture_payment",
        lambda http: run(payment(http).capture_payment, action("capture")),
        f"http://payments.test/payments/v1/authorizations/{AUTH_ID}/capture",
        "key-capture",
        {"amount": 2_500},
        {"status": "captured"},
        None,
        policies.SETTLEMENT,
    ),
    Call(
        # One shipment of several: the authorization stays open for the next one's capture.
        "capture_payment_partial",
        lambda http: run(payment(http).capture_payment, action("capture").model_copy(update={"final_capture": False})),
        f"http://payments.test/payments/v1/authorizations/{AUTH_ID}/capture",
        "key-capture",
        {"amount": 2_500, "final_capture": False},
        {"status": "partly_captured"},
        None,
        policies.SETTLEMENT,
    ),
    Call(
        "void_payment",
        lambda http: run(payment(http).void_payment, action("void")),
        f"http://payments.test/payments/v1/authorizations/{AUTH_ID}/void",
        "key-void",
        {},
        {"status": "voided"},
        None,
        policies.SETTLEMENT,
    ),
    Call(
        "refund_payment",
        lambda http: run(payment(http).refund_payment, action("refund")),
        f"http://payments.test/payments/v1/authorizations/{AUTH_ID}/refund",
        "key-refund",
        {"amount": 2_500},
        {"status": "refunded"},
        None,
        policies.SETTLEMENT,
    ),
    Call(
        "void_unknown_authorization",
        lambda http: run(
            payment(http).void_unknown_authorization,
            VoidUnknownAuthorization(
                order_id=ORDER_ID,
                amount=2_500,
                currency="EUR",
                payment_token="tok_ok",
                authorize_idempotency_key="key-auth",
                idempotency_key="key-void-unknown",
            ),
        ),
        "http://payments.test/payments/v1/authorizations/void-by-key",
        "key-void-unknown",
        {"authorization_key": "key-auth"},
        {"status": "not_found"},
        "not_found",
        policies.SETTLEMENT,
    ),
    Call(
        "create_shipment",
        lambda http: run(
            shipping(http).create_shipment,
            CreateShipment(order_id=ORDER_ID, shipping_address=ADDRESS, lines=LINES, idempotency_key="key-ship"),
        ),
        "http://carrier.test/carrier/v1/shipments",
        "key-ship",
        {
            "order_id": str(ORDER_ID),
            "shipping_address": ADDRESS.model_dump(mode="json"),
            "items": [{"sku": "MUG-WHT", "quantity": 2}],
        },
        {"tracking_number": TRACKING, "status": "created"},
        Shipment(tracking_number=TRACKING),
        policies.CREATE_SHIPMENT,
    ),
    Call(
        "cancel_shipment",
        lambda http: run(
            shipping(http).cancel_shipment,
            CancelShipment(order_id=ORDER_ID, tracking_number=TRACKING, idempotency_key="key-cancel-shipment"),
        ),
        f"http://carrier.test/carrier/v1/shipments/{TRACKING}/cancel",
        "key-cancel-shipment",
        {},
        {"status": "cancelled"},
        None,
        policies.SETTLEMENT,
    ),
]
AUTHORIZE = CALLS[0]
by_name = pytest.mark.parametrize("call", CALLS, ids=[call.name for call in CALLS])


async def call_provider(call: Call, provider: Provider) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(provider)) as http:
        return await call.run(http)


async def failure_of(call: Call, provider: Provider) -> BaseException:
    with pytest.raises(Exception) as raised:
        await call_provider(call, provider)
    return raised.value


def retried_under(policy: CallPolicy, error: BaseException) -> bool:
    """Whether Temporal retries an activity attempt that raised ``error`` under ``policy``: a
    non-retryable ApplicationError or a type the policy names stops; anything else is retried (an
    exception that is not an ApplicationError gets its class name as its type)."""
    if isinstance(error, ApplicationError):
        return not error.non_retryable and error.type not in policy.retry.non_retryable_error_types
    return type(error).__name__ not in policy.retry.non_retryable_error_types


# --- what every call sends, and what it makes of a 2xx ------------------------------------------------


@by_name
async def test_posts_to_the_operation_path_with_its_idempotency_key_and_body(call: Call):
    provider = answering(201, call.success)
    assert await call_provider(call, provider) == call.result
    sent = provider.request
    assert (sent.method, str(sent.url)) == ("POST", call.path)
    assert sent.headers["Idempotency-Key"] == call.key
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.content) == call.body


# --- definitive answers: non-retryable --------------------------------------------------------------


async def test_a_declined_authorization_is_a_non_retryable_benign_payment_declined():
    error = await failure_of(AUTHORIZE, answering(402, error_body("card_declined")))
    assert isinstance(error, ApplicationError)
    assert (error.type, error.non_retryable) == (ERR_PAYMENT_DECLINED, True)
    assert error.category == ApplicationErrorCategory.BENIGN  # a business answer, kept out of error logs
    assert error.details == ({"status": 402, "code": "card_declined"},)
    assert "402 card_declined" in error.message
    assert not retried_under(policies.AUTHORIZE, error)


@by_name
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_any_other_4xx_is_a_non_retryable_provider_rejection(call: Call, status: int):
    error = await failure_of(call, answering(status, error_body("invalid_request")))
    assert isinstance(error, ApplicationError)
    assert (error.type, error.non_retryable) == (ERR_PROVIDER_REJECTED, True)
    assert error.category == ApplicationErrorCategory.UNSPECIFIED  # unlike a decline, worth an alert
    assert error.details == ({"status": status, "code": "invalid_request"},)
    assert not retried_under(call.policy, error)


@pytest.mark.parametrize("call", CALLS[1:], ids=[call.name for call in CALLS[1:]])
async def test_only_the_authorization_knows_a_402_as_a_decline(call: Call):
    error = await failure_of(call, answering(402, error_body("payment_required")))
    assert isinstance(error, ApplicationError) and error.type == ERR_PROVIDER_REJECTED


@pytest.mark.parametrize("body", [b"<html>Bad Request</html>", b"", {"message": "no error object"}])
async def test_a_rejection_without_the_error_shape_still_maps_with_an_unknown_code(body):
    error = await failure_of(AUTHORIZE, answering(400, body))
    assert isinstance(error, ApplicationError) and error.type == ERR_PROVIDER_REJECTED and error.non_retryable
    assert error.details == ({"status": 400, "code": "unknown"},)


@pytest.mark.parametrize("body", [{"error": "card_declined"}, ["card_declined"], "card_declined"])
async def test_a_decline_with_an_unexpected_json_error_body_is_still_a_decline(body):
    error = await failure_of(AUTHORIZE, answering(402, body))
    assert isinstance(error, ApplicationError), repr(error)
    assert (error.type, error.non_retryable) == (ERR_PAYMENT_DECLINED, True)


# --- transient answers and transport failures: retried ----------------------------------------------


@by_name
@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
async def test_5xx_and_transient_4xx_are_retried(call: Call, status: int):
    provider = answering(status, error_body("temporarily_unavailable"))
    error = await failure_of(call, provider)
    assert not isinstance(error, ApplicationError)  # a plain exception: Temporal's retry policy applies
    assert f"provider answered {status}" in str(error)
    assert retried_under(call.policy, error)
    assert len(provider.requests) == 1  # the activity never retries by hand; Temporal does


@by_name
@pytest.mark.parametrize("status", [429, 503])
async def test_a_transient_answer_with_retry_after_is_retried_no_sooner(call: Call, status: int):
    provider = answering(status, error_body("temporarily_unavailable"), headers={"Retry-After": "3"})
    error = await failure_of(call, provider)
    assert isinstance(error, ApplicationError) and not error.non_retryable
    assert error.next_retry_delay == timedelta(seconds=3)
    assert retried_under(call.policy, error)
    assert len(provider.requests) == 1


@pytest.mark.parametrize(("header", "expected"), [("86400", timedelta(seconds=60)), ("soon", None), ("", None)])
async def test_retry_after_is_capped_and_an_unreadable_one_falls_back_to_the_policy(header, expected):
    error = await failure_of(AUTHORIZE, answering(503, error_body("busy"), headers={"Retry-After": header}))
    if expected is None:
        assert not isinstance(error, ApplicationError)
    else:
        assert isinstance(error, ApplicationError) and error.next_retry_delay == expected


async def test_the_providers_request_in_progress_409_is_transient():
    """The providers' idempotency layer answers 409 while the same key is still running."""
    error = await failure_of(AUTHORIZE, answering(409, error_body("idempotency_key_in_use")))
    assert retried_under(policies.AUTHORIZE, error)


@by_name
@pytest.mark.parametrize(
    "transport_error", [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.RemoteProtocolError]
)
async def test_timeouts_and_connection_errors_are_retried(call: Call, transport_error: type[httpx.TransportError]):
    error = await failure_of(call, failing(transport_error))
    assert isinstance(error, transport_error)
    assert retried_under(call.policy, error)


async def test_retry_after_sets_the_next_retry_delay():
    error = await failure_of(AUTHORIZE, answering(429, error_body("rate_limited"), headers={"Retry-After": "7"}))
    assert isinstance(error, ApplicationError) and not error.non_retryable
    assert error.next_retry_delay == timedelta(seconds=7)


# --- the client ---------------------------------------------------------------------------------------


async def test_the_provider_client_bounds_every_phase_of_a_request():
    settings = Settings(environment="test", provider_connect_timeout_s=1.5, provider_read_timeout_s=3.5)
    async with provider_client(settings) as client:
        timeout = client.timeout
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (1.5, 3.5, 3.5, 1.5)
