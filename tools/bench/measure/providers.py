"""Provider calls per second, read from the sandbox providers' own ledger tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from core.config import Settings
from core.db.engine import create_engine


async def provider_call_peaks(settings: Settings, since: float, until: float, window_s: int = 5) -> dict[str, Any]:
    """Provider calls between two wall-clock times, read from the sandbox's own ledger
    (authorizations and money movements for payments, shipments for the carrier), next to the
    workers' configured caps: the busiest second, and the busiest ``window_s`` seconds as a rate.
    Temporal enforces a cap per task queue with a token bucket, so one second may burst above it;
    the windowed rate is the one to hold against the cap. Declined or failed calls leave no row,
    so this is a floor."""
    query = text(
        """
        SELECT kind, extract(epoch FROM second)::bigint AS second, count(*) AS n FROM (
            SELECT 'payments' AS kind, date_trunc('second', created_at) AS second FROM sandbox_authorizations WHERE created_at >= :a AND created_at < :b
            UNION ALL
            SELECT 'payments', date_trunc('second', created_at) FROM sandbox_money_movements WHERE created_at >= :a AND created_at < :b
            UNION ALL
            SELECT 'shipping', date_trunc('second', created_at) FROM sandbox_shipments WHERE created_at >= :a AND created_at < :b
        ) AS calls GROUP BY kind, second
        """
    )
    engine = create_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    query, {"a": datetime.fromtimestamp(since, UTC), "b": datetime.fromtimestamp(until, UTC)}
                )
            ).all()
    finally:
        await engine.dispose()
    per_second: dict[str, dict[int, int]] = {"payments": {}, "shipping": {}}
    for row in rows:
        per_second[row.kind][int(row.second)] = int(row.n)
    caps = {"payments": settings.payments_max_per_second, "shipping": settings.shipping_max_per_second}
    out = {}
    for kind, counts in per_second.items():
        windowed = max((sum(counts.get(t + k, 0) for k in range(window_s)) for t in counts), default=0) / window_s
        out[kind] = {
            "peak_per_s": max(counts.values(), default=0),
            f"peak_{window_s}s_per_s": round(windowed, 1),
            "total": sum(counts.values()),
            "cap_per_s": caps[kind],
        }
    return out
