"""The region tables against real PostgreSQL: the directory the gateway reads per request, the
operator's writes, heartbeats and the lag read from them."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, text

from core.db.read_model import OrderReadModel
from core.db.regions import RegionDirectory, replica_lag_s, stamp_heartbeat
from core.db.tables import region_heartbeats, region_redirects
from core.regions import resolve_home
from tests.db.test_read_model import received
from tests.harness import random_ref


async def test_route_facts_in_one_round_trip(engine):
    directory = RegionDirectory(engine)
    customer = random_ref("rd").lower()
    entry, location = await directory.route_facts(customer, uuid.uuid4())
    assert entry is not None and entry.pinned is None and location is None  # unknown order

    await directory.pin(customer, "b", "ops")
    await directory.pin(customer, "c", "ops-2")  # a second change replaces the first
    view = received()
    await OrderReadModel(engine, region="c").project(1, view)
    try:
        entry, location = await directory.route_facts(customer, view.id)
        assert entry is not None and entry.pinned == "c"
        assert location is not None and (location.region, location.customer_id) == ("c", view.customer_id)
        entry, location = await directory.route_facts(None, None)  # an operator's list
        assert entry is None and location is None
    finally:
        async with engine.begin() as conn:  # dated in the past: it would count as stuck elsewhere
            await conn.execute(text("DELETE FROM orders WHERE id = :id"), {"id": view.id})


async def test_rehome_and_undo(engine):
    directory = RegionDirectory(engine)
    lost = random_ref("r").lower().replace("-", "_")
    try:
        await directory.rehome(lost, "b", "ops")
        await directory.rehome(lost, "c", "ops")  # changed its mind: one row, the latest
        assert (await directory.redirects())[lost] == "c"
        entry, _ = await directory.route_facts("anyone", None)
        assert entry is not None and entry.redirects[lost] == "c"
        assert resolve_home("anyone", [lost], entry.pinned, entry.redirects) == "c"
        await directory.rehome(lost, lost, "ops")  # undo
        assert lost not in await directory.redirects()
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(region_redirects).where(region_redirects.c.region == lost))


async def test_lag_from_the_peers_heartbeat(engine):
    peer = random_ref("p").lower().replace("-", "_")
    try:
        assert await replica_lag_s(engine, peer, 1.0) is None  # never heard of
        await stamp_heartbeat(engine, peer)
        assert await replica_lag_s(engine, peer, 1.0) == 0
        async with engine.begin() as conn:  # as if the last replicated stamp were 42 s old
            await conn.execute(
                text("UPDATE region_heartbeats SET at = now() - interval '42 seconds' WHERE region = :r"), {"r": peer}
            )
        assert await replica_lag_s(engine, peer, 1.0) == 41
        await stamp_heartbeat(engine, peer)  # healed
        assert await replica_lag_s(engine, peer, 1.0) == 0
    finally:
        async with engine.begin() as conn:
            await conn.execute(delete(region_heartbeats).where(region_heartbeats.c.region == peer))
