"""Child-process management for ``orders dev`` and the test suite.

* :func:`free_port` / :func:`wait_http_ready` – small helpers.
* :class:`ManagedProcess` – one child in its own process group (session), with
  ``start`` / ``stop`` (SIGTERM, then SIGKILL after a grace period) / ``kill``.
* :class:`Supervisor` – starts several ManagedProcesses in order (waiting for
  each one's readiness check), multiplexes their output with a ``[name]``
  prefix, and on Ctrl-C / SIGTERM (or when one child dies) stops them in
  reverse order.

Children run in their own session so a terminal Ctrl-C reaches only the
supervisor, which then shuts children down in an orderly way. So that they do not
outlive an owner killed outright, each one is recorded with the owner's watchdog
(:mod:`devstack.watchdog`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

from .watchdog import ensure_watchdog, record

__all__ = [
    "free_port",
    "port_is_open",
    "wait_http_ready",
    "tail_file",
    "terminate_process_group",
    "ManagedProcess",
    "ProcessStartError",
    "Supervisor",
]

OutputMode = Literal["inherit", "file", "prefix", "tee", "discard"]


class ProcessStartError(RuntimeError):
    """A child failed to start or did not become ready in time."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """Return a currently free TCP port on ``host`` (racy by nature, but fine for dev/tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_http_ready(
    url: str,
    timeout: float = 30.0,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.05,
    ok_statuses: Iterable[int] = range(200, 500),
) -> int:
    """Poll ``url`` until it answers with a status in ``ok_statuses`` (default: anything < 500).

    Returns the HTTP status. Raises :class:`TimeoutError` (or :class:`ProcessStartError`
    if ``alive`` reports the process died).
    """
    ok = set(ok_statuses)
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status in ok:
                    return resp.status
                last = resp.status
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return e.code
            last = e.code
        except (urllib.error.URLError, OSError) as e:
            last = e
        if alive is not None and not alive():
            raise ProcessStartError(f"process exited before {url} was ready (last: {last})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready within {timeout:.1f}s (last: {last})")
        time.sleep(interval)


def tail_file(path: Path | None, lines: int = 30) -> str:
    """Last ``lines`` lines of a (log) file, or '' if unavailable."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def terminate_process_group(
    proc: subprocess.Popen,
    grace: float = 10.0,
    sig: int = signal.SIGTERM,
) -> int | None:
    """Send ``sig`` to the process group led by ``proc``; SIGKILL the group after ``grace`` s.

    Returns the exit code (None if it could not be reaped).
    """
    if proc.poll() is not None:
        _killpg(proc.pid, signal.SIGKILL)  # stragglers left in the group, if any
        return proc.returncode
    _killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None
    finally:
        _killpg(proc.pid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    except OSError as e:  # pragma: no cover
        if e.errno != errno.ESRCH:
            raise


# --------------------------------------------------------------------------- ManagedProcess


class ManagedProcess:
    """One child process, in its own session / process group.

    Output modes (``output``):

    * ``"inherit"`` – share the parent's stdout/stderr (default when no ``log_path``).
    * ``"file"`` – stdout+stderr appended to ``log_path`` (default when ``log_path`` given).
    * ``"prefix"`` – each line written to ``console`` (default ``sys.stdout``) as ``[name] line``.
    * ``"tee"`` – like prefix, and also the raw lines appended to ``log_path``.
    * ``"discard"`` – /dev/null.

    ``ready_url`` / ``ready_check`` describe readiness; :meth:`wait_ready`
    (called by :class:`Supervisor` after :meth:`start`) waits for them.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        log_path: Path | str | None = None,
        *,
        output: OutputMode | None = None,
        cwd: Path | str | None = None,
        grace: float = 10.0,
        ready_url: str | None = None,
        ready_check: Callable[[], bool] | None = None,
        ready_timeout: float = 30.0,
        console: IO[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path is not None else None
        if output is None:
            output = "file" if self.log_path is not None else "inherit"
        if output in ("file", "tee") and self.log_path is None:
            raise ValueError(f"output={output!r} needs log_path")
        self.output: OutputMode = output
        self.cwd = Path(cwd) if cwd is not None else None
        self.grace = grace
        self.ready_url = ready_url
        self.ready_check = ready_check
        self.ready_timeout = ready_timeout
        self.console = console
        self.proc: subprocess.Popen | None = None
        self._pump: threading.Thread | None = None
        self._recent: deque[str] = deque(maxlen=50)

    # -- state ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def recent_output(self, lines: int = 30) -> str:
        """Tail of the output (from the log file, or the in-memory buffer in prefix mode)."""
        if self.log_path is not None:
            return tail_file(self.log_path, lines)
        return "\n".join(list(self._recent)[-lines:])

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> ManagedProcess:
        if self.is_running():
            return self
        env = {**os.environ, **self.env}
        if self.output in ("prefix", "tee"):
            env.setdefault("PYTHONUNBUFFERED", "1")
        stdout: int | IO[bytes] | None
        log_f = None
        if self.output == "inherit":
            stdout = None
        elif self.output == "discard":
            stdout = subprocess.DEVNULL
        elif self.output == "file":
            assert self.log_path is not None
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_f = open(self.log_path, "ab")
            stdout = log_f
        else:
            stdout = subprocess.PIPE
        ensure_watchdog()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise ProcessStartError(f"{self.name}: cannot exec {self.argv[0]!r}: {e}") from e
        finally:
            if log_f is not None:
                log_f.close()
        record(self.proc.pid, self.name)
        if stdout is subprocess.PIPE:
            self._pump = threading.Thread(target=self._pump_output, name=f"pump-{self.name}", daemon=True)
            self._pump.start()
        return self

    def _pump_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        console = self.console or sys.stdout
        log_f = None
        if self.output == "tee" and self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_f = open(self.log_path, "ab")
        prefix = f"[{self.name}] "
        try:
            for raw in iter(self.proc.stdout.readline, b""):
                if log_f is not None:
                    log_f.write(raw)
                    log_f.flush()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._recent.append(line)
                try:
                    console.write(prefix + line + "\n")
                    console.flush()
                except (OSError, ValueError):
                    pass
        finally:
            if log_f is not None:
                log_f.close()
            with contextlib.suppress(OSError):
                self.proc.stdout.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for the configured readiness checks (no-op if none configured)."""
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            if self.ready_url is not None:
                self.wait_http_ready(self.ready_url, max(0.1, deadline - time.monotonic()))
            if self.ready_check is not None:
                while not self.ready_check():
                    if not self.is_running():
                        raise ProcessStartError(f"{self.name} exited (code {self.returncode})")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.name}: ready_check not satisfied in {timeout:.1f}s")
                    time.sleep(0.05)
        except (TimeoutError, ProcessStartError) as e:
            raise ProcessStartError(f"{self.name} not ready: {e}\n--- last output ---\n{self.recent_output()}") from e

    def wait_http_ready(self, url: str, timeout: float = 30.0) -> int:
        return wait_http_ready(url, timeout, alive=self.is_running)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        return self.proc.wait(timeout)

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds."""
        if self.proc is None:
            return None
        rc = terminate_process_group(self.proc, self.grace if grace is None else grace)
        self._join_pump()
        return rc

    def kill(self) -> int | None:
        """SIGKILL the whole process group immediately (chaos tests)."""
        if self.proc is None:
            return None
        _killpg(self.proc.pid, signal.SIGKILL)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        self._join_pump()
        return rc

    def _join_pump(self) -> None:
        if self._pump is not None:
            self._pump.join(timeout=2)
            self._pump = None

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode})" if self.proc else "new"
        return f"ManagedProcess({self.name!r}, pid={self.pid}, {state})"


# --------------------------------------------------------------------------- Supervisor


class Supervisor:
    """Start processes in order, stop them in reverse order.

    Typical ``orders dev`` use::

        sup = Supervisor([api, worker, sandbox])
        rc = sup.run()          # blocks until Ctrl-C / SIGTERM or a child dies

    or programmatically ``with Supervisor([...]) as sup: ...`` (start_all / stop_all).
    """

    def __init__(
        self,
        processes: Sequence[ManagedProcess],
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.processes = list(processes)
        self._log = log or (lambda msg: print(f"[supervisor] {msg}", file=sys.stderr, flush=True))
        self._stop_event = threading.Event()
        self._started: list[ManagedProcess] = []
        self.exit_reason: str | None = None

    def start_all(self) -> None:
        """Start each process and wait for its readiness before starting the next.

        On failure, already-started processes are stopped (reverse order) and the error re-raised.
        """
        try:
            for p in self.processes:
                if self._stop_event.is_set():
                    break
                self._log(f"starting {p.name}: {' '.join(p.argv)}")
                p.start()
                self._started.append(p)
                p.wait_ready()
                self._log(f"{p.name} ready (pid {p.pid})")
        except BaseException:
            self.stop_all()
            raise

    def stop_all(self) -> None:
        for p in reversed(self._started):
            if p.is_running():
                self._log(f"stopping {p.name} (pid {p.pid})")
            p.stop()
        self._started.clear()

    def request_stop(self, reason: str = "stop requested") -> None:
        """Thread/signal-safe: make :meth:`run` return (after stopping children)."""
        if self.exit_reason is None:
            self.exit_reason = reason
        self._stop_event.set()

    def run(
        self,
        *,
        install_signal_handlers: bool = True,
        poll_interval: float = 0.2,
        on_ready: Callable[[], None] | None = None,
    ) -> int:
        """Start all, then block until SIGINT/SIGTERM, :meth:`request_stop`, or a child exits.

        Returns 0 on a requested stop, else the exit code of the child that died (or 1).
        """
        old_handlers: dict[int, object] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(
                    sig, lambda s, _f: self.request_stop(f"received {signal.Signals(s).name}")
                )
        rc = 0
        try:
            self.start_all()
            if on_ready is not None and not self._stop_event.is_set():
                on_ready()
            while not self._stop_event.wait(poll_interval):
                dead = next((p for p in self._started if not p.is_running()), None)
                if dead is not None:
                    rc = dead.returncode or 1
                    self.request_stop(f"{dead.name} exited with code {dead.returncode}")
                    break
        finally:
            if self.exit_reason:
                self._log(f"{self.exit_reason}; shutting down")
            self.stop_all()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)  # type: ignore[arg-type]
        return rc

    def __enter__(self) -> Supervisor:
        self.start_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
