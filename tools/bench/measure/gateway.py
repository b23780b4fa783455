"""The gateway's own view of how fast it answered: its ``/metrics`` request-duration histogram."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


async def gateway_answer_times(url: str) -> dict[str, dict[str, float]]:
    """Per route, from the gateway's /metrics histogram: requests answered and how many took
    longer than 15 s (the load generator's deadline). Take two snapshots and :func:`subtract`."""
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(f"{url}/metrics")).text
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "orders_http_request_duration_seconds":
            continue
        for sample in family.samples:
            route = f"{sample.labels.get('method')} {sample.labels.get('route')}"
            entry = found.setdefault(route, {"count": 0.0, "within_15s": 0.0, "buckets": {}})
            if sample.name.endswith("_count"):
                entry["count"] = sample.value
            elif sample.name.endswith("_bucket"):
                upper = float(sample.labels["le"])
                entry["buckets"][upper] = sample.value
                if upper == 15.0:
                    entry["within_15s"] = sample.value
    return found


def subtract(after: dict[str, dict], before: dict[str, dict]) -> dict[str, dict]:
    """Per route between two snapshots: requests answered, how many after 15 s, and the answer
    time's p50/p99 by the gateway's clock (the upper bound of the histogram bucket they fall in)."""
    out = {}
    for route, now in after.items():
        then = before.get(route, {"count": 0.0, "within_15s": 0.0})
        count = int(now["count"] - then["count"])
        if not count:
            continue
        out[route] = {"answered": count, "over_15s": count - int(now["within_15s"] - then["within_15s"])}
        buckets = now.get("buckets") or {}
        if buckets:
            earlier = then.get("buckets") or {}
            cumulative = sorted((upper, n - earlier.get(upper, 0.0)) for upper, n in buckets.items())
            for name, q in (("p50_s", 0.5), ("p99_s", 0.99)):
                out[route][name] = next((upper for upper, n in cumulative if n >= q * count), None)
    return out
