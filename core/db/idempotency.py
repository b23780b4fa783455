"""Idempotency-Key records of the gateway: claimed atomically, scoped to (caller, route, key), and
swept in bounded batches once expired (:func:`sweep_expired_keys`).

When a record may be deleted (the rule the sweeper and the claim share):

* A record is claimed, filled with its response and committed in one transaction
  (``OrderService.submit``): an uncommitted claim is invisible to every other transaction, so no
  sweep can see, let alone delete, a key that is still being claimed.
* After the commit the submission may still be running (it starts the workflow, and forgets the
  claim if that start fails). That lasts seconds (the Temporal RPC timeout); the record's
  ``expires_at`` lies the whole retention period (24 h) after the claim, and the sweeper deletes
  only records whose ``expires_at`` is older than ``now() - grace`` on the database's clock. The
  grace (``ORDERS_IDEMPOTENCY_SWEEP_GRACE_S``) also absorbs skew between the gateways' clocks,
  which write ``expires_at``, and the database's, which the sweep compares with.
* A record another transaction holds locked (a claim replacing the expired record of a reused
  key, a ``forget``) is skipped, never waited for: the sweep takes its batch with
  ``FOR UPDATE SKIP LOCKED``, so it never blocks a submission and never deletes under one. A
  claim that touches a record the sweep has locked waits for that one batch (milliseconds).
* A swept key is new again, exactly as an expired one is: :meth:`IdempotencyStore.claim` gives
  the new order an id of its own even when the old record is gone (see there).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, Interval, and_, bindparam, delete, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.db.tables import idempotency_keys, orders

#: Key of the session-level advisory lock a sweep holds while it runs, so that of N processes that
#: sweep on a timer only one works at a time (the others skip their turn). Any 64-bit number no
#: other code of this database locks; this one is the first 8 bytes of
#: sha256("orders.idempotency_keys.sweep"), read as a signed big-endian integer.
SWEEP_LOCK_KEY = 1714871730272613315


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
        The same holds when the sweeper has already deleted the expired record: an order that
        already has the key's id means the key was used before, so the new order must not take it
        (it would attach to the old order's workflow and never run).
        """
        expired = await self._conn.execute(
            delete(idempotency_keys).where(and_(self._key(key), idempotency_keys.c.expires_at <= now))
        )
        if expired.rowcount or await self._order_exists(order_id):
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

    async def _order_exists(self, order_id: uuid.UUID) -> bool:
        return bool(await self._conn.scalar(select(exists().where(orders.c.id == order_id))))

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


# --- the sweeper ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did. ``ran`` is False when another sweep held the lock: nothing was deleted."""

    ran: bool
    deleted: int = 0
    batches: int = 0
    #: True when the sweep stopped at ``max_batches`` (or was asked to stop) with a full last batch:
    #: expired records may remain for the next sweep.
    more: bool = False


def _expired(grace: timedelta):
    # The database's clock, not this process's: every sweeper compares against the same time.
    return idempotency_keys.c.expires_at < func.now() - grace


# One batch: lock up to :batch_size of the oldest expired records that nobody else holds (found by
# the expires_at index), and delete exactly those. By ctid: `ctid = ANY(ARRAY(...))` is always a
# TID scan, whereas a join back on the primary key lets the planner pick a hash join over the whole
# table for large batches (measured: a sequential scan of 400,000 rows for a batch of 5,000,
# docs/notes/keysweep.md). The rows are locked by the same statement, so nobody can update or
# delete them (or move their ctids) before the delete. No second expiry condition on the outer
# DELETE: the planner would then look the rows up by the expires_at index and filter on ctid,
# visiting every expired row per batch.
_DELETE_BATCH = text(
    """
    DELETE FROM idempotency_keys
    WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM idempotency_keys
            WHERE expires_at < now() - :grace
            ORDER BY expires_at
            LIMIT :batch_size
            FOR UPDATE SKIP LOCKED))
    """
).bindparams(bindparam("grace", type_=Interval()), bindparam("batch_size", type_=Integer()))


async def count_expired_keys(engine: AsyncEngine, *, grace: timedelta) -> int:
    """How many records a sweep would delete now (a dry run; takes no lock)."""
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(idempotency_keys).where(_expired(grace))) or 0)


async def sweep_expired_keys(
    engine: AsyncEngine,
    *,
    grace: timedelta,
    batch_size: int,
    max_batches: int | None = None,
    stop: asyncio.Event | None = None,
    on_batch: Callable[[int, SweepResult], Awaitable[None]] | None = None,
) -> SweepResult:
    """Delete Idempotency-Key records that expired more than ``grace`` ago (see the module's rule).

    Runs only if it gets the advisory lock :data:`SWEEP_LOCK_KEY` (without waiting for it);
    otherwise returns ``SweepResult(ran=False)`` at once. Each batch of at most ``batch_size``
    records is its own short transaction; the sweep goes on until a batch comes back short, until
    ``max_batches`` batches, or until ``stop`` is set (checked between batches). ``on_batch``
    is awaited after each batch with that batch's count and the totals so far (the lock is held:
    another sweep started meanwhile skips).

    The lock is a session lock on one connection held for the whole sweep, so behind a
    transaction-pooling PgBouncer the engine must connect directly (docs/operations.md).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    params = {"grace": grace, "batch_size": batch_size}
    async with engine.connect() as conn:
        locked = await conn.scalar(select(func.pg_try_advisory_lock(SWEEP_LOCK_KEY)))
        await conn.commit()
        if not locked:
            return SweepResult(ran=False)
        deleted = batches = 0
        full = True
        try:
            while full and (max_batches is None or batches < max_batches) and not (stop and stop.is_set()):
                async with conn.begin():
                    count = (await conn.execute(_DELETE_BATCH, params)).rowcount
                deleted += count
                batches += 1
                full = count >= batch_size
                if on_batch is not None:
                    await on_batch(count, SweepResult(ran=True, deleted=deleted, batches=batches, more=full))
        finally:
            await _unlock(conn)
        return SweepResult(ran=True, deleted=deleted, batches=batches, more=full)


async def _unlock(conn: AsyncConnection) -> None:
    """Release the sweep lock. A session that cannot say unlock (broken, or cancelled mid-way) must
    not go back to the pool still holding the lock: it is closed for good, which releases every
    lock it holds; the error that stopped the sweep, if any, is the one that propagates."""
    try:
        await conn.scalar(select(func.pg_advisory_unlock(SWEEP_LOCK_KEY)))
        await conn.commit()
    except Exception:
        await conn.invalidate()
    except BaseException:
        await conn.invalidate()
        raise
