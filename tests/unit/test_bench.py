"""The load generator's guard rails and the bench's arithmetic (no servers)."""

from __future__ import annotations

import pytest

from bench.loadgen import ROUTE_SUBMIT, LoadResult, OrderOutcome, Sample, require_loopback
from bench.measure.load import percentile, summarize


def test_load_goes_to_this_machine_only():
    assert require_loopback("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert require_loopback("http://localhost:8000") == "http://localhost:8000"
    for url in ("http://10.0.0.5:8000", "https://api.example.com", "http://127.0.0.1.example.com"):
        with pytest.raises(ValueError, match="only 127.0.0.1"):
            require_loopback(url)


def test_summary_counts_rates_statuses_and_the_forbidden_5xx():
    result = LoadResult(started=0, duration_s=10.0, drain_s=1.0)
    result.samples = [
        Sample(0.1, ROUTE_SUBMIT, 202, 0.010),
        Sample(0.2, ROUTE_SUBMIT, 503, 0.020, retry_after=True),  # shedding load: allowed
        Sample(0.3, ROUTE_SUBMIT, 500, 0.030),  # never allowed
        Sample(0.4, ROUTE_SUBMIT, 0, 15.0, error="deadline"),  # no answer
    ]
    result.orders = [
        OrderOutcome(
            "ok",
            "k1",
            "c",
            0.1,
            order_id="a",
            accepted_at=0.2,
            ended_at=3.0,
            status="completed",
            server_latency_s=2.0,
            shipped_latency_s=1.0,
        ),
        OrderOutcome(
            "decline",
            "k2",
            "c",
            0.1,
            order_id="b",
            accepted_at=0.3,
            ended_at=12.0,
            status="rejected",
            failure_reason="payment_declined",
        ),
        OrderOutcome("ok", "k3", "c", 0.1, order_id="c", accepted_at=0.3, last_status="shipped"),
        OrderOutcome("ok", "k4", "c", 0.1),
    ]
    summary = summarize(result)
    assert summary["orders_accepted"] == 3 and summary["orders_unfinished"] == 1
    assert summary["unfinished_by_last_status"] == {"shipped": 1}
    assert summary["accepted_per_s"] == 0.3 and summary["ended_per_s"] == 0.1 and summary["completed_per_s"] == 0.1
    assert summary["http_5xx_not_503_with_retry_after"] == 1 and summary["no_answer"] == 1
    assert summary["no_answer_by_error"] == {"deadline": 1} and summary["submitted_per_s"] == 0.4
    assert summary["outcomes"] == {"completed": 1, "rejected/payment_declined": 1}
    assert summary["submit_to_completed_ms"]["p50"] == 2000.0
    assert percentile([], 0.5) is None and percentile([3, 1, 2], 0.5) == 2


def test_an_outside_database_must_be_on_this_machine_too(capsys):
    from cli.main import main

    assert main(["bench", "--database-url", "postgresql://postgres@db.example.com:5432", "--duration", "1"]) == 2
    assert "only 127.0.0.1" in capsys.readouterr().err


def test_actions_are_counted_as_cloud_bills_them():
    """Patch markers are no local activities and the SDK's TemporalChangeVersion upsert is exempt."""
    import json
    from pathlib import Path

    from temporalio.client import WorkflowHistory

    from bench.measure.temporal import count_actions

    golden = Path(__file__).resolve().parents[1] / "golden"
    history = WorkflowHistory.from_json(
        "happy", json.loads((golden / "2026-11-25-skip-received" / "happy.json").read_text())
    )
    counted = count_actions(history.events)
    # start + 5 activities + 4 projection tasks + 1 delivery signal + 4 status upserts
    assert (counted["actions"], counted["local_activity_batches"], counted["upserts"]) == (15, 4, 4)


def test_the_lean_history_happy_path_costs_its_floor_of_actions():
    """PATCH_LEAN_HISTORY: the stock work rides in the projections' workflow tasks (docs/notes/lean.md)."""
    import json
    from pathlib import Path

    from temporalio.client import WorkflowHistory

    from bench.measure.temporal import count_actions

    golden = Path(__file__).resolve().parents[1] / "golden"
    history = WorkflowHistory.from_json(
        "happy", json.loads((golden / "2026-12-04-lean-history" / "happy.json").read_text())
    )
    counted = count_actions(history.events)
    # start + 3 provider activities + 4 workflow tasks with local activities (the reservation shares
    # the first with the `stock_reserved` projection) + 1 delivery timer + 1 signal + 4 status upserts
    assert (counted["actions"], counted["activities"], counted["local_activity_batches"]) == (14, 3, 4)
    assert (counted["local_activities"], counted["timers"], counted["upserts"]) == (5, 1, 4)


def test_gateway_answer_times_are_differences_of_two_metric_snapshots():
    from bench.measure.gateway import subtract

    before = {"GET /v1/orders/{id}": {"count": 10.0, "within_15s": 10.0}}
    after = {
        "GET /v1/orders/{id}": {"count": 25.0, "within_15s": 23.0},
        "POST /v1/orders": {"count": 4.0, "within_15s": 4.0},
        "GET /healthz": {"count": 3.0, "within_15s": 3.0},
    }
    assert subtract(after, before) == {
        "GET /v1/orders/{id}": {"answered": 15, "over_15s": 2},
        "POST /v1/orders": {"answered": 4, "over_15s": 0},
        "GET /healthz": {"answered": 3, "over_15s": 0},
    }
    assert subtract(before, before) == {}


def test_gateway_answer_time_percentiles_come_from_the_bucket_differences():
    from bench.measure.gateway import subtract

    before = {
        "POST /v1/orders": {
            "count": 10.0,
            "within_15s": 10.0,
            "buckets": {0.1: 10.0, 1.0: 10.0, 5.0: 10.0, 15.0: 10.0, float("inf"): 10.0},
        }
    }
    # 100 more: 60 within 0.1 s, 39 more within 1 s, the last one within 5 s.
    after = {
        "POST /v1/orders": {
            "count": 110.0,
            "within_15s": 110.0,
            "buckets": {0.1: 70.0, 1.0: 109.0, 5.0: 110.0, 15.0: 110.0, float("inf"): 110.0},
        }
    }
    assert subtract(after, before) == {"POST /v1/orders": {"answered": 100, "over_15s": 0, "p50_s": 0.1, "p99_s": 1.0}}


async def test_a_missed_deadline_says_whether_the_request_waited_for_a_connection_or_for_the_answer():
    """Two requests on a one-connection pool to a server that reads but never answers: the first
    was sent and waits for its answer, the second never got a connection from the caller's pool."""
    import asyncio

    import httpx

    from bench.loadgen import RequestPhase

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        await reader.read()  # until the caller gives up and closes

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    phases = [RequestPhase(), RequestPhase()]

    async def call(http: httpx.AsyncClient, phase: RequestPhase, deadline_s: float) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await http.get(f"http://127.0.0.1:{port}/", extensions={"trace": phase.trace})

    try:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as http:
            first = asyncio.create_task(call(http, phases[0], 2.0))
            await asyncio.sleep(0.2)
            await call(http, phases[1], 1.0)
            await first
    finally:
        server.close()
    assert [phase.where for phase in phases] == ["answer", "pool"]


def test_kernel_listen_queue_counters_are_read_from_tcpext_and_subtracted(tmp_path):
    from bench.measure.kernel import kernel_tcp_counters, subtract_counters
    from bench.report import format_report

    netstat = tmp_path / "netstat"
    netstat.write_text(
        "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts TCPSynRetrans\n"
        "TcpExt: 0 7 9 40 12\n"
        "IpExt: InNoRoutes\n"
        "IpExt: 0\n"
    )
    before = kernel_tcp_counters(netstat)
    assert before == {"ListenOverflows": 7, "ListenDrops": 9, "TCPSynRetrans": 12, "TCPTimeouts": 40}
    netstat.write_text(netstat.read_text().replace("0 7 9 40 12", "0 10 13 41 20"))
    delta = subtract_counters(kernel_tcp_counters(netstat), before)
    assert delta == {"ListenOverflows": 3, "ListenDrops": 4, "TCPSynRetrans": 8, "TCPTimeouts": 1}
    # Not Linux (or no /proc): no figures rather than zeros that would read as "nothing dropped".
    assert kernel_tcp_counters(tmp_path / "missing") is None
    assert subtract_counters(None, before) is None

    line = [row for row in format_report({"spike": _spike_run(delta)}).splitlines() if row.startswith("the kernel")]
    assert line == [
        "the kernel (whole machine) meanwhile: 3 listen-queue overflows, 4 connection attempts dropped, 8 SYN retransmissions, 1 retransmission timeouts"
    ]


def _spike_run(kernel_tcp: dict) -> dict:
    result = LoadResult(started=0.0, duration_s=1.0, drain_s=0.0)
    return {"mode": "open loop", "summary": summarize(result), "kernel_tcp": kernel_tcp}


def test_poll_interval_is_bounded(capsys):
    from cli.main import main

    assert main(["bench", "--poll-interval", "0", "--duration", "1"]) == 2
    assert "--poll-interval" in capsys.readouterr().err


def test_the_mix_picks_every_kind_in_its_share_and_lines_follow_the_kind():
    import random
    from collections import Counter

    from bench.loadgen import Catalogue, Mix

    rng = random.Random(3)
    kinds = Counter(Mix(split=0.2, partial=0.1).pick(rng) for _ in range(10_000))
    assert 1_800 < kinds["split"] < 2_200 and 800 < kinds["partial"] < 1_200
    assert set(kinds) == {"ok", "decline", "cancel", "expensive", "split", "partial"}
    assert "split" not in Counter(Mix(split=0.0, partial=0.0).pick(rng) for _ in range(1_000))

    catalogue = Catalogue("MUG", "SOFA", split_skus=("LAMP", "RUG"), scarce_sku="VASE")
    assert [line["sku"] for line in catalogue.lines("split", rng)] == ["LAMP", "RUG"]
    assert [line["sku"] for line in catalogue.lines("partial", rng)] == ["MUG", "VASE"]
    assert catalogue.lines("expensive", rng) == [{"sku": "SOFA", "quantity": 1}]
    # A catalogue without multi-warehouse SKUs (found over a platform's API) orders plain lines.
    assert [line["sku"] for line in Catalogue("MUG", "SOFA").lines("split", rng)] == ["MUG"]


def test_an_amending_customer_keeps_what_was_reserved():
    from bench.loadgen import available_items

    view = {
        "items": [{"sku": "MUG", "quantity": 2, "unit_price": 1}, {"sku": "VASE", "quantity": 3, "unit_price": 1}],
        "unavailable": [{"sku": "VASE", "quantity": 1}],
    }
    assert available_items(view) == [{"sku": "MUG", "quantity": 2}, {"sku": "VASE", "quantity": 2}]
    view["unavailable"] = [{"sku": "VASE", "quantity": 3}]
    assert available_items(view) == [{"sku": "MUG", "quantity": 2}]


def test_completed_orders_are_grouped_by_fulfilment_kind_for_the_temporal_cost():
    from bench.run import completed_by_kind

    result = LoadResult(started=0, duration_s=1.0, drain_s=None)
    done = {"order_id": "x", "status": "completed"}
    result.orders = [
        OrderOutcome("ok", "k1", "c", 0, **{**done, "order_id": "a"}),
        OrderOutcome("split", "k2", "c", 0, **{**done, "order_id": "b"}),
        OrderOutcome("partial", "k3", "c", 0, **{**done, "order_id": "c"}, amended=True),
        OrderOutcome("partial", "k4", "c", 0, order_id="d", status="cancelled", amended=True),
        OrderOutcome("partial", "k5", "c", 0, **{**done, "order_id": "e"}),  # completed without amending
        OrderOutcome("expensive", "k6", "c", 0, **{**done, "order_id": "f"}),
    ]
    assert completed_by_kind(result) == {"single": ["a"], "split": ["b"], "amended": ["c"]}


def _baseline_figures(rate: float, cpu: dict[str, float] | None = None) -> dict:
    figures = {"completed_per_s": rate, "latency_ms": {"p50": 1.0, "p99": 2.0}, "shape": {}}
    if cpu is not None:
        figures["cpu"] = {"cpu_ms_per_unit": cpu, "cpu_ms_per_unit_total": sum(cpu.values()), "machine_busy": 0.5}
    return figures


def _run_baselines(monkeypatch, *, dbos: dict | None) -> dict:
    """bench.run._baselines with the three baselines standing in (their own tests drive them on
    real servers): whatever the baselines measure, this is what the report makes of it."""
    import argparse
    import asyncio

    from bench import run

    async def bare(*args, **kwargs):
        return _baseline_figures(8.0, {"temporal": 70.0, "bare worker": 50.0, "load generator": 4.0})

    async def direct(*args, **kwargs):
        return _baseline_figures(20.0)

    async def on_dbos(*args, **kwargs):
        assert dbos is not None
        return dbos

    monkeypatch.setattr(run, "bare_engine_baseline", bare)
    monkeypatch.setattr(run, "direct_baseline", direct)
    monkeypatch.setattr(run, "dbos_baseline", on_dbos)
    monkeypatch.setattr(run, "dbos_installed", lambda: dbos is not None)
    args = argparse.Namespace(concurrency=8, rate=None, duration=10.0, baseline_duration=5.0, dbos=True)
    platform_cpu = {"api": 50.0, "worker-1": 100.0, "temporal": 100.0, "postgres": 10.0, "sandbox": 60.0}
    report = {
        "temporal_per_completed_order": {"sampled": 0},
        "platform": {
            "summary": {"throughput_ended_per_s": 4.0},
            "cpu": {
                "cpu_ms_per_unit": {**platform_cpu, "load generator": 50.0},
                "cpu_ms_per_unit_total": 370.0,
                "machine_busy": 0.9,
            },
        },
    }
    asyncio.run(run._baselines(args, None, None, None, report))  # type: ignore[arg-type]
    return report


def _baselines_only(report: dict) -> dict:
    return {key: value for key, value in report.items() if key != "platform"}


def test_without_the_dbos_extra_the_bench_says_how_to_install_it_and_skips_baseline_c(monkeypatch, capsys):
    from bench.report import format_report

    report = _run_baselines(monkeypatch, dbos=None)
    said = [line for line in capsys.readouterr().err.splitlines() if "dbos" in line.lower()]
    assert len(said) == 1 and "pip install 'orders-tools[dbos]'" in said[0], said
    assert "skipped" in report["baselines"]["dbos"]
    assert not [key for key in report["ratios"] if "dbos" in key]
    assert "DBOS: skipped (DBOS is not installed" in format_report(_baselines_only(report))
    assert report["ratios"]["platform/bare_engine (ended orders per s / workflows per s)"] == 0.5


def test_platform_over_dbos_compares_throughput_and_own_cpu_without_sandbox_and_callers(monkeypatch, tmp_path):
    from bench.measure.resources import own_cpu_ms
    from bench.report import format_report, write_chart

    dbos = _baseline_figures(10.0, {"dbos app": 80.0, "postgres": 20.0, "sandbox": 50.0, "load generator": 5.0})
    dbos |= {"outcomes": {"completed": 50}, "http_statuses": {"202": 50}}
    report = _run_baselines(monkeypatch, dbos=dbos)
    ratios = report["ratios"]
    assert ratios["platform/dbos (ended orders per s / completed orders per s)"] == 0.4
    # Own CPU: platform 50 + 100 + 100 + 10 = 260 ms, DBOS 80 + 20 = 100 ms (sandbox, load generator apart).
    assert ratios["platform/dbos own CPU per order (ms per ended order / ms per completed order)"] == 2.6
    text = format_report(_baselines_only(report))
    assert "DBOS, the same flow to delivery: 10.0 completed orders/s" in text
    assert "CPU per DBOS order: 155.0 ms (dbos app 80.0, postgres 20.0, sandbox 50.0, load generator 5.0)" in text
    assert "own CPU per order (sandbox and load generator apart): platform None ms, DBOS 100.0 ms" in text
    assert own_cpu_ms(report["platform"]["cpu"]) == 260.0
    report["platform"]["timeline"] = [{"t": 0, "accepted": 1, "ended": 1, "submit_p50_ms": 1, "submit_p99_ms": 2}]
    report["platform"]["mode"] = "closed loop"
    report["platform"]["summary"]["duration_s"] = 1
    assert write_chart(report, tmp_path / "chart.png") and (tmp_path / "chart.png").stat().st_size > 0


def test_platform_own_cpu_counts_gateway_workers_temporal_and_postgres_only():
    from bench.measure.resources import engine_cpu_ms, own_cpu_ms

    platform = {
        "cpu_ms_per_unit_total": 215.0,
        "cpu_ms_per_unit": {
            "worker-1": 50.0,
            "worker-2": 10.0,
            "temporal": 60.0,
            "api": 30.0,
            "postgres": 5.0,
            "sandbox": 40.0,
            "load generator": 20.0,
        },
    }
    assert own_cpu_ms(platform) == 155.0
    assert own_cpu_ms({}) is None
    bare = {"cpu_ms_per_unit": {"temporal": 40.0, "bare worker": 30.0, "load generator": 3.0}}
    assert engine_cpu_ms(bare) == 70.0
    assert engine_cpu_ms({"cpu_ms_per_unit": {"temporal": 40.0}}) is None
