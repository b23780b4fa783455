"""`orders regions drill` as a user runs it: a child process that builds network namespaces, starts a
cell in each, cuts region A off under load and reports; and that removes everything it made on
success, on failure, on SIGTERM and on Ctrl-C.

It needs root and `ip netns` (this machine and CI have both); elsewhere every test here is skipped
with the reason. The short drill is part of `make test` (about a minute on 2 cores); the full one
is marked slow. Figures (B's throughput and p99 before and during the cut) are printed, never
asserted: the tests check behaviour.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from drill.netns import namespaces, preflight

ROOT = Path(__file__).resolve().parents[2]
REASON = preflight()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"orders regions drill: {REASON}")


def _prefix() -> str:
    # Apart from a drill someone runs by hand (orders-drill-*) and from the other tests.
    return f"odt-{uuid.uuid4().hex[:6]}"


def _drill(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "regions", "drill", *args]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _left_behind(work_dir: str) -> list[str]:
    """Processes still running on the drill's folder (cells, servers): there must be none."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if work_dir in cmdline:
            found.append(f"{process.pid}: {cmdline[:120]}")
    return found


def _work_dir(output: str) -> str:
    """The folder a drill run with --keep-data names at the end (the test removes it)."""
    match = re.search(r"logs and data kept in (\S+)", output)
    assert match, output
    return match.group(1)


def _nothing_left(work_dir: str) -> None:
    try:
        assert _left_behind(work_dir) == []
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _check_short_drill(result: dict) -> None:
    summary, checks = result["summary"], result["verdict"]
    print(json.dumps({k: summary[k] for k in ("b_before", "b_cut", "a_writes_during_cut", "a_reads_during_cut")}))
    writes, reads = summary["a_writes_during_cut"], summary["a_reads_during_cut"]
    assert all(checks.values()), ({name: ok for name, ok in checks.items() if not ok}, writes, reads)
    assert writes["requests"] > 0 and writes["status_503"] == writes["requests"] and writes["no_answer"] == 0
    # Every read B answered as a region was stale with its lag (B's overload guard may shed some).
    assert reads["requests"] > 0 and reads["stale"] == reads["requests"] - reads["shed"] > 0
    assert reads["no_answer"] == 0 and reads["lag_max_s"] is not None
    assert summary["replication_after_heal"][-1] == {**summary["replication_after_heal"][-1], "lag_s": 0}
    assert summary["rehome"]["exit_while_cut"] == 1  # A's own directory is out of reach: said so
    assert summary["rehome"]["accepted_in_b"] == summary["rehome"]["new_orders"] > 0
    assert summary["orders"]["a"]["accepted"] > 0 and summary["orders"]["b"]["accepted"] > 0
    assert result["placement"]["ok"], result["placement"]
    assert all(r["ok"] for r in result["invariants"].values()), result["invariants"]


@needs_netns
@pytest.mark.timeout(240)
def test_short_drill_keeps_b_serving_refuses_a_writes_serves_stale_reads_and_cleans_up():
    prefix = _prefix()
    done = _run(
        _drill("--phase", "5", "--rate", "4", "--customers", "8", "--rehome-orders", "3", "--json", "--prefix", prefix),
        220,
    )
    assert done.stdout, done.stderr[-3000:]
    _check_short_drill(json.loads(done.stdout))  # names the check that failed, if one did
    assert done.returncode == 0, done.stderr[-3000:]
    assert namespaces(prefix) == []


@needs_netns
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_drill(capsys):
    prefix = _prefix()
    done = _run(_drill("--phase", "20", "--rate", "6", "--json", "--prefix", prefix), 580)
    assert done.stdout, done.stderr[-3000:]
    result = json.loads(done.stdout)
    _check_short_drill(result)
    assert done.returncode == 0, done.stderr[-3000:]
    with capsys.disabled():
        from drill.report import render

        print("\n" + render(result))
    assert namespaces(prefix) == []


@needs_netns
@pytest.mark.timeout(120)
def test_a_cell_that_fails_to_start_leaves_no_namespace_and_no_process():
    prefix = _prefix()
    # What a killed drill leaves: its namespaces, a process inside one. The next run sweeps them.
    subprocess.run(["ip", "netns", "add", f"{prefix}-a"], check=True)
    stray = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-a", "sleep", "600"])
    try:
        done = _run(_drill("--cell-start-timeout", "1", "--keep-data", "--prefix", prefix), 100)
        assert done.returncode == 1
        assert "removed namespaces a killed drill left" in done.stderr
        error = [line for line in done.stderr.splitlines() if line.startswith("orders regions drill: error:")]
        assert error and "not ready within 1s" in error[0], done.stderr
        assert namespaces(prefix) == []
        assert stray.wait(10) is not None  # the sweep stopped it
        _nothing_left(_work_dir(done.stderr))
    finally:
        if stray.poll() is None:
            stray.kill()
        subprocess.run(["ip", "netns", "delete", f"{prefix}-a"], capture_output=True)


@needs_netns
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_mid_drill_stops_the_cells_and_removes_the_namespaces(sig):
    prefix = _prefix()
    drill = subprocess.Popen(
        _drill("--phase", "30", "--keep-data", "--prefix", prefix),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    try:
        assert drill.stdout is not None
        for line in drill.stdout:  # until the load runs on both cells
            output.append(line)
            if "phase before" in line:
                break
        assert namespaces(prefix), "".join(output)
        os.kill(drill.pid, sig)
        rest, _ = drill.communicate(timeout=120)
        output.append(rest)
    finally:
        if drill.poll() is None:
            drill.kill()
    text = "".join(output)
    assert drill.returncode == 130, text
    assert namespaces(prefix) == []
    _nothing_left(_work_dir(text))


# These two run everywhere: they are what a machine without root or `ip netns` sees.
@pytest.mark.parametrize(
    ("why", "message"),
    [
        ("not root", "the drill needs root (it creates network namespaces and veth links): run it as root"),
        ("no ip", "the drill needs `ip` (iproute2) with `ip netns`: install iproute2"),
    ],
)
def test_where_it_cannot_run_it_says_why_in_one_line_and_exits_2(why, message, monkeypatch, capsys, tmp_path):
    from cli.main import main

    if why == "not root":
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        monkeypatch.setenv("PATH", str(tmp_path))  # no `ip` on it
    assert main(["regions", "drill"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"orders regions drill: cannot run: {message}"]
    assert out == ""
