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


#: Processes that stand for the outside world (providers, callers), reported apart from a system's own CPU.
OUTSIDE = {"sandbox", "load generator"}


def own_cpu_ms(cpu: dict | None) -> float | None:
    """CPU milliseconds per unit of a system's own processes (all but the sandbox and the load generator)."""
    if not cpu or cpu.get("cpu_ms_per_unit_total") is None:
        return None
    return round(sum(v for k, v in cpu["cpu_ms_per_unit"].items() if k not in OUTSIDE and v is not None), 1)


def engine_cpu_ms(cpu: dict[str, Any]) -> float | None:
    """CPU ms per bare-engine workflow of the Temporal server and the bare worker (not its driver)."""
    per_unit = cpu.get("cpu_ms_per_unit") or {}
    parts = [per_unit.get("temporal"), per_unit.get("bare worker")]
    return round(sum(parts), 1) if all(part is not None for part in parts) else None
