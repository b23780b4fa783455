"""Remote codec endpoint for the Temporal Web UI and CLI: ``POST /codec/decode`` and ``/codec/encode``.

Temporal's remote codec protocol: the body is ``{"payloads": [{"metadata": {...}, "data": "..."}]}``
(protobuf JSON, bytes in base64) and the answer has the same shape. The UI calls it from the
operator's browser, so the UI's origin gets CORS headers (``ORDERS_CODEC_CORS_ORIGINS``).

Operators only: a bearer token with the operator role. In production the UI sends the operator's
token when configured with ``codec.passAccessToken: true`` (OIDC login, tokens our gateway trusts).
The dev server's UI (`temporal server start-dev --ui-codec-endpoint`) has no login and sends no
token, so outside production anonymous calls from loopback addresses are accepted
(``ORDERS_CODEC_ALLOW_LOCAL_ANONYMOUS``, default true; never in production).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from cryptography.exceptions import InvalidTag
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payloads

from api.deps import get_caller
from api.errors import ApiProblem
from api.openapi import PROBLEM_BASE, problems
from core.codec import CodecKeyError, EncryptionCodec
from core.config import Settings
from core.temporal import payload_codec

router = APIRouter(prefix="/codec", tags=["codec"])

_ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"

_NOT_A_CODEC_BODY = 'expected {"payloads": [...]} as in Temporal\'s remote codec protocol'
_UNDECRYPTABLE = "a payload could not be decrypted with the configured keys"
# The protocol's body, documented by hand: the routes parse it with protobuf's JSON mapping (which
# omits an empty list, and takes standard or URL-safe base64, padded or not).
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")
_BYTES = {"type": "string", "format": "byte", "pattern": _BASE64.pattern, "description": "base64"}
_PAYLOADS = {
    "type": "object",
    "properties": {
        "payloads": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "metadata": {"type": "object", "additionalProperties": _BYTES},
                    "data": _BYTES,
                },
            },
        }
    },
}
_PLAIN = {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "eyJvcmRlcl9pZCI6ICIxIn0="}]}
_SEALED = {
    "payloads": [
        {
            "metadata": {"encoding": "YmluYXJ5L2VuY3J5cHRlZA==", "encryption-key-id": "ZGV2LTIwMjY="},
            "data": "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=",
        }
    ]
}


def _documented(request_example: dict) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _PAYLOADS, "example": request_example}},
        },
        "security": [{"HTTPBearer": []}],
    }


def _answers(answer_example: dict, *more: int, **descriptions: str) -> dict:
    """200 with the transformed payloads, and every problem the codec routes answer with."""
    return {
        200: {
            "description": "The payloads, each transformed",
            "content": {"application/json": {"schema": _PAYLOADS, "example": answer_example}},
        },
        **problems(
            400,
            401,
            403,
            413,
            *more,
            503,
            _400='Not a codec body: expected {"payloads": [...]}',
            _401="No or an invalid operator token (anonymous calls only from loopback, never in production)",
            _403="The token is not an operator's",
            _503="Overloaded, timed out, or the identity provider is unavailable; retry after Retry-After",
            examples={
                400: {
                    "type": PROBLEM_BASE + "bad-request",
                    "title": "Bad request",
                    "detail": _NOT_A_CODEC_BODY,
                    "instance": "/codec/decode",
                },
                403: {"detail": "the codec endpoint is for operators", "instance": "/codec/decode"},
                422: {
                    "type": PROBLEM_BASE + "codec-undecryptable",
                    "title": "Undecryptable payload",
                    "detail": _UNDECRYPTABLE,
                    "instance": "/codec/decode",
                    "errors": None,
                },
            },
            **descriptions,
        ),
    }


def _cors_headers(request: Request) -> dict[str, str]:
    origin = request.headers.get("origin")
    settings: Settings = request.app.state.settings
    if not origin or origin not in settings.codec_cors_origins:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": _ALLOWED_HEADERS,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _authorize(request: Request) -> None:
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization")
    cors = _cors_headers(request)
    if not header:
        if settings.environment != "production" and settings.codec_allow_local_anonymous and _is_loopback(request):
            return
        raise ApiProblem(
            401,
            "Unauthorized",
            "an operator's bearer token is required",
            slug="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="orders"', **cors},
        )
    scheme, _, token = header.partition(" ")
    try:
        caller = await get_caller(request, HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip()))
    except ApiProblem as problem:
        problem.headers = {**problem.headers, **cors}
        raise
    if caller.role != "operator":
        raise ApiProblem(403, "Forbidden", "the codec endpoint is for operators", slug="forbidden", headers=cors)


def _is_codec_body(body: Any) -> bool:
    """The documented shape. Checked before protobuf's JSON parser, which takes any iterable (a
    list, a string) for an empty message, nulls for defaults and lenient base64."""
    payloads = body.get("payloads", []) if isinstance(body, dict) else None
    return isinstance(payloads, list) and all(_is_payload(payload) for payload in payloads)


def _is_payload(payload: Any) -> bool:
    if not isinstance(payload, dict):
        return False
    metadata, data = payload.get("metadata", {}), payload.get("data", "")
    return (
        isinstance(metadata, dict)
        and _is_base64(data)
        and all(isinstance(key, str) and _is_base64(value) for key, value in metadata.items())
    )


def _is_base64(value: Any) -> bool:
    return isinstance(value, str) and _BASE64.match(value) is not None


async def _payloads(request: Request) -> Payloads:
    try:
        body: Any = await request.json()
        if not _is_codec_body(body):
            raise ValueError("not a codec body")
        return json_format.ParseDict(body, Payloads(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError, TypeError):
        raise ApiProblem(
            400,
            "Bad request",
            _NOT_A_CODEC_BODY,
            slug="bad-request",
            headers=_cors_headers(request),
        ) from None


def _codec(request: Request) -> EncryptionCodec:
    codec = getattr(request.app.state, "payload_codec", None)
    if codec is None:
        codec = request.app.state.payload_codec = payload_codec(request.app.state.settings)
    return codec


def _answer(request: Request, payloads: list) -> JSONResponse:
    body = json_format.MessageToDict(Payloads(payloads=payloads))
    return JSONResponse({"payloads": body.get("payloads", [])}, headers=_cors_headers(request))


@router.options("/{operation}", include_in_schema=False)
async def preflight(operation: str, request: Request) -> Response:
    return Response(status_code=204, headers=_cors_headers(request))


@router.post(
    "/encode",
    summary="Encrypt payloads (Temporal remote codec protocol; operators)",
    responses=_answers(_SEALED),
    openapi_extra=_documented(_PLAIN),
)
async def encode(request: Request) -> JSONResponse:
    await _authorize(request)
    payloads = await _payloads(request)
    return _answer(request, await _codec(request).encode(payloads.payloads))


@router.post(
    "/decode",
    summary="Decrypt payloads (Temporal remote codec protocol; operators)",
    responses=_answers(_PLAIN, 422, _422="A payload sealed with an unknown key, or one that does not decrypt"),
    openapi_extra=_documented(_SEALED),
)
async def decode(request: Request) -> JSONResponse:
    await _authorize(request)
    payloads = await _payloads(request)
    try:
        decoded = await _codec(request).decode(payloads.payloads)
    except CodecKeyError as error:
        raise ApiProblem(
            422, "Unknown key", str(error), slug="codec-unknown-key", headers=_cors_headers(request)
        ) from None
    # Tampered, truncated or not sealed by us (a short nonce or a key id that is not UTF-8 is a
    # ValueError): never echo internals.
    except (InvalidTag, DecodeError, ValueError):
        raise ApiProblem(
            422,
            "Undecryptable payload",
            _UNDECRYPTABLE,
            slug="codec-undecryptable",
            headers=_cors_headers(request),
        ) from None
    return _answer(request, decoded)
