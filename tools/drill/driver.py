"""The drill itself, run inside the client namespace by `orders regions drill`:
``ip netns exec <prefix>-c python -m drill.driver SPEC``.

It starts a cell in each region's namespace, links their read models (`orders regions link` in
each), sends load, cuts region A off and heals it, measures the replicas catching up, re-homes A's
customers for the lost-for-good path (`orders regions rehome`, with A cut off again), checks the
invariants in both regions and writes what it measured to ``SPEC["result_file"]`` (JSON, rendered
by drill.report). Its cells run in sessions of their own: it stops them itself, on success,
failure, Ctrl-C or SIGTERM (and the command that started it removes the namespaces, with anything
still inside, afterwards).
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

import asyncpg

from bench.run import check_invariants, prepare_catalogue
from bench.stack import BENCH_DEFAULTS
from cli.main import stop_on_sigterm
from core.config import Settings, settings_env
from core.db.engine import create_engine
from core.db.regions import libpq_dsn, link, replica_lag_s
from core.regions import default_home
from core.temporal import connect_client
from devstack.processes import tail_file
from drill.cell import PORTS
from drill.load import DrillLoad, monotonic_clock
from drill.netns import REGIONS, Topology
from drill.report import summarize, targets, verdict

HEARTBEAT_S = 0.5  # the gateways' heartbeat: the replica lag's resolution


class DrillError(RuntimeError):
    """The drill could not run (a cell did not start...): one line for the user."""


def say(message: str) -> None:
    print(f"orders regions drill: {message}", file=sys.stderr, flush=True)


def region_settings(topology: Topology, region: str) -> dict:
    """The region settings of ``region``'s cell: its name, the other's gateway and database."""
    peers = [r for r in REGIONS if r != region]
    return {
        "region": region,
        "region_peers": {p: f"http://{topology.address(p)}:{PORTS['api']}" for p in peers},
        "region_peer_database_urls": {
            p: f"postgresql://postgres@{topology.address(p)}:{PORTS['postgres']}/orders" for p in peers
        },
        "region_heartbeat_s": HEARTBEAT_S,
    }


class Cell:
    """A region's cell: the `python -m drill.cell` process in the region's namespace."""

    def __init__(self, topology: Topology, region: str, root: Path) -> None:
        self.region = region
        self.dir = root / f"cell-{region}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = root / f"cell-{region}.log"
        self.ready_file = self.dir / "ready.json"
        self.region_settings = region_settings(topology, region)
        spec = {
            "region": region,
            "address": topology.address(region),
            "subnet": topology.subnet,
            "data_dir": str(self.dir / "data"),
            "settings": self.region_settings,
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
        """This cell's settings as its own processes have them (what `orders regions ...` needs)."""
        return Settings(
            **{
                **BENCH_DEFAULTS,
                **self.region_settings,
                "database_url": self.info["database_url"],
                "temporal_address": self.info["temporal_address"],
                "payment_base_url": self.info["payment_base_url"],
            }
        )

    def orders(self, *args: str) -> subprocess.CompletedProcess:
        """Run an `orders` command (e.g. ``regions rehome``) as this region's operator would."""
        env = {**os.environ, **settings_env(self.settings())}
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, timeout=120
        )


def start_cells(cells: dict[str, Cell], timeout_s: float) -> None:
    for cell in cells.values():
        cell.start()
    deadline = time.monotonic() + timeout_s
    waiting = set(cells)
    while waiting:
        waiting = {region for region in waiting if not cells[region].poll_ready()}
        if waiting and time.monotonic() > deadline:
            late = min(waiting)
            raise DrillError(
                f"cell {', '.join(sorted(waiting))} not ready within {timeout_s:.0f}s (log: {cells[late].log})"
            )
        time.sleep(0.2)


def customers_by_home(run_id: str, per_region: int) -> dict[str, list[str]]:
    """``per_region`` customer ids homed in each region by the directory's default rule."""
    found: dict[str, list[str]] = {region: [] for region in REGIONS}
    n = 0
    while any(len(ids) < per_region for ids in found.values()):
        customer = f"drill-{run_id}-{n}"
        home = default_home(customer, REGIONS)
        if len(found[home]) < per_region:
            found[home].append(customer)
        n += 1
    return found


async def run(spec: dict) -> dict:
    topology = Topology(spec["prefix"], spec["subnet"])
    root = Path(spec["work_dir"])
    run_id = uuid.uuid4().hex[:6]
    clock = monotonic_clock()
    result: dict = {"run_id": run_id, "spec": spec, "events": []}

    def event(name: str, **detail) -> None:
        result["events"].append({"at": round(clock(), 3), "event": name, **detail})
        say(f"t={clock():6.1f}s {name} {detail or ''}".rstrip())

    cells = {region: Cell(topology, region, root) for region in REGIONS}
    try:
        event("starting cells")
        await asyncio.to_thread(start_cells, cells, spec["cell_start_timeout_s"])
        event("cells ready", **{region: cell.info["api_url"] for region, cell in cells.items()})
        settings = {region: cell.settings() for region, cell in cells.items()}
        for region in REGIONS:
            peers = {p: libpq_dsn(cells[p].info["database_url"]) for p in REGIONS if p != region}
            await link(libpq_dsn(cells[region].info["database_url"]), region, peers)
        stock, skus = {}, []
        for region in REGIONS:
            engine = create_engine(settings[region], pool_size=1)
            try:
                catalogue, totals = await prepare_catalogue(engine, settings[region], run_id)
            finally:
                await engine.dispose()
            skus = [catalogue.cheap_sku, catalogue.split_skus[0]] if catalogue.split_skus else [catalogue.cheap_sku]
            stock[region] = (totals, catalogue.warehouse_stock)
        await until_caught_up(settings, timeout_s=30)
        event("replication linked and caught up")
        load = DrillLoad(
            {region: cells[region].info["api_url"] for region in REGIONS},
            customers_by_home(run_id, spec["customers"]),
            settings["b"],
            skus,
            clock=clock,
            request_timeout_s=spec["request_timeout_s"],
        )
        try:
            await phases(spec, topology, cells, settings, load, event, result)
        finally:
            await load.close()
        result["load"] = load.record.as_json()
        event("checking invariants")
        accepted = {o.order_id: o.region for o in load.record.orders if o.order_id}
        result["placement"] = await placement(settings, accepted)
        result["invariants"] = {}
        for region in REGIONS:
            ids = [order_id for order_id, where in accepted.items() if where == region]
            client = await connect_client(settings[region])
            totals, per_place = stock[region]
            report = await check_invariants(settings[region], client, ids, totals, per_place)
            result["invariants"][region] = {
                "ok": report.ok,
                "orders": len(ids),
                "checks": [asdict(check) for check in report.checks],
            }
        result["summary"] = summarize(result)
        result["targets"] = targets(result["summary"])
        result["verdict"] = verdict(result["summary"])
        result["ok"] = all(result["verdict"].values())
        event("done")
        return result
    finally:
        for cell in cells.values():
            cell.stop()


async def lag_of(settings: Settings, peer: str) -> int | None:
    """How far behind this region's replica of ``peer`` is (whole seconds, None: never heard)."""
    engine = create_engine(settings, pool_size=1)
    try:
        return await replica_lag_s(engine, peer, settings.region_heartbeat_s)
    finally:
        await engine.dispose()


async def until_caught_up(settings: dict[str, Settings], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        lags = {region: await lag_of(settings[region], peer) for region, peer in (("a", "b"), ("b", "a"))}
        if all(lag == 0 for lag in lags.values()):
            return
        if time.monotonic() > deadline:
            raise DrillError(f"replication did not catch up within {timeout_s:.0f}s (lag by region: {lags})")
        await asyncio.sleep(0.25)


async def rows_of(settings: Settings, origin: str) -> set[tuple]:
    """(id, status) of the orders region ``origin`` accepted, as this region's database holds them."""
    conn = await asyncpg.connect(libpq_dsn(settings.database_url), timeout=5)
    try:
        rows = await conn.fetch("SELECT id, status FROM orders WHERE region = $1", origin)
    finally:
        await conn.close()
    return {(row["id"], row["status"]) for row in rows}


async def placement(settings: dict[str, Settings], accepted: dict[str, str]) -> dict:
    """Every accepted order is in the region that accepted it, stamped with that region in both
    databases (the replica included): none lost, none in two regions."""
    seen: dict[str, dict[str, str]] = {}
    for region in REGIONS:
        conn = await asyncpg.connect(libpq_dsn(settings[region].database_url), timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT id::text AS id, region FROM orders WHERE id = ANY($1::uuid[])", list(accepted)
            )
        finally:
            await conn.close()
        seen[region] = {row["id"]: row["region"] for row in rows}
    problems = []
    for order_id, where in accepted.items():
        stamps = {region: seen[region].get(order_id) for region in REGIONS}
        if stamps[where] != where:
            problems.append(f"order {order_id} accepted in {where} but {where} holds {stamps[where]!r}")
        elif any(stamp not in (None, where) for stamp in stamps.values()):
            problems.append(f"order {order_id} stamped {stamps}")
    return {"ok": not problems, "orders": len(accepted), "problems": problems[:10]}


async def phases(spec, topology, cells, settings, load: DrillLoad, event, result: dict) -> None:
    """Load before, during and after region A's cut; replicas catching up; then the lost-for-good
    path (A cut again, its customers re-homed to B, new orders for them); then drain."""
    phase_s = spec["phase_s"]
    stop = asyncio.Event()
    driver = asyncio.create_task(load.run(rate=spec["rate"], until=stop, max_orders=spec["max_orders"]))
    load.phase = "before"
    event("phase before")
    await asyncio.sleep(phase_s)
    load.phase = "cut"
    load.up.discard("a")  # the global load balancer stops sending to A's entry
    topology.cut("a")
    event("cut a")
    await asyncio.sleep(phase_s)
    topology.heal("a")
    load.up.add("a")
    load.phase = "healed"
    event("healed a")
    result["replication"] = await catch_up(settings, event, timeout_s=max(30.0, phase_s * 3))
    await asyncio.sleep(max(0.0, phase_s - (result["replication"][-1]["t"] if result["replication"] else 0)))
    stop.set()
    await driver
    event("load stopped; lost-for-good path")
    result["rehome"] = await rehome(topology, cells, load, event, spec["rehome_orders"])
    event("draining")
    await load.drain(spec["drain_timeout_s"])
    event("drained")


async def catch_up(settings: dict[str, Settings], event, timeout_s: float) -> list[dict]:
    """After the heal: B's replica lag of A (heartbeats) and whether B holds every row A has, each
    half second until both say caught up."""
    started = time.monotonic()
    series = []
    while True:
        lag = await lag_of(settings["b"], "a")
        rows_match = await rows_of(settings["a"], "a") == await rows_of(settings["b"], "a")
        t = round(time.monotonic() - started, 2)
        series.append({"t": t, "lag_s": lag, "rows_match": rows_match})
        if lag == 0 and rows_match:
            event("replica of a caught up in b", after_s=t)
            return series
        if time.monotonic() - started > timeout_s:
            event("replica of a NOT caught up in b", after_s=t)
            return series
        await asyncio.sleep(0.5)


async def rehome(topology: Topology, cells: dict[str, Cell], load: DrillLoad, event, orders: int) -> dict:
    """A lost for good: cut it, re-home its customers to B from B, place new orders for them
    through B; then heal and run the command again, so A's own directory agrees before it serves."""
    topology.cut("a")
    load.up.discard("a")
    event("cut a (lost for good)")
    started = time.monotonic()
    first = await asyncio.to_thread(cells["b"].orders, "regions", "rehome", "--from", "a", "--to", "b", "--by", "drill")
    took = time.monotonic() - started
    event("rehome a -> b from b", exit=first.returncode, s=round(took, 2))
    load.phase = "rehomed"
    placed = [
        await load.order("a", customer, retry_for_s=15, entry="b") for customer in load.customers["a"][: max(1, orders)]
    ]
    topology.heal("a")
    load.up.add("a")
    event("healed a")
    again = await asyncio.to_thread(cells["b"].orders, "regions", "rehome", "--from", "a", "--to", "b", "--by", "drill")
    accepted = [o for o in placed if o.order_id]
    in_b = [o for o in accepted if o.region == "b"]
    return {
        "command_s": round(took, 2),
        "exit_while_cut": first.returncode,
        "output_while_cut": (first.stdout + first.stderr).strip().splitlines()[-3:],
        "exit_after_heal": again.returncode,
        "new_orders": len(placed),
        "accepted": len(accepted),
        "accepted_in_b": len(in_b),
        "detail": (
            f"command took {took:.1f}s (exit {first.returncode} while A is cut off: A's directory not reached; "
            f"{again.returncode} once healed); {len(in_b)}/{len(placed)} new orders of A's customers accepted in B"
        ),
    }


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
