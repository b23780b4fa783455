"""Projection of the workflow's order view into the read model (``orders`` and ``order_events``).

Run as a local activity at every transition. The write itself (idempotent and monotonic: a row only
moves forward to a higher ``seq``) belongs to :class:`core.db.read_model.OrderReadModel`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from core.db.read_model import OrderReadModel
from core.domain import ProjectOrder


class ProjectionActivities:
    def __init__(self, engine: AsyncEngine, *, region: str = "") -> None:
        self._read_model = OrderReadModel(engine, region=region)

    @activity.defn(name="project_order")
    async def project_order(self, request: ProjectOrder) -> None:
        await self._read_model.project(request.seq, request.view)
