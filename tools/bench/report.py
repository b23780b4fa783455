"""The report of `orders bench`: as text for the terminal, and as a chart of each load phase."""

from __future__ import annotations

from pathlib import Path

from bench.measure.resources import own_cpu_ms


def format_report(report: dict) -> str:
    """The report as text: each load phase, Temporal cost, baselines, memory and the invariants."""
    lines = []
    for name in ("platform", "half_rate", "spike"):
        run = report.get(name)
        if not run:
            continue
        s = run["summary"]
        lines.append(f"\n== {name}: {run['mode']} ==")
        lines.append(
            f"accepted/s {s['accepted_per_s']}  ended/s {s['ended_per_s']}  completed/s {s['completed_per_s']} (in the load window)  "
            f"throughput {s['throughput_ended_per_s']} ended orders/s (start to last end)  "
            f"accepted {s['orders_accepted']}/{s['orders_submitted']}  unfinished {s['orders_unfinished']} {s['unfinished_by_last_status'] or ''}  drain {s['drain_s']} s"
        )
        lines.append(f"{'route':28} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
        for route, lat in s["latency_ms"].items():
            lines.append(f"{route:28} {lat['n']:>6} {lat['p50']!s:>8} {lat['p95']!s:>8} {lat['p99']!s:>8}")
        lines.append(
            f"submit -> shipped   p50 {s['submit_to_shipped_ms']['p50']} ms  p99 {s['submit_to_shipped_ms']['p99']} ms"
        )
        lines.append(
            f"submit -> completed p50 {s['submit_to_completed_ms']['p50']} ms  p99 {s['submit_to_completed_ms']['p99']} ms (includes the carrier's delivery delay)"
        )
        lines.append(
            f"HTTP statuses {s['http_statuses']}  5xx other than 503+Retry-After: {s['http_5xx_not_503_with_retry_after']}"
            + (f"  no answer: {s['no_answer_by_error']}" if s.get("no_answer") else "")
        )
        lines.append(
            f"load generator: {s['submitted_per_s']} orders/s offered, its event loop {s['generator_max_loop_lag_s']} s late at worst"
        )
        if "requests_per_order" in s:
            lines.append(
                f"gateway requests per accepted order {s['requests_per_order']}, of them reads {s['reads_per_order']} "
                f"(clients {s['clients'] or 'as configured'})"
            )
        lines.append(f"outcomes {s['outcomes']}")
        if run.get("cpu"):
            lines.append(_cpu_line("CPU per ended order", run["cpu"]))
        if run.get("gateway"):
            answered = sum(v["answered"] for v in run["gateway"].values())
            slow = sum(v["over_15s"] for v in run["gateway"].values())
            lines.append(
                f"the gateway's own clock (/metrics): {answered} requests answered, {slow} of them after more than 15 s; per route, p50 / p99 at most:"
            )
            for route, v in sorted(run["gateway"].items()):
                if "p99_s" in v:
                    lines.append(f"  {route:32} {v['answered']:>6}  {v['p50_s']:g} s / {v['p99_s']:g} s")
        if run.get("kernel_tcp") is not None:
            k = run["kernel_tcp"]
            lines.append(
                f"the kernel (whole machine) meanwhile: {k.get('ListenOverflows', 0)} listen-queue overflows, {k.get('ListenDrops', 0)} connection attempts dropped, "
                f"{k.get('TCPSynRetrans', 0)} SYN retransmissions, {k.get('TCPTimeouts', 0)} retransmission timeouts"
            )
        if run.get("provider_calls"):
            lines.append(
                "provider calls: "
                + ", ".join(
                    f"{kind} busiest 5 s {v['peak_5s_per_s']}/s, busiest second {v['peak_per_s']} (cap {v['cap_per_s']:g}/s, {v['total']} in all)"
                    for kind, v in run["provider_calls"].items()
                )
            )
    cost = report.get("temporal_per_completed_order")
    if cost and cost.get("sampled"):
        lines.append(
            f"\nTemporal per completed order (histories of {cost['sampled']}): actions {cost['actions']}, history events {cost['history_events']}, history bytes {cost.get('history_bytes')} "
            f"(activities {cost['activities']}, retries {cost['activity_retries']}, local activities {cost['local_activities']} in {cost['local_activity_batches']} tasks, "
            f"timers {cost['timers']}, signals {cost['signals']}, updates {cost['updates']}, upserts {cost['upserts']}, workflow tasks {cost['workflow_tasks']})"
        )
    for kind, per_kind in (report.get("temporal_per_kind") or {}).items():
        if per_kind.get("sampled"):
            lines.append(
                f"  {kind} orders (histories of {per_kind['sampled']}): actions {per_kind['actions']}, "
                f"history events {per_kind['history_events']}, activities {per_kind['activities']}, "
                f"signals {per_kind['signals']}, updates {per_kind['updates']}"
            )
        else:
            lines.append(f"  {kind} orders: none completed")
    base = report.get("baselines") or {}
    if base:
        lines.append("\n== baselines (same servers, same concurrency) ==")
        if "bare_engine" in base:
            b = base["bare_engine"]
            lines.append(
                f"bare engine {b['shape']}: {b['completed_per_s']} workflows/s, p50 {b['latency_ms']['p50']} ms, p99 {b['latency_ms']['p99']} ms"
            )
            if b.get("cpu"):
                lines.append(_cpu_line("CPU per bare workflow", b["cpu"]))
        if "direct" in base:
            d = base["direct"]
            lines.append(
                f"direct handler: {d['completed_per_s']} orders/s, p50 {d['latency_ms']['p50']} ms, p99 {d['latency_ms']['p99']} ms"
            )
        if "dbos" in base:
            c = base["dbos"]
            if "skipped" in c:
                lines.append(f"DBOS: skipped ({c['skipped']})")
            else:
                lines.append(
                    f"DBOS, the same flow to delivery: {c['completed_per_s']} completed orders/s, p50 {c['latency_ms']['p50']} ms, "
                    f"p99 {c['latency_ms']['p99']} ms, outcomes {c['outcomes']}, HTTP statuses {c['http_statuses']}"
                )
                if c.get("cpu"):
                    lines.append(_cpu_line("CPU per DBOS order", c["cpu"]))
                    platform_own = own_cpu_ms((report.get("platform") or {}).get("cpu"))
                    lines.append(
                        f"own CPU per order (sandbox and load generator apart): platform {platform_own} ms, DBOS {own_cpu_ms(c['cpu'])} ms"
                    )
                if c.get("transactions_per_order"):
                    lines.append(
                        "PostgreSQL transactions per DBOS order (idle rate taken off): "
                        + ", ".join(f"{name} {count}" for name, count in c["transactions_per_order"].items())
                        + f"; idle per s {c.get('idle_transactions_per_s')}"
                    )
        for key, value in (report.get("ratios") or {}).items():
            lines.append(f"{key}: {value}")
    rss = report.get("rss_mb")
    if rss:
        lines.append(f"\nRSS MB at start {rss.get('start')}\nRSS MB at end   {rss.get('end')}")
    inv = report.get("invariants")
    if inv:
        lines.append("\n" + inv["table"])
    return "\n".join(lines)


def _cpu_line(title: str, cpu: dict) -> str:
    parts = ", ".join(f"{name} {value}" for name, value in cpu["cpu_ms_per_unit"].items())
    return f"{title}: {cpu['cpu_ms_per_unit_total']} ms ({parts}); machine busy {cpu['machine_busy']:.0%}"


def write_chart(report: dict, path: Path) -> bool:
    """Rate and submit latency over time, one column per load phase, as a PNG at ``path``; False
    when matplotlib (the ``bench`` extra) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = [(name, report[name]) for name in ("platform", "half_rate", "spike") if report.get(name)]
    side_by_side = _side_by_side(report)
    columns = len(runs) + (1 if side_by_side else 0)
    fig, axes = plt.subplots(2, columns, figsize=(6 * columns, 6), squeeze=False)
    for column, (name, run) in enumerate(runs):
        rows = run["timeline"]
        t = [r["t"] for r in rows]
        rate_ax, lat_ax = axes[0][column], axes[1][column]
        rate_ax.plot(t, [r["accepted"] for r in rows], label="accepted/s")
        rate_ax.plot(t, [r["ended"] for r in rows], label="ended/s")
        rate_ax.axvline(run["summary"]["duration_s"], color="grey", linestyle=":", label="load stops")
        rate_ax.set_title(f"{name}: {run['mode']}", fontsize=9)
        rate_ax.set_ylabel("orders per second")
        rate_ax.legend(fontsize=8)
        lat_ax.plot(t, [r["submit_p50_ms"] for r in rows], "o-", markersize=3, label="submit p50")
        lat_ax.plot(
            t,
            [r["submit_p99_ms"] for r in rows],
            "s-",
            markersize=3,
            label="submit p99 (by second the request started)",
        )
        lat_ax.set_ylabel("POST /v1/orders latency (ms)")
        lat_ax.set_xlabel("seconds")
        lat_ax.legend(fontsize=8)
    if side_by_side:
        rate_ax, cpu_ax = axes[0][-1], axes[1][-1]
        rates = {name: rate for name, (rate, _) in side_by_side.items() if rate is not None}
        cpus = {name: cpu for name, (_, cpu) in side_by_side.items() if cpu is not None}
        rate_ax.bar(list(rates), list(rates.values()), color="tab:blue")
        rate_ax.set_title("side by side in this run (closed loop, same concurrency)", fontsize=9)
        rate_ax.set_ylabel("orders (workflows) per second")
        cpu_ax.bar(list(cpus), list(cpus.values()), color="tab:orange")
        cpu_ax.set_title("own CPU per order: sandbox and load generator apart", fontsize=9)
        cpu_ax.set_ylabel("CPU ms per order")
        for ax in (rate_ax, cpu_ax):
            for bar in ax.patches:
                ax.annotate(
                    f"{bar.get_height():g}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _side_by_side(report: dict) -> dict[str, tuple[float | None, float | None]]:
    """(throughput, own CPU ms per order) of the platform and each baseline that ran; empty
    without baselines."""
    base = report.get("baselines") or {}
    if not base or not report.get("platform"):
        return {}
    found = {
        "platform": (
            report["platform"]["summary"]["throughput_ended_per_s"],
            own_cpu_ms(report["platform"].get("cpu")),
        )
    }
    labels = {"bare_engine": "bare engine (a)", "direct": "direct (b)", "dbos": "DBOS (c)"}
    for key, label in labels.items():
        run = base.get(key)
        if run and "skipped" not in run:
            found[label] = (run["completed_per_s"], own_cpu_ms(run.get("cpu")))
    return found
