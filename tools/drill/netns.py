"""The drill's network: network namespaces joined by veth links through a bridge, cut and healed
at the link.

Topology (``<prefix>`` defaults to ``orders-drill``)::

    <prefix>-a  eth0 .1 ──┐
    <prefix>-b  eth0 .2 ──┼── to-a / to-b / to-c ── br0   in <prefix>-br
    <prefix>-c  eth0 .3 ──┘   (the client: load generator and probes)

Every address lives on a link inside a namespace made here; the root namespace gets no address,
route or link. Cutting a region sets its port on the bridge down: its own ``eth0`` stays up
without carrier, so the cell still reaches its own servers on its address while nothing from
outside reaches it (packets to it are dropped, so peers see timeouts, not refusals). Deleting a
namespace deletes its end of each veth, and so the pair.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

DEFAULT_PREFIX = "orders-drill"
DEFAULT_SUBNET = "10.213.13.0/24"
REGIONS = ("a", "b")
CLIENT = "c"
BRIDGE = "br"


class NetnsError(RuntimeError):
    """An `ip` command failed, or the machine cannot run the drill."""


def preflight() -> str | None:
    """Why this process cannot build the drill's network, or None when it can."""
    if os.geteuid() != 0:
        return "the drill needs root (it creates network namespaces and veth links): run it as root"
    ip = shutil.which("ip")
    if ip is None:
        return "the drill needs `ip` (iproute2) with `ip netns`: install iproute2"
    probe = subprocess.run([ip, "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is not available here: {probe.stderr.strip() or probe.returncode}"
    return None


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def namespaces(prefix: str) -> list[str]:
    """The namespaces named ``<prefix>-<part>`` that exist now."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    return [name for name in names if name.startswith(f"{prefix}-") and name[len(prefix) + 1 :] in _PARTS]


_PARTS = (*REGIONS, CLIENT, BRIDGE)


def pids_in(namespace: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", namespace, check=False).split() if p.isdigit()]


def remove(prefix: str, grace_s: float = 5.0) -> list[str]:
    """Stop every process still inside the namespaces of ``prefix`` (SIGTERM, SIGKILL after
    ``grace_s``) and delete the namespaces; the names it deleted. Safe to call at any time, and
    again: it is both the drill's cleanup and the sweep of what a killed run left."""
    found = namespaces(prefix)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = [pid for name in found for pid in pids_in(name)]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.1)
    for name in found:
        ip("netns", "delete", name, check=False)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone once reaped; reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


@dataclass(frozen=True)
class Topology:
    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET

    def namespace(self, part: str) -> str:
        return f"{self.prefix}-{part}"

    def address(self, part: str) -> str:
        """The address of ``part`` (a region or the client) on the drill's network."""
        network = ipaddress.ip_network(self.subnet)
        return str(network.network_address + 1 + (*REGIONS, CLIENT).index(part))

    def exec_prefix(self, part: str) -> list[str]:
        """Prepend to a command to run it inside ``part``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(part)]

    def create(self) -> None:
        """Build the namespaces, bridge and links. On failure what was made is removed again."""
        network = ipaddress.ip_network(self.subnet)
        if network.prefixlen > 29 or not network.is_private:
            raise NetnsError(f"subnet {self.subnet}: give a private IPv4 network of at least 8 addresses")
        if namespaces(self.prefix):
            raise NetnsError(f"namespaces {self.prefix}-* exist already (another drill running?)")
        try:
            for part in _PARTS:
                ip("netns", "add", self.namespace(part))
                ip("-n", self.namespace(part), "link", "set", "dev", "lo", "up")
            bridge = self.namespace(BRIDGE)
            ip("-n", bridge, "link", "add", "name", "br0", "type", "bridge")
            ip("-n", bridge, "link", "set", "dev", "br0", "up")
            for part in (*REGIONS, CLIENT):
                port = f"to-{part}"
                ip(
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    self.namespace(part),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port,
                    "netns",
                    bridge,
                )
                ip("-n", bridge, "link", "set", "dev", port, "master", "br0")
                ip("-n", bridge, "link", "set", "dev", port, "up")
                ip(
                    "-n",
                    self.namespace(part),
                    "addr",
                    "add",
                    f"{self.address(part)}/{network.prefixlen}",
                    "dev",
                    "eth0",
                )
                ip("-n", self.namespace(part), "link", "set", "dev", "eth0", "up")
        except BaseException:
            remove(self.prefix)
            raise

    def cut(self, region: str) -> None:
        """Take ``region``'s link down at the bridge: nothing reaches it, it reaches nothing."""
        ip("-n", self.namespace(BRIDGE), "link", "set", "dev", f"to-{region}", "down")

    def heal(self, region: str) -> None:
        ip("-n", self.namespace(BRIDGE), "link", "set", "dev", f"to-{region}", "up")

    def remove(self) -> list[str]:
        return remove(self.prefix)
