"""Figures of a drill (from the driver's result) and its text table."""

from __future__ import annotations

from collections import Counter

from bench.loadgen import TERMINAL

HANG_S = 2.0  # an answer slower than this to a cut-off region's customer counts as a hang
TARGET = 0.10  # region B's throughput and p99 during the cut: within 10 % of before
# States an order may legitimately wait in (bench/invariants.py), named by the platform's API.
VISIBLE_WAITS = {"awaiting_review", "shipped"}


def _at(result: dict, name: str) -> float | None:
    return next((e["at"] for e in result["events"] if e["event"] == name), None)


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(result: dict) -> dict:
    calls, orders = result["load"]["calls"], result["load"]["orders"]
    before, cut, healed = _at(result, "phase before"), _at(result, "cut a"), _at(result, "healed a")
    stopped = _at(result, "load stopped; draining")
    windows = {"before": (before, cut), "cut": (cut, healed), "healed": (healed, stopped)}

    def inside(call: dict, window: str) -> bool:
        start, end = windows[window]
        return start is not None and end is not None and start <= call["at"] < end

    def b_side(window: str) -> dict:
        # Throughput: B's customers' orders accepted, through either entry (during the cut all go
        # through B). Latency: those sent to B's entry, the one path that exists in both phases
        # (through A's entry an order takes one more hop, forwarded to B).
        submits = [c for c in calls if c["home"] == "b" and c["op"] == "submit" and inside(c, window)]
        ok = [c for c in submits if c["status"] in (200, 201, 202)]
        direct = [c["latency_s"] for c in ok if c["entry"] == "b"]
        start, end = windows[window]
        span = (end - start) if start is not None and end is not None else 0
        return {
            "submits": len(submits),
            "accepted": len(ok),
            "throughput_per_s": round(len(ok) / span, 2) if span else None,
            "p50_ms": _ms(_p(direct, 0.5)),
            "p99_ms": _ms(_p(direct, 0.99)),
        }

    b_before, b_cut = b_side("before"), b_side("cut")

    def answered_after_heal(call: dict) -> bool:
        # Sent while A was cut off but answered once it was healed: A itself may have answered
        # (TCP retransmitted the request on a connection B already had). Not an answer of a
        # cut-off region, so apart in the figures; counted as a hang all the same when slow.
        return call["at"] + call["latency_s"] >= windows["cut"][1]

    sent_a_writes = [
        c for c in calls if c["home"] == "a" and c["op"] == "submit" and c["entry"] == "b" and inside(c, "cut")
    ]
    sent_a_reads = [
        c for c in calls if c["home"] == "a" and c["op"] == "read" and c["entry"] == "b" and inside(c, "cut")
    ]
    a_writes = [c for c in sent_a_writes if not answered_after_heal(c)]
    a_reads = [c for c in sent_a_reads if not answered_after_heal(c)]
    lags = [c["lag_s"] for c in a_reads if c["lag_s"] is not None]
    accepted = [o for o in orders if o["order_id"]]
    summary = {
        "b_before": b_before,
        "b_cut": b_cut,
        "b_throughput_ratio": _ratio(b_cut["throughput_per_s"], b_before["throughput_per_s"]),
        "b_p99_ratio": _ratio(b_cut["p99_ms"], b_before["p99_ms"]),
        "a_writes_during_cut": {
            "requests": len(a_writes),
            "status_503": sum(1 for c in a_writes if c["status"] == 503),
            "with_retry_after": sum(1 for c in a_writes if c["status"] == 503 and c["retry_after"]),
            "accepted": sum(1 for c in a_writes if c["status"] in (200, 201, 202)),
            "hangs": sum(1 for c in sent_a_writes if c["status"] == 0 or c["latency_s"] >= HANG_S),
            "no_answer": sum(1 for c in sent_a_writes if c["status"] == 0),
            "answered_after_heal": len(sent_a_writes) - len(a_writes),
            "max_ms": _ms(max((c["latency_s"] for c in a_writes), default=None)),
        },
        "a_reads_during_cut": {
            "requests": len(a_reads),
            "answered_200": sum(1 for c in a_reads if c["status"] == 200),
            # Refused by B's own overload protection (429/503 + Retry-After, before any routing:
            # no X-Region), as it refuses anyone's request when B is overloaded.
            "shed": sum(1 for c in a_reads if _shed(c)),
            "no_answer": sum(1 for c in a_reads if c["status"] == 0),
            "statuses": dict(sorted(Counter(str(c["status"]) for c in a_reads).items())),
            "stale": sum(1 for c in a_reads if c["stale"]),
            "lag_min_s": min(lags, default=None),
            "lag_max_s": max(lags, default=None),
            "hangs": sum(1 for c in sent_a_reads if c["status"] == 0 or c["latency_s"] >= HANG_S),
            "answered_after_heal": len(sent_a_reads) - len(a_reads),
        },
        "replication_after_heal": result.get("replication", []),
        "rehome": result.get("rehome"),
        "orders": {
            region: {
                "accepted": sum(1 for o in accepted if o["region"] == region),
                "ended": sum(1 for o in accepted if o["region"] == region and o["status"] in TERMINAL),
                "waiting": sorted(
                    {o["status"] or "?" for o in accepted if o["region"] == region and o["status"] not in TERMINAL}
                ),
            }
            for region in ("a", "b")
        },
        "invariants_ok": {region: r["ok"] for region, r in result.get("invariants", {}).items()},
        "placement": result.get("placement"),
    }
    return summary


def targets(summary: dict) -> dict[str, bool]:
    """The drill's performance targets, met or not: figures of a (shared, noisy) machine, reported
    but not what its exit code says."""
    throughput, p99 = summary["b_throughput_ratio"], summary["b_p99_ratio"]
    return {
        "B's throughput during the cut within 10 % of before": throughput is not None and throughput >= 1 - TARGET,
        "B's p99 during the cut within 10 % of before": p99 is not None and p99 <= 1 + TARGET,
        f"A's writes during the cut answered in under {HANG_S:.0f} s": summary["a_writes_during_cut"]["hangs"] == 0,
    }


def verdict(summary: dict) -> dict[str, bool]:
    """The drill's behaviour checks, passed or not: the command fails when one does not."""
    writes, reads = summary["a_writes_during_cut"], summary["a_reads_during_cut"]
    replication = summary["replication_after_heal"]
    rehome = summary["rehome"] or {}
    placement = summary["placement"] or {}
    return {
        "A's writes during the cut: all answered 503 + Retry-After": writes["requests"] > 0
        and writes["no_answer"] == 0
        and writes["with_retry_after"] == writes["requests"],
        "A's reads during the cut: served stale with the lag": reads["requests"] > 0
        and reads["stale"] == reads["answered_200"] == reads["requests"] - reads["shed"]
        and reads["lag_max_s"] is not None,
        "replication lag back to 0 after the heal": bool(replication)
        and replication[-1]["lag_s"] == 0
        and replication[-1]["rows_match"],
        "after the rehome, new orders of A's customers accepted in B": rehome.get("new_orders", 0) > 0
        and rehome.get("accepted_in_b") == rehome.get("new_orders"),
        "every order in the region that accepted it, and only there": bool(placement.get("ok")),
        "every accepted order ended or waits visibly": all(
            not set(o["waiting"]) - VISIBLE_WAITS for o in summary["orders"].values()
        ),
        "invariants hold in both regions": bool(summary["invariants_ok"]) and all(summary["invariants_ok"].values()),
    }


def render(result: dict) -> str:
    s = result["summary"]
    b0, b1 = s["b_before"], s["b_cut"]
    w, r = s["a_writes_during_cut"], s["a_reads_during_cut"]
    lines = [
        f"drill {result['run_id']}: {result['spec']['phase_s']:.0f}s per phase, {result['spec']['rate']} orders/s",
        "",
        "region B's customers                 before      during cut   ratio",
        f"  accepted orders / s                 {_f(b0['throughput_per_s']):>10}  {_f(b1['throughput_per_s']):>10}   {_f(s['b_throughput_ratio'])}",
        f"  submit p50 via B (ms)              {_f(b0['p50_ms']):>10}  {_f(b1['p50_ms']):>10}",
        f"  submit p99 via B (ms)              {_f(b0['p99_ms']):>10}  {_f(b1['p99_ms']):>10}   {_f(s['b_p99_ratio'])}",
        "",
        "region A's customers during the cut (through B)",
        f"  writes answered during the cut: {w['requests']}, {w['status_503']} of them 503 ({w['with_retry_after']} with Retry-After), "
        f"{w['accepted']} accepted, {w['hangs']} hangs (no answer or >= {HANG_S:.0f}s), slowest {_f(w['max_ms'])} ms"
        f" (+{w['answered_after_heal']} answered after the heal)",
        f"  reads answered during the cut:  {r['requests']}, {r['answered_200']} of them 200, {r['stale']} marked stale, "
        f"replica lag {_f(r['lag_min_s'])}..{_f(r['lag_max_s'])} s, {r['shed']} shed by B's overload guard, "
        f"{r['hangs']} hangs",
    ]
    if s["replication_after_heal"]:
        lines += ["", "replication lag after heal (s since heal: lag s)"]
        lines.append(
            "  "
            + ", ".join(
                f"{p['t']:.1f}: {_f(p['lag_s'])}{'' if p['rows_match'] else ' (rows behind)'}"
                for p in s["replication_after_heal"]
            )
        )
    else:
        lines += ["", "replication lag after heal: not measured (no replication in these cells)"]
    if s["rehome"]:
        rh = s["rehome"]
        lines += ["", f"re-homing A's customers to B: {rh['detail']}"]
    lines += [
        "",
        "orders accepted: "
        + "; ".join(
            f"{region}: {o['accepted']} ({o['ended']} ended, waiting: {', '.join(o['waiting']) or 'none'})"
            for region, o in s["orders"].items()
        ),
    ]
    placement = s["placement"] or {}
    lines.append(
        f"placement: {'ok' if placement.get('ok') else 'FAIL'} over {placement.get('orders', 0)} orders"
        + "".join(f"\n  {problem}" for problem in placement.get("problems", []))
    )
    for region, inv in result.get("invariants", {}).items():
        lines.append(f"invariants in {region}: {'ok' if inv['ok'] else 'FAIL'} over {inv['orders']} orders")
        for check in inv["checks"]:
            if not check["ok"]:
                lines.append(f"  FAIL {check['name']}: {'; '.join(check['problems'][:3])}")
    lines += ["", "targets (figures of this machine)"]
    for name, met in result["targets"].items():
        lines.append(f"  {'met ' if met else 'MISS'} {name}")
    lines += ["", "checks"]
    for name, passed in result["verdict"].items():
        lines.append(f"  {'ok  ' if passed else 'FAIL'} {name}")
    return "\n".join(lines)


def _shed(call: dict) -> bool:
    return call["status"] in (429, 503) and call["served_by"] is None and call["retry_after"] is not None


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _f(value) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
