"""Projection of the workflow's order view into the read model (``orders`` and ``order_events``).

Run as a local activity at every transition. The write itself (idempotent and monotonic: a row only
moves forward to a higher ``seq``) belongs to :class:`core.db.read_model.OrderReadModel`. The
`shipped` transition of a lean run (PATCH_LEAN_HISTORY) carries the shipment's stock commit, done in
the same transaction: one local activity, one history marker, and never one without the other.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from activities.stock import commit_stock_in
from core.db.read_model import OrderReadModel
from core.domain import ProjectOrder


class ProjectionActivities:
    def __init__(self, engine: AsyncEngine, *, region: str = "") -> None:
        self._engine = engine
        self._read_model = OrderReadModel(engine, region=region)

    @activity.defn(name="project_order")
    async def project_order(self, request: ProjectOrder) -> None:
        if request.commit_stock is None:
            await self._read_model.project(request.seq, request.view)
            return
        # Both idempotent, so a retry of the whole transaction changes nothing twice.
        async with self._engine.begin() as conn:
            await commit_stock_in(conn, request.commit_stock)
            await self._read_model.project_in(conn, request.seq, request.view)
