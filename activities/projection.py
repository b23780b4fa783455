"""Projection of the workflow's order view into the read model (``orders`` and ``order_events``).

Run as a local activity at every transition. Writes are idempotent and monotonic: a row only moves
forward to a higher ``seq``, so a retried or late write never rolls the read model back.
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from core.db.read_model import order_row
from core.db.tables import order_events, orders
from core.domain import ProjectOrder


class ProjectionActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @activity.defn(name="project_order")
    async def project_order(self, request: ProjectOrder) -> None:
        view = request.view
        row = order_row(view, request.seq)
        async with self._engine.begin() as conn:
            statement = insert(orders).values(**row)
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[orders.c.id],
                    set_={k: statement.excluded[k] for k in row if k not in {"id", "created_at"}},
                    where=orders.c.seq < statement.excluded.seq,
                )
            )
            events = [
                {
                    "order_id": view.id,
                    "seq": index + 1,
                    "status": change.status.value,
                    "note": change.note,
                    "at": change.at,
                }
                for index, change in enumerate(view.history)
            ]
            await conn.execute(insert(order_events).values(events).on_conflict_do_nothing())
