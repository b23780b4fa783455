"""CPU time and resident memory of the bench's processes, each server counted with its children
(the Temporal CLI runs the server as a child, uvicorn may too)."""

from __future__ import annotations

import os
from typing import Any

import psutil


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and its live children; empty when it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (0 when it is gone)."""
    total = 0.0
    for process in process_tree(pid):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process alone (the load generator)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and its live children."""
    total = 0
    for process in process_tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def cpu_per_unit(before: dict[str, float], after: dict[str, float], units: int, elapsed_s: float) -> dict[str, Any]:
    """CPU milliseconds per unit (ended order, finished workflow) for each process, and the share
    of the machine the run used (1.0 = every core busy)."""
    spent = {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}
    total = sum(spent.values())
    return {
        "cpu_ms_per_unit": {
            name: round(1000 * value / units, 1) if units else None
            for name, value in sorted(spent.items(), key=lambda kv: -kv[1])
        },
        "cpu_ms_per_unit_total": round(1000 * total / units, 1) if units else None,
        "machine_busy": round(total / elapsed_s / (os.cpu_count() or 1), 2) if elapsed_s else None,
    }


# The platform's own processes: what a user of the platform pays for (the sandbox providers stand
# in for outside services and the load generator for the clients, so they are reported apart).
PLATFORM_OWN = ("api", "worker", "temporal", "postgres")


def platform_own_cpu_ms(cpu: dict[str, Any]) -> float | None:
    """CPU ms per unit of the gateway, the workers (``worker-N``), Temporal and PostgreSQL, from
    :func:`cpu_per_unit`'s figures; None when they are unknown."""
    per_unit = cpu.get("cpu_ms_per_unit") or {}
    own = [value for name, value in per_unit.items() if name.split("-")[0] in PLATFORM_OWN and value is not None]
    return round(sum(own), 1) if own else None


def engine_cpu_ms(cpu: dict[str, Any]) -> float | None:
    """CPU ms per bare-engine workflow of the Temporal server and the bare worker (not its driver)."""
    per_unit = cpu.get("cpu_ms_per_unit") or {}
    parts = [per_unit.get("temporal"), per_unit.get("bare worker")]
    return round(sum(parts), 1) if all(part is not None for part in parts) else None
