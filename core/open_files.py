"""The process's open-files limit, raised to what it needs.

Every socket is a file: a gateway holding its long-poll waiters, or a load generator holding one
connection per following caller, needs more than the soft limit of 1024 many systems start
processes with, and would fail to accept or connect with EMFILE. Raising the soft limit up to the
hard limit needs no privileges.
"""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger(__name__)

# Sockets and files besides the ones counted: in-flight requests, database and Temporal connections, logs.
OTHER_OPEN_FILES = 1024


def raise_open_files_limit(wanted: int, *, what: str = "ORDERS_API_MAX_WAITERS") -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` open files, never above the hard limit and never
    lower than it is (a warning names ``what`` to lower when the hard limit is too low); returns the
    (before, after) soft limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft, soft
    target = max(soft, wanted if hard == resource.RLIM_INFINITY else min(wanted, hard))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            f"open-files limit below what is needed; lower {what} or raise the hard limit",
            soft_limit=target,
            hard_limit=hard,
            needed=wanted,
        )
    return soft, target
