"""Embedded real servers (PostgreSQL, Temporal dev server) and child-process supervision
for ``orders dev`` and the test suite. Nothing is downloaded at run time."""

from .binaries import MissingBinary, postgres_bin_dir, temporal_cli_path, temporal_test_server_path
from .postgres import EmbeddedPostgres, PostgresError
from .processes import ManagedProcess, ProcessStartError, Supervisor, free_port, wait_http_ready
from .temporal import TemporalDevServer, TemporalStartError

__all__ = [
    "MissingBinary",
    "postgres_bin_dir",
    "temporal_cli_path",
    "temporal_test_server_path",
    "EmbeddedPostgres",
    "PostgresError",
    "ManagedProcess",
    "ProcessStartError",
    "Supervisor",
    "free_port",
    "wait_http_ready",
    "TemporalDevServer",
    "TemporalStartError",
]
