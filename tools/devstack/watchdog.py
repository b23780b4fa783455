"""Servers started by devstack stop when the process that started them dies, however it dies.

Every server (embedded PostgreSQL, the Temporal dev server, each :class:`ManagedProcess`) runs in
its own session, so that a terminal's Ctrl-C reaches only its owner, which then stops them in order.
The price is that they outlive an owner killed outright (SIGKILL, the OOM killer). The kernel's
PR_SET_PDEATHSIG does not cover it: it follows the *thread* that started a child, and chaos restarts
start servers from short-lived worker threads.

So each owner process records what it starts (pid and start time, so that a recycled pid is never
taken for one of ours) in a file of the per-user run folder, and starts one watchdog: this module
run as a small process that reads a pipe whose only writer is the owner. The kernel closes that pipe
when the owner dies, so the watchdog then stops whatever of the record still runs and removes the
file. An owner killed together with its watchdog is cleaned up by the next owner on the machine,
which sweeps the records of owners that are gone before it starts anything.

This file runs as a script (``python -I watchdog.py RECORD``): it imports nothing from the package.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

__all__ = ["ensure_watchdog", "record", "sweep_leftovers", "run_dir"]

#: How long recorded servers get to stop on their own before they are killed.
STOP_GRACE_S = 10.0


def run_dir() -> Path:
    """The per-user folder of owner records (private to this user)."""
    path = Path(tempfile.gettempdir()) / f"orders-devstack-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022 or not path.is_dir() or path.is_symlink():
        raise RuntimeError(f"{path} is not a private folder of this user; remove it")
    return path


def start_time(pid: int) -> float | None:
    """When the process ``pid`` started (None when it is gone or a zombie)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, started: float) -> bool:
    now = start_time(pid)
    return now is not None and abs(now - started) < 0.05


# --------------------------------------------------------------------------- the owner's side


class _Owner:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid: int | None = None  # the process this state belongs to (reset after a fork)
        self.path: Path | None = None
        self.pipe: int | None = None  # write end; never written, closed by the kernel at our death
        self.watchdog: subprocess.Popen | None = None


_owner = _Owner()


def ensure_watchdog() -> Path:
    """Sweep what dead owners left running, then start this process's watchdog (once per process).
    Call it before starting a server, so that leftovers do not hold its ports."""
    with _owner.lock:
        if _owner.pid == os.getpid() and _owner.path is not None:
            return _owner.path
        sweep_leftovers()
        me = os.getpid()
        path = run_dir() / f"owner-{me}.jsonl"
        fresh = path.with_name(f".{path.name}.new")
        fresh.write_text(json.dumps({"owner": me, "started": start_time(me)}) + "\n")
        fresh.replace(path)  # whole, or a sweep in another process could take it for a dead owner's
        read_end, write_end = os.pipe()  # not inheritable: no other child keeps the pipe open
        try:
            watchdog = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).resolve()), str(path)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C is for the owner, not for it
            )
        finally:
            os.close(read_end)
        _owner.pid, _owner.path, _owner.pipe, _owner.watchdog = me, path, write_end, watchdog
        return path


def record(pid: int, name: str, stop_signal: int = signal.SIGTERM) -> None:
    """Note that this process started server ``pid``: its watchdog stops it if we die first."""
    path = ensure_watchdog()
    started = start_time(pid)
    if started is None:
        return  # already gone
    line = json.dumps({"pid": pid, "started": started, "name": name, "signal": int(stop_signal)})
    with _owner.lock, open(path, "a") as f:
        f.write(line + "\n")


def sweep_leftovers() -> list[str]:
    """Stop the servers of every recorded owner that is gone; the names of those stopped."""
    stopped: list[str] = []
    for path in sorted(run_dir().glob("owner-*.jsonl")):
        header, _ = _read(path)
        if header is not None and _same_process(header["owner"], header["started"] or 0.0):
            continue  # its owner lives (possibly us)
        stopped += stop_recorded(path)
    return stopped


# --------------------------------------------------------------------------- stopping a record


def _read(path: Path) -> tuple[dict | None, list[dict]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None, []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by the owner's death
    if not entries or "owner" not in entries[0]:
        return None, entries
    return entries[0], [e for e in entries[1:] if {"pid", "started", "name", "signal"} <= e.keys()]


def _signal(pid: int, sig: int) -> None:
    """``sig`` to the server's process group (each server leads its own), else to it alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_recorded(path: Path, grace: float = STOP_GRACE_S) -> list[str]:
    """Stop the servers recorded in ``path`` that still run (last started first), SIGKILL those
    that outlast ``grace``, and remove the record. Returns the names of those found running."""
    _, entries = _read(path)
    running = [e for e in reversed(entries) if _same_process(e["pid"], e["started"])]
    for entry in running:
        _signal(entry["pid"], entry["signal"])
    deadline = time.monotonic() + grace
    left = running
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [e for e in left if _same_process(e["pid"], e["started"])]
    for entry in left:
        _signal(entry["pid"], signal.SIGKILL)
    path.unlink(missing_ok=True)
    return [e["name"] for e in running]


def _watch(path: Path) -> None:
    while os.read(0, 4096):  # the owner never writes: this returns b"" when it is gone
        pass
    stop_recorded(path)


if __name__ == "__main__":
    _watch(Path(sys.argv[1]))
