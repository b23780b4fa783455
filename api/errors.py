"""RFC 9457 problem+json for every error; no stack trace or internal message ever reaches a caller."""

from __future__ import annotations

from http import HTTPStatus

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.db.read_model import InvalidCursor
from core.domain import (
    DependencyUnavailable,
    IdempotencyKeyReused,
    InvalidAmend,
    InvalidCancel,
    InvalidOrderState,
    MixedCurrencies,
    OrderNotFound,
    TooManyWaiters,
    UnknownSkus,
    UnstorableValue,
)

log = structlog.get_logger(__name__)

PROBLEM_BASE = "https://orders.example/problems/"
PROBLEM_JSON = "application/problem+json"
_HTTP_SLUGS = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}


class ApiProblem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        slug: str | None = None,
        headers: dict | None = None,
        errors: list | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.errors = errors


def problem_response(
    request: Request,
    status: int,
    title: str,
    detail: str | None = None,
    *,
    slug: str | None = None,
    headers: dict | None = None,
    errors: list | None = None,
) -> JSONResponse:
    body = {
        "type": PROBLEM_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_errors(error: RequestValidationError) -> list[dict]:
    out = []
    for item in error.errors():
        out.append(
            {
                "loc": [str(part) for part in item.get("loc", ())],
                "msg": item.get("msg", ""),
                "type": item.get("type", ""),
            }
        )
    return out


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers for this path (asked of the router itself, so routes of
    included routers count too)."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, error: ApiProblem):
        return problem_response(
            request,
            error.status,
            error.title,
            error.detail,
            slug=error.slug,
            headers=error.headers,
            errors=error.errors,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError):
        return problem_response(
            request,
            422,
            "Invalid request",
            "the request did not validate; see errors",
            slug="validation",
            errors=_validation_errors(error),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        if error.status_code == 400 and isinstance(error.__cause__, UnicodeDecodeError):
            # FastAPI's 400 for a JSON body that is not UTF-8: as malformed as broken JSON, so the
            # same documented 422 rather than a status of its own.
            return problem_response(
                request,
                422,
                "Invalid request",
                "the request did not validate; see errors",
                slug="validation",
                errors=[{"loc": ["body"], "msg": "the body is not UTF-8 encoded JSON", "type": "json_invalid"}],
            )
        slug = _HTTP_SLUGS.get(error.status_code)
        headers = dict(getattr(error, "headers", None) or {})
        if error.status_code == 405:
            # Starlette names only the first route matching the path; list every method it has.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem_response(
            request,
            error.status_code,
            HTTPStatus(error.status_code).phrase,
            str(error.detail),
            slug=slug,
            headers=headers,
        )

    @app.exception_handler(OrderNotFound)
    async def _not_found(request: Request, error: OrderNotFound):
        return problem_response(request, 404, "Not found", str(error), slug="not-found")

    @app.exception_handler(InvalidOrderState)
    async def _conflict(request: Request, error: InvalidOrderState):
        return problem_response(request, 409, "Order state conflict", str(error), slug="invalid-order-state")

    @app.exception_handler(InvalidAmend)
    async def _invalid_amend(request: Request, error: InvalidAmend):
        # The order's own refusal (it knows what was reserved): the message names the line at fault.
        return problem_response(request, 422, "Invalid amend", str(error), slug="invalid-amend")

    @app.exception_handler(InvalidCancel)
    async def _invalid_cancel(request: Request, error: InvalidCancel):
        return problem_response(request, 422, "Invalid cancel", str(error), slug="invalid-cancel")

    @app.exception_handler(UnknownSkus)
    async def _unknown_sku(request: Request, error: UnknownSkus):
        errors = [
            {"loc": ["body", "items", "sku"], "msg": f"unknown SKU {sku}", "type": "unknown_sku", "sku": sku}
            for sku in error.skus
        ]
        return problem_response(request, 422, "Unknown SKU", str(error), slug="unknown-sku", errors=errors)

    @app.exception_handler(MixedCurrencies)
    async def _currencies(request: Request, error: MixedCurrencies):
        return problem_response(request, 422, "Mixed currencies", str(error), slug="mixed-currencies")

    @app.exception_handler(IdempotencyKeyReused)
    async def _key_reused(request: Request, error: IdempotencyKeyReused):
        return problem_response(request, 422, "Idempotency-Key reused", str(error), slug="idempotency-key-reused")

    @app.exception_handler(InvalidCursor)
    async def _cursor(request: Request, error: InvalidCursor):
        return problem_response(request, 422, "Invalid cursor", str(error), slug="invalid-cursor")

    @app.exception_handler(UnstorableValue)
    async def _unstorable(request: Request, error: UnstorableValue):
        # Input validation let through a value the database refuses: a gap worth a warning.
        log.warning("database refused a value of the request", cause=repr(error.__cause__))
        return problem_response(request, 422, "Invalid request", str(error), slug="unstorable-value")

    @app.exception_handler(DependencyUnavailable)
    async def _unavailable(request: Request, error: DependencyUnavailable):
        log.warning("dependency unavailable", dependency=error.dependency, cause=repr(error.__cause__))
        return problem_response(
            request,
            503,
            "Service unavailable",
            str(error),
            slug="unavailable",
            headers={"Retry-After": str(error.retry_after_s)},
        )

    @app.exception_handler(TooManyWaiters)
    async def _too_many_waiters(request: Request, error: TooManyWaiters):
        return problem_response(
            request,
            503,
            "Too many waiting requests",
            str(error),
            slug="too-many-waiters",
            headers={"Retry-After": str(error.retry_after_s)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        log.exception("unexpected error", path=request.url.path)
        return problem_response(
            request,
            500,
            "Internal error",
            "an unexpected error occurred; quote the request id when reporting it",
            slug="internal",
        )
