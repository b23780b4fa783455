"""The sweeper of expired Idempotency-Key records on the real PostgreSQL: what it deletes and keeps,
bounded batches, one sweeper at a time (advisory lock), the gateway's periodic sweep and its
metrics, and a key that is new again after its record was swept.

The session's database is shared: every test makes records of its own customers and asserts on
those, and on totals only as lower bounds (other tests' records may expire too)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, text

from core.db.engine import create_engine
from core.db.idempotency import _DELETE_BATCH, IdempotencyStore, sweep_expired_keys
from core.db.read_model import OrderReadModel
from core.db.tables import idempotency_keys
from core.domain import OrderLine, OrderView, order_id_for_key
from tests.harness import random_ref
from tests.support import ADDRESS

ROUTE = "POST /v1/orders"
# docs/operations.md, OrdersIdempotencyKeySweepStalled: who holds the sweep lock.
RUNBOOK_LOCK_QUERY = (
    "SELECT pid, application_name, client_addr, backend_start FROM pg_locks JOIN pg_stat_activity USING (pid) "
    "WHERE locktype = 'advisory' AND classid = 399274688 AND objid = 3192009667 AND objsubid = 1"
)
GRACE = timedelta(seconds=300)
# Hang guard only (a sweep that waited on a lock would block forever); nothing asserts on time.
HANG = 60


async def add_keys(engine, customer: str, count: int, *, expires_in: timedelta, prefix: str = "k") -> list[str]:
    now = datetime.now(UTC)
    keys = [f"{prefix}-{i}" for i in range(count)]
    async with engine.begin() as conn:
        await conn.execute(
            insert(idempotency_keys),
            [
                {
                    "customer_id": customer,
                    "route": ROUTE,
                    "key": key,
                    "request_hash": "0" * 64,
                    "order_id": uuid.uuid4(),
                    "response_status": 202,
                    "response_body": {},
                    "created_at": now + expires_in - timedelta(days=1),
                    "expires_at": now + expires_in,
                }
                for key in keys
            ],
        )
    return keys


async def keys_of(engine, customer: str) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(idempotency_keys.c.key).where(idempotency_keys.c.customer_id == customer))
        return set(rows.scalars())


async def sweep(engine, **options):
    options.setdefault("grace", GRACE)
    options.setdefault("batch_size", 1000)
    return await asyncio.wait_for(sweep_expired_keys(engine, **options), timeout=HANG)


async def test_expired_keys_go_unexpired_and_recently_expired_ones_stay(engine):
    customer = random_ref("sweep")
    expired = await add_keys(engine, customer, 3, expires_in=-timedelta(days=2), prefix="old")
    within_grace = await add_keys(engine, customer, 2, expires_in=-timedelta(seconds=10), prefix="grace")
    live = await add_keys(engine, customer, 2, expires_in=timedelta(hours=23), prefix="live")
    assert await keys_of(engine, customer) == {*expired, *within_grace, *live}

    result = await sweep(engine)

    assert result.ran and result.deleted >= len(expired) and not result.more
    assert await keys_of(engine, customer) == {*within_grace, *live}
    # Without a grace, the records that expired seconds ago go too; live ones never.
    await sweep(engine, grace=timedelta(0))
    assert await keys_of(engine, customer) == set(live)


async def test_more_records_than_one_batch_go_in_several_bounded_batches(engine):
    customer = random_ref("batches")
    await add_keys(engine, customer, 25, expires_in=-timedelta(days=1))
    sizes: list[int] = []

    async def record(count, so_far):
        sizes.append(count)

    result = await sweep(engine, batch_size=10, on_batch=record)

    assert await keys_of(engine, customer) == set()
    assert len(sizes) >= 3 and all(size <= 10 for size in sizes)
    assert sizes[-1] < 10 and all(size == 10 for size in sizes[:-1])  # it stops at the first short batch
    assert (result.deleted, result.batches, result.more) == (sum(sizes), len(sizes), False)


async def test_max_batches_bounds_one_sweep_and_says_more_remain(engine):
    customer = random_ref("bounded")
    await add_keys(engine, customer, 12, expires_in=-timedelta(days=1))

    first = await sweep(engine, batch_size=5, max_batches=2)

    assert (first.deleted, first.batches, first.more) == (10, 2, True)
    assert len(await keys_of(engine, customer)) >= 2  # the oldest went first; these may be others'
    await sweep(engine, batch_size=5)
    assert await keys_of(engine, customer) == set()


async def test_a_key_being_claimed_is_skipped_not_waited_for_and_never_deleted(engine):
    customer = random_ref("claiming")
    [key] = await add_keys(engine, customer, 1, expires_in=-timedelta(days=2))
    other = random_ref("other")
    [other_key] = await add_keys(engine, other, 1, expires_in=-timedelta(days=2))
    async with engine.connect() as claiming:
        async with claiming.begin():
            # A submission reusing the expired key: its claim replaces the record, not yet committed.
            now = datetime.now(UTC)
            claimed, order_id = await IdempotencyStore(claiming, customer, ROUTE).claim(
                key, "1" * 64, order_id_for_key(customer, key), now, timedelta(days=1)
            )
            assert claimed
            result = await sweep(engine, grace=timedelta(0))  # would hang here if it waited
            assert result.ran
            assert await keys_of(engine, other) == set()  # the rest of the batch went
        # The claim commits as if no sweep had run.
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(idempotency_keys.c.order_id, idempotency_keys.c.expires_at).where(
                    idempotency_keys.c.customer_id == customer
                )
            )
        ).one()
    assert row.order_id == order_id and row.expires_at > datetime.now(UTC)


async def test_a_record_locked_by_another_transaction_is_left_for_the_next_sweep(engine):
    customer = random_ref("locked")
    [key] = await add_keys(engine, customer, 1, expires_in=-timedelta(days=2))
    async with engine.connect() as holder:
        async with holder.begin():
            await holder.execute(
                select(idempotency_keys.c.key).where(idempotency_keys.c.customer_id == customer).with_for_update()
            )
            await sweep(engine)
            assert await keys_of(engine, customer) == {key}
    await sweep(engine)
    assert await keys_of(engine, customer) == set()


async def test_two_sweepers_never_run_at_once(engine, settings):
    customer = random_ref("twice")
    await add_keys(engine, customer, 6, expires_in=-timedelta(days=1))
    inside, release = asyncio.Event(), asyncio.Event()

    async def pause(count, so_far):
        inside.set()
        await release.wait()

    first = asyncio.create_task(sweep(engine, batch_size=2, on_batch=pause))
    await asyncio.wait_for(inside.wait(), timeout=HANG)
    # A second sweeper, with its own connections as another replica would have, skips at once.
    other_engine = create_engine(settings, pool_size=1)
    try:
        second = await sweep(other_engine, batch_size=2)
        assert (second.ran, second.deleted, second.batches) == (False, 0, 0)
        assert len(await keys_of(engine, customer)) == 4  # only the first's one batch is gone
        async with other_engine.connect() as conn:  # the runbook's query finds the holder
            holders = (await conn.execute(text(RUNBOOK_LOCK_QUERY))).all()
        assert len(holders) == 1
        release.set()
        done = await first
        assert done.ran and done.deleted >= 6 and await keys_of(engine, customer) == set()
        # The lock went with the first sweep.
        assert (await sweep(other_engine)).ran
    finally:
        release.set()
        await other_engine.dispose()


async def test_a_failed_sweep_releases_the_lock(engine):
    customer = random_ref("failing")
    await add_keys(engine, customer, 3, expires_in=-timedelta(days=1))

    async def fail(count, so_far):
        raise RuntimeError("stopped in the middle")

    with pytest.raises(RuntimeError):
        await sweep(engine, batch_size=1, on_batch=fail)
    assert len(await keys_of(engine, customer)) == 2  # the first batch was committed
    after = await sweep(engine)
    assert after.ran and await keys_of(engine, customer) == set()


async def test_a_key_is_new_again_after_its_record_was_swept(engine):
    """The sweeper must not make a reused key attach to the old order: the key-derived id is taken."""
    customer = random_ref("reuse")
    key = "monthly"
    derived = order_id_for_key(customer, key)
    long_ago = datetime.now(UTC) - timedelta(days=3)
    async with engine.begin() as conn:
        claimed, first_id = await IdempotencyStore(conn, customer, ROUTE).claim(
            key, "2" * 64, derived, long_ago, timedelta(days=1)
        )
        await OrderReadModel.insert_received(conn, received(first_id, customer, long_ago))
    assert claimed and first_id == derived

    await sweep(engine)
    assert await keys_of(engine, customer) == set()

    now = datetime.now(UTC)
    async with engine.begin() as conn:
        claimed, second_id = await IdempotencyStore(conn, customer, ROUTE).claim(
            key, "2" * 64, derived, now, timedelta(days=1)
        )
    assert claimed and second_id not in (first_id, derived)
    assert second_id == uuid.uuid5(derived, now.isoformat())  # as for an expired record still there
    # The three-day-old `received` row would count as a stuck order on the session's /metrics.
    async with engine.begin() as conn:
        await OrderReadModel.forget_received(conn, first_id)


async def test_a_key_whose_order_was_forgotten_keeps_its_derived_id(engine):
    # A submission whose workflow could not start forgets its claim and its received row: the retry
    # is the same order, not a reuse.
    customer = random_ref("forgot")
    async with engine.begin() as conn:
        claimed, order_id = await IdempotencyStore(conn, customer, ROUTE).claim(
            "retry", "3" * 64, order_id_for_key(customer, "retry"), datetime.now(UTC), timedelta(days=1)
        )
    assert claimed and order_id == order_id_for_key(customer, "retry")


def received(order_id: uuid.UUID, customer: str, at: datetime) -> OrderView:
    return OrderView.received(
        order_id=order_id,
        customer_id=customer,
        items=[OrderLine(sku="MUG-WHT", quantity=1, unit_price=1299)],
        total=1299,
        currency="EUR",
        shipping_address=ADDRESS,
        at=at,
    )


async def test_the_batch_delete_finds_rows_by_the_expiry_index_and_deletes_them_by_ctid(engine):
    # A full scan of a table of millions of rows per batch would defeat the batching: the oldest
    # expired rows must be reachable by the index on expires_at, and the delete must fetch exactly
    # the locked rows (a TID scan), never join back over the whole table.
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        rows = await conn.execute(
            text(f"EXPLAIN {_DELETE_BATCH.text}").bindparams(*_DELETE_BATCH._bindparams.values()),
            {"grace": GRACE, "batch_size": 1000},
        )
        plan = "\n".join(rows.scalars())
    assert "on ix_idempotency_keys_expires_at" in plan or "using ix_idempotency_keys_expires_at" in plan, plan
    assert "Tid Scan on idempotency_keys" in plan and "Join" not in plan, plan
