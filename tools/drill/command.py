"""`orders regions drill`: two regional cells on this machine, region A cut off at the network,
measured (docs/regions.md, "The drill").

This process stays in the root namespace and owns the network: it checks it may build one, sweeps
what a killed drill left, builds the namespaces, runs the drill (drill.driver) inside the client
namespace and, whatever happens (success, failure, Ctrl-C, SIGTERM), stops what still runs inside
the namespaces and deletes them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from drill.netns import CLIENT, DEFAULT_PREFIX, DEFAULT_SUBNET, NetnsError, Topology, preflight, remove
from drill.report import render

#: Exit code when the machine cannot run the drill (not root, no `ip netns`).
CANNOT_RUN = 2


def say(message: str) -> None:
    print(f"orders regions drill: {message}", file=sys.stderr, flush=True)


def run_drill(args: argparse.Namespace) -> tuple[int, dict | None]:
    """Run the drill; (exit code, the measured result or None)."""
    reason = preflight()
    if reason is not None:
        print(f"orders regions drill: cannot run: {reason}", file=sys.stderr)
        return CANNOT_RUN, None
    topology = Topology(args.prefix, args.subnet)
    swept = remove(args.prefix)
    if swept:
        say(f"removed namespaces a killed drill left: {', '.join(sorted(swept))}")
    work = Path(tempfile.mkdtemp(prefix="orders-drill-"))
    spec = {
        "prefix": args.prefix,
        "subnet": args.subnet,
        "work_dir": str(work),
        "result_file": str(work / "result.json"),
        "phase_s": args.phase,
        "rate": args.rate,
        "max_orders": args.max_orders,
        "customers": args.customers,
        "rehome_orders": args.rehome_orders,
        "request_timeout_s": 10.0,  # "no answer": nothing within 10 s; slower than 2 s is a hang anyway
        "drain_timeout_s": args.drain_timeout,
        "cell_start_timeout_s": args.cell_start_timeout,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    driver: subprocess.Popen | None = None
    stopping: list[str] = []

    def forward(signum: int, frame: object) -> None:
        # The driver stops its cells in order; the namespaces go once it has (or after a grace).
        stopping.append(signal.Signals(signum).name)
        if driver is not None and driver.poll() is None:
            driver.send_signal(signal.SIGTERM)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        topology.create()
        say(f"network up: {', '.join(topology.namespace(p) for p in ('a', 'b', CLIENT))} on {args.subnet}")
        if stopping:
            say(f"stopped by {stopping[0]}")
            return 130, None
        driver = subprocess.Popen(
            [*topology.exec_prefix(CLIENT), sys.executable, "-m", "drill.driver", str(work / "spec.json")],
            start_new_session=True,
        )
        deadline = None
        while driver.poll() is None:
            if stopping and deadline is None:
                deadline = time.monotonic() + 60
            if deadline is not None and time.monotonic() > deadline:
                break  # the namespaces' removal below stops whatever is left
            time.sleep(0.2)
        if stopping:
            say(f"stopped by {stopping[0]}")
            return 130, None
        if driver.returncode != 0:
            return 1, None
        return 0, json.loads((work / "result.json").read_text())
    except NetnsError as error:
        print(f"orders regions drill: error: {error}", file=sys.stderr)
        return 1, None
    finally:
        # Ignore further Ctrl-Cs until the network is gone: a half-removed drill is the worst case.
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)
        removed = remove(args.prefix)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        say(f"removed namespaces {', '.join(sorted(removed)) or '(none left)'}")
        if args.keep_data:
            say(f"logs and data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def cmd_drill(args: argparse.Namespace) -> int:
    code, result = run_drill(args)
    if result is not None:
        print(json.dumps(result, indent=1) if args.json else render(result))
        if not result.get("ok", True):
            code = 1
    return code


def add_drill_parser(regions_sub: argparse._SubParsersAction) -> None:
    drill = regions_sub.add_parser(
        "drill",
        help="two regional cells in network namespaces, region A cut off under load, measured (root)",
        description=__doc__,
    )
    drill.add_argument("--phase", type=float, default=20.0, help="seconds of load before, during and after the cut")
    drill.add_argument("--rate", type=float, default=4.0, help="orders started per second (both regions together)")
    drill.add_argument("--max-orders", type=int, default=2000, help="upper bound on orders started")
    drill.add_argument("--customers", type=int, default=20, help="customers per region")
    drill.add_argument("--rehome-orders", type=int, default=5, help="new orders of A's customers after the rehome")
    drill.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to wait for orders to end")
    drill.add_argument("--cell-start-timeout", type=float, default=120.0, help="seconds a cell may take to start")
    drill.add_argument("--prefix", default=DEFAULT_PREFIX, help="name prefix of the network namespaces")
    drill.add_argument("--subnet", default=DEFAULT_SUBNET, help="private IPv4 network inside the namespaces")
    drill.add_argument("--keep-data", action="store_true", help="keep the cells' logs and data")
    drill.add_argument("--json", action="store_true", help="print the result as JSON")
    drill.set_defaults(func=cmd_drill)
