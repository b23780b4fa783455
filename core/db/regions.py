"""The region tables (docs/regions.md): the home directory, heartbeats and replication set-up.

* :class:`RegionDirectory` — what the gateway reads per request (a customer's override, the
  rehomes and which region wrote the order named, in one round trip) and the operator's writes.
* :func:`stamp_heartbeat` / :func:`replica_lag_s` — this region's heartbeat, and how far behind
  the local replica of a peer is.
* :func:`ensure_publication`, :func:`link`, :func:`unlink`, :func:`subscription_status` — logical
  replication of the orders read model between regions, for `orders regions`.

Replication, in short: each region publishes only the ``orders`` and ``region_heartbeats`` rows it
wrote itself (row filter ``region = '<name>'``; ``(id, region)`` is the replica identity so the
filter also applies to updates and deletes), and subscribes to every peer's publication with
``origin = none``. Rows are disjoint by construction (a customer's orders are written only in the
region that accepted them), so the two directions never touch the same row and nothing loops.
Idempotency keys, stock, reservations and the directory itself are not replicated: stock and money
stay in the home region, and the directory is written by the operator in every region
(`orders regions rehome`).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from sqlalchemy import String, Uuid, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.tables import customer_homes, region_heartbeats, region_redirects

PUBLISHED_TABLES = ("orders", "region_heartbeats")


def publication_name(region: str) -> str:
    return f"orders_region_{region}"


def subscription_name(publisher: str, subscriber: str) -> str:
    """Also the replication slot's name on the publisher: unique per (publisher, subscriber)."""
    return f"orders_{publisher}_to_{subscriber}"


def libpq_dsn(url: str) -> str:
    """``postgresql+asyncpg://...`` (SQLAlchemy) as the ``postgresql://...`` libpq and asyncpg take."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgresql") else url


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_NO_ORDER = uuid.UUID(int=0)
_ROUTE_FACTS = text(
    """
    SELECT (SELECT region FROM customer_homes WHERE customer_id = :customer) AS pinned,
           (SELECT jsonb_object_agg(region, served_by) FROM region_redirects) AS redirects,
           o.region AS order_region, o.customer_id AS order_customer
    FROM (SELECT 1) AS one
    LEFT JOIN orders AS o ON o.id = :order
    """
).bindparams(bindparam("customer", type_=String), bindparam("order", type_=Uuid))


@dataclass(frozen=True)
class HomeEntry:
    pinned: str | None  # the operator's override for the customer
    redirects: dict[str, str]  # lost region -> region serving its customers


@dataclass(frozen=True)
class OrderLocation:
    region: str  # '' when written before regions
    customer_id: str


class RegionDirectory:
    """Reads of the directory for the gateway, and the operator's writes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def entry(self, customer_id: str) -> HomeEntry:
        pinned = select(customer_homes.c.region).where(customer_homes.c.customer_id == customer_id).scalar_subquery()
        redirects = select(
            func.coalesce(
                func.jsonb_object_agg(region_redirects.c.region, region_redirects.c.served_by),
                text("'{}'::jsonb"),
            )
        ).scalar_subquery()
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(pinned.label("pinned"), redirects.label("redirects")))).one()
        return HomeEntry(row.pinned, dict(row.redirects or {}))

    async def route_facts(
        self, customer_id: str | None, order_id: uuid.UUID | None
    ) -> tuple[HomeEntry | None, OrderLocation | None]:
        """What routing one request needs, in one round trip: the customer's directory entry (when
        a customer is given) and where the order lives (when an order is named and known here)."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(_ROUTE_FACTS, {"customer": customer_id or "", "order": order_id or _NO_ORDER})
            ).one()
        entry = HomeEntry(row.pinned, dict(row.redirects or {})) if customer_id is not None else None
        location = OrderLocation(row.order_region, row.order_customer) if row.order_customer is not None else None
        return entry, location

    async def pin(self, customer_id: str, region: str, changed_by: str) -> None:
        statement = insert(customer_homes).values(
            customer_id=customer_id, region=region, changed_by=changed_by, changed_at=func.now()
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[customer_homes.c.customer_id],
                    set_={"region": region, "changed_by": changed_by, "changed_at": func.now()},
                )
            )

    async def rehome(self, lost: str, to: str, changed_by: str) -> None:
        """New orders of ``lost``'s customers go to ``to``; ``to == lost`` undoes it."""
        async with self._engine.begin() as conn:
            if to == lost:
                await conn.execute(region_redirects.delete().where(region_redirects.c.region == lost))
                return
            statement = insert(region_redirects).values(
                region=lost, served_by=to, changed_by=changed_by, changed_at=func.now()
            )
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[region_redirects.c.region],
                    set_={"served_by": to, "changed_by": changed_by, "changed_at": func.now()},
                )
            )

    async def redirects(self) -> dict[str, str]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(region_redirects.c.region, region_redirects.c.served_by))).all()
        return {row.region: row.served_by for row in rows}


async def stamp_heartbeat(engine: AsyncEngine, region: str) -> None:
    """This region is alive now (the database's clock; replicated to the peers)."""
    statement = insert(region_heartbeats).values(region=region, at=func.now())
    async with engine.begin() as conn:
        await conn.execute(
            statement.on_conflict_do_update(index_elements=[region_heartbeats.c.region], set_={"at": func.now()})
        )


def lag_from_age(age_s: float, heartbeat_s: float) -> int:
    """Whole seconds the replica is behind, from the age of the newest replicated heartbeat: one
    interval of age is normal (the next stamp is not due yet), so it does not count."""
    return max(0, math.floor(age_s - heartbeat_s))


async def replica_lag_s(engine: AsyncEngine, peer: str, heartbeat_s: float) -> int | None:
    """How far behind the local replica of ``peer`` is (see :func:`lag_from_age`); None when no
    heartbeat of that peer has ever arrived here."""
    age = func.extract("epoch", func.now() - region_heartbeats.c.at)
    async with engine.connect() as conn:
        value = (await conn.execute(select(age).where(region_heartbeats.c.region == peer))).scalar_one_or_none()
    return None if value is None else lag_from_age(float(value), heartbeat_s)


# --- replication set-up (`orders regions link / unlink / status`) ----------------------------------


async def ensure_publication(dsn: str, region: str) -> bool:
    """Publish the rows ``region`` wrote, on the database at ``dsn`` (which must be that region's).
    Orders written before regions (``region = ''``) are stamped with its name first, so they are
    published too. Returns True when the publication was created now."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("UPDATE orders SET region = $1 WHERE region = ''", region)
        name = publication_name(region)
        if await conn.fetchval("SELECT 1 FROM pg_publication WHERE pubname = $1", name):
            return False
        tables = ", ".join(f"{table} WHERE (region = {_literal(region)})" for table in PUBLISHED_TABLES)
        # No truncate: row filters do not apply to it, and a region never truncates its peer's rows.
        await conn.execute(f"CREATE PUBLICATION {name} FOR TABLE {tables} WITH (publish = 'insert, update, delete')")
        return True
    finally:
        await conn.close()


#: libpq's connect timeout on a subscription's connection (seconds): without it a reconnect
#: attempted while the peer is cut off waits on TCP's SYN retries (minutes), and the replica keeps
#: lagging that long after the link heals (measured by the drill, docs/notes/drill.md).
SUBSCRIPTION_CONNECT_TIMEOUT_S = 5


def subscription_conninfo(dsn: str) -> str:
    """The subscription's CONNECTION string: ``dsn`` (a libpq URI) with a connect timeout, unless it
    names one. Only the subscription gets it: asyncpg would take the parameter for a server setting."""
    if "connect_timeout=" in dsn:
        return dsn
    if not dsn.startswith(("postgresql://", "postgres://")):
        return f"{dsn} connect_timeout={SUBSCRIPTION_CONNECT_TIMEOUT_S}"  # key=value form
    return f"{dsn}{'&' if '?' in dsn else '?'}connect_timeout={SUBSCRIPTION_CONNECT_TIMEOUT_S}"


async def link(local_dsn: str, local: str, peers: dict[str, str]) -> list[str]:
    """Make ``local`` subscribe to every peer (name -> DSN as the local server reaches it; the same
    DSN must work from here). Publications are made where missing, on both sides. Idempotent: an
    existing subscription gets the given connection and is enabled. Returns what was done."""
    done = []
    if await ensure_publication(local_dsn, local):
        done.append(f"publication {publication_name(local)} created in {local}")
    for peer, peer_dsn in sorted(peers.items()):
        if await ensure_publication(peer_dsn, peer):
            done.append(f"publication {publication_name(peer)} created in {peer}")
    conn = await asyncpg.connect(local_dsn, timeout=10)
    try:
        for peer, peer_dsn in sorted(peers.items()):
            name = subscription_name(peer, local)
            if await conn.fetchval("SELECT 1 FROM pg_subscription WHERE subname = $1", name):
                await conn.execute(f"ALTER SUBSCRIPTION {name} CONNECTION {_literal(subscription_conninfo(peer_dsn))}")
                await conn.execute(f"ALTER SUBSCRIPTION {name} ENABLE")
                done.append(f"subscription {name} kept (connection refreshed, enabled)")
                continue
            # origin = none: never pass on rows that reached the peer from elsewhere (PostgreSQL 16+).
            await conn.execute(
                f"CREATE SUBSCRIPTION {name} CONNECTION {_literal(subscription_conninfo(peer_dsn))} "
                f"PUBLICATION {publication_name(peer)} WITH (origin = none, copy_data = true)"
            )
            done.append(f"subscription {name} created in {local}")
    finally:
        await conn.close()
    return done


async def unlink(local_dsn: str, local: str, peers: dict[str, str]) -> list[str]:
    """Drop ``local``'s subscriptions from the peers, and their slots on the peers that answer
    (a slot left on an unreachable peer is named: drop it there with pg_drop_replication_slot)."""
    done = []
    conn = await asyncpg.connect(local_dsn, timeout=10)
    try:
        for peer in sorted(peers):
            name = subscription_name(peer, local)
            if not await conn.fetchval("SELECT 1 FROM pg_subscription WHERE subname = $1", name):
                continue
            # Detached from its slot first, so dropping it never waits for an unreachable peer.
            await conn.execute(f"ALTER SUBSCRIPTION {name} DISABLE")
            await conn.execute(f"ALTER SUBSCRIPTION {name} SET (slot_name = NONE)")
            await conn.execute(f"DROP SUBSCRIPTION {name}")
            done.append(f"subscription {name} dropped")
    finally:
        await conn.close()
    for peer, peer_dsn in sorted(peers.items()):
        name = subscription_name(peer, local)
        try:
            peer_conn = await asyncpg.connect(peer_dsn, timeout=5)
        except (OSError, asyncpg.PostgresError) as error:
            done.append(f"slot {name} in {peer} not dropped ({peer} unreachable: {error})")
            continue
        try:
            # The walsender may still hold the slot for a moment after the subscription went.
            await peer_conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = $1 AND active_pid IS NOT NULL",
                name,
            )
            dropped = await peer_conn.fetchval(
                "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots "
                "WHERE slot_name = $1 AND NOT active",
                name,
            )
            if dropped:
                done.append(f"slot {name} dropped in {peer}")
        finally:
            await peer_conn.close()
    return done


@dataclass(frozen=True)
class SubscriptionStatus:
    peer: str
    subscription: str
    exists: bool
    enabled: bool
    worker_pid: int | None  # None: the apply worker is not running (peer unreachable, disabled)
    tables_ready: bool  # every table's initial copy done
    received_lsn: str | None
    latest_end_lsn: str | None
    last_msg_receipt_time: datetime | None
    lag_s: int | None  # from the peer's heartbeat; None when none ever arrived

    def as_json(self) -> dict:
        return {
            "peer": self.peer,
            "subscription": self.subscription,
            "exists": self.exists,
            "enabled": self.enabled,
            "worker_pid": self.worker_pid,
            "tables_ready": self.tables_ready,
            "received_lsn": self.received_lsn,
            "latest_end_lsn": self.latest_end_lsn,
            "last_msg_receipt_time": self.last_msg_receipt_time.isoformat() if self.last_msg_receipt_time else None,
            "lag_s": self.lag_s,
        }


async def subscription_status(
    local_dsn: str, local: str, peers: list[str], heartbeat_s: float
) -> list[SubscriptionStatus]:
    """Per peer: the subscription's worker and positions (pg_stat_subscription) and the heartbeat lag."""
    conn = await asyncpg.connect(local_dsn, timeout=10)
    result = []
    try:
        for peer in sorted(peers):
            name = subscription_name(peer, local)
            row = await conn.fetchrow(
                """
                SELECT s.subenabled, st.pid, st.received_lsn::text AS received_lsn,
                       st.latest_end_lsn::text AS latest_end_lsn, st.last_msg_receipt_time,
                       NOT EXISTS (SELECT 1 FROM pg_subscription_rel r
                                   WHERE r.srsubid = s.oid AND r.srsubstate <> 'r') AS tables_ready
                FROM pg_subscription s
                LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL
                WHERE s.subname = $1
                """,
                name,
            )
            age = await conn.fetchval(
                "SELECT extract(epoch FROM now() - at)::float8 FROM region_heartbeats WHERE region = $1", peer
            )
            lag = None if age is None else lag_from_age(age, heartbeat_s)
            if row is None:
                result.append(SubscriptionStatus(peer, name, False, False, None, False, None, None, None, lag))
                continue
            result.append(
                SubscriptionStatus(
                    peer,
                    name,
                    True,
                    row["subenabled"],
                    row["pid"],
                    row["tables_ready"],
                    row["received_lsn"],
                    row["latest_end_lsn"],
                    row["last_msg_receipt_time"],
                    lag,
                )
            )
    finally:
        await conn.close()
    return result
