"""Idempotency-Key handling shared by the sandbox payment gateway and carrier (Stripe's practice).

Callers may rely on:

- Scope is ``(scope, key)``; ``scope`` names the endpoint, and path parameters belong in the
  fingerprinted request, so reusing a key for another resource is a mismatch (422).
- The key row is claimed atomically (``INSERT ... ON CONFLICT DO NOTHING``). A request finding the
  key claimed and unfinished gets 409 with ``Retry-After: 1``; it never runs the operation.
- The operation's writes and the stored answer commit in ONE transaction, so an answer is stored
  if and only if its effects are. A replay returns the stored status and body with
  ``Idempotent-Replayed: true``.
- Transient failures (:class:`~sandbox.errors.TransientError`, or any unexpected exception) roll the
  operation back and release the key, so the retry runs it again; ``attempt`` counts those runs.
- A claim whose holder died is taken over once its lease expires; the late holder can no longer
  commit (its final update is fenced on the attempt number).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import and_, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import Interval

from sandbox.errors import SandboxError, TransientError
from sandbox.tables import idempotency_keys as keys

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Outcome:
    """A definitive answer. ``delay_s`` is slept after it is durable and before it is sent."""

    status_code: int
    body: dict[str, Any]
    delay_s: float = 0.0


@dataclass(frozen=True)
class Attempt:
    """Which run of a keyed request this is: ``number`` starts at 1 and counts transient failures."""

    key: str
    number: int


# handler(conn, attempt): runs inside the transaction that also stores its answer.
Handler = Callable[[AsyncConnection, Attempt], Awaitable[Outcome]]


@dataclass(frozen=True)
class _Replay:
    status_code: int
    body: dict[str, Any]


def parse_key(raw: str | None) -> str:
    """The key from the header: a bare token or the IETF draft's quoted form; 400 if unusable."""
    if raw is None or not raw.strip():
        raise SandboxError(400, "missing_idempotency_key", "The Idempotency-Key header is required.")
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_KEY_LENGTH:
        raise SandboxError(400, "invalid_idempotency_key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")
    return key


def fingerprint(request: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the request (sorted keys, no whitespace)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyStore:
    """Runs operations at most once per key and replays their stored answers."""

    def __init__(self, engine: AsyncEngine, *, lease_s: float = 120.0):
        # The lease must outlast the slowest operation; it only matters when a process died.
        self._engine = engine
        self._lease = literal(timedelta(seconds=lease_s), Interval)

    async def execute(
        self, *, scope: str, key: str | None, request: Mapping[str, Any], handler: Handler
    ) -> JSONResponse:
        parsed_key = parse_key(key)
        claim = await self._claim(scope, parsed_key, fingerprint(request))
        if isinstance(claim, _Replay):
            return JSONResponse(claim.body, status_code=claim.status_code, headers={"Idempotent-Replayed": "true"})
        try:
            outcome = await self._run(scope, parsed_key, claim, handler)
        except BaseException:
            await self._release(scope, parsed_key, claim)
            raise
        if outcome.delay_s:
            await asyncio.sleep(outcome.delay_s)
        return JSONResponse(outcome.body, status_code=outcome.status_code)

    async def _claim(self, scope: str, key: str, request_hash: str) -> int | _Replay:
        """The attempt number this request now owns, or the stored answer to replay."""
        async with self._engine.begin() as conn:
            inserted = await conn.scalar(
                insert(keys)
                .values(
                    scope=scope,
                    key=key,
                    request_hash=request_hash,
                    state="running",
                    attempts=1,
                    locked_until=func.now() + self._lease,
                )
                .on_conflict_do_nothing(index_elements=[keys.c.scope, keys.c.key])
                .returning(keys.c.attempts)
            )
            if inserted is not None:
                return inserted
            row = (await conn.execute(select(keys).where(keys.c.scope == scope, keys.c.key == key))).one()
            if row.request_hash != request_hash:
                raise SandboxError(
                    422,
                    "idempotency_key_reused",
                    "This Idempotency-Key was already used with a different request.",
                )
            if row.state == "done":
                return _Replay(row.status_code, row.response_body)
            taken = await conn.scalar(
                update(keys)
                .where(
                    keys.c.scope == scope,
                    keys.c.key == key,
                    or_(
                        keys.c.state == "released",
                        and_(keys.c.state == "running", keys.c.locked_until < func.now()),
                    ),
                )
                .values(state="running", attempts=keys.c.attempts + 1, locked_until=func.now() + self._lease)
                .returning(keys.c.attempts)
            )
            if taken is not None:
                return taken
        raise TransientError(409, "idempotency_key_in_use", "A request with this Idempotency-Key is in progress.")

    async def _run(self, scope: str, key: str, attempt: int, handler: Handler) -> Outcome:
        async with self._engine.begin() as conn:
            try:
                async with conn.begin_nested():
                    outcome = await handler(conn, Attempt(key, attempt))
            except TransientError:
                raise
            except SandboxError as exc:
                outcome = Outcome(exc.status_code, exc.body())
            stored = await conn.execute(
                update(keys)
                .where(keys.c.scope == scope, keys.c.key == key, keys.c.state == "running", keys.c.attempts == attempt)
                .values(
                    state="done",
                    status_code=outcome.status_code,
                    response_body=outcome.body,
                    completed_at=func.now(),
                    locked_until=None,
                )
            )
            if stored.rowcount != 1:
                # Our lease expired and another attempt owns the key: our effects must not commit.
                raise TransientError(
                    409, "idempotency_key_in_use", "A request with this Idempotency-Key is in progress."
                )
        return outcome

    async def _release(self, scope: str, key: str, attempt: int) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(keys)
                    .where(
                        keys.c.scope == scope, keys.c.key == key, keys.c.state == "running", keys.c.attempts == attempt
                    )
                    .values(state="released", locked_until=None)
                )
        except Exception:
            # The lease expires on its own; the key is only blocked until then.
            log.warning("could not release idempotency key %s/%s", scope, key, exc_info=True)
