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
from core.codec import CodecKeyError, EncryptionCodec
from core.config import Settings
from core.temporal import payload_codec

router = APIRouter(prefix="/codec", tags=["codec"])

_ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"


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


async def _payloads(request: Request) -> Payloads:
    try:
        body: Any = await request.json()
        return json_format.ParseDict(body, Payloads(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError, TypeError):
        raise ApiProblem(
            400,
            "Bad request",
            'expected {"payloads": [...]} as in Temporal\'s remote codec protocol',
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


@router.post("/encode", summary="Encrypt payloads (Temporal remote codec protocol; operators)")
async def encode(request: Request) -> JSONResponse:
    await _authorize(request)
    payloads = await _payloads(request)
    return _answer(request, await _codec(request).encode(payloads.payloads))


@router.post("/decode", summary="Decrypt payloads (Temporal remote codec protocol; operators)")
async def decode(request: Request) -> JSONResponse:
    await _authorize(request)
    payloads = await _payloads(request)
    try:
        decoded = await _codec(request).decode(payloads.payloads)
    except CodecKeyError as error:
        raise ApiProblem(
            422, "Unknown key", str(error), slug="codec-unknown-key", headers=_cors_headers(request)
        ) from None
    except (InvalidTag, DecodeError):  # tampered, or not sealed by us: never echo internals
        raise ApiProblem(
            422,
            "Undecryptable payload",
            "a payload could not be decrypted with the configured keys",
            slug="codec-undecryptable",
            headers=_cors_headers(request),
        ) from None
    return _answer(request, decoded)
