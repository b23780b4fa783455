"""Idempotency-Key records of the gateway: claimed atomically, scoped to (caller, route, key)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db.tables import idempotency_keys


@dataclass(frozen=True)
class IdempotencyRecord:
    request_hash: str
    order_id: uuid.UUID
    response_status: int | None
    response_body: dict | None


class IdempotencyStore:
    """Works inside a caller's transaction so the claim commits together with what it guards."""

    def __init__(self, conn: AsyncConnection, customer_id: str, route: str) -> None:
        self._conn = conn
        self._customer_id = customer_id
        self._route = route

    def _key(self, key: str):
        c = idempotency_keys.c
        return and_(c.customer_id == self._customer_id, c.route == self._route, c.key == key)

    async def claim(
        self, key: str, request_hash: str, order_id: uuid.UUID, now: datetime, retention: timedelta
    ) -> tuple[bool, uuid.UUID]:
        """Claim ``key`` for a new order. Returns (claimed, order id of the key's record).

        A concurrent claim of the same key waits for this transaction and then sees the record.
        An expired record is replaced: after the retention period the key is new again, and since
        ``order_id`` was derived from the key, the new order gets an id derived from the key and time.
        """
        expired = await self._conn.execute(
            delete(idempotency_keys).where(and_(self._key(key), idempotency_keys.c.expires_at <= now))
        )
        if expired.rowcount:
            order_id = uuid.uuid5(order_id, now.isoformat())
        result = await self._conn.execute(
            insert(idempotency_keys)
            .values(
                customer_id=self._customer_id,
                route=self._route,
                key=key,
                request_hash=request_hash,
                order_id=order_id,
                created_at=now,
                expires_at=now + retention,
            )
            .on_conflict_do_nothing()
            .returning(idempotency_keys.c.order_id)
        )
        row = result.first()
        if row is not None:
            return True, row.order_id
        record = await self.load(key)
        assert record is not None
        return False, record.order_id

    async def load(self, key: str) -> IdempotencyRecord | None:
        c = idempotency_keys.c
        row = (
            await self._conn.execute(
                select(c.request_hash, c.order_id, c.response_status, c.response_body).where(self._key(key))
            )
        ).first()
        return IdempotencyRecord(*row) if row else None

    async def save_response(self, key: str, status: int, body: dict) -> None:
        await self._conn.execute(
            update(idempotency_keys).where(self._key(key)).values(response_status=status, response_body=body)
        )

    async def forget(self, key: str) -> None:
        await self._conn.execute(delete(idempotency_keys).where(self._key(key)))
