"""`orders worker` (api, sandbox, db) started next to a running `orders dev` finds the stack's
settings in its data folder; without a running stack it says in one line what to do."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cli.main import STACK_FILE
from devstack.dev import publish_stack, withdraw_stack
from devstack.processes import free_port

ORDERS = str(Path(sys.executable).parent / "orders")
ORDER = {
    "items": [{"sku": "MUG-WHT", "quantity": 2}],
    "shipping_address": {
        "name": "Ada Lovelace",
        "line1": "Unter den Linden 1",
        "line2": None,
        "city": "Berlin",
        "postal_code": "10117",
        "country": "DE",
    },
    "payment_token": "tok_ok",
}


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ORDERS_* setting: what a new terminal has."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORDERS_")}
    return {**env, **extra}


def _wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited ({process.returncode}):\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {text!r} in {path} within {timeout:.0f}s:\n{path.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def _orders(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([ORDERS, *args], cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=60)


def test_a_worker_started_by_hand_joins_orders_dev(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("api", "temporal", "ui", "sandbox", "postgres")}
    dev_log, worker_log = tmp_path / "dev.out", tmp_path / "worker.out"
    with open(dev_log, "wb") as out:
        dev = subprocess.Popen(
            [
                ORDERS,
                "dev",
                "--no-worker",
                *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))),
            ],
            cwd=tmp_path,  # the data folder is the default .data, here
            env=_clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = None
    try:
        _wait_for(dev_log, "ready in", dev, timeout=120)
        stack_file = tmp_path / ".data" / STACK_FILE
        assert stack_file.is_file()
        # The banner says how to start another worker: run exactly that, in a second terminal with
        # nothing set by hand.
        banner = next(line for line in dev_log.read_text().splitlines() if "Another worker:" in line)
        command = shlex.split(banner.split("Another worker:", 1)[1].split("(in another terminal", 1)[0])
        assert command == [ORDERS, "worker"], banner
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen(command, cwd=tmp_path, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT)
        _wait_for(worker_log, "workers running", worker, timeout=60)

        token = _orders("token", "--sub", f"joiner-{uuid.uuid4().hex[:6]}", cwd=tmp_path)
        assert token.returncode == 0, token.stderr
        headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", headers=headers, timeout=10) as api:
            created = api.post("/v1/orders", json=ORDER, headers={"Idempotency-Key": uuid.uuid4().hex})
            assert created.status_code == 202, created.text
            order_id = created.json()["id"]
            deadline = time.monotonic() + 90
            while (status := api.get(f"/v1/orders/{order_id}").json()["status"]) != "completed":
                assert status not in ("rejected", "failed", "cancelled"), status
                assert time.monotonic() < deadline, f"order still {status}: {worker_log.read_text()[-2000:]}"
                time.sleep(0.5)  # `orders dev --no-worker` has no worker: only the joined one can end it

        stack_text = stack_file.read_text()
        assert _stop(worker) in (0, -signal.SIGTERM)
        assert _stop(dev) == 0
        assert not stack_file.exists(), "a stopped stack left its settings behind"

        stopped = _orders("worker", cwd=tmp_path)
        assert stopped.returncode == 2
        assert stopped.stderr.startswith("orders: error: ") and stopped.stderr.count("\n") == 1, stopped.stderr
        assert "no `orders dev` is running" in stopped.stderr and str(tmp_path / ".data") in stopped.stderr

        stack_file.write_text(stack_text)  # what a stack killed outright leaves
        stale = _orders("worker", cwd=tmp_path)
        assert stale.returncode == 2 and stale.stderr.count("\n") == 1, stale.stderr
        assert f"the stack at {tmp_path / '.data'} is not running" in stale.stderr
        for command in (["api"], ["sandbox"], ["db", "upgrade"]):
            result = _orders(*command, cwd=tmp_path)
            assert result.returncode == 2 and "is not running" in result.stderr, (command, result.stderr)
    finally:
        for process in (worker, dev):
            if process is not None:
                _stop(process)


def _settings_seen(cwd: Path, **env: str) -> dict:
    script = (
        "import json; from cli.main import _settings; s = _settings(); print(json.dumps({"
        "'database_url': s.database_url, 'temporal_address': s.temporal_address, 'api_port': s.api_port, "
        "'data_dir': str(s.data_dir)}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_settings_given_explicitly_win_over_the_running_stack(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    data.mkdir()
    stack = {
        "ORDERS_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/orders",
        "ORDERS_TEMPORAL_ADDRESS": "127.0.0.1:2",
        "ORDERS_API_PORT": "3",
        "ORDERS_DATA_DIR": str(data),
    }
    handle = publish_stack(data / STACK_FILE, stack)  # a running stack: this process holds the lock
    try:
        assert _settings_seen(tmp_path) == {  # another data folder: not found
            "database_url": "",
            "temporal_address": "127.0.0.1:7233",
            "api_port": 8000,
            "data_dir": ".data",
        }
        assert _settings_seen(tmp_path, ORDERS_DATA_DIR=str(data)) == {
            "database_url": stack["ORDERS_DATABASE_URL"],
            "temporal_address": "127.0.0.1:2",
            "api_port": 3,
            "data_dir": str(data),
        }
        (tmp_path / ".env").write_text("ORDERS_API_PORT=5\n")
        seen = _settings_seen(tmp_path, ORDERS_DATA_DIR=str(data), ORDERS_TEMPORAL_ADDRESS="127.0.0.1:4")
        assert (seen["database_url"], seen["temporal_address"], seen["api_port"]) == (
            stack["ORDERS_DATABASE_URL"],
            "127.0.0.1:4",  # the environment
            5,  # .env
        )
        # An explicit database means "not that stack": nothing is taken from it.
        seen = _settings_seen(tmp_path, ORDERS_DATA_DIR=str(data), ORDERS_DATABASE_URL="postgresql://db/x")
        assert (seen["database_url"], seen["temporal_address"]) == ("postgresql://db/x", "127.0.0.1:7233")

        refused = _orders("dev", "--data-dir", str(data), cwd=tmp_path)
        assert refused.returncode == 2 and f"already runs on {data}" in refused.stderr, refused.stderr
    finally:
        withdraw_stack(data / STACK_FILE, handle)
    assert not (data / STACK_FILE).exists()


def test_data_dir_option_points_at_the_stack(tmp_path: Path) -> None:
    data = tmp_path / "stack"
    data.mkdir()
    (data / STACK_FILE).write_text("# (pid 1)\nORDERS_DATABASE_URL=x\n")  # nobody holds it: stopped
    result = _orders("worker", "--data-dir", str(data), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"orders: error: the stack at {data} is not running (its `orders dev`, pid 1, has stopped): "
        "start `orders dev` again, or set ORDERS_DATABASE_URL\n"
    )
