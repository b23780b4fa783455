"""Learning that an order changed without polling the database per waiting client.

The read model's writers (:mod:`core.db.read_model`) NOTIFY on :data:`CHANNEL` in the transaction of
every write that changes what a read of the order answers; the payload is
``"<order id> <version> <status>"``. :class:`OrderChanges` keeps one LISTEN connection per process
and hands each notification to the waiters of that order. A notification can be lost (the
listening connection dropped, the process started listening after the commit), so every
``recheck_s`` one query compares the versions of all orders that have waiters with what those
waiters last saw: a lost notification delays a waiter by at most that long, it never leaves it
hanging. Waiters are bounded per process (:class:`TooManyWaiters` beyond) and :meth:`release`
wakes them all at once (graceful shutdown).

The version of an order is ``"<seq>.<tracking events>"``: ``seq`` moves at every projected
transition, and the tracking-only carrier events the gateway records beside the row only ever grow
in number; together they determine the whole of the order's read.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import structlog
from sqlalchemy import ColumnElement, Uuid, any_, bindparam, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.tables import orders
from core.domain import TooManyWaiters

log = structlog.get_logger(__name__)

CHANNEL = "orders_changed"
_DB_ERRORS = (OperationalError, DBAPIError, PoolTimeout, OSError, asyncio.TimeoutError, asyncpg.PostgresError)


def order_version(seq: int, tracking: dict | None) -> str:
    """The version of an order's read (its ETag without the quotes)."""
    return f"{seq}.{len(tracking or {})}"


#: The SQL of :func:`notify_clause`, for statements written as text.
NOTIFY_EXPRESSION = (
    f"pg_notify('{CHANNEL}', orders.id::text || ' ' || orders.seq::text || '.' || "
    "(SELECT count(*) FROM jsonb_object_keys(orders.tracking))::text || ' ' || orders.status) AS notified"
)


def notify_clause() -> ColumnElement:
    """A RETURNING column that NOTIFYs :data:`CHANNEL` with the written row's id, version and
    status; evaluated only for rows the statement really wrote, delivered when the transaction commits."""
    return literal_column(NOTIFY_EXPRESSION.removesuffix(" AS notified")).label("notified")


@dataclass(frozen=True)
class Change:
    version: str
    status: str


class Watch:
    """One waiter's view of one order: what it last saw, and the latest change reported."""

    def __init__(self, hub: OrderChanges, order_id: uuid.UUID) -> None:
        self._hub = hub
        self.order_id = order_id
        self.known: str | None = None
        self.latest: Change | None = None
        self._event = asyncio.Event()

    def _report(self, change: Change) -> None:
        self.latest = change
        self._event.set()

    def _wake(self) -> None:
        self._event.set()

    async def next_change(self, known: str, timeout_s: float) -> Change | None:
        """The first change away from version ``known`` within ``timeout_s``; None at the timeout
        or when the hub is released (shutting down)."""
        self.known = known
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._hub.released:
                return None
            if self.latest is not None and self.latest.version != known:
                return self.latest
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._event.clear()
            self._hub.waiting += 1
            try:
                await asyncio.wait_for(self._event.wait(), remaining)
            except TimeoutError:
                return None
            finally:
                self._hub.waiting -= 1


class OrderChanges:
    """The per-process fan-out of order changes to waiters (see the module's docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_waiters: int,
        recheck_s: float,
        connect_timeout_s: float,
        retry_after_s: int = 1,
    ) -> None:
        self._engine = engine
        self.max_waiters = max_waiters
        self.recheck_s = recheck_s
        self._connect_timeout_s = connect_timeout_s
        self._retry_after_s = retry_after_s
        self._watches: dict[uuid.UUID, set[Watch]] = {}
        self.waiters = 0  # registered (reading the order or waiting)
        self.waiting = 0  # of them, waiting for a change right now
        self.released = False
        self._listener: asyncpg.Connection | None = None
        self._listen_failed = False
        self._task: asyncio.Task | None = None
        self._wakeup = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening and re-checking in the background (never blocks: the gateway starts
        while the database is down, and waiters fall back to the re-check until it is back)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="order-changes")

    def release(self) -> None:
        """Wake every waiter now and every later one at once (the gateway is shutting down)."""
        self.released = True
        for watches in self._watches.values():
            for watch in watches:
                watch._wake()
        self._wakeup.set()

    async def close(self) -> None:
        self.release()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._drop_listener()

    # --- waiters ------------------------------------------------------------------------------

    @asynccontextmanager
    async def watching(self, order_id: uuid.UUID) -> AsyncIterator[Watch]:
        """Register a waiter for ``order_id`` (before reading the order, so no change between the
        read and the wait is missed). :class:`TooManyWaiters` when the process has its maximum."""
        if self.waiters >= self.max_waiters:
            raise TooManyWaiters(self.max_waiters, self._retry_after_s)
        watch = Watch(self, order_id)
        self._watches.setdefault(order_id, set()).add(watch)
        self.waiters += 1
        try:
            yield watch
        finally:
            self.waiters -= 1
            watches = self._watches.get(order_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[order_id]

    # --- notifications and the re-check -----------------------------------------------------------

    def _on_notification(self, _connection, _pid, _channel, payload: str) -> None:
        try:
            order_id, version, status = payload.split(" ", 2)
            watches = self._watches.get(uuid.UUID(order_id))
        except ValueError:
            log.warning("unreadable order notification", payload=payload[:200])
            return
        for watch in watches or ():
            watch._report(Change(version, status))

    async def _run(self) -> None:
        while not self.released:
            if not self.listening:
                await self._listen()
            if self._watches:
                await self._recheck()
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.recheck_s)
            except TimeoutError:
                pass

    async def _listen(self) -> None:
        await self._drop_listener()
        url = self._engine.url.set(drivername="postgresql")
        try:
            connection = await asyncpg.connect(
                url.render_as_string(hide_password=False),
                timeout=self._connect_timeout_s,
                server_settings={"application_name": "orders-listen"},
            )
            await connection.add_listener(CHANNEL, self._on_notification)
        except (*_DB_ERRORS, asyncpg.InterfaceError) as error:
            # Once per outage, not every re-check: the database's own outage is logged elsewhere.
            if not self._listen_failed:
                log.warning("cannot listen for order changes; re-checking only", error=repr(error))
            self._listen_failed = True
            return
        if self._listen_failed:
            log.info("listening for order changes again")
        self._listen_failed = False
        self._listener = connection

    async def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            try:
                await asyncio.wait_for(listener.close(), self._connect_timeout_s)
            except (*_DB_ERRORS, asyncpg.InterfaceError):
                listener.terminate()

    async def _recheck(self) -> None:
        """One query for every order that has waiters: wake those whose order moved past what they saw."""
        ids = list(self._watches)
        try:
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(orders.c.id, orders.c.seq, orders.c.tracking, orders.c.status).where(
                            orders.c.id == any_(bindparam("ids", ids, type_=ARRAY(Uuid)))
                        )
                    )
                ).all()
        except _DB_ERRORS as error:
            log.warning("order change re-check failed", error=repr(error))
            return
        for row in rows:
            change = Change(order_version(row.seq, row.tracking), row.status)
            for watch in self._watches.get(row.id, ()):
                if watch.known is not None and watch.known != change.version:
                    watch._report(change)
