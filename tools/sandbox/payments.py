"""Sandbox payment gateway with Stripe-like semantics (``/payments/v1``). Money is integer minor units.

Test tokens for ``POST /authorizations``:

- ``tok_ok``: approved.
- ``tok_decline``: 402 ``card_declined``; definitive, so stored and replayed for the key.
- ``tok_flaky``: 503 for the first 2 attempts with an Idempotency-Key, then approved.
- ``tok_slow``: the first attempt for a key records the authorization, then sleeps
  ``sandbox_slow_delay_s`` before answering; a retry meanwhile is answered from the record.
- anything else: 400 ``invalid_token``.

Lifecycle: ``authorized`` -> ``captured`` -> ``refunded`` (partial refunds add up), or
``authorized`` -> ``voided``. Every capture and refund is one row of ``money_movements``.

Several partial captures of one authorization (Stripe's multicapture, for orders shipped in parts):
a capture with ``"final_capture": false`` adds to ``captured_amount`` and leaves the authorization
``partly_captured``, open for more captures up to the authorized amount. A final capture (the
default, as in Stripe) or reaching the whole amount closes it as ``captured``, and so does a void
after partial captures: the uncaptured rest is released, what was captured stays. Refunds go up to
the captured amount, also while more captures may follow.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy import RowMapping, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sandbox.deps import EngineDep, IdempotencyKey, SettingsDep, StoreDep
from sandbox.errors import SandboxError, TransientError
from sandbox.faults import inject_faults
from sandbox.idempotency import Attempt, Outcome
from sandbox.tables import authorizations as auths
from sandbox.tables import idempotency_keys, money_movements

AUTHORIZE_SCOPE = "payments.authorize"
APPROVING_TOKENS = {"tok_ok", "tok_flaky", "tok_slow"}
FLAKY_FAILURES = 2


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthorizeRequest(_Body):
    order_id: str = Field(min_length=1, max_length=200)
    amount: StrictInt = Field(gt=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    payment_token: str = Field(min_length=1, max_length=200)


class AmountRequest(_Body):
    amount: StrictInt = Field(gt=0)


class CaptureRequest(AmountRequest):
    # False keeps the authorization open for further partial captures (Stripe's final_capture).
    final_capture: bool = True


class EmptyRequest(_Body):
    pass


class VoidByKeyRequest(_Body):
    authorization_key: str = Field(min_length=1, max_length=255)


router = APIRouter(prefix="/payments/v1", tags=["sandbox payments"], dependencies=[Depends(inject_faults)])


def _authorization_view(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "amount": row["amount"],
        "currency": row["currency"],
        "order_id": row["order_id"],
        "captured_amount": row["captured_amount"],
        "refunded_amount": row["refunded_amount"],
    }


async def _locked_authorization(conn: AsyncConnection, authorization_id: str) -> RowMapping:
    row = (await conn.execute(select(auths).where(auths.c.id == authorization_id).with_for_update())).mappings().first()
    if row is None:
        raise SandboxError(404, "authorization_not_found", f"No authorization {authorization_id}.")
    return row


async def _void(conn: AsyncConnection, row: RowMapping) -> str:
    """Void an authorization locked by the caller and return its new status; voiding a voided one is
    a no-op, and voiding a partially captured one releases the uncaptured rest (it is then captured)."""
    if row["status"] in {"captured", "refunded"}:
        raise SandboxError(409, "already_captured", "A captured authorization cannot be voided; refund it.")
    status = {"authorized": "voided", "partly_captured": "captured"}.get(row["status"], row["status"])
    if status != row["status"]:
        await conn.execute(update(auths).where(auths.c.id == row["id"]).values(status=status))
    return str(status)


@router.post("/authorizations", status_code=201)
async def authorize(
    body: AuthorizeRequest, key: IdempotencyKey, store: StoreDep, settings: SettingsDep
) -> JSONResponse:
    async def handler(conn: AsyncConnection, attempt: Attempt) -> Outcome:
        token = body.payment_token
        if token == "tok_decline":
            raise SandboxError(402, "card_declined", "The card was declined.")
        if token not in APPROVING_TOKENS:
            raise SandboxError(400, "invalid_token", f"Unknown payment token {token!r}.")
        if token == "tok_flaky" and attempt.number <= FLAKY_FAILURES:
            raise TransientError(503, "processor_unavailable", "The card processor is temporarily unavailable.")
        authorization_id = f"auth_{secrets.token_hex(12)}"
        await conn.execute(
            insert(auths).values(
                id=authorization_id,
                idempotency_key=attempt.key,
                order_id=body.order_id,
                amount=body.amount,
                currency=body.currency,
                status="authorized",
            )
        )
        delay = settings.sandbox_slow_delay_s if token == "tok_slow" and attempt.number == 1 else 0.0
        view = {
            "id": authorization_id,
            "status": "authorized",
            "amount": body.amount,
            "currency": body.currency,
            "order_id": body.order_id,
        }
        return Outcome(201, view, delay_s=delay)

    return await store.execute(scope=AUTHORIZE_SCOPE, key=key, request=body.model_dump(mode="json"), handler=handler)


@router.get("/authorizations/{authorization_id}")
async def get_authorization(authorization_id: str, engine: EngineDep) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(auths).where(auths.c.id == authorization_id))).mappings().first()
    if row is None:
        raise SandboxError(404, "authorization_not_found", f"No authorization {authorization_id}.")
    return _authorization_view(row)


@router.post("/authorizations/{authorization_id}/capture")
async def capture(authorization_id: str, body: CaptureRequest, key: IdempotencyKey, store: StoreDep) -> JSONResponse:
    async def handler(conn: AsyncConnection, attempt: Attempt) -> Outcome:
        row = await _locked_authorization(conn, authorization_id)
        if row["status"] == "voided":
            raise SandboxError(409, "authorization_voided", "A voided authorization cannot be captured.")
        if row["status"] not in {"authorized", "partly_captured"}:
            raise SandboxError(409, "already_captured", "The authorization was already captured.")
        captured = row["captured_amount"] + body.amount
        if captured > row["amount"]:
            raise SandboxError(422, "amount_too_large", "The capture exceeds the authorized amount.")
        status = "captured" if body.final_capture or captured == row["amount"] else "partly_captured"
        await conn.execute(
            update(auths).where(auths.c.id == authorization_id).values(status=status, captured_amount=captured)
        )
        await _move_money(conn, authorization_id, "capture", body.amount, attempt.key)
        return Outcome(200, {"id": authorization_id, "status": status, "captured_amount": captured})

    # A final capture hashes as it did before multicapture, so keys stored then still replay.
    request = {"authorization_id": authorization_id, **body.model_dump(mode="json", exclude_defaults=True)}
    return await store.execute(scope="payments.capture", key=key, request=request, handler=handler)


@router.post("/authorizations/{authorization_id}/void")
async def void(
    authorization_id: str, key: IdempotencyKey, store: StoreDep, body: EmptyRequest | None = None
) -> JSONResponse:
    async def handler(conn: AsyncConnection, attempt: Attempt) -> Outcome:
        status = await _void(conn, await _locked_authorization(conn, authorization_id))
        return Outcome(200, {"id": authorization_id, "status": status})

    request = {"authorization_id": authorization_id}
    return await store.execute(scope="payments.void", key=key, request=request, handler=handler)


@router.post("/authorizations/{authorization_id}/refund")
async def refund(authorization_id: str, body: AmountRequest, key: IdempotencyKey, store: StoreDep) -> JSONResponse:
    async def handler(conn: AsyncConnection, attempt: Attempt) -> Outcome:
        row = await _locked_authorization(conn, authorization_id)
        if row["status"] not in {"captured", "refunded", "partly_captured"}:
            raise SandboxError(409, "not_captured", "Only a captured authorization can be refunded.")
        refunded = row["refunded_amount"] + body.amount
        if refunded > row["captured_amount"]:
            raise SandboxError(422, "amount_exceeds_captured", "The refunds would exceed the captured amount.")
        # An authorization still open for captures stays open; a closed one is now refunded.
        status = "partly_captured" if row["status"] == "partly_captured" else "refunded"
        await conn.execute(
            update(auths).where(auths.c.id == authorization_id).values(status=status, refunded_amount=refunded)
        )
        await _move_money(conn, authorization_id, "refund", body.amount, attempt.key)
        return Outcome(
            200,
            {
                "id": authorization_id,
                "status": status,
                "captured_amount": row["captured_amount"],
                "refunded_amount": refunded,
            },
        )

    request = {"authorization_id": authorization_id, **body.model_dump(mode="json")}
    return await store.execute(scope="payments.refund", key=key, request=request, handler=handler)


@router.post("/authorizations/void-by-key")
async def void_by_key(body: VoidByKeyRequest, key: IdempotencyKey, store: StoreDep) -> JSONResponse:
    """Void whatever the authorize call with ``authorization_key`` did, when its outcome is unknown."""

    async def handler(conn: AsyncConnection, attempt: Attempt) -> Outcome:
        row = (
            (
                await conn.execute(
                    select(auths).where(auths.c.idempotency_key == body.authorization_key).with_for_update()
                )
            )
            .mappings()
            .first()
        )
        if row is not None:
            return Outcome(200, {"id": row["id"], "status": await _void(conn, row)})
        await _fence_authorize_claim(conn, body.authorization_key)
        return Outcome(200, {"status": "not_found"})

    return await store.execute(
        scope="payments.void_by_key", key=key, request=body.model_dump(mode="json"), handler=handler
    )


async def _fence_authorize_claim(conn: AsyncConnection, authorization_key: str) -> None:
    """Make "not found" final: an authorize still running would otherwise commit afterwards.

    A live claim answers 409 (retry shortly); a claim whose lease expired is taken away, so its
    late holder can no longer commit.
    """
    claim = idempotency_keys.c
    in_flight = (
        await conn.execute(
            select(claim.locked_until > func.now())
            .where(claim.scope == AUTHORIZE_SCOPE, claim.key == authorization_key, claim.state == "running")
            .with_for_update()
        )
    ).scalar()
    if in_flight:
        raise TransientError(409, "authorization_in_progress", "The authorization is still being processed.")
    if in_flight is False:
        await conn.execute(
            update(idempotency_keys)
            .where(claim.scope == AUTHORIZE_SCOPE, claim.key == authorization_key, claim.state == "running")
            .values(state="released", attempts=claim.attempts + 1, locked_until=None)
        )


async def _move_money(conn: AsyncConnection, authorization_id: str, kind: str, amount: int, key: str) -> None:
    await conn.execute(
        insert(money_movements).values(authorization_id=authorization_id, kind=kind, amount=amount, idempotency_key=key)
    )


@router.get("/ledger")
async def ledger(engine: EngineDep, order_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every authorization and money movement, for the invariant checker."""
    auth_query = select(auths).order_by(auths.c.created_at, auths.c.id)
    move_query = (
        select(money_movements)
        .join(auths, auths.c.id == money_movements.c.authorization_id)
        .order_by(money_movements.c.id)
    )
    if order_id is not None:
        auth_query = auth_query.where(auths.c.order_id == order_id)
        move_query = move_query.where(auths.c.order_id == order_id)
    async with engine.connect() as conn:
        auth_rows = (await conn.execute(auth_query)).mappings().all()
        move_rows = (await conn.execute(move_query)).mappings().all()
    return {
        "authorizations": [
            {
                "id": row["id"],
                "idempotency_key": row["idempotency_key"],
                "order_id": row["order_id"],
                "amount": row["amount"],
                "currency": row["currency"],
                "status": row["status"],
                "captured_amount": row["captured_amount"],
                "refunded_amount": row["refunded_amount"],
                "created_at": row["created_at"].isoformat(),
            }
            for row in auth_rows
        ],
        "money_movements": [
            {
                "authorization_id": row["authorization_id"],
                "kind": row["kind"],
                "amount": row["amount"],
                "idempotency_key": row["idempotency_key"],
            }
            for row in move_rows
        ],
    }
