"""Chaos through the public API on a throw-away stack of its own (PostgreSQL with synchronous
commits, Temporal with file persistence, sandbox, worker, gateway as child processes), so killing
servers never disturbs the session-wide servers of other tests.

The short run is part of `make test`: about 40 orders and each fault once. The long runs are
marked slow. No timing is asserted anywhere: benchmarks print figures, tests check outcomes.
"""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench.chaos import ChaosPlan, run_chaos
from bench.stack import BenchStack, StackOptions


async def _chaos(plan: ChaosPlan, tmp_path, **stack_options):
    stack = BenchStack(StackOptions(data_dir=tmp_path / "stack", **stack_options))
    await asyncio.to_thread(stack.start)
    try:
        report = await run_chaos(stack, plan)
    finally:
        await asyncio.to_thread(stack.stop)
    print("\n" + report.table())
    return report


@pytest.mark.timeout(240)
async def test_short_chaos_run_loses_nothing(tmp_path):
    report = await _chaos(ChaosPlan(rate=2.0, duration_s=20.0, storm_size=30, drain_timeout_s=150), tmp_path)
    assert [f.fault for f in report.faults if not f.ok] == []
    assert report.summary["orders_accepted"] >= 20
    assert report.ok, report.table()


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_long_chaos_with_hard_kills_loses_nothing(tmp_path):
    plan = ChaosPlan(
        rate=4.0,
        duration_s=90.0,
        temporal_kill=True,
        postgres_mode="kill",
        worker_kills=2,
        temporal_down_s=5.0,
        postgres_down_s=10.0,
        drain_timeout_s=400,
    )
    report = await _chaos(plan, tmp_path, workers=2)
    assert report.ok, report.table()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_spike_keeps_answering_and_every_accepted_order_ends(tmp_path, capsys):
    from bench.command import add_load_options, run_bench

    parser = argparse.ArgumentParser()
    add_load_options(parser)
    args = parser.parse_args(["--duration", "20", "--drain-timeout", "400"])
    args.url, args.rate, args.concurrency = None, None, 32
    args.baselines, args.half_rate_check, args.history_sample = False, False, 5
    args.spike, args.spike_factor, args.spike_duration, args.sustainable_rate = True, 10.0, 30.0, None
    report = run_bench(args)
    spike = report["spike"]["summary"]
    print(spike, report["spike"]["gateway"], report["spike"].get("provider_calls"))
    assert spike["http_5xx_not_503_with_retry_after"] == 0
    # Never a hang, by the gateway's own clock (its /metrics histogram): every request it read was
    # answered within 15 s (its timeout is 5 s).
    assert all(route["over_15s"] == 0 for route in report["spike"]["gateway"].values())
    # By the callers' clock a few requests may wait past their 15 s deadline before the gateway
    # even reads them: on 2 shared cores at 10x load the gateway, niced below the load generator,
    # cannot read (and shed) requests as fast as they come (figures in docs/performance.md).
    # Anything else than such a deadline, or more than 0.1 %, fails.
    requests = sum(int(n) for n in spike["http_statuses"].values())
    assert all(kind.startswith("deadline: ") for kind in spike["no_answer_by_error"]), spike["no_answer_by_error"]
    assert spike["no_answer"] <= 0.001 * requests, (spike["no_answer"], requests)
    assert spike["orders_unfinished"] == 0
    assert report["invariants"]["ok"], report["invariants"]["table"]
