"""The drill itself, run inside the client namespace by `orders regions drill`:
``ip netns exec <prefix>-c python -m drill.driver SPEC``.

It starts a cell in each region's namespace, sends load, cuts region A off and heals it, re-homes
A's customers for the lost-for-good path, checks the invariants in both regions and writes what
it measured to ``SPEC["result_file"]`` (JSON, rendered by drill.report). Its cells run in their own
sessions: it stops them itself, on success, failure, Ctrl-C or SIGTERM (and the command that
started it removes the namespaces, with anything still inside, afterwards).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from bench.run import check_invariants, prepare_catalogue
from bench.stack import BENCH_DEFAULTS
from cli.main import stop_on_sigterm
from core.config import Settings
from core.db.engine import create_engine
from core.temporal import connect_client
from devstack.processes import tail_file
from drill.load import DrillLoad, monotonic_clock
from drill.netns import REGIONS, Topology
from drill.report import summarize, verdict


class DrillError(RuntimeError):
    """The drill could not run (a cell did not start...): one line for the user."""


def say(message: str) -> None:
    print(f"orders regions drill: {message}", flush=True)


class Cell:
    """A region's cell: the `python -m drill.cell` process in the region's namespace."""

    def __init__(self, topology: Topology, region: str, root: Path, settings: dict) -> None:
        self.region = region
        self.dir = root / f"cell-{region}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = root / f"cell-{region}.log"
        self.ready_file = self.dir / "ready.json"
        spec = {
            "region": region,
            "address": topology.address(region),
            "subnet": topology.subnet,
            "data_dir": str(self.dir / "data"),
            "settings": settings,
            "ready_file": str(self.ready_file),
        }
        (self.dir / "spec.json").write_text(json.dumps(spec))
        self.argv = [*topology.exec_prefix(region), sys.executable, "-m", "drill.cell", str(self.dir / "spec.json")]
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches the drill, which stops the cells in order.
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def poll_ready(self) -> bool:
        if self.ready_file.exists():
            self.info = json.loads(self.ready_file.read_text())
            return True
        if self.proc is not None and self.proc.poll() is not None:
            raise DrillError(
                f"cell {self.region} exited with code {self.proc.returncode} while starting; "
                f"its log ({self.log}) ends:\n{tail_file(self.log, 15)}"
            )
        return False

    def stop(self, grace_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def settings(self) -> Settings:
        return Settings(
            **{
                **BENCH_DEFAULTS,
                "database_url": self.info["database_url"],
                "temporal_address": self.info["temporal_address"],
                "payment_base_url": self.info["payment_base_url"],
            }
        )


def start_cells(cells: dict[str, Cell], timeout_s: float) -> None:
    for cell in cells.values():
        cell.start()
    deadline = time.monotonic() + timeout_s
    waiting = set(cells)
    while waiting:
        waiting = {region for region in waiting if not cells[region].poll_ready()}
        if waiting and time.monotonic() > deadline:
            raise DrillError(
                f"cell {', '.join(sorted(waiting))} not ready within {timeout_s:.0f}s (logs in {cells[min(waiting)].log})"
            )
        time.sleep(0.2)


async def run(spec: dict) -> dict:
    topology = Topology(spec["prefix"], spec["subnet"])
    root = Path(spec["work_dir"])
    run_id = uuid.uuid4().hex[:6]
    clock = monotonic_clock()
    result: dict = {"run_id": run_id, "spec": spec, "events": []}

    def event(name: str, **detail) -> None:
        result["events"].append({"at": round(clock(), 3), "event": name, **detail})
        say(f"t={clock():6.1f}s {name} {detail or ''}".rstrip())

    cells = {region: Cell(topology, region, root, {}) for region in REGIONS}
    try:
        event("starting cells")
        await asyncio.to_thread(start_cells, cells, spec["cell_start_timeout_s"])
        event("cells ready", **{region: cell.info["api_url"] for region, cell in cells.items()})
        settings = {region: cell.settings() for region, cell in cells.items()}
        stock = {}
        skus: list[str] = []
        for region in REGIONS:
            engine = create_engine(settings[region], pool_size=1)
            try:
                catalogue, totals = await prepare_catalogue(engine, settings[region], run_id)
            finally:
                await engine.dispose()
            skus = [catalogue.cheap_sku, catalogue.split_skus[0]] if catalogue.split_skus else [catalogue.cheap_sku]
            stock[region] = (totals, catalogue.warehouse_stock)
        customers = {region: [f"drill-{run_id}-{region}-{n}" for n in range(spec["customers"])] for region in REGIONS}
        load = DrillLoad(
            {region: cells[region].info["api_url"] for region in REGIONS},
            customers,
            settings["b"],
            skus,
            clock=clock,
            request_timeout_s=spec["request_timeout_s"],
        )
        try:
            await phases(spec, topology, load, event, result)
        finally:
            await load.close()
        result["load"] = load.record.as_json()
        event("checking invariants")
        result["invariants"] = {}
        for region in REGIONS:
            accepted = [o.order_id for o in load.record.orders if o.order_id and _accepted_in(o) == region]
            client = await connect_client(settings[region])
            totals, per_place = stock[region]
            report = await check_invariants(settings[region], client, accepted, totals, per_place)
            result["invariants"][region] = {
                "ok": report.ok,
                "orders": len(accepted),
                "checks": [asdict(check) for check in report.checks],
            }
        result["summary"] = summarize(result)
        result["verdict"] = verdict(result["summary"])
        result["ok"] = all(result["verdict"].values())
        event("done")
        return result
    finally:
        for cell in cells.values():
            cell.stop()


def _accepted_in(order) -> str:
    """The region that accepted an order: its customer's home when it was accepted."""
    return order.home


async def phases(spec: dict, topology: Topology, load: DrillLoad, event, result: dict) -> None:
    """Load before, during and after region A's cut; then drain."""
    phase_s = spec["phase_s"]
    stop = asyncio.Event()
    driver = asyncio.create_task(load.run(rate=spec["rate"], until=stop, max_orders=spec["max_orders"]))
    load.phase = "before"
    event("phase before")
    await asyncio.sleep(phase_s)
    load.phase = "cut"
    load.up.discard("a")
    topology.cut("a")
    event("cut a")
    await asyncio.sleep(phase_s)
    topology.heal("a")
    load.up.add("a")
    load.phase = "healed"
    event("healed a")
    await asyncio.sleep(phase_s)
    stop.set()
    await driver
    event("load stopped; draining")
    await load.drain(spec["drain_timeout_s"])
    event("drained")


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    stop_on_sigterm()
    try:
        result = asyncio.run(run(spec))
    except KeyboardInterrupt:
        say("interrupted; cells stopped")
        return 130
    except DrillError as error:
        print(f"orders regions drill: error: {error}", file=sys.stderr, flush=True)
        return 1
    Path(spec["result_file"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
