"""The kernel's TCP counters (Linux ``/proc/net/netstat``): where a request the gateway never saw
could have waited. A full listen (accept) queue drops the connection's SYN or final ACK, and the
client retransmits its SYN after 1, 3, 7 and 15 s, each retransmit a second or more lost before the
gateway can read a byte."""

from __future__ import annotations

from pathlib import Path

#: The TcpExt counters of those drops, retransmissions and timeouts.
KERNEL_TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "TCPSynRetrans", "TCPTimeouts")


def kernel_tcp_counters(path: Path = Path("/proc/net/netstat")) -> dict[str, int] | None:
    """The machine's (network namespace's) TcpExt counters named in KERNEL_TCP_COUNTERS, or None
    where the kernel does not publish them (not Linux). Take two snapshots and :func:`subtract_counters`."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            return {name: int(table[name]) for name in KERNEL_TCP_COUNTERS if name in table}
    return None


def subtract_counters(after: dict[str, int] | None, before: dict[str, int] | None) -> dict[str, int] | None:
    if after is None or before is None:
        return None
    return {name: after[name] - before.get(name, 0) for name in after}
