"""Figures of one load run (JSON-ready): throughput, outcomes, latency per route, HTTP statuses,
and a per-second timeline for the chart."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.loadgen import ROUTE_SUBMIT, TERMINAL, LoadResult


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def summarize(result: LoadResult) -> dict[str, Any]:
    """The figures of one load run (JSON-ready)."""
    duration = max(result.duration_s, 1e-9)
    accepted = result.accepted
    in_window = [o for o in result.ended if o.ended_at is not None and o.ended_at <= result.duration_s]
    routes: dict[str, list[float]] = {}
    for sample in result.samples:
        if sample.status:
            routes.setdefault(sample.route, []).append(sample.latency_s)
    outcomes = Counter(f"{o.status}/{o.failure_reason}" if o.failure_reason else o.status for o in result.ended)
    server = [o.server_latency_s for o in result.ended if o.status == "completed" and o.server_latency_s is not None]
    shipped = [o.shipped_latency_s for o in result.ended if o.shipped_latency_s is not None]
    statuses = Counter(str(s.status) if s.status else "no answer" for s in result.samples)
    bad_5xx = [s for s in result.samples if s.status >= 500 and not (s.status == 503 and s.retry_after)]
    return {
        "duration_s": round(result.duration_s, 2),
        "drain_s": None if result.drain_s is None else round(result.drain_s, 2),
        "orders_submitted": len(result.orders),
        "orders_accepted": len(accepted),
        "orders_ended": len(result.ended),
        "orders_unfinished": len(accepted) - len([o for o in accepted if o.status in TERMINAL]),
        "unfinished_by_last_status": dict(
            Counter(o.last_status or "never read" for o in accepted if o.status not in TERMINAL)
        ),
        "accepted_per_s": round(
            len([o for o in accepted if o.accepted_at is not None and o.accepted_at <= result.duration_s]) / duration, 2
        ),
        "ended_per_s": round(len(in_window) / duration, 2),
        "completed_per_s": round(len([o for o in in_window if o.status == "completed"]) / duration, 2),
        # All ended orders over the whole time until the last one ended (ramp-up and tail included):
        # the figure compared with the baselines, which are measured the same way.
        "throughput_ended_per_s": round(
            len(result.ended) / max([o.ended_at for o in result.ended if o.ended_at] or [1.0]), 2
        ),
        "outcomes": dict(outcomes.most_common()),
        "latency_ms": {
            route: {
                "n": len(v),
                "p50": ms(percentile(v, 0.5)),
                "p95": ms(percentile(v, 0.95)),
                "p99": ms(percentile(v, 0.99)),
            }
            for route, v in sorted(routes.items())
        },
        "submit_to_shipped_ms": {"p50": ms(percentile(shipped, 0.5)), "p99": ms(percentile(shipped, 0.99))},
        "submit_to_completed_ms": {"p50": ms(percentile(server, 0.5)), "p99": ms(percentile(server, 0.99))},
        "http_statuses": dict(sorted(statuses.items())),
        "http_5xx_not_503_with_retry_after": len(bad_5xx),
        "no_answer": statuses.get("no answer", 0),
        "no_answer_by_error": dict(Counter(s.error or "?" for s in result.samples if not s.status)),
        "no_answer_by_route": dict(Counter(s.route for s in result.samples if not s.status)),
        # What the clients asked of the gateway per accepted order: every request, and the reads
        # among them (status reads and lists).
        "clients": result.clients,
        "requests_per_order": round(len(result.samples) / max(len(accepted), 1), 2),
        "reads_per_order": round(
            len([s for s in result.samples if s.route.startswith("GET ")]) / max(len(accepted), 1), 2
        ),
        "submitted_per_s": round(len(result.orders) / duration, 2),  # the offered load the generator managed
        "generator_max_loop_lag_s": round(result.max_loop_lag_s, 2),
    }


def timeline(result: LoadResult) -> list[dict[str, Any]]:
    """Per second: orders accepted and ended, and submit latency percentiles."""
    seconds = int(max([result.duration_s] + [o.ended_at or 0 for o in result.orders])) + 1
    rows = [{"t": t, "accepted": 0, "ended": 0, "submit_ms": []} for t in range(seconds)]
    for o in result.orders:
        if o.accepted_at is not None and int(o.accepted_at) < seconds:
            rows[int(o.accepted_at)]["accepted"] += 1
        if o.ended_at is not None and int(o.ended_at) < seconds:
            rows[int(o.ended_at)]["ended"] += 1
    for s in result.samples:
        if s.route == ROUTE_SUBMIT and s.status and int(s.at) < seconds:
            rows[int(s.at)]["submit_ms"].append(s.latency_s * 1000)
    for row in rows:
        lat = row.pop("submit_ms")
        row["submit_p50_ms"] = round(percentile(lat, 0.5), 1) if lat else None
        row["submit_p99_ms"] = round(percentile(lat, 0.99), 1) if lat else None
    return rows
