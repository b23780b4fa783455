"""The drill's figures and checks (tools/drill/report.py) from a made-up result: what counts as
an answer during the cut, a hang, a stale read, and which checks fail on what."""

from __future__ import annotations

import copy

from drill.report import render, summarize, targets, verdict

EVENTS = [
    {"at": 0.0, "event": "phase before"},
    {"at": 10.0, "event": "cut a"},
    {"at": 20.0, "event": "healed a"},
    {"at": 30.0, "event": "load stopped; draining"},
]


def call(at, home, entry, op, status, latency_s, **extra):
    return {
        "at": at,
        "home": home,
        "entry": entry,
        "op": op,
        "status": status,
        "latency_s": latency_s,
        "retry_after": extra.get("retry_after"),
        "stale": extra.get("stale", False),
        "lag_s": extra.get("lag_s"),
        "served_by": extra.get("served_by"),
        "error": None,
    }


def order(n, region, status="completed"):
    return {"order_id": f"id-{n}", "home": region, "region": region, "status": status}


def result():
    calls = [call(t, "b", "b", "submit", 202, 0.05) for t in range(0, 10)]  # 1/s before
    calls += [call(t + 10, "b", "b", "submit", 202, 0.05) for t in range(0, 10)]  # 1/s during
    calls += [call(12, "a", "b", "submit", 503, 1.5, retry_after="5")]
    calls += [call(13, "a", "b", "read", 200, 1.5, stale=True, lag_s=3.0)]
    return {
        "run_id": "t",
        "spec": {"phase_s": 10, "rate": 2},
        "events": EVENTS,
        "load": {"calls": calls, "orders": [order(1, "a"), order(2, "b")]},
        "replication": [{"t": 1.0, "lag_s": 5, "rows_match": False}, {"t": 2.0, "lag_s": 0, "rows_match": True}],
        "rehome": {"new_orders": 2, "accepted_in_b": 2, "detail": "2/2"},
        "placement": {"ok": True, "orders": 2, "problems": []},
        "invariants": {"a": {"ok": True, "orders": 1, "checks": []}, "b": {"ok": True, "orders": 1, "checks": []}},
    }


def checked(r):
    r["summary"] = summarize(r)
    r["targets"], r["verdict"] = targets(r["summary"]), verdict(r["summary"])
    return r


def test_a_clean_drill_passes_every_check_and_renders():
    r = checked(result())
    assert all(r["verdict"].values()), r["verdict"]
    assert all(r["targets"].values()), r["targets"]
    assert r["summary"]["b_throughput_ratio"] == 1.0
    assert r["summary"]["a_reads_during_cut"]["lag_max_s"] == 3.0
    assert "A's writes during the cut" in render(r)


def test_an_a_write_accepted_during_the_cut_fails_the_check():
    r = result()
    r["load"]["calls"].append(call(14, "a", "b", "submit", 202, 0.2, served_by="b"))
    r = checked(r)
    assert r["summary"]["a_writes_during_cut"]["accepted"] == 1
    assert not r["verdict"]["A's writes during the cut: all answered 503 + Retry-After"]


def test_a_write_without_an_answer_is_a_hang_and_fails_the_check_even_when_it_ends_after_the_heal():
    r = result()
    r["load"]["calls"].append(call(19, "a", "b", "submit", 0, 10.0))  # sent in the cut, gave up after it
    r = checked(r)
    writes = r["summary"]["a_writes_during_cut"]
    assert writes["hangs"] == 1 and writes["no_answer"] == 1 and writes["answered_after_heal"] == 1
    assert not r["verdict"]["A's writes during the cut: all answered 503 + Retry-After"]
    assert not r["targets"]["A's writes during the cut answered in under 2 s"]


def test_a_slow_503_is_a_missed_target_not_a_failed_check():
    r = result()
    r["load"]["calls"].append(call(15, "a", "b", "submit", 503, 2.5, retry_after="5"))
    r = checked(r)
    assert r["verdict"]["A's writes during the cut: all answered 503 + Retry-After"]
    assert not r["targets"]["A's writes during the cut answered in under 2 s"]


def test_a_fresh_read_during_the_cut_fails_the_stale_check():
    r = result()
    r["load"]["calls"].append(call(16, "a", "b", "read", 200, 0.1))  # not marked stale
    assert not checked(r)["verdict"]["A's reads during the cut: served stale with the lag"]


def test_a_read_shed_by_b_s_overload_guard_is_counted_apart_but_no_answer_fails():
    shed = result()
    shed["load"]["calls"].append(call(16, "a", "b", "read", 503, 0.01, retry_after="1"))  # no X-Region
    shed = checked(shed)
    assert shed["summary"]["a_reads_during_cut"]["shed"] == 1
    assert shed["verdict"]["A's reads during the cut: served stale with the lag"]
    silent = result()
    silent["load"]["calls"].append(call(5 + 10, "a", "b", "read", 0, 4.0))
    silent = checked(silent)
    assert silent["summary"]["a_reads_during_cut"]["no_answer"] == 1
    assert not silent["verdict"]["A's reads during the cut: served stale with the lag"]


def test_lag_not_back_to_zero_an_order_stuck_or_misplaced_each_fail_their_check():
    base = result()
    lagging = copy.deepcopy(base)
    lagging["replication"][-1] = {"t": 30.0, "lag_s": 4, "rows_match": False}
    assert not checked(lagging)["verdict"]["replication lag back to 0 after the heal"]
    stuck = copy.deepcopy(base)
    stuck["load"]["orders"].append(order(3, "b", status="charging"))
    assert not checked(stuck)["verdict"]["every accepted order ended or waits visibly"]
    waiting = copy.deepcopy(base)
    waiting["load"]["orders"].append(order(4, "b", status="awaiting_review"))
    assert checked(waiting)["verdict"]["every accepted order ended or waits visibly"]
    misplaced = copy.deepcopy(base)
    misplaced["placement"] = {"ok": False, "orders": 2, "problems": ["order id-1 stamped {'a': 'a', 'b': 'b'}"]}
    assert not checked(misplaced)["verdict"]["every order in the region that accepted it, and only there"]


def test_b_slower_during_the_cut_misses_the_targets():
    r = result()
    for c in r["load"]["calls"]:
        if c["home"] == "b" and 10 <= c["at"] < 20:
            c["latency_s"] = 0.5
    r["load"]["calls"] = [c for c in r["load"]["calls"] if not (c["home"] == "b" and c["at"] in (18, 19))]
    r = checked(r)
    assert r["summary"]["b_throughput_ratio"] == 0.8
    assert not r["targets"]["B's throughput during the cut within 10 % of before"]
    assert not r["targets"]["B's p99 during the cut within 10 % of before"]
