"""Request id, body size and content-type guards, as plain ASGI middleware (no body buffering)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence

import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_METHODS_WITH_BODY = {b"POST", b"PUT", b"PATCH"}


async def send_problem(
    send,
    status: int,
    title: str,
    detail: str,
    request_id: str,
    path: str,
    slug: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    id_header: bool = True,
) -> None:
    """Answer with problem+json straight from ASGI middleware (before or instead of any route).

    ``id_header=False`` when ``send`` is already RequestGuards' own (which adds X-Request-ID)."""
    body = json.dumps(
        {
            "type": f"https://orders.example/problems/{slug}",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": path,
            "request_id": request_id,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                *([(b"x-request-id", request_id.encode())] if id_header else []),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuards:
    """Assigns X-Request-ID (accepting a well-formed one from the caller), rejects bodies over
    ``max_body_bytes`` with 413 and non-JSON bodies with 415, before any route runs."""

    def __init__(self, app, *, max_body_bytes: int, json_paths_prefix: str = "/v1/") -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.json_paths_prefix = json_paths_prefix

    async def _body_too_large(self, send, request_id: str, path: str) -> None:
        """The one 413 answer, whether the declared length or the bytes read are over the limit."""
        await send_problem(
            send,
            413,
            "Body too large",
            f"the body may be at most {self.max_body_bytes} bytes",
            request_id,
            path,
            "body-too-large",
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        offered = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _REQUEST_ID.match(offered) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        path = scope["path"]

        # Only requests that carry a body: an empty PUT to a GET-only path must still get its 405.
        has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
        if scope["method"].encode() in _METHODS_WITH_BODY and path.startswith(self.json_paths_prefix) and has_body:
            content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if content_type != b"application/json":
                return await send_problem(
                    send,
                    415,
                    "Unsupported media type",
                    "send the body as application/json",
                    request_id,
                    path,
                    "unsupported-media-type",
                )
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                return await self._body_too_large(send, request_id, path)

        received = 0
        too_large = False

        async def limited_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            await self._body_too_large(send, request_id, path)
        except Exception:
            # Answered here rather than by Starlette's outermost handler so the 500 carries
            # X-Request-ID too; the log line has the stack trace, the caller only the id.
            log.exception("unexpected error", path=path)
            if started:
                raise
            await send_problem(
                send,
                500,
                "Internal error",
                "an unexpected error occurred; quote the request id when reporting it",
                request_id,
                path,
                "internal",
            )
        finally:
            structlog.contextvars.unbind_contextvars("request_id")


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive``: an HTTPException so FastAPI's body parsing re-raises it as is
    (any other error there becomes a 400) and the problem handler answers 413."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413, f"the body may be at most {max_body_bytes} bytes")
